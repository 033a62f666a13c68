"""SIGTERM (what a Spot/preemptible TPU VM gets before it is taken) -> checkpoint at the step reached, exit 42;
the same command again continues from that step.

The trainer contract (tpu/README.md, tpu/supervise.sh): on SIGTERM finish or abandon the current step, save a
checkpoint of the last completed step (no eval needed), wait for it to be committed, exit with status 42.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rftjax import checkpoint
from rftjax import metrics
from rftjax import preemption

REPO = pathlib.Path(__file__).resolve().parents[1]
PREEMPTED = 42


def command(workdir, valid, total_steps, eval_interval):
  return [
    sys.executable,
    '-m',
    'rftjax.train',
    '--config=configs/tiny.py:test',
    f'--workdir={workdir}',
    f'--config.total_steps={total_steps}',
    f'--config.eval_interval={eval_interval}',
    f'--config.data.valid={valid}',
    '--config.eval_batch_size=8',
  ]


def env():
  return dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=2',
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(pathlib.Path(os.environ['RFTJAX_TEST_CACHE']) / 'jax-preemption'),
    PYTHONPATH=str(REPO),
  )


def train_steps(workdir):
  return [r['step'] for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'train_reward_mean' in r]


@pytest.mark.slow
@pytest.mark.parametrize('sig, code', [(signal.SIGTERM, PREEMPTED), (signal.SIGINT, 130)], ids=['SIGTERM', 'Ctrl-C'])
def test_sigterm_checkpoints_and_the_rerun_continues(tmp_path, sig, code):
  valid = tmp_path / 'valid_small.jsonl'
  valid.write_text(''.join((REPO / 'data/tiny/valid.jsonl').read_text().splitlines(True)[:8]))
  workdir = tmp_path / 'run'
  log_path = tmp_path / 'first.log'
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(
      command(workdir, valid, 200, 100), cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
      deadline = time.monotonic() + 300
      while len(train_steps(workdir)) < 3:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, 'no 3 training steps within 300 s:\n' + log_path.read_text()[-3000:]
        time.sleep(0.2)
      proc.send_signal(sig)
      exit_code = proc.wait(timeout=120)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  out = log_path.read_text()
  assert exit_code == code, out[-3000:]
  assert re.search(r'checkpoint written at step \d+; training again in the same workdir resumes there', out), out
  assert re.search(rf'saved a checkpoint at step \d+; stopping \(exit status {code}\)', out), out

  reached = train_steps(workdir)[-1]
  assert 3 <= reached < 200
  assert train_steps(workdir) == list(range(1, reached + 1))
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  assert ckpt.latest_step() == reached, (ckpt.all_steps(), reached)
  ckpt.close()

  # the same command with a few more steps: resumes at reached + 1, writes no step twice
  total = reached + 2
  proc = subprocess.run(
    command(workdir, valid, total, 100), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'resumed from step {reached}' in proc.stderr
  assert train_steps(workdir) == list(range(1, total + 1))
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  assert ckpt.latest_step() == total
  ckpt.close()
  if sig != signal.SIGTERM:  # once is enough: the same resume
    return
  # the steps after the resume are those of one uninterrupted run: weights, optimizer and data position came back
  whole = tmp_path / 'whole'
  done = subprocess.run(command(whole, valid, total, 100), cwd=REPO, env=env(), capture_output=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = {r['step']: r for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'train_reward_mean' in r}
  once = {r['step']: r for r in metrics.read_jsonl(whole / 'metrics.jsonl') if 'train_reward_mean' in r}
  after = [s for s in rows if s > reached]
  assert after == [reached + 1, reached + 2] and all(rows[s]['grad_norm'] > 0 for s in after)
  for s in after:  # to rounding: the train-step shapes are picked by measured times (padding reorders sums)
    assert rows[s]['train_reward_mean'] == once[s]['train_reward_mean'], s
    for key in ('loss', 'grad_norm', 'kl'):
      np.testing.assert_allclose(rows[s][key], once[s][key], rtol=1e-5, atol=1e-7, err_msg=f'step {s} {key}')


def test_a_second_ctrl_c_raises_and_a_third_is_the_systems():
  before = signal.getsignal(signal.SIGINT)
  with preemption.Watcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.flag and watcher.interrupted and watcher.requested(0)
    with pytest.raises(KeyboardInterrupt, match='second Ctrl-C'):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # the handler runs between bytecodes; this is where it raises
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # a swallowed interrupt still leaves a way out
  assert signal.getsignal(signal.SIGINT) is before


def test_exit_now_does_not_wait_for_busy_worker_threads():
  """What a second Ctrl-C ends the trainer with: a tool call hung in a thread pool must not hold the process."""
  code = (
    'import concurrent.futures, time\n'
    'from rftjax import cli\n'
    'pool = concurrent.futures.ThreadPoolExecutor(1)\n'
    'pool.submit(time.sleep, 60)\n'
    'print("flushed", flush=False)\n'
    'cli.exit_now(130)\n'
  )
  t0 = time.monotonic()
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env(), capture_output=True, text=True, timeout=50)
  assert (proc.returncode, proc.stdout) == (130, 'flushed\n')
  assert time.monotonic() - t0 < 30  # a plain sys.exit would wait the 60 s out


def test_sigterm_before_the_first_step_exits_42(monkeypatch, tmp_path):
  """Loading and compiling a large model takes minutes before the loop watches for SIGTERM: a preemption then must
  still say 'relaunch me' (42), not die as 143, which tpu/supervise.sh takes for a crash."""
  from rftjax import cli
  from rftjax import train
  from rftjax import trainer

  def loading(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler interrupts this
    raise AssertionError('SIGTERM did not stop the start-up')

  monkeypatch.chdir(REPO)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  monkeypatch.setattr(trainer, 'train', loading)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as e:
    train.main(['train', '--config=configs/tiny.py:test', f'--workdir={tmp_path / "run"}'])
  assert e.value.code == PREEMPTED
  assert signal.getsignal(signal.SIGTERM) is before  # the trainer's own handler is not left behind
  # the command line ends the process at once: Python's teardown, with XLA still compiling in its threads,
  # crashed with a segfault (139) after the 42 was said
  monkeypatch.setattr(cli, 'exit_now', lambda status: (_ for _ in ()).throw(SystemExit(('now', status))))
  try:
    with pytest.raises(SystemExit) as e:
      train.main(['train', '--config=configs/tiny.py:test', f'--workdir={tmp_path / "run"}'], abandon_threads=True)
    assert e.value.code == ('now', PREEMPTED)
  finally:
    signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize('ending, status', [('done', 0), ('guard', 4), ('diverged', 5)])
def test_a_sigterm_in_the_teardown_keeps_the_status_the_work_ended_with(monkeypatch, tmp_path, ending, status):
  """The command line's process, its run over, got a SIGTERM while Python tore down (a VM going away just then) and
  ended as 143, which tpu/supervise.sh takes for a crash of a run that had succeeded (found by SIGTERMs sent at
  random moments). It now exits at once with the status the work ended with: 0, or a failure's (as 42, supervise
  would relaunch a run the collapse guard had stopped, which then trains on past the collapse)."""
  from rftjax import cli
  from rftjax import train
  from rftjax import trainer

  def train_ending(*args, **kwargs):
    if ending == 'guard':
      raise trainer.GuardStopped('the collapse guard stopped the run at step 4')
    if ending == 'diverged':
      raise trainer.Diverged('step 4: the update was not finite')
    return {}  # a run with nothing left to do

  monkeypatch.chdir(REPO)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  monkeypatch.setattr(trainer, 'train', train_ending)
  monkeypatch.setattr(cli, 'exit_now', lambda status: (_ for _ in ()).throw(SystemExit(('now', status))))
  before = signal.getsignal(signal.SIGTERM)
  try:
    argv = ['train', '--config=configs/tiny.py:test', f'--workdir={tmp_path}']
    assert train.main(argv, abandon_threads=True) == status
    handler = signal.getsignal(signal.SIGTERM)  # called, not sent: the default would end this test's process
    assert callable(handler)
    with pytest.raises(SystemExit) as e:
      handler(signal.SIGTERM, None)
    assert e.value.code == ('now', status)
  finally:
    signal.signal(signal.SIGTERM, before)
  assert train.main(argv) == status
  assert signal.getsignal(signal.SIGTERM) is before  # in-process use leaves the handler it found


# a SIGTERM handler as train's start-up one: an exit that carries its signal
EXIT_42 = 'def handler(signum, frame):\n  stop = SystemExit(42)\n  stop.signum = signum\n  raise stop\n'


def _dropped_in_a_callback(setup: str, after: str = '') -> subprocess.CompletedProcess:
  """`python -c` as while `python -m rftjax.X` imports the command: `setup` defines `handler`, set for SIGTERM; a
  finalizer calls it, as JAX's garbage-collection hook may (Python drops what it raises there); then `after`."""
  code = (
    "import sys; sys.argv[:1] = ['-m']\nimport atexit, os, rftjax, signal, time\n" + setup
    + 'signal.signal(signal.SIGTERM, handler)\n'
    + 'class Callback:\n  def __del__(self):\n    handler(signal.SIGTERM, None)\nCallback()\n' + after
  )  # fmt: skip
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env(), capture_output=True, text=True, timeout=60)


