"""Agent tools: the `config.tools` list, Hermes-style tool calls in the model's text, and the HTTP client that runs
them (docs/tools.md).

During a rollout the model writes

  <tool_call>{"name": "lookup", "arguments": {"key": "k7"}}</tool_call>

`parse_calls` turns each block into a `ParsedCall`; `ToolClient.call_many` sends a turn's calls to their servers at
once, and each `CallResult.output` is the string the model reads in its next turn. A failing tool never raises: the
model is shown what went wrong, and a call that kept failing on the server's side (`CallResult.discard`) marks its
rollout for discarding, because a reward earned against a broken tool says nothing about the policy.

The wire format is that of OpenAI's Responses API function calls (rftjax/tool_server.py is a server to copy):

  request  POST server_url  {"type": "function_call", "name", "arguments": "<JSON object as a string>", "call_id",
                             "trace_id"}
  reply    200              {"type": "function_call_output", "call_id", "output": "<string>"}

Requests go through `http_post.post`, the one HTTP path of the tools and of the `endpoint` grader.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import http
import http.client
import json
import logging
import pathlib
import re
import urllib.parse
import uuid
from typing import Any, Collection, Sequence

from rftjax import data as data_lib
from rftjax import errors
from rftjax import http_post

log = logging.getLogger(__name__)

# What became of one call. The first six come from `http_post.post` (or, for an oversize request, from the size check
# before it); the last two never reach a server.
KINDS = ('ok', 'client_error', 'server_error', 'timeout', 'connection', 'oversize', 'unknown_tool', 'bad_call')
# Client errors that no call a model writes can cause (credentials, a wrong URL's method): discarded, not retried.
REFUSED = (401, 403, 405, 407)
_FIELDS = ('name', 'server_url', 'headers')
_NAME = re.compile(r'[A-Za-z0-9_-]{1,64}')  # OpenAI's rule for function names
_OPEN, _CLOSE = '<tool_call>', '</tool_call>'
_SHOWN_ERROR_CHARS = 2000  # an HTML error page should not fill the model's context


@dataclasses.dataclass(frozen=True)
class ToolSpec:
  """One entry of `config.tools`. Hashed by name and URL only (a dict is not hashable); headers stay out of its repr,
  since they may hold secrets."""

  name: str
  server_url: str
  headers: dict[str, str] = dataclasses.field(default_factory=dict, hash=False, repr=False)


@dataclasses.dataclass(frozen=True)
class ParsedCall:
  """One `<tool_call>` block. `arguments` is a JSON object as a string, as the Responses API carries it; when the
  block is unusable, `error` is the message the model will be shown instead of a tool's output."""

  name: str
  arguments: str
  error: str | None = None


@dataclasses.dataclass(frozen=True)
class CallResult:
  """What one call came to. `output` is always the string the model is shown; `kind` is one of KINDS."""

  name: str
  call_id: str
  output: str
  kind: str
  latency_s: float  # wall time of every attempt and the pauses between them; 0 for calls never sent
  attempts: int  # requests sent: 0 for unknown_tool, bad_call and an oversize request
  discard: bool  # a server, timeout or connection failure that outlasted every retry, or a REFUSED status


# Config ----------------------------------------------------------------------------------------------------------
def url_problem(url: str) -> str | None:
  """None for an http(s) URL with a host, else what is wrong with it (for messages that also name the field)."""
  try:
    parts = urllib.parse.urlsplit(url)
    _ = parts.port  # raises ValueError for a port that is not a number in range
  except ValueError as e:
    return f'expected an http:// or https:// URL, found {url!r} ({e})'
  if not url.isascii() or any(c.isspace() for c in url):  # http.client sends the request line as ASCII
    return f'expected an ASCII URL without spaces (percent-encode the others: %C3%A9 for é, %20), found {url!r}'
  if parts.scheme not in ('http', 'https') or not parts.hostname:
    hint = (
      " ('{tool_server}' is filled in only by a run with config.tool_server='example', which starts that server)"
      if '{tool_server}' in url
      else ''
    )
    return f'expected an http:// or https:// URL with a host, found {url!r}{hint}'
  return None


