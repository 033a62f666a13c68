"""The README's promises: .ci/run runs the README's test command verbatim; the demo command names real files."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
  text = (REPO / 'README.md').read_text()
  section = text.split('## Quickstart', 1)[1].split('\n## ', 1)[0]
  block = re.search(r'```(?:bash|sh)?\n(.*?)```', section, re.S).group(1)
  return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith('#')]


def test_quickstart_has_exactly_two_commands():
  demo, test = quickstart_commands()
  assert demo.startswith('python3 -m venv .venv') and 'requirements.txt' in demo
  assert '-m rftjax.train --config=configs/tiny.py' in demo
  assert test.startswith('python3 -m venv .venv') and '-m pytest' in test


def test_ci_runs_the_readme_test_command():
  ci = (REPO / '.ci' / 'run').read_text().splitlines()
  test = quickstart_commands()[1]
  assert test in [line.strip() for line in ci]


def test_requirements_are_pinned():
  for name in ('requirements.txt', 'requirements-test.txt', 'requirements-nodeps.txt'):
    for line in (REPO / name).read_text().splitlines():
      if line.strip() and not line.startswith('#'):
        assert re.fullmatch(r'[A-Za-z0-9_.\-\[\]]+==[0-9][^ ]*', line.strip()), f'{name}: {line!r} is not pinned'


def test_code_is_formatted_and_lint_clean():
  """One dialect (pyproject.toml): `ruff format` leaves every file as it is and `ruff check` finds nothing."""
  import shutil
  import subprocess
  import sys

  ruff = shutil.which('ruff', path=str(pathlib.Path(sys.executable).parent)) or shutil.which('ruff')
  assert ruff, 'ruff is not installed (requirements-test.txt)'
  fmt = subprocess.run([ruff, 'format', '--check', '--diff', '.'], cwd=REPO, capture_output=True, text=True)
  assert fmt.returncode == 0, f'not formatted (run `ruff format .`):\n{fmt.stdout[-3000:]}{fmt.stderr[-1000:]}'
  lint = subprocess.run([ruff, 'check', '.'], cwd=REPO, capture_output=True, text=True)
  assert lint.returncode == 0, f'lint errors (run `ruff check .`):\n{lint.stdout[-3000:]}'


def test_nothing_cites_files_outside_the_repository():
  """The repository stands on its own: code and docs cite docs/, never a neighbour folder or a machine path."""
  files = [f for d in ('rftjax', 'configs', 'tests', 'docs', 'benchmarks', 'tpu') for f in (REPO / d).rglob('*')]
  files += [REPO / n for n in ('README.md', 'pyproject.toml', 'requirements.txt', 'requirements-test.txt')]
  bad = []
  for f in files:
    if f.suffix in ('.py', '.md', '.txt', '.sh', '.toml') and f.name != 'test_repo.py' and '__pycache__' not in f.parts:
      bad += [f'{f.relative_to(REPO)}: {m}' for m in re.findall(r'\.\./shared/\S*|/work/\S+|JAX_NOTES', f.read_text())]
  assert not bad, bad


def test_code_files_stay_under_600_lines():
  """One file per concern (docs/design.md): a file past 600 lines holds two concerns; split it."""
  files = [f for d in ('rftjax', 'configs', 'benchmarks', 'tpu') for f in (REPO / d).rglob('*.py')]
  long = [f'{f.relative_to(REPO)}: {n}' for f in files if (n := len(f.read_text().splitlines())) > 600]
  assert not long, long
