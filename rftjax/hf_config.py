"""Hugging Face `config.json` <-> `TransformerConfig`, both directions, for Gemma 3 (text), Llama, Qwen 2 and Qwen 3.

read(config_json_dict)            -> the TransformerConfig fields the file states (old and new rope formats)
write(cfg, token_ids, dtype)      -> a config.json dict transformers and vLLM load
family_default(fields)            -> a full config for a file that names no preset
"""

from __future__ import annotations

import dataclasses
import math

from rftjax import model as model_lib
from rftjax import presets

# transformers' class defaults (Gemma3TextConfig, LlamaConfig, Qwen2Config), for fields a config.json leaves out.
_HF_DEFAULTS = {
  'gemma3_text': dict(
    vocab_size=262_208,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    rms_norm_eps=1e-6,
    max_position_embeddings=131_072,
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    sliding_window_pattern=6,
    tie_word_embeddings=True,
    hidden_activation='gelu_pytorch_tanh',
  ),
  'llama': dict(
    vocab_size=32_000,
    hidden_size=4096,
    intermediate_size=11_008,
    num_hidden_layers=32,
    num_attention_heads=32,
    rms_norm_eps=1e-6,
    max_position_embeddings=2048,
    rope_theta=10_000.0,
    tie_word_embeddings=False,
    hidden_act='silu',
  ),
  'qwen2': dict(
    vocab_size=151_936,
    hidden_size=4096,
    intermediate_size=22_016,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    rms_norm_eps=1e-6,
    max_position_embeddings=32_768,
    rope_theta=10_000.0,
    tie_word_embeddings=False,
    hidden_act='silu',
  ),
}
_HF_DEFAULTS['qwen3'] = dict(_HF_DEFAULTS['qwen2'], head_dim=128)  # Qwen3Config: Qwen2Config's plus head_dim
_NULLABLE = ('sliding_window', 'rope_scaling', 'final_logit_softcapping')
# transformers' activation names -> rftjax's (gelu_new is the same tanh approximation); others are refused
_ACTIVATIONS = {'silu': 'silu', 'swish': 'silu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_new': 'gelu_tanh'}


