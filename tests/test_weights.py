"""Weight tables without real weights: HF export -> load round trips, a hand-written GGUF, errors, sharded loading."""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from rftjax import gguf_io
from rftjax import hf_config
from rftjax import model as model_lib
from rftjax import presets
from rftjax import sharding
from rftjax import weights

GEMMA = dataclasses.replace(
  presets.gemma3_270m(),
  name='gemma_tiny',
  vocab_size=96,
  d_model=32,
  num_layers=4,
  num_heads=2,
  num_kv_heads=1,
  head_dim=16,
  mlp_dim=48,
  sliding_window=8,
  global_every=2,
  query_pre_attn_scalar=16,
  max_seq_len=256,
)
LLAMA = dataclasses.replace(
  presets.smollm2_135m(),
  name='llama_tiny',
  vocab_size=80,
  d_model=48,
  num_layers=3,
  num_heads=6,
  num_kv_heads=2,
  head_dim=8,
  mlp_dim=40,
  max_seq_len=256,
)
LLAMA_UNTIED = dataclasses.replace(LLAMA, name='llama_untied', tie_embeddings=False, rope_llama3=(8.0, 1.0, 4.0, 128))
QWEN = dataclasses.replace(LLAMA, name='qwen_tiny', qkv_bias=True, norm_eps=1e-6, rope_base=1e6)


def _random_params(cfg, seed=0):
  """Every leaf random (norms included, so an offset or transpose slip cannot hide)."""
  shapes = model_lib.param_shapes(cfg)
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, leaves)])


def _assert_same(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _logits(params, cfg, tokens):
  t = tokens.shape[1]
  return model_lib.forward(params, cfg, tokens, jnp.arange(t)[None], jnp.ones((1, t), bool))[0]


@pytest.mark.parametrize('cfg', [GEMMA, LLAMA, LLAMA_UNTIED, QWEN], ids=lambda c: c.name)
def test_hf_round_trip(cfg, tmp_path):
  params = _random_params(cfg)
  out = weights.export_hf(params, cfg, tmp_path)
  config = json.loads((out / 'config.json').read_text())
  expected_arch = {'gemma3': 'Gemma3ForCausalLM', 'llama': 'Qwen2ForCausalLM' if cfg.qkv_bias else 'LlamaForCausalLM'}
  assert config['architectures'] == [expected_arch[cfg.family]]
  # The architecture read back from config.json is the one we wrote.
  read = weights.config_from_file(f'hf:{out}')
  assert dataclasses.replace(read, name=cfg.name) == cfg
  assert read.name == f'hf:{out}'  # a file that matches no preset is named after itself
  _assert_same(weights.load(f'hf:{out}', cfg), params)


def test_hf_tensor_names_and_layouts(tmp_path):
  """Spot checks against Hugging Face's conventions, written out by hand."""
  cfg = LLAMA
  params = _random_params(cfg)
  weights.export_hf(params, cfg, tmp_path)
  t = safetensors.numpy.load_file(tmp_path / 'model.safetensors')
  q = np.asarray(params['layers']['attn']['q'][1])  # [D, N, H]
  np.testing.assert_array_equal(t['model.layers.1.self_attn.q_proj.weight'], q.reshape(cfg.d_model, -1).T)
  o = np.asarray(params['layers']['attn']['o'][2])  # [N, H, D]
  np.testing.assert_array_equal(t['model.layers.2.self_attn.o_proj.weight'], o.reshape(-1, cfg.d_model).T)
  np.testing.assert_array_equal(
    t['model.layers.0.mlp.down_proj.weight'], np.asarray(params['layers']['mlp']['down'][0]).T
  )
  np.testing.assert_array_equal(
    t['model.layers.0.post_attention_layernorm.weight'], np.asarray(params['layers']['mlp_norm']['scale'][0])
  )
  assert 'lm_head.weight' not in t and len(t) == 2 + 9 * cfg.num_layers


def test_sharded_safetensors_round_trip(tmp_path):
  params = _random_params(GEMMA)
  out = weights.export_hf(params, GEMMA, tmp_path, max_shard_bytes=20_000)
  index = json.loads((out / 'model.safetensors.index.json').read_text())
  assert len(set(index['weight_map'].values())) > 3 and not (out / 'model.safetensors').exists()
  _assert_same(weights.load(f'hf:{out}', GEMMA), params)
  # an index that names a tensor its shard does not hold, and a shard missing: each one line naming both
  name = next(n for n, f in index['weight_map'].items() if f != index['weight_map']['model.embed_tokens.weight'])
  wrong = {**index['weight_map'], name: index['weight_map']['model.embed_tokens.weight']}
  (out / 'model.safetensors.index.json').write_text(json.dumps({**index, 'weight_map': wrong}))
  with pytest.raises(ValueError, match=rf'{wrong[name]} does not hold {re.escape(name)}, which model.safetensors'):
    weights.load(f'hf:{out}', GEMMA)
  (out / 'model.safetensors.index.json').write_text(json.dumps(index))
  (out / index['weight_map'][name]).unlink()
  with pytest.raises(FileNotFoundError, match=rf'{index["weight_map"][name]} is missing, and model.safetensors.index'):
    weights.load(f'hf:{out}', GEMMA)


def test_load_into_mesh_shardings(tmp_path):
  """hf: lands straight in the param shardings of a 2x2x2 mesh, values unchanged."""
  if len(jax.devices()) < 8:
    pytest.skip('needs 8 (fake) devices')
  cfg = LLAMA
  params = _random_params(cfg)
  weights.export_hf(params, cfg, tmp_path)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  loaded = weights.load(f'hf:{tmp_path}', cfg, mesh, dtype=jnp.bfloat16)
  want = sharding.param_shardings(model_lib.param_shapes(cfg), model_lib.param_axes(cfg), mesh)
  jax.tree.map(lambda x, s: (x.dtype == jnp.bfloat16) or pytest.fail(str(x.dtype)), loaded, want)
  jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(f'{x.sharding} != {s}'), loaded, want)
  assert loaded['layers']['mlp']['gate'].sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor')
  jax.tree.map(
    lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y.astype(jnp.bfloat16))), loaded, params
  )


