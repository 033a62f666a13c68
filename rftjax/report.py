"""A run at a glance: progress, best checkpoint, validation reward, provenance, where the time went.

  python -m rftjax.report --workdir=runs/tiny [--json | --format=table|json|openai]

Read-only (config.json, metrics.jsonl, events.jsonl, checkpoints/ through a read-only Checkpointer), so it is safe on
a run that is still training. `--format=openai` prints the run as OpenAI's fine-tuning job object, with its
checkpoints as `fine_tuning.job.checkpoint` objects under `checkpoints` (`openai_job`). See docs/cli.md.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import pathlib
import re
from typing import Any

from rftjax import checkpoint as checkpoint_lib
from rftjax import cli
from rftjax import errors
from rftjax import graders
from rftjax import hparams
from rftjax import metrics as metrics_lib
from rftjax import runfs

log = logging.getLogger(__name__)

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


def run_config(workdir) -> dict:
  """The run's config.json as a dict, {} for a run whose logs are there without it. A folder with no run in it
  (missing, empty, a Hugging Face model folder) is a ConfigError, as in evaluate and export: a report of it would be
  all dashes, and a job 'running' since 1970."""
  logs = [n for n in ('metrics.jsonl', 'events.jsonl') if (workdir / n).is_file()]
  if logs and not (workdir / 'config.json').is_file():
    return {}
  # neither log nor config.json: "no config.json there; expected a run directory ..."
  config = errors.plain(runfs.read_config(workdir, model_ok=True))
  if runfs.config_kind(config) != 'export':
    return config
  what = f"--workdir={workdir}: its config.json is a Hugging Face model's (model_type {config['model_type']!r})"
  if not logs:
    raise errors.ConfigError(f"{what}, not a run's; expected a run directory written by rftjax.train")
  log.warning("%s: an export replaced the run's; reporting from its logs alone", what)
  return {}


def summarize(workdir: str | pathlib.Path) -> dict:
  """Everything the table shows, as a JSON-able dict."""
  workdir = runfs.path(workdir)  # local or gs://
  config = run_config(workdir)
  records = metrics_lib.read_jsonl(workdir / 'metrics.jsonl', stepped=True)
  train = [r for r in records if r.get('train_reward_mean') is not None]
  valid = [r for r in records if r.get('valid_reward_mean') is not None]
  valid_by_step = {int(r['step']): float(r['valid_reward_mean']) for r in valid}
  graded_by_step = {int(r['step']): metrics_lib.num_verdicts(r) for r in valid}
  stderr_by_step = {int(r['step']): (r.get('valid_reward_stderr'), r.get('valid/num_prompts')) for r in valid}

  out: dict[str, Any] = {'workdir': str(workdir)}
  out['steps_logged'] = max((int(r['step']) for r in train), default=0)
  out['total_steps'] = config.get('total_steps')

  steps_on_disk, due = [], False
  best_step, best_reward, best_source, kept_rewards = None, None, None, {}
  if (workdir / 'checkpoints').is_dir():
    ckpt = checkpoint_lib.Checkpointer(workdir / 'checkpoints', read_only=True, async_save=False)
    try:
      steps_on_disk = ckpt.all_steps()
      due = bool(steps_on_disk) and ckpt.validation_due(steps_on_disk[-1])  # its rerun has that validation to do
      best_step = ckpt.best_step()
      if best_step is not None:
        best_reward = float(ckpt.metrics(best_step)[ckpt.best_metric])
        best_source = 'checkpoints'
      for step in steps_on_disk:  # what each kept checkpoint scored (None: never validated)
        kept = ckpt.metrics(step)
        kept_rewards[step] = float(kept[ckpt.best_metric]) if kept else None
    finally:
      ckpt.close()
  if best_step is None and valid_by_step:  # no evaluated checkpoint (yet): best of the logged evals
    best_step = max(valid_by_step, key=lambda s: (valid_by_step[s], s))
    best_reward, best_source = valid_by_step[best_step], 'metrics.jsonl'
  out.update(best_step=best_step, best_valid_reward=best_reward, best_from=best_source)
  graded = graded_by_step.get(best_step)
  stderr, prompts = stderr_by_step.get(best_step, (None, None))
  if best_reward is not None and graded and stderr is not None and prompts:  # over prompts, as the run measured it
    out.update(best_valid_graded=int(graded), best_valid_prompts=int(prompts), best_valid_stderr=float(stderr))
  elif best_reward is not None and graded:  # an older run's: a mean of rewards in [0, 1] varies by at most p(1 - p)
    p = min(max(best_reward, 0.0), 1.0)  # per answer (each answer counted as independent)
    out.update(best_valid_graded=int(graded), best_valid_stderr=math.sqrt(p * (1 - p) / graded))
  out['checkpoint_valid_rewards'] = kept_rewards
  if valid_by_step:
    first, last = min(valid_by_step), max(valid_by_step)
    out.update(valid_reward_first=valid_by_step[first], valid_reward_first_step=first,
               valid_reward_last=valid_by_step[last], valid_reward_last_step=last)  # fmt: skip
  if train:
    tail = train[-10:]
    out['train_reward_last_n'] = len(tail)
    out['train_reward_last10_mean'] = sum(r['train_reward_mean'] for r in tail) / len(tail)

  data = config.get('data') or {}
  out['source'] = {
    'model': config.get('model'),
    'init': config.get('init') or None,  # None: random init (the table says so)
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
  compiled = [r['timing/compile_s'] for r in records if r.get('timing/compile_s') is not None]  # within the phases
  out['timing_compile_s'] = float(sum(compiled)) if compiled else None  # the training steps'; None: not logged

  logged = [k for r in records for k in r if 'tokens_per_s' in k or 'tok_per_s' in k]
  if logged:
    key = logged[-1]
    rated = [r for r in records if r.get(key) is not None]
    steady = [r for r in rated if not r.get('timing/compile_s')]  # a compiling step's rate measures the compiler
    vals = [r[key] for r in steady or rated]
    out['tokens_per_s'] = {'key': key, 'mean': sum(vals) / len(vals), 'steps': len(vals),  # None: no compile_s
                           'compiling_left_out': len(rated) - len(vals) if compiled else None,
                           'compiling_in_mean': (0 if steady else len(rated)) if compiled else None}  # fmt: skip
  elif train and timing.get('sampling_s') and config.get('batch_size') and config.get('num_generations'):
    rows = config['batch_size'] * config['num_generations']
    tokens = sum(r.get('completion_len_mean', 0.0) * rows for r in train)
    key = 'estimated: completion_len_mean x batch_size x num_generations / sampling_s'  # no compiling step known
    out['tokens_per_s'] = dict(key=key, mean=tokens / timing['sampling_s'], steps=len(train), compiling_left_out=0,
                               compiling_in_mean=None)  # fmt: skip
  out['checkpoints'] = steps_on_disk
  # what a rerun starts from (--format=openai's too): steps logged past the latest checkpoint are done again
  out['steps_done'] = steps_on_disk[-1] if steps_on_disk else out['steps_logged']
  events = metrics_lib.read_jsonl(workdir / 'events.jsonl')
  status, said = _status(events, out['steps_done'], out['total_steps'], out['steps_logged'], due)
  out['status'] = status
  holder = runfs.lock_holder(workdir) if status == 'running' and not runfs.is_remote(workdir) else None
  if holder:  # the trainer's lock file: on this host the lock itself says whether it still runs (its text and pid
    # do not: a copy of a live run's folder holds them too)
    held = runfs.held_by(workdir, cannot_ask=holder[0] if holder[1] else '') if holder[1] is not None else None
    out['status'] = 'stopped' if holder[1] is not None and not held else 'running'  # no lock to ask: its pid, then
    out['status_message'] = (held if held else f'{holder[0]} (another host: not checked)' if holder[1] is None
                             else f'{holder[0]} ended without a word (killed?)')  # fmt: skip
  if status in ('failed', 'cancelled') and said:
    out['status_message'] = said.get('message', '')
  train_errors = [r['train/error_rate'] for r in train if r.get('train/error_rate') is not None]
  valid_errors = [r for r in valid if r.get('valid/error_rate') is not None]
  if any(train_errors) or any(r['valid/error_rate'] for r in valid_errors):  # each failed grading scored 0
    out['grading_errors'] = {
      'train_error_rate_mean': sum(train_errors) / len(train_errors) if train_errors else None,
      'valid_error_rate_last': valid_errors[-1]['valid/error_rate'] if valid_errors else None,
      'valid_error_rate_last_step': int(valid_errors[-1]['step']) if valid_errors else None,
    }
  warned = [e for e in events if e.get('level') in ('warn', 'error') and not (e.get('data') or {}).get('status')]
  if warned:  # what the console said during the run (docs/cli.md, events.jsonl); a stop's own event is the status
    out['warnings'] = {'count': len(warned), 'last': warned[-1].get('message', ''),
                       'last_step': int(metrics_lib.event_step(warned[-1]))}  # fmt: skip
  formatted = _share(train, valid, 'train/response_format_valid', 'valid/response_format_valid')
  if formatted['train_last10_mean'] is not None or formatted['valid_last'] is not None:  # off the format: 0 ungraded
    out['response_format_valid'] = formatted
  cut = _share(train, valid, 'truncated_frac', 'valid_truncated_frac')
  one_token = (config.get('sampling') or {}).get('max_new_tokens') == 1  # no room for a stop: tiny.py's by design
  if not one_token and (cut['train_last10_mean'] or any(r.get('valid_truncated_frac') for r in valid)):
    out['truncated'] = cut  # scored as they stand
  out['hyperparameters'] = _hyperparameters(config)
  out['disk_bytes'] = _disk_use(workdir, steps_on_disk)
  return out


def _share(train: list[dict], valid: list[dict], train_key: str, valid_key: str) -> dict:
  """A share the run logs each step and each validation: its mean over the last 10 training steps that have it,
  and its value at the last validation that has it (None where none has)."""
  steps = [r[train_key] for r in train[-10:] if r.get(train_key) is not None]
  evals = [r for r in valid if r.get(valid_key) is not None]
  return {
    'train_last10_mean': sum(steps) / len(steps) if steps else None,
    'valid_last': evals[-1][valid_key] if evals else None,
    'valid_last_step': int(evals[-1]['step']) if evals else None,
  }


def _share_text(share: dict, what: str) -> str:
  """'train 12.5% (mean of the last steps), valid 10.0% at step 40 (<what>)'."""
  said = (
    [] if share['train_last10_mean'] is None else [f'train {share["train_last10_mean"]:.1%} (mean of the last steps)']
  )
  if share['valid_last'] is not None:
    said.append(f'valid {share["valid_last"]:.1%} at step {share["valid_last_step"]}')
  return ', '.join(said) + f' ({what})'


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
    # how the validation was measured: two runs' rewards compare only when these agree
    'eval_samples': get('eval_samples'), 'eval_temperature': get('eval_temperature'),
    'valid_limit': get('data', 'valid_limit') or None, 'seed': get('seed'),
  }  # fmt: skip
  resolved = json.loads(get('openai', 'resolved') or '{}')
  out['openai_resolved'] = {k: f'{v["value"]} ({v["from"]})' for k, v in resolved.items()}
  return out


def _disk_use(workdir, steps: list[int]) -> dict:
  """Bytes of the whole run directory and of each checkpoint on disk (local runs; a bucket is not walked)."""
  if runfs.is_remote(workdir):
    return {}
  return {'total': _size(workdir), **{f'checkpoint {s}': _size(workdir / 'checkpoints' / str(s)) for s in steps}}


def _size(folder) -> int:
  """Bytes of the files under `folder`, counting what a running trainer deletes or renames meanwhile (an old
  checkpoint, Orbax's temporary folder) as gone, not as an error."""
  total = 0
  for root, _, files in os.walk(folder):  # os.walk skips a folder that vanished; rglob raises
    for name in files:
      try:
        total += os.stat(os.path.join(root, name)).st_size
      except FileNotFoundError:  # deleted since the walk listed it (or a broken link)
        pass
  return total


def _fmt(v) -> str:
  if isinstance(v, float):  # a learning rate of 3e-06 printed as 0.0000
    return f'{v:.4f}' if 1e-3 <= abs(v) < 1000 or v == 0 else f'{v:.0f}' if abs(v) >= 1000 else f'{v:.4g}'
  return '-' if v is None or v == '' else str(v)  # a run from an hf: folder has model ''


def _noise(s: dict) -> str:
  """' ± 0.171 over 8 graded; steps 50, 150 within one standard error': how far the best's lead can be trusted."""
  if 'best_valid_stderr' not in s:
    return ''
  se, best = s['best_valid_stderr'], s['best_valid_reward']
  close = [step for step, r in (s.get('checkpoint_valid_rewards') or {}).items()
           if step != s['best_step'] and r is not None and best - r <= se]  # fmt: skip
  tie = f'; step{"s" * (len(close) > 1)} {", ".join(map(str, close))} within one standard error' if close else ''
  first = s.get('valid_reward_first') if s.get('valid_reward_first_step') == 0 else None
  if first is not None and s['best_step'] != 0 and 0 not in close and best - first <= se:  # a learning rate too low,
    tie += f'; no better than step 0 (the untrained model, {first:.4f}) by one standard error'  # a beta too high
  prompts, graded = s.get('best_valid_prompts'), s['best_valid_graded']
  over = f'{prompts} prompts' + (f' x {graded // prompts} samples' if prompts and graded > prompts else '')
  return f' ± {se:.3f} over {over if prompts else f"{graded} graded"}{tie}'


def _unsaved(s: dict) -> str:
  """The table's note when steps were logged past the latest checkpoint (a run between saves, or one that died)."""
  if s['steps_logged'] <= s['steps_done']:
    return ''
  if s['status'] == 'running':
    return f' (the latest checkpoint is step {s["steps_done"]})'
  return f' (the latest checkpoint is step {s["steps_done"]}: a rerun resumes there and does the steps after it again)'


def table(s: dict) -> str:
  status = s['status']
  if status == 'running' and not s.get('status_message'):  # no lock file of this host's trainer to ask
    status = 'running, or stopped without a word (killed?)'
  rows = [
    ('run', s['workdir']),
    ('status', f'{status}: {s["status_message"]}' if s.get('status_message') else status),
    ('steps', f'{s["steps_logged"]} / {_fmt(s["total_steps"])}' + _unsaved(s)),
    (
      'best step',
      f'{_fmt(s["best_step"])}  (valid reward {_fmt(s["best_valid_reward"])}{_noise(s)}, from {_fmt(s["best_from"])})',
    ),  # fmt: skip
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
  if 'grading_errors' in s:
    e = s['grading_errors']
    said = []
    if e['train_error_rate_mean'] is not None:
      said.append(f'train {e["train_error_rate_mean"]:.1%} (mean over steps)')
    if e['valid_error_rate_last'] is not None:
      said.append(f'valid {e["valid_error_rate_last"]:.1%} at step {e["valid_error_rate_last_step"]}')
    rows.append(('failed gradings', ', '.join(said) + ' (each scored 0, or was out of the mean for an outage; '
                 '<split>/errors/* in metrics.jsonl)'))  # fmt: skip
  if 'warnings' in s:
    w, last = s['warnings'], ' '.join(s['warnings']['last'].split())  # whole: its cause and fix come last
    rows.append(('warnings', f'{w["count"]} in events.jsonl; the last, at step {_fmt(w["last_step"])}: {last}'))
  if 'response_format_valid' in s:
    rows.append(('response format valid', _share_text(s['response_format_valid'], 'the others scored 0 ungraded')))
  if 'truncated' in s:
    rows.append(('cut off', _share_text(s['truncated'], 'ran to sampling.max_new_tokens without stopping')))
  for k, v in s['source'].items():
    rows.append((k.replace('_', ' '), '(random)' if k == 'init' and v is None else _fmt(v)))
  total = s['timing_total_s'] or 1.0
  for k, v in s['timing_s'].items():
    rows.append((f'time {k[:-2]}', f'{v:.1f} s ({100 * v / total:.0f}%)'))
  if s['timing_s']:
    compiling = f' (compiling {s["timing_compile_s"]:.1f} s of it)' if s['timing_compile_s'] else ''
    rows.append(('time total', f'{s["timing_total_s"]:.1f} s{compiling}'))
  if 'tokens_per_s' in s:
    rate = s['tokens_per_s']
    left = f', {rate["compiling_left_out"]} compiling left out' if rate.get('compiling_left_out') else ''
    left += ', every step compiled' if rate.get('compiling_in_mean') else ''
    rows.append(('tokens/s', f'{rate["mean"]:.1f}  ({rate["key"]}{left})'))
  rewards = s.get('checkpoint_valid_rewards') or {}
  kept = [
    f'{step} ({_fmt(rewards[step])})' if rewards.get(step) is not None else str(step) for step in s['checkpoints']
  ]
  scored = any(r is not None for r in rewards.values())
  rows.append(('checkpoints', ', '.join(kept) + ' (valid reward)' * scored if kept else '-'))
  for k, v in s['hyperparameters'].items():
    if k == 'openai_resolved':
      rows += [(f'  {name}', how) for name, how in v.items()]
    else:
      rows.append((k.replace('_', ' '), _fmt(v)))
  for k, v in s['disk_bytes'].items():
    rows.append((f'disk {k}', f'{v / 2**20:.1f} MiB'))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


ORGANIZATION = 'rftjax-local'  # FineTuningJob.organization_id is required; a local run belongs to no organization
TERMINAL = ('succeeded', 'failed', 'cancelled')


def openai_job(workdir: str | pathlib.Path) -> dict:
  """The run as OpenAI's `fine_tuning.job` object (the fields of the `openai` package's `FineTuningJob`), plus
  `checkpoints`: the checkpoints on disk as `fine_tuning.job.checkpoint` objects, newest first as OpenAI lists
  them, and `rftjax`: what only rftjax has (the workdir, steps done, the best step). docs/cli.md says where each
  field comes from."""
  workdir = runfs.path(workdir)
  config = run_config(workdir)
  records = metrics_lib.read_jsonl(workdir / 'metrics.jsonl', stepped=True)
  events = metrics_lib.read_jsonl(workdir / 'events.jsonl')
  train = [r for r in records if r.get('train_reward_mean') is not None]
  train_by_step = {int(r['step']): r for r in train}
  valid_by_step = {
    int(r['step']): float(r['valid_reward_mean']) for r in records if r.get('valid_reward_mean') is not None
  }

  steps, best, saved, due = [], None, {}, False
  if (workdir / 'checkpoints').is_dir():
    ckpt = checkpoint_lib.Checkpointer(workdir / 'checkpoints', read_only=True, async_save=False)
    try:
      steps, best = ckpt.all_steps(), ckpt.best_step()
      due = bool(steps) and ckpt.validation_due(steps[-1])
      saved = {s: (ckpt.metrics(s) or {}).get(ckpt.best_metric) for s in steps}
    finally:
      ckpt.close()

  run = metrics_lib.run_id(events) or hashlib.sha256(str(workdir).encode()).hexdigest()[:20]
  job_id = f'ftjob-{run}'
  total = config.get('total_steps')
  # what a rerun would start from: the latest checkpoint (metrics past it are redone); without checkpoints, the log
  done = steps[-1] if steps else max(train_by_step, default=0)
  status, status_event = _status(events, done, total, max(train_by_step, default=0), due)
  times = [e['created_at'] for e in events if isinstance(e.get('created_at'), int)]
  created = times[0] if times else runfs.mtime(workdir / 'config.json') or runfs.mtime(workdir / 'metrics.jsonl') or 0
  finished = None
  if status in TERMINAL:
    finished = status_event['created_at'] if status_event else max(times, default=None)
    finished = finished or runfs.mtime(workdir / 'metrics.jsonl') or created
  estimated = None
  step_times = [r['timing/step_s'] for r in train if isinstance(r.get('timing/step_s'), (int, float))]
  if status == 'running' and times and total and step_times:
    estimated = int(max(times) + (total - done) * sum(step_times) / len(step_times))
  error = None
  if status == 'failed' and status_event:
    data = status_event.get('data') or {}
    error = {'code': str(data.get('code') or 'error'), 'message': status_event.get('message', ''), 'param': None}

  data_files = config.get('data') or {}
  tokens = None
  if config.get('batch_size') and config.get('num_generations'):
    rows = config['batch_size'] * config['num_generations']
    tokens = int(round(sum((r.get('completion_len_mean') or 0.0) * rows for r in train)))
  hyper = _openai_hyperparameters(config)
  method: dict[str, Any] = {'type': 'reinforcement'}
  grader = _openai_grader(config.get('grader'))
  if grader is not None:
    method['reinforcement'] = {'grader': grader, 'hyperparameters': hyper}
    response_format = _response_format(config.get('response_format'))
    if response_format is not None:
      method['reinforcement']['response_format'] = response_format
  openai_cfg = config.get('openai') or {}
  checkpoint_times = {
    int(e['data']['step']): e['created_at']
    for e in events
    if isinstance(e.get('data'), dict) and e['data'].get('checkpoint') and isinstance(e.get('created_at'), int)
  }
  checkpoints = []
  for s in reversed(steps):
    m: dict[str, Any] = {'step': float(s)}
    if s in train_by_step:
      m['train_reward_mean'] = train_by_step[s]['train_reward_mean']
    valid = saved.get(s) if saved.get(s) is not None else valid_by_step.get(s)
    if valid is not None:
      m['valid_reward_mean'] = m['full_valid_mean_reward'] = float(valid)
    checkpoints.append(
      {
        'object': 'fine_tuning.job.checkpoint',
        'id': f'ftckpt-{run}-{s}',
        'created_at': checkpoint_times.get(s) or checkpoint_lib.written_at(workdir / 'checkpoints' / str(s)) or created,
        'fine_tuned_model_checkpoint': str(workdir / 'checkpoints' / str(s)),
        'fine_tuning_job_id': job_id,
        'metrics': m,
        'step_number': s,
      }
    )
  return {
    'object': 'fine_tuning.job',
    'id': job_id,
    'created_at': created,
    'finished_at': finished,
    'estimated_finish': estimated,
    'status': status,
    'error': error,
    'model': config.get('init') or config.get('model') or '',
    'fine_tuned_model': str(workdir / 'checkpoints' / str(best)) if best is not None else None,
    'trained_tokens': tokens,
    'training_file': str(data_files.get('train') or ''),
    'validation_file': data_files.get('valid') or None,
    'hyperparameters': {k: hyper[k] for k in ('batch_size', 'learning_rate_multiplier', 'n_epochs')},
    'method': method,
    'seed': int(config.get('seed') or 0),
    'result_files': [str(workdir / n) for n in ('metrics.jsonl', 'events.jsonl') if (workdir / n).exists()],
    'organization_id': ORGANIZATION,
    'user_provided_suffix': openai_cfg.get('suffix') or None,
    'metadata': _metadata(openai_cfg.get('metadata')),
    'integrations': [],
    'checkpoints': checkpoints,
    'rftjax': {'workdir': str(workdir), 'steps_done': done, 'total_steps': total, 'best_step': best},
  }


def _status(events: list[dict], done: int, total: int | None, logged: int, due: bool) -> tuple[str, dict | None]:
  """'succeeded' once the latest checkpoint reaches total_steps, its validation not `due` (cut short): a rerun has
  nothing to do. Else what the last event with a `data.status` says (the trainer writes 'running' when it starts or
  resumes, 'cancelled' or 'failed' when it stops early, 'succeeded' at its end: a copy that kept only the best
  checkpoint ended so too, its log at total_steps; a log short of it is a resume with more steps whose first event
  is not there yet); 'running' without one. Returns the status and the event that decided it, if any."""
  said = [e for e in events if isinstance(e.get('data'), dict) and e['data'].get('status') in ('running', *TERMINAL)]
  if total is not None and done >= int(total) and not due:
    ends = [e for e in said if e['data']['status'] == 'succeeded']
    return 'succeeded', (ends[-1] if ends else None)
  last = said[-1]['data']['status'] if said else None
  if last in ('failed', 'cancelled') or (last == 'succeeded' and (total is None or logged >= int(total))):
    return last, said[-1]
  return 'running', None


def _number(raw) -> float | None:
  """The user's value of an OpenAI-style field: a number, or None for 'auto' / None / a non-number."""
  if isinstance(raw, bool) or raw is None:
    return None
  try:
    return float(raw)
  except (TypeError, ValueError):
    return None


def _openai_hyperparameters(config: dict) -> dict:
  """OpenAI's reinforcement hyperparameters as this run resolved them: the user's value when one was given, else the
  value the native config implies where it says one (batch_size, eval_interval, eval_samples; n_epochs from
  config.openai.resolved; learning_rate_multiplier as learning_rate / the model's base rate), else 'auto'."""
  o = config.get('openai') or {}
  resolved = json.loads(o.get('resolved') or '{}')
  epochs = _number(o.get('n_epochs'))
  if epochs is None:  # 'auto' resolved by hparams.apply: its note says the count it used
    found = re.search(r'n_epochs ([0-9.eE+-]+) x', str((resolved.get('total_steps') or {}).get('from', '')))
    epochs = _number(found.group(1)) if found else None
  multiplier = _number(o.get('learning_rate_multiplier'))
  base = hparams.BASE_LR.get(config.get('model') or '')
  rate = (config.get('optimizer') or {}).get('learning_rate')
  if multiplier is None and base and rate:
    lora = (config.get('lora') or {}).get('rank')
    multiplier = float(f'{rate / (base * (hparams.LORA_FACTOR if lora else 1.0)):.6g}')
  compute = _number(o.get('compute_multiplier'))
  effort = o.get('reasoning_effort')
  return {
    'batch_size': config.get('batch_size', 'auto'),
    'learning_rate_multiplier': multiplier if multiplier is not None else 'auto',
    # FineTuningJob's n_epochs is an int: a fractional count (rftjax allows one) shows as 'auto'
    'n_epochs': int(epochs) if epochs is not None and float(epochs).is_integer() else 'auto',
    'compute_multiplier': compute if compute is not None else 'auto',
    'eval_interval': config.get('eval_interval', 'auto'),
    'eval_samples': config.get('eval_samples', 'auto'),
    'reasoning_effort': effort if effort in hparams.REASONING_EFFORT else 'default',
  }


def _openai_grader(spec: Any) -> dict | None:
  """The run's grader as OpenAI's job object shows it: the spec as given, with the `name` OpenAI requires filled in
  (rftjax's default names: the grader's own, 'multi' or 'grader'; a sub-grader's key). None when unreadable."""
  if not spec:
    return None
  try:
    spec = json.loads(json.dumps(graders.load(spec)))  # a copy: the names below must not change the config
  except graders.GraderConfigError:
    return None
  spec.setdefault('name', 'multi' if spec.get('type') == 'multi' else 'grader')
  if spec.get('type') == 'multi' and isinstance(spec.get('graders'), dict):
    for key, sub in spec['graders'].items():
      if isinstance(sub, dict):
        sub.setdefault('name', key)
  return spec


def _response_format(value: Any) -> dict | None:
  if isinstance(value, dict):
    return value
  if isinstance(value, str) and value:
    try:
      return json.loads(runfs.path(value).read_text())
    except (OSError, ValueError):
      return None
  return None


def _metadata(raw: Any) -> dict[str, str] | None:
  """config.openai.metadata (a JSON string) as OpenAI's metadata: string values, None when empty."""
  try:
    value = json.loads(raw) if isinstance(raw, str) else raw
  except ValueError:
    return None
  if not isinstance(value, dict) or not value:
    return None
  return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m rftjax.report', description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True, action='append', help='a run directory')
  p.add_argument('--json', action='store_true', help='print the summary as one JSON object (the same as --format=json)')
  p.add_argument(
    '--format',
    choices=('table', 'json', 'openai'),
    default=None,
    help="table (default); json: the summary as one JSON object; openai: the run as OpenAI's fine-tuning job "
    'object (indented JSON)',
  )
  args = p.parse_args(argv)
  if len(args.workdir) > 1:  # taken as the last one, two runs looked compared
    p.error(f'--workdir given {len(args.workdir)} times; report reads one run: run it once per run (with --json to '
            'set them side by side)')  # fmt: skip
  args.workdir = args.workdir[0]
  if args.json and args.format not in (None, 'json'):
    p.error(f'--json and --format={args.format} ask for two formats: give one (--json is --format=json)')
  fmt = args.format or ('json' if args.json else 'table')

  def body() -> int:
    if fmt == 'openai':
      print(json.dumps(openai_job(args.workdir), indent=2, ensure_ascii=False))
      return 0
    s = summarize(args.workdir)
    print(json.dumps(s, ensure_ascii=False) if fmt == 'json' else table(s))
    return 0

  return cli.run(body)


if __name__ == '__main__':
  cli.command(main)
