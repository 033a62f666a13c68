"""Sandboxed graders (python, math, code) through the GradingPool: hostile code, deadlines, the math table."""

import concurrent.futures
import contextlib
import glob
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from configs import tiny
from rftjax import graders
from rftjax.graders import mathgrade

REPO = pathlib.Path(__file__).resolve().parent.parent

TIMEOUT_S = 1.5


@pytest.fixture(scope='module')
def pool():
  with graders.GradingPool(num_workers=2, timeout_s=TIMEOUT_S) as p:
    yield p


def py(source, **extra):
  return graders.build({'type': 'python', 'source': source, **extra})


# python ----------------------------------------------------------------------------------------------------------
def test_python_grader(pool):
  g = py(
    'import json\n\ndef grade(sample, item):\n'
    "  if sample['output_json'] is not None:\n    return float(sample['output_json']['x'] == item['x'])\n"
    "  return len(sample['output_text']) / item['n']\n"
  )
  res = pool.grade(g, ['{"x": 3}', '{"x": 4}', 'abcd'], [{'x': 3}, {'x': 3}, {'n': 8}])
  assert [r.reward for r in res] == [1.0, 0.0, 0.5] and all(not r.errors for r in res)
  assert 'latency_s' in res[0].metadata


def test_python_grader_sees_tool_calls_and_choices(pool):
  g = py(
    'import json\n\ndef grade(sample, item):\n'
    "  calls = sample['output_tools']\n"
    "  assert sample['choices'][0]['message']['content'] == sample['output_text']\n"
    "  return float(bool(calls) and calls[0]['function']['name'] == item['fn']\n"
    "               and json.loads(calls[0]['function']['arguments']) == item['args'])\n"
  )
  call = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
  res = pool.grade(g, [call, 'the answer is 3'], [{'fn': 'add', 'args': {'a': 1, 'b': 2}}] * 2)
  assert [r.reward for r in res] == [1.0, 0.0] and all(not r.errors for r in res), res


HOSTILE = {
  'infinite_loop': ('def grade(s, i):\n  while True:\n    pass\n', 'python_grader_timeout'),
  'sleep': ('import time\ndef grade(s, i):\n  time.sleep(60)\n', 'python_grader_timeout'),
  'fork_bomb': ('import os\ndef grade(s, i):\n  while True:\n    os.fork()\n', 'python_grader_runtime'),
  'subprocess': (
    "import subprocess\ndef grade(s, i):\n  subprocess.run(['sleep', '60'])\n  return 1.0\n",
    'python_grader_runtime',
  ),
  'multiprocessing': (
    'import multiprocessing, time\ndef grade(s, i):\n'
    '  ps = [multiprocessing.Process(target=time.sleep, args=(60,)) for _ in range(50)]\n'
    '  [p.start() for p in ps]\n  return 1.0\n',
    'python_grader_runtime',
  ),
  'posixsubprocess': (
    'import _posixsubprocess\ndef grade(s, i):\n  _posixsubprocess.fork_exec()\n  return 1.0\n',
    'python_grader_runtime',
  ),
  'reimport_posixsubprocess': (
    "import sys\ndef grade(s, i):\n  del sys.modules['_posixsubprocess']\n  import _posixsubprocess\n  return 1.0\n",
    'python_grader_runtime',
  ),
  'ctypes_fork': (
    'import ctypes\ndef grade(s, i):\n  ctypes.CDLL(None).fork()\n  return 1.0\n',
    'python_grader_runtime',
  ),
  'alloc_10gb': ('def grade(s, i):\n  x = bytearray(10 * 1024 ** 3)\n  return 1.0\n', 'python_grader_runtime'),
  'alloc_list': ('def grade(s, i):\n  x = [1] * (10 * 1024 ** 3 // 8)\n  return 1.0\n', 'python_grader_runtime'),
  'socket': (
    "import socket\ndef grade(s, i):\n  s = socket.socket()\n  s.connect(('127.0.0.1', 22))\n  return 1.0\n",
    'python_grader_runtime',
  ),
  'dns': (
    "import socket\ndef grade(s, i):\n  socket.getaddrinfo('example.com', 80)\n  return 1.0\n",
    'python_grader_runtime',
  ),
  'urllib': (
    "import urllib.request\ndef grade(s, i):\n  urllib.request.urlopen('http://127.0.0.1:9')\n  return 1.0\n",
    'python_grader_runtime',
  ),
  'write_outside': ("def grade(s, i):\n  open('{outside}', 'w').write('x')\n  return 1.0\n", 'python_grader_runtime'),
  'os_open_outside': (
    "import os\ndef grade(s, i):\n  os.open('{outside}', os.O_WRONLY | os.O_CREAT)\n  return 1.0\n",
    'python_grader_runtime',
  ),
  'remove_outside': ("import os\ndef grade(s, i):\n  os.remove('{victim}')\n  return 1.0\n", 'python_grader_runtime'),
  'rename_out': (
    "import os\ndef grade(s, i):\n  open('a', 'w').close()\n  os.rename('a', '{outside}')\n  return 1.0\n",
    'python_grader_runtime',
  ),
  'kill_parent': (
    'import os, signal\ndef grade(s, i):\n  os.kill(os.getppid(), signal.SIGKILL)\n  return 1.0\n',
    'python_grader_runtime',
  ),
  'raise': ("def grade(s, i):\n  raise ValueError('boom')\n", 'python_grader_runtime'),
  'nan': ("def grade(s, i):\n  return float('nan')\n", 'python_grader_runtime'),
  'inf': ("def grade(s, i):\n  return float('inf')\n", 'python_grader_runtime'),
  'string': ("def grade(s, i):\n  return '1.0'\n", 'python_grader_runtime'),
  'none': ('def grade(s, i):\n  return None\n', 'python_grader_runtime'),
  'os_exit': ('import os\ndef grade(s, i):\n  os._exit(3)\n', 'python_grader_runtime'),
  'sys_exit': ('import sys\ndef grade(s, i):\n  sys.exit(0)\n', 'python_grader_runtime'),
  'segfault': ('import faulthandler\ndef grade(s, i):\n  faulthandler._sigsegv()\n', 'python_grader_runtime'),
  'huge_file': (
    "def grade(s, i):\n  with open('big', 'wb') as f:\n    for _ in range(40):\n"
    "      f.write(b'x' * 2 ** 20)\n  return 1.0\n",
    'python_grader_runtime',
  ),
  'setrlimit': (
    'import resource\ndef grade(s, i):\n  resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n  return 1.0\n',
    'python_grader_runtime',
  ),
  # (a top-level import of a missing module is refused when the grader is built: tests/test_graders.py)
  'import_error': ('def grade(s, i):\n  import not_a_module_xyz\n  return 1.0\n', 'python_grader_runtime'),
}


