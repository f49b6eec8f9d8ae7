"""Ranks prove to each other that they hold the same ``--disaggregation-secret``.

Anyone who reaches ``--dist-init-addr`` can join the process group as some
rank. Right after the group forms, every rank therefore sends a fresh random
nonce and whether it has a secret (one all-gather of fixed-size byte tensors),
then an HMAC-SHA256, under the secret, of every rank's nonce and its own rank
(a second all-gather). Each rank checks every other rank's proof; all ranks see
the same bytes, so they all fail together (no rank left waiting in a later
collective) with an error naming the flag. The proofs bind this start's nonces,
so a proof recorded from an earlier start is worthless.

The ranks then seal every message they trade (``wire``) under a key derived
from the secret and this start's nonces.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import torch

from pdcore.disaggregation.auth import SECRET_FLAG, AuthError, to_key

NONCE_BYTES = 32
_JOIN = b"pdcore-tp-join"
_SESSION = b"pdcore-tp-session"


def _all_gather_fixed(data: bytes, size: int, group) -> list[bytes]:
    import torch.distributed as dist

    mine = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine, group=group)
    return [p.numpy().tobytes() for p in parts]


def proof(key: bytes, nonces: list[bytes], rank: int) -> bytes:
    """Rank ``rank``'s proof that it holds ``key``, bound to this start's nonces."""
    h = hmac.new(key, _JOIN, hashlib.sha256)
    h.update(b"".join(nonces))
    h.update(rank.to_bytes(4, "big"))
    return h.digest()


def check_secrets_agree(has_secret: list[bool]) -> None:
    """Raise ``AuthError`` when some ranks have a secret and others do not."""
    without = [r for r, has in enumerate(has_secret) if not has]
    if without and len(without) < len(has_secret):
        raise AuthError(
            f"TP ranks {without} run without {SECRET_FLAG} while the others have one: "
            f"start every node with the same {SECRET_FLAG} (or PDCORE_DISAGGREGATION_SECRET)"
        )


def check_proofs(key: bytes, nonces: list[bytes], proofs: list[bytes]) -> None:
    """Raise ``AuthError`` naming the ranks whose proof does not match ``key``."""
    bad = [r for r, got in enumerate(proofs) if not hmac.compare_digest(got, proof(key, nonces, r))]
    if bad:
        raise AuthError(
            f"TP ranks {bad} could not prove they hold this rank's {SECRET_FLAG}: "
            f"start every node with the same {SECRET_FLAG} (or PDCORE_DISAGGREGATION_SECRET)"
        )


def authenticate_group(secret: str | bytes | None, rank: int, size: int, group) -> bytes | None:
    """Collective over ``group`` (gloo, every rank of the server): check that all
    ranks hold ``secret``. Returns the key that seals this start's messages (None
    when no rank has a secret); raises ``AuthError`` on every rank otherwise."""
    key = to_key(secret)
    nonce = os.urandom(NONCE_BYTES)
    first = _all_gather_fixed(bytes([key is not None]) + nonce, size, group)
    has_secret = [bool(b[0]) for b in first]
    nonces = [b[1:] for b in first]
    check_secrets_agree(has_secret)  # every rank saw the same flags: all raise alike
    if key is None:
        return None
    check_proofs(key, nonces, _all_gather_fixed(proof(key, nonces, rank), size, group))
    return hmac.new(key, _SESSION + b"".join(nonces), hashlib.sha256).digest()
