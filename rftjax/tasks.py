"""Bundled synthetic tasks with checkable answers, generated deterministically from a seed.

`python -m rftjax.tasks` regenerates the files shipped under `data/`; the tests check that what is shipped equals
what the generator makes, so the demo data can never drift from its recipe.

- `tiny`: "Largest digit: 3 9 4 1" -> "9". A random tiny model names the right one-token answer with
  probability about 1/vocab, enough for GRPO to find and reinforce it; answers are uniform over the ten digits.
- `arith`: short integer arithmetic in words and symbols for SmolLM2-135M-Instruct, answer graded by the math
  grader on the final number; `arith/equations_*`: 4-shot plain-text sums for Gemma 3 270M base, graded on the
  first line of the completion.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from rftjax import data
from rftjax import tokenizer

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / 'data'

TINY_VOCAB = 32
TINY_GRADER = {
  'type': 'string_check',
  'name': 'exact_answer',
  'input': '{{sample.output_text}}',
  'reference': '{{item.answer}}',
  'operation': 'eq',
}


def tiny_examples(n: int, seed: int, num_digits: int = 4) -> list[dict]:
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    # the answer is uniform over 0-9: with independent digits 9 would win a third of the time, and a policy that
    # always says "9" is a trap GRPO falls into before it learns to compare
    top = rng.integers(0, 10)
    digits = rng.integers(0, top + 1, size=num_digits)
    digits[rng.integers(0, num_digits)] = top
    prompt = 'Largest digit: ' + ' '.join(map(str, digits))
    rows.append({'messages': [{'role': 'user', 'content': prompt}], 'answer': str(int(digits.max()))})
  return rows


def arith_examples(n: int, seed: int) -> list[dict]:
  """Two- and three-operand integer problems, a mix that SmolLM2-135M-Instruct gets right some of the time."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    kind = rng.integers(0, 3)
    if kind == 0:
      a, b = rng.integers(10, 100, size=2)
      q, ans = f'What is {a} + {b}?', a + b
    elif kind == 1:
      a, b = sorted(rng.integers(10, 100, size=2))[::-1]
      q, ans = f'What is {a} - {b}?', a - b
    else:
      a, b = rng.integers(2, 13, size=2)
      q, ans = f'What is {a} times {b}?', a * b
    prompt = q + ' Give the final answer as a number.'
    rows.append({'messages': [{'role': 'user', 'content': prompt}], 'answer': str(int(ans))})
  return rows


EQUATION_SHOTS = '3 + 5 = 8\n47 - 3 = 44\n4 * 6 = 24\n61 + 9 = 70\n'

FIRST_LINE_GRADER = {
  'type': 'python',
  'name': 'first_line',
  'source': (
    'import re\n\n\ndef grade(sample, item):\n'
    '    first = sample["output_text"].strip().split("\\n")[0]\n'
    '    m = re.match(r"\\s*(-?\\d+)\\s*$", first)\n'
    '    return 1.0 if m and m.group(1) == item["answer"] else 0.0\n'
  ),
}


def equation_examples(n: int, seed: int) -> list[dict]:
  """Short sums as 4-shot plain-text equations ("3 + 5 = 8\\n...61 + 9 = 70\\n34 + 8 ="), half with one-digit
  operands (+, -, *), half two-digit plus or minus one-digit.

  Sized for Gemma 3 270M base: greedy, it gets 28/40 one-digit and 15/60 two-digit validation items right (0.43).
  Two-digit + two-digit sums, or the same sums as "Q: What is ...? A:", start near zero (probes in docs/demo.md).
  """
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    if rng.integers(0, 2):
      op = '+-*'[rng.integers(0, 3)]
      a, b = (int(x) for x in rng.integers(1, 10, size=2))
      if op == '-':
        a, b = max(a, b), min(a, b)
    else:
      op = '+-'[rng.integers(0, 2)]
      a, b = int(rng.integers(10, 100)), int(rng.integers(1, 10))
    ans = a + b if op == '+' else a - b if op == '-' else a * b
    rows.append({'messages': [{'role': 'user', 'content': EQUATION_SHOTS + f'{a} {op} {b} ='}], 'answer': str(ans)})
  return rows


def tiny_tokenizer_texts() -> list[str]:
  """Every string the tiny model must encode: prompts and answers."""
  return ['Largest digit: 0 1 2 3 4 5 6 7 8 9'] + [str(d) for d in range(10)]


def write_tiny(out_dir: pathlib.Path = DATA_DIR / 'tiny') -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  data.write_jsonl(out_dir / 'train.jsonl', tiny_examples(2000, seed=1))
  data.write_jsonl(out_dir / 'valid.jsonl', tiny_examples(200, seed=2))
  (out_dir / 'grader.json').write_text(json.dumps(TINY_GRADER, indent=2) + '\n')
  # no byte fallback: a ~30-token vocabulary keeps a random model's chance of a right answer near 1/30
  tokenizer.train_sentencepiece(
    tiny_tokenizer_texts() * 20, vocab_size=TINY_VOCAB, out_prefix=out_dir / 'tokenizer', byte_fallback=False
  )


