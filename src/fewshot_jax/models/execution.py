"""How the networks run inside one jitted program: compute dtype and per-block rematerialisation.

Why here and not in ``model`` config: neither changes the model. Parameters stay float32 and
checkpoints, identities and exports are the same with any setting, while ``model`` fields are
checked against checkpoints. So the train step sets them from ``train.compute_dtype`` and
``train.remat`` around its own trace, with ``options(...)``, and the blocks read them while they
are traced:

* ``compute_dtype`` ``bfloat16``: activations and conv/matmul inputs in bf16 (the MXU's and tensor
  cores' native type, half the activation memory), with weights cast from their f32 values on use,
  and the statistics of instance norm and AdaIN, the losses and the optimiser in f32;
* ``remat``: each residual block under ``jax.checkpoint``, so its activations are recomputed in
  the backward pass instead of stored: about a third more forward FLOPs for memory that grows
  with the blocks' inputs only, which is what lets large batches fit a 16 GiB TPU core.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Options:
  compute_dtype: Any = jnp.float32
  remat: bool = False


_CURRENT: contextvars.ContextVar[Options] = contextvars.ContextVar("fewshot_execution",
                                                                   default=Options())


def current() -> Options:
  return _CURRENT.get()


@contextlib.contextmanager
def options(compute_dtype: str = "float32", remat: bool = False) -> Iterator[Options]:
  """Runs the enclosed tracing with these options (``compute_dtype`` by name)."""
  if compute_dtype not in DTYPES:
    raise ValueError(f"compute dtype {compute_dtype!r}: expected one of {sorted(DTYPES)}")
  token = _CURRENT.set(Options(DTYPES[compute_dtype], bool(remat)))
  try:
    yield _CURRENT.get()
  finally:
    _CURRENT.reset(token)


def block(module: nnx.Module, *args: Any) -> Any:
  """``module(*args)``, rematerialised when the current options say so."""
  if current().remat:
    return nnx.remat(_call)(module, *args)
  return module(*args)


def _call(module: Callable[..., Any], *args: Any) -> Any:
  return module(*args)
