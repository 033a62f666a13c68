"""A run at a glance: progress, best checkpoint, validation reward, provenance, where the time went.

  python -m rftjax.report --workdir=runs/tiny [--json]

Read-only (config.json, metrics.jsonl, checkpoints/ through a read-only Checkpointer), so it is safe on a run that
is still training. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
from typing import Any

from rftjax import checkpoint as checkpoint_lib
from rftjax import cli
from rftjax import errors
from rftjax import graders
from rftjax import metrics as metrics_lib
from rftjax import runfs

TIMINGS = ('sampling_s', 'grading_s', 'training_s', 'eval_s', 'checkpoint_s')


def _grader_type(spec: Any) -> str | None:
  if not spec:
    return None
  try:
    spec = graders.load(spec)  # a dict, or read from its file
  except graders.GraderConfigError:
    return f'? ({spec} unreadable from here)'
  kind = spec.get('type')
  if kind == 'multi':
    subs = spec.get('graders') or {}
    return 'multi(' + ', '.join(f'{n}:{g.get("type")}' for n, g in subs.items() if isinstance(g, dict)) + ')'
  return kind


def summarize(workdir: str | pathlib.Path) -> dict:
  """Everything the table shows, as a JSON-able dict."""
  workdir = runfs.path(workdir)  # local or gs://
  if not workdir.is_dir():
    raise errors.ConfigError(f'--workdir={workdir}: no such run directory')
  config = runfs.read_config(workdir).to_dict() if (workdir / 'config.json').is_file() else {}
  records = metrics_lib.read_jsonl(workdir / 'metrics.jsonl')
  train = [r for r in records if r.get('train_reward_mean') is not None]
  valid = [r for r in records if r.get('valid_reward_mean') is not None]
  valid_by_step = {int(r['step']): float(r['valid_reward_mean']) for r in valid}

  out: dict[str, Any] = {'workdir': str(workdir)}
  out['steps_done'] = max((int(r['step']) for r in train), default=0)
  out['total_steps'] = config.get('total_steps')

  steps_on_disk: list[int] = []
  best_step, best_reward, best_source = None, None, None
  if (workdir / 'checkpoints').is_dir():
    ckpt = checkpoint_lib.Checkpointer(workdir / 'checkpoints', read_only=True, async_save=False)
    try:
      steps_on_disk = ckpt.all_steps()
      best_step = ckpt.best_step()
      if best_step is not None:
        best_reward = float(ckpt.metrics(best_step)[ckpt.best_metric])
        best_source = 'checkpoints'
    finally:
      ckpt.close()
  if best_step is None and valid_by_step:  # no evaluated checkpoint (yet): best of the logged evals
    best_step = max(valid_by_step, key=lambda s: (valid_by_step[s], s))
    best_reward, best_source = valid_by_step[best_step], 'metrics.jsonl'
  out.update(best_step=best_step, best_valid_reward=best_reward, best_from=best_source)
  if valid_by_step:
    first, last = min(valid_by_step), max(valid_by_step)
    out.update(
      valid_reward_first=valid_by_step[first],
      valid_reward_first_step=first,
      valid_reward_last=valid_by_step[last],
      valid_reward_last_step=last,
    )
  if train:
    tail = train[-10:]
    out['train_reward_last_n'] = len(tail)
    out['train_reward_last10_mean'] = sum(r['train_reward_mean'] for r in tail) / len(tail)

  data = config.get('data') or {}
  out['source'] = {
    'model': config.get('model'),
    'init': config.get('init') or '(random)',
    'tokenizer': config.get('tokenizer') or config.get('init'),
    'train_data': data.get('train'),
    'valid_data': data.get('valid'),
    'grader': _grader_type(config.get('grader')),
  }

  timing = {}
  for name in TIMINGS:
    values = [r[f'timing/{name}'] for r in records if r.get(f'timing/{name}') is not None]
    if values:
      timing[name] = float(sum(values))
  out['timing_s'] = timing
  out['timing_total_s'] = float(sum(timing.values()))

  logged = [k for r in records for k in r if 'tokens_per_s' in k or 'tok_per_s' in k]
  if logged:
    key = logged[-1]
    vals = [r[key] for r in records if r.get(key) is not None]
    out['tokens_per_s'] = {'key': key, 'mean': sum(vals) / len(vals)}
  elif train and timing.get('sampling_s') and config.get('batch_size') and config.get('num_generations'):
    rows = config['batch_size'] * config['num_generations']
    tokens = sum(r.get('completion_len_mean', 0.0) * rows for r in train)
    out['tokens_per_s'] = {
      'key': 'estimated: completion_len_mean x batch_size x num_generations / sampling_s',
      'mean': tokens / timing['sampling_s'],
    }
  out['checkpoints'] = steps_on_disk
  out['hyperparameters'] = _hyperparameters(config)
  out['disk_bytes'] = _disk_use(workdir, steps_on_disk)
  return out


def _hyperparameters(config: dict) -> dict:
  """What decided the run's updates, as the trainer resolved them (OpenAI-style values included)."""
  if not config:
    return {}
  get = lambda *keys: functools.reduce(lambda d, k: (d or {}).get(k), keys, config)
  out = {
    'total_steps': get('total_steps'), 'batch_size': get('batch_size'), 'num_generations': get('num_generations'),
    'learning_rate': get('optimizer', 'learning_rate'), 'schedule': get('optimizer', 'schedule'),
    'beta': get('grpo', 'beta'), 'advantage': get('grpo', 'advantage'),
    'loss_aggregation': get('grpo', 'loss_aggregation'), 'temperature': get('sampling', 'temperature'),
    'max_new_tokens': get('sampling', 'max_new_tokens'), 'lora_rank': get('lora', 'rank') or 0,
  }  # fmt: skip
  resolved = json.loads(get('openai', 'resolved') or '{}')
  out['openai_resolved'] = {k: f'{v["value"]} ({v["from"]})' for k, v in resolved.items()}
  return out


