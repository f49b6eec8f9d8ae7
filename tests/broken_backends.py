"""Deliberately wrong backends: the conformance kit must fail each of them.

Each is the example TCP engine (or the torch attention) with one bug, of the
kinds a vendor's first backend had.
"""

from __future__ import annotations

import ctypes
import socket
import threading
import time

import torch.nn.functional as F
from pdcore_example.tcp_engine import _RUN, TcpTransferEngine, _recv_exact

from pdcore.attention.base import store_kv
from pdcore.attention.torch_native import TorchNativeAttention
from pdcore.disaggregation.transfer import TransferError, TransferStatus


class TruncatingEngine(TcpTransferEngine):
    """Sends every run one byte short (an off-by-one in length handling)."""

    def _write(self, peer, runs, notify):
        return super()._write(peer, [(a, b, n - 1) for a, b, n in runs], notify)


class LyingEngine(TcpTransferEngine):
    """Reports success without moving a byte."""

    def _write(self, peer, runs, notify):
        return None

    def _poll(self, token):
        return TransferStatus.DONE


class NotifiesBeforeDataEngine(TcpTransferEngine):
    """Sends the notification on its own connection ahead of the data (a fast
    control path racing a slower data path)."""

    def _send_batch(self, addr, runs, notify):
        if notify is not None:
            super()._send_batch(addr, [], notify)
            time.sleep(0.2)
        super()._send_batch(addr, runs, None)


class DuplicatingNotificationsEngine(TcpTransferEngine):
    """Hands every notification out again on each poll (never empties its queue)."""

    def _get_notifications(self):
        with self._notif_lock:
            return list(self._notifs)


class SharedSocketEngine(TcpTransferEngine):
    """Keeps one connection per peer and streams batches into it from every
    transfer thread without a lock, so concurrent batches interleave."""

    def __init__(self, config):
        super().__init__(config)
        self._socks: dict = {}
        self._socks_lock = threading.Lock()

    def _send_batch(self, addr, runs, notify):
        with self._socks_lock:
            sock = self._socks.get(addr)
            if sock is None:
                sock = self._socks[addr] = socket.create_connection(addr, timeout=self._timeout)
        for local, remote, length in runs:
            sock.sendall(b"D" + _RUN.pack(remote, length))
            data = ctypes.string_at(local, length)
            for i in range(0, length, 512):  # streamed in pieces, as from a staging ring
                sock.sendall(data[i : i + 512])
        sock.sendall(b"E")
        if _recv_exact(sock, 1) != b"K":
            raise TransferError("peer refused the batch")

    def _serve(self, conn):
        with conn:
            conn.settimeout(self._timeout)
            try:
                while True:
                    op = _recv_exact(conn, 1)
                    if op == b"E":
                        conn.sendall(b"K")
                    elif op == b"D":
                        addr, length = _RUN.unpack(_recv_exact(conn, _RUN.size))
                        if not any(r.contains(addr, length) for r in self.regions):
                            raise TransferError(f"write to unregistered [{addr:#x}, +{length})")
                        ctypes.memmove(addr, _recv_exact(conn, length), length)
                    else:
                        raise TransferError(f"unknown opcode {op!r}")
            except (OSError, TransferError, ConnectionError):
                pass

    def _close(self):
        for sock in self._socks.values():
            sock.close()
        super()._close()


class LeakyCloseEngine(TcpTransferEngine):
    """``close()`` forgets its listening socket and the thread accepting on it."""

    def _close(self):
        self._pool.shutdown(wait=False)


class IgnoresRefusalEngine(TcpTransferEngine):
    """Treats the peer's refusal of a batch (an ``F`` answer, or the connection
    reset as the peer drops the rest) as success."""

    def _send_batch(self, addr, runs, notify):
        try:
            super()._send_batch(addr, runs, notify)
        except (TransferError, ConnectionResetError, BrokenPipeError):
            pass  # "the peer answered, so the batch arrived"


class WaitsForLostPeerEngine(TcpTransferEngine):
    """Keeps a batch whose connection broke PENDING, waiting for a peer that never returns."""

    def _poll(self, token):
        future = self._futures[token]
        if future.done() and isinstance(future.exception(), ConnectionError):
            return TransferStatus.PENDING
        return super()._poll(token)


class NoDeadlineEngine(TcpTransferEngine):
    """Blocks on its sockets forever: a peer that stops reading hangs the write."""

    def __init__(self, config):
        super().__init__(config)
        self._timeout = None


class NoCausalMaskAttention(TorchNativeAttention):
    """Lets every query see the whole sequence (future tokens included)."""

    def _extend(self, q, k_cache, v_cache):
        meta, cfg = self.meta, self.config
        out, start = q.clone(), 0
        for row, (seq, ext) in enumerate(zip(meta.seq_lens_cpu, meta.extend_lens_cpu, strict=True)):
            keys = self._gather(k_cache, row, seq).transpose(0, 1)
            values = self._gather(v_cache, row, seq).transpose(0, 1)
            res = F.scaled_dot_product_attention(
                q[start : start + ext].transpose(0, 1),
                keys,
                values,
                scale=cfg.softmax_scale,
                enable_gqa=True,
            )
            out[start : start + ext] = res.transpose(0, 1)
            start += ext
        return out


class ForgetsToStoreAttention(TorchNativeAttention):
    """Attends correctly over the new tokens but never writes them to the cache."""

    def forward(self, q, k, v, k_cache, v_cache):
        k_copy, v_copy = k_cache.clone(), v_cache.clone()
        store_kv(k, v, k_copy, v_copy, self.meta.cache_slots)
        return (
            self._decode(q, k_copy, v_copy)
            if self.meta.is_decode
            else self._extend(q, k_copy, v_copy)
        )


class Float32OutputAttention(TorchNativeAttention):
    """Computes in float32 and forgets to cast back to the query's dtype."""

    def forward(self, q, k, v, k_cache, v_cache):
        return super().forward(q, k, v, k_cache, v_cache).float()
