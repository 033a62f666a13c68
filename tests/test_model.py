"""Model and sampler: cached decoding equals a full forward pass, presets have the published sizes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rftjax import kvcache
from rftjax import lora
from rftjax import model
from rftjax import presets
from rftjax import products
from rftjax import sampler

GEMMA_LIKE = dataclasses.replace(
  presets.tiny(),
  name='tiny_gemma',
  sliding_window=4,
  global_every=3,
  rope_base_local=100.0,
  qk_norm=True,
  post_norms=True,
  norm_offset=1.0,
  embed_scale=True,
  activation='gelu_tanh',
  num_layers=3,
  query_pre_attn_scalar=24.0,
)
QWEN_LIKE = dataclasses.replace(presets.tiny(), name='tiny_qwen', qkv_bias=True, tie_embeddings=False)


@pytest.mark.parametrize('cfg', [presets.tiny(), GEMMA_LIKE, QWEN_LIKE], ids=lambda c: c.name)
def test_cached_decoding_equals_full_forward(cfg):
  params = model.init_params(cfg, 3)
  if cfg.qkv_bias:  # non-zero biases so they matter
    params['layers']['attn']['q_bias'] = jax.random.normal(jax.random.key(1), params['layers']['attn']['q_bias'].shape)
  rng = np.random.default_rng(0)
  prompt_lens, new = [7, 2, 5], 9  # total 16 > sliding window 4
  p = max(prompt_lens)
  prompts = [list(rng.integers(4, cfg.vocab_size, n)) for n in prompt_lens]
  tokens, mask = sampler.pad_prompts(prompts, p, pad_id=0)
  s = sampler.Sampler(cfg, p, new, stop_ids=(), pad_id=0, params=sampler.SamplingParams(temperature=1.0))
  out = jax.device_get(s(params, tokens, mask, jax.random.key(0)))
  assert out.mask.sum() == 3 * new and out.truncated.all()
  full = jax.jit(lambda prm, t: model.forward(prm, cfg, t, jnp.arange(t.shape[1])[None], jnp.ones(t.shape, bool))[0])
  for i, prompt in enumerate(prompts):
    seq = np.asarray(prompt + list(out.tokens[i]))[None]
    logits = np.asarray(full(params, jnp.asarray(seq)))[0]
    logp = jax.nn.log_softmax(logits[len(prompt) - 1 : -1], axis=-1)
    expected = np.take_along_axis(np.asarray(logp), out.tokens[i][:, None], axis=-1)[:, 0]
    np.testing.assert_allclose(out.logprobs[i], expected, atol=2e-5, rtol=1e-5)


def test_greedy_stops_at_stop_token_and_masks_after():
  cfg = presets.tiny(vocab_size=64)
  params = model.init_params(cfg, 0)
  first = sampler.generate(params, cfg, [[5, 6, 7]], max_new_tokens=6, stop_ids=[], pad_id=0)[0]
  stop = first[2]
  out = sampler.generate(params, cfg, [[5, 6, 7]], max_new_tokens=6, stop_ids=[stop], pad_id=0)[0]
  assert out == first[: first.index(stop) + 1]


def test_top_k_one_is_greedy():
  cfg = presets.tiny(vocab_size=64)
  params = model.init_params(cfg, 0)
  greedy = sampler.generate(params, cfg, [[5, 6, 7], [9]], max_new_tokens=5, stop_ids=[])
  top1 = sampler.generate(
    params,
    cfg,
    [[5, 6, 7], [9]],
    max_new_tokens=5,
    stop_ids=[],
    params=sampler.SamplingParams(temperature=1.0, top_k=1),
    seed=7,
  )
  assert greedy == top1


def test_top_p_keeps_smallest_prefix():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  draws = {
    int(sampler.choose(logits, jax.random.key(i), sampler.SamplingParams(1.0, top_p=0.7))[0][0]) for i in range(200)
  }
  assert draws == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: tokens 0 and 1 stay


def test_sampling_values_that_misbehaved_are_refused_and_nan_logits_draw_a_vocabulary_id():
  """top_p 0 kept every token; temperature 1e-38 overflowed logits / T; a row of NaN logits (a diverged model)
  drew id 255 of a 4-token vocabulary, the padding of its block."""
  for bad, said in (
    (dict(top_p=0.0), 'SamplingParams.top_p: expected a number in (0, 1] (1 = off), got 0.0'),
    (dict(temperature=1e-38), 'SamplingParams.temperature: expected 0 (greedy) or a number >= 1e-05, got 1e-38'),
    (dict(top_k=-1), 'SamplingParams.top_k: expected an integer >= 0 (0 = off), got -1'),
  ):
    with pytest.raises(ValueError) as e:
      sampler.SamplingParams(**bad)
    assert str(e.value) == said
  nan = jnp.full((3, 4), jnp.nan, jnp.float32)
  assert np.asarray(sampler.draw(nan, jax.random.key(0))).tolist() == [3, 3, 3]
  peaked = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  tiny_p = sampler.SamplingParams(1.0, top_p=1e-9)  # the most likely token stays
  assert {int(sampler.choose(peaked, jax.random.key(i), tiny_p)[0][0]) for i in range(20)} == {0}


def test_draw_samples_the_softmax():
  """The two-level inverse-CDF draw: token frequencies match softmax(logits) over a vocabulary that is not a
  multiple of the block (600 = 2 blocks of 256 + padding), -inf tokens are never drawn, and a row whose mass sits
  on one token (in the last, padded block) always draws it."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=600) * 2
  logits[rng.choice(600, 100, replace=False)] = -np.inf
  probs = np.exp(logits - logits[np.isfinite(logits)].max())
  probs /= probs.sum()
  rows = 40_000
  tokens = np.asarray(sampler.draw(jnp.tile(jnp.asarray(logits, jnp.float32), (rows, 1)), jax.random.key(3)))
  counts = np.bincount(tokens, minlength=600) / rows
  assert counts[~np.isfinite(logits)].sum() == 0
  # binomial standard error at most sqrt(p / rows) < 0.0025 for p < 0.25: within 4 of them everywhere
  assert np.abs(counts - probs).max() < 4 * np.sqrt(probs.max() / rows), np.abs(counts - probs).max()
  assert probs.max() > 0.05  # a non-trivial distribution
  one = np.full((3, 600), -np.inf, np.float32)
  one[:, 590] = 0.0
  np.testing.assert_array_equal(np.asarray(sampler.draw(jnp.asarray(one), jax.random.key(4))), [590] * 3)


