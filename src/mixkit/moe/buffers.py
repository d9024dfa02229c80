"""Large CPU buffers for the fused expert path: huge-page advice, and weight-gradient reuse.

An MoE's expert weights are E/k times a dense FFN's of the same active width, and so are their
gradients. `optimizer.zero_grad()` frees the gradients every step (set_to_none), so every
backward writes E/k times the dense FFN's gradient bytes into freshly mapped memory: the kernel
faults in and zeroes every page first. Measured on the 2-core EPYC VM (one thread): filling a
fresh 512 MiB buffer took 226 ms, refilling one already mapped 29 ms; at E=256, d_model=512 the
three expert gradients are 512 MiB each.

Two remedies, both here:
- `fresh()` advises a buffer as transparent huge pages before its first touch (fewer faults;
  the zeroing stays).
- `GradientPool` keeps the storage of each weight's last gradients and hands it out again once
  nothing else holds it (the optimizer has dropped `.grad`): the next backward writes into
  memory that is already mapped. This is what a caching allocator does; torch has none for CPU.
  Memory is reused only when no tensor or storage made from it is alive (see _Block), so a
  gradient someone still holds (an accumulating `.grad`, a tensor kept in a list) is never
  overwritten. The pool keeps at most `PER_WEIGHT` idle buffers per weight, while the weight
  lives; `release()` drops them.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import sys
import threading

import torch
from torch.utils.weak import WeakIdKeyDictionary

_HUGE_PAGE = 2 << 20
HUGE_PAGES_MAX_BYTES = 256 << 20  # see fresh()
_MADV_HUGEPAGE = 14
_madvise = None
if sys.platform.startswith("linux"):
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):  # no libc symbols to call: keep ordinary pages
        _madvise = None


def fresh(*shape: int, like: torch.Tensor) -> torch.Tensor:
    """torch.empty(shape) like `like`, backed by transparent huge pages where the OS offers them.

    Every step writes fresh (A, H) activations; first-touching them in 4 KiB pages costs a page
    fault per 4 KiB. torch uses huge pages only when THP_MEM_ALLOC_ENABLE=1 is set before it
    starts, which a library cannot count on, so large buffers are advised here, before their
    first touch (under the kernel's default `madvise` THP mode this is what makes them huge). Not
    above HUGE_PAGES_MAX_BYTES: with defrag=madvise a fault may compact memory first, which
    measured slower than 4 KiB pages for 512 MiB buffers (docs/benchmarks.md).
    """
    t = torch.empty(shape, dtype=like.dtype, device=like.device)
    nbytes = t.numel() * t.element_size()
    if (
        _madvise is not None
        and t.device.type == "cpu"
        and 2 * _HUGE_PAGE <= nbytes <= HUGE_PAGES_MAX_BYTES
    ):
        start = -(-t.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        stop = (t.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if stop > start:
            _madvise(start, stop - start, _MADV_HUGEPAGE)  # advice only: a failure changes nothing
    return t


class _Block:
    """Anonymous memory that tensors borrow through the buffer protocol: each tensor (storage)
    made from it holds one reference to `memory` until it is freed, so the block is idle exactly
    when `memory` has no references but this attribute's (sys.getrefcount counts its argument
    too, hence 2)."""

    def __init__(self, nbytes: int) -> None:
        self.memory = mmap.mmap(-1, max(nbytes, 1))
        if hasattr(mmap, "MADV_HUGEPAGE") and 2 * _HUGE_PAGE <= nbytes <= HUGE_PAGES_MAX_BYTES:
            self.memory.madvise(mmap.MADV_HUGEPAGE)  # see fresh()

    def idle(self) -> bool:
        return sys.getrefcount(self.memory) == 2

    def tensor(self, like: torch.Tensor) -> torch.Tensor:
        flat = torch.frombuffer(self.memory, dtype=like.dtype, count=like.numel())
        # not a view of `flat` (a view's base would stop autograd from adopting it as .grad)
        strides = [math.prod(like.shape[i + 1 :]) for i in range(like.dim())]  # contiguous
        return torch.empty(0, dtype=like.dtype).set_(flat.untyped_storage(), 0, like.shape, strides)


class GradientPool:
    """Per weight, the memory of its recent gradients, reused once no one else holds it."""

    PER_WEIGHT = 2

    def __init__(self) -> None:
        self._kept: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._lock = threading.Lock()

    def take(self, weight: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor shaped like `weight`, in memory already mapped when possible."""
        if weight.device.type != "cpu" or type(weight) not in (torch.Tensor, torch.nn.Parameter):
            return fresh(*weight.shape, like=weight)
        nbytes = weight.numel() * weight.element_size()
        with self._lock:
            kept: list[_Block] = self._kept.setdefault(weight, [])
            for block in kept:
                if len(block.memory) == max(nbytes, 1) and block.idle():
                    return block.tensor(weight)
            stale = [b for b in kept if b.idle()]  # idle but of another size: replace one
            if len(kept) >= self.PER_WEIGHT and stale:
                kept.remove(stale[0])
            if len(kept) >= self.PER_WEIGHT:  # all in use (kept by the caller): not pooled
                return fresh(*weight.shape, like=weight)
            kept.append(_Block(nbytes))
            return kept[-1].tensor(weight)

    def release(self) -> None:
        """Drop every idle buffer (those still in use are freed by their holders as usual)."""
        with self._lock:
            self._kept = WeakIdKeyDictionary()


gradients = GradientPool()
