"""The agentic CPU demo: a ~1M-parameter model learns, from reward alone, to call a lookup tool.

  python -m rftjax.train --config=configs/tiny_tools.py --workdir=runs/tiny_tools
Starts rftjax's example tool server (rftjax/tool_server.py) on a free 127.0.0.1 port and stops it at exit. The
answer is a digit the server draws for each episode (from its trace id), and the server's /grade endpoint, the
run's `endpoint` grader, scores the final answer against what `lookup` returned to that episode: an answer without
a lookup scores 0 (validation reward 0 at step 0, 1.0 from step 100 on; docs/demo.md).
"""

from configs import common
from configs import tiny


def get_config(arg=None):
  common.check_variant(arg, ('test',))
  c = tiny.get_config(arg).unlock()  # the digit demo's GRPO settings, steps and batch, with a tool to call
  c.tokenizer = 'sp:data/tiny_tools/tokenizer.model'
  c.data.train = 'data/tiny_tools/train.jsonl'
  c.data.valid = 'data/tiny_tools/valid.jsonl'
  c.data.max_prompt_len = 24
  c.grader = 'data/tiny_tools/grader.json'
  c.tool_server = 'example'
  c.tools = ({'name': 'lookup', 'server_url': '{tool_server}'},)
  c.max_episode_steps = 2  # a call, then the answer
  c.sampling.max_new_tokens = 2
  c.sampling.tool_tokens = 8
  # a turn ends at a whole tool call (one token here, tasks.py) or at an answer digit
  c.sampling.stop = ('<tool_call>{"name":"lookup","arguments":{"key":"secret"}}</tool_call>',) + tuple('0123456789')
  c.eval_batch_size = 60
  if arg == 'test':
    c.data.valid_limit = 8
  return c.lock()