def test_greedy_is_argmax_with_its_ties_nan_and_infinities():
  """The two-level greedy pick equals jnp.argmax row by row over a vocabulary that is not a multiple of the block
  (600 = 2 blocks of 256 + padding): the first of tied maxima (in the same block and in different blocks), the
  first NaN, a row of -inf only (index 0), a maximum in the padded last block."""
  rng = np.random.default_rng(0)
  logits = np.round(rng.normal(size=(9, 600)), 1).astype(np.float32)  # rounded: many ties below the maximum
  logits[0, [7, 300, 599]] = 9.0  # tied maxima in three blocks: the first wins
  logits[1, [301, 302]] = 9.0  # tied in one block
  logits[2, [40, 500]] = np.nan
  logits[3] = -np.inf
  logits[4, 599] = 9.0  # in the padded last block
  logits[5, :] = 1.0  # all tied
  logits[6, 256] = 9.0  # a block's first token
  got = np.asarray(sampler.greedy(jnp.asarray(logits)))
  np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))
  np.testing.assert_array_equal(got[:7], [7, 301, 40, 0, 599, 0, 256])
  assert got.dtype == np.int32


@pytest.mark.parametrize(
  'name, billions',
  [
    ('gemma3_270m', 0.268),
    ('gemma3_1b', 1.0),
    ('gemma3_27b', 27.0),
    ('smollm2_135m', 0.1345),
    ('llama3_1_8b', 8.03),
    ('qwen2_5_7b', 7.6),
  ],
)
def test_presets_eval_shape(name, billions):
  cfg = presets.get_config(name)
  shapes = model.param_shapes(cfg)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert total == cfg.num_params()
  assert abs(total / 1e9 - billions) / billions < 0.02
  axes = model.param_axes(cfg)
  for s, a in zip(jax.tree.leaves(shapes), jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
    assert len(s.shape) == len(a)


def test_all_presets_eval_shape_forward():
  for name in presets.PRESETS:
    cfg = presets.get_config(name)
    out = jax.eval_shape(
      lambda p: model.forward(
        p, cfg, jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool)
      )[0],
      model.param_shapes(cfg),
    )
    assert out.shape == (1, 4, cfg.vocab_size)


