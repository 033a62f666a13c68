"""The sandboxed grading worker, run as a script: `python -E -s sandbox_worker.py RFD WFD WORKDIR MEM DISK`.

It never imports rftjax (so a heavy package __init__ cannot slow every respawn). Confinement, strongest first:
  * bubblewrap's namespaces (isolation.py, when the machine allows them): a read-only view of the system and the
    Python installation, a private in-memory WORKDIR, no network, its own PID space, no capabilities;
  * the parent puts it in its own pids cgroup (when /sys/fs/cgroup/pids is writable) capping its tasks, and
    kills the whole cgroup and process group at its deadline (which bounds its CPU time too);
  * its own network namespace even without bubblewrap (when it may unshare one);
  * rlimits: RLIMIT_AS (memory), RLIMIT_FSIZE (largest file), RLIMIT_NOFILE (open files), RLIMIT_NPROC (for
    non-root users), no core files;
  * a PEP 578 audit hook, installed before any user code, that refuses process creation, signals, sockets, ctypes,
    rlimit changes, and every write, rename, delete or mkdir outside WORKDIR: the last line without bubblewrap,
    a second one within it;
  * stdout/stderr are /dev/null at the fd level and a capped buffer at the Python level.
Protocol on the pipes: frames of a 4-byte big-endian length and UTF-8 JSON. Request
{"grader": {...}, "tasks": [[index, *args], ...], "memory": "2048 MB (setting)", "stop": [seconds, why] | absent};
one reply per task:
{"i": index, "s": score, "e": [category, message] | null, "m": metadata}. With `stop` (python graders), a task still
running after `seconds` is stopped by SIGALRM and answered with where it was (the parent's later deadline kills a
worker that cannot be stopped: a long call into C, a bare `except:` around the hang).
"""

import builtins
import io
import json
import linecache
import math
import os
import re
import resource
import signal
import struct
import sys
import textwrap
import time
import traceback

