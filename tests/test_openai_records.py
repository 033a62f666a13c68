"""OpenAI-shaped run records: events.jsonl (`fine_tuning.job.event` per line) and `report --format=openai` (the job
object and its checkpoints), checked against the `openai` package's own types and against the records written."""

import json
import logging
import threading
import time
import types

import numpy as np
import pytest

from rftjax import checkpoint
from rftjax import metrics
from rftjax import report

openai_types = pytest.importorskip('openai.types.fine_tuning')
FineTuningJob = openai_types.FineTuningJob
FineTuningJobEvent = openai_types.FineTuningJobEvent
FineTuningJobCheckpoint = pytest.importorskip('openai.types.fine_tuning.jobs').FineTuningJobCheckpoint

GRADER = {
  'type': 'string_check',
  'name': 'exact',
  'input': '{{sample.output_text}}',
  'reference': '{{item.answer}}',
  'operation': 'eq',
}
TOTAL = 4
BATCH, GENERATIONS = 2, 4


def train_record(step: int) -> dict:
  return {
    'step': step,
    'train_reward_mean': 0.1 * step,
    'train_reward_std': 0.05,
    'train/num_graded': 8.0,
    'train/errors/sample_parse': 0.25,
    'train/errors/python_grader_timeout': 0.0,
    'train/error_rate': 0.25,
    'train/grading_latency_s_mean': 0.002 * step,
    'completion_len_mean': 10.0 + step,
    'loss': -0.01 * step,
    'kl': float('nan'),  # a NaN is written as null, never as the NaN that strict JSON parsers refuse
    'timing/sampling_s': 1.5,
    'timing/grading_s': 0.25,
    'timing/training_s': 2.0,
    'timing/step_s': 4.0,
  }


def valid_record(step: int) -> dict:
  return {
    'step': step,
    'valid_reward_mean': 0.3 + 0.1 * step,
    'valid/num_graded': 20.0,
    'valid/errors/sample_parse': 0.05,
    'valid_completion_len_mean': 9.0,
    'timing/eval_s': 3.0,
  }


def write_config(workdir, **overrides):
  config = {
    'model': 'tiny',
    'init': '',
    'data': {'train': 'data/train.jsonl', 'valid': 'data/valid.jsonl'},
    'grader': GRADER,
    'seed': 7,
    'total_steps': TOTAL,
    'batch_size': BATCH,
    'num_generations': GENERATIONS,
    'eval_interval': 2,
    'eval_samples': 1,
    'optimizer': {'learning_rate': 6e-4},  # twice BASE_LR['tiny']
    'lora': {'rank': 0},
    'openai': {
      'n_epochs': 'auto',
      'batch_size': 2,
      'learning_rate_multiplier': 'auto',
      'compute_multiplier': 'auto',
      'reasoning_effort': 'low',
      'resolved': json.dumps({'total_steps': {'value': TOTAL, 'from': 'ceil(n_epochs 1 x 8 examples / batch_size 2)'}}),
      'suffix': 'arith',
      'metadata': json.dumps({'team': 'x'}),
    },
    **overrides,
  }
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(json.dumps(config))
  return config


def write_run(workdir, last_step: int = TOTAL, finish: bool = True) -> list[dict]:
  """A run as the trainer writes it: step-0 validation and checkpoint, then steps with a validation and checkpoint
  every 2; returns the records written."""
  records = []
  w = metrics.MetricsWriter(workdir, tensorboard=False, total_steps=TOTAL, grader=GRADER)
  w.event('Fine-tuning job started', data={'status': 'running'})

  def put(record):
    records.append(record)
    w.write(record)

  put(valid_record(0))
  put({'step': 0, 'timing/checkpoint_s': 0.1})
  w.event('Checkpoint created at step 0', data={'checkpoint': str(workdir / 'checkpoints' / '0')})
  for step in range(1, last_step + 1):
    put(train_record(step))
    if step % 2 == 0:
      put(valid_record(step))
      put({'step': step, 'timing/checkpoint_s': 0.1})
      w.event(f'Checkpoint created at step {step}', data={'checkpoint': str(workdir / 'checkpoints' / str(step))})
  if finish:
    w.event('The job has successfully completed', data={'status': 'succeeded'})
  w.close()
  return records


def events_of(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'events.jsonl').read_text().splitlines()]