def test_gemma3_layer_pattern():
  cfg = presets.gemma3_270m()
  assert ''.join('L' if x else 'G' for x in cfg.layer_is_local()) == 'LLLLLG' * 3


def test_unknown_preset_message():
  with pytest.raises(ValueError, match="unknown model preset 'gemma9'"):
    presets.get_config('gemma9')


def test_first_prefill_reads_none_of_the_cache():
  """With cache_index known to be 0 no slot comes before the call's tokens, so a first prefill skips the cache:
  a cache full of NaN gives the same hidden states and written keys as a zero cache, while the same call with
  the index as a traced value (the general path, which reads the slots and masks them) turns NaN."""
  cfg = presets.tiny()
  params = model.init_params(cfg, 2)
  tokens = jnp.asarray(np.random.default_rng(0).integers(4, cfg.vocab_size, (2, 5)), jnp.int32)
  positions, key_mask = jnp.broadcast_to(jnp.arange(5), (2, 5)), jnp.zeros((2, 8), bool).at[:, :5].set(True)
  zeros = kvcache.init(cfg, 2, 8)
  nans = jax.tree.map(lambda c: jnp.full_like(c, jnp.nan), zeros)

  def run(cache, index):
    return model.forward(params, cfg, tokens, positions, key_mask, cache=cache, cache_index=index, return_hidden=True)

  (h0, c0), (h1, c1) = run(zeros, 0), run(nans, 0)
  assert np.isfinite(np.asarray(h0)).all()
  np.testing.assert_array_equal(np.asarray(h1), np.asarray(h0))
  for name, slots in (('k', np.s_[..., :5]), ('v', np.s_[..., :5, :])):
    np.testing.assert_array_equal(np.asarray(c1[name][slots]), np.asarray(c0[name][slots]))
  traced, _ = jax.jit(run)(nans, jnp.int32(0))
  assert np.isnan(np.asarray(traced)).all()


