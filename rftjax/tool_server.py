"""An example tool server: two tools, `calculator` and `lookup`, behind one URL. Read it to write your own.

  python -m rftjax.tool_server --port 8000 [--table table.json]     # table.json: {"k7": "blue", ...}

The host (rftjax/tools.py) POSTs one call per request, in the shape of the Responses API's function call; the
tool is chosen by `name` in the body, not by the path, so every entry of config.tools may point at the same URL:

  POST /   {"type": "function_call", "name": "calculator", "arguments": "{\\"expression\\": \\"12 * (3 + 4)\\"}",
            "call_id": "call_5f0c...", "trace_id": "trace_9a1e..."}
  200      {"type": "function_call_output", "call_id": "call_5f0c...", "output": "84"}

`arguments` is a JSON object encoded as a string (an object is accepted too). `output` is the text the model reads
next; a reply of plain text works as well. An error is a status and {"error": message}:
  400  bad JSON, bad arguments, an expression the calculator refuses     (the model is shown "Error 400: ...")
  404  a tool this server does not have, a key the table does not hold   (the model is shown "Error 404: ...")
  413  a request over 1 MB
  5xx  the tool itself is broken: the host tries again, and discards the rollout when it stays broken
`trace_id` is the same for every call of one episode (the endpoint grader gets it too), so a tool may keep
per-episode state under it; `call_id` is the same for every retry of one call.

The same server is also an `endpoint` grader (docs/graders.md), for the demo (configs/tiny_tools.py): a body with
"sample" instead of "name" is a grading, and scores 1 when the episode's answer is what `lookup` last returned to
that trace_id, else 0. Without --table, `lookup` serves the demo's table, whose one key "secret" holds a digit drawn
afresh for every episode, so only a model that calls the tool can know it:

  POST /grade  {"sample": {"output_text": "7", ...}, "item": {...}, "trace_id": "trace_9a1e..."}
  200          {"score": 1.0}

`serve(table)` runs the server on a thread, for tests and demos; `substitute(config, url)` puts its URL where a run
config says '{tool_server}':
  with tool_server.serve({'k7': 'blue'}) as url:   # http://127.0.0.1:PORT/
    ...
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import hashlib
import http.server
import json
import math
import operator
import sys
import threading
from typing import Any, Iterator

from rftjax import errors

MAX_BYTES = 1_000_000
_MAX_BITS = 4096  # integers past 2**4096 (about 1,200 digits) are refused: `9**9**9` must not stall a thread
_MAX_EXPRESSION = 1000


class ToolError(Exception):
  """Ends a call with an HTTP status and a message the model will read."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


