"""Checkpoints of the train state: keep the best N by eval reward, and always the latest.

One `Checkpointer` wraps an Orbax `CheckpointManager`. Each step is a directory `<workdir>/<step>/` with two
items, written together and atomically:

  state/   the train-state pytree (params, optimizer state, rng keys, step), via `StandardSave`; arrays may be
           sharded over a mesh and are restored straight into the shardings the caller asks for.
  extra/   a small JSON dict (data-iterator position, config snapshot, ...), via `JsonSave`.
  metrics/ the eval metrics passed to `save` (absent when none were), used to rank checkpoints.

Retention (see docs/checkpoints.md): after each save, a checkpoint survives if it is among the `keep_best`
evaluated checkpoints with the highest `best_metric`, OR it is the latest one. One saved without metrics (a SIGTERM
between evals) is never "best" unless `rank` gives it some, and goes once a newer one exists (next save, `close`).

Orbax pitfalls this module exists to hide (docs/platform.md):
  * `best_fn` + `max_to_keep` alone deletes the newest checkpoint when it is not among the best, so resume
    would go back in time; we pass an explicit `preservation_policy` = BestN OR LatestN(1).
  * `BestN(reverse=True)` keeps the *worst*; "higher is better" is the default `reverse=False`.
  * `BestN(keep_checkpoints_without_metrics=True)` (the default) would keep every un-evaluated checkpoint forever.
  * Restoring without a target turns int dict keys into strings and optax namedtuples into lists, so `restore`
    always takes an abstract target.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pathlib
import shutil
import time
from collections.abc import Mapping
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from rftjax import data
from rftjax import multihost
from rftjax import runfs

_STATE = 'state'
_EXTRA = 'extra'

log = logging.getLogger(__name__)


class _ReadOnlyNotes(logging.Filter):
  """Orbax warns every time a manager is opened read-only, which the tools that only read a run (sample, evaluate,
  export, report) always do on purpose: two warning lines per command that say nothing to act on. It also warns at
  every save without metrics, which the trainer makes on purpose (an unranked step: Ctrl-C, preemption, a stop)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (
      'read_only=True, setting save_interval_steps' in message
      or 'Given directory is read only' in message
      or 'Requested `tracked_metric`; did not provide metrics' in message
      or ('Metadata file does not exist' in message and '_CHECKPOINT_METADATA' in message)  # _stored_tree's read
    )


logging.getLogger('absl').addFilter(_ReadOnlyNotes())


class StateMismatch(ValueError):
  """A checkpoint's params differ from the target's in leaves or shapes: another model or LoRA setting."""


class Gone(FileNotFoundError):
  """A checkpoint a live run's keep policy deleted while it was being read."""


def _vanishing(path, wait_s: float = 3.0) -> bool:
  """Whether the step folder holding `path` is gone, or goes within `wait_s`: Orbax deletes a step's files before
  its folder, so a read that failed midway finds the folder still there."""
  folder, end = path.parent, time.monotonic() + wait_s
  while folder.exists():
    if time.monotonic() > end:
      return False
    time.sleep(0.1)
  return True


