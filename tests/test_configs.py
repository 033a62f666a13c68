"""Every shipped config is usable: its data loads, its grader builds, its preset exists, its prompts fit."""

import importlib
import pathlib

import pytest

from rftjax import data
from rftjax import graders
from rftjax import presets
from rftjax import sampler
from rftjax import tokenizer
from rftjax import tool_server
from rftjax import tools
from rftjax import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = [
  ('tiny', None),
  ('tiny', 'test'),
  ('smollm2_arith', None),
  ('smollm2_arith', 'test'),
  ('gemma3_270m', None),
  ('gemma3_270m', 'test'),
  ('tiny_tools', None),
  ('tiny_tools', 'test'),
  ('smollm2_tools', None),
  ('smollm2_tools', 'test'),
]


@pytest.mark.parametrize('name, arg', CONFIGS, ids=[f'{n}:{a}' for n, a in CONFIGS])
def test_config_is_usable(name, arg, monkeypatch):
  monkeypatch.chdir(REPO)
  c = importlib.import_module(f'configs.{name}').get_config(arg)
  if c.tool_server:  # the URL the example server gets at run time
    c = tool_server.substitute(c, 'http://127.0.0.1:8000/')
  cfg = presets.get_config(c.model)
  examples = data.load_jsonl(c.data.train)
  valid = data.load_jsonl(c.data.valid)
  graders.build(graders.load(c.grader))
  tools.check_data_tools([(ex.source, ex.item) for ex in examples + valid], tools.load_tools(c.tools))
  assert bool(c.tools) == (c.max_episode_steps > 1)
  tok = tokenizer.load_tokenizer(c.tokenizer or c.init, chat_template=c.chat_template or None)
  if cfg.family != 'tiny':
    assert tok.vocab_size <= cfg.vocab_size
  lengths = [len(ids) for ids in data.encode_prompts(examples[:200] + valid, tok, c.data.max_prompt_len)]
  assert max(lengths) <= c.data.max_prompt_len
  assert c.eval_interval > 0
  ids, seqs = sampler.stop_tokens(tok, tuple(c.sampling.stop))
  assert len(ids) + len(seqs) == len(tok.stop_ids) + len(c.sampling.stop)  # each string stops on its own tokens
  if arg == 'test':  # the suite's 8 fake devices split the batch rows
    assert (c.batch_size * c.num_generations) % 8 == 0


def test_tpu_variant_names_a_bigger_model():
  from configs import gemma3_270m

  c = gemma3_270m.get_config('tpu')
  assert c.model == 'gemma3_1b' and c.init.startswith('hf:') and c.mesh.fsdp == -1


@pytest.mark.real_weights
def test_smollm2_a_real_training_step(tmp_path, monkeypatch):
  """The real-weights path end to end: GGUF load, chat template, sandboxed math grader, a GRPO step (the `test`
  variant's two cut to one: the suite's slowest test, against its 15-minute budget)."""
  from configs import smollm2_arith
  from rftjax import metrics

  monkeypatch.chdir(REPO)
  config = smollm2_arith.get_config('test').copy_and_resolve_references()
  config.total_steps = config.eval_interval = 1
  trainer.train(config, tmp_path)
  rows = metrics.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in rows if 'train_reward_mean' in r] == [1]
  assert [r['step'] for r in rows if 'valid_reward_mean' in r] == [0, 1]
  assert all(r['train/error_rate'] == 0 for r in rows if 'train_reward_mean' in r)


def test_positions_past_the_models_context_are_warned_about(caplog, monkeypatch):
  """A too-long prompt's error says "raise max_prompt_len"; past the model's max_seq_len that goes where the model
  never was."""
  import logging

  from configs import tiny
  from rftjax import loader, runspec

  monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[1])
  c = tiny.get_config('test').unlock()
  c.data.max_prompt_len, c.sampling.max_new_tokens = 500, 20
  caplog.set_level(logging.WARNING, logger='rftjax')
  runspec.build(c, loader.load_tokenizer(c))
  assert (
    "config.data.max_prompt_len + sampling.max_new_tokens = 520 positions, more than tiny's context of 512 "
    '(max_seq_len): the model never saw positions past it; expected at most 512'
  ) in caplog.messages
  caplog.clear()
  c.data.max_prompt_len = 400
  runspec.build(c, loader.load_tokenizer(c))
  assert not caplog.messages
  from rftjax import inference

  loaded = loader.load(c, abstract=True)
  inference.make_sampler(loaded, [[5] * 510], max_new_tokens=10)
  assert caplog.messages == [
    'the longest prompt is 510 tokens: with 10 new tokens that is 520 positions, more than the context of tiny (512, '
    'its max_seq_len); expected shorter prompts or fewer new tokens'
  ]
