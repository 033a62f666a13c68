"""Bad config values end `python -m rftjax.train` with exit status 2 and one line naming the key, before any model
loads and before anything is written to the workdir (no config.json, no compile cache, no checkpoint)."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from rftjax import cli
from rftjax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = '--config=configs/tiny.py'

# (flags after --workdir, what the one error line must contain)
BAD = [
  ([TINY, '--config.batch_size=-1'], 'config.batch_size: expected an integer >= 1, found -1'),
  ([TINY, '--config.num_generations=1'], 'config.num_generations: expected an integer >= 2'),
  (
    [TINY, '--config.sampling.temprature=0.5'],
    'config.sampling.temprature: no such field; did you mean config.sampling.temperature?',
  ),
  ([TINY, '--config.nope=1'], 'config.nope: no such field'),
  ([TINY, '--config.mesh.fsdp=3'], 'config.mesh'),
  ([TINY, '--config.mesh.data=3', '--config.mesh.fsdp=1'], 'config.mesh'),
  ([TINY, '--config.init=gguf:/no/such/model.gguf'], "config.init='gguf:/no/such/model.gguf': no such file"),
  ([TINY, '--config.init=gguf:smollm3'], 'known gguf:NAME shorthands: gemma3-270m, smollm2-135m'),
  ([TINY, '--config.tokenizer=sp:/no/such/tokenizer.model'], 'config.tokenizer='),
  ([TINY, '--config.sampling.max_new_tokens=0'], 'config.sampling.max_new_tokens: expected an integer >= 1, found 0'),
  ([TINY, '--config.eval_interval=0'], 'config.eval_interval: expected an integer >= 1, found 0'),
  ([TINY, '--config.total_steps=-5'], 'config.total_steps: expected an integer >= 0, found -5'),
  (
    [TINY, '--config.seed=4294967296'],
    'config.seed: expected an integer from 0 to 4294967295 (a JAX key holds 32 bits',
  ),
  (
    [TINY, '--config.grpo.advantage=grpoo'],
    "config.grpo.advantage: expected one of 'grpo', 'dr_grpo', 'rloo', 'gdpo', found 'grpoo'; did you mean grpo?",
  ),
  ([TINY, '--config.grpo.kl_estimator=k9'], 'config.grpo.kl_estimator: expected one of'),
  ([TINY, '--config.grpo.loss_aggregation=mean'], 'config.grpo.loss_aggregation: expected one of'),
  ([TINY, '--config.sampling.temperature=-1'], 'config.sampling.temperature: expected a finite number >= 0'),
  ([TINY, '--config.sampling.top_p=0'], 'config.sampling.top_p: expected a finite number > 0 and <= 1, found 0'),
  # logits / 1e-38 overflow float32: NaN logprobs, token ids past the vocabulary
  (
    [TINY, '--config.sampling.temperature=1e-38'],
    'config.sampling.temperature: expected 0 (greedy) or a number >= 1e-05',
  ),
  ([TINY, '--config.eval_temperature=1e-9'], 'config.eval_temperature: expected 0 (greedy) or a number >= 1e-05'),
  ([TINY, '--config.optimizer.schedule=linear'], "config.optimizer.schedule: expected one of 'constant', 'cosine'"),
  ([TINY, '--config.optimizer.learning_rate=0'], 'config.optimizer.learning_rate: expected a finite number > 0'),
  ([TINY, '--config.batch_size=100000000000'], 'config.batch_size: expected an integer from 1 to 2147483647, found'),
  ([TINY, '--config.optimizer.b1=1.0'], 'config.optimizer.b1: expected a finite number >= 0 and < 1, found 1.0'),
  ([TINY, '--config.optimizer.b2=1'], 'config.optimizer.b2: expected a finite number >= 0 and < 1, found 1'),
  ([TINY, '--config.openai.n_epochs=abc'], "config.openai.n_epochs: expected a finite number or 'auto', got 'abc'"),
  ([TINY, '--config.openai.batch_size=-2'], 'config.openai.batch_size: must be > 0'),
  (['--config=configs/tiny.py:foo'], "--config=configs/tiny.py:foo: unknown variant 'foo'; expected one of: test"),
  (
    ['--config=configs/gemma3_tpu.py'],
    '--config=configs/gemma3_tpu.py: no layout; expected the file name then :LAYOUT, LAYOUT one of ',
  ),
  (['--config=configs/no_such.py'], '--config=configs/no_such.py: no such file'),
  (
    [TINY, '--config.data.train=data/nope.jsonl'],
    f'error: data/nope.jsonl: no such file in {REPO} (config.data.train)',
  ),
  ([TINY, '--config.data.train=data'], 'error: data: a folder, not a file (config.data.train); expected a JSONL file'),
  ([TINY, '--config.data.train='], "error: config.data.train: expected the path of a JSONL file, found ''"),
  (['--config', 'configs/tiny.py', '--config.sampling.temprature=0.5'], 'did you mean config.sampling.temperature?'),
  (['--config.total_steps=3'], 'error: --config.total_steps: no --config=FILE to set it in; give one'),
  (
    ['--config=data/tiny/train.jsonl'],
    'error: --config=data/tiny/train.jsonl: expected a Python config file (.py) with get_config() (an OpenAI job',
  ),
  ([TINY, '--config.batch_size=abc'], "config.batch_size: expected an integer, found 'abc'"),
  ([TINY, '--config.grpo.beta=lots'], "config.grpo.beta: expected a number, found 'lots'"),
  ([TINY, '--config.model=tinyy'], 'config.model: expected one of'),
  ([TINY, '--config.param_dtype=float16'], "config.param_dtype: expected one of 'float32', 'bfloat16'"),
  ([TINY, '--config.train_microbatches=3'], 'config.train_microbatches=3: 128 rows do not split into 3'),
  ([TINY, '--config.grading.max_error_share=2'], 'config.grading.max_error_share: expected a finite number'),
  ([TINY, '--config.data.max_prompt_len=0'], 'config.data.max_prompt_len: expected an integer >= 1'),
  ([TINY, '--config.grpo.overlong_buffer=5'], 'config.grpo.overlong_buffer: expected fewer tokens than'),
  ([TINY, '--config.eval_samples=0'], 'config.eval_samples: expected an integer >= 1, found 0'),
  ([TINY, '--config.chat_template=chatm'], 'config.chat_template: expected one of'),
  ([TINY, '--config.grader='], 'config.grader: expected a grader dict'),
  (
    [TINY, '--config.max_episode_steps=0'],
    'config.max_episode_steps: expected an integer >= 1 (1 = one completion per prompt), found 0',
  ),
  ([TINY, '--config.tool_server=mine'], "config.tool_server: expected one of '', 'example', found 'mine'"),
  (
    ['--config=configs/tiny_tools.py', '--config.max_episode_steps=1'],
    'config.max_episode_steps: expected >= 2 when config.tools is set',
  ),
  (
    ['--config=configs/tiny_tools.py', '--config.tool_server='],
    "config.tools[0].server_url: expected an http:// or https:// URL with a host, found '{tool_server}'",
  ),
  ([TINY, '--config.lora.rank=-1'], 'config.lora.rank: expected an integer >= 0'),
  (
    ['--config=configs/smollm2_arith.py', '--config.lora.rank=100000', '--config.lora.alpha=16'],
    "config.lora.rank: expected an integer from 1 to smollm2_135m's d_model, 576, found 100000",
  ),
  (
    [TINY, '--config.lora.rank=4'],
    'config.init: expected pretrained weights (gguf:PATH, gguf:NAME or hf:DIR) when config.lora.rank > 0',
  ),
  (
    ['--config=configs/smollm2_arith.py:lora', '--config.lora.alpha=0'],
    'config.lora.alpha: expected a finite number > 0',
  ),
  (
    ['--config=configs/smollm2_arith.py:lora', "--config.lora.targets=('q', 'qkv')"],
    "config.lora.targets: expected a non-empty tuple of names from q, k, v, o, gate, up, down, found ('q', 'qkv')",
  ),
  ([TINY, '--config.thinking=maybe'], 'config.thinking'),
  ([TINY, '--config.grading.step_budget_s=-1'], 'config.grading.step_budget_s: expected a finite number >= 0'),
  ([TINY, '--config.grading.model_threads=0'], 'config.grading.model_threads: expected an integer >= 1, found 0'),
  (
    [TINY, '--config.grading.memory_mb=0'],
    'config.grading.memory_mb: expected an integer >= 64 (MB of address space for each grader worker), found 0',
  ),
  ([TINY, '--config.grading.allow_unsandboxed=2'], 'config.grading.allow_unsandboxed'),
]


@pytest.fixture
def no_model_loads(monkeypatch):
  """Any attempt to load a model, create a mesh's params or restore a checkpoint fails the test."""

  def forbidden(*args, **kwargs):
    raise AssertionError('a model was loaded before the config was checked')

  monkeypatch.setattr('rftjax.loader.load', forbidden)
  monkeypatch.setattr('rftjax.model.init_params', forbidden)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)  # leave pytest's logging alone


