"""Oversized request bodies sent over a raw socket: a huge ``Content-Length`` with no
body behind it, and a chunked body (no ``Content-Length``) that never ends.

An HTTP client library would send the whole body before reading the answer; these
helpers read the answer while the body is still owed, which is what shows that a
server refuses a body before (or while) it arrives instead of after buffering it.
"""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlparse

CHUNK = 64 * 1024


def _connect(url: str) -> socket.socket:
    parsed = urlparse(url)
    return socket.create_connection((parsed.hostname, parsed.port), timeout=10)


def _head(url: str, path: str, extra: str) -> bytes:
    host = urlparse(url).netloc
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n{extra}\r\n"
    ).encode()


def _read_answer(sock: socket.socket, timeout: float) -> tuple[int, dict]:
    """The status and JSON body of the reply (read until the server closes)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not part:
            break
        data += part
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(body) >= length:
                break
    head, _, body = data.partition(b"\r\n\r\n")
    assert head, "the server sent no answer"
    status = int(head.split(b" ")[1])
    return status, json.loads(body)


def declared_too_large(url: str, path: str, length: int, timeout: float = 5.0) -> tuple:
    """Announce ``length`` bytes, send none: (status, JSON body) of the answer."""
    with _connect(url) as sock:
        sock.sendall(_head(url, path, f"content-length: {length}\r\n"))
        return _read_answer(sock, timeout)


def chunked_without_end(url: str, path: str, most: int, timeout: float = 5.0) -> tuple:
    """Send chunks (at most ``most`` bytes) until an answer comes, never the last
    chunk: (status, JSON body, bytes sent)."""
    sent = 0
    with _connect(url) as sock:
        sock.sendall(_head(url, path, "transfer-encoding: chunked\r\n"))
        data = b"x" * CHUNK
        try:
            while sent < most:
                if select.select([sock], [], [], 0)[0]:
                    break  # the answer is in
                sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
                sent += len(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server hung up after answering
        except TimeoutError:
            pass  # the server stopped reading: its answer (if any) decides
        status, body = _read_answer(sock, timeout)
        return status, body, sent
