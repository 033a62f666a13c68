"""LoRA: step 0 is the base model bit for bit, only adapters train and are saved, the KL reference is the base,
a sharded step equals the single-device one, resume equals an uninterrupted run, merging equals the adapter path."""

import contextlib
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from rftjax import checkpoint
from rftjax import grpo
from rftjax import lora
from rftjax import metrics
from rftjax import model
from rftjax import multihost
from rftjax import presets
from rftjax import sampler
from rftjax import sharding
from rftjax import train_step
from rftjax import trainer
from rftjax import weights

REPO = pathlib.Path(__file__).resolve().parents[1]
LORA = lora.LoRAConfig(rank=4, alpha=8.0)
CFG = dataclasses.replace(presets.tiny(vocab_size=64), lora=LORA)
OPT = ml_collections.ConfigDict(
  dict(learning_rate=1e-2, warmup_steps=0, schedule='constant', b1=0.9, b2=0.99, weight_decay=0.0, max_grad_norm=1.0)
)


def trained_adapters(params, seed=1):
  """Adapters with B != 0, as after some training."""
  keys = iter(jax.random.split(jax.random.key(seed), 100))
  return jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), params['lora'])


def tokens_batch(rows=8, t=12, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(3, CFG.vocab_size, (rows, t)), jnp.int32)


def logits(params, cfg, tokens):
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return model.forward(params, cfg, tokens, positions, jnp.ones(tokens.shape, bool))[0]


def test_adapters_shard_like_the_weights_they_adapt():
  axes = model.param_axes(CFG)['lora']['layers']
  assert axes['attn']['q'] == {'a': ('layers', 'embed', 'lora_rank'), 'b': ('layers', 'lora_rank', 'heads', 'head_dim')}
  assert axes['attn']['o'] == {'a': ('layers', 'heads', 'head_dim', 'lora_rank'), 'b': ('layers', 'lora_rank', 'embed')}
  shapes = model.param_shapes(CFG, jnp.bfloat16)
  assert shapes['lora']['layers']['mlp']['down']['a'].shape == (4, 512, 4)  # [L, F, R]
  assert shapes['lora']['layers']['mlp']['down']['b'].dtype == jnp.float32  # adapters stay float32 on a bf16 base
  assert shapes['layers']['mlp']['down'].dtype == jnp.bfloat16
  assert lora.equations('btnh,nhd->btd') == ('btnh,nhr->btr', 'btr,rd->btd')


def test_step_zero_is_the_base_model_bit_for_bit():
  params = model.init_params(CFG, 0)
  base = model.init_params(model.base_config(CFG), 0)
  jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in params.items() if k != 'lora'}, base)
  assert float(jnp.abs(params['lora']['layers']['attn']['q']['a']).max()) > 0  # A random, B zero
  tokens = tokens_batch()
  np.testing.assert_array_equal(np.asarray(logits(params, CFG, tokens)), np.asarray(logits(base, CFG, tokens)))


def test_merged_weights_equal_the_adapter_path():
  params = model.init_params(CFG, 0)
  params['lora'] = trained_adapters(params)
  tokens = tokens_batch()
  with_adapters, merged = logits(params, CFG, tokens), logits(lora.merge(params, LORA), CFG, tokens)
  base = logits(lora.split(params)[1], CFG, tokens)
  spread = float(with_adapters.max() - with_adapters.min())
  assert float(jnp.abs(with_adapters - base).max()) > 1e-2 * spread  # the adapters matter
  np.testing.assert_allclose(np.asarray(merged), np.asarray(with_adapters), atol=1e-5 * spread)


