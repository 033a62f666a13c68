"""OpenAI-style hyperparameters resolved into native config fields, against hand-computed numbers."""

import json
import re

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from rftjax import errors
from rftjax import hparams


def make_config(**openai):
  c = common.base()
  if 'openai' not in c:  # until configs/common.py calls it itself
    hparams.add_openai_fields(c)
  c.lock()
  for k, v in openai.items():
    c.openai[k] = v
  return c


def resolved(c):
  return json.loads(c.openai.resolved)


def test_defaults_change_nothing():
  c = make_config()
  assert c.openai.enabled is False and c.openai.seed is None
  assert all(c.openai[f] == 'auto' for f in hparams.FIELDS if f != 'seed')
  r = hparams.apply(c, 2000)
  for key in ('total_steps', 'batch_size', 'num_generations', 'eval_interval', 'seed'):
    assert r[key] == c[key]
  assert r.optimizer.learning_rate == c.optimizer.learning_rate and resolved(r) == {}


def test_user_fields_override_without_enabled():
  c = make_config(
    n_epochs=3, batch_size=16, learning_rate_multiplier=2.0, compute_multiplier=1.5, eval_interval=7, seed=42
  )
  c.model = 'gemma3_1b'
  r = hparams.apply(c, 1000)
  assert r.batch_size == 16
  assert r.total_steps == 188  # ceil(3 * 1000 / 16) = ceil(187.5)
  assert r.optimizer.learning_rate == pytest.approx(2e-6)  # 2 x base 1e-6 for gemma3_1b
  assert r.num_generations == 12  # round(1.5 x 8)
  assert (r.eval_interval, r.seed) == (7, 42)
  assert set(resolved(r)) == {
    'batch_size',
    'total_steps',
    'optimizer.learning_rate',
    'num_generations',
    'eval_interval',
    'seed',
  }
  assert c.total_steps == 100  # the input config is left alone


def test_auto_rules_when_enabled():
  c = make_config(enabled=True)  # model tiny, num_generations 8
  r = hparams.apply(c, 2000)
  assert r.batch_size == 32  # 2000 / 50 = 40 -> nearest power of 2
  assert r.total_steps == 125  # n_epochs = ceil(100 * 32 / 2000) = 2; ceil(2 * 2000 / 32)
  assert r.eval_interval == 13  # ceil(125 / 10)
  assert r.optimizer.learning_rate == pytest.approx(3e-4)  # tiny's base
  assert r.num_generations == 8
  small = hparams.apply(c, 10)
  assert (small.batch_size, small.total_steps) == (4, 25)  # clamp to 4; 10 epochs (capped); ceil(10 * 10 / 4)
  big = hparams.apply(c, 1_000_000)
  assert (big.batch_size, big.total_steps) == (64, 15625)  # clamp to 64; 1 epoch
  mixed = hparams.apply(make_config(enabled=True, n_epochs='1', batch_size=8), 100)
  assert (mixed.batch_size, mixed.total_steps, mixed.eval_interval) == (8, 13, 2)


def test_compute_multiplier_rounds_and_floors_at_two():
  assert hparams.apply(make_config(compute_multiplier=0.1), 100).num_generations == 2  # 0.8 -> max(2, 1)
  assert hparams.apply(make_config(compute_multiplier=0.3125), 100).num_generations == 3  # 2.5 rounds half up


def test_base_learning_rate_table_and_fallback():
  assert hparams.base_learning_rate('llama3_1_8b') == 5e-7
  for name in ('smollm2_135m', 'gemma3_270m', 'qwen2_5_7b'):
    assert 1e-7 <= hparams.base_learning_rate(name) <= 1e-5
  with pytest.raises(ValueError, match='unknown model preset'):
    hparams.base_learning_rate('nope')
  # a model named by its file only: a missing file is config.init's one line, not a reader's traceback
  with pytest.raises(errors.ConfigError, match=r"^config.init='gguf:/nonexistent/m.gguf': no such file /nonexistent/m"):
    hparams.base_learning_rate('', 'gguf:/nonexistent/m.gguf')


