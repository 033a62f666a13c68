"""The mesh and the one table that maps logical axis names to mesh axes.

Model code names axes ('embed', 'heads', 'act_batch', ...); this module alone decides where they go. A dimension
that a mesh axis does not divide stays replicated (Gemma's single KV head on a tensor axis of 2, say), and with no
mesh set every constraint is a no-op, so CPU tests run the very same code as a pod slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rftjax import errors

MESH_AXES = ('data', 'fsdp', 'tensor')

# logical name -> mesh axes (None = replicated). Weights are FSDP-sharded on their 'embed' dim and tensor-parallel
# on heads / MLP / vocab; activations are split over the batch only.
RULES: dict[str, tuple[str, ...] | str | None] = {
  'act_batch': ('data', 'fsdp'),
  'act_len': None,
  'act_embed': None,
  'act_mlp': 'tensor',
  'vocab': 'tensor',
  'embed': 'fsdp',
  'heads': 'tensor',
  'kv_heads': 'tensor',
  'mlp': 'tensor',
  'head_dim': None,
  'layers': None,
  'norm': None,
  'lora_rank': None,  # adapters split like the weight they adapt, on its other axes
}


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> dict[str, int]:
  """{'data', 'fsdp', 'tensor'} sizes from a config with those fields; one of them may be -1 (the rest). Raises
  ConfigError naming `config.mesh` when the sizes cannot cover `num_devices` exactly."""
  try:
    sizes = {name: int(mesh_cfg[name] if isinstance(mesh_cfg, dict) else getattr(mesh_cfg, name)) for name in MESH_AXES}
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise errors.ConfigError(f'config.mesh: expected integer fields {", ".join(MESH_AXES)} ({e})') from None
  if any(s < 1 and s != -1 for s in sizes.values()) or list(sizes.values()).count(-1) > 1:
    raise errors.ConfigError(
      f'config.mesh: expected sizes >= 1, at most one of them -1 (all remaining devices), found {sizes}'
    )
  known = math.prod(s for s in sizes.values() if s != -1)
  if -1 in sizes.values():
    if num_devices % known:
      raise errors.ConfigError(f'config.mesh {sizes}: {num_devices} devices are not divisible by {known}')
    sizes[next(a for a, s in sizes.items() if s == -1)] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise errors.ConfigError(
      f'config.mesh {sizes}: expected data x fsdp x tensor = {num_devices} devices, found {math.prod(sizes.values())} '
      f'(a config written for another slice: --config.mesh.fsdp=-1 --config.mesh.tensor=1 spreads it over these '
      f'{num_devices})'
    )
  return sizes


def sampling_rows(rows: int, batch_shards: int, hosts: int = 1) -> int:
  """The rows an evaluation batch of `rows` prompts samples: rounded up so that every batch shard (data x fsdp) and
  every host gets the same number (repeats of the last prompt fill them). `hosts` may be hosts x a group size:
  each host's share is then whole groups."""
  multiple = math.lcm(batch_shards, hosts)
  return -(-rows // multiple) * multiple


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh over ('data', 'fsdp', 'tensor') from a config with those fields; one of them may be -1 (the rest)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = tuple(resolve_mesh_shape(mesh_cfg, len(devices)).values())
  axis_types = (jax.sharding.AxisType.Auto,) * 3
  if len(devices) == len(jax.devices()):
    return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types, devices=devices)
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=axis_types)


def logical_to_spec(
  names: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
  """PartitionSpec for logical names; drops mesh axes that do not divide the dim or are already used."""
  used: set[str] = set()
  spec = []
  for i, name in enumerate(names):
    target = RULES.get(name) if name else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    if mesh is not None and shape is not None:
      size = math.prod(mesh.shape[a] for a in axes)
      if shape[i] % size:
        axes = tuple(a for a in axes if shape[i] % mesh.shape[a] == 0)[:1]
        if axes and shape[i] % mesh.shape[axes[0]]:
          axes = ()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh | None, names: Sequence[str | None], shape: Sequence[int]):
  if mesh is None:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def param_shardings(shapes, axes, mesh: Mesh | None):
  """Tree of shardings for a tree of ShapeDtypeStructs and the matching tree of logical-axis tuples."""
  return jax.tree.map(
    lambda s, a: named_sharding(mesh, a, s.shape),
    shapes,
    axes,
    is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x),
  )


def data_sharding(mesh: Mesh | None, ndim: int = 2):
  """Batches are split over data x fsdp on their leading dim."""
  if mesh is None:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return NamedSharding(mesh, logical_to_spec(('act_batch',) + (None,) * (ndim - 1)))


def constrain(x, names: Sequence[str | None]):
  """with_sharding_constraint by logical names; a no-op when no mesh is set (jax.set_mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))