def headers_problem(headers: Any) -> str | None:
  """None for an object of string header names and values that urllib can send, else what is wrong with it."""
  if not isinstance(headers, dict):
    return f'expected an object of header name -> string value, found {type(headers).__name__}'
  for key, value in headers.items():
    if not isinstance(key, str) or not isinstance(value, str):
      return f'expected string names and values, found {key!r}: {json.dumps(value)[:80]}'
    if not key or any(c in key + value for c in '\r\n') or any(c in key for c in ' :'):
      return f'expected header names without spaces or colons and values without line breaks, found {key!r}'
    if not key.isascii() or any(ord(c) > 255 for c in value):  # http.client encodes them as Latin-1
      return (
        f'expected ASCII header names and Latin-1 values, found {key!r}: {json.dumps(value, ensure_ascii=False)[:80]}'
      )
  return None


def load_tools(value: Any, where: str = 'config.tools') -> tuple[ToolSpec, ...]:
  """The tools of `config.tools` (or of the flag `where` names): a list of {"name", "server_url", "headers"?}
  objects, or the path of a JSON file (local or gs://) holding one. None or an empty list: no tools. Raises
  errors.ConfigError naming the entry and field (`config.tools[1].server_url`), what was found and expected."""
  source = ''
  if isinstance(value, (str, pathlib.Path)) and str(value):
    source = f' (in {value})'
    value = errors.read_json_file(value, errors.ConfigError, f'{where} file {value}')
  if value is None or value == '':
    return ()
  if not isinstance(value, (list, tuple)):
    raise errors.ConfigError(
      f'{where}{source}: expected a list of {{"name", "server_url", "headers"?}} objects, or the path of a JSON '
      f'file holding one, found {type(value).__name__}'
    )
  specs: list[ToolSpec] = []
  for i, entry in enumerate(value):
    at = f'{where}[{i}]'
    entry = errors.plain(entry)  # a ConfigDict
    if not isinstance(entry, dict):
      raise errors.ConfigError(
        f'{at}{source}: expected an object {{"name", "server_url", "headers"?}}, found {type(entry).__name__}'
      )
    for field in entry:
      if field not in _FIELDS:
        hint = errors.did_you_mean(str(field), _FIELDS)
        raise errors.ConfigError(f'{at}{source}: unknown field {field!r}{hint}; expected {", ".join(_FIELDS)}')
    for field in ('name', 'server_url'):
      if field not in entry:
        raise errors.ConfigError(f'{at}{source}: missing required field {field!r}; found fields {sorted(entry)}')
      if not isinstance(entry[field], str):
        found = f'{type(entry[field]).__name__} {json.dumps(entry[field])[:80]}'
        raise errors.ConfigError(f'{at}.{field}{source}: expected a string, found {found}')
    name = entry['name']
    if not _NAME.fullmatch(name):
      raise errors.ConfigError(
        f'{at}.name{source}: found {name!r}, expected 1 to 64 letters, digits, underscores or hyphens'
      )
    for j, other in enumerate(specs):
      if other.name == name:
        raise errors.ConfigError(
          f'{at}.name{source}: {name!r} is also the name of {where}[{j}]; expected each tool name once'
        )
    problem = url_problem(entry['server_url'])
    if problem:
      raise errors.ConfigError(f'{at}.server_url{source}: {problem}')
    headers = entry.get('headers') or {}
    headers = errors.plain(headers)
    problem = headers_problem(headers)
    if problem:
      raise errors.ConfigError(f'{at}.headers{source}: {problem}')
    specs.append(ToolSpec(name, entry['server_url'], dict(headers)))
  return tuple(specs)


def check_env(specs: Sequence[ToolSpec], where: str = 'config.tools') -> None:
  """ConfigError when a tool's headers name an environment variable (${NAME}) that is not set, before anything
  slow: its calls would go out without the key."""
  for k, spec in enumerate(specs):
    unset = http_post.unset_variables(spec.headers)
    if unset:
      raise errors.ConfigError(
        f'{where}[{k}].headers: ${{{unset[0]}}} names an environment variable that is not set; export {unset[0]}=... '
        'before the command'
      )