def test_a_sigterm_while_starting_that_lands_in_a_callback_still_stops_the_run():
  """The handler's exit, raised in a callback (JAX's garbage-collection hook), was dropped by Python: the run
  logged 'exiting with status 42' and trained on to the end (found by SIGTERMs at random moments). The signal is
  sent again, and the second exit lands where it ends the process; the warning is said once."""
  t0 = time.monotonic()
  proc = _dropped_in_a_callback('from rftjax import train\nhandler = train._preempted_while_starting\n',
                                after="time.sleep(30)\nprint('went on')\n")  # fmt: skip
  assert (proc.returncode, proc.stdout) == (PREEMPTED, ''), proc.stderr
  assert proc.stderr.count('SIGTERM before the first step: nothing to save; exiting with status 42') == 1
  assert time.monotonic() - t0 < 20  # raised during the sleep, not after it


def test_a_dropped_exit_is_not_sent_again_once_the_systems_handler_is_back():
  """The command put the system's SIGTERM handler back (its work over) before the dropped exit was sent again: the
  signal would end it as 143, where it was exiting 2 (or 0, or 42) on its own."""
  proc = _dropped_in_a_callback(
    EXIT_42, after='signal.signal(signal.SIGTERM, signal.SIG_DFL)\ntime.sleep(0.5)\nsys.exit(2)\n'
  )
  assert proc.returncode == 2, proc.stderr