_BLOCKED_PREFIXES = (
  'os.fork',
  'os.exec',
  'os.posix_spawn',
  'os.spawn',
  'os.system',
  'os.kill',
  'os.killpg',
  'subprocess.',
  'socket.',
  'ctypes.',
  'resource.setrlimit',
  'resource.prlimit',
  'pty.',
  'os.setuid',
  'os.setgid',
  'os.setsid',
  'os.setpgid',
  'os.chroot',
  'os.startfile',
  'os.mknod',
  'os.mkfifo',
  'winreg.',
  '_posixsubprocess',
)
# Modules that reach fork/exec or raw memory without raising an audit event of their own.
_BLOCKED_MODULES = {'_posixsubprocess', '_xxsubinterpreters'}  # ctypes: every use raises a ctypes.* event
_PATH_EVENTS = {
  'os.remove': (0,),
  'os.rmdir': (0,),
  'os.rename': (0, 1),
  'os.mkdir': (0,),
  'os.chmod': (0,),
  'os.chown': (0,),
  'os.link': (0, 1),
  'os.symlink': (1,),
  'os.truncate': (0,),
  'os.utime': (0,),
  'shutil.rmtree': (0,),
  'shutil.copyfile': (1,),
  'shutil.copytree': (1,),
  'shutil.move': (1,),
  'os.removexattr': (0,),
  'os.setxattr': (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_STDOUT_KEEP = 2000
_MAX_OPEN_FILES = 256


class _CappedOutput(io.TextIOBase):
  """Keeps the first few KB a grader prints (returned as metadata["stdout"]) and drops the rest cheaply."""

  def __init__(self):
    self.kept, self.size = [], 0

  def write(self, text):
    n = len(text)
    if self.size < _STDOUT_KEEP:
      self.kept.append(text[: _STDOUT_KEEP - self.size])
    self.size += n
    return n

  def take(self):
    out = ''.join(self.kept)
    if self.size > _STDOUT_KEEP:
      out += f'\n[... {self.size - _STDOUT_KEEP} more characters of output dropped]'
    self.kept, self.size = [], 0
    return out

  def writable(self):
    return True


def _confine(tmpdir: str, mem_mb: int, disk_mb: int) -> None:
  try:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
    if os.geteuid() == 0:
      libc.unshare(0x40000000)  # CLONE_NEWNET; fails harmlessly without CAP_SYS_ADMIN
  except Exception:  # noqa: BLE001  (best effort; the audit hook still blocks sockets)
    pass
  os.chdir(tmpdir)
  os.environ.update(HOME=tmpdir, TMPDIR=tmpdir, TMP=tmpdir, TEMP=tmpdir)
  import tempfile

  tempfile.tempdir = tmpdir
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
  # a user's own lower hard limit (`ulimit -n 64`) holds: raising it is refused, and every grading failed, the
  # worker gone before it answered
  for which, cap in ((resource.RLIMIT_FSIZE, disk_mb << 20), (resource.RLIMIT_AS, mem_mb << 20),
                     (resource.RLIMIT_NOFILE, _MAX_OPEN_FILES)):  # fmt: skip
    hard = resource.getrlimit(which)[1]
    cap = cap if hard == resource.RLIM_INFINITY else min(cap, hard)
    resource.setrlimit(which, (cap, cap))
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead of killing us
  signal.signal(signal.SIGALRM, _on_alarm)  # the code grader's per-test time limit

  root = os.path.realpath(tmpdir) + os.sep
  realpath, blocked, path_events = os.path.realpath, _BLOCKED_PREFIXES, _PATH_EVENTS

  def inside(path) -> bool:
    if isinstance(path, int):
      return True
    try:
      p = os.fsdecode(path)
    except TypeError:
      return False
    if p == '/dev/null':
      return True
    return (realpath(p) + os.sep).startswith(root)

  def hook(event, args):
    if event == 'open':
      mode, flags = args[1], args[2]
      if ((isinstance(mode, str) and any(c in mode for c in 'wax+')) or (flags or 0) & _WRITE_FLAGS) and not inside(
        args[0]
      ):
        raise PermissionError(f"sandbox: writing {args[0]!r} outside the grader's temp dir is not allowed")
    elif event in path_events:
      for k in path_events[event]:
        if k < len(args) and not inside(args[k]):
          raise PermissionError(f"sandbox: {event} on {args[k]!r} outside the grader's temp dir is not allowed")
    elif event == 'import' and args[0].split('.')[0] in _BLOCKED_MODULES:
      raise ImportError(f'sandbox: module {args[0]} is not available to graders')
    elif event.startswith(blocked):
      raise PermissionError(f'sandbox: {event} is not allowed in a grader')

  # subprocess is imported by common libraries (sympy), so it stays importable, but its fork_exec (which raises
  # no audit event of its own) is replaced, and a fresh import of _posixsubprocess is refused by the hook.
  import subprocess
  import _posixsubprocess

  def no_fork_exec(*args, **kwargs):
    raise PermissionError('sandbox: starting processes is not allowed in a grader')

  _posixsubprocess.fork_exec = no_fork_exec
  subprocess._fork_exec = no_fork_exec
  sys.addaudithook(hook)


# Graders -----------------------------------------------------------------------------------------------------
class _Error(Exception):
  def __init__(self, category, message):
    super().__init__(message)
    self.category = category


class _OutOfRange(_Error):
  """A finite score outside [0, 1]: kept clamped, with a named error (it usually means a grader bug)."""

  def __init__(self, value, clamped, what):
    super().__init__('python_grader_runtime', f'{what} returned {value!r}; expected a score in [0, 1], clamped to '
                     f'{clamped:g}')  # fmt: skip
    self.score = clamped


def _as_score(value, what='grade()'):
  # True / False count as 1 / 0: `return answer == expected` is the most natural grader there is. numpy's
  # scalars are numbers too (np.float32(1.0), np.sum(...), (a == b).all()): their Python value
  if type(value).__module__ == 'numpy' and getattr(value, 'shape', None) == ():
    value = value.item()
  if type(value).__name__ in ('Fraction', 'Decimal') and type(value).__module__ in ('fractions', 'decimal'):
    value = float(value)  # exact arithmetic's results: Fraction(3, 4) of the tests passed
  if not isinstance(value, (int, float)):
    raise _Error(
      'python_grader_runtime', f'{what} returned {type(value).__name__} {str(value)[:100]!r}; expected a finite float'
    )
  value = float(value)
  if not math.isfinite(value):
    raise _Error('python_grader_runtime', f'{what} returned {value}; expected a finite float')
  if not 0.0 <= value <= 1.0:
    raise _OutOfRange(value, min(max(value, 0.0), 1.0), what)
  return value


def _make_python(spec):
  # tracebacks name the grader (a multi's sub-graders apart) and show its code lines, as for a file
  filename = f'<grader {spec.get("name") or "source"}>'
  lines = (len(spec['source']), None, spec['source'].splitlines(True), filename)
  linecache.cache[filename] = lines
  namespace = {'__name__': 'grader'}
  try:
    exec(compile(spec['source'], filename, 'exec'), namespace)
  except BaseException:  # noqa: BLE001  (user code)
    tb = _user_traceback()

    def broken(sample, item):
      raise _Error('python_grader_runtime', 'grader source failed to load:\n' + tb)

    return broken
  grade_fn = namespace.get('grade')
  if not callable(grade_fn):

    def missing(sample, item):
      raise _Error('python_grader_runtime', 'grader source does not define grade(sample, item)')

    return missing

  def run(sample, item):
    linecache.cache[filename] = lines  # two graders of one name (two multis' sub-graders) share a worker
    return _as_score(grade_fn(sample, item)), None

  return run


def _user_traceback(last_line=None) -> str:
  """The exception being handled, its traceback from the grader's own frames on (this worker's are no help to
  whoever wrote the grader), the last 8 of them, with the grader's innermost own frame kept when they are all in
  a library it called; at most 4000 characters. `last_line` replaces the exception's own line."""
  kind, value, tb = sys.exc_info()
  mine = tb
  while mine is not None and not mine.tb_frame.f_code.co_filename.startswith('<grader'):
    mine = mine.tb_next
  frames = traceback.extract_tb(mine or tb)
  while len(frames) > 1 and frames[-1].filename == __file__:  # the alarm's handler, raising the stop
    frames.pop()
  own = [f for f in frames if f.filename.startswith('<grader')]
  kept = traceback.StackSummary.from_list(frames[-8:]).format()
  if own and own[-1] not in frames[-8:]:
    kept = [*traceback.StackSummary.from_list([own[-1]]).format(), '  ...\n', *kept[1:]]
  tail = [last_line] if last_line else traceback.format_exception_only(kind, value)
  return ''.join(['Traceback (most recent call last):\n', *kept, *tail])[-4000:]


_FENCE = re.compile(r'```[ \t]*([A-Za-z0-9_+\-]*)[^\n]*\n(.*?)```', re.DOTALL)


class _TestTimeout(BaseException):  # BaseException: the model's `except Exception` must not swallow it
  pass


def _on_alarm(signum, frame):
  raise _TestTimeout


def _limited(seconds, fn, *args, _clock=time.monotonic, _setitimer=signal.setitimer):
  """fn(*args), interrupted after `seconds` of wall clock (SIGALRM: this worker is single-threaded). Raised in a
  finalizer (`__del__`), Python drops the exception: the alarm goes off again every 0.1 s, and a call that returns
  past its time is timed out all the same (a test whose finalizer looped had passed)."""
  t0 = _clock()
  _setitimer(signal.ITIMER_REAL, seconds, 0.1)
  try:
    result = fn(*args)
  finally:
    _setitimer(signal.ITIMER_REAL, 0)
  if _clock() - t0 >= seconds:
    raise _TestTimeout
  return result


_CODE_TAGS = ('', 'python', 'py', 'python3')


def _code_block(text):
  """The last fenced block tagged python (or untagged), dedented (a fence inside a list item is indented); None
  without one. A later ```bash or ```text block (an example run, an output) is not the solution."""
  blocks = [code for tag, code in _FENCE.findall(text) if tag.lower() in _CODE_TAGS]
  return textwrap.dedent(blocks[-1]) if blocks else None


def _run_code(text, tests, test_timeout_s=5.0, *, _builtins=dict(vars(builtins)), _exec=exec, _compile=compile,
              _live=vars(builtins), _limited=_limited, _signal=signal.signal, _on_alarm=_on_alarm):  # fmt: skip
  """Score = share of `tests` that pass after the completion's code ran. The pool gives each code sample a fresh
  worker, so nothing a completion changes reaches another sample; builtins (the module's and the namespace's
  `__builtins__`) and the alarm handler are restored before each test, and what runs the tests is bound here, so
  the simplest ways to skip them (`builtins.exec = ...`, ignoring SIGALRM, replacing this module's `_limited`) do
  not."""
  tests = [tests] if isinstance(tests, str) else list(tests)
  code = _code_block(text)
  if code is None:  # the model's miss (a 0, as a math answer it did not give), not the grader's error
    return 0.0, {'passed': 0, 'total': len(tests), 'exception': 'no fenced python code block (```...```)'}
  namespace = {'__name__': 'solution'}  # a `if __name__ == '__main__':` block reading stdin does not run
  try:
    _limited(test_timeout_s, _exec, _compile(code, '<completion>', 'exec'), namespace)
  except BaseException as e:  # noqa: BLE001  (the model's code failing is a score of 0, not a grader error)
    why = f'timed out after {test_timeout_s:g} s' if isinstance(e, _TestTimeout) else f'{type(e).__name__}: {e}'
    return 0.0, {'passed': 0, 'total': len(tests), 'exception': why[:500]}
  passed, failures = 0, []
  for test in tests:
    _live.update(_builtins)  # update, then drop additions: the worker's own code needs its builtins throughout
    for name in [name for name in _live if name not in _builtins]:
      del _live[name]
    _signal(signal.SIGALRM, _on_alarm)
    try:
      _limited(test_timeout_s, _exec, _compile(test, '<test>', 'exec'), {**namespace, '__builtins__': _live})
      passed += 1
    except BaseException as e:  # noqa: BLE001
      why = f'timed out after {test_timeout_s:g} s' if isinstance(e, _TestTimeout) else f'{type(e).__name__}: {e}'
      if len(failures) < 5:
        failures.append(f'{test[:200]}: {why[:200]}')
  meta = {'passed': passed, 'total': len(tests)}
  if failures:
    meta['failures'] = failures
  return (passed / len(tests) if tests else 0.0), meta


def _make(spec):
  try:
    return _make_kind(spec)
  except Exception:  # noqa: BLE001  (an import failure must end as a named error, not a dead worker)
    tb = traceback.format_exc(limit=-5)

    def broken(*args):
      raise _Error('python_grader_runtime', 'grader failed to load in the sandbox:\n' + tb)

    return broken


def _make_kind(spec):
  kind = spec['kind']
  if kind == 'python':
    return _make_python(spec)
  if kind == 'math':
    import mathgrade  # a sibling file: this script's directory is sys.path[0]
    import sympy  # noqa: F401  (import now, under the load deadline, not during the first sample's)
    from sympy.parsing import sympy_parser  # noqa: F401

    exact = bool(spec.get('exact_number'))
    return lambda text, ref: mathgrade.grade(text, ref, exact)
  if kind == 'code':
    return lambda text, tests: _run_code(text, tests, float(spec.get('test_timeout_s', 5.0)))
  raise _Error('other', f'unknown sandbox grader kind {kind!r}')


# Loop --------------------------------------------------------------------------------------------------------
def _read_exact(fd, n):
  chunks = []
  while n:
    b = os.read(fd, n)
    if not b:
      raise EOFError
    chunks.append(b)
    n -= len(b)
  return b''.join(chunks)


def _send(fd, obj):
  data = json.dumps(obj, allow_nan=True, default=str).encode()
  data = struct.pack('>I', len(data)) + data
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view) :]


