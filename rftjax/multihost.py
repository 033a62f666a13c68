"""Multi-host: JAX's own multi-controller runtime and the few host-side collectives rftjax needs.

On a pod slice every host runs the same command (`tpu/launch.sh`); `initialize` joins them into one JAX runtime.
From then on each host samples, decodes and grades its own rows: `to_global` builds the device batch from every
host's rows, `local_rows` takes this host's rows back out of a batch-sharded array, `allmean` reduces per-host
metrics, `any_host` agrees on a flag (preemption), `gather_objects` hands every host the JSON records of all of
them (evaluation) and `on_process_0` runs what one host does for all (the run folder's lock, config.json) so that
its failure stops every host. With one process every function is the identity or close to it, so CPU tests run the
same code.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import urllib.request

import jax
import numpy as np
from jax.experimental import multihost_utils

from rftjax import errors
from rftjax import sharding

log = logging.getLogger(__name__)


def on_multihost_tpu_vm() -> bool:
  """Whether this is one host of a multi-host TPU slice, read where jax.distributed.initialize() reads its hosts:
  GKE lists them in TPU_PROCESS_ADDRESSES or TPU_WORKER_HOSTNAMES, a Cloud TPU VM (tpu/create.sh's) in its metadata
  attribute worker-network-endpoints. Only a machine with TPU chips asks the metadata server."""
  for var in ('TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES'):
    if os.environ.get(var):
      return ',' in os.environ[var]
  if os.environ.get('TPU_SKIP_MDS_QUERY') or not has_tpu_chips():
    return False
  return ',' in tpu_metadata('worker-network-endpoints')


def has_tpu_chips() -> bool:
  """TPU chips show up as /dev/accel* (v2-v4) or /dev/vfio/N (v5e and later)."""
  return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def tpu_metadata(key: str, timeout_s: float = 5.0) -> str:
  """The VM's metadata attribute `key` ('' when it has none or there is no metadata server: not on GCE)."""
  host = os.environ.get('GCE_METADATA_IP', 'metadata.google.internal')  # as JAX reads it
  url = f'http://{host}/computeMetadata/v1/instance/attributes/{key}'
  try:
    with urllib.request.urlopen(
      urllib.request.Request(url, headers={'Metadata-Flavor': 'Google'}), timeout=timeout_s
    ) as r:
      return r.read().decode()
  except (OSError, ValueError):  # URLError, HTTPError and timeouts are OSErrors
    return ''


def initialize(
  mode: str = 'auto', coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
  """Calls jax.distributed.initialize when asked or when the environment says we are one of several hosts. Flags
  that cannot work together are a ConfigError naming them (JAX's own errors are tracebacks)."""
  if (num_processes is not None or process_id is not None) and not coordinator:
    raise errors.ConfigError(
      f'--num_processes={num_processes} --process_id={process_id}: expected --coordinator=HOST:PORT with them '
      "(process 0's address), or neither (a TPU VM finds its hosts itself)"
    )
  if coordinator and (num_processes is None or process_id is None or not 0 <= process_id < num_processes):
    raise errors.ConfigError(
      f'--coordinator={coordinator}: expected --num_processes=N and --process_id in 0..N-1 with it, found '
      f'--num_processes={num_processes} --process_id={process_id}'
    )
  if mode == 'off':
    return False
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  elif mode == 'on' or on_multihost_tpu_vm():
    try:
      jax.distributed.initialize()  # auto-detects the coordinator on TPU VMs
    except ValueError as e:
      raise errors.ConfigError(
        f'--distributed={mode}: this machine does not say who its other hosts are ({e}); expected a multi-host TPU VM, '
        'or --coordinator=HOST:PORT --num_processes=N --process_id=I'
      ) from None
  else:
    return False
  log.info(
    'jax.distributed: process %d of %d, %d local / %d global devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def spans_hosts(mesh) -> bool:
  """True when the mesh has devices of several processes (rows must then be split between the hosts)."""
  return mesh is not None and len({d.process_index for d in mesh.devices.flat}) > 1


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


# metrics that count over the batch (a host's count is its share: the batch's is the sum over hosts)
COUNTS = ('num_graded', 'num_discarded', 'tools/errors/', 'tools/discarded_rollouts', 'tools/outputs_clipped')


def allmean(values: dict[str, float]) -> dict[str, float]:
  """Per-host metrics -> global ones (hosts hold equal numbers of rows): means average, counts (`COUNTS`) sum,
  `*_max` and `*_max_s` take the max, and `X_std` pools with its `X_mean` (total variance = mean of variances +
  variance of means)."""
  if jax.process_count() == 1 or not values:
    return values
  keys = sorted(values)
  gathered = multihost_utils.process_allgather(np.asarray([values[k] for k in keys], np.float64))
  return combine(keys, np.asarray(gathered).reshape(jax.process_count(), -1))


def _verdicts(keys: list[str], g: np.ndarray, key: str) -> np.ndarray | None:
  """Each host's count of the gradings behind a split's reward mean, std or sub-grader mean (`<split>/num_graded`
  less `<split>/num_discarded`), or None for another key or when no host has any."""
  for end in ('_reward_mean', '_reward_std'):
    if key.endswith(end):
      split = key[: -len(end)]
      break
  else:
    split = key.split('/grader/')[0] if '/grader/' in key else None
  if split is None or f'{split}/num_graded' not in keys:
    return None
  n = g[:, keys.index(f'{split}/num_graded')]
  if f'{split}/num_discarded' in keys:
    n = n - g[:, keys.index(f'{split}/num_discarded')]
  return n if n.sum() > 0 else None


def combine(keys: list[str], g: np.ndarray) -> dict[str, float]:
  """`allmean`'s rule on `g[host, i]`, every host's value of `keys[i]`. A reward's mean and std weigh each host by
  the gradings they are over: a host whose results an outage left without a verdict has fewer (or none)."""
  out = {}
  for i, k in enumerate(keys):
    col = g[:, i]
    w = _verdicts(keys, g, k)
    w = np.ones_like(col) if w is None else w
    if any(k.endswith(c) or c.endswith('/') and c in k for c in COUNTS):
      out[k] = float(col.sum())
    elif k.endswith(('_max', '_max_s')):
      out[k] = float(col.max())
    elif k.endswith('_std') and k[:-4] + '_mean' in keys:
      m = g[:, keys.index(k[:-4] + '_mean')]
      mean = np.sum(w * m) / w.sum()
      out[k] = float(np.sqrt(max(np.sum(w * (col**2 + m**2)) / w.sum() - mean**2, 0.0)))
    else:
      out[k] = float(np.sum(w * col) / w.sum())
  return out


def max_over_hosts(*values: int) -> tuple[int, ...]:
  """Each value's maximum over every host, in one collective (for flags: whether any host's is set)."""
  if jax.process_count() == 1:
    return tuple(int(v) for v in values)
  gathered = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64)))
  return tuple(int(v) for v in gathered.reshape(-1, len(values)).max(axis=0))