def test_a_dropped_exit_is_not_sent_again_into_the_exit_hooks():
  """The main thread has ended (Python runs the exit hooks): sent again there, the signal cut a hook short."""
  proc = _dropped_in_a_callback(EXIT_42 + "atexit.register(lambda: (time.sleep(0.3), os.write(1, b'hook ran')))\n")
  assert (proc.returncode, proc.stdout) == (0, 'hook ran'), proc.stderr


def test_a_sigterm_in_the_trainers_teardown_does_not_turn_a_guard_stop_into_a_preemption(monkeypatch, tmp_path):
  """Once the loop's Watcher has gone (the trainer closing its pool, writer and checkpoints), a SIGTERM met train's
  start-up handler again: SystemExit 42 and 'before the first step' in the log, and supervise.sh relaunched a run
  the collapse guard had stopped. The teardown goes on, and the status stands (4)."""
  from rftjax import cli
  from rftjax import train
  from rftjax import trainer

  def stopped_by_the_guard(*args, **kwargs):
    with preemption.Watcher():  # the loop
      pass
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # the SIGTERM, during the teardown: nothing raised
    raise trainer.GuardStopped('the collapse guard stopped the run at step 4')

  monkeypatch.chdir(REPO)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  monkeypatch.setattr(trainer, 'train', stopped_by_the_guard)
  monkeypatch.setattr(cli, 'exit_now', lambda status: (_ for _ in ()).throw(SystemExit(('now', status))))
  before = signal.getsignal(signal.SIGTERM)
  argv = ['train', '--config=configs/tiny.py:test', f'--workdir={tmp_path}']
  assert train.main(argv) == 4
  assert signal.getsignal(signal.SIGTERM) is before
  try:  # the command line: once closed, it exits with the status at once, not waiting for threads
    with pytest.raises(SystemExit) as e:
      train.main(argv, abandon_threads=True)
    assert e.value.code == ('now', 4)
  finally:
    signal.signal(signal.SIGTERM, before)

  def stuck(*args, **kwargs):  # a close that hangs: a second SIGTERM exits now, as a preemption
    with preemption.Watcher():
      pass
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    raise AssertionError('the second SIGTERM did not end it')

  monkeypatch.setattr(trainer, 'train', stuck)
  with pytest.raises(SystemExit) as e:
    train.main(argv)
  assert e.value.code == ('now', PREEMPTED)
  assert signal.getsignal(signal.SIGTERM) is before
