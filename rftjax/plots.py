"""The reward curve of a run: train reward (raw and smoothed) and validation reward against step, as a PNG (and the
tool calls per rollout, for runs whose episodes call tools).

  path = plots.write_reward_plot(workdir)   # DIR/reward_curve.png, from DIR/metrics.jsonl

Read-only on metrics.jsonl, so it can run while training writes; the PNG is replaced atomically.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pathlib
import sys

import numpy as np

from rftjax import data as data_lib
from rftjax import metrics as metrics_lib


def smooth(values, weight: float = 0.8) -> np.ndarray:
  """TensorBoard-style exponential moving average, debiased so the first points are not pulled to 0."""
  out, avg = [], 0.0
  for i, v in enumerate(values, start=1):
    avg = weight * avg + (1 - weight) * v
    out.append(avg / (1 - weight**i))
  return np.asarray(out)


def metric_series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of one metric from metrics.jsonl records, by step (None values skipped; a rewritten step's
  last value wins)."""
  pts = sorted({int(r['step']): r[key] for r in records if r.get(key) is not None}.items())
  return [s for s, _ in pts], [float(v) for _, v in pts]


def reward_series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
  """{'train': (steps, rewards), 'valid': (steps, rewards)} from metrics.jsonl records (None values skipped)."""
  return {name: metric_series(records, f'{name}_reward_mean') for name in ('train', 'valid')}


def figure():
  """A 7 x 4 inch matplotlib Figure drawn by Agg, and its axes, made without pyplot: pyplot's backend is the
  process's, and a notebook training in-process kept Agg's after the first plot (its own plots then showed nothing).
  A Jupyter kernel's MPLBACKEND (`module://matplotlib_inline...`), inherited by `!python -m rftjax.train` whose
  environment lacks that module, made `import matplotlib` itself fail: it is dropped first."""
  backend = os.environ.get('MPLBACKEND', '')
  if backend.startswith('module://') and 'matplotlib' not in sys.modules:
    if importlib.util.find_spec(backend.removeprefix('module://').split('.')[0]) is None:
      del os.environ['MPLBACKEND']
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(7, 4), dpi=100)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


def write_png(fig, path: str | os.PathLike) -> None:
  """`fig` as a PNG at `path`, whole or not at all (its temp file its own: the trainer's beside)."""
  png = io.BytesIO()
  fig.savefig(png, format='png')
  data_lib.write_atomic(path, png.getvalue())


def reward_figure(workdir: str | os.PathLike, kept=()):
  """The figure: train reward (raw and smoothed) and validation reward against step, the kept best checkpoints
  (`kept`, their steps) starred on the validation curve, whole-number steps on the x axis."""
  workdir = pathlib.Path(workdir)
  records = metrics_lib.read_jsonl(workdir / 'metrics.jsonl', stepped=True)
  series = reward_series(records)
  fig, ax = figure()
  import matplotlib.ticker  # after figure(): the environment's backend is checked first

  call_steps, calls = metric_series(records, 'tools/calls_per_rollout')
  if calls:  # an episode run (docs/tools.md): how often the policy calls its tools, on the same axis
    ax.plot(call_steps, smooth(calls), color='tab:green', linestyle='--', linewidth=1.5,
            label='tool calls per rollout (train, smoothed)')  # fmt: skip
  steps, rewards = series['train']
  if steps:
    ax.plot(steps, rewards, color='tab:blue', alpha=0.3, linewidth=1, label='train (raw)')
    ax.plot(steps, smooth(rewards), color='tab:blue', linewidth=2, label='train (smoothed)')
  steps, rewards = series['valid']
  if steps:
    ax.plot(steps, rewards, color='tab:orange', marker='o', linewidth=2, label='validation')
    best = [(s, r) for s, r in zip(steps, rewards) if s in set(kept)]
    if best:
      ax.plot(*zip(*best), linestyle='none', marker='*', markersize=14, color='tab:red', label='kept best checkpoints')
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel('step')
  ax.set_ylabel('mean reward' + (' / tool calls' if calls else ''))
  ax.set_title(workdir.name)
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend(loc='best')
  fig.tight_layout()
  return fig


def write_reward_plot(workdir: str | os.PathLike, out: str | os.PathLike | None = None, kept=()) -> pathlib.Path:
  """Writes `reward_figure` (default DIR/reward_curve.png, replaced atomically) and returns its path; an empty run
  gives an empty axes."""
  out = pathlib.Path(out) if out else pathlib.Path(workdir) / 'reward_curve.png'
  write_png(reward_figure(workdir, kept), out)
  return out
