"""A run directory that may live on GCS (or any `scheme://` filesystem etils.epath knows): `RunDir`.

Checkpoints go straight to the workdir: Orbax writes `gs://` itself. The other run files (metrics.jsonl, which
grows by one line per step, TensorBoard event files, validation samples, the reward plot, config.json) are
written by code that wants a local file it can append to and flush; GCS objects cannot be appended to. So for a
remote workdir they are written to a local staging folder and `sync()` uploads every file that changed since
the last upload, whole (one object write each, which GCS makes atomic). The trainer syncs after every
evaluation and checkpoint, every `sync_interval_s` in between, and on the way out (success, error or
preemption), so a checkpoint in the bucket comes with the metrics up to its step. A failed upload mid-run is
logged and retried at the next sync; the files wait in staging. On resume the files the trainer reads back
(metrics.jsonl) are fetched from the workdir first.

For a local workdir the staging folder is the workdir itself and `sync()` does nothing.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import tempfile
import time

from etils import epath

log = logging.getLogger(__name__)

FETCHED_ON_RESUME = ('metrics.jsonl', 'events.jsonl')


def is_remote(path: str | os.PathLike) -> bool:
  return '://' in os.fspath(path)


def path(p: str | os.PathLike) -> epath.Path:
  """An epath for a local path or a gs:// URL; local paths are made absolute so a later chdir cannot move them.
  Another kind of URL, or gs:// without a bucket, is a ConfigError."""
  scheme, _, rest = os.fspath(p).partition('://')
  if _ and (scheme != 'gs' or not rest.split('/', 1)[0]):
    from rftjax import errors

    what = 'no bucket' if scheme == 'gs' else f'{scheme}:// is not supported'
    raise errors.ConfigError(f'{os.fspath(p)}: expected a local path or gs://BUCKET/PATH ({what})')
  out = epath.Path(p)
  return out if is_remote(p) else out.absolute()


def tilde_hint(p) -> str:
  """For a path that starts with '~': only a shell expands it, and not after '=' (`--workdir=~/x`), so here it
  names a folder called '~' in the current one. '' for other paths."""
  text = os.fspath(p)
  if not re.match(r'~(/|$)', text):  # (~user/x is rare, and ~backup.jsonl may be a file's name)
    return ''
  said = "'~' is not expanded here (a shell expands it only where a word starts, not after '=')"
  return f'; {said}: write {os.path.expanduser(text)}'


def beside(file, value: str | None) -> str | None:
  """`value`, a path a file gives (a job file's data, its models), relative to that file's folder; absolute paths
  and URLs as they are."""
  if value is None or is_remote(value) or pathlib.Path(value).is_absolute():
    return value
  if is_remote(file):  # pathlib would make gs://b/x gs:/b/x, a local path
    return f'{str(file).rsplit("/", 1)[0]}/{value}'
  return str(pathlib.Path(file).parent / value)


def missing_where(p) -> str:
  """' in <current folder>' for a relative local path that is not there: relative to what it was looked for."""
  return '' if is_remote(p) or os.path.isabs(os.fspath(p)) else f' in {os.getcwd()}'


def mtime(p) -> int | None:
  """When `p` was last written, in Unix seconds (a local path or gs://), or None when it cannot be read."""
  try:
    st = p.stat()
  except OSError:
    return None
  value = getattr(st, 'st_mtime', None) or getattr(st, 'mtime', None)  # os.stat_result locally, epath's on GCS
  return int(value) if value else None


def check_not_tilde(p, label: str) -> None:
  """An output path that starts with '~' is refused: it would make a folder named '~' here, and a later `rm -rf ~`
  to tidy it up would remove the home folder."""
  hint = tilde_hint(p)
  if hint:
    from rftjax import errors

    raise errors.ConfigError(f'{label}: would make a folder named ~ in {os.getcwd()}{hint}')


def read_config(workdir: str | os.PathLike, model_ok: bool = False):
  """The run's `config.json` as a ConfigDict (what the trainer wrote at start-up); ConfigError when absent, or when
  it is a Hugging Face model's (an export's) unless `model_ok`."""
  import json

  import ml_collections

  from rftjax import errors

  file = path(workdir) / 'config.json'
  if not file.is_file():
    adapter = ' (it holds adapter_config.json: a PEFT adapter, whose run directory is what to give)'
    raise errors.ConfigError(
      f'--workdir={workdir}: no {file.name} there; expected a run directory written by rftjax.train'
      f'{adapter if (path(workdir) / "adapter_config.json").is_file() else ""}{tilde_hint(workdir)}'
    )
  try:
    found = json.loads(file.read_text())
  except ValueError as e:
    raise errors.ConfigError(f'{file}: not valid JSON ({e})') from None
  except OSError as e:
    raise errors.ConfigError(f'{file}: cannot read it ({e.strerror or e})') from None
  if not isinstance(found, dict):
    raise errors.ConfigError(f"{file}: expected a JSON object (a run's settings), found {type(found).__name__}")
  if not model_ok and config_kind(found) == 'export':
    raise errors.ConfigError(
      f"--workdir={workdir}: its config.json is a Hugging Face model's (model_type {found['model_type']!r}), not "
      f"a run's; expected a run directory written by rftjax.train (a model folder is given as --init=hf:{workdir})"
    )
  return ml_collections.ConfigDict(found)


