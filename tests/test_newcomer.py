"""A newcomer's first hour: the README's "Your own task" followed literally, and the tools agreeing with each other.

One short run of a task written here (its own data, grader JSON and a copy of configs/tiny.py) serves most checks.
"""

import json
import pathlib

import pytest

from rftjax import cli
from rftjax import evaluate
from rftjax import export
from rftjax import grade
from rftjax import metrics
from rftjax import plan
from rftjax import plots
from rftjax import report
from rftjax import sample
from rftjax import train
from rftjax import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_jsonl(path, rows):
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return path


@pytest.fixture(scope='module')
def task(tmp_path_factory):
  """The README's recipe: train.jsonl / valid.jsonl, grader.json, a copy of configs/tiny.py pointed at them."""
  d = tmp_path_factory.mktemp('mytask')
  rows = [{'messages': [{'role': 'user', 'content': f'Largest digit: {a} {b}'}], 'answer': str(max(a, b))}
          for a in range(10) for b in range(10)]  # fmt: skip
  write_jsonl(d / 'train.jsonl', rows[::2])
  write_jsonl(d / 'valid.jsonl', rows[1::10])
  grader = {'type': 'multi', 'calculate_output': 'exact', 'graders': {
    'exact': {'type': 'string_check', 'name': 'exact', 'input': '{{sample.output_text}}',
              'reference': '{{item.answer}}', 'operation': 'eq'},
    'close': {'type': 'text_similarity', 'name': 'close', 'input': '{{sample.output_text}}',
              'reference': '{{item.answer}}', 'evaluation_metric': 'fuzzy_match'}}}  # fmt: skip
  (d / 'grader.json').write_text(json.dumps(grader))
  text = (REPO / 'configs' / 'tiny.py').read_text()
  for old, new in (('data/tiny/train.jsonl', d / 'train.jsonl'), ('data/tiny/valid.jsonl', d / 'valid.jsonl'),
                   ('data/tiny/grader.json', d / 'grader.json'), ("'tiny', arg", "'mytask', arg")):  # fmt: skip
    text = text.replace(old, str(new))
  (d / 'mytask.py').write_text(text)
  return d


@pytest.fixture(scope='module')
def run(task):
  """python -m rftjax.train --config=mytask.py:test --workdir=... (in-process, from the repo root)."""
  with pytest.MonkeyPatch.context() as mp:
    mp.chdir(REPO)
    mp.setattr(cli, 'setup_logging', lambda verbosity=0: None)
    argv = ['train', f'--config={task / "mytask.py"}:test', f'--workdir={task / "run"}', '--config.eval_interval=3']
    assert train.main(argv) == 0
  return task / 'run'


def test_your_own_task_trains_and_evaluate_reproduces_the_last_validation(run, task, in_repo, capsys):
  last = [r for r in metrics.read_jsonl(run / 'metrics.jsonl') if 'valid_reward_mean' in r][-1]
  assert evaluate.main([f'--workdir={run}', '--step=latest', f'--data={task / "valid.jsonl"}']) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['reward_mean'] == pytest.approx(last['valid_reward_mean'])
  assert 'step' in summary and summary['step'] == last['step']


def test_the_run_keeps_its_graders_content_and_records_what_a_user_reads(run, task, in_repo, capsys):
  config = json.loads((run / 'config.json').read_text())
  assert config['grader']['type'] == 'multi' and config['grader_file'] == str(task / 'grader.json')
  (samples,) = [json.loads(line) for line in (run / 'samples' / 'valid_step000000.jsonl').read_text().splitlines()][:1]
  assert set(samples['sub_rewards']) == {'exact', 'close'} and samples['item']['answer'] in '0123456789'
  assert 'messages' not in samples['item']
  assert report.main([f'--workdir={run}']) == 0
  out = capsys.readouterr().out
  assert '(mean of the last 3 steps)' in out and 'learning rate' in out and 'disk checkpoint 3' in out
  from matplotlib import pyplot as plt

  fig = plots.reward_figure(run, kept=[3])
  ax = fig.axes[0]
  plt.close(fig)
  assert 'kept best checkpoints' in ax.get_legend_handles_labels()[1]
  assert all(float(t).is_integer() for t in ax.get_xticks())


def test_evaluate_uses_the_graders_pass_threshold_and_an_init_model_has_no_step(run, task, in_repo, capsys):
  grader = {'type': 'text_similarity', 'name': 'close', 'input': '{{sample.output_text}}',
            'reference': '{{item.answer}}', 'evaluation_metric': 'fuzzy_match', 'pass_threshold': 0.25}  # fmt: skip
  (task / 'similar.json').write_text(json.dumps(grader))
  hf = task / 'hf'
  assert export.main([f'--workdir={run}', f'--out={hf}']) == 0
  capsys.readouterr()
  args = [f'--init=hf:{hf}', f'--data={task / "valid.jsonl"}', f'--grader={task / "similar.json"}']
  assert evaluate.main(args + [f'--out={task / "e.jsonl"}']) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['pass_threshold'] == 0.25 and 'step' not in summary


def test_sample_uses_the_runs_max_new_tokens(run, task, in_repo):
  prompts = write_jsonl(task / 'prompts.jsonl', [{'text': 'Largest digit: 1 2'}] * 3)
  assert sample.main([f'--workdir={run}', f'--prompts={prompts}', f'--out={task / "s.jsonl"}']) == 0
  rows = metrics.read_jsonl(task / 's.jsonl')
  assert all(len(r['tokens']) <= 1 for r in rows)  # configs/tiny.py: sampling.max_new_tokens = 1 (not 128)