# Data --------------------------------------------------------------------------------------------------------------
def offered(item: dict) -> frozenset[str]:
  """The names of the tools a (checked) data row offers."""
  return frozenset(t['name'] for t in row_tools(item, ''))


def row_tools(item: dict, where: str) -> list[dict]:
  """The tools a data row offers, each as {"type": "function", "name", "description", "parameters"} (the chat
  completions shape {"type": "function", "function": {...}} is unwrapped). No "tools" field: []. Raises
  data.DataError naming `where` (file:line) and `tools[j]`."""
  value = item.get('tools')
  if value is None:
    return []
  if not isinstance(value, list):
    raise data_lib.DataError(
      f'{where}: "tools" must be a list of {{"type": "function", "name", ...}} objects, got {type(value).__name__}'
    )
  out: list[dict] = []
  for j, entry in enumerate(value):
    at = f'{where}: tools[{j}]'
    if not isinstance(entry, dict):
      raise data_lib.DataError(f'{at}: expected an object {{"type": "function", "name", ...}}, got {entry!r:.80}')
    if entry.get('type') != 'function':
      raise data_lib.DataError(f'{at}: "type" must be "function", got {json.dumps(entry.get("type"))[:80]}')
    fn = entry.get('function', entry)
    if not isinstance(fn, dict):
      raise data_lib.DataError(f'{at}: "function" must be an object with a "name", got {type(fn).__name__}')
    fn = {k: v for k, v in fn.items() if v is not None}  # the OpenAI SDK writes unset optional fields as null
    name = fn.get('name')
    if not isinstance(name, str) or not name:
      raise data_lib.DataError(f'{at}: expected a string "name", got {json.dumps(name)[:80]}')
    description = fn.get('description', '')
    if not isinstance(description, str):
      raise data_lib.DataError(f'{at}: "description" must be a string, got {type(description).__name__}')
    parameters = fn.get('parameters', {'type': 'object', 'properties': {}})
    if not isinstance(parameters, dict):
      raise data_lib.DataError(f'{at}: "parameters" must be a JSON schema object, got {type(parameters).__name__}')
    if any(t['name'] == name for t in out):
      raise data_lib.DataError(f'{at}: tool {name!r} is offered twice in this row; expected each name once')
    out.append({'type': 'function', 'name': name, 'description': description, 'parameters': parameters})
  return out


def check_data_tools(
  rows: Sequence[tuple[str, dict]], tools: Sequence[ToolSpec], every_tool_offered: bool = True
) -> None:
  """Before anything slow: every tool a row offers is configured, and (`every_tool_offered`, for a run's own data)
  every configured tool is offered by some row. `rows` are ('file:line', row) pairs of every data file the run
  reads. A row naming a tool that config.tools lacks is a data.DataError naming the line; a configured tool no row
  offers is an errors.ConfigError naming its entry. With no tools configured (a one-turn run) the rows' tools are
  part of their prompts only, as in OpenAI's reinforcement fine-tuning: the model writes its calls, the graders read
  them (sample.output_tools), none is run; only their shape is checked."""
  configured = [t.name for t in tools]
  if not configured:
    offering = sum(1 for where, item in rows if isinstance(item, dict) and row_tools(item, where))
    if offering:
      log.info(
        '%d data rows offer tools; config.tools configures none, so the model sees them in its prompt and the '
        'graders read its calls (sample.output_tools), which are not run (docs/tools.md)',
        offering,
      )
    return
  offered: set[str] = set()
  for where, item in rows:
    if not isinstance(item, dict):
      continue  # rftjax.data names rows that are not objects
    for j, tool in enumerate(row_tools(item, where)):
      name = tool['name']
      if name not in configured:
        raise data_lib.DataError(
          f'{where}: tools[{j}] offers tool {name!r}, which config.tools does not configure'
          f'{errors.did_you_mean(name, configured)}; configured: {", ".join(configured) or "none"}'
        )
      offered.add(name)
  for i, name in enumerate(configured):
    if every_tool_offered and name not in offered:
      raise errors.ConfigError(
        f'config.tools[{i}]: tool {name!r} is configured, but no data row offers it (none of the {len(rows)} rows '
        'lists it in "tools"); expected every configured tool in some row\'s "tools", or remove it'
      )


