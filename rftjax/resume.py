"""Resuming a run: the config given, compared with the `config.json` of the run in the workdir (`check`).

A change of what the run is (RUN_IDENTITY: the model, its tokenizer, LoRA shape, data or grader) is refused with the
keys that differ, in words that say what to do: a setting new since an upgrade, paths named from another folder,
files moved to another machine, or another run indeed. Other changes are returned for the trainer's warnings.
`check_logs`: a folder with a run's logs but none of its checkpoints is not started over. docs/checkpoints.md has
the rules.
"""

from __future__ import annotations

import json
import os

from rftjax import checkpoint
from rftjax import errors
from rftjax import metrics
from rftjax import runfs

# What a run is: a checkpoint of another model, tokenizer or adapter shape cannot be restored, and validation
# rewards from another grader or validation set cannot rank its checkpoints against the ones already kept.
RUN_IDENTITY = ('model', 'init', 'tokenizer', 'chat_template', 'lora', 'data.train', 'data.valid', 'grader',
                'response_format')  # fmt: skip


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and k not in ('grader', 'response_format'):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _path_of(spec: str) -> str:
  """The path a file spec names ('sp:data/x.model' -> 'data/x.model'); a plain path, or a URL, as it is."""
  kind, sep, rest = spec.partition(':')
  return rest if sep and '://' not in spec and len(kind) <= 4 else spec


def _same_file(a, b) -> bool:
  """Equal specs, or two spellings ('data/x.jsonl', 'sp:./data/x.model') of one local file."""
  if a == b or not (isinstance(a, str) and isinstance(b, str)):
    return a == b
  pa, pb = _path_of(a), _path_of(b)
  return a[: len(a) - len(pa)] == b[: len(b) - len(pb)] and os.path.realpath(pa) == os.path.realpath(pb)


def _moved(a, b) -> bool:
  """Whether `a` and `b` may be one file named from two folders: one a relative path the other ends with."""
  if not (isinstance(a, str) and isinstance(b, str)) or '://' in a + b:
    return False
  pa, pb = os.path.normpath(_path_of(a)), os.path.normpath(_path_of(b))
  return any(not x.startswith('/') and (y == x or y.endswith('/' + x)) for x, y in ((pa, pb), (pb, pa)))


def _relocated(a, b) -> bool:
  """Whether `a` names a file that is not on this machine and `b` an existing file of the same name: the run's
  files, moved (to another machine, another disk)."""
  if not (isinstance(a, str) and isinstance(b, str)) or '://' in a + b:
    return False
  pa, pb = _path_of(a), _path_of(b)
  return (
    not os.path.exists(pa)
    and os.path.exists(pb)
    and os.path.basename(pa.rstrip('/')) == os.path.basename(pb.rstrip('/'))
  )


_UNSET = object()  # a key the run's config.json lacks: added to rftjax, or to the config file, since it began


def _differences(key: str, a, b):
  """(key, a, b) at each leaf where two values differ (a grader's field, not the whole grader); a leaf one side
  lacks is _UNSET there."""
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(a.keys() | b.keys()):
      if a.get(k, _UNSET) != b.get(k, _UNSET):
        yield from _differences(f'{key}.{k}', a.get(k, _UNSET), b.get(k, _UNSET))
  elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    for i, (x, y) in enumerate(zip(a, b)):
      if x != y:
        yield from _differences(f'{key}[{i}]', x, y)
  else:
    yield key, a, b


def _difference(key: str, a, b) -> str:
  """'key was A, now B' at the first leaf where two values differ."""
  key, a, b = next(_differences(key, a, b), (key, a, b))
  show = lambda v: 'not set' if v is _UNSET else json.dumps(v, ensure_ascii=False)[:200]  # noqa: E731
  return f'{key} was {show(a)}, now {show(b)}'