def _clear_workdir():
  """Each chunk starts with an empty temp dir, so one grader's files never reach the next or fill the disk."""
  try:
    with os.scandir('.') as entries:
      for entry in entries:
        if entry.is_dir(follow_symlinks=False):
          import shutil

          shutil.rmtree(entry.path, ignore_errors=True)
        else:
          os.unlink(entry.path)
  except OSError:
    pass


def main(argv):
  rfd, wfd = int(argv[1]), int(argv[2])
  os.set_inheritable(rfd, False)
  os.set_inheritable(wfd, False)
  out = _CappedOutput()
  sys.stdout = sys.stderr = out
  _confine(argv[3], int(argv[4]), int(argv[5]))
  graders = {}
  while True:
    try:
      (n,) = struct.unpack('>I', _read_exact(rfd, 4))
      request = json.loads(_read_exact(rfd, n))
    except EOFError:
      return
    spec = request['grader']
    key = spec['key']
    if key not in graders:
      if len(graders) > 32:
        graders.clear()
      graders[key] = _make(spec)
      _send(wfd, {'loaded': key})  # loading (imports, module code) gets its own deadline
    fn = graders[key]
    _clear_workdir()
    stop = request.get('stop')
    for index, args in request['tasks']:
      t0 = time.perf_counter()
      err, meta, score = None, None, 0.0
      try:
        if stop:  # the stop's handler again: a grader may have set its own (an alarm-based timeout helper)
          signal.signal(signal.SIGALRM, _on_alarm)
        score, meta = _limited(stop[0], fn, *args) if stop else fn(*args)
        score = _as_score(score)
      except _Error as e:
        err, score = [e.category, str(e)], getattr(e, 'score', 0.0)
      except _TestTimeout:  # `stop`'s alarm (a code grader catches its tests' own)
        why = stop[1] if stop else 'the time limit passed'
        err = ['python_grader_timeout', _user_traceback(f'{why}; stopped at the line above')]
      except MemoryError:
        limit = f' of {request["memory"]}' if request.get('memory') else ''
        err = ['python_grader_runtime', f'MemoryError: the grader exceeded its memory limit{limit}']
      except BaseException:  # noqa: BLE001  (user code; SystemExit and KeyboardInterrupt included)
        err = ['python_grader_runtime', _user_traceback()]
      meta = dict(meta or {})
      meta['latency_s'] = time.perf_counter() - t0
      if out.size:
        meta['stdout'] = out.take()
      try:
        _send(wfd, {'i': index, 's': score, 'e': err, 'm': meta})
      except (TypeError, ValueError):
        _send(wfd, {'i': index, 's': 0.0, 'e': ['other', 'result metadata is not JSON'], 'm': {}})
      sys.stdout = sys.stderr = out  # a grader may have replaced them


if __name__ == '__main__':
  main(sys.argv)