def save_checkpoints(workdir, steps):
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', keep_best=10, async_save=False)
  for step in steps:
    ckpt.save(step, {'w': np.zeros(2, np.float32)}, extra={}, metrics=valid_record(step))
  ckpt.close()


# ---- events.jsonl ------------------------------------------------------------------------------------------------
def test_every_event_is_an_openai_event_and_carries_the_numbers_written(tmp_path):
  before = int(time.time())
  records = write_run(tmp_path)
  events = events_of(tmp_path)
  parsed = [FineTuningJobEvent.model_validate(e) for e in events]
  assert all(e.object == 'fine_tuning.job.event' and e.level == 'info' for e in parsed)
  assert all(before <= e.created_at <= int(time.time()) for e in parsed)
  assert len({e.id for e in parsed}) == len(parsed) and all(e.id.startswith('ftevent-') for e in parsed)

  train = [r for r in records if 'train_reward_mean' in r]
  valid = [r for r in records if 'valid_reward_mean' in r]
  by_kind = {'metrics': [e for e in events if e['type'] == 'metrics']}
  by_kind['message'] = [e for e in events if e['type'] == 'message']
  # one metrics event per training step and per validation, none for a checkpoint's timing row
  assert len(by_kind['metrics']) == len(train) + len(valid) == TOTAL + 3
  assert [e['message'] for e in by_kind['message']] == [
    'Fine-tuning job started',
    'Checkpoint created at step 0',
    'Checkpoint created at step 2',
    'Checkpoint created at step 4',
    'The job has successfully completed',
  ]
  assert [e['data']['step'] for e in by_kind['message']] == [0, 0, 2, 4, 4]  # the step each happened at

  train_events = [e for e in by_kind['metrics'] if 'train_mean_reward' in e['data']]
  assert [e['data']['step'] for e in train_events] == [1, 2, 3, 4]
  for r, e in zip(train, train_events):
    d = e['data']
    assert e['message'] == f'Step {r["step"]}/{TOTAL}: train mean reward={r["train_reward_mean"]:.2f}'
    assert d['total_steps'] == TOTAL
    assert d['train_mean_reward'] == d['scores']['train_reward_mean'] == r['train_reward_mean']
    assert d['scores']['graders'] == [
      {'name': 'exact', 'type': 'string_check', 'train_reward_mean': r['train_reward_mean']}
    ]
    assert d['completion_tokens_mean'] == r['completion_len_mean']
    (errors,) = d['errors']['graders']
    assert errors['train_sample_parse_error_mean'] == 0.25 and errors['train_sample_parse_error_count'] == 2.0
    assert errors['train_python_grader_timeout_error_count'] == 0.0  # rftjax's own category, OpenAI's pattern
    assert d['timing']['step'] == {'sampling': 1.5, 'training': 2.0, 'full_iteration': 4.0}
    assert d['timing']['graders'][0]['train_execution_latency_mean'] == r['train/grading_latency_s_mean']
    # what OpenAI has no name for keeps rftjax's
    assert d['loss'] == r['loss'] and d['timing/grading_s'] == 0.25 and d['train/error_rate'] == 0.25
    assert d['kl'] is None
    assert 'completion_len_mean' not in d and 'train/errors/sample_parse' not in d and 'timing/sampling_s' not in d

  valid_events = [e for e in by_kind['metrics'] if 'full_valid_mean_reward' in e['data']]
  assert [e['data']['step'] for e in valid_events] == [0, 2, 4]
  for r, e in zip(valid, valid_events):
    d = e['data']
    assert d['full_valid_mean_reward'] == d['scores']['valid_reward_mean'] == r['valid_reward_mean']
    assert d['full_valid_mean_parse_error'] == 0.05
    assert d['errors']['graders'][0]['valid_sample_parse_error_count'] == 1.0  # 5 % of 20
    assert d['timing']['step'] == {'eval': 3.0}
    assert d['valid_completion_len_mean'] == 9.0
    assert e['message'].startswith(f'Step {r["step"]}/{TOTAL}: full validation mean reward=')


