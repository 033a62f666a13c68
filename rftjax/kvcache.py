"""The KV cache that decoding writes and reads: its layout, allocation, sharding, the write of a call's new keys and
values, and the two attention products that read it.

Keys are stored [L, B, K, H, S] and values [L, B, K, S, H] (`AXES`): for each row (or group of rows sharing a
prompt) and KV head, the queries' logits are one [rows, H] @ [H, S] product and the attended values one
[rows, S] @ [S, H] product, neither operand transposed. With the slots before the heads ([L, B, S, K, H]) XLA:CPU
transposed each layer's slice at every decode step (docs/benchmarks.md). The caller tracks which slots hold real
tokens (a key mask); `model.forward` takes a cache and writes into it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rftjax import sharding

Cache = dict[str, jax.Array]

AXES = {
  'k': ('layers', 'act_batch', 'kv_heads', 'head_dim', 'act_len'),
  'v': ('layers', 'act_batch', 'kv_heads', 'act_len', 'head_dim'),
}
NEW_AXES = (
  'layers',
  'act_batch',
  'act_len',
  'kv_heads',
  'head_dim',
)  # a call's keys or values, as the layers return them


def shapes(cfg, batch: int, length: int) -> dict[str, tuple[int, ...]]:
  """Each array's shape for `batch` rows of `length` slots (cfg: a model.TransformerConfig)."""
  size = dict(layers=cfg.num_layers, act_batch=batch, act_len=length, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
  return {name: tuple(size[a] for a in axes) for name, axes in AXES.items()}


def init(cfg, batch: int, length: int, dtype=jnp.float32) -> Cache:
  return {name: jnp.zeros(shape, dtype) for name, shape in shapes(cfg, batch, length).items()}


def constrain(cache: Cache) -> Cache:
  return {name: sharding.constrain(c, AXES[name]) for name, c in cache.items()}


def slots(cache: Cache) -> int:
  return cache['v'].shape[AXES['v'].index('act_len')]


def write(cache: Cache, new_k, new_v, start) -> Cache:
  """The cache with a call's keys and values [L, B, T, K, H] (`NEW_AXES`) written at slots [start, start + T)."""

  def put(name, new):
    c = cache[name]
    new = new.transpose(tuple(NEW_AXES.index(a) for a in AXES[name])).astype(c.dtype)
    return jax.lax.dynamic_update_slice_in_dim(c, new, start, axis=AXES[name].index('act_len'))

  return {'k': put('k', new_k), 'v': put('v', new_v)}


def logits(q, keys, groups: int):
  """Queries [B, T, K, G, H] against one layer's cached keys [groups, K, H, S] (groups == B, or one per group of
  B/groups consecutive rows sharing a prompt): logits [B, K, G, T, S]. The moves of T-sized dims are free at
  T = 1, a decode step."""
  b, t, kh, g, h = q.shape
  c = b // groups
  rows = q.reshape(groups, c, t, kh, g, h).transpose(0, 3, 1, 2, 4, 5).reshape(groups, kh, c * t * g, h)
  out = jnp.einsum('bkmh,bkhs->bkms', rows, keys)
  return out.reshape(groups, kh, c, t, g, -1).transpose(0, 2, 1, 4, 3, 5).reshape(b, kh, g, t, -1)


def attend(probs, values, groups: int):
  """Attention weights [B, K, G, T, S] times one layer's cached values [groups, K, S, H] (as `logits`):
  [B, T, K, G, H]."""
  b, kh, g, t, s = probs.shape
  c = b // groups
  rows = probs.reshape(groups, c, kh, g, t, s).transpose(0, 2, 1, 4, 3, 5).reshape(groups, kh, c * t * g, s)
  out = jnp.einsum('bkms,bksh->bkmh', rows, values)
  return out.reshape(groups, kh, c, t, g, -1).transpose(0, 2, 3, 1, 4, 5).reshape(b, t, kh, g, -1)