class Checkpointer:
  """Saves and restores `(state, extra)` per step under one directory; see the module docstring.

  Every process of a multi-host run must construct it and call `save`/`restore` with the same arguments:
  Orbax coordinates which process writes what, so nothing here is guarded by `jax.process_index()`.

  Args:
    directory: where step directories live (local path or a `gs://` URL); created unless `read_only`.
    keep_best: how many evaluated checkpoints to keep by `best_metric`, on top of the latest one. 0 keeps only
      the latest.
    best_metric: key of the `metrics` dict that ranks checkpoints; higher is better.
    async_save: if True, `save` returns once the arrays are copied to host memory and writes in the background.
    read_only: for tools that only read a run (report, export) possibly while training still writes to it:
      never deletes or cleans up anything; `save` raises.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    keep_best: int = 3,
    best_metric: str = 'valid_reward_mean',
    async_save: bool = True,
    read_only: bool = False,
  ):
    if keep_best < 0:
      raise ValueError(f'Checkpointer(keep_best={keep_best}): expected an int >= 0.')
    self.directory = directory = runfs.path(directory)  # absolute when local: a later os.chdir cannot move the run
    self.keep_best = keep_best
    self.best_metric = best_metric
    self.read_only = read_only
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
      [
        # reverse=False sorts ascending and keeps the tail, i.e. the highest scores.
        ocp.checkpoint_managers.BestN(
          get_metric_fn=self._score, reverse=False, n=keep_best, keep_checkpoints_without_metrics=False
        ),
        ocp.checkpoint_managers.LatestN(n=1),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      best_fn=self._score,  # makes Orbax write the metrics item next to each step.
      best_mode='max',
      preservation_policy=policy,
      enable_async_checkpointing=async_save,
      # Leftovers of a crash mid-save (`<step>.orbax-checkpoint-tmp*`) are ignored when listing steps; a writer
      # also deletes them at start-up. A read-only reader must not: the run may be writing one right now.
      cleanup_tmp_directories=not read_only,
      read_only=read_only,
      create=not read_only,
    )
    for attempt in range(5):  # a live run's keep policy may delete a step between Orbax's listing and its stat
      try:
        self._manager = ocp.CheckpointManager(directory, options=options)
        break
      except FileNotFoundError:
        if not read_only or attempt == 4:
          raise
        time.sleep(0.2)
    # step -> metrics dict or None. Filled lazily from disk, kept current by `save`.
    self._metrics_cache: dict[int, dict[str, Any] | None] = {}
    self._on_commit: list[Callable[[], None]] = []  # of the saves in flight (settle)
    self._failed: Exception | None = None  # a save's failure, raised by every wait (Orbax raises it once)

  # ---- queries -----------------------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Steps on disk (or being written by this process), ascending."""
    return sorted(int(s) for s in self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def metrics(self, step: int) -> dict[str, Any] | None:
    """The metrics saved with `step`, or None if it was saved without metrics."""
    step = int(step)
    if step not in self._metrics_cache:
      self._metrics_cache[step] = self._manager.metrics(step)
    return self._metrics_cache[step]

  def best_step(self) -> int | None:
    """The kept step with the highest finite `best_metric` (the later one on ties); None if none was evaluated."""
    best, best_score = None, -math.inf
    for step in self.all_steps():
      score = self._score(self.metrics(step))
      if score > best_score or (score == best_score and best is not None):
        best, best_score = step, score
    return best

  def best_steps(self) -> list[int]:
    """The (up to) `keep_best` steps with the highest finite `best_metric`, best first: the ones kept as best."""
    scored = [(self._score(self.metrics(s)), s) for s in self.all_steps()]
    return [s for score, s in sorted(scored, reverse=True) if score > -math.inf][: self.keep_best]

  def resolve_step(self, which: int | str | None) -> int:
    """Maps `None`/'latest', 'best' or a step number (int or digit string) to a step that exists on disk."""
    steps = self.all_steps()
    if which is None or which == 'latest':
      step = self.latest_step()
    elif which == 'best':
      step = self.best_step()
      if step is None and steps:
        raise FileNotFoundError(
          f'{self.directory}: no checkpoint has metric {self.best_metric!r} (steps on disk: '
          f'{steps}); use step=latest or a step number.'
        )
    elif isinstance(which, (int, np.integer)) or (isinstance(which, str) and which.isdigit()):
      step = int(which)
    else:
      raise ValueError(f"step must be 'latest', 'best' or a step number; got {which!r}.")
    if step is None or step not in steps:
      raise FileNotFoundError(f'{self.directory}: no checkpoint for step {which!r}; steps on disk: {steps}.')
    return step

  # ---- save / restore ----------------------------------------------------------------------------------------

  def save(
    self,
    step: int,
    state: Any,
    *,
    extra: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    force: bool = False,
    on_commit: Callable[[], None] | None = None,
  ) -> bool:
    """Starts writing `state`, `extra` (and `metrics`) as checkpoint `step`, then applies the keep policy.
    `on_commit()` is called once the step is committed, by the first `settle`, `save` or `wait_until_finished` after
    that, in the caller's thread (never if the save fails).

    Returns True if a checkpoint was started, False if `step` already exists (saving the same step twice, e.g.
    the periodic save and the final save of a run, is a no-op; the first one wins, metrics included).
    A step older than `latest_step()` raises unless `force=True`: it usually means a run resumed from an old
    step into the same directory, and its checkpoints would interleave with the newer ones.
    Old checkpoints are deleted only after the new one is committed, so a crash mid-save loses nothing.
    """
    if self.read_only:
      raise PermissionError(f'Checkpointer({self.directory}) is read-only; cannot save step {step}.')
    step = int(step)
    steps = self.all_steps()
    if step in steps:
      log.info('checkpoint %s/%d already exists; not saving it again.', self.directory, step)
      if metrics is not None and self.metrics(step) is None:
        log.warning('metrics for step %d dropped: that step was already saved without metrics.', step)
      return False
    if steps and step < steps[-1] and not force:
      raise ValueError(
        f'save(step={step}) is older than the latest checkpoint {steps[-1]} in {self.directory}; '
        'use a fresh directory for a run restarted from an old step, or pass force=True.'
      )
    _check_json('extra', extra)
    metrics = self._clean_metrics(metrics)
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _EXTRA: ocp.args.JsonSave(extra)})
    # force=True: the decision above replaces Orbax's save-interval policy.
    self.wait_until_finished()  # Orbax's save waits for the save in flight too: here its on_commit is called
    saved = self._manager.save(step, args=args, metrics=metrics, force=True)
    if saved:
      self._metrics_cache[step] = metrics
      self._on_commit += [on_commit] if on_commit else []
    self.settle()  # a synchronous save has committed already
    return bool(saved)

  def rank(self, step: int, metrics: dict[str, Any]) -> None:
    """Gives `metrics` to `step`, saved without them (its validation, cut short, redone on resume). Orbax has no call
    for it: process 0 writes them whole (a rename; a bucket's object is whole by itself) where its save would
    (`<step>/metrics/metrics`), and every host reloads Orbax's list of steps, which its keep policy ranks."""
    step, metrics = int(step), self._clean_metrics(metrics)
    if self.read_only or self.metrics(step) is not None:
      raise ValueError(f'rank(step={step}): the step has metrics already, or {self.directory} is read-only.')
    self.wait_until_finished()
    name = ocp.checkpoint_manager.METRIC_ITEM_NAME
    file, text = self.directory / str(step) / name / name, json.dumps(metrics)
    write = file.write_text if runfs.is_remote(file) else functools.partial(data.write_atomic, pathlib.Path(file))
    multihost.on_process_0(write, text)  # every host waits for it (a collective)
    self._manager.reload()
    self._metrics_cache[step] = metrics

  def validation_due(self, step: int, extra: dict[str, Any] | None = None) -> bool:
    """Saved unranked because its validation was cut short (the trainer's `extra['validation_due']`: only that item
    is read, unless a restore's is given). False when it cannot be read (a partial copy: restore says what is wrong)."""
    if self.metrics(step) is not None:
      return False
    if extra is None:
      try:
        extra = self._manager.restore(int(step), args=ocp.args.Composite(**{_EXTRA: ocp.args.JsonRestore()}))[_EXTRA]
      except (KeyError, OSError, ValueError):
        return False
    return bool(extra.get('validation_due'))

  def settle(self) -> None:
    """Calls the `on_commit` of the saves that have committed, without waiting for one in flight. A failed save
    drops its own; its error is raised by the next `save` or `wait_until_finished`."""
    if not self._on_commit or self._manager.is_saving_in_progress():
      return
    # Orbax's last save thread, peeked at: its join raises a failure once only, and that is the caller's to see
    thread = getattr(getattr(self._manager, '_finalize_thread', None), 'get', lambda: None)()
    if thread is not None and (thread.is_alive() or getattr(thread, 'exception', None) is not None):
      return
    calls, self._on_commit = self._on_commit, []
    for call in calls:
      call()

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Reads checkpoint `step` (None = latest) into the structure, dtypes and shardings of `abstract_state`.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)` (or of arrays, whose
    shardings are used); arrays land directly in those shardings, which may come from a different mesh than
    the one the checkpoint was saved from. A leaf without a sharding lands on the default device. The target's
    dtype wins (a float32 checkpoint restores into a bfloat16 target by casting); tree structure and shapes must
    match exactly: params that differ (checked from metadata first) raise StateMismatch.
    Returns `(state, extra)`.
    """
    self._manager.wait_until_finished()  # the step may still be in flight from this process.
    step = self.resolve_step(step)
    target = jax.tree.map(_as_abstract, abstract_state)
    stored = _stored_tree(self.directory / str(step) / _STATE)
    if stored is None:  # not another model: a damaged step (a partial copy), which keeps an error of its own
      raise _incomplete(self.directory, step)
    mismatch = _mismatch(stored, target)
    if mismatch:
      raise StateMismatch(f'restoring {self.directory}/{step} into abstract_state failed: {mismatch}')
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target), _EXTRA: ocp.args.JsonRestore()})
    try:
      restored = self._manager.restore(step, args=args)
    except ValueError as e:  # the params matched: a broken step or an outage; say which checkpoint
      raise ValueError(f'restoring {self.directory}/{step} into abstract_state failed: {e}') from e
    return restored[_STATE], restored[_EXTRA]

  def stored_state(self, step: int) -> Any:
    """The train-state tree checkpoint `step` holds, as shapes and dtypes (nothing is read but metadata)."""
    meta = self._manager.item_metadata(int(step))[_STATE]
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only `state['params']` of checkpoint `step`, into the shardings and dtypes of `abstract_params`: an Orbax
    partial restore, so the optimizer moments (2x the params with Adam) are never read or allocated. For tools
    that use a trained model (sample, evaluate, export), never for resuming."""
    path = self.directory / str(int(step)) / _STATE
    target = {'params': jax.tree.map(_as_abstract, abstract_params)}
    # a run still training deletes the steps its keep policy drops, maybe while this reads one
    gone = Gone(f'checkpoint {step} is gone from {self.directory} (a run that is still training deletes the '
                'checkpoints its keep policy drops); run the command again')  # fmt: skip
    if not path.exists():
      raise gone
    stored = False  # not read yet
    try:
      stored = _stored_tree(path)
      if stored is None:
        raise _incomplete(self.directory, int(step))
      mismatch = _mismatch({'params': stored['params']}, target)
    except (KeyError, FileNotFoundError, ValueError, TypeError) as e:  # a broken step
      if _vanishing(path):
        raise gone from None
      if stored is None:
        raise
      mismatch = f'unreadable metadata ({type(e).__name__}: {e})'
    if mismatch:
      raise ValueError(f'{path}: cannot restore the params (does the model preset match the run?): {mismatch}')
    args = ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    try:
      with ocp.PyTreeCheckpointer() as reader:
        return reader.restore(path, args=args)['params']
    except Exception as e:
      if _vanishing(path):
        raise gone from None
      if isinstance(e, (ValueError, KeyError, FileNotFoundError)):  # another model than the run's, a broken step
        raise ValueError(f'{path}: cannot restore the params (does the model preset match the run?): {e}') from None
      raise

  def wait_until_finished(self) -> None:
    """Blocks until the in-flight save (if any) is committed and old checkpoints are deleted, then calls its
    `on_commit`."""
    if self._failed is None:
      try:
        self._manager.wait_until_finished()
      except Exception as e:
        self._failed, self._on_commit = e, []  # not committed: nothing to announce
    if self._failed is not None:
      raise self._failed
    self.settle()

  def close(self) -> None:
    """Waits for pending saves, deletes the checkpoints without metrics that a newer one has replaced, and
    releases Orbax's threads, even when a save failed (whose error it raises then). Call before the process exits
    (also on SIGTERM)."""
    try:
      if not self.read_only:
        # Orbax applies the keep policy before a save commits, so an unranked step stays until the save after the
        # next one: at a run's end (its last save, a SIGTERM's step then one more) it would stay for good
        self._on_commit = []  # closing: whoever would hear of a commit has gone (the trainer's writer closes first)
        self.wait_until_finished()
        steps = self.all_steps()
        for step in steps[:-1]:
          if self.metrics(step) is None:
            self._manager.delete(step)
            self._metrics_cache.pop(step, None)
    finally:
      try:
        self._manager.close()
      except Exception as e:  # noqa: BLE001  (a failed save's error again: the one above is the one to see)
        log.debug('closing the checkpoint manager: %s', e)

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # ---- helpers -----------------------------------------------------------------------------------------------

  def _score(self, metrics: dict[str, Any] | None) -> float:
    """Ranking value: `metrics[best_metric]`; -inf when absent or NaN so such a step never outranks a real one."""
    if not metrics or self.best_metric not in metrics:
      return -math.inf
    value = float(metrics[self.best_metric])
    return -math.inf if math.isnan(value) else value

  def _clean_metrics(self, metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
      return None
    if self.best_metric not in metrics:
      raise ValueError(
        f'save(metrics=...) has no {self.best_metric!r} (the best_metric checkpoints are ranked '
        f'by); got keys {sorted(metrics)}. Pass metrics=None for an un-evaluated checkpoint.'
      )
    # Device/numpy scalars -> Python numbers, so the metrics item is plain JSON.
    clean = {
      k: (np.asarray(v).item() if isinstance(v, (jax.Array, np.ndarray, np.generic)) else v) for k, v in metrics.items()
    }
    _check_json('metrics', clean)
    if isinstance(clean[self.best_metric], bool) or not isinstance(clean[self.best_metric], (int, float)):
      raise TypeError(f'metrics[{self.best_metric!r}] = {clean[self.best_metric]!r}: expected a number.')
    return clean


class SaveFailed(RuntimeError):
  """A checkpoint could not be written (a full disk, a bucket's quota or permissions): `train` says so in one line
  and exits 1; the checkpoints committed before it are intact."""

  exit_code = 1


def failure_reason(e: BaseException) -> str:
  """The OS's words for a failed write ("No space left on device") when the error chain has them, else its first
  300 characters: Orbax's own message is a page of TensorStore status."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return seen.strerror
    seen = seen.__cause__ or seen.__context__
  text = ' '.join(str(e).split())
  for words in (
    'No space left on device',
    'Disk quota exceeded',
    'Permission denied',
    'Read-only file system',
    'File too large',
  ):
    if words in text:
      return words
  return text[:300]


# What to do about a failed save, by the OS's words for it (failure_reason): not every one is a full disk
_REMEDIES = (
  ('No space left', 'make room'),
  ('quota', 'make room'),
  ('File too large', "raise the file-size limit ('ulimit -f')"),
  ("can't start new thread", "raise the limit on processes ('ulimit -u')"),
  ('Permission denied', "give this user write and delete rights to the checkpoints' folder"),
  ('Read-only', 'give the run a writable folder'),
)


def remedy(reason: str) -> str:
  """'make room' for a full disk, the limit to raise for others; '' when the reason names none."""
  return next((fix for words, fix in _REMEDIES if words in reason), '')


def written_at(folder) -> int | None:
  """When the checkpoint in `folder` (`<checkpoints>/<step>`) was written, in Unix seconds: its Orbax metadata
  file's time (a bucket has no folders to date: theirs reads 0), else the folder's; None when neither is there."""
  return runfs.mtime(folder / '_CHECKPOINT_METADATA') or runfs.mtime(folder)


def save_failed(ckpt, workdir, e: Exception) -> SaveFailed:
  """A failed save of `ckpt` (a run's, in `workdir`) as one line: why, what to do, where a rerun resumes."""
  try:
    steps = ckpt.all_steps()
    where = f'checkpoint {steps[-1]} is where a rerun resumes' if steps else 'no checkpoint was kept'
  except Exception:  # noqa: BLE001  (the folder itself may be what failed: say nothing false)
    where = 'the last checkpoint committed is where a rerun resumes'
  reason = failure_reason(e)
  fix = remedy(reason)
  return SaveFailed(
    f'a checkpoint could not be written to {workdir / "checkpoints"}: {reason}; {where} '
    f'({fix + ", then run" if fix else "run"} the same command again)'
  )


def check_room(ckpt, workdir, step: int, state) -> None:
  """A local disk without room for one more checkpoint is said before Orbax starts writing (a write that fails
  part-way logs a page from each of Orbax's threads, and an asynchronous one is found out a step or more later).
  Old checkpoints are deleted only after the new one commits, so the room must be there first. The size: the last
  checkpoint's, or the state's in memory when that is more (step 0's zero optimizer moments compress to a third)."""
  if runfs.is_remote(workdir):
    return
  steps = ckpt.all_steps()
  if step in steps:
    return
  size = 0
  if steps:
    size = sum(f.stat().st_size for f in pathlib.Path(ckpt.directory / str(steps[-1])).rglob('*') if f.is_file())
  state_size = sum(getattr(x, 'nbytes', 0) for x in jax.tree.leaves(state))
  try:
    free = shutil.disk_usage(ckpt.directory if ckpt.directory.exists() else workdir).free
  except FileNotFoundError:  # the run folder deleted under the trainer: its metrics went to deleted files meanwhile
    raise SaveFailed(
      f'--workdir={workdir} is gone (deleted while the run trained?): checkpoint {step} has nowhere to go'
    ) from None
  if free >= 1.05 * max(size, state_size):
    return
  took = f'checkpoint {steps[-1]} took {size / 2**20:.0f} MiB' if steps else 'no checkpoint yet'
  if state_size > size:
    took += f' and the state to save is {state_size / 2**20:.0f} MiB'
  where = f'checkpoint {steps[-1]} is where a rerun resumes' if steps else 'no checkpoint was kept yet'
  raise SaveFailed(
    f'no room for checkpoint {step} in {ckpt.directory}: {free / 2**20:.0f} MiB free, {took}; {where} (make room, '
    'then run the same command again)'
  )


def _mismatch(stored: Any, target: Any) -> str | None:
  """Where the stored `params` and the target's differ in leaves or shapes, checked from metadata before any array
  is read: a failing Orbax read leaves its other reads running into a closed event loop, and their tracebacks end
  up after the one-line error. Params are plain dicts, named alike on both sides (optimizer states are not)."""

  def leaves(tree, at='params') -> dict:
    if not isinstance(tree, Mapping):
      return {at: tree.shape}
    return {k: v for key, sub in tree.items() for k, v in leaves(sub, f'{at}.{key}').items()}

  trees = (getattr(t, 'tree', t) for t in (stored, target))  # Orbax's TreeMetadata holds the nested dicts
  stored, target = (t.get('params', {}) if isinstance(t, Mapping) else {} for t in trees)
  if not target:  # nothing to compare (a target of None restores whatever is on disk)
    return None
  have, want = leaves(stored) if stored else {}, leaves(target)
  for key in sorted(want.keys() - have.keys())[:1]:
    return f'{key} is not in the checkpoint'
  for key in sorted(have.keys() - want.keys())[:1]:
    return f'the checkpoint holds {key}, which this config has no place for'
  for key in sorted(k for k in want if tuple(want[k]) != tuple(have[k]))[:1]:
    return f'{key}: the checkpoint holds shape {tuple(have[key])}, this config expects {tuple(want[key])}'
  return None


def unfinished_steps(folder, committed) -> list:
  """The checkpoint folders under `folder` whose save has not committed: Orbax's temporary `N.orbax-checkpoint-tmp`
  (with a time suffix in older versions) on a disk, a step folder not among `committed` in a bucket."""
  if not folder.exists():
    return []
  names = [p for p in folder.iterdir() if p.name.split('.')[0].isdigit()]
  return [p for p in names if '.orbax-checkpoint-tmp' in p.name or (p.name.isdigit() and int(p.name) not in committed)]


class Damaged(ValueError):
  """A checkpoint whose state metadata cannot be read (a partial copy): not another model's."""


def _incomplete(directory, step: int) -> Damaged:
  """What to say of a checkpoint whose state metadata cannot be read."""
  return Damaged(
    f'{directory}/{step}: checkpoint {step} is incomplete or damaged (its state metadata cannot be read: a copy cut '
    'short?); copy it again, or delete that folder to use the steps before it'
  )


def _stored_tree(path) -> Any:
  """The array metadata (shapes, dtypes) of a saved train state, read without its arrays."""
  with ocp.PyTreeCheckpointer() as reader:
    return reader.metadata(path).item_metadata


def _as_abstract(x: Any) -> jax.ShapeDtypeStruct:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  x = np.asarray(x)
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _check_json(name: str, value: Any, path: str = '') -> None:
  """Raises early (not in Orbax's background thread) on what JSON would refuse or silently change."""
  if isinstance(value, dict):
    for k, v in value.items():
      if not isinstance(k, str):
        raise TypeError(
          f'{name}{path}: key {k!r} is {type(k).__name__}; JSON keys must be str (an int key would '
          'come back as a string).'
        )
      _check_json(name, v, f'{path}[{k!r}]')
  elif isinstance(value, (list, tuple)):  # a tuple comes back as a list.
    for i, v in enumerate(value):
      _check_json(name, v, f'{path}[{i}]')
  elif not (value is None or isinstance(value, (str, bool, int, float))):
    raise TypeError(
      f'{name}{path} = {value!r} ({type(value).__name__}) is not JSON; use str/int/float/bool/None, '
      'lists/tuples and str-keyed dicts (convert arrays with .tolist(), rng keys with jax.random.key_data).'
    )
