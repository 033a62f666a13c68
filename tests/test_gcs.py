"""A gs:// workdir, end to end, against a local GCS emulator (tests/gcs_emulator.py): the trainer writes every run
file and checkpoint to the bucket, resumes from it, and the read-side tools (report, inference, export) read it."""

import json
import pathlib

import gcs_emulator
import jax
import numpy as np
import pytest
from etils import epath

from configs import tiny
from rftjax import export
from rftjax import errors
from rftjax import loader
from rftjax import metrics
from rftjax import report
from rftjax import runfs
from rftjax import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def bucket():
  with gcs_emulator.serve('rftjax-test') as url:
    yield url


def test_run_dir_stages_locally_and_uploads_what_changed(bucket, tmp_path):
  with runfs.RunDir(f'{bucket}/rundir', sync_interval_s=3600) as run:
    assert run.is_remote and not str(run.local).startswith('gs:')
    (run.local / 'metrics.jsonl').write_text('{"step": 0}\n')
    (run.local / 'samples').mkdir()
    (run.local / 'samples' / 'a.jsonl').write_text('x\n')
    (run.local / 'half.tmp').write_text('a file mid-write')  # never uploaded
    assert run.sync() == 2
    assert run.sync() == 0  # nothing changed
    assert run.maybe_sync() == 0  # not due yet
    with (run.local / 'metrics.jsonl').open('a') as f:
      f.write('{"step": 1}\n')
    assert run.sync() == 1
    remote = epath.Path(f'{bucket}/rundir')
    assert (remote / 'metrics.jsonl').read_text() == '{"step": 0}\n{"step": 1}\n'
    assert (remote / 'samples' / 'a.jsonl').read_text() == 'x\n'
    assert not (remote / 'half.tmp').exists()
    (run.local / 'late.txt').write_text('written after the last sync')
    staging = run.local
  assert not staging.exists()  # close() uploaded, then removed its own staging folder
  assert (remote / 'late.txt').read_text() == 'written after the last sync'

  again = runfs.RunDir(f'{bucket}/rundir', staging=tmp_path / 'stage')  # a resumed run reads metrics.jsonl back
  assert (tmp_path / 'stage' / 'metrics.jsonl').read_text() == '{"step": 0}\n{"step": 1}\n'
  assert again.sync() == 0  # what was fetched is not uploaded again
  again.close()
  assert (tmp_path / 'stage').exists()  # a staging folder the caller gave is the caller's