# calculator ------------------------------------------------------------------------------------------------------
_BINARY = {
  ast.Add: operator.add,
  ast.Sub: operator.sub,
  ast.Mult: operator.mul,
  ast.Div: operator.truediv,
  ast.FloorDiv: operator.floordiv,
  ast.Mod: operator.mod,
  ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculate(expression: str) -> str:
  """The value of an arithmetic expression (+ - * / // % **, parentheses, unary minus, ints and floats), as text:
  an integral float without '.0'. The expression is walked as a syntax tree, never run; ValueError says why not."""
  if len(expression) > _MAX_EXPRESSION:
    raise ValueError(f'the expression is {len(expression)} characters; at most {_MAX_EXPRESSION} are accepted')
  try:
    tree = ast.parse(expression.strip(), mode='eval')
  except (SyntaxError, ValueError, RecursionError) as e:
    raise ValueError(f'cannot parse {expression[:100]!r}: {getattr(e, "msg", e)}') from None
  try:
    value = _value(tree.body)
  except ZeroDivisionError:
    raise ValueError('division by zero') from None
  except (OverflowError, RecursionError):
    raise ValueError('the result is too large') from None
  if isinstance(value, float):
    if not math.isfinite(value):
      raise ValueError('the result is too large')
    if value.is_integer() and abs(value) < 1e16:  # past that, float digits are not the integer's
      return str(int(value))
  return str(value)


def _value(node: ast.AST) -> int | float:
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # not bool, complex or str
    return node.value
  if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
    return _UNARY[type(node.op)](_value(node.operand))
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
    left, right = _value(node.left), _value(node.right)
    if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and right > 0:
      if max(left.bit_length(), 1) * right > _MAX_BITS:
        raise OverflowError
    value = _BINARY[type(node.op)](left, right)
    if isinstance(value, complex):  # (-8) ** 0.5
      raise ValueError('the result is not a real number')
    if isinstance(value, int) and value.bit_length() > _MAX_BITS:
      raise OverflowError
    return value
  raise ValueError(f'{ast.unparse(node)!r} is not allowed; expected numbers, + - * / // % **, and parentheses')


# The tools ------------------------------------------------------------------------------------------------------
class Episodes:
  """What the server keeps per episode (trace_id): the last value `lookup` returned, which the grading route
  compares answers with. Shared by the handler threads; the oldest episodes are forgotten."""

  def __init__(self, table: dict[str, str], draw_secret: bool, keep: int = 100_000):
    self.table, self.draw_secret, self.keep = table, draw_secret, keep
    self.returned: collections.OrderedDict[str, str] = collections.OrderedDict()
    self.lock = threading.Lock()

  def _remember(self, store: collections.OrderedDict, trace_id: str, value: str) -> None:
    store[trace_id] = value
    store.move_to_end(trace_id)
    while len(store) > self.keep:
      store.popitem(last=False)

  def lookup(self, key: str, trace_id: str) -> str:
    with self.lock:
      if key in self.table:
        value = self.table[key]
      elif key == 'secret' and self.draw_secret:  # the demo's: one digit per episode, the same on every lookup
        # a digit drawn from the trace id: new for every episode, and the same again when a run is repeated
        value = str(int(hashlib.sha256(trace_id.encode()).hexdigest(), 16) % 10)
      else:
        raise ToolError(404, f'no such key {key!r}')
      self._remember(self.returned, trace_id, value)
      return value

  def score(self, answer: str, trace_id: str) -> float:
    """1.0 when the episode's answer is what `lookup` last returned to it, else 0.0 (also when it never looked)."""
    with self.lock:
      expected = self.returned.get(trace_id)
    return float(expected is not None and answer.strip() == expected.strip())


def _calculator(arguments: dict, episodes: Episodes, trace_id: str) -> str:
  expression = arguments.get('expression')
  if not isinstance(expression, str):
    raise ToolError(400, 'expected arguments {"expression": "<arithmetic, e.g. 12 * (3 + 4)>"}')
  try:
    return calculate(expression)
  except ValueError as e:
    raise ToolError(400, str(e)) from None


def _lookup(arguments: dict, episodes: Episodes, trace_id: str) -> str:
  key = arguments.get('key')
  if not isinstance(key, str):
    raise ToolError(400, 'expected arguments {"key": "<string>"}')
  return episodes.lookup(key, trace_id)


TOOLS = {'calculator': _calculator, 'lookup': _lookup}


def answer(body: bytes, episodes: Episodes) -> tuple[int, dict[str, Any]]:
  """(status, reply object) for one request body: a tool call, or (a body with "sample") a grading."""
  try:
    call = errors.loads_untrusted(body)
  except ValueError as e:
    return 400, {'error': f'the request is not JSON: {e}'}
  if isinstance(call, dict) and 'sample' in call and 'name' not in call:
    return _grade(call, episodes)
  if not isinstance(call, dict) or not isinstance(call.get('name'), str):
    return 400, {'error': 'expected {"type": "function_call", "name", "arguments", "call_id"}'}
  name, arguments = call['name'], call.get('arguments', '{}')
  if name not in TOOLS:
    return 404, {'error': f'no tool named {name!r}; this server has {", ".join(TOOLS)}'}
  if isinstance(arguments, str):
    try:
      arguments = errors.loads_untrusted(arguments)
    except ValueError as e:
      return 400, {'error': f'arguments are not JSON: {e}'}
  if not isinstance(arguments, dict):
    return 400, {'error': f'arguments must be a JSON object, found {type(arguments).__name__}'}
  try:
    output = TOOLS[name](arguments, episodes, str(call.get('trace_id') or ''))
  except ToolError as e:
    return e.status, {'error': str(e)}
  except Exception as e:  # a tool's own bug: the caller hears of it as a server error (docs/tools.md)
    print(f'tool_server: the tool {name!r} failed: {type(e).__name__}: {e}', file=sys.stderr, flush=True)
    return 500, {'error': f'the tool {name!r} failed: {type(e).__name__}: {e}'}
  return 200, {'type': 'function_call_output', 'call_id': call.get('call_id'), 'output': output}


def _grade(request: dict, episodes: Episodes) -> tuple[int, dict[str, Any]]:
  """An `endpoint` grader's request: {"sample": {"output_text", ...}, "item", "trace_id"} -> {"score"}."""
  sample, trace_id = request.get('sample'), request.get('trace_id')
  if not isinstance(sample, dict) or not isinstance(sample.get('output_text'), str) or not isinstance(trace_id, str):
    return 400, {'error': 'expected {"sample": {"output_text": "..."}, "item": {...}, "trace_id": "..."}'}
  return 200, {'score': episodes.score(sample['output_text'], trace_id)}


# The server ------------------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
  episodes: Episodes  # set per server by `make_server`
  protocol_version = 'HTTP/1.1'
  timeout = 30  # seconds a connection may wait for bytes: a body shorter than its Content-Length ends, not hangs

  def do_POST(self):
    length = self.headers.get('Content-Length', '')
    if not (length.isascii() and length.isdigit()):  # '²' is a digit to isdigit, not to int
      self._reply(411, {'error': 'expected a Content-Length header'}, close=True)
    elif int(length) > MAX_BYTES:  # refused unread; closing keeps the unread body from posing as the next request
      self._reply(413, {'error': f'the request is {length} bytes, over the limit of {MAX_BYTES}'}, close=True)
    else:
      self._reply(*answer(self.rfile.read(int(length)), self.episodes))

  def do_GET(self):  # a health check, and a way to see what is served
    self._reply(200, {'tools': list(TOOLS)})

  def _reply(self, status: int, obj: dict, close: bool = False) -> None:
    data = json.dumps(obj).encode()
    self.send_response(status)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    if close:
      self.send_header('Connection', 'close')
      self.close_connection = True
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):  # one line per call on stderr would drown a training log
    pass