@pytest.fixture(scope='module')
def small_pool():
  with graders.GradingPool(num_workers=2, timeout_s=TIMEOUT_S, disk_mb=16) as p:
    yield p


@pytest.mark.parametrize('name', sorted(HOSTILE))
def test_hostile_python_grader(small_pool, tmp_path, name):
  outside, victim = tmp_path / 'escaped.txt', tmp_path / 'victim.txt'
  victim.write_text('keep me')
  source, category = HOSTILE[name]
  g = py(source.format(outside=outside, victim=victim))
  t0 = time.monotonic()
  (bad,) = small_pool.grade(g, ['x'], [{}])
  assert bad.reward == 0.0 and [e.category for e in bad.errors] == [category], bad
  assert time.monotonic() - t0 < TIMEOUT_S + 10
  assert not outside.exists() and victim.read_text() == 'keep me'
  ok = small_pool.grade(py('def grade(s, i):\n  return 0.75\n'), ['x', 'y'], [{}, {}])  # the run goes on
  assert [r.reward for r in ok] == [0.75, 0.75]


def test_hang_while_loading_the_grader():
  with graders.GradingPool(num_workers=1, timeout_s=0.5, load_grace_s=0.5) as p:
    res = p.grade(py('while True:\n  pass\n\ndef grade(s, i):\n  return 1.0\n'), ['a', 'b'], [{}, {}])
    assert [r.errors[0].category for r in res] == ['python_grader_timeout'] * 2
    assert p.grade(py('def grade(s, i):\n  return 1.0\n'), ['c'], [{}])[0].reward == 1.0


def test_print_megabytes_is_cheap(pool):
  g = py("def grade(s, i):\n  for _ in range(20):\n    print('x' * 10 ** 6)\n  return 1.0\n")
  (r,) = pool.grade(g, ['x'], [{}])
  assert r.reward == 1.0 and len(r.metadata['stdout']) <= 2100  # 2000 characters kept, and a note
  assert r.metadata['stdout'].endswith('[... 19998020 more characters of output dropped]')


def test_writes_inside_temp_dir_are_allowed_and_cleared(pool):
  g = py(
    "import os\ndef grade(s, i):\n  n = len(os.listdir('.'))\n  open('f.txt', 'w').write('x')\n  return float(n)\n"
  )
  assert [r.reward for r in pool.grade(g, ['a'], [{}])] == [0.0]
  assert [r.reward for r in pool.grade(g, ['b'], [{}])] == [0.0]  # each chunk starts in an empty dir


def test_a_hang_only_costs_its_own_sample(pool):
  g = py(
    "def grade(sample, item):\n  if sample['output_text'] == 'hang':\n    while True:\n      pass\n"
    "  return float(sample['output_text'])\n",
    timeout_s=1.0,
  )
  texts = ['0.1', 'hang', '0.3', '0.4', 'hang', '0.6', '0.7', '0.8']
  res = pool.grade(g, texts, [{}] * len(texts))
  assert [r.reward for r in res] == [0.1, 0.0, 0.3, 0.4, 0.0, 0.6, 0.7, 0.8]
  assert [r.errors[0].category for r in res if r.errors] == ['python_grader_timeout'] * 2
  # the worker stops the grader and says where it was, and which deadline it was: the grader's own here, else the
  # pool's setting
  where, summary = res[1].errors[0].message.rsplit('\n', 1)
  assert re.fullmatch(r'Traceback \(most recent call last\):\n  File "<grader grader>", line [34], in grade\n.*', where)
  assert summary == "grading took longer than 1 s (wall clock, the grader's timeout_s); stopped at the line above"
  g = py(g.spec['source'])
  (late,) = pool.grade(g, ['hang'], [{}])
  assert late.errors[0].message.endswith(
    f'grading took longer than {TIMEOUT_S:g} s (wall clock, grading.timeout_s); stopped at the line above'
  )


def test_a_hang_says_where_and_keeps_what_was_printed(pool):
  g = graders.build({'type': 'multi', 'graders': {'slow': {'type': 'python', 'source': (
    "import time\ndef grade(sample, item):\n  print('checking', sample['output_text'])\n"
    "  if sample['output_text'] == 'hang':\n    time.sleep(60)\n  return 1.0\n"
  ), 'timeout_s': 0.5}}, 'calculate_output': 'slow'})  # fmt: skip
  t0 = time.monotonic()
  hung, ok = pool.grade(g, ['hang', 'fine'], [{}, {}])
  assert time.monotonic() - t0 < 5 and ok.reward == 1.0
  assert hung.errors[0].category == 'python_grader_timeout' and 'checking hang' in hung.metadata['slow']['stdout']
  assert graders.what_failed([hung, ok]) == (
    "python_grader_timeout in 1, e.g. grading took longer than 0.5 s (wall clock, the grader's timeout_s); stopped "
    'at the line above (grader slow, line 5)'
  )


