"""Entry point: python -m rftjax.train --config=configs/tiny.py --workdir=runs/tiny [--config.x=y ...]
         python -m rftjax.train --openai_job=job.json --workdir=runs/job [--config=C] [--config.x=y ...]

Running the same command again resumes from the workdir's latest checkpoint; raising --config.total_steps
continues a finished run. `--openai_job` runs the body of an OpenAI `fine_tuning.jobs.create` request as it is
(docs/openai_jobs.md): --config gives defaults, the job overrides them, an explicit --config.x=y overrides both.
`--verbosity=1` shows the libraries' INFO lines as well. Exit status:
  0    done
  1    a checkpoint or a run file could not be written (a full disk, a bucket refusing writes): the line says what
       failed
  2    bad input: one `error:` line naming the config key, flag, file and line, or grader field; nothing written
  3    grading or tools broken: more than grading.max_error_share of a step's (or a validation's) gradings failed,
       or more than tools_max_error_share of its tool calls; one `error:` line naming the grader or tools, the
       error category, a sample message and the share; a checkpoint of the steps trained so far was written (none
       when the step-0 validation failed: nothing was trained)
  4    stopped by the collapse guard (guard.stop=True): the line names the best checkpoint and how to export it;
       a checkpoint was written
  5    an update had a NaN or inf: not applied, the weights before it checkpointed (docs/cli.md)
  42   preempted (SIGTERM): a checkpoint was written (none when it came before the first step: loading,
       compiling); rerun the same command
  130  stopped by Ctrl-C: a checkpoint was written (a second Ctrl-C stops without one; a third is the system's)
"""

from __future__ import annotations

import functools
import logging
import signal
import sys

from rftjax import cli
from rftjax import errors

log = logging.getLogger('rftjax')


def _define(fv) -> None:
  from absl import flags

  flags.DEFINE_string(
    'workdir',
    None,
    'Run directory (a local path or gs://bucket/path): checkpoints, metrics.jsonl, samples.',
    flag_values=fv,
  )
  flags.DEFINE_enum(
    'distributed',
    'auto',
    ['auto', 'on', 'off'],
    'jax.distributed.initialize(): auto = when running on a multi-host TPU VM or when --coordinator is given.',
    flag_values=fv,
  )
  cli.define_openai_job(fv)
  flags.DEFINE_string('coordinator', None, 'host:port of process 0 (multi-process without a TPU VM).', flag_values=fv)
  flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator).', flag_values=fv)
  flags.DEFINE_integer('process_id', None, 'This process index (with --coordinator).', flag_values=fv)


def _preempted_while_starting(signum, frame):
  """SIGTERM before the training loop watches for it (loading and compiling can take minutes): nothing to save,
  and status 42 tells tpu/supervise.sh to relaunch, as after any preemption. Raised in a callback (JAX's
  garbage-collection hook), Python drops the exit and the run trained on: its `signum` has it sent again
  (rftjax/__init__.py), to this handler or, once the loop has begun, to the loop's. Once the loop has run (its
  Watcher put this handler back) the run's status stands: the close goes on, and main exits with that status at
  once after it; a second SIGTERM, for a close that hangs (a bucket upload, a judge's request), exits 42 now."""
  del frame
  from rftjax import preemption

  if preemption.Watcher.entered != _preempted_while_starting.loops:  # the trainer's teardown: the work is over
    if _preempted_while_starting.late:
      cli.exit_now(preemption.EXIT_CODE)
    _preempted_while_starting.late = True
    log.warning('SIGTERM while the run closes: its status stands once closed (SIGTERM again: exit 42 now)')
    return
  if not _preempted_while_starting.said:  # once, when it is sent again
    log.warning('SIGTERM before the first step: nothing to save; exiting with status %d', preemption.EXIT_CODE)
    _preempted_while_starting.said = True
  stop = SystemExit(preemption.EXIT_CODE)
  stop.signum = signum
  raise stop


_preempted_while_starting.said, _preempted_while_starting.late, _preempted_while_starting.loops = False, False, 0


