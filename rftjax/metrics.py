"""Where numbers go: `metrics.jsonl` (one JSON object per line), `events.jsonl` (the same run as OpenAI
fine-tuning job events), TensorBoard event files, a progress bar.

On resume, lines for steps after the checkpoint are dropped first: they belong to work the resumed run redoes,
so the file never holds two different values for one step. A file with nothing to drop is appended to as it is (a
reader following it reads on).

`events.jsonl` holds one `fine_tuning.job.event` per line, shaped like the events OpenAI's fine-tuning API lists
for a job, so scripts written against `client.fine_tuning.jobs.list_events` read a local run too: a "metrics" event
per training step and per validation (`openai_metrics` maps rftjax's names to OpenAI's, docs/cli.md), and the
"message" events the trainer writes with `MetricsWriter.event` (started, resumed, checkpoint, stopped, finished),
and each warning the run logs (`WarningEvents`).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import pathlib
import re
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Mapping

import tqdm
from etils import epath

from rftjax import cli
from rftjax import data as data_lib
from rftjax import errors

log = logging.getLogger('rftjax')

LEVELS = ('info', 'warn', 'error')  # what FineTuningJobEvent.level allows

# rftjax's timings -> the keys of OpenAI's `data.timing.step` (the RFT guide's "Timing metrics")
_STEP_TIMING = {
  'timing/sampling_s': 'sampling',
  'timing/training_s': 'training',
  'timing/eval_s': 'eval',
  'timing/step_s': 'full_iteration',
}


def read_jsonl(path: str | pathlib.Path, set_aside: bool = False, stepped: bool = False) -> list[dict]:
  """The records of a metrics file. A line that is not JSON (the torn end of a write a crash interrupted) is skipped
  with a warning; with `set_aside` it is appended to `<name>.torn` next to the file, so nothing is thrown away.
  stepped (metrics.jsonl): a record without an integer "step" (a hand-edited line) is skipped alike. Without
  `set_aside` (a reader of a run that may be live: report, plots) a last line that is not JSON and has no newline yet
  is a line being written, and is left out without a word."""
  path = epath.Path(path)  # local or gs:// (report reads a run in a bucket)
  if not path.exists():
    return []
  text = path.read_bytes().decode('utf-8', errors='replace')
  lines = text.splitlines()
  records, torn = [], []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
      if n == len(lines) and not text.endswith('\n') and not set_aside:
        continue
    step = record.get('step') if isinstance(record, dict) else None
    if isinstance(record, dict) and (not stepped or (isinstance(step, int) and not isinstance(step, bool))):
      records.append(record)
    else:
      torn.append(line)
      what = (
        'a record without an integer "step"'
        if isinstance(record, dict)
        else 'not a JSON object (a write cut short by a crash?)'
      )
      log.warning('%s:%d: %s; %s', path, n, what, f'set aside in {path.name}.torn' if set_aside else 'skipped')
  if torn and set_aside:
    with (path.parent / f'{path.name}.torn').open('a') as f:
      f.write(''.join(line + '\n' for line in torn))
  return records


def _clean(value: Any) -> Any:
  """JSON without NaN or inf (which `json.dumps` writes but strict parsers refuse): None in their place."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  return value


def event_step(event: dict) -> float:
  """The training step an event belongs to (`data.step`; 0 when it has none), which decides what a resume drops."""
  data = event.get('data')
  step = data.get('step', 0) if isinstance(data, dict) else 0
  try:
    return float(step)
  except (TypeError, ValueError):
    return 0.0


def run_id(events: list[dict]) -> str | None:
  """The run's id, as its first event carries it (`ftevent-<run>-<n>`); None for a file without one."""
  for e in events[:1]:
    parts = str(e.get('id', '')).split('-')
    if len(parts) == 3 and parts[0] == 'ftevent' and parts[1] and parts[2].isdigit():
      return parts[1]
  return None


