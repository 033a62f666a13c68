"""Sampling: one compiled program per shape — prefill, then a `lax.while_loop` decode over a static KV cache.

Prompts are left-padded to `max_prompt_len`, so every row's next token lands in the same cache slot and one
`dynamic_update_slice` serves the whole batch. The loop stops at `max_new_tokens`, or as soon as every row has
emitted a stop token. It returns the completion tokens, a mask (1 up to and including the stop token), and the
log-probability of each sampled token under the temperature-scaled policy (before top-k/top-p truncation), which
is what the trainer recomputes.

With `group_size` G > 1 (GRPO: G completions of each prompt, in consecutive rows) each distinct prompt is prefilled
once and its KV cache repeated to its G rows; `grouped` says whether rows are laid out that way.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rftjax import model as model_lib
from rftjax import sharding


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """temperature 0 = greedy. top_k 0 and top_p 1.0 disable those filters."""

  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0


@flax.struct.dataclass
class SampleOutput:
  tokens: jax.Array  # [B, N] int32, pad after the stop token
  mask: jax.Array  # [B, N] float32, 1 for generated tokens up to and including the stop token
  logprobs: jax.Array  # [B, N] float32, sampling logprobs (0 where mask is 0)
  lengths: jax.Array  # [B] int32
  truncated: jax.Array  # [B] bool: hit max_new_tokens without a stop token


@flax.struct.dataclass
class _LoopState:
  step: jax.Array
  token: jax.Array  # [B] the token sampled last, not yet written into the cache
  logprob: jax.Array  # [B]
  done: jax.Array  # [B]
  tokens: jax.Array  # [B, N]
  logprobs: jax.Array  # [B, N]
  mask: jax.Array  # [B, N]
  cache: dict
  key_mask: jax.Array  # [B, S]
  position: jax.Array  # [B] position of `token`
  rng: jax.Array


def pad_prompts(prompts: Sequence[Sequence[int]], max_prompt_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to [B, max_prompt_len]; returns (tokens int32, mask bool)."""
  tokens = np.full((len(prompts), max_prompt_len), pad_id, np.int32)
  mask = np.zeros((len(prompts), max_prompt_len), bool)
  for i, p in enumerate(prompts):
    if len(p) > max_prompt_len:
      raise ValueError(f'prompt {i} has {len(p)} tokens, more than max_prompt_len={max_prompt_len}')
    if len(p):
      tokens[i, -len(p) :] = p
      mask[i, -len(p) :] = True
  return tokens, mask


def grouped(prompts: Sequence[Sequence[int]], g: int) -> bool:
  """Whether the rows are consecutive groups of `g` identical prompts (what `group_size=g` assumes)."""
  return len(prompts) % g == 0 and all(
    list(prompts[i]) == list(prompts[i - i % g]) for i in range(len(prompts)) if i % g
  )


