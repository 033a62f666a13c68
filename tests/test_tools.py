"""Agent tools: config and data errors, `<tool_call>` parsing, the example server, and the HTTP client against real
servers on 127.0.0.1 (failures retried or not, discarded or not, exactly as docs/tools.md's table says)."""

import collections
import http.client
import http.server
import json
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

import ml_collections
import pytest

import local_http

from rftjax import chat_template
from rftjax import data
from rftjax import errors
from rftjax import graders
from rftjax import tool_server
from rftjax import tools

FAST = dict(timeout_s=2.0, retries=3, backoff_s=0.01)


def call(name, **arguments):
  return tools.ParsedCall(name, json.dumps(arguments))


# Config ----------------------------------------------------------------------------------------------------------
def test_load_tools_good_and_empty(tmp_path):
  value = [
    {'name': 'lookup', 'server_url': 'http://127.0.0.1:8000/lookup', 'headers': {'Authorization': 'Bearer x'}},
    {'name': 'calculator', 'server_url': 'https://tools.example.com'},
  ]
  specs = tools.load_tools(value)
  assert [(t.name, t.server_url, t.headers) for t in specs] == [
    ('lookup', 'http://127.0.0.1:8000/lookup', {'Authorization': 'Bearer x'}),
    ('calculator', 'https://tools.example.com', {}),
  ]
  assert 'Bearer' not in repr(specs[0]) and len({*specs}) == 2  # hashable; secrets stay out of logs
  path = tmp_path / 'tools.json'
  path.write_text(json.dumps(value))
  assert tools.load_tools(str(path)) == specs
  assert tools.load_tools(None) == tools.load_tools([]) == tools.load_tools('') == ()


@pytest.mark.parametrize(
  'value, message',
  [
    ({'name': 'x'}, r'^config\.tools: expected a list of .* found dict'),
    (['lookup'], r'^config\.tools\[0\]: expected an object .* found str'),
    ([{'name': 'a', 'server_url': 'http://h', 'url': 'x'}], r"^config\.tools\[0\]: unknown field 'url'"),
    ([{'server_url': 'http://h'}], r"^config\.tools\[0\]: missing required field 'name'; found fields"),
    ([{'name': 3, 'server_url': 'http://h'}], r'^config\.tools\[0\]\.name: expected a string, found int 3'),
    ([{'name': 'my tool', 'server_url': 'http://h'}], r"^config\.tools\[0\]\.name: found 'my tool', expected 1 to"),
    (
      [{'name': 'a', 'server_url': 'http://h'}, {'name': 'a', 'server_url': 'http://g'}],
      r"^config\.tools\[1\]\.name: 'a' is also the name of config\.tools\[0\]; expected each tool name once",
    ),
    ([{'name': 'a', 'server_url': 'ftp://h/x'}], r'^config\.tools\[0\]\.server_url: expected an http:// or https:// '),
    ([{'name': 'a', 'server_url': 'localhost:8000'}], r'^config\.tools\[0\]\.server_url: expected an http'),
    ([{'name': 'a', 'server_url': 'http://h:99999'}], r'^config\.tools\[0\]\.server_url: expected an http'),
    ([{'name': 'a', 'server_url': 'http://h', 'headers': ['x']}], r'^config\.tools\[0\]\.headers: expected an object'),
    (
      [{'name': 'a', 'server_url': 'http://h', 'headers': {'X-Key': 5}}],
      r"^config\.tools\[0\]\.headers: expected string names and values, found 'X-Key': 5",
    ),
    ([{'name': 'a', 'server_url': 'http://h', 'headers': {'X': 'a\nb'}}], r'^config\.tools\[0\]\.headers: .*line br'),
    # http.client sends these as ASCII / Latin-1: each was a UnicodeEncodeError at the first call, mid-run
    ([{'name': 'a', 'server_url': 'http://h/café'}], r'^config\.tools\[0\]\.server_url: expected an ASCII URL'),
    ([{'name': 'a', 'server_url': 'http://h/a b'}], r'^config\.tools\[0\]\.server_url: expected an ASCII URL'),
    (
      [{'name': 'a', 'server_url': 'http://h', 'headers': {'Authorization': 'Bearer s€cret'}}],
      r'^config\.tools\[0\]\.headers: expected ASCII header names and Latin-1 values',
    ),
  ],
)
def test_load_tools_errors_name_the_entry_and_field(value, message):
  with pytest.raises(errors.ConfigError, match=message):
    tools.load_tools(value)


