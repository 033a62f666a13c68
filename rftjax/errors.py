"""The one channel for bad input: every error a user can fix is a `UserError`, and its message is the whole story.

A message names where the problem is (the `config.` key, the flag, or the file and line), what was found and what
was expected, so the command line tools print it as one `error: ...` line and exit with status 2 (`EXIT_CODE`),
no traceback. Everything else that goes wrong is a bug or an outage and keeps its traceback.

  ConfigError   a `config.*` key or a command-line flag       (runspec.check, hparams, loader, the CLIs)
  VariantError  a config file's :VARIANT (a ConfigError)      (configs/common.py; cli names the file)
  DataError     a line of a data file                          (rftjax.data)
  GraderConfigError  a field of a grader spec                  (rftjax.graders)
  OutputError   a command's output file, after its work: exit 1 (sample, evaluate, grade)
"""

from __future__ import annotations

import difflib
import errno
import json
from typing import Any

EXIT_CODE = 2
STORAGE_EXIT_CODE = 1  # a full or read-only disk, an output that could not be written after the work


class UserError(ValueError):
  """Bad input that the user can fix; the message names the key, flag or file:line, what was found and expected."""


class ConfigError(UserError):
  """A `config.*` value or a command-line flag is unusable."""


class OutputError(UserError):
  """A command's work is done but the file it was asked to write could not be (the disk filled or a folder appeared
  there since `cli.check_out` looked): one line naming the flag, exit 1, as a full disk anywhere, not 2, which says
  an input was bad."""

  exit_code = STORAGE_EXIT_CODE


class VariantError(ConfigError):
  """A config file's `get_config(arg)` refused its `:VARIANT`; the --config flag's check names the file given (a
  copy of a shipped config elsewhere would name the original)."""


# A disk that is full, over quota or read-only, or a limit on open files: not a bug, and no traceback helps; the
# CLIs say it in one line
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
FILES_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


def storage_line(e: OSError) -> str | None:
  """'cannot write runs/x/metrics.jsonl: No space left on device; make room (or write elsewhere)' for a full or
  read-only disk, the open-files limit and what to do for too many open files, else None."""
  if e.errno in FILES_ERRNOS:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (f'{e.strerror or e} (this process may open {soft}: ulimit -n); raise the limit, or use fewer grading '
            'workers (grading.num_workers, --num_workers)')  # fmt: skip
  if e.errno not in STORAGE_ERRNOS:
    return None
  fix = 'write elsewhere' if e.errno == errno.EROFS else 'make room (or write elsewhere)'
  return f'cannot write {e.filename or "a file"}: {e.strerror or e}; {fix}'


def named(e: OSError, path) -> OSError:
  """`e` with `path` as its filename when it has none (a failed write or flush names no file)."""
  return e if e.filename is not None else OSError(e.errno, e.strerror, str(path))


def read_json_file(path, error: type[UserError], label: str | None = None):
  """The value in a JSON file (a local path or gs://). An unreadable file, invalid JSON or an object with a key
  twice raises `error`, its message starting with `label` (default: the path) and giving the line and column of bad
  JSON or the JSON path of the repeated key."""
  from etils import epath

  label = label or str(path)
  try:
    raw = epath.Path(path).read_bytes()
  except OSError as e:
    from rftjax import runfs

    missing = isinstance(e, FileNotFoundError)
    why = f'no such file{runfs.missing_where(path)}' if missing else f'cannot read it ({e.strerror or e})'
    raise error(f'{label}: {why}{runfs.tilde_hint(path)}') from None
  try:  # a byte-order mark (Windows editors write one) is no part of the JSON, as in data files
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise error(
      f'{label}: not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {e.start}; expected UTF-8 (re-save the '
      'file as UTF-8)'
    ) from None
  return json_loads(text, error, label)