def test_a_response_format_miss_is_a_parse_error_in_the_validation_event(tmp_path):
  """OpenAI's parse-error share counts outputs that did not parse; a format miss did not (it was never graded)."""
  w = metrics.MetricsWriter(tmp_path, tensorboard=False)
  w.write({'step': 0, 'valid_reward_mean': 0.0, 'valid/response_format_valid': 0.0})
  w.write(
    {'step': 2, 'valid_reward_mean': 0.5, 'valid/response_format_valid': 0.75, 'valid/errors/sample_parse': 0.125}
  )
  w.close()
  first, second = events_of(tmp_path)
  assert first['data']['full_valid_mean_parse_error'] == 1.0 and second['data']['full_valid_mean_parse_error'] == 0.375
  assert second['message'] == 'Step 2: full validation mean reward=0.50, full validation mean parse error=0.38'


def test_a_multi_graders_sub_graders_are_listed_by_name_and_type(tmp_path):
  multi = {
    'type': 'multi',
    'calculate_output': 'a',
    'graders': {'a': {'type': 'string_check'}, 'b': {'type': 'python', 'source': ''}},
  }
  w = metrics.MetricsWriter(tmp_path, tensorboard=False, grader=multi)
  w.write({'step': 1, 'train_reward_mean': 0.5, 'train/grader/a': 0.75, 'train/grader/b': 0.25})
  w.close()
  (e,) = events_of(tmp_path)
  assert e['message'] == 'Step 1: train mean reward=0.50'  # no total_steps given: none claimed
  assert 'total_steps' not in e['data']
  assert e['data']['scores'] == {
    'graders': [
      {'name': 'a', 'type': 'string_check', 'train_reward_mean': 0.75},
      {'name': 'b', 'type': 'python', 'train_reward_mean': 0.25},
    ],
    'train_reward_mean': 0.5,
  }
  assert 'train/grader/a' not in e['data']


def test_an_event_level_outside_openais_is_refused(tmp_path):
  w = metrics.MetricsWriter(tmp_path, tensorboard=False)
  with pytest.raises(ValueError, match='warning'):
    w.event('x', level='warning')
  w.event('Job stopped at step 0', level='warn', data={'status': 'cancelled'})
  w.close()
  (e,) = events_of(tmp_path)
  assert FineTuningJobEvent.model_validate(e).level == 'warn' and e['data'] == {'step': 0, 'status': 'cancelled'}


def test_resume_drops_the_events_after_the_resumed_step_and_keeps_the_run_id(tmp_path):
  write_run(tmp_path, last_step=3, finish=False)
  old = events_of(tmp_path)
  job_id = report.openai_job(tmp_path)['id']
  w = metrics.MetricsWriter(tmp_path, resume_step=2, tensorboard=False, total_steps=TOTAL, grader=GRADER)
  w.event('Resumed from step 2', data={'status': 'running'})
  w.write(train_record(3))
  w.close()
  events = events_of(tmp_path)
  kept = [e for e in old if e['data']['step'] <= 2]
  assert len(kept) < len(old) and events[: len(kept)] == kept  # step 3's first try is gone, the rest untouched
  assert [(e['message'], e['data']['step']) for e in events[len(kept) :]] == [
    ('Resumed from step 2', 2),
    (f'Step 3/{TOTAL}: train mean reward=0.30', 3),
  ]
  numbers = lambda es: [int(e['id'].rsplit('-', 1)[1]) for e in es]
  assert min(numbers(events[len(kept) :])) > max(numbers(old))  # a dropped event's id is never reused
  assert report.openai_job(tmp_path)['id'] == job_id
  assert [r['step'] for r in metrics.read_jsonl(tmp_path / 'metrics.jsonl') if 'train_reward_mean' in r] == [1, 2, 3]

  metrics.MetricsWriter(tmp_path, tensorboard=False).close()  # a fresh start: a new job
  assert (tmp_path / 'events.jsonl').read_text() == ''
  assert report.openai_job(tmp_path)['id'] != job_id