def test_load_tools_file_errors(tmp_path):
  bad = tmp_path / 'tools.json'
  bad.write_text('[{"name": "a",]')
  with pytest.raises(errors.ConfigError, match=r'^config\.tools file .*tools\.json: not valid JSON \(line 1'):
    tools.load_tools(str(bad))
  bad.write_text('[{"name": "a", "server_url": "nope"}]')
  with pytest.raises(errors.ConfigError, match=r'^config\.tools\[0\]\.server_url \(in .*tools\.json\): expected'):
    tools.load_tools(str(bad))


# Data ------------------------------------------------------------------------------------------------------------
SPECS = tools.load_tools(
  [{'name': 'lookup', 'server_url': 'http://127.0.0.1:9/'}, {'name': 'calculator', 'server_url': 'http://127.0.0.1:9/'}]
)
LOOKUP = {'type': 'function', 'name': 'lookup', 'description': 'Look a key up', 'parameters': {'type': 'object'}}
CALC_CHAT = {'type': 'function', 'function': {'name': 'calculator', 'parameters': {'type': 'object'}}}


def test_row_tools_accepts_both_shapes():
  assert tools.row_tools({'tools': [LOOKUP, CALC_CHAT]}, 'd.jsonl:1') == [
    LOOKUP,
    {'type': 'function', 'name': 'calculator', 'description': '', 'parameters': {'type': 'object'}},
  ]
  assert tools.row_tools({'messages': []}, 'd.jsonl:1') == []
  # the OpenAI SDK's model_dump() writes unset optional fields as null: they are absent, not wrong
  nulls = {'name': 'lookup', 'description': None, 'parameters': None, 'strict': None}
  expected = [
    {'type': 'function', 'name': 'lookup', 'description': '', 'parameters': {'type': 'object', 'properties': {}}}
  ]
  assert tools.row_tools({'tools': [{'type': 'function', **nulls}]}, 'd.jsonl:1') == expected
  assert tools.row_tools({'tools': [{'type': 'function', 'function': nulls}]}, 'd.jsonl:1') == expected
  assert chat_template.chat_completions_tools([{'type': 'function', 'function': nulls}]) == [
    {'type': 'function', 'function': {'name': 'lookup'}}
  ]
  tools.check_data_tools([('d.jsonl:1', {'tools': [LOOKUP]}), ('d.jsonl:2', {'tools': [CALC_CHAT]})], SPECS)


def test_data_and_config_must_agree():
  rows = [('d.jsonl:1', {'tools': [LOOKUP]}), ('d.jsonl:2', {'tools': [LOOKUP, {'type': 'function', 'name': 'lookp'}]})]
  with pytest.raises(data.DataError) as e:
    tools.check_data_tools(rows, SPECS)
  assert str(e.value) == (
    "d.jsonl:2: tools[1] offers tool 'lookp', which config.tools does not configure; did you mean lookup?; "
    'configured: lookup, calculator'
  )
  with pytest.raises(errors.ConfigError, match=r"^config\.tools\[1\]: tool 'calculator' is configured, but no data"):
    tools.check_data_tools(rows[:1], SPECS)


def test_without_configured_tools_the_rows_tools_are_prompt_only(caplog):
  """OpenAI's RFT rows offer tools that nothing runs: the model writes the call and the grader reads it. Before,
  such a row was refused ('configured: none') and an OpenAI job with tools could not start."""
  rows = [('d.jsonl:1', {'tools': [LOOKUP]}), ('d.jsonl:2', {'messages': []}), ('d.jsonl:3', {'tools': [CALC_CHAT]})]
  with caplog.at_level('INFO', logger='rftjax.tools'):
    tools.check_data_tools(rows, ())
  assert [m for m in caplog.messages if m.startswith('2 data rows offer tools; config.tools configures none')]
  with pytest.raises(data.DataError, match=r'^d\.jsonl:4: tools\[0\]: "type" must be "function"'):
    tools.check_data_tools([('d.jsonl:4', {'tools': [{'type': 'web_search'}]})], ())  # still checked


@pytest.mark.parametrize(
  'row_tools, message',
  [
    ({'type': 'function', 'name': 'lookup'}, r'^d\.jsonl:4: "tools" must be a list'),
    (['lookup'], r'^d\.jsonl:4: tools\[0\]: expected an object'),
    ([{'type': 'web_search'}], r'^d\.jsonl:4: tools\[0\]: "type" must be "function", got "web_search"'),
    ([LOOKUP, {'type': 'function'}], r'^d\.jsonl:4: tools\[1\]: expected a string "name", got null'),
    ([{'type': 'function', 'function': 'lookup'}], r'^d\.jsonl:4: tools\[0\]: "function" must be an object'),
    ([{**LOOKUP, 'parameters': '{}'}], r'^d\.jsonl:4: tools\[0\]: "parameters" must be a JSON schema object'),
    ([{**LOOKUP, 'description': 1}], r'^d\.jsonl:4: tools\[0\]: "description" must be a string'),
    ([LOOKUP, LOOKUP], r"^d\.jsonl:4: tools\[1\]: tool 'lookup' is offered twice"),
  ],
)
def test_malformed_row_tools(row_tools, message):
  with pytest.raises(data.DataError, match=message):
    tools.check_data_tools([('d.jsonl:4', {'tools': row_tools})], SPECS)