def config_kind(found) -> str:
  """What wrote a folder's config.json (parsed): 'run' (rftjax.train), 'export' (a Hugging Face model's, as
  weights.export_hf writes it: it has model_type) or 'other'."""
  if isinstance(found, dict) and {'model', 'grpo', 'data'} <= found.keys():
    return 'run'
  return 'export' if isinstance(found, dict) and 'model_type' in found else 'other'


def previous_run(workdir: str | os.PathLike) -> tuple[dict | None, bool]:
  """(the config.json a run left in `workdir` as a dict, or None; whether it holds a checkpoint). A config.json
  that rftjax.train did not write (a Hugging Face model folder, say) is a ConfigError: training into it would
  replace that file."""
  import json

  from rftjax import errors

  root = path(workdir)
  file = root / 'config.json'
  if not file.is_file():
    return None, False
  try:
    found = json.loads(file.read_text())
  except ValueError as e:
    raise errors.ConfigError(f'--workdir={workdir}: its {file.name} is not valid JSON ({e})') from None
  kind = config_kind(found)
  if kind != 'run':
    what = 'a Hugging Face model folder' if kind == 'export' else 'not a run'
    raise errors.ConfigError(
      f'--workdir={workdir}: its {file.name} was not written by rftjax.train ({what}); training there would '
      'replace it: choose another --workdir'
    )
  ckpts = root / 'checkpoints'
  return found, ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())


LOCK = '.train.lock'  # held by the trainer using a local run folder; the OS lets it go when the process ends


def _holder(file) -> str | None:
  """Takes the lock on an open lock file without waiting: None when this process got it, else what the file says
  of the process holding it. OSError from a file system without locks (FUSE mounts)."""
  import errno
  import fcntl

  try:
    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise
    file.seek(0)
    return file.read().strip() or 'another process'
  return None


def unwritable(folder, e: OSError, flag: str = '--workdir') -> Exception:
  """The one-line error for a folder flag's folder that refuses writes: its strerror, not the errno and path
  again."""
  from rftjax import errors

  return errors.ConfigError(f'{flag}={folder}: cannot write there ({e.strerror or e})')


def lock(folder: str | os.PathLike):
  """An exclusive lock on a local run folder for as long as the returned file stays open: two trainers in one
  folder would write over each other's checkpoints and logs. ConfigError naming the holder (process, host, start)
  when another process has it. flock: released when the holder exits, however it exits (a crash, SIGKILL)."""
  import datetime
  import socket

  try:
    file = open(pathlib.Path(folder) / LOCK, 'a+')  # noqa: SIM115 - held open: that is the lock
  except OSError as e:  # a read-only or full disk, or another user's lock file: before anything is written
    holder = held_by(folder)  # readable, and held: that trainer is the news, not the permission
    raise (busy(folder, holder) if holder else unwritable(folder, e)) from None
  try:
    holder = _holder(file)
  except OSError as e:
    log.warning('--workdir=%s: cannot lock it (%s): a second trainer there would not be stopped', folder, e)
    return file
  if holder is not None:
    file.close()
    raise busy(folder, holder)
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  try:
    file.seek(0)
    file.truncate()
    file.write(f'process {os.getpid()} on {socket.gethostname()} (started {started})')
    file.flush()
  except OSError as e:
    file.close()
    raise unwritable(folder, e) from None
  return file


def held_by(folder: str | os.PathLike, cannot_ask=None) -> str | None:
  """What the run folder's lock file says when a process holds its lock now (asked of the lock itself, not of a
  pid, which this very process may have left there), else None; `cannot_ask` where the folder takes no locks (a
  FUSE mount: the trainer warned and went on). Takes no lock for longer than the asking."""
  import fcntl

  try:
    file = open(pathlib.Path(folder) / LOCK)  # noqa: SIM115 - closed below
  except OSError:
    return None
  with file:
    try:
      holder = _holder(file)
    except OSError:
      return cannot_ask
    if holder is None:
      fcntl.flock(file, fcntl.LOCK_UN)
  return holder


def busy(folder, holder: str) -> Exception:
  """The ConfigError for a run folder another trainer is using."""
  from rftjax import errors

  return errors.ConfigError(
    f'--workdir={folder}: {holder} is training in it; expected no other trainer there (stop that one, or give '
    'this run another --workdir)'
  )


