"""POST a JSON body with retries, deadlines and size limits: the one HTTP path of the host-side tools
(`tools.ToolClient`) and of the `endpoint` grader (docs/tools.md, "When a call fails"; docs/graders.md).

Failures of the server or the network are tried again; a reply's status, body and what went wrong come back as a
`Reply`, never as an exception.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from typing import Callable

# Failures of the server or the network, not of the call: tried again, and discarded when they persist.
RETRIED = ('server_error', 'timeout', 'connection')
# Client statuses that say "not now" (request timeout, rate limited): tried again like a server's, after the reply's
# Retry-After seconds when it gives them (at most the call's timeout_s)
BUSY = (408, 429)


# HTTP --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Reply:
  """The outcome of `post`: `kind` is one of tools.KINDS[:6]; `body` is the last reply's body (b'' when none was
  read)."""

  kind: str
  status: int | None  # the last HTTP status; None when no reply came
  body: bytes
  detail: str  # for failures, one line on what went wrong
  attempts: int
  latency_s: float


_ENV_REF = re.compile(r'\$\{([A-Za-z_][A-Za-z0-9_]*)\}')


def unset_variables(headers: dict[str, str]) -> list[str]:
  """The environment variables that `headers` values name as ${NAME} and the environment lacks."""
  return [name for value in headers.values() for name in _ENV_REF.findall(value) if name not in os.environ]


def _expanded(headers: dict[str, str]) -> dict[str, str]:
  """`headers` with each ${NAME} replaced by that environment variable (stripped of a file's final newline), read
  at send time: a secret named so stays out of the run's config.json, reports and logs."""
  return {k: _ENV_REF.sub(lambda m: os.environ.get(m.group(1), '').strip(), v) for k, v in headers.items()}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
  """A redirected POST would arrive as a GET without its body; a 3xx is the server's answer, not a place to go."""

  def redirect_request(self, *args, **kwargs):
    return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def post(
  url: str,
  payload: bytes,
  headers: dict[str, str],
  timeout_s: float,
  retries: int = 3,
  max_bytes: int = 1_000_000,
  backoff_s: float = 0.05,
  pace: Callable[[], None] | None = None,
) -> Reply:
  """POST a JSON `payload`. 5xx, 408, 429, timeouts and connection errors are tried again, up to `retries` more
  times, after pauses of backoff_s * 2**k (or the reply's Retry-After, up to timeout_s); any other answer is final.
  A reply body over `max_bytes` is not read past the limit (`oversize`). `timeout_s` bounds each attempt, reading
  the reply included. `pace()`, when given, runs before every attempt (a rate limiter). A header value may name
  environment variables as ${NAME}."""
  t0 = time.perf_counter()
  sent = {**_expanded(headers), 'Content-Type': 'application/json'}
  attempt = 0
  while True:
    if pace is not None:
      pace()
    kind, status, body, detail, wait = _attempt(url, payload, sent, timeout_s, max_bytes)
    attempt += 1
    if kind not in RETRIED or attempt > retries:
      return Reply(kind, status, body, detail, attempt, time.perf_counter() - t0)
    time.sleep(max(backoff_s * 2 ** (attempt - 1), min(wait or 0.0, timeout_s)))


def _attempt(url: str, payload: bytes, headers: dict, timeout_s: float, max_bytes: int):
  request = urllib.request.Request(url, data=payload, headers=headers, method='POST')
  deadline = time.monotonic() + timeout_s
  try:
    with _OPENER.open(request, timeout=timeout_s) as response:
      return (*_read(response, response.status, deadline, timeout_s, max_bytes), None)
  except urllib.error.HTTPError as e:
    try:
      with e:
        body = _read(e, e.code, deadline, timeout_s, max_bytes)[2]
    except (OSError, http.client.HTTPException):  # the status is the answer; its body is a courtesy
      body = b''
    text = body.decode('utf-8', 'replace').strip()
    detail = f'HTTP {e.code} from {url}' + (f': {text[:300]}' if text else '')
    after = (e.headers.get('Retry-After') or '').strip() if e.headers is not None else ''
    wait = float(after) if re.fullmatch(r'\d+(?:\.\d+)?', after) else None
    return ('server_error' if e.code >= 500 or e.code in BUSY else 'client_error'), e.code, body, detail, wait
  except TimeoutError:
    return 'timeout', None, b'', f'no answer from {url} within {timeout_s:g} s', None
  except urllib.error.URLError as e:
    if isinstance(e.reason, TimeoutError):
      return 'timeout', None, b'', f'no answer from {url} within {timeout_s:g} s', None
    return 'connection', None, b'', f'cannot reach {url}: {e.reason}', None
  except (http.client.HTTPException, OSError) as e:  # a dropped connection, a garbled status line
    return 'connection', None, b'', f'connection to {url} failed: {type(e).__name__}: {e}', None


def _read(response, status: int, deadline: float, timeout_s: float, max_bytes: int):
  """(kind, status, body, detail) of a reply, reading no more than max_bytes + 1 bytes of it."""
  length = response.headers.get('Content-Length', '')
  if length.isdigit() and int(length) > max_bytes:
    return 'oversize', status, b'', f'the reply is {int(length)} bytes, over the limit of {max_bytes}'
  chunks, size = [], 0
  while chunk := response.read1(min(65536, max_bytes + 1 - size)):
    size += len(chunk)
    if size > max_bytes:
      return 'oversize', status, b'', f'the reply is over the limit of {max_bytes} bytes; reading stopped there'
    if time.monotonic() > deadline:  # a server that trickles bytes would otherwise reset the socket timeout forever
      raise TimeoutError(f'reply not read within {timeout_s:g} s')
    chunks.append(chunk)
  if length.isdigit() and size < int(length):  # the connection closed mid-reply: tried again, as a reset is
    raise http.client.IncompleteRead(b''.join(chunks), int(length) - size)
  return 'ok', status, b''.join(chunks), ''