# The tiny tools task (configs/tiny_tools.py): the answer is a digit the example tool server draws afresh for every
# episode (tool_server.py, `lookup` of "secret"), so only a model that calls the tool and copies what it returns can
# score above chance; the server's /grade endpoint (an `endpoint` grader) knows what it returned to each trace.
TINY_TOOLS_PROMPTS = ('What is the secret number?', 'Tell me the secret.', 'Secret?')
TINY_TOOLS_CALL = '<tool_call>{"name":"lookup","arguments":{"key":"secret"}}</tool_call>'
TINY_TOOLS_SPEC = [
  {
    'type': 'function',
    'name': 'lookup',
    'description': 'The value stored under a key.',
    'parameters': {'type': 'object', 'properties': {'key': {'type': 'string'}}, 'required': ['key']},
  }
]
TINY_TOOLS_GRADER = {'type': 'endpoint', 'name': 'secret', 'url': '{tool_server}grade', 'pass_threshold': 1.0}


def tiny_tools_examples(n: int, seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [
    {'messages': [{'role': 'user', 'content': TINY_TOOLS_PROMPTS[rng.integers(0, 3)]}], 'tools': TINY_TOOLS_SPEC}
    for _ in range(n)
  ]


def write_tiny_tools(out_dir: pathlib.Path = DATA_DIR / 'tiny_tools') -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  data.write_jsonl(out_dir / 'train.jsonl', tiny_tools_examples(256, seed=21))
  data.write_jsonl(out_dir / 'valid.jsonl', tiny_tools_examples(60, seed=22))
  (out_dir / 'grader.json').write_text(json.dumps(TINY_TOOLS_GRADER, indent=2) + '\n')
  # a whole call is one token, and so are the tool-turn markers: a random model writes a call with probability about
  # 1/vocab, as the tiny digit task's answers (the format is the Hermes one every template here parses)
  pieces = [TINY_TOOLS_CALL, '<tool_response>', '</tool_response>']
  tokenizer.train_sentencepiece(
    list(TINY_TOOLS_PROMPTS) * 20 + [str(d) for d in range(10)] * 20,
    vocab_size=40,
    out_prefix=out_dir / 'tokenizer',
    user_defined_symbols=pieces,
    byte_fallback=False,
  )


# SmolLM2 with a calculator (configs/smollm2_tools.py): products it gets wrong unaided. Its chat template shows the
# model no tool list, so the system message says how to call the calculator and one worked exchange shows it.
CALCULATOR_SPEC = {
  'type': 'function',
  'name': 'calculator',
  'description': 'Evaluates an arithmetic expression: + - * / and parentheses.',
  'parameters': {'type': 'object', 'properties': {'expression': {'type': 'string'}}, 'required': ['expression']},
}
CALCULATOR_SYSTEM = (
  'You can use a calculator. To call it, write <tool_call>{"name": "calculator", "arguments": {"expression": '
  '"EXPRESSION"}}</tool_call> and the result will come back. Then answer with the final number only.'
)
CALCULATOR_SHOT = [
  {'role': 'user', 'content': 'What is 23 * 41?'},
  {
    'role': 'assistant',
    'content': '<tool_call>{"name": "calculator", "arguments": {"expression": "23 * 41"}}</tool_call>',
  },
  {'role': 'tool', 'content': '943'},
  {'role': 'assistant', 'content': '943'},
]


def tools_arith_examples(n: int, seed: int) -> list[dict]:
  """Three-digit times two-digit products: SmolLM2-135M-Instruct gets almost none right in its head."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    a, b = int(rng.integers(100, 1000)), int(rng.integers(11, 100))
    messages = [{'role': 'system', 'content': CALCULATOR_SYSTEM}, *CALCULATOR_SHOT]
    messages.append({'role': 'user', 'content': f'What is {a} * {b}?'})
    rows.append({'messages': messages, 'tools': [CALCULATOR_SPEC], 'answer': str(a * b)})
  return rows


def write_tools_arith(out_dir: pathlib.Path = DATA_DIR / 'tools_arith') -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  data.write_jsonl(out_dir / 'train.jsonl', tools_arith_examples(1000, seed=31))
  data.write_jsonl(out_dir / 'valid.jsonl', tools_arith_examples(100, seed=32))


def write_arith(out_dir: pathlib.Path = DATA_DIR / 'arith') -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  data.write_jsonl(out_dir / 'train.jsonl', arith_examples(2000, seed=11))
  data.write_jsonl(out_dir / 'valid.jsonl', arith_examples(100, seed=12))
  data.write_jsonl(out_dir / 'equations_train.jsonl', equation_examples(2000, seed=13))
  data.write_jsonl(out_dir / 'equations_valid.jsonl', equation_examples(100, seed=14))
  (out_dir / 'first_line_grader.json').write_text(json.dumps(FIRST_LINE_GRADER, indent=2) + '\n')


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description='Regenerate the bundled task data under data/.')
  parser.add_argument('--out', default=str(DATA_DIR))
  args = parser.parse_args(argv)
  write_tiny(pathlib.Path(args.out) / 'tiny')
  write_tiny_tools(pathlib.Path(args.out) / 'tiny_tools')
  write_tools_arith(pathlib.Path(args.out) / 'tools_arith')
  write_arith(pathlib.Path(args.out) / 'arith')
  print(f'wrote tasks under {args.out}')


if __name__ == '__main__':
  main()