# Parsing ---------------------------------------------------------------------------------------------------------
def test_parse_calls():
  text = (
    'Let me look.\n<tool_call>\n  {"name": "lookup", "arguments": {"key": "k7"}}\n</tool_call>\n'
    '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call> then'
    '<tool_call>{"name": "ping"}</tool_call>'
  )
  assert tools.has_call(text) and not tools.has_call('no calls here')
  assert tools.parse_calls(text) == [
    tools.ParsedCall('lookup', '{"key": "k7"}'),
    tools.ParsedCall('calculator', '{"expression": "1+1"}'),
    tools.ParsedCall('ping', '{}'),  # no arguments: an empty object
  ]
  # Llama 3.x's templates ask for "parameters": they were dropped (the call ran with no arguments)
  llama = '<tool_call>{"name": "lookup", "parameters": {"key": "k7"}}</tool_call>'
  assert tools.parse_calls(llama) == [tools.ParsedCall('lookup', '{"key": "k7"}')]
  assert tools.parse_calls('plain answer') == []


@pytest.mark.parametrize(
  'body, name, message',
  [
    ('{"name": "lookup", "arguments": {"key": }', '', r'^Error: the tool call is not valid JSON \(Expecting value at'),
    ('["lookup"]', '', r'^Error: the tool call is a JSON list, not an object; expected <tool_call>\{"name"'),
    ('{"arguments": {}}', '', r'^Error: the tool call has no string "name"'),
    (
      '{"name": "lookup", "arguments": "k7"}',
      'lookup',
      r"^Error: the \"arguments\" of the call to 'lookup' must .*str",
    ),
    ('{"name": "lookup", "arguments": null}', 'lookup', r'must be a JSON object, not null'),
    ('{"name": "lookup", "arguments": {"x": NaN}}', '', r'^Error: the tool call is not valid JSON \(NaN is not a JSON'),
  ],
)
def test_parse_calls_malformed(body, name, message):
  (parsed,) = tools.parse_calls(f'<tool_call>{body}</tool_call>')
  assert parsed.name == name and parsed.arguments == ''
  assert parsed.error is not None and re.search(message, parsed.error), parsed.error


def test_parse_calls_unclosed_at_the_end():
  ok, unclosed = tools.parse_calls(
    '<tool_call>{"name": "lookup", "arguments": {"key": "a"}}</tool_call> <tool_call>{"name": "lookup", "argu'
  )
  assert ok == tools.ParsedCall('lookup', '{"key": "a"}')
  assert unclosed.error.startswith('Error: the tool call is not closed; expected <tool_call>')
  (whole,) = tools.parse_calls('<tool_call>{"name": "lookup", "arguments": {}}')  # JSON fine, just never closed
  assert whole.name == 'lookup' and whole.error.startswith('Error: the tool call is not closed')


def test_calls_and_replies_nested_past_the_json_limit_are_bad_calls_and_text():
  deep = '[' * 1000
  closed, unclosed = (
    tools.parse_calls(f'<tool_call>{{"name": "f", "arguments": {deep}{end}') for end in ('</tool_call>', '')
  )
  assert closed[0].arguments == '' and 'not valid JSON (JSON nested more than 100 deep)' in closed[0].error
  assert unclosed[0].arguments == '' and unclosed[0].error.startswith('Error: the tool call is not closed')
  assert tools.parse_calls('{"name": "f", "parameters": ' + deep + ']' * 1000 + '}') == []  # untagged: an answer
  assert tools.reply_output(('{"output": ' + deep).encode()) == '{"output": ' + deep  # the body as text
  with pytest.raises(data.DataError, match=r'f.jsonl:3: not valid JSON \(JSON nested more than 100 deep\)'):
    errors.json_loads('{"a": ' + deep + ']' * 1000 + '}', data.DataError, 'f.jsonl:3', in_file=False)


# The example server ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def example():
  with tool_server.serve({'k7': 'blue', 'k8': 'green'}) as url:
    yield url


