"""Grading CLI, like OpenAI's /graders/validate and /graders/run endpoints.

  python -m rftjax.grade --grader=G.json --validate
  python -m rftjax.grade --grader=G.json --sample='The answer is 4' --item='{"answer": "4"}'
  python -m rftjax.grade --grader=G.json --data=items.jsonl --samples=samples.jsonl [--output=results.jsonl]

--samples lines are JSON strings, or objects with "output_text" (or "sample"); line k grades with line k of --data.
Exit status: 0 ok, 2 invalid grader or arguments (the message names the field or file, what was found and what
was expected).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from rftjax import errors
from rftjax import graders


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m rftjax.grade', description=__doc__.split('\n\n')[0])
  p.add_argument('--grader', required=True, help='grader JSON file (an OpenAI grader object)')
  p.add_argument('--validate', action='store_true', help='only check the grader')
  p.add_argument('--sample', help="one sample's output text")
  p.add_argument('--sample_file', help="file holding one sample's output text")
  p.add_argument('--item', default='{}', help='the item (dataset row) as JSON, for --sample/--sample_file')
  p.add_argument('--data', help='JSONL of items')
  p.add_argument('--samples', help='JSONL of samples, one per line of --data')
  p.add_argument('--output', help='with --data: write one result per line here')
  p.add_argument('--prefix', default='grade', help='metric prefix of the --data summary')
  p.add_argument('--timeout_s', type=float, default=graders.pool.DEFAULT_TIMEOUT_S, help='per-sample deadline')
  p.add_argument('--num_workers', type=int, default=None)
  return p


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _read_jsonl(path: str) -> list:
  rows = []
  try:
    lines = pathlib.Path(path).read_text().splitlines()
  except OSError as e:
    _fail(f'{path}: cannot read: {e.strerror}')
  for n, line in enumerate(lines, 1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except ValueError as e:
        _fail(f'{path}:{n}: invalid JSON at column {e.colno}: {e.msg}')
  return rows


def _sample_text(row, where: str) -> str:
  if isinstance(row, str):
    return row
  if isinstance(row, dict):
    for key in ('output_text', 'sample'):
      if isinstance(row.get(key), str):
        return row[key]
  _fail(f"{where}: expected a JSON string or an object with a string 'output_text', found {json.dumps(row)[:80]}")


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    spec = graders.load(args.grader)
    graders.build(spec)  # every field checked before a judge model loads
    judges = {}
    if graders.local_models(spec) and not args.validate:
      from rftjax import inference  # JAX and the judge's weights: only for graders that name a local model

      judges = inference.local_judges(spec)
    grader = graders.build(spec, judges=judges)
  except errors.UserError as e:
    _fail(str(e))
  if args.validate:
    print(json.dumps({'valid': True, 'type': grader.type, 'name': grader.name}))
    return 0
  modes = [bool(args.sample is not None or args.sample_file), bool(args.data or args.samples)]
  if sum(modes) != 1:
    _fail('give --validate, or one sample (--sample or --sample_file, with --item), or --data with --samples')
  with graders.GradingPool(num_workers=args.num_workers, timeout_s=args.timeout_s) as pool:
    if modes[0]:
      text = args.sample if args.sample is not None else pathlib.Path(args.sample_file).read_text()
      try:
        item = json.loads(args.item)
      except ValueError as e:
        _fail(f'--item: invalid JSON at column {e.colno}: {e.msg}')
      if not isinstance(item, dict):
        _fail(f'--item: expected a JSON object, found {type(item).__name__}')
      result = pool.grade(grader, [text], [item])[0]
      print(json.dumps(result.to_json(), default=str))
      return 1 if result.errors else 0  # a grading that failed is not a score of 0
    if not (args.data and args.samples):
      _fail('--data and --samples go together')
    items, rows = _read_jsonl(args.data), _read_jsonl(args.samples)
    if len(items) != len(rows):
      _fail(f'--data has {len(items)} lines but --samples has {len(rows)}; expected the same number')
    for n, item in enumerate(items, 1):
      if not isinstance(item, dict):
        _fail(f'{args.data}:{n}: expected a JSON object, found {type(item).__name__}')
    texts = [_sample_text(r, f'{args.samples}:{n}') for n, r in enumerate(rows, 1)]
    results = pool.grade(grader, texts, items)
  if args.output:
    with open(args.output, 'w') as f:
      for r in results:
        f.write(json.dumps(r.to_json(), default=str) + '\n')
  print(json.dumps(graders.summarize(results, prefix=args.prefix), indent=1))
  failed = graders.all_failed(results)
  if failed:  # the zeros above mean the grader could not run, not that the samples are wrong
    print(f'error: {failed}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