def _disk_use(workdir, steps: list[int]) -> dict:
  """Bytes of the whole run directory and of each checkpoint on disk (local runs; a bucket is not walked)."""
  if runfs.is_remote(workdir):
    return {}
  size = lambda p: sum(f.stat().st_size for f in pathlib.Path(p).rglob('*') if f.is_file())
  return {'total': size(workdir), **{f'checkpoint {s}': size(workdir / 'checkpoints' / str(s)) for s in steps}}


def _fmt(v) -> str:
  if isinstance(v, float):
    return f'{v:.4f}' if abs(v) < 1000 else f'{v:.0f}'
  return '-' if v is None else str(v)


def table(s: dict) -> str:
  rows = [
    ('run', s['workdir']),
    ('steps', f'{s["steps_done"]} / {_fmt(s["total_steps"])}'),
    (
      'best step',
      f'{_fmt(s["best_step"])}  (valid reward {_fmt(s["best_valid_reward"])}, from {_fmt(s["best_from"])})',
    ),
  ]
  if 'valid_reward_first' in s:
    rows.append(
      (
        'valid reward',
        f'{_fmt(s["valid_reward_first"])} at step {s["valid_reward_first_step"]} -> '
        f'{_fmt(s["valid_reward_last"])} at step {s["valid_reward_last_step"]}',
      )
    )
  if 'train_reward_last10_mean' in s:
    n = s['train_reward_last_n']
    rows.append(('train reward', f'{_fmt(s["train_reward_last10_mean"])} (mean of the last {n} step{"s" * (n > 1)})'))
  for k, v in s['source'].items():
    rows.append((k.replace('_', ' '), _fmt(v)))
  total = s['timing_total_s'] or 1.0
  for k, v in s['timing_s'].items():
    rows.append((f'time {k[:-2]}', f'{v:.1f} s ({100 * v / total:.0f}%)'))
  if s['timing_s']:
    rows.append(('time total', f'{s["timing_total_s"]:.1f} s'))
  if 'tokens_per_s' in s:
    rows.append(('tokens/s', f'{s["tokens_per_s"]["mean"]:.1f}  ({s["tokens_per_s"]["key"]})'))
  rows.append(('checkpoints', ', '.join(map(str, s['checkpoints'])) or '-'))
  for k, v in s['hyperparameters'].items():
    if k == 'openai_resolved':
      rows += [(f'  {name}', how) for name, how in v.items()]
    else:
      rows.append((k.replace('_', ' '), _fmt(v)))
  for k, v in s['disk_bytes'].items():
    rows.append((f'disk {k}', f'{v / 2**20:.1f} MiB'))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m rftjax.report', description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True, help='a run directory')
  p.add_argument('--json', action='store_true', help='print the summary as one JSON object instead of a table')
  args = p.parse_args(argv)

  def body() -> int:
    s = summarize(args.workdir)
    print(json.dumps(s) if args.json else table(s))
    return 0

  return cli.run(body)


if __name__ == '__main__':
  sys.exit(main())
