"""The training loop: check -> mesh and model -> resume -> loop (rollout, update, log, evaluate, save).

One flat function that reads top to bottom. Everything a resumed run needs is in the checkpoint (params, optimizer,
step, data position); the per-step RNG is `fold_in(seed, step)`, so a resumed run draws the samples an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp

from rftjax import checkpoint as checkpoint_lib
from rftjax import data as data_lib
from rftjax import episodes
from rftjax import errors
from rftjax import graders
from rftjax import guard as guard_lib
from rftjax import hparams
from rftjax import inference
from rftjax import loader
from rftjax import lora
from rftjax import metrics as metrics_lib
from rftjax import multihost
from rftjax import plots
from rftjax import preemption
from rftjax import response_format
from rftjax import resume
from rftjax import rollout
from rftjax import runfs
from rftjax import runspec
from rftjax import sharding
from rftjax import tool_server
from rftjax import tools
from rftjax import train_step as step_lib

log = logging.getLogger('rftjax')


def train(config, workdir: str | pathlib.Path, explicit=()) -> dict:
  """Runs (or resumes) training in `workdir` (a local path or a gs:// URL); returns the last eval metrics.

  Bad input (a config key, a data line, a grader field) raises a `errors.UserError` before any model loads and
  before anything is written to the workdir. `explicit`: the config keys the user set on the command line."""
  # the demos' tool server, on a free port for this run only; the run's warnings go to events.jsonl too
  with tool_server.serving_for(config) as config, metrics_lib.WarningEvents(log) as warned:
    return _checked(config, workdir, explicit, warned)


def _checked(config, workdir, explicit, warned) -> dict:
  # ---- everything the user gave is checked before anything slow runs or any file is written ----
  runfs.check_not_tilde(workdir, f'--workdir={workdir}')
  previous, has_checkpoints = runfs.previous_run(workdir)  # a live trainer's folder: said before the data loads
  holder = runfs.held_by(workdir) if has_checkpoints and not runfs.is_remote(workdir) else None
  if holder:  # that, not "holds another run ... or delete that one"
    raise runfs.busy(workdir, holder)
  if previous is not None and not has_checkpoints:
    resume.check_logs(workdir)
  train_set = data_lib.load_jsonl(config.data.train, 'config.data.train')
  given, skips = config, runspec.skips_prompts(config)
  # a copy: OpenAI fields applied, every key checked (quiet if they must count the prompts that fit, known later)
  config = runspec.resolve(config, len(train_set), explicit, quiet=skips)
  valid_set = data_lib.load_jsonl(config.data.valid, 'config.data.valid')[: config.data.valid_limit or None]
  tool_specs = tools.load_tools(config.tools)
  tools.check_data_tools([(ex.source, ex.item) for ex in train_set + valid_set], tool_specs)
  tools.check_env(tool_specs)
  grader_spec = config.grader  # its content (resolve read the file)
  # a bad field, or user code this machine cannot sandbox, fails here, before judges or the model load
  runspec.check_grader(config, train_set + valid_set, explicit)
  tok = loader.load_tokenizer(config)
  spec = runspec.build(config, tok)
  fmt = response_format.make(config.response_format)  # JSON completions: the schema joins every prompt
  train_set, train_prompts = runspec.encode(config, train_set, tok, fmt, 'config.data.train')
  if skips:
    config, spec = runspec.resolve_kept(given, len(train_set), explicit, tok)
  valid_set, valid_prompts = runspec.encode(config, valid_set, tok, fmt, 'config.data.valid')
  # what trains and validates (too-long ones skipped), and how often the run passes over it
  log.info('data: %s; %s', data_lib.describe(train_set, valid_set), hparams.passes(config, len(train_set)))
  k = spec.eval_samples  # k completions per validation prompt, each graded; the means average them all
  valid_prompts, valid_set = [p for p in valid_prompts for _ in range(k)], [e for e in valid_set for _ in range(k)]
  # a workdir that holds another run (or no run at all) is refused before anything in it changes
  changed = resume.check(config, previous, workdir) if has_checkpoints else ([], [])
  if has_checkpoints and _finished(config, spec, workdir):
    return {}
  try:
    run = runfs.RunDir(workdir, sync_interval_s=config.sync_interval_s)
  except OSError as e:
    raise runfs.unwritable(workdir, e) from None
  with run, contextlib.ExitStack() as held:
    if not runfs.is_remote(workdir):  # a pod slice's hosts must share it (a hang at the first checkpoint otherwise)
      # one trainer per folder (a gs:// workdir is not locked: docs/checkpoints.md)
      multihost.on_process_0(lambda: held.enter_context(runfs.lock(run.local)))
      multihost.check_shared_folder(run.local)
    try:
      with _compile_cache(run):
        return _train(config, spec, run, tok, grader_spec, train_set, train_prompts, valid_set, valid_prompts,
                      changed, warned)  # fmt: skip
    except (OSError, checkpoint_lib.SaveFailed) as e:
      # a full disk, most likely: JAX writes each compile-cache entry once, in place, and one cut short was warned
      # about and recompiled in every later run
      full = e.errno in errors.STORAGE_ERRNOS if isinstance(e, OSError) else 'No space left' in str(e)
      if full and not run.is_remote:
        shutil.rmtree(run.compile_cache, ignore_errors=True)
      raise


@contextlib.contextmanager
def _compile_cache(run: runfs.RunDir):
  """JAX's persistent compilation cache next to the run (`.jax_cache/`), unless the environment chose a place; the
  process has none again afterwards: a notebook's next run wrote into this one's folder (deleted, maybe)."""
  if jax.config.jax_compilation_cache_dir:
    yield
    return
  from jax.experimental.compilation_cache import compilation_cache

  jax.config.update('jax_compilation_cache_dir', str(run.compile_cache))
  compilation_cache.reset_cache()  # JAX opens its cache at the first compilation, and keeps it
  try:
    yield
  finally:
    jax.config.update('jax_compilation_cache_dir', None)
    compilation_cache.reset_cache()


def _finished(config, spec: runspec.RunSpec, workdir) -> bool:
  """Whether the run in `workdir` has reached total_steps, said before anything loads or the folder is locked or
  written (a finished run's read-only copy has nothing to do too); config.json stays the run's."""
  ckpt = checkpoint_lib.Checkpointer(runfs.path(workdir) / 'checkpoints', read_only=True, async_save=False)
  try:
    latest = ckpt.latest_step()
    if latest is None or latest < spec.total_steps:
      return False
    unranked = ckpt.metrics(latest) is None
    if unranked and latest == spec.total_steps and ckpt.validation_due(latest):
      return False  # a stop cut its validation short: that is left to do
  finally:
    ckpt.close()
  key = hparams.deciding_key(config, 'total_steps')
  log.info('nothing to do: step %d >= total_steps=%d (raise %s to continue)', latest, spec.total_steps, key)
  if unranked:  # its validation failed (or a stop came first): the run's last model was never measured
    log.warning('checkpoint %d has no validation reward, so it is not among the best kept; measure it with python -m '
                'rftjax.evaluate --workdir=%s --step=%d', latest, workdir, latest)  # fmt: skip
  return True


def _write_config(config, run: runfs.RunDir) -> None:
  """config.json, whole or not at all (export and evaluate read it), synced: a bucket this VM may not write to
  fails here, not after the model has loaded. Process 0 writes it; when it cannot, every host stops."""

  def write():
    data_lib.write_atomic(run.local / 'config.json', config.to_json_best_effort(indent=2) + '\n')
    try:
      run.sync()
    except OSError as e:
      raise runfs.unwritable(run.remote, e) from None

  multihost.on_process_0(write)


def _train(config, spec: runspec.RunSpec, run: runfs.RunDir, tok, grader_spec, train_set, train_prompts, valid_set,
           valid_prompts, changed, warned) -> dict:  # fmt: skip
  workdir = run.local  # run files; checkpoints go to run.remote (the same folder when the workdir is local)
  is_main = jax.process_index() == 0
  ckpt = checkpoint_lib.Checkpointer(
    run.remote / 'checkpoints', keep_best=config.checkpoint.keep_best, async_save=config.checkpoint.async_save
  )
  latest = ckpt.latest_step()
  if latest is None:  # a new run; a resumed one writes its config.json once its checkpoint has restored
    _write_config(config, run)
  else:
    if changed[0]:
      log.warning('resuming with changed settings: %s', ', '.join(changed[0]))
    if changed[1]:
      log.warning('resuming with settings new since this run began, at their defaults: %s', ', '.join(changed[1]))
  grader = graders.build(grader_spec, judges=inference.local_judges(grader_spec))

  # ---- mesh, model, optimizer state ----
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh), contextlib.ExitStack() as cleanup:  # the stack runs on success, preemption, errors
    cleanup.push(_closing(ckpt, run))
    loaded = loader.load(config, mesh=mesh, tokenizer=tok)
    trainable, frozen = lora.split(loaded.params)  # LoRA: (adapters, base); full fine-tuning: (params, None)
    tx = step_lib.make_optimizer(config.optimizer, spec.total_steps, spec.step.num_iterations)
    state = step_lib.init_state(trainable, tx)  # the optimizer, its moments and checkpoints see `trainable` only
    # the KL reference: LoRA's frozen base (the same weights without adapters) or a copy of the initial params
    ref_params = (frozen or jax.tree.map(jnp.copy, trainable)) if spec.uses_reference else None
    del loaded, trainable
    update = step_lib.make_update(spec.step, tx)

    # ---- resume ----
    hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
    data_iter = data_lib.DataIterator(
      len(train_set), config.batch_size, config.seed, prompts=data_lib.fingerprint(train_prompts), **hosts
    )
    start, extra = 0, {}
    if latest is not None:
      try:
        state, extra = ckpt.restore(latest, step_lib.abstract_state(state))
      except checkpoint_lib.Damaged as e:  # a partial copy of the run folder, say
        raise errors.ConfigError(f'--workdir={run.remote}: {e}') from None
      except checkpoint_lib.StateMismatch as e:  # any other error is a broken step or an outage: its traceback
        raise errors.ConfigError(
          f'--workdir={run.remote}: checkpoint {latest} does not fit this config ({str(e).split(" failed: ")[-1]}); '
          'was it written with another model or LoRA setting? Choose a new --workdir'
        ) from None
      try:
        data_iter.restore(extra['data'])
      except ValueError as e:  # its position would silently point at other examples
        raise errors.ConfigError(
          f'--workdir={run.remote}: checkpoint {latest} cannot resume on this data: {e}. config.data.train, '
          'data.max_prompt_len, data.skip_long_prompts or the chat template changed since; put them back, or '
          'choose a new --workdir'
        ) from None
      start = latest  # its number, in GRPO steps
      counted = int(state['step'])  # replicated: every host reads its own copy
      if counted != latest:  # an older rftjax's state['step'] counted num_iterations updates, not GRPO steps
        log.info('checkpoint %d counted %d updates (an older rftjax); its schedule goes on at step %d', latest,
                 counted, latest)  # fmt: skip
        state['step'] = state['step'] - (counted - latest)  # the learning rate is read from it (train_step)
      _write_config(config, run)
      log.info('resumed from step %d in %s', start, run.remote)
    resumed_at = start if latest is not None else None  # a run stopped after its step-0 validation resumes at 0
    writer = metrics_lib.MetricsWriter(
      workdir, resume_step=resumed_at, enabled=is_main, total_steps=spec.total_steps, grader=grader_spec
    )
    cleanup.push(_closing_writer(writer))
    if resumed_at is not None and resumed_at not in writer.announced:  # killed between its commit and the settle
      _created(writer, ckpt, resumed_at, checkpoint_lib.written_at(ckpt.directory / str(resumed_at)))  # said late
    cleanup.enter_context(_job_events(writer, resumed_at, spec.total_steps, changed))  # events.jsonl: started ...
    warned.attach(writer)  # and the warnings logged so far
    guard = guard_lib.Guard(config.guard, spec.rollout.max_new_tokens)
    due = latest is not None and ckpt.validation_due(start, extra)  # a stop or a failed grading cut it short
    replayed = metrics_lib.read_jsonl(writer.path, stepped=True) if is_main else []  # process 0 holds the file
    # the line of a validation redone but not ranked (the run ended between): its measure, which the guard hears below
    logged = [r for r in replayed if due and r['step'] == start and 'valid_reward_mean' in r][-1:]
    guard.replay([r for r in replayed if r not in logged])  # metrics.jsonl ends at `start`: an unbroken run's counts
    watch = functools.partial(_watch, guard, writer, is_main)
    fmt = response_format.make(config.response_format)
    pool = cleanup.enter_context(graders.GradingPool.from_config(config.grading, fmt))
    watcher = cleanup.enter_context(preemption.Watcher())
    # a stop's checkpoint said before the job's last event, waited for while the watcher still takes a second
    # SIGTERM (after it, the start-up handler would end the process with the events unwritten)
    cleanup.push(_settling(ckpt))
    rng = jax.random.key(config.seed)
    items = [ex.item for ex in train_set]
    train_sampler, eval_sampler = spec.train_sampler, spec.eval_sampler
    if spec.episodes is not None:  # multi-turn episodes: the samplers run inside an agent that calls the tools
      e = spec.episodes
      client = cleanup.enter_context(tools.ToolClient(e.tools, timeout_s=e.timeout_s)) if e.tools else None
      train_sampler, eval_sampler = (
        episodes.Agent(s, tok, client, e.max_steps, e.tool_tokens, e.max_error_share)
        for s in (train_sampler, eval_sampler)
      )
    rollouts = rollout.Rollouts(
      spec.rollout, train_sampler, train_prompts, items, tok, grader, pool, data_iter, mesh, rng
    )
    rollouts.shapes.restore(extra.get('shapes'))  # the train-step shapes compiled before, and their price
    validate = inference.Validation(
      eval_sampler,
      spec.eval_batch_size,
      valid_prompts,
      valid_set,
      tok,
      grader,
      pool,
      mesh,
      config.seed,
      writer,
      run,
      max_error_share=config.grading.max_error_share,
    )
    save = functools.partial(_save, ckpt, writer, run, shapes=rollouts.shapes)

    def guard_stop(at: int, state, alarm) -> GuardStopped | None:
      """The collapse guard asked to stop (guard.stop; a collective, every host alike): step `at` saved, the error to
      raise. It wins over a SIGTERM's stop: a resume would not raise the alarm again (it fires once, at patience)."""
      if not (config.guard.enabled and config.guard.stop and multihost.any_host(alarm is not None)):
        return None
      if ckpt.latest_step() != at:
        save(at, state, data_iter)
      _wait(ckpt, run)  # the best step's metrics are on disk
      best = ckpt.best_step()
      reward = (ckpt.metrics(best) or {}).get('valid_reward_mean') if best is not None else None
      return GuardStopped(
        guard_lib.stop_message(alarm, run.remote, best, reward) if alarm else 'the collapse guard stopped the run'
      )

    last_eval: dict = {}
    if latest is None:  # a new run (a checkpoint of step 0 was written after its validation)
      try:
        last_eval = validate(lora.join(state['params'], frozen), 0)
      except BROKEN as e:  # nothing learnt yet: nothing to keep
        what = 'the tools' if isinstance(e, tools.ToolsFailed) else 'the grader'
        raise _stopped(e, f'{e}. Nothing was trained; fix {what} and run again') from None
      watch(last_eval)
      save(0, state, data_iter, last_eval)
      if watcher.requested(0):  # Ctrl-C or SIGTERM during the step-0 validation
        raise watcher.stop(0)
    elif due:
      logged = multihost.gather_objects(logged)  # every host alike
      redo = lambda: validate(lora.join(state['params'], frozen), start, stop=lambda: watcher.requested(start))  # noqa: E731
      try:
        last_eval = logged[0] if logged else redo()
      except inference.ValidationStopped:
        raise watcher.stop(start) from None
      except BROKEN as e:
        raise _stopped(e, f'{e}. The checkpoint at step {start} is where a rerun resumes') from None
      stop, reward = watch(last_eval, said=bool(logged)), last_eval['valid_reward_mean']  # null: not finite
      ckpt.rank(start, {'valid_reward_mean': math.nan if reward is None else reward})  # among the best, as if saved so
      _replot(ckpt, run)
      if (guarded := guard_stop(start, state, stop)) or watcher.requested(start):
        raise guarded or watcher.stop(start)
    compile_clock = cleanup.enter_context(metrics_lib.CompileClock())
    # closed on every way out: a bar left open is drawn one line lower, with a cursor-up that a notebook prints
    progress = cleanup.enter_context(metrics_lib.Progress(start, spec.total_steps, enabled=config.progress and is_main))
    progress.note(start, last_eval)  # step 0's validation, before the first step
    for step in range(start, spec.total_steps):
      t_step = time.perf_counter()
      data_before = data_iter.state()

      # ---- rollout: G completions per prompt, sampled, decoded and graded on the host ----
      stopped = False
      try:
        batch, stats, timings = rollouts(lora.join(state['params'], frozen), step, stop=lambda: watcher.requested(step))
      except rollout.RolloutStopped:  # SIGTERM between dynamic-sampling draws: no more of them
        stopped = True
      except BROKEN as e:  # broken grading or tools: keep what was learnt, stop with one line
        data_iter.restore(data_before)
        if ckpt.latest_step() != step:
          save(step, state, data_iter)
        raise _stopped(e, f'step {step + 1}: {e}. The checkpoint at step {step} is where a rerun resumes') from None
      if stopped or watcher.requested(step):  # preempted mid-step: drop this batch, keep the data position before it
        data_iter.restore(data_before)
        save(step, state, data_iter)
        raise watcher.stop(step)

      # ---- GRPO update(s): reference / old-policy logprobs, then num_iterations steps on the batch ----
      compile_s = compile_clock.take()  # the sampler's, when it compiled
      t0 = time.perf_counter()
      state, step_metrics = update(state, batch, frozen, ref_params)
      step_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      t_train = time.perf_counter() - t0
      compile_update_s = compile_clock.take()

      # ---- log ----
      wall = time.perf_counter() - t_step
      stats = multihost.allmean({**stats, 'timing/update_s': t_train, 'timing/update_compile_s': compile_update_s})
      # the shapes later steps pick weigh padding against compiling by what this one measured (every host alike)
      update_s, update_compile_s = stats.pop('timing/update_s'), stats.pop('timing/update_compile_s')
      rollouts.shapes.observe(update_s - update_compile_s, update_compile_s)
      rate = step_lib.learning_rate(config.optimizer, step + 1, spec.total_steps)
      tokens = stats['completion_len_mean'] * config.batch_size * config.num_generations
      record = {
        'step': step + 1,
        **stats,
        **step_metrics,
        'learning_rate': rate,
        'tokens_per_s': tokens / wall,
        **{f'timing/{k}': v for k, v in timings.items()},
        'timing/training_s': t_train,
        'timing/compile_s': compile_s + compile_update_s,
        'train_shapes': len(rollouts.shapes.seen),
        'timing/step_s': wall,
      }
      writer.write(record)
      ckpt.settle()  # 'Checkpoint created' for a save committed meanwhile
      if record['nonfinite_update']:  # the step kept the weights it had: they are saved, and the run stops
        save(step + 1, state, data_iter)
        raise Diverged(
          f'step {step + 1}: the update was not finite (loss {record["loss"]}, grad_norm {record["grad_norm"]}), '
          f'so it was not applied; checkpoint {step + 1} holds the weights of step {step}. Lower '
          'optimizer.learning_rate (or check optimizer.b1, optimizer.b2, max_grad_norm) and rerun to resume there'
        )
      stop = watch(record)
      progress.update(step + 1, record)
      run.maybe_sync()

      # ---- validate and save every eval_interval steps and at the end; stop on SIGTERM ----
      if (step + 1) % spec.eval_interval == 0 or step + 1 == spec.total_steps:
        try:
          last_eval = validate(lora.join(state['params'], frozen), step + 1, stop=lambda: watcher.requested(step + 1))
        except inference.ValidationStopped:  # SIGTERM mid-pass: keep the step, unranked, before the notice runs out
          save(step + 1, state, data_iter, due=True)
          raise (guard_stop(step + 1, state, stop) or watcher.stop(step + 1)) from None
        except BROKEN as e:  # the step is kept, unranked: a broken grading is no measure of it
          save(step + 1, state, data_iter, due=True)
          guarded = guard_stop(step + 1, state, stop)  # said too: a rerun would train on past the collapse
          also = f'; also {guarded}' if guarded else f'. The checkpoint at step {step + 1} is where a rerun resumes'
          raise _stopped(e, f'{e}{also}') from None
        progress.note(step + 1, last_eval)
        stop = watch(last_eval) or stop
        save(step + 1, state, data_iter, last_eval)
      # ---- the collapse guard asked to stop (guard.stop), or a SIGTERM: every host at this step, after a checkpoint
      guarded = guard_stop(step + 1, state, stop)
      if guarded is not None:
        raise guarded
      if watcher.requested(step + 1) and step + 1 < spec.total_steps:  # after the last step the run has ended
        if ckpt.latest_step() != step + 1:  # an evaluation step is saved already
          save(step + 1, state, data_iter)
        raise watcher.stop(step + 1)
    progress.close()  # before the last save's wait: the bar ends at the run's last step
    _wait(ckpt, run)  # the last save committed (or failed) inside the job: then 'succeeded' is true
  return last_eval


class GuardStopped(RuntimeError):
  """The collapse guard stopped the run (guard.stop=True); a checkpoint of the step was written. Exit status 4."""

  exit_code = 4


def _watch(guard, writer, is_main: bool, record: dict, said: bool = False):
  """Feeds a record just written to metrics.jsonl to the collapse guard (process 0 holds the file a resume replays);
  logs each alarm and writes it to events.jsonl (not when `said` already, by the run that wrote the record). Returns
  the first alarm that asks to stop, or None."""
  stop = None
  for alarm in guard.observe(record) if is_main else []:
    if said:
      stop = stop or (alarm if alarm.stop else None)
      continue
    log.warning('guard: %s: %s', alarm.kind, alarm.message, extra={'event': False})
    writer.event(
      f'{alarm.kind}: {alarm.message}',
      level='warn',
      data={'step': alarm.step, 'guard': {'alarm': alarm.kind, 'stop': alarm.stop, **alarm.data}},
    )
    stop = stop or (alarm if alarm.stop else None)
  return stop


class Diverged(RuntimeError):
  """An update had a NaN or inf in it and was not applied; a checkpoint of the step (the weights before it) was
  written. Exit status 5."""

  exit_code = 5


class GradingStopped(RuntimeError):
  """Too many of a step's or a validation's gradings failed (grading.max_error_share), or tool calls
  (tools_max_error_share); the steps trained so far were checkpointed first. Exit status 3."""

  exit_code = 3

  def __init__(self, message: str, code: str = 'grading_failed'):
    super().__init__(message)
    self.code = code  # events.jsonl's


# what stops a run with GradingStopped: rewards that measure a broken grader or tool server, not the policy
BROKEN = (graders.GradingFailed, tools.ToolsFailed)


def _stopped(e: Exception, message: str) -> GradingStopped:
  return GradingStopped(message, 'tools_failed' if isinstance(e, tools.ToolsFailed) else 'grading_failed')


@contextlib.contextmanager
def _job_events(writer, resumed_at: int | None, total_steps: int, changed: tuple[list[str], list[str]]):
  """OpenAI-shaped job events around the loop (docs/cli.md, events.jsonl): how the run began and how it ended. The
  start and each resume name the rftjax code that ran, a resume the settings that changed: an upgrade mid-run
  shows in the run's files, not only in a console long scrolled away."""
  code = {'rftjax': version} if (version := metrics_lib.code_version()) else {}
  if resumed_at is None:
    writer.event(f'Fine-tuning job started: {total_steps} steps', data={'status': 'running', **code})
  else:
    more = {k: v for k, v in zip(('changed', 'added'), changed) if v}
    writer.event(f'Resumed from step {resumed_at}', data={'status': 'running', **code, **more})

  def ended(*args, **kwargs):  # a full disk that ended the run must not hide its first error behind a second
    with contextlib.suppress(OSError):
      writer.event(*args, **kwargs)

  try:
    yield
  except preemption.Preempted as e:
    how = 'Ctrl-C' if e.exit_code == preemption.INTERRUPT_EXIT_CODE else 'preempted'
    ended(f'Job stopped at step {e.step} ({how}); training again in the same workdir resumes there', level='warn',
          data={'step': e.step, 'status': 'cancelled'})  # fmt: skip
    raise
  except GradingStopped as e:
    ended(f'Job failed: {e}', level='error', data={'status': 'failed', 'code': e.code})
    raise
  except GuardStopped as e:
    ended(f'Job stopped: {e}', level='warn', data={'status': 'cancelled', 'code': 'guard_stopped'})
    raise
  except Diverged as e:
    ended(f'Job failed: {e}', level='error', data={'status': 'failed', 'code': 'diverged'})
    raise
  except KeyboardInterrupt:
    ended('Job stopped by a second Ctrl-C, without a checkpoint', level='warn', data={'status': 'cancelled'})
    raise
  except Exception as e:
    ended(f'Job failed: {type(e).__name__}: {e}', level='error', data={'status': 'failed', 'code': type(e).__name__})
    raise
  writer.event('The job has successfully completed', data={'status': 'succeeded'})


def _save(ckpt, writer, run, step: int, state, data_iter, eval_metrics: dict | None = None, *, shapes, due=False):
  """Checkpoint `step` (ranked by its validation reward when it has one; `due`: its validation was cut short, to be
  redone on resume), redraw the reward plot with the kept best checkpoints marked, and sync the run files."""
  t0 = time.perf_counter()
  best = None if eval_metrics is None else {'valid_reward_mean': eval_metrics['valid_reward_mean']}
  checkpoint_lib.check_room(ckpt, run.remote, step, state)
  # said once the step has committed (the next step's settle, the next save, a stop or the end), as OpenAI's event
  # means a checkpoint a script can evaluate or export; an asynchronous save that failed never says it
  created = functools.partial(_created, writer, ckpt, step)
  extra = {'data': data_iter.state(), 'shapes': shapes.state(), 'validation_due': due}
  try:  # an asynchronous save's failure shows here at the next save, or at the end (_wait)
    saved = ckpt.save(step, state, extra=extra, metrics=best, on_commit=created)
  except Exception as e:
    raise checkpoint_lib.save_failed(ckpt, run.remote, e) from e
  if saved:  # a step on disk already (a stop right after a resume) is no second timing row for its step
    writer.write({'step': step, 'timing/checkpoint_s': time.perf_counter() - t0})
  _replot(ckpt, run)


def _replot(ckpt, run) -> None:
  if jax.process_index() == 0:
    try:
      plots.write_reward_plot(run.local, kept=ckpt.best_steps())
    except Exception as e:  # a plot must never stop a run
      log.warning('could not write the reward plot: %s', e)
  run.sync(raise_errors=False)  # so the bucket holds the metrics up to each checkpoint it holds


def _created(writer, ckpt, step: int, created_at: int | None = None) -> None:
  writer.event(f'Checkpoint created at step {step}', data={'step': step, 'checkpoint': str(ckpt.directory / str(step))},
               created_at=created_at)  # fmt: skip


def _wait(ckpt, run) -> None:
  try:
    ckpt.wait_until_finished()
  except Exception as e:
    raise checkpoint_lib.save_failed(ckpt, run.remote, e) from e


def _settling(ckpt):
  """On a way out but success (whose _wait has done it), the save in flight is waited for, so that its 'Checkpoint
  created' event comes before the job's last one; its failure is the checkpointer's close's to raise or log."""

  def settle(exc_type, exc, tb) -> bool:
    if exc is not None:
      with contextlib.suppress(Exception):
        ckpt.wait_until_finished()
    return False

  return settle


def _closing_writer(writer):
  """The metrics writer's exit, for an ExitStack: a close that fails (a full disk: the line an error's event left
  in the buffer) raises when nothing else went wrong, else is only logged: the first error is the one to see, and
  its exit status (42 for a preemption, a failed save's) the one a supervisor acts on."""

  def close(exc_type, exc, tb) -> bool:
    try:
      writer.close()
    except OSError as e:
      if exc is None:
        raise
      log.warning('closing metrics.jsonl and events.jsonl failed too: %s', e)
    return False

  return close


def _closing(ckpt, run):
  """The checkpointer's exit, for an ExitStack: closed on success, preemption and errors alike; a save that failed
  is raised as one SaveFailed when nothing else went wrong, else only logged (the first error is the one to see)."""

  def close(exc_type, exc, tb) -> bool:
    try:
      ckpt.close()
    except Exception as e:
      if exc is None:
        raise checkpoint_lib.save_failed(ckpt, run.remote, e) from e
      if e is not exc.__cause__:  # the failure the run stopped for, raised again, is no second one
        log.warning('the checkpoint in flight failed too: %s', checkpoint_lib.failure_reason(e))
    return False

  return close