def num_verdicts(record: Mapping, split: str = 'valid') -> float | None:
  """How many gradings a line's `<split>_reward_mean` is over: `<split>/num_graded` less `<split>/num_discarded`
  (left out of the mean: an outage's 0 says nothing of the completion). None when the line has no count."""
  graded = record.get(f'{split}/num_graded')
  if isinstance(graded, bool) or not isinstance(graded, (int, float)):
    return None
  discarded = record.get(f'{split}/num_discarded')
  return float(graded) - (float(discarded) if isinstance(discarded, (int, float)) else 0.0)


def _grader_names(grader: Any) -> tuple[str | None, str | None, dict[str, str]]:
  """(name, type) of the run's grader and {sub-grader name: type} of a multi grader, from its spec."""
  grader = errors.plain(grader)
  if not isinstance(grader, Mapping):  # none, or a file path: the events go without the grader's name then
    return None, None, {}
  kind = grader.get('type')
  name = grader.get('name') or ('multi' if kind == 'multi' else 'grader')
  subs = grader.get('graders') if kind == 'multi' and isinstance(grader.get('graders'), Mapping) else {}
  return name, kind, {n: g.get('type') for n, g in subs.items() if isinstance(g, Mapping)}


def openai_metrics(record: dict, *, total_steps: int | None = None, grader: Any = None) -> dict | None:
  """The `data` of OpenAI's "metrics" event for a training or validation record of metrics.jsonl; None for any other
  record (a checkpoint's timing). Names follow the metrics event of OpenAI's RFT guide ("Training metrics"); a
  metric OpenAI has no name for keeps rftjax's, at the top level. The mapping table is in docs/cli.md.

  Errors and grader latencies are rftjax's over the whole grader (a multi grader's errors are not split by
  sub-grader), so `errors.graders` and `timing.graders` have one entry, named after the run's grader."""
  split = 'train' if record.get('train_reward_mean') is not None else 'valid'
  if record.get(f'{split}_reward_mean') is None:
    return None
  used = {'step', 'time', f'{split}_reward_mean'}  # an event has its own time (created_at)
  name, kind, subs = _grader_names(grader)
  top = {'name': name or 'grader', **({'type': kind} if kind else {})}
  reward = record[f'{split}_reward_mean']
  data: dict[str, Any] = {'step': int(record['step'])}
  if total_steps:
    data['total_steps'] = int(total_steps)

  prefix = f'{split}/grader/'
  per_grader = []
  for key in record:
    if key.startswith(prefix):
      used.add(key)
      sub = key[len(prefix) :]
      per_grader.append(
        {'name': sub, **({'type': subs[sub]} if subs.get(sub) else {}), f'{split}_reward_mean': record[key]}
      )
  if not per_grader and name is not None:  # one grader: OpenAI still lists it, with the overall mean
    per_grader = [{**top, f'{split}_reward_mean': reward}]
  data['scores'] = {'graders': per_grader, f'{split}_reward_mean': reward}

  graded = record.get(f'{split}/num_graded')
  errors: dict[str, float] = {}
  for key in record:
    if key.startswith(f'{split}/errors/'):
      used.add(key)
      category, share = key.split('/', 2)[2], record[key]
      errors[f'{split}_{category}_error_mean'] = share
      if graded is not None and share is not None:
        errors[f'{split}_{category}_error_count'] = float(round(share * graded))
  data['errors'] = {'graders': [{**top, **errors}] if errors else []}

  timing: dict[str, Any] = {'step': {}, 'graders': []}
  for key, openai_name in _STEP_TIMING.items():
    if key in record:
      used.add(key)
      timing['step'][openai_name] = record[key]
  if f'{split}/grading_latency_s_mean' in record:
    used.add(f'{split}/grading_latency_s_mean')
    timing['graders'] = [{**top, f'{split}_execution_latency_mean': record[f'{split}/grading_latency_s_mean']}]
  data['timing'] = timing

  if split == 'train':
    data['train_mean_reward'] = reward
    if 'completion_len_mean' in record:
      used.add('completion_len_mean')
      data['completion_tokens_mean'] = record['completion_len_mean']
  else:
    data['full_valid_mean_reward'] = reward
    if 'valid/errors/sample_parse' in record or 'valid/response_format_valid' in record:
      # a completion that is not the response format's JSON did not parse either (it was not graded: no error)
      missed = 1.0 - record.get('valid/response_format_valid', 1.0)
      data['full_valid_mean_parse_error'] = record.get('valid/errors/sample_parse', 0.0) + missed
  data.update({k: v for k, v in record.items() if k not in used})
  return _clean(data)