@pytest.mark.parametrize('flags, message', BAD, ids=[' '.join(f[-1:]) for f, _ in BAD])
def test_bad_config_exits_2_with_one_line_naming_the_key(flags, message, tmp_path, monkeypatch, capsys, no_model_loads):
  monkeypatch.chdir(REPO)
  workdir = tmp_path / 'run'
  rc = train.main(['rftjax.train', f'--workdir={workdir}', *flags])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2, err
  assert len(err) == 1 and err[0].startswith('error: '), err
  assert message in err[0], err[0]
  assert not workdir.exists()  # no config.json, compile cache or checkpoint


def test_an_unknown_variant_names_the_config_file_given(tmp_path, monkeypatch, capsys, no_model_loads):
  """A copy of configs/tiny.py in one's own folder said `--config=configs/tiny.py:tset`: the file it was copied from."""
  monkeypatch.chdir(REPO)
  mine = tmp_path / 'my.py'
  mine.write_text((REPO / 'configs' / 'tiny.py').read_text())
  assert train.main(['rftjax.train', f'--workdir={tmp_path / "run"}', f'--config={mine}:tset']) == 2
  assert (
    capsys.readouterr().err == f"error: --config={mine}:tset: unknown variant 'tset'; expected one of: test (or none)\n"
  )
  # a copy from an older rftjax passes its name first, as check_variant took it then: still a config
  mine.write_text(mine.read_text().replace('common.check_variant(arg, ', "common.check_variant('tiny', arg, "))
  assert train.main(['rftjax.train', f'--workdir={tmp_path / "run"}', f'--config={mine}:tset']) == 2
  assert "unknown variant 'tset'" in capsys.readouterr().err
  layouts = tmp_path / 'layouts.py'
  layouts.write_text((REPO / 'configs' / 'lora_one_vm.py').read_text())
  assert train.main(['rftjax.train', f'--workdir={tmp_path / "run"}', f'--config={layouts}:bogus']) == 2
  assert capsys.readouterr().err.startswith(f"error: --config={layouts}:bogus: unknown layout 'bogus'; expected the ")