def choose(logits, rng, params: SamplingParams):
  """Samples one token per row from [B, V] float32 logits. Returns (token, logprob under logits / T).

  The logprob is the chosen logit minus a logsumexp: a full [B, V] log-softmax would write a vocabulary-sized row
  (262k floats on Gemma 3) per row and decode step, only to read one value back."""
  scaled = logits if params.temperature <= 0 else logits / params.temperature
  lse = jax.nn.logsumexp(scaled, axis=-1)
  if params.temperature <= 0:
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  else:
    filtered = scaled
    if params.top_k and params.top_k < logits.shape[-1]:
      kth = jax.lax.top_k(scaled, params.top_k)[0][:, -1:]
      filtered = jnp.where(scaled < kth, -jnp.inf, filtered)
    if params.top_p < 1.0:
      sorted_logits = jnp.sort(filtered, axis=-1)[:, ::-1]
      cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
      # keep the smallest prefix whose mass reaches top_p (the token that crosses it stays)
      cutoff_idx = jnp.sum(cum - jax.nn.softmax(sorted_logits, axis=-1) < params.top_p, axis=-1, keepdims=True) - 1
      cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
      filtered = jnp.where(filtered < cutoff, -jnp.inf, filtered)
    token = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
  return token, jnp.take_along_axis(scaled, token[:, None], axis=-1)[:, 0] - lse


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Static description of a sampling program; hashable, so it is the jit cache key."""

  cfg: model_lib.TransformerConfig
  max_prompt_len: int
  max_new_tokens: int
  stop_ids: tuple[int, ...]
  pad_id: int = 0
  params: SamplingParams = SamplingParams()
  cache_dtype: str = 'float32'
  compute_dtype: str = 'float32'
  group_size: int = 1  # rows come in groups of this many identical prompts (GRPO's G): each group prefills once

  def __call__(self, weights, prompt_tokens, prompt_mask, rng) -> SampleOutput:
    if prompt_tokens.shape[0] % self.group_size:
      raise ValueError(f'{prompt_tokens.shape[0]} rows are not groups of group_size={self.group_size}')
    return _sample(self, weights, jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_mask, bool), rng)


@functools.partial(jax.jit, static_argnums=0)
def _sample(s: Sampler, weights, prompt_tokens, prompt_mask, rng) -> SampleOutput:
  cfg, n, g = s.cfg, s.max_new_tokens, s.group_size
  b, p = prompt_tokens.shape
  dtype = jnp.dtype(s.compute_dtype)
  key_mask = jnp.concatenate([prompt_mask, jnp.zeros((b, n), bool)], axis=1)
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
  # Prefill: one row per distinct prompt; its cache and last logits are then repeated to the group's G rows
  # (transformers' generate(num_return_sequences=G) prefills G copies)
  cache = model_lib.init_cache(cfg, b // g, p + n, jnp.dtype(s.cache_dtype))
  cache = jax.tree.map(lambda c: sharding.constrain(c, model_lib.CACHE_AXES), cache)
  hidden, cache = model_lib.forward(
    weights,
    cfg,
    prompt_tokens[::g],
    positions[::g],
    key_mask[::g],
    cache=cache,
    cache_index=0,
    dtype=dtype,
    return_hidden=True,
  )
  logits = model_lib.unembed(weights, cfg, hidden[:, -1:])[:, 0]
  if g > 1:
    cache = jax.tree.map(lambda c: sharding.constrain(jnp.repeat(c, g, axis=1), model_lib.CACHE_AXES), cache)
    logits = jnp.repeat(logits, g, axis=0)
  rng, sub = jax.random.split(rng)
  token, logprob = choose(logits, sub, s.params)
  stop_ids = jnp.asarray(s.stop_ids, jnp.int32)

  state = _LoopState(
    step=jnp.int32(0),
    token=token,
    logprob=logprob,
    done=jnp.zeros((b,), bool),
    tokens=jnp.full((b, n), s.pad_id, jnp.int32),
    logprobs=jnp.zeros((b, n), jnp.float32),
    mask=jnp.zeros((b, n), jnp.float32),
    cache=cache,
    key_mask=key_mask,
    position=positions[:, -1] + 1,
    rng=rng,
  )

  def cond(st: _LoopState):
    return (st.step < n) & ~jnp.all(st.done)

  def body(st: _LoopState):
    live = ~st.done
    tokens = st.tokens.at[:, st.step].set(jnp.where(live, st.token, s.pad_id))
    logprobs = st.logprobs.at[:, st.step].set(jnp.where(live, st.logprob, 0.0))
    mask = st.mask.at[:, st.step].set(live.astype(jnp.float32))
    done = st.done | jnp.isin(st.token, stop_ids)
    slot = p + st.step
    key_mask = jax.lax.dynamic_update_slice_in_dim(st.key_mask, live[:, None], slot, axis=1)
    hidden, cache = model_lib.forward(
      weights,
      cfg,
      st.token[:, None],
      st.position[:, None],
      key_mask,
      cache=st.cache,
      cache_index=slot,
      dtype=dtype,
      return_hidden=True,
    )
    logits = model_lib.unembed(weights, cfg, hidden)[:, 0]
    rng, sub = jax.random.split(st.rng)
    token, logprob = choose(logits, sub, s.params)
    return _LoopState(
      step=st.step + 1,
      token=token,
      logprob=logprob,
      done=done,
      tokens=tokens,
      logprobs=logprobs,
      mask=mask,
      cache=cache,
      key_mask=key_mask,
      position=st.position + 1,
      rng=rng,
    )

  state = jax.lax.while_loop(cond, body, state)
  lengths = jnp.sum(state.mask, axis=1).astype(jnp.int32)
  return SampleOutput(
    tokens=state.tokens, mask=state.mask, logprobs=state.logprobs, lengths=lengths, truncated=~state.done
  )


def generate(
  weights,
  cfg: model_lib.TransformerConfig,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  stop_ids: Sequence[int],
  pad_id: int = 0,
  params: SamplingParams = SamplingParams(temperature=0.0),
  seed: int = 0,
  max_prompt_len: int | None = None,
) -> list[list[int]]:
  """Convenience for tests and CLIs: token lists in, completion token lists (through the stop token) out."""
  max_prompt_len = max_prompt_len or max(len(p) for p in prompts)
  tokens, mask = pad_prompts(prompts, max_prompt_len, pad_id)
  sampler = Sampler(cfg, max_prompt_len, max_new_tokens, tuple(stop_ids), pad_id, params)
  out = jax.device_get(sampler(weights, tokens, mask, jax.random.key(seed)))
  return [list(map(int, row[:length])) for row, length in zip(out.tokens, out.lengths)]
