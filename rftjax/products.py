"""The products of the decoder's linears (`lora.LINEARS`, their LoRA adapters too): `contract(eq, x, w)`, an einsum
whose output is x's other dims, then w's.

Two things XLA:CPU does badly are kept out of it, both measured (docs/benchmarks.md):
- jnp.einsum sums the shared dims in its own order ('btnh,nhd->btd' as [h, n]), and XLA then transposed the output
  projection's weight to that order at every call, every decode step; `dot` sums them in the weight's order.
- Differentiated as written, XLA:CPU fused the gradient's elementwise producer (the gated MLP's backward) into a
  transposed copy for the weight gradient's dot that ran several times slower than the product, copy and dot
  written alone: 2.0 s of the ~9.9 s the two threads spent on a SmolLM2 GRPO gradient ("The weight gradients'
  operands"). On CPU the product has its own backward pass, whose weight gradient reads both operands written out
  first; a weight no gradient is asked for (LoRA's frozen base) gets none computed. Other back ends keep autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _parts(eq: str) -> tuple[str, str, str]:
  """'btd,df->btf' -> ('btd', 'df', 'btf')."""
  operands, out = eq.split('->')
  a, b = operands.split(',')
  return a, b, out


def contract(eq: str, x, w):
  """jnp.einsum(eq, x, w) for an equation whose output is x's other dims, then w's (both cast to their common
  dtype), as `dot` computes it; on CPU with the backward pass the module docstring describes."""
  xs, ws, out = _parts(eq)
  assert out == ''.join(c for c in xs if c not in ws) + ''.join(c for c in ws if c not in xs), eq
  dtype = jnp.promote_types(x.dtype, w.dtype)
  x, w = x.astype(dtype), w.astype(dtype)
  return _contract_cpu(eq, x, w) if jax.default_backend() == 'cpu' else dot(eq, x, w)


def dot(eq: str, a, b):
  """jnp.einsum(eq, a, b) as one dot_general: the dims both operands have are summed in b's order, and the result,
  a's other dims then b's, is transposed to eq's output order only where that differs."""
  xs, ws, out = _parts(eq)
  shared = [c for c in ws if c in xs]
  y = jax.lax.dot_general(a, b, ((tuple(xs.index(c) for c in shared), tuple(ws.index(c) for c in shared)), ((), ())))
  got = ''.join(c for c in xs if c not in shared) + ''.join(c for c in ws if c not in shared)
  return y if got == out else jnp.transpose(y, [got.index(c) for c in out])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _contract_cpu(eq: str, x, w):
  return dot(eq, x, w)


def _contract_cpu_fwd(eq: str, x, w):
  # symbolic zeros: x and w come with whether they carry a gradient; keep only what the backward pass reads
  return dot(eq, x.value, w.value), (x.value if w.perturbed else None, w.value if x.perturbed else None)


def _contract_cpu_bwd(eq: str, res, g):
  x, w = res
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return None, None
  xs, ws, out = _parts(eq)
  dx = None if w is None else dot(f'{out},{ws}->{xs}', g, w)
  # the barrier makes XLA write both operands out before the dot reads them (module docstring)
  dw = None if x is None else dot(f'{xs},{out}->{ws}', *jax.lax.optimization_barrier((x, g)))
  return dx, dw


_contract_cpu.defvjp(_contract_cpu_fwd, _contract_cpu_bwd, symbolic_zeros=True)