# Parsing -----------------------------------------------------------------------------------------------------------
_EXPECTED = 'expected <tool_call>{"name": "...", "arguments": {...}}</tool_call>'


def has_call(text: str) -> bool:
  return _OPEN in text or bool(_untagged(text))


def parse_calls(text: str) -> list[ParsedCall]:
  """Every `<tool_call> JSON </tool_call>` block of `text`, in order. Never raises: a block the host cannot run is
  a ParsedCall whose `error` says why, in words the model can act on; so is an unclosed block at the end. A turn
  with no block that is one JSON object {"name": ..., "parameters": {...}} (and at most "type") is a call too: the
  untagged form Llama 3.x's chat templates ask for."""
  if _OPEN not in text:
    return _untagged(text)
  calls: list[ParsedCall] = []
  pos = 0
  while (start := text.find(_OPEN, pos)) != -1:
    body_start = start + len(_OPEN)
    end = text.find(_CLOSE, body_start)
    if end == -1:
      call = _parse_body(text[body_start:])
      calls.append(ParsedCall(call.name, '', f'Error: the tool call is not closed; {_EXPECTED}'))
      break
    calls.append(_parse_body(text[body_start:end]))
    pos = end + len(_CLOSE)
  return calls


def _untagged(text: str) -> list[ParsedCall]:
  body = text.strip()
  if not (body.startswith('{') and body.endswith('}') and '"parameters"' in body):
    return []
  try:
    obj = errors.loads_untrusted(body, parse_constant=_no_constant)
  except ValueError:
    return []  # an answer that happens to be JSON-like: not a call
  if not isinstance(obj, dict) or not {'name', 'parameters'} <= obj.keys() <= {'type', 'name', 'parameters'}:
    return []
  return [_parse_body(body)]


def _no_constant(name: str):
  raise ValueError(f'{name} is not a JSON value')


def _parse_body(body: str) -> ParsedCall:
  try:
    obj = errors.loads_untrusted(body, parse_constant=_no_constant)  # NaN would reach the server as invalid JSON
  except ValueError as e:
    msg = f'{e.msg} at line {e.lineno} column {e.colno}' if isinstance(e, json.JSONDecodeError) else str(e)
    return ParsedCall('', '', f'Error: the tool call is not valid JSON ({msg}); {_EXPECTED}')
  if not isinstance(obj, dict):
    return ParsedCall('', '', f'Error: the tool call is a JSON {type(obj).__name__}, not an object; {_EXPECTED}')
  name = obj.get('name')
  if not isinstance(name, str) or not name:
    return ParsedCall('', '', f'Error: the tool call has no string "name"; {_EXPECTED}')
  # a tool without parameters may be called without them; Llama 3.x's templates ask for "parameters"
  arguments = obj.get('arguments', obj.get('parameters', {}))
  if not isinstance(arguments, dict):
    kind = 'null' if arguments is None else type(arguments).__name__
    return ParsedCall(name, '', f'Error: the "arguments" of the call to {name!r} must be a JSON object, not {kind}')
  return ParsedCall(name, json.dumps(arguments, ensure_ascii=False))


