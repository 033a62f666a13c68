"""Stops a tiny training run at random moments until it finishes, then compares it with an unbroken run.

Not part of the suite (random timings make it slow and unrepeatable); run it after changing the training loop,
the checkpoints or the signal handling:

    .venv/bin/python tests/chaos_signals.py --signal=TERM --seed=1     # a preemption's SIGTERM
    .venv/bin/python tests/chaos_signals.py --signal=INT --seed=2      # Ctrl-C, sometimes twice
    .venv/bin/python tests/chaos_signals.py --signal=KILL --seed=3     # a crash: nothing runs on the way out

Each attempt runs `python -m rftjax.train` on configs/tiny.py (40 steps, a validation every 10 of 100 batches, so
that a stop lands in a validation too), sends the signal after a random delay and runs the command again, as
tpu/supervise.sh would. It then checks what a user relies on: every exit status is one the docs give for that
signal, the resumed run's training and validation numbers equal the unbroken run's, each validation step has one
metrics line and one event, and events.jsonl ends 'succeeded'. Prints one line per attempt; exits 1 on a mismatch.
It found a SIGTERM lost while starting, exit 143 after a finished run, and a stop after the last step said
'cancelled' (docs/checkpoints.md).
"""

import argparse
import json
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ['--config=configs/tiny.py', '--config.total_steps=40', '--config.eval_interval=10',
        '--config.eval_batch_size=2']  # fmt: skip
# what each signal may end an attempt with: its own status, the shell's for a process it ended outright, or 0 for
# an attempt that finished first
STATUSES = {'TERM': {0, 42, -15}, 'INT': {0, 130, -2}, 'KILL': {0, -9}}  # -15: before Python's handlers are set


def train(workdir: pathlib.Path, log) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, '-m', 'rftjax.train', *ARGS, f'--workdir={workdir}'], cwd=REPO, stdout=log,
    stderr=subprocess.STDOUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )  # fmt: skip


def lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary(workdir: pathlib.Path) -> dict:
  metrics, events = lines(workdir / 'metrics.jsonl'), lines(workdir / 'events.jsonl')
  return {
    'train': [(r['step'], r['loss'], r['train_reward_mean']) for r in metrics if 'loss' in r],
    'valid': [(r['step'], r['valid_reward_mean']) for r in metrics if 'valid_reward_mean' in r],
    'valid_events': [e['data']['step'] for e in events if 'full_valid_mean_reward' in e['data']],
    'last_status': [e['data']['status'] for e in events if 'status' in e['data']][-1],
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--signal', choices=sorted(STATUSES), default='TERM')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--max_attempts', type=int, default=30)
  args = parser.parse_args()
  rng, sig = random.Random(args.seed), getattr(signal, f'SIG{args.signal}')
  folder = pathlib.Path(tempfile.mkdtemp(prefix='rftjax-chaos-'))
  broken, whole, problems = folder / 'broken', folder / 'whole', []
  with open(folder / 'train.log', 'w') as log:
    for attempt in range(args.max_attempts):
      proc = train(broken, log)
      time.sleep(rng.uniform(4, 16))
      proc.send_signal(sig)
      twice = args.signal == 'INT' and rng.random() < 0.4
      if twice:  # Ctrl-C again: stop without a checkpoint
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(sig)
      try:
        status = proc.wait(timeout=300)
      except subprocess.TimeoutExpired:
        proc.kill()
        status = 'hung'
      print(f'attempt {attempt}: SIG{args.signal}{" twice" if twice else ""} -> {status}', flush=True)
      if status not in STATUSES[args.signal]:
        problems.append(f'attempt {attempt} ended {status}')
      if status == 0:
        break
    else:
      problems.append(f'not finished after {args.max_attempts} attempts')
    if train(whole, log).wait() != 0:
      problems.append('the unbroken run failed')
  if not problems:
    got, want = summary(broken), summary(whole)
    problems += [f'{k}: {got[k]} != {want[k]}' for k in ('train', 'valid', 'valid_events') if got[k] != want[k]]
    problems += [] if got['last_status'] == 'succeeded' else [f'events.jsonl ends {got["last_status"]!r}']
  if problems:
    print('\n'.join(problems) + f'\n(the runs and train.log are in {folder})')
    return 1
  print('the resumed run equals the unbroken one')
  shutil.rmtree(folder)
  return 0


if __name__ == '__main__':
  sys.exit(main())
