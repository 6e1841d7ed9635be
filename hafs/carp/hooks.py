"""Hooks run beside the protocol, never inside it.

Each vhid has its own queue and worker: the hooks of one vhid run one at a time, in
the order of its transitions (MASTER's takeover finishes before BACKUP's step-down
starts), while other vhids and the protocol loop carry on. A hook that outlives
``timeout`` is killed with its whole process group. Exit status, duration and output
are logged, one line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("hafs.hooks")

OUTPUT_LIMIT = 4000  # characters of a hook's output kept in the log


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    command: Command
    returncode: int | None  # None: killed after the timeout, or could not start
    seconds: float
    output: str


class HookRunner:
    """Per-vhid ordered, asynchronous execution of hook commands."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._queues: dict[int, asyncio.Queue[Command]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        self.results: list[Result] = []  # the last few, for status and tests
        self.running = 0

    def submit(self, vhid: int, commands: Sequence[Command]) -> None:
        """Queue ``commands`` for ``vhid``; returns at once."""
        queue = self._queues.get(vhid)
        if queue is None:
            queue = self._queues[vhid] = asyncio.Queue()
            self._workers[vhid] = asyncio.create_task(self._work(vhid, queue))
        for command in commands:
            queue.put_nowait(command)

    @property
    def busy(self) -> bool:
        """Does a hook run, or wait to run?"""
        return self.running > 0 or any(not q.empty() for q in self._queues.values())

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every queued hook has run."""
        waits = [asyncio.create_task(q.join()) for q in self._queues.values()]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
            for task in waits:
                task.cancel()

    async def close(self) -> None:
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def _work(self, vhid: int, queue: asyncio.Queue[Command]) -> None:
        while True:
            command = await queue.get()
            try:
                result = await self._run(command)
                self._record(vhid, result)
            finally:
                queue.task_done()

    async def _run(self, command: Command) -> Result:
        start = time.monotonic()
        # output to a file, not a pipe: asyncio's wait() also waits for the pipes to close,
        # which a child left running by the hook would delay for as long as it lives
        with tempfile.TemporaryFile() as output:
            self.running += 1
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    env={**os.environ, **command.env},
                    start_new_session=True,  # its own process group: a timeout kills it all
                )
            except OSError as exc:
                self.running -= 1
                return Result(command, None, time.monotonic() - start, f"cannot start: {exc}")
            try:
                await asyncio.wait_for(proc.wait(), self._timeout)
                returncode: int | None = proc.returncode
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                returncode = None
            finally:
                self.running -= 1
            output.seek(0)
            out = output.read()
        text = out.decode(errors="replace")[-OUTPUT_LIMIT:]
        return Result(command, returncode, time.monotonic() - start, text)

    def _record(self, vhid: int, result: Result) -> None:
        self.results = [*self.results[-49:], result]
        argv = " ".join(result.command.argv)
        if result.returncode is None:
            outcome = (
                f"killed after {self._timeout:g}s" if result.seconds >= self._timeout else "failed"
            )
        else:
            outcome = f"exited {result.returncode}"
        level = logging.INFO if result.returncode == 0 else logging.WARNING
        log.log(level, "vhid %d hook %s: %s in %.2fs", vhid, argv, outcome, result.seconds)
        for line in result.output.splitlines():
            log.log(level, "vhid %d hook output: %s", vhid, line)