def check(config, previous: dict, workdir) -> tuple[list[str], list[str]]:
  """(changed, added): the settings that changed since the run in `workdir` was started (`previous`: its
  config.json), as 'key old -> new', and those its config.json lacks (added to rftjax since), as 'key=value', for
  warnings; a change of what the run is (RUN_IDENTITY) is a ConfigError."""
  current = json.loads(config.to_json_best_effort())
  before, now = previous.get('tool_server_url'), current.get('tool_server_url')
  if before and now and before != now:  # the example tool server: a new port each run, the same server
    previous = json.loads(json.dumps(previous).replace(json.dumps(before)[1:-1], json.dumps(now)[1:-1]))
  old, new = _flat(previous), _flat(current)
  changed = [
    k
    for k in sorted(old.keys() | new.keys())
    if not _same_file(old.get(k), new.get(k)) and (k in old or new[k] not in (False, 0, '', None))
  ]  # a key the old run's config lacks, at an off value: a setting added to rftjax since, not a change
  clash = [k for k in changed if any(k == i or k.startswith(i + '.') for i in RUN_IDENTITY)]
  if clash:
    diff = '; '.join(_difference(f'config.{k}', old.get(k, _UNSET), new.get(k, _UNSET)) for k in clash)
    leaves = [a for k in clash for _, a, _ in _differences(k, old.get(k, _UNSET), new.get(k, _UNSET))]
    if all(a is _UNSET for a in leaves):
      raise errors.ConfigError(  # not another run: a setting new since it began (an upgrade, an edited config)
        f'--workdir={workdir} began without a setting this config has ({diff}): rftjax or the config file changed '
        'since, and resuming needs the model, data and grader the run began with; set it as the run began (its '
        'config.json holds its settings; a grader goes in a JSON file, --config.grader=FILE), or choose a new '
        '--workdir'
      )
    if all(_moved(old.get(k), new.get(k)) for k in clash):  # the same files, named from another folder
      raise errors.ConfigError(
        f'--workdir={workdir} was started in another folder ({diff}): its config.json keeps paths as they were '
        f'given, relative to that folder; run this command from there (not {os.getcwd()}) to resume it'
      )
    if all(_relocated(old.get(k), new.get(k)) for k in clash):  # gone from where the run had them
      raise errors.ConfigError(
        f'--workdir={workdir} was started with files that are not there now ({diff}); if they are the same files '
        f'moved, write their new places in {workdir}/config.json and run again (the training prompts are checked '
        "against the run's once the model loads), or choose a new --workdir"
      )
    raise errors.ConfigError(
      f'--workdir={workdir} holds checkpoints of another run ({diff}); resuming it needs the same model, data and '
      'grader: choose a new --workdir (or delete that one to start over)'
    )
  # total_steps: how a run is continued; openai.resolved: a JSON record of what the changed fields resolved to
  listed = [k for k in changed if k not in ('total_steps', 'openai.resolved')]
  notes = [f'{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}' for k in listed if k in old]
  # not the user's changes: settings an rftjax upgrade added, whose defaults now apply (a guard alarm, say)
  added = [f'{k}={json.dumps(new[k])}' for k in listed if k not in old]
  if 'total_steps' in changed and new.get('optimizer.schedule') == 'cosine':  # the decay is over total_steps
    notes.append(
      f'total_steps {old.get("total_steps")} -> {new.get("total_steps")} under the cosine schedule, which now decays '
      'over the new length: the learning rate jumps where the run resumes (a run of the new length from the start '
      'would have decayed differently)'
    )
  return notes, added


def check_logs(workdir) -> None:
  """A run folder whose logs go past step 0 holds no checkpoint (a copy made without checkpoints/, or they were
  deleted): training there started over without a word and replaced those logs. (A run stopped before its first
  checkpoint committed, at step 0 or while it was written, starts over as before.)"""
  folder = runfs.path(workdir)
  if checkpoint.unfinished_steps(folder / 'checkpoints', ()):  # its first save was cut short: it starts over
    return
  trained = [r['step'] for r in metrics.read_jsonl(folder / 'metrics.jsonl', stepped=True)]
  if trained and max(trained) > 0:
    raise errors.ConfigError(
      f'--workdir={workdir}: its metrics.jsonl logs a run up to step {max(trained)}, but its checkpoints/ holds no '
      'checkpoint (copied without them, or deleted?); training there would start over and replace those logs. '
      'Restore the checkpoints to resume, or choose a new --workdir (or delete metrics.jsonl and events.jsonl '
      'there to start over)'
    )
