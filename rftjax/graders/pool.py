"""GradingPool: grades a step's samples in parallel, host side, with per-call deadlines.

* INLINE graders (string_check, text_similarity) run in the dispatcher thread: no IPC for cheap work.
* SANDBOX graders (python, math, code) run in warm worker processes (`workers.py` starts them). Samples go out in
  chunks so that one compiled `grade` handles many samples; each result comes back as its own message, so the
  parent knows which sample a worker is on. A sample whose deadline passes, or whose worker dies, scores 0 with
  python_grader_timeout / python_grader_runtime; the worker (its process group and its cgroup) is killed and
  replaced and the rest of its chunk goes back in the queue. Deadlines are wall-clock checks in the dispatcher
  thread's select loop: no SIGALRM, no main-thread requirement.
* MODEL graders (score_model, label_model, endpoint) call their judge or server on a thread pool (network-bound).
Every spawn happens on the dispatcher thread, which lives as long as the pool: PR_SET_PDEATHSIG in the workers
fires when the *thread* that spawned them exits, so this also makes workers die with the pool's process.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import queue
import select
import threading
import time

from rftjax.graders import core
from rftjax.graders import isolation as isolation_lib
from rftjax.graders import workers

log = logging.getLogger('rftjax')

# OpenAI's python grader limits: 2 GB of memory, 1 GB of disk, 2 minutes.
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MEMORY_MB = 2048
MIN_MEMORY_MB = 64  # a worker's Python and a small grader; less, and the worker dies before it answers
DEFAULT_DISK_MB = 1024
# train's and evaluate's per-sample deadline (configs/common.py's grading.timeout_s, a run's config.json without
# one), shorter than OpenAI's: a grader slower than this would stall every training step
TRAIN_TIMEOUT_S = 10.0
# Extra time for a worker to start and load a grader it has not seen (imports such as sympy, module-level code),
# so a busy machine does not turn a cold start into a timeout of the first sample.
LOAD_GRACE_S = 10.0
# A python grader's worker stops a sample at its deadline and answers with the line it was on; the parent kills
# the worker this much later, should that answer not come.
STOP_GRACE_S = 1.0


def _runs_completion(w: workers.Worker) -> bool:
  """Whether `w` is running a code sample's own code (the `code` grader has loaded): what goes wrong there is the
  model's doing."""
  return w.job is not None and w.job.spec['kind'] == 'code' and w.job.spec['key'] in w.loaded


def _lost(w: workers.Worker, category: str, why: str) -> core.GradeResult:
  """The result of the sample a worker failed on. Once a code sample's own code runs, a crash, a hang past the
  deadline or a malformed reply is the model's miss: a 0 as for code that raises, not a grader error that counts
  towards stopping the run."""
  if _runs_completion(w):
    return core.GradeResult(0.0, {}, (), {'passed': 0, 'exception': why})
  return core.failed(category, why)


def _leaves(grader: core.Grader) -> list[core.Grader]:
  """`grader` itself, or a multi's sub-graders."""
  return grader.leaves() if hasattr(grader, 'leaves') else [grader]


def _runs_code(grader: core.Grader) -> list[core.Grader]:
  """The graders in `grader` that run code somebody wrote: python and code."""
  return [g for g in _leaves(grader) if g.mode == core.SANDBOX and g.worker_spec()['kind'] in ('python', 'code')]


def check_runnable(grader: core.Grader, allow_unsandboxed: bool = False) -> bool:
  """What commands check before anything slow: `check_sandbox`, and that the environment variables HTTP graders
  take keys from are set (a judge's `api_key_env`, an endpoint's ${NAME} headers): an unset one sent requests
  without a key, and the first 401 came after the step-0 validation had sampled."""
  for g in _leaves(grader):
    env = g.missing_key() if hasattr(g, 'missing_key') else None
    if env:
      raise core.GraderConfigError(
        f'grader {g.name!r} ({g.type}) sends {g.spec.get("url") or g.spec.get("base_url", "the OpenAI API")} a key '
        f'from the environment variable {env}, which is not set; export {env}=... before the command'
      )
  return check_sandbox(grader, allow_unsandboxed)