def pooled_moments(x, keep=None) -> tuple[float, float]:
  """(mean, population std) of the `keep` entries of `x` over every host's rows: what a batch-wide normalisation
  (scale_rewards='batch', GDPO) needs when each host holds only its own rows."""
  x = np.asarray(x, np.float64).reshape(-1)
  x = x if keep is None else x[np.asarray(keep, bool).reshape(-1)]
  sums = np.asarray([x.size, x.sum(), (x**2).sum()])
  if jax.process_count() > 1:
    sums = np.asarray(multihost_utils.process_allgather(sums)).reshape(-1, 3).sum(axis=0)
  n, total, squares = sums
  mean = total / max(n, 1)
  return float(mean), float(np.sqrt(max(squares / max(n, 1) - mean**2, 0.0)))


def any_host(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.asarray(multihost_utils.process_allgather(np.asarray([flag]))).any())


def check_shared_folder(folder) -> None:
  """Every host must see the same run folder when it is a local path (a shared file system): Orbax's checkpoint
  commit waits for every host's write to show up there, and waits forever when each host has a folder of its own.
  A ConfigError on every host when one cannot see what process 0 wrote."""
  if jax.process_count() == 1:
    return
  (token,) = gather_objects([os.urandom(8).hex()] if jax.process_index() == 0 else [])
  marker = folder / f'.rftjax-shared-{token}'
  if jax.process_index() == 0:
    marker.write_text('')
  multihost_utils.sync_global_devices('rftjax-shared-folder-written')
  missing = max_over_hosts(0 if marker.exists() else jax.process_index() + 1)[0]
  multihost_utils.sync_global_devices('rftjax-shared-folder-read')
  if jax.process_index() == 0:
    marker.unlink(missing_ok=True)
  if missing:
    raise errors.ConfigError(
      f'--workdir={folder}: process {missing - 1} of {jax.process_count()} does not see what process 0 writes there; '
      'a multi-host run needs one folder every host sees: a gs:// workdir, or a shared file system'
    )


def on_process_0(fn, *args):
  """`fn(*args)` on process 0 only (its result there, None elsewhere). When it raises, every host raises: process 0
  its exception, the others one of its class (an errors.UserError's; OutputError's exit status is 1) with its message
  (a RuntimeError naming it, for a bug; a Ctrl-C's, a SIGTERM's or an exit's, with its status), so no host waits at
  its next collective for a process 0 that has gone, until the coordinator's heartbeat gives up."""
  if jax.process_count() == 1:
    return fn(*args)
  result, failure = None, None
  if jax.process_index() == 0:
    try:
      result = fn(*args)
    except BaseException as e:  # a Ctrl-C or SIGTERM (cli.Terminated) too: the others wait in the gather below
      failure = e
  kind = type(failure).__name__
  if isinstance(failure, KeyboardInterrupt):  # cli.Terminated: a SIGTERM's
    kind = 'terminated' if getattr(failure, 'signum', None) == signal.SIGTERM else 'interrupt'
  message = failure.code if isinstance(failure, SystemExit) else str(failure)
  message = message if isinstance(message, (int, str, type(None))) else str(message)  # JSON, for the gather
  said = gather_objects([[isinstance(failure, errors.UserError), kind, message]] if failure is not None else [])
  if failure is not None:
    raise failure
  if said:
    user_error, kind, message = said[0]
    if user_error:  # the CLIs print it as process 0 does: one `error: ...` line, its exit status (OutputError's 1)
      kind = getattr(errors, kind, errors.UserError)
      raise (kind if isinstance(kind, type) and issubclass(kind, errors.UserError) else errors.UserError)(message)
    if kind == 'SystemExit':  # train's on a SIGTERM while starting: its status (42)
      raise SystemExit(message)
    if kind in ('interrupt', 'terminated'):  # stopped as process 0 was: 'interrupted' (130) or 'terminated' (143)
      from rftjax import cli

      raise cli.Terminated() if kind == 'terminated' else KeyboardInterrupt()
    raise RuntimeError(f'process 0 stopped with {kind}: {message}')
  return result


def gather_objects(objects: list) -> list:
  """Every host's list of JSON-able objects, concatenated in process order, on every host."""
  if jax.process_count() == 1:
    return list(objects)
  data = np.frombuffer(json.dumps(objects).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[: data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [obj for row, n in zip(rows, sizes) for obj in json.loads(row[:n].tobytes())]
