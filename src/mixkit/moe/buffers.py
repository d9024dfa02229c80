"""Large CPU buffers for the fused expert path: huge-page advice, scratch and gradient reuse.

An MoE's expert weights are E/k times a dense FFN's of the same active width, and so are their
gradients. `optimizer.zero_grad()` frees the gradients every step (set_to_none), so every
backward writes E/k times the dense FFN's gradient bytes into freshly mapped memory: the kernel
faults in and zeroes every page first. Measured on the 2-core EPYC VM (one thread): filling a
fresh 512 MiB buffer took 226 ms, refilling one already mapped 29 ms; at E=256, d_model=512 the
three expert gradients are 512 MiB each.

The same holds, at a smaller scale, for the (A, H) activations and temporaries of every step.
Three remedies, all here:
- `fresh()` advises a buffer as transparent huge pages before its first touch (fewer faults;
  the zeroing stays).
- `ScratchPool` (`scratch`) keeps the fused path's large per-step buffers by size and hands
  them out again once idle, in training (not under inference_mode).
- `GradientPool` keeps the storage of each weight's last gradients and hands it out again once
  nothing else holds it (the optimizer has dropped `.grad`): the next backward writes into
  memory that is already mapped. This is what a caching allocator does; torch has none for CPU.
  Memory is reused only when no tensor or storage made from it is alive (see _Block), so a
  gradient someone still holds (an accumulating `.grad`, a tensor kept in a list) is never
  overwritten. The pool keeps at most `PER_WEIGHT` idle buffers per weight, while the weight
  lives; `release()` drops them.
Both pools tell "idle" the same way (see _Block) and have `release()`.
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
        return self.shaped(tuple(like.shape), like.dtype)

    def shaped(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        flat = torch.frombuffer(self.memory, dtype=dtype, count=math.prod(shape))
        # not a view of `flat` (a view's base would stop autograd from adopting it as .grad)
        strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]  # contiguous
        return torch.empty(0, dtype=dtype).set_(flat.untyped_storage(), 0, shape, strides)


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


class ScratchPool:
    """The fused path's large per-step buffers (activations saved for backward, backward
    temporaries, the dispatcher's gathers), kept across steps by size and reused once idle.

    Plain allocations of these sizes go back to the kernel when freed (glibc maps anything
    above 32 MiB afresh, and often smaller buffers too once other allocations come between), so
    every step faulted and zeroed them again. The pool keeps up to MAX_PER_SIZE blocks of each
    size: about the most that one step holds at once, so between steps it keeps roughly the
    step's peak. Not under inference_mode (decoding and serving keep ordinary allocations);
    `release()` drops the idle blocks."""

    MAX_PER_SIZE = 32
    MIN_BYTES = 1 << 20

    def __init__(self) -> None:
        self._kept: dict[tuple[int, torch.dtype], list[_Block]] = {}
        self._lock = threading.Lock()

    def take(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of `shape`, dtype and device of `like`."""
        nbytes = math.prod(shape) * like.element_size()
        if (
            like.device.type != "cpu"
            or nbytes < self.MIN_BYTES
            or torch.is_inference_mode_enabled()
            or type(like) not in (torch.Tensor, torch.nn.Parameter)
        ):
            return fresh(*shape, like=like)
        with self._lock:
            kept = self._kept.setdefault((nbytes, like.dtype), [])
            for block in kept:
                if block.idle():
                    return block.shaped(shape, like.dtype)
            if len(kept) >= self.MAX_PER_SIZE:
                return fresh(*shape, like=like)
            kept.append(_Block(nbytes))
            return kept[-1].shaped(shape, like.dtype)

    def release(self) -> None:
        """Drop every idle block (those in use are freed by their holders as usual)."""
        with self._lock:
            self._kept = {}


gradients = GradientPool()
scratch = ScratchPool()