@pytest.mark.parametrize('cfg', [presets.tiny(), GEMMA_LIKE], ids=lambda c: c.name)
def test_shared_prefill_equals_per_row_prefill(cfg, monkeypatch):
  """G completions of each prompt: prefilling each prompt once, into a cache of one row per group that the group's
  rows read at every decode step, gives the same tokens and logprobs as prefilling every row (same RNG), at
  temperature 1 so that the rows of a group differ; the sliding window (GEMMA_LIKE: 4) reaches into the prompt."""
  caches = []
  init = kvcache.init
  monkeypatch.setattr(
    kvcache, 'init', lambda c, rows, slots, dtype: caches.append((rows, slots)) or init(c, rows, slots, dtype)
  )
  params = model.init_params(cfg, 5)
  rng = np.random.default_rng(1)
  prompts = [list(rng.integers(4, cfg.vocab_size, n)) for n in (6, 2, 5)]
  g = 4
  rows = [p for p in prompts for _ in range(g)]
  tokens, mask = sampler.pad_prompts(rows, 6, pad_id=0)
  base = sampler.Sampler(cfg, 6, 7, stop_ids=(9,), pad_id=0, params=sampler.SamplingParams(temperature=1.0))
  per_row = jax.device_get(base(params, tokens, mask, jax.random.key(3)))
  shared_sampler = dataclasses.replace(base, group_size=g)
  caches.clear()
  shared = jax.device_get(shared_sampler(params, tokens, mask, jax.random.key(3)))
  assert caches == [(3, 6), (12, 7)]  # the prompts' cache: 3 groups x 6 slots; the rows': 12 x 7 new tokens
  np.testing.assert_array_equal(shared.tokens, per_row.tokens)
  np.testing.assert_array_equal(shared.mask, per_row.mask)
  np.testing.assert_allclose(shared.logprobs, per_row.logprobs, atol=1e-5)
  assert len({tuple(t) for t in per_row.tokens[:g]}) > 1  # the group's rows really differ
  assert sampler.grouped(rows, g) and not sampler.grouped(prompts, 3) and not sampler.grouped(rows[1:], g)
  with pytest.raises(ValueError, match='not groups of group_size=4'):
    shared_sampler(params, tokens[:6], mask[:6], jax.random.key(3))
  narrow = dataclasses.replace(base, max_prompt_len=4)  # its cache has 4 + 7 slots: 6-token prompts overran it
  with pytest.raises(ValueError, match='prompts of 6 tokens; expected at most max_prompt_len=4'):
    narrow(params, tokens, mask, jax.random.key(3))


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32'])
def test_split_layers_decode_equals_stacked(dtype, monkeypatch):
  """Decoding on CPU runs each layer as a branch over its own arrays (model.split_layers), elsewhere one scan over
  the stacked layers: same tokens, logprobs within float rounding, with LoRA adapters (non-zero B; merged into a
  float32 base, split and merged one layer at a time on CPU; kept apart from a bfloat16 base, which is cast to
  float32 once), a sliding window and shared prompts."""
  cfg = dataclasses.replace(GEMMA_LIKE, lora=lora.LoRAConfig(rank=4, alpha=8.0))
  params = model.init_params(cfg, 2, dtype=jnp.dtype(dtype))
  params['lora'] = jax.tree.map(lambda a: a + 0.05, params['lora'])
  splits, merges = [], []
  split_layers, merge = model.split_layers, lora.merge
  monkeypatch.setattr(model, 'split_layers', lambda *a: splits.append(a[3]) or split_layers(*a))
  monkeypatch.setattr(lora, 'merge', lambda p, c: merges.append(p['layers']['mlp']['down'].shape[0]) or merge(p, c))
  rng = np.random.default_rng(4)
  rows = [list(rng.integers(4, cfg.vocab_size, n)) for n in (6, 3) for _ in range(2)]
  tokens, mask = sampler.pad_prompts(rows, 6, pad_id=0)
  s = sampler.Sampler(cfg, 6, 8, stop_ids=(), params=sampler.SamplingParams(temperature=1.0), group_size=2)
  jax.clear_caches()  # the backend is read when the program is traced
  on_cpu = jax.device_get(s(params, tokens, mask, jax.random.key(1)))
  float32 = dtype == 'float32'
  assert splits == [float32] and merges == ([1, 1, 1] if float32 else [])  # merged one layer at a time
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  jax.clear_caches()
  stacked = jax.device_get(s(params, tokens, mask, jax.random.key(1)))
  assert len(splits) == 1 and merges == ([1, 1, 1, 3] if float32 else [])  # not split; merged stacked
  np.testing.assert_array_equal(on_cpu.tokens, stacked.tokens)
  np.testing.assert_allclose(on_cpu.logprobs, stacked.logprobs, atol=1e-5)
  split = split_layers(params, cfg, jnp.float32)
  assert len(split['layers']) == 3 and split['layers'][2]['mlp']['down'].dtype == jnp.float32
  with pytest.raises(ValueError, match='remat needs the stacked layers'):
    model.forward(split, cfg, tokens, jnp.zeros(tokens.shape, jnp.int32), mask, remat=True)


@pytest.mark.parametrize('cfg', [presets.tiny(), GEMMA_LIKE], ids=lambda c: c.name)
def test_backward_keeps_less_per_layer_with_the_same_gradient(cfg, monkeypatch):
  """model.rms_norm and the MLP's act(gate) * up keep only their inputs for the backward pass and recompute the
  rest, and the attention softmax keeps only its output (docs/benchmarks.md, "Less kept for the backward pass"):
  per layer three [T, F] arrays (gate, up and the down projection's input), one [.., T, S] attention array, and
  fewer [T, D] ones than differentiated as written, with the same gradient."""
  cfg = dataclasses.replace(cfg, mlp_dim=96)  # F apart from D = 128 and the vocabulary
  params = model.init_params(cfg, 0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 7)), jnp.int32)
  positions, mask = jnp.broadcast_to(jnp.arange(7), (2, 7)), jnp.ones((2, 7), bool)

  def loss(p):
    return jnp.sum(model.forward(p, cfg, tokens, positions, mask)[0] ** 2) / 1e3

  def kept(width):
    residuals = jax.tree.leaves(jax.vjp(loss, params)[1])  # and the weights, which these shapes leave out
    if width == 'attention':  # [L, B, K, G, T, S]
      return [a.shape for a in residuals if a.ndim == 6 and a.shape[-2:] == (7, 7) and a.dtype == jnp.float32]
    return [a.shape for a in residuals if a.shape[1:3] == (2, 7) and a.shape[-1] == width]

  wide, narrow, attention, grads = kept(96), kept(128), kept('attention'), jax.grad(loss)(params)
  assert wide == [(cfg.num_layers, 2, 7, 96)] * 3 and attention == [(cfg.num_layers, 2, 2, 2, 7, 7)]
  monkeypatch.setattr(model, '_softmax', lambda logits, dtype: model._softmax_fwd(logits, dtype)[0])  # as written
  assert len(kept('attention')) > 1
  monkeypatch.setattr(model, 'rms_norm', model.rms_norm.__wrapped__)  # without its jax.checkpoint
  monkeypatch.setattr(model, '_gated_silu', model._gated_silu.__wrapped__)
  monkeypatch.setattr(model, '_gated_gelu', model._gated_gelu.__wrapped__)
  assert len(kept(96)) > len(wide) and len(kept(128)) > len(narrow)
  expected = jax.grad(loss)(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, expected)