USER_CONFIGS = [
  # a field that does not exist, set in the file: it ran on the default, the misspelt key beside it in config.json
  ('c = tiny.get_config()\n  c.sampling.temprature = 0.5',
   "line 6 (c.sampling.temprature = 0.5): no such config field 'temprature'; did you mean 'temperature'?"),
  ("c = tiny.get_config()\n  c.grpo.beta = '0.04'", "line 6 (c.grpo.beta = '0.04'): config field 'beta' holds a "
                                                     'float; found a str'),
  ('c = tiny.get_config()\n  c.total_steps = 1 / 0', 'line 6 (c.total_steps = 1 / 0): ZeroDivisionError: division by '
                                                      'zero'),
  ("return {'model': 'tiny'}", 'get_config() returned dict; expected the ConfigDict of configs.common.base() with'),
  ('return None', 'get_config() returned NoneType; expected'),
  ('c = (tiny.get_config()', "SyntaxError: '(' was never closed ("),  # a traceback and exit 1 for a while
  ("c = tiny.get_config()\n  x = {}['FOO']", "line 6 (x = {}['FOO']): KeyError: FOO"),  # the file's own: no field
  ('c = tiny.get_config()\n  x = c.sampling.temprature',
   "line 6 (x = c.sampling.temprature): no such config field 'temprature'; did you mean 'temperature'?"),
  ("c = ml_collections.ConfigDict({'model': 'tiny', 'data': {'train': 'x.jsonl'}})",
   'get_config() returned a ConfigDict without config.batch_size, config.chat_template, config.checkpoint.async_save '),
]  # fmt: skip