def test_a_hang_that_cannot_be_stopped_is_killed(pool):
  # a grader that swallows every exception, the stop included, is killed at the deadline plus pool.STOP_GRACE_S
  g = py('import time\ndef grade(s, i):\n  while True:\n    try:\n      time.sleep(0.1)\n    except BaseException:\n'
         '      pass\n', timeout_s=0.5)  # fmt: skip
  t0 = time.monotonic()
  (r,) = pool.grade(g, ['x'], [{}])
  assert 1.4 < time.monotonic() - t0 < 6
  assert r.errors[0].message == (
    "grading took longer than 0.5 s (wall clock, the grader's timeout_s); worker killed (it could not be stopped to "
    'show where: a long call into compiled code, a bare `except:`, or a SIGALRM handler or alarm of its own)'
  )


def test_a_graders_own_alarm_handler_does_not_outlive_its_sample():
  """An alarm-based timeout helper in one grader left its SIGALRM handler in the worker: the next grader's hang
  could not be stopped there, and was killed without a word of where it was."""
  g = graders.build({'type': 'multi', 'calculate_output': 'own + slow', 'graders': {
    'own': {'type': 'python', 'source': 'import signal\ndef grade(s, i):\n  signal.signal(signal.SIGALRM, '
            'lambda *a: None)\n  return 0.5\n'},
    'slow': {'type': 'python', 'source': 'import time\ndef grade(s, i):\n  time.sleep(60)\n', 'timeout_s': 0.5},
  }})  # fmt: skip
  with graders.GradingPool(num_workers=1, timeout_s=5) as p:
    (r,) = p.grade(g, ['x'], [{}])
  assert r.sub_rewards == {'own': 0.5, 'slow': 0.0}
  assert r.errors[0].message.endswith(
    "grading took longer than 0.5 s (wall clock, the grader's timeout_s); stopped at the line above"
  ), r.errors[0].message


def test_submit_is_non_blocking_and_works_off_the_main_thread(pool):
  slow = py('import time\ndef grade(s, i):\n  time.sleep(0.3)\n  return 1.0\n')
  t0 = time.monotonic()
  fut = pool.submit(slow, ['a', 'b'], [{}, {}])
  assert time.monotonic() - t0 < 0.2 and isinstance(fut, concurrent.futures.Future)
  fast = pool.submit(py('def grade(s, i):\n  return 0.5\n'), ['c'], [{}])
  assert [r.reward for r in fut.result(timeout=30)] == [1.0, 1.0]
  assert [r.reward for r in fast.result(timeout=30)] == [0.5]
  out = {}
  thread = threading.Thread(
    target=lambda: out.update(r=pool.grade(py('def grade(s, i):\n  while True: pass\n', timeout_s=0.5), ['x'], [{}]))
  )
  thread.start()
  thread.join(30)
  assert out['r'][0].errors[0].category == 'python_grader_timeout'


def test_multi_mixes_in_process_and_sandboxed(pool):
  g = graders.build(
    {
      'type': 'multi',
      'calculate_output': 'max(exact, 0.5 * length)',
      'graders': {
        'exact': {
          'type': 'string_check',
          'input': '{{sample.output_text}}',
          'reference': '{{item.a}}',
          'operation': 'eq',
        },
        'length': {'type': 'python', 'source': "def grade(s, i):\n  return min(1.0, len(s['output_text']) / 10)\n"},
      },
    }
  )
  res = pool.grade(g, ['yes', 'no and more'], [{'a': 'yes'}, {'a': 'yes'}])
  assert [r.reward for r in res] == [1.0, 0.5] and res[1].sub_rewards == {'exact': 0.0, 'length': 1.0}
  s = graders.summarize(res, 'eval')
  assert s['eval/grader/length'] == pytest.approx(0.65) and 'eval/grading_latency_s_mean' in s


def test_close_leaves_nothing_behind():
  before = set(glob.glob(os.path.join(tempfile.gettempdir(), 'rftjax-grader-*')))
  p = graders.GradingPool(num_workers=2, timeout_s=1.0)
  p.grade(py("def grade(s, i):\n  open('x', 'w').write('y')\n  return 1.0\n"), ['a', 'b', 'c'], [{}] * 3)
  p.grade(py('import os\ndef grade(s, i):\n  os.fork()\n'), ['a'], [{}])
  pids = [w.proc.pid for w in p._workers]
  cgroups = [w.cgroup for w in p._workers if w.cgroup]
  p.close()
  assert set(glob.glob(os.path.join(tempfile.gettempdir(), 'rftjax-grader-*'))) <= before
  for pid in pids:
    assert not pathlib.Path(f'/proc/{pid}').exists() or 'Z' in pathlib.Path(f'/proc/{pid}/stat').read_text().split()[2]
  assert not any(c.exists() for c in cgroups)


