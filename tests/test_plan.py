"""rftjax.plan: slice names, exact per-device division, the CLI's verdicts, and the estimate vs XLA's own numbers."""

import json
import logging
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import gemma3_tpu
from configs import lora_one_vm
from configs import tiny
from rftjax import errors
from rftjax import grpo
from rftjax import kvcache
from rftjax import model
from rftjax import loader
from rftjax import multihost
from rftjax import plan
from rftjax import presets
from rftjax import sharding
from rftjax import train_step

REPO = pathlib.Path(__file__).resolve().parents[1]
GiB = 1024**3


@pytest.fixture
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


@pytest.mark.parametrize(
  'spec, chips, hosts, per_host, hbm',
  [
    ('v5p-32', 16, 4, 4, 95),  # v5p counts TensorCores: 32 cores = 16 chips
    ('v5p-8', 4, 1, 4, 95),
    ('v4-32', 16, 4, 4, 32),
    ('v5e-8', 8, 1, 8, 16),  # v5e counts chips; up to 8 chips is one host
    ('v5litepod-16', 16, 4, 4, 16),
    ('v6e-8', 8, 1, 8, 32),
    ('v6e-16', 16, 4, 4, 32),
    ('v5e-4', 4, 1, 4, 16),
  ],
)
def test_parse_devices(spec, chips, hosts, per_host, hbm):
  hw = plan.parse_devices(spec)
  assert (hw.chips, hw.hosts, hw.chips_per_host, hw.hbm_bytes) == (chips, hosts, per_host, hbm * GiB)


def test_parse_devices_errors_name_the_problem():
  with pytest.raises(ValueError, match='TensorCores'):
    plan.parse_devices('v5p-7')
  with pytest.raises(ValueError, match='unknown TPU type'):
    plan.parse_devices('v9x-8')


def test_division_follows_the_sharding_rules():
  mesh = plan._MeshShape({'data': 1, 'fsdp': 4, 'tensor': 4})
  # embedding [V, D]: vocab on tensor, embed on fsdp
  assert plan.local_elems((262_144, 1152), ('vocab', 'embed'), mesh) == 262_144 // 4 * 1152 // 4
  # Gemma 3 1B has one KV head: a tensor axis of 4 does not divide it, so the cache stays whole on that dim
  cache = plan.local_elems((26, 64, 1, 512, 256), kvcache.AXES['v'], mesh)
  assert cache == 26 * 16 * 512 * 1 * 256
  # rows that data x fsdp does not divide fall back to one axis that does, as sharding.logical_to_spec does
  assert plan.local_elems((6, 10), ('act_batch', None), plan._MeshShape({'data': 2, 'fsdp': 4, 'tensor': 1})) == 30


def test_cli_27b_on_v5p32_fits(in_repo, capsys):
  rc = plan.main(['plan', '--config=configs/gemma3_tpu.py:27b_v5p32', '--devices=v5p-32'])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert 'gemma3_27b (27.01B params) on v5p-32: 16 chips x 95 GiB, 4 host(s) x 4 chips' in out
  for line in ('params', 'optimizer (AdamW mu, nu)', 'KV cache', 'activations (remat', 'logits [', 'PEAK'):
    assert line in out
  assert 'fits: peak' in out


def test_cli_27b_on_v5e8_does_not_fit(in_repo):
  """The real CLI in a subprocess: exit status 1, and a message that says why and what to change."""
  cmd = [
    sys.executable,
    '-m',
    'rftjax.plan',
    '--config=configs/gemma3_tpu.py:27b_v5p32',
    '--devices=v5e-8',
    '--config.mesh.fsdp=-1',
    '--config.mesh.tensor=1',
  ]
  proc = subprocess.run(
    cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'}
  )
  assert proc.returncode == 1, proc.stderr
  err = proc.stderr
  assert 'DOES NOT FIT: gemma3_27b on v5e-8' in err
  assert '14.4 GiB usable (16 GiB HBM minus 10% headroom)' in err
  assert 'biggest consumers:' in err and 'optimizer (AdamW mu, nu)' in err
  # bf16 weights + moments alone exceed 8 x 16 GiB: say how many chips it takes
  assert 'use a slice with at least 11 chips of this type (v5e-16 or larger' in err
  # each suggestion is re-planned and shows the peak it would give
  assert '--config.batch_size=4: peak ' in err and '(still too big)' in err
  assert 'PEAK' in proc.stdout  # the table is printed either way


def test_cli_mesh_that_does_not_match_the_slice_is_a_usage_error(in_repo, capsys):
  rc = plan.main(['plan', '--config=configs/gemma3_tpu.py:27b_v5p32', '--devices=v5e-8'])
  assert rc == 2
  assert 'config.mesh' in capsys.readouterr().err