def test_local_judges_serve_evaluate_and_grade_and_all_failed_is_an_error(run, task, in_repo, capsys):
  hf = task / 'judge'
  assert export.main([f'--workdir={run}', f'--out={hf}']) == 0
  capsys.readouterr()
  judge = {'type': 'label_model', 'name': 'j', 'model': f'hf:{hf}', 'labels': ['1', '2'], 'passing_labels': ['1'],
           'input': [{'role': 'user', 'content': 'Largest digit: 1 {{sample.output_text}}'}]}  # fmt: skip
  (task / 'judge.json').write_text(json.dumps(judge))
  rc = grade.main([f'--grader={task / "judge.json"}', '--sample=2', '--item={}'])
  result = json.loads(capsys.readouterr().out)
  assert all(e['category'] != 'model_grader_server' for e in result['errors'])  # answered here, not by an API
  assert rc == (1 if result['errors'] else 0)
  dead = dict(judge, base_url='http://127.0.0.1:9/v1')  # an endpoint nobody answers: every grading fails
  (task / 'dead.json').write_text(json.dumps(dead))
  args = [f'--workdir={run}', f'--data={task / "valid.jsonl"}', f'--grader={task / "dead.json"}']
  assert evaluate.main(args + [f'--out={task / "dead.jsonl"}']) == 1
  assert 'error: all 10 gradings failed' in capsys.readouterr().err


def test_explicit_native_keys_beat_openai_fields_and_plan_shows_the_resolution(task, in_repo, capsys, monkeypatch):
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  argv = ['train', f'--config={task / "mytask.py"}', f'--workdir={task / "x"}', '--config.openai.n_epochs=1',
          '--config.total_steps=9']  # fmt: skip
  assert train.main(argv) == 2
  err = capsys.readouterr().err
  assert 'config.openai.n_epochs=1' in err and 'config.total_steps=9 both decide total_steps' in err
  assert plan.main(['plan', f'--config={task / "mytask.py"}', '--devices=cpu-8', '--config.openai.n_epochs=2']) == 0
  assert 'run: 7 steps of 16 prompts x 8 completions = 128 rows (50 training examples)' in capsys.readouterr().out
  with pytest.raises(SystemExit) as e:
    plan.main(['plan', '--help'])
  assert e.value.code == 0 and 'Memory planning' in capsys.readouterr().out


def test_nothing_to_do_is_said_before_anything_loads_and_names_the_deciding_key(
  run, task, in_repo, caplog, monkeypatch
):
  monkeypatch.setattr('rftjax.loader.load', lambda *a, **k: pytest.fail('the model was loaded'))
  import importlib.util

  spec = importlib.util.spec_from_file_location('mytask', task / 'mytask.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config('test').copy_and_resolve_references()
  with c.ignore_type():
    c.openai.n_epochs = 0.08  # ceil(0.08 x 50 / 4) = 1 step, and the run already has 3
  with caplog.at_level('INFO', logger='rftjax'):
    assert trainer.train(c, run) == {}
  assert 'nothing to do: step 3 >= total_steps=1 (raise config.openai.n_epochs to continue)' in caplog.text


def test_cli_errors_are_one_line(task, in_repo, capsys):
  assert export.main([f'--workdir={task / "nope"}', f'--out={task / "o"}']) == 2
  assert capsys.readouterr().err.count('\n') == 1
  prompts = write_jsonl(task / 'p1.jsonl', [{'text': 'x'}])
  assert sample.main(['--init=gguf:smollm3', f'--prompts={prompts}', f'--out={task / "o.jsonl"}']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'known gguf:NAME shorthands: gemma3-270m, smollm2-135m' in err


def test_a_python_grader_may_return_a_bool(tmp_path, capsys):
  g = {'type': 'python', 'name': 'b', 'source': "def grade(sample, item):\n  return sample['output_text'] == '4'\n"}
  (tmp_path / 'g.json').write_text(json.dumps(g))
  assert grade.main([f'--grader={tmp_path / "g.json"}', '--sample=4']) == 0
  assert json.loads(capsys.readouterr().out)['reward'] == 1.0


@pytest.mark.parametrize(
  'value',
  [
    'np.float32(1.0)',
    'np.int64(1)',
    "np.array(['4']) == sample['output_text']",
    'fractions.Fraction(2, 2)',
    "decimal.Decimal('1.0')",
  ],
)
def test_a_python_grader_may_return_a_numpy_number(tmp_path, capsys, value):
  """np.float32, np.int64 and np.bool_ are not Python's float, int and bool, but a grader returns them naturally;
  so are Fraction and Decimal, from exact arithmetic."""
  source = f'import decimal, fractions\nimport numpy as np\ndef grade(sample, item):\n  return {value}\n'
  (tmp_path / 'g.json').write_text(json.dumps({'type': 'python', 'name': 'n', 'source': source}))
  assert grade.main([f'--grader={tmp_path / "g.json"}', '--sample=4']) == (0 if 'array' not in value else 1)
  out = json.loads(capsys.readouterr().out)
  if 'array' in value:  # an array of one bool is not a score
    assert out['reward'] == 0.0 and "grade() returned ndarray '[ True]'; expected a finite float" in str(out['errors'])
  else:
    assert out['reward'] == 1.0 and out['errors'] == []


def test_tensorboard_is_installed_with_the_runtime():
  assert 'tensorboard==' in (REPO / 'requirements.txt').read_text()


@pytest.fixture
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)
