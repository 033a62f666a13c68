"""`preflight --write_filtered=DIR`: the training file without the prompts that give GRPO no signal.

A prompt whose k sampled completions all got the same reward (all failed: never solved; all passed: always solved)
gives every completion of its group the same advantage, zero. DIR/train.jsonl is the training file's lines as they
were written without the measured prompts `--drop` names; DIR/valid.jsonl is the run's validation file, unchanged
(only training prompts are measured, and an unchanged validation set keeps a filtered run comparable). See
docs/preflight.md.
"""

from __future__ import annotations

import pathlib

from etils import epath

from rftjax import cli
from rftjax import data as data_lib
from rftjax import errors
from rftjax import runfs

DROPS = ('always_solved', 'never_solved')


def check_folder(config, out: str) -> pathlib.Path:
  """--write_filtered's folder, checked before the measurement: one this process can write in (cli.check_out) that
  would not overwrite the run's own data."""
  if runfs.is_remote(out):
    raise errors.ConfigError(f'--write_filtered={out}: expected a local folder (copy it to a bucket afterwards)')
  cli.check_out(out, folder=True, label=f'--write_filtered={out}')
  path = pathlib.Path(out)
  for name in ('train.jsonl', 'valid.jsonl'):  # found after the measurement, this would lose it
    if (path / name).exists() and not (path / name).is_file():
      raise errors.ConfigError(
        f'--write_filtered={out}: {path / name} is a folder; expected a file to replace, or none'
      )
  for key in ('train', 'valid'):
    for name in ('train.jsonl', 'valid.jsonl'):
      if (path / name).resolve() == pathlib.Path(config.data[key]).resolve():
        raise errors.ConfigError(
          f'--write_filtered={out}: would overwrite config.data.{key}={config.data[key]}; choose another folder'
        )
  return path


def filtered_lines(train_path: str, rows: list[dict], drop, fits=None) -> tuple[list[str], dict]:
  """The training file's lines without the measured prompts `drop` names, as written (blank lines dropped). Only a
  prompt whose k rewards are all equal is dropped (no GRPO signal; rewards that differ train, whatever the pass
  threshold says of them); one whose grading failed is kept (its zeros say nothing of the prompt), as are lines not
  measured (--limit) and lines too long to train (`fits`: the sources that fit, None: all;
  data.skip_long_prompts skips the others, which are never measured). `rows`: pass_rates.jsonl's. Returns (lines,
  counts)."""
  by_source = {r['source']: r for r in rows}
  kept = []
  counts = dict.fromkeys(
    ('kept', 'always_solved', 'never_solved', 'unmeasured_kept', 'errored_kept', 'too_long_kept'), 0
  )
  for where, line in data_lib.lines(train_path):
    r = by_source.get(where)
    kind = None
    if r is not None and not r['grading_errors'] and len({round(x, 9) for x in r['rewards']}) == 1:
      kind = 'never_solved' if r['pass_rate'] == 0 else 'always_solved' if r['pass_rate'] == 1 else None
    if kind in drop:
      counts[kind] += 1
      continue
    kept.append(line if line.endswith('\n') else line + '\n')
    counts['kept'] += 1
    too_long = fits is not None and where not in fits
    counts['too_long_kept'] += too_long
    counts['unmeasured_kept'] += r is None and not too_long
    counts['errored_kept'] += bool(r is not None and r['grading_errors'])
  return kept, counts


def write(config, rows: list[dict], drop, folder: pathlib.Path, samples: int, out, fits=None):
  """Writes `folder`/train.jsonl and valid.jsonl, each whole or not at all: (summary.json's `filtered` entry, None).
  A `drop` that leaves no training prompt (`fits`: `filtered_lines`') writes nothing (train would refuse the
  file): (None, the error line), for the caller to raise once its measurements in `out` are written."""
  kept, counts = filtered_lines(config.data.train, rows, drop, fits)
  if len(kept) == counts.get('too_long_kept', 0):
    too_long = f'; {len(kept)} kept, too long to train' if kept else ''
    there = ' (its train.jsonl from before is left as it was)' if (folder / 'train.jsonl').exists() else ''
    return None, (
      f'--write_filtered={folder}: --drop={",".join(drop)} drops every training prompt '
      f'({counts["never_solved"]} never solved, {counts["always_solved"]} always solved at k={samples}{too_long}); '
      f'nothing written there{there} (the measurements are in {out}); expected prompts left to train on: a larger '
      '--samples, another --drop, or easier data'
    )
  data_lib.write_atomic(folder / 'train.jsonl', ''.join(kept))
  data_lib.write_atomic(folder / 'valid.jsonl', epath.Path(config.data.valid).read_bytes())  # copied as it is
  return {'dir': str(folder), 'drop': list(drop), **counts, 'valid': 'copied unchanged'}, None


def said(entry: dict) -> str:
  """The console's line for summary.json's `filtered` entry."""
  too_long = f', {entry["too_long_kept"]} too long to train' if entry.get('too_long_kept') else ''
  return (
    f'wrote {entry["dir"]}/train.jsonl: {entry["kept"]} lines kept ({entry["unmeasured_kept"]} not measured, '
    f'{entry["errored_kept"]} whose grading failed{too_long}), dropped {entry["never_solved"]} never solved and '
    f'{entry["always_solved"]} always solved (k equal rewards); valid.jsonl copied unchanged'
  )