def _linear_operands(seed: int):
  """(name, equation, x, w) of every `lora.LINEARS` product, at small sizes."""
  sizes = dict(b=2, t=3, d=8, n=4, k=2, h=5, f=6)
  rng = np.random.default_rng(seed)
  for name, (_, eq) in lora.LINEARS.items():
    operands = eq.split('->')[0].split(',')
    yield name, eq, *(jnp.asarray(rng.normal(size=[sizes[c] for c in dims]), jnp.float32) for dims in operands)


def test_linears_sum_their_shared_dims_in_the_weights_order():
  """`products.contract` computes each `lora.LINEARS` equation as jnp.einsum does, but sums the shared dims in the
  weight's own order: for the output projection jnp.einsum sums [h, n], and XLA then transposed the [n, h, d]
  weight at every call (every decode step on CPU; docs/benchmarks.md)."""
  for name, eq, x, w in _linear_operands(seed=0):
    xs, ws = eq.split('->')[0].split(',')
    np.testing.assert_allclose(products.contract(eq, x, w), jnp.einsum(eq, x, w), rtol=1e-5, atol=1e-5)
    (dot,) = [e for e in jax.make_jaxpr(lambda x, w, eq=eq: products.dot(eq, x, w))(x, w).eqns
              if e.primitive.name == 'dot_general']  # fmt: skip
    (x_dims, w_dims), _ = dot.params['dimension_numbers']
    shared = [c for c in ws if c in xs]
    assert tuple(w_dims) == tuple(range(len(shared))) and tuple(x_dims) == tuple(xs.index(c) for c in shared), name


def _dots(fn, *args) -> int:
  """dot_generals in fn's jaxpr, those of nested jaxprs (custom_vjp, pjit) included."""

  def count(jaxpr) -> int:
    n = 0
    for e in jaxpr.eqns:
      n += e.primitive.name == 'dot_general'
      for v in e.params.values():
        for j in v if isinstance(v, (list, tuple)) else [v]:
          j = getattr(j, 'jaxpr', j)  # a ClosedJaxpr's Jaxpr
          n += count(j) if hasattr(j, 'eqns') else 0
    return n

  return count(jax.make_jaxpr(fn)(*args).jaxpr)


def test_linears_gradients_match_einsum_and_skip_frozen_weights():
  """On CPU `products.contract` has its own backward pass (its weight gradient reads operands written out first:
  docs/benchmarks.md): for every `lora.LINEARS` equation its gradients equal jnp.einsum's, and a weight nothing
  asks a gradient of (LoRA's frozen base) costs no product: the input's gradient alone is one dot, not two."""
  for name, eq, x, w in _linear_operands(seed=1):
    g = jnp.asarray(np.random.default_rng(2).normal(size=jnp.einsum(eq, x, w).shape), jnp.float32)
    ours = jax.grad(lambda x, w, eq=eq: jnp.sum(products.contract(eq, x, w) * g), (0, 1))
    theirs = jax.grad(lambda x, w, eq=eq: jnp.sum(jnp.einsum(eq, x, w) * g), (0, 1))
    for a, b, what in zip(ours(x, w), theirs(x, w), ('input', 'weight')):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f'{name} {what}')
    only_x = jax.grad(lambda x, eq=eq: jnp.sum(products.contract(eq, x, w) * g))
    np.testing.assert_allclose(only_x(x), theirs(x, w)[0], rtol=1e-5, atol=1e-5)
    assert _dots(only_x, x) == 2 and _dots(ours, x, w) == 3, name
