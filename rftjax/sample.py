"""Completions for a file of prompts, from a run's checkpoint or from pretrained / random weights.

  python -m rftjax.sample --workdir=runs/tiny [--step=best|latest|N] --prompts=p.jsonl --out=out.jsonl
  python -m rftjax.sample --init=gguf:smollm2-135m --prompts=p.jsonl --out=out.jsonl --max_new_tokens=64

A prompt line is either the training format `{"messages": [...]}` (rendered with the chat template) or
`{"text": "..."}` (raw text, BOS as the tokenizer adds it). Each output line keeps the input line's fields and adds
`completion` (text), `tokens` (ids through the stop token), `logprobs` (per token, under the temperature-scaled
policy), `truncated` and `source` (file:line). Greedy by default (--temperature=0). Progress goes to stderr.
See docs/cli.md.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import pathlib
import sys

from etils import epath

from rftjax import data as data_lib
from rftjax import inference


def add_model_flags(p: argparse.ArgumentParser) -> None:
  """Flags shared by the inference CLIs: which model to load."""
  p.add_argument('--workdir', help='a run directory (config.json + checkpoints/)')
  p.add_argument('--step', default='best', help="checkpoint: 'best' (default), 'latest' or a step number")
  p.add_argument('--init', help="instead of --workdir: 'gguf:PATH', 'gguf:smollm2-135m', 'hf:DIR', or '' (random)")
  p.add_argument('--model', help="model preset (default: the run's, or what the --init file states)")
  p.add_argument('--tokenizer', help="tokenizer spec (default: the run's, or the --init file's)")
  p.add_argument('--chat_template', help="gemma | chatml | llama3 | plain (default: the tokenizer's)")
  p.add_argument('--batch_size', type=int, default=32, help='prompts per compiled batch')
  p.add_argument(
    '--stop',
    action='append',
    type=lambda s: codecs.decode(s, 'unicode_escape'),
    help="an extra single-token stop string, repeatable; escapes work: --stop='\\n' (default: the "
    "run's config.sampling.stop)",
  )


def load_from_args(args) -> inference.Loaded:
  return inference.load(
    workdir=args.workdir,
    step=args.step,
    init=args.init,
    model=args.model,
    tokenizer=args.tokenizer,
    chat_template=args.chat_template,
  )


def read_prompts(path: str | pathlib.Path) -> list[tuple[str, dict, data_lib.Example | None]]:
  """(source 'file:line', the line as a dict, Example or None for a raw `text` prompt) per non-blank line."""
  path = epath.Path(path)  # local or gs://
  if not path.is_file():
    raise data_lib.DataError(f'{path}: no such file (--prompts)')
  out = []
  with path.open(encoding='utf-8') as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f'{path}:{lineno}'
      try:
        obj = json.loads(line)
      except json.JSONDecodeError:
        obj = None  # parse_line words the error
      if isinstance(obj, dict) and 'messages' not in obj and 'text' in obj:
        if not isinstance(obj['text'], str):
          raise data_lib.DataError(f'{where}: "text" must be a string, got {type(obj["text"]).__name__}')
        out.append((where, obj, None))
      else:
        try:
          ex = data_lib.parse_line(line, where)
        except data_lib.DataError as e:
          raise data_lib.DataError(f'{e} (a prompt line is {{"messages": [...]}} or {{"text": "..."}})') from None
        out.append((where, obj, ex))
  if not out:
    raise data_lib.DataError(f'{path}: no prompts (the file is empty)')
  return out


def encode(tok, prompt: tuple[str, dict, data_lib.Example | None]) -> list[int]:
  where, obj, ex = prompt
  try:
    return tok.encode_prompt(list(ex.messages)) if ex is not None else tok.encode_text(obj['text'])
  except ValueError as e:  # e.g. the gemma template's role alternation
    raise data_lib.DataError(f'{where}: {e}') from None


def stderr_progress(label: str):
  def report(done: int, total: int) -> None:
    print(f'\r{label}: {done}/{total}', end='\n' if done == total else '', file=sys.stderr, flush=True)

  return report


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m rftjax.sample', description=__doc__.split('\n')[0])
  add_model_flags(p)
  p.add_argument('--prompts', required=True, help='JSONL: {"messages": [...]} or {"text": "..."} per line')
  p.add_argument('--out', required=True, help='output JSONL, one line per prompt')
  p.add_argument('--max_new_tokens', type=int, default=128)
  p.add_argument('--temperature', type=float, default=0.0, help='0 = greedy')
  p.add_argument('--top_p', type=float, default=1.0)
  p.add_argument('--top_k', type=int, default=0, help='0 = off')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  if args.max_new_tokens < 1:
    p.error(f'--max_new_tokens must be >= 1, got {args.max_new_tokens}')
  if args.temperature < 0:
    p.error(f'--temperature must be >= 0, got {args.temperature}')
  if not 0 < args.top_p <= 1:
    p.error(f'--top_p must be in (0, 1], got {args.top_p}')
  if (args.workdir is None) == (args.init is None):
    p.error('give exactly one of --workdir or --init')
  return args


def main(argv=None) -> int:
  """Returns the exit status: 0, or 2 with the reason on stderr (argparse errors raise SystemExit(2))."""
  args = parse_args(argv)
  try:
    prompts = read_prompts(args.prompts)  # bad input fails before the model loads
    loaded = load_from_args(args)
    ids = [encode(loaded.tokenizer, pr) for pr in prompts]
    outs = inference.complete(
      loaded,
      ids,
      max_new_tokens=args.max_new_tokens,
      temperature=args.temperature,
      top_p=args.top_p,
      top_k=args.top_k,
      seed=args.seed,
      batch_size=args.batch_size,
      stop=args.stop,
      progress=stderr_progress('sampling'),
    )
  except (inference.InferenceError, data_lib.DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  rows = [
    {
      **obj,
      'source': where,
      'completion': o['text'],
      'tokens': o['tokens'],
      'logprobs': o['logprobs'],
      'truncated': o['truncated'],
    }
    for (where, obj, _), o in zip(prompts, outs)
  ]
  data_lib.write_jsonl(args.out, rows)
  print(f'wrote {len(rows)} completions to {args.out}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s', stream=sys.stderr)
  sys.exit(main())