def test_example_server_through_the_client(example):
  specs = tools.load_tools(
    [{'name': 'lookup', 'server_url': example + 'lookup'}, {'name': 'calculator', 'server_url': example}]
  )
  calls = [
    call('calculator', expression='12 * (3 + 4)'),
    call('calculator', expression='7 / 2'),
    call('calculator', expression='2 ** 10 - -1'),
    call('calculator', expression='8 / 4'),
    call('lookup', key='k7'),
    call('lookup', key='nope'),
    call('calculator', expression='1 / 0'),
    call('calculator', expression='__import__("os")'),
    call('calculator', expression='9 ** 9 ** 9'),
  ]
  with tools.ToolClient(specs, **FAST) as client:
    res = client.call_many([(c, 'trace_1') for c in calls])
  assert [r.output for r in res[:5]] == ['84', '3.5', '1025', '2', 'blue']
  assert all(r.kind == 'ok' and r.attempts == 1 and not r.discard for r in res[:5])
  assert [(r.kind, r.output) for r in res[5:7]] == [
    ('client_error', "Error 404: no such key 'nope'"),
    ('client_error', 'Error 400: division by zero'),
  ]
  assert res[7].output.startswith('Error 400: "__import__(\'os\')" is not allowed; expected numbers, + - * /')
  assert res[8].output == 'Error 400: the result is too large'
  assert len({r.call_id for r in res}) == len(res) and all(r.call_id.startswith('call_') for r in res)


def test_example_server_refusals(example):
  host, port = example.split('//')[1].rstrip('/').split(':')
  conn = http.client.HTTPConnection(host, int(port), timeout=5)

  def ask(body, headers=None):
    conn.request('POST', '/any/path', body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, json.loads(r.read())

  assert ask(json.dumps({'name': 'lookup', 'arguments': {'key': 'k8'}})) == (
    200,
    {'type': 'function_call_output', 'call_id': None, 'output': 'green'},
  )
  assert ask(json.dumps({'name': 'shell', 'arguments': '{}'}))[0] == 404
  assert ask('not json')[0] == 400
  assert ask(json.dumps({'name': 'lookup', 'arguments': '[1]'}))[0] == 400
  assert ask(json.dumps({'name': 'lookup', 'arguments': '{"key": 3}'}))[0] == 400
  assert ask('[' * 100_000)[0] == 400  # too deep for a JSON reader: refused, not a dropped connection
  assert ask(json.dumps({'name': 'lookup', 'arguments': '[' * 100_000}))[0] == 400
  # over 1 MB: refused from the header alone (the body is never read, so none is sent here)
  status, reply = ask(b'{}', {'Content-Length': str(tool_server.MAX_BYTES + 1)})
  assert status == 413 and 'over the limit' in reply['error']
  conn.close()
  conn = http.client.HTTPConnection(host, int(port), timeout=5)  # 411 closed the connection
  assert ask(b'{}', {'Content-Length': '\u00b2'.encode().decode('latin-1')})[0] == 411  # a digit to isdigit only
  conn.close()


def test_example_server_answers_500_for_a_tool_that_raises(monkeypatch, capsys):
  def broken(arguments, episodes, trace_id):
    raise KeyError('oops')

  monkeypatch.setitem(tool_server.TOOLS, 'broken', broken)
  with tool_server.serve() as url:
    with tools.ToolClient(tools.load_tools([{'name': 'broken', 'server_url': url}]), **FAST) as client:
      (res,) = client.call_many([(call('broken'), 't')])
  assert (res.kind, res.attempts, res.discard) == ('server_error', 4, True), res
  assert "the tool 'broken' failed: KeyError: 'oops'" in capsys.readouterr().err


def test_example_server_lets_a_short_body_time_out(monkeypatch):
  assert 0 < (tool_server._Handler.timeout or 0) <= 60  # the socketserver default is None: wait forever
  monkeypatch.setattr(tool_server._Handler, 'timeout', 0.5)
  with tool_server.serve() as url:
    host, port = url.split('//')[1].rstrip('/').split(':')
    with socket.create_connection((host, int(port)), timeout=5) as sock:
      sock.sendall(b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"name"')
      t0 = time.perf_counter()
      assert sock.recv(100) == b''  # the server hangs up once the body stops coming
      assert time.perf_counter() - t0 < 4


def test_example_server_command_line(tmp_path):
  table = tmp_path / 'table.json'
  table.write_text(json.dumps({'k7': 'blue', 'n': 3}))
  cmd = [sys.executable, '-m', 'rftjax.tool_server', '--port', '0', '--table', str(table)]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=pathlib.Path(__file__).parents[1])
  try:
    url = re.search(r'http://\S+/', proc.stdout.readline()).group(0)
    specs = tools.load_tools([{'name': 'lookup', 'server_url': url}])
    with tools.ToolClient(specs, **FAST) as client:
      res = client.call_many([(call('lookup', key='k7'), 't'), (call('lookup', key='n'), 't')])
    assert [r.output for r in res] == ['blue', '3']  # non-string table values are served as JSON
  finally:
    proc.terminate()
    proc.wait(timeout=10)


def test_example_server_command_line_port_in_use(example):
  port = example.split(':')[-1].rstrip('/')
  cmd = [sys.executable, '-m', 'rftjax.tool_server', '--port', port]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=pathlib.Path(__file__).parents[1])
  assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr
  assert out.stderr.startswith(f'error: --host 127.0.0.1 --port {port}: cannot listen there ([Errno 98]')