def test_train_resume_and_read_back_from_a_bucket(bucket, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  gcs_emulator.without_ocdbt(monkeypatch)
  workdir = f'{bucket}/runs/tiny'
  c = tiny.get_config('test')
  c.total_steps = 2
  trainer.train(c, workdir)
  remote = epath.Path(workdir)
  names = sorted(p.name for p in remote.iterdir())
  assert names == [
    'checkpoints',
    'config.json',
    'events.jsonl',
    'metrics.jsonl',
    'reward_curve.png',
    'samples',
    'tensorboard',
  ]
  assert sorted(p.name for p in (remote / 'samples').iterdir()) == ['valid_step000000.jsonl', 'valid_step000002.jsonl']
  assert any(p.name.startswith('events.out.tfevents') for p in (remote / 'tensorboard').iterdir())
  assert (remote / 'reward_curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert json.loads((remote / 'config.json').read_text())['total_steps'] == 2

  c.total_steps = 3  # resume from the bucket's checkpoint 2: only step 3 runs
  trainer.train(c, workdir)
  records = metrics.read_jsonl(remote / 'metrics.jsonl')
  train_steps = [r['step'] for r in records if 'train_reward_mean' in r]
  assert train_steps == [1, 2, 3]
  assert [r['step'] for r in records if 'valid_reward_mean' in r] == [0, 2, 3]

  summary = report.summarize(workdir)
  assert summary['steps_done'] == 3 and summary['best_step'] in (0, 2, 3)
  loaded = loader.load(runfs.read_config(workdir), workdir=workdir, step='latest')
  assert loaded.step == 3
  # the bucket's checkpoint 2 restored whole (weights, optimizer, data position): as 3 steps in one go, locally
  whole = tmp_path / 'whole'
  trainer.train(c, whole)
  last = lambda run: [r for r in metrics.read_jsonl(run) if 'train_reward_mean' in r][-1]  # noqa: E731
  step3, whole3 = last(remote / 'metrics.jsonl'), last(whole / 'metrics.jsonl')
  assert step3['grad_norm'] > 0.1 and step3['train_reward_mean'] == whole3['train_reward_mean']
  # (to rounding: the train-step shapes are picked by measured times, and padding changes the order of sums)
  np.testing.assert_allclose([step3['loss'], step3['grad_norm']], [whole3['loss'], whole3['grad_norm']], rtol=1e-5)
  uninterrupted = loader.load(runfs.read_config(whole), workdir=whole, step='latest')
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(uninterrupted.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=3e-5)  # 3 steps move them 3.6e-4 (test_meshes)
  assert export.main([f'--workdir={workdir}', '--step=latest', f'--out={tmp_path / "hf"}']) == 0
  assert json.loads((tmp_path / 'hf' / 'config.json').read_text())['num_hidden_layers'] == loaded.cfg.num_layers
  assert (tmp_path / 'hf' / 'model.safetensors').stat().st_size > 0


def test_a_checkpoint_in_a_bucket_is_dated_by_its_metadata_file(bucket):
  """A bucket has no folders: a checkpoint folder's time read 0, and a checkpoint said late (or one report lists
  without its event) was dated by the resume, or the run's start."""
  import time

  from rftjax import checkpoint

  folder = epath.Path(f'{bucket}/dated/checkpoints/5')
  (folder / '_CHECKPOINT_METADATA').write_text('{}')
  assert runfs.mtime(folder) is None  # what the trainer and report had to go on
  assert abs(checkpoint.written_at(folder) - time.time()) < 120


def test_a_checkpoint_in_a_bucket_is_ranked_after_its_save(bucket):
  """A resume that redoes a validation cut short gives the step its metrics in the bucket, where every reader finds
  them."""
  import jax.numpy as jnp

  from rftjax import checkpoint

  with checkpoint.Checkpointer(f'{bucket}/ranked/checkpoints', keep_best=1) as ckpt:
    ckpt.save(1, {'w': jnp.ones(2)}, extra={}, metrics={'valid_reward_mean': 0.5})
    ckpt.save(2, {'w': jnp.ones(2)}, extra={'validation_due': True})
    ckpt.wait_until_finished()
    assert ckpt.validation_due(2)
    ckpt.rank(2, {'valid_reward_mean': 0.75})
  with checkpoint.Checkpointer(f'{bucket}/ranked/checkpoints', read_only=True) as ckpt:
    assert ckpt.metrics(2) == {'valid_reward_mean': 0.75} and ckpt.best_step() == 2 and not ckpt.validation_due(2)


def test_a_bucket_that_does_not_exist_is_a_config_error(bucket):
  del bucket  # the emulator must be up: the error is the missing bucket, not a dead endpoint
  with pytest.raises(errors.ConfigError, match='gs://no-such-bucket/run: cannot write there'):
    trainer.train(tiny.get_config('test'), 'gs://no-such-bucket/run')


def test_a_failed_upload_mid_run_is_retried_not_fatal(bucket, caplog):
  import fsspec

  fs = fsspec.filesystem('gs')
  fs.mkdir('doomed-bucket')
  run = runfs.RunDir('gs://doomed-bucket/run')
  (run.local / 'metrics.jsonl').write_text('{"step": 1}\n')
  fs.rm('doomed-bucket', recursive=True)  # the bucket goes away mid-run
  assert run.sync(raise_errors=False) == 0
  assert 'upload to gs://doomed-bucket/run failed' in caplog.text and 'retried at the next sync' in caplog.text
  fs.mkdir('doomed-bucket')  # it is back: the next sync uploads what was pending
  assert run.sync() == 1
  run.close()
  assert epath.Path('gs://doomed-bucket/run/metrics.jsonl').read_text() == '{"step": 1}\n'


def test_data_files_round_trip_through_a_bucket_and_no_bucket_is_created(bucket):
  from rftjax import data

  rows = [{'messages': [{'role': 'user', 'content': 'Largest digit: 1 2'}], 'answer': '2'}]
  data.write_jsonl(f'{bucket}/data/train.jsonl', rows)
  (example,) = data.load_jsonl(f'{bucket}/data/train.jsonl')
  assert example.source == f'{bucket}/data/train.jsonl:1' and example.item['answer'] == '2'
  with pytest.raises(OSError):
    data.write_jsonl('gs://never-made/data/train.jsonl', rows)
  assert not epath.Path('gs://never-made').exists()