def make_server(table: dict[str, str] | None = None, port: int = 0, host: str = '127.0.0.1'):
  """A ThreadingHTTPServer (not yet serving) for the tools above, `lookup` reading `table`; None: the demo's table,
  whose only key, "secret", holds a digit drawn afresh for every episode. Port 0: a free one."""
  episodes = Episodes(dict(table or {}), draw_secret=table is None)
  handler = type('Handler', (_Handler,), {'episodes': episodes})
  # socketserver's listen backlog of 5 drops the connections of a step's concurrent calls past the fifth, and the
  # client's SYN retry then waits a whole second (measured: 1.0 s grading latency for 16 rollouts)
  server_class = type('Server', (http.server.ThreadingHTTPServer,), {'request_queue_size': 256})
  server = server_class((host, port), handler)
  server.daemon_threads = True
  return server


@contextlib.contextmanager
def serve(table: dict[str, str] | None = None, port: int = 0, host: str = '127.0.0.1') -> Iterator[str]:
  """Serves on a daemon thread while the block runs; yields the base URL, http://HOST:PORT/."""
  server = make_server(table, port, host)
  # a short poll interval: shutdown() waits for it, and tests start and stop servers often
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), name='rftjax-tool-server', daemon=True)
  thread.start()
  try:
    yield f'http://{host}:{server.server_address[1]}/'
  finally:
    server.shutdown()
    server.server_close()
    thread.join()


PLACEHOLDER = '{tool_server}'


@contextlib.contextmanager
def serving_for(config) -> Iterator:
  """A run config ready to run, for as long as the block runs: with config.tool_server='example' a new example
  server is started and `substitute`d for '{tool_server}' (or, in a finished run's config.json, for the URL its
  own server had, config.tool_server_url); any other config is yielded as it is."""
  if config is None or config.get('tool_server') != 'example':
    yield config
    return
  with serve() as url:
    yield substitute(config, url, placeholder=config.get('tool_server_url') or PLACEHOLDER)


def substitute(config, url: str, placeholder: str = PLACEHOLDER):
  """A copy of a run config in which '{tool_server}' stands for `url` (a running server's, from `serve`): in the
  server_url of every config.tools entry, and in the url / base_url fields of the grader. A grader given as a file
  is read, its content put in config.grader and its path in config.grader_file (as runspec.resolve does). The URL
  is kept in config.tool_server_url, so that a finished run's config (config.json) can be pointed at a new server
  (`placeholder`: that old URL; `serving_for` does it)."""
  from rftjax.graders import spec as grader_spec  # only runs that start the server need the graders here

  def fill(node, keys):
    if isinstance(node, dict):
      return {k: v.replace(placeholder, url) if k in keys and isinstance(v, str) else fill(v, keys)
              for k, v in node.items()}  # fmt: skip
    if isinstance(node, (list, tuple)):
      return [fill(v, keys) for v in node]
    return node

  config = config.copy_and_resolve_references()
  value = config.get('tools')
  if isinstance(value, str) and value:
    value = errors.read_json_file(value, errors.ConfigError, f'config.tools file {value}')
  grader = config.get('grader')
  with config.unlocked(), config.ignore_type():
    if isinstance(value, (list, tuple)):
      config.tools = tuple(fill(errors.plain(e), ('server_url',)) for e in value)
    if grader not in (None, ''):
      if isinstance(grader, str):
        config.grader_file = grader
      config.grader = fill(grader_spec.load(grader), ('url', 'base_url'))
    config.tool_server_url = url
  return config


def _table(path: str | None) -> dict[str, str] | None:
  if not path:
    return None
  table = errors.read_json_file(path, errors.ConfigError, f'--table {path}')
  if not isinstance(table, dict):
    raise errors.ConfigError(f'--table {path}: expected a JSON object of key -> value, found {type(table).__name__}')
  return {k: v if isinstance(v, str) else json.dumps(v) for k, v in table.items()}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m rftjax.tool_server', description=__doc__.split('\n\n')[0])
  p.add_argument('--port', type=int, default=8000)
  p.add_argument('--host', default='127.0.0.1', help='0.0.0.0 to accept calls from other machines')
  p.add_argument('--table', help='JSON file of the key -> value table `lookup` reads (default: the demo\'s "secret")')
  args = p.parse_args(argv)
  try:
    table = _table(args.table)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return errors.EXIT_CODE
  try:
    server = make_server(table, args.port, args.host)
  except (OSError, OverflowError) as e:  # a port in use or out of range, a host this machine does not have
    print(f'error: --host {args.host} --port {args.port}: cannot listen there ({e})', file=sys.stderr)
    return errors.EXIT_CODE
  print(f'serving {", ".join(TOOLS)} at http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)', flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
  return 0


if __name__ == '__main__':
  sys.exit(main())