def test_rotary_permutation_round_trip():
  n, h, d = 3, 8, 5
  w = np.random.default_rng(0).normal(size=(n * h, d)).astype(np.float32)
  g = gguf_io.permute_rotary(w, n)
  np.testing.assert_array_equal(gguf_io.unpermute_rotary(g, n), w)
  # llama.cpp's interleaved rows: row 2j / 2j+1 of a head are HF's rotate-half pair j / j + H/2.
  for head in range(n):
    for j in range(h // 2):
      np.testing.assert_array_equal(g[head * h + 2 * j], w[head * h + j])
      np.testing.assert_array_equal(g[head * h + 2 * j + 1], w[head * h + j + h // 2])


def _write_gguf(path, cfg, params, extra=None):
  """A float32 GGUF the way llama.cpp's converter writes one: Gemma norms + 1, llama q/k rows permuted. `extra`:
  called with the writer and the architecture before the tensors are written (more keys or tensors)."""
  import gguf

  arch = 'gemma3' if cfg.family == 'gemma3' else 'llama'
  w = gguf.GGUFWriter(str(path), arch)
  for key, value in {
    'block_count': cfg.num_layers,
    'context_length': cfg.max_seq_len,
    'embedding_length': cfg.d_model,
    'feed_forward_length': cfg.mlp_dim,
    'attention.head_count': cfg.num_heads,
    'attention.head_count_kv': cfg.num_kv_heads,
    'attention.key_length': cfg.head_dim,
    'attention.value_length': cfg.head_dim,
  }.items():
    w.add_uint32(f'{arch}.{key}', value)
  w.add_float32(f'{arch}.attention.layer_norm_rms_epsilon', cfg.norm_eps)
  w.add_float32(f'{arch}.rope.freq_base', cfg.rope_base)
  if cfg.sliding_window:
    w.add_uint32(f'{arch}.attention.sliding_window', cfg.sliding_window)
  w.add_array('tokenizer.ggml.tokens', [f't{i}' for i in range(cfg.vocab_size)])  # exercises the header walk
  if extra is not None:
    extra(w, arch)
  flat = {name: value() for name, _, value in weights.hf_tensors(params, cfg)}
  names = {r.hf: r for r in weights.table(cfg)}
  for i in range(cfg.num_layers):
    names.update({r.hf.format(i=i): r for r in weights.table(cfg)})
  for name, t in flat.items():
    row = names[name]
    if row.gguf_fix == 'norm_minus_1':
      t = t + 1
    elif row.gguf_fix in ('rotary_q', 'rotary_k') and arch == 'llama':
      t = gguf_io.permute_rotary(t, cfg.num_heads if row.gguf_fix == 'rotary_q' else cfg.num_kv_heads)
    layer = name.split('.')[2] if name.startswith('model.layers.') else None
    w.add_tensor(row.gguf.format(i=layer), np.ascontiguousarray(t, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize('cfg', [GEMMA, LLAMA], ids=lambda c: c.name)
def test_gguf_load(cfg, tmp_path):
  params = _random_params(cfg)
  _write_gguf(tmp_path / 'm.gguf', cfg, params)
  loaded = weights.load(f'gguf:{tmp_path / "m.gguf"}', cfg)
  # Within float rounding of the +1/-1 on norms; exact elsewhere (permutations are exact).
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6), loaded, params)
  np.testing.assert_array_equal(np.asarray(loaded['layers']['attn']['q']), np.asarray(params['layers']['attn']['q']))
  tokens = jnp.arange(12)[None] % cfg.vocab_size
  np.testing.assert_allclose(_logits(loaded, cfg, tokens), _logits(params, cfg, tokens), atol=1e-4)
  read = weights.config_from_file(f'gguf:{tmp_path / "m.gguf"}')
  assert (read.family, read.num_layers, read.head_dim, read.vocab_size) == (
    cfg.family,
    cfg.num_layers,
    cfg.head_dim,
    cfg.vocab_size,
  )


@pytest.mark.parametrize(
  'cfg, extra, said',
  [
    (LLAMA, lambda w, a: w.add_string(f'{a}.rope.scaling.type', 'yarn'), "llama.rope.scaling.type is 'yarn'"),
    (GEMMA, lambda w, a: w.add_string(f'{a}.rope.scaling.type', 'yarn'), "gemma3.rope.scaling.type is 'yarn'"),
    (LLAMA, lambda w, a: w.add_tensor('rope_freqs.weight', np.ones(4, np.float32)), 'rope_freqs.weight holds'),
  ],
  ids=['llama_yarn', 'gemma_yarn', 'llama31_rope_freqs'],
)
def test_a_gguf_with_rope_scaling_rftjax_does_not_apply_is_refused(cfg, extra, said, tmp_path):
  """A Llama 3.1+ GGUF stores its rope scaling as rope_freqs.weight, which was ignored: plain RoPE ran."""
  _write_gguf(tmp_path / 'm.gguf', cfg, _random_params(cfg), extra)
  with pytest.raises(ValueError, match=re.escape(said)):
    weights.config_from_file(f'gguf:{tmp_path / "m.gguf"}')


def test_shape_mismatch_names_the_tensor(tmp_path):
  params = _random_params(LLAMA)
  weights.export_hf(params, LLAMA, tmp_path)
  tensors = safetensors.numpy.load_file(tmp_path / 'model.safetensors')
  tensors['model.layers.1.mlp.up_proj.weight'] = tensors['model.layers.1.mlp.up_proj.weight'][:-1]
  safetensors.numpy.save_file(tensors, tmp_path / 'model.safetensors')
  with pytest.raises(
    ValueError,
    match=r"'model\.layers\.1\.mlp\.up_proj\.weight' \(-> layers\.mlp\.up\) has "
    r'shape \(39, 48\), expected \(40, 48\)',
  ):
    weights.load(f'hf:{tmp_path}', LLAMA)


def test_unknown_tensor_is_an_error(tmp_path):
  params = _random_params(LLAMA)
  weights.export_hf(params, LLAMA, tmp_path)
  tensors = safetensors.numpy.load_file(tmp_path / 'model.safetensors')
  tensors['model.layers.0.self_attn.q_proj.bias'] = np.zeros(48, np.float32)
  safetensors.numpy.save_file(tensors, tmp_path / 'model.safetensors')
  with pytest.raises(ValueError, match=r'q_proj\.bias'):
    weights.load(f'hf:{tmp_path}', LLAMA)


def test_config_mismatch_lists_fields(tmp_path):
  weights.export_hf(_random_params(GEMMA), GEMMA, tmp_path)
  other = dataclasses.replace(GEMMA, name='gemma_other', num_layers=6, sliding_window=16)
  with pytest.raises(ValueError) as e:
    weights.load(f'hf:{tmp_path}', other)
  msg = str(e.value)
  assert f'init hf:{tmp_path}' in msg
  assert 'num_layers=4 but config.model=gemma_other says 6' in msg
  assert 'sliding_window=8 but config.model=gemma_other says 16' in msg
  assert 'd_model' not in msg
  assert '\n' not in msg and msg.endswith(
    "Leave config.model empty (--config.model='') to take the architecture from the file"
  )
  with pytest.raises(ValueError, match="family='gemma3' but config.model=smollm2_135m says 'llama'"):
    weights.config_from_file(f'hf:{tmp_path}', 'smollm2_135m')


def test_hf_config_gemma_details():
  c = hf_config.write(presets.gemma3_4b())
  assert c['model_type'] == 'gemma3_text' and c['hidden_activation'] == 'gelu_pytorch_tanh'
  assert c['rope_scaling'] == {'rope_type': 'linear', 'factor': 8.0}
  assert c['rope_parameters']['sliding_attention']['rope_theta'] == 10_000.0
  assert c['layer_types'][:6] == ['sliding_attention'] * 5 + ['full_attention'] and c['sliding_window'] == 1024
  assert c['query_pre_attn_scalar'] == 256 and c['tie_word_embeddings'] and c['rms_norm_eps'] == 1e-6
  assert hf_config.read(c)['rope_scale_global'] == 8.0
  assert hf_config.write(presets.gemma3_27b())['query_pre_attn_scalar'] == 168
  # Every preset's config.json reads back as the same architecture.
  for name in presets.PRESETS:
    cfg = presets.get_config(name)
    if cfg.family == 'tiny':
      continue
    fields = hf_config.read(hf_config.write(cfg))
    bad = {k: (v, getattr(cfg, k)) for k, v in fields.items() if hf_config.differs(v, getattr(cfg, k))}
    assert not bad, (name, bad)


def test_export_cli_from_run_workdir(tmp_path):
  """`python -m rftjax.export --workdir`: params of the best checkpoint, without restoring the optimizer state."""
  from rftjax import checkpoint as checkpoint_lib
  from rftjax import export

  cfg = presets.get_config('tiny')
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(
    json.dumps({'model': 'tiny', 'init': '', 'tokenizer': None, 'param_dtype': 'float32'})
  )
  best, last = _random_params(cfg, 1), _random_params(cfg, 2)
  with checkpoint_lib.Checkpointer(run / 'checkpoints', async_save=False) as ckpt:
    for step, params, reward in ((10, best, 0.9), (20, last, 0.1)):
      state = {
        'params': params,
        'opt_state': {'mu': jax.tree.map(jnp.zeros_like, params)},
        'step': jnp.int32(step),
        'rng': jax.random.key_data(jax.random.key(step)),
      }
      ckpt.save(step, state, extra={}, metrics={'valid_reward_mean': reward})
  for which, want in (('best', best), ('latest', last), ('20', last)):
    out = tmp_path / f'hf-{which}'
    assert export.main([f'--workdir={run}', f'--step={which}', f'--out={out}']) == 0
    assert json.loads((out / 'config.json').read_text())['architectures'] == ['LlamaForCausalLM']
    _assert_same(weights.load(f'hf:{out}', weights.config_from_file(f'hf:{out}')), want)


def test_export_cli_plain_conversion(tmp_path, capsys):
  from rftjax import export

  params = _random_params(QWEN)
  weights.export_hf(params, QWEN, tmp_path / 'a')
  assert export.main([f'--init=hf:{tmp_path / "a"}', f'--out={tmp_path / "b"}', '--dtype=bfloat16']) == 0
  assert 'no tokenizer exported' in capsys.readouterr().err
  config = json.loads((tmp_path / 'b' / 'config.json').read_text())
  assert config['architectures'] == ['Qwen2ForCausalLM'] and config['torch_dtype'] == 'bfloat16'
  back = weights.load(f'hf:{tmp_path / "b"}', QWEN)
  jax.tree.map(
    lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y.astype(jnp.bfloat16))), back, params
  )
  with pytest.raises(SystemExit):
    export.main([f'--out={tmp_path / "c"}'])  # neither --init nor --workdir


def test_an_export_keeps_the_source_models_generation_defaults(tmp_path):
  """vLLM and transformers sample with generation_config.json's defaults: an hf: source's temperature, top_k and
  stop ids travel with the export (it wrote null token ids and no sampling defaults)."""
  from rftjax import export

  weights.export_hf(_random_params(QWEN), QWEN, tmp_path / 'a')
  source = {'eos_token_id': [2, 3], 'temperature': 0.7, 'top_k': 20, 'repetition_penalty': 1.05, 'do_sample': True}
  (tmp_path / 'a' / 'generation_config.json').write_text(json.dumps({**source, 'transformers_version': '4.0'}))
  assert export.main([f'--init=hf:{tmp_path / "a"}', f'--out={tmp_path / "b"}']) == 0
  gen = json.loads((tmp_path / 'b' / 'generation_config.json').read_text())
  assert {k: gen[k] for k in source} == source and 'transformers_version' not in gen


def test_converting_a_bfloat16_folder_keeps_it_bfloat16(tmp_path):
  """Its params load as float32: the export was float32, twice the size, unless --dtype said otherwise."""
  from rftjax import export

  weights.export_hf(_random_params(QWEN), QWEN, tmp_path / 'a', dtype='bfloat16')
  assert export.main([f'--init=hf:{tmp_path / "a"}', f'--out={tmp_path / "b"}']) == 0
  assert json.loads((tmp_path / 'b' / 'config.json').read_text())['torch_dtype'] == 'bfloat16'
  assert export.main([f'--init=hf:{tmp_path / "a"}', f'--out={tmp_path / "c"}', '--dtype=float32']) == 0
  assert json.loads((tmp_path / 'c' / 'config.json').read_text())['torch_dtype'] == 'float32'
