"""A decoder-only transformer: one model for every preset of rftjax/presets.py (tiny, Gemma 3, Llama, SmolLM2, Qwen).

Einsum alphabet, used everywhere in rftjax:
  B batch, T query length, S key length, D model dim, N query heads, K kv heads, G query heads per kv head,
  H head dim, F hidden (MLP) dim, V vocab, L layers, C rows per part (training's GRPO groups packed into rows,
  see `forward_grouped`), W tokens per such row.

Parameters live in `Transformer` (an `nnx.Module`) as `nnx.Param`s whose `axes` metadata names their logical
axes; `sharding.py` turns those names into mesh shardings. Hot paths never call the module: they take the
pure-dict params (`nnx.state(model, nnx.Param).to_pure_dict()`) and call `forward` under `jax.jit`.
Per-layer tensors are stacked on a leading L axis and the layer stack runs under `lax.scan`, so compile time does
not grow with depth; the layer kind (local sliding-window vs global) and RoPE table are scanned inputs. Decoding
on CPU runs the same layer over per-layer arrays instead (`split_layers`).

LoRA (`cfg.lora`, rftjax/lora.py): every linear of `lora.LINEARS` may carry a low-rank adapter in
`params['lora']`; `_linear` adds it to the frozen weight's einsum, so there is one forward with or without
adapters, and params without a 'lora' subtree run the base model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rftjax import kvcache
from rftjax import lora as lora_lib
from rftjax import products
from rftjax import sharding

Params = dict[str, Any]
Cache = kvcache.Cache


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture. Presets live in rftjax/presets.py; `dataclasses.replace` makes variants."""

  name: str
  family: str  # 'tiny' | 'gemma3' | 'llama' (Llama, SmolLM2, Qwen 2.5: one family, options differ)
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  activation: str = 'silu'  # 'silu' | 'gelu_tanh'
  norm_eps: float = 1e-6
  norm_offset: float = 0.0  # Gemma scales by (1 + w): offset 1.0, weights stored as HF stores them
  rope_base: float = 10_000.0
  rope_base_local: float | None = None  # Gemma 3: local layers use their own base
  rope_scale_global: float = 1.0  # linear position scaling on global layers (Gemma 3 4B+)
  rope_llama3: tuple[float, float, float, int] | None = None  # (factor, low_freq, high_freq, original_max_pos)
  sliding_window: int | None = None
  global_every: int = 0  # layer i is global when (i + 1) % global_every == 0; 0 = every layer global
  qk_norm: bool = False
  post_norms: bool = False  # Gemma: norms after attention and MLP too
  embed_scale: bool = False  # Gemma: embeddings times sqrt(D)
  tie_embeddings: bool = True
  qkv_bias: bool = False  # Qwen 2.5
  query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (default head_dim)
  final_softcap: float | None = None
  max_seq_len: int = 2048
  lora: lora_lib.LoRAConfig | None = None  # None: full fine-tuning (no adapters)

  # ---- derived -------------------------------------------------------------------------------------------
  def layer_is_local(self) -> np.ndarray:
    """[L] bool: True where the layer attends within the sliding window only."""
    if not self.sliding_window:
      return np.zeros(self.num_layers, bool)
    if self.global_every <= 0:
      return np.ones(self.num_layers, bool)
    return np.array([(i + 1) % self.global_every != 0 for i in range(self.num_layers)])

  def inv_freq(self) -> np.ndarray:
    """[L, H/2] float32 RoPE inverse frequencies, computed as Hugging Face does (f32 from int64 arange)."""

    def base_freq(base: float) -> np.ndarray:
      exponent = np.arange(0, self.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(self.head_dim)
      return (1.0 / (np.float32(base) ** exponent)).astype(np.float32)

    global_freq = base_freq(self.rope_base) / np.float32(self.rope_scale_global)
    if self.rope_llama3 is not None:  # Llama 3.1 frequency-dependent scaling of long wavelengths
      factor, low, high, orig = self.rope_llama3
      wavelen = 2 * math.pi / global_freq
      low_wl, high_wl = orig / low, orig / high
      scaled = np.where(wavelen > low_wl, global_freq / factor, global_freq)
      smooth = (orig / wavelen - low) / (high - low)
      smoothed = (1 - smooth) * scaled / factor + smooth * scaled
      mid = (wavelen >= high_wl) & (wavelen <= low_wl)
      global_freq = np.where(mid, smoothed, scaled).astype(np.float32)
    local_freq = base_freq(self.rope_base_local or self.rope_base)
    return np.where(self.layer_is_local()[:, None], local_freq[None], global_freq[None]).astype(np.float32)

  def attn_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def dims(self) -> tuple[int, int, int, int, int, int, int]:
    """(D, F, N, K, H, V, L) of the einsum alphabet."""
    return (
      self.d_model,
      self.mlp_dim,
      self.num_heads,
      self.num_kv_heads,
      self.head_dim,
      self.vocab_size,
      self.num_layers,
    )

  def num_params(self) -> int:
    """Parameters of the base model (adapters not counted)."""
    d, f, n, k, h, v, l = self.dims()  # noqa: E741  (l: the L of the einsum alphabet)
    per_layer = d * h * (2 * n + 2 * k) + 3 * d * f + 2 * d + (2 * d if self.post_norms else 0)
    per_layer += (2 * h if self.qk_norm else 0) + ((n + 2 * k) * h if self.qkv_bias else 0)
    return v * d * (1 if self.tie_embeddings else 2) + l * per_layer + d


# ---- parameters ----------------------------------------------------------------------------------------------
def _param(rngs: nnx.Rngs, init, shape, axes, dtype):
  return nnx.Param(init(rngs.params(), shape, dtype), axes=axes)


class Transformer(nnx.Module):
  """Parameter container. Attribute names are the params' pure-dict keys (weights.py maps onto them)."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    d, f, n, k, h, v, l = cfg.dims()  # noqa: E741  (l: the L of the einsum alphabet)
    dense = nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=-2, batch_axis=(0,))
    dense_in2 = nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=(-3, -2), batch_axis=(0,))
    normal = nnx.initializers.normal(1.0 / math.sqrt(d))
    norm_init = nnx.initializers.zeros if cfg.norm_offset else nnx.initializers.ones
    zeros = nnx.initializers.zeros
    p = lambda init, shape, axes: _param(rngs, init, shape, axes, param_dtype)  # noqa: E731
    norm = lambda shape, axes: nnx.Dict(scale=p(norm_init, shape, axes))  # noqa: E731

    self.embed = nnx.Dict(embedding=p(normal, (v, d), ('vocab', 'embed')))
    attn = dict(
      q=p(dense, (l, d, n, h), ('layers', 'embed', 'heads', 'head_dim')),
      k=p(dense, (l, d, k, h), ('layers', 'embed', 'kv_heads', 'head_dim')),
      v=p(dense, (l, d, k, h), ('layers', 'embed', 'kv_heads', 'head_dim')),
      o=p(dense_in2, (l, n, h, d), ('layers', 'heads', 'head_dim', 'embed')),
    )
    if cfg.qkv_bias:
      attn.update(
        q_bias=p(zeros, (l, n, h), ('layers', 'heads', 'head_dim')),
        k_bias=p(zeros, (l, k, h), ('layers', 'kv_heads', 'head_dim')),
        v_bias=p(zeros, (l, k, h), ('layers', 'kv_heads', 'head_dim')),
      )
    if cfg.qk_norm:
      attn.update(q_norm=norm((l, h), ('layers', 'norm')), k_norm=norm((l, h), ('layers', 'norm')))
    layers = dict(
      attn_norm=norm((l, d), ('layers', 'norm')),
      attn=nnx.Dict(**attn),
      mlp_norm=norm((l, d), ('layers', 'norm')),
      mlp=nnx.Dict(
        gate=p(dense, (l, d, f), ('layers', 'embed', 'mlp')),
        up=p(dense, (l, d, f), ('layers', 'embed', 'mlp')),
        down=p(dense, (l, f, d), ('layers', 'mlp', 'embed')),
      ),
    )
    if cfg.post_norms:
      layers.update(post_attn_norm=norm((l, d), ('layers', 'norm')), post_mlp_norm=norm((l, d), ('layers', 'norm')))
    self.layers = nnx.Dict(**layers)
    self.final_norm = norm((d,), ('norm',))
    if not cfg.tie_embeddings:
      self.lm_head = nnx.Dict(kernel=p(dense, (d, v), ('embed', 'vocab')))


def base_config(cfg: TransformerConfig) -> TransformerConfig:
  """The architecture without adapters (what pretrained files hold)."""
  return dataclasses.replace(cfg, lora=None) if cfg.lora else cfg


def param_axes(cfg: TransformerConfig) -> Params:
  """Pure-dict tree of logical axis tuples, same structure as the params (adapters included with `cfg.lora`)."""
  abstract = nnx.eval_shape(lambda: Transformer(base_config(cfg), rngs=nnx.Rngs(0)))

  def walk(node):
    if isinstance(node, nnx.Variable):
      return tuple(node.get_metadata()['axes'])
    return {key: walk(child) for key, child in node.items()}

  axes = walk(nnx.state(abstract, nnx.Param))
  if cfg.lora:
    axes['lora'] = lora_lib.axes(cfg.lora, axes['layers'])
  return axes


def param_shapes(cfg: TransformerConfig, dtype=jnp.float32) -> Params:
  """Pure-dict tree of ShapeDtypeStructs (no memory), for planning and for restore targets. Adapters (with
  `cfg.lora`) are float32 whatever the base's dtype."""
  abstract = nnx.eval_shape(lambda: Transformer(base_config(cfg), rngs=nnx.Rngs(0), param_dtype=dtype))
  shapes = nnx.state(abstract, nnx.Param).to_pure_dict()
  if cfg.lora:
    shapes['lora'] = lora_lib.shapes(cfg.lora, shapes['layers'])
  return shapes


def init_lora(cfg: TransformerConfig, seed: int | jax.Array = 0, mesh=None) -> Params:
  """Fresh adapters for `params['lora']`, created in their shardings (lora.init: B = 0)."""
  shapes = param_shapes(cfg)['lora']
  shardings = sharding.param_shardings(shapes, param_axes(cfg)['lora'], mesh)
  key = jax.random.key(seed) if isinstance(seed, int) else seed
  return jax.jit(lambda k: lora_lib.init(shapes, k), out_shardings=shardings)(key)


def init_params(cfg: TransformerConfig, seed: int | jax.Array = 0, mesh=None, dtype=jnp.float32) -> Params:
  """Random params created directly in their shardings (no full host copy on the way); with `cfg.lora`, fresh
  adapters too (the base draws the same numbers as without)."""
  base = base_config(cfg)
  shardings = sharding.param_shardings(param_shapes(base, dtype), param_axes(base), mesh)
  key = jax.random.key(seed) if isinstance(seed, int) else seed

  def make(key):
    return nnx.state(Transformer(base, rngs=nnx.Rngs(params=key), param_dtype=dtype), nnx.Param).to_pure_dict()

  params = jax.jit(make, out_shardings=shardings)(key)
  if cfg.lora:
    params['lora'] = init_lora(cfg, jax.random.fold_in(key, 1), mesh)
  return params


# ---- forward ------------------------------------------------------------------------------------------------
@functools.partial(jax.checkpoint, static_argnums=(2, 3), prevent_cse=False)
def rms_norm(x, scale, eps: float, offset: float):
  """RMSNorm in float32; Gemma multiplies by (1 + w), Llama by w. Only x and scale are kept for the backward pass."""
  xf = x.astype(jnp.float32)
  xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return (xf * (offset + scale.astype(jnp.float32))).astype(x.dtype)


def apply_rope(x_btnh, positions_bt, inv_freq_h2):
  """Rotate-half RoPE (Hugging Face layout: the two halves of H pair up)."""
  angles = positions_bt[..., None].astype(jnp.float32) * inv_freq_h2  # [B, T, H/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_btnh.dtype)


def _attention_mask(q_index_t, k_index_s, key_mask_bs, window, is_local, positions=None):
  """[B, T, S] bool: causal in slot index, padding from key_mask, sliding window on local layers.

  The window is measured in slots, or in tokens when `positions` gives the queries' and keys' positions
  ([B, T], [B, S]): a cache's slots may hold holes (an episode's rows that stopped early), and a forward over the
  transcript counts only tokens. Without holes (left-padded prompts, packed completions) slot distance is token
  distance.
  """
  mask = (k_index_s[None, :] <= q_index_t[:, None])[None] & key_mask_bs[:, None, :]
  if window:
    if positions is None:
      distance = (q_index_t[:, None] - k_index_s[None, :])[None]
    else:
      distance = positions[0][:, :, None] - positions[1][:, None, :]
    mask = mask & jnp.where(is_local, distance < window, True)
  return mask


def _linear(cfg: TransformerConfig, x, p, lora, name: str):
  """x through the frozen weight `name` (lora.LINEARS), plus its LoRA adapter when `lora` holds one."""
  group, eq = lora_lib.LINEARS[name]
  y = products.contract(eq, x, p[group][name])
  adapter = lora.get(group, {}).get(name)
  return y if adapter is None else lora_lib.apply(y, x, name, adapter, cfg.lora.scale)


def _qkv(cfg: TransformerConfig, x, p, lora, inv_freq, positions):
  """Queries [B, T, K, G, H] (scaled) and keys, values [B, T, K, H] of one layer's input x [B, T, D]."""
  a = p['attn']
  h = rms_norm(x, p['attn_norm']['scale'], cfg.norm_eps, cfg.norm_offset)
  q, k, v = (_linear(cfg, h, p, lora, name) for name in ('q', 'k', 'v'))
  if cfg.qkv_bias:
    q, k, v = q + a['q_bias'], k + a['k_bias'], v + a['v_bias']
  if cfg.qk_norm:
    q = rms_norm(q, a['q_norm']['scale'], cfg.norm_eps, cfg.norm_offset)
    k = rms_norm(k, a['k_norm']['scale'], cfg.norm_eps, cfg.norm_offset)
  q = apply_rope(q, positions, inv_freq)
  k = apply_rope(k, positions, inv_freq)
  b, t, n, hd = q.shape
  return q.reshape(b, t, cfg.num_kv_heads, n // cfg.num_kv_heads, hd) * cfg.attn_scale(), k, v


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _softmax(masked_logits: list, dtype) -> list:
  """One softmax over the key axes of several [..., T, S_i] blocks of logits (masked entries already at the float32
  minimum), split back into blocks of `dtype`: keys held in different places are attended to as one set. The
  backward pass keeps only these blocks, which the value product keeps anyway (differentiated as written it also
  kept the float32 softmax and two [..., T, 1] reductions per layer: docs/benchmarks.md, "Less kept for the
  backward pass")."""
  return _softmax_fwd(masked_logits, dtype)[0]


def _split_like(x, blocks: list) -> list:
  """x [..., sum S_i] split on its last axis into blocks as wide as `blocks`' [..., S_i]."""
  return jnp.split(x, np.cumsum([b.shape[-1] for b in blocks])[:-1], axis=-1)


def _softmax_fwd(masked_logits, dtype):
  parts = _split_like(jax.nn.softmax(jnp.concatenate(masked_logits, axis=-1), axis=-1).astype(dtype), masked_logits)
  return parts, parts


def _softmax_bwd(dtype, parts, grads):
  y, g = (jnp.concatenate(xs, axis=-1).astype(jnp.float32) for xs in (parts, grads))
  return (_split_like(y * (g - jnp.sum(g * y, axis=-1, keepdims=True)), parts),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _mask(logits, mask):
  return jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)


# act(gate) * up, keeping only gate and up for the backward pass, which recomputes the rest: differentiated as
# written it kept more [T, F] arrays per layer for a cheap elementwise product (docs/benchmarks.md, "Less kept for
# the backward pass"). The layers run inside a loop, where CSE cannot undo the recomputation.
_gated_silu = jax.checkpoint(lambda gate, up: jax.nn.silu(gate) * up, prevent_cse=False)
_gated_gelu = jax.checkpoint(lambda gate, up: jax.nn.gelu(gate, approximate=True) * up, prevent_cse=False)


def _out_and_mlp(cfg: TransformerConfig, x, attended, p, lora):
  """The rest of a layer after attention: output projection, residual, MLP, residual. attended [B, T, K, G, H]."""
  eps, off = cfg.norm_eps, cfg.norm_offset
  b, t = attended.shape[:2]
  out = _linear(cfg, attended.reshape(b, t, cfg.num_heads, cfg.head_dim), p, lora, 'o')
  if cfg.post_norms:
    out = rms_norm(out, p['post_attn_norm']['scale'], eps, off)
  x = sharding.constrain(x + out, ('act_batch', 'act_len', 'act_embed'))

  h = rms_norm(x, p['mlp_norm']['scale'], eps, off)
  gated = {'gelu_tanh': _gated_gelu, 'silu': _gated_silu}[cfg.activation]  # no silent fallback
  hidden = gated(_linear(cfg, h, p, lora, 'gate'), _linear(cfg, h, p, lora, 'up'))
  hidden = sharding.constrain(hidden, ('act_batch', 'act_len', 'act_mlp'))
  out = _linear(cfg, hidden, p, lora, 'down')
  if cfg.post_norms:
    out = rms_norm(out, p['post_mlp_norm']['scale'], eps, off)
  return sharding.constrain(x + out, ('act_batch', 'act_len', 'act_embed'))


def _layer(cfg: TransformerConfig, x, p, lora, inv_freq, is_local, positions, q_index, k_index, key_mask, kv=None,
           shared=None, cache_index=None, key_pos=None):  # fmt: skip
  """One decoder layer. Returns (x, (k, v) of this call's tokens [B, T, K, H], or None without a cache).

  q_index: the slots of the call's tokens. key_pos: None, or each key slot's position [B, S] (S as key_mask's),
  which a sliding window then counts in. kv: None (keys are this call's tokens only) or this layer's cache
  (k [B, K, H, S], v [B, K, S, H]; `kvcache`) whose slots are k_index, read only: the queries attend to the
  cache's slots before `cache_index` and to this call's own keys, and the caller writes the returned keys into
  slots [cache_index, cache_index + T) once for all layers. shared: None or this layer's
  keys and values of the prompts that groups of rows share ([B/G, K, H, P], [B/G, K, P, H]: slots [0, P) of their
  rows; `forward`). lora: this layer's adapters ({} for none)."""
  q, k, v = _qkv(cfg, x, p, lora, inv_freq, positions)
  b, t = q.shape[:2]
  own = key_mask  # which of the call's own keys are real
  # (query positions, positions of the key slots `at`) for the window of a key block; None: slot distance
  window_at = lambda at: None if key_pos is None else (positions, key_pos[:, at])  # noqa: E731
  cached = []  # ((keys, values), mask [B, T, S], groups): what the queries read from a cache
  if kv is not None:
    # the cache's slots before cache_index, then this call's own keys (rounded through the cache dtype, so a
    # token's key is the same whether it is read now or from the cache later); one softmax over all of them, so
    # the cache slice is read in place, never concatenated into a copy
    k = k.astype(kv[0].dtype).astype(x.dtype)
    v = v.astype(kv[1].dtype).astype(x.dtype)
    own = jax.lax.dynamic_slice_in_dim(key_mask, cache_index, t, axis=1)
    # no slot comes before a cache_index known to be 0 (a first prefill): reading the empty cache anyway cost ~20%
    # of a SmolLM2 prefill of 32 x 64 tokens (docs/benchmarks.md)
    if not (isinstance(cache_index, int) and cache_index == 0):
      first = key_mask.shape[1] - k_index.shape[0]
      seen = key_mask[:, first:] & (k_index < cache_index)[None]
      near = window_at(slice(first, None))
      cached.append((kv, _attention_mask(q_index, k_index, seen, cfg.sliding_window, is_local, near), b))
  if shared is not None:  # each group's queries against its prompt's keys, held once for the group
    prompt = jnp.arange(shared[1].shape[2])
    near = window_at(slice(0, prompt.shape[0]))
    seen = _attention_mask(q_index, prompt, key_mask[:, : prompt.shape[0]], cfg.sliding_window, is_local, near)
    cached.append((shared, seen, shared[1].shape[0]))
  # own keys: the queries' slots and positions
  own_at = None if key_pos is None else (positions, positions)
  own_mask = _attention_mask(q_index, q_index, own, cfg.sliding_window, is_local, own_at)
  logits = [_mask(jnp.einsum('btkgh,bskh->bkgts', q, k), own_mask[:, None, None])]
  logits += [_mask(kvcache.logits(q, ck.astype(x.dtype), n), m[:, None, None]) for (ck, _), m, n in cached]
  probs = _softmax(logits, x.dtype)
  # values first: XLA:CPU's dot for this operand order ran 1.3-14x faster (decode 14x), gradients alike
  attended = jnp.einsum('bskh,bkgts->btkgh', v, probs[0])
  for pr, ((_, cv), _, n) in zip(probs[1:], cached):
    attended = attended + kvcache.attend(pr, cv.astype(x.dtype), n)
  return _out_and_mlp(cfg, x, attended, p, lora), (None if kv is None else (k, v))


def _grouped_layer(cfg: TransformerConfig, xs, p, lora, inv_freq, is_local, positions, masks, group: int, part: int):
  """One decoder layer over B prompts [B, P, D] and their completions packed into R = Q*C rows [R, W, D] (C =
  `group` consecutive rows for each of Q parts of `part` prompts), the prompts computed once: each row's queries
  attend to its part's prompt keys (read from the prompt stream, never copied per row; the mask keeps each token
  to its own prompt's) and to the keys `masks` allow in their own row.
  masks: (prompt causal [B, 1, 1, P, P], row to prompt [Q, C, 1, 1, W, part*P], row to row [R, 1, 1, W, W]), each
  a (global, local) pair (local: the sliding window's, used on local layers)."""
  (xp, xc), (pos_p, pos_c) = xs, positions
  pick = lambda pair: jnp.where(is_local, pair[1], pair[0]) if cfg.sliding_window else pair[0]  # noqa: E731
  causal, to_prompt, own = (pick(pair) for pair in masks)
  qp, kp, vp = _qkv(cfg, xp, p, lora, inv_freq, pos_p)
  qc, kc, vc = _qkv(cfg, xc, p, lora, inv_freq, pos_c)
  (pr,) = _softmax([_mask(jnp.einsum('btkgh,bskh->bkgts', qp, kp), causal)], xp.dtype)
  attended_p = jnp.einsum('bskh,bkgts->btkgh', vp, pr)
  # the R rows of the completion stream are [Q, C] flattened; a part's prompts' keys side by side: [Q, part*P]
  q = xp.shape[0] // part
  kp, vp = (x.reshape(q, part * x.shape[1], *x.shape[2:]) for x in (kp, vp))
  qc = qc.reshape(q, group, *qc.shape[1:])
  cross = _mask(jnp.einsum('bctkgh,bskh->bckgts', qc, kp), to_prompt)
  cross = cross.reshape(q * group, *cross.shape[2:])
  self_ = _mask(jnp.einsum('btkgh,bskh->bkgts', qc.reshape(q * group, *qc.shape[2:]), kc), own)
  pr_cross, pr_self = _softmax([cross, self_], xc.dtype)
  attended_c = jnp.einsum('bskh,bckgts->bctkgh', vp, pr_cross.reshape(q, group, *pr_cross.shape[1:]))
  attended_c = attended_c.reshape(q * group, *attended_c.shape[2:]) + jnp.einsum('bskh,bkgts->btkgh', vc, pr_self)
  return (_out_and_mlp(cfg, xp, attended_p, p, lora), _out_and_mlp(cfg, xc, attended_c, p, lora)), None


def embed(params: Params, cfg: TransformerConfig, tokens, dtype=jnp.float32):
  x = jnp.take(params['embed']['embedding'], tokens, axis=0).astype(dtype)
  if cfg.embed_scale:  # Gemma rounds sqrt(D) to the activation dtype first
    x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
  return sharding.constrain(x, ('act_batch', 'act_len', 'act_embed'))


def unembed(params: Params, cfg: TransformerConfig, hidden, temperature: float = 1.0):
  """Final norm + logits in float32, divided by `temperature`: without a softcap on the normed hidden state [.., D],
  not on the [.., V] logits (the train step's [R, N, V] logits and their gradient are the largest tensors it has)."""
  h = rms_norm(hidden, params['final_norm']['scale'], cfg.norm_eps, cfg.norm_offset)
  if temperature != 1.0 and not cfg.final_softcap:
    h, temperature = h / jnp.asarray(temperature, h.dtype), 1.0
  if cfg.tie_embeddings and h.shape[0] * h.shape[1] <= 64:
    # decoding (a few rows): XLA:CPU ran the vocabulary-major product plus a transpose 1.3-1.4x faster at 8-32
    # rows (Gemma 3's 262k x 640 embedding: 112 -> 81 ms at 32 rows); at training sizes it is 2x slower
    logits = jnp.einsum('vd,btd->vbt', params['embed']['embedding'].astype(h.dtype), h).transpose(1, 2, 0)
  elif cfg.tie_embeddings:
    logits = jnp.einsum('btd,vd->btv', h, params['embed']['embedding'].astype(h.dtype))
  else:
    logits = jnp.einsum('btd,dv->btv', h, params['lm_head']['kernel'].astype(h.dtype))
  logits = logits.astype(jnp.float32)
  if cfg.final_softcap:
    logits = jnp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
  return logits if temperature == 1.0 else logits / temperature


def forward(params: Params, cfg: TransformerConfig, tokens, positions, key_mask, *, cache: Cache | None = None,
            cache_index=None, shared: Cache | None = None, dtype=jnp.float32, remat: bool = False,
            return_hidden: bool = False):  # fmt: skip
  """Runs the decoder.

  tokens, positions: [B, T] int32. key_mask: [B, S] bool, True where a key slot holds a real token; without a
  cache S == T (the call's own tokens), with a cache S is the cache length and the call's tokens are written at
  slots [cache_index, cache_index + T). Returns (logits [B, T, V] float32 — or final hidden states when
  return_hidden — and the updated cache or None). With a cache, a token's position is the number of real keys
  before it (the sampler's rule, holes skipped), which is what a sliding window counts.

  shared: the keys and values of prompts that groups of consecutive rows share, a cache of B/G rows and P slots
  (`kvcache.init`), read only. They are slots [0, P) of every row of their group, stored once (not G times);
  `cache` then holds slots [P, S) of each row, `key_mask` and `cache_index` count slots from 0 all the same.
  """
  t = tokens.shape[1]
  x = embed(params, cfg, tokens, dtype)
  q_index = jnp.arange(t) if cache is None else cache_index + jnp.arange(t)  # the call's tokens' slots
  k_index = key_pos = None  # the cache's slots; their tokens' positions
  if cache is not None:
    k_index = (0 if shared is None else kvcache.slots(shared)) + jnp.arange(kvcache.slots(cache))
    if cfg.sliding_window:  # a slot's position is the count of real keys before it (the sampler's positions)
      key_pos = jnp.cumsum(key_mask, axis=1, dtype=jnp.int32) - 1

  # Each layer reads its cache slice (a scan input) and returns only this call's keys and values; they are written
  # into the cache once, after the scan, in place. Carrying the cache through the scan and updating it per layer
  # made XLA copy the whole cache once per layer: ~80% of a Gemma 3 decode step on CPU.
  def layer(x, p, lora, freq, local, kv):
    return _layer(cfg, x, p, lora, freq, local, positions, q_index, k_index, key_mask, *kv, cache_index, key_pos)

  kv = (cache['k'], cache['v']) if cache is not None else None
  per_layer = (kv, None if shared is None else (shared['k'], shared['v']))
  x, kv = _scan_layers(params, cfg, layer, x, per_layer, dtype, remat)
  new_cache = None
  if cache is not None:
    new_cache = kvcache.write(cache, *kv, cache_index - (0 if shared is None else kvcache.slots(shared)))
  if return_hidden:
    return x, new_cache
  return unembed(params, cfg, x), new_cache


def forward_grouped(params: Params, cfg: TransformerConfig, prompt_tokens, prompt_mask, tokens, segments, offsets,
                    owners=None, *, part: int = 1, dtype=jnp.float32, remat: bool = False):  # fmt: skip
  """The decoder over B left-padded prompts [B, P] (mask [B, P]), in Q = B / `part` parts of `part` consecutive
  prompts, each part's completions packed into C rows of W tokens: `tokens` [R, W], R = Q*C, the C rows of part
  q consecutive. `segments` [R, W] names the completion each token belongs to (-1: padding), `offsets` [R, W] its
  index in that completion and `owners` [R, W] its prompt within the part (None: 0, one prompt per part); a
  completion's tokens are consecutive in one row. A token attends to its prompt and to the earlier tokens of its
  completion. Each prompt is computed once, and no completion is padded to the longest one (GRPO's groups,
  train_step.py).

  Returns the final hidden states (before the final norm) of the prompts [B, P, D] and of the rows [R, W, D]: at
  each completion token equal to `forward(..., return_hidden=True)` over that prompt + completion alone."""
  (b, big_p), (rows, w) = prompt_tokens.shape, tokens.shape
  q = b // part
  group = rows // q
  owners = jnp.zeros_like(segments) if owners is None else owners
  prompt_len = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)
  pos_p = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
  prompt_of = (jnp.arange(rows) // group * part)[:, None] + owners  # [R, W] each token's prompt, 0..B-1
  pos_c = prompt_len[prompt_of] + offsets.astype(jnp.int32)
  # (global, local) masks; prompts are left-padded, so slot distance is position distance and a completion token
  # at `offset` sits at slot P + offset of its own prompt
  slots_p, window = jnp.arange(big_p), cfg.sliding_window
  causal = [_attention_mask(slots_p, slots_p, prompt_mask, window, local) for local in (False, True)]
  # a row's keys from the prompt stream: its part's prompts side by side, [part * P]; a token sees its own prompt's
  to_prompt = jnp.repeat(prompt_mask.reshape(q, part * big_p), group, axis=0)[:, None, :]
  to_prompt = to_prompt & (owners[:, :, None] == jnp.repeat(jnp.arange(part), big_p)[None, None, :])
  own = (segments[:, :, None] == segments[:, None, :]) & (segments >= 0)[:, :, None]
  own = own & (jnp.arange(w)[:, None] >= jnp.arange(w)[None, :])[None]  # causal within its completion
  near_prompt = (big_p + offsets)[:, :, None] - jnp.tile(slots_p, part)[None, None, :] < (window or 1)
  near_own = offsets[:, :, None] - offsets[:, None, :] < (window or 1)
  masks = (
    tuple(m[:, None, None] for m in causal),
    tuple(m.reshape(q, group, 1, 1, w, part * big_p) for m in (to_prompt, to_prompt & near_prompt)),
    tuple(m[:, None, None] for m in (own, own & near_own)),
  )
  xs = (embed(params, cfg, prompt_tokens, dtype), embed(params, cfg, tokens, dtype))

  def layer(xs, p, lora, freq, local, _):
    return _grouped_layer(cfg, xs, p, lora, freq, local, (pos_p, pos_c), masks, group, part)

  return _scan_layers(params, cfg, layer, xs, None, dtype, remat)[0]


def split_layers(params: Params, cfg: TransformerConfig, dtype=jnp.float32, merge: bool = False) -> Params:
  """The params with the layer weights (and adapters) as a tuple of per-layer trees, cast to `dtype`; `forward`
  then runs layer i as branch i of a `lax.switch`, whose dots read that layer's arrays where they lie. merge: the
  adapters folded into each layer's weights on the way (`lora.merge`, one layer at a time: one copy in all).

  For decoding on CPU (sampler.py): XLA:CPU copies each layer's slice out of the stacked [L, ...] arrays before
  its dots, at every decode step; splitting once per sampler call pays that copy once (docs/benchmarks.md). A TPU
  reads the slice in place, so there the split would only hold the layers twice."""

  def per_layer(tree):
    return tuple(_cast(jax.tree.map(lambda w: w[i], tree), dtype) for i in range(cfg.num_layers))

  if merge:
    stacked = {'layers': params['layers'], 'lora': {'layers': params['lora']['layers']}}
    one = lambda i: jax.tree.map(lambda w: w[i : i + 1], stacked)  # noqa: E731
    merged = tuple(
      _cast(jax.tree.map(lambda w: w[0], lora_lib.merge(one(i), cfg.lora)['layers']), dtype)
      for i in range(cfg.num_layers)
    )
    return dict(lora_lib.split(params)[1], layers=merged)
  out = dict(params, layers=per_layer(params['layers']))
  if cfg.lora and 'lora' in params:
    out['lora'] = dict(params['lora'], layers=per_layer(params['lora']['layers']))
  return out


def _scan_layers(params: Params, cfg: TransformerConfig, layer, x, per_layer, dtype, remat: bool):
  """x through `layer(x, weights, adapters, rope_freqs, is_local, per_layer slice) -> (x, out)` for every layer
  under one `lax.scan` over the stacked weights (cast to `dtype`), or one branch per layer with `split_layers`'
  params; returns (x, stacked outs)."""
  tables = (jnp.asarray(cfg.inv_freq()), jnp.asarray(cfg.layer_is_local()), per_layer)
  has_lora = cfg.lora and 'lora' in params
  if isinstance(params['layers'], tuple):
    if remat:
      raise ValueError('split layers are for decoding: remat needs the stacked layers')
    return _switch_layers(params['layers'], params['lora']['layers'] if has_lora else None, layer, x, tables)
  body = lambda x, xs: layer(x, *xs)  # noqa: E731
  if remat:
    body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
  lora_layers = _cast(params['lora']['layers'], dtype) if has_lora else {}
  return jax.lax.scan(body, x, (_cast(params['layers'], dtype), lora_layers, *tables))


def _cast(tree, dtype):
  return jax.tree.map(lambda w: w.astype(dtype) if w.dtype != dtype else w, tree)


def _switch_layers(layers: tuple, lora: tuple | None, layer, x, tables):
  """`_scan_layers` over per-layer weights: a `fori_loop` whose step i runs branch i, which closes over layer i's
  arrays; the per-layer tables are indexed as the scan would slice them and the outs stacked the same way."""
  n = len(layers)
  lora = lora or ({},) * n
  at = lambda i: jax.tree.map(lambda a: a[i], tables)  # noqa: E731
  branches = [lambda x, xs, i=i: layer(x, layers[i], lora[i], *xs) for i in range(n)]
  outs = jax.tree.map(lambda o: jnp.zeros((n, *o.shape), o.dtype), jax.eval_shape(branches[0], x, at(0))[1])

  def step(i, carry):
    x, outs = carry
    x, out = jax.lax.switch(i, branches, x, at(i))
    return x, jax.tree.map(lambda o, new: jax.lax.dynamic_update_index_in_dim(o, new, i, 0), outs, out)

  return jax.lax.fori_loop(0, n, step, (x, outs))
