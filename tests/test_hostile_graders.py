"""Hostile python graders end to end, through `python -m rftjax.grade` and a short training run (docs/graders.md).

One grader holds every attack; each data line names the one it runs. The attacks that matter most go around the
worker's Python-level audit hook (a second copy of `_posixsubprocess` loaded under another name execs a fresh
interpreter with no hook; `os.open(..., dir_fd=)` names a file the hook takes as relative), so only the kernel's
sandbox stands between them and the machine. Each attack must end as a score of 0 (or the clamped score) with a
named error, the run must go on, and afterwards no grader process, temp dir, cgroup or file outside the sandbox
may remain. Where this machine cannot isolate, the tools must refuse to run the grader instead, and say why.
"""

import http.server
import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tempfile
import threading

import pytest

from rftjax.graders import isolation

REPO = pathlib.Path(__file__).resolve().parents[1]
SECRET = 'hunter2-do-not-leak'
ISOLATED = isolation.probe().available
TIMEOUT_S = 3

GRADER = r'''
import importlib.util, os, signal, sys, time

SECRET_FILE, OUTSIDE, PORT, SITE = {secret_file!r}, {outside!r}, {port}, {site!r}


def child(code):
  """Runs `code` in a fresh interpreter through a second copy of _posixsubprocess: no audit event, no hook."""
  spec = importlib.util.spec_from_file_location('x._posixsubprocess', sys.modules['_posixsubprocess'].__file__)
  fresh = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fresh)
  r, w = os.pipe()
  er, ew = os.pipe()
  argv = [sys.executable, '-c', code]
  keep = tuple(sorted((ew, w)))
  pid = fresh.fork_exec(argv, [os.fsencode(sys.executable)], True, keep, None, None, -1, -1, -1, w, -1, w,
                        er, ew, False, False, -1, None, None, None, -1, None, False)
  os.close(w)
  os.close(ew)
  out = b''
  while chunk := os.read(r, 65536):
    out += chunk
  _, status = os.waitpid(pid, 0)
  if status:
    raise RuntimeError(f'the child failed ({{status}}): {{out.decode()[-300:]}}')
  return out.decode()


ATTACKS = {{
  'read_secret': lambda: float(SECRET_FILE and open(SECRET_FILE).read() != ''),
  'read_secret_child': lambda: float(len(child(f'print(open({{SECRET_FILE!r}}).read())')) > 0),
  'read_shadow': lambda: float(len(open('/etc/shadow').read()) > 0),
  'write_plain': lambda: float(open(os.path.join(OUTSIDE, 'plain.txt'), 'w').write('x')),
  'write_dir_fd': lambda: float(os.open('dirfd.txt', os.O_WRONLY | os.O_CREAT, 0o644,
                                        dir_fd=os.open(OUTSIDE, os.O_RDONLY | os.O_DIRECTORY)) > 0),
  'write_dir_fd_python': lambda: float(os.open('rftjax_pwned.py', os.O_WRONLY | os.O_CREAT, 0o644,
                                               dir_fd=os.open(SITE, os.O_RDONLY | os.O_DIRECTORY)) > 0),
  'write_exec': lambda: float(child(
    f'open({{os.path.join(OUTSIDE, "exec.txt")!r}}, "w").write("x")\n'
    f'open({{os.path.join(SITE, "rftjax_pwned_exec.py")!r}}, "w").write("x")') == ''),
  'write_ctypes': lambda: float(__import__('ctypes').CDLL(None).creat(
    os.path.join(OUTSIDE, 'ctypes.txt').encode(), 0o644) >= 0),
  'socket': lambda: float(child(
    f'import socket\nsocket.create_connection(("127.0.0.1", {{PORT}}), timeout=1).sendall(b"pwned")') == ''),
  'dns': lambda: float(len(child('import socket\nprint(socket.getaddrinfo("example.com", 80))')) > 0),
  'fork_bomb': lambda: float(child('import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass')),
  'alloc_10gb': lambda: float(len(bytearray(10 << 30))),
  'sleep': lambda: time.sleep(3600),
  'os_exit': lambda: os._exit(3),
  'sys_exit': lambda: sys.exit(0),
  'raise': lambda: 1 / 0,
  'nan': lambda: float('nan'),
  'inf': lambda: float('inf'),
  'str': lambda: '1.0',
  'none': lambda: None,
  'above_one': lambda: 7.5,
  'print_100mb': lambda: print('x' * (100 << 20)) or 0.25,
  'signal_parent': lambda: os.kill(os.getppid(), signal.SIGKILL),
  'signal_rftjax_child': lambda: float(int(child(kill_rftjax_source)) > 0) or 1 / 0,
  'benign': lambda: 1.0,
}}


def grade(sample, item):
  return ATTACKS[item.get('attack', 'benign')]()
'''
KILL_SOURCE = """
import os, signal
n = 0
for pid in os.listdir('/proc'):
  try:
    cmd = open(f'/proc/{pid}/cmdline', 'rb').read()
  except OSError:
    continue
  if pid.isdigit() and int(pid) != os.getpid() and (b'rftjax.grade' in cmd or b'rftjax.train' in cmd):
    os.kill(int(pid), signal.SIGKILL)
    n += 1
print(n)
"""
# what each attack must end as: (reward, error category or None); a fork bomb that the kernel stops at its first
# fork (RLIMIT_NPROC, for a user that is not root) fails at once instead of hanging to its deadline
RUNTIME, TIMEOUT = 'python_grader_runtime', 'python_grader_timeout'
EXPECTED = {
  'read_secret': (0.0, RUNTIME),
  'read_secret_child': (0.0, RUNTIME),
  'read_shadow': (0.0, RUNTIME),
  'write_plain': (0.0, RUNTIME),
  'write_dir_fd': (0.0, RUNTIME),
  'write_dir_fd_python': (0.0, RUNTIME),
  'write_exec': (0.0, RUNTIME),
  'write_ctypes': (0.0, RUNTIME),
  'socket': (0.0, RUNTIME),
  'dns': (0.0, RUNTIME),
  'fork_bomb': (0.0, {TIMEOUT, RUNTIME}),
  'alloc_10gb': (0.0, RUNTIME),
  'sleep': (0.0, TIMEOUT),
  'os_exit': (0.0, RUNTIME),
  'sys_exit': (0.0, RUNTIME),
  'raise': (0.0, RUNTIME),
  'nan': (0.0, RUNTIME),
  'inf': (0.0, RUNTIME),
  'str': (0.0, RUNTIME),
  'none': (0.0, RUNTIME),
  'above_one': (1.0, RUNTIME),
  'print_100mb': (0.25, None),  # printing is allowed: the output is capped, with a note
  'signal_parent': (0.0, RUNTIME),
  'signal_rftjax_child': (0.0, RUNTIME),
}


