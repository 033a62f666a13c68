"""rftjax: reinforcement fine-tuning in JAX (README.md; docs/design.md maps the modules)."""

import sys

if sys.argv[:1] == ['-m']:  # `python -m rftjax.<command>`, while Python imports the command (docs/cli.md)
  import signal
  import threading

  def _interrupted(kind, value, tb, default=sys.excepthook):
    """Ctrl-C in the seconds the libraries take to import: one line, as later (cli.run), not their traceback."""
    if issubclass(kind, KeyboardInterrupt):
      print('terminated' if getattr(value, 'signum', None) == signal.SIGTERM else 'interrupted', file=sys.stderr)
    else:
      default(kind, value, tb)

  def _redeliver(unraisable, default=sys.unraisablehook):
    """A Ctrl-C (or cli.Terminated, or train's exit on a SIGTERM while starting) that landed in a callback (JAX's
    garbage-collection hook) is raised again: Python drops it, and the command went on to write its output and exit
    0 (train trained on to the end). From another thread, a moment later: raised at once, it would land in this
    hook and be dropped again. A real signal to the main thread: one only flagged waits for the main thread to
    leave the C call it is in (a compile, a sleep)."""
    exc = unraisable.exc_value
    signum = getattr(exc, 'signum', signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) and signum and callable(signal.getsignal(signum)):

      def again():  # asked again: the command may have put the system's handler back meanwhile, or be exiting
        if threading.main_thread().is_alive() and callable(signal.getsignal(signum)):
          signal.pthread_kill(threading.main_thread().ident, signum)

      timer = threading.Timer(0.05, again)
      timer.daemon = True  # a process that ends meanwhile does not wait for it
      timer.start()
    else:  # a handler of the system's (train's Watcher after a second Ctrl-C): sent again, it would kill outright
      default(unraisable)

  sys.excepthook, sys.unraisablehook = _interrupted, _redeliver