def test_leaving_on_ctrl_c_stops_the_grading_at_once():
  """A KeyboardInterrupt inside `with GradingPool()`: the close waited for the running job (up to 30 s, silent)
  before `interrupted`; now it cancels the queued job and stops the running one."""
  slow = py('import time\ndef grade(s, i):\n  time.sleep(20)\n  return 1.0\n', timeout_s=60)
  with pytest.raises(KeyboardInterrupt):
    with graders.GradingPool(num_workers=1, timeout_s=60) as p:
      running, queued = p.submit(slow, ['a'], [{}]), p.submit(slow, ['b'], [{}])
      time.sleep(1.0)  # the worker is on it
      pids = [w.proc.pid for w in p._workers]
      t0 = time.monotonic()
      raise KeyboardInterrupt
  assert time.monotonic() - t0 < 10 and pids
  assert queued.cancelled() and isinstance(running.exception(timeout=1), concurrent.futures.CancelledError)
  for pid in pids:  # the worker is gone (or a zombie until its parent reaps it)
    assert not pathlib.Path(f'/proc/{pid}').exists() or 'Z' in pathlib.Path(f'/proc/{pid}/stat').read_text().split()[2]


def test_worker_is_confined_by_the_kernel(pool):
  """Where the pids cgroup is writable, the worker sits in one capped at a few tasks (a fork bomb that got
  past the audit hook would stop there)."""
  pool.grade(py('def grade(s, i):\n  return 1.0\n'), ['a'], [{}])
  w = pool._workers[0]
  if w.cgroup is None:
    pytest.skip('no writable pids cgroup here; RLIMIT_NPROC and the audit hook confine the worker instead')
  assert str(w.proc.pid) in (w.cgroup / 'cgroup.procs').read_text().split()
  assert int((w.cgroup / 'pids.max').read_text()) <= 8


def test_root_without_a_pids_cgroup_is_warned_about(tmp_path, monkeypatch, caplog):
  """As root, RLIMIT_NPROC does not bind: without a writable cgroup v1 pids hierarchy (hosts with cgroup v2 only),
  code that gets past the audit hook forked 20 children. The pool says so, once, for graders that run code."""
  from rftjax.graders import pool as pool_lib

  if os.geteuid() != 0 or not pool_lib.isolation_lib.probe().available:
    pytest.skip('needs root and bubblewrap')
  monkeypatch.setattr(pool_lib.workers, 'CGROUP_ROOT', tmp_path / 'no-pids')
  grader = py('def grade(s, i):\n  return 1.0\n')
  with graders.GradingPool(num_workers=1, timeout_s=5) as p, caplog.at_level('WARNING', logger='rftjax'):
    p.grade(grader, ['a'], [{}])
    p.grade(grader, ['a'], [{}])
    p.grade(graders.build({'type': 'math', 'input': '{{sample.output_text}}', 'reference': '1'}), ['1'], [{}])
  warned = [r.getMessage() for r in caplog.records if 'RLIMIT_NPROC does not bind' in r.getMessage()]
  assert len(warned) == 1 and "grader 'grader' runs code as root" in warned[0], warned
  assert f'{tmp_path / "no-pids"} (a cgroup v1 pids hierarchy) is not writable' in warned[0]


def test_dev_shm_is_not_a_second_writable_place(pool):
  """bubblewrap's /dev is a tmpfs: a grader wrote 45 MB into /dev/shm past disk_mb=16 (host memory, kept for later
  graders on the worker) by opening it read-only and writing relative to it, which the audit hook allows."""
  if not pool.isolation.available:
    pytest.skip('no bubblewrap here')
  src = (
    "import os\ndef grade(s, i):\n  d = os.open('/dev/shm', os.O_RDONLY)\n"
    "  os.open('f', os.O_WRONLY | os.O_CREAT, dir_fd=d)\n  return 1.0\n"
  )
  (res,) = pool.grade(py(src), ['a'], [{}])
  assert res.reward == 0.0 and 'Read-only file system' in res.errors[0].message, res


# math ------------------------------------------------------------------------------------------------------------
def math_pairs():
  rows = []
  for line in (pathlib.Path(__file__).parent / 'data' / 'math_pairs.tsv').read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      expected, answer, reference = line.split('\t')
      rows.append((int(expected), answer, reference))
  return rows


def test_math_table_has_enough_pairs():
  rows = math_pairs()
  assert len(rows) >= 200
  assert sum(e for e, _, _ in rows) > 60 and sum(1 - e for e, _, _ in rows) > 60


def test_math_table_in_process():
  wrong = [(e, a, r) for e, a, r in math_pairs() if mathgrade.grade(a, r)[0] != e]
  assert not wrong, wrong


def test_math_grader_through_pool(pool):
  rows = math_pairs()[::5]
  g = graders.build(
    {'type': 'math', 'input': '{{sample.output_text}}', 'reference': '{{item.answer}}', 'timeout_s': 20}
  )
  res = pool.grade(g, [a for _, a, _ in rows], [{'answer': r} for _, _, r in rows])
  assert [r.reward for r in res] == [float(e) for e, _, _ in rows]
  assert all(not r.errors for r in res)


def test_math_exact_number_wants_a_number_written_out(pool):
  """An arithmetic task's policy can echo its question: '21 + 81' equals 102 to sympy. With exact_number a number
  reference wants a number (integer, decimal, fraction); other references compare as before."""
  texts = [
    '21 + 81',
    'The answer is 13 + 14.',
    '21 + 81 = 102',
    '\\boxed{102}',
    '1/2',
    '\\frac{3}{4}',
    '2 \\times 3',
    'x + 1',
  ]
  refs = ['102', '27', '102', '102', '0.5', '0.75', '6', '1 + x']
  want_exact, want_default = [0, 0, 1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1, 1, 1]
  assert [mathgrade.grade(t, r, exact_number=True)[0] for t, r in zip(texts, refs)] == want_exact
  assert [mathgrade.grade(t, r)[0] for t, r in zip(texts, refs)] == want_default
  spec = {'type': 'math', 'input': '{{sample.output_text}}', 'reference': '{{item.r}}'}
  exact, default = graders.build({**spec, 'exact_number': True}), graders.build(spec)
  items = [{'r': r} for r in refs]
  assert [r.reward for r in pool.grade(exact, texts, items)] == want_exact  # one worker holds both, apart
  assert [r.reward for r in pool.grade(default, texts, items)] == want_default
  with pytest.raises(graders.GraderConfigError, match='grader.exact_number: expected bool, found str'):
    graders.build({**spec, 'exact_number': 'yes'})


