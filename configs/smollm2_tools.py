"""Real weights, agentic: SmolLM2-135M-Instruct learns to use a calculator on products it gets wrong unaided.

  python -m rftjax.train --config=configs/smollm2_tools.py --workdir=runs/smollm2_tools
Starts rftjax's example tool server (rftjax/tool_server.py, its `calculator`) on a free 127.0.0.1 port and stops it
at exit. The data (data/tools_arith/, `python -m rftjax.tasks`) asks for three-digit times two-digit products; the
system message says how to call the calculator and one worked exchange shows it (SmolLM2's chat template shows the
model no tool list). A python grader compares the last number of the final answer with the product.
"""

from configs import common

LAST_NUMBER = """import re


def grade(sample, item):
    numbers = re.findall(r"-?\\d+", sample["output_text"].replace(",", ""))
    return 1.0 if numbers and numbers[-1] == item["answer"] else 0.0
"""


def get_config(arg=None):
  common.check_variant(arg, ('test',))
  c = common.base()
  c.model = 'smollm2_135m'
  c.init = 'gguf:smollm2-135m'
  c.data.train = 'data/tools_arith/train.jsonl'
  c.data.valid = 'data/tools_arith/valid.jsonl'
  c.data.max_prompt_len = 192
  # the last number of the final turn, exactly (the math grader would also take "481 * 44" itself as the answer)
  c.grader = {'type': 'python', 'name': 'last_number', 'source': LAST_NUMBER}
  c.tool_server = 'example'
  c.tools = ({'name': 'calculator', 'server_url': '{tool_server}'},)
  c.max_episode_steps = 2  # a call, then the answer
  c.sampling.stop = ('</tool_call>',)  # several tokens: matched inside the decode loop
  c.sampling.max_new_tokens = 48
  c.sampling.tool_tokens = 24
  c.sampling.temperature = 0.7
  c.total_steps = 20  # ~65 s a step on 2 CPU cores: the run fits in half an hour
  c.batch_size = 4
  c.num_generations = 4
  c.lora.rank = 16  # adapters on a frozen base: faster steps and the better curve on arithmetic (README)
  c.lora.alpha = 32.0
  c.optimizer.learning_rate = 1e-4
  c.optimizer.warmup_steps = 2
  c.grpo.epsilon_high = 0.28
  c.eval_interval = 5
  c.eval_batch_size = 50
  c.data.valid_limit = 50
  c.grading.num_workers = 1
  if arg == 'test':  # two steps on a handful of prompts, for the real-weights smoke test
    common.smoke_test(c, max_new_tokens=48)
  return c.lock()