def test_example_server_demo_secret_and_grading():
  with tool_server.serve() as url:  # no table: the demo's, a secret digit per episode
    specs = tools.load_tools([{'name': 'lookup', 'server_url': url}])
    with tools.ToolClient(specs, **FAST) as client:
      a1, a2, b = client.call_many([(call('lookup', key='secret'), t) for t in ('trace_a', 'trace_a', 'trace_b')])
      (other,) = client.call_many([(call('lookup', key='k7'), 'trace_a')])
    assert a1.output == a2.output and a1.output in '0123456789' and b.output in '0123456789'
    assert other.output == "Error 404: no such key 'k7'"
    grader = graders.build({'type': 'endpoint', 'url': url + 'grade', 'pass_threshold': 1.0})
    res = grader.grade_batch([f' {a1.output}\n', 'x', b.output, '3'], [{}] * 4, ['trace_a', 'trace_a', 'trace_b', 'n'])
    assert [r.reward for r in res] == [1.0, 0.0, 1.0, 0.0]  # 'n' never looked: nothing to match
  with tool_server.serve({}) as url, tools.ToolClient(tools.load_tools([{'name': 'lookup', 'server_url': url}])) as c:
    assert c.call_many([(call('lookup', key='secret'), 't')])[0].kind == 'client_error'  # a table given: only it


def test_substitute_puts_the_server_url_in_the_config(tmp_path):
  grader = tmp_path / 'grader.json'
  grader.write_text(json.dumps({'type': 'endpoint', 'name': 'secret', 'url': '{tool_server}grade'}))
  config = ml_collections.ConfigDict(
    {'tools': ({'name': 'lookup', 'server_url': '{tool_server}', 'headers': {'X': '{tool_server}'}},), 'grader': ''}
  )
  config.grader = str(grader)
  config.lock()
  out = tool_server.substitute(config, 'http://127.0.0.1:4321/')
  assert out.tools == ({'name': 'lookup', 'server_url': 'http://127.0.0.1:4321/', 'headers': {'X': '{tool_server}'}},)
  assert out.grader.to_dict() == {'type': 'endpoint', 'name': 'secret', 'url': 'http://127.0.0.1:4321/grade'}
  assert out.grader_file == str(grader) and config.grader == str(grader)  # the original is untouched
  assert tools.load_tools(out.tools)[0].server_url == 'http://127.0.0.1:4321/'


def test_calculator_arithmetic():
  cases = {'1 + 2 * 3': '7', '(1 + 2) * 3': '9', '7 // 2': '3', '-7 % 3': '2', '2 ** -1': '0.5', '-2 ** 2': '-4',
           '0.1 + 0.2': '0.30000000000000004', '3.0 * 2': '6', '+5': '5'}  # fmt: skip
  assert {e: tool_server.calculate(e) for e in cases} == cases
  for bad in ('x + 1', 'True + 1', '"a" * 3', '(-8) ** 0.5', '1e308 * 10', 'abs(-1)', '1 +'):
    with pytest.raises(ValueError):
      tool_server.calculate(bad)