# The client --------------------------------------------------------------------------------------------------------
class ToolClient:
  """Runs parsed calls against their tools' servers, a turn's calls at once on a thread pool.

  timeout_s bounds each attempt; retries: extra attempts after a 5xx, timeout or connection error; max_bytes caps
  the request and the reply (neither is sent / read past it); max_workers: calls in flight at once."""

  def __init__(
    self,
    tools: Sequence[ToolSpec],
    timeout_s: float = 60.0,
    retries: int = 3,
    max_bytes: int = 1_000_000,
    max_workers: int = 16,
    backoff_s: float = 0.05,
  ):
    self.tools = {t.name: t for t in tools}
    self.timeout_s, self.retries, self.max_bytes, self.backoff_s = timeout_s, retries, max_bytes, backoff_s
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix='rftjax-tool')

  def call_many(self, calls: Sequence[tuple[ParsedCall, str, Collection[str] | None]]) -> list[CallResult]:
    """One CallResult per (call, trace_id, tools its row offers), in order; the calls run concurrently."""
    futures = [self._pool.submit(self.call, *args) for args in calls]
    return [f.result() for f in futures]

  def call(self, call: ParsedCall, trace_id: str, offered: Collection[str] | None = None) -> CallResult:
    """`offered`: the names of the tools the call's data row offers (None: every configured tool); a tool that is
    configured but not offered to this row is unknown to it, as the model was never shown it."""
    call_id = f'call_{uuid.uuid4().hex[:24]}'  # one id for every attempt, so a server can drop repeats
    result = lambda output, kind: CallResult(call.name, call_id, output, kind, 0.0, 0, False)  # noqa: E731
    if call.error is not None:
      return result(call.error, 'bad_call')
    available = [n for n in self.tools if offered is None or n in offered]
    tool = self.tools.get(call.name) if call.name in available else None
    if tool is None:
      return result(f'Error: unknown tool {call.name!r}; available: {", ".join(available) or "none"}', 'unknown_tool')
    body = {
      'type': 'function_call',
      'name': call.name,
      'arguments': call.arguments,
      'call_id': call_id,
      'trace_id': trace_id,
    }
    payload = json.dumps(body, ensure_ascii=False).encode()
    if len(payload) > self.max_bytes:
      return result(
        f'Error: the call to {call.name!r} is {len(payload)} bytes, over the limit of {self.max_bytes}; it was not '
        'sent',
        'oversize',
      )
    reply = http_post.post(
      tool.server_url, payload, tool.headers, self.timeout_s, self.retries, self.max_bytes, self.backoff_s
    )
    return CallResult(
      call.name,
      call_id,
      self._shown(call.name, reply),
      reply.kind,
      reply.latency_s,
      reply.attempts,
      reply.kind in http_post.RETRIED or (reply.kind == 'client_error' and reply.status in REFUSED),
    )

  def _shown(self, name: str, reply: http_post.Reply) -> str:
    """The string the model reads for `reply`."""
    if reply.kind == 'ok':
      return reply_output(reply.body)
    if reply.kind == 'client_error':
      message = _error_message(reply.body) or _phrase(reply.status)
      if len(message) > _SHOWN_ERROR_CHARS:
        message = message[:_SHOWN_ERROR_CHARS] + f' [... {len(message) - _SHOWN_ERROR_CHARS} more characters]'
      return f'Error {reply.status}: {message}'
    if reply.kind == 'oversize':
      return f'Error: the reply of tool {name!r} is over the limit of {self.max_bytes} bytes; it was not read'
    tries = f'{reply.attempts} attempt' + ('s' if reply.attempts != 1 else '')
    if reply.kind == 'server_error':
      return f'Error: tool {name!r} failed with HTTP {reply.status} ({tries})'
    if reply.kind == 'timeout':
      return f'Error: tool {name!r} did not answer within {self.timeout_s:g} s ({tries})'
    return f'Error: cannot reach tool {name!r} ({tries})'

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)

  def __enter__(self) -> ToolClient:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def reply_output(body: bytes) -> str:
  """The output in a tool's reply: `output` of a {"output": ...} object (a non-string as JSON), or the body as text."""
  text = body.decode('utf-8', 'replace')
  try:
    obj = errors.loads_untrusted(text)
  except ValueError:
    return text
  if isinstance(obj, dict) and 'output' in obj:
    out = obj['output']
    return out if isinstance(out, str) else json.dumps(out, ensure_ascii=False)
  return obj if isinstance(obj, str) else text


