"""Kernel-enforced isolation for the grader workers: bubblewrap's namespaces around each worker process.

`python` and `code` graders run code a user (or the model) wrote. Python-level checks inside the worker (its audit
hook) can be routed around by that code, so the boundary is drawn by the kernel instead, with bubblewrap
(`bwrap`, a small setuid-free tool from the Flatpak project, packaged by every distribution):

  * a mount namespace whose view is read-only and holds only what the worker needs to run: the system's programs
    and libraries (/usr, /bin, /lib...), the Python installation and its packages, the worker's own folder;
    nothing else (no /root, no /home, no /etc/shadow, no run directories);
  * one private writable directory, /sandbox, an in-memory tmpfs capped at the disk limit: it vanishes with the
    worker, so nothing is left behind even after a `kill -9` of rftjax;
  * new network (no interface but a down loopback: no 127.0.0.1, no DNS), PID (the worker sees its own processes
    only, so it cannot signal rftjax), IPC, UTS and user namespaces; all capabilities dropped; a new session;
  * the worker dies with rftjax (`--die-with-parent`).
Around that the pool keeps what the kernel also enforces: a pids cgroup capping the worker's tasks (a fork bomb
stops there) and rlimits on memory, CPU time, file size and open files (sandbox_worker.py).

`probe()` runs bwrap once to see whether this machine allows it: as root, or as a user where the kernel lets users
create namespaces (Debian, Ubuntu 22.04; on Ubuntu 24.04 only with an AppArmor profile for bwrap: docs/graders.md).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import shutil
import subprocess
import sys

SANDBOX_DIR = '/sandbox'  # the worker's private writable directory, inside its mount namespace
_SYSTEM = ('/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32', '/etc/ld.so.cache', '/etc/localtime')
INSTALL_HINT = (
  'install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap)'
)
_APPARMOR_SWITCH = pathlib.Path('/proc/sys/kernel/apparmor_restrict_unprivileged_userns')
APPARMOR_HINT = (
  "this kernel's AppArmor lets only programs with a profile allowing it create user namespaces "
  '(kernel.apparmor_restrict_unprivileged_userns=1, the Ubuntu 24.04 default): give /usr/bin/bwrap such a '
  'profile (docs/graders.md, "Isolation"), or run rftjax as root'
)


@dataclasses.dataclass(frozen=True)
class Isolation:
  """What this machine allows: `bwrap` is the binary to use, or None with the `reason` it cannot isolate."""

  bwrap: str | None
  reason: str = ''

  @property
  def available(self) -> bool:
    return self.bwrap is not None

  def wrap(self, argv: list[str], disk_mb: int) -> list[str]:
    """`argv` run inside the sandbox, its working directory SANDBOX_DIR (a tmpfs of `disk_mb` MB)."""
    return [self.bwrap, *_bwrap_args(disk_mb), *argv]


def _readonly_paths() -> list[str]:
  """What a worker needs to see: system programs and libraries, the Python installation and its packages."""
  python = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
  python |= {p for p in sys.path if p.endswith(('site-packages', 'dist-packages')) and os.path.isdir(p)}
  python.add(str(pathlib.Path(__file__).resolve().parent))  # sandbox_worker.py and mathgrade.py, not the repository
  paths = sorted({os.path.realpath(p) for p in python})
  # a path inside another one comes along with it
  return [p for p in paths if not any(p != q and p.startswith(q.rstrip('/') + '/') for q in paths)]


def _bwrap_args(disk_mb: int) -> list[str]:
  args = ['--unshare-all', '--die-with-parent', '--new-session', '--cap-drop', 'ALL']
  for p in _SYSTEM:
    if os.path.islink(p):  # merged /usr: /bin -> usr/bin
      args += ['--symlink', os.readlink(p), p]
    elif os.path.exists(p):
      args += ['--ro-bind', p, p]
  for p in _readonly_paths():
    if not any(p == s or p.startswith(s + '/') for s in _SYSTEM if os.path.isdir(s) and not os.path.islink(s)):
      args += ['--ro-bind', p, p]
  # /dev read-only: its tmpfs (/dev/shm) would be a second writable place, in the host's memory and past disk_mb
  args += ['--proc', '/proc', '--dev', '/dev', '--remount-ro', '/dev', '--size', str(disk_mb << 20), '--tmpfs',
           SANDBOX_DIR]  # fmt: skip
  return args + ['--chdir', SANDBOX_DIR, '--setenv', 'HOME', SANDBOX_DIR, '--setenv', 'TMPDIR', SANDBOX_DIR]


@functools.cache
def probe() -> Isolation:
  """Whether bubblewrap can sandbox a Python worker here (one short run of `python -c pass` inside it)."""
  bwrap = shutil.which('bwrap')
  if bwrap is None:
    return Isolation(None, f'bubblewrap (bwrap) is not installed; {INSTALL_HINT}')
  try:
    proc = subprocess.run([bwrap, *_bwrap_args(16), sys.executable, '-c', 'pass'], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
  except (OSError, subprocess.TimeoutExpired) as e:
    return Isolation(None, f'bubblewrap ({bwrap}) did not run: {e}; {INSTALL_HINT}')
  if proc.returncode != 0:
    why = (proc.stderr.strip().splitlines() or ['no message'])[-1]
    restricted = os.geteuid() != 0 and _APPARMOR_SWITCH.is_file() and _APPARMOR_SWITCH.read_text().strip() == '1'
    hint = APPARMOR_HINT if restricted else 'docs/graders.md, "Isolation", says what it needs'
    if "Can't fork" in why or 'Resource temporarily unavailable' in why:  # not namespaces: the process limit
      return Isolation(None, f"bubblewrap ({bwrap}) could not start a process ({why}): this user's limit on "
                       "processes ('ulimit -u') is too low; raise it")  # fmt: skip
    return Isolation(None, f'bubblewrap ({bwrap}) cannot create its namespaces here ({why}); {hint}')
  return Isolation(bwrap)
