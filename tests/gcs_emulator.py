"""A Google Cloud Storage stand-in for tests: gcp-storage-emulator in this process, on a free local port.

Both clients rftjax uses on gs:// are pointed at it: gcsfs (behind etils.epath: run files, Orbax's metadata) reads
STORAGE_EMULATOR_HOST, and tensorstore (Orbax's array writes) reads TENSORSTORE_GCS_HTTP_URL. Credentials are
anonymous / a fixed test token, so nothing looks for gcloud or a metadata server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket

# read when gcsfs / fsspec are first imported: no bucket-type lookups (noise), anonymous credentials
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
os.environ.setdefault('FSSPEC_GCS_TOKEN', 'anon')
os.environ.setdefault('NO_GCE_CHECK', 'true')

_ENV = {'STORAGE_EMULATOR_HOST': None, 'TENSORSTORE_GCS_HTTP_URL': None, 'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test'}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def serve(bucket: str):
  """Yields `gs://BUCKET` on a fresh in-memory emulator; restores the environment afterwards."""
  import fsspec.config
  from gcp_storage_emulator.server import create_server

  fsspec.config.conf.setdefault('gcs', {})['token'] = 'anon'
  logging.getLogger('gcp_storage_emulator').setLevel(logging.CRITICAL)  # it logs every 404 Orbax probes for
  port = _free_port()
  server = create_server('127.0.0.1', port, in_memory=True, default_bucket=bucket)
  server._api.daemon = True  # a test that fails before stop() must not hang the interpreter's exit
  server.start()
  server._api._httpd.handle_error = lambda *args: None  # clients dropping keep-alive connections: not errors
  url = f'http://127.0.0.1:{port}'
  saved = {k: os.environ.get(k) for k in _ENV}
  os.environ.update({k: v or url for k, v in _ENV.items()})
  try:
    yield f'gs://{bucket}'
  finally:
    server.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def without_ocdbt(monkeypatch) -> None:
  """Orbax's array writes as plain zarr instead of OCDBT, for runs against the emulator.

  About one run in three, tensorstore's conditional write of OCDBT's `manifest.ocdbt` to the emulator failed with
  "Malformed StorageGeneration" (at a different step each time; it did not go away with one request at a time).
  OCDBT on real GCS is Orbax's default and is not what rftjax's gs:// code is about. Plain zarr goes through the
  same tensorstore gcs driver and the same checkpoint directories.
  """
  import orbax.checkpoint as ocp

  init = ocp.StandardCheckpointHandler.__init__

  def patched(self, *args, **kwargs):
    kwargs['use_ocdbt'] = False
    init(self, *args, **kwargs)

  monkeypatch.setattr(ocp.StandardCheckpointHandler, '__init__', patched)