def read(c: dict, where: str = 'config.json') -> dict:
  """TransformerConfig fields stated by a Hugging Face config.json (old and new rope formats both read)."""
  model_type = c.get('model_type')
  if model_type == 'gemma3' and 'text_config' in c:  # multimodal wrapper (4B+)
    c, model_type = dict(c['text_config']), 'gemma3_text'
  if model_type not in _HF_DEFAULTS:
    raise ValueError(
      f'{where}: model_type {model_type!r} is not supported; rftjax reads gemma3_text, llama, qwen2, qwen3'
    )
  # save_pretrained writes only fields that differ from the class defaults (nested text_config especially).
  c = {**_HF_DEFAULTS[model_type], **{k: v for k, v in c.items() if v is not None or k in _NULLABLE}}
  family = 'gemma3' if model_type == 'gemma3_text' else 'llama'
  heads = int(c['num_attention_heads'])
  fields = dict(
    family=family,
    vocab_size=int(c['vocab_size']),
    d_model=int(c['hidden_size']),
    num_layers=int(c['num_hidden_layers']),
    num_heads=heads,
    num_kv_heads=int(c.get('num_key_value_heads') or heads),
    head_dim=int(c.get('head_dim') or c['hidden_size'] // heads),
    mlp_dim=int(c['intermediate_size']),
    norm_eps=float(c.get('rms_norm_eps', 1e-6)),
    tie_embeddings=bool(c.get('tie_word_embeddings', family == 'gemma3')),
  )
  if 'max_position_embeddings' in c:
    fields['max_seq_len'] = int(c['max_position_embeddings'])
  rope = c.get('rope_parameters') or {}
  full = rope.get('full_attention', rope) if family == 'gemma3' else rope
  scaling = c.get('rope_scaling') or (full if full.get('rope_type', 'default') != 'default' else None)
  theta = full.get('rope_theta', c.get('rope_theta'))
  if theta is not None:
    fields['rope_base'] = float(theta)
  act = c.get('hidden_activation') or c.get('hidden_act')
  if act:
    if act not in _ACTIVATIONS:  # it ran as SiLU before: logits ~10% of their range off, without a word
      raise ValueError(f'{where}: hidden_act {act!r} is not supported; rftjax runs {", ".join(sorted(_ACTIVATIONS))}')
    fields['activation'] = _ACTIVATIONS[act]
  kind = scaling.get('rope_type', scaling.get('type')) if scaling else None
  if kind not in (None, 'default', 'linear' if family == 'gemma3' else 'llama3'):
    # yarn, dynamic, longrope ... (Qwen's model cards add yarn for long inputs): plain RoPE would be silently wrong
    raise ValueError(
      f'{where}: rope_scaling type {kind!r} is not supported for {model_type} (rftjax runs '
      f'{"default and linear" if family == "gemma3" else "default and llama3"} RoPE); to run at the native context '
      'length, remove rope_scaling (rope_parameters) from config.json'
    )
  for flag in ('mlp_bias', 'use_bidirectional_attention'):
    if c.get(flag):
      raise ValueError(f'{where}: {flag}=true is not supported; rftjax runs {model_type} without it')
  if family == 'gemma3':
    local = rope.get('sliding_attention', {}).get('rope_theta', c.get('rope_local_base_freq'))
    if local is not None:
      fields['rope_base_local'] = float(local)
    fields['sliding_window'] = c.get('sliding_window')
    types = c.get('layer_types')
    if types:
      globals_ = [i + 1 for i, t in enumerate(types) if t == 'full_attention']
      every = globals_[0] if globals_ else 0
      if [i + 1 for i in range(len(types)) if every and (i + 1) % every == 0] != globals_:
        raise ValueError(f'{where}: layer_types {types} is not "every n-th layer global"; rftjax cannot run it')
      fields['global_every'] = every
    elif c.get('sliding_window_pattern'):
      fields['global_every'] = int(c['sliding_window_pattern'])
    if c.get('query_pre_attn_scalar') is not None:
      fields['query_pre_attn_scalar'] = float(c['query_pre_attn_scalar'])
    fields['final_softcap'] = c.get('final_logit_softcapping')
    fields['rope_scale_global'] = float(scaling['factor']) if kind == 'linear' else 1.0
  else:
    if c.get('attention_bias') and model_type != 'qwen2':  # llama/qwen3: o_proj has a bias too; rftjax has none
      raise ValueError(f'{where}: attention_bias=true is not supported for {model_type} (a bias on o_proj)')
    sliding = [t for t in c.get('layer_types') or [] if t != 'full_attention']
    window = c.get('sliding_window') or 0
    layers, from_layer = int(c['num_hidden_layers']), int(c.get('max_window_layers') or 0)
    if (sliding or (c.get('use_sliding_window') and from_layer < layers)) and (
      not window or window < int(c.get('max_position_embeddings') or 0)
    ):
      raise ValueError(
        f'{where}: sliding-window layers (use_sliding_window / layer_types) are not supported for {model_type}; '
        'rftjax runs every layer with full attention: set use_sliding_window to false'
      )
    fields['qkv_bias'] = model_type == 'qwen2'
    fields['qk_norm'] = model_type == 'qwen3'
    fields['rope_llama3'] = (
      (
        float(scaling['factor']),
        float(scaling['low_freq_factor']),
        float(scaling['high_freq_factor']),
        int(scaling['original_max_position_embeddings']),
      )
      if kind == 'llama3'
      else None
    )
  return fields


# Fields that describe a deployment limit, not the weights' architecture: reported, never an error.
NOT_CHECKED = ('max_seq_len',)


def family_default(fields: dict) -> model_lib.TransformerConfig:
  """A config for a file with no preset named: the family's conventions fill what the file does not state."""
  f = fields
  if f['family'] == 'gemma3':
    # llama.cpp's rule for GGUFs, which do not store it: 27B scales by d/N, the others by head_dim.
    qpas = f['d_model'] // f['num_heads'] if f['head_dim'] == 128 else f['head_dim']
    base = presets.gemma3(
      'from_file',
      f['vocab_size'],
      f['d_model'],
      f['num_layers'],
      f['num_heads'],
      f['num_kv_heads'],
      f['head_dim'],
      f['mlp_dim'],
      f.get('sliding_window'),
      qpas,
      1.0,
    )
  else:
    base = presets.llama(
      'from_file',
      f['vocab_size'],
      f['d_model'],
      f['num_layers'],
      f['num_heads'],
      f['num_kv_heads'],
      f['head_dim'],
      f['mlp_dim'],
      f.get('rope_base', 10_000.0),
    )
  return dataclasses.replace(base, **f)


def differs(a, b) -> bool:
  if isinstance(a, float) or isinstance(b, float):
    if a is None or b is None:
      return a is not b
    return not math.isclose(float(a), float(b), rel_tol=1e-5)
  if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
    return len(a) != len(b) or any(differs(x, y) for x, y in zip(a, b))
  return a != b


def model_type(cfg: model_lib.TransformerConfig) -> str:
  """The Hugging Face `model_type` of an architecture: llama-family options tell Qwen 2 (QKV bias) and Qwen 3 (QK
  norm) from Llama."""
  if cfg.family == 'gemma3':
    return 'gemma3_text'
  return 'qwen3' if cfg.qk_norm else 'qwen2' if cfg.qkv_bias else 'llama'


def write(cfg: model_lib.TransformerConfig, token_ids: dict | None = None, dtype: str = 'float32') -> dict:
  """config.json for transformers / vLLM. Writes both the current `rope_parameters` and the older flat rope keys."""
  ids = {'bos': 2, 'eos': 1, 'pad': 0} if cfg.family == 'gemma3' else {}
  ids.update(token_ids or {})
  common = dict(
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.d_model,
    intermediate_size=cfg.mlp_dim,
    num_hidden_layers=cfg.num_layers,
    num_attention_heads=cfg.num_heads,
    num_key_value_heads=cfg.num_kv_heads,
    head_dim=cfg.head_dim,
    rms_norm_eps=cfg.norm_eps,
    max_position_embeddings=cfg.max_seq_len,
    tie_word_embeddings=cfg.tie_embeddings,
    bos_token_id=ids.get('bos'),
    eos_token_id=ids.get('eos'),
    pad_token_id=ids.get('pad'),
    attention_bias=cfg.qkv_bias,
    attention_dropout=0.0,
    initializer_range=0.02,
    use_cache=True,
    torch_dtype=dtype,
    dtype=dtype,
    rope_theta=cfg.rope_base,
  )
  if cfg.family == 'gemma3':
    if cfg.rope_llama3 is not None:
      raise ValueError(f'{cfg.name}: Gemma 3 with llama3 rope scaling has no HF equivalent')
    scaling = {'rope_type': 'linear', 'factor': cfg.rope_scale_global} if cfg.rope_scale_global != 1.0 else None
    local = cfg.rope_base_local or cfg.rope_base
    qpas = cfg.query_pre_attn_scalar or cfg.head_dim
    types = ['sliding_attention' if is_local else 'full_attention' for is_local in cfg.layer_is_local()]
    return dict(
      architectures=['Gemma3ForCausalLM'],
      model_type=model_type(cfg),
      **common,
      hidden_activation='gelu_pytorch_tanh',
      rope_local_base_freq=local,
      rope_scaling=scaling,
      rope_parameters={
        'full_attention': {'rope_type': 'default', 'rope_theta': cfg.rope_base, **(scaling or {})},
        'sliding_attention': {'rope_type': 'default', 'rope_theta': local},
      },
      sliding_window=cfg.sliding_window,
      sliding_window_pattern=cfg.global_every,
      layer_types=types,
      # transformers 5 validates it as an int (read() gives a float): 256.0 in config.json fails to load
      query_pre_attn_scalar=int(qpas) if float(qpas).is_integer() else qpas,
      final_logit_softcapping=cfg.final_softcap,
      attn_logit_softcapping=None,
    )
  if cfg.family not in ('llama', 'tiny'):
    raise ValueError(f'model family {cfg.family!r} ({cfg.name}) has no Hugging Face export')
  if cfg.sliding_window or cfg.final_softcap or cfg.post_norms:
    raise ValueError(f'{cfg.name}: a llama-family config with Gemma features has no HF llama/qwen equivalent')
  if cfg.qk_norm and cfg.qkv_bias:
    raise ValueError(f'{cfg.name}: QK-norm with QKV bias has no HF llama/qwen equivalent')
  scaling = None
  if cfg.rope_llama3 is not None:
    factor, low, high, orig = cfg.rope_llama3
    scaling = dict(
      rope_type='llama3',
      factor=factor,
      low_freq_factor=low,
      high_freq_factor=high,
      original_max_position_embeddings=orig,
    )
  rope = {'rope_type': 'default', 'rope_theta': cfg.rope_base, **(scaling or {})}
  act = {'silu': 'silu', 'gelu_tanh': 'gelu_pytorch_tanh'}[cfg.activation]  # read() takes both for these families
  if cfg.qk_norm:
    return dict(
      architectures=['Qwen3ForCausalLM'],
      model_type=model_type(cfg),
      **common,
      hidden_act=act,
      rope_scaling=scaling,
      rope_parameters=rope,
      use_sliding_window=False,
      sliding_window=None,
      max_window_layers=cfg.num_layers,
    )
  if cfg.qkv_bias:
    return dict(
      architectures=['Qwen2ForCausalLM'],
      model_type=model_type(cfg),
      **common,
      hidden_act=act,
      rope_scaling=scaling,
      rope_parameters=rope,
      use_sliding_window=False,
      sliding_window=None,
      max_window_layers=cfg.num_layers,
    )
  return dict(
    architectures=['LlamaForCausalLM'],
    model_type=model_type(cfg),
    **common,
    hidden_act=act,
    rope_scaling=scaling,
    rope_parameters=rope,
    mlp_bias=False,
    pretraining_tp=1,
  )