@pytest.mark.real_weights
def test_a_file_of_a_presets_architecture_takes_the_presets_base_rate():
  """A job's `model` is a file (configs/openai_job.py leaves config.model empty): gguf:gemma3-270m got the formula's
  2.1e-6, not gemma3_270m's 3e-6 that configs/gemma3_270m.py trains the same weights with."""
  assert hparams.base_learning_rate('', 'gguf:gemma3-270m') == hparams.BASE_LR['gemma3_270m'] == 3e-6


def test_a_warm_up_longer_than_the_run_and_epochs_under_dynamic_sampling_are_said(caplog):
  from configs import tiny
  from rftjax import runspec

  c = tiny.get_config('test')
  c.openai.n_epochs, c.openai.batch_size = 1, 4
  c.optimizer.warmup_steps, c.grpo.dynamic_sampling, c.grpo.max_resample_rounds = 5, True, 3
  with caplog.at_level('WARNING', logger='rftjax'):
    r = runspec.resolve(c, 12)
  assert r.total_steps == 3
  assert caplog.messages == [
    'optimizer.warmup_steps=5 is more than total_steps=3 (config.openai.n_epochs): the learning rate reaches at '
    f'most 0.6 of optimizer.learning_rate={c.optimizer.learning_rate:g}; lower optimizer.warmup_steps',
    'config.openai.n_epochs counts GRPO steps of batch_size=4 prompts, but grpo.dynamic_sampling may draw up to 4 '
    'batches a step (1 + grpo.max_resample_rounds): the run may pass over the data up to that many times more',
  ]
  caplog.clear()
  runspec.resolve(c, 12, quiet=True)  # the first of two passes (data.skip_long_prompts): said by the second
  assert caplog.messages == []
  c.sampling.temperature = 0.0  # every group one reward: nothing to learn from
  with caplog.at_level('WARNING', logger='rftjax'):
    runspec.resolve(c, 12)
  assert caplog.messages[0].startswith(
    'sampling.temperature=0: greedy decoding gives the num_generations=4 completions of a prompt the same tokens'
  )
  caplog.clear()
  c.sampling.temperature, c.sampling.top_k = 1.0, 1  # greedy too: only the likeliest token is left
  with caplog.at_level('WARNING', logger='rftjax'):
    runspec.resolve(c, 12)
  assert caplog.messages[0].startswith(
    'sampling.top_k=1: greedy decoding gives the num_generations=4 completions of a prompt the same tokens'
  )


def test_eval_samples_sets_the_native_field():
  r = hparams.apply(make_config(eval_samples=4), 100)
  assert r.eval_samples == 4 and resolved(r)['eval_samples']['value'] == 4
  # four greedy completions would be one completion four times: they are sampled as the rollouts are
  assert r.eval_temperature == r.sampling.temperature == 1.0 and resolved(r)['eval_temperature']['value'] == 1.0
  c = make_config(eval_samples=4).unlock()
  c.eval_temperature = 0.0
  kept = hparams.apply(c, 100, explicit={'eval_temperature'})  # --config.eval_temperature=0 on the command line
  assert kept.eval_temperature == 0.0 and 'eval_temperature' not in resolved(kept)
  assert hparams.apply(make_config(eval_samples=1), 100).eval_temperature == 0.0


@pytest.mark.parametrize(
  'field,value,expect',
  [
    ('n_epochs', 'three', "config.openai.n_epochs: expected a finite number or 'auto', got 'three'"),
    ('batch_size', 2.5, 'config.openai.batch_size: expected an integer'),
    ('learning_rate_multiplier', -1, 'config.openai.learning_rate_multiplier: must be > 0'),
    ('eval_interval', 0, 'config.openai.eval_interval: must be > 0'),
    # non-finite values ended in a traceback (NaN: ValueError, inf: OverflowError); 1e20 prompts per step ran out
    # of memory
    ('n_epochs', 'nan', "config.openai.n_epochs: expected a finite number or 'auto', got 'nan'"),
    (
      'compute_multiplier',
      float('inf'),
      "config.openai.compute_multiplier: expected a finite number or 'auto', got inf",
    ),
    ('batch_size', 1e20, "config.openai.batch_size: expected an integer up to 2147483647 or 'auto', got 1e+20"),
  ],
)
def test_bad_values_name_the_field(field, value, expect):
  with pytest.raises(errors.ConfigError, match=re.escape(expect)):
    hparams.apply(make_config(**{field: value}), 100)


