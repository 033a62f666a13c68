"""What a wide `data.max_prompt_len` costs short prompts when sampling: the sampler at the full width against
`rollout.sample`, which cuts the prompts to a bucket of the longest one (the same completions: padding is masked).

  python benchmarks/prompt_padding.py --model smollm2_135m --max_prompt_len 256 --prompt_len 24 --batch 32

Both sides sample the same `--batch` prompts of real text (the longest `--prompt_len` tokens, left-padded) with the
same weights and key, greedy, `--new_tokens` tokens each with stopping disabled; each is compiled and warmed up
once, then `--repeats` timed calls alternate the two and the medians are reported. The completions are checked
to be identical. The markdown table is printed last; the JSON (load averages, versions) goes to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sampler_bench  # noqa: E402
from rftjax import pretrained  # noqa: E402
from rftjax import rollout  # noqa: E402
from rftjax import sampler as sampler_lib  # noqa: E402
from rftjax import tokenizer as tokenizer_lib  # noqa: E402
from rftjax import weights  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--model', default='smollm2_135m', choices=sorted(sampler_bench.MODELS))
  ap.add_argument('--max_prompt_len', type=int, default=256)
  ap.add_argument('--prompt_len', type=int, default=24, help='the longest prompt, in tokens')
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--new_tokens', type=int, default=32)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--out', default=None, help='default: benchmarks/results/prompt_padding_<model>.json')
  args = ap.parse_args()
  load_start = os.getloadavg()

  path = pathlib.Path(pretrained.resolve(sampler_bench.MODELS[args.model]).partition(':')[2])
  cfg = weights.config_from_file(f'gguf:{path}', args.model)
  tok = tokenizer_lib.load_tokenizer(f'gguf:{path}')
  params, _ = sampler_bench.load_params(cfg, path)
  prompts = sampler_bench.make_prompts(tok, args.batch, args.prompt_len)
  s = sampler_lib.Sampler(cfg, args.max_prompt_len, args.new_tokens, stop_ids=(), pad_id=tok.pad_id,
                          params=sampler_lib.SamplingParams(temperature=0.0))  # fmt: skip
  tokens, mask = sampler_lib.pad_prompts(prompts, args.max_prompt_len, tok.pad_id)
  key = jax.random.key(0)
  sides = {
    'full width': lambda: jax.device_get(s(params, tokens, mask, key)).tokens,
    'cut to a bucket': lambda: rollout.sample(s, params, prompts, tok, key, mesh=None).tokens,
  }
  outs, times = {}, {name: [] for name in sides}
  for name, f in sides.items():  # compile and warm up
    t0 = time.perf_counter()
    outs[name] = np.asarray(f())
    sampler_bench.log(f'{name}: first call (compile included) {time.perf_counter() - t0:.1f} s')
  if not np.array_equal(outs['full width'], outs['cut to a bucket']):
    raise SystemExit('the completions differ')
  for _ in range(args.repeats):
    for name, f in sides.items():
      t0 = time.perf_counter()
      f()
      times[name].append(time.perf_counter() - t0)
  med = {name: statistics.median(ts) for name, ts in times.items()}
  load_end = os.getloadavg()
  width = rollout.bucket(max(map(len, prompts)), args.max_prompt_len)
  result = {
    'model': args.model,
    'max_prompt_len': args.max_prompt_len,
    'longest_prompt': max(map(len, prompts)),
    'bucket': width,
    'batch': args.batch,
    'new_tokens': args.new_tokens,
    'seconds': times,
    'median_s': med,
    'speedup': med['full width'] / med['cut to a bucket'],
    'nproc': os.cpu_count(),
    'cpu': sampler_bench.cpu_name(),
    'load_average': {'start': load_start, 'end': load_end},
    'versions': {'jax': jax.__version__, 'python': platform.python_version()},
  }
  out = pathlib.Path(args.out or pathlib.Path(__file__).parent / 'results' / f'prompt_padding_{args.model}.json')
  out.write_text(json.dumps(result, indent=2) + '\n')
  print(
    f'{args.model}, greedy, {args.batch} prompts of <= {result["longest_prompt"]} tokens, data.max_prompt_len '
    f'{args.max_prompt_len}, {args.new_tokens} new tokens, median of {args.repeats}; load average '
    f'{load_start[0]:.2f} -> {load_end[0]:.2f} on nproc={os.cpu_count()}\n'
  )
  print('| prompts padded to | seconds per call | speed-up |\n|---|---:|---:|')
  print(f'| {args.max_prompt_len} (full width) | {med["full width"]:.2f} | 1.00x |')
  print(f'| {width} (bucket of the longest) | {med["cut to a bucket"]:.2f} | {result["speedup"]:.2f}x |')


if __name__ == '__main__':
  main()
