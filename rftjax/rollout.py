"""One step's experience on the host: sample G completions per prompt, decode, grade, shape into a batch.

Everything here is this process's rows only (on a pod slice each host samples, decodes and grades its own slice of
the global batch); `to_global` assembles the device batch from every host's rows, and `allmean` reduces metrics.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from rftjax import graders
from rftjax import grpo
from rftjax import sampler as sampler_lib
from rftjax import sharding
from rftjax import train_step as step_lib


@dataclasses.dataclass
class Rollout:
  """Host-local rows, G consecutive rows per prompt."""

  prompt_tokens: np.ndarray  # [R, P]
  prompt_mask: np.ndarray  # [R, P]
  tokens: np.ndarray  # [R, N]
  mask: np.ndarray  # [R, N] float32
  logprobs: np.ndarray  # [R, N]
  lengths: np.ndarray  # [R]
  truncated: np.ndarray  # [R]
  rewards: np.ndarray  # [R] float32
  results: list  # [R] GradeResult
  texts: list  # [R] str

  def take_groups(self, groups: np.ndarray, g: int) -> 'Rollout':
    rows = (np.asarray(groups)[:, None] * g + np.arange(g)[None]).reshape(-1)
    pick = lambda x: [x[i] for i in rows] if isinstance(x, list) else x[rows]  # noqa: E731
    return Rollout(**{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)})

  @staticmethod
  def concat(parts: list['Rollout']) -> 'Rollout':
    def join(name):
      values = [getattr(p, name) for p in parts]
      return sum(values, []) if isinstance(values[0], list) else np.concatenate(values)

    return Rollout(**{f.name: join(f.name) for f in dataclasses.fields(Rollout)})


def local_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in global order."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  shards = {}
  for shard in x.addressable_shards:
    shards.setdefault(shard.index[0].start or 0, shard.data)
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def to_global(mesh, x: np.ndarray):
  """Global array from every process's rows (rows split over data x fsdp)."""
  s = sharding.data_sharding(mesh, x.ndim)
  if jax.process_count() == 1:
    return jax.device_put(x, s)
  return jax.make_array_from_process_local_data(s, x)


def allmean(values: dict[str, float]) -> dict[str, float]:
  """Per-host metrics -> global ones (hosts hold equal numbers of rows): means average, `*num_graded` sums,
  `*_max` takes the max, and `X_std` pools with its `X_mean` (total variance = mean of variances + variance of means).
  """
  if jax.process_count() == 1 or not values:
    return values
  keys = sorted(values)
  gathered = multihost_utils.process_allgather(np.asarray([values[k] for k in keys], np.float64))
  g = np.asarray(gathered).reshape(jax.process_count(), -1)
  out = {}
  for i, k in enumerate(keys):
    col = g[:, i]
    if k.endswith('num_graded'):
      out[k] = float(col.sum())
    elif k.endswith('_max'):
      out[k] = float(col.max())
    elif k.endswith('_std') and k[:-4] + '_mean' in values:
      m = g[:, keys.index(k[:-4] + '_mean')]
      out[k] = float(np.sqrt(max(np.mean(col**2 + m**2) - np.mean(m) ** 2, 0.0)))
    else:
      out[k] = float(col.mean())
  return out


def any_host(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.asarray(multihost_utils.process_allgather(np.asarray([flag]))).any())


def sample(sampler: sampler_lib.Sampler, params, prompts: list[list[int]], tok, rng, mesh) -> Rollout:
  """Samples and decodes this host's rows (already repeated G times); rewards and results are not filled yet."""
  p_tokens, p_mask = sampler_lib.pad_prompts(prompts, sampler.max_prompt_len, sampler.pad_id)
  out = sampler(params, to_global(mesh, p_tokens), to_global(mesh, p_mask), rng)
  tokens, mask, logprobs, lengths, truncated = (
    local_rows(a) for a in (out.tokens, out.mask, out.logprobs, out.lengths, out.truncated)
  )
  texts = [tok.decode(row[:n]) for row, n in zip(tokens, lengths)]
  return Rollout(
    p_tokens,
    p_mask,
    tokens,
    mask.astype(np.float32),
    logprobs,
    lengths,
    truncated,
    np.zeros(len(texts), np.float32),
    [None] * len(texts),
    texts,
  )