# `json.loads` keeps the last of two equal keys without a word, so `{"operation": "eq", "operation": "ne"}` silently
# inverts a reward. Grader, job and tool files are hand-written and nested: the error names where in the file.
# Data rows (`data.loads`) too, one line each.
def json_loads(text: str, error: type[UserError], label: str, in_file: bool = True) -> Any:
  """The JSON value in `text`; invalid JSON or an object with a key twice raises `error` starting with `label`.
  `in_file=False`: `text` is one line that `label` names (file:line), so a syntax error gives its column alone."""
  repeats: list[tuple[dict, str, Any, Any]] = []  # (object, key, first value, last value); keeps each object alive

  def unique(pairs: list[tuple[str, Any]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
      if key in obj:
        repeats.append((obj, key, obj[key], value))
      obj[key] = value
    return obj

  if not in_file:  # the line's end is no part of it: an error there is at the last column, not "line 2"
    text = text.rstrip('\r\n')

  def constant(name: str):  # Python's json reads NaN and Infinity, which JSON has not (and other readers refuse)
    raise ValueError(f'{name} is not JSON; expected a number, or null')

  try:
    value = loads_untrusted(text, object_pairs_hook=unique, parse_constant=constant)
  except json.JSONDecodeError as e:
    if in_file:
      raise error(f'{label}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})') from None
    why = 'a string starting there is not closed' if e.msg == 'Unterminated string starting at' else e.msg
    why = why if e.pos < len(text.rstrip()) else f'{why}: the line ends before its JSON value does'
    hint = ''
    if text.strip() in ('[', '{'):  # a pretty-printed document, not JSON Lines
      hint = '; expected JSON Lines, one object per line, not one JSON document over many lines (jq -c converts one)'
    raise error(f'{label}: not valid JSON (column {e.colno}: {why}){hint}') from None
  except ValueError as e:  # NaN, an integer of more digits than Python converts, nesting past MAX_JSON_DEPTH
    raise error(f'{label}: not valid JSON ({e})') from None
  if '\\ud' in text.lower():  # an escaped surrogate that pairs with none is valid JSON but no text (scraped data)
    try:
      json.dumps(value, ensure_ascii=False).encode('utf-8')
    except UnicodeEncodeError as e:
      bad = ascii(e.object[e.start : e.end])
      raise error(
        f'{label}: the unpaired surrogate {bad} is no Unicode text; expected text (a \\ud800-\\udfff escape only '
        'as half of a pair)'
      ) from None
  if repeats:
    where = {id(obj): (key, first, last) for obj, key, first, last in reversed(repeats)}  # each object's first
    at, (key, first, last) = _first(value, where, '')
    shown = lambda v: json.dumps(v, ensure_ascii=False)[:40]  # noqa: E731
    raise error(
      f'{label}: {at + "." if at else ""}{key}: the key {key!r} appears twice in one object (first {shown(first)}, '
      f'then {shown(last)}); expected each key once (a JSON reader keeps only the last, silently)'
    )
  return value


# Text from a model or a server may nest brackets a thousand deep (a collapsed policy repeating '['): Python's reader
# then raises RecursionError, which is no ValueError, and a value parsed just under the limit fails again when it
# is written back out (to a grading worker). Nothing real nests this deep.
MAX_JSON_DEPTH = 100


def loads_untrusted(text: str | bytes, **kwargs) -> Any:
  """`json.loads(text, **kwargs)` for text a model or a server wrote: ValueError for invalid JSON and for arrays
  and objects nested more than MAX_JSON_DEPTH deep, never RecursionError."""
  try:
    value = json.loads(text, **kwargs)
  except RecursionError:
    raise ValueError(f'JSON nested more than {MAX_JSON_DEPTH} deep') from None
  level = [value]
  for _ in range(MAX_JSON_DEPTH):
    level = [
      c for node in level if isinstance(node, (dict, list)) for c in (node.values() if isinstance(node, dict) else node)
    ]
    if not level:
      return value
  if any(isinstance(node, (dict, list)) for node in level):
    raise ValueError(f'JSON nested more than {MAX_JSON_DEPTH} deep')
  return value


def plain(value: Any) -> Any:
  """A ConfigDict (a config's grader, response_format, tools) as plain dicts and lists in the order its keys were
  written: ConfigDict's to_dict() and items() sort them, and a schema's property order is the order a model is asked
  to write them in (OpenAI's structured outputs keep it: 'reasoning' before 'answer'). Anything else as it is."""
  return json.loads(value.to_json_best_effort()) if hasattr(value, 'to_json_best_effort') else value


def _first(node: Any, where: dict, at: str):
  """(JSON path of the object, its repeat) for the first object in document order that repeats a key."""
  if isinstance(node, dict):
    if id(node) in where:
      return at, where[id(node)]
    children = ((f'{at}.{k}' if at else k, v) for k, v in node.items())
  elif isinstance(node, list):
    children = ((f'{at}[{k}]', v) for k, v in enumerate(node))
  else:
    return None
  for child_at, child in children:
    found = _first(child, where, child_at)
    if found:
      return found
  return None


def did_you_mean(name: str, known, prefix: str = '') -> str:
  """'; did you mean <prefix><closest>?' for the closest of `known`, or ''."""
  close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
  return f'; did you mean {prefix}{close[0]}?' if close else ''