def test_math_extraction():
  assert mathgrade.extract_answer('... so \\boxed{\\frac{1}{2}} and done') == '\\frac{1}{2}'
  assert mathgrade.extract_answer('Thus the answer is 17. Next question') == '17'
  assert mathgrade.extract_answer('We have 3 cats and 4 dogs, 7 pets in all.') == '7'
  assert mathgrade.extract_answer('Nothing numeric here at all') is None


def test_math_hostile_answer_hits_the_deadline_not_the_run(pool):
  g = graders.build({'type': 'math', 'reference': '1', 'timeout_s': 1.0})
  res = pool.grade(g, ['\\boxed{9^{9^{9^{9}}}}', '\\boxed{1}'], [{}, {}])
  assert res[0].reward == 0.0 and res[1].reward == 1.0


# code ------------------------------------------------------------------------------------------------------------
def test_code_grader(pool):
  g = graders.build(
    {
      'type': 'code',
      'input': '{{sample.output_text}}',
      'timeout_s': 1.0,
      'tests': ['assert add(1, 2) == 3', 'assert add(-1, 1) == 0', 'assert add(2, 2) == 5'],
    }
  )
  good = 'Here:\n```python\ndef add(a, b):\n    return a + b\n```\n'
  older = '```python\ndef add(a, b):\n    return 0\n```\nthen\n' + good
  res = pool.grade(
    g,
    [
      good,
      older,
      'def add(a, b): return a + b',
      '```python\nraise SystemExit\n```',
      '```python\nwhile True:\n    pass\n```',
    ],
    [{}] * 5,
  )
  assert [r.reward for r in res] == [pytest.approx(2 / 3), pytest.approx(2 / 3), 0.0, 0.0, 0.0]
  assert res[0].metadata['passed'] == 2 and 'assert add(2, 2) == 5' in res[0].metadata['failures'][0]
  assert not res[2].errors and res[2].metadata['exception'] == 'no fenced python code block (```...```)'
  assert not res[3].errors and 'SystemExit' in res[3].metadata['exception']
  assert not res[4].errors and res[4].metadata['exception'] == 'ran past the sample deadline of 1 s'  # the model's
  from_item = graders.build({'type': 'code', 'tests': '{{item.tests}}'})
  res = pool.grade(
    from_item,
    [good, good],
    [{'tests': ['assert add(1, 1) == 2']}, {'tests': 'assert add(1, 1) == 2\nassert add(0, 0) == 1'}],
  )
  assert [r.reward for r in res] == [1.0, 0.0]


def test_a_code_sample_cannot_change_how_other_samples_are_graded(pool):
  """A completion that patches builtins.exec (so no test runs) or ignores SIGALRM (so no test times out) scored 1.0,
  and so did every later wrong completion on its worker: each code sample now gets a fresh worker, and builtins and
  the alarm are restored before each test. No python block is the model's 0, not a grader error; a later bash
  block or a `__main__` block reading stdin does not spoil a right answer."""
  g = graders.build(
    {'type': 'code', 'test_timeout_s': 0.5, 'tests': ['assert add(1, 2) == 3', 'assert add(0, 0) == 0']}
  )
  fence = '```python\n{}\n```'.format
  exec_hack = fence('import builtins\nbuiltins.exec = lambda *a, **k: None')
  alarm_hack = fence(
    'import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ndef add(a, b):\n    while True:\n        pass'
  )
  wrong = fence('def add(a, b):\n    return 0')
  right = fence('def add(a, b):\n    return a + b')
  rows = [exec_hack, wrong, alarm_hack, wrong, 'no code at all', wrong]
  rows += [
    right + '\nRun it:\n```bash\npython add.py\n```',
    fence('def add(a, b):\n    return a + b\nif __name__ == "__main__":\n    print(add(int(input()), 1))'),
  ]
  rows += ['1. Write it:\n   ```python\n   def add(a, b):\n       return a + b\n   ```']  # a fence in a list item
  res = pool.grade(g, rows, [{}] * len(rows))
  assert [r.reward for r in res] == [0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 1.0, 1.0, 1.0]
  assert not any(r.errors for r in res)
  assert res[2].metadata['failures'][0] == 'assert add(1, 2) == 3: timed out after 0.5 s'


_FORGE = """
import sys, os, json, struct
f = sys._getframe()
while 'index' not in f.f_locals:
  f = f.f_back
reply = (b'{{"i": %d, "s": {score}, "e": null, "m": {meta}}}') % f.f_locals['index']
os.write(int(sys.argv[2]), struct.pack('>I', len(reply)) + reply)
os._exit(0)
"""


