"""Multi-host on one machine: 2 processes x 4 fake CPU devices (jax.distributed over 127.0.0.1, gloo collectives)
train the tiny config exactly like 1 process x 8 devices with the same mesh (data=1, fsdp=8, tensor=1).

What the trainer must do for this to hold: each process samples and grades only its own rows (its slice of the
global batch, `DataIterator(process_index=, process_count=)`), builds global arrays with
`jax.make_array_from_process_local_data`, reduces train metrics across processes before process 0 writes
metrics.jsonl, and every process takes part in checkpoint saves (Orbax coordinates the writes).
Tolerances: rewards and metrics 1e-4 relative; params 1e-4 absolute (same mesh and program: only the collectives'
transport differs).
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import local_http

from configs import tiny
from rftjax import checkpoint
from rftjax import errors
from rftjax import evaluate
from rftjax import metrics
from rftjax import model
from rftjax import multihost
from rftjax import presets
from rftjax import train_step
from rftjax import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
COMPARED = (
  'train_reward_mean',
  'loss',
  'pg_loss',
  'entropy',
  'grad_norm',
  'completion_len_mean',
  'truncated_frac',
  'zero_std_group_frac',
  'train/error_rate',
)
# metrics that need more than a mean over hosts: a count, a max, a std over the whole batch
GLOBAL = ('train/num_graded', 'completion_len_max', 'train_reward_std')
# scale_rewards='batch': each host's advantages divide by the std of every host's rewards. The grader gives partial
# credit (a completion's characters found in its prompt), so that groups differ and the advantages are not all 0 as
# the exact answer's 0/1 are for the random tiny model
GRADER = {
  'type': 'text_similarity', 'name': 'overlap', 'input': '{{sample.output_text}}',
  'reference': '{{item.messages[0].content}}', 'evaluation_metric': 'fuzzy_match',
}  # fmt: skip
OVERRIDES = {'eval_batch_size': 8, 'checkpoint.async_save': False, 'grpo.scale_rewards': 'batch', 'total_steps': 2}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def small_valid(directory: pathlib.Path) -> str:
  path = directory / 'valid_small.jsonl'
  path.write_text(''.join((REPO / 'data/tiny/valid.jsonl').read_text().splitlines(True)[:8]))
  return str(path)


def params_of(workdir):
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  cfg = presets.tiny(vocab_size=32)
  tx = train_step.make_optimizer(tiny.get_config().optimizer, 1)
  state, _ = ckpt.restore(None, train_step.abstract_state(train_step.init_state(model.init_params(cfg), tx)))
  step = ckpt.latest_step()
  ckpt.close()
  return step, jax.device_get(state['params'])


def launch(workdir, valid, process_id, port, num_processes=2, grader=None):
  cmd = ['-m', 'rftjax.train', '--config=configs/tiny.py:test', f'--workdir={workdir}', f'--config.data.valid={valid}']
  cmd += [f'--config.{k}={v}' for k, v in OVERRIDES.items()] + ([f'--config.grader={grader}'] if grader else [])
  return spawn(cmd, workdir.parent / f'process{process_id}.log', process_id, port, num_processes)


def spawn(args, log_path, process_id, port, num_processes=2):
  """`python ARGS` as process `process_id` of a jax.distributed run on 127.0.0.1:port, 4 CPU devices each."""
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=4',
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(pathlib.Path(os.environ['RFTJAX_TEST_CACHE']) / 'jax-multihost'),
    PYTHONPATH=str(REPO),
  )
  cmd = [
    sys.executable,
    *args,
    f'--coordinator=127.0.0.1:{port}',
    f'--num_processes={num_processes}',
    f'--process_id={process_id}',
  ]
  log = open(log_path, 'w')
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log


def finish(procs, timeout: int) -> list[int]:
  """Each `spawn`ed process's exit status; one still running after `timeout` seconds is killed."""
  try:
    return [p.wait(timeout=timeout) for p, _ in procs]
  finally:
    for p, log in procs:
      if p.poll() is None:
        p.kill()
      log.close()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The 2-process run (subprocesses) and the 1-process x 8-device run (in this process), same config and mesh."""
  tmp_path = tmp_path_factory.mktemp('multihost')
  valid = small_valid(tmp_path)
  grader = tmp_path / 'grader.json'
  grader.write_text(json.dumps(GRADER))
  port = free_port()
  multi = tmp_path / 'multi'
  multi.mkdir()
  procs = [launch(multi, valid, i, port, grader=grader) for i in range(2)]
  codes = finish(procs, timeout=420)
  logs = '\n'.join((tmp_path / f'process{i}.log').read_text()[-3000:] for i in range(2))
  assert codes == [0, 0], logs

  mp = pytest.MonkeyPatch()
  mp.chdir(REPO)
  try:
    c = tiny.get_config('test').copy_and_resolve_references()
    c.data.valid = valid
    c.eval_batch_size = 8
    c.checkpoint.async_save = False
    c.grpo.scale_rewards = 'batch'
    c.total_steps = 2
    c.grader = str(grader)
    single = tmp_path / 'single'
    trainer.train(c, single)
  finally:
    mp.undo()
  return multi, single


def train_rows(workdir):
  return [r for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'train_reward_mean' in r]


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
  multi, single = runs
  rows_m, rows_s = train_rows(multi), train_rows(single)
  assert [r['step'] for r in rows_m] == [r['step'] for r in rows_s] == [1, 2]
  assert all(r['zero_std_group_frac'] < 1 for r in rows_s)  # advantages that count (grad_norm follows them)
  for a, b in zip(rows_s, rows_m):
    for key in COMPARED:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=f'step {a["step"]} {key}')
  evals = [
    [r['valid_reward_mean'] for r in metrics.read_jsonl(w / 'metrics.jsonl') if 'valid_reward_mean' in r]
    for w in (multi, single)
  ]
  assert evals[0] == evals[1] and len(evals[0]) == 2  # steps 0, 2

  step_m, params_m = params_of(multi)
  step_s, params_s = params_of(single)
  assert step_m == step_s == 2
  # 3e-5, as test_meshes (measured 1.1e-6 apart): the 2 steps move the weights by up to 1.8e-4, so 1e-4 had let
  # most of an update go missing
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params_s), jax.tree.leaves(params_m)):
    np.testing.assert_allclose(b, a, atol=3e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_two_processes_report_global_batch_metrics(runs):
  multi, single = runs
  problems = []  # every mismatch at once
  for a, b in zip(train_rows(single), train_rows(multi)):
    for key in GLOBAL:
      if not np.isclose(b[key], a[key], rtol=1e-4, atol=1e-6):
        problems.append(f'step {a["step"]} {key}: 2 processes {b[key]}, 1 process {a[key]}')
  assert not problems, '\n'.join(problems)


@pytest.mark.slow
def test_console_shows_rftjax_lines_not_library_info(runs):
  """The default console: rftjax's own lines and warnings, none of Orbax's or absl's INFO chatter."""
  log = (runs[0].parent / 'process0.log').read_text()
  assert 'step 0: valid_reward_mean=' in log and 'step 2: valid_reward_mean=' in log
  assert 'checkpoint_manager' not in log and 'CheckpointManager' not in log and 'orbax' not in log.lower(), log[-3000:]