class _Listener(http.server.BaseHTTPRequestHandler):
  """A server on 127.0.0.1 that counts every connection a grader manages to make."""

  def setup(self):
    type(self).connections += 1
    super().setup()

  def handle(self):
    pass


@pytest.fixture
def world(tmp_path):
  """The secret, the folder outside the sandbox, the listening server, and what exists before the run."""
  secret = tmp_path / 'secret.txt'
  secret.write_text(SECRET)
  outside = tmp_path / 'outside'
  outside.mkdir()
  handler = type('Listener', (_Listener,), {'connections': 0})
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  site = sysconfig.get_paths()['purelib']
  source = GRADER.format(secret_file=str(secret), outside=str(outside), port=server.server_address[1], site=site)
  source = source.replace('kill_rftjax_source', repr(KILL_SOURCE))
  grader = tmp_path / 'grader.json'
  grader.write_text(json.dumps({'type': 'python', 'name': 'hostile', 'source': source}))
  before = leftovers()
  yield dict(tmp=tmp_path, grader=grader, outside=outside, site=pathlib.Path(site), server=handler)
  server.shutdown()
  server.server_close()
  # nothing escaped, nothing left behind
  assert handler.connections == 0, 'a grader reached a server on 127.0.0.1'
  assert list(outside.iterdir()) == [], 'a grader wrote outside its sandbox'
  assert not list(pathlib.Path(site).glob('rftjax_pwned*')), 'a grader wrote into the Python installation'
  assert leftovers() <= before


def leftovers() -> set[str]:
  """Grader processes, temp dirs and cgroups that exist now, but for those of a pool whose owner still runs: another
  test's, on the other xdist worker (a pool names its cgroups and temp dirs rftjax-grader-<owner pid>-*, and its
  workers run in those cgroups). The pools of the commands a test ran have ended with them."""

  def foreign(name: str) -> bool:
    m = re.search(r'rftjax-grader-(\d+)-', name)
    return bool(m) and pathlib.Path(f'/proc/{m.group(1)}').exists()

  found = set()
  for pid in os.listdir('/proc'):
    try:
      cmd = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes()
      cgroup = pathlib.Path(f'/proc/{pid}/cgroup').read_text()
    except OSError:
      continue
    if pid.isdigit() and b'sandbox_worker.py' in cmd and not foreign(cgroup):
      found.add(f'process {pid}')
  found |= {str(p) for p in pathlib.Path(tempfile.gettempdir()).glob('rftjax-grader-*') if not foreign(p.name)}
  return found | {str(p) for p in pathlib.Path('/sys/fs/cgroup/pids').glob('rftjax-grader-*') if not foreign(p.name)}


