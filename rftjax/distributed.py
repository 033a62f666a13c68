"""Multi-host start-up: JAX's own multi-controller runtime, the same command on every worker."""

from __future__ import annotations

import logging
import os

import jax


def on_multihost_tpu_vm() -> bool:
  """TPU VM pod slices list every worker in TPU_WORKER_HOSTNAMES; a single-host VM lists one."""
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def maybe_initialize(
  mode: str = 'auto', coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
  """Calls jax.distributed.initialize when asked or when the environment says we are one of several hosts."""
  if mode == 'off':
    return False
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  elif mode == 'on' or on_multihost_tpu_vm():
    jax.distributed.initialize()  # auto-detects the coordinator on TPU VMs
  else:
    return False
  logging.info(
    'jax.distributed: process %d of %d, %d local / %d global devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