@pytest.mark.slow
def test_evaluate_on_two_processes_equals_one(runs, tmp_path):
  """rftjax.evaluate on 2 hosts (each samples and grades its share of every batch) writes what 1 host writes."""
  multi, _ = runs
  data = small_valid(tmp_path)
  port = free_port()
  outs = [tmp_path / 'two.jsonl', tmp_path / 'two.jsonl']
  args = [
    '-m',
    'rftjax.evaluate',
    f'--workdir={multi}',
    '--step=latest',
    f'--data={data}',
    '--samples=2',
    '--temperature=1.0',
    '--batch_size=6',
    f'--out={outs[0]}',
    '--num_workers=1',
  ]
  procs = [spawn(args, tmp_path / f'eval{i}.log', i, port) for i in range(2)]
  codes = finish(procs, timeout=300)
  assert codes == [0, 0], '\n'.join((tmp_path / f'eval{i}.log').read_text()[-2000:] for i in range(2))
  mp = pytest.MonkeyPatch()
  mp.chdir(REPO)
  try:
    one = tmp_path / 'one.jsonl'
    assert evaluate.main(args[2:-2] + [f'--out={one}', '--num_workers=1']) == 0
  finally:
    mp.undo()
  two_rows, one_rows = metrics.read_jsonl(outs[0]), metrics.read_jsonl(one)
  assert len(two_rows) == len(one_rows) == 16  # 8 prompts x 2 samples, in order
  assert [r['tokens'] for r in two_rows] == [r['tokens'] for r in one_rows]
  assert [r['reward'] for r in two_rows] == [r['reward'] for r in one_rows]
  summary = json.loads((tmp_path / 'two.jsonl.summary.json').read_text())
  assert summary['reward_mean'] == json.loads((tmp_path / 'one.jsonl.summary.json').read_text())['reward_mean']


