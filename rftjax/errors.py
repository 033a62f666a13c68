"""The one channel for bad input: every error a user can fix is a `UserError`, and its message is the whole story.

A message names where the problem is (the `config.` key, the flag, or the file and line), what was found and what
was expected, so the command line tools print it as one `error: ...` line and exit with status 2 (`EXIT_CODE`),
no traceback. Everything else that goes wrong is a bug or an outage and keeps its traceback.

  ConfigError   a `config.*` key or a command-line flag       (runspec.check, hparams, loader, the CLIs)
  DataError     a line of a data file                          (rftjax.data)
  GraderConfigError  a field of a grader spec                  (rftjax.graders)
"""

from __future__ import annotations

import difflib
import json

EXIT_CODE = 2


class UserError(ValueError):
  """Bad input that the user can fix; the message names the key, flag or file:line, what was found and expected."""


class ConfigError(UserError):
  """A `config.*` value or a command-line flag is unusable."""


def read_json_file(path, error: type[UserError], label: str | None = None):
  """The value in a JSON file (a local path or gs://). An unreadable file or invalid JSON raises `error`, its message
  starting with `label` (default: the path) and giving the line and column of bad JSON."""
  from etils import epath

  label = label or str(path)
  try:
    text = epath.Path(path).read_text()
  except OSError as e:
    raise error(f'{label}: cannot read it ({e.strerror or e})') from None
  try:
    return json.loads(text)
  except ValueError as e:
    raise error(f'{label}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})') from None


def did_you_mean(name: str, known, prefix: str = '') -> str:
  """'; did you mean <prefix><closest>?' for the closest of `known`, or ''."""
  close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
  return f'; did you mean {prefix}{close[0]}?' if close else ''
