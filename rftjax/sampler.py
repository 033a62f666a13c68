"""Sampling: one compiled program per shape — prefill, then a `lax.while_loop` decode over a static KV cache.

Prompts are left-padded to `max_prompt_len`, so every row's next token lands in the same cache slot and one
`dynamic_update_slice` serves the whole batch. The loop stops at `max_new_tokens`, or as soon as every row has
emitted a stop token. It returns the completion tokens, a mask (1 up to and including the stop token), and the
log-probability of each sampled token under the temperature-scaled policy (before top-k/top-p truncation), which
is what the trainer recomputes.

With `group_size` G > 1 (GRPO: G completions of each prompt, in consecutive rows) each distinct prompt is prefilled
once and its KV cache repeated to its G rows; `grouped` says whether rows are laid out that way.

A row stops on a single stop token (`stop_ids`) or when its last tokens equal a multi-token stop sequence
(`stop_seqs`, matched inside the loop). Episodes (tool calls, episodes.py) sample turn after turn: `start` returns
a `Context` as well, and `resume` prefills only the next turn's new tokens into the same cache before decoding on.
"""

from __future__ import annotations

import dataclasses
import math
import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rftjax import kvcache
from rftjax import lora as lora_lib
from rftjax import model as model_lib


# A temperature between 0 and this is refused: greedy in all but name (vLLM samples greedily below it), and small
# enough ones make logits / T overflow float32 (1e-38: NaN logprobs, a token id past the vocabulary).
MIN_TEMPERATURE = 1e-5


def params_problem(temperature, top_p, top_k) -> str | None:
  """What is wrong with these sampling values, in words naming the field ('temperature: ...'), or None. One check
  for configs, command-line flags, graders' sampling_params and SamplingParams."""
  number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)  # noqa: E731
  if not number(temperature) or temperature < 0 or 0 < temperature < MIN_TEMPERATURE:
    return f'temperature: expected 0 (greedy) or a number >= {MIN_TEMPERATURE:g}, got {temperature!r}'
  if not number(top_p) or not 0 < top_p <= 1:
    return f'top_p: expected a number in (0, 1] (1 = off), got {top_p!r}'
  if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
    return f'top_k: expected an integer >= 0 (0 = off), got {top_k!r}'
  return None


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """temperature 0 = greedy. top_k 0 and top_p 1.0 disable those filters."""

  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0

  def __post_init__(self):
    problem = params_problem(self.temperature, self.top_p, self.top_k)
    if problem:
      raise ValueError(f'SamplingParams.{problem}')


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
  recent: jax.Array  # [B, W] the row's last W tokens this turn, for multi-token stops


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
    token = greedy(logits)
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
      cutoff_idx = jnp.maximum(cutoff_idx, 0)  # the most likely token always stays
      cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
      filtered = jnp.where(filtered < cutoff, -jnp.inf, filtered)
    token = draw(filtered, rng)
  return token, jnp.take_along_axis(scaled, token[:, None], axis=-1)[:, 0] - lse