# The client against scripted servers -------------------------------------------------------------------------------
class _Scripted(local_http.Handler):
  """The tool named in the body picks the behaviour; what arrived is recorded on the class."""

  seen: list = []
  attempts: collections.Counter = collections.Counter()
  in_flight = 0
  max_in_flight = 0
  lock = threading.Lock()

  def do_POST(self):
    body = self.json_body()
    cls = type(self)
    with cls.lock:
      cls.seen.append((body, dict(self.headers)))
      cls.attempts[body['name']] += 1
      cls.in_flight += 1
      cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
    try:
      self.behave(body)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout) or stopped reading (oversize)
      pass
    finally:
      with cls.lock:
        cls.in_flight -= 1

  def behave(self, body):
    name = body['name']
    if name == 'echo':
      self.send(200, json.dumps({'type': 'function_call_output', 'call_id': body['call_id'], 'output': body}))
    elif name == 'plain':
      self.send(200, 'just text', 'text/plain')
    elif name == 'missing':
      self.send(404, json.dumps({'error': {'message': 'no such thing'}}))
    elif name == 'teapot':
      self.send(418, '')
    elif name == 'locked':
      self.send(401, json.dumps({'error': 'bad token'}))
    elif name == 'broken':
      self.send(503, 'down for maintenance')
    elif name == 'slow':
      time.sleep(0.6)
      self.send(200, json.dumps({'output': 'late'}))
    elif name == 'sleepy':
      time.sleep(0.2)
      self.send(200, json.dumps({'output': 'rested'}))
    elif name == 'big':
      self.send(200, json.dumps({'output': 'x' * 5000}))
    elif name == 'big_stream':  # no Content-Length: the client must stop reading at its limit by itself
      self.send_response(200)
      self.end_headers()
      for _ in range(100):
        self.wfile.write(b'y' * 1000)
    elif name == 'busy':  # rate limited once (retry after 0.3 s), then answers
      if type(self).attempts['busy'] == 1:
        self.send_response(429)
        self.send_header('Retry-After', '0.3')
        self.send_header('Content-Length', '0')
        self.end_headers()
      else:
        self.send(200, json.dumps({'output': 'served'}))
    elif name == 'throttled':
      self.send(429, json.dumps({'error': {'message': 'Rate limit exceeded'}}))
    elif name == 'flaky':  # fails twice, then answers
      if type(self).attempts['flaky'] <= 2:
        self.send(500, 'hiccup')
      else:
        self.send(200, json.dumps({'output': 'third time'}))


@pytest.fixture
def scripted():
  _Scripted.seen, _Scripted.attempts = [], collections.Counter()
  _Scripted.in_flight = _Scripted.max_in_flight = 0
  names = ('echo', 'plain', 'missing', 'teapot', 'locked', 'broken', 'slow', 'sleepy', 'big', 'big_stream', 'flaky',
           'busy', 'throttled')  # fmt: skip
  with local_http.serving(_Scripted, '/tools') as url:
    yield tools.load_tools([{'name': n, 'server_url': url, 'headers': {'X-Tool-Key': f'key-{n}'}} for n in names])


def test_request_shape_and_replies(scripted):
  with tools.ToolClient(scripted, **FAST) as client:
    echo, plain = client.call_many([(call('echo', key='k7'), 'trace_a'), (call('plain'), 'trace_b')])
  body, headers = _Scripted.seen[0] if _Scripted.seen[0][0]['name'] == 'echo' else _Scripted.seen[1]
  expected = {'type': 'function_call', 'name': 'echo', 'arguments': '{"key": "k7"}', 'call_id': echo.call_id}
  assert body == {**expected, 'trace_id': 'trace_a'}
  assert headers['X-Tool-Key'] == 'key-echo' and headers['Content-Type'] == 'application/json'
  assert json.loads(echo.output) == body  # a non-string output is shown as JSON
  assert (plain.kind, plain.output) == ('ok', 'just text')


def test_client_errors_are_shown_once_and_kept(scripted):
  with tools.ToolClient(scripted, **FAST) as client:
    missing, teapot = client.call_many([(call('missing'), 't'), (call('teapot'), 't')])
  assert (missing.kind, missing.output, missing.attempts, missing.discard) == (
    'client_error',
    'Error 404: no such thing',
    1,
    False,
  )
  assert teapot.output == "Error 418: I'm a Teapot" and _Scripted.attempts == {'missing': 1, 'teapot': 1}


def test_refused_credentials_are_discarded_not_retried(scripted):
  """No call a model writes gets past a 401: training on it would teach the config's mistake."""
  with tools.ToolClient(scripted, **FAST) as client:
    (locked,) = client.call_many([(call('locked'), 't')])
  assert (locked.kind, locked.output, locked.attempts, locked.discard) == (
    'client_error',
    'Error 401: bad token',
    1,
    True,
  )


def test_server_errors_are_retried_then_discarded(scripted):
  with tools.ToolClient(scripted, **FAST) as client:
    broken, flaky = client.call_many([(call('broken'), 't'), (call('flaky'), 't')])
  assert _Scripted.attempts['broken'] == 4  # 1 + retries, counted by the server
  assert (broken.kind, broken.attempts, broken.discard) == ('server_error', 4, True)
  assert broken.output == "Error: tool 'broken' failed with HTTP 503 (4 attempts)"
  assert (flaky.kind, flaky.output, flaky.attempts, flaky.discard) == ('ok', 'third time', 3, False)
  ids = {b['call_id'] for b, _ in _Scripted.seen if b['name'] == 'broken'}
  assert ids == {broken.call_id}  # every retry carries the same call_id