def _metrics_message(data: dict) -> str:
  """OpenAI's one-line summary of a metrics event ("Step 10/20: train mean reward=0.42, ...")."""
  step = f'Step {data["step"]}' + (f'/{data["total_steps"]}' if 'total_steps' in data else '')
  fmt = lambda v: 'nan' if v is None else f'{v:.2f}'
  if 'train_mean_reward' in data:
    return f'{step}: train mean reward={fmt(data["train_mean_reward"])}'
  parts = [f'full validation mean reward={fmt(data["full_valid_mean_reward"])}']
  if 'full_valid_mean_parse_error' in data:
    parts.append(f'full validation mean parse error={fmt(data["full_valid_mean_parse_error"])}')
  return f'{step}: ' + ', '.join(parts)


class MetricsWriter:
  """Appends each record to metrics.jsonl (and TensorBoard), and its OpenAI-shaped event to events.jsonl.

  Args:
    workdir: the run's local folder (the staging folder of a remote run).
    resume_step: the checkpoint step a resumed run starts from (0 too: a run stopped after its first validation);
      lines and events of later steps are dropped. None starts both files afresh (and a new run id).
    enabled: False on every process but the first of a multi-host run: nothing is written.
    tensorboard: also write TensorBoard event files.
    total_steps: for the events' `total_steps` and "Step N/total" messages (left out when None).
    grader: the run's grader spec (a dict), to name the grader and its sub-graders' types in the events.
  """

  def __init__(
    self,
    workdir: str | pathlib.Path,
    *,
    resume_step: int | None = None,
    enabled: bool = True,
    tensorboard: bool = True,
    total_steps: int | None = None,
    grader: Any = None,
  ):
    self.enabled = enabled
    self._event_lock = threading.RLock()  # events come from the training thread and the grading pool's (warnings)
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    self.events_path = pathlib.Path(workdir) / 'events.jsonl'
    self.total_steps = total_steps
    self.grader = errors.plain(grader)  # a ConfigDict: once, not per step
    self._tb = None
    self._step = resume_step or 0
    self.announced: set[float] = set()  # the steps whose "Checkpoint created" events a resume keeps
    if not enabled:
      return
    resumed = resume_step is not None
    kept = [r for r in read_jsonl(self.path, True, stepped=True) if r['step'] <= resume_step] if resumed else []
    _keep(self.path, kept)
    raw = self.events_path.read_bytes().decode('utf-8', 'replace') if resumed and self.events_path.exists() else ''
    events = read_jsonl(self.events_path, set_aside=True) if resumed else []
    kept_events = [e for e in events if event_step(e) <= resume_step]
    _keep(self.events_path, kept_events)
    for redone in (pathlib.Path(workdir) / 'samples').glob('valid_step*.jsonl'):  # as their metrics lines go
      if redone.stem[10:].isdigit() and int(redone.stem[10:]) > (resume_step if resumed else -1):
        redone.unlink(missing_ok=True)
    # ids go on from the highest ever written, dropped ones and a torn line's included: a reader that saw an event
    # never sees its id again on another one
    self.run_id = run_id(kept_events) or uuid.uuid4().hex[:20]
    self.announced = {event_step(e) for e in kept_events if 'checkpoint' in (e.get('data') or {})}
    torn = [int(n) for n in re.findall(r'"id": "ftevent-[0-9a-f]+-(\d+)"', raw)]
    self._next_event = 1 + max([_event_number(e) for e in events] + torn, default=-1)
    self._file = self.path.open('a')
    self._events = self.events_path.open('a')
    if tensorboard:
      import tensorboardX  # optional at import time: only the writer needs it

      # written out every 10 s and at each validation: a flush per step cost ~11 ms (a fifth of a tiny-demo step).
      # A queue of 1000 events, not 10: a put never waits on a writer thread that is failing (`_tb_writing`)
      self._tb = tensorboardX.SummaryWriter(
        str(pathlib.Path(workdir) / 'tensorboard'),
        # TensorBoard drops the points of earlier event files from this step on: a resume's redone steps, and all
        # of a run started over (killed during its first save) whose step 0 showed twice
        purge_step=resume_step + 1 if resumed else 0,
        flush_secs=10,
        max_queue=1000,
      )

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    self._step = int(record['step'])
    record = {**record, 'time': record.get('time', round(time.time(), 3))}  # when written: Unix seconds, UTC
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    _append(self._file, json.dumps(clean) + '\n')
    data = openai_metrics(record, total_steps=self.total_steps, grader=self.grader)
    if data is not None:
      self._append_event(_metrics_message(data), 'info', 'metrics', data)
    if self._tb is not None:
      step = int(record['step'])
      for key, value in record.items():
        # NaN (no token to average: every row masked) is left out, as metrics.jsonl writes null: tensorboardX
        # would print a warning per value
        if (
          key not in ('step', 'time')
          and isinstance(value, (int, float))
          and not isinstance(value, bool)
          and math.isfinite(value)
        ):
          if not self._tb_writing(step):
            return
          self._tb.add_scalar(key, value, step)
      if 'valid_reward_mean' in record:
        self._tb.flush()

  def _tb_writing(self, step: int) -> bool:
    """Whether TensorBoard's writer thread still runs. A write of its that fails (a full disk) ends it, and then
    the next events fill its queue and block the trainer for good, deaf to SIGTERM (tensorboardX 2.6.5). So
    TensorBoard stops there, said once; metrics.jsonl goes on, or fails with the disk's own error."""
    worker = getattr(getattr(getattr(self._tb, 'file_writer', None), 'event_writer', None), '_worker', None)
    if worker is None or worker.is_alive():
      return True
    log.warning('TensorBoard stopped at step %d: its writer thread failed (its error is above: a full disk?); '
                'metrics.jsonl keeps every step', step)  # fmt: skip
    self._tb = None  # closing it would block on the same queue
    return False

  def event(self, message: str, level: str = 'info', data: dict | None = None, created_at: int | None = None) -> None:
    """Appends a "message" event, dated `created_at` (Unix seconds; default now). `data.step` defaults to the
    step of the last record written (the resume step before any), so a resume keeps the events of the steps it
    keeps. `data.status` ('running', 'succeeded', 'failed', 'cancelled') is what `report --format=openai` reads the
    job's status from, `data.checkpoint` (a path) marks a checkpoint's creation."""
    if level not in LEVELS:
      raise ValueError(f'MetricsWriter.event(level={level!r}): expected one of {list(LEVELS)}')
    if not self.enabled:
      return
    self._append_event(str(message), level, 'message', {'step': self._step, **(data or {})}, created_at)

  def _append_event(self, message: str, level: str, kind: str, data: dict, created_at: int | None = None) -> None:
    with self._event_lock:  # one id each, one whole line each
      event = {
        'object': 'fine_tuning.job.event',
        'id': f'ftevent-{self.run_id}-{self._next_event}',
        'created_at': int(time.time()) if created_at is None else created_at,
        'level': level,
        'message': message,
        'type': kind,
        'data': _clean(data),
      }
      self._next_event += 1
      _append(self._events, json.dumps(event) + '\n')

  def close(self) -> None:
    if self.enabled:
      failed = None
      for file in (self._file, self._events):
        try:
          file.close()
        except OSError as e:  # the other file is closed all the same
          failed = failed or errors.named(e, file.name)
      if failed is not None:
        raise failed
      if self._tb is not None and self._tb_writing(self._step):
        self._tb.close()


