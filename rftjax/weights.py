"""Weight import / export: one declarative key table per family, read in one direction and inverted for the other.

A table row says where one rftjax parameter lives in a Hugging Face checkpoint and in a GGUF file, and how the HF
tensor is laid out relative to ours (`LAYOUTS`). GGUF tensors are first brought to HF layout (gguf_io.py: reversed
shapes, dequantization, Gemma's norm - 1, llama's q/k row un-permutation), so one layout transform serves both.

  load('gguf:PATH' | 'gguf:gemma3-270m' | 'hf:DIR', cfg, mesh) -> params   (pure dict, per-layer tensors stacked on L)
  config_from_file(init, expected)                                 -> TransformerConfig read from the file's metadata
  export_hf(params, cfg, out_dir, tokenizer)                        -> a folder transformers / vLLM load as-is
  export_peft(params['lora'], cfg, out_dir)                         -> a PEFT LoRA adapter folder for that base

Loading never holds more than one parameter (its addressable part) on the host: each tensor is read, transformed,
cast, sliced into the target sharding's per-device pieces and put on its devices; a stacked [L, ...] parameter is
filled layer by layer. Every tensor's shape is asserted against the config before use, naming the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rftjax import gguf_io
from rftjax import hf_config
from rftjax import model as model_lib
from rftjax import presets
from rftjax import pretrained
from rftjax import sharding
from rftjax import tokenizer as tokenizer_lib


# ---- the tables -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layout:
  """HF tensor (one layer's) <-> rftjax tensor (one layer's). Written with array methods: numpy and jnp alike."""

  to_model: Callable
  to_hf: Callable


LAYOUTS = {
  'same': Layout(lambda w, c: w, lambda w, c: w),  # embeddings [V, D], norm scales
  'transpose': Layout(lambda w, c: w.T, lambda w, c: w.T),  # Linear [out, in] <-> [in, out]
  'q': Layout(
    lambda w, c: w.T.reshape(c.d_model, c.num_heads, c.head_dim),  # [N*H, D] <-> [D, N, H]
    lambda w, c: w.reshape(c.d_model, -1).T,
  ),
  'kv': Layout(
    lambda w, c: w.T.reshape(c.d_model, c.num_kv_heads, c.head_dim),  # [K*H, D] <-> [D, K, H]
    lambda w, c: w.reshape(c.d_model, -1).T,
  ),
  'o': Layout(
    lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.d_model),  # [D, N*H] <-> [N, H, D]
    lambda w, c: w.reshape(-1, c.d_model).T,
  ),
  'q_bias': Layout(lambda w, c: w.reshape(c.num_heads, c.head_dim), lambda w, c: w.reshape(-1)),
  'kv_bias': Layout(lambda w, c: w.reshape(c.num_kv_heads, c.head_dim), lambda w, c: w.reshape(-1)),
}


@dataclasses.dataclass(frozen=True)
class Row:
  path: str  # rftjax params path, dots between keys; 'layers.*' are stacked on a leading L axis
  hf: str  # HF safetensors name; '{i}' is the layer
  gguf: str  # GGUF tensor name
  layout: str  # key of LAYOUTS
  gguf_fix: str | None = None  # gguf_io.GGUFFile.hf_tensor: 'norm_minus_1' | 'rotary_q' | 'rotary_k'
  when: str | None = None  # TransformerConfig flag the row needs; '!flag' for its negation


def _norm(path, hf, gguf, fix=None, when=None):
  return Row(f'{path}.scale', hf, gguf, 'same', fix, when)


_ATTN = (
  Row('layers.attn.q', 'model.layers.{i}.self_attn.q_proj.weight', 'blk.{i}.attn_q.weight', 'q', 'rotary_q'),
  Row('layers.attn.k', 'model.layers.{i}.self_attn.k_proj.weight', 'blk.{i}.attn_k.weight', 'kv', 'rotary_k'),
  Row('layers.attn.v', 'model.layers.{i}.self_attn.v_proj.weight', 'blk.{i}.attn_v.weight', 'kv'),
  Row('layers.attn.o', 'model.layers.{i}.self_attn.o_proj.weight', 'blk.{i}.attn_output.weight', 'o'),
  Row('layers.mlp.gate', 'model.layers.{i}.mlp.gate_proj.weight', 'blk.{i}.ffn_gate.weight', 'transpose'),
  Row('layers.mlp.up', 'model.layers.{i}.mlp.up_proj.weight', 'blk.{i}.ffn_up.weight', 'transpose'),
  Row('layers.mlp.down', 'model.layers.{i}.mlp.down_proj.weight', 'blk.{i}.ffn_down.weight', 'transpose'),
  Row('embed.embedding', 'model.embed_tokens.weight', 'token_embd.weight', 'same'),
  Row('lm_head.kernel', 'lm_head.weight', 'output.weight', 'transpose', when='!tie_embeddings'),
)

TABLES: dict[str, tuple[Row, ...]] = {
  'gemma3': _ATTN
  + (
    _norm('final_norm', 'model.norm.weight', 'output_norm.weight', 'norm_minus_1'),
    _norm('layers.attn_norm', 'model.layers.{i}.input_layernorm.weight', 'blk.{i}.attn_norm.weight', 'norm_minus_1'),
    _norm(
      'layers.post_attn_norm',
      'model.layers.{i}.post_attention_layernorm.weight',
      'blk.{i}.post_attention_norm.weight',
      'norm_minus_1',
    ),
    _norm(
      'layers.mlp_norm', 'model.layers.{i}.pre_feedforward_layernorm.weight', 'blk.{i}.ffn_norm.weight', 'norm_minus_1'
    ),
    _norm(
      'layers.post_mlp_norm',
      'model.layers.{i}.post_feedforward_layernorm.weight',
      'blk.{i}.post_ffw_norm.weight',
      'norm_minus_1',
    ),
    _norm(
      'layers.attn.q_norm', 'model.layers.{i}.self_attn.q_norm.weight', 'blk.{i}.attn_q_norm.weight', 'norm_minus_1'
    ),
    _norm(
      'layers.attn.k_norm', 'model.layers.{i}.self_attn.k_norm.weight', 'blk.{i}.attn_k_norm.weight', 'norm_minus_1'
    ),
  ),
  'llama': _ATTN
  + (  # Llama, SmolLM2, Qwen 2.5 (biases)
    _norm('final_norm', 'model.norm.weight', 'output_norm.weight'),
    _norm('layers.attn_norm', 'model.layers.{i}.input_layernorm.weight', 'blk.{i}.attn_norm.weight'),
    # HF llama calls the pre-MLP norm "post_attention_layernorm".
    _norm('layers.mlp_norm', 'model.layers.{i}.post_attention_layernorm.weight', 'blk.{i}.ffn_norm.weight'),
    Row(
      'layers.attn.q_bias', 'model.layers.{i}.self_attn.q_proj.bias', 'blk.{i}.attn_q.bias', 'q_bias', when='qkv_bias'
    ),
    Row(
      'layers.attn.k_bias', 'model.layers.{i}.self_attn.k_proj.bias', 'blk.{i}.attn_k.bias', 'kv_bias', when='qkv_bias'
    ),
    Row(
      'layers.attn.v_bias', 'model.layers.{i}.self_attn.v_proj.bias', 'blk.{i}.attn_v.bias', 'kv_bias', when='qkv_bias'
    ),
    # Qwen 3: RMSNorm of q and k per head (plain weights, not Gemma's 1 + w)
    _norm(
      'layers.attn.q_norm', 'model.layers.{i}.self_attn.q_norm.weight', 'blk.{i}.attn_q_norm.weight', when='qk_norm'
    ),
    _norm(
      'layers.attn.k_norm', 'model.layers.{i}.self_attn.k_norm.weight', 'blk.{i}.attn_k_norm.weight', when='qk_norm'
    ),
  ),
}
TABLES['tiny'] = TABLES['llama']  # the CPU test model is a small Llama: exported as one (reads back as 'llama')

# Tensors a checkpoint may carry that rftjax has no use for (not an error).
_IGNORED_SUFFIXES = ('rotary_emb.inv_freq', 'rope_freqs.weight')
_IGNORED_PREFIXES = ('vision_tower.', 'multi_modal_projector.', 'model.vision_tower.', 'model.multi_modal_projector.')


def table(cfg: model_lib.TransformerConfig) -> tuple[Row, ...]:
  """The rows that apply to this config (biases only with qkv_bias, lm_head only when untied, ...)."""
  if cfg.family not in TABLES:
    raise ValueError(f'model family {cfg.family!r} ({cfg.name}) has no weight table; known: {sorted(TABLES)}')

  def applies(row):
    if row.when is None:
      return True
    negate = row.when.startswith('!')
    return bool(getattr(cfg, row.when.lstrip('!'))) != negate

  return tuple(r for r in TABLES[cfg.family] if applies(r))


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _unflatten(flat):
  tree: dict = {}
  for path, v in flat.items():
    *parents, leaf = path.split('.')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def hf_shape(row: Row, cfg, model_shape) -> tuple[int, ...]:
  """The HF tensor shape (one layer) a row expects, derived from the rftjax shape through the layout."""
  layer_shape = model_shape[1:] if row.path.startswith('layers.') else model_shape
  out = jax.eval_shape(lambda w: LAYOUTS[row.layout].to_hf(w, cfg), jax.ShapeDtypeStruct(layer_shape, jnp.float32))
  return tuple(out.shape)


# ---- sources ----------------------------------------------------------------------------------------------------
class _HFSource:
  """A Hugging Face folder: config.json + model.safetensors or sharded model-*.safetensors with an index."""

  def __init__(self, directory: str):
    import safetensors

    self._safetensors = safetensors
    self.dir = pathlib.Path(directory)
    self.spec = f'hf:{directory}'
    if not (self.dir / 'config.json').is_file():
      adapter = (self.dir / 'adapter_config.json').is_file()
      raise FileNotFoundError(
        f'{self.spec}: no config.json in {self.dir}'
        + (
          ': it holds a PEFT adapter, not a model (its run directory is --workdir; its base, --init)' if adapter else ''
        )
      )
    if not any(self.dir.glob('*.safetensors')) and any(self.dir.glob('*.bin')):
      raise FileNotFoundError(
        f'{self.spec}: the weights are PyTorch .bin files, which rftjax does not read (they can run code when '
        'loaded); expected model.safetensors: write it with transformers, '
        '`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW, safe_serialization=True)`'
      )
    try:
      self.config = json.loads((self.dir / 'config.json').read_text())
    except ValueError as e:  # UnicodeDecodeError too
      raise ValueError(f'{self.dir / "config.json"} is not valid JSON ({e})') from None
    index = self.dir / 'model.safetensors.index.json'
    if index.is_file():
      self.files = {name: self.dir / f for name, f in json.loads(index.read_text())['weight_map'].items()}
    elif (self.dir / 'model.safetensors').is_file():
      with safetensors.safe_open(self.dir / 'model.safetensors', 'np') as f:
        self.files = {name: self.dir / 'model.safetensors' for name in f.keys()}
    else:
      raise FileNotFoundError(f'{self.spec}: neither model.safetensors nor model.safetensors.index.json')
    # Gemma 3 4B+ are multimodal checkpoints: the text decoder sits under a prefix.
    if 'model.language_model.embed_tokens.weight' in self.files:  # transformers >= 4.52 layout
      self.prefix = 'model.language_model.'
    elif 'language_model.model.embed_tokens.weight' in self.files:
      self.prefix = 'language_model.'
    else:
      self.prefix = ''
    self._open: dict = {}

  def name(self, row: Row, i: int | None) -> str:
    name = row.hf.format(i=i)
    if self.prefix == 'model.language_model.':  # transformers >= 4.52 layout: model.language_model.layers...
      return name.replace('model.', self.prefix, 1) if name.startswith('model.') else name
    return self.prefix + name

  def _file(self, name: str):
    path = self.files[name]
    if path not in self._open:
      if not path.is_file():
        raise FileNotFoundError(
          f'{self.spec}: {path.name} is missing, and model.safetensors.index.json places {name} there (an '
          'incomplete download?); expected every shard the index names'
        )
      self._open[path] = (f := self._safetensors.safe_open(path, 'np')), set(f.keys())
    f, names = self._open[path]
    if name not in names:
      raise ValueError(
        f'{self.spec}: {path.name} does not hold {name}, which model.safetensors.index.json places there (a shard '
        'from another download?); expected the index and its shards to agree'
      )
    return f

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._file(name).get_slice(name).get_shape())

  def read(self, row: Row, i: int | None, cfg) -> np.ndarray:
    return self._file(self.name(row, i)).get_tensor(self.name(row, i))

  def stated_fields(self) -> dict:
    return hf_config.read(self.config, self.spec)


class _GGUFSource:
  def __init__(self, path: str):
    self.file = gguf_io.GGUFFile(path)
    self.spec = f'gguf:{path}'
    self.files = dict.fromkeys(self.file.names)

  def name(self, row: Row, i: int | None) -> str:
    return row.gguf.format(i=i)

  def shape(self, name: str) -> tuple[int, ...]:
    return self.file.shape(name)

  def read(self, row: Row, i: int | None, cfg) -> np.ndarray:
    return self.file.hf_tensor(self.name(row, i), row.gguf_fix, cfg)

  def stated_fields(self) -> dict:
    return self.file.config_fields()


def _open(init: str):
  init = pretrained.resolve(init)
  kind, _, path = init.partition(':')
  if kind == 'gguf':
    return _GGUFSource(path)
  if kind == 'hf':
    return _HFSource(path)
  raise ValueError(f'init {init!r}: expected gguf:PATH, gguf:NAME ({", ".join(pretrained.SHORTHANDS)}) or hf:DIR')


# ---- architecture from the file -------------------------------------------------------------------------------
class ArchitectureMismatch(ValueError):
  """The file's architecture is not config.model's preset (a ValueError that names config.model, not the file)."""


def config_from_file(
  init: str, expected: model_lib.TransformerConfig | str | None = None
) -> model_lib.TransformerConfig:
  """The architecture a checkpoint's own metadata states, checked against a preset when one is given.

  With `expected` (a TransformerConfig or preset name), every field the file states must agree, else a ValueError
  lists each mismatch (`init gguf:x.gguf has num_layers=18 but config.model=gemma3_1b says 26`); the preset is
  returned (fields the file does not state, like Gemma's local RoPE base in a GGUF, come from it). Without, the
  family's conventions fill the gaps.
  """
  return _check_config(_open(init), expected)


def _check_config(src, expected) -> model_lib.TransformerConfig:
  fields = src.stated_fields()
  if expected is None:
    # named for logs and messages after the preset the file matches (gguf:smollm2-135m is smollm2_135m), else the file
    same = [n for n in sorted(presets.PRESETS) if not _differences(fields, presets.get_config(n))]
    return dataclasses.replace(hf_config.family_default(fields), name=same[0] if same else src.spec)
  if isinstance(expected, str):
    expected = presets.get_config(expected)
  bad = _differences(fields, expected)
  if bad:
    raise ArchitectureMismatch(
      f'init {src.spec} does not match the model preset: it has ' + '; '.join(bad) + '. Leave config.model empty '
      "(--config.model='') to take the architecture from the file"
    )
  return expected


def _differences(fields: dict, preset: model_lib.TransformerConfig) -> list[str]:
  return [
    f'{k}={v!r} but config.model={preset.name} says {getattr(preset, k)!r}'
    for k, v in fields.items()
    if k not in hf_config.NOT_CHECKED and hf_config.differs(v, getattr(preset, k))
  ]


# ---- load ---------------------------------------------------------------------------------------------------------
def _place(shape, target_sharding, np_dtype, num_layers: int | None, get: Callable[[int | None], np.ndarray]):
  """Builds a jax.Array of `shape` in `target_sharding` from per-layer host tensors, reading each tensor once.

  Only this process's devices are filled (multi-host: each process reads the file and keeps its part). Devices with
  the same index (replicas) share one host buffer.
  """
  index_map = target_sharding.addressable_devices_indices_map(tuple(shape))
  keys = {d: tuple(s.indices(n) for s, n in zip(idx, shape)) for d, idx in index_map.items()}
  as_slices = lambda key: tuple(slice(*k) for k in key)  # noqa: E731
  if num_layers is None:
    w = get(None)
    bufs = {key: np.ascontiguousarray(w[as_slices(key)]) for key in set(keys.values())}
  else:
    bufs = {key: np.empty([len(range(*k)) for k in key], np_dtype) for key in set(keys.values())}
    for layer in range(num_layers):
      w = get(layer)
      for key, buf in bufs.items():
        start, stop, step = key[0]
        if start <= layer < stop and (layer - start) % step == 0:
          buf[(layer - start) // step] = w[as_slices(key[1:])]
  arrays = [jax.device_put(bufs[keys[d]], d) for d in index_map]
  return jax.make_array_from_single_device_arrays(tuple(shape), target_sharding, arrays)


def load(init: str, cfg: model_lib.TransformerConfig, mesh=None, dtype=jnp.float32) -> model_lib.Params:
  """Params for `cfg` from `gguf:PATH` / `gguf:NAME` / `hf:DIR`, placed straight into their mesh shardings.

  Checks the file's architecture against `cfg` first (config_from_file), then every tensor's shape; a tensor the
  table does not know (other than rotary caches and a tied lm_head copy) is an error, so a wrong family fails loudly.
  """
  src = _open(init)
  _check_config(src, cfg)
  shapes = _flatten(model_lib.param_shapes(cfg, dtype))
  shardings = _flatten(sharding.param_shardings(model_lib.param_shapes(cfg, dtype), model_lib.param_axes(cfg), mesh))
  rows = table(cfg)
  missing = sorted(set(shapes) - {r.path for r in rows})
  if missing:  # the table and model.py disagree: a bug here, not in the user's files
    raise AssertionError(f'weight table for {cfg.family} has no row for params {missing}')
  np_dtype = np.dtype(jnp.dtype(dtype))
  used: set[str] = set()
  flat = {}
  for row in rows:
    shape = shapes[row.path].shape
    expect = hf_shape(row, cfg, shape)

    def get(i, row=row, expect=expect):
      name = src.name(row, i)
      if name not in src.files:
        raise KeyError(f'{src.spec}: tensor {name!r} (for {row.path}) is missing')
      if src.shape(name) != expect:  # checked before reading: GGUF fix-ups reshape
        raise ValueError(
          f'{src.spec}: tensor {name!r} (-> {row.path}) has shape {src.shape(name)}, expected '
          f'{expect} for model {cfg.name}'
        )
      w = src.read(row, i, cfg)
      used.add(name)
      return np.asarray(LAYOUTS[row.layout].to_model(w, cfg)).astype(np_dtype, copy=False)

    stacked = cfg.num_layers if row.path.startswith('layers.') else None
    flat[row.path] = _place(shape, shardings[row.path], np_dtype, stacked, get)
  unused = [
    n
    for n in src.files
    if n not in used
    and not n.endswith(_IGNORED_SUFFIXES)
    and not n.startswith(_IGNORED_PREFIXES)
    and not (cfg.tie_embeddings and n.endswith('lm_head.weight'))
  ]
  if unused:
    raise ValueError(
      f'{src.spec}: {len(unused)} tensors have no place in model {cfg.name} ({cfg.family} table), e.g. {unused[:5]}'
    )
  return _unflatten(flat)


# ---- export -------------------------------------------------------------------------------------------------------
def hf_tensors(params, cfg: model_lib.TransformerConfig):
  """Yields (HF name, shape) lazily paired with a loader: the export plan, one layer-tensor at a time."""
  flat = _flatten(params)
  for row in table(cfg):
    leaf = flat[row.path]
    layers = range(cfg.num_layers) if row.path.startswith('layers.') else [None]
    for i in layers:

      def value(leaf=leaf, i=i, row=row):
        w = np.asarray(jax.device_get(leaf if i is None else leaf[i]))
        return np.ascontiguousarray(LAYOUTS[row.layout].to_hf(w, cfg))

      yield row.hf.format(i=i), hf_shape(row, cfg, leaf.shape), value


def export_hf(
  params,
  cfg: model_lib.TransformerConfig,
  out_dir: str | os.PathLike,
  tokenizer=None,
  *,
  dtype: str | None = None,
  max_shard_bytes: int = 4 << 30,
  generation: dict | None = None,
) -> pathlib.Path:
  """Writes a Hugging Face folder: config.json, generation_config.json, safetensors (+ index when sharded) and,
  given an rftjax Tokenizer, its files. `dtype` ('float32' | 'bfloat16') defaults to the params' dtype.
  `generation`: the source model's generation_config.json, whose sampling defaults (temperature, top_p, ...) the
  export keeps (vLLM and transformers sample with them); its token ids fill in what this export does not know.

  Params must be addressable from this process (single-host, or gathered first).
  """
  import safetensors.numpy

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  leaves = jax.tree.leaves(params)
  dtype = dtype or jnp.dtype(leaves[0].dtype).name
  np_dtype = np.dtype(jnp.dtype(dtype))
  ids = {k: getattr(tokenizer, f'{k}_id', None) for k in ('bos', 'eos', 'pad')}  # none without a tokenizer
  config = hf_config.write(cfg, {k: v for k, v in ids.items() if v is not None}, dtype)
  (out / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
  stops = list(getattr(tokenizer, 'stop_ids', ()) or [config['eos_token_id']])
  source = {k: v for k, v in (generation or {}).items() if k not in ('transformers_version', '_from_model_config')}
  ours = dict(
    bos_token_id=config['bos_token_id'],
    eos_token_id=stops if len(stops) > 1 else stops[0],
    pad_token_id=config['pad_token_id'],
  )
  gen = {**source, **{k: v for k, v in ours.items() if v is not None or k not in source}, '_from_model_config': False}
  (out / 'generation_config.json').write_text(json.dumps(gen, indent=2) + '\n')

  # Plan shards from shapes alone, then materialise one shard at a time.
  plan = list(hf_tensors(params, cfg))
  shards: list[list] = [[]]
  size = 0
  for name, shape, value in plan:
    nbytes = math.prod(shape) * np_dtype.itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append((name, value))
    size += nbytes
  for stale in list(out.glob('model*.safetensors')) + list(out.glob('model.safetensors.index.json')):
    stale.unlink()
  weight_map, total = {}, 0
  for k, shard in enumerate(shards):
    fname = 'model.safetensors' if len(shards) == 1 else f'model-{k + 1:05d}-of-{len(shards):05d}.safetensors'
    tensors = {name: value().astype(np_dtype, copy=False) for name, value in shard}
    total += sum(t.nbytes for t in tensors.values())
    safetensors.numpy.save_file(tensors, out / fname, metadata={'format': 'pt'})
    os.chmod(out / fname, 0o644)  # written via a private temp file; serving processes may run as other users
    weight_map.update(dict.fromkeys(tensors, fname))
    del tensors
  if len(shards) > 1:
    index = {'metadata': {'total_size': total}, 'weight_map': weight_map}
    (out / 'model.safetensors.index.json').write_text(json.dumps(index, indent=2) + '\n')
  if tokenizer is not None:
    tokenizer_lib.write_tokenizer_files(tokenizer, out, config)
  return out


def export_peft(
  adapters, cfg: model_lib.TransformerConfig, out_dir: str | os.PathLike, *, base_model: str = '', dtype=None
) -> pathlib.Path:
  """Writes a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) for `params['lora']`, which
  `peft.PeftModel.from_pretrained(base, out_dir)` loads on top of the base `export_hf` writes.

  Module names come from the same table rows as the base's weights ('layers.attn.q' -> model.layers.{i}.self_attn.
  q_proj.weight -> ...q_proj.lora_A.weight), under the text decoder's prefix of an `hf:` base that has one (the
  multimodal Gemma 3 4B+ checkpoints: model.language_model.layers...). Our A [L, <in dims>, r] and B [L, r, <out
  dims>] flatten row-major like the row's layout flattens the weight ([D, N, H] -> q_proj.weight [N*H, D]), so
  lora_A = A[i] as [r, in] and lora_B = B[i] as [out, r]; PEFT's scale lora_alpha / r is ours. `dtype` defaults to
  the adapters' (float32).
  """
  import safetensors.numpy

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows = {row.path: row for row in table(cfg)}
  np_dtype = np.dtype(jnp.dtype(dtype or jax.tree.leaves(adapters)[0].dtype))
  # the module names of the model PEFT loads: a multimodal Gemma 3 base (4B+) has its decoder under a prefix
  source = _HFSource(base_model[3:]) if base_model.startswith('hf:') else None
  hf_name = source.name if source else lambda row, i: row.hf.format(i=i)
  tensors, modules = {}, []
  for group, named in adapters['layers'].items():
    for name, ab in named.items():
      row = rows[f'layers.{group}.{name}']
      a, b = np.asarray(jax.device_get(ab['a'])), np.asarray(jax.device_get(ab['b']))
      n_layers, r, in_dims, out_dims = a.shape[0], a.shape[-1], a.shape[1:-1], b.shape[2:]
      expect = hf_shape(row, cfg, (n_layers, *in_dims, *out_dims))  # the base weight's HF shape [out, in]
      assert expect == (math.prod(out_dims), math.prod(in_dims)), (row.hf, expect, a.shape, b.shape)
      modules.append(row.hf.split('.')[-2])  # 'q_proj': what PEFT's target_modules matches
      for i in range(n_layers):
        prefix = 'base_model.model.' + hf_name(row, i).removesuffix('.weight')
        tensors[f'{prefix}.lora_A.weight'] = np.ascontiguousarray(a[i].reshape(-1, r).T, np_dtype)
        tensors[f'{prefix}.lora_B.weight'] = np.ascontiguousarray(b[i].reshape(r, -1).T, np_dtype)
  config = dict(
    peft_type='LORA',
    task_type='CAUSAL_LM',
    # a folder PEFT can load the base from (an hf:DIR init); a GGUF init stays rftjax's spec (docs/lora.md)
    base_model_name_or_path=os.path.abspath(base_model[3:])  # normalised: no '..' in it
    if base_model.startswith('hf:')
    else base_model,
    r=cfg.lora.rank,
    lora_alpha=cfg.lora.alpha,
    # a list matches those names anywhere, the vision tower's q_proj too: there, a pattern of the decoder's only
    target_modules=rf'.*language_model.*\.({"|".join(sorted(modules))})'
    if source and source.prefix
    else sorted(modules),
    lora_dropout=0.0,
    bias='none',
    fan_in_fan_out=False,
    use_rslora=False,
    use_dora=False,
    modules_to_save=None,
    inference_mode=True,
  )
  for stale in ('adapter_model.safetensors', 'adapter_model.bin'):
    (out / stale).unlink(missing_ok=True)
  (out / 'adapter_config.json').write_text(json.dumps(config, indent=2) + '\n')
  safetensors.numpy.save_file(tensors, out / 'adapter_model.safetensors', metadata={'format': 'pt'})
  os.chmod(out / 'adapter_model.safetensors', 0o644)  # as in export_hf: served by other users
  return out