def test_a_code_sample_that_attacks_its_worker_scores_0_and_spoils_nothing():
  """The completion's code runs in the worker: it could send the pool its own reply (NaN made the group's advantages
  NaN, 1e9 topped it, `discard` left it out of the loss, a list as metadata or JSON nested 100,000 deep crashed the
  whole batch), crash the worker (counted as grader errors, which stop a run), or replace the test harness's
  `_limited` or the namespace's `__builtins__` to pass every test. Each is now the model's 0, no grader error."""
  g = graders.build(
    {'type': 'code', 'test_timeout_s': 2, 'tests': ['assert add(1, 2) == 3', 'assert sorted([3, 1]) == [1, 3]']}
  )
  fence = '```python\n{}\n```'.format
  wrong = 'def add(a, b):\n    return 0\n'
  forged = [('NaN', '{}'), ('1e9', '{}'), ('-1e9', '{}'), ('0.0', '{"discard": true}'), ('1.0', '[1, 2]')]
  attacks = [fence(_FORGE.format(score=score, meta=meta)) for score, meta in forged]
  attacks += [
    fence(_FORGE.format(score='0.0', meta="' + b'[' * 100_000 + b']' * 100_000 + b'")),  # nested too deep
    fence('import os\nos._exit(0)'),
    fence(
      'import functools, sys\nsys.setrecursionlimit(10**7)\n@functools.cache\ndef f(n):\n    return f(n + 1)\nf(0)'
    ),
    fence('import __main__\n__main__._limited = lambda *a: None\n' + wrong),
    fence('import builtins\n__builtins__ = dict(vars(builtins), AssertionError=None)\n' + wrong),
    fence('import builtins\n__builtins__ = dict(vars(builtins), sorted=lambda x: [1, 3])\n' + wrong),
  ]
  right = fence('def add(a, b):\n    return a + b')
  with graders.GradingPool(num_workers=1, timeout_s=10) as p:
    res = p.grade(g, [*attacks, right], [{}] * (len(attacks) + 1))
  assert [r.reward for r in res] == [0.0] * 8 + [0.5, 0.5, 0.5, 1.0], [(r.reward, r.metadata) for r in res]
  assert not any(r.errors for r in res) and not any('discard' in r.metadata for r in res)
  assert 'outside [0, 1]' in res[0].metadata['exception'] and 'metadata is list' in res[4].metadata['exception']
  assert 'unreadable reply' in res[5].metadata['exception']
  assert 'exited with code 0 before it answered' in res[6].metadata['exception']
  assert res[7].metadata['exception'] == 'worker process killed by signal SIGSEGV'


def test_a_code_samples_deadline_leaves_room_for_every_test_to_time_out():
  """Without a timeout_s of its own, a sample gets (tests + 1) x test_timeout_s + 1 s: three looping tests of five
  keep the two that pass (it was the pool's 10 s, and the sample a python_grader_timeout)."""
  tests = [f'assert f({k}) == {k}' for k in (1, 2, 0, 0, 0)]
  g = graders.build({'type': 'code', 'test_timeout_s': 0.5, 'tests': tests})
  loops = '```python\ndef f(x):\n    while x == 0:\n        pass\n    return x\n```'
  swallows = (
    '```python\ndef f(x):\n  while True:\n    try:\n      while True:\n        pass\n    except:\n      pass\n```'
  )
  with graders.GradingPool(num_workers=1, timeout_s=1.2) as p:
    res, bare_except = p.grade(g, [loops, swallows], [{}, {}])
  assert res.reward == pytest.approx(0.4) and not res.errors
  # a bare `except:` swallows the per-test alarm: the sample's deadline ends it, a 0 and no grader error
  assert bare_except.reward == 0.0 and not bare_except.errors
  assert bare_except.metadata['exception'] == 'ran past the sample deadline of 4 s'


def test_code_grader_per_test_time_limit(pool):
  """An endless loop in the completion or in one test costs test_timeout_s, not the grader's whole deadline."""
  g = graders.build(
    {'type': 'code', 'timeout_s': 60, 'test_timeout_s': 0.5, 'tests': ['assert f(1) == 1', 'assert f(0) == 0']}
  )
  loops = '```python\ndef f(x):\n    while x == 0:\n        pass\n    return x\n```'
  hangs_at_import = '```python\nwhile True:\n    pass\n```'
  t0 = time.monotonic()
  one_test, at_import = pool.grade(g, [loops, hangs_at_import], [{}, {}])
  assert time.monotonic() - t0 < 10
  assert one_test.reward == 0.5 and not one_test.errors
  assert one_test.metadata['failures'] == ['assert f(0) == 0: timed out after 0.5 s']
  assert at_import.reward == 0.0 and at_import.metadata['exception'] == 'timed out after 0.5 s'
  with pytest.raises(graders.GraderConfigError, match='test_timeout_s'):
    graders.build({'type': 'code', 'tests': ['pass'], 'test_timeout_s': 0})


def test_a_time_limit_that_goes_off_in_a_finalizer_still_times_the_test_out(pool):
  """Python drops an exception raised in `__del__`: the alarm's, there, was lost, and a test that ran past its
  limit in a finalizer passed (a model's code could loop in one). It fails as timed out, and a loop after the lost
  alarm is stopped too."""
  g = graders.build({'type': 'code', 'timeout_s': 60, 'test_timeout_s': 0.5, 'tests': [
    'assert f(1) == 1', 'assert f(2) == 2', 'assert f(3) == 3']})  # fmt: skip
  code = (
    '```python\nimport time\nclass Slow:\n    def __del__(self):\n        t = time.monotonic()\n'
    '        while time.monotonic() - t < 2:\n            pass\n'
    'def f(x):\n    if x == 2:\n        Slow()\n    if x == 3:\n        Slow()\n        while True:\n            pass\n'
    '    return x\n```'
  )
  t0 = time.monotonic()
  (result,) = pool.grade(g, [code], [{}])
  assert time.monotonic() - t0 < 10
  assert result.reward == pytest.approx(1 / 3) and not result.errors
  assert result.metadata['failures'] == [
    'assert f(2) == 2: timed out after 0.5 s',
    'assert f(3) == 3: timed out after 0.5 s',
  ]


