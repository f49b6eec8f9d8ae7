"""The fake transfer path: rooms that succeed without a peer, for warm-up and health checks.

A fake room skips the bootstrap and the transfer. Prefill computes the prompt and
its first token and sends nothing; decode starts from pages nobody wrote, so
its tokens are meaningless. What it proves is that every compute path of a PD
server works without a peer. Never the default, never for real traffic.

Who gets one: the server's own warm-up and health probes (an internal flag of the
engine message that no request body can set), and every request on a server
started with ``--disaggregation-transfer-backend fake``. There, as in SGLang, a
client may also name ``FAKE_BOOTSTRAP_HOST``; on any other backend that host is
refused (``reserved_host_error``), since decode would otherwise hand the client
pages holding earlier requests' KV. Either way a fake room's pages never enter a
prefix cache (``Req.cacheable``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pdcore.disaggregation.aux import AuxData
from pdcore.disaggregation.kv_args import FINAL, KVPoll

FAKE_BOOTSTRAP_HOST = "2.2.2.2"
FAKE_BACKEND = "fake"


def reserved_host_error(bootstrap_host: str | None, backend: str) -> str | None:
    """Why a client's ``bootstrap_host`` is refused: the fake host outside the fake backend."""
    if bootstrap_host != FAKE_BOOTSTRAP_HOST or backend == FAKE_BACKEND:
        return None
    return (
        f"'bootstrap_host' {FAKE_BOOTSTRAP_HOST} is reserved for "
        f"--disaggregation-transfer-backend {FAKE_BACKEND} (its outputs are not real); "
        "this server moves KV for real: send prefill's own bootstrap address"
    )


class _FakeRoom:
    """State shared by both fake sides: a room that only fails if aborted."""

    def __init__(self, room: int, state: KVPoll):
        self.room = room
        self.state = state
        self.reason = ""

    def poll(self) -> KVPoll:
        return self.state

    @property
    def failure_reason(self) -> str:
        return self.reason

    def abort(self, reason: str = "aborted") -> None:
        if self.state not in FINAL:
            self.state, self.reason = KVPoll.FAILED, reason


class FakeKVSender(_FakeRoom):
    """Prefill side: ready at once; SUCCESS when the last chunk is "sent"."""

    def __init__(self, room: int):
        super().__init__(room, KVPoll.READY)

    def send_chunk(
        self, src_pages: Sequence[int], is_last: bool, aux: AuxData | None = None
    ) -> None:
        if is_last and self.state not in FINAL:
            self.state = KVPoll.SUCCESS


class FakeKVReceiver(_FakeRoom):
    """Decode side: asks for pages at once; SUCCESS as soon as it has them.

    ``first_token`` stands in for the token prefill would have sampled.
    """

    def __init__(self, room: int, first_token: int):
        super().__init__(room, KVPoll.WAITING_FOR_INPUT)
        self.first_token = first_token

    def send_request(self, dst_pages: Sequence[int], aux_slot: int) -> None:
        if self.state is KVPoll.WAITING_FOR_INPUT:
            self.state = KVPoll.SUCCESS

    def aux(self) -> AuxData:
        return AuxData(token_id=self.first_token)
