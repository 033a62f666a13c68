"""The inference CLIs (sample, evaluate, report) and the reward plot, against one real 3-step tiny run."""

import argparse
import importlib
import datetime
import json
import logging
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from configs import tiny
from rftjax import checkpoint
from rftjax import cli
from rftjax import data as data_lib
from rftjax import errors
from rftjax import evaluate
from rftjax import export
from rftjax import graders
from rftjax import inference
from rftjax import loader
from rftjax import metrics
from rftjax import model
from rftjax import plots
from rftjax import report
from rftjax import rollout
from rftjax import runfs
from rftjax import sample
from rftjax import sampler
from rftjax import train_step
from rftjax import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = [
  {'messages': [{'role': 'user', 'content': 'Largest digit: 3 9 4 1'}], 'answer': '9'},
  {'text': 'Largest digit: 1 2'},
  {'messages': [{'role': 'user', 'content': 'Largest digit: 5 0 7'}], 'answer': '7'},
]


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A fresh 3-step tiny run (the configs/tiny.py:test recipe, validated on 16 examples to stay fast)."""
  tmp = tmp_path_factory.mktemp('tinyrun')
  valid = tmp / 'valid.jsonl'
  valid.write_text(''.join((REPO / 'data/tiny/valid.jsonl').read_text().splitlines(keepends=True)[:16]))
  c = tiny.get_config('test')
  c.data.valid = str(valid)
  c.eval_batch_size = 16
  with pytest.MonkeyPatch.context() as mp:
    mp.chdir(REPO)  # the config's paths are relative to the repo root
    trainer.train(c, tmp / 'run')
  return tmp / 'run'


@pytest.fixture
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


def write_jsonl(path, rows):
  path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows))
  return path


def read_jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


# ---- pass@k ------------------------------------------------------------------------------------------------------
def test_pass_at_k_hand_computed():
  assert evaluate.pass_at_k(4, 1, 1) == pytest.approx(0.25)
  assert evaluate.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
  assert evaluate.pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
  assert evaluate.pass_at_k(4, 0, 4) == 0.0
  assert evaluate.pass_at_k(4, 3, 2) == 1.0  # n - c < k: every draw of 2 contains a pass
  for n in range(1, 9):
    for c in range(n + 1):
      for k in range(1, n + 1):
        assert evaluate.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
  with pytest.raises(ValueError, match='k <= n'):
    evaluate.pass_at_k(2, 1, 3)


def test_summary_pass_at_k_small_case():
  rewards = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0.5]], float)
  results = [graders.GradeResult(float(r)) for r in rewards.ravel()]
  s = evaluate.summarize(rewards, results, threshold=1.0)
  assert s['pass@1'] == pytest.approx((0.25 + 0.5 + 0) / 3)
  assert s['pass@2'] == pytest.approx((0.5 + (1 - 1 / 6) + 0) / 3)
  assert s['pass@4'] == pytest.approx(2 / 3)
  assert s['reward_mean'] == pytest.approx(3.5 / 12)
  assert s['eval_reward_mean'] == pytest.approx(3.5 / 12)
  # the mean's error over the 3 prompts (means 1/4, 1/2, 1/8), not over 12 answers as if independent
  assert s['reward_stderr'] == pytest.approx(np.std([0.25, 0.5, 0.125], ddof=1) / np.sqrt(3))
  assert evaluate.summarize(rewards, results, threshold=0.5)['pass@4'] == pytest.approx(1.0)
  # the judge was down for the third prompt's 0.5: out of the means, a miss in pass@j
  results[-1] = graders.core.failed(graders.core.MODEL_SERVER, 'HTTP 503 (4 attempts)', discard=True)
  rewards[2, 3] = 0.0
  s = evaluate.summarize(rewards, results, threshold=0.5)
  assert s['reward_mean'] == s['eval_reward_mean'] == pytest.approx(3 / 11) and s['eval/num_discarded'] == 1
  assert s['reward_std'] == pytest.approx(np.std([1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]))
  assert s['reward_stderr'] == pytest.approx(np.std([0.25, 0.5, 0.0], ddof=1) / np.sqrt(3))  # its 3 with a verdict
  assert s['pass@4'] == pytest.approx(2 / 3)
  # the first prompt's pass was earned against a tool that failed for good (kept reward, no verdict): a miss
  results[0] = graders.GradeResult(1.0, metadata={'discard': True})
  s = evaluate.summarize(rewards, results, threshold=0.5)
  assert s['pass@1'] == pytest.approx((0 + 0.5 + 0) / 3) and s['reward_mean'] == pytest.approx(2 / 10)


# ---- loading ----------------------------------------------------------------------------------------------------
def load_run(run_dir, step='best'):
  return loader.load(runfs.read_config(run_dir), workdir=run_dir, step=step)


def test_load_restores_the_params_the_trainer_saved(run_dir, in_repo):
  loaded = load_run(run_dir, step=2)
  assert loaded.step == 2 and loaded.cfg.vocab_size == loaded.tokenizer.vocab_size
  run = loaded.config
  tx = train_step.make_optimizer(run.optimizer, run.total_steps)  # the trainer's full state, restored its way
  state = train_step.init_state(model.init_params(loaded.cfg, 0), tx)
  state, _ = checkpoint.Checkpointer(run_dir / 'checkpoints', read_only=True).restore(
    2, train_step.abstract_state(state)
  )
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state['params'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(errors.ConfigError, match="--step=bestest: step must be 'latest', 'best' or a step"):
    load_run(run_dir, step='bestest')


# ---- sample ------------------------------------------------------------------------------------------------------
def test_sample_greedy_equals_sampler_generate(run_dir, tmp_path, in_repo):
  prompts = write_jsonl(tmp_path / 'prompts.jsonl', PROMPTS)
  out = tmp_path / 'out.jsonl'
  assert (
    sample.main([f'--workdir={run_dir}', '--step=latest', f'--prompts={prompts}', f'--out={out}', '--max_new_tokens=4'])
    == 0
  )
  rows = read_jsonl(out)
  assert len(rows) == len(PROMPTS)
  assert rows[1]['source'] == f'{prompts}:2' and rows[0]['answer'] == '9'
  loaded = load_run(run_dir, step='latest')
  assert loaded.step == 3
  tok = loaded.tokenizer
  ids = [tok.encode_prompt(p['messages']) if 'messages' in p else tok.encode_text(p['text']) for p in PROMPTS]
  want = sampler.generate(loaded.params, loaded.cfg, ids, max_new_tokens=4, stop_ids=tok.stop_ids, pad_id=tok.pad_id)
  for row, w in zip(rows, want):
    assert row['tokens'] == w
    assert row['completion'] == tok.decode(w)
    assert len(row['logprobs']) == len(w) and all(lp <= 0 for lp in row['logprobs'])


def test_sample_from_init_random_weights(tmp_path, in_repo):
  prompts = write_jsonl(tmp_path / 'prompts.jsonl', PROMPTS[1:2])
  out = tmp_path / 'out.jsonl'
  assert (
    sample.main(
      [
        '--init=',
        '--model=tiny',
        '--tokenizer=sp:data/tiny/tokenizer.model',
        f'--prompts={prompts}',
        f'--out={out}',
        '--max_new_tokens=2',
        '--temperature=1.0',
        '--seed=3',
      ]
    )
    == 0
  )
  (row,) = read_jsonl(out)
  assert 1 <= len(row['tokens']) <= 2 and row['text'] == PROMPTS[1]['text']


def test_sample_stop_string_ends_the_completion_at_its_tokens(tmp_path, in_repo, capsys):
  prompts = write_jsonl(tmp_path / 'prompts.jsonl', PROMPTS[1:2])
  tok = loader.load_tokenizer(loader.model_spec(tokenizer='sp:data/tiny/tokenizer.model'))
  stoppable = lambda t: tok.encode(tok.decode(t)) == t  # noqa: E731  (a string that encodes back to these tokens)
  for seed in range(5, 40):  # the first seed whose free stream has a one-token and a two-token stop string
    base = [
      '--init=',
      '--model=tiny',
      '--tokenizer=sp:data/tiny/tokenizer.model',
      f'--prompts={prompts}',
      '--max_new_tokens=8',
      '--temperature=1.0',
      f'--seed={seed}',
    ]
    assert sample.main(base + [f'--out={tmp_path / "free.jsonl"}']) == 0
    (free,) = read_jsonl(tmp_path / 'free.jsonl')
    t = free['tokens']
    if any(stoppable(t[i : i + 1]) for i in range(1, len(t))) and any(
      stoppable(t[j : j + 2]) for j in range(1, len(t) - 1)
    ):
      break
  k = next(i for i in range(1, len(t)) if stoppable(t[i : i + 1]))
  stop = tok.decode([free['tokens'][k]])
  assert sample.main(base + [f'--out={tmp_path / "stop.jsonl"}', f'--stop={stop}']) == 0
  (row,) = read_jsonl(tmp_path / 'stop.jsonl')
  # the same random stream, cut after the first occurrence of the stop token
  assert row['tokens'] == free['tokens'][: free['tokens'].index(free['tokens'][k]) + 1]
  assert row['truncated'] is False
  # a stop string of two tokens the free stream writes: the same stream, cut after their first appearance
  j = next(j for j in range(1, len(t) - 1) if stoppable(t[j : j + 2]))
  first = next(i for i in range(len(t) - 1) if t[i : i + 2] == t[j : j + 2])
  assert sample.main(base + [f'--out={tmp_path / "x.jsonl"}', f'--stop={tok.decode(t[j : j + 2])}']) == 0
  (row,) = read_jsonl(tmp_path / 'x.jsonl')
  assert row['tokens'] == t[: first + 2] and row['truncated'] is False


def test_sample_bad_prompt_line_names_file_and_line(run_dir, tmp_path, in_repo, capsys):
  prompts = write_jsonl(tmp_path / 'prompts.jsonl', [PROMPTS[0], '{"messages": [{"role": "user"}]}'])
  assert sample.main([f'--workdir={run_dir}', f'--prompts={prompts}', f'--out={tmp_path / "o.jsonl"}']) == 2
  err = capsys.readouterr().err
  assert f'{prompts}:2' in err and 'content' in err
  assert not (tmp_path / 'o.jsonl').exists()


def test_sample_bad_flags(run_dir, tmp_path, in_repo, capsys, caplog):
  prompts = write_jsonl(tmp_path / 'prompts.jsonl', PROMPTS[:1])
  with pytest.raises(SystemExit) as e:
    sample.main([f'--prompts={prompts}', f'--out={tmp_path / "o.jsonl"}'])
  assert e.value.code == 2 and '--workdir or --init' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    sample.main([f'--workdir={run_dir}', f'--prompts={prompts}', '--out=o.jsonl', '--temperature=-1'])
  assert '--temperature' in capsys.readouterr().err
  caplog.set_level(logging.INFO, logger='rftjax')
  assert sample.main([f'--workdir={run_dir}', '--step=7', f'--prompts={prompts}', f'--out={tmp_path / "o"}']) == 2
  err = capsys.readouterr().err
  assert '--step=7' in err and '[0, 2, 3]' in err
  assert not [r for r in caplog.records if 'loading' in r.message]  # checked before minutes of loading
  assert sample.main([f'--workdir={tmp_path}', f'--prompts={prompts}', f'--out={tmp_path / "o"}']) == 2
  assert 'config.json' in capsys.readouterr().err
  # what only the chat template finds (tools that are no list) fails before the weights load, not after
  tooled = write_jsonl(tmp_path / 'tooled.jsonl', [{**PROMPTS[0], 'tools': 'lookup'}])
  assert sample.main([f'--workdir={run_dir}', f'--prompts={tooled}', f'--out={tmp_path / "o"}']) == 2
  assert f'{tooled}:1: tools must be a list' in capsys.readouterr().err
  assert not [r for r in caplog.records if 'loading' in r.message]
  # a flag's value is named as the flag, not as the config key it sets
  argv = ['--init=', '--model=nosuchmodel', '--tokenizer=sp:data/tiny/tokenizer.model', f'--prompts={prompts}']
  assert sample.main([*argv, f'--out={tmp_path / "o"}']) == 2
  assert capsys.readouterr().err.startswith("error: --model: unknown preset 'nosuchmodel'")
  assert sample.main(['--init=gguf:/nope.gguf', f'--prompts={prompts}', f'--out={tmp_path / "o"}']) == 2
  assert capsys.readouterr().err.startswith("error: --init='gguf:/nope.gguf': no such file /nope.gguf")
  kept = prompts.read_text()
  assert sample.main([f'--workdir={run_dir}', f'--prompts={prompts}', f'--out={prompts}']) == 2
  assert capsys.readouterr().err == (
    f'error: --out={prompts} is the --prompts file; expected another file (writing it would replace that)\n'
  )
  assert prompts.read_text() == kept


def test_stop_flags_keep_what_was_typed_and_resolve_escapes(run_dir, tmp_path):
  flags = ['--stop=。', '--stop=\\n', '--stop=→\\t', '--stop=\\u00e9']
  args = sample.parse_args([f'--workdir={run_dir}', '--prompts=p.jsonl', f'--out={tmp_path / "o"}', *flags])
  assert args.stop == ['。', '\n', '→\t', 'é']  # unicode_escape alone gave 'ã\x80\x82' for the first


# ---- evaluate ----------------------------------------------------------------------------------------------------
def test_evaluate_writes_graded_samples_and_pass_at_k(run_dir, tmp_path, in_repo, capsys):
  data = write_jsonl(
    tmp_path / 'heldout.jsonl',
    [PROMPTS[0], PROMPTS[2], {'messages': [{'role': 'user', 'content': 'Largest digit: 8'}], 'answer': '8'}],
  )
  assert evaluate.main([f'--workdir={run_dir}', f'--data={data}', '--samples=4', '--num_workers=1']) == 0
  stdout = capsys.readouterr().out
  summary = json.loads(stdout.strip().splitlines()[-1])
  best = checkpoint.Checkpointer(run_dir / 'checkpoints', read_only=True).best_step()
  out = run_dir / 'eval' / f'step{best}_heldout.jsonl'
  assert summary['out'] == str(out) and summary['step'] == best and summary['temperature'] == 1.0
  assert 'pass@4' in stdout and (out.parent / (out.name + '.summary.json')).is_file()
  rows = read_jsonl(out)
  assert len(rows) == 12 and [r['sample'] for r in rows[:4]] == [0, 1, 2, 3]
  assert all({'reward', 'sub_rewards', 'errors', 'completion'} <= set(r) for r in rows)
  rewards = np.array([r['reward'] for r in rows]).reshape(3, 4)
  assert summary['reward_mean'] == pytest.approx(rewards.mean())
  for k in (1, 2, 4):
    want = np.mean([evaluate.pass_at_k(4, int(c), k) for c in (rewards >= 1.0).sum(1)])
    assert summary[f'pass@{k}'] == pytest.approx(want)


def test_an_interrupted_evaluate_leaves_no_summary_beside_new_samples(run_dir, tmp_path, in_repo, capsys, monkeypatch):
  """The samples are written, then the summary: a stop between the two left the new samples beside the summary of
  an earlier evaluation, which a script would read as theirs."""
  data, out = write_jsonl(tmp_path / 'heldout.jsonl', [PROMPTS[0]]), tmp_path / 'e.jsonl'
  assert evaluate.main([f'--workdir={run_dir}', f'--data={data}', f'--out={out}', '--num_workers=1']) == 0
  written = sample.write_out

  def interrupted(path, rows):
    written(path, rows)
    raise KeyboardInterrupt

  monkeypatch.setattr(sample, 'write_out', interrupted)
  assert evaluate.main([f'--workdir={run_dir}', f'--data={data}', f'--out={out}', '--num_workers=1']) == 130
  assert sorted(p.name for p in tmp_path.iterdir()) == ['e.jsonl', 'heldout.jsonl']


def test_paths_say_where_they_were_looked_for(run_dir, tmp_path, monkeypatch, capsys):
  """A user's own project folder: `--workdir=~/x` (no shell expands ~ after '=') made a folder named ~ here; a run's
  relative tokenizer, read from another folder, failed with no word of why, and export blamed the model preset."""
  from rftjax import data
  from rftjax import trainer

  monkeypatch.chdir(tmp_path)
  home = pathlib.Path('~').expanduser()
  tilde = f"'~' is not expanded here (a shell expands it only where a word starts, not after '='): write {home}/x"
  with pytest.raises(
    errors.ConfigError, match=re.escape(f'--workdir=~/x: would make a folder named ~ in {tmp_path}; {tilde}')
  ):
    trainer.train(tiny.get_config('test'), '~/x')
  with pytest.raises(
    errors.ConfigError, match=re.escape(f'--out=~/x: would make a folder named ~ in {tmp_path}; {tilde}')
  ):
    cli.check_out('~/x', folder=True)
  with pytest.raises(data.DataError, match=re.escape(f'~/x: no such file in {tmp_path} (config.data.train); {tilde}')):
    data.load_jsonl('~/x', 'config.data.train')
  assert list(tmp_path.iterdir()) == []
  assert export.main([f'--workdir={run_dir}', f'--out={tmp_path / "hf"}']) == 2
  assert capsys.readouterr().err == (
    f"error: config.tokenizer='sp:data/tiny/tokenizer.model': no such file data/tiny/tokenizer.model in {tmp_path} "
    f'(as {run_dir}/config.json names it: its relative paths start in the folder the run was started in; run this '
    'command from there, or give --tokenizer=...)\n'
  )
  assert evaluate.main([f'--workdir={run_dir}', f'--data={REPO}/data/tiny/valid.jsonl', f'--out={tmp_path / "e"}']) == 2
  assert f'(as {run_dir}/config.json names it: ' in capsys.readouterr().err
  assert (
    export.main(
      [f'--workdir={run_dir}', f'--out={tmp_path / "hf"}', f'--tokenizer=sp:{REPO}/data/tiny/tokenizer.model']
    )
    == 0
  )
  # a run whose tokenizer is its init's, from another folder: no export without it (it said the run names none)
  config = runfs.read_config(run_dir)
  with config.unlocked():
    config.tokenizer, config.init = '', 'hf:my/models/base'
  with pytest.raises(
    errors.ConfigError, match=re.escape(f'no such folder my/models/base in {tmp_path} (as {run_dir}/')
  ):
    loader.load(config, workdir=run_dir, tokenizer_required=False)
  assert runfs.tilde_hint('~backup.jsonl') == runfs.tilde_hint('a/~/b') == ''  # file names, not a home folder


def test_an_out_that_is_a_runs_own_file_is_refused(tmp_path):
  """`sample --out=RUN/metrics.jsonl` replaced a live run's log with completions (the trainer went on writing to
  the deleted file, and report found no steps)."""
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps({'model': 'tiny', 'grpo': {}, 'data': {}}))
  for name in (*cli.RUN_OWN, 'samples/valid_step000004.jsonl'):
    with pytest.raises(errors.ConfigError, match=re.escape(f"{run} is a run's folder, and {name} is the run's own")):
      cli.check_out(run / name)
  cli.check_out(run / 'eval' / 'mine.jsonl')  # beside them: fine
  cli.check_out(tmp_path / 'metrics.jsonl')  # no run there: fine
  hf = tmp_path / 'hf'  # a model folder's config.json is no run's
  hf.mkdir()
  (hf / 'config.json').write_text('{"model_type": "llama"}')
  cli.check_out(hf / 'metrics.jsonl')


def test_an_out_that_is_no_file_is_refused_and_a_link_is_written_through(tmp_path):
  """Results are written to a temporary file and renamed into place: as root, --output=/dev/null replaced the
  machine's /dev/null with a file, a pipe (>(cat)) failed only after the work, '-' made a file named '-', and a
  symbolic link was replaced by a file while its target kept the old content."""
  fifo = tmp_path / 'fifo'
  os.mkfifo(fifo)
  for path, kind in (('/dev/null', 'a device or socket'), (fifo, 'a pipe')):
    with pytest.raises(errors.ConfigError, match=f'^--out={path}: {kind} is there, not a file; expected the name'):
      cli.check_out(path)
  with pytest.raises(errors.ConfigError, match=r'^--out=-: expected the name of a file to write \(- is not stdout'):
    cli.check_out('-')
  target = tmp_path / 'target.jsonl'
  target.write_text('old\n')
  (tmp_path / 'link.jsonl').symlink_to(target)
  cli.check_out(tmp_path / 'link.jsonl')
  data_lib.write_jsonl(tmp_path / 'link.jsonl', [{'a': 1}])
  assert (tmp_path / 'link.jsonl').is_symlink() and target.read_text() == '{"a": 1}\n'


def test_evaluate_says_when_its_default_out_replaces_another_datas(run_dir, tmp_path, in_repo, caplog):
  """The default --out is eval/step<N>_<stem>.jsonl: valid.jsonl of another folder silently replaced the first."""
  first, second = tmp_path / 'a' / 'valid.jsonl', tmp_path / 'b' / 'valid.jsonl'
  for path in (first, second):
    path.parent.mkdir()
    write_jsonl(path, [PROMPTS[0]])
  caplog.set_level(logging.WARNING, logger='rftjax')
  for data in (first, first, second):
    assert evaluate.main([f'--workdir={run_dir}', f'--data={data}', '--num_workers=1']) == 0
  said = [m for m in caplog.messages if 'held the evaluation with' in m]
  assert len(said) == 1 and said[0].endswith(
    f'held the evaluation with data={first}, which this one with data={second} replaces; give --out to keep both'
  )
  # the same data with other samples: replaced too, and said
  assert evaluate.main([f'--workdir={run_dir}', f'--data={second}', '--num_workers=1', '--samples=2']) == 0
  said = [m for m in caplog.messages if 'held the evaluation with' in m]
  assert said[-1].endswith('with samples_per_prompt=1, temperature=0.0, which this one with samples_per_prompt=2, '
                           'temperature=1.0 replaces; give --out to keep both')  # fmt: skip


def test_evaluate_takes_the_runs_prompt_length_limit(run_dir, tmp_path, in_repo, capsys, caplog, monkeypatch):
  """A run with data.skip_long_prompts left its long validation prompts out; evaluate graded them all, so the same
  data did not give the run's valid_reward_mean. Without the skip, a prompt longer than the run's limit is said."""
  import shutil

  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  long = {'messages': [{'role': 'user', 'content': 'Largest digit: ' + ' '.join('3' * 30)}], 'answer': '3'}
  data = write_jsonl(tmp_path / 'mixed.jsonl', [PROMPTS[0], long, PROMPTS[2]])
  with caplog.at_level('WARNING', logger='rftjax'):
    assert evaluate.main([f'--workdir={run_dir}', f'--data={data}', '--num_workers=1', f'--out={tmp_path / "a"}']) == 0
  assert len(read_jsonl(tmp_path / 'a')) == 3
  (said,) = [m for m in caplog.messages if m.startswith('--data: ')]
  assert said.startswith("--data: 1 prompt is longer than the run's config.data.max_prompt_len=20 (the longest ")
  skipping = tmp_path / 'skipping'
  shutil.copytree(run_dir, skipping)
  config = json.loads((skipping / 'config.json').read_text())
  config['data']['skip_long_prompts'] = True
  (skipping / 'config.json').write_text(json.dumps(config))
  caplog.clear()
  with caplog.at_level('WARNING', logger='rftjax'):
    assert evaluate.main([f'--workdir={skipping}', f'--data={data}', '--num_workers=1', f'--out={tmp_path / "b"}']) == 0
  assert [r['source'] for r in read_jsonl(tmp_path / 'b')] == [f'{data}:1', f'{data}:3']
  assert any(m.startswith('skipped 1 prompt longer than config.data.max_prompt_len=20') for m in caplog.messages)


def test_evaluate_of_a_run_samples_as_its_validation_did(tmp_path, in_repo, capsys, monkeypatch):
  """A run whose validation sampled (eval_samples 4 at eval_temperature 1, sampling.top_k 2, a bfloat16 KV cache):
  `evaluate --samples=4` with no other flag gives its validation's reward. Before, it sampled without top-k (0.105
  against 0.15) in a float32 cache."""
  from rftjax import metrics

  valid = tmp_path / 'valid.jsonl'
  valid.write_text(''.join((REPO / 'data' / 'tiny' / 'valid.jsonl').read_text().splitlines(True)[:50]))
  c = tiny.get_config('test')
  c.total_steps, c.eval_interval, c.eval_samples, c.eval_temperature = 2, 2, 4, 1.0
  c.sampling.top_k, c.sampling.cache_dtype = 2, 'bfloat16'
  c.data.valid, c.eval_batch_size = str(valid), 200
  used, real = [], rollout.sample
  monkeypatch.setattr(rollout, 'sample', lambda sampler, *a, **k: used.append(sampler) or real(sampler, *a, **k))
  trainer.train(c, tmp_path / 'run')
  last = [r for r in metrics.read_jsonl(tmp_path / 'run' / 'metrics.jsonl') if 'valid_reward_mean' in r][-1]
  argv = [f'--workdir={tmp_path / "run"}', '--step=2', f'--data={valid}', '--samples=4', '--num_workers=1']
  trained = set(used)
  assert evaluate.main(argv) == 0
  assert used[-1] in trained and used[-1].group_size == 4  # the validation's program: each prompt prefilled once
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert last['step'] == 2 and summary['temperature'] == 1.0
  assert summary['reward_mean'] == last['valid_reward_mean']
  loaded = loader.load(runfs.read_config(tmp_path / 'run'), workdir=tmp_path / 'run', step='latest')
  made = inference.make_sampler(loaded, [[1, 2, 3]], max_new_tokens=2)
  assert (made.cache_dtype, made.params.top_k, made.params.top_p) == ('bfloat16', 2, 1.0)
  assert inference.make_sampler(loaded, [[1, 2, 3]], max_new_tokens=2, top_k=0).params.top_k == 0  # a flag wins


def test_step_0_is_the_runs_init_when_the_keep_policy_deleted_it(run_dir, tmp_path, in_repo, capsys):
  """Did training help? The base model as the run validated it: --step=0 (or init) was an error once the keep
  policy had deleted checkpoint 0, and --init gave other settings (the defaults' 128 new tokens: 0.0 for 0.135)."""
  import shutil

  from rftjax import metrics

  run = tmp_path / 'run'
  shutil.copytree(run_dir, run)
  config = runfs.read_config(run)
  kept = loader.load(config, workdir=run, step=0).params  # checkpoint 0, still on disk
  shutil.rmtree(run / 'checkpoints' / '0')  # as the keep policy leaves a longer run
  for step in (0, 'init'):
    again = loader.load(config, workdir=run, step=step)
    assert again.step == 0
    jax.tree.map(np.testing.assert_array_equal, again.params, kept)  # what checkpoint 0 held, exactly
  step0 = [r for r in metrics.read_jsonl(run / 'metrics.jsonl') if r['step'] == 0 and 'valid_reward_mean' in r][0]
  data = config['data']['valid']
  assert evaluate.main([f'--workdir={run}', '--step=init', f'--data={data}', '--num_workers=1']) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['step'] == 0 and summary['reward_mean'] == step0['valid_reward_mean']


def test_evaluate_says_what_it_measured_and_how_to_match_the_runs_validation(run_dir, tmp_path, in_repo, capsys,
                                                                            caplog):  # fmt: skip
  """An evaluate summary named no model, grader or settings; another grader replaced an earlier result without a
  word; and on the run's validation file other settings than its own gave another number without a note."""
  import shutil

  run = tmp_path / 'run'
  shutil.copytree(run_dir, run)
  valid = runfs.read_config(run)['data']['valid']
  argv = [f'--workdir={run}', '--step=latest', f'--data={valid}', '--limit=5', '--samples=2', '--num_workers=1']
  with caplog.at_level('INFO', logger='rftjax'):
    assert evaluate.main(argv) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['num_prompts'] == 5 and summary['limit'] == 5 and summary['model'] == {'workdir': str(run)}
  assert re.fullmatch(r'exact_answer \(string_check, [0-9a-f]{8}\)', summary['grader'])
  assert (summary['max_new_tokens'], summary['top_p'], summary['top_k']) == (1, 1.0, 0)
  assert datetime.datetime.fromisoformat(summary['evaluated_at']).tzinfo is not None
  assert json.loads(pathlib.Path(summary['out'] + '.summary.json').read_text())['grader'] == summary['grader']
  assert 'the run validated with 1 sample a prompt at eval_temperature 0.0: --samples=1 gives' in caplog.text
  other = json.loads((REPO / 'data' / 'tiny' / 'grader.json').read_text())
  other['operation'] = 'ne'  # the same name, another grader
  grader = tmp_path / 'g.json'
  grader.write_text(json.dumps(other))
  caplog.clear()
  assert evaluate.main([*argv, f'--grader={grader}']) == 0
  assert f'with grader={summary["grader"]}, which this one with grader=exact_answer (string_check, ' in caplog.text


def test_evaluate_says_when_some_gradings_failed(run_dir, tmp_path, in_repo, capsys):
  """15% of gradings failing (a grader raising) exited 0 without a word: a reward_mean lowered by zeros that only
  mean the grader could not run."""
  grader = tmp_path / 'g.json'
  grader.write_text(json.dumps({'type': 'python', 'name': 'picky', 'source': "def grade(sample, item):\n  if item["
                                "'answer'] == '9':\n    raise ValueError('no')\n  return 1.0\n"}))  # fmt: skip
  valid = runfs.read_config(run_dir)['data']['valid']
  nines = sum(1 for line in read_jsonl(valid) if line['answer'] == '9')
  out = tmp_path / 'e.jsonl'
  argv = [f'--workdir={run_dir}', f'--data={valid}', f'--grader={grader}', f'--out={out}', '--num_workers=1']
  assert 0 < nines < 16 and evaluate.main([*argv, '--json']) == 0
  out_, err = capsys.readouterr()
  assert f"note: {nines} of 16 gradings failed (count as 0 in reward_mean); each one's error is in {out}" in err
  assert json.loads(out_)['eval/num_graded'] == 16  # --json: the summary alone, as jq wants it


def test_evaluate_with_a_job_file_asks_for_and_checks_its_response_format(run_dir, tmp_path, in_repo, capsys):
  """A job file's response_format is the task's, as `grade` and training take it: the schema joins each prompt and
  a completion off it scores 0 ungraded (it was graded as text, every grading failing on output_json)."""
  schema = {'type': 'object', 'properties': {'answer': {'type': 'string'}}, 'required': ['answer']}
  job = tmp_path / 'job.json'
  job.write_text(json.dumps({'method': {'type': 'reinforcement', 'reinforcement': {
    'grader': {'type': 'string_check', 'input': '{{sample.output_json.answer}}', 'reference': '{{item.answer}}',
               'operation': 'eq'},
    'response_format': {'type': 'json_schema', 'json_schema': {'name': 'a', 'schema': schema}}}}}))  # fmt: skip
  data = write_jsonl(tmp_path / 'd.jsonl', [PROMPTS[0], PROMPTS[2]])
  out = tmp_path / 'e.jsonl'
  argv = [f'--workdir={run_dir}', f'--data={data}', f'--grader={job}', f'--out={out}', '--num_workers=1']
  assert evaluate.main(argv) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  rows = read_jsonl(out)
  assert summary['eval/response_format_valid'] == 0.0 and summary['eval/error_rate'] == 0.0
  assert all(r['response_format_error'].startswith('not a JSON object or array') for r in rows)


def test_evaluate_bad_grader_and_data(run_dir, tmp_path, in_repo, capsys):
  data = write_jsonl(tmp_path / 'd.jsonl', [PROMPTS[0]])
  bad = tmp_path / 'g.json'
  bad.write_text('{"type": "string_check", "name": "x", "input": "{{sample.output_text}}"}')
  assert evaluate.main([f'--workdir={run_dir}', f'--data={data}', f'--grader={bad}']) == 2
  assert 'reference' in capsys.readouterr().err
  broken = write_jsonl(tmp_path / 'broken.jsonl', [PROMPTS[0], 'not json'])
  assert evaluate.main([f'--workdir={run_dir}', f'--data={broken}']) == 2
  assert f'{broken}:2' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    evaluate.main([f'--workdir={run_dir}', f'--data={data}', '--samples=0'])
  assert '--samples' in capsys.readouterr().err
  tools_file = tmp_path / 'tools.json'
  tools_file.write_text('[]')
  assert evaluate.main([f'--workdir={run_dir}', f'--data={data}', f'--tools={tools_file}']) == 2
  assert f'--tools={tools_file}: the run calls no tools (its config.max_episode_steps is 1)' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    evaluate.main(['--init=gguf:smollm2-135m', f'--data={data}', f'--tools={tools_file}', '--grader=g', '--out=o'])
  assert '--tools needs --workdir' in capsys.readouterr().err
  assert evaluate.main([f'--workdir={run_dir}', f'--data={data}', f'--out={data}']) == 2
  assert capsys.readouterr().err == (
    f'error: --out={data} is the --data file; expected another file (writing it would replace that)\n'
  )
  blocked = tmp_path / 'blocked'  # the default --out's folder, checked before the model loads
  blocked.mkdir()
  (blocked / 'config.json').write_text((run_dir / 'config.json').read_text())
  (blocked / 'eval').write_text('not a folder')
  assert evaluate.main([f'--workdir={blocked}', f'--data={data}']) == 2
  assert capsys.readouterr().err == (
    f'error: {blocked}/eval (the default --out): a file is there; expected a folder (made if missing); give '
    '--out=FILE to write the results elsewhere\n'
  )


# ---- report and plot ---------------------------------------------------------------------------------------------
def test_disk_use_counts_what_a_running_trainer_deletes_meanwhile_as_gone(tmp_path, monkeypatch):
  import os
  import shutil

  for rel, size in [('metrics.jsonl', 10), ('checkpoints/1/a', 100), ('checkpoints/2/b', 1000)]:
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(b'x' * size)
  scandir = os.scandir

  def trainer_deletes_step_1_first(path='.'):  # the keep policy drops step 1 between the listing and the walk into it
    if isinstance(path, (str, os.PathLike)) and pathlib.Path(path).name == '1':  # (rmtree's own calls pass an fd)
      shutil.rmtree(path, ignore_errors=True)
    return scandir(path)

  monkeypatch.setattr(os, 'scandir', trainer_deletes_step_1_first)
  assert report._disk_use(tmp_path, [2]) == {'total': 1010, 'checkpoint 2': 1000}


def test_report_matches_the_checkpointer(run_dir, in_repo, capsys):
  assert report.main([f'--workdir={run_dir}', '--json']) == 0
  s = json.loads(capsys.readouterr().out)
  ckpt = checkpoint.Checkpointer(run_dir / 'checkpoints', read_only=True)
  assert s['best_step'] == ckpt.best_step() and s['best_from'] == 'checkpoints'
  assert s['best_valid_reward'] == pytest.approx(ckpt.metrics(ckpt.best_step())['valid_reward_mean'])
  assert s['checkpoints'] == ckpt.all_steps()
  # each kept checkpoint's reward, and the best one's standard error on its validation set: with 8 prompts, four
  # checkpoints at 0.625 looked like one exact winner
  kept = {str(k): ckpt.metrics(k)['valid_reward_mean'] if ckpt.metrics(k) else None for k in ckpt.all_steps()}
  assert s['checkpoint_valid_rewards'] == pytest.approx(kept)
  rows = {int(r['step']): r for r in metrics.read_jsonl(run_dir / 'metrics.jsonl') if 'valid_reward_mean' in r}
  best, n = rows[s['best_step']], rows[s['best_step']]['valid/num_graded']
  samples = [r['reward'] for r in read_jsonl(run_dir / 'samples' / f'valid_step{s["best_step"]:06d}.jsonl')]
  assert best['valid/num_prompts'] == len(samples) == n  # one sample a prompt: its spread over sqrt(prompts)
  assert best['valid_reward_stderr'] == pytest.approx(np.std(samples, ddof=1) / np.sqrt(n))
  assert s['best_valid_graded'] == n and s['best_valid_stderr'] == best['valid_reward_stderr']
  (s_row,) = [line for line in report.table({**s, 'checkpoint_valid_rewards': {int(k): v for k, v in kept.items()}})
              .splitlines() if line.startswith('best step')]  # fmt: skip
  assert f'± {s["best_valid_stderr"]:.3f} over {n:g} prompts' in s_row
  assert (s['steps_done'], s['total_steps']) == (3, 3)
  assert s['valid_reward_first_step'] == 0 and s['valid_reward_last_step'] == 3
  assert s['source']['grader'] == 'string_check' and s['source']['model'] == 'tiny'
  assert s['source']['init'] is None  # a random init: null in --json (it was the display text '(random)')
  assert {'sampling_s', 'grading_s', 'training_s', 'eval_s'} <= set(s['timing_s'])
  assert s['status'] == 'succeeded' and 'grading_errors' not in s
  assert report.main([f'--workdir={run_dir}']) == 0
  out = capsys.readouterr().out
  assert 'best step' in out and 'status      ' in out and 'failed gradings' not in out
  assert re.search(r'^init +\(random\)$', out, re.M)
  assert report.main([f'--workdir={run_dir / "nope"}']) == 2
  assert 'nope' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:  # the last one was read: two runs looked compared
    report.main([f'--workdir={run_dir}', f'--workdir={run_dir}'])
  assert e.value.code == 2 and '--workdir given 2 times; report reads one run' in capsys.readouterr().err


def test_report_shows_a_failed_run_and_its_failed_gradings(tmp_path, capsys):
  """Gradings that failed under the share scored 0 without stopping the run; a stopped run says why."""
  write_jsonl(tmp_path / 'metrics.jsonl', [
    {'step': 0, 'valid_reward_mean': 0.1, 'valid/error_rate': 0.15},
    {'step': 1, 'train_reward_mean': 0.2, 'train/error_rate': 0.25},
    {'step': 2, 'train_reward_mean': 0.3, 'train/error_rate': 0.0},
  ])  # fmt: skip
  why = 'Job failed: step 3: 12 of 16 gradings failed (75% > grading.max_error_share=50%)'
  write_jsonl(tmp_path / 'events.jsonl', [
    {'object': 'fine_tuning.job.event', 'id': 'ftevent-r-0', 'created_at': 1, 'level': 'info', 'type': 'message',
     'message': 'started', 'data': {'status': 'running'}},
    {'object': 'fine_tuning.job.event', 'id': 'ftevent-r-1', 'created_at': 2, 'level': 'error', 'type': 'message',
     'message': why, 'data': {'status': 'failed', 'code': 'grading_failed'}},
  ])  # fmt: skip
  (tmp_path / 'config.json').write_text(json.dumps({'total_steps': 5}))
  s = report.summarize(tmp_path)
  assert (s['status'], s['status_message']) == ('failed', why)
  assert s['grading_errors'] == {
    'train_error_rate_mean': 0.125, 'valid_error_rate_last': 0.15, 'valid_error_rate_last_step': 0
  }  # fmt: skip
  table = [' '.join(line.split()) for line in report.table(s).splitlines()]
  assert f'status failed: {why}' in table
  assert (
    'failed gradings train 12.5% (mean over steps), valid 15.0% at step 0 (each scored 0, or was out of the mean for '
    'an outage; <split>/errors/* in metrics.jsonl)'
  ) in table
  assert 'truncated' not in s and not [line for line in table if line.startswith('cut off')]
  # every answer cut off at max_new_tokens: scored as it stood (0), and nothing else in the table said why
  write_jsonl(tmp_path / 'metrics.jsonl', [
    {'step': 0, 'valid_reward_mean': 0.0, 'valid_truncated_frac': 1.0},
    *({'step': k, 'train_reward_mean': 0.0, 'truncated_frac': 1.0} for k in (1, 2)),
  ])  # fmt: skip
  s = report.summarize(tmp_path)
  assert s['truncated'] == {'train_last10_mean': 1.0, 'valid_last': 1.0, 'valid_last_step': 0}
  (tmp_path / 'config.json').write_text(json.dumps({'total_steps': 5, 'sampling': {'max_new_tokens': 1}}))
  assert 'truncated' not in report.summarize(tmp_path)  # one token leaves no room for a stop: configs/tiny.py
  (tmp_path / 'config.json').write_text(json.dumps({'total_steps': 5}))
  assert ('cut off train 100.0% (mean of the last steps), valid 100.0% at step 0 (ran to sampling.max_new_tokens '
          'without stopping)') in [' '.join(line.split()) for line in report.table(s).splitlines()]  # fmt: skip


def test_report_shows_the_response_format_share_and_a_small_learning_rate(tmp_path):
  """A run none of whose completions matched its format trained on zeros: the table says how many did."""
  write_jsonl(tmp_path / 'metrics.jsonl', [
    {'step': 0, 'valid_reward_mean': 0.0, 'valid/response_format_valid': 0.0},
    *({'step': k, 'train_reward_mean': 0.1, 'train/response_format_valid': k / 20} for k in range(1, 13)),
    {'step': 12, 'valid_reward_mean': 0.2, 'valid/response_format_valid': 0.25},
  ])  # fmt: skip
  config = {'total_steps': 12, 'optimizer': {'learning_rate': 3e-6}, 'model': '', 'init': 'hf:/m'}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  s = report.summarize(tmp_path)
  assert s['response_format_valid'] == pytest.approx(
    {'train_last10_mean': sum(range(3, 13)) / 200, 'valid_last': 0.25, 'valid_last_step': 12}
  )
  table = [' '.join(line.split()) for line in report.table(s).splitlines()]
  assert 'response format valid train 37.5% (mean of the last steps), valid 25.0% at step 12 (the others scored 0 ' \
         'ungraded)' in table  # fmt: skip
  assert 'learning rate 3e-06' in table and 'train reward 0.1000 (mean of the last 10 steps)' in table
  assert 'model -' in table and 'init hf:/m' in table  # a model read off its folder: no preset name


def test_report_tokens_per_s_leaves_out_the_steps_that_compiled(tmp_path):
  """A compiling step's tokens/s measures the compiler (16 where the demo's steady steps make ~3000), and its mean
  went into the rate the table gave; how much of the run's time was compiling was not shown."""
  write_jsonl(tmp_path / 'metrics.jsonl', [
    {'step': 1, 'train_reward_mean': 0.1, 'tokens_per_s': 16.0, 'timing/compile_s': 6.5, 'timing/sampling_s': 7.0,
     'timing/training_s': 1.0},
    {'step': 2, 'train_reward_mean': 0.2, 'tokens_per_s': 3000.0, 'timing/compile_s': 0.0, 'timing/sampling_s': 0.5,
     'timing/training_s': 1.0},
    {'step': 3, 'train_reward_mean': 0.3, 'tokens_per_s': 2000.0, 'timing/sampling_s': 0.5, 'timing/training_s': 1.0},
  ])  # fmt: skip
  (tmp_path / 'config.json').write_text(json.dumps({'total_steps': 3}))
  s = report.summarize(tmp_path)
  assert s['tokens_per_s'] == {
    'key': 'tokens_per_s', 'mean': 2500.0, 'steps': 2, 'compiling_left_out': 1, 'compiling_in_mean': 0
  }  # fmt: skip
  assert s['timing_compile_s'] == 6.5
  table = [' '.join(line.split()) for line in report.table(s).splitlines()]
  assert 'time total 11.0 s (compiling 6.5 s of it)' in table
  assert 'tokens/s 2500.0 (tokens_per_s, 1 compiling left out)' in table
  write_jsonl(tmp_path / 'metrics.jsonl', [{'step': 1, 'tokens_per_s': 16.0, 'timing/compile_s': 6.5}])
  s = report.summarize(tmp_path)  # every step compiled: the rate is all there is, and says so
  assert s['tokens_per_s'] == {
    'key': 'tokens_per_s', 'mean': 16.0, 'steps': 1, 'compiling_left_out': 0, 'compiling_in_mean': 1
  }  # fmt: skip
  assert 'every step compiled' in report.table(s)
  write_jsonl(tmp_path / 'metrics.jsonl', [{'step': 1, 'tokens_per_s': 16.0}])  # an rftjax before compile_s
  s = report.summarize(tmp_path)  # which steps compiled is not known: not said to be none
  assert s['timing_compile_s'] is None and s['tokens_per_s']['compiling_in_mean'] is None
  assert s['tokens_per_s']['compiling_left_out'] is None


def test_report_of_a_crashed_run_says_where_a_rerun_resumes(tmp_path, in_repo):
  """A run that died at step 4 logged step 3 but saved step 2 last: `steps_done` is 2 in --json as in
  --format=openai (it was 3 in one and 2 in the other), `steps_logged` 3, and the table says step 3 is done again."""
  from rftjax import rollout

  rollouts = rollout.Rollouts.__call__

  def oom_at_step_4(self, params, step, stop=None):
    if step == 3:
      raise RuntimeError('host OOM')
    return rollouts(self, params, step, stop=stop)

  c = tiny.get_config('test')
  c.total_steps, c.eval_interval, c.eval_batch_size = 4, 2, 50
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(rollout.Rollouts, '__call__', oom_at_step_4)
    with pytest.raises(RuntimeError, match='host OOM'):
      trainer.train(c, tmp_path / 'run')
  s = report.summarize(tmp_path / 'run')
  assert (s['checkpoints'], s['steps_logged'], s['steps_done'], s['status']) == ([0, 2], 3, 2, 'failed')
  assert report.openai_job(tmp_path / 'run')['rftjax']['steps_done'] == 2
  table = [' '.join(line.split()) for line in report.table(s).splitlines()]
  assert 'steps 3 / 4 (the latest checkpoint is step 2: a rerun resumes there and does the steps after it again)' in (
    table
  )


def assert_png(path):
  data = pathlib.Path(path).read_bytes()
  assert len(data) > 100 and data[:8] == b'\x89PNG\r\n\x1a\n'


def test_reward_plot(run_dir, tmp_path):
  import matplotlib.figure

  path = plots.write_reward_plot(run_dir)
  assert path == run_dir / 'reward_curve.png'
  assert_png(path)
  only_step0 = tmp_path / 'fresh'
  only_step0.mkdir()
  write_jsonl(only_step0 / 'metrics.jsonl', [{'step': 0, 'valid_reward_mean': 0.1}])
  assert_png(plots.write_reward_plot(only_step0))
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert_png(plots.write_reward_plot(empty))
  real = matplotlib.figure.Figure.savefig

  def full(fig, path, **k):  # a full disk part-way: the .tmp went on holding its space
    real(fig, path, **k)
    raise OSError(28, 'No space left on device')

  matplotlib.figure.Figure.savefig = full
  try:
    with pytest.raises(OSError):
      plots.write_reward_plot(empty)
  finally:
    matplotlib.figure.Figure.savefig = real
  assert sorted(p.name for p in empty.iterdir()) == ['reward_curve.png']


def test_the_reward_plot_leaves_a_notebooks_matplotlib_alone(run_dir, tmp_path):
  """Training in a notebook's process switched its pyplot backend to Agg (its own plots then showed nothing); a
  `!python -m rftjax.train` given the kernel's MPLBACKEND, a module its environment lacks, could not import
  matplotlib at all and never wrote the plot."""
  import matplotlib

  before = matplotlib.get_backend()
  matplotlib.rcParams['backend'] = 'svg'  # what a session chose (a notebook's is its inline module)
  try:
    assert_png(plots.write_reward_plot(run_dir, tmp_path / 'a.png'))
    assert matplotlib.get_backend() == 'svg'
  finally:
    matplotlib.rcParams['backend'] = before
  code = f'from rftjax import plots; plots.write_reward_plot({str(run_dir)!r}, {str(tmp_path / "b.png")!r})'
  env = {**os.environ, 'MPLBACKEND': 'module://matplotlib_inline.backend_inline', 'PYTHONPATH': str(REPO)}
  done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert_png(tmp_path / 'b.png')


def test_smooth_is_debiased():
  np.testing.assert_allclose(plots.smooth([1.0, 1.0, 1.0]), [1.0, 1.0, 1.0])  # not pulled towards 0 at the start
  # by hand, weight 0.8: averages 0.2, 0.16, 0.128 over debiasing 0.2, 0.36, 0.488
  np.testing.assert_allclose(plots.smooth([1.0, 0.0, 0.0]), [1.0, 0.16 / 0.36, 0.128 / 0.488])
  np.testing.assert_allclose(plots.smooth([1.0, 0.0], weight=0.5), [1.0, 0.25 / 0.75])


# ---- local judge -------------------------------------------------------------------------------------------------
def test_local_judge_answers_model_graders(run_dir, in_repo):
  loaded = load_run(run_dir)
  judges = {'tiny-judge': inference.make_judge(loaded, max_new_tokens=2)}
  spec = {
    'type': 'score_model',
    'name': 'judge',
    'model': 'tiny-judge',
    'range': [0, 9],
    'input': [
      {'role': 'developer', 'content': 'ignored by the plain template'},
      {'role': 'user', 'content': 'Largest digit: {{item.digits}}'},
    ],
  }
  g = graders.build(spec, judges=judges)
  item = {'digits': '3 9 4 1'}
  with graders.GradingPool(num_workers=1) as pool:
    (result,) = pool.grade(g, ['x'], [item])
  ids = [loaded.tokenizer.encode_prompt([{'role': 'user', 'content': 'Largest digit: 3 9 4 1'}])]
  s = inference.make_sampler(loaded, ids, max_new_tokens=2, stop=())
  said = inference.complete(s, loaded.params, ids, loaded.tokenizer, mesh=None)[0]['text']
  if result.errors:  # the judge answered, with text that is no score: a parse error quoting it
    assert result.errors[0].category == 'model_grader_parse' and repr(said) in result.errors[0].message
  else:
    assert result.reward == min(max(float(said), 0), 9)
  # with a base_url of its own the grader asks that endpoint, not the local judge (none listens there)
  with graders.GradingPool(num_workers=1) as pool:
    (offline,) = pool.grade(graders.build({**spec, 'base_url': 'http://127.0.0.1:9'}, judges=judges), ['x'], [item])
  assert offline.errors and offline.errors[0].category == 'model_grader_server'


def test_evaluate_completes_as_complete_without_logprobs(run_dir, in_repo):
  """Graded completions are complete's, less the per-token logprobs nobody reads (a validation's memory)."""
  loaded = load_run(run_dir)
  ids = [loaded.tokenizer.encode_prompt([{'role': 'user', 'content': f'{d} 9 4 1'}]) for d in range(3)]
  s = inference.make_sampler(loaded, ids, max_new_tokens=3, stop=())
  plain = inference.complete(s, loaded.params, ids, loaded.tokenizer, mesh=None)
  g = graders.build({'type': 'string_check', 'name': 's', 'operation': 'eq', 'input': '{{sample.output_text}}',
                     'reference': plain[1]['text']})  # fmt: skip
  with graders.GradingPool(num_workers=1) as pool:
    graded = inference.evaluate(s, loaded.params, ids, [{}] * 3, loaded.tokenizer, g, pool, mesh=None, batch_size=32)
  assert all(len(c['logprobs']) == len(c['tokens']) for c in plain)
  assert [c for c, _ in graded] == [{k: v for k, v in c.items() if k != 'logprobs'} for c in plain]
  assert [r.reward for _, r in graded][1] == 1.0


# ---- the flags sample and evaluate share: one check, the same words ---------------------------------------------
@pytest.mark.parametrize(
  'flag, said',
  [
    ('--max_new_tokens=0', '--max_new_tokens must be >= 1, got 0'),
    ('--top_p=1.5', '--top_p must be in (0, 1] (1 = off), got 1.5'),
    ('--top_p=0', '--top_p must be in (0, 1] (1 = off), got 0.0'),
    ('--top_k=-3', '--top_k must be >= 0 (0 = off), got -3'),
    ('--temperature=-1', '--temperature must be >= 0 (0 = greedy), got -1.0'),
    ('--temperature=nan', '--temperature must be a finite number >= 0 (0 = greedy), got nan'),
    ('--temperature=1e-40', '--temperature must be 0 (greedy) or >= 1e-05, got 1e-40'),
    ('--batch_size=-4', '--batch_size must be >= 1, got -4'),
    ('--batch_size=0', '--batch_size must be >= 1, got 0'),
    ('--step=5', '--step=5 picks a checkpoint of --workdir; --init= has no checkpoints: drop --step'),
    ('--seed=4294967296', '--seed must be in [0, 4294967295], got 4294967296'),  # the key of seed 0
    ('--seed=-1', '--seed must be in [0, 4294967295], got -1'),
    ('--stop=', "argument --stop: found '', expected a non-empty string"),  # before the model loads
    ('--chat_template=bogus', "argument --chat_template: invalid choice: 'bogus' (choose from 'gemma', 'chatml',"),
  ],
)
def test_sample_and_evaluate_refuse_the_same_flags_in_the_same_words(flag, said, tmp_path, capsys):
  prompts = write_jsonl(tmp_path / 'p.jsonl', PROMPTS[:1])
  model = ['--init=', '--model=tiny', '--tokenizer=sp:data/tiny/tokenizer.model'] if 'step' in flag else []
  where = model or [f'--workdir={tmp_path}']
  out = f'--out={tmp_path / "o.jsonl"}'
  commands = [
    (sample.main, where + [f'--prompts={prompts}', out, '--temperature=1', flag]),
    (evaluate.main, where + [f'--data={prompts}', out, f'--grader={tmp_path / "g.json"}', '--temperature=1', flag]),
  ]
  for main, argv in commands:
    with pytest.raises(SystemExit) as e:
      main(argv)
    assert e.value.code == 2
    assert f'error: {said}' in capsys.readouterr().err.strip().splitlines()[-1]


def test_evaluate_refuses_negative_num_workers_before_loading(tmp_path, capsys):
  data = write_jsonl(tmp_path / 'd.jsonl', PROMPTS[:1])
  with pytest.raises(SystemExit) as e:
    evaluate.main([f'--workdir={tmp_path}', f'--data={data}', '--num_workers=-1'])
  assert e.value.code == 2
  assert 'error: --num_workers must be >= 0 (0 = one per CPU core), got -1' in capsys.readouterr().err


def test_max_new_tokens_is_the_flag_else_the_runs():
  run = argparse.Namespace(config=ml_collections.ConfigDict({'sampling': {'max_new_tokens': 7}}))
  assert sample.max_new_tokens(argparse.Namespace(max_new_tokens=None), run) == 7
  assert sample.max_new_tokens(argparse.Namespace(max_new_tokens=3), run) == 3


# ---- --out is checked before any work, and a failed write leaves nothing behind ---------------------------------
def test_an_out_that_is_a_folder_fails_before_the_model_loads(run_dir, tmp_path, in_repo, monkeypatch, capsys):
  prompts = write_jsonl(tmp_path / 'p.jsonl', PROMPTS[:1])
  folder = tmp_path / 'results'
  folder.mkdir()
  monkeypatch.setattr(sample, 'load_from_args', lambda *a, **k: pytest.fail('loaded a model with a bad --out'))
  assert sample.main([f'--workdir={run_dir}', f'--prompts={prompts}', f'--out={folder}']) == 2
  assert capsys.readouterr().err == f'error: --out={folder}: a folder is there; expected the name of a file to write\n'
  assert evaluate.main([f'--workdir={run_dir}', f'--data={prompts}', f'--out={folder}']) == 2
  assert capsys.readouterr().err == f'error: --out={folder}: a folder is there; expected the name of a file to write\n'
  a_file = write_jsonl(tmp_path / 'f', [])
  assert sample.main([f'--workdir={run_dir}', f'--prompts={prompts}', f'--out={a_file}/o.jsonl']) == 2
  assert f'{a_file} is a file; expected a folder there' in capsys.readouterr().err
  assert sorted(p.name for p in tmp_path.iterdir()) == ['f', 'p.jsonl', 'results']  # no results.tmp


def test_a_write_that_fails_after_sampling_leaves_no_temp_file(run_dir, tmp_path, in_repo, monkeypatch, capsys):
  prompts = write_jsonl(tmp_path / 'p.jsonl', PROMPTS[:1])
  folder = tmp_path / 'appeared'  # made while sampling ran: the check before it passed
  monkeypatch.setattr(cli, 'check_out', lambda *args, **kwargs: folder.mkdir(exist_ok=True))
  assert sample.main([f'--workdir={run_dir}', f'--prompts={prompts}', f'--out={folder}', '--max_new_tokens=1']) == 1
  err = capsys.readouterr().err.strip().splitlines()  # 1: the work ran and its result is lost; 2 says bad input
  assert err[-1].startswith(f'error: --out={folder}: cannot write it (') and 'Traceback' not in ''.join(err)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['appeared', 'p.jsonl']


def test_evaluate_whose_summary_cannot_be_written_says_so_and_exits_1(run_dir, tmp_path, in_repo, capsys,
                                                                      monkeypatch):  # fmt: skip
  """A folder made where evaluate's summary goes while it sampled (the check before passed): a traceback, where
  --out's own failure is a line."""
  prompts = write_jsonl(tmp_path / 'p.jsonl', PROMPTS[:1])
  out = tmp_path / 'e.jsonl'
  held = tmp_path / 'e.jsonl.summary.json' / 'x'  # a folder that holds a file (an empty one is removed)
  monkeypatch.setattr(evaluate, 'check_out', lambda *a, **k: held.parent.mkdir() or held.write_text(''))
  assert evaluate.main([f'--workdir={run_dir}', f'--data={prompts}', f'--out={out}', '--max_new_tokens=1']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f'error: {out}.summary.json: cannot replace it (') and not out.exists()


# ---- export: its flags, its --out ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
  'argv, said',
  [
    (['--dtype=int8'], "argument --dtype: invalid choice: 'int8' (choose from 'float32', 'bfloat16')"),
    (['--dtype=foo'], "argument --dtype: invalid choice: 'foo' (choose from 'float32', 'bfloat16')"),
    (['--model=tiny'], "--model=tiny: with --workdir the model is the run's (its config.json names it): drop --model"),
    (  # pathlib made it a local folder named gs:
      ['--out=gs://b/x'],
      '--out=gs://b/x: expected a local folder; copy the export to the bucket afterwards with '
      '`gcloud storage cp -r FOLDER gs://b/x`',
    ),
  ],
)
def test_export_refuses_flags_it_would_misread(argv, said, run_dir, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    export.main([f'--workdir={run_dir}', f'--out={tmp_path / "hf"}', *argv])
  assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(f'error: {said}')
  assert not (tmp_path / 'hf').exists()


def test_export_refuses_step_with_init(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    export.main(['--init=gguf:gemma3-270m', '--step=5', f'--out={tmp_path / "hf"}'])
  assert e.value.code == 2
  assert (
    capsys.readouterr()
    .err.strip()
    .endswith(
      'error: --step=5 picks a checkpoint of --workdir; --init=gguf:gemma3-270m has no checkpoints: drop --step'
    )
  )


def test_export_out_a_file_or_a_run_is_one_line_and_an_earlier_export_is_replaced(run_dir, tmp_path, in_repo, capsys):
  a_file = write_jsonl(tmp_path / 'f', [])
  assert export.main([f'--workdir={run_dir}', f'--out={a_file}']) == 2
  assert capsys.readouterr().err == f'error: --out={a_file}: a file is there; expected a folder (made if missing)\n'
  config = (run_dir / 'config.json').read_text()
  assert export.main([f'--workdir={run_dir}', f'--out={run_dir}']) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: --out={run_dir}: an rftjax run directory (it holds checkpoints/, metrics.jsonl, ')
  assert 'config.json without model_type)' in err and err.count('\n') == 1
  assert (run_dir / 'config.json').read_text() == config and not (run_dir / 'model.safetensors').exists()
  just_config = tmp_path / 'copied'  # a run's config.json alone, copied somewhere
  just_config.mkdir()
  (just_config / 'config.json').write_text(config)
  assert export.main([f'--workdir={run_dir}', f'--out={just_config}']) == 2
  assert 'it holds config.json without model_type' in capsys.readouterr().err
  hf = tmp_path / 'hf'
  for _ in range(2):  # the second replaces the first
    assert export.main([f'--workdir={run_dir}', f'--out={hf}']) == 0
  assert json.loads((hf / 'config.json').read_text())['model_type']
  # --out a link to an earlier export: the export replaces the folder it points to, not the link
  (tmp_path / 'link').symlink_to(hf)
  relative = pathlib.Path(os.path.relpath(run_dir))  # the run named from here: recorded by its absolute path
  assert export.main([f'--workdir={relative}', '--step=latest', f'--out={tmp_path / "link"}']) == 0
  marker = json.loads((hf / export.MARKER).read_text())
  assert (tmp_path / 'link').is_symlink() and (marker['step'], marker['source']) == (3, str(run_dir))
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.')) == []  # no .old- or .partial- left


def test_an_export_onto_a_full_disk_is_one_line_and_leaves_the_earlier_one(tmp_path, capsys):
  class SafetensorError(Exception):  # safetensors' error for a full disk is no OSError
    pass

  def full(folder):
    (folder / 'model.safetensors').write_bytes(b'half')
    raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')

  (tmp_path / 'hf').mkdir()
  (tmp_path / 'hf' / 'config.json').write_text('{"model_type": "llama"}')
  assert cli.run(lambda: export.write_folder(tmp_path / 'hf', full, {})) == 1
  assert capsys.readouterr().err == (
    f'error: cannot write {tmp_path / "hf"}: No space left on device; make room (or write elsewhere), and run the '
    'command again\n'
  )
  assert [p.name for p in tmp_path.iterdir()] == ['hf'] and [p.name for p in (tmp_path / 'hf').iterdir()] == [
    'config.json'
  ]


# ---- report ------------------------------------------------------------------------------------------------------
def test_report_of_no_run_is_the_error_evaluate_gives(run_dir, tmp_path, in_repo, capsys):
  empty = tmp_path / 'empty'
  empty.mkdir()
  hf = tmp_path / 'hf'
  assert export.main([f'--workdir={run_dir}', f'--out={hf}']) == 0
  capsys.readouterr()
  for workdir in (empty, tmp_path / 'missing'):
    for fmt in ('table', 'json', 'openai'):
      assert report.main([f'--workdir={workdir}', f'--format={fmt}']) == 2
      assert capsys.readouterr() == (
        '',
        f'error: --workdir={workdir}: no config.json there; expected a run directory written by rftjax.train\n',
      )
  assert evaluate.main([f'--workdir={empty}', f'--data={write_jsonl(tmp_path / "d.jsonl", PROMPTS[:1])}']) == 2
  assert capsys.readouterr().err == f'error: --workdir={empty}: no config.json there; expected a run directory ' \
    'written by rftjax.train\n'  # fmt: skip
  assert report.main([f'--workdir={hf}', '--format=openai']) == 2
  assert capsys.readouterr().err.startswith(f"error: --workdir={hf}: its config.json is a Hugging Face model's")
  # an exported model given where a run goes: the same words from every command, with the flag that takes it
  prompts = write_jsonl(tmp_path / 'p.jsonl', [{'text': 'x'}])
  for main, more in ((export.main, [f'--out={tmp_path / "again"}']),
                     (sample.main, [f'--prompts={prompts}', f'--out={tmp_path / "s.jsonl"}']),
                     (evaluate.main, [f'--data={prompts}'])):  # fmt: skip
    assert main([f'--workdir={hf}', *more]) == 2
    assert capsys.readouterr().err == (
      f"error: --workdir={hf}: its config.json is a Hugging Face model's (model_type 'llama'), not a run's; "
      f'expected a run directory written by rftjax.train (a model folder is given as --init=hf:{hf})\n'
    )


def test_report_skips_a_metrics_record_without_a_step_and_refuses_a_config_that_is_no_object(tmp_path, caplog):
  run = tmp_path / 'run'
  run.mkdir()
  rows = [{'step': 1, 'train_reward_mean': 0.25}, {'train_reward_mean': 0.5}, {'step': '2', 'train_reward_mean': 1}]
  write_jsonl(run / 'metrics.jsonl', rows)
  s = report.summarize(run)  # KeyError: 'step' before
  assert s['steps_logged'] == 1
  assert [r.getMessage().split(': ', 1)[1] for r in caplog.records if 'integer' in r.getMessage()] == [
    'a record without an integer "step"; skipped'
  ] * 2
  assert_png(plots.write_reward_plot(run))
  (run / 'config.json').write_text('[1]')
  with pytest.raises(errors.ConfigError, match=r'config.json: expected a JSON object \(a run.s settings\), found list'):
    report.summarize(run)


def test_report_refuses_json_with_another_format(run_dir, capsys):
  with pytest.raises(SystemExit) as e:
    report.main([f'--workdir={run_dir}', '--json', '--format=table'])
  assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(
    'error: --json and --format=table ask for two formats: give one (--json is --format=json)'
  )
  assert report.main([f'--workdir={run_dir}', '--json', '--format=json']) == 0


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  grader = {
    'type': 'string_check',
    'name': 'x',
    'input': '{{sample.output_text}}',
    'operation': 'eq',
    'reference': 'a' * 400_000,
  }  # fmt: skip  (more than a pipe holds: the writer sees the reader go)
  (run / 'config.json').write_text(json.dumps({'model': 'tiny', 'grader': grader, 'total_steps': 3}))
  proc = subprocess.Popen(
    [sys.executable, '-m', 'rftjax.report', f'--workdir={run}', '--format=openai'],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )
  assert proc.stdout.readline() == b'{\n'
  proc.stdout.close()  # `| head -1`
  assert proc.wait(timeout=120) == cli.BROKEN_PIPE_EXIT_CODE
  err = proc.stderr.read()
  assert b'Traceback' not in err and b'BrokenPipe' not in err, err.decode()


def test_a_broken_pipe_that_is_not_stdout_keeps_its_traceback():
  def body():
    raise BrokenPipeError('a grader endpoint hung up')

  with pytest.raises(BrokenPipeError):
    cli.run(body)


# ---- docs/cli.md names every flag --------------------------------------------------------------------------------
@pytest.mark.parametrize('module', ['sample', 'evaluate', 'report', 'export', 'grade', 'plan', 'train'])
def test_docs_name_every_flag_in_the_commands_section(module, capsys, monkeypatch):
  # train.main sets up logging on stderr, which is capsys's for this test only: later tests' lines would go nowhere
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  mod = importlib.import_module(f'rftjax.{module}')
  with pytest.raises(SystemExit) as e:  # argparse commands take argv without the program, absl ones with it
    mod.main(['--help'] if module in ('sample', 'evaluate', 'report', 'export', 'grade') else [module, '--help'])
  assert e.value.code == 0
  flags = set(re.findall(r'(?<![\w-])--(\w+)', capsys.readouterr().out)) - {
    'help',
    'flagfile',
    'undefok',
    'flag',
  }  # absl's own; '--flag=value' is in its help text
  # its own sections (`python -m rftjax.<module>` in the heading), and for sample and evaluate the shared flags
  sections = (REPO / 'docs' / 'cli.md').read_text().split('\n## ')
  heading = re.compile(rf'rftjax\.{module}\b' + (r'|Loading a model' if module in ('sample', 'evaluate') else ''))
  doc = '\n'.join(s for s in sections if heading.search(s.split('\n')[0]))
  assert flags and doc and sorted(f for f in flags if not re.search(rf'--{f}\b', doc)) == []


def test_report_asks_the_lock_file_whether_a_run_without_an_ending_still_runs(tmp_path, monkeypatch):
  """events.jsonl says 'running' until the trainer says otherwise: a killed one never does. Its lock file's process
  tells the two apart on the host it ran on."""
  import os
  import socket
  import subprocess

  from rftjax import runfs

  (tmp_path / 'config.json').write_text(json.dumps({'total_steps': 5}))
  write_jsonl(tmp_path / 'metrics.jsonl', [{'step': 1, 'train_reward_mean': 0.2}])
  assert report.summarize(tmp_path)['status'] == 'running' and 'status_message' not in report.summarize(tmp_path)
  held = runfs.lock(tmp_path)  # this process: alive
  s = report.summarize(tmp_path)
  assert s['status'] == 'running' and s['status_message'].startswith(f'process {os.getpid()} on ')
  held.close()  # its text still names this live process, as a copy of a live run's folder does: the lock is free
  s = report.summarize(tmp_path)
  assert s['status'] == 'stopped' and s['status_message'].endswith('ended without a word (killed?)')
  with monkeypatch.context() as m:  # a folder that takes no locks (a FUSE mount): the pid is all there is to ask
    m.setattr(runfs, '_holder', lambda file: (_ for _ in ()).throw(OSError(37, 'No locks available')))
    s = report.summarize(tmp_path)
    assert s['status'] == 'running' and s['status_message'].startswith(f'process {os.getpid()} on ')
  dead = subprocess.Popen(['true'])
  dead.wait()
  (tmp_path / runfs.LOCK).write_text(f'process {dead.pid} on {socket.gethostname()} (started 2026-12-06T10:00:00)')
  s = report.summarize(tmp_path)
  assert s['status'] == 'stopped' and s['status_message'].endswith('ended without a word (killed?)')
  assert 'status stopped: process' in [' '.join(line.split()) for line in report.table(s).splitlines()][1]


def test_progress_is_a_line_per_tenth_in_a_log_and_ctrl_c_starts_a_line_of_its_own(capsys, monkeypatch):
  from rftjax import cli

  report = cli.progress('sampling')  # stderr is no terminal here: a log file
  for done in range(0, 1001, 50):
    report(done, 1000)
  assert capsys.readouterr().err.splitlines() == [f'sampling: {n}/1000' for n in range(0, 1001, 100)]
  monkeypatch.setattr(sys.stderr, 'isatty', lambda: True)

  def body():
    cli.progress('grading')(256, 600)
    raise KeyboardInterrupt

  assert cli.run(body) == 130
  assert capsys.readouterr().err == '\rgrading: 256/600\ninterrupted\n'  # was '...256/600interrupted'
  monkeypatch.setattr(sys.stderr, 'isatty', lambda: False)
  monkeypatch.setattr(sys.stderr.__class__, '__module__', 'ipykernel.iostream')  # a notebook's output, no tty
  cli.progress('sampling')(3, 8)  # evaluate.main in a notebook: redrawn in place as train's bar is, not a log
  assert capsys.readouterr().err == '\rsampling: 3/8'


def test_a_full_or_read_only_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
  """A full disk gave 30-70 line tracebacks (a failed write names no file); a read-only workdir one from the lock."""
  import errno

  from rftjax import data
  from rftjax import runfs

  def full(self, target):  # the disk filled: the error names no file
    raise OSError(errno.ENOSPC, 'No space left on device')

  with monkeypatch.context() as m, pytest.raises(OSError) as e:
    m.setattr(pathlib.Path, 'replace', full)
    data.write_atomic(tmp_path / 'x.json', 'hello')
  assert e.value.filename == str(tmp_path / 'x.json') and list(tmp_path.iterdir()) == []  # no temp file left
  w = metrics.MetricsWriter(tmp_path / 'run', tensorboard=False)
  w._file = open('/dev/full', 'a')  # noqa: SIM115
  with pytest.raises(OSError) as e:
    w.write({'step': 1, 'loss': 0.5})
  assert (
    errors.storage_line(e.value) == 'cannot write /dev/full: No space left on device; make room (or write elsewhere)'
  )

  def full():
    raise OSError(errno.ENOSPC, 'No space left on device', 'runs/x/metrics.jsonl')

  assert cli.run(full) == 1
  assert capsys.readouterr().err == (
    'error: cannot write runs/x/metrics.jsonl: No space left on device; make room (or write elsewhere), and run the '
    'command again\n'
  )

  def many():  # more grading workers than open files allowed: a traceback from the pool's pipes
    raise OSError(errno.EMFILE, 'Too many open files')

  assert cli.run(many) == 1
  said = capsys.readouterr().err
  assert said.startswith('error: Too many open files (this process may open ') and said.endswith(
    ': ulimit -n); raise the limit, or use fewer grading workers (grading.num_workers, --num_workers), and run the '
    'command again\n'
  )

  def other():
    raise OSError(errno.EIO, 'Input/output error')

  with pytest.raises(OSError, match='Input/output error'):
    cli.run(other)  # not the disk's room: a traceback

  def read_only(*a, **k):
    raise OSError(errno.EROFS, 'Read-only file system', str(tmp_path / runfs.LOCK))

  monkeypatch.setattr(runfs, 'open', read_only, raising=False)
  with pytest.raises(errors.ConfigError, match=r'--workdir=.*: cannot write there \(Read-only file system\)$'):
    runfs.lock(tmp_path)


def test_a_step_not_on_disk_says_why(run_dir, tmp_path, in_repo, capsys):
  """A step the keep policy deleted, one that never was a checkpoint, and a run without any yet each say so."""
  import shutil

  run = tmp_path / 'run'
  shutil.copytree(run_dir, run)
  saved = sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  saved.append(saved.pop(0))  # step 0 last: its own --step loads the init in its place
  assert saved[0] in [e['data'].get('step') for e in read_jsonl(run / 'events.jsonl') if 'checkpoint' in e['data']]
  shutil.rmtree(run / 'checkpoints' / str(saved[0]))  # as the keep policy deletes a step
  left = sorted(saved[1:])

  def error(folder, *flags):
    assert export.main([f'--workdir={folder}', f'--out={tmp_path / "out"}', *flags]) == errors.EXIT_CODE
    return capsys.readouterr().err.split('steps on disk: ')[1]

  keep = json.loads((run / 'config.json').read_text())['checkpoint']['keep_best']
  assert error(run, f'--step={saved[0]}') == (
    f'{left}. Step {saved[0]} was saved, then deleted by the keep policy (checkpoint.keep_best={keep}: the '
    f'{keep} best by validation reward, and the latest; docs/checkpoints.md)\n'
  )
  interval = json.loads((run / 'config.json').read_text())['eval_interval']
  assert error(run, '--step=99') == (
    f'{left}. Checkpoints are written at step 0, at each validation (eval_interval={interval}), and at the last step\n'
  )
  cut = run / 'checkpoints' / '99.orbax-checkpoint-tmp-1765000000'  # a save cut short (an older Orbax's name)
  cut.mkdir()
  assert error(run, '--step=99') == (
    f'{left}. Step 99 is incomplete: being written, or its save was cut short (a crash, or the folder copied '
    'meanwhile)\n'
  )
  for step in saved[1:]:
    shutil.rmtree(run / 'checkpoints' / str(step))
  assert error(run) == (  # its only checkpoint is that one
    '[]. The run has no other: step 99 is incomplete: being written, or its save was cut short (a crash, or the '
    'folder copied meanwhile)\n'
  )
  cut.rmdir()
  assert error(run) == (  # a copy made without them
    f'[]. None of the checkpoints the run saved (the last at step {max(saved)}) is in {run}/checkpoints: was the run '
    'folder copied without them?\n'
  )
  (run / 'events.jsonl').unlink()  # as a run that stopped before its first checkpoint has none of those events
  assert error(run) == (
    '[]. The run has none: it stopped before its step-0 validation wrote the first (python -m rftjax.report '
    f'--workdir={run} says how it ended)\n'
  )
  with runfs.lock(run):  # a trainer still starting (loading, compiling, its step-0 validation)
    said = error(run)
  assert re.fullmatch(
    r'\[\]\. The run has none yet: its trainer \(process \d+ on .+\) writes the first after its step-0 validation\n',
    said,
  ), said


def test_a_log_line_does_not_run_on_from_the_progress_bar():
  """The training bar and the log share stderr: a validation's line began right after the bar's `]`."""
  import io

  import tqdm

  stream = io.StringIO()
  console = cli._Console(stream)
  console.setFormatter(logging.Formatter('%(message)s'))
  logger = logging.getLogger('rftjax.test_console')
  logger.addHandler(console)
  logger.propagate = False
  bar = tqdm.tqdm(total=3, file=stream, desc='rft', ncols=60)
  try:
    bar.update(1)
    logger.warning('step 1: valid_reward_mean=0.5')
  finally:
    logger.removeHandler(console)
    bar.close()
  before, after = stream.getvalue().split('step 1: valid_reward_mean=0.5\n')
  assert before.endswith('\r') and before.rstrip('\r ').endswith(']')  # the bar was cleared to the line's start
  assert after.startswith('\rrft:')  # and drawn again below the line


def test_a_runs_base_model_that_moved_says_where_to_put_its_new_place(run_dir, tmp_path, capsys):
  """A LoRA run copied to a laptop whose base model folder lies elsewhere: every tool said only that the folder
  had no config.json."""
  import shutil

  run = tmp_path / 'run'
  shutil.copytree(run_dir, run)
  config = json.loads((run / 'config.json').read_text())
  for init in ('hf:models/base', f'hf:{tmp_path}/models/base'):  # relative, and absolute
    (run / 'config.json').write_text(json.dumps({**config, 'model': '', 'init': init}))
    assert export.main([f'--workdir={run}', f'--out={tmp_path / "out"}']) == errors.EXIT_CODE
    relative = '' if init.startswith(f'hf:{tmp_path}') else 'its relative paths start in the folder the run was ' \
      'started in; '  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f'error: config.init={init!r}: ') and err.endswith(
      f'(as {run}/config.json names it: {relative}if the model moved, write its new place in that file\'s "init")\n'
    ), err


def test_a_copy_that_kept_only_its_best_checkpoint_still_succeeded(run_dir, tmp_path):
  """A finished run copied with its best checkpoint only read 'stopped ... killed?' ('running' as an OpenAI job):
  its latest checkpoint kept is short of total_steps, but its log and its last event say it ended."""
  import shutil

  run = tmp_path / 'run'
  shutil.copytree(run_dir, run)
  steps = sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  shutil.rmtree(run / 'checkpoints' / str(steps[-1]))
  s = report.summarize(run)
  assert (s['status'], s['steps_logged'], s['steps_done']) == ('succeeded', steps[-1], steps[-2])
  assert report.openai_job(run)['status'] == 'succeeded'
  config = json.loads((run / 'config.json').read_text())
  (run / 'config.json').write_text(json.dumps({**config, 'total_steps': steps[-1] + 4}))  # resumed for more
  assert report.summarize(run)['status'] != 'succeeded' and report.openai_job(run)['status'] == 'running'
