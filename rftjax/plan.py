"""Memory planning before step one: will this config fit on that slice? No TPU and no allocation needed.

  python -m rftjax.plan --config=configs/gemma3_tpu.py:27b_v5p32 --devices=v5p-32 [--config.x=y ...]
  python -m rftjax.plan --config=configs/tiny.py --devices=cpu-8
  python -m rftjax.plan --openai_job=job.json --devices=v5e-8     # an OpenAI job file, as train runs it

Prints per-device bytes for what lives on a chip during a GRPO run and exits 1 (naming the biggest consumers and
what to change) when the peak does not fit in HBM minus a headroom margin. Shapes come from `model.param_shapes`
(`jax.eval_shape`: nothing is allocated, so Gemma 3 27B plans in a second) and every tensor is divided exactly as
`sharding.logical_to_spec` would divide it on that mesh: a dim that a mesh axis does not divide stays replicated.

What is counted (per device):
  persistent   params, AdamW moments (mu, nu), the reference model when grpo.beta > 0;
  sampling     the KV cache (`kvcache.shapes`, k and v): L x R/G x P x K x H each for the prompts each group of G
               rows shares plus L x R x N x K x H for the rows' own tokens (episodes: L x R x (P+N) x K x H), one
               prefill layer's activations, last-token logits, a merged copy of a float32 base's layers with LoRA
               (on CPU: a copy of the layers, split per layer and merged);
  train step   gradients, saved activations (all layers, or with remat only each layer's input plus one layer
               recomputed; each group's prompt once, then at most G rows of packed completions), the completion
               logits [R, N, V] float32, or [R, chunk, V] when the step computes them in chunks of positions
               (train_step.logit_chunk), x `LOGITS_COPIES` (logits, log-softmax and entropy, their gradient),
               the FSDP all-gathers (embedding table, two layers in flight) and the compute-dtype copy of the layer
               weights when it differs from the param dtype.
  peak         persistent + max(sampling, train step): the sampler's cache is freed before the train step runs.
Activations are an estimate (XLA fuses and rematerialises on its own); tests/test_plan.py checks it against the
compiled program's `memory_analysis()` on CPU. The reference/old-policy logprob passes need less than the train
step and are not counted separately.

The config is checked as training checks it (runspec.check, for the slice's chips and hosts; the files it names
need not exist here) and its OpenAI-style fields are applied first, as training applies them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence

import jax.numpy as jnp
from etils import epath

from rftjax import cli
from rftjax import episodes
from rftjax import errors
from rftjax import hparams
from rftjax import kvcache
from rftjax import loader
from rftjax import lora
from rftjax import model as model_lib
from rftjax import presets
from rftjax import runspec
from rftjax import sharding
from rftjax import train_step as step_lib

log = logging.getLogger(__name__)
GiB = 1024**3
LOGITS_COPIES = 3  # logits, log-softmax (and softmax for the entropy), d loss / d logits: all [R, N, V] float32


# ---- hardware --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Hardware:
  """A slice: `chips` devices with `hbm_bytes` each, `chips_per_host` per TPU VM worker."""

  name: str
  generation: str
  chips: int
  hbm_bytes: int
  chips_per_host: int

  @property
  def hosts(self) -> int:
    return max(1, self.chips // self.chips_per_host)


# generation -> (HBM per chip in GiB, does the type's number count TensorCores (2 per chip)?, chips per host)
GENERATIONS = {'v4': (32, True, 4), 'v5p': (95, True, 4), 'v5e': (16, False, 4), 'v6e': (32, False, 4)}
_ALIASES = {'v5litepod': 'v5e', 'v5lite': 'v5e', 'v6litepod': 'v6e'}


def parse_devices(spec: str) -> Hardware:
  """'v5p-32' -> 16 chips (v4/v5p names count TensorCores, 2 per chip); 'v5e-8', 'v6e-16' count chips.

  Hosts: v4/v5p have 4 chips per host; v5e/v6e slices of up to 8 chips are one host with all of them
  (v5e-8 = one VM with 8 chips), larger ones have 4 chips per host (v6e-16 = 4 hosts). 'cpu-N': N fake CPU devices
  sharing this machine's RAM (for the tiny configs); 'cpu24g-N': the same on a machine with 24 GiB.
  """
  m = re.fullmatch(r'([a-z0-9]+)-(\d+)', spec.strip().lower())
  if not m:
    raise errors.ConfigError(
      f'--devices={spec!r}: expected TYPE-N such as v5p-32, v5e-8, v6e-16, v4-8, cpu-8 or cpu24g-1'
    )
  gen, n = _ALIASES.get(m.group(1), m.group(1)), int(m.group(2))
  if n < 1:
    raise errors.ConfigError(f'--devices={spec!r}: N is {n}; expected at least 1 device')
  ram = re.fullmatch(r'cpu(\d+)g', gen)
  if gen == 'cpu' or ram:
    total = int(ram.group(1)) * GiB if ram else os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return Hardware(spec, 'cpu', n, total // n, n)
  if gen not in GENERATIONS:
    raise errors.ConfigError(
      f'--devices={spec!r}: unknown TPU type {m.group(1)!r}; known: '
      f'{", ".join(sorted(GENERATIONS))} (and v5litepod), or cpu-N / cpu<GiB>g-N'
    )
  hbm_gib, counts_cores, per_host = GENERATIONS[gen]
  if counts_cores:
    if n % 2:
      raise errors.ConfigError(f'--devices={spec!r}: {gen} types count TensorCores (2 per chip), so N must be even')
    chips = n // 2
  else:
    chips = n
  if not counts_cores and chips <= 8:
    per_host = chips
  return Hardware(spec, gen, chips, hbm_gib * GiB, min(per_host, chips))


# ---- per-device sizes ------------------------------------------------------------------------------------------
class _MeshShape:
  """Just enough of a Mesh for `sharding.logical_to_spec`: the axis sizes."""

  def __init__(self, sizes: dict[str, int]):
    self.shape = dict(sizes)


def local_elems(shape: Sequence[int], names: Sequence[str | None], mesh: _MeshShape) -> int:
  """Elements of one device's shard of a [shape] array with logical axis `names` (ceil on uneven splits)."""
  spec = tuple(sharding.logical_to_spec(names, shape, mesh))
  spec = spec + (None,) * (len(shape) - len(spec))
  n = 1
  for dim, axes in zip(shape, spec):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    n *= -(-dim // math.prod(mesh.shape[a] for a in axes))
  return n


def local_bytes(shape, names, dtype, mesh: _MeshShape) -> int:
  return local_elems(shape, names, mesh) * jnp.dtype(dtype).itemsize


def _tree_bytes(shapes, axes, mesh, dtype=None) -> int:
  total = 0
  for path_shape, path_axes in zip(_leaves(shapes), _leaves(axes)):
    total += local_bytes(path_shape.shape, path_axes, dtype or path_shape.dtype, mesh)
  return total


def _leaves(tree):
  if isinstance(tree, dict):
    return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
  return [tree]


def _layer_activations(cfg: model_lib.TransformerConfig, rows: int, t: int, s: int, c, mesh) -> int:
  """Bytes one decoder layer keeps for its backward pass (no remat), following `model._layer` line by line."""
  d, f, n, k, h = cfg.d_model, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  btd = ((rows, t, d), ('act_batch', 'act_len', 'act_embed'))
  btf = ((rows, t, f), ('act_batch', 'act_len', 'act_mlp'))
  btnh = ((rows, t, n, h), ('act_batch', 'act_len', 'heads', 'head_dim'))
  btkh = ((rows, t, k, h), ('act_batch', 'act_len', 'kv_heads', 'head_dim'))
  bnts = ((rows, n, t, s), ('act_batch', 'heads', 'act_len', None))
  # the RMSNorms keep only their inputs (counted below), the softmax only its probs, act(gate) * up only gate and up
  parts = [
    (btd, c, 3),  # layer input, residual after attention, o-projection output
    (btnh, c, 4 + (1 if cfg.qk_norm else 0)),  # q, (normed q), RoPE'd q, scaled q, attention output
    (btkh, c, 2 + 2 + (1 if cfg.qk_norm else 0)),  # k, v, RoPE'd k, cache-dtype k/v
    (bnts, c, 1),  # attention probs
    (btf, c, 3),  # gate, up, hidden
    (btd, c, 1),  # down-projection output
  ]
  return sum(local_bytes(shape, names, dtype, mesh) * count for (shape, names), dtype, count in parts)


# ---- the plan --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
  model: str
  num_params: int
  hardware: Hardware
  mesh: dict[str, int]
  rows: int
  seq_len: int
  persistent: dict[str, int]
  sampling: dict[str, int]
  train: dict[str, int]
  headroom: float
  notes: list[str]
  vocab_size: int

  @property
  def sampling_peak(self) -> int:
    return sum(self.persistent.values()) + sum(self.sampling.values())

  @property
  def train_peak(self) -> int:
    return sum(self.persistent.values()) + sum(self.train.values())

  @property
  def peak(self) -> int:
    return max(self.sampling_peak, self.train_peak)

  @property
  def usable(self) -> int:
    return int(self.hardware.hbm_bytes * (1 - self.headroom))

  @property
  def fits(self) -> bool:
    return self.peak <= self.usable

  def consumers(self) -> list[tuple[str, int]]:
    """The items of the peak phase, biggest first."""
    phase = self.train if self.train_peak >= self.sampling_peak else self.sampling
    return sorted({**self.persistent, **phase}.items(), key=lambda kv: -kv[1])


def make_plan(config, devices: str | Hardware, *, headroom: float = 0.1, model=None) -> Plan:
  """Per-device memory of `config` (a checked run config, see configs/common.py) on `devices` (e.g. 'v5p-32').
  `model`: the abstract `loader.load` of the config, when the caller has it (re-planning variants of one config)."""
  hw = parse_devices(devices) if isinstance(devices, str) else devices
  model = model or loader.load(config, abstract=True)
  cfg = model.cfg
  sizes = sharding.resolve_mesh_shape(config.mesh, hw.chips)
  mesh = _MeshShape(sizes)
  notes = []

  param_dtype = jnp.dtype(config.param_dtype)
  c = jnp.dtype(config.compute_dtype)
  cache_dtype = jnp.dtype(config.sampling.cache_dtype or 'float32')
  micro = int(config.train_microbatches)
  shapes, axes = _shapes(cfg, param_dtype)

  g = int(config.num_generations)
  rows = int(config.batch_size) * g
  p, n = int(config.data.max_prompt_len), int(config.sampling.max_new_tokens)
  steps = int(config.get('max_episode_steps') or 1)
  if steps > 1:  # episodes: the cache and the trained sequence hold every turn and every tool turn between them
    n = episodes.completion_width(n, steps, int(config.sampling.tool_tokens))
    notes.append(f'episodes of {steps} turns: {n} tokens after the prompt (docs/tools.md)')

  # ---- persistent: lives through the whole run ----
  # LoRA: the base is frozen (no gradient, no moments, and it is its own KL reference); the adapters train
  trainable, frozen = lora.split(shapes)
  trainable_axes, frozen_axes = lora.split(axes)
  # optax's mu_dtype is the first moment's only: nu stays in the params' dtype
  moments = _tree_bytes(trainable, trainable_axes, mesh, config.optimizer.mu_dtype or None)
  moments += _tree_bytes(trainable, trainable_axes, mesh)
  if frozen is None:
    params = _tree_bytes(shapes, axes, mesh)
    persistent = {'params': params, 'optimizer (AdamW mu, nu)': moments}
    if float(config.grpo.beta) > 0:
      persistent['reference model'] = params
  else:
    persistent = {
      f'frozen base ({param_dtype.name})': _tree_bytes(frozen, frozen_axes, mesh),
      f'LoRA adapters (rank {cfg.lora.rank}, float32)': _tree_bytes(trainable, trainable_axes, mesh),
      'optimizer (AdamW mu, nu of the adapters)': moments,
    }
    notes.append('LoRA: the KL reference is the frozen base without adapters (no second copy)')
  gradients = _tree_bytes(trainable, trainable_axes, mesh)

  # Weights the forward pass materialises: the layer stack cast to the compute dtype (model.forward), the
  # embedding table gathered over fsdp for the lookup / tied unembedding, two layers' FSDP all-gathers in flight.
  # Without FSDP (fsdp = 1) nothing is gathered: every weight is used where it lies.
  layers_only = {'layers': shapes['layers']}  # adapters are small: their casts are not counted
  cast_copy = _tree_bytes(layers_only, {'layers': axes['layers']}, mesh, c) if c != param_dtype else 0
  v, d, L = cfg.vocab_size, cfg.d_model, cfg.num_layers
  gathers = sizes['fsdp'] > 1
  table = local_bytes((v, d), ('vocab', None), c, mesh) if gathers else 0
  per_layer_gathered = (
    sum(
      local_bytes(s.shape[1:], tuple(None if name == 'embed' else name for name in a[1:]), c, mesh)
      for s, a in zip(_leaves(shapes['layers']), _leaves(axes['layers']))
    )
    if gathers
    else 0
  )

  # ---- sampling (train sampler: R rows; eval sampler: eval_batch_size rows) ----
  sampling_items = {}
  # as inference._batch_rows rounds it: whole groups of eval_samples rows on every host
  eval_rows = sharding.sampling_rows(
    int(config.eval_batch_size), sizes['data'] * sizes['fsdp'], hw.hosts * int(config.eval_samples)
  )
  for label, r, k in (('train', rows, g), ('eval', eval_rows, int(config.eval_samples))):
    # one turn of groups of k rows keeps each prompt's keys once (sampler._start); episodes keep a copy per row
    kv_slots = ((r // k, p), (r, n)) if k > 1 and r % k == 0 and steps == 1 else ((r, p + n),)
    kv = sum(
      local_bytes(shape, kvcache.AXES[name], cache_dtype, mesh)
      for rr, ss in kv_slots
      for name, shape in kvcache.shapes(cfg, rr, ss).items()
    )
    prefill = _layer_activations(cfg, r, p, p + n, c, mesh) // 2  # no backward: about half is live at once
    last_logits = LOGITS_COPIES * local_bytes((r, 1, v), ('act_batch', 'act_len', 'vocab'), jnp.float32, mesh)
    on_cpu = hw.generation == 'cpu'  # the sampler splits the layers once per call there (model.split_layers)
    items = {
      'KV cache': kv,
      'sampling activations (prefill layer, logits)': prefill + last_logits,
      'gathered / cast weights': (0 if on_cpu else cast_copy) + table + 2 * per_layer_gathered,
    }
    if on_cpu:  # the split is the cast copy, and with LoRA the merged one
      items['layers split for decoding (CPU)'] = _tree_bytes(layers_only, {'layers': axes['layers']}, mesh, c)
    elif frozen is not None and param_dtype == c == jnp.float32:  # lora.merged_for_sampling: one merged copy
      items['merged LoRA weights (float32 base)'] = _tree_bytes(layers_only, {'layers': axes['layers']}, mesh)
    if not sampling_items or sum(items.values()) > sum(sampling_items.values()):
      sampling_items, sampling_label = items, label
  notes.append(f'sampling peak from the {sampling_label} sampler')

  # ---- train step ----
  mrows = rows // micro
  t = p + n - 1
  one_layer = _layer_activations(cfg, mrows, t, t, c, mesh)
  carry = local_bytes((mrows, t, d), ('act_batch', 'act_len', 'act_embed'), c, mesh)
  shape_label = f'{mrows} rows x {t} tokens'
  if g > 1 and mrows % g == 0:
    # each group's prompt once, then its completions packed into rows of n: G rows when none shares a row (the
    # most there can be: completions of max_new_tokens)
    one_layer = _layer_activations(cfg, mrows // g, p, p, c, mesh) + _layer_activations(cfg, mrows, n, p + n, c, mesh)
    carry = sum(
      local_bytes((r, s, d), ('act_batch', 'act_len', 'act_embed'), c, mesh) for r, s in ((mrows // g, p), (mrows, n))
    )
    shape_label = f'{mrows // g} prompts x {p} + at most {mrows} packed rows x {n} tokens'
  if config.remat:
    activations = L * carry + 2 * one_layer  # each layer's input saved; one layer recomputed + its backward
  else:
    activations = (L + 1) * one_layer
  chunk = step_lib.logit_chunk(mrows, n, v)  # positions whose logits exist at once (all n unless chunked)
  logits = LOGITS_COPIES * local_bytes((mrows, chunk, v), ('act_batch', 'act_len', 'vocab'), jnp.float32, mesh)
  train = {
    'gradients': gradients,
    f'activations ({"remat" if config.remat else "no remat"}, {shape_label})': activations,
    f'logits [{mrows}, {chunk}{"" if chunk == n else f" of {n}"}, {v}] f32 x{LOGITS_COPIES}': logits,
    'gathered / cast weights': cast_copy + 2 * table + 2 * per_layer_gathered,
  }
  if micro > 1:
    train['gradient accumulator'] = _tree_bytes(trainable, trainable_axes, mesh, jnp.float32)
  return Plan(
    model=cfg.name,
    num_params=cfg.num_params(),
    hardware=hw,
    mesh=sizes,
    rows=rows,
    seq_len=p + n,
    persistent=persistent,
    sampling=sampling_items,
    train=train,
    headroom=headroom,
    notes=notes,
    vocab_size=cfg.vocab_size,
  )


@functools.lru_cache(maxsize=8)
def _shapes(cfg: model_lib.TransformerConfig, dtype):
  """Abstract params and their logical axes (cached: suggestions re-plan the same model several times)."""
  return model_lib.param_shapes(cfg, dtype), model_lib.param_axes(cfg)


# ---- report ----------------------------------------------------------------------------------------------------
def format_plan(plan: Plan) -> str:
  hw = plan.hardware
  unit, scale = ('GiB', GiB) if plan.peak >= GiB else ('MiB', 1024**2)  # the tiny configs: MiB

  def _gib(x: int) -> str:
    return f'{x / scale:8.2f}'

  lines = [
    f'model {plan.model} ({presets.params_text(plan.num_params)} params) on {hw.name}: {hw.chips} chips x '
    f'{hw.hbm_bytes / GiB:.0f} GiB, {hw.hosts} host(s) x {hw.chips_per_host} chips',
    f'mesh data={plan.mesh["data"]} fsdp={plan.mesh["fsdp"]} tensor={plan.mesh["tensor"]}; '
    f'{plan.rows} rows x {plan.seq_len} tokens per step',
    '',
    f'{"per device":<58}{unit:>8}',
  ]
  for title, items in (
    ('persistent', plan.persistent),
    ('sampling (transient)', plan.sampling),
    ('train step (transient)', plan.train),
  ):
    lines.append(f'{title}')
    lines += [f'  {name:<56}{_gib(size)}' for name, size in items.items()]
  lines += [
    f'{"peak while sampling":<58}{_gib(plan.sampling_peak)}',
    f'{"peak in the train step":<58}{_gib(plan.train_peak)}',
    f'{"PEAK":<58}{_gib(plan.peak)}',
    f'{"usable (HBM minus " + format(plan.headroom, ".0%") + " headroom)":<58}{_gib(plan.usable)}',
  ]
  lines += [f'note: {n}' for n in plan.notes]
  return '\n'.join(lines)


def _candidates(plan: Plan, config) -> list[tuple[str, dict]]:
  """Config changes worth trying, as (flag text, {dotted key: value})."""
  out = []
  g, b = int(config.num_generations), int(config.batch_size)
  shards = plan.mesh['data'] * plan.mesh['fsdp']
  if plan.mesh['data'] > 1:
    out.append(
      ('--config.mesh.data=1 --config.mesh.fsdp=-1 (data replicates the weights)', {'mesh.data': 1, 'mesh.fsdp': -1})
    )
  if plan.mesh['tensor'] == 1 and plan.hardware.chips_per_host >= 4 and plan.hardware.chips % 4 == 0:
    out.append(
      (
        '--config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=4 (tensor within a host splits '
        'the vocab of the logits and the MLP)',
        {'mesh.data': 1, 'mesh.fsdp': -1, 'mesh.tensor': 4},
      )
    )
  if not config.lora.rank:
    out.append(
      ('--config.lora.rank=16 (LoRA: a frozen base, adapters train; raise the learning rate ~10x)', {'lora.rank': 16})
    )
    if float(config.grpo.beta) > 0:
      out.append(('--config.grpo.beta=0 (no reference model)', {'grpo.beta': 0.0}))
  if jnp.dtype(config.param_dtype) == jnp.float32:
    out.append(('--config.param_dtype=bfloat16', {'param_dtype': 'bfloat16'}))
  if jnp.dtype(config.sampling.cache_dtype or 'float32') == jnp.float32:
    out.append(('--config.sampling.cache_dtype=bfloat16', {'sampling.cache_dtype': 'bfloat16'}))
  if not config.remat:
    out.append(('--config.remat=True', {'remat': True}))
  if b % 2 == 0 and (b // 2 * g) % shards == 0:
    out.append((f'--config.batch_size={b // 2}', {'batch_size': b // 2}))
  if g % 2 == 0 and g > 2 and (b * g // 2) % shards == 0:
    out.append((f'--config.num_generations={g // 2}', {'num_generations': g // 2}))
  n = int(config.sampling.max_new_tokens)
  if n >= 2:
    out.append((f'--config.sampling.max_new_tokens={n // 2}', {'sampling.max_new_tokens': n // 2}))
  micro = int(config.train_microbatches)
  if (b * g) % (2 * micro * shards) == 0:
    out.append(
      (f'--config.train_microbatches={2 * micro} (the train step in smaller pieces)', {'train_microbatches': 2 * micro})
    )
  return out


def suggestions(plan: Plan, config) -> list[str]:
  """Concrete changes with the peak each would give, best first (each change alone, from this config)."""
  out = []
  total_persistent = sum(plan.persistent.values())
  if total_persistent > plan.usable:
    need = math.ceil(total_persistent * plan.hardware.chips / plan.usable)
    out.append(
      f'params + optimizer (+ reference) alone need {total_persistent / GiB:.1f} GiB per device at '
      f'{plan.mesh["fsdp"] * plan.mesh["tensor"]}-way sharding: use a slice with at least {need} chips of '
      f'this type ({_slice_name(plan.hardware, need)} or larger, all chips in mesh.fsdp x tensor), or a '
      f'smaller model'
    )
  tried = []
  for text, changes in _candidates(plan, config):
    alt = config.copy_and_resolve_references()
    for key, value in changes.items():
      *parents, leaf = key.split('.')
      node = alt
      for part in parents:
        node = node[part]
      node[leaf] = value
    try:
      runspec.check(alt, devices=plan.hardware.chips, processes=plan.hardware.hosts, inputs=False)
      peak = make_plan(alt, plan.hardware, headroom=plan.headroom).peak
    except errors.ConfigError:
      continue
    tried.append((peak, text))
  for peak, text in sorted(tried):
    if peak >= plan.peak:
      continue  # e.g. tensor parallelism that leaves more rows per device
    verdict = 'fits' if peak <= plan.usable else 'still too big'
    out.append(f'{text}: peak {peak / GiB:.1f} GiB ({verdict})')
  if len(out) > 1 or tried:
    out.append('changes combine: apply several of them and run the planner again')
  return out


def _slice_name(hw: Hardware, chips: int) -> str:
  """The smallest power-of-two slice of hw's generation with at least `chips` chips, named as TPU types are."""
  chips = 1 << max(0, (chips - 1).bit_length())
  counts_cores = GENERATIONS.get(hw.generation, (0, False, 0))[1]
  return f'{hw.generation}-{2 * chips if counts_cores else chips}'


def check(plan: Plan, config) -> str | None:
  """None when it fits; otherwise the message a user acts on."""
  if plan.fits:
    return None
  top = ', '.join(f'{name} {size / GiB:.1f} GiB' for name, size in plan.consumers()[:4])
  lines = [
    f'DOES NOT FIT: {plan.model} on {plan.hardware.name} needs {plan.peak / GiB:.1f} GiB per device at peak, '
    f'{plan.usable / GiB:.1f} GiB usable ({plan.hardware.hbm_bytes / GiB:.0f} GiB HBM minus '
    f'{plan.headroom:.0%} headroom).',
    f'biggest consumers: {top}.',
    'try:',
  ]
  lines += [f'  - {s}' for s in suggestions(plan, config)]
  return '\n'.join(lines)


# ---- CLI -------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str]) -> int:
  """`python -m rftjax.plan --config=... --devices=...`; returns the exit status (0 fits, 1 does not, 2 bad input).
  Parses its own FlagValues, so tests can call `main([...])` in-process."""

  def define(fv) -> None:
    from absl import flags

    cli.define_openai_job(fv)
    flags.DEFINE_string(
      'devices',
      None,
      "Slice: v5p-32, v5e-8, v6e-16, v4-8, cpu-8, ... (default: the config's "
      '`devices` field, which configs/gemma3_tpu.py sets)',
      flag_values=fv,
    )
    flags.DEFINE_float('headroom', 0.1, 'Fraction of HBM kept free (XLA scratch, fragmentation).', flag_values=fv)
    flags.DEFINE_integer(
      'num_train_examples',
      0,
      'Training examples, for the OpenAI-style fields (default: the '
      'lines of config.data.train when it is readable here, else 1000, with a warning)',
      flag_values=fv,
    )

  def body() -> int:
    job, argv_ = cli.openai_job_argv(argv)  # (parse_job_flags would set up logging: tests call main in-process)
    fv = cli.parse_config_flags(argv_, define, required=('config',), doc=__doc__)
    if fv.verbosity:  # (0 is what `python -m rftjax.plan` set up; tests call main in-process)
      cli.setup_logging(fv.verbosity)
    config = fv.config
    if job is not None:  # the job's fields over the config its model names, as training applies them
      from rftjax import openai_job

      config = openai_job.apply(config, job, cli.override_keys(argv_))
    devices = fv.devices or config.get('devices')
    if not devices:
      raise errors.ConfigError("--devices is required (the config's `devices` is empty): e.g. --devices=v5p-32")
    hw = parse_devices(devices)
    if not 0 <= fv.headroom < 1:
      raise errors.ConfigError(f'--headroom={fv.headroom}: expected a fraction of HBM kept free, in [0, 1)')
    n_train = fv.num_train_examples or _count_lines(config.data.train)
    config = hparams.apply(config, n_train, cli.override_keys(argv_))
    runspec.check(config, devices=hw.chips, processes=hw.hosts, inputs=False)
    plan = make_plan(config, hw, headroom=fv.headroom)
    print(resolved_summary(config, n_train))
    print(format_plan(plan))
    message = check(plan, config)
    if message:
      print(message, file=sys.stderr)
      return 1
    peak = f'{plan.peak / GiB:.1f} GiB' if plan.peak >= GiB / 10 else f'{plan.peak / 1024**2:.1f} MiB'
    print(f'fits: peak {peak} of {plan.usable / GiB:.1f} GiB usable per device')
    return 0

  return cli.run(body)


def resolved_summary(config, n_train: int) -> str:
  """What training would run, with the OpenAI-style fields applied as the trainer applies them."""
  rows = config.batch_size * config.num_generations
  lines = [
    f'run: {config.total_steps} steps of {config.batch_size} prompts x {config.num_generations} completions = '
    f'{rows} rows ({n_train} training examples), learning rate {config.optimizer.learning_rate:g}, '
    f'{"LoRA rank " + str(config.lora.rank) if config.lora.rank else "full fine-tuning"}, '
    f'validation every {config.eval_interval} steps'
  ]
  for key, how in json.loads(config.openai.get('resolved') or '{}').items():
    lines.append(f'  {key} = {how["value"]}  ({how["from"]})')
  return '\n'.join(lines)


def _count_lines(path: str) -> int:
  """Non-blank lines of a data file (local or gs://), or 1000, with a warning, when it is not readable here (a
  placeholder path, a bucket this machine has no credentials for)."""
  try:
    with epath.Path(path).open('rb') as f:
      return max(1, sum(1 for line in f if line.strip()))
  except Exception as e:  # noqa: BLE001 - whatever the filesystem raises (OSError, a GCS client's errors)
    log.warning(
      'config.data.train=%r is not readable here (%s: %s): planning for 1000 training examples; '
      '--num_train_examples=N plans for N',
      str(path),
      type(e).__name__,
      str(e).splitlines()[0][:200] if str(e) else '',
    )
    return 1000


if __name__ == '__main__':
  cli.command(lambda: main(sys.argv))
