"""LoRA: low-rank adapters on the frozen linears of the one model; model.py applies them inside its forward.

  cfg = dataclasses.replace(cfg, lora=lora.LoRAConfig(rank=16, alpha=32))  # model.TransformerConfig.lora
  params = model.init_params(cfg)  /  loader.load(config)                    # base + fresh adapters (B = 0)
  trainable, frozen = lora.split(params)        # the optimizer, its moments and checkpoints see the adapters only
  lora.join(trainable, frozen)                  # the params the forward takes
  lora.merge(params, cfg.lora)                  # W + alpha / r * A @ B: plain params (an HF export)
  lora.merged_for_sampling(params, cfg.lora, dtype)  # whether the sampler merges them (all float32)

An adapter lives at `params['lora']['layers'][group][name] = {'a': [L, <in dims>, R], 'b': [L, R, <out dims>]}`,
shaped and sharded after the weight it adapts (A on the weight's input axes, B on its output axes, rank R
replicated), float32 whatever the base's dtype. Every linear, its einsum and therefore its adapter's equations come
from one table, `LINEARS`. The forward adds `alpha / R * (x @ A) @ B`, so a model with B = 0 computes exactly the
base model; params without `'lora'` are the base model, which is how a LoRA run gets its KL reference for free.
Written here rather than taken from qwix: the whole feature is this table, two einsums and a merge (about a
hundred lines), it keeps rftjax's stacked-layer params, logical axes and checkpoints as they are, and qwix's
module-interception LoRA targets flax modules that rftjax's forward does not use (see docs/lora.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from rftjax import products

# Every linear of a decoder layer: name -> (params group, einsum of the frozen weight, in the model's alphabet).
LINEARS = {
  'q': ('attn', 'btd,dnh->btnh'),
  'k': ('attn', 'btd,dkh->btkh'),
  'v': ('attn', 'btd,dkh->btkh'),
  'o': ('attn', 'btnh,nhd->btd'),
  'gate': ('mlp', 'btd,df->btf'),
  'up': ('mlp', 'btd,df->btf'),
  'down': ('mlp', 'btf,fd->btd'),
}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Adapters on the linears named in `targets`; the embedding and unembedding stay frozen."""

  rank: int
  alpha: float
  targets: tuple[str, ...] = tuple(LINEARS)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def equations(eq: str) -> tuple[str, str]:
  """('btd,dr->btr', 'btr,rnh->btnh') for the frozen weight's 'btd,dnh->btnh': x @ A, then (x @ A) @ B."""
  lhs, out = eq.split('->')
  x, w = lhs.split(',')
  w_in, w_out = ''.join(c for c in w if c in x), ''.join(c for c in w if c not in x)
  xr = ''.join(c for c in x if c not in w_in) + 'r'
  return f'{x},{w_in}r->{xr}', f'{xr},r{w_out}->{out}'


def apply(y, x, name: str, adapter, scale: float):
  """y (x through the frozen weight `name`) plus the adapter's `scale * (x @ A) @ B`, each product computed as the
  frozen weight's is (`products.contract`: on CPU its backward pass is the cheaper one)."""
  eq_a, eq_b = equations(LINEARS[name][1])
  return y + products.contract(eq_b, products.contract(eq_a, x, adapter['a']) * scale, adapter['b'])


def _tree(cfg: LoRAConfig, leaf) -> dict:
  """{'layers': {group: {name: {'a': leaf(name, 'a', n_in), 'b': leaf(name, 'b', n_in)}}}} over the targets, n_in
  being how many dims of the frozen weight (after L) are its input dims."""
  tree: dict = {}
  for name in cfg.targets:
    group, eq = LINEARS[name]
    x, w = eq.split('->')[0].split(',')
    n_in = sum(c in x for c in w)
    tree.setdefault(group, {})[name] = {'a': leaf(name, 'a', n_in), 'b': leaf(name, 'b', n_in)}
  return {'layers': tree}