def _blocks(logits, block: int):
  """[B, V] logits as [B, ceil(V / block), block], the last block padded with -inf: `greedy` and `draw` search
  the vocabulary block by block."""
  b, v = logits.shape
  nb = -(-v // block)
  return jnp.pad(logits, ((0, 0), (0, nb * block - v)), constant_values=-jnp.inf).reshape(b, nb, block)


def greedy(logits, block: int = 256):
  """jnp.argmax(logits, axis=-1) of [B, V] logits (the first index of the largest value; NaN counts as largest),
  found in two levels: each block of `block` tokens' maximum, then the first block holding the largest, then the
  token in it. XLA:CPU runs a vocabulary-wide argmax as one serial loop per row: 15.8 ms against 0.8 ms at 32 rows
  of Gemma 3's 262k vocabulary, about a tenth of a greedy decode step (docs/benchmarks.md)."""
  blocks = _blocks(logits, block)
  k = jnp.argmax(jnp.max(blocks, axis=-1), axis=-1)
  j = jnp.argmax(jnp.take_along_axis(blocks, k[:, None, None], axis=1)[:, 0], axis=-1)
  return (k * block + j).astype(jnp.int32)


def draw(logits, rng, block: int = 256):
  """One token per row of [B, V] logits, with probability softmax(logits) (-inf: never): the inverse of the
  distribution function at one uniform number per row, found in two levels (the block of `block` tokens, then the
  token in it), so nothing is serial over the vocabulary.

  jax.random.categorical's Gumbel-max needs a random number and two logarithms per vocabulary entry and row, every
  decode step: with Gemma 3's 262k vocabulary that made 64-row sampling 1.6x slower on CPU (docs/benchmarks.md)."""
  blocks = _blocks(logits, block)
  p = jnp.exp(blocks - jnp.max(blocks, axis=(1, 2), keepdims=True))
  sums = jnp.sum(p, axis=-1)
  ends = jnp.cumsum(sums, axis=-1)  # [B, nb]: mass up to the end of each block
  u = jax.random.uniform(rng, (logits.shape[0], 1)) * ends[:, -1:]

  def first_over(cum, x, mass):
    """The first index whose cumulative mass passes x; float rounding can leave the total a hair under x, and then
    the last index with mass."""
    over = cum > x
    last = mass.shape[-1] - 1 - jnp.argmax(mass[:, ::-1] > 0, axis=-1)
    return jnp.where(over.any(axis=-1), jnp.argmax(over, axis=-1), last)

  k = first_over(ends, u, sums)
  p_k = jnp.take_along_axis(p, k[:, None, None], axis=1)[:, 0]  # [B, block]
  before = jnp.where(k > 0, jnp.take_along_axis(ends, jnp.maximum(k - 1, 0)[:, None], axis=1)[:, 0], 0.0)
  j = first_over(jnp.cumsum(p_k, axis=-1), (u[:, 0] - before)[:, None], p_k)
  # a row with no finite mass (NaN logits of a diverged model) lands in the padding: an id of the vocabulary still
  return jnp.minimum(k * block + j, logits.shape[-1] - 1).astype(jnp.int32)


@flax.struct.dataclass
class Context:
  """Where an episode's sampling left off, so that the next turn prefills only its own new tokens.

  Slots [0, slot) of the cache are written; `key_mask` says which of them hold real tokens (a row that stopped
  early leaves masked holes, which attention skips). `position` is each row's next RoPE position: positions stay
  contiguous per row whatever the holes, so a continued episode computes what one forward over its transcript
  computes (tests/test_episodes.py)."""

  cache: dict
  key_mask: jax.Array  # [B, S] bool
  slot: jax.Array  # [] int32: the first free slot, the same for every row
  position: jax.Array  # [B] int32


def stop_tokens(tok, strings: Sequence[str]) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
  """(single stop ids, multi-token stop sequences): the tokenizer's EOS and turn-end ids, then each string's token
  ids as the tokenizer encodes it alone (a one-token string joins the single ids)."""
  ids, seqs = list(tok.stop_ids), []
  unk = getattr(tok, 'unk_id', None)
  for s in strings:
    enc = tuple(tok.encode(s))
    if not enc:
      raise ValueError(f'stop string {s!r} encodes to no tokens')
    if unk is not None and unk in enc and s != tok.id_to_token(unk):  # the model writes no unknown: it never stops
      odd = tok.unspellable(s)
      raise ValueError(
        f'stop string {s!r} has characters the tokenizer cannot spell ({odd!r} encode to its unknown token '
        f'{tok.id_to_token(unk)!r}), so no completion ever ends with it; expected text the tokenizer spells'
      )
    if len(enc) == 1:
      ids.append(enc[0])
    else:
      seqs.append(enc)
  return tuple(dict.fromkeys(ids)), tuple(dict.fromkeys(seqs))


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
  stop_seqs: tuple[tuple[int, ...], ...] = ()  # multi-token stops: a row ends when its last tokens equal one
  context_len: int = 0  # cache slots; 0: one turn (max_prompt_len + max_new_tokens). Episodes need room for all

  @property
  def slots(self) -> int:
    return self.context_len or self.max_prompt_len + self.max_new_tokens

  @property
  def tools(self) -> tuple:
    """None: one turn calls no tools (episodes.Agent, which samples through a Sampler, has its own)."""
    return ()

  def __call__(self, weights, prompt_tokens, prompt_mask, rng) -> SampleOutput:
    return self.start(weights, prompt_tokens, prompt_mask, rng, keep_context=False)[0]

  def start(self, weights, prompt_tokens, prompt_mask, rng, *, keep_context: bool = True):
    """The first turn: (SampleOutput, Context to `resume` from, or None without keep_context)."""
    if prompt_tokens.shape[0] % self.group_size:
      raise ValueError(f'{prompt_tokens.shape[0]} rows are not groups of group_size={self.group_size}')
    if prompt_tokens.shape[1] > self.max_prompt_len:  # the cache has no room: writes past it would be clamped
      raise ValueError(
        f'prompts of {prompt_tokens.shape[1]} tokens; expected at most max_prompt_len={self.max_prompt_len}'
      )
    tokens, mask = jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_mask, bool)
    return _start(self, weights, tokens, mask, rng, keep_context)

  def resume(self, weights, context: Context, block_tokens, block_mask, live, rng) -> tuple[SampleOutput, Context]:
    """The next turn of an episode: prefill each row's new tokens (left-padded [B, T], e.g. a tool result and the
    template's next assistant header) after the context, then decode. Rows with `live` False stay silent. The
    cache must have room for every turn (`context_len`; episodes.Agent checks it before the first turn)."""
    tokens, mask = jnp.asarray(block_tokens, jnp.int32), jnp.asarray(block_mask, bool)
    return _resume(self, weights, context, tokens, mask, jnp.asarray(live, bool), rng)