def test_command_line_overrides(tmp_path):
  cfg_file = tmp_path / 'cfg.py'
  cfg_file.write_text(
    'from configs import common\nfrom rftjax import hparams\n\n'
    'def get_config(arg=None):\n  c = common.base()\n'
    "  if 'openai' not in c:\n    hparams.add_openai_fields(c)\n  return c.lock()\n"
  )
  argv = [
    'prog',
    f'--config={cfg_file}',
    '--config.openai.n_epochs=2',
    '--config.openai.batch_size=8',
    '--config.openai.learning_rate_multiplier=0.5',
  ]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, sys_argv=argv)
  fv(argv)
  r = hparams.apply(fv.config, 100)
  assert (r.batch_size, r.total_steps) == (8, 25)
  assert r.optimizer.learning_rate == pytest.approx(1.5e-4)


def test_scale_rewards_set_for_another_advantage_is_warned_about(caplog, monkeypatch):
  import pathlib

  from configs import tiny
  from rftjax import runspec

  monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[1])  # the config's paths are the repo's

  c = tiny.get_config('test')
  c.grpo.advantage, c.grpo.scale_rewards = 'rloo', 'batch'
  with caplog.at_level('WARNING', logger='rftjax'):
    runspec.resolve(c, 256, explicit=('grpo.advantage', 'grpo.scale_rewards'))
    runspec.resolve(c, 256, explicit=('grpo.advantage',))  # the default, not asked for: no word
  assert [m for m in caplog.messages if 'scale_rewards' in m] == [
    'grpo.scale_rewards=batch is ignored with grpo.advantage=rloo, which has its own scaling (docs/grpo.md); use '
    "grpo.advantage='grpo' for that scale"
  ]


def test_reasoning_effort_rounds_half_up_as_compute_multiplier_does():
  """0.5 x 5 tokens was 2 (Python's round, half to even) while 0.5 x 7 was 4."""
  budgets = []
  for tokens in (3, 5, 7):
    c = make_config(reasoning_effort='low').unlock()
    c.sampling.max_new_tokens = tokens
    budgets.append(hparams.apply(c, 100).sampling.max_new_tokens)
  assert budgets == [2, 3, 4]


def test_the_passes_over_the_data_and_a_batch_larger_than_it_are_said(caplog):
  """30 prompts with tiny.py's 200 steps x 16 were 106.7 passes that nothing mentioned, and batch_size=64 on them
  repeated each prompt in every batch without a word."""
  from configs import tiny
  from rftjax import runspec

  c = tiny.get_config('test')
  c.total_steps, c.batch_size = 200, 16
  with caplog.at_level('INFO', logger='rftjax'):
    r = runspec.resolve(c, 30, explicit=('total_steps', 'batch_size'))
  assert hparams.passes(r, 30) == (
    'the run draws 3200 prompts (total_steps=200 x batch_size=16): 107 passes over the 30 training examples'
  )  # the trainer's `data:` line ends with it
  assert not any('is more than the' in m for m in caplog.messages)
  caplog.clear()
  c.batch_size = 64
  with caplog.at_level('INFO', logger='rftjax'):
    runspec.resolve(c, 30, explicit=('total_steps', 'batch_size'))
  assert (
    'batch_size=64 is more than the 30 training examples: every batch holds some prompts twice or more (each already '
    f'gets num_generations={c.num_generations} completions); a batch_size of at most 30 draws each prompt once a batch'
  ) in caplog.messages