class WarningEvents(logging.Handler):
  """Each warning (or error) logged on `logger` while open, written to events.jsonl as a `warn` (`error`) message
  event too: a run read later, by `report` or a script, shows what the console said once and scrolled away (gradings
  that failed, completions all cut off, the resumed run's changed settings). Records logged before the run's writer
  exists wait for `attach` (the first 50). Records from any thread are written (the grading pool's thread runs the
  graders); `extra={'event': False}` leaves one out (it has an event of its own), `extra={'step': N}` gives its
  step (else the last record's)."""

  def __init__(self, logger: logging.Logger):
    super().__init__(logging.WARNING)
    self.logger, self.writer, self.pending, self._writing = logger, None, [], threading.local()

  def __enter__(self) -> 'WarningEvents':
    self.logger.addHandler(self)
    return self

  def __exit__(self, *exc) -> None:
    self.logger.removeHandler(self)

  def attach(self, writer: 'MetricsWriter') -> None:
    with self.lock:  # the handler's own: emit runs under it
      self.writer, pending, self.pending = writer, self.pending, []
      for record in pending:
        self.emit(record)

  def emit(self, record: logging.LogRecord) -> None:
    if getattr(record, 'event', True) is False or getattr(self._writing, 'now', False):
      return  # (a warning logged while writing one is not written: no loop)
    if self.writer is None:
      self.pending += [record] * (len(self.pending) < 50)
      return
    level = 'error' if record.levelno >= logging.ERROR else 'warn'
    self._writing.now = True
    try:
      step = getattr(record, 'step', None)  # extra={'step': N}: a warning about a step not yet written
      self.writer.event(record.getMessage()[:4000], level=level, data=None if step is None else {'step': step})
    except (OSError, ValueError):  # a full disk, a closed file: the console has the line
      pass
    finally:
      self._writing.now = False


