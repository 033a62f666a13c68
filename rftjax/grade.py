"""Grading CLI, like OpenAI's /graders/validate and /graders/run endpoints.

  python -m rftjax.grade --grader=G.json --validate
  python -m rftjax.grade --grader=G.json --sample='The answer is 4' --item='{"answer": "4"}'
  python -m rftjax.grade --grader=G.json --data=items.jsonl --samples=samples.jsonl [--output=results.jsonl]

--grader may also be an OpenAI /graders/run request body ({"grader": {...}, "model_sample": ..., "item": {...}}: its
sample and item are graded unless --sample or --item is given) or a fine-tuning job file, whose grader at
method.reinforcement.grader is used. --samples lines are JSON strings, or objects with a string "output_text",
"completion" (what rftjax.sample and rftjax.evaluate write) or "sample"; line k grades with line k of --data.
Exit status: 0 ok; 1 the grading failed (one sample), or every grading failed (--data); 2 invalid grader or
arguments (the message names the field or file, what was found and what was expected), or a python/code grader
this machine cannot sandbox (see --allow_unsandboxed).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

from rftjax import cli
from rftjax import data as data_lib
from rftjax import errors
from rftjax import graders
from rftjax import runfs


def _positive(kind: type, least: int | None = None):
  """An argparse type: a finite number > 0 (a deadline, budget or worker count of 0 or less grades nothing), or
  >= `least`."""

  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      value = None
    if value is None or not (value > 0 and math.isfinite(value)) or value < (least or 0):
      bound = f'>= {least}' if least else '> 0'
      raise argparse.ArgumentTypeError(
        f'found {text!r}, expected {"an integer" if kind is int else "a number"} {bound}'
      )
    return value

  return parse


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m rftjax.grade', description=__doc__.split('\n\n')[0])
  p.add_argument('--grader', required=True, help='grader JSON file (an OpenAI grader object, or a job file with one)')
  p.add_argument('--validate', action='store_true', help='only check the grader')
  p.add_argument('--sample', help="one sample's output text")
  p.add_argument('--sample_file', help="file holding one sample's output text")
  p.add_argument('--item', help='the item (dataset row) as JSON, for --sample/--sample_file (default: {})')
  p.add_argument('--data', help='JSONL of items')
  p.add_argument('--samples', help='JSONL of samples, one per line of --data')
  p.add_argument('--output', help='with --data: write one result per line here')
  p.add_argument('--prefix', default='grade', help='metric prefix of the --data summary')
  p.add_argument(
    '--timeout_s', type=_positive(float), default=graders.pool.DEFAULT_TIMEOUT_S, help='per-sample deadline (s)'
  )
  p.add_argument('--num_workers', type=_positive(int), default=None, help='grading processes (default: one per core)')
  p.add_argument(
    '--memory_mb', type=_positive(int, graders.pool.MIN_MEMORY_MB), default=graders.pool.DEFAULT_MEMORY_MB,
    help="each python/code/math grader worker's address space, MB (train: grading.memory_mb)",
  )  # fmt: skip
  p.add_argument(
    '--budget_s', type=_positive(float), default=None, help='the most the whole grading may take, s (default: no cap)'
  )
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
  if not pathlib.Path(path).exists():  # a pipe (<(...), /dev/stdin) is read as a file is
    _fail(f'{path}: no such file{runfs.missing_where(path)}{runfs.tilde_hint(path)}')
  if pathlib.Path(path).is_dir():
    _fail(f'{path}: a folder, not a file; expected a JSONL file')
  try:
    return [(where, data_lib.loads(line, where)) for where, line in data_lib.lines(path)]
  except errors.UserError as e:
    _fail(str(e))


SAMPLE_KEYS = ('output_text', 'completion', 'sample')  # OpenAI's name; rftjax.sample's and rftjax.evaluate's; old


def _sample_text(row, where: str) -> str:
  if isinstance(row, str):
    return row
  if isinstance(row, dict):
    for key in SAMPLE_KEYS:
      if isinstance(row.get(key), str):
        return row[key]
  _fail(
    f'{where}: expected a JSON string or an object with a string {" or ".join(map(repr, SAMPLE_KEYS))} (the '
    f'output of rftjax.sample and rftjax.evaluate has "completion"), found {json.dumps(row, ensure_ascii=False)[:80]}'
  )


def progress_chunk(pool) -> int:
  """Samples per pool call with --data: four per worker (or judge thread) keeps each busy, and the count on stderr
  moves between calls; 256 a call left a slow grader silent for minutes (a call costs ~1 ms more)."""
  return max(32, 4 * pool.num_workers)


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  return cli.run(lambda: _run(args))  # Ctrl-C and a closed stdout as in the other commands


def _run(args) -> int:
  try:
    spec, grader_at = graders.locate(args.grader)  # its JSON path in a job or /graders/run body, or None
    checked = graders.build(spec, where=grader_at)  # every field checked before a judge loads
    graders.check_runnable(checked, args.allow_unsandboxed)
    from rftjax import response_format

    fmt = response_format.of_job(args.grader, grader_at)[
      1
    ]  # a job file: its completions must match its format, as in training
    judges = {}
    if graders.local_models(spec):
      from rftjax import inference  # JAX and the judge's weights: only for graders that name a local model
      from rftjax import loader

      loader.check_judges(spec)  # --validate too: the files are there
      judges = {} if args.validate else inference.local_judges(spec)
    grader = graders.build(spec, judges=judges, where=grader_at)
  except errors.UserError as e:
    _fail(str(e))
  if args.sample is not None and args.sample_file:
    _fail('give one of --sample or --sample_file')
  item_label = '--item'
  if grader_at == 'grader' and not (args.validate or args.data or args.samples):
    # an OpenAI /graders/run body carries its sample and item too; flags given win
    body = errors.read_json_file(args.grader, errors.UserError, f'--grader={args.grader}')
    if args.sample is None and not args.sample_file and isinstance(body.get('model_sample'), str):
      args.sample = body['model_sample']
    if args.item is None and 'item' in body:
      args.item, item_label = json.dumps(body['item']), f'--grader={args.grader}: item'
  if args.validate:
    if args.sample is not None or args.sample_file or args.data or args.samples:
      _fail('--validate only checks the grader: drop --sample, --sample_file, --data and --samples')
    at = {'grader_at': grader_at} if grader_at else {}  # which grader of the file was checked
    print(json.dumps({'valid': True, 'type': grader.type, 'name': grader.name, **at}))
    for where in graders.ignoring_sample(spec, grader_at):  # valid, and useless for training
      print(f'note: {where}: no {{{{sample.*}}}} in its templates, so it scores every completion alike',
            file=sys.stderr)  # fmt: skip
    return 0
  modes = [bool(args.sample is not None or args.sample_file), bool(args.data or args.samples)]
  if sum(modes) != 1:
    _fail('give --validate, or one sample (--sample or --sample_file, with --item), or --data with --samples')
  if modes[0]:  # every input is read and checked before the pool starts
    try:
      text = args.sample if args.sample is not None else pathlib.Path(args.sample_file).read_text('utf-8-sig')
    except (OSError, UnicodeDecodeError) as e:
      _fail(f'--sample_file={args.sample_file}: cannot read it ({getattr(e, "strerror", None) or e})')
    try:  # a key given twice is refused, as in data files
      item = errors.json_loads(args.item or '{}', errors.UserError, item_label, in_file=False)
    except errors.UserError as e:
      _fail(str(e))
    if not isinstance(item, dict):
      _fail(f'{item_label}: expected a JSON object, found {type(item).__name__}')
    texts, items = [text], [item]
  else:
    if not (args.data and args.samples):
      _fail('--data and --samples go together')
    data, rows = _read_jsonl(args.data), _read_jsonl(args.samples)
    if len(data) != len(rows):
      _fail(f'--data has {len(data)} lines but --samples has {len(rows)}; expected the same number')
    if not data:  # a mean over nothing would print as 0.0
      _fail(f'--data={args.data}: no items (the file is empty); expected one JSON object per line')
    # a samples file of a run or of evaluate as --data too: its row's "item" is the data row it answers
    data = [(w, x['item'] if isinstance(x, dict) and isinstance(x.get('item'), dict) and 'completion' in x else x)
            for w, x in data]  # fmt: skip
    for where, item in data:
      if not isinstance(item, dict):
        _fail(f'{where}: expected a JSON object, found {type(item).__name__}')
    texts, items = [_sample_text(r, where) for where, r in rows], [item for _, item in data]
    sources = [where for where, _ in data]
    try:
      graders.check_items(spec, data, grader_at)
    except errors.UserError as e:
      _fail(str(e))
  if args.output:  # before the grading, which may take long
    cli.check_out(args.output, label=f'--output={args.output}', inputs={'--data': args.data, '--samples': args.samples})
  pool = graders.GradingPool(args.num_workers, args.timeout_s, args.memory_mb, budget_s=args.budget_s,
                             allow_unsandboxed=args.allow_unsandboxed, response_format=fmt)  # fmt: skip
  pool.budget_label = f'--budget_s={args.budget_s:g}' if args.budget_s else ''
  pool.timeout_label, pool.memory_label = '--timeout_s', '--memory_mb'
  with pool:
    results, t0, report, chunk = [], time.monotonic(), cli.progress('grading'), progress_chunk(pool)
    for start in range(0, len(texts), chunk):  # in chunks, so that a long --data shows how far it got
      if args.budget_s:  # the pool's budget is per call: each chunk gets what is left of the whole one
        pool.budget_s = max(args.budget_s - (time.monotonic() - t0), 1e-3)
      results += pool.grade(grader, texts[start : start + chunk], items[start : start + chunk])
      if len(texts) > chunk:
        report(len(results), len(texts))
  if modes[0]:
    print(json.dumps(results[0].to_json(), default=str, ensure_ascii=False))
    return 1 if results[0].errors else 0  # a grading that failed is not a score of 0
  unwritten = None
  if args.output:  # before the summary, whose reader may go (`| head -1`); whole or not at all, missing folders
    try:  # made (as check_out promised; the disk may fill since)
      data_lib.write_text(
        args.output, ''.join(json.dumps(r.to_json(), default=str, ensure_ascii=False) + '\n' for r in results)
      )
    except OSError as e:
      unwritten = e
  summary = graders.summarize(results, prefix=args.prefix)
  try:
    print(json.dumps(summary, indent=1))
  finally:  # said even when the summary's reader has gone too
    if unwritten is not None:
      raise errors.OutputError(
        f'--output={args.output}: cannot write it ({unwritten.strerror or unwritten}); the summary above is all '
        'that is left'
      )
  failed = graders.all_failed(results)
  if failed:  # the zeros above mean the grader could not run (or ran in part), not that the samples are wrong
    print(f'error: {failed}', file=sys.stderr)
    return 1
  bad = sum(1 for r in results if r.errors)
  if bad:  # their zeros are in the mean above: say so where a person reads, not only in the JSON's error_rate
    first = next(where for where, r in zip(sources, results) if r.errors)
    keep = f'--output={args.output} has' if args.output else '--output=FILE keeps'
    print(f'note: {bad} of {len(results)} gradings failed and count as 0 in {args.prefix}_reward_mean: '
          f"{graders.what_failed(results)}; the first at {first} ({keep} each one's error)",
          file=sys.stderr)  # fmt: skip
  slowest = summary.get(f'{args.prefix}/grading_latency_s_max', 0.0)
  train_s = graders.pool.TRAIN_TIMEOUT_S
  if slowest > train_s and 'timeout_s' not in spec:  # passes here (--timeout_s: 120 s), not in training
    print(f'note: the slowest grading took {slowest:.1f} s: past the {train_s:g} s train gives each one by '
          'default (grading.timeout_s; or give the grader a timeout_s of its own)', file=sys.stderr)  # fmt: skip
  return 0


if __name__ == '__main__':
  cli.command(main)
