"""Grading throughput: gradings per second per grader type, through GradingPool.grade.

  python benchmarks/graders_bench.py [--num_workers=2] [--scale=1.0]
Prints a table and writes benchmarks/results/graders.json. Targets (issue): string_check >= 100,000/s in process;
python >= 200/s on 2 cores with a trivial grade(). Sandboxed rows are measured with warm workers (one warm-up
batch first); the "cold" row includes starting the workers. The "python_trivial (no bubblewrap)" row runs the same
grader in the same run with the kernel sandbox switched off (docs/graders.md, "Isolation"), for its cost as a ratio.
The load average before and after goes into the JSON: numbers measured on a busy machine say so.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rftjax import graders  # noqa: E402
from rftjax.graders import isolation  # noqa: E402

OUT = '{{sample.output_text}}'
CASES = {
  'string_check': (
    {'type': 'string_check', 'input': OUT, 'reference': '{{item.answer}}', 'operation': 'eq'},
    200_000,
    100_000,
  ),
  'string_check_ilike': (
    {'type': 'string_check', 'input': OUT, 'reference': '{{item.answer}}', 'operation': 'ilike'},
    200_000,
    None,
  ),
  'text_similarity_fuzzy': (
    {'type': 'text_similarity', 'input': OUT, 'reference': '{{item.answer}}', 'evaluation_metric': 'fuzzy_match'},
    50_000,
    None,
  ),
  'text_similarity_rouge_l': (
    {'type': 'text_similarity', 'input': OUT, 'reference': '{{item.answer}}', 'evaluation_metric': 'rouge_l'},
    5_000,
    None,
  ),
  'python_trivial': (
    {
      'type': 'python',
      'source': "def grade(sample, item):\n  return float(sample['output_text'].strip() == item['answer'])\n",
    },
    20_000,
    200,
  ),
  'math': ({'type': 'math', 'input': OUT, 'reference': '{{item.answer}}'}, 1_000, None),
  'code': ({'type': 'code', 'input': OUT, 'tests': ['assert f(2) == 4', 'assert f(3) == 9']}, 2_000, None),
}


def data(kind: str, n: int):
  if kind == 'math':
    samples = [f'so the answer is \\boxed{{\\frac{{{k % 7 + 1}}}{{2}}}}' for k in range(n)]
    items = [{'answer': f'{(k % 7 + 1) / 2}'} for k in range(n)]
  elif kind == 'code':
    samples = ['```python\ndef f(x):\n    return x * x\n```'] * n
    items = [{}] * n
  else:
    samples = [f'The answer is {k % 100}' for k in range(n)]
    items = [{'answer': f'The answer is {k % 97}'} for k in range(n)]
  return samples, items


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument('--num_workers', type=int, default=2)
  ap.add_argument('--scale', type=float, default=1.0, help='multiply every sample count')
  ap.add_argument('--out', default=str(pathlib.Path(__file__).parent / 'results' / 'graders.json'))
  args = ap.parse_args()
  rows = []
  load_before = os.getloadavg()
  t_cold = time.perf_counter()
  with graders.GradingPool(num_workers=args.num_workers, timeout_s=30) as pool:
    cold = pool.grade(graders.build(CASES['python_trivial'][0]), *data('python', 200))
    rows.append(
      {
        'grader': 'python_trivial (cold, incl. worker start)',
        'n': len(cold),
        'seconds': time.perf_counter() - t_cold,
        'target': None,
      }
    )
    for name, (spec, n, target) in CASES.items():
      n = max(10, int(n * args.scale))
      g = graders.build(spec)
      samples, items = data(name.split('_')[0], n)
      pool.grade(g, samples[:200], items[:200])  # warm-up: imports, worker caches
      t0 = time.perf_counter()
      res = pool.grade(g, samples, items)
      dt = time.perf_counter() - t0
      errors = sum(1 for r in res if r.errors)
      rows.append({'grader': name, 'n': n, 'seconds': dt, 'target': target, 'errors': errors})
  sandbox = isolation.probe()
  with graders.GradingPool(num_workers=args.num_workers, timeout_s=30, allow_unsandboxed=True) as pool:
    pool.isolation = isolation.Isolation(None, 'switched off for the comparison')  # workers start lazily
    spec, n, _ = CASES['python_trivial']
    g, (samples, items) = graders.build(spec), data('python', max(10, int(n * args.scale)))
    pool.grade(g, samples[:200], items[:200])
    t0 = time.perf_counter()
    pool.grade(g, samples, items)
    rows.append({'grader': 'python_trivial (no bubblewrap)', 'n': len(samples), 'seconds': time.perf_counter() - t0,
                 'target': None, 'errors': 0})  # fmt: skip
  for r in rows:
    r['per_s'] = r['n'] / r['seconds']
    r['meets_target'] = None if r['target'] is None else r['per_s'] >= r['target']
  print(f'{"grader":45s} {"n":>8s} {"seconds":>9s} {"gradings/s":>12s} {"target":>8s}')
  for r in rows:
    target = '' if r['target'] is None else f'{r["target"]:,}' + (' ok' if r['meets_target'] else ' MISS')
    print(f'{r["grader"]:45s} {r["n"]:8d} {r["seconds"]:9.3f} {r["per_s"]:12,.0f} {target:>8s}')
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(
    json.dumps(
      {
        'num_workers': args.num_workers,
        'cpu_count': os.cpu_count(),
        'python': platform.python_version(),
        'sandbox': f'bubblewrap {sandbox.bwrap}' if sandbox.available else f'none: {sandbox.reason}',
        'loadavg_before': load_before,
        'loadavg_after': os.getloadavg(),
        'rows': rows,
      },
      indent=1,
    )
  )
  print(
    f'sandbox: {"bubblewrap" if sandbox.available else "none"}; load average before {load_before[0]:.2f}, after '
    f'{os.getloadavg()[0]:.2f}'
  )
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
