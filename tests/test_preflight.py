"""python -m rftjax.preflight on the tiny model: the files it writes, its numbers against hand-computed ones, the
filtered training file, and bad input as one line with exit status 2."""

import contextlib
import io
import json
import math
import pathlib

import ml_collections
import pytest

from rftjax import cli
from rftjax import errors
from rftjax import filtering
from rftjax import preflight

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = '--config=configs/tiny.py:test'  # random weights, B=4 prompts x G=4 per step, 3 steps, 1 new token
K, LIMIT = 8, 24


@pytest.fixture(autouse=True)
def _logging_to_the_real_stderr():
  """main() points logging at the sys.stderr of its test (capsys's, closed after it): point it back after."""
  yield
  cli.setup_logging()


@pytest.fixture(scope='module')
def measured(tmp_path_factory):
  """One preflight of the first 24 training prompts x 8 samples (12 sampling batches of 16 rows), filtered."""
  tmp = tmp_path_factory.mktemp('preflight')
  argv = ['rftjax.preflight', TINY, f'--samples={K}', f'--limit={LIMIT}', f'--out={tmp / "out"}',
          f'--write_filtered={tmp / "filtered"}', '--drop=never_solved']  # fmt: skip
  stdout = io.StringIO()
  with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
    mp.chdir(REPO)  # the config's paths are relative to the repo root
    assert preflight.main(argv) == 0
  rows = [json.loads(line) for line in (tmp / 'out' / 'pass_rates.jsonl').read_text().splitlines()]
  summary = json.loads((tmp / 'out' / 'summary.json').read_text())
  return tmp, rows, summary, stdout.getvalue()


