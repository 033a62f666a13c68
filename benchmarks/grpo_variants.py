"""Steps to 0.9 validation reward on the tiny CPU demo under the GRPO variants (README / docs/grpo.md table).

  python benchmarks/grpo_variants.py [--variants grpo,dr_grpo,dapo] [--steps 200]
      [--out benchmarks/results/grpo_variants.json]
Each variant is the demo command with a few overrides, run in its own process and workdir (runs/variants/NAME);
a variant whose run already reached --steps is only read back, so the script can be re-invoked; a larger --steps
continues a variant from its last checkpoint.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {
  # DeepSeekMath GRPO: group mean/std advantages, per-sequence mean, symmetric clip, k3 KL with beta 0.04 (the
  # demo's defaults in configs/tiny.py; the overrides restate them so the variant stays fixed if those change)
  'grpo': [
    '--config.grpo.advantage=grpo',
    '--config.grpo.loss_aggregation=sequence_mean',
    '--config.grpo.epsilon_high=0.2',
    '--config.grpo.beta=0.04',
  ],
  # Dr. GRPO: no std normalisation, constant (max_new_tokens) aggregation, no KL
  'dr_grpo': [
    '--config.grpo.advantage=dr_grpo',
    '--config.grpo.scale_rewards=none',
    '--config.grpo.loss_aggregation=constant',
    '--config.grpo.epsilon_high=0.2',
    '--config.grpo.beta=0',  # configs/tiny.py sets 0.04: without this the "no KL" variant would have one
  ],
  # DAPO-style: clip-higher 0.28, token-mean, no KL
  'dapo': ['--config.grpo.loss_aggregation=token_mean', '--config.grpo.epsilon_high=0.28', '--config.grpo.beta=0'],
  # the same plus DAPO's dynamic sampling (resamples prompts whose G rewards are all equal)
  'dapo_dynamic': [
    '--config.grpo.loss_aggregation=token_mean',
    '--config.grpo.epsilon_high=0.28',
    '--config.grpo.beta=0',
    '--config.grpo.dynamic_sampling=True',
  ],
}
DEFAULT = ('grpo', 'dr_grpo', 'dapo')


def steps_to(rows, threshold):
  for r in rows:
    if 'valid_reward_mean' in r and r['valid_reward_mean'] >= threshold:
      return r['step']
  return None


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--variants', default=','.join(DEFAULT))
  ap.add_argument('--steps', type=int, default=200)
  ap.add_argument('--eval_interval', type=int, default=10)
  ap.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'grpo_variants.json'))
  args = ap.parse_args()
  out = pathlib.Path(args.out)
  results = json.loads(out.read_text()) if out.exists() else {}  # earlier invocations' variants are kept
  for name in args.variants.split(','):
    workdir = REPO / 'runs' / 'variants' / name
    cmd = [
      sys.executable,
      '-m',
      'rftjax.train',
      '--config=configs/tiny.py',
      f'--workdir={workdir}',
      f'--config.total_steps={args.steps}',
      f'--config.eval_interval={args.eval_interval}',
      '--config.progress=False',
      *VARIANTS[name],
    ]
    t0, load_before = time.time(), os.getloadavg()[0]
    metrics = workdir / 'metrics.jsonl'
    done = metrics.exists() and any(
      json.loads(line).get('step', 0) >= args.steps and 'train_reward_mean' in line
      for line in metrics.read_text().splitlines()
    )
    if not done:  # a finished variant is only read back
      subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals = [r for r in rows if 'valid_reward_mean' in r]
    train = [r for r in rows if 'train_reward_mean' in r]
    results[name] = {
      'overrides': VARIANTS[name],
      'total_steps': train[-1]['step'],
      'steps_to_0.9': steps_to(rows, 0.9),
      'steps_to_0.8': steps_to(rows, 0.8),
      'valid_at_0': evals[0]['valid_reward_mean'],
      'best_valid': max(r['valid_reward_mean'] for r in evals),
      'final_valid': evals[-1]['valid_reward_mean'],
      'wall_s': round(time.time() - t0, 1),
      'train_s': round(sum(r['timing/step_s'] for r in train), 1),
      'load_avg_1min': [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after: idle is well under 1
    }
    print(name, results[name], flush=True)
    out.write_text(json.dumps(results, indent=2) + '\n')
  print('\n| variant | valid@0 | steps to 0.8 | steps to 0.9 | best valid | final valid (step) |')
  print('|---|---|---|---|---|---|')
  for name, r in results.items():
    print(
      f'| {name} | {r["valid_at_0"]:.3f} | {r["steps_to_0.8"]} | {r["steps_to_0.9"]} | {r["best_valid"]:.3f} | '
      f'{r["final_valid"]:.3f} ({r.get("total_steps")}) |'
    )


if __name__ == '__main__':
  main()
