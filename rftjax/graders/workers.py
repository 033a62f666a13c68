"""The grading pool's worker processes: one `sandbox_worker.py` each, spoken to over a pair of pipes in
length-prefixed JSON frames, inside bubblewrap's namespaces where it is installed, and in a cgroup v1 pids group
where the kernel lets us (the cap on the processes a grader's code can start). What a worker is working on, and
what its failures mean for a sample, is the pool's business (`pool.py`); this file only starts, reads and kills.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from rftjax import runfs
from rftjax.graders import isolation as isolation_lib

_WORKER_SCRIPT = pathlib.Path(__file__).with_name('sandbox_worker.py')
CGROUP_ROOT = pathlib.Path('/sys/fs/cgroup/pids')
_MAX_FRAME = 64 << 20
_MAX_TASKS_PER_WORKER = 8  # cgroup pids.max: bubblewrap's two processes, the worker, a few threads or children
_counter = itertools.count()


class Worker:
  """One sandbox process and the parent's ends of its pipes. With `isolation` the worker runs inside bubblewrap's
  namespaces and writes only to its in-memory /sandbox; without, to a host temp dir named after this process."""

  def __init__(self, memory_mb: int, disk_mb: int, isolation: isolation_lib.Isolation | None):
    self.tmpdir = None if isolation else tempfile.mkdtemp(prefix=f'rftjax-grader-{os.getpid()}-')
    self.isolated = isolation is not None
    self.cgroup = make_cgroup()
    child_r, self.w = os.pipe()
    self.r, child_w = os.pipe()
    env = {
      'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
      'LANG': 'C.UTF-8',
      'OMP_NUM_THREADS': '1',
      'OPENBLAS_NUM_THREADS': '1',
      'MKL_NUM_THREADS': '1',
      'PYTHONHASHSEED': '0',
    }
    workdir = isolation_lib.SANDBOX_DIR if isolation else self.tmpdir
    cmd = [sys.executable, '-E', '-s', '-B', str(_WORKER_SCRIPT), str(child_r), str(child_w), workdir,
           str(memory_mb), str(disk_mb)]  # fmt: skip
    if isolation:
      cmd = isolation.wrap(cmd, disk_mb)
    if self.cgroup:  # joined before anything runs: every process the worker starts is counted
      cmd = ['/bin/sh', '-c', 'echo $$ > "$0" && exec "$@"', str(self.cgroup / 'cgroup.procs'), *cmd]
    try:
      self.proc = subprocess.Popen(
        cmd,
        pass_fds=(child_r, child_w),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        cwd=self.tmpdir or '/',
      )
    finally:
      os.close(child_r)
      os.close(child_w)
    os.set_blocking(self.w, False)
    self.buf = bytearray()
    self.loaded: set[str] = set()  # grader keys this worker has compiled
    self.chunk: list[tuple[int, list]] | None = None  # tasks sent and not yet answered
    self.job = None
    self.deadline = 0.0
    self.deadline_s = 0.0  # the current task's deadline, s (without the load grace)

  def send(self, obj: Any, timeout_s: float) -> None:
    data = json.dumps(obj, default=str).encode()  # non-JSON item values reach the grader as strings
    view = memoryview(struct.pack('>I', len(data)) + data)
    end = time.monotonic() + timeout_s
    while view:
      _, ready, _ = select.select([], [self.w], [], max(0.0, end - time.monotonic()))
      if not ready:
        raise TimeoutError('worker did not read its task')
      view = view[os.write(self.w, view) :]

  def read_frames(self) -> list[dict] | None:
    """Reads what is available; returns decoded frames, or None at EOF (the worker died)."""
    try:
      data = os.read(self.r, 1 << 20)
    except OSError:
      return None
    if not data:
      return None
    self.buf += data
    frames = []
    while len(self.buf) >= 4:
      (n,) = struct.unpack('>I', self.buf[:4])
      if n > _MAX_FRAME:
        raise ValueError(f'worker sent a {n}-byte frame')
      if len(self.buf) < 4 + n:
        break
      frames.append(json.loads(bytes(self.buf[4 : 4 + n])))
      del self.buf[: 4 + n]
    return frames

  def kill(self) -> None:
    for sig_target in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), lambda: self.proc.kill()):
      try:
        sig_target()
      except (ProcessLookupError, PermissionError, OSError):
        pass
    kill_cgroup(self.cgroup)
    try:
      self.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      pass
    for fd in (self.r, self.w):
      try:
        os.close(fd)
      except OSError:
        pass
    remove_cgroup(self.cgroup)
    if self.tmpdir:
      remove_tree(pathlib.Path(self.tmpdir))

  def exit_description(self) -> str:
    try:
      code = self.proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
      return 'worker process stopped answering'
    signum = -code if code < 0 else code - 128 if self.isolated else 0  # bubblewrap exits 128 + n for signal n
    if signum in signal.valid_signals():
      name = signal.Signals(signum).name if signum in set(signal.Signals) else str(signum)  # real-time ones: a number
      return f'worker process killed by signal {name}'
    return f'worker process exited with code {code} before it answered'


def clean_stale() -> int:
  """Removes the cgroups and temp dirs of grading pools whose process is gone (a `kill -9` of rftjax leaves them
  behind: nothing runs at the death of a killed process). Names carry the owner's pid. Returns how many went."""
  count = 0
  # another user's leftovers are theirs to remove: trying cost a second each (remove_cgroup's retries), every start
  cgroups = list(CGROUP_ROOT.glob('rftjax-grader-*')) if cgroups_writable() else []
  for path in cgroups + list(pathlib.Path(tempfile.gettempdir()).glob('rftjax-grader-*')):
    try:
      owner = int(path.name.split('-')[2])
    except (IndexError, ValueError):
      continue
    if runfs.alive(owner):
      continue
    if path.parent == CGROUP_ROOT:
      if not os.access(path, os.W_OK):
        continue
      kill_cgroup(path)
      remove_cgroup(path)
    else:
      remove_tree(path)
    count += not path.exists()
  return count