@pytest.mark.slow
def test_an_output_that_cannot_be_written_fails_every_host_alike(runs, tmp_path):
  """Process 0 alone writes evaluate's files; when it cannot after the work (the disk filled meanwhile), every host
  says so and exits 1, as one host does: process 1 exited 0, and a launcher that waits on every worker (gcloud
  --worker=all) saw the failure only in process 0's log."""
  multi, _ = runs
  out = tmp_path / 'two.jsonl'
  driver = tmp_path / 'full_disk.py'  # rftjax.evaluate with a disk that fills during the work
  driver.write_text(
    'import errno\nfrom rftjax import cli, data, evaluate\n'
    "data.write_jsonl = lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'No space left on device'))\n"
    'cli.command(evaluate.main)\n'
  )
  port = free_port()
  args = [str(driver), f'--workdir={multi}', '--step=latest', f'--data={small_valid(tmp_path)}', '--batch_size=8',
          f'--out={out}', '--num_workers=1']  # fmt: skip
  codes = finish([spawn(args, tmp_path / f'eval{i}.log', i, port) for i in range(2)], timeout=300)
  logs = [(tmp_path / f'eval{i}.log').read_text() for i in range(2)]
  assert codes == [1, 1], '\n'.join(log[-2000:] for log in logs)
  for log in logs:
    assert f'error: --out={out}: cannot write it (No space left on device)' in log, log[-2000:]
  assert not out.exists() and not (tmp_path / 'two.jsonl.summary.json').exists()


@pytest.mark.slow
def test_hosts_that_do_not_share_a_local_workdir_are_refused(tmp_path):
  """Each host with a folder of its own (a pod slice's local disks): Orbax's first checkpoint would wait forever for
  the other host's files. Two processes given two folders stand in for one path on two disks."""
  valid = small_valid(tmp_path)
  port = free_port()
  for i in range(2):
    (tmp_path / f'host{i}').mkdir()
  procs = [launch(tmp_path / f'host{i}' / 'run', valid, i, port) for i in range(2)]
  codes = finish(procs, timeout=300)
  logs = [(tmp_path / f'host{i}' / f'process{i}.log').read_text() for i in range(2)]
  assert codes == [2, 2], '\n'.join(log[-2000:] for log in logs)
  for log in logs:
    assert 'process 1 of 2 does not see what process 0 writes there; a multi-host run needs one folder' in log
  assert not (tmp_path / 'host0' / 'run' / 'checkpoints').exists()  # refused before anything was trained


@pytest.mark.slow
def test_a_startup_error_on_process_0_alone_stops_every_host(tmp_path):
  """Process 0 alone takes the run folder's lock (and writes config.json); when it cannot, process 1 must stop with
  the same one-line error, not wait at its next collective until the coordinator's heartbeat gives up."""
  from rftjax import runfs

  valid = small_valid(tmp_path)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  port = free_port()
  holder = runfs.lock(workdir)  # another trainer in the folder, as far as the two hosts can tell
  try:
    codes = finish([launch(workdir, valid, i, port) for i in range(2)], timeout=240)
  finally:
    holder.close()
  logs = [(tmp_path / f'process{i}.log').read_text() for i in range(2)]
  assert codes == [2, 2], '\n'.join(log[-2000:] for log in logs)
  for log in logs:
    assert f'error: --workdir={workdir}: process {os.getpid()} on ' in log, log[-2000:]
    assert 'is training in it; expected no other trainer there' in log
  assert not (workdir / 'config.json').exists()