def data_line(attack: str, prompt: str = 'Largest digit: 1 2 3 4') -> str:
  return json.dumps({'messages': [{'role': 'user', 'content': prompt}], 'answer': '4', 'attack': attack}) + '\n'


def python(*args, timeout=600):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(ISOLATED, reason='this machine can isolate graders: test_hostile_graders_through_grade runs')
def test_refused_where_the_machine_cannot_isolate(world):
  """No bubblewrap that works here: rftjax.grade and rftjax.train refuse the grader, saying what is missing."""
  data, samples = world['tmp'] / 'd.jsonl', world['tmp'] / 's.jsonl'
  data.write_text(data_line('benign'))
  samples.write_text('"4"\n')
  out = python('-m', 'rftjax.grade', f'--grader={world["grader"]}', f'--data={data}', f'--samples={samples}')
  assert out.returncode == 2 and "grader 'hostile' (python) runs code, and this machine cannot isolate it" in out.stderr
  assert 'bubblewrap' in out.stderr and 'grading.allow_unsandboxed=True' in out.stderr
  pytest.skip(f'this machine cannot isolate graders ({isolation.probe().reason}); checked the refusal instead')


@pytest.mark.skipif(not ISOLATED, reason=f'cannot isolate here: {isolation.probe().reason}')
def test_hostile_graders_through_grade(world):
  attacks = [a for name in EXPECTED for a in (name, 'benign')]
  data, samples, results = world['tmp'] / 'd.jsonl', world['tmp'] / 's.jsonl', world['tmp'] / 'r.jsonl'
  data.write_text(''.join(data_line(a) for a in attacks))
  samples.write_text('"4"\n' * len(attacks))
  out = python(
    '-m', 'rftjax.grade', f'--grader={world["grader"]}', f'--data={data}', f'--samples={samples}',
    f'--output={results}', f'--timeout_s={TIMEOUT_S}', '--num_workers=2',
  )  # fmt: skip
  assert out.returncode == 0, out.stderr
  rows = [json.loads(line) for line in results.read_text().splitlines()]
  assert len(rows) == len(attacks)
  for attack, row in zip(attacks, rows):
    reward, category = EXPECTED.get(attack, (1.0, None))
    found = [e['category'] for e in row['errors']]
    assert row['reward'] == reward, (attack, row)
    allowed = set() if category is None else {category} if isinstance(category, str) else category
    assert len(found) == (0 if category is None else 1) and set(found) <= allowed, (attack, row)
    assert SECRET not in json.dumps(row), attack
  by_attack = dict(zip(attacks, rows))
  assert 'clamped to 1' in by_attack['above_one']['errors'][0]['message']
  assert by_attack['print_100mb']['metadata']['stdout'].endswith('more characters of output dropped]')
  assert 'No such file' in by_attack['read_secret']['errors'][0]['message']
  assert 'Read-only file system' in by_attack['write_dir_fd_python']['errors'][0]['message']
  for attack in ('read_secret_child', 'write_exec', 'socket', 'dns'):  # the exec ran; what it tried did not
    assert 'the child failed' in by_attack[attack]['errors'][0]['message'], by_attack[attack]
  assert 'ZeroDivisionError' in by_attack['signal_rftjax_child']['errors'][0]['message']  # it found nothing to kill


@pytest.mark.skipif(not ISOLATED, reason=f'cannot isolate here: {isolation.probe().reason}')
def test_hostile_graders_in_a_training_run(world):
  """The tiny demo's model trained for 3 steps with every attack in its data: it reaches its last step."""
  prompts = [json.loads(line)['messages'][0]['content'] for line in (REPO / 'data/tiny/train.jsonl').open()][:32]
  train, valid = world['tmp'] / 'train.jsonl', world['tmp'] / 'valid.jsonl'
  train.write_text(''.join(data_line(a, p) for a, p in zip([*EXPECTED, *['benign'] * 32], prompts)))
  valid.write_text(''.join(data_line('benign', p) for p in prompts[:4]))
  workdir = world['tmp'] / 'run'
  out = python(
    '-m', 'rftjax.train', '--config=configs/tiny.py:test', f'--workdir={workdir}', f'--config.data.train={train}',
    f'--config.data.valid={valid}', f'--config.grader={world["grader"]}', '--config.batch_size=8',
    '--config.num_generations=2', '--config.total_steps=4', '--config.grading.max_error_share=1.0',
    f'--config.grading.timeout_s={TIMEOUT_S}', '--config.grading.num_workers=2',
  )  # fmt: skip
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train_rows = [r for r in rows if 'train_reward_mean' in r]
  assert [r['step'] for r in train_rows] == [1, 2, 3, 4]
  assert sum(r['train/errors/python_grader_runtime'] for r in train_rows) > 0
  assert [r['valid_reward_mean'] for r in rows if 'valid_reward_mean' in r] == [1.0, 1.0, 1.0]  # benign lines
