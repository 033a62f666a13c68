"""Model presets: one `TransformerConfig` per supported checkpoint, by name (`get_config('smollm2_135m')`).

Each family has one builder (`gemma3`; `llama` for Llama, SmolLM2, Qwen 2.5 and Qwen 3, which differ only in
options) and a preset is one call of it with the numbers of the checkpoint's Hugging Face `config.json`.
hf_config.py reads a checkpoint's config.json through the same builders.
"""

from __future__ import annotations

import dataclasses

from rftjax.model import TransformerConfig

# One call per line, kept as written: a formatter would spread every constructor over 20 lines.
# fmt: off


def tiny(vocab_size: int = 512) -> TransformerConfig:
  return TransformerConfig(name='tiny', family='tiny', vocab_size=vocab_size, d_model=128, num_layers=4, num_heads=4,
                           num_kv_heads=2, head_dim=32, mlp_dim=512, max_seq_len=512)


def gemma3(name, vocab, d, layers, heads, kv, hd, mlp, window, qpas, rope_scale) -> TransformerConfig:
  return TransformerConfig(
    name=name, family='gemma3', vocab_size=vocab, d_model=d, num_layers=layers, num_heads=heads, num_kv_heads=kv,
    head_dim=hd, mlp_dim=mlp, activation='gelu_tanh', norm_eps=1e-6, norm_offset=1.0, rope_base=1_000_000.0,
    rope_base_local=10_000.0, rope_scale_global=rope_scale, sliding_window=window, global_every=6, qk_norm=True,
    post_norms=True, embed_scale=True, tie_embeddings=True, query_pre_attn_scalar=qpas,
    max_seq_len=32_768 if d < 1000 else 131_072)


def llama(name, vocab, d, layers, heads, kv, hd, mlp, rope, *, eps=1e-5, tie=True, bias=False, llama3=None,
          max_len=8192, qk_norm=False) -> TransformerConfig:
  return TransformerConfig(
    name=name, family='llama', vocab_size=vocab, d_model=d, num_layers=layers, num_heads=heads, num_kv_heads=kv,
    head_dim=hd, mlp_dim=mlp, activation='silu', norm_eps=eps, rope_base=rope, rope_llama3=llama3,
    tie_embeddings=tie, qkv_bias=bias, max_seq_len=max_len, qk_norm=qk_norm)


def _qwen3(name, d, layers, heads, mlp, tie) -> TransformerConfig:
  """Qwen 3 (dense): RMSNorm on q and k per head before RoPE, no QKV bias, 8 KV heads of 128."""
  return llama(name, 151_936, d, layers, heads, 8, 128, mlp, 1e6, eps=1e-6, tie=tie, max_len=40_960, qk_norm=True)


#                                 name           vocab    D     L   N   K   H    F       window qpas rope scale
def gemma3_270m(): return gemma3('gemma3_270m', 262_144, 640, 18, 4, 1, 256, 2048, 512, 256, 1.0)
def gemma3_1b(): return gemma3('gemma3_1b', 262_144, 1152, 26, 4, 1, 256, 6912, 512, 256, 1.0)
def gemma3_4b(): return gemma3('gemma3_4b', 262_208, 2560, 34, 8, 4, 256, 10_240, 1024, 256, 8.0)
def gemma3_12b(): return gemma3('gemma3_12b', 262_208, 3840, 48, 16, 8, 256, 15_360, 1024, 256, 8.0)
def gemma3_27b(): return gemma3('gemma3_27b', 262_208, 5376, 62, 32, 16, 128, 21_504, 1024, 168, 8.0)


#                                 name            vocab    D     L   N   K   H    F      rope base
def smollm2_135m(): return llama('smollm2_135m', 49_152, 576, 30, 9, 3, 64, 1536, 100_000.0)
def smollm2_360m(): return llama('smollm2_360m', 49_152, 960, 32, 15, 5, 64, 2560, 100_000.0)
def smollm2_1_7b(): return llama('smollm2_1_7b', 49_152, 2048, 24, 32, 32, 64, 8192, 130_000.0)
def llama3_2_1b(): return llama('llama3_2_1b', 128_256, 2048, 16, 32, 8, 64, 8192, 500_000.0,
                                llama3=(32.0, 1.0, 4.0, 8192), max_len=131_072)
def llama3_2_3b(): return llama('llama3_2_3b', 128_256, 3072, 28, 24, 8, 128, 8192, 500_000.0,
                                llama3=(32.0, 1.0, 4.0, 8192), max_len=131_072)
def llama3_1_8b(): return llama('llama3_1_8b', 128_256, 4096, 32, 32, 8, 128, 14_336, 500_000.0, tie=False,
                                llama3=(8.0, 1.0, 4.0, 8192), max_len=131_072)
def qwen2_5_0_5b(): return llama('qwen2_5_0_5b', 151_936, 896, 24, 14, 2, 64, 4864, 1e6, eps=1e-6, bias=True,
                                 max_len=32_768)
def qwen2_5_1_5b(): return llama('qwen2_5_1_5b', 151_936, 1536, 28, 12, 2, 128, 8960, 1e6, eps=1e-6, bias=True,
                                 max_len=32_768)
def qwen2_5_3b(): return llama('qwen2_5_3b', 151_936, 2048, 36, 16, 2, 128, 11_008, 1e6, eps=1e-6, bias=True,
                               max_len=32_768)
def qwen2_5_7b(): return llama('qwen2_5_7b', 152_064, 3584, 28, 28, 4, 128, 18_944, 1e6, eps=1e-6, bias=True,
                               tie=False, max_len=32_768)


#                               name          D     L   N   F
def qwen3_0_6b(): return _qwen3('qwen3_0_6b', 1024, 28, 16, 3072, tie=True)
def qwen3_1_7b(): return _qwen3('qwen3_1_7b', 2048, 28, 16, 6144, tie=True)
def qwen3_4b(): return _qwen3('qwen3_4b', 2560, 36, 32, 9728, tie=True)
def qwen3_8b(): return _qwen3('qwen3_8b', 4096, 36, 32, 12_288, tie=False)
def qwen3_14b(): return _qwen3('qwen3_14b', 5120, 40, 40, 17_408, tie=False)


PRESETS = {f.__name__: f for f in (
  tiny, gemma3_270m, gemma3_1b, gemma3_4b, gemma3_12b, gemma3_27b, smollm2_135m, smollm2_360m, smollm2_1_7b,
  llama3_2_1b, llama3_2_3b, llama3_1_8b, qwen2_5_0_5b, qwen2_5_1_5b, qwen2_5_3b, qwen2_5_7b, qwen3_0_6b, qwen3_1_7b,
  qwen3_4b, qwen3_8b, qwen3_14b)}
# fmt: on


def get_config(name: str, **overrides) -> TransformerConfig:
  if name not in PRESETS:
    raise ValueError(f'unknown model preset {name!r}; known: {", ".join(sorted(PRESETS))}')
  cfg = PRESETS[name]()
  return dataclasses.replace(cfg, **overrides) if overrides else cfg


def params_text(n: int) -> str:
  """'27.01B', '135M', '1.05M': a parameter count as logs and plans show it."""
  return f'{n / 1e9:.2f}B' if n >= 1e9 else f'{n / 1e6:.3g}M'