def test_bfloat16_compute_samples_adapter_updates_that_a_merge_would_round_away():
  """A float32 base computed in bfloat16 (the TPU layouts with a float32 base): W + alpha/r * A @ B cast to bfloat16
  for the dots is W again for updates under half a bfloat16 step, so a merging sampler would sample (nearly) the
  base. The train step adds the adapters' float32 product to the bfloat16 one; the sampler must sample that."""
  params = model.init_params(CFG, 0)
  # a bfloat16 checkpoint read into float32: every W is a bfloat16 value, as the released Gemma 3 weights are
  params['layers'] = jax.tree.map(lambda w: w.astype(jnp.bfloat16).astype(jnp.float32), params['layers'])
  base = lora.split(params)[1]
  params['lora'] = jax.tree.map(lambda x: 0.005 * x, trained_adapters(params))  # early in training: small
  merged = lora.merge(params, LORA)
  step = jax.tree.map(lambda w: jnp.abs(w) * 2.0**-8, base['layers'])  # a bfloat16 step of each W (about)
  small = jax.tree.map(lambda m, w, st: float((jnp.abs(m - w) < st / 2).mean()), merged['layers'], base['layers'], step)
  assert min(jax.tree.leaves(small)) > 0.8  # most updates are under half a step: a bfloat16 merge drops them
  assert not lora.merged_for_sampling(params, LORA, 'bfloat16') and lora.merged_for_sampling(params, LORA, 'float32')

  prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [3, 4, 5, 6]]
  tokens, mask = sampler.pad_prompts(prompts, 4, 0)
  s = sampler.Sampler(CFG, 4, 6, stop_ids=(), params=sampler.SamplingParams(temperature=1.0), compute_dtype='bfloat16')
  sampled, from_merged, from_base = (
    jax.device_get(s(p, tokens, mask, jax.random.key(0))) for p in (params, merged, base)
  )
  common = np.cumprod((sampled.tokens == from_base.tokens) & (from_merged.tokens == from_base.tokens), axis=1) > 0
  assert common.sum() >= 12  # positions all three drew alike: their logprobs compare
  moved = lambda out: np.abs(out.logprobs - from_base.logprobs)[common].max()  # noqa: E731

  # how far the trained policy (the train step's bfloat16 forward, adapters applied) moves those logprobs
  seqs = jnp.concatenate([tokens, jnp.asarray(sampled.tokens)], axis=1)
  positions = jnp.broadcast_to(jnp.cumsum(mask, axis=1) - 1, tokens.shape)
  positions = jnp.concatenate([positions, positions[:, -1:] + 1 + jnp.arange(6)], axis=1)
  full_mask = jnp.concatenate([mask, jnp.ones(sampled.tokens.shape, bool)], axis=1)

  def logp(p):
    out = model.forward(p, CFG, seqs, positions, full_mask, dtype=jnp.bfloat16)[0][:, 3:-1].astype(jnp.float32)
    return np.take_along_axis(np.asarray(jax.nn.log_softmax(out)), sampled.tokens[..., None], -1)[..., 0]

  trained = np.abs(logp(params) - logp(base))[common].max()
  assert trained > 1e-3
  assert moved(from_merged) < 0.1 * trained  # what merging would sample: the update mostly rounded away
  assert moved(sampled) > 0.5 * trained, (moved(sampled), trained)


def make_batch(rows=8, p=5, n=4, seed=0) -> train_step.Batch:
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(3, CFG.vocab_size, rng.integers(2, p + 1))) for _ in range(rows)]
  tokens, mask = sampler.pad_prompts(prompts, p, 0)
  completion_mask = np.ones((rows, n), np.float32)
  completion_mask[1, 2:] = 0
  return train_step.Batch(
    prompt_tokens=tokens,
    prompt_mask=mask,
    completion_tokens=rng.integers(3, CFG.vocab_size, (rows, n)).astype(np.int32),
    completion_mask=completion_mask,
    advantages=rng.normal(size=rows).astype(np.float32),
    sampler_logp=-rng.uniform(1, 5, (rows, n)).astype(np.float32),
  )


def lora_update(mesh, beta=0.04, steps=1, lr=1e-3):
  """`steps` updates of a LoRA model with trained adapters (KL to the frozen base), on `mesh` or one device."""
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    params = model.init_params(CFG, 0, mesh)
    params['lora'] = jax.tree.map(lambda x, y: jax.device_put(y, x.sharding), params['lora'], trained_adapters(params))
    trainable, frozen = lora.split(params)
    before = jax.tree.map(np.asarray, frozen)
    tx = train_step.make_optimizer(ml_collections.ConfigDict(dict(OPT.to_dict(), learning_rate=lr)), 10)
    state = train_step.init_state(trainable, tx)
    cfg = train_step.StepConfig(CFG, grpo.LossConfig(beta=beta))
    update = train_step.make_update(cfg, tx)
    batch = jax.tree.map(lambda x: multihost.to_global(mesh, x), make_batch())
    for _ in range(steps):
      state, m = update(state, batch, frozen, frozen)
    return state, jax.device_get(m), frozen, before