def _prefill(s: Sampler, weights, cache, key_mask, slot, position, tokens, mask, g: int, shared: bool = False):
  """Writes a left-padded block at `slot` (one row per group of g identical rows); returns the last token's logits
  [B, V], the cache (its rows repeated g times, unless `shared`: the groups' prompt cache, one row per group),
  the key mask and each row's next position."""
  key_mask = jax.lax.dynamic_update_slice_in_dim(key_mask, mask, slot, axis=1)
  positions = position[:, None] + jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
  hidden, cache = model_lib.forward(
    weights,
    s.cfg,
    tokens[::g],
    positions[::g],
    key_mask[::g, : kvcache.slots(cache)],  # a shared prompt cache has the prompt's slots only
    cache=cache,
    cache_index=slot,
    dtype=jnp.dtype(s.compute_dtype),
    return_hidden=True,
  )
  logits = model_lib.unembed(weights, s.cfg, hidden[:, -1:])[:, 0]
  if g > 1:  # transformers' generate(num_return_sequences=G) prefills G copies
    if not shared:
      cache = kvcache.constrain(jax.tree.map(lambda c: jnp.repeat(c, g, axis=1), cache))
    logits = jnp.repeat(logits, g, axis=0)
  return logits, cache, key_mask, position + jnp.sum(mask, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _start(s: Sampler, weights, prompt_tokens, prompt_mask, rng, keep_context: bool):
  (b, p), g = prompt_tokens.shape, s.group_size
  init = lambda rows, slots: kvcache.constrain(kvcache.init(s.cfg, rows, slots, s.cache_dtype))  # noqa: E731
  zero, done, key_mask = jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool), jnp.zeros((b, s.slots), bool)
  # one turn of groups: each prompt's keys and values stay in a cache of their own, one row per group, read by the
  # group's G rows at every decode step, and the rows' cache holds only what they generate. Episodes continue
  # from a cache of whole rows (Context).
  shared = g > 1 and not keep_context
  weights = _for_decoding(s, weights)
  cache = init(b // g, p if shared else s.slots)
  logits, cache, key_mask, position = _prefill(
    s, weights, cache, key_mask, 0, zero, prompt_tokens, prompt_mask, g, shared=shared
  )
  rows, prompts = (init(b, s.slots - p), cache) if shared else (cache, None)
  out, ctx = _decode(s, weights, rows, key_mask, p, position, logits, done, rng, prompts)
  return out, (ctx if keep_context else None)


@functools.partial(jax.jit, static_argnums=0)
def _resume(s: Sampler, weights, ctx: Context, tokens, mask, live, rng):
  weights = _for_decoding(s, weights)
  logits, cache, key_mask, position = _prefill(s, weights, ctx.cache, ctx.key_mask, ctx.slot, ctx.position, tokens,
                                               mask, 1)  # fmt: skip
  return _decode(s, weights, cache, key_mask, ctx.slot + tokens.shape[1], position, logits, ~live, rng)


def _for_decoding(s: Sampler, weights):
  """The weights the call decodes with: LoRA adapters merged into a float32 base computed in float32
  (`lora.merged_for_sampling`), and on CPU the layers split once per call (`model.split_layers`, merging on the
  way): decode steps up to 1.45x faster (SmolLM2, 32 rows; docs/benchmarks.md) for one more copy of the layers
  while sampling."""
  merge = lora_lib.merged_for_sampling(weights, s.cfg.lora, s.compute_dtype)
  if jax.default_backend() == 'cpu':
    return model_lib.split_layers(weights, s.cfg, jnp.dtype(s.compute_dtype), merge)
  return lora_lib.merge(weights, s.cfg.lora) if merge else weights


def _decode(s: Sampler, weights, cache, key_mask, base, position, logits, done, rng, shared=None):
  """The `lax.while_loop` from the prefill's last logits: token k of the turn goes to slot base + k. shared: the
  groups' prompt cache (`model.forward`); `cache` then holds the slots after it. Returns (SampleOutput, Context)."""
  cfg, n = s.cfg, s.max_new_tokens
  b = logits.shape[0]
  dtype = jnp.dtype(s.compute_dtype)
  rng, sub = jax.random.split(rng)
  token, logprob = choose(logits, sub, s.params)
  stop_ids = jnp.asarray(s.stop_ids, jnp.int32)
  width = max((len(q) for q in s.stop_seqs), default=1)
  # multi-token stops, right-aligned in a [Q, width] table; -1 marks unused columns (matches anything). Q may be 0:
  # then no row ever matches
  seqs = np.full((len(s.stop_seqs), width), -1, np.int32)
  for i, q in enumerate(s.stop_seqs):
    seqs[i, width - len(q) :] = q
  seqs = jnp.asarray(seqs)

  state = _LoopState(
    step=jnp.int32(0),
    token=token,
    logprob=logprob,
    done=done,
    tokens=jnp.full((b, n), s.pad_id, jnp.int32),
    logprobs=jnp.zeros((b, n), jnp.float32),
    mask=jnp.zeros((b, n), jnp.float32),
    cache=cache,
    key_mask=key_mask,
    position=position,
    rng=rng,
    recent=jnp.full((b, width), -3, jnp.int32),
  )

  def cond(st: _LoopState):
    return (st.step < n) & ~jnp.all(st.done)

  def body(st: _LoopState):
    live = ~st.done
    tokens = st.tokens.at[:, st.step].set(jnp.where(live, st.token, s.pad_id))
    logprobs = st.logprobs.at[:, st.step].set(jnp.where(live, st.logprob, 0.0))
    mask = st.mask.at[:, st.step].set(live.astype(jnp.float32))
    recent = jnp.concatenate([st.recent[:, 1:], st.token[:, None]], axis=1)
    hit = jnp.any(jnp.all((recent[:, None, :] == seqs[None]) | (seqs[None] == -1), axis=-1), axis=-1)
    done = st.done | jnp.isin(st.token, stop_ids) | hit
    slot = base + st.step
    key_mask = jax.lax.dynamic_update_slice_in_dim(st.key_mask, live[:, None], slot, axis=1)
    hidden, cache = model_lib.forward(
      weights,
      cfg,
      st.token[:, None],
      st.position[:, None],
      key_mask,
      cache=st.cache,
      cache_index=slot,
      shared=shared,
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
      recent=recent,
    )

  state = jax.lax.while_loop(cond, body, state)
  lengths = jnp.sum(state.mask, axis=1).astype(jnp.int32)
  out = SampleOutput(
    tokens=state.tokens, mask=state.mask, logprobs=state.logprobs, lengths=lengths, truncated=~state.done
  )
  ctx = Context(state.cache, state.key_mask, jnp.asarray(base + state.step, jnp.int32), position + lengths)
  return out, ctx


def generate(
  weights,
  cfg: model_lib.TransformerConfig,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  stop_ids: Sequence[int],
  stop_seqs: Sequence[Sequence[int]] = (),
  pad_id: int = 0,
  params: SamplingParams = SamplingParams(temperature=0.0),
  seed: int = 0,
  max_prompt_len: int | None = None,
) -> list[list[int]]:
  """Convenience for tests and CLIs: token lists in, completion token lists (through the stop token) out."""
  max_prompt_len = max_prompt_len or max(len(p) for p in prompts)
  tokens, mask = pad_prompts(prompts, max_prompt_len, pad_id)
  seqs = tuple(tuple(q) for q in stop_seqs)
  sampler = Sampler(cfg, max_prompt_len, max_new_tokens, tuple(stop_ids), pad_id, params, stop_seqs=seqs)
  out = jax.device_get(sampler(weights, tokens, mask, jax.random.key(seed)))
  return [list(map(int, row[:length])) for row, length in zip(out.tokens, out.lengths)]
