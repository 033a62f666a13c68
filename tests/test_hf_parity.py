"""rftjax equals Hugging Face transformers (PyTorch, CPU, float32) on small random models of every supported family.

Each family (Qwen 3, Qwen 2.5, Llama, Llama with llama3 RoPE scaling and untied embeddings, Gemma 3 text) is built
by transformers from a config (nothing downloaded), its weights re-drawn large enough that logits spread and greedy
continuations vary, saved with `save_pretrained` and loaded in rftjax through `loader.load` (architecture from the
file's config.json). Compared:
  * logits of a batch of 2 sequences of 24 tokens (longer than Gemma's sliding window of 8): max |rftjax -
    transformers| within 1e-5 of the range of transformers' logits;
  * 32 greedy tokens from rftjax's sampler, for one prompt and for two prompts of different lengths batched (left
    padded), equal transformers' `generate` run per prompt, token for token;
  * `weights.export_hf` of the loaded params: transformers loads the folder and gives the original model's logits
    within 1e-5 of the range;
  * every Qwen 3 preset's config.json (`hf_config.write`) builds a transformers Qwen3Config that reads back
    (`hf_config.read`) as the same architecture.
"""

from __future__ import annotations

import logging
import re

import jax.numpy as jnp
import numpy as np
import pytest

from rftjax import hf_config
from rftjax import loader
from rftjax import model as model_lib
from rftjax import presets
from rftjax import sampler
from rftjax import weights

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TOLERANCE = 1e-5  # max |rftjax - transformers| / (max - min of transformers' logits)
NEW_TOKENS = 32
SEQ_LEN = 24

_SMALL = dict(
  vocab_size=384,
  hidden_size=64,
  intermediate_size=128,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=256,
  bos_token_id=None,
  eos_token_id=None,
  pad_token_id=0,
  attn_implementation='eager',
)
# family -> (config class, model class, embedding std, config fields beyond _SMALL). Gemma multiplies embeddings by
# sqrt(hidden) = 8: a smaller std keeps the token's own embedding from dominating the residual stream (with 0.25,
# greedy repeats one token forever).
FAMILIES = {
  'qwen3': (
    'Qwen3Config',
    'Qwen3ForCausalLM',
    0.25,
    # head_dim * heads != hidden_size, as in the real Qwen 3 models
    dict(
      num_hidden_layers=3,
      head_dim=32,
      rms_norm_eps=1e-6,
      tie_word_embeddings=True,
      rope_parameters=dict(rope_type='default', rope_theta=1e6),
    ),
  ),
  'qwen2': (
    'Qwen2Config',
    'Qwen2ForCausalLM',
    0.25,
    dict(
      num_hidden_layers=3,
      head_dim=16,
      tie_word_embeddings=False,
      rope_parameters=dict(rope_type='default', rope_theta=1e6),
    ),
  ),
  'llama': (
    'LlamaConfig',
    'LlamaForCausalLM',
    0.25,
    dict(num_hidden_layers=2, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=True),
  ),
  'llama3_rope': (
    'LlamaConfig',
    'LlamaForCausalLM',
    0.25,
    # wavelengths 6, 32, 168, ... around original_max / high_freq = 16 and original_max / low_freq = 64: all three
    # branches of the llama3 frequency rule are used
    dict(
      num_hidden_layers=2,
      head_dim=16,
      tie_word_embeddings=False,
      rope_parameters=dict(
        rope_type='llama3',
        rope_theta=500_000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
      ),
    ),
  ),
  'gemma3': (
    'Gemma3TextConfig',
    'Gemma3ForCausalLM',
    0.06,
    dict(
      num_hidden_layers=4,
      head_dim=32,
      sliding_window=8,
      layer_types=['sliding_attention', 'full_attention'] * 2,
      query_pre_attn_scalar=24,
      tie_word_embeddings=True,
      rope_parameters=dict(
        full_attention=dict(rope_type='linear', rope_theta=1e6, factor=8.0),
        sliding_attention=dict(rope_type='default', rope_theta=10_000.0),
      ),
    ),
  ),
}


