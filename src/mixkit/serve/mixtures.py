"""The mixtures a server offers: every built-in preset plus the user's configs, by name.

Each is built once at start-up (`MoA(...)` checks agents and keys but touches no network and
loads no model), so a bad config fails `mixkit serve` before it listens, not a request later.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mixkit.errors import ConfigError
from mixkit.moa import (
    Answer,
    LogSink,
    MoA,
    MoAConfig,
    SQLiteLog,
    list_presets,
    load_config,
    load_preset,
)
from mixkit.serve.errors import APIError

log = logging.getLogger("mixkit.serve")


class LogWriter:
    """The server's log sink: writes run logs to `target` on one background thread. A run's
    SQLite commit (an fsync) on the event loop would stall every request in flight.

    A response does not wait for its run's log (it lands moments later) unless more than
    `max_pending` writes are queued: then it waits for its own, so the queue stays bounded.
    """

    def __init__(self, target: LogSink | None = None, max_pending: int = 64):
        self.target = target or SQLiteLog()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mixkit-log")
        self._pending: dict[str, Future[None]] = {}
        self.max_pending = max_pending

    def write(self, answer: Answer) -> None:
        """LogSink.write: queue the run's log; return at once."""
        run_id = answer.run_id
        future = self._pool.submit(self.target.write, answer)
        self._pending[run_id] = future
        future.add_done_callback(lambda _: self._pending.pop(run_id, None))

    async def backpressure(self, run_id: str) -> None:
        """Wait for `run_id`'s log only if the writer has fallen behind."""
        if len(self._pending) > self.max_pending:
            await self.flush(run_id)

    async def flush(self, run_id: str) -> None:
        """Wait until `run_id`'s log is written (so `mixkit logs --run` finds it)."""
        future = self._pending.get(run_id)
        if future is None:
            return
        try:
            await asyncio.wrap_future(future)
        except Exception:  # a full disk must not fail the answer; say so in the server log
            log.exception("could not write the log of run %s", run_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Mixtures:
    """Name -> MoA. A user's config may shadow a preset of the same name."""

    def __init__(self, configs: list[MoAConfig], *, presets: bool = True, log: bool = True):
        self.configs: dict[str, MoAConfig] = {}
        if presets:
            for name in list_presets():
                self.configs[name] = load_preset(name)
        for cfg in configs:
            self.configs[cfg.name] = cfg
        self.writer = LogWriter()
        self._moas = {
            name: MoA(cfg, log=log, sink=self.writer) for name, cfg in self.configs.items()
        }

    @classmethod
    def from_files(cls, paths: list[Path], *, presets: bool = True, log: bool = True) -> Mixtures:
        return cls([load_config(p) for p in paths], presets=presets, log=log)

    def names(self) -> list[str]:
        return list(self.configs)

    def get(self, name: str) -> MoA:
        """The mixture called `name`, or a 404 listing the known ones."""
        try:
            return self._moas[name]
        except KeyError:
            known = ", ".join(self.configs)
            raise APIError(
                404,
                f"the model '{name[:100]}' does not exist (this server has: {known})",
                param="model",
                code="model_not_found",
            ) from None


def check_unique(configs: list[MoAConfig]) -> None:
    """Two --config files with one name would shadow each other silently: refuse."""
    seen: set[str] = set()
    for cfg in configs:
        if cfg.name in seen:
            raise ConfigError(f"two configs are both named '{cfg.name}' (rename one file)")
        seen.add(cfg.name)