def test_cli_plans_an_openai_job_file_as_train_runs_it(tmp_path, capsys):
  job = {
    'model': 'tiny',
    'training_file': str(REPO / 'data/tiny/train.jsonl'),
    'validation_file': str(REPO / 'data/tiny/valid.jsonl'),
    'method': {
      'type': 'reinforcement',
      'reinforcement': {
        'grader': {'type': 'string_check', 'input': '{{sample.output_text}}', 'reference': '{{item.answer}}',
                   'operation': 'eq'},
        'hyperparameters': {'batch_size': 4, 'n_epochs': 1},
      },
    },
  }  # fmt: skip
  (tmp_path / 'job.json').write_text(json.dumps(job))
  assert plan.main(['plan', f'--openai_job={tmp_path / "job.json"}', '--devices=cpu-1']) == 0
  out = capsys.readouterr().out
  # the job's hyperparameters over configs/tiny.py (its batch 16, 200 steps), as the trainer resolves them
  assert 'run: 500 steps of 4 prompts x 8 completions = 32 rows (2000 training examples)' in out
  assert 'model tiny (0.988M params) on cpu-1' in out and 'fits: peak' in out


@pytest.mark.parametrize('headroom', ['-1', '1.5'])
def test_cli_headroom_outside_0_1_is_a_usage_error(in_repo, capsys, headroom):
  rc = plan.main(['plan', '--config=configs/gemma3_tpu.py:27b_v5p32', '--devices=v5p-32', f'--headroom={headroom}'])
  assert rc == 2
  err = capsys.readouterr().err
  assert f'error: --headroom={float(headroom)}: expected a fraction of HBM kept free, in [0, 1)' in err


@pytest.mark.parametrize('arg', sorted(lora_one_vm.LAYOUTS))
def test_every_lora_layout_fits_its_machine(arg):
  config = lora_one_vm.get_config(arg)
  p = plan.make_plan(config, config.devices)
  assert p.fits, plan.format_plan(p) + '\n' + plan.check(p, config)
  assert any(k.startswith('frozen base') for k in p.persistent) and 'reference model' not in p.persistent
  full = config.copy_and_resolve_references()
  full.lora.rank, full.grpo.beta = 0, 0.04
  assert not plan.make_plan(full, config.devices).fits  # the same layout with full fine-tuning does not fit


def test_lora_plan_counts_adapters_not_the_base_for_the_optimizer():
  config = lora_one_vm.get_config('qwen3_8b_v5e8')
  p = plan.make_plan(config, config.devices)
  adapters = p.persistent['LoRA adapters (rank 16, float32)']
  assert p.persistent['optimizer (AdamW mu, nu of the adapters)'] == 2 * adapters  # float32 moments
  assert p.train['gradients'] == adapters
  assert adapters < p.persistent['frozen base (bfloat16)'] / 10


def test_a_bfloat16_first_moment_leaves_the_second_in_float32():
  """optax.adamw's mu_dtype is the first moment's dtype only: the plan counts what the optimizer allocates."""
  config = lora_one_vm.get_config('qwen3_8b_v5e8')
  config.optimizer.mu_dtype = 'bfloat16'
  p = plan.make_plan(config, config.devices)
  adapters = p.persistent['LoRA adapters (rank 16, float32)']
  assert p.persistent['optimizer (AdamW mu, nu of the adapters)'] == adapters // 2 + adapters
  tx = train_step.make_optimizer(config.optimizer, 10)
  trainable = {'w': jax.numpy.zeros((64, 32), jax.numpy.float32)}
  state = jax.eval_shape(tx.init, trainable)
  dtypes = sorted(str(x.dtype) for x in jax.tree.leaves(state) if x.shape == (64, 32))
  assert dtypes == ['bfloat16', 'float32']  # mu, nu


def test_the_merged_lora_copy_is_counted_where_the_sampler_merges():
  """lora.merged_for_sampling: a float32 base computed in float32 only (in bfloat16 the merge would round away
  small updates, so the adapters run in the decode loop and no merged copy exists)."""
  config = lora_one_vm.get_config('qwen3_8b_v5e8')
  config.param_dtype = 'float32'
  merged = {}
  for compute in ('bfloat16', 'float32'):
    config.compute_dtype = compute
    merged[compute] = plan.make_plan(config, config.devices).sampling.get('merged LoRA weights (float32 base)')
  assert merged['bfloat16'] is None and merged['float32'] > 0


@pytest.mark.parametrize('arg', sorted(gemma3_tpu.PRESETS))
def test_every_tpu_preset_fits_its_slice(arg):
  config = gemma3_tpu.get_config(arg)
  p = plan.make_plan(config, config.devices)
  assert p.fits, plan.format_plan(p) + '\n' + plan.check(p, config)