def _hf_model(family: str, seed: int = 0):
  """A random float32 transformers model whose weights matter: std 0.25 (not 0.02), norms in [0.5, 1.5], biases != 0."""
  config_cls, model_cls, embed_std, fields = FAMILIES[family]
  config = getattr(transformers, config_cls)(**_SMALL, **fields)
  torch.manual_seed(seed)
  tm = getattr(transformers, model_cls)(config).eval()
  with torch.no_grad():
    for name, p in tm.named_parameters():
      if name.endswith('norm.weight'):
        p.uniform_(0.5, 1.5)
      elif name.endswith('bias'):
        p.normal_(0.0, 0.5)
      elif name.endswith('embed_tokens.weight'):
        p.normal_(0.0, embed_std)
      else:
        p.normal_(0.0, 0.25)
  assert all(p.dtype == torch.float32 for p in tm.parameters())
  return tm


def _load_rftjax(tm, directory):
  tm.save_pretrained(directory)
  loaded = loader.load(loader.model_spec(init=f'hf:{directory}'), tokenizer_required=False)
  return loaded.cfg, loaded.params


def _tokens(seed, shape, vocab):
  return np.random.default_rng(seed).integers(1, vocab, shape).astype(np.int64)


def _hf_logits(tm, tokens):
  with torch.no_grad():
    return tm(torch.tensor(tokens)).logits.numpy()


def _rftjax_logits(params, cfg, tokens):
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  out, _ = model_lib.forward(params, cfg, jnp.asarray(tokens, jnp.int32), positions, jnp.ones((b, t), bool))
  return np.asarray(out)


def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / (ref.max() - ref.min()))


def _hf_greedy(tm, prompt):
  ids = torch.tensor([prompt])
  with torch.no_grad():
    out = tm.generate(
      ids,
      attention_mask=torch.ones_like(ids),
      do_sample=False,
      max_new_tokens=NEW_TOKENS,
      min_new_tokens=NEW_TOKENS,
      eos_token_id=None,
      pad_token_id=0,
    )
  return [int(t) for t in out[0, ids.shape[1] :]]


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_logits_match_transformers(family, tmp_path, caplog):
  tm = _hf_model(family)
  with caplog.at_level(logging.INFO, logger='rftjax.loader'):
    cfg, params = _load_rftjax(tm, tmp_path / 'hf')
  assert f'loading a {tm.config.model_type} model' in caplog.text  # the folder's kind, not 'llama' for Qwen too
  assert cfg.vocab_size == 384 and cfg.num_kv_heads == 2 and cfg.family == ('gemma3' if family == 'gemma3' else 'llama')
  if cfg.sliding_window:  # Gemma: the window bites, and local and global layers both occur
    assert cfg.sliding_window < SEQ_LEN and 0 < cfg.layer_is_local().sum() < cfg.num_layers
  tokens = _tokens(1, (2, SEQ_LEN), cfg.vocab_size)
  ref = _hf_logits(tm, tokens)
  ours = _rftjax_logits(params, cfg, tokens)
  err = _rel_err(ours, ref)
  print(f'{family}: logit range {ref.max() - ref.min():.1f}, max diff / range {err:.2e}')
  assert ref.max() - ref.min() > 5  # the comparison means something: logits are far from uniform
  assert err < TOLERANCE, err
  np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_greedy_matches_transformers(family, tmp_path):
  tm = _hf_model(family)
  cfg, params = _load_rftjax(tm, tmp_path / 'hf')
  short, long = [int(t) for t in _tokens(2, 3, cfg.vocab_size)], [int(t) for t in _tokens(3, 11, cfg.vocab_size)]
  ref_short, ref_long = _hf_greedy(tm, short), _hf_greedy(tm, long)
  assert len(ref_short) == NEW_TOKENS and len(set(ref_short)) >= 8, ref_short  # not degenerate
  one = sampler.generate(params, cfg, [short], max_new_tokens=NEW_TOKENS, stop_ids=(), pad_id=0)
  assert one == [ref_short]
  both = sampler.generate(params, cfg, [short, long], max_new_tokens=NEW_TOKENS, stop_ids=(), pad_id=0)
  assert both == [ref_short, ref_long]


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_export_round_trip(family, tmp_path):
  tm = _hf_model(family)
  cfg, params = _load_rftjax(tm, tmp_path / 'hf')
  out = weights.export_hf(params, cfg, tmp_path / 'export', None)
  again = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
  assert type(again) is type(tm)
  theirs = again.state_dict()  # every tensor written back bit for bit, under its own name
  assert sorted(theirs) == sorted(tm.state_dict())
  assert all(torch.equal(theirs[k], v) for k, v in tm.state_dict().items())
  tokens = _tokens(4, (2, SEQ_LEN), cfg.vocab_size)
  ref = _hf_logits(tm, tokens)
  err = _rel_err(_hf_logits(again, tokens), ref)
  print(f'{family}: export round trip max diff / range {err:.2e}')
  assert err < TOLERANCE, err