def test_a_torn_last_event_line_is_set_aside_and_skipped(tmp_path, caplog):
  write_run(tmp_path, last_step=2, finish=False)
  ids = [e['id'] for e in events_of(tmp_path)]
  torn = '{"object": "fine_tuning.job.event", "id": "ftevent-'
  with (tmp_path / 'events.jsonl').open('a') as f:
    f.write(torn)
  job = report.openai_job(tmp_path)  # a reader skips it: without its newline it may be a line being written
  assert FineTuningJob.model_validate(job).status == 'running'
  assert 'not a JSON object' not in caplog.text
  with (tmp_path / 'metrics.jsonl').open('a') as f:  # a live run's next line, half written
    f.write('{"step": 3, "train_reward_me')
  assert [r['step'] for r in metrics.read_jsonl(tmp_path / 'metrics.jsonl')][-1] == 2 and caplog.text == ''
  (tmp_path / 'metrics.jsonl').write_text((tmp_path / 'metrics.jsonl').read_text() + '\n')  # a crash's torn line
  assert [r['step'] for r in metrics.read_jsonl(tmp_path / 'metrics.jsonl')][-1] == 2
  assert 'metrics.jsonl:' in caplog.text and 'not a JSON object (a write cut short by a crash?); skipped' in caplog.text
  cut = f'{{"object": "fine_tuning.job.event", "id": "{ids[0].rsplit("-", 1)[0]}-{len(ids)}", "created_at": 17'
  with (tmp_path / 'events.jsonl').open('a') as f:  # a second torn line, cut after its id: a reader may have seen it
    f.write('\n' + cut)
  w = metrics.MetricsWriter(tmp_path, resume_step=2, tensorboard=False)
  w.event('Resumed from step 2')
  w.close()
  assert (tmp_path / 'events.jsonl.torn').read_text() == torn + '\n' + cut + '\n'
  assert events_of(tmp_path)[-1]['id'] == f'{ids[0].rsplit("-", 1)[0]}-{len(ids) + 1}'  # not the torn line's id
  events = events_of(tmp_path)  # every line parses again
  assert events[-1]['message'] == 'Resumed from step 2'
  assert [FineTuningJobEvent.model_validate(e).type for e in events].count(
    'metrics'
  ) == 4  # valid 0, steps 1 and 2, valid 2


# ---- report --format=openai --------------------------------------------------------------------------------------
def test_report_prints_the_job_and_its_checkpoints_as_openai_objects(tmp_path, capsys):
  config = write_config(tmp_path)
  records = write_run(tmp_path)
  save_checkpoints(tmp_path, [2, 4])
  events = events_of(tmp_path)
  assert report.main([f'--workdir={tmp_path}', '--format=openai']) == 0
  out = json.loads(capsys.readouterr().out)
  job = FineTuningJob.model_validate(out)

  assert job.object == 'fine_tuning.job' and job.id.startswith('ftjob-') and job.organization_id == 'rftjax-local'
  assert job.status == 'succeeded' and job.error is None and job.estimated_finish is None
  assert job.created_at == events[0]['created_at'] and job.finished_at == events[-1]['created_at']
  assert job.model == 'tiny' and job.seed == 7
  assert (job.training_file, job.validation_file) == ('data/train.jsonl', 'data/valid.jsonl')
  best = max((2, 4), key=lambda s: valid_record(s)['valid_reward_mean'])
  assert job.fine_tuned_model == str(tmp_path / 'checkpoints' / str(best))
  lengths = [r['completion_len_mean'] for r in records if 'train_reward_mean' in r]
  assert job.trained_tokens == round(sum(lengths) * BATCH * GENERATIONS) == 400
  assert job.hyperparameters.model_dump() == {'batch_size': 2, 'learning_rate_multiplier': 2.0, 'n_epochs': 1}
  assert job.method.type == 'reinforcement'
  assert job.method.reinforcement.grader.model_dump() == GRADER
  hyper = job.method.reinforcement.hyperparameters
  assert (hyper.eval_interval, hyper.eval_samples, hyper.reasoning_effort) == (2, 1, 'low')
  assert hyper.compute_multiplier == 'auto'
  assert job.metadata == {'team': 'x'} and out['user_provided_suffix'] == 'arith'
  assert job.result_files == [str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'events.jsonl')]
  assert out['rftjax'] == {'workdir': str(tmp_path), 'steps_done': 4, 'total_steps': config['total_steps'],
                           'best_step': best}  # fmt: skip

  checkpoints = [FineTuningJobCheckpoint.model_validate(c) for c in out['checkpoints']]
  assert [c.step_number for c in checkpoints] == [4, 2]  # newest first, as OpenAI lists them
  created = {e['data']['step']: e['created_at'] for e in events if e['data'].get('checkpoint')}
  for c in checkpoints:
    s = c.step_number
    assert c.object == 'fine_tuning.job.checkpoint' and c.fine_tuning_job_id == job.id
    assert c.fine_tuned_model_checkpoint == str(tmp_path / 'checkpoints' / str(s)) and c.created_at == created[s]
    assert c.metrics.step == s and c.metrics.train_loss is None
    m = c.metrics.model_dump()
    assert m['train_reward_mean'] == train_record(s)['train_reward_mean']
    assert m['valid_reward_mean'] == m['full_valid_mean_reward'] == valid_record(s)['valid_reward_mean']
  assert len({c.id for c in checkpoints}) == 2