def check_sandbox(grader: core.Grader, allow_unsandboxed: bool = False) -> bool:
  """Raises GraderConfigError when `grader` runs user code (python, code graders) that this machine cannot isolate,
  unless `allow_unsandboxed`; returns whether it will run without a sandbox. Call it before anything slow."""
  user_code = _runs_code(grader)
  isolation = isolation_lib.probe()
  if not user_code or isolation.available:
    return False
  if allow_unsandboxed:
    return True
  raise core.GraderConfigError(
    f'grader {user_code[0].name!r} ({user_code[0].type}) runs code, and this machine cannot isolate it: '
    f'{isolation.reason}. To run it anyway, without a sandbox, set grading.allow_unsandboxed=True '
    '(--allow_unsandboxed for rftjax.grade and rftjax.evaluate); see docs/graders.md'
  )


def _task_timeout(job: '_SandboxJob', tasks: list[tuple[int, list]]) -> float:
  """A sandbox task's deadline: the job's; for a python grader, STOP_GRACE_S later, the worker stopping it at the
  job's to say where; for a code sample without a `timeout_s` of its own, at least room for its code and each test
  to run out their `test_timeout_s` (a sample with tests that loop keeps its partial credit)."""
  if job.spec['kind'] == 'python':
    return job.timeout_s + STOP_GRACE_S
  if job.spec['kind'] != 'code' or job.explicit_timeout or not tasks:
    return job.timeout_s
  tests = tasks[0][1][1]
  count = 1 if isinstance(tests, str) else len(tests)
  return max(job.timeout_s, (count + 1) * job.spec['test_timeout_s'] + 1.0)


class _SandboxJob:
  """The sandbox tasks of one grader over one batch: task index -> args, results filled in as they come."""

  def __init__(self, grader: core.Grader, tasks: list[tuple[int, list]], timeout_s: float):
    self.spec = grader.worker_spec()
    self.timeout_s = timeout_s
    self.explicit_timeout = 'timeout_s' in grader.spec  # the grader's own deadline is kept as given
    self.results: dict[int, core.GradeResult] = {}
    self.pending = collections.deque(tasks)
    self.total = len(tasks)


