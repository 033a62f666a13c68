"""The training loop: mesh -> tokenizer/model -> data -> resume -> loop (sample, grade, step, eval, save).

One flat function that reads top to bottom. Everything a resumed run needs is in the checkpoint (params, optimizer,
step, data position); the per-step RNG is `fold_in(seed, step)`, so a resumed run draws the samples an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from rftjax import checkpoint as checkpoint_lib
from rftjax import data as data_lib
from rftjax import graders
from rftjax import grpo
from rftjax import hparams
from rftjax import metrics as metrics_lib
from rftjax import model as model_lib
from rftjax import plots
from rftjax import preemption
from rftjax import rollout
from rftjax import runfs
from rftjax import sampler as sampler_lib
from rftjax import sharding
from rftjax import tokenizer as tokenizer_lib
from rftjax import train_step as step_lib

log = logging.getLogger('rftjax')


class ConfigError(ValueError):
  """A config value is unusable; the message names the key."""


def load_grader_spec(spec):
  if spec is None or spec == '':
    raise ConfigError('config.grader is not set: give a grader dict or a path to a grader JSON file')
  return spec.to_dict() if hasattr(spec, 'to_dict') else spec


def register_local_judges(spec) -> list[str]:
  """score_model / label_model graders whose `model` is an init spec (`gguf:...`, `hf:...`) are served by rftjax's
  own sampler: load each such model once and register it as the judge of that name."""
  names = []

  def walk(node):
    if isinstance(node, dict):
      model = node.get('model')
      if (
        node.get('type') in ('score_model', 'label_model')
        and isinstance(model, str)
        and model.startswith(('gguf:', 'hf:'))
        and 'base_url' not in node
        and model not in names
      ):
        names.append(model)
      for child in node.values():
        walk(child)
    elif isinstance(node, list):
      for child in node:
        walk(child)

  walk(spec)
  if names:
    from rftjax import inference  # loads weights; only needed with local judges

    for name in names:
      log.info('serving model grader judge %s with rftjax', name)
      inference.register_local_judge(name, inference.load(init=name))
  return names


def setup_model(config, mesh):
  """Tokenizer, architecture and params as the config asks: random init or a pretrained file."""
  tok = tokenizer_lib.load_tokenizer(config.tokenizer or config.init, chat_template=config.chat_template or None)
  cfg = model_lib.get_config(config.model)
  if cfg.family == 'tiny':
    cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
  dtype = jnp.dtype(config.param_dtype)
  if config.init:
    from rftjax import weights  # heavy (gguf, safetensors); only needed for pretrained models

    params = weights.load(config.init, cfg, mesh, dtype=dtype)
  else:
    params = model_lib.init_params(cfg, config.seed, mesh, dtype=dtype)
  return tok, cfg, params


def tokenize_prompts(examples, tok, max_prompt_len: int) -> list[list[int]]:
  out = []
  for ex in examples:
    ids = tok.encode_prompt(list(ex.messages))
    if len(ids) > max_prompt_len:
      raise data_lib.DataError(
        f'{ex.source}: the prompt is {len(ids)} tokens long, more than '
        f'config.data.max_prompt_len={max_prompt_len}; raise it or shorten the prompt'
      )
    out.append(ids)
  return out


def evaluate(
  weights,
  sampler: sampler_lib.Sampler,
  prompt_ids,
  examples,
  tok,
  grader,
  pool,
  batch_size: int,
  rng,
  mesh,
  prefix: str = 'valid',
):
  """One sample per prompt at the eval temperature; hosts split every batch. Returns (metrics, this host's records)."""
  pc, pi = jax.process_count(), jax.process_index()
  if batch_size % pc:
    raise ConfigError(f'config.eval_batch_size={batch_size} must be divisible by the number of processes ({pc})')
  per = batch_size // pc
  sums: dict[str, float] = {}
  records, count = [], 0
  pending = []  # grading of batch i runs in the pool while batch i + 1 samples
  for start in range(0, len(prompt_ids), batch_size):
    rows = list(range(start, min(start + batch_size, len(prompt_ids))))
    mine = rows[pi * per : (pi + 1) * per]
    real = len(mine)
    mine = mine + [rows[0]] * (per - real)  # fixed shapes: one compiled program, every host the same calls
    r = rollout.sample(sampler, weights, [prompt_ids[i] for i in mine], tok, jax.random.fold_in(rng, start), mesh)
    part = r.take_groups(np.arange(real), 1)
    items = [examples[i].item for i in mine[:real]]
    pending.append((mine[:real], part, pool.submit(grader, part.texts, items) if real else None))
  for mine, part, future in pending:
    real = len(mine)
    if real:
      part = rollout.with_grades(part, future.result())
      m = graders.summarize(part.results, prefix=prefix)
      m[f'{prefix}_completion_len_mean'] = float(part.lengths.mean())
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + v * real
      count += real
      records += [
        {
          'source': examples[i].source,
          'completion': t,
          'reward': res.reward,
          'errors': [e.category for e in res.errors],
        }
        for i, t, res in zip(mine, part.texts, part.results)
      ]
  local = {k: v / max(count, 1) for k, v in sums.items()}
  local[f'{prefix}/num_graded'] = float(count)
  if pc > 1:  # weight each host's means by its row count
    keys = sorted(local)
    vec = np.asarray([local[k] * count for k in keys] + [count], np.float64)
    total = np.asarray(multihost_utils.process_allgather(vec)).reshape(pc, -1).sum(0)
    local = {k: float(total[i] / max(total[-1], 1)) for i, k in enumerate(keys)}
    local[f'{prefix}/num_graded'] = float(total[-1])
  return local, records


def train(config, workdir: str | pathlib.Path) -> dict:
  """Runs (or resumes) training in `workdir` (a local path or a gs:// URL); returns the last eval metrics."""
  try:
    run = runfs.RunDir(workdir, sync_interval_s=config.sync_interval_s)
  except OSError as e:
    raise ConfigError(f'--workdir={workdir}: cannot write there ({e})') from None
  with run:
    return _train(config, run)


def _train(config, run: runfs.RunDir) -> dict:
  workdir = run.local  # run files; checkpoints go to run.remote (the same folder when the workdir is local)
  is_main = jax.process_index() == 0

  # ---- data and grader first: bad input fails before anything slow happens ----
  train_examples = data_lib.load_jsonl(config.data.train)
  config = hparams.apply(config, len(train_examples))  # OpenAI-style fields -> native ones (a copy)
  if is_main:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
    try:
      run.sync()  # a bucket this VM may not write to fails here, not after the model has loaded
    except OSError as e:
      raise ConfigError(f'--workdir={run.remote}: cannot write there ({e})') from None
  valid_examples = data_lib.load_jsonl(config.data.valid)
  if config.data.valid_limit:
    valid_examples = valid_examples[: config.data.valid_limit]
  grader_spec = graders.load(load_grader_spec(config.grader))  # a dict, read from its file when given a path
  grader = graders.build(grader_spec)

  register_local_judges(grader_spec)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    tok, cfg, params = setup_model(config, mesh)
    pad_id = tok.pad_id if tok.pad_id is not None else tok.eos_id
    train_prompts = tokenize_prompts(train_examples, tok, config.data.max_prompt_len)
    valid_prompts = tokenize_prompts(valid_examples, tok, config.data.max_prompt_len)
    if config.eval_samples > 1:  # k completions per validation prompt, each graded; the means average them all
      valid_prompts = [p for p in valid_prompts for _ in range(config.eval_samples)]
      valid_examples = [e for e in valid_examples for _ in range(config.eval_samples)]
    g = config.num_generations
    rows = config.batch_size * g
    if rows % (mesh.shape['data'] * mesh.shape['fsdp']):
      raise ConfigError(
        f'config.batch_size * config.num_generations = {rows} must be divisible by the data x fsdp '
        f'mesh size {mesh.shape["data"] * mesh.shape["fsdp"]}'
      )

    loss_cfg = grpo.LossConfig(
      epsilon=config.grpo.epsilon,
      epsilon_high=config.grpo.epsilon_high,
      beta=config.grpo.beta,
      kl_estimator=config.grpo.kl_estimator,
      aggregation=config.grpo.loss_aggregation,
      max_tokens=config.sampling.max_new_tokens,
      importance_level=config.grpo.importance_level,
      dual_clip=config.grpo.dual_clip or None,
      tis_cap=config.grpo.tis_cap or None,
      entropy_coef=config.grpo.entropy_coef,
    )
    step_cfg = step_lib.StepConfig(
      model=cfg,
      loss=loss_cfg,
      temperature=config.sampling.temperature,
      compute_dtype=config.compute_dtype,
      remat=config.remat,
      microbatches=config.train_microbatches,
    )
    tx = step_lib.make_optimizer(config.optimizer, config.total_steps)
    state = step_lib.init_state(params, tx)
    ref_params = jax.tree.map(jnp.copy, params) if config.grpo.beta > 0 else None
    del params
    train_step = step_lib.make_train_step(step_cfg, tx)

    try:
      stop_ids = tok.stop_ids_with(tuple(config.sampling.stop))
    except ValueError as e:
      raise ConfigError(f'config.sampling.stop: {e}') from None
    base = dict(
      cfg=cfg,
      max_prompt_len=config.data.max_prompt_len,
      max_new_tokens=config.sampling.max_new_tokens,
      stop_ids=stop_ids,
      pad_id=pad_id,
      compute_dtype=config.compute_dtype,
      cache_dtype=config.sampling.cache_dtype or 'float32',
    )
    train_sampler = sampler_lib.Sampler(
      **base,
      params=sampler_lib.SamplingParams(config.sampling.temperature, config.sampling.top_p, config.sampling.top_k),
    )
    eval_sampler = sampler_lib.Sampler(
      **base, params=sampler_lib.SamplingParams(config.eval_temperature, config.sampling.top_p, config.sampling.top_k)
    )

    # ---- resume ----
    ckpt = checkpoint_lib.Checkpointer(
      run.remote / 'checkpoints', keep_best=config.checkpoint.keep_best, async_save=config.checkpoint.async_save
    )
    data_iter = data_lib.DataIterator(
      len(train_examples),
      config.batch_size,
      config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    start_step = 0
    if ckpt.latest_step() is not None:
      state, extra = ckpt.restore(ckpt.latest_step(), step_lib.abstract_state(state))
      data_iter.restore(extra['data'])
      start_step = int(jax.device_get(state['step']))
      log.info('resumed from step %d in %s', start_step, run.remote)
      if start_step >= config.total_steps:
        log.info(
          'nothing to do: step %d >= config.total_steps=%d (raise it to continue)', start_step, config.total_steps
        )
    writer = metrics_lib.MetricsWriter(workdir, resume_step=start_step, enabled=is_main)
    rng = jax.random.key(config.seed)
    eval_rng = jax.random.fold_in(rng, 2**31 - 1)  # a stream of its own, apart from the training steps'

    def run_eval(step: int) -> dict:
      t0 = time.perf_counter()
      m, records = evaluate(
        state['params'],
        eval_sampler,
        valid_prompts,
        valid_examples,
        tok,
        grader,
        pool,
        config.eval_batch_size,
        jax.random.fold_in(eval_rng, step),
        mesh,
      )
      m = {'step': step, **m, 'timing/eval_s': time.perf_counter() - t0}
      writer.write(m)
      log.info(
        'step %d: valid_reward_mean=%.4f (%d prompts, %.1fs)',
        step,
        m['valid_reward_mean'],
        m.get('valid/num_graded', 0),
        m['timing/eval_s'],
      )
      suffix = '' if jax.process_count() == 1 else f'.p{jax.process_index()}'
      data_lib.write_jsonl(workdir / 'samples' / f'valid_step{step:06d}{suffix}.jsonl', records)
      if is_main:
        try:
          plots.write_reward_plot(workdir)
        except Exception as e:  # a plot must never stop a run
          log.warning('could not write the reward plot: %s', e)
      run.sync(raise_errors=False)
      return m

    def save(step: int, eval_metrics: dict | None) -> None:
      t0 = time.perf_counter()
      ckpt.save(
        step,
        state,
        extra={'data': data_iter.state()},
        metrics=None if eval_metrics is None else {'valid_reward_mean': eval_metrics['valid_reward_mean']},
      )
      writer.write({'step': step, 'timing/checkpoint_s': time.perf_counter() - t0})
      run.sync(raise_errors=False)  # so the bucket holds the metrics up to each checkpoint it holds

    last_eval: dict = {}
    compile_clock = metrics_lib.CompileClock()
    with contextlib.ExitStack() as cleanup:  # runs on success, preemption and errors alike (LIFO)
      cleanup.callback(writer.close)
      cleanup.callback(ckpt.close)
      cleanup.callback(ckpt.wait_until_finished)
      pool = cleanup.enter_context(
        graders.GradingPool(num_workers=config.grading.num_workers or None, timeout_s=config.grading.timeout_s)
      )
      watcher = cleanup.enter_context(preemption.Watcher())
      if start_step == 0:
        last_eval = run_eval(0)
        save(0, last_eval)
      progress = metrics_lib.Progress(start_step, config.total_steps, enabled=config.progress and is_main)
      for step in range(start_step, config.total_steps):
        t_step = time.perf_counter()
        data_before = data_iter.state()
        step_rng = jax.random.fold_in(rng, step)

        # ---- sample G completions per prompt, decode and grade on the host ----
        timings = [0.0, 0.0]

        def sample_fn(attempt):
          idx = data_iter.next()
          prompts = [train_prompts[i] for i in idx for _ in range(g)]
          items = [train_examples[i].item for i in idx for _ in range(g)]
          r, dt_sample, dt_grade = rollout.sample_and_grade(
            train_sampler,
            state['params'],
            prompts,
            items,
            tok,
            grader,
            pool,
            jax.random.fold_in(step_rng, attempt),
            mesh,
          )
          timings[0] += dt_sample
          timings[1] += dt_grade
          graders.check_failures(r.results, config.grading.max_error_share)
          return r

        rolled, rounds = rollout.collect(
          sample_fn,
          config.batch_size // jax.process_count(),
          g,
          dynamic=config.grpo.dynamic_sampling,
          max_rounds=config.grpo.max_resample_rounds,
        )
        t_sample, t_grade = timings
        stats = rollout.rollout_metrics(rolled, g)
        batch = rollout.make_batch(rolled, config.grpo, g, config.sampling.max_new_tokens, mesh)

        # ---- GRPO update(s) ----
        if watcher.requested(step):  # preempted mid-step: abandon this batch, keep the data position before it
          data_iter.restore(data_before)
          raise preemption.stop(save, step, log)
        t0 = time.perf_counter()
        if config.grpo.num_iterations > 1:
          batch = batch.replace(old_logp=step_lib.policy_logprobs(step_cfg, state['params'], batch))
        if ref_params is not None:
          batch = batch.replace(ref_logp=step_lib.policy_logprobs(step_cfg, ref_params, batch))
        for _ in range(config.grpo.num_iterations):
          state, step_metrics = train_step(state, batch)
        step_metrics = jax.device_get(step_metrics)
        t_train = time.perf_counter() - t0

        wall = time.perf_counter() - t_step
        record = {
          'step': step + 1,
          **rollout.allmean(stats),
          'loss': float(step_metrics['loss']),
          'kl': float(step_metrics['kl']),
          'learning_rate': step_lib.learning_rate(config.optimizer, step + 1, config.total_steps),
          **{k: float(v) for k, v in step_metrics.items() if k not in ('loss', 'kl')},
          'sampling_rounds': rounds,
          'tokens_per_s': float(rolled.lengths.sum()) * jax.process_count() / max(wall, 1e-9),
          'timing/sampling_s': t_sample,
          'timing/grading_s': t_grade,
          'timing/training_s': t_train,
          'timing/compile_s': compile_clock.take(),
          'timing/step_s': wall,
        }
        writer.write(record)
        progress.update(step + 1, record)
        run.maybe_sync()

        done = step + 1 == config.total_steps
        if (step + 1) % config.eval_interval == 0 or done:
          last_eval = run_eval(step + 1)
          progress.note(step + 1, last_eval)
          save(step + 1, last_eval)
        elif watcher.requested(step + 1):
          raise preemption.stop(save, step + 1, log)
      progress.close()
  return last_eval
