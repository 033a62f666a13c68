"""Stopping without losing work: SIGTERM (a Spot TPU VM about to go) and Ctrl-C both checkpoint the step reached.

The handler only sets a flag; the loop polls it at step boundaries (all hosts agree through one tiny collective,
so every host stops at the same step), saves, and raises `Preempted`. The entry point turns it into exit status 42
after SIGTERM, so `tpu/supervise.sh` knows to relaunch rather than give up, and 130 after Ctrl-C (the shell's
convention for an interrupt, which no supervisor relaunches). A second Ctrl-C aborts at once, without a checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading

from rftjax import multihost

EXIT_CODE = 42  # SIGTERM: relaunch me
INTERRUPT_EXIT_CODE = 130  # Ctrl-C: the user stopped the run

log = logging.getLogger('rftjax')


class Preempted(Exception):
  """Training stopped on SIGTERM or Ctrl-C after writing a checkpoint of `step`."""

  def __init__(self, step: int, interrupted: bool = False):
    cause = 'stopped by Ctrl-C' if interrupted else 'preempted'
    # in words that hold for a command and for trainer.train called in a notebook alike
    super().__init__(f'{cause}: checkpoint written at step {step}; training again in the same workdir resumes there')
    self.step = step
    self.exit_code = INTERRUPT_EXIT_CODE if interrupted else EXIT_CODE


class Watcher:
  """Context manager: SIGTERM and SIGINT set a flag instead of killing the process (main thread only); a second
  SIGINT raises KeyboardInterrupt at once, and leaves SIGINT to the system: Python drops a KeyboardInterrupt that
  lands in a callback (a garbage-collection hook, say), and a third Ctrl-C then ends the process for sure."""

  entered = 0  # Watchers this process has entered: train's start-up handler tells its teardown by it

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.signals, self._old, self.flag, self.interrupted = signals, {}, False, False

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self.interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt('second Ctrl-C: stopped without a checkpoint')
      self.interrupted = True
      log.warning(
        'Ctrl-C: finishing this step and saving a checkpoint (Ctrl-C again to abort without one)',
        extra={'event': False},
      )  # the stop's own event says it
    self.flag = True

  def __enter__(self):
    Watcher.entered += 1
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

  def stop(self, step: int) -> Preempted:
    """The exception to raise once the checkpoint of `step` is written (without eval metrics: unranked, unless a
    resume validates it because its validation was cut short)."""
    how = 'Ctrl-C' if self.interrupted else 'SIGTERM'
    code = INTERRUPT_EXIT_CODE if self.interrupted else EXIT_CODE
    log.warning('%s: saved a checkpoint at step %d; stopping (exit status %d)', how, step, code, extra={'event': False})
    return Preempted(step, self.interrupted)