def with_grades(r: Rollout, results: list) -> Rollout:
  r.results = results
  r.rewards = np.asarray([res.reward for res in results], np.float32)
  return r


def sample_and_grade(
  sampler: sampler_lib.Sampler, params, prompts: list[list[int]], items: list[dict], tok, grader, pool, rng, mesh
) -> tuple[Rollout, float, float]:
  """sample() then grade in the pool. Returns (rollout, sampling_s, grading_s)."""
  t0 = time.perf_counter()
  r = sample(sampler, params, prompts, tok, rng, mesh)
  t1 = time.perf_counter()
  return with_grades(r, pool.grade(grader, r.texts, items)), t1 - t0, time.perf_counter() - t1


def make_batch(r: Rollout, grpo_cfg, g: int, max_new_tokens: int, mesh) -> step_lib.Batch:
  """The global device batch: advantages from the (overlong-shaped) rewards, the loss mask (truncations masked
  out when configured)."""
  rewards = r.rewards.astype(np.float32)
  if grpo_cfg.overlong_buffer > 0:
    rewards = rewards + grpo.overlong_penalty(
      r.lengths, max_new_tokens, grpo_cfg.overlong_buffer, grpo_cfg.overlong_penalty
    )
  scale = grpo_cfg.scale_rewards if grpo_cfg.advantage == 'grpo' else None
  advantages = np.asarray(
    grpo.compute_advantages(jnp.asarray(rewards), g, method=grpo_cfg.advantage, scale=scale), np.float32
  )
  mask = r.mask
  if grpo_cfg.mask_truncated:
    mask = grpo.truncation_mask(mask, r.truncated)
  batch = step_lib.Batch(
    prompt_tokens=to_global(mesh, r.prompt_tokens),
    prompt_mask=to_global(mesh, r.prompt_mask),
    completion_tokens=to_global(mesh, r.tokens),
    completion_mask=to_global(mesh, mask),
    advantages=to_global(mesh, advantages),
    sampler_logp=to_global(mesh, r.logprobs),
  )
  return batch


def rollout_metrics(r: Rollout, g: int, prefix: str = 'train') -> dict[str, float]:
  m = graders.summarize(r.results, prefix=prefix)
  keep = grpo.dynamic_sampling_keep(r.rewards, g)
  m.update(
    {
      f'{prefix}_reward_std': float(r.rewards.std()),
      'zero_std_group_frac': float(1.0 - keep.mean()),
      'completion_len_mean': float(r.lengths.mean()),
      'completion_len_max': float(r.lengths.max()),
      'truncated_frac': float(r.truncated.mean()),
    }
  )
  return m


def collect(sample_fn, batch_prompts: int, g: int, *, dynamic: bool, max_rounds: int) -> tuple[Rollout, int]:
  """Gathers one step's rollout; with DAPO dynamic sampling, keeps only groups whose rewards differ.

  sample_fn(attempt) -> Rollout of `batch_prompts` fresh prompts x g samples (this host's rows). Without dynamic
  sampling that is the step's batch. With it, zero-variance groups (no advantage, no gradient) are dropped and more
  prompts are sampled, up to `max_rounds` extra rounds (all hosts take the same number); a shortfall is filled with
  dropped groups whose loss mask is zeroed, so shapes stay fixed and nothing without signal is trained on.
  Returns (rollout of batch_prompts * g rows, rounds taken).
  """
  rows = batch_prompts * g
  kept, dropped = [], []
  for attempt in range(1 + (max_rounds if dynamic else 0)):
    r = sample_fn(attempt)
    if not dynamic:
      return r, 1
    keep = grpo.dynamic_sampling_keep(r.rewards, g)
    kept.append(r.take_groups(np.flatnonzero(keep), g))
    dropped.append(r.take_groups(np.flatnonzero(~keep), g))
    if not any_host(sum(len(k.rewards) for k in kept) < rows):
      break
  n_signal = min(sum(len(k.rewards) for k in kept), rows)
  out = Rollout.concat(kept + dropped).take_groups(np.arange(batch_prompts), g)
  out.mask = out.mask.copy()
  out.mask[n_signal:] = 0.0
  return out, attempt + 1
