"""LoRA export: PEFT loads `weights.export_peft`'s adapters on `weights.export_hf`'s base and computes rftjax's model.

Small random models of each family (Llama with tied embeddings, Qwen 2 with qkv biases and untied embeddings,
Qwen 3 with q/k norms, Gemma 3 with a sliding window of 8), float32, weights drawn large enough that logits spread
and greedy continuations vary, with rank-4 adapters (B != 0) on every linear, or on q and v only. Compared with
rftjax's forward through the adapters (`model.forward` with `params['lora']`), on 2 sequences of 16 tokens:
  * transformers' base + `peft.PeftModel.from_pretrained(base, adapter_dir)`: max |diff| within 1e-4 of the range
    of rftjax's logits;
  * the merged export (`lora.merge`, then `export_hf`) loaded plainly in transformers: within 1e-4 of the range;
  * 32 greedy tokens from rftjax's sampler equal the PEFT model's `generate(do_sample=False)`, token for token.
And the CLI: `python -m rftjax.export --adapter` writes the same folder from a LoRA run's checkpoint, and refuses a
full fine-tuning run with exit status 2 and one line.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from rftjax import lora
from rftjax import model
from rftjax import presets
from rftjax import sampler
from rftjax import weights

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')

TOLERANCE = 1e-4  # max |diff| / (max - min of rftjax's logits)
NEW_TOKENS = 32
LORA = lora.LoRAConfig(rank=4, alpha=8.0)
REPO = pathlib.Path(__file__).resolve().parents[1]
_SHRINK = dict(vocab_size=96, d_model=48, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=64)
LLAMA = dataclasses.replace(presets.smollm2_135m(), name='llama_tiny', **_SHRINK)
QWEN2 = dataclasses.replace(presets.qwen2_5_0_5b(), name='qwen2_tiny', tie_embeddings=False, **_SHRINK)
QWEN3 = dataclasses.replace(presets.qwen3_0_6b(), name='qwen3_tiny', **_SHRINK)
GEMMA = dataclasses.replace(
  presets.gemma3_270m(),
  name='gemma_tiny',
  **dict(_SHRINK, num_layers=4),
  sliding_window=8,
  global_every=2,
  query_pre_attn_scalar=16,
)
CASES = {
  'llama': dataclasses.replace(LLAMA, lora=LORA),
  'qwen2': dataclasses.replace(QWEN2, lora=LORA),
  'qwen2_qv': dataclasses.replace(QWEN2, lora=dataclasses.replace(LORA, targets=('q', 'v'))),
  'qwen3': dataclasses.replace(QWEN3, lora=LORA),
  'gemma3': dataclasses.replace(GEMMA, lora=LORA),
}


def _random_params(cfg, seed=0):
  """Every leaf random: norm weights in [0.5, 1.5] (Gemma scales by 1 + w), biases != 0, adapters with B != 0."""
  shapes = model.param_shapes(cfg)
  paths, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  keys = jax.random.split(jax.random.key(seed), len(paths))
  out = []
  for k, (path, s) in zip(keys, paths):
    name = jax.tree_util.keystr(path)
    if "'scale'" in name:
      w = jax.random.uniform(k, s.shape, s.dtype, 0.5, 1.5)
    elif "'embedding'" in name:  # Gemma multiplies embeddings by sqrt(d_model)
      w = jax.random.normal(k, s.shape, s.dtype) * (0.1 if cfg.family == 'gemma3' else 0.25)
    else:
      w = jax.random.normal(k, s.shape, s.dtype) * (0.1 if "'b'" in name else 0.5 if 'bias' in name else 0.25)
    out.append(w)
  return jax.tree.unflatten(treedef, out)


def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / (ref.max() - ref.min()))


def _torch_logits(tm, tokens):
  with torch.no_grad():
    return tm(torch.tensor(tokens)).logits.numpy()


def _load(directory):
  return transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()


@pytest.fixture(scope='module', params=sorted(CASES))
def case(request, tmp_path_factory):
  """(cfg, params with adapters, transformers base + PEFT adapters, tmp dir) for one family."""
  cfg = CASES[request.param]
  params = _random_params(cfg)
  tmp = tmp_path_factory.mktemp(request.param)
  base = weights.export_hf(lora.split(params)[1], model.base_config(cfg), tmp / 'base')
  adapter = weights.export_peft(params['lora'], cfg, tmp / 'adapter', base_model=f'hf:{base}')
  # the adapter folder alone: AutoPeftModel finds the base through adapter_config.json
  return cfg, params, peft.AutoPeftModelForCausalLM.from_pretrained(str(adapter), dtype=torch.float32).eval(), tmp


def test_adapter_folder(case):
  cfg, params, _, tmp = case
  config = json.loads((tmp / 'adapter' / 'adapter_config.json').read_text())
  assert config['target_modules'] == sorted(f'{t}_proj' for t in cfg.lora.targets)
  assert (config['r'], config['lora_alpha'], config['peft_type']) == (4, 8.0, 'LORA')
  assert config['base_model_name_or_path'] == str(tmp / 'base')  # an hf:DIR init: a folder PEFT loads by itself
  again = weights.export_peft(params['lora'], cfg, tmp / 'again', base_model=f'hf:{tmp}/adapter/../base')
  assert json.loads((again / 'adapter_config.json').read_text())['base_model_name_or_path'] == str(tmp / 'base')
  t = safetensors.numpy.load_file(tmp / 'adapter' / 'adapter_model.safetensors')
  assert len(t) == 2 * cfg.num_layers * len(cfg.lora.targets)
  q = 'base_model.model.model.layers.1.self_attn.q_proj'
  assert t[f'{q}.lora_A.weight'].shape == (4, cfg.d_model)
  assert t[f'{q}.lora_B.weight'].shape == (cfg.num_heads * cfg.head_dim, 4)
  np.testing.assert_array_equal(t[f'{q}.lora_B.weight'][5], params['lora']['layers']['attn']['q']['b'][1, :, 0, 5])


def _tokens(cfg, seed=1, shape=(2, 16)):
  return np.random.default_rng(seed).integers(1, cfg.vocab_size, shape)


def _rftjax_logits(params, cfg, tokens):
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  return np.asarray(model.forward(params, cfg, jnp.asarray(tokens, jnp.int32), positions, jnp.ones((b, t), bool))[0])


def test_peft_logits_equal_rftjax(case, request):
  cfg, params, tm, _ = case
  tokens = _tokens(cfg)
  ours = _rftjax_logits(params, cfg, tokens)
  err = _rel_err(_torch_logits(tm, tokens), ours)
  base_err = _rel_err(_rftjax_logits(lora.split(params)[1], model.base_config(cfg), tokens), ours)
  print(f'{request.node.callspec.id}: range {ours.max() - ours.min():.1f}, PEFT {err:.2e}, base {base_err:.2e}')
  assert ours.max() - ours.min() > 5 and base_err > 0.02  # logits spread, and the adapters matter
  assert err < TOLERANCE, err


def test_merged_export_equals_rftjax(case, request):
  cfg, params, _, tmp = case
  merged = weights.export_hf(lora.merge(params, cfg.lora), model.base_config(cfg), tmp / 'merged')
  tokens = _tokens(cfg, seed=2)
  err = _rel_err(_torch_logits(_load(merged), tokens), _rftjax_logits(params, cfg, tokens))
  print(f'{request.node.callspec.id}: merged {err:.2e}')
  assert err < TOLERANCE, err


def test_greedy_equals_peft_generate(case):
  cfg, params, tm, _ = case
  prompt = [int(t) for t in _tokens(cfg, seed=3, shape=5)]
  ids = torch.tensor([prompt])
  with torch.no_grad():
    out = tm.generate(
      input_ids=ids,
      attention_mask=torch.ones_like(ids),
      do_sample=False,
      max_new_tokens=NEW_TOKENS,
      min_new_tokens=NEW_TOKENS,
      eos_token_id=None,
      pad_token_id=0,
    )
  ref = [int(t) for t in out[0, len(prompt) :]]
  assert len(ref) == NEW_TOKENS and len(set(ref)) >= 8, ref  # not degenerate
  assert sampler.generate(params, cfg, [prompt], max_new_tokens=NEW_TOKENS, stop_ids=(), pad_id=0) == [ref]


def test_adapters_on_a_multimodal_gemma3_base(tmp_path):
  """Gemma 3 4B and up ship as image-text checkpoints (Gemma3ForConditionalGeneration, the decoder under
  model.language_model.): rftjax trains their decoder, and the adapter folder must name its modules there, or PEFT
  leaves every adapter unloaded (a warning) and serves the untrained base."""
  cfg = CASES['gemma3']
  params = _random_params(cfg, seed=2)
  text = weights.export_hf(lora.split(params)[1], model.base_config(cfg), tmp_path / 'text')
  vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28)
  config = transformers.Gemma3Config(
    text_config=json.loads((text / 'config.json').read_text()),
    vision_config=dict(vision, patch_size=14),
    mm_tokens_per_image=4,
    image_token_index=90,
    boi_token_index=91,
    eoi_token_index=92,
  )
  multimodal = transformers.Gemma3ForConditionalGeneration(config).eval()
  decoder = {k.removeprefix('model.'): v for k, v in _load(text).state_dict().items() if k.startswith('model.')}
  multimodal.model.language_model.load_state_dict(decoder, strict=True)
  multimodal.save_pretrained(tmp_path / 'base')
  loaded = weights.load(f'hf:{tmp_path / "base"}', model.base_config(cfg))
  jax.tree.map(np.testing.assert_array_equal, loaded, lora.split(params)[1])

  adapter = weights.export_peft(params['lora'], cfg, tmp_path / 'adapter', base_model=f'hf:{tmp_path / "base"}')
  served = peft.AutoPeftModelForCausalLM.from_pretrained(str(adapter), dtype=torch.float32).eval()
  adapted = [n for n, m in served.named_modules() if hasattr(m, 'lora_A')]
  assert len(adapted) == 7 * cfg.num_layers and all('.language_model.' in n for n in adapted), adapted[:3]
  tokens = _tokens(cfg)
  ours = _rftjax_logits(params, cfg, tokens)
  assert _rel_err(ours, _torch_logits(served, tokens)) < TOLERANCE
  assert _rel_err(ours, _torch_logits(multimodal, tokens)) > 0.05  # the adapters matter


def _run_dir(path, init, lora_spec, params, param_dtype='float32'):
  """A run directory as the trainer leaves it: config.json and one checkpoint of the trainable params."""
  from rftjax import checkpoint

  path.mkdir()
  config = dict(model='', init=init, tokenizer=None, param_dtype=param_dtype, lora=lora_spec)
  (path / 'config.json').write_text(json.dumps(config))
  state = {'params': params, 'step': jnp.int32(10), 'rng': jax.random.key_data(jax.random.key(0))}
  with checkpoint.Checkpointer(path / 'checkpoints', async_save=False) as ckpt:
    ckpt.save(10, state, extra={}, metrics={'valid_reward_mean': 0.5})
  return path


def test_export_cli_adapter(tmp_path, capsys):
  """The adapter folder holds the run's tokenizer and chat template too: PEFT's AutoPeftModel and TRL read them
  there (without them a Qwen3 base's own template, thinking by default, prompted otherwise than the run)."""
  from rftjax import export, tokenizer

  cfg = CASES['qwen2_qv']
  params = _random_params(cfg, seed=4)
  tok = tokenizer.load_tokenizer(f'sp:{REPO / "data/tiny/tokenizer.model"}')
  base = weights.export_hf(lora.split(params)[1], model.base_config(cfg), tmp_path / 'base', tok)
  spec = dict(rank=4, alpha=8.0, targets=['q', 'v'])
  run = _run_dir(tmp_path / 'lora_run', f'hf:{base}', spec, {'lora': params['lora']})
  assert export.main([f'--workdir={run}', '--adapter', f'--out={tmp_path / "cli"}']) == 0
  direct = weights.export_peft(params['lora'], cfg, tmp_path / 'direct', base_model=f'hf:{base}')
  for name in ('adapter_config.json', 'adapter_model.safetensors'):
    assert (tmp_path / 'cli' / name).read_bytes() == (direct / name).read_bytes(), name
  for name in ('tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json'):  # the base's, as served
    assert (tmp_path / 'cli' / name).read_bytes() == (base / name).read_bytes(), name

  full = _run_dir(tmp_path / 'full_run', f'hf:{base}', dict(spec, rank=0), lora.split(params)[1])
  capsys.readouterr()
  assert export.main([f'--workdir={full}', '--adapter', f'--out={tmp_path / "x"}']) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and 'is a full fine-tuning run' in err, err
  assert not (tmp_path / 'x').exists()


def test_export_says_which_of_the_bases_decoding_settings_rftjax_never_applied(tmp_path, capsys):
  """Qwen2.5-Instruct ships repetition_penalty 1.05: the export keeps the base's generation_config.json, so a server
  applies it, and greedy output differed from what the run validated; the export says so (sampling defaults aside)."""
  from rftjax import export

  cfg = CASES['qwen2_qv']
  params = _random_params(cfg, seed=4)
  base = weights.export_hf(lora.split(params)[1], model.base_config(cfg), tmp_path / 'base')
  gen = json.loads((base / 'generation_config.json').read_text())
  gen.update(repetition_penalty=1.05, temperature=0.7, top_k=20, no_repeat_ngram_size=0)
  (base / 'generation_config.json').write_text(json.dumps(gen))
  run = _run_dir(tmp_path / 'run', f'hf:{base}', dict(rank=4, alpha=8.0, targets=['q', 'v']), {'lora': params['lora']})
  assert export.main([f'--workdir={run}', f'--out={tmp_path / "out"}']) == 0
  notes = [line for line in capsys.readouterr().err.splitlines() if 'generation_config.json sets' in line]
  assert notes == [
    "note: the base's generation_config.json sets repetition_penalty=1.05, which rftjax never applied in training or "
    f'validation; transformers and vLLM apply it by default: take it out of {tmp_path / "out"}/generation_config.json '
    'to serve as validated (docs/models.md)'
  ]
  assert json.loads((tmp_path / 'out' / 'generation_config.json').read_text())['repetition_penalty'] == 1.05


def test_untrained_processors_takes_a_forced_token_id_of_0_as_set():
  from rftjax import export

  idle = {'repetition_penalty': 1, 'no_repeat_ngram_size': 0, 'min_new_tokens': 0, 'min_length': 0,
          'bad_words_ids': [], 'forced_eos_token_id': None, 'temperature': 0.7}  # fmt: skip
  assert export.untrained_processors(idle) == []
  assert export.untrained_processors({**idle, 'forced_bos_token_id': 0, 'min_new_tokens': 3}) == [
    'min_new_tokens=3',
    'forced_bos_token_id=0',
  ]


def test_merged_export_of_a_bfloat16_base_keeps_small_updates_at_float32(tmp_path):
  """A bfloat16 base (the TPU layouts): W + alpha/r * A @ B rounded to bfloat16 is W again wherever the update is
  under half a bfloat16 step; `--dtype=float32` writes the sum as computed, the default the base's dtype."""
  from rftjax import export

  cfg = CASES['qwen2_qv']
  params = _random_params(cfg, seed=4)
  base = weights.export_hf(lora.split(params)[1], model.base_config(cfg), tmp_path / 'base', dtype='bfloat16')
  adapters = jax.tree.map(lambda x: 0.02 * x, params['lora'])  # early in training: small updates
  spec = dict(rank=4, alpha=8.0, targets=['q', 'v'])
  run = _run_dir(tmp_path / 'run', f'hf:{base}', spec, {'lora': adapters}, param_dtype='bfloat16')
  assert export.main([f'--workdir={run}', '--dtype=float32', f'--out={tmp_path / "f32"}']) == 0
  assert export.main([f'--workdir={run}', f'--out={tmp_path / "bf16"}']) == 0
  w = weights.load(f'hf:{base}', model.base_config(cfg))['layers']['attn']['q']  # bfloat16 values, as float32
  update = cfg.lora.scale * lora.delta('q', adapters['layers']['attn']['q'])
  f32, bf16 = (
    weights.load(f'hf:{tmp_path / d}', model.base_config(cfg))['layers']['attn']['q'] for d in ('f32', 'bf16')
  )
  np.testing.assert_allclose(np.asarray(f32), np.asarray(w + update), rtol=0, atol=1e-6)
  small = np.abs(np.asarray(update)) < np.abs(np.asarray(w)) * 2.0**-10
  assert small.mean() > 0.5
  np.testing.assert_array_equal(np.asarray(bf16)[small], np.asarray(w)[small])  # rounded away in bfloat16
  assert not np.array_equal(np.asarray(f32)[small], np.asarray(w)[small])


def test_export_replaces_an_earlier_export_whole_and_refuses_other_folders(tmp_path, capsys, monkeypatch):
  """An adapter left beside merged weights is applied by transformers on load; a LoRA run's own hf: base written
  over would get its adapters twice; an interrupted export must not leave new and old files mixed."""
  from rftjax import export

  cfg = CASES['qwen2_qv']
  params = _random_params(cfg, seed=4)
  base = weights.export_hf(lora.split(params)[1], model.base_config(cfg), tmp_path / 'base')
  run = _run_dir(
    tmp_path / 'lora_run', f'hf:{base}', dict(rank=4, alpha=8.0, targets=['q', 'v']), {'lora': params['lora']}
  )
  out = tmp_path / 'out'
  assert export.main([f'--workdir={run}', f'--out={out}']) == 0
  assert (out / 'model.safetensors').is_file()
  marker = json.loads((out / export.MARKER).read_text())
  assert (marker['source'], marker['kind'], marker['base']) == (str(run), 'merged', f'hf:{base}')
  capsys.readouterr()
  with monkeypatch.context() as m:  # a relative --init is written absolute: the marker is read from other folders
    m.chdir(tmp_path)
    assert export.main(['--init=hf:base', f'--out={out}']) == 0
  assert json.loads((out / export.MARKER).read_text())['source'] == f'hf:{base}'
  step = marker['step']  # what was replaced is said (a PEFT adapter's base, written over, got its adapters twice)
  assert f'note: --out={out}: replacing the earlier export there (merged of {run} step {step})' in (
    capsys.readouterr().err
  )
  assert export.main([f'--workdir={run}', '--adapter', f'--out={out}']) == 0
  assert sorted(p.name for p in out.iterdir()) == ['adapter_config.json', 'adapter_model.safetensors', export.MARKER]
  assert json.loads((out / export.MARKER).read_text())['kind'] == 'adapter'
  capsys.readouterr()

  before = (base / 'model.safetensors').read_bytes()
  assert export.main([f'--workdir={run}', f'--out={base}']) == 2
  assert capsys.readouterr().err == (
    f'error: --out={base}: that is the model this export reads (hf:{base}), which the run also needs (a LoRA run '
    f'applies its adapters to it); expected another folder, e.g. --out={base}-exported\n'
  )
  assert (base / 'model.safetensors').read_bytes() == before
  mine = tmp_path / 'project'
  mine.mkdir()
  (mine / 'README.md').write_text('mine')
  assert export.main([f'--workdir={run}', f'--out={mine}']) == 2
  assert capsys.readouterr().err.startswith(f'error: --out={mine}: a folder of other files (README.md) without ')
  assert [p.name for p in mine.iterdir()] == ['README.md']

  def interrupted(params, cfg, out_dir, *args, **kwargs):
    (pathlib.Path(out_dir) / 'config.json').write_text('{}')  # half an export
    raise KeyboardInterrupt

  monkeypatch.setattr(weights, 'export_hf', interrupted)
  assert export.main([f'--workdir={run}', f'--out={out}']) == 130
  assert capsys.readouterr().err.endswith('interrupted\n')
  assert sorted(p.name for p in out.iterdir()) == ['adapter_config.json', 'adapter_model.safetensors', export.MARKER]
  assert sorted(p.name for p in tmp_path.iterdir()) == ['base', 'lora_run', 'out', 'project']  # no partial folder