def _ending(status: int, signum, frame):
  """SIGTERM in the command line's teardown, the run's work over: it ended the process as 143, which tpu/supervise.sh
  takes for a crash of a run that had succeeded (or relaunches as a preemption, when 42 stood in for a failure's
  status: a guard stop trained on past the collapse). The status the work ended with stands."""
  del signum, frame
  log.warning('SIGTERM while exiting: exiting now with status %d', status)
  cli.exit_now(status)


def main(argv=None, abandon_threads: bool = False) -> int:
  """Returns the exit status. `abandon_threads` (the command line): a second Ctrl-C ends the process at once,
  without waiting for worker threads (a tool call may hang for minutes)."""
  argv = sys.argv if argv is None else argv
  cli.setup_logging(0)

  def body() -> int:
    job, fv, argv_ = cli.parse_job_flags(argv, _define, required=('workdir',), doc=__doc__)
    import jax

    from rftjax import checkpoint, multihost, preemption, trainer  # JAX starts here, after the flags are good

    multihost.initialize(fv.distributed, fv.coordinator, fv.num_processes, fv.process_id)
    starting = _preempted_while_starting
    starting.said, starting.late, starting.loops = False, False, preemption.Watcher.entered
    before = signal.signal(signal.SIGTERM, _preempted_while_starting)  # the loop's own handler replaces it
    try:
      config, explicit = fv.config, cli.override_keys(argv_)
      if job is not None:
        from rftjax import openai_job

        config = openai_job.apply(config, job, explicit)
      done = trainer.train(config, fv.workdir, explicit=explicit)  # ({}: nothing was left to do)
      if done and jax.process_index() == 0:  # once, not once per host
        log.info('done: python -m rftjax.report --workdir=%s names the best checkpoint; python -m rftjax.export '
                 '--workdir=%s --out=DIR exports it', fv.workdir, fv.workdir)  # fmt: skip
    except trainer.GradingStopped as e:
      print(f'error: {"tool calls" if e.code == "tools_failed" else "grading"} failed: {e}', file=sys.stderr)
      return e.exit_code
    except trainer.GuardStopped as e:
      print(f'stopped: {e}', file=sys.stderr)
      return e.exit_code
    except trainer.Diverged as e:
      print(f'error: {e}', file=sys.stderr)
      return e.exit_code
    except checkpoint.SaveFailed as e:
      print(f'error: {e}', file=sys.stderr)
      if abandon_threads:  # Orbax's threads may wait for good on a save that failed ('ulimit -u'): a supervisor
        cli.exit_now(e.exit_code)  # must see the process end
      return e.exit_code
    except OSError as e:  # a run file on a full or read-only disk (metrics.jsonl, samples, config.json)
      line = errors.storage_line(e)
      if line is None:
        raise
      print(f'error: {line}, and run the same command: the last checkpoint on disk is where it resumes',
            file=sys.stderr)  # fmt: skip
      return errors.STORAGE_EXIT_CODE
    except preemption.Preempted as e:
      log.warning('%s', e)
      return e.exit_code
    except KeyboardInterrupt:  # the second Ctrl-C, or one before the loop started
      log.warning('interrupted: the last checkpoint on disk is where a rerun resumes')
      if abandon_threads:
        cli.exit_now(preemption.INTERRUPT_EXIT_CODE)
      return preemption.INTERRUPT_EXIT_CODE
    except SystemExit as e:  # a SIGTERM while starting (_preempted_while_starting), once the stack has unwound
      if abandon_threads and e.code == preemption.EXIT_CODE:  # XLA may be compiling in its threads: the normal
        cli.exit_now(e.code)  # teardown then crashed (a segfault, 139: supervise.sh relaunches on 42 only)
      raise
    finally:  # the command line's process: until main's own, below, a SIGTERM may not change its status
      signal.signal(signal.SIGTERM, signal.SIG_IGN if abandon_threads else before)
    return 0

  status = 1  # a bug's traceback, if cli.run raises
  try:
    status = cli.run(body)
    return status
  finally:
    if abandon_threads:  # the process ends next: a SIGTERM in its teardown keeps the status, at once
      signal.signal(signal.SIGTERM, functools.partial(_ending, status))
      if _preempted_while_starting.late:  # one came while the run closed: no waiting for threads now
        _ending(status, signal.SIGTERM, None)


if __name__ == '__main__':
  cli.console_for_pipes()
  sys.exit(main(abandon_threads=True))