@pytest.mark.parametrize(
  'final, status',
  [
    (None, 'running'),
    (
      (
        'Job stopped at step 2 (Ctrl-C); training again in the same workdir resumes there',
        'warn',
        {'status': 'cancelled'},
      ),
      'cancelled',
    ),
    (('Grading failed at step 3', 'error', {'status': 'failed', 'code': 'grading_failed'}), 'failed'),
    # the end of an earlier length, the log short of total_steps: a resume with more steps, its own event not
    # written yet (a bucket syncs it later than config.json)
    (('The job has successfully completed', 'info', {'status': 'succeeded'}), 'running'),
  ],
)
def test_status_comes_from_steps_done_and_the_last_status_event(tmp_path, final, status):
  write_config(tmp_path)
  write_run(tmp_path, last_step=2, finish=False)  # 2 of 4 steps, no checkpoints on disk: the log says how far
  if final is not None:
    w = metrics.MetricsWriter(tmp_path, resume_step=2, tensorboard=False)
    w.event(final[0], level=final[1], data=final[2])
    w.close()
  job = FineTuningJob.model_validate(report.openai_job(tmp_path))
  assert job.status == status and job.fine_tuned_model is None and job.checkpoints == []
  last = events_of(tmp_path)[-1]['created_at']
  if status == 'running':
    assert job.finished_at is None and job.error is None
    assert job.estimated_finish == last + 2 * 4  # 2 steps left at 4.0 s a step
  else:
    assert job.finished_at == last and job.estimated_finish is None
  if status == 'failed':
    assert job.error.model_dump() == {'code': 'grading_failed', 'message': final[0], 'param': None}
  if final is not None:  # a resume after the stop makes it a running job again
    w = metrics.MetricsWriter(tmp_path, resume_step=2, tensorboard=False)
    w.event('Resumed from step 2', data={'status': 'running'})
    w.close()
    assert report.openai_job(tmp_path)['status'] == 'running'


def test_a_multi_grader_gets_the_names_openai_requires(tmp_path):
  multi = {'type': 'multi', 'calculate_output': 'a', 'graders': {'a': dict(GRADER, name=None), 'b': GRADER}}
  del multi['graders']['a']['name']
  write_config(tmp_path, grader=multi)
  job = report.openai_job(tmp_path)
  grader = job['method']['reinforcement']['grader']
  assert (
    grader['name'] == 'multi' and grader['graders']['a']['name'] == 'a' and grader['graders']['b']['name'] == 'exact'
  )
  assert 'name' not in json.loads((tmp_path / 'config.json').read_text())['grader']['graders']['a']
  # the SDK types MultiGrader.graders as one grader where the API sends a map, so strict validation refuses the
  # grader (docs/cli.md); the rest of the job validates, and the SDK's own unvalidated construction reads it all
  assert FineTuningJob.model_validate({**job, 'method': None}).status == 'running'
  read = FineTuningJob.construct(**job)
  assert read.method.reinforcement.grader.graders['b']['reference'] == '{{item.answer}}'
  assert read.method.reinforcement.hyperparameters.learning_rate_multiplier == 2.0


def test_the_table_and_json_outputs_are_unchanged(tmp_path, capsys):
  write_config(tmp_path)
  write_run(tmp_path)
  assert report.main([f'--workdir={tmp_path}', '--json']) == 0
  as_flag = json.loads(capsys.readouterr().out)
  assert report.main([f'--workdir={tmp_path}', '--format=json']) == 0
  assert json.loads(capsys.readouterr().out) == as_flag == report.summarize(tmp_path)
  assert as_flag['steps_done'] == TOTAL and 'object' not in as_flag
  assert report.main([f'--workdir={tmp_path}']) == 0
  assert capsys.readouterr().out.startswith('run ')