def test_step_budget_scores_what_is_left_zero_with_a_named_error():
  slow = py('import time\ndef grade(s, i):\n  time.sleep(0.4)\n  return 1.0\n')
  with graders.GradingPool(num_workers=1, timeout_s=5, budget_s=1.5) as p:
    t0 = time.monotonic()
    res = p.grade(slow, [str(k) for k in range(12)], [{}] * 12)
    took = time.monotonic() - t0
    assert took < 4, took  # the budget, plus killing the worker; 12 x 0.4 s would be 4.8 s
    graded = [r for r in res if not r.errors]
    assert 1 <= len(graded) < 12 and all(r.reward == 1.0 for r in graded)
    late = [r for r in res if r.errors]
    assert {e.category for r in late for e in r.errors} == {'python_grader_timeout'}
    assert "the step's grading budget of 1.5 s ran out" in late[0].errors[0].message
    # not graded says nothing of the policy: left out of the loss, as an outage is, not trained on as a 0
    assert all(r.metadata['discard'] for r in late) and not any('discard' in r.metadata for r in graded)
    assert p.grade(slow, ['again'], [{}])[0].reward == 1.0  # the next call gets a budget of its own


def test_a_killed_run_leaves_nothing_behind_once_the_next_pool_starts(tmp_path):
  """kill -9 of rftjax.grade mid-grading: its worker dies with it (bubblewrap's --die-with-parent, or
  PR_SET_PDEATHSIG), and what nothing could clean at the kill (the worker's cgroup; an unsandboxed worker's temp
  dir, stood for here by one named like it) goes when the next pool starts."""
  grader = tmp_path / 'g.json'
  grader.write_text(json.dumps({'type': 'python', 'source': 'import time\ndef grade(s, i):\n  time.sleep(60)\n'}))
  before = set(_workers())
  proc = subprocess.Popen(
    [sys.executable, '-m', 'rftjax.grade', f'--grader={grader}', '--sample=x', '--allow_unsandboxed'],
    cwd=pathlib.Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
  )  # fmt: skip
  deadline = time.monotonic() + 30
  while not set(_workers()) - before and time.monotonic() < deadline:
    time.sleep(0.05)
  started = set(_workers()) - before
  assert started, 'the grading worker never started'
  time.sleep(0.5)  # inside its grader's sleep
  proc.kill()
  proc.wait()
  deadline = time.monotonic() + 10
  while started & set(_workers()) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not started & set(_workers()), 'a worker outlived the kill -9 of its run'
  (pathlib.Path(tempfile.gettempdir()) / f'rftjax-grader-{proc.pid}-99').mkdir()
  assert _owned(proc.pid)
  graders.GradingPool(num_workers=1).close()
  assert not _owned(proc.pid)


def _workers() -> list[int]:
  out = []
  for pid in os.listdir('/proc'):
    try:
      if pid.isdigit() and b'sandbox_worker.py' in pathlib.Path(f'/proc/{pid}/cmdline').read_bytes():
        out.append(int(pid))
    except OSError:
      pass
  return out


def _owned(owner: int) -> list[pathlib.Path]:
  """The cgroups and temp dirs named after the rftjax process `owner`."""
  names = [*pathlib.Path('/sys/fs/cgroup/pids').glob(f'rftjax-grader-{owner}-*')]
  return names + [*pathlib.Path(tempfile.gettempdir()).glob(f'rftjax-grader-{owner}-*')]


def test_a_process_limit_is_not_called_a_namespace_problem(monkeypatch):
  """Under 'ulimit -u 8' bwrap could not fork, and the user was told the machine cannot create namespaces (and to
  turn the sandbox off): the limit is what to raise."""
  from rftjax.graders import isolation

  failed = subprocess.CompletedProcess([], 1, '', "bwrap: Can't fork for pid 1: Resource temporarily unavailable\n")
  monkeypatch.setattr(isolation.shutil, 'which', lambda name: '/usr/bin/bwrap')
  monkeypatch.setattr(isolation.subprocess, 'run', lambda *a, **k: failed)
  isolation.probe.cache_clear()
  try:
    reason = isolation.probe().reason
  finally:
    isolation.probe.cache_clear()
  assert reason == (
    "bubblewrap (/usr/bin/bwrap) could not start a process (bwrap: Can't fork for pid 1: Resource temporarily "
    "unavailable): this user's limit on processes ('ulimit -u') is too low; raise it"
  )


def test_stale_leftovers_go_even_when_a_grader_made_them_read_only(tmp_path, monkeypatch):
  """A grader that made a folder read-only (chmod 500) left its worker's temp dir in /tmp for good, and clean_stale
  could not remove it either; another user's cgroup leftovers cost a second each at every start."""
  import time

  from rftjax.graders import workers

  monkeypatch.setattr(workers.tempfile, 'gettempdir', lambda: str(tmp_path))
  dead = tmp_path / 'rftjax-grader-999999999-1'  # no such process
  (dead / 'd').mkdir(parents=True)
  (dead / 'd' / 'f').write_text('x')
  (dead / 'd').chmod(0o500)  # binds only a non-root user: root removes it anyway
  cgroups = tmp_path / 'cgroups'
  (cgroups / 'rftjax-grader-999999999-0').mkdir(parents=True)
  (cgroups / 'cgroup.procs').write_text('')
  monkeypatch.setattr(workers, 'CGROUP_ROOT', cgroups)
  monkeypatch.setattr(workers.os, 'access', lambda path, mode: pathlib.Path(path) == cgroups)  # theirs, not ours
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir(mode=0o755)
  (tmp_path / 'rftjax-grader-999999999-2').symlink_to(elsewhere)  # anyone can put one in /tmp: never followed
  tmp_path.chmod(0o755)
  t0 = time.monotonic()
  assert workers.clean_stale() == 1
  assert not dead.exists() and (cgroups / 'rftjax-grader-999999999-0').exists() and time.monotonic() - t0 < 0.5
  assert elsewhere.stat().st_mode & 0o777 == 0o755 and tmp_path.stat().st_mode & 0o777 == 0o755  # nothing else changed