class GradingPool:
  """Parallel grading with deadlines. See the module docstring and docs/graders.md.

  num_workers: sandbox processes (default: CPU count). timeout_s: per-sample wall-clock deadline for sandbox
  graders unless the grader's spec sets `timeout_s`; also the HTTP timeout of model judges. memory_mb / disk_mb:
  each worker's RLIMIT_AS / its private disk. chunk_size: most samples sent to a worker at once. load_grace_s: extra
  deadline for starting a worker and loading a grader it has not seen. budget_s: the most one call (a step's
  grading) may take; what is not graded by then scores 0 with a named error. allow_unsandboxed: run graders of user
  code (python, code) even where bubblewrap cannot isolate them (`check`). response_format: a
  `rftjax.response_format.ResponseFormat`; samples that fail it score 0 ungraded (`_formatted`).
  """

  def __init__(
    self,
    num_workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    disk_mb: int = DEFAULT_DISK_MB,
    chunk_size: int = 64,
    model_threads: int = 16,
    load_grace_s: float = LOAD_GRACE_S,
    budget_s: float | None = None,
    allow_unsandboxed: bool = False,
    response_format=None,
  ):
    self.num_workers = max(1, num_workers or os.cpu_count() or 1)
    self.timeout_s, self.memory_mb, self.disk_mb, self.chunk_size = timeout_s, memory_mb, disk_mb, chunk_size
    self.load_grace_s, self.budget_s, self.allow_unsandboxed = load_grace_s, budget_s, allow_unsandboxed
    self.response_format = response_format
    self.isolation = isolation_lib.probe()
    workers.clean_stale()
    self._workers: list[workers.Worker] = []
    self._jobs: queue.Queue = queue.Queue()
    self._model_threads = concurrent.futures.ThreadPoolExecutor(model_threads, thread_name_prefix='rftjax-judge')
    self._closed = False
    self.budget_label = ''  # what a spent budget's error names, when not grading.step_budget_s (a flag)
    self.timeout_label = 'grading.timeout_s'  # what a sample's deadline is set by, when not the grader's timeout_s
    self.memory_label = 'grading.memory_mb'  # what sets memory_mb, for a grader that ran out of it
    self._abort = threading.Event()  # set by a close on an exception (Ctrl-C): the sandbox loop stops at once
    # the job being graded, and one whose caller stopped waiting (Ctrl-C in a notebook's cell): when they are the
    # same, that job stops as on an abort, and the pool goes on with the next
    self._current: concurrent.futures.Future | None = None
    self._dropped: concurrent.futures.Future | None = None
    self._warned: set[str] = set()
    self._thread = threading.Thread(target=self._dispatch_forever, name='rftjax-grading', daemon=True)
    self._thread.start()

  @classmethod
  def from_config(cls, grading, response_format=None, **overrides) -> 'GradingPool':
    """The pool a run's `config.grading` describes (a ConfigDict, or config.json's dict, where a key an older run
    lacks takes its default); `overrides` (a command's flags) win."""
    g = grading or {}
    return cls(**{
      'num_workers': g.get('num_workers') or None,
      'timeout_s': float(g.get('timeout_s', TRAIN_TIMEOUT_S)),
      'memory_mb': int(g.get('memory_mb', DEFAULT_MEMORY_MB)),
      'budget_s': g.get('step_budget_s') or None,
      'model_threads': int(g.get('model_threads', 16)),  # a provider's concurrency limit
      'allow_unsandboxed': bool(g.get('allow_unsandboxed', False)),
      'response_format': response_format,
      **overrides,
    })  # fmt: skip

  def check(self, grader: core.Grader) -> None:
    """`check_sandbox` for this pool; running unsandboxed, or as root with nothing to cap the processes a grader
    starts, is logged as a warning, once per grader and pool."""
    if grader.name in self._warned:
      return
    if check_sandbox(grader, self.allow_unsandboxed):
      self._warned.add(grader.name)
      log.warning('grading with %r WITHOUT a sandbox (grading.allow_unsandboxed=True): its code can read and write '
                  'what this user can, and reach the network. %s', grader.name, self.isolation.reason)  # fmt: skip
    elif _runs_code(grader) and os.geteuid() == 0 and not workers.cgroups_writable():
      self._warned.add(grader.name)
      log.warning('grader %r runs code as root, where RLIMIT_NPROC does not bind and %s (a cgroup v1 pids hierarchy) '
                  'is not writable: nothing caps the processes its code starts (the audit hook refuses forks, but code '
                  'can get past it); run rftjax as a non-root user to forbid them (docs/graders.md, "Isolation")',
                  grader.name, workers.CGROUP_ROOT)  # fmt: skip

  # Public API ------------------------------------------------------------------------------------------------
  def submit(
    self, grader: core.Grader, samples: list[str], items: list[dict], traces: list[str] | None = None
  ) -> concurrent.futures.Future:
    """Non-blocking: returns a Future whose .result() is list[GradeResult], one per sample, in order. `traces`: each
    sample's trace id (its episode's, shared with its tool calls), for the graders that send one (`endpoint`);
    None: they make a fresh one per sample."""
    self.check(grader)
    if self._closed:
      raise RuntimeError('GradingPool is closed')
    if len(samples) != len(items):
      raise ValueError(f'samples and items must have the same length, found {len(samples)} and {len(items)}')
    if traces is not None and len(traces) != len(samples):
      raise ValueError(f'traces and samples must have the same length, found {len(traces)} and {len(samples)}')
    fut: concurrent.futures.Future = concurrent.futures.Future()
    self._jobs.put((grader, list(samples), list(items), None if traces is None else list(traces), fut))
    return fut

  def grade(
    self, grader: core.Grader, samples: list[str], items: list[dict], traces: list[str] | None = None
  ) -> list[core.GradeResult]:
    if grader.mode == core.INLINE and not self._closed:  # cheap: skip the thread hop (and INLINE takes no traces)
      return self._formatted(grader, list(samples), list(items), None, lambda s, i, t: grader.grade_batch(s, i))
    fut = self.submit(grader, samples, items, traces)
    try:
      return fut.result()
    except BaseException:  # noqa: BLE001  (Ctrl-C while waiting: the next call must not wait for this job)
      if not fut.cancel():
        self._dropped = fut
      raise

  def _formatted(
    self, grader: core.Grader, samples: list[str], items: list[dict], traces: list[str] | None, grade_fn
  ) -> list[core.GradeResult]:
    """`grade_fn(samples, items, traces)` over the samples that pass the response format; the others score 0
    ungraded, 0 on each of a multi grader's sub-graders too (the metrics keep every sub-grader's name at a step
    none passed), with the reason in metadata (the model's miss, not a grader error). Without a format: `grade_fn`
    as is."""
    if self.response_format is None:
      return grade_fn(samples, items, traces)
    reasons = [self.response_format.validate(s) for s in samples]
    ok = [i for i, why in enumerate(reasons) if why is None]
    kept_traces = None if traces is None else [traces[i] for i in ok]
    graded = iter(grade_fn([samples[i] for i in ok], [items[i] for i in ok], kept_traces) if ok else [])
    out = []
    for why in reasons:
      if why is None:
        r = next(graded)
        out.append(core.GradeResult(r.reward, r.sub_rewards, r.errors, {**r.metadata, 'response_format_valid': True}))
      else:
        zeros = {name: 0.0 for name in getattr(grader, 'subs', {})}
        out.append(core.GradeResult(0.0, zeros, (), {'response_format_valid': False, 'response_format_error': why}))
    return out

  def close(self, abort: bool = False) -> None:
    """Waits for the jobs submitted (up to 30 s), then stops the workers. abort: the caller is leaving on an
    exception (Ctrl-C): queued jobs are cancelled and the one running stops within a fraction of a second."""
    if self._closed:
      return
    self._closed = True
    if abort:
      self._abort.set()
      while True:
        try:
          job = self._jobs.get_nowait()
        except queue.Empty:
          break
        if job is not None:
          job[-1].cancel()
    self._jobs.put(None)
    self._thread.join(timeout=30)
    self._model_threads.shutdown(wait=False, cancel_futures=True)

  def __enter__(self) -> 'GradingPool':
    return self

  def __exit__(self, exc_type, *exc) -> None:
    self.close(abort=exc_type is not None)

  def __del__(self):
    try:
      self.close()
    except Exception:  # noqa: BLE001
      pass

  # Dispatcher thread -----------------------------------------------------------------------------------------
  def _dispatch_forever(self) -> None:
    try:
      while True:
        job = self._jobs.get()
        if job is None:
          return
        grader, samples, items, traces, fut = job
        if not fut.set_running_or_notify_cancel():
          continue
        deadline = time.monotonic() + self.budget_s if self.budget_s else float('inf')
        self._current = fut
        try:
          grade_fn = lambda s, i, t: self._grade_now(grader, s, i, deadline, t)  # noqa: E731
          fut.set_result(self._formatted(grader, samples, items, traces, grade_fn))
        except BaseException as e:  # noqa: BLE001  (hand any bug to the caller instead of hanging it)
          fut.set_exception(e)
    finally:
      for w in self._workers:
        w.kill()
      self._workers.clear()

  def _grade_now(
    self, grader: core.Grader, samples: list[str], items: list[dict], deadline: float, traces: list[str] | None = None
  ) -> list[core.GradeResult]:
    leaves = _leaves(grader)
    per_leaf: list[list[core.GradeResult]] = [None] * len(leaves)  # type: ignore[list-item]
    model_futs, sandbox_jobs = {}, {}
    for k, leaf in enumerate(leaves):
      if leaf.mode == core.MODEL:
        # a leaf that wants a trace id gets one (None: it makes its own); the others keep their three arguments
        extra = [(t,) for t in traces or [None] * len(samples)] if leaf.wants_trace else [()] * len(samples)
        model_futs[k] = [
          self._model_threads.submit(leaf.grade_one, s, it, self.timeout_s, *x)
          for s, it, x in zip(samples, items, extra)
        ]
      elif leaf.mode == core.SANDBOX:
        tasks, early = leaf.sandbox_tasks(samples, items)
        job = _SandboxJob(leaf, tasks, float(leaf.spec.get('timeout_s', self.timeout_s)))
        job.results.update(early)
        sandbox_jobs[k] = job
    try:
      for k, leaf in enumerate(leaves):
        if leaf.mode == core.INLINE:
          per_leaf[k] = leaf.grade_batch(samples, items)
      if sandbox_jobs:
        self._run_sandbox(list(sandbox_jobs.values()), deadline)
        for k, job in sandbox_jobs.items():
          per_leaf[k] = [job.results[i] for i in range(len(samples))]
      for k, futs in model_futs.items():
        over = core.ENDPOINT if leaves[k].type == 'endpoint' else core.MODEL_SERVER  # its server did not answer
        per_leaf[k] = [self._judged(f, deadline, over) for f in futs]
    except concurrent.futures.CancelledError:  # a dropped job: its requests not yet sent are not sent
      for fut in (f for futs in model_futs.values() for f in futs):
        fut.cancel()
      raise
    if hasattr(grader, 'combine'):
      return grader.combine(per_leaf)
    return per_leaf[0]

  def _stopping(self) -> bool:
    """Whether the job being graded is to stop: the pool is closing on an exception, or its caller left."""
    return self._abort.is_set() or (self._dropped is not None and self._dropped is self._current)

  def _over_budget(self, category: str = core.PYTHON_TIMEOUT) -> core.GradeResult:
    """A sample the budget left ungraded: discarded from the loss, as an outage's (it says nothing of the policy).
    `category`: the grader's timeout (python_grader_timeout; a judge's or endpoint's server that had not answered)."""
    if self.budget_label:
      return core.failed(category, f'the grading budget ({self.budget_label}) ran out before this sample was graded',
                         discard=True)  # fmt: skip
    return core.failed(category, f"the step's grading budget of {self.budget_s:g} s ran out before this sample was "
                       'graded (grading.step_budget_s)', discard=True)  # fmt: skip

  def _judged(self, fut: concurrent.futures.Future, deadline: float, category: str) -> core.GradeResult:
    """A judge's or endpoint's result, waited for in short slices: a pool closing on Ctrl-C stops waiting at once
    (a request that never answers held the close for its whole timeout, retries included)."""
    while True:
      if self._stopping():
        fut.cancel()
        raise concurrent.futures.CancelledError('the grading pool was closed, or its caller stopped waiting')
      try:
        return fut.result(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
      except concurrent.futures.TimeoutError:
        if time.monotonic() >= deadline:
          fut.cancel()
          return self._over_budget(category)

  def _new_worker(self) -> workers.Worker:
    return workers.Worker(self.memory_mb, self.disk_mb, self.isolation if self.isolation.available else None)

  def _run_sandbox(self, jobs: list[_SandboxJob], deadline: float = float('inf')) -> None:
    if not any(j.pending for j in jobs):
      return
    while len(self._workers) < self.num_workers:
      self._workers.append(self._new_worker())
    chunk = max(1, min(self.chunk_size, -(-sum(len(j.pending) for j in jobs) // (2 * self.num_workers))))
    while True:
      if self._stopping():  # the pool is closing on an exception, or the caller left: nobody waits for these results
        for slot, w in enumerate(self._workers):  # a busy worker's task goes with it: the pool may go on
          if w.chunk is not None and not self._abort.is_set():  # (a closing pool kills them all)
            w.chunk = w.job = None
            self._replace(slot, w)
        raise concurrent.futures.CancelledError('the grading pool was closed, or its caller stopped waiting')
      for slot, w in enumerate(self._workers):  # hand out work to idle workers
        while w.chunk is None:
          job = next((j for j in jobs if j.pending), None)
          if job is None:
            break
          # a code sample runs the model's code: one per worker, so that nothing it changes reaches another
          size = 1 if job.spec['kind'] == 'code' else chunk
          tasks = [job.pending.popleft() for _ in range(min(size, len(job.pending)))]
          request = {'grader': job.spec, 'tasks': tasks, 'memory': f'{self.memory_mb} MB ({self.memory_label})'}
          if job.spec['kind'] == 'python':
            request['stop'] = [job.timeout_s, self._too_long(job)]
          try:
            w.send(request, job.timeout_s)
          except (OSError, TimeoutError):
            job.pending.extendleft(reversed(tasks))
            w = self._replace(slot, w)
            continue
          grace = 0.0 if job.spec['key'] in w.loaded else self.load_grace_s
          w.deadline_s = _task_timeout(job, tasks)
          w.chunk, w.job, w.deadline = tasks, job, time.monotonic() + w.deadline_s + grace
      busy = [w for w in self._workers if w.chunk is not None]
      if not busy:
        return
      if time.monotonic() >= deadline:  # the step's budget is spent: what is left scores 0, named
        for slot, w in enumerate(list(self._workers)):
          if w.chunk is not None:
            w.job.pending.extendleft(reversed(w.chunk))
            w.chunk = []
            self._replace(slot, w)
        for job in jobs:
          while job.pending:
            job.results[job.pending.popleft()[0]] = self._over_budget()
        return
      # at most 0.2 s between looks at the abort flag
      timeout = max(0.0, min(min(w.deadline for w in busy), deadline, time.monotonic() + 0.2) - time.monotonic())
      readable, _, _ = select.select([w.r for w in busy], [], [], timeout)
      now = time.monotonic()
      for slot, w in enumerate(list(self._workers)):
        if w.chunk is None:
          continue
        if w.r in readable:
          try:
            frames = w.read_frames()
          except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: JSON nested too deep
            frames = None
            self._end_current(w, _lost(w, core.OTHER, f'worker sent an unreadable reply: {str(e)[:200]}'))
          if frames is None:
            if w.chunk:
              self._end_current(w, _lost(w, core.PYTHON_RUNTIME, w.exit_description()))
            self._replace(slot, w)
            continue
          ran_code = w.job.spec['kind'] == 'code'
          try:
            for frame in frames:
              self._accept(w, frame)
          except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            self._end_current(w, _lost(w, core.OTHER, f'worker sent an unexpected reply: {str(e)[:200]}'))
            self._replace(slot, w)
            continue
          # a grader the worker stopped may have left processes or half-done state behind: the worker goes, as
          # does one whose code sample is graded, with whatever it changed
          stopped = any((f.get('e') or [None])[0] == core.PYTHON_TIMEOUT for f in frames)
          if stopped or (w.chunk is None and ran_code):
            self._replace(slot, w)
          elif frames and w.chunk is not None:  # only whole replies restart the clock
            w.deadline_s = _task_timeout(w.job, w.chunk)
            w.deadline = now + w.deadline_s
        elif now >= w.deadline:
          if _runs_completion(w):  # a loop whose bare `except:` swallows the per-test alarm
            self._end_current(w, _lost(w, core.PYTHON_TIMEOUT, f'ran past the sample deadline of {w.deadline_s:g} s'))
          else:
            why = f'{self._too_long(w.job)}; worker killed'
            if w.job.spec['kind'] == 'python' and w.job.spec['key'] in w.loaded:
              why += (
                ' (it could not be stopped to show where: a long call into compiled code, a bare `except:`, or '
                'a SIGALRM handler or alarm of its own)'
              )
            self._end_current(w, core.failed(core.PYTHON_TIMEOUT, why))
          self._replace(slot, w)

  def _too_long(self, job: _SandboxJob) -> str:
    where = "the grader's timeout_s" if job.explicit_timeout else self.timeout_label  # its own, else the pool's
    return f'grading took longer than {job.timeout_s:g} s (wall clock, {where})'

  def _accept(self, w: workers.Worker, frame: dict) -> None:
    if not isinstance(frame, dict):
      raise TypeError(f'a reply is {type(frame).__name__}, expected an object')
    if 'loaded' in frame:
      w.loaded.add(frame['loaded'])
      return
    job = w.job
    idx = frame.get('i')
    if not w.chunk or w.chunk[0][0] != idx:
      raise ValueError(f'worker answered task {idx}, expected {w.chunk[0][0] if w.chunk else None}')
    # a code sample's code runs in the worker and can write to its pipe: a reply is checked before it counts. The
    # worker sends 0 with an error, or a finite score in [0, 1] (one outside was clamped, the error names it)
    err = frame.get('e')
    score, meta = float(frame.get('s') or 0.0) if err else float(frame['s']), frame.get('m') or {}
    if not 0.0 <= score <= 1.0:  # NaN fails this too
      raise ValueError(f'score {score} outside [0, 1]')
    if not isinstance(meta, dict):
      raise TypeError(f'metadata is {type(meta).__name__}, expected an object')
    meta = {k: v for k, v in meta.items() if k != 'discard'}  # only an HTTP grader's outage leaves a rollout out
    w.chunk.pop(0)
    errors = (core.GradeError(str(err[0]), str(err[1])),) if err else ()
    job.results[idx] = core.GradeResult(score, {}, errors, meta)
    if not w.chunk:
      w.chunk, w.job = None, None

  def _end_current(self, w: workers.Worker, result: core.GradeResult) -> None:
    """The task the worker was on gets `result` (it failed, or it ran out its time); its unanswered successors go
    back to the front of the queue."""
    if not w.chunk:
      return
    (idx, _), rest = w.chunk[0], w.chunk[1:]
    w.job.results[idx] = result
    w.job.pending.extendleft(reversed(rest))
    w.chunk = []

  def _replace(self, slot: int, w: workers.Worker) -> workers.Worker:
    job = w.job
    if w.chunk:
      job.pending.extendleft(reversed(w.chunk))
    w.kill()
    fresh = self._new_worker()
    self._workers[slot] = fresh
    return fresh