def test_tensorboard_leaves_out_what_metrics_jsonl_writes_as_null(tmp_path):
  """A step whose every row is masked has NaN token means: metrics.jsonl writes null; tensorboardX printed a 'NaN or
  Inf found in input tensor' warning for each of them."""
  w = metrics.MetricsWriter(tmp_path, tensorboard=False, total_steps=TOTAL, grader=GRADER)
  scalars = []
  w._tb = types.SimpleNamespace(add_scalar=lambda k, v, step: scalars.append((k, v, step)), flush=lambda: None)
  before = time.time()
  w.write({'step': 1, 'loss': 0.0, 'kl': float('nan'), 'entropy': float('inf')})
  assert scalars == [('loss', 0.0, 1)]  # the line's time is no scalar either
  line = json.loads((tmp_path / 'metrics.jsonl').read_text())
  assert before - 0.01 <= line.pop('time') <= time.time() + 0.001  # when it was written, to the ms (rounded)
  assert line == {'step': 1, 'loss': 0.0, 'kl': None, 'entropy': None}


@pytest.mark.filterwarnings('ignore::pytest.PytestUnhandledThreadExceptionWarning')  # the thread's own death
def test_a_tensorboard_writer_that_died_does_not_block_the_run(tmp_path, caplog):
  """A full disk under tensorboard/ ended tensorboardX's writer thread; the next events filled its queue of 10 and
  the trainer hung for good, deaf to SIGTERM and Ctrl-C. TensorBoard now stops, said once; metrics.jsonl goes on."""
  import errno
  import threading

  w = metrics.MetricsWriter(tmp_path, total_steps=TOTAL, grader=GRADER)
  w.write({'step': 1, 'loss': 0.5})
  events = w._tb.file_writer.event_writer

  def full(event):
    raise OSError(errno.ENOSPC, 'No space left on device')

  events._ev_writer.write_event = full

  def steps():
    w.write({'step': 2, **{f'm{i}': 1.0 for i in range(40)}})  # the thread dies on one of these
    events._worker.join(timeout=10)
    w.write({'step': 3, **{f'm{i}': 1.0 for i in range(40)}})
    w.close()

  wrote = threading.Thread(target=steps, daemon=True)
  with caplog.at_level('WARNING', logger='rftjax'):
    wrote.start()
    wrote.join(timeout=30)
  assert not wrote.is_alive(), 'the writer blocked'
  assert [r['step'] for r in metrics.read_jsonl(tmp_path / 'metrics.jsonl')] == [1, 2, 3]
  assert [m for m in caplog.messages if m.startswith('TensorBoard stopped at step ')] != []


def test_warnings_from_any_thread_become_events_once_each(tmp_path):
  """The grading pool's thread runs the graders: its warnings were dropped; the stop's own lines have events."""
  logger = logging.getLogger('rftjax.test_warning_events')
  logger.propagate = False

  def elsewhere(message):
    thread = threading.Thread(target=logger.warning, args=(message,))
    thread.start()
    thread.join()

  with metrics.WarningEvents(logger) as warned:
    elsewhere('before the writer, from the pool')
    logger.warning('before the writer')
    w = metrics.MetricsWriter(tmp_path, tensorboard=False)
    warned.attach(w)
    elsewhere('from the pool')
    logger.error('broken')
    logger.warning('said by its own event', extra={'event': False})
    logger.warning('step 2: every completion was cut off', extra={'step': 2})  # before step 2's record exists
    w.close()
  logger.warning('after the run')
  events = [json.loads(line) for line in (tmp_path / 'events.jsonl').read_text().splitlines()]
  assert [(e['level'], e['message']) for e in events] == [
    ('warn', 'before the writer, from the pool'), ('warn', 'before the writer'), ('warn', 'from the pool'),
    ('error', 'broken'), ('warn', 'step 2: every completion was cut off'),
  ]  # fmt: skip
  assert len({e['id'] for e in events}) == 5
  assert [e['data']['step'] for e in events] == [0, 0, 0, 0, 2]  # a resume from step 1 drops the last


