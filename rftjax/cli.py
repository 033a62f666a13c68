"""What the command-line tools share: a quiet console, the `--config` flag, and one way bad input ends a command.

  cli.setup_logging(verbosity)           # rftjax's lines + every warning; verbosity 1 adds the libraries' INFO
  fv = cli.parse_config_flags(argv, define=...)   # --config=configs/x.py[:variant] --config.a.b=v, checked
  return cli.run(main_body)              # a UserError is one `error: ...` line on stderr, exit 2 (OutputError 1)
  cli.check_inference_flags(parser, args)  # sample and evaluate: one check of the flags they share
  cli.check_out(path, folder=False)      # before any work: --out can be written

Config overrides are checked before the config is used: a key that does not exist is one line naming it and the
closest existing key (`config.sampling.temprature: no such field; did you mean config.sampling.temperature?`), a
value of the wrong type names the key and what it expected.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import pathlib
import re
import select
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from rftjax import errors
from rftjax import runfs

FORMAT = '%(asctime)s %(levelname).1s %(message)s'


def setup_logging(verbosity: int = 0) -> None:
  """rftjax's own INFO lines, warnings from everything; `verbosity >= 1`: the libraries' INFO lines too (Orbax,
  absl, JAX), `>= 2`: DEBUG."""
  level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
  console = _Console(sys.stderr)
  console.setFormatter(logging.Formatter(FORMAT, datefmt='%H:%M:%S'))
  logging.basicConfig(level=level, handlers=[console], force=True)
  logging.getLogger('rftjax').setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
  logging.getLogger('absl').setLevel(level)  # Orbax logs through absl
  if verbosity <= 0:
    for handler in logging.getLogger().handlers:
      handler.addFilter(_short_library_errors)


class _Console(logging.StreamHandler):
  """stderr, where the training progress bar is drawn too: a line logged meanwhile clears the bar first and draws
  it again after (tqdm's external write mode), instead of running on from the bar's end."""

  def emit(self, record: logging.LogRecord) -> None:
    import tqdm

    with tqdm.tqdm.external_write_mode(file=self.stream):
      super().emit(record)


def _short_library_errors(record: logging.LogRecord) -> bool:
  """A library's error on the default console is one line, without its traceback: a failed Orbax save logs the
  same page-long traceback from each of its threads before rftjax says what failed in one line."""
  if record.name.startswith('rftjax') or not (record.exc_info or len(record.getMessage()) > 300):
    return True
  first = record.getMessage().splitlines()[0] if record.getMessage() else ''
  record.msg, record.args = f'{first[:300]} (--verbosity=1 shows the rest)', ()
  record.exc_info = record.exc_text = None
  return True


def exit_now(status: int) -> NoReturn:
  """Ends the process with `status` once the logs and the console are flushed, without waiting for worker threads
  (Python joins a thread pool's workers at exit, and a tool call can hang for minutes) or atexit hooks."""
  logging.shutdown()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
      pass
  os._exit(status)


# The status a shell gives a tool that SIGPIPE ended (128 + 13): what `report ... | head` means with pipefail.
BROKEN_PIPE_EXIT_CODE = 141
INTERRUPT_EXIT_CODE, TERMINATE_EXIT_CODE = 130, 143  # Ctrl-C, SIGTERM: 128 + the signal, as a shell reports them


class Terminated(KeyboardInterrupt):
  """SIGTERM (`timeout`, a job scheduler, a VM going away) in a command other than train, which checkpoints on it:
  unwinds as Ctrl-C does, so a half-written export folder and the grading workers are cleaned up on the way out."""

  signum = signal.SIGTERM  # what rftjax/__init__.py raises again when Python dropped it in a callback


def command(main: Callable[[], int]) -> NoReturn:
  """`if __name__ == '__main__': cli.command(main)`: a command as a process. SIGTERM raises Terminated, and a
  command that was stopped ends at once with 130 or 143: a normal teardown joins a judge's request threads
  (minutes) and can crash while XLA work is still in flight. (A Ctrl-C that Python drops in a callback is raised
  again: rftjax/__init__.py.)"""

  def terminate(signum, frame):
    del signum, frame
    raise Terminated()

  console_for_pipes()
  setup_logging()
  signal.signal(signal.SIGTERM, terminate)
  status = main()
  if status in (INTERRUPT_EXIT_CODE, TERMINATE_EXIT_CODE):
    exit_now(status)
  sys.exit(status)


def console_for_pipes() -> None:
  """A command's stdout and stderr as scripts use them: a character their encoding lacks (PYTHONIOENCODING=ascii,
  a latin-1 terminal) is written as an escape, not a UnicodeEncodeError; and once the reader of stderr has gone
  (`2> >(head -1)`), its lines are dropped instead of the command's work (evaluate lost its finished results to a
  progress line). Commands only: a notebook's streams are left alone."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.reconfigure(errors='backslashreplace')
    except (AttributeError, ValueError):  # not a text file of io's (a test's capture)
      pass
  if not isinstance(sys.stderr, _Dropping):
    sys.stderr = _Dropping(sys.stderr)


class _Dropping:
  """A stream whose writes stop, without an error, once its reader has gone."""

  def __init__(self, stream):
    self._stream, self.gone = stream, False

  def write(self, text: str) -> int:
    if not self.gone:
      try:
        return self._stream.write(text)
      except (BrokenPipeError, ConnectionResetError):
        self.gone = True
    return len(text)

  def flush(self) -> None:
    if not self.gone:
      try:
        self._stream.flush()
      except (BrokenPipeError, ConnectionResetError):
        self.gone = True

  def __getattr__(self, name: str):
    return getattr(self._stream, name)


_open_line = False  # a progress line is on a terminal's stderr without its newline yet


def redraws_in_place(stream) -> bool:
  """Whether `stream` shows a carriage return as a redraw of the line: a terminal, or a Jupyter or Colab output
  (ipykernel's stream, which is no terminal to isatty)."""
  if type(stream).__module__.split('.')[0] == 'ipykernel':
    return True
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # a stream without isatty, or closed
    return False


def new_tenth(before: int, done: int, total: int) -> bool:
  """Whether `done` of `total` is in a later tenth of the way than `before`: when a log file gets a progress line."""
  return done * 10 // total > before * 10 // total


def progress(label: str) -> Callable[[int, int], None]:
  """`report(done, total)` for long work, on stderr: on a terminal one line rewritten in place; in a log file a
  line at each tenth of the way (carriage returns there made one line of hundreds of updates)."""
  tty, last = redraws_in_place(sys.stderr), [-1]  # a notebook's output redraws too

  def report(done: int, total: int) -> None:
    global _open_line
    if total <= 0:
      return
    if tty:
      print(f'\r{label}: {done}/{total}', end='\n' if done == total else '', file=sys.stderr, flush=True)
      _open_line = done != total
    elif done == total or new_tenth(last[0], done, total):  # (from -1: the first call's line too)
      last[0] = done
      print(f'{label}: {done}/{total}', file=sys.stderr, flush=True)

  return report


def run(body: Callable[[], int]) -> int:
  """Calls `body`; a UserError becomes `error: <message>` on stderr and exit status 2 (no traceback; an
  OutputError, an output that could not be written after the work, 1), a full or
  read-only disk `error: cannot write <file>: ...` and 1, Ctrl-C `interrupted` and 130, SIGTERM under `command`
  `terminated` and 143. When the reader of stdout
  goes away (`report ... | head`), the command stops quietly with status 141."""
  try:
    status = body()
    sys.stdout.flush()  # here rather than at exit, so that a reader gone by then is handled below too
    return status
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    if _stdout_closed():  # grade's lost --output after a summary whose reader had gone
      _stdout_nowhere()
    return getattr(e, 'exit_code', errors.EXIT_CODE)  # OutputError: 1
  except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated): one line, the shell's status, no traceback
    stopped = isinstance(e, Terminated)
    print(('\n' if _open_line else '') + ('terminated' if stopped else 'interrupted'), file=sys.stderr)  # not
    return TERMINATE_EXIT_CODE if stopped else INTERRUPT_EXIT_CODE  # glued to a progress line
  except BrokenPipeError:
    if not _stdout_closed():  # a socket's broken pipe (a grader endpoint, a tool server) is a real error
      raise
    _stdout_nowhere()
    return BROKEN_PIPE_EXIT_CODE
  except OSError as e:  # a full or read-only disk: one line, as for bad input, but not status 2
    line = errors.storage_line(e)
    if line is None:
      raise
    print(f'error: {line}, and run the command again', file=sys.stderr)
    return errors.STORAGE_EXIT_CODE


def _stdout_nowhere() -> None:
  """Python flushes stdout again at exit, and a pipe whose reader has gone fails that flush (exit status 120, an
  'Exception ignored' line): what is left goes nowhere instead."""
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _stdout_closed() -> bool:
  """Whether stdout is a pipe whose reader has gone (poll says POLLERR on its write end)."""
  try:
    fd = sys.stdout.fileno()
  except (AttributeError, ValueError, OSError):  # a replaced stdout (tests) has no descriptor
    return False
  if not hasattr(select, 'poll'):
    return False
  poller = select.poll()
  poller.register(fd, select.POLLOUT)
  return any(events & select.POLLERR for _, events in poller.poll(0))


# ---- what the inference CLIs share (sample, evaluate) ----------------------------------------------------------
MAX_SEED = 2**32 - 1  # jax.random.key keeps the low 32 bits of a seed

# (flag, lowest value, what that value means): one table, so sample and evaluate refuse the same values in the
# same words. A flag that a command does not have is skipped.
_LOWEST = (
  ('max_new_tokens', 1, ''),
  ('batch_size', 1, ''),
  ('samples', 1, ''),
  ('temperature', 0, ' (0 = greedy)'),
  ('top_k', 0, ' (0 = off)'),
  ('num_workers', 0, ' (0 = one per CPU core)'),
)


def check_inference_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """The flags sample and evaluate share, checked once: a bad value is `p.error` (its usage, one `error:` line,
  exit status 2) naming the flag, the value and what is allowed, before any model loads."""
  if (args.workdir is None) == (args.init is None):
    p.error('give exactly one of --workdir or --init')
  if args.init is not None and args.step is not None:
    p.error(f'--step={args.step} picks a checkpoint of --workdir; --init={args.init} has no checkpoints: drop --step')
  for name, lowest, meaning in _LOWEST:
    value = getattr(args, name, None)
    if value is None:
      continue
    if isinstance(value, float) and not math.isfinite(value):
      p.error(f'--{name} must be a finite number >= {lowest}{meaning}, got {value}')
    if value < lowest:
      p.error(f'--{name} must be >= {lowest}{meaning}, got {value}')
  top_p = getattr(args, 'top_p', None)
  if top_p is not None and not 0 < top_p <= 1:
    p.error(f'--top_p must be in (0, 1] (1 = off), got {top_p}')
  from rftjax import sampler  # jax: the commands that take these flags load a model anyway

  temperature = getattr(args, 'temperature', None)
  if temperature is not None and 0 < temperature < sampler.MIN_TEMPERATURE:
    p.error(f'--temperature must be 0 (greedy) or >= {sampler.MIN_TEMPERATURE:g}, got {temperature}')
  seed = getattr(args, 'seed', None)
  if seed is not None and not 0 <= seed <= MAX_SEED:  # a JAX key holds 32 bits: 2**32 would be seed 0 again
    p.error(f'--seed must be in [0, {MAX_SEED}], got {seed}')


# The files train writes in a run's folder, which another command's --out must not replace (sample's output made a
# live run's metrics.jsonl three completion rows)
RUN_OWN = ('config.json', 'metrics.jsonl', 'events.jsonl', 'reward_curve.png', runfs.LOCK)


def check_out(path, *, folder: bool = False, label: str | None = None, inputs: dict | None = None) -> None:
  """Before any work, that `path` can be written: a file (or with `folder`, a folder) that is not the other kind,
  under a folder this process may write in (missing folders are made when writing, as data.write_jsonl and
  weights.export_hf do, so the nearest existing one counts), and none of the command's `inputs` ({flag: path}),
  which the write would replace. A gs:// path is checked against the inputs only: a bucket has no folders, and its
  permissions show only at the write. Raises ConfigError starting with `label` (default `--out=<path>`)."""
  label = label or f'--out={path}'
  runfs.check_not_tilde(path, label)
  for flag, given in (inputs or {}).items():
    if given and same_path(given, path):
      raise errors.ConfigError(f'{label} is the {flag} file; expected another file (writing it would replace that)')
  if runfs.is_remote(path):
    return
  target = pathlib.Path(os.fspath(path)).absolute()
  if folder and target.exists() and not target.is_dir():
    raise errors.ConfigError(f'{label}: a file is there; expected a folder (made if missing)')
  if not folder and target.is_dir():
    raise errors.ConfigError(f'{label}: a folder is there; expected the name of a file to write')
  if not folder and os.fspath(path) == '-':  # no stdout here: it would be a file named '-'
    raise errors.ConfigError(f'{label}: expected the name of a file to write (- is not stdout here)')
  if not folder and target.exists() and not target.is_file():  # the write's rename would replace it (as root, a
    kind = 'a pipe' if stat.S_ISFIFO(target.stat().st_mode) else 'a device or socket'  # device: /dev/null for all)
    raise errors.ConfigError(f'{label}: {kind} is there, not a file; expected the name of a file to write')
  run = target.parent if target.name in RUN_OWN else target.parent.parent if target.parent.name == 'samples' else None
  if not folder and run is not None and _is_run(run):  # a live run's log, say
    raise errors.ConfigError(
      f"{label}: {run} is a run's folder, and {target.relative_to(run)} is the run's own; expected another name, "
      f'e.g. {run / "eval" / "out.jsonl"}'
    )
  where = target if folder and target.is_dir() else target.parent
  while not where.exists():  # exists() is False below a file too: that file is then named
    where = where.parent
  if not where.is_dir():
    raise errors.ConfigError(f'{label}: {where} is a file; expected a folder there')
  if not os.access(where, os.W_OK | os.X_OK):
    raise errors.ConfigError(f'{label}: cannot write in {where} (permission denied)')


def _is_run(folder: pathlib.Path) -> bool:
  """Whether `folder` holds a run (its config.json as rftjax.train writes it)."""
  try:
    return runfs.config_kind(json.loads((folder / 'config.json').read_text())) == 'run'
  except (OSError, ValueError):
    return False


def same_path(a, b) -> bool:
  """Whether two spellings name one file or folder (local: resolved; gs://: the same text)."""
  if runfs.is_remote(a) or runfs.is_remote(b):
    return os.fspath(a).rstrip('/') == os.fspath(b).rstrip('/')
  return pathlib.Path(os.fspath(a)).resolve() == pathlib.Path(os.fspath(b)).resolve()


# ---- the --config flag ----------------------------------------------------------------------------------------
_OVERRIDE = re.compile(r'--?config\.([A-Za-z0-9_.]+)(?:=(.*))?$')


def _load_config_file(spec: str):
  """configs/x.py[:arg] -> get_config(arg) (get_config() for a file whose get_config takes no argument), loaded as
  Python runs a script: `__file__` absolute (HERE = pathlib.Path(__file__).parent names the same files from any
  folder) and the file's folder first on sys.path (`import helpers` beside it works). Errors name the file's line."""
  import inspect

  from ml_collections import config_dict

  path, _, arg = spec.partition(':')
  where = f'--config={spec}'
  if not pathlib.Path(path).is_file():
    raise errors.ConfigError(f'{where}: no such file {path}{runfs.missing_where(path)}{runfs.tilde_hint(path)}')
  if not path.endswith('.py'):
    job = ' (an OpenAI job request goes in --openai_job)' if path.endswith(('.json', '.jsonl')) else ''
    raise errors.ConfigError(f'{where}: expected a Python config file (.py) with get_config(){job}')
  full = os.path.abspath(path)
  sys.path.insert(0, os.path.dirname(full))
  try:
    module_spec = importlib.util.spec_from_file_location('rftjax_config_file', full)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get = getattr(module, 'get_config', None)
    if not callable(get):
      raise errors.ConfigError(f'{where}: {path} defines no get_config(); a config file returns its ConfigDict from '
                               'get_config(arg=None) (configs/tiny.py is one)')  # fmt: skip
    takes = bool(inspect.signature(get).parameters)
    if arg and not takes:
      raise errors.ConfigError(f'{where}: {path} takes no variant (its get_config has no argument)')
    config = get(arg or None) if takes else get()
  except errors.VariantError as e:  # configs/common's refusal names no file: the one given here
    raise errors.ConfigError(f'{where}: {e}') from None
  except errors.UserError:
    raise
  except SyntaxError as e:  # in the file or a module it imports: it names its file and line
    raise errors.ConfigError(f'{where}: SyntaxError: {e.msg} ({e.filename}, line {e.lineno})') from None
  except Exception as e:  # noqa: BLE001  the config file's own error, at its line
    raise errors.ConfigError(f'{where}: {_at_line(e, full)}') from None
  finally:
    if os.path.dirname(full) in sys.path:  # (unless the file took it out itself)
      sys.path.remove(os.path.dirname(full))
  expected = 'expected the ConfigDict of configs.common.base() with your changes (configs/tiny.py is one)'
  if not isinstance(config, config_dict.ConfigDict):
    raise errors.ConfigError(f'{where}: get_config() returned {type(config).__name__}; {expected}')
  missing = [k for k in _fields(_base()) if not _has(config, k)]
  if missing:
    lacks = ', '.join(f'config.{k}' for k in missing[:3]) + (
      f' and {len(missing) - 3} more' if len(missing) > 3 else ''
    )
    raise errors.ConfigError(f'{where}: get_config() returned a ConfigDict without {lacks}; {expected}')
  return config


def _base():
  """This checkout's configs.common.base(), by its path: a configs/ package of one's own (a copy of an older
  common.py, say) may hide it from import, and its base() is what rftjax reads."""
  path = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'common.py'
  module_spec = importlib.util.spec_from_file_location('rftjax_configs_common', path)
  common = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(common)
  return common.base()


def _fields(config, prefix: str = '') -> list[str]:
  """The dotted names of a ConfigDict's fields, down to values that are no ConfigDict."""
  from ml_collections import config_dict

  out = []
  for k in config.keys():
    v = config[k]
    out += _fields(v, f'{prefix}{k}.') if isinstance(v, config_dict.ConfigDict) else [f'{prefix}{k}']
  return out


def _has(config, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node.keys():
      return False
    node = node[part]
  return True


def _at_line(e: Exception, file: str) -> str:
  """A config file's error as '<line N (its source)>: what is wrong', the innermost line of that file that raised
  it; ml_collections' messages for a field that does not exist or a value of another type said plainly."""
  import linecache
  import traceback

  stack = traceback.extract_tb(e.__traceback__)
  frames = [f for f in stack if f.filename == file]
  of_config = bool(stack) and 'ml_collections' in stack[-1].filename  # raised by the ConfigDict, not the file's code
  at = (
    f'line {frames[-1].lineno} ({(frames[-1].line or linecache.getline(file, frames[-1].lineno)).strip()}): '
    if frames
    else ''
  )
  text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  if isinstance(e, (AttributeError, KeyError)) and isinstance(e.args[0] if e.args else None, KeyError):
    text = e.args[0].args[0]  # ml_collections' AttributeError wraps its KeyError
  missing = re.match(r'Key "(\w+)" does not exist and cannot be added since the config is locked', text)
  missing = missing or (re.match(r"'(\w+)'", text) if of_config and isinstance(e, (AttributeError, KeyError)) else None)
  if missing:
    hint = re.search(r'Did you mean "(\w+)"', text)
    return f'{at}no such config field {missing.group(1)!r}' + (f'; did you mean {hint.group(1)!r}?' if hint else '')
  typed = re.match(r"Could not override field '(\w+)'.*original type <class '(\w+)'> and cannot be casted to type "
                   r"<class '(\w+)'>", text)  # fmt: skip
  if typed:
    field, found, wanted = typed.groups()
    return f'{at}config field {field!r} holds a {wanted}; found a {found}'
  return f'{at}{type(e).__name__}: {text}'


def _check_key(config, dotted: str) -> None:
  """config.a.b exists, else one line naming it and the closest field."""
  node, prefix = config, 'config.'
  for part in dotted.split('.'):
    keys = list(node.keys()) if hasattr(node, 'keys') else []
    if part not in keys:
      hint = errors.did_you_mean(part, keys, prefix=prefix) or f'; {prefix[:-1]} has {", ".join(keys) or "no fields"}'
      raise errors.ConfigError(f'{prefix}{part}: no such field{hint}')
    node, prefix = node[part], f'{prefix}{part}.'


def override_keys(argv: Sequence[str]) -> tuple[str, ...]:
  """The dotted config keys set on the command line (`--config.optimizer.learning_rate=1e-5` ->
  'optimizer.learning_rate'): explicit choices that defaults and OpenAI-style 'auto' rules must not override."""
  return tuple(m.group(1) for m in (_OVERRIDE.match(a) for a in argv[1:]) if m)


def _kind(config, key: str) -> str:
  """What a config field's default says it holds, in words."""
  value = config
  for part in key.split('.'):
    value = value[part]
  kinds = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}
  return kinds.get(type(value), f'a value of type {type(value).__name__}')


def parse_config_flags(
  argv: Sequence[str], define: Callable | None = None, *, required: Sequence[str] = (), doc: str = ''
):
  """An absl FlagValues with `--config` (a config file, its overrides) and the flags `define(fv)` adds, parsed
  from `argv` (argv[0] is the program). Raises ConfigError naming the flag or key on any problem."""
  from absl import flags
  from ml_collections import config_flags

  argv = joined_config_arg(argv)
  specs = [a.split('=', 1)[1] for a in argv[1:] if re.match(r'--?config=', a)]
  rest = [a for a in argv if not re.match(r'--?config=', a)]  # the file is loaded here, once; overrides stay
  fv = flags.FlagValues()
  help_ = 'Run config: configs/*.py[:variant].'
  config = None
  helping = any(a in ('-h', '--help', '--helpshort', '--helpfull') for a in argv[1:])
  if specs and not helping:
    config = _load_config_file(specs[-1])  # the last one given, as absl takes it
    for key in override_keys(argv):  # unknown keys first: config_flags would end in a chained traceback
      _check_key(config, key)
    config_flags.DEFINE_config_dict('config', config, help_, flag_values=fv, lock_config=True, sys_argv=rest)
  else:
    if override_keys(argv) and not specs and not helping:
      raise errors.ConfigError(f'--config.{override_keys(argv)[0]}: no --config=FILE to set it in; give one')
    flags.DEFINE_string('config', None, help_, flag_values=fv)
  flags.DEFINE_integer(
    'verbosity', 0, "0: rftjax lines and warnings; 1: the libraries' INFO lines too; 2: debug", flag_values=fv
  )
  if define is not None:
    define(fv)
  if helping:
    print(f'{doc.strip()}\n\nflags:\n{fv.get_help()}')
    raise SystemExit(0)
  argv = rest
  try:
    fv(argv)
  except flags.Error as e:
    cause = e.__cause__ or e.__context__
    m = re.match(r'flag --config\.([\w.]+)=(.*?): ', str(e))
    if m and config is not None and isinstance(cause, ValueError):  # a value its field's type cannot take
      raise errors.ConfigError(
        f'config.{m.group(1)}: expected {_kind(config, m.group(1))}, found {m.group(2)!r}'
      ) from None
    if m:
      raise errors.ConfigError(f'config.{m.group(1)}: {cause or e}') from None
    raise errors.ConfigError(str(e).split('\n')[0]) from None
  for name in required:
    if fv[name].value is None:
      raise errors.ConfigError(f'--{name} is required')
  return fv


# ---- --openai_job (train, preflight, plan) ------------------------------------------------------------------
def define_openai_job(fv) -> None:
  from absl import flags

  flags.DEFINE_string(
    'openai_job',
    None,
    'An OpenAI fine-tuning job request (JSON): model, files, grader, hyperparameters (docs/openai_jobs.md).',
    flag_values=fv,
  )


def joined_config_arg(argv: Sequence[str]) -> list[str]:
  """argv with `--config FILE` (a form absl takes) as `--config=FILE`, the one form the checks know."""
  argv = list(argv)
  for k in range(len(argv) - 2, 0, -1):
    if argv[k] in ('--config', '-config') and not argv[k + 1].startswith('-'):
      argv[k : k + 2] = [f'--config={argv[k + 1]}']
  return argv


def openai_job_argv(argv: Sequence[str]):
  """(the --openai_job file read and checked, or None; argv with the --config its model names when none is given).
  Apply the job with `openai_job.apply(config, job, override_keys(argv))` once the flags are parsed."""
  argv = joined_config_arg(argv)
  path = None
  for k, arg in enumerate(argv[1:], 1):
    if arg.startswith('--openai_job='):
      path = arg.split('=', 1)[1]
    elif arg == '--openai_job' and k + 1 < len(argv):
      path = argv[k + 1]
  if path is None:
    return None, argv
  from rftjax import openai_job  # JAX comes with it: only for job runs

  job = openai_job.read(path)
  if not any(re.match(r'--?config=', a) for a in argv[1:]):
    argv.insert(1, f'--config={job.config_file()}')  # before any --config.x=y, as config_flags wants
  elif not job.body['model'].startswith(openai_job.INIT_KINDS):
    raise errors.ConfigError(
      f'{path}: model: {job.body["model"]!r} names a run config, and --config gives another; give one of them'
    )
  return job, argv


def parse_job_flags(argv: Sequence[str], define: Callable, *, required: Sequence[str], doc: str):
  """(job or None, parsed flags, argv with the job's --config) for a command that takes --config or
  --openai_job; logging set up."""
  job, argv = openai_job_argv(argv)
  fv = parse_config_flags(argv, define, required=required, doc=doc)
  if fv.config is None:
    raise errors.ConfigError('--config is required (or --openai_job, whose model names the config)')
  setup_logging(fv.verbosity)
  return job, fv, argv
