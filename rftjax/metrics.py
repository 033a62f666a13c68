"""Where numbers go: `metrics.jsonl` (one JSON object per line), TensorBoard event files, a progress bar.

On resume, lines for steps after the checkpoint are dropped first: they belong to work the resumed run redoes,
so the file never holds two different values for one step.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import sys

import tqdm
from etils import epath

log = logging.getLogger('rftjax')


def read_jsonl(path: str | pathlib.Path, set_aside: bool = False) -> list[dict]:
  """The records of a metrics file. A line that is not JSON (the torn end of a write a crash interrupted) is skipped
  with a warning; with `set_aside` it is appended to `<name>.torn` next to the file, so nothing is thrown away."""
  path = epath.Path(path)  # local or gs:// (report reads a run in a bucket)
  if not path.exists():
    return []
  records, torn = [], []
  for n, line in enumerate(path.read_bytes().decode('utf-8', errors='replace').splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if isinstance(record, dict):
      records.append(record)
    else:
      torn.append(line)
      log.warning('%s:%d: not a JSON object (a write cut short by a crash?); %s', path, n,
                  f'set aside in {path.name}.torn' if set_aside else 'skipped')  # fmt: skip
  if torn and set_aside:
    with (path.parent / f'{path.name}.torn').open('a') as f:
      f.write(''.join(line + '\n' for line in torn))
  return records


class MetricsWriter:
  def __init__(
    self, workdir: str | pathlib.Path, *, resume_step: int = 0, enabled: bool = True, tensorboard: bool = True
  ):
    self.enabled = enabled
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._tb = None
    if not enabled:
      return
    kept = [r for r in read_jsonl(self.path, set_aside=True) if r.get('step', 0) <= resume_step] if resume_step else []
    tmp = self.path.with_suffix('.jsonl.tmp')
    tmp.write_text(''.join(json.dumps(r) + '\n' for r in kept))
    tmp.replace(self.path)
    self._file = self.path.open('a')
    if tensorboard:
      import tensorboardX  # optional at import time: only the writer needs it

      self._tb = tensorboardX.SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'), purge_step=resume_step or None)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    self._file.write(json.dumps(clean) + '\n')
    self._file.flush()
    if self._tb is not None:
      step = int(record['step'])
      for key, value in record.items():
        if key != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()


class Progress:
  """A tqdm bar over training steps showing reward, validation reward and ETA."""

  def __init__(self, start: int, total: int, *, enabled: bool = True):
    self.bar = tqdm.tqdm(
      total=total, initial=start, disable=not enabled, unit='step', dynamic_ncols=True, file=sys.stderr, desc='rft'
    )
    self.valid = None

  def update(self, step: int, record: dict) -> None:
    self.bar.n = step
    post = {'reward': f'{record.get("train_reward_mean", float("nan")):.3f}'}
    if self.valid is not None:
      post['valid'] = f'{self.valid:.3f}'
    self.bar.set_postfix(post, refresh=False)
    self.bar.refresh()

  def note(self, step: int, eval_record: dict) -> None:
    self.valid = eval_record.get('valid_reward_mean')
    self.bar.write(f'step {step}: valid_reward_mean={self.valid:.4f}')

  def close(self) -> None:
    self.bar.close()


class CompileClock:
  """Seconds JAX spent compiling since the last `take()`, from jax.monitoring's duration events."""

  def __init__(self):
    import jax.monitoring

    self._total = 0.0
    self._taken = 0.0

    def listener(event: str, duration: float, **kwargs) -> None:
      del kwargs
      if event == '/jax/core/compile/backend_compile_duration':
        self._total += duration

    jax.monitoring.register_event_duration_secs_listener(listener)

  def take(self) -> float:
    delta, self._taken = self._total - self._taken, self._total
    return delta