def test_only_adapters_train_and_the_base_stays_byte_identical():
  state, m, frozen, before = lora_update(None, steps=2, lr=1e-2)
  assert set(state['params']) == {'lora'}  # the optimizer state, and so the checkpoint, hold adapters only
  moments = jax.tree.leaves(state['opt_state'][1][0].mu)
  assert sum(x.size for x in moments) == lora.count(state['params'])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), frozen, before)
  assert float(m['kl']) > 0  # the reference is the base without adapters, which the policy is not
  start = trained_adapters(model.init_params(CFG, 0))  # where the adapters started
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state['params']['lora'], start)
  assert min(jax.tree.leaves(moved)) > 1e-3  # every adapter, A and B, was updated


def test_lora_step_on_8_devices_equals_one_device():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  sharded, m8, _, _ = lora_update(mesh)
  single, m1, _, _ = lora_update(None)
  b = sharded['params']['lora']['layers']['attn']['q']['b']
  heads = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None, 'tensor'))
  assert b.sharding.is_equivalent_to(heads, b.ndim)  # [L, R, N, H]: heads over tensor
  np.testing.assert_allclose(m8['loss'], m1['loss'], atol=1e-5)
  # one Adam step moves each weight by about lr * sign(gradient): a gradient off by a factor would pass the params
  np.testing.assert_allclose(m8['grad_norm'], m1['grad_norm'], rtol=1e-5)
  assert float(m1['grad_norm']) > 0
  for a, c in zip(
    jax.tree.leaves(jax.device_get(sharded['params'])), jax.tree.leaves(jax.device_get(single['params']))
  ):
    np.testing.assert_allclose(a, c, atol=1e-4)


# ---- through the trainer --------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_base(tmp_path_factory):
  """A 'pretrained' base: random tiny weights with the demo tokenizer's 32-token vocabulary, as an HF folder."""
  cfg = presets.tiny(vocab_size=32)
  out = tmp_path_factory.mktemp('base') / 'hf'
  weights.export_hf(model.init_params(cfg, 7), cfg, out)
  return out


def lora_run(tiny_base, workdir, steps):
  c = tiny.get_config('test').copy_and_resolve_references()
  c.model, c.init, c.total_steps = '', f'hf:{tiny_base}', steps
  c.lora.rank, c.lora.alpha, c.optimizer.learning_rate = 4, 8.0, 1e-2
  c.checkpoint.async_save = False
  trainer.train(c, workdir)
  return workdir


def test_lora_run_checkpoints_adapters_only_and_resumes_exactly(tiny_base, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  short = lora_run(tiny_base, tmp_path / 'resumed', 2)
  lora_run(tiny_base, short, 4)  # resume from step 2
  whole = lora_run(tiny_base, tmp_path / 'whole', 4)
  rows = [r for r in metrics.read_jsonl(short / 'metrics.jsonl') if 'train_reward_mean' in r]
  assert [r['step'] for r in rows] == [1, 2, 3, 4] and rows[0]['kl'] == 0.0  # B = 0: the policy is the reference
  assert all(r['grad_norm'] > 0 for r in rows[:2]), rows  # trained before the resume: the equality below means it
  assert json.loads((short / 'config.json').read_text())['lora']['rank'] == 4

  def state_of(run):
    ckpt = checkpoint.Checkpointer(run / 'checkpoints', read_only=True)
    state, _ = ckpt.restore(4, ckpt.stored_state(4))  # whatever is on disk, no target from the model
    ckpt.close()
    return state

  a, b = state_of(short), state_of(whole)
  assert set(a['params']) == {'lora'}  # no base weights in the checkpoint
  assert lora.count(a['params']) == lora.count(model.param_shapes(dataclasses.replace(CFG, vocab_size=32))['lora'])
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  assert [r['loss'] for r in rows] == [
    r['loss'] for r in metrics.read_jsonl(whole / 'metrics.jsonl') if 'train_reward_mean' in r
  ]