def test_rate_limits_are_retried_after_the_wait_asked_then_discarded(scripted):
  """A 429 is the server's "not now", not the model's mistake: it was shown to the model as its error and kept."""
  with tools.ToolClient(scripted, **FAST) as client:
    busy, throttled = client.call_many([(call('busy'), 't'), (call('throttled'), 't')])
  assert (busy.kind, busy.output, busy.attempts, busy.discard) == ('ok', 'served', 2, False)
  assert busy.latency_s >= 0.3  # the reply's Retry-After, not FAST's backoff
  assert (throttled.kind, throttled.attempts, throttled.discard) == ('server_error', 4, True)


def test_timeouts_are_retried_then_discarded(scripted):
  with tools.ToolClient(scripted, timeout_s=0.15, retries=1, backoff_s=0.01) as client:
    (slow,) = client.call_many([(call('slow'), 't')])
  assert (slow.kind, slow.attempts, slow.discard) == ('timeout', 2, True)
  assert slow.output == "Error: tool 'slow' did not answer within 0.15 s (2 attempts)"
  assert _Scripted.attempts['slow'] == 2 and slow.latency_s >= 0.3


def test_connection_refused_is_retried_then_discarded():
  dead = tools.load_tools([{'name': 'lookup', 'server_url': 'http://127.0.0.1:9/'}])  # the discard port: closed
  with tools.ToolClient(dead, **FAST) as client:
    (r,) = client.call_many([(call('lookup', key='k'), 't')])
  assert (r.kind, r.attempts, r.discard) == ('connection', 4, True)
  assert r.output == "Error: cannot reach tool 'lookup' (4 attempts)"


def test_oversize_replies_and_requests_are_refused(scripted):
  with tools.ToolClient(scripted, max_bytes=2000, **FAST) as client:
    big, stream, request = client.call_many(
      [(call('big'), 't'), (call('big_stream'), 't'), (call('echo', text='z' * 3000), 't')]
    )
  for r in (big, stream):
    assert (r.kind, r.attempts, r.discard) == ('oversize', 1, False)
    assert r.output == f"Error: the reply of tool '{r.name}' is over the limit of 2000 bytes; it was not read"
  assert (request.kind, request.attempts, request.discard) == ('oversize', 0, False)
  assert request.output.startswith("Error: the call to 'echo' is 3") and request.output.endswith('it was not sent')
  assert 'echo' not in _Scripted.attempts  # never sent


def test_unknown_tool_and_malformed_call_are_not_sent(scripted):
  bad = tools.parse_calls('<tool_call>{"name": "echo", "arguments": 5}</tool_call>')[0]
  with tools.ToolClient(scripted[:2], **FAST) as client:
    unknown, malformed = client.call_many([(call('search', q='x'), 't'), (bad, 't')])
  assert (unknown.kind, unknown.output, unknown.attempts) == (
    'unknown_tool',
    "Error: unknown tool 'search'; available: echo, plain",
    0,
  )
  assert (malformed.kind, malformed.output, malformed.discard) == ('bad_call', bad.error, False)
  assert not _Scripted.seen


def test_a_tool_the_row_does_not_offer_is_unknown_to_it(scripted):
  with tools.ToolClient(scripted[:2], **FAST) as client:
    (plain,) = client.call_many([(call('plain'), 't', frozenset({'echo'}))])
    (echo,) = client.call_many([(call('echo', key='k'), 't', frozenset({'echo'}))])
  assert (plain.kind, plain.output) == ('unknown_tool', "Error: unknown tool 'plain'; available: echo")
  assert echo.kind == 'ok' and [b['name'] for b, _ in _Scripted.seen] == ['echo']
  assert tools.offered({'tools': [{'type': 'function', 'function': {'name': 'plain'}}]}) == {'plain'}
  assert tools.offered({'messages': []}) == frozenset()


def test_calls_run_concurrently(scripted):
  with tools.ToolClient(scripted, max_workers=8, **FAST) as client:
    res = client.call_many([(call('sleepy', i=i), f't{i}') for i in range(8)])
  assert [r.output for r in res] == ['rested'] * 8
  assert _Scripted.max_in_flight > 1  # the server saw calls overlap
  assert sorted(json.loads(b['arguments'])['i'] for b, _ in _Scripted.seen) == list(range(8))


# Metrics -----------------------------------------------------------------------------------------------------------
def R(name, kind='ok', latency=0.0, attempts=1, discard=False):
  return tools.CallResult(name, 'call_x', '', kind, latency, attempts, discard)