def test_files_are_written_and_read_back(measured):
  tmp, rows, summary, stdout = measured
  assert (tmp / 'out' / 'pass_rates.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert [r['source'] for r in rows] == [f'data/tiny/train.jsonl:{i}' for i in range(1, LIMIT + 1)]
  assert all(len(r['rewards']) == K == len(r['completions']) and r['completion'] == r['completions'][0] for r in rows)
  assert summary['num_prompts'] == LIMIT and summary['samples_per_prompt'] == K and summary['num_train_prompts'] == 2000
  assert summary['num_generations'] == 4 and summary['sampling']['temperature'] == 1.0
  assert summary['timing']['measured']['sampling_batches'] == LIMIT * K // 16
  assert not summary['timing']['measured']['sampling_first_batch_only']
  assert summary['timing']['measured']['train_step_s'] > 0
  assert 'mean pass rate' in stdout and 'zero-variance groups, G=4' in stdout and 'run: total' in stdout


def test_pass_rates_equal_grading_the_recorded_completions_by_hand(measured):
  _, rows, summary, _ = measured
  lines = (REPO / 'data/tiny/train.jsonl').read_text().splitlines()
  for r in rows:
    answer = json.loads(lines[int(r['source'].rsplit(':', 1)[1]) - 1])['answer']
    assert r['item'] == {'answer': answer}
    by_hand = [float(c == answer) for c in r['completions']]  # the tiny grader: string_check eq on the answer
    assert r['rewards'] == by_hand
    assert r['pass_rate'] == sum(by_hand) / K == r['mean_reward']
  every = [x for r in rows for x in r['rewards']]
  assert summary['reward_mean'] == pytest.approx(sum(every) / len(every))
  assert 0 < summary['reward_mean'] < 0.5  # a random model names the largest digit now and then
  never = sum(r['pass_rate'] == 0 for r in rows)
  assert summary['never_solved'] == never and summary['never_solved_share'] == pytest.approx(never / LIMIT)
  assert summary['always_solved'] == sum(r['pass_rate'] == 1 for r in rows)
  # the expected zero-variance share at G=4 from k=8 samples: (C(c,4) + C(8-c,4)) / C(8,4) per prompt, averaged
  hand = [(math.comb(c, 4) + math.comb(K - c, 4)) / 70 for c in (round(r['pass_rate'] * K) for r in rows)]
  assert summary['zero_variance_share_at_g'] == pytest.approx(sum(hand) / LIMIT)
  assert summary['binary_rewards'] and summary['grading_error_share'] == 0


def test_step0_validation_equals_the_trainers(measured, tmp_path, monkeypatch):
  from configs import tiny
  from rftjax import trainer

  _, _, summary, stdout = measured
  monkeypatch.chdir(REPO)
  config = tiny.get_config('test')
  with config.unlocked():
    config.total_steps = 0  # validate at step 0, save, stop
  trainer.train(config, tmp_path / 'run')
  logged = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert summary['valid_reward_mean_step0'] == next(r['valid_reward_mean'] for r in logged if r['step'] == 0)
  assert summary['valid_completions_graded'] == 200 and 'step-0 validation reward' in stdout
  assert summary['timing']['measured']['valid_pass_s'] > 0


def test_zero_variance_formula_hand_computed():
  # binary, k >= G: 2 passes of 8, G=4 -> (C(2,4) + C(6,4)) / C(8,4) = (0 + 15) / 70
  assert preflight.zero_variance_prob([1, 1, 0, 0, 0, 0, 0, 0], 4) == pytest.approx(15 / 70)
  # its expectation over c ~ Binomial(8, p) is p^4 + (1-p)^4: the estimate is unbiased
  p = 0.3
  expected = sum(
    math.comb(8, c) * p**c * (1 - p) ** (8 - c) * preflight.zero_variance_prob([1] * c + [0] * (8 - c), 4)
    for c in range(9)
  )
  assert expected == pytest.approx(p**4 + (1 - p) ** 4)
  # k < G: the plug-in p^G + (1-p)^G with p = 1/2
  assert preflight.zero_variance_prob([1, 0], 4) == pytest.approx(0.5**4 + 0.5**4)
  # non-binary: values 0.5, 0.5, 1, 0 and G=2: only the pair (0.5, 0.5) of the C(4,2)=6 pairs agrees
  assert preflight.zero_variance_prob([0.5, 0.5, 1.0, 0.0], 2) == pytest.approx(1 / 6)
  assert preflight.zero_variance_prob([0.7] * 5, 3) == 1.0


def test_a_failed_write_leaves_neither_a_half_file_nor_a_temp_file(tmp_path, monkeypatch):
  """The histogram and metrics.jsonl's rewrite on resume are written whole: a full disk (here the rename) leaves the
  old file as it was and no `.tmp` beside it (they were left behind before)."""
  from rftjax import metrics

  (tmp_path / 'pass_rates.png').write_bytes(b'old')
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1}\n{"step": 2}\n')

  def full_disk(self, target):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(pathlib.Path, 'replace', full_disk)
  with pytest.raises(OSError, match='No space left'):
    preflight.write_histogram([0.0, 0.5, 1.0], 2, tmp_path / 'pass_rates.png', 'title')
  with pytest.raises(OSError, match='No space left'):
    metrics.MetricsWriter(tmp_path, resume_step=1, tensorboard=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['metrics.jsonl', 'pass_rates.png']
  assert (tmp_path / 'pass_rates.png').read_bytes() == b'old'
  assert (tmp_path / 'metrics.jsonl').read_text() == '{"step": 1}\n{"step": 2}\n'


def test_one_measured_prompt_has_no_standard_error_and_strict_json(measured):
  rows = [{'rewards': [1.0, 0.0, 0.0, 1.0], 'pass_rate': 0.5}]
  s = preflight.summarize(rows, 4, 1.0)
  assert s['pass_rate_stderr'] is None and s['zero_variance_share_at_g_stderr'] is None
  json.dumps(s, allow_nan=False)  # summary.json stays JSON (NaN is not)
  shown = preflight.table({**measured[2], **s})
  assert '(one prompt: no standard error) standard error over prompts' in shown
  assert '(one prompt: no standard error): expected share of a step' in shown


def test_run_estimate_arithmetic():
  assert preflight.evaluations(3, 2) == 3  # steps 0, 2 and the last, 3
  assert preflight.evaluations(40, 10) == 5
  measured = dict(load_s=3.0, sampler_compile_s=6.0, sampling_batch_s=4.0, grading_s_per_completion=0.01,
                  train_step_s=10.0, train_step_first_s=17.0, valid_pass_s=9.0)  # fmt: skip
  run = dict(total_steps=40, rows=16, evaluations=5, valid_completions=50)
  e = preflight.estimate(measured, run)
  assert e['sampling_s'] == 160 and e['grading_s'] == pytest.approx(6.4) and e['training_s'] == 400
  assert e['validation_s'] == 45 and e['startup_s'] == 3 + 6 + 7
  assert e['total_s'] == pytest.approx(160 + 6.4 + 400 + 45 + 16)
  # no validation pass measured (--novalidate): its completions at the training sampler's cost
  e = preflight.estimate({**measured, 'valid_pass_s': None, 'train_step_s': None}, run)
  assert e['validation_s'] == pytest.approx(5 * 50 * (4.0 / 16 + 0.01)) and e['training_s'] is None
  assert e['startup_s'] == 9


def test_filtered_file_has_exactly_the_expected_lines(measured):
  tmp, rows, summary, _ = measured
  original = (REPO / 'data/tiny/train.jsonl').read_text().splitlines(keepends=True)
  never = {int(r['source'].rsplit(':', 1)[1]) for r in rows if r['pass_rate'] == 0}
  assert never  # with p ~ 1/7 and k=8, about a quarter of the prompts are never solved
  expected = [line for i, line in enumerate(original, 1) if i not in never]
  assert (tmp / 'filtered' / 'train.jsonl').read_text().splitlines(keepends=True) == expected
  assert (tmp / 'filtered' / 'valid.jsonl').read_bytes() == (REPO / 'data/tiny/valid.jsonl').read_bytes()
  f = summary['filtered']
  assert (f['never_solved'], f['always_solved'], f['unmeasured_kept']) == (len(never), 0, 2000 - LIMIT)


def test_a_folder_in_the_way_of_the_filtered_file_is_refused_before_the_measurement(tmp_path):
  (tmp_path / 'valid.jsonl').mkdir()
  config = ml_collections.ConfigDict({'data': {'train': 'data/tiny/train.jsonl', 'valid': 'data/tiny/valid.jsonl'}})
  with pytest.raises(errors.ConfigError, match=f'^--write_filtered={tmp_path}: {tmp_path}/valid.jsonl is a folder; '):
    filtering.check_folder(config, str(tmp_path))


@pytest.mark.parametrize(
  'flags, message',
  [
    (['--samples=0'], 'error: --samples: expected an integer >= 1, found 0'),
    (
      ['--drop=never_solve'],
      "error: --drop: expected names from always_solved, never_solved, found 'never_solve'; did you mean never_solved?",
    ),  # fmt: skip
    (
      ['--config.sampling.temprature=0'],
      'error: config.sampling.temprature: no such field; did you mean config.sampling.temperature?',
    ),  # fmt: skip
    (
      ['--write_filtered=data/tiny'],
      'error: --write_filtered=data/tiny: would overwrite '
      'config.data.train=data/tiny/train.jsonl; choose another folder',
    ),  # fmt: skip
    (  # checked before the measurement, which a failed write after it would waste
      ['--write_filtered=README.md'],
      'error: --write_filtered=README.md: a file is there; expected a folder (made if missing)',
    ),  # fmt: skip
    (
      ['--write_filtered=gs://bucket/filtered'],
      'error: --write_filtered=gs://bucket/filtered: expected a local folder (copy it to a bucket afterwards)',
    ),  # fmt: skip
  ],
)
def test_bad_input_is_one_line_and_exit_2(flags, message, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  assert preflight.main(['rftjax.preflight', TINY, f'--out={tmp_path / "out"}', *flags]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [message]
  assert not (tmp_path / 'out').exists()  # nothing is written on bad input


def test_broken_grading_writes_the_files_and_exits_3(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  grader = tmp_path / 'boom.json'
  grader.write_text(json.dumps({'type': 'python', 'name': 'boom', 'source': 'def grade(s, i):\n  return 1 / 0\n'}))
  out = tmp_path / 'out'
  argv = ['rftjax.preflight', TINY, f'--config.grader={grader}', '--samples=2', '--limit=8', f'--out={out}',
          '--notime_train_step']  # fmt: skip
  assert preflight.main(argv) == 3
  err = [line for line in capsys.readouterr().err.splitlines() if not line[:9].count(':') == 2]  # log lines: HH:MM:SS
  assert len(err) == 1 and err[0].startswith('error: grading failed: all 16 gradings failed'), err
  assert json.loads((out / 'summary.json').read_text())['grading_error_share'] == 1.0


def test_an_openai_job_file_gives_the_run_it_measures(tmp_path, monkeypatch):
  """--openai_job as in `rftjax.train`: the job's files, grader and hyperparameters, its seed in the summary."""
  monkeypatch.chdir(REPO)
  job = {
    'model': 'tiny:test',
    'training_file': str(REPO / 'data/tiny/train.jsonl'),
    'validation_file': str(REPO / 'data/tiny/valid.jsonl'),
    'method': {
      'type': 'reinforcement',
      'reinforcement': {
        'grader': {'type': 'string_check', 'input': '{{sample.output_text}}', 'reference': '9', 'operation': 'eq'},
        'hyperparameters': {'compute_multiplier': 2},
      },
    },
  }
  (tmp_path / 'job.json').write_text(json.dumps(job))
  argv = ['rftjax.preflight', f'--openai_job={tmp_path / "job.json"}', '--samples=8', '--limit=4',
          f'--out={tmp_path / "out"}', '--notime_train_step', '--novalidate']  # fmt: skip
  with contextlib.redirect_stdout(io.StringIO()):
    assert preflight.main(argv) == 0
  summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  assert summary['num_prompts'] == 4 and summary['num_generations'] == 8  # compute_multiplier 2 x tiny:test's G=4
  rows = [json.loads(line) for line in (tmp_path / 'out' / 'pass_rates.jsonl').read_text().splitlines()]
  texts = [t for r in rows for t in r['completions']]
  assert [r['pass_rate'] for r in rows] == [sum(t == '9' for t in r['completions']) / 8 for r in rows] and texts


def test_a_response_format_no_sample_matches_is_measured_and_said(tmp_path, monkeypatch, caplog):
  """The tiny model answers a digit, never a JSON object: every sample scores 0 ungraded, which the run would train
  on silently; preflight gives the share and says so."""
  from rftjax import cli

  monkeypatch.chdir(REPO)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  fmt = {'type': 'json_schema', 'json_schema': {'name': 'a', 'schema': {'type': 'object'}}}
  argv = ['rftjax.preflight', TINY, f'--config.response_format={json.dumps(fmt)}', '--samples=2', '--limit=4',
          '--config.data.max_prompt_len=128', f'--out={tmp_path / "out"}', '--notime_train_step',
          '--novalidate']  # fmt: skip
  with contextlib.redirect_stdout(io.StringIO()) as shown, caplog.at_level('WARNING', logger='rftjax'):
    assert preflight.main(argv) == 0
  assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['response_format_valid_share'] == 0.0
  assert 'response format valid 0.0% of the samples: the others score 0 ungraded' in ' '.join(shown.getvalue().split())
  (said,) = [m for m in caplog.messages if 'config.response_format' in m]
  assert said.startswith('preflight: none of the 8 completions matched config.response_format (most: not a JSON ')


def test_a_grader_that_never_gives_credit_is_said(tmp_path, monkeypatch, caplog):
  """A grader that scores every completion 0 (a silent bug) showed 'never solved 1.0000' and nothing more."""
  from rftjax import cli

  monkeypatch.chdir(REPO)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  grader = tmp_path / 'zero.json'
  grader.write_text(json.dumps({'type': 'python', 'name': 'zero', 'source': 'def grade(s, i):\n  return 0.0\n'}))
  argv = ['rftjax.preflight', TINY, f'--config.grader={grader}', '--samples=2', '--limit=4', f'--out={tmp_path / "o"}',
          '--notime_train_step', '--novalidate']  # fmt: skip
  with contextlib.redirect_stdout(io.StringIO()), caplog.at_level('WARNING', logger='rftjax'):
    assert preflight.main(argv) == 0
  (said,) = [m for m in caplog.messages if 'scored 0' in m]
  assert said.startswith('preflight: every one of the 8 completions scored 0: GRPO learns nothing from that. Check ')
  # and one that passes everything (its fields never read the completion): 100% 'always solved' without a word
  grader.write_text(json.dumps({'type': 'string_check', 'name': 'self', 'input': '{{item.answer}}',
                                'reference': '{{item.answer}}', 'operation': 'eq'}))  # fmt: skip
  caplog.clear()
  with contextlib.redirect_stdout(io.StringIO()), caplog.at_level('WARNING', logger='rftjax'):
    assert preflight.main(argv) == 0
  assert any(m.startswith('grader: no {{sample.*}} in its templates') for m in caplog.messages)
  (said,) = [m for m in caplog.messages if 'scored 1' in m]
  assert 'the grader passes anything: try it on a wrong answer' in said


def test_filtering_drops_only_prompts_without_signal_and_keeps_failed_gradings(tmp_path):
  """Partial rewards below the pass threshold still differ, so GRPO learns from them: not 'never solved'. A prompt
  whose grading failed scored zeros that say nothing of it."""
  lines = [json.dumps({'messages': [{'role': 'user', 'content': str(i)}]}) for i in range(5)]
  path = tmp_path / 't.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  row = lambda i, rewards, errors=0: {  # noqa: E731
    'source': f'{path}:{i}', 'rewards': rewards, 'grading_errors': errors,
    'pass_rate': sum(r >= 1.0 for r in rewards) / len(rewards),
  }  # fmt: skip
  rows = [row(1, [0.5, 0.0]), row(2, [0.0, 0.0]), row(3, [1.0, 1.0]), row(4, [0.0, 0.0], errors=2)]
  kept, counts = filtering.filtered_lines(str(path), rows, filtering.DROPS)
  assert kept == [lines[0] + '\n', lines[3] + '\n', lines[4] + '\n']  # line 5 was not measured
  assert counts == {
    'kept': 3, 'never_solved': 1, 'always_solved': 1, 'unmeasured_kept': 1, 'errored_kept': 1, 'too_long_kept': 0
  }  # fmt: skip
  # line 1 too long to train (data.skip_long_prompts): kept as written, counted as such, not as unmeasured
  kept, counts = filtering.filtered_lines(str(path), rows, ('never_solved',), {f'{path}:{i}' for i in (2, 3, 4, 5)})
  assert kept == [lines[0] + '\n', lines[2] + '\n', lines[3] + '\n', lines[4] + '\n']
  assert (counts['too_long_kept'], counts['unmeasured_kept'], counts['kept']) == (1, 1, 4)
  # every prompt that fits dropped: no file (train would refuse one of too-long prompts only)
  config = ml_collections.ConfigDict({'data': {'train': str(path), 'valid': str(path)}})
  entry, refusal = filtering.write(
    config, rows[1:3], filtering.DROPS, tmp_path / 'f', 2, 'out', {f'{path}:2', f'{path}:3'}
  )
  assert entry is None and not (tmp_path / 'f').exists()
  assert '(1 never solved, 1 always solved at k=2; 3 kept, too long to train); nothing written there' in refusal


def test_a_filter_that_leaves_nothing_writes_no_training_file(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(
    filtering, 'filtered_lines', lambda path, rows, drop, fits: ([], {'never_solved': 4, 'always_solved': 0})
  )
  argv = ['rftjax.preflight', TINY, '--samples=2', '--limit=4', f'--out={tmp_path / "out"}', '--notime_train_step',
          '--novalidate', f'--write_filtered={tmp_path / "filtered"}']  # fmt: skip
  assert preflight.main(argv) == 2
  err = capsys.readouterr().err
  assert '--samples=2 is not a multiple of num_generations=4: some batches are not groups' in err
  assert err.strip().splitlines()[-1] == (
    f'error: --write_filtered={tmp_path / "filtered"}: --drop=always_solved,never_solved drops every training '
    f'prompt (4 never solved, 0 always solved at k=2); nothing written there (the measurements are in '
    f'{tmp_path / "out"}); expected prompts left to train on: a larger --samples, another --drop, or easier data'
  )
  assert not (tmp_path / 'filtered').exists() and (tmp_path / 'out' / 'summary.json').is_file()
