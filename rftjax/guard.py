"""The collapse guard: a warning (and with `guard.stop`, a clean stop) when an RL run goes bad.

  configs/common.py:  guard.add_guard_fields(c)                              # config.guard.*; warns by default
  trainer.train:      g = guard.Guard(config.guard, max_new_tokens)
                      g.replay(records already in metrics.jsonl)             # on resume: the same counts
                      alarms = g.observe(record)                             # each record written to metrics.jsonl

The guard is host-side and pure: it sees the records the trainer writes to metrics.jsonl (training steps with
`train_reward_mean`, `entropy`, `truncated_frac`; evaluations with `valid_reward_mean`) and nothing else, so
replaying the file after a resume rebuilds its counts exactly (metrics.jsonl is cut back to the checkpoint's step).
Other records (a checkpoint's timing) are ignored. The six alarms (docs/guard.md):

  valid_reward_drop  valid_reward_mean below the best so far by more than min_delta and more than `sigmas` standard
                     errors of the difference (over valid/num_graded less valid/num_discarded gradings), `patience`
                     evaluations in a row
  train_valid_gap    train_reward_mean (mean over the steps since the previous evaluation) - valid_reward_mean > gap,
                     `patience` evaluations in a row
  entropy_collapse   entropy < entropy_low x its start, on steps whose train_reward_mean < solved_reward,
                     `step_patience` steps in a row
  entropy_blowup     entropy > entropy_high x its start (or not a finite number), `step_patience` steps in a row
  length_pinned      truncated_frac >= guard.truncated_frac, `step_patience` steps in a row, in a run that did not
                     start that way
  no_signal          zero_std_group_frac = 1 (every group's completions scored alike: no advantage, no gradient),
                     `no_signal_steps` steps in a row

"Its start" is the mean over the first START_STEPS training steps. An alarm fires when its run of bad evaluations or
steps reaches the patience, once; it fires again only after a good one has ended that run. With `guard.stop`, the
alarms in STOPS ask the trainer to stop; the others always only warn.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shlex

import ml_collections

from rftjax import metrics as metrics_lib

KINDS = ('valid_reward_drop', 'train_valid_gap', 'entropy_collapse', 'entropy_blowup', 'length_pinned', 'no_signal')
# only direct evidence stops a run: validation (what ranks checkpoints) falling, or a policy more random than the model
# it started from; a collapsed entropy (a solved task looks the same), pinned lengths and a gap may be healthy
STOPS = ('valid_reward_drop', 'entropy_blowup')
START_STEPS = 5  # one step's entropy is noisy; five steps are still the model the run started from
_EPS = 1e-9  # slack for float thresholds: 0.52 - 0.47 is not "more than 0.05"


def add_guard_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds `config.guard` (call from configs/common.py before the config is locked). Defaults: docs/guard.md."""
  g = ml_collections.ConfigDict()
  g.enabled = True  # log a warning (and a 'warn' event in events.jsonl) when an alarm fires; False: no checks
  g.stop = False  # True: valid_reward_drop and entropy_blowup also stop the run, after a checkpoint (exit status 4)
  g.patience = 3  # evaluations in a row for the alarms on validation (valid_reward_drop, train_valid_gap)
  g.min_delta = 0.05  # reward: a drop counts when valid_reward_mean is more than this below the best so far ...
  g.sigmas = 2.5  # ... and more than this many standard errors of the difference (rewards in [0, 1]); 0 = off
  g.gap = 0.2  # reward: train_reward_mean above valid_reward_mean by more than this counts; 0 = off
  g.step_patience = 10  # training steps in a row for the alarms on training steps (entropy, length)
  g.entropy_low = 0.1  # collapse: entropy below this fraction of its start (mean of steps 1-5); 0 = off
  g.solved_reward = 0.9  # ... on steps whose train_reward_mean is below this (a learnt task needs no exploration)
  g.entropy_high = 2.0  # blow-up: entropy above this multiple of its start; 0 = off
  g.truncated_frac = 0.8  # pinned: this share of completions or more cut at max_new_tokens; 0 = off
  g.no_signal_steps = (
    3  # steps in a row whose every group scored alike (nothing to learn from) before a warning; 0 = off
  )
  with config.unlocked():
    config.guard = g
  return config