def test_a_graders_traceback_shows_its_own_lines_and_names_it():
  """A python grader's error was the worker's frames (`sandbox_worker.py ... fn(*args)`) and `<grader source>`
  without its code; with two python sub-graders, nothing said which one raised."""
  src = 'def helper(x):\n  return 1 / x\n\ndef grade(sample, item):\n  return helper(item["d"])\n'
  spec = {
    'type': 'multi',
    'calculate_output': 'num',
    'graders': {'num': {'type': 'python', 'name': 'same', 'source': src}},  # named by its key in the multi
  }
  other = {**spec, 'graders': {'num': {'type': 'python', 'source': 'def grade(s, i):\n  return 1 / 0\n'}}}
  with graders.GradingPool(num_workers=1, timeout_s=TIMEOUT_S) as pool:  # one worker holds both graders
    pool.grade(graders.build(spec), ['x'], [{'d': 0}])
    pool.grade(graders.build(other), ['x'], [{}])  # another multi's 'num': its code must not show in the first's
    (r,) = pool.grade(graders.build(spec), ['x'], [{'d': 0}])
  message = r.errors[0].message
  assert 'File "<grader num>", line 2, in helper\n    return 1 / x\n' in message and 'sandbox_worker' not in message
  assert graders.what_failed([r]) == (
    'python_grader_runtime in 1, e.g. ZeroDivisionError: division by zero (grader num, line 2)'
  )


def test_a_killed_processs_cgroup_under_a_reused_pid_does_not_cost_the_cap(monkeypatch):
  """kill -9 leaves `rftjax-grader-<pid>-N`; clean_stale spares it when the pid is alive again (this process, reused),
  and the worker then ran without its fork-bomb cap, without a word."""
  import itertools

  from rftjax.graders import workers

  if not workers.cgroups_writable():
    pytest.skip('no writable pids cgroup here')
  monkeypatch.setattr(workers, '_counter', itertools.count(900))
  stale = workers.CGROUP_ROOT / f'rftjax-grader-{os.getpid()}-900'
  stale.mkdir()
  try:
    made = workers.make_cgroup()
    assert made == stale and (made / 'pids.max').read_text().strip() == str(workers._MAX_TASKS_PER_WORKER)
  finally:
    workers.remove_cgroup(stale)


def test_the_memory_limit_is_a_setting_and_its_error_names_it(tmp_path):
  hog = py('def grade(s, i):\n  x = bytearray(600 << 20)\n  return 1.0\n')
  config = tiny.get_config()
  assert config.grading.memory_mb == graders.pool.DEFAULT_MEMORY_MB == 2048  # OpenAI's python grader's 2 GB
  config.grading.memory_mb = 300
  with graders.GradingPool.from_config(config.grading, num_workers=1) as p:
    assert (p.memory_mb, p.timeout_s, p.num_workers) == (300, config.grading.timeout_s, 1)  # the flag wins
    (r,) = p.grade(hog, ['x'], [{}])
  assert (r.reward, r.errors[0].message) == (
    0.0, 'MemoryError: the grader exceeded its memory limit of 300 MB (grading.memory_mb)'
  )  # fmt: skip
  with graders.GradingPool.from_config({'timeout_s': 5}) as p:  # an older run's config.json: defaults for the rest
    assert (p.memory_mb, p.timeout_s, p.budget_s) == (2048, 5.0, None)
    assert p.grade(hog, ['x'], [{}])[0].reward == 1.0
  g = tmp_path / 'hog.json'
  g.write_text(json.dumps(hog.spec))
  done = subprocess.run([sys.executable, '-m', 'rftjax.grade', f'--grader={g}', '--sample=x', '--memory_mb=300'],
                        capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
  assert done.returncode == 1 and json.loads(done.stdout)['errors'] == [
    {'category': 'python_grader_runtime', 'message': 'MemoryError: the grader exceeded its memory limit of 300 MB '
     '(--memory_mb)'}
  ]  # fmt: skip


def test_a_call_interrupted_while_it_waits_does_not_hold_up_the_next(tmp_path):
  """A notebook's Ctrl-C during pool.grade: the job went on grading in the pool's thread, and the next call on the
  same pool waited for all of it (20 samples of 1 s: 19 s for 2 quick ones)."""
  slow = py('import time\ndef grade(s, i):\n  time.sleep(1)\n  return 1.0\n')
  # Python's own Ctrl-C handler: a test run started in the background inherits SIGINT ignored
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  with contextlib.ExitStack() as stack, graders.GradingPool(num_workers=1, timeout_s=5) as p:
    stack.callback(signal.signal, signal.SIGINT, before)
    timer = threading.Timer(1.5, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
      p.grade(slow, ['x'] * 20, [{}] * 20)
    assert time.monotonic() - t0 < 3
    t0 = time.monotonic()
    quick = p.grade(py('def grade(s, i):\n  return 0.5\n'), ['a', 'b'], [{}, {}])
    assert [r.reward for r in quick] == [0.5, 0.5] and time.monotonic() - t0 < 4
    assert [r.reward for r in p.grade(slow, ['c'], [{}])] == [1.0]  # the pool still grades what it is given
