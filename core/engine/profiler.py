"""The torch profiler inside the engine process, started and stopped by messages.

The model runs here, not in the HTTP front end, so only here does a trace see
its operators. One engine serves one role (``--disaggregation-mode``: prefill,
decode or null), so in a PD fleet every trace holds one stage: the torch
profiler cannot trace a prefill server and a decode server together, but each
server traces itself. Trace files are Chrome trace JSON named
``[<prefix>-]<timestamp>-<role>-TP-<rank>.trace.json``, so the traces of a
whole fleet can share one directory and still be told apart.

States: idle -> running (``start``) -> idle (``stop`` writes the trace). With
``num_steps`` the profiler stops itself after that many model steps and keeps
the result until a ``stop`` collects it (finished -> idle); a new ``start``
drops an uncollected result (its file stays on disk).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

import torch

from pdcore.engine.io_struct import ProfileReply, StartProfileReq
from pdcore.platform import Platform

logger = logging.getLogger(__name__)

ACTIVITIES = {"CPU": "CPU", "GPU": "CUDA", "CUDA": "CUDA"}  # request name -> torch name


class EngineProfiler:
    """One engine's profiler; every method returns at once except ``stop`` (writes)."""

    def __init__(
        self,
        role: str,
        platform: Platform,
        rank: int = 0,
        clock: Callable[[], float] = time.time,
    ):
        self.role = role
        self.platform = platform
        self.rank = rank
        self.clock = clock
        self._profiler: torch.profiler.profile | None = None
        self._req: StartProfileReq | None = None
        self._activities: list[str] = []
        self._started_at = 0.0
        self.steps = 0
        self._finished: ProfileReply | None = None  # an auto-stop not yet collected

    @property
    def running(self) -> bool:
        return self._profiler is not None

    def start(self, req: StartProfileReq) -> ProfileReply:
        if self.running:
            return self._fail(
                req.token, "profiling is already in progress on this server; call /stop_profile"
            )
        activities, problem = self._resolve_activities(req.activities)
        if problem:
            return self._fail(req.token, problem)
        if req.num_steps is not None and req.num_steps < 1:
            return self._fail(req.token, f"num_steps must be >= 1, got {req.num_steps}")
        problem = _make_dir(req.output_dir)
        if problem:
            return self._fail(req.token, problem)
        profiler = torch.profiler.profile(
            activities=[getattr(torch.profiler.ProfilerActivity, a) for a in activities],
            record_shapes=req.record_shapes,
            with_stack=req.with_stack,
        )
        profiler.start()
        self._profiler, self._req, self._activities = profiler, req, activities
        self._started_at, self.steps, self._finished = self.clock(), 0, None
        until = f"for {req.num_steps} steps" if req.num_steps else "until /stop_profile"
        logger.info("profiling %s %s; traces go to %s", self.role, until, req.output_dir)
        return self._reply(req.token, f"profiling started ({until})")

    def stop(self, token: int = 0) -> ProfileReply:
        """Stop and write the trace; or hand over the result of a ``num_steps`` run."""
        if self._finished is not None:
            reply, self._finished = self._finished, None
            reply.token = token
            return reply
        if not self.running:
            return self._fail(token, "profiling is not in progress on this server; "
                              "call /start_profile first")  # fmt: skip
        return self._finish(token, "profiling stopped")

    def after_step(self) -> None:
        """Count one model step; stop by itself once ``num_steps`` were profiled."""
        if not self.running:
            return
        self.steps += 1
        if self._req.num_steps is not None and self.steps >= self._req.num_steps:
            self._finished = self._finish(0, f"profiling stopped after {self.steps} steps")

    def step_scope(self):
        """A named range around one engine step in the trace (nothing when not profiling)."""
        if not self.running:
            return contextlib.nullcontext()
        return torch.profiler.record_function(f"pdcore.{self.role}_step")

    def close(self) -> None:
        """Engine shutdown: stop a running profiler without writing (nobody asked for it)."""
        if self._profiler is not None:
            with contextlib.suppress(Exception):
                self._profiler.stop()
            self._profiler = None

    # ---- internals ----------------------------------------------------------------

    def _resolve_activities(self, asked: list[str] | None) -> tuple[list[str], str | None]:
        """Torch activity names for ``asked`` (None: the platform's default
        ``Platform.profiler_activities``; CPU and CUDA on a CUDA device)."""
        traced = list(self.platform.profiler_activities())
        if asked is None:
            return traced, None
        known = {**ACTIVITIES, **{a: a for a in traced}}
        unknown = [a for a in asked if a not in known]
        if unknown or not asked:
            names = ", ".join(dict.fromkeys([*ACTIVITIES, *traced]))
            return [], f"activities must be a non-empty list of {names}; got {asked}"
        names = list(dict.fromkeys(known[a] for a in asked))
        missing = [a for a in names if a not in traced]
        if missing == ["CUDA"]:
            return [], (
                f"activities: GPU tracing needs a CUDA device, and this engine runs on "
                f'{self.platform.name}; ask for ["CPU"]'
            )
        if missing:
            return [], (
                f"activities: platform {self.platform.name!r} cannot trace {', '.join(missing)} "
                f"(it traces {', '.join(traced)})"
            )
        return names, None

    def _finish(self, token: int, message: str) -> ProfileReply:
        profiler, req = self._profiler, self._req
        self._profiler = None
        try:
            profiler.stop()
            path = self._trace_path(req)
            profiler.export_chrome_trace(path)
        except Exception as e:  # a full disk must not take the engine down
            logger.exception("writing the %s trace failed", self.role)
            return self._fail(token, f"writing the trace failed: {type(e).__name__}: {e}", 500)
        logger.info("%s: %s", message, path)
        return self._reply(token, message, files=[path])

    def _trace_path(self, req: StartProfileReq) -> str:
        """``[<prefix>-]<start time>-<role>-TP-<rank>.trace.json``; never overwrites."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._started_at))
        stamp += f".{int(self._started_at * 1000) % 1000:03d}"
        stem = "-".join(filter(None, [req.prefix, stamp, self.role, f"TP-{self.rank}"]))
        path = os.path.join(req.output_dir, f"{stem}.trace.json")
        n = 1
        while os.path.exists(path):
            n += 1
            path = os.path.join(req.output_dir, f"{stem}-{n}.trace.json")
        return os.path.abspath(path)

    def _reply(self, token: int, message: str, files: list[str] | None = None) -> ProfileReply:
        req = self._req
        return ProfileReply(
            token=token,
            success=True,
            message=message,
            role=self.role,
            files=files or [],
            output_dir=os.path.abspath(req.output_dir) if req else "",
            activities=list(self._activities),
            num_steps=req.num_steps if req else None,
            steps=self.steps,
        )

    def _fail(self, token: int, message: str, status: int = 400) -> ProfileReply:
        return ProfileReply(token, False, message, status=status, role=self.role)


def _make_dir(path: str) -> str | None:
    """Create ``path`` (and parents); a problem as one line, else None."""
    if not path:
        return "output_dir must not be empty"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"output_dir {path!r} cannot be created: {e.strerror or e}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"output_dir {path!r} is not writable by the engine process"
    return None