def lock_holder(folder: str | os.PathLike) -> tuple[str, bool | None] | None:
  """(what the run folder's lock file says, whether its process is alive: None when it ran on another host), or
  None without a lock file. Takes no lock (a trainer starting meanwhile must not find it held)."""
  import re
  import socket

  file = pathlib.Path(folder) / LOCK
  try:
    said = file.read_text().strip()
  except OSError:
    return None
  m = re.match(r'process (\d+) on (\S+) ', said)
  if not m or m.group(2) != socket.gethostname():
    return said, None
  return said, alive(int(m.group(1)))


def alive(pid: int) -> bool:
  """Whether process `pid` of this machine is running (another user's counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # PermissionError: another user's live process
    return True
  return True


class RunDir:
  """`local` is where run files are written; `remote` is the workdir; `sync()` makes the second match the first.

  Args:
    workdir: a local path or a URL (`gs://bucket/run`).
    staging: for a remote workdir, the local folder to stage files in (default: a fresh temporary folder, removed
      by `close()`). Ignored for a local workdir.
    sync_interval_s: `maybe_sync()` uploads at most this often.
  """

  def __init__(
    self, workdir: str | os.PathLike, *, staging: str | os.PathLike | None = None, sync_interval_s: float = 60.0
  ):
    self.remote = path(workdir)
    self.is_remote = is_remote(workdir)
    self.sync_interval_s = sync_interval_s
    self._uploaded: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) at its last upload
    self._last_sync = time.monotonic()
    self._own_staging = False
    if not self.is_remote:
      self.local = pathlib.Path(self.remote)
      self.local.mkdir(parents=True, exist_ok=True)
      return
    # no mkdir: object stores have no folders, and gcsfs's makedirs would create a missing *bucket*
    scheme, rest = os.fspath(workdir).split('://', 1)
    bucket = epath.Path(f'{scheme}://{rest.split("/")[0]}')
    if not bucket.exists():
      raise FileNotFoundError(f'bucket {bucket} does not exist (or this machine may not list it)')
    if staging is None:
      staging = tempfile.mkdtemp(prefix='rftjax-staging-')
      self._own_staging = True
    self.local = pathlib.Path(staging).absolute()
    self.local.mkdir(parents=True, exist_ok=True)
    for name in FETCHED_ON_RESUME:
      src = self.remote / name
      if src.exists():
        (self.local / name).write_bytes(src.read_bytes())
        self._mark_uploaded(name)
    log.info(
      'workdir %s: run files are staged in %s and uploaded every %.0fs, after each eval and checkpoint, and at exit',
      self.remote,
      self.local,
      sync_interval_s,
    )

  @property
  def compile_cache(self) -> pathlib.Path:
    """Where JAX keeps compiled programs for this run: next to it, or for a remote run on this machine's disk,
    where a cache lookup costs no round trip."""
    if self.is_remote:
      return pathlib.Path('~/.cache/rftjax/jax_cache').expanduser()
    return self.local / '.jax_cache'

  def _mark_uploaded(self, rel: str) -> None:
    st = (self.local / rel).stat()
    self._uploaded[rel] = (st.st_size, st.st_mtime_ns)

  def sync(self, *, raise_errors: bool = True) -> int:
    """Uploads staged files that are new or changed since their last upload; returns how many. Local: 0.

    With `raise_errors=False` (mid-run) a failed upload is logged and retried at the next sync: the files stay
    staged, and a network blip must not end a training run."""
    self._last_sync = time.monotonic()
    if not self.is_remote:
      return 0
    if not raise_errors:
      try:
        return self.sync()
      except Exception as e:  # gcsfs has retried already; what is left is an outage or a permission change
        log.warning(
          'upload to %s failed (%s: %s); the files stay in %s and are retried at the next sync',
          self.remote,
          type(e).__name__,
          e,
          self.local,
        )
        return 0
    count = 0
    for file in sorted(self.local.rglob('*')):
      if not file.is_file() or file.name.endswith('.tmp'):
        continue
      rel = file.relative_to(self.local).as_posix()
      st = file.stat()
      if self._uploaded.get(rel) == (st.st_size, st.st_mtime_ns):
        continue
      (self.remote / rel).write_bytes(file.read_bytes())
      self._uploaded[rel] = (st.st_size, st.st_mtime_ns)
      count += 1
    return count

  def maybe_sync(self) -> int:
    if self.is_remote and time.monotonic() - self._last_sync >= self.sync_interval_s:
      return self.sync(raise_errors=False)
    return 0

  def __enter__(self) -> 'RunDir':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      self.close()
    except Exception:
      if exc_type is None:
        raise
      log.exception('upload at exit failed (while handling %s)', exc_type.__name__)  # keep the first error

  def close(self) -> None:
    """Last upload; then the staging folder goes (if this object made it). A failed upload keeps it and says where."""
    if not self.is_remote:
      return
    try:
      self.sync()
    except Exception:
      log.error('could not upload the run files to %s; they are still in %s', self.remote, self.local)
      raise
    if self._own_staging:
      shutil.rmtree(self.local, ignore_errors=True)
