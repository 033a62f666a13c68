"""HTTP servers the tests start on 127.0.0.1 and stop again: scripted tool servers, endpoint graders, judges.

class Server(local_http.Handler):
  def do_POST(self):
    self.send(200, json.dumps({'output': self.json_body()['name']}))

with local_http.serving(Server, '/v1') as url:   # http://127.0.0.1:PORT/v1
  ...
"""

import contextlib
import http.server
import json
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
  """A quiet handler with helpers. A subclass that counts requests still running in `in_flight` is waited for
  (up to 3 s) before its server stops: a handler the client gave up on may still be sleeping."""

  in_flight = 0

  def json_body(self):
    return json.loads(self.rfile.read(int(self.headers['Content-Length'])))

  def send(self, status: int, text: str, content_type: str = 'application/json') -> None:
    data = text.encode()
    self.send_response(status)
    self.send_header('Content-Type', content_type)
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


@contextlib.contextmanager
def serving(handler: type[Handler], path: str = '/'):
  """Serves `handler` on a free port on a daemon thread; yields its URL with `path`."""
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}{path}'
  finally:
    deadline = time.monotonic() + 3
    while handler.in_flight and time.monotonic() < deadline:
      time.sleep(0.01)
    server.shutdown()
    server.server_close()
