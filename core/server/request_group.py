"""The requests of one HTTP call (a batch and/or ``n`` choices), read together.

All states of a group share one ``asyncio.Event``: the receive loop sets it on
any update and the handler scans the states' ``dirty`` flags, so one handler
task serves any number of choices without a task per choice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from pdcore.server.request_state import RequestState


class RequestGroup:
    def __init__(
        self,
        states: list[RequestState],
        notify: asyncio.Event,
        abort: Callable[[str, str], None],
    ):
        self.states = states
        self._notify = notify
        self._abort = abort

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.states)

    def first_error(self):
        return next((s.error for s in self.states if s.error is not None), None)

    async def wait_all(self) -> None:
        """Until every request finished (or failed)."""
        await self._wait(lambda: self.finished)

    async def wait_started(self) -> None:
        """Until every request produced a token, finished or failed (before streaming)."""
        await self._wait(lambda: all(s.output_ids or s.finished for s in self.states))

    async def updates(self) -> AsyncIterator[tuple[int, RequestState]]:
        """Yield ``(index, state)`` for each state that changed; ends when all finished."""
        while True:
            self._notify.clear()
            for i, state in enumerate(self.states):
                if state.dirty:
                    state.dirty = False
                    yield i, state
            if self.finished and not any(s.dirty for s in self.states):
                return
            await self._notify.wait()

    def abort_unfinished(self, message: str = "client disconnected") -> None:
        for state in self.states:
            if not state.finished:
                self._abort(state.rid, message)

    async def _wait(self, done: Callable[[], bool]) -> None:
        while not done():
            self._notify.clear()
            if done():
                return
            await self._notify.wait()
