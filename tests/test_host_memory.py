"""Handing freed heap back to the OS: what keeps a training process's resident memory down after
XLA's compiler has freed its working memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from fewshot_jax import host_memory


def _rss_bytes() -> int:
  with open("/proc/self/status", encoding="ascii") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_freed_small_chunks_go_back_to_the_os():
  """What a compile leaves: many small chunks freed under one still in use. glibc keeps them;
  ``release_freed_heap`` returns them. The project runs on Linux (TPU VMs, the dev extra's wheels),
  so elsewhere this fails rather than skips."""
  assert sys.platform.startswith("linux"), f"glibc and /proc are Linux's, not {sys.platform}'s"
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  host_memory.release_freed_heap()
  chunks = [libc.malloc(4096) for _ in range(64_000)]  # 250 MiB below glibc's mmap threshold
  for c in chunks:
    ctypes.memset(c, 1, 4096)  # touched, so resident
  keep = libc.malloc(4096)  # the heap's top stays in use: free alone cannot shrink it
  before = _rss_bytes()
  for c in chunks:
    libc.free(c)
  kept = _rss_bytes()
  assert kept > before - 64 * 2**20  # glibc kept (most of) the freed pages
  assert host_memory.release_freed_heap()
  after = _rss_bytes()
  libc.free(keep)
  assert kept - after > 200 * 2**20, (before, kept, after)