@pytest.mark.parametrize('name', sorted(n for n in presets.PRESETS if n.startswith('qwen3')))
def test_qwen3_presets_through_transformers_config(name):
  cfg = presets.get_config(name)
  written = hf_config.write(cfg)
  assert written['model_type'] == 'qwen3' and written['architectures'] == ['Qwen3ForCausalLM']
  config = transformers.Qwen3Config(**written)
  assert config.head_dim == 128 and config.num_key_value_heads == 8 and not config.attention_bias
  fields = hf_config.read(config.to_dict())
  assert fields['qk_norm'] and not fields['qkv_bias'] and fields['family'] == 'llama'
  bad = {k: (v, getattr(cfg, k)) for k, v in fields.items() if hf_config.differs(v, getattr(cfg, k))}
  assert not bad, bad


SMALL = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=128,
             vocab_size=512, max_position_embeddings=64)  # fmt: skip


@pytest.mark.parametrize(
  'model_type, extra, said',
  [
    ('llama', {'rope_scaling': {'rope_type': 'linear', 'factor': 4.0}}, "rope_scaling type 'linear' is not supported"),
    ('qwen2', {'rope_scaling': {'type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 32}}, "'yarn'"),
    ('qwen3', {'rope_parameters': {'rope_type': 'yarn', 'rope_theta': 1e4, 'factor': 4.0}}, "'yarn' is not"),
    ('llama', {'rope_parameters': {'rope_type': 'dynamic', 'rope_theta': 1e4, 'factor': 2.0}}, "'dynamic'"),
    ('gemma3_text', {'rope_scaling': {'rope_type': 'yarn', 'factor': 8.0}}, "'yarn' is not supported for gemma3"),
    ('llama', {'hidden_act': 'gelu'}, "hidden_act 'gelu' is not supported; rftjax runs gelu_new, gelu_pytorch"),
    ('gemma3_text', {'hidden_activation': 'relu'}, "hidden_act 'relu' is not supported"),
    ('qwen2', {'use_sliding_window': True, 'sliding_window': 4, 'max_window_layers': 1}, 'use_sliding_window'),
    ('qwen3', {'layer_types': ['full_attention', 'sliding_attention'], 'sliding_window': 4}, 'sliding-window'),
    ('llama', {'attention_bias': True}, 'attention_bias=true is not supported for llama'),
    ('llama', {'mlp_bias': True}, 'mlp_bias=true is not supported'),
  ],
)
def test_configs_rftjax_would_run_wrong_are_refused_naming_the_field(model_type, extra, said):
  """Each ran before as something else, without a word: rope scaling other than llama3 (Gemma: linear) as plain
  RoPE (logits off by up to 65% of their range on a tiny model), an unknown activation as SiLU, Qwen's sliding
  window as full attention; the biases failed later on tensors 'with no place'."""
  with pytest.raises(ValueError, match=re.escape(said)):
    hf_config.read({'model_type': model_type, **SMALL, **extra}, 'hf:/m/config.json')


def test_configs_it_runs_as_written_still_read():
  assert hf_config.read({'model_type': 'llama', **SMALL, 'hidden_act': 'gelu_new'})['activation'] == 'gelu_tanh'
  qwen = hf_config.read({'model_type': 'qwen2', **SMALL, 'use_sliding_window': False, 'sliding_window': 4})
  assert qwen['qkv_bias'] and 'sliding_window' not in qwen
  llama3 = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position_embeddings': 32}  # fmt: skip
  assert hf_config.read({'model_type': 'llama', **SMALL, 'rope_scaling': llama3})['rope_llama3'] == (8.0, 1.0, 4.0, 32)
  gemma = hf_config.read({'model_type': 'gemma3_text', **SMALL, 'rope_scaling': {'rope_type': 'linear', 'factor': 8}})
  assert gemma['rope_scale_global'] == 8.0


def test_a_llama_with_the_tanh_gelu_exports_as_it_loads():
  """It loaded (and matched transformers) but export refused it as 'a llama-family config with Gemma features'."""
  cfg = hf_config.family_default(hf_config.read({'model_type': 'llama', **SMALL, 'hidden_act': 'gelu_pytorch_tanh'}))
  written = hf_config.write(cfg)
  assert written['hidden_act'] == 'gelu_pytorch_tanh' and hf_config.read(written)['activation'] == 'gelu_tanh'