def cgroups_writable() -> bool:
  return (CGROUP_ROOT / 'cgroup.procs').exists() and os.access(CGROUP_ROOT, os.W_OK)


def make_cgroup() -> pathlib.Path | None:
  """A pids cgroup capping the worker's tasks (a fork bomb stops at the cap), where the kernel lets us."""
  if not cgroups_writable():
    return None
  path = CGROUP_ROOT / f'rftjax-grader-{os.getpid()}-{next(_counter)}'
  if path.exists():  # a killed process's of the same pid (reused): clean_stale takes its owner for this live one
    kill_cgroup(path)
    remove_cgroup(path)
  try:
    path.mkdir()
    (path / 'pids.max').write_text(str(_MAX_TASKS_PER_WORKER))
    return path
  except OSError:
    remove_cgroup(path)
    return None


def kill_cgroup(path: pathlib.Path | None) -> None:
  if path is None:
    return
  for _ in range(50):
    try:
      pids = [int(p) for p in (path / 'cgroup.procs').read_text().split()]
    except (OSError, ValueError):
      return
    if not pids:
      return
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass
    time.sleep(0.01)


def remove_cgroup(path: pathlib.Path | None) -> None:
  if path is None:
    return
  for _ in range(100):
    try:
      path.rmdir()
      return
    except (FileNotFoundError, PermissionError):  # gone, or not this user's to remove
      return
    except OSError:  # busy: its last processes are still exiting
      time.sleep(0.01)


def remove_tree(path: pathlib.Path) -> None:
  """rmtree that also removes folders a grader made unreadable (a folder chmod 000 kept the worker's temp dir in
  /tmp for good): each folder below `path` is made this user's to list first, top down, links left alone; nothing
  outside `path` is touched, and nothing raises (another user's files stay)."""
  if path.is_symlink() or not path.is_dir():
    return
  for folder, subfolders, _ in os.walk(path, onerror=lambda e: None):
    for name in [folder, *(os.path.join(folder, d) for d in subfolders)]:
      if not os.path.islink(name):
        try:
          os.chmod(name, 0o700)
        except OSError:
          pass
  shutil.rmtree(path, ignore_errors=True)