def test_a_resume_that_drops_nothing_appends_to_the_files_a_reader_follows(tmp_path):
  """Each resume replaced metrics.jsonl and events.jsonl with new files: `tail -f` went silent after a preemption,
  `tail -F` printed the whole run again, and validation samples of the dropped steps stayed behind."""
  write_run(tmp_path, last_step=3, finish=False)
  samples = tmp_path / 'samples'
  samples.mkdir()
  for step in (0, 2, 3):
    (samples / f'valid_step{step:06d}.jsonl').write_text('{}\n')
  inodes = lambda: [(tmp_path / f).stat().st_ino for f in ('metrics.jsonl', 'events.jsonl')]  # noqa: E731
  before = inodes()
  metrics.MetricsWriter(tmp_path, resume_step=3, tensorboard=False).close()  # a SIGTERM's checkpoint: the last step
  assert inodes() == before and sorted(p.name for p in samples.iterdir())[-1] == 'valid_step000003.jsonl'
  metrics.MetricsWriter(tmp_path, resume_step=2, tensorboard=False).close()  # a crash: step 3 is redone
  assert inodes() != before
  assert [r['step'] for r in metrics.read_jsonl(tmp_path / 'metrics.jsonl')][-1] == 2
  assert sorted(p.name for p in samples.iterdir()) == ['valid_step000000.jsonl', 'valid_step000002.jsonl']


def test_a_run_started_over_shows_each_step_once_in_tensorboard(tmp_path):
  """Killed during its first checkpoint's save, a run starts over: TensorBoard showed step 0 twice, the old event
  file's and the new one's."""
  from tensorboard.backend.event_processing import event_accumulator

  for reward in (0.25, 0.5):
    time.sleep(1.0)  # event files are named by the second: the second writer's is another file
    w = metrics.MetricsWriter(tmp_path)
    w.write({'step': 0, 'valid_reward_mean': reward})
    w.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars('valid_reward_mean')] == [(0, 0.5)]


def test_reports_error_counts_a_prompts_samples_as_one(tmp_path):
  """eval_samples=4 on 200 prompts: report's ± counted 800 independent answers (0.016 where the error over prompts
  was 0.031), and so called checkpoints clearly apart that were not."""
  write_config(tmp_path, eval_samples=4)
  w = metrics.MetricsWriter(tmp_path, tensorboard=False)
  w.write({'step': 0, 'valid_reward_mean': 0.3175, 'valid/num_graded': 800.0, 'valid_reward_stderr': 0.031,
           'valid/num_prompts': 200})  # fmt: skip
  w.close()
  s = report.summarize(tmp_path)
  assert (s['best_valid_stderr'], s['best_valid_prompts'], s['best_valid_graded']) == (0.031, 200, 800)
  assert '(valid reward 0.3175 ± 0.031 over 200 prompts x 4 samples, from metrics.jsonl)' in report.table(s)
  w = metrics.MetricsWriter(tmp_path, tensorboard=False)  # a run logged before valid_reward_stderr: the bound
  w.write({'step': 0, 'valid_reward_mean': 0.3175, 'valid/num_graded': 800.0})
  w.close()
  s = report.summarize(tmp_path)
  assert s['best_valid_stderr'] == pytest.approx((0.3175 * 0.6825 / 800) ** 0.5) and 'best_valid_prompts' not in s
  assert '± 0.016 over 800 graded' in report.table(s)


def test_report_says_when_the_best_is_no_better_than_the_untrained_model(tmp_path):
  """learning_rate=1e-7: validation 0.1350 at every evaluation, and report said 'best step 50 (valid reward
  0.1350 ...)' as if training had helped."""
  write_config(tmp_path)
  w = metrics.MetricsWriter(tmp_path, tensorboard=False)
  for step, reward in ((0, 0.135), (10, 0.135), (20, 0.14)):
    w.write({'step': step, 'valid_reward_mean': reward, 'valid/num_graded': 200.0, 'valid_reward_stderr': 0.024,
             'valid/num_prompts': 200})  # fmt: skip
  w.close()
  s = report.summarize(tmp_path)
  assert s['best_step'] == 20 and 'no better than step 0 (the untrained model, 0.1350) by one standard error' in (
    report.table(s)
  )
  w = metrics.MetricsWriter(tmp_path, resume_step=10, tensorboard=False)
  w.write({'step': 20, 'valid_reward_mean': 0.5, 'valid/num_graded': 200.0, 'valid_reward_stderr': 0.035,
           'valid/num_prompts': 200})  # fmt: skip
  w.close()
  assert 'no better than step 0' not in report.table(report.summarize(tmp_path))