@pytest.mark.parametrize('body, message', USER_CONFIGS)
def test_a_users_config_file_error_is_one_line_at_its_line(body, message, tmp_path, monkeypatch, capsys,
                                                          no_model_loads):  # fmt: skip
  monkeypatch.chdir(REPO)
  mine = tmp_path / 'my_config.py'
  mine.write_text(
    f'import ml_collections\nfrom configs import tiny\n\ndef get_config(arg=None):\n  {body}\n  return c\n'
  )
  assert train.main(['rftjax.train', f'--workdir={tmp_path / "run"}', f'--config={mine}']) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: --config={mine}: {message}') and err.count('\n') == 1, err
  assert not (tmp_path / 'run').exists()


def test_a_config_file_runs_as_a_script_from_any_folder(tmp_path, monkeypatch, capsys):
  """The README's HERE = pathlib.Path(__file__).parent gave relative paths when --config was relative (a run that
  then worked from its own folder only), a helper module beside the config imported only from that folder, and
  the file ran twice (config_flags loaded it again)."""
  project = tmp_path / 'project'
  project.mkdir()
  (project / 'helpers.py').write_text('STEPS = 7\n')
  (project / 'my_config.py').write_text(
    textwrap.dedent("""\
      import pathlib

      import helpers
      from configs import tiny

      HERE = pathlib.Path(__file__).parent


      def get_config():
        c = tiny.get_config()
        c.data.train = str(HERE / 'train.jsonl')
        c.total_steps = helpers.STEPS
        print('loaded')
        return c
    """)
  )
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  monkeypatch.syspath_prepend(str(REPO))
  fv = cli.parse_config_flags(['x', '--config', '../project/my_config.py', '--config.batch_size=4'])
  assert fv.config.data.train == str(project / 'train.jsonl') and fv.config.total_steps == 7
  assert fv.config.batch_size == 4 and capsys.readouterr().out == 'loaded\n'
  assert str(project) not in sys.path  # only while it loads
  with pytest.raises(AttributeError):  # locked: a later typo in code is no new field either
    fv.config.sampling.temprature = 0.5


def test_existing_workdir_is_left_as_it_was(tmp_path, monkeypatch, capsys, no_model_loads):
  monkeypatch.chdir(REPO)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('mine')
  assert train.main(['rftjax.train', f'--workdir={workdir}', TINY, '--config.batch_size=0']) == 2
  assert [p.name for p in workdir.iterdir()] == ['notes.txt']
  capsys.readouterr()


def test_command_line_error_is_one_line_without_traceback(tmp_path):
  """The real entry point: nothing but the error line on the console (no traceback, no library logs)."""
  proc = subprocess.run(
    [sys.executable, '-m', 'rftjax.train', TINY, f'--workdir={tmp_path / "run"}', '--config.sampling.temprature=0.5'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'},
  )
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
    'error: config.sampling.temprature: no such field; did you mean config.sampling.temperature?'
  )
  assert proc.stdout == '' and not (tmp_path / 'run').exists()


def test_every_shipped_config_passes_the_checks(monkeypatch):
  from configs import gemma3_270m, gemma3_tpu, lora_one_vm, smollm2_arith, smollm2_tools, tiny, tiny_tools
  from rftjax import plan, runspec, tool_server

  monkeypatch.chdir(REPO)
  for module, args in (
    (tiny, (None, 'test')),
    (smollm2_arith, (None, 'test', 'lora', 'lora_test')),
    (gemma3_270m, (None, 'test')),
    (tiny_tools, (None, 'test')),
    (smollm2_tools, (None, 'test')),
  ):
    for arg in args:
      config = module.get_config(arg)
      if config.tool_server:  # what a run does before its checks: the example server's URL in place
        config = tool_server.substitute(config, 'http://127.0.0.1:8000/')
      runspec.check(config, devices=8, processes=1)
  for module, layouts in ((gemma3_tpu, gemma3_tpu.PRESETS), (lora_one_vm, lora_one_vm.LAYOUTS)):
    for arg in layouts:
      config = module.get_config(arg)
      hw = plan.parse_devices(config.devices)
      runspec.check(config, devices=hw.chips, processes=hw.hosts, inputs=False)