@pytest.mark.parametrize(
  'raised, code',
  [(errors.OutputError('--out=x: cannot write it'), 1), (errors.ConfigError('config.x: bad'), 2),
   (KeyboardInterrupt(), 130), ('terminated', 143), (SystemExit(42), 42), (ZeroDivisionError('a bug'), None)],
  ids=['output', 'config', 'interrupt', 'sigterm', 'exit', 'bug'],
)  # fmt: skip
def test_what_process_0_raised_the_other_hosts_raise_alike(monkeypatch, capsys, raised, code):
  """multihost.on_process_0 on 2 hosts, each side in turn: process 1 raises what process 0 sent, with the exit
  status process 0 has (a bug: a RuntimeError naming it). An OutputError was a plain UserError there (2, not 1);
  a Ctrl-C on process 0 (not an Exception) left process 1 waiting in the gather until the heartbeat gave up."""
  from rftjax import cli

  raised = cli.Terminated() if raised == 'terminated' else raised

  def fail():
    raise raised

  sent = []
  monkeypatch.setattr(multihost.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost.jax, 'process_index', lambda: 0)
  monkeypatch.setattr(multihost, 'gather_objects', lambda objects: sent.extend(objects) or list(objects))
  with pytest.raises(type(raised)):
    multihost.on_process_0(fail)
  assert len(sent) == 1  # process 0 took part in the gather
  monkeypatch.setattr(multihost.jax, 'process_index', lambda: 1)
  monkeypatch.setattr(multihost, 'gather_objects', lambda objects: list(sent))
  if code is None:
    with pytest.raises(RuntimeError, match='process 0 stopped with ZeroDivisionError: a bug'):
      multihost.on_process_0(fail)
  elif isinstance(raised, SystemExit):
    with pytest.raises(SystemExit) as e:
      multihost.on_process_0(fail)
    assert e.value.code == code
  else:
    assert cli.run(lambda: multihost.on_process_0(fail)) == code
    assert str(raised) in capsys.readouterr().err


def test_host_metrics_combine_by_what_they_measure():
  """Counts add up over hosts, maxima take the max, means average and stds pool (two hosts' values per key)."""
  from rftjax import multihost

  per_host = {
    'train/num_graded': [16, 16],
    'tools/errors/timeout': [1, 2],  # calls: the batch had 3
    'valid/tools/errors/total': [0, 4],
    'tools/discarded_rollouts': [1, 0],
    'valid/tools/outputs_clipped': [2, 3],
    'tools/latency_max_s': [0.5, 2.0],
    'completion_len_max': [10, 12],
    'tools/latency_mean_s': [0.2, 0.4],
    'train_reward_mean': [0.2, 0.6],
    'train_reward_std': [0.1, 0.1],
  }
  keys = sorted(per_host)
  got = multihost.combine(keys, np.asarray([per_host[k] for k in keys], np.float64).T)
  assert {k: got[k] for k in keys if k != 'train_reward_std'} == pytest.approx({
    'train/num_graded': 32, 'tools/errors/timeout': 3, 'valid/tools/errors/total': 4, 'tools/discarded_rollouts': 1,
    'valid/tools/outputs_clipped': 5, 'tools/latency_max_s': 2.0, 'completion_len_max': 12,
    'tools/latency_mean_s': 0.3, 'train_reward_mean': 0.4,
  })  # fmt: skip
  assert got['train_reward_std'] == pytest.approx(np.sqrt(0.01 + 0.04))  # within-host 0.1^2, between-host 0.2^2
  # a host whose gradings an outage left without a verdict weighs by the ones it has: host 0 kept none
  per_host = {'train/num_graded': [8, 8], 'train/num_discarded': [8, 0], 'train_reward_mean': [0.0, 1.0],
              'train_reward_std': [0.0, 0.0], 'train/grader/a': [0.0, 0.5]}  # fmt: skip
  keys = sorted(per_host)
  got = multihost.combine(keys, np.asarray([per_host[k] for k in keys], np.float64).T)
  assert (got['train_reward_mean'], got['train_reward_std'], got['train/grader/a']) == (1.0, 0.0, 0.5)
  assert (got['train/num_graded'], got['train/num_discarded']) == (16, 8)


def test_distributed_flags_that_cannot_work_are_one_line_errors():
  from rftjax import errors
  from rftjax import multihost

  cases = [
    (dict(coordinator='127.0.0.1:1'), '--coordinator=127.0.0.1:1: expected --num_processes=N and --process_id in'),
    (dict(coordinator='127.0.0.1:1', num_processes=2, process_id=5), 'found --num_processes=2 --process_id=5'),
    (dict(num_processes=2), '--num_processes=2 --process_id=None: expected --coordinator=HOST:PORT with them'),
  ]
  for kwargs, message in cases:
    with pytest.raises(errors.ConfigError, match=re.escape(message)):
      multihost.initialize('auto', **kwargs)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))  # JAX not started yet: its own process
  cmd = [sys.executable, '-m', 'rftjax.train', '--config=configs/tiny.py:test', '--workdir=unused', '--distributed=on']
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith('error: --distributed=on: this machine does not say who its other hosts are')