def _error_message(body: bytes) -> str:
  """The message of an error reply: its `output`, `error` (or `error.message`), `message` or `detail`, or the text."""
  text = body.decode('utf-8', 'replace').strip()
  try:
    obj = errors.loads_untrusted(text)
  except ValueError:
    return text
  if isinstance(obj, dict):
    for key in ('output', 'error', 'message', 'detail'):
      value = obj.get(key)
      if isinstance(value, dict) and isinstance(value.get('message'), str):
        value = value['message']
      if isinstance(value, str) and value:
        return value
  return text


def _phrase(status: int | None) -> str:
  try:
    return http.HTTPStatus(status).phrase
  except ValueError:
    return 'error'


# Metrics -----------------------------------------------------------------------------------------------------------
class ToolsFailed(RuntimeError):
  """More of a batch's tool calls failed for good (`CallResult.discard`) than `tools_max_error_share` allows: a
  tool server down, hung or refusing the credentials. Rewards earned against it would rank checkpoints by the
  outage, so the run stops."""


def failure_line(results: Sequence[Sequence[CallResult]], max_share: float) -> str | None:
  """None while at most `max_share` of the calls sent failed for good, else one line: '14 of 16 tool calls failed
  for good (88% > tools_max_error_share=50%): connection in 14 (lookup); ...'. Reads `name`, `kind` and `discard`
  (JSON records of calls work as well)."""
  sent = [c for rollout in results for c in rollout if c.kind not in ('unknown_tool', 'bad_call', 'oversize')]
  bad = [c for c in sent if c.discard]
  if not bad or len(bad) <= max_share * len(sent):
    return None
  kinds = collections.Counter(c.kind for c in bad)
  where = lambda kind: ', '.join(sorted({c.name for c in bad if c.kind == kind}))  # noqa: E731
  shown = '; '.join(f'{kind} in {n} ({where(kind)})' for kind, n in kinds.most_common())
  return (
    f'{len(bad)} of {len(sent)} tool calls failed for good ({len(bad) / len(sent):.0%} > tools_max_error_share='
    f"{max_share:.0%}): {shown}; check that config.tools' servers are up, answer within tool_timeout_s and accept "
    'the headers'
  )


def summary(results: Sequence[Sequence[CallResult]], tools: Sequence[ToolSpec] = ()) -> dict[str, float]:
  """Scalars for the metrics writer from each rollout's calls (`results[r]` = rollout r's CallResults).

  tools/calls_per_rollout, tools/calls_per_rollout/<name> (each tool in `tools`, and every name that was called),
  tools/latency_mean_s and tools/latency_max_s (over calls that were sent), tools/errors/<kind> (calls per non-ok
  kind, every kind present), tools/errors/total and tools/discarded_rollouts (rollouts with a discarding call).
  Reads only `name`, `kind`, `latency_s` and `discard` of each call, so JSON records of calls work as well."""
  n = len(results)
  calls = [c for rollout in results for c in rollout]
  per = lambda count: count / n if n else 0.0  # noqa: E731
  out = {'tools/calls_per_rollout': per(len(calls))}
  by_name = collections.Counter({t.name: 0 for t in tools})
  by_name.update(c.name for c in calls if c.kind not in ('unknown_tool', 'bad_call'))  # names a model made up stay out
  for name, count in by_name.items():
    out[f'tools/calls_per_rollout/{name}'] = per(count)
  latencies = [c.latency_s for c in calls if c.latency_s > 0]  # a call never sent has 0
  out['tools/latency_mean_s'] = sum(latencies) / len(latencies) if latencies else 0.0
  out['tools/latency_max_s'] = max(latencies, default=0.0)
  kinds = collections.Counter(c.kind for c in calls if c.kind != 'ok')
  for kind in KINDS[1:]:
    out[f'tools/errors/{kind}'] = float(kinds[kind])
  out['tools/errors/total'] = float(sum(kinds.values()))
  out['tools/discarded_rollouts'] = float(sum(any(c.discard for c in rollout) for rollout in results))
  return out