def test_k_greedy_validation_samples_get_a_warning(monkeypatch, caplog):
  from configs import tiny
  from rftjax import runspec

  monkeypatch.chdir(REPO)
  config = tiny.get_config('test')
  config.eval_samples = 3
  with caplog.at_level('WARNING', logger='rftjax'):
    runspec.check(config)
    config.eval_temperature = 1.0
    runspec.check(config)
  assert caplog.messages == [
    'eval_samples=3 with eval_temperature=0: greedy decoding gives each validation prompt the same completion 3 times; '
    'set config.eval_temperature above 0 (and sampling.top_k to 0 or above 1) for k different samples'
  ]
  caplog.clear()
  config.sampling.top_k = 1  # only the likeliest token is left: greedy at any temperature
  with caplog.at_level('WARNING', logger='rftjax'):
    runspec.check(config)
  assert caplog.messages[0].startswith('eval_samples=3 with sampling.top_k=1: greedy decoding gives each validation')


GOOD_LINE = '{"messages": [{"role": "user", "content": "Largest digit: 1 2 3 4"}], "answer": "4"}\n'


@pytest.mark.parametrize(
  'train_lines, message',
  [
    (
      [GOOD_LINE, GOOD_LINE.replace('"answer": "4"', '"solution": "4"')],
      "error: grader.reference uses {{{{item.answer}}}}, but {train}:2 has no such field: item has no key 'answer'; "
      'expected every data line to have it',
    ),
    (
      [GOOD_LINE, GOOD_LINE.replace('"answer": "4"', '"answer": "4", "answer": "5"')],
      'error: {train}:2: answer: the key \'answer\' appears twice in one object (first "4", then "5"); expected each '
      'key once (a JSON reader keeps only the last, silently)',
    ),
    (
      [GOOD_LINE, GOOD_LINE.replace('digit:', 'digit\xe9:').encode('latin-1')],
      'error: {train}:2: not UTF-8 text: byte 0xe9 at byte offset {offset} of the file (byte {column} of the line); '
      'expected UTF-8 (re-save the file as UTF-8)',
    ),
  ],
  ids=['missing field', 'duplicate key', 'not utf-8'],
)
def test_data_that_does_not_fit_the_grader_fails_before_anything_slow(
  train_lines, message, tmp_path, monkeypatch, capsys, no_model_loads
):
  monkeypatch.chdir(REPO)
  train_file = tmp_path / 'train.jsonl'
  train_file.write_bytes(b''.join(x if isinstance(x, bytes) else x.encode() for x in train_lines))
  workdir = tmp_path / 'run'
  rc = train.main(['rftjax.train', f'--workdir={workdir}', TINY, f'--config.data.train={train_file}'])
  err = capsys.readouterr().err.strip().splitlines()
  at = GOOD_LINE.index('digit:') + len('digit')  # where the latin-1 byte sits in line 2
  assert rc == 2 and err == [message.format(train=train_file, offset=len(GOOD_LINE) + at, column=at + 1)]
  assert not workdir.exists()


def test_json_files_name_the_file_and_the_line(tmp_path):
  """One reader for the job, grader and response_format files: the label, then the line and column of bad JSON."""
  from rftjax import errors

  bad = tmp_path / 'bad.json'
  bad.write_text('{"a": 1,\n "b": }')
  with pytest.raises(errors.ConfigError, match=r"^config.x='.*bad.json': not valid JSON \(line 2, column 7: "):
    errors.read_json_file(bad, errors.ConfigError, f'config.x={str(bad)!r}')
  with pytest.raises(errors.ConfigError, match=r'missing.json: no such file$'):  # an absolute path
    errors.read_json_file(tmp_path / 'missing.json', errors.ConfigError)
  with pytest.raises(errors.ConfigError, match=f'^g/nope.json: no such file in {os.getcwd()}$'):  # where it looked
    errors.read_json_file('g/nope.json', errors.ConfigError)
  with pytest.raises(errors.ConfigError, match=r'^.*: cannot read it \(Is a directory\)$'):
    errors.read_json_file(tmp_path, errors.ConfigError)
  bad.write_text('[1, 2]')
  assert errors.read_json_file(bad, errors.ConfigError) == [1, 2]


