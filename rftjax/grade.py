"""Grading CLI, like OpenAI's /graders/validate and /graders/run endpoints.

  python -m rftjax.grade --grader=G.json --validate
  python -m rftjax.grade --grader=G.json --sample='The answer is 4' --item='{"answer": "4"}'
  python -m rftjax.grade --grader=G.json --data=items.jsonl --samples=samples.jsonl [--output=results.jsonl]

--samples lines are JSON strings, or objects with "output_text" (or "sample"); line k grades with line k of --data.
Exit status: 0 ok; 1 the grading failed (one sample), or every grading failed (--data); 2 invalid grader or
arguments (the message names the field or file, what was found and what was expected), or a python/code grader
this machine cannot sandbox (see --allow_unsandboxed).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from rftjax import data as data_lib
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
  p.add_argument('--budget_s', type=float, default=None, help='the most the whole grading may take (default: no cap)')
  p.add_argument(
    '--allow_unsandboxed',
    action='store_true',
    help='run python/code graders even where bubblewrap cannot isolate them (docs/graders.md)',
  )
  return p


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _read_jsonl(path: str) -> list[tuple[str, object]]:
  """('file:line', JSON value) per non-blank line."""
  if not pathlib.Path(path).is_file():
    _fail(f'{path}: no such file')
  try:
    return [(where, data_lib.loads(line, where)) for where, line in data_lib.lines(path)]
  except errors.UserError as e:
    _fail(str(e))


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
    graders.check_sandbox(graders.build(spec), args.allow_unsandboxed)  # every field checked before a judge loads
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
  if modes[0]:  # every input is read and checked before the pool starts
    text = args.sample if args.sample is not None else pathlib.Path(args.sample_file).read_text()
    try:
      item = json.loads(args.item)
    except ValueError as e:
      _fail(f'--item: invalid JSON at column {e.colno}: {e.msg}')
    if not isinstance(item, dict):
      _fail(f'--item: expected a JSON object, found {type(item).__name__}')
    texts, items = [text], [item]
  else:
    if not (args.data and args.samples):
      _fail('--data and --samples go together')
    data, rows = _read_jsonl(args.data), _read_jsonl(args.samples)
    if len(data) != len(rows):
      _fail(f'--data has {len(data)} lines but --samples has {len(rows)}; expected the same number')
    for where, item in data:
      if not isinstance(item, dict):
        _fail(f'{where}: expected a JSON object, found {type(item).__name__}')
    texts, items = [_sample_text(r, where) for where, r in rows], [item for _, item in data]
    try:
      graders.check_items(spec, data)
    except errors.UserError as e:
      _fail(str(e))
  pool = graders.GradingPool(args.num_workers, args.timeout_s, budget_s=args.budget_s,
                             allow_unsandboxed=args.allow_unsandboxed)  # fmt: skip
  with pool:
    results = pool.grade(grader, texts, items)
  if modes[0]:
    print(json.dumps(results[0].to_json(), default=str))
    return 1 if results[0].errors else 0  # a grading that failed is not a score of 0
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