def shapes(cfg: LoRAConfig, layers: dict) -> dict:
  """ShapeDtypeStructs of the adapters, from the stacked layer params' shapes."""
  w = lambda name: layers[LINEARS[name][0]][name].shape
  return _tree(cfg, lambda name, ab, n: jax.ShapeDtypeStruct(
    (*w(name)[: 1 + n], cfg.rank) if ab == 'a' else (w(name)[0], cfg.rank, *w(name)[1 + n :]), jnp.float32
  ))  # fmt: skip


def axes(cfg: LoRAConfig, layers: dict) -> dict:
  """Logical axes of the adapters, from the stacked layer params' axes: each shards like the weight it adapts."""
  w = lambda name: layers[LINEARS[name][0]][name]
  return _tree(cfg, lambda name, ab, n: (*w(name)[: 1 + n], 'lora_rank') if ab == 'a'
               else ('layers', 'lora_rank', *w(name)[1 + n :]))  # fmt: skip


def init(adapter_shapes: dict, key) -> dict:
  """Fresh adapters: A ~ U(+-1 / sqrt(fan_in)) (PEFT's default, kaiming-uniform with a = sqrt(5)), B = 0."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(adapter_shapes)
  out = []
  for k, (path, s) in zip(jax.random.split(key, len(paths)), paths):
    if path[-1].key == 'b':
      out.append(jnp.zeros(s.shape, s.dtype))
    else:
      bound = 1.0 / math.sqrt(math.prod(s.shape[1:-1]))
      out.append(jax.random.uniform(k, s.shape, s.dtype, -bound, bound))
  return jax.tree.unflatten(treedef, out)


def delta(name: str, adapter) -> jax.Array:
  """A @ B in the frozen weight's shape [L, <in dims>, <out dims>] (float32, before the alpha / rank scale)."""
  x, w = LINEARS[name][1].split('->')[0].split(',')
  w_in, w_out = ''.join(c for c in w if c in x), ''.join(c for c in w if c not in x)
  a, b = adapter['a'].astype(jnp.float32), adapter['b'].astype(jnp.float32)
  return jnp.einsum(f'L{w_in}r,Lr{w_out}->L{w_in}{w_out}', a, b)


def merge(params: dict, cfg: LoRAConfig, dtype=None) -> dict:
  """Plain params with each adapter folded into its weight: W + alpha / rank * A @ B, summed in float32 and
  returned in `dtype` (default: W's; a bfloat16 W keeps no update under half a bfloat16 step of it)."""
  out = {k: v for k, v in params.items() if k != 'lora'}
  if 'lora' not in params:
    return out
  layers = {group: dict(sub) if isinstance(sub, dict) else sub for group, sub in params['layers'].items()}
  for group, adapters in params['lora']['layers'].items():
    for name, adapter in adapters.items():
      w = layers[group][name]
      layers[group][name] = (w.astype(jnp.float32) + cfg.scale * delta(name, adapter)).astype(dtype or w.dtype)
  out['layers'] = layers
  return out


def merged_for_sampling(params: dict, cfg: LoRAConfig | None, compute_dtype) -> bool:
  """Whether the sampler folds the adapters into the base before decoding (sampler.py): yes for a float32 base
  computed in float32 (faster: 1.05-1.08x on SmolLM2 on CPU at batch 32, 1.07-1.29x on an H200;
  benchmarks/lora_sampling.py), otherwise no: the merged weight W + alpha / r * A @ B is rounded to bfloat16 (the
  base's dtype, or the compute dtype it is cast to), which drops updates smaller than a bfloat16 step of W, so the
  sampled policy would not be the trained one (docs/lora.md); its adapters run in the decode loop."""
  if cfg is None or 'lora' not in params or jnp.dtype(compute_dtype) != jnp.float32:
    return False
  return all(w.dtype == jnp.float32 for w in jax.tree.leaves(params['layers']))


def split(params: dict) -> tuple[dict, dict | None]:
  """(trainable, frozen): ({'lora': adapters}, the base) when the params carry adapters, else (params, None)."""
  if 'lora' not in params:
    return params, None
  return {'lora': params['lora']}, {k: v for k, v in params.items() if k != 'lora'}


def join(trainable: dict, frozen: dict | None) -> dict:
  """The inverse of `split`: the params the forward takes (no array is copied)."""
  return trainable if frozen is None else {**frozen, **trainable}


def count(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