@pytest.mark.parametrize(
  'workdir, message',
  [
    ('gs://', 'error: gs://: expected a local path or gs://BUCKET/PATH (no bucket)'),
    ('gs:///runs/x', 'error: gs:///runs/x: expected a local path or gs://BUCKET/PATH (no bucket)'),
    ('s3://bucket/run', 'error: s3://bucket/run: expected a local path or gs://BUCKET/PATH (s3:// is not supported)'),
  ],
)
def test_a_workdir_url_rftjax_cannot_write_is_one_line(workdir, message, monkeypatch, capsys, no_model_loads):
  monkeypatch.chdir(REPO)
  assert train.main(['rftjax.train', f'--workdir={workdir}', TINY]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [message]


@pytest.mark.parametrize('model', ['tiny', ''], ids=['preset', 'architecture_from_the_file'])
def test_an_unreadable_model_file_is_one_line_naming_config_init(model, tmp_path, monkeypatch, capsys, no_model_loads):
  """A Git LFS pointer saved as .gguf, a GGUF-less file, an hf: folder whose config.json is not JSON or that holds no
  weights: one error line (it was a traceback from the learning-rate table or the preset check), exit 2."""
  monkeypatch.chdir(REPO)
  pointer = tmp_path / 'model.gguf'
  pointer.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1\n')
  other = tmp_path / 'notes.gguf'
  other.write_text('hello, this is not a model at all')
  broken, empty, pickled = tmp_path / 'broken', tmp_path / 'empty', tmp_path / 'pickled'
  broken.mkdir(), empty.mkdir(), pickled.mkdir()
  (broken / 'config.json').write_text('{"model_type": "llama",')
  (empty / 'config.json').write_text(json.dumps({'model_type': 'llama', 'hidden_size': 8}))
  (pickled / 'config.json').write_text(json.dumps({'model_type': 'llama', 'hidden_size': 8}))
  (pickled / 'pytorch_model.bin').write_bytes(b'')
  cases = [
    (f'gguf:{pointer}', 'a Git LFS pointer file, not the GGUF it points to (fetch it: git lfs pull)'),
    (f'gguf:{other}', "not a GGUF v2+ file (it starts with b'hello, t')"),
    (f'hf:{broken}', f'{broken / "config.json"} is not valid JSON'),
    ('hf:Qwen/Qwen3-0.6B', 'no such folder Qwen/Qwen3-0.6B; hf: names a local folder, and rftjax downloads nothing'),
  ] + (
    [
      (f'hf:{empty}', 'neither model.safetensors nor model.safetensors.index.json'),
      (f'hf:{pickled}', 'the weights are PyTorch .bin files, which rftjax does not read'),
    ]
    if model == ''
    else []
  )
  for init, message in cases:
    flags = [TINY, f'--config.init={init}', f'--config.model={model}']
    assert train.main(['rftjax.train', f'--workdir={tmp_path / "run"}', *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: config.init={init!r}: ') and message in err[0], err


def test_help_is_help_and_a_stale_copy_of_common_is_named(tmp_path, monkeypatch, capsys):
  """-h with an override but no --config said the override needed a config; a config built on an older copy of
  configs/common.py (a project's own configs/ package hides this one) died on KeyError 'thinking'."""
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)  # a console on pytest's capture outlives it
  with pytest.raises(SystemExit) as e:
    train.main(['train', '--workdir=x', '--config.total_steps=3', '-h'])
  assert e.value.code == 0 and '--workdir' in capsys.readouterr().out
  project = tmp_path / 'project'
  (project / 'configs').mkdir(parents=True)
  (project / 'configs' / '__init__.py').write_text('')
  common = (REPO / 'configs' / 'common.py').read_text()
  (project / 'configs' / 'common.py').write_text(common.replace('  c.thinking = False', '  pass'))
  (project / 'my.py').write_text('from configs import common\n\n\ndef get_config():\n  return common.base()\n')
  monkeypatch.syspath_prepend(str(project))
  for name in [m for m in sys.modules if m == 'configs' or m.startswith('configs.')]:
    monkeypatch.delitem(sys.modules, name)
  with pytest.raises(cli.errors.ConfigError, match=r'get_config\(\) returned a ConfigDict without config.thinking;'):
    cli.parse_config_flags(['x', f'--config={project / "my.py"}'])