@dataclasses.dataclass(frozen=True)
class Alarm:
  """One alarm: `kind` (one of KINDS), the `step` of the record that fired it, a one-line `message` with the
  numbers, the same numbers in `data` (JSON-able), and `stop`: the trainer should stop (guard.stop and a STOPS kind)."""

  kind: str
  step: int
  message: str
  data: dict
  stop: bool = False


def _finite(x) -> float | None:
  """The value as a float, or None: NaN is written to metrics.jsonl as null, and a replay must see what a live run
  saw."""
  if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
    return None
  return float(x)


def _f(x: float | None) -> str:
  return 'not a finite number' if x is None else f'{x:.4g}'


def _mean(pairs) -> float:
  return sum(v for _, v in pairs) / len(pairs)


def _times(n: int, what: str) -> str:
  return f'{n} {what}' if n == 1 else f'{n} {what}s'


def _listed(pairs) -> str:
  return ('step ' if len(pairs) == 1 else 'steps ') + ', '.join(str(t) for t, _ in pairs)


def _steps(pairs) -> str:
  return f'steps {pairs[0][0]}-{pairs[-1][0]}' if len(pairs) > 1 else f'step {pairs[0][0]}'


def _fresh() -> dict:
  return {
    'best': None,  # [valid_reward_mean, step, gradings it is over] of the best evaluation so far (later on ties)
    'window': [0.0, 0, None],  # train_reward_mean sum, count and first step since the previous evaluation
    'start': {'entropy': [], 'truncated_frac': []},  # [step, value] of the first START_STEPS training steps
    'runs': {k: {'n': 0, 'seen': []} for k in KINDS},  # each alarm's current run of bad records: length, last few
    'peak': None,  # [train_reward_mean, step] of the best training step so far
  }