def _append(file, line: str) -> None:
  """One whole line, flushed; a failure names the file (a full disk: 'cannot write .../metrics.jsonl')."""
  try:
    file.write(line)
    file.flush()
  except OSError as e:
    raise errors.named(e, file.name) from None


def _keep(path: pathlib.Path, records: list[dict]) -> None:
  """`path` holding exactly `records` (its own, read from it): left as it is when it holds them already, so a reader
  following it (`tail -f`, a dashboard) reads on after a resume; else replaced atomically."""
  text = path.read_bytes() if path.exists() else None
  whole = text is not None and (not text or text.endswith(b'\n'))
  if whole and sum(1 for line in text.splitlines() if line.strip()) == len(records):
    return
  _rewrite(path, records)


def _rewrite(path: pathlib.Path, records: list[dict]) -> None:
  """`path` holding exactly `records`, replaced atomically: a crash now leaves the old file or the new one."""
  data_lib.write_atomic(path, ''.join(json.dumps(r) + '\n' for r in records))


def _event_number(event: dict) -> int:
  tail = str(event.get('id', '')).rsplit('-', 1)[-1]
  return int(tail) if tail.isdigit() else -1


def code_version() -> str | None:
  """This rftjax checkout's commit ('-dirty' when its files differ from it), or None where rftjax is no git
  checkout of its own (a copy, or a folder in a user's repository)."""
  here = pathlib.Path(__file__).resolve().parent
  git = lambda *args: subprocess.run(['git', *args], cwd=here, capture_output=True, text=True, timeout=10)  # noqa: E731
  try:
    top = git('rev-parse', '--show-toplevel')
    if top.returncode or pathlib.Path(top.stdout.strip()).resolve() != here.parent:  # a user's repo around it
      return None
    out = git('describe', '--always', '--dirty', '--abbrev=12')
  except (OSError, subprocess.SubprocessError):
    return None
  return (out.stdout.strip() or None) if out.returncode == 0 else None