def test_summary_by_hand():
  results = [
    [R('lookup', latency=0.1), R('lookup', latency=0.3), R('calculator', 'client_error', 0.2)],
    [R('lookup', 'server_error', 1.0, 4, True), R('nonsense', 'unknown_tool', 0.0, 0)],
    [],
    [R('', 'bad_call', 0.0, 0), R('calculator', 'timeout', 0.4, 4, True)],
  ]
  s = tools.summary(results, SPECS)
  assert s['tools/calls_per_rollout'] == pytest.approx(7 / 4)
  assert s['tools/calls_per_rollout/lookup'] == pytest.approx(3 / 4)
  assert s['tools/calls_per_rollout/calculator'] == pytest.approx(2 / 4)
  assert not any('nonsense' in k for k in s)
  assert s['tools/latency_mean_s'] == pytest.approx((0.1 + 0.3 + 0.2 + 1.0 + 0.4) / 5)  # sent calls only
  assert s['tools/latency_max_s'] == 1.0
  assert s['tools/errors/client_error'] == 1 and s['tools/errors/server_error'] == 1
  assert s['tools/errors/timeout'] == 1 and s['tools/errors/unknown_tool'] == 1 and s['tools/errors/bad_call'] == 1
  assert s['tools/errors/connection'] == 0 and s['tools/errors/oversize'] == 0
  assert s['tools/errors/total'] == 5 and s['tools/discarded_rollouts'] == 2
  empty = tools.summary([], SPECS)
  assert empty['tools/calls_per_rollout'] == 0 and empty['tools/errors/total'] == 0
  assert empty['tools/calls_per_rollout/lookup'] == 0 and empty['tools/latency_max_s'] == 0


def test_the_example_server_placeholder_outside_a_demo_run_says_what_fills_it():
  with pytest.raises(
    errors.ConfigError, match=r"config.tools\[0\].server_url: .*'\{tool_server\}' is filled in only by"
  ):
    tools.load_tools([{'name': 'lookup', 'server_url': '{tool_server}'}])
  assert tools.load_tools(tool_server.substitute(_demo_config(), 'http://127.0.0.1:9/').tools)[0].server_url == (
    'http://127.0.0.1:9/'
  )


def _demo_config():
  from configs import tiny_tools

  return tiny_tools.get_config()


def test_failure_line_counts_calls_that_failed_for_good():
  results = [
    [R('lookup', 'connection', 0.1, 4, True), R('lookup', 'ok')],
    [R('calc', 'client_error', 0.1, 1, True), R('nonsense', 'unknown_tool', 0.0, 0)],  # unknown: not a sent call
    [R('lookup', 'connection', 0.1, 4, True)],
  ]
  assert tools.failure_line(results, 0.75) is None  # 3 of 4 sent: 75%, not over
  assert tools.failure_line(results, 0.5) == (
    '3 of 4 tool calls failed for good (75% > tools_max_error_share=50%): connection in 2 (lookup); client_error '
    "in 1 (calc); check that config.tools' servers are up, answer within tool_timeout_s and accept the headers"
  )
  assert tools.failure_line([[R('x', 'client_error')]], 0.0) is None  # a 4xx the model caused is not the server's


def test_llamas_untagged_call_is_a_call_and_other_json_is_not():
  """Llama 3.x's templates ask for {"name": ..., "parameters": {...}} without tags: such a turn was a final answer."""
  assert tools.parse_calls(' {"name": "lookup", "parameters": {"key": "k7"}}\n') == [
    tools.ParsedCall('lookup', '{"key": "k7"}')
  ]
  assert tools.parse_calls('{"type": "function", "name": "ping", "parameters": {}}') == [tools.ParsedCall('ping', '{}')]
  assert tools.has_call('{"name": "ping", "parameters": {}}')
  for answer in (
    '{"name": "Ada", "age": 36}',
    '{"name": "x", "parameters": {}, "answer": 3}',
    'The answer is {"parameters"}',
  ):
    assert tools.parse_calls(answer) == [] and not tools.has_call(answer)  # JSON answers stay answers


def test_a_tool_header_may_take_its_secret_from_the_environment(scripted, monkeypatch):
  url = scripted[0].server_url
  specs = tools.load_tools([{'name': 'echo', 'server_url': url, 'headers': {'Authorization': 'Bearer ${RFTJAX_T}'}}])
  monkeypatch.delenv('RFTJAX_T', raising=False)
  with pytest.raises(errors.ConfigError) as e:
    tools.check_env(specs)
  assert str(e.value) == (
    'config.tools[0].headers: ${RFTJAX_T} names an environment variable that is not set; export RFTJAX_T=... before '
    'the command'
  )
  monkeypatch.setenv('RFTJAX_T', 'k')
  tools.check_env(specs)
  assert specs[0].headers == {'Authorization': 'Bearer ${RFTJAX_T}'}  # expanded only when a call goes out
  with tools.ToolClient(specs, **FAST) as client:
    (done,) = client.call_many([(call('echo', key='k7'), 'trace_a')])
  assert done.kind == 'ok' and _Scripted.seen[0][1]['Authorization'] == 'Bearer k'  # what the server saw
