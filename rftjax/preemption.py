"""Spot / preemptible TPU VMs get SIGTERM shortly before they go: checkpoint the step reached and exit 42.

The handler only sets a flag; the loop polls it at step boundaries (all hosts agree through one tiny collective,
so every host stops at the same step), saves, and raises `Preempted`, which the entry point turns into exit
status 42 so `tpu/supervise.sh` knows to relaunch rather than give up.
"""

from __future__ import annotations

import logging
import signal
import threading

from rftjax import multihost

EXIT_CODE = 42


class Preempted(Exception):
  """Training stopped on SIGTERM after writing a checkpoint of `step`."""

  def __init__(self, step: int):
    super().__init__(f'preempted: checkpoint written at step {step}; rerun the same command to resume')
    self.step = step


class Watcher:
  """Context manager: SIGTERM sets a flag instead of killing the process (main thread only)."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals, self._old, self.flag = signals, {}, False

  def _handle(self, signum, frame):
    del signum, frame
    self.flag = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.signals:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False

  def requested(self, step: int) -> bool:
    del step
    return multihost.any_host(self.flag)


def stop(step: int) -> Preempted:
  """The exception to raise once the checkpoint of `step` is written (without eval metrics: never ranked best)."""
  logging.getLogger('rftjax').warning('SIGTERM: saved a checkpoint at step %d, exiting with status %d', step, EXIT_CODE)
  return Preempted(step)
