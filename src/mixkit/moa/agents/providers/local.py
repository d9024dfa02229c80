"""Embedded GGUF models run in-process with llama-cpp-python.

Two process-wide resources keep concurrent local agents honest:
- `CORES`, a budget of CPU threads (`$MIXKIT_THREADS`, default os.cpu_count()). Each call takes
  its threads from the budget before it decodes and returns them after, so concurrent local agents
  split the cores and never oversubscribe them (oversubscribed llama.cpp is >10x slower).
- `POOL`, idle `Llama` instances per model file. A `Llama` is not thread-safe, so two agents on
  the same model (Self-MoA) each take their own instance; the weights are mmapped and shared.

Each call runs in its own thread and hands tokens to the event loop through a queue. Cancelling
the consumer (a deadline, a met quorum) stops generation at the next token.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from mixkit.errors import ProviderError
from mixkit.moa.agents.providers import constrained
from mixkit.moa.agents.providers.base import Message, Provider, Sampling, Usage
from mixkit.moa.agents.providers.model_files import check_model_name, model_path

# llama.cpp's CPU backend is built with OpenMP. By default its idle threads spin, and when
# another process holds a core a decode slows down by orders of magnitude; passive waiting
# avoids that. It must be set before llama_cpp (libgomp) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class CoreBudget:
    """A counting budget of CPU threads shared by every local call in the process."""

    def __init__(self, total: int):
        self.total = max(1, total)
        self.free = self.total
        self.peak = 0  # most threads ever in use at once
        self.calls = 0  # calls holding threads now
        self.peak_calls = 0  # most calls ever holding threads at once
        self._cond = threading.Condition()

    def acquire(self, n: int, stop: threading.Event) -> bool:
        """Block until `n` threads are free (False if `stop` is set first)."""
        n = min(n, self.total)
        with self._cond:
            while self.free < n:
                if stop.is_set():
                    return False
                self._cond.wait(0.05)
            self.free -= n
            self.calls += 1
            self.peak = max(self.peak, self.total - self.free)
            self.peak_calls = max(self.peak_calls, self.calls)
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.free += min(n, self.total)
            self.calls -= 1
            self._cond.notify_all()


CORES = CoreBudget(int(os.environ.get("MIXKIT_THREADS") or os.cpu_count() or 1))


class LlamaPool:
    """Idle `Llama` instances keyed by (file, n_ctx)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[Any]] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._closing_at_exit = False
        # llama.cpp keeps the last prompt's KV cache and reuses the longest common prefix with the
        # next one (a shared system prompt, a conversation that grows). Evals that compare
        # strategies on the same prompt turn this off, so no strategy runs on another's warm cache
        # (as does MIXKIT_PROMPT_CACHE=0, for a benchmarked server).
        self.reuse_prefix = os.environ.get("MIXKIT_PROMPT_CACHE", "1") != "0"

    def take(self, path: Path, n_ctx: int) -> Any:
        key = (str(path), n_ctx)
        with self._lock:
            if self._idle.get(key):
                return self._idle[key].pop()
        from llama_cpp import Llama  # lazy: llama.cpp is heavy; only when a local model is used

        # Llama() silences the model load by pointing the process-wide fds 1 and 2 at /dev/null
        # and back. Two loads at once interleave that dance and can leave stdout at /dev/null
        # for good (seen here: an eval printed nothing), so loads are serialized.
        if not self._closing_at_exit:
            # Free the models while llama_cpp is still importable: left to the garbage collector
            # at interpreter shutdown, Llama.__del__ finds its C bindings gone and prints a traceback.
            atexit.register(self.clear)
            self._closing_at_exit = True
        with self._load_lock:
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=CORES.total,
                n_threads_batch=CORES.total,
                verbose=False,
            )

    def give(self, path: Path, n_ctx: int, llama: Any) -> None:
        with self._lock:
            self._idle.setdefault((str(path), n_ctx), []).append(llama)

    def clear(self) -> None:
        """Close and forget every idle model."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for models in idle.values():
            for llama in models:
                try:
                    llama.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass


POOL = LlamaPool()
_END = object()


def _set_threads(llama: Any, threads: int) -> None:
    import llama_cpp  # lazy: see LlamaPool.take

    llama_cpp.llama_set_n_threads(llama.ctx, threads, threads)


def _grammar(sampling: Sampling) -> Any:
    """The grammar a constrained call decodes under (structured output), else None."""
    c = sampling.constraint
    return constrained.grammar(c.schema) if c is not None and c.schema is not None else None


def _count_tokens(llama: Any, text: str) -> int:
    return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0


class LocalProvider(Provider):
    """A GGUF model run in this process (`smollm2-135m`, `qwen2.5-coder-0.5b`, or a path)."""

    kind = "local"

    def __init__(self, model: str, n_ctx: int = 4096):
        check_model_name(model)
        self.model = model
        self.n_ctx = n_ctx

    def _generate(
        self,
        messages: list[Message],
        sampling: Sampling,
        usage: Usage,
        threads: int,
        put: Callable[[object], None],
        stop: threading.Event,
    ) -> None:
        """Runs in a worker thread: take cores and a model instance, decode, stream pieces out."""
        path = model_path(self.model)
        tools = sampling.constraint.tools if sampling.constraint else None
        messages = constrained.text_messages(messages, tools)  # tool turns as text
        if not CORES.acquire(threads, stop):
            return
        try:
            llama = POOL.take(path, self.n_ctx)
            try:
                _set_threads(llama, threads)
                if not POOL.reuse_prefix:
                    llama.reset()  # forget the cached prompt: every call pays its full prompt
                text = []
                chunks = llama.create_chat_completion(
                    messages=messages,
                    max_tokens=sampling.max_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    seed=sampling.seed,
                    stream=True,
                    grammar=_grammar(sampling),
                )
                for chunk in chunks:
                    if stop.is_set():
                        chunks.close()
                        return
                    choice = chunk["choices"][0]
                    piece = choice["delta"].get("content")
                    if piece:
                        text.append(piece)
                        put(piece)
                    if choice.get("finish_reason"):
                        usage.finish_reason = choice["finish_reason"]
                answer = "".join(text)
                usage.completion_tokens = _count_tokens(llama, answer)
                # The context now holds the prompt and the evaluated answer tokens (all but the
                # last one when generation stopped at max_tokens).
                unevaluated = 1 if usage.finish_reason == "length" else 0
                usage.prompt_tokens = max(0, llama.n_tokens - usage.completion_tokens + unevaluated)
            finally:
                POOL.give(path, self.n_ctx, llama)
        finally:
            CORES.release(threads)

    async def stream(
        self,
        messages: list[Message],
        sampling: Sampling,
        usage: Usage,
        *,
        threads: int | None = None,
    ) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        n_threads = max(1, min(threads or CORES.total, CORES.total))

        def put(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def worker() -> None:
            try:
                self._generate(messages, sampling, usage, n_threads, put, stop)
            except Exception as e:  # surfaces in the consumer as a typed ProviderError
                put(e)
            finally:
                try:
                    put(_END)
                except RuntimeError:  # the loop is already closed; nobody is listening
                    pass

        # A dedicated thread, not the loop's default executor: calls waiting for cores must not
        # starve other users of that executor (DNS lookups of the HTTP providers).
        threading.Thread(target=worker, name=f"mixkit-local-{self.model}", daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, ProviderError):
                    raise item
                if isinstance(item, Exception):
                    raise ProviderError(
                        f"local model {self.model} failed: {type(item).__name__}: {item}"
                    )
                yield item
        finally:
            stop.set()  # a cancelled consumer stops generation at the next token