def test_remat_and_bf16_cache_lower_the_plan():
  config = gemma3_tpu.get_config('4b_v6e16').copy_and_resolve_references()
  base = plan.make_plan(config, 'v6e-16')
  config.remat = False
  no_remat = plan.make_plan(config, 'v6e-16')
  assert no_remat.train_peak > base.train_peak
  config.sampling.cache_dtype = 'float32'
  assert plan.make_plan(config, 'v6e-16').sampling['KV cache'] == 2 * base.sampling['KV cache']


def test_episodes_plan_the_cache_for_every_turn():
  """Three turns of 32 tokens with two tool turns of 64 between them: the KV cache holds prompt + 224 tokens."""
  config = gemma3_tpu.get_config('4b_v6e16').copy_and_resolve_references()
  p = config.data.max_prompt_len
  config.sampling.max_new_tokens = 32
  one = plan.make_plan(config, 'v6e-16').sampling['KV cache']
  config.max_episode_steps, config.sampling.tool_tokens = 3, 64
  episode = plan.make_plan(config, 'v6e-16')
  assert episode.sampling['KV cache'] * (p + 32) == one * (p + 3 * 32 + 2 * 64)
  assert any('episodes of 3 turns: 224 tokens' in note for note in episode.notes)


def test_an_eval_batch_the_mesh_does_not_divide_is_planned_as_the_rows_it_samples():
  """Validation rounds eval_batch_size up to a multiple of data x fsdp (inference._host_batches): 124 rows on v5e-8
  sample 128, split over the chips. Counted as 124, the cache could not be split and filled every chip."""
  config = gemma3_tpu.get_config('4b_v5e8').copy_and_resolve_references()
  config.eval_batch_size = 128
  rounded = plan.make_plan(config, 'v5e-8')
  config.eval_batch_size = 124
  assert plan.make_plan(config, 'v5e-8').sampling == rounded.sampling


def test_plan_counts_a_shared_prompt_once_per_group():
  """One turn of 8 prompts x G=4 on one chip: the cache holds 8 prompts of P slots and 32 rows of N (sampler._start),
  not 32 rows of P + N; float32, 2 x L x K x H x 4 bytes per slot."""
  config = tiny.get_config('test').copy_and_resolve_references()
  config.batch_size, config.num_generations, config.eval_batch_size = 8, 4, 1
  config.data.max_prompt_len, config.sampling.max_new_tokens = 48, 16
  vocab = 512
  estimate = plan.make_plan(config, 'cpu-1', model=loader.load(config, abstract=True, tokenizer=FakeVocab(vocab)))
  cfg = presets.tiny(vocab)
  per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
  assert estimate.sampling['KV cache'] == per_slot * (8 * 48 + 32 * 16)
  assert any('from the train sampler' in note for note in estimate.notes)


def test_plan_counts_the_split_layers_on_cpu_only():
  """On CPU the sampler splits the layers once per call (model.split_layers): one copy of them in the compute
  dtype, which stands for the cast copy; a TPU slice decodes from the stacked layers and counts no split."""
  config = tiny.get_config('test').copy_and_resolve_references()
  config.param_dtype, config.compute_dtype = 'bfloat16', 'float32'
  model_ = loader.load(config, abstract=True, tokenizer=FakeVocab(512))
  layers = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(model.param_shapes(presets.tiny(512))['layers']))
  on_cpu, on_tpu = (plan.make_plan(config, devices, model=model_).sampling for devices in ('cpu-1', 'v5e-1'))
  assert on_cpu['layers split for decoding (CPU)'] == 4 * layers  # float32
  assert 'layers split for decoding (CPU)' not in on_tpu
  assert on_tpu['gathered / cast weights'] - on_cpu['gathered / cast weights'] == 4 * layers  # the cast copy


class FakeVocab:
  def __init__(self, vocab_size):
    self.vocab_size = vocab_size


