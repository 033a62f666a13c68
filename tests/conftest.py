"""Test session setup shared by every test file.

Eight fake CPU devices so sharding tests can build a 2x2x2 mesh; single-device tests simply use no mesh.
A persistent compilation cache makes the second run of the suite much faster (docs/platform.md).
"""

import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing may come from a hub at test time

import jax  # noqa: E402  (must come after XLA_FLAGS)

# Slow, derived results (compiled programs, transformers' reference outputs, converted weights) are cached outside
# the checkout, so a fresh clone on the same machine reuses them; every test also works from an empty cache.
CACHE_ROOT = pathlib.Path(
  os.environ.setdefault('RFTJAX_TEST_CACHE', str(pathlib.Path.home() / '.cache' / 'rftjax-tests'))
)
(CACHE_ROOT / 'jax').mkdir(parents=True, exist_ok=True)
jax.config.update('jax_compilation_cache_dir', str(CACHE_ROOT / 'jax'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
