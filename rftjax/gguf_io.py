"""Reading GGUF files: metadata -> architecture fields, tensors -> float32 arrays in Hugging Face layout.

weights.py owns the key table; this module only knows GGUF's conventions (docs/platform.md):
  * shapes are stored reversed (`token_embd` [640, 262144] is the numpy array (262144, 640));
  * every tensor, quantized or not, is dequantized to float32 with `gguf.quants.dequantize`;
  * Gemma's RMSNorm weights are stored with the +1 of `(1 + w)` already added (HF weight = GGUF value - 1);
  * for the `llama` architecture, llama.cpp permutes the rows of `attn_q` / `attn_k` for interleaved RoPE; HF (and
    rftjax) use rotate-half, so the rows are un-permuted here.
A tensor comes back exactly as Hugging Face's `model.safetensors` would hold it, so one table serves both formats.
"""

from __future__ import annotations

import os
import struct

import numpy as np

# GGUF `general.architecture` -> rftjax family.
FAMILIES = {'gemma3': 'gemma3', 'llama': 'llama', 'qwen2': 'llama', 'qwen3': 'llama'}


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """HF (rotate-half) rows -> llama.cpp (interleaved) rows, per head; what `convert_hf_to_gguf.py` does."""
  rows = w.shape[0]
  return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp (interleaved) rows -> HF (rotate-half) rows; the inverse of `permute_rotary`."""
  rows = w.shape[0]
  return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_SCALAR = {0: '<B', 1: '<b', 2: '<H', 3: '<h', 4: '<I', 5: '<i', 6: '<f', 7: '<?', 10: '<Q', 11: '<q', 12: '<d'}
_STRING, _ARRAY = 8, 9


def _read_header(buf) -> tuple[dict, list, int]:
  """(metadata, [(name, numpy shape, type, offset)], data start) of a GGUF v2+ file.

  gguf-py's `GGUFReader` builds numpy views of every vocabulary string (~20 s for 49k tokens + merges on this
  machine); the plain `struct` walk below reads the same header in well under a second.
  """
  head = bytes(buf[:24])
  if head.startswith(b'version https://git-lfs'):  # a clone without `git lfs pull`: the pointer, not the file
    raise ValueError('a Git LFS pointer file, not the GGUF it points to (fetch it: git lfs pull)')
  if len(head) < 24 or head[:4] != b'GGUF' or struct.unpack_from('<I', head, 4)[0] < 2:
    raise ValueError(f'not a GGUF v2+ file (it starts with {head[:8]!r})')
  _, _, n_tensors, n_kv = struct.unpack_from('<4sIQQ', buf, 0)

  def string(pos):
    (n,) = struct.unpack_from('<Q', buf, pos)
    return str(buf[pos + 8 : pos + 8 + n], 'utf-8', 'replace'), pos + 8 + n

  def value(kind, pos):
    if kind == _STRING:
      return string(pos)
    if kind == _ARRAY:
      item_kind, count = struct.unpack_from('<IQ', buf, pos)
      pos += 12
      if item_kind in _SCALAR:
        size = struct.calcsize(_SCALAR[item_kind])
        return np.frombuffer(buf, _SCALAR[item_kind], count, pos).copy(), pos + size * count
      items = []
      for _ in range(count):
        item, pos = value(item_kind, pos)
        items.append(item)
      return items, pos
    fmt = _SCALAR[kind]
    return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)

  metadata, pos = {}, 24
  for _ in range(n_kv):
    key, pos = string(pos)
    (kind,) = struct.unpack_from('<I', buf, pos)
    metadata[key], pos = value(kind, pos + 4)
  tensors = []
  for _ in range(n_tensors):
    name, pos = string(pos)
    (n_dims,) = struct.unpack_from('<I', buf, pos)
    dims = struct.unpack_from(f'<{n_dims}Q', buf, pos + 4)
    kind, offset = struct.unpack_from('<IQ', buf, pos + 4 + 8 * n_dims)
    pos += 4 + 8 * n_dims + 12
    tensors.append((name, tuple(int(d) for d in reversed(dims)), kind, offset))  # reversed: numpy order
  align = int(metadata.get('general.alignment', 32))
  return metadata, tensors, (pos + align - 1) // align * align


def read_metadata(path: str | os.PathLike) -> dict:
  """All metadata key/values of a GGUF file (numeric arrays as numpy, string arrays as lists); no tensor is read."""
  try:
    data = np.memmap(path, np.uint8, mode='r')
    return _read_header(memoryview(data))[0]
  except (OSError, ValueError, struct.error) as e:
    raise ValueError(f'gguf:{path}: cannot read as GGUF ({e})') from e


class GGUFFile:
  """A memory-mapped GGUF: `.metadata` (dict of plain values), `.architecture`, `.names`, `.tensor(name)`."""

  def __init__(self, path: str | os.PathLike):
    import gguf  # imported lazily: only GGUF users need it (for its dequantization kernels)

    self._gguf = gguf
    self.path = str(path)
    try:
      self._data = np.memmap(self.path, np.uint8, mode='r')
      self.metadata, tensors, self._start = _read_header(memoryview(self._data))
    except (OSError, ValueError, struct.error) as e:
      raise ValueError(f'gguf:{self.path}: cannot read as GGUF ({e})') from e
    self._tensors = {name: (shape, kind, offset) for name, shape, kind, offset in tensors}
    self.architecture = str(self.field('general.architecture'))
    if self.architecture not in FAMILIES:
      raise ValueError(
        f'gguf:{self.path}: general.architecture is {self.architecture!r}; rftjax reads {sorted(FAMILIES)}'
      )
    self.family = FAMILIES[self.architecture]

  @property
  def names(self) -> list[str]:
    return list(self._tensors)

  def field(self, key: str, default=None):
    """A metadata value (numbers, str, lists; numeric arrays as numpy)."""
    return self.metadata.get(key, default)

  def arch(self, key: str, default=None):
    """`{architecture}.{key}`, e.g. arch('block_count')."""
    return self.field(f'{self.architecture}.{key}', default)

  def shape(self, name: str) -> tuple[int, ...]:
    """numpy-order shape (GGUF stores it reversed)."""
    return self._tensors[name][0]

  def tensor(self, name: str) -> np.ndarray:
    """Dequantized float32 array in numpy order, exactly as stored (no Gemma / llama fix-ups)."""
    shape, kind, offset = self._tensors[name]
    qtype = self._gguf.GGMLQuantizationType(kind)
    block, block_bytes = self._gguf.GGML_QUANT_SIZES[qtype]
    row_bytes = shape[-1] // block * block_bytes
    n_bytes = int(np.prod(shape[:-1], dtype=np.int64)) * row_bytes
    raw = self._data[self._start + offset : self._start + offset + n_bytes].reshape(*shape[:-1], row_bytes)
    w = self._gguf.quants.dequantize(raw, qtype)  # uint8 rows -> float rows, any type incl. F32 / F16 / BF16
    return np.asarray(w, np.float32).reshape(shape)

  def hf_tensor(self, name: str, fix: str | None, cfg) -> np.ndarray:
    """The tensor in Hugging Face layout: applies a table row's GGUF fix ('norm_minus_1', 'rotary_q', 'rotary_k')."""
    w = self.tensor(name)
    if fix == 'norm_minus_1':
      return w - np.float32(1.0)
    if fix in ('rotary_q', 'rotary_k') and self.architecture == 'llama':  # qwen2 GGUFs are not permuted
      return unpermute_rotary(w, cfg.num_heads if fix == 'rotary_q' else cfg.num_kv_heads)
    return w

  # ---- architecture ----------------------------------------------------------------------------------------
  def config_fields(self) -> dict:
    """TransformerConfig fields this file states itself (others come from the preset or family defaults)."""
    heads = int(self.arch('attention.head_count'))
    d = int(self.arch('embedding_length'))
    head_dim = self.arch('attention.key_length') or self.arch('rope.dimension_count') or d // heads
    fields = dict(
      family=self.family,
      vocab_size=self.shape('token_embd.weight')[0],
      d_model=d,
      num_layers=int(self.arch('block_count')),
      num_heads=heads,
      num_kv_heads=int(self.arch('attention.head_count_kv', heads)),
      head_dim=int(head_dim),
      mlp_dim=int(self.arch('feed_forward_length')),
      # float32 in the file: its shortest decimal (1e-05), not the widened 9.999999747378752e-06 in an export
      norm_eps=float(str(np.float32(float(self.arch('attention.layer_norm_rms_epsilon'))))),  # (None: an error)
      tie_embeddings='output.weight' not in self._tensors,
    )
    scaling = self.arch('rope.scaling.type')
    if scaling not in (None, 'none', 'linear' if self.family == 'gemma3' else 'none'):
      raise ValueError(
        f'gguf:{self.path}: {self.architecture}.rope.scaling.type is {scaling!r}; rftjax runs plain RoPE'
        f'{" and linear scaling" if self.family == "gemma3" else ""} from a GGUF (its hf: checkpoint may be supported)'
      )
    if 'rope_freqs.weight' in self._tensors:  # Llama 3.1+: the llama3 rope scaling, stored as per-frequency factors
      raise ValueError(
        f'gguf:{self.path}: rope_freqs.weight holds RoPE frequency factors (Llama 3.1+ rope scaling) that rftjax does '
        "not apply to a GGUF; load the model's hf: checkpoint instead (its rope_scaling llama3 is supported)"
      )
    if self.arch('rope.freq_base') is not None:
      fields['rope_base'] = float(self.arch('rope.freq_base'))
    if self.arch('context_length') is not None:
      fields['max_seq_len'] = int(self.arch('context_length'))
    if self.family == 'gemma3':
      if self.arch('attention.sliding_window') is not None:
        fields['sliding_window'] = int(self.arch('attention.sliding_window'))
      if self.arch('rope.scaling.type') == 'linear':
        fields['rope_scale_global'] = float(self.arch('rope.scaling.factor'))
    else:
      fields['qkv_bias'] = 'blk.0.attn_q.bias' in self._tensors
      fields['qk_norm'] = 'blk.0.attn_q_norm.weight' in self._tensors
    return fields