class Guard:
  """Watches one run's metric records; see the module docstring. `state()` / `restore()` carry the counts (a small
  JSON-able dict); `replay(records)` rebuilds them from metrics.jsonl."""

  def __init__(self, cfg, max_new_tokens: int):
    self.enabled, self.stop = bool(cfg.enabled), bool(cfg.stop)
    self.patience, self.step_patience = int(cfg.patience), int(cfg.step_patience)
    self.min_delta, self.sigmas, self.gap = float(cfg.min_delta), float(cfg.sigmas), float(cfg.gap)
    self.entropy_low, self.entropy_high = float(cfg.entropy_low), float(cfg.entropy_high)
    self.solved_reward, self.truncated_frac = float(cfg.solved_reward), float(cfg.truncated_frac)
    self.no_signal_steps = int(cfg.get('no_signal_steps', 3))  # a run's config.json from before it has none
    self.max_new_tokens = int(max_new_tokens)
    self.restore(None)

  # ---- state ----------------------------------------------------------------------------------------------------
  def state(self) -> dict:
    """Everything the counting depends on, as plain JSON types (floats round-trip exactly through JSON)."""
    return copy.deepcopy(self._s)

  def restore(self, state: dict | None) -> None:
    """Continue from `state()` of an earlier Guard; None starts afresh."""
    self._s = copy.deepcopy(state) if state is not None else _fresh()

  def replay(self, records) -> list[Alarm]:
    """Observes `records` (e.g. metrics.jsonl up to the resume step) in order; returns their alarms, which were
    reported when they first fired."""
    return [a for r in records for a in self.observe(r)]

  @property
  def best(self) -> tuple[int, float] | None:
    """(step, valid_reward_mean) of the best evaluation seen, the later one on ties (as the Checkpointer ranks)."""
    return None if self._s['best'] is None else (self._s['best'][1], self._s['best'][0])

  # ---- observing ------------------------------------------------------------------------------------------------
  def observe(self, record: dict) -> list[Alarm]:
    """The alarms `record` fires (usually none). Training and evaluation records both go here, in the order the
    trainer writes them."""
    if not self.enabled or 'step' not in record:
      return []
    step = int(record['step'])
    alarms = []
    if 'train_reward_mean' in record:
      alarms += self._train(step, record)
    if 'valid_reward_mean' in record:
      alarms += self._valid(step, record)
    return alarms

  def _count(self, kind: str, hit: bool, step: int, value, patience: int) -> list | None:
    """Extends or ends `kind`'s run of bad records; returns the run's last `patience` [step, value] pairs on the
    record that makes it `patience` long (once per run), else None."""
    run = self._s['runs'].setdefault(kind, {'n': 0, 'seen': []})  # a state saved before `kind` existed
    if not hit:
      run['n'], run['seen'] = 0, []
      return None
    run['n'] += 1
    run['seen'] = (run['seen'] + [[step, value]])[-patience:]
    return list(run['seen']) if run['n'] == patience else None

  def _alarm(self, kind: str, step: int, message: str, data: dict) -> Alarm:
    return Alarm(kind, step, message, data, stop=self.stop and kind in STOPS)

  def _train(self, step: int, record: dict) -> list[Alarm]:
    s, alarms = self._s, []
    reward = _finite(record.get('train_reward_mean'))
    if reward is not None:
      if s.get('peak') is None or reward > s['peak'][0]:  # a state saved before 'peak' existed has none
        s['peak'] = [reward, step]
      window = s['window']
      window[0], window[1] = window[0] + reward, window[1] + 1
      window[2] = step if window[2] is None else window[2]
    if 'entropy' in record:
      alarms += self._entropy(step, _finite(record['entropy']), reward, _finite(record.get('zero_std_group_frac')))
    if 'truncated_frac' in record:
      alarms += self._length(step, _finite(record['truncated_frac']), _finite(record.get('completion_len_mean')))
    if 'zero_std_group_frac' in record and self.no_signal_steps > 0:
      alarms += self._no_signal(step, _finite(record['zero_std_group_frac']), reward,
                                _finite(record.get('truncated_frac')), record)  # fmt: skip
    return alarms

  def _no_signal(self, step: int, share: float | None, reward: float | None, cut: float | None,
                 record: dict) -> list[Alarm]:  # fmt: skip
    # every group of G completions scored alike: GRPO's advantages are all 0, so the step changed nothing. A run of
    # such steps trains to its end on nothing (a reference the grader can never match, a task already solved)
    run = self._count('no_signal', share is not None and share >= 1 - _EPS, step, reward, self.no_signal_steps)
    if not run:
      return []
    rewards = [r for _, r in run if r is not None]
    mean = sum(rewards) / len(rewards) if rewards else None
    # most answers did not get to their end (one token leaves no room for a stop: configs/tiny.py answers in one)
    cut_short = mean == 0 and cut is not None and cut >= 0.5 and self.max_new_tokens > 1
    peak = self._s.get('peak')
    # the run earned reward before: the grader and the task were fine then, the policy has moved off its answers
    fell = mean == 0 and peak is not None and peak[0] >= 0.05 and peak[1] < run[0][0]
    # kl is measured only against a reference (grpo.beta > 0): a 0 there is no evidence of anything
    moved = ', '.join(f'{k} {_f(v)}' for k in ('kl', 'entropy')
                      if (v := _finite(record.get(k))) is not None and (k != 'kl' or v > 0))  # fmt: skip
    moved = f' ({moved})' if moved else ''
    what = (f'{cut:.0%} of the completions ran to max_new_tokens={self.max_new_tokens} without stopping: answers cut '
            'short score 0; raise sampling.max_new_tokens (or ask the prompts for shorter answers)' if cut_short else
            f'every completion scored 0, after train_reward_mean {_f(peak[0])} at step {peak[1]}: the policy moved '
            f'off the answers it gave{moved}; a learning rate too high does this: lower optimizer.learning_rate '
            '(or raise grpo.beta) and train again from a checkpoint before the fall (docs/guard.md)' if fell else
            'every completion scored 0: check the grader against a few of them (python -m rftjax.grade --sample=...) '
            'and the references, or the task is out of reach for this model' if mean == 0 else
            'every completion scored 1: the task is already solved for these prompts, or the grader passes anything '
            '(try it on a wrong answer: python -m rftjax.grade --sample=...)' if mean == 1 else
            "each prompt's completions all pass or all fail: more num_generations, a higher sampling.temperature "
            'or prompts of middling difficulty give a group a spread')  # fmt: skip
    return [
      self._alarm(
        'no_signal',
        step,
        f'every group of completions got one reward at {_steps(run)} (zero_std_group_frac 1, train_reward_mean '
        f'{_f(mean)}): no advantage, so no gradient and nothing learnt; {what} (guard.no_signal_steps='
        f'{self.no_signal_steps})',
        {'train_reward_mean': mean, 'truncated_frac': cut, 'steps': [run[0][0], step]},
      )
    ]

  def _entropy(self, step: int, entropy: float | None, reward: float | None, no_signal: float | None) -> list[Alarm]:
    start = self._s['start']['entropy']
    if len(start) < START_STEPS:
      if entropy is not None:
        start.append([step, entropy])
      return []
    ref, alarms = _mean(start), []
    where = f'its mean over {_steps(start)}'
    if self.entropy_low > 0 and entropy is not None:
      limit = self.entropy_low * ref
      solved = reward is not None and reward >= self.solved_reward
      run = self._count('entropy_collapse', entropy < limit - _EPS and not solved, step, entropy, self.step_patience)
      if run:
        # groups whose G completions all score the same teach nothing: what a collapse costs
        signal = '' if no_signal is None else f'; zero_std_group_frac {_f(no_signal)}'
        alarms.append(
          self._alarm(
            'entropy_collapse',
            step,
            f'entropy fell to {_f(entropy)} at step {step}, below guard.entropy_low={self.entropy_low:g} x '
            f'{_f(ref)} ({where}) = {_f(limit)} for {_times(len(run), "step")} in a row ({_steps(run)}, mean '
            f'{_f(_mean(run))}) with train_reward_mean below guard.solved_reward={self.solved_reward:g}{signal}',
            {
              'entropy': entropy,
              'start': ref,
              'limit': limit,
              'steps': [run[0][0], step],
              'zero_std_group_frac': no_signal,
            },
          )
        )
    if self.entropy_high > 0 and ref > 0:
      limit = self.entropy_high * ref
      hit = entropy is None or entropy > limit + _EPS
      run = self._count('entropy_blowup', hit, step, entropy, self.step_patience)
      if run:
        values = [v for _, v in run if v is not None]
        mean = f', mean {_f(sum(values) / len(values))}' if len(values) == len(run) else ''
        seen = 'was not a finite number' if entropy is None else f'rose to {_f(entropy)}'
        alarms.append(
          self._alarm(
            'entropy_blowup',
            step,
            f'entropy {seen} at step {step}, above guard.entropy_high={self.entropy_high:g} x '
            f'{_f(ref)} ({where}) = {_f(limit)} for {_times(len(run), "step")} in a row ({_steps(run)}{mean})',
            {'entropy': entropy, 'start': ref, 'limit': limit, 'steps': [run[0][0], step]},
          )
        )
    return alarms

  def _length(self, step: int, share: float | None, length: float | None) -> list[Alarm]:
    start = self._s['start']['truncated_frac']
    if len(start) < START_STEPS:
      if share is not None:
        start.append([step, share])
      return []
    ref = _mean(start)
    # a run pinned from its first steps is its configuration (configs/tiny.py answers in max_new_tokens=1 token),
    # not a collapse: that shows in truncated_frac from step 1
    if self.truncated_frac <= 0 or ref >= self.truncated_frac - _EPS or share is None:
      return []
    run = self._count('length_pinned', share >= self.truncated_frac - _EPS, step, share, self.step_patience)
    if not run:
      return []
    mean_len = f' (mean length {_f(length)} tokens)' if length is not None else ''
    return [
      self._alarm(
        'length_pinned',
        step,
        f'{share:.0%} of completions ran to max_new_tokens={self.max_new_tokens} without stopping at step {step}'
        f'{mean_len}, at or above guard.truncated_frac={self.truncated_frac:g} for {_times(len(run), "step")} in a row '
        f'({_steps(run)}); {ref:.0%} over {_steps(start)}',
        {
          'truncated_frac': share,
          'start': ref,
          'completion_len_mean': length,
          'max_new_tokens': self.max_new_tokens,
          'steps': [run[0][0], step],
        },
      )
    ]

  def _valid(self, step: int, record: dict) -> list[Alarm]:
    s, alarms = self._s, []
    total, n, first = s['window']
    s['window'] = [0.0, 0, None]  # an evaluation, even a failed one, starts the next window
    value = _finite(record['valid_reward_mean'])
    if value is None:
      return []
    if n and self.gap > 0:
      train = total / n
      run = self._count('train_valid_gap', train - value > self.gap + _EPS, step, train - value, self.patience)
      if run:
        gaps = ', '.join(_f(g) for _, g in run)
        alarms.append(
          self._alarm(
            'train_valid_gap',
            step,
            f'train_reward_mean {_f(train)} (mean of steps {first}-{step}) is {_f(train - value)} above '
            f'valid_reward_mean {_f(value)} at step {step}, more than guard.gap={self.gap:g} for '
            f'{_times(len(run), "eval")} in a row ({_listed(run)}: gaps {gaps})',
            {'train_reward_mean': train, 'valid_reward_mean': value, 'gap': train - value, 'evals': run},
          )
        )
    best, graded = s['best'], _finite(metrics_lib.num_verdicts(record))
    if best is None or value >= best[0]:
      s['best'] = [value, step, graded]
      self._count('valid_reward_drop', False, step, value, self.patience)
      return alarms
    margin = self._margin(best[0], best[2], value, graded)
    run = self._count('valid_reward_drop', best[0] - value > margin + _EPS, step, value, self.patience)
    if run:
      values = ', '.join(_f(v) for _, v in run)
      alarms.append(
        self._alarm(
          'valid_reward_drop',
          step,
          f'valid_reward_mean fell to {_f(value)} at step {step}, more than {_f(margin)} below the best {_f(best[0])} '
          f'(step {best[1]}) for {_times(len(run), "eval")} in a row ({_listed(run)}: {values}; '
          f'the margin is guard.min_delta={self.min_delta:g} or guard.sigmas={self.sigmas:g} standard errors, '
          'whichever is larger)',
          {'valid_reward_mean': value, 'best': best[0], 'best_step': best[1], 'margin': margin, 'evals': run},
        )
      )
    return alarms

  def _margin(self, best: float, best_n: float | None, value: float, n: float | None) -> float:
    """How far below the best an evaluation must be to count: min_delta, or `sigmas` standard errors of the
    difference of two evaluations when both say how many answers they graded. A mean of rewards in [0, 1] has a
    variance of at most p(1 - p) per answer; without this bound a flat run on 100-200 prompts, whose best is a lucky
    draw, would false-alarm most of the time (docs/guard.md)."""
    if self.sigmas <= 0 or not best_n or not n:
      return self.min_delta
    var = lambda p, k: min(max(p, 0.0), 1.0) * (1.0 - min(max(p, 0.0), 1.0)) / k
    return max(self.min_delta, self.sigmas * math.sqrt(var(best, best_n) + var(value, n)))


def stop_message(alarm: Alarm, workdir, best_step: int | None, best_reward: float | None = None) -> str:
  """What a user needs after a guard stop: why, which checkpoint is best, the command that exports it, and how to
  train on regardless. `best_step` / `best_reward`: the Checkpointer's best (None when no evaluated one is kept)."""
  where = shlex.quote(str(workdir))
  if best_step is None:
    best = 'No evaluated checkpoint is kept (checkpoint.keep_best=0?); the latest is what remains'
    which = 'latest'
  else:
    reward = '' if best_reward is None else f', valid_reward_mean {_f(best_reward)}'
    best = f'The best checkpoint is step {best_step}{reward}'
    which = 'best'
  return (
    f'the collapse guard stopped the run at step {alarm.step} (guard.stop=True): {alarm.kind}: {alarm.message}. '
    f'{best}; export it with: python -m rftjax.export --workdir={where} --step={which} --out=OUT '
    f'(a LoRA run: merged; --adapter for a PEFT adapter). A checkpoint of step {alarm.step} was written: to train on '
    f'from it, rerun the same command with --config.guard.stop=False (docs/guard.md says how to act on each alarm)'
  )