@pytest.mark.parametrize(
  'remat,chunked', [(False, False), (True, False), (False, True)], ids=['no_remat', 'remat', 'chunked_logits']
)
def test_estimate_matches_compiled_memory_analysis(remat, chunked, monkeypatch):
  """Tiny train step on the 8 fake devices, (2, 2, 2) mesh: XLA's per-device numbers vs the plan. chunked: the
  logits computed 4 positions at a time (train_step.LOGIT_CHUNK_ELEMENTS lowered to make them so).

  Tolerance: arguments (params + AdamW state + batch) within 1 %; temporaries (gradients, activations, logits,
  gathers) estimated within [0.8, 1.75] x what XLA's buffer assignment reports: the plan errs on the safe side
  (measured 1.00 without remat, 1.20 with remat, whose recompute XLA schedules more tightly than assumed).
  """
  config = tiny.get_config('test').copy_and_resolve_references()
  config.remat = remat
  config.grpo.beta = 0.0  # the step compiled below has no reference model (LossConfig() defaults)
  config.data.max_prompt_len, config.sampling.max_new_tokens = 32, 32
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  vocab, rows, p, n = 512, 16, 32, 32
  if chunked:
    monkeypatch.setattr(train_step, 'LOGIT_CHUNK_ELEMENTS', rows * vocab * 4)
  cfg = presets.tiny(vocab)
  estimate = plan.make_plan(config, 'cpu-8', model=loader.load(config, abstract=True, tokenizer=FakeVocab(vocab)))

  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    tx = train_step.make_optimizer(config.optimizer, 10)
    state = train_step.abstract_state(train_step.init_state(model.init_params(cfg, 0, mesh), tx))  # tiny: cheap
    step = train_step.make_train_step(train_step.StepConfig(cfg, grpo.LossConfig(), remat=remat), tx)
    batch = train_step.Batch(
      prompt_tokens=np.zeros((rows, p), np.int32),
      prompt_mask=np.ones((rows, p), bool),
      completion_tokens=np.zeros((rows, n), np.int32),
      completion_mask=np.ones((rows, n), np.float32),
      advantages=np.zeros(rows, np.float32),
      sampler_logp=np.zeros((rows, n), np.float32),
      group_size=config.num_generations,  # training's batches: G completions of each prompt
    )
    batch = jax.tree.map(lambda x: multihost.to_global(mesh, x), batch)
    stats = step.lower(state, batch).compile().memory_analysis()

  batch_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(batch))
  persistent = sum(estimate.persistent.values())
  np.testing.assert_allclose(stats.argument_size_in_bytes, persistent + batch_bytes, rtol=0.01)
  ratio = sum(estimate.train.values()) / stats.temp_size_in_bytes
  print(f'estimated / compiled temporaries: {ratio:.2f}')
  assert 0.8 <= ratio <= 1.75, (ratio, stats, plan.format_plan(estimate))


def test_cli_refuses_gdpo_as_train_does_without_reading_files(tmp_path, in_repo, capsys):
  """plan reads no data or grader file, but an inline grader (an OpenAI job's) and the overlong buffer it checks."""
  job = {
    'model': 'tiny', 'training_file': 'data/tiny/train.jsonl', 'validation_file': 'data/tiny/valid.jsonl',
    'method': {'type': 'reinforcement', 'reinforcement': {'grader': {
      'type': 'string_check', 'input': '{{sample.output_text}}', 'reference': '{{item.answer}}', 'operation': 'eq'}}},
  }  # fmt: skip
  (tmp_path / 'job.json').write_text(json.dumps(job))
  gdpo = '--config.grpo.advantage=gdpo'
  assert plan.main(['plan', f'--openai_job={tmp_path / "job.json"}', '--devices=cpu-1', gdpo]) == 2
  assert "config.grpo.advantage='gdpo': expected a multi grader" in capsys.readouterr().err
  flags = [gdpo, '--config.sampling.max_new_tokens=8', '--config.grpo.overlong_buffer=2']
  assert plan.main(['plan', '--config=configs/tiny.py', '--devices=cpu-1', *flags]) == 2
  assert 'config.grpo.overlong_buffer: expected 0 with grpo.advantage=gdpo' in capsys.readouterr().err
  # a grader file is train's to read: plan passes it
  assert plan.main(['plan', '--config=configs/tiny.py', '--devices=cpu-1', gdpo]) == 0


def test_cli_says_when_it_cannot_count_the_training_file(in_repo, capsys, caplog):
  """The OpenAI-style fields depend on the count: a typo in the path must not pass as a run of 1000 examples."""
  caplog.set_level(logging.WARNING, logger='rftjax')
  assert plan.main(['plan', '--config=configs/tiny.py', '--devices=cpu-1', '--config.data.train=data/nope.jsonl']) == 0
  assert "config.data.train='data/nope.jsonl' is not readable here (FileNotFoundError: " in caplog.text
  assert 'planning for 1000 training examples; --num_train_examples=N plans for N' in caplog.text
  assert '(1000 training examples)' in capsys.readouterr().out
  caplog.clear()
  assert plan.main(['plan', '--config=configs/tiny.py', '--devices=cpu-1']) == 0
  assert '(2000 training examples)' in capsys.readouterr().out and not caplog.text


@pytest.mark.parametrize('spec', ['cpu-0', 'v5e-0', 'v5p-0'])
def test_zero_devices_is_a_config_error(spec):
  with pytest.raises(errors.ConfigError, match=f"--devices='{spec}': N is 0; expected at least 1 device"):
    plan.parse_devices(spec)