class Progress:
  """Training progress on stderr: a tqdm bar with reward, validation reward and ETA where it is redrawn in place (a
  terminal, a notebook); elsewhere (nohup's file, a TPU VM's startup-script log, a container's) a log line at each
  tenth of the run and at least every `every_s`, as cli.progress does: carriage returns there made one line of two
  updates per step, which grep and log viewers show as one ever-longer line."""

  def __init__(self, start: int, total: int, *, enabled: bool = True, stream=None, every_s: float = 300.0):
    stream = sys.stderr if stream is None else stream
    self.lines = enabled and not cli.redraws_in_place(stream)
    self.bar = tqdm.tqdm(total=total, initial=start, disable=not enabled or self.lines, unit='step',
                         dynamic_ncols=True, file=stream, desc='rft')  # fmt: skip
    self.post: dict[str, str] = {}
    self.every_s, self.total = every_s, total
    self._last = (start, time.monotonic())  # the step and time of the last line
    self._compiling = 0.0  # seconds the steps since it spent compiling (timing/compile_s): no measure of the rest

  def update(self, step: int, record: dict) -> None:
    # through tqdm's update, so that its rate is a moving average: set directly, the ETA was the whole run's mean,
    # compiling included (1:05:47 left after step 1 of a run whose other 199 steps took 36 s)
    self.bar.update(step - self.bar.n)
    self.post['reward'] = f'{record.get("train_reward_mean", float("nan")):.3f}'
    self._show()
    if self.lines:
      self._compiling += float(record.get('timing/compile_s') or 0.0)
      self._line(step)

  def note(self, step: int, eval_record: dict) -> None:
    """The bar shows the new validation reward at once (the last one of a run too); the validation's own log line
    has already said it."""
    del step
    if eval_record.get('valid_reward_mean') is not None:
      self.post['valid'] = f'{eval_record["valid_reward_mean"]:.3f}'
      self._show()

  def _show(self) -> None:
    self.bar.set_postfix(self.post, refresh=False)
    self.bar.refresh()

  def _line(self, step: int) -> None:
    """'step 120/200 (60%): reward 0.812, valid 0.905; 3.1 s/step since step 100, about 0:04:08 left'. The rate is
    the one since the last line, without the seconds spent compiling (the first steps': 46 s of SmolLM2's first
    63 made the time left 3-4x too long)."""
    (before, t), now, total = self._last, time.monotonic(), max(self.total, 1)
    if not (cli.new_tenth(before, step, total) or step >= total or now - t >= self.every_s) or step <= before:
      return
    # (compilations that overlap, a judge's in the grading threads, can add up past the interval: then none)
    self._last, compiling, self._compiling = (step, now), self._compiling if self._compiling < now - t else 0.0, 0.0
    per_step = (now - t - compiling) / (step - before)
    shown = ', '.join(f'{k} {self.post[k]}' for k in ('reward', 'valid') if k in self.post)
    left = f', about {datetime.timedelta(seconds=round(per_step * (total - step)))} left' if step < total else ''
    log.info('step %d/%d (%d%%): %s; %.3g s/step since step %d%s', step, total, 100 * step // total, shown,
             per_step, before, left)  # fmt: skip

  def close(self) -> None:
    self.bar.close()  # a second close does nothing

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class CompileClock:
  """Seconds JAX spent compiling while it is open (`with`), from jax.monitoring's duration events: `total`, and
  `take()` for those since the last take. `events`: XLA's compilation (BACKEND), or tracing and lowering too (ALL).
  Its listener goes on exit: a process that trains twice (a notebook) counts each compilation once."""

  BACKEND = ('/jax/core/compile/backend_compile_duration',)
  ALL = ('/jax/core/compile/jaxpr_trace_duration', '/jax/core/compile/jaxpr_to_mlir_module_duration', *BACKEND)

  def __init__(self, events: tuple[str, ...] = BACKEND):
    self.events, self.total, self._taken = events, 0.0, 0.0

  def _listener(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in self.events:
      self.total += duration

  def __enter__(self) -> 'CompileClock':
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc) -> None:
    import jax.monitoring

    jax.monitoring.unregister_event_duration_listener(self._listener)

  def take(self) -> float:
    delta, self._taken = self.total - self._taken, self.total
    return delta