JUDGE = """
import json, sys
import jax
from configs import tiny
from rftjax import inference, loader, multihost, sharding

flags = dict(a.lstrip('-').split('=', 1) for a in sys.argv[1:])
multihost.initialize(coordinator=flags['coordinator'], num_processes=2, process_id=int(flags['process_id']))
mesh = sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1}, devices=jax.local_devices())  # as local_judges
judge = inference.make_judge(loader.load(tiny.get_config('test'), mesh=mesh), max_new_tokens=6)
print('JUDGED', json.dumps(judge([{'role': 'user', 'content': PROMPTS[jax.process_index()]}], {})))
"""
JUDGE_PROMPTS = ['Largest digit: 1 2 3', 'Largest digit: 9 8 8 7 6 5']


@pytest.mark.slow
def test_a_local_judge_answers_each_host_its_own_prompt(tmp_path):
  """A score_model grader's local judge runs on each host's own devices: its completions must not be gathered
  from every host (each host would get the answer to host 0's prompt)."""
  from rftjax import inference
  from rftjax import loader

  script = tmp_path / 'judge.py'
  script.write_text(f'PROMPTS = {JUDGE_PROMPTS!r}\n' + JUDGE)
  port = free_port()
  procs = [spawn([str(script)], tmp_path / f'judge{i}.log', i, port) for i in range(2)]
  codes = finish(procs, timeout=300)
  logs = [(tmp_path / f'judge{i}.log').read_text() for i in range(2)]
  assert codes == [0, 0], '\n'.join(log[-2000:] for log in logs)
  said = [json.loads(log.split('JUDGED ', 1)[1].splitlines()[0]) for log in logs]
  mp = pytest.MonkeyPatch()
  mp.chdir(REPO)
  try:
    judge = inference.make_judge(loader.load(tiny.get_config('test')), max_new_tokens=6)
    expected = [judge([{'role': 'user', 'content': p}], {}) for p in JUDGE_PROMPTS]
  finally:
    mp.undo()
  assert expected[0] != expected[1]  # the two prompts tell the hosts apart
  assert said == expected


class _Metadata(local_http.Handler):
  endpoints = ''

  def do_GET(self):
    path = '/computeMetadata/v1/instance/attributes/worker-network-endpoints'
    if self.path != path or self.headers['Metadata-Flavor'] != 'Google' or not self.endpoints:
      self.send(404, 'not found', 'text/plain')
    else:
      self.send(200, self.endpoints, 'text/plain')


def test_a_cloud_tpu_vm_finds_its_hosts_in_its_metadata(monkeypatch):
  """tpu/create.sh's VMs list a slice's workers in the metadata server, not in TPU_WORKER_HOSTNAMES (GKE's): a
  slice of several hosts must start jax.distributed by itself (--distributed=auto), a single host must not."""
  from rftjax import multihost

  for var in ('TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES', 'TPU_SKIP_MDS_QUERY'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(multihost, 'has_tpu_chips', lambda: True)
  with local_http.serving(_Metadata) as url:
    monkeypatch.setenv('GCE_METADATA_IP', url.removeprefix('http://').rstrip('/'))
    for endpoints, expected in [
      ('t1v-n-0:0:10.0.0.2,t1v-n-1:1:10.0.0.3', True),  # the old name:id:ip format
      ('10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5', True),
      ('t1v-n-0:0:10.0.0.2', False),  # one host
      ('', False),  # no such attribute: a GCE VM that is no TPU slice
    ]:
      monkeypatch.setattr(_Metadata, 'endpoints', endpoints)
      assert multihost.on_multihost_tpu_vm() is expected, endpoints
    monkeypatch.setattr(_Metadata, 'endpoints', '10.0.0.2,10.0.0.3')
    monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'one-host')  # GKE's variable wins
    assert multihost.on_multihost_tpu_vm() is False
    monkeypatch.delenv('TPU_WORKER_HOSTNAMES')
    monkeypatch.setattr(multihost, 'has_tpu_chips', lambda: False)  # no TPU: the server is not asked
    assert multihost.on_multihost_tpu_vm() is False
  monkeypatch.setattr(multihost, 'has_tpu_chips', lambda: True)
  monkeypatch.setenv('GCE_METADATA_IP', '127.0.0.1:1')  # nothing listens: not on GCE
  assert multihost.on_multihost_tpu_vm() is False
