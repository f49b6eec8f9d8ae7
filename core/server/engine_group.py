"""The engine processes of one server: one per local TP rank, started and stopped together.

Rank 0 of the whole group (on node 0) is the leader: it talks ZMQ to the front
end and reports the engine's facts at startup. With ``--nnodes`` > 1 every node
runs ``tp_size // nnodes`` ranks and they meet at ``--dist-init-addr``; a
single-node group meets on a free loopback port. Under DP attention the first
rank of each DP group leads too, each on its own input address.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import time
from collections.abc import Callable

from pdcore.config import ServerArgs
from pdcore.errors import PdcoreError
from pdcore.up.ports import pick_port

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0
ENGINE_STOP_TIMEOUT_S = 10.0


class EngineStartError(PdcoreError):
    """An engine process failed to load or exited before it was ready."""


def dist_init_method(args: ServerArgs) -> str | None:
    """Where the TP ranks meet: ``--dist-init-addr``, else a free loopback port."""
    if args.tp_size == 1:
        return None
    if args.dist_init_addr:
        return f"tcp://{args.dist_init_addr}"
    return f"tcp://127.0.0.1:{pick_port()}"


class EngineGroup:
    """This node's engine processes; ``ranks`` are their global TP ranks.

    ``in_addr``: the engine's input, or one per DP leader (DP rank order)."""

    def __init__(self, args: ServerArgs, target: Callable, in_addr: str | list[str], out_addr: str):
        per_node = args.tp_size // args.nnodes
        self.ranks = [args.node_rank * per_node + i for i in range(per_node)]
        in_addrs = [in_addr] if isinstance(in_addr, str) else list(in_addr)
        per_engine = args.tp_size // len(in_addrs)
        init = dist_init_method(args)
        ctx = mp.get_context("spawn")
        self.procs, self.readers = [], []
        for rank in self.ranks:
            reader, writer = ctx.Pipe(duplex=False)
            extra = (None, rank, init) if args.tp_size > 1 else ()
            addr = in_addrs[rank // per_engine]
            proc = ctx.Process(
                target=target,
                args=(dataclasses.asdict(args), addr, out_addr, writer, *extra),
                name=f"pdcore-engine-tp{rank}" if args.tp_size > 1 else "pdcore-engine",
            )
            self.procs.append(proc)
            self.readers.append((reader, writer))

    def start(self) -> None:
        for proc, (_, writer) in zip(self.procs, self.readers, strict=True):
            proc.start()
            writer.close()

    def is_alive(self) -> bool:
        """Every rank still runs (one dead rank stalls every collective)."""
        return all(p.is_alive() for p in self.procs)

    def wait_ready(self, say: Callable[[str], None]) -> dict:
        """Block until every rank reported ready; returns the first rank's info."""
        start = time.monotonic()
        next_note = start + PROGRESS_EVERY_S
        infos: dict[int, dict] = {}
        while len(infos) < len(self.procs):
            for i, (proc, (reader, _)) in enumerate(zip(self.procs, self.readers, strict=True)):
                if i in infos:
                    continue
                if reader.poll(0.05):
                    try:
                        kind, payload = reader.recv()
                    except EOFError:
                        raise EngineStartError(self._exit_note(proc)) from None
                    if kind != "ready":
                        raise EngineStartError(f"the engine failed to start: {payload}")
                    infos[i] = dict(payload or {})
                elif not proc.is_alive():
                    raise EngineStartError(self._exit_note(proc))
            if time.monotonic() >= next_note:
                say(f"still loading the model ({time.monotonic() - start:.0f}s)")
                next_note += PROGRESS_EVERY_S
        say(f"engine loaded in {time.monotonic() - start:.1f}s")
        return infos[0]

    def wait(self, stop: Callable[[], bool]) -> int:
        """Follower nodes: block until a rank exits or ``stop()``; the exit status."""
        while not stop():
            for proc in self.procs:
                proc.join(0.2)
                if proc.exitcode is not None:
                    return 0 if proc.exitcode == 0 else 1
        return 0

    def stop(self) -> None:
        for proc in self.procs:
            if proc.pid is not None and proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            if proc.pid is None:
                continue
            proc.join(ENGINE_STOP_TIMEOUT_S)
            if proc.is_alive():
                logger.warning(
                    "%s did not stop in %ss; killing it", proc.name, ENGINE_STOP_TIMEOUT_S
                )
                proc.kill()
                proc.join(ENGINE_STOP_TIMEOUT_S)

    @staticmethod
    def _exit_note(proc) -> str:
        proc.join(1.0)
        return f"the engine process {proc.name} exited (code {proc.exitcode}) before it was ready"
