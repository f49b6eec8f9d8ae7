"""A byte-level tokenizer and a ZMQ engine that speak pdcore's real protocols.

``ByteTokenizer``: ids 0..255 are UTF-8 bytes, then BOS/EOS specials, so a
multi-byte character spans several tokens and any stop string of two or more
characters spans token boundaries. ``FakeEngine``: a thread (or, through
``run_fake_engine``, a spawned process) that connects like the real engine and
"generates" a deterministic script, honouring max_new_tokens, eos, stop token
ids, aborts, stats and cache flushes.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import zmq

from pdcore.engine.io_struct import (
    AbortReq,
    EngineError,
    EngineStats,
    FlushCacheReq,
    GenerateReq,
    StatsReq,
    TokenOut,
    decode_to_engine,
    encode,
)

BOS, EOS = 256, 257
VOCAB = 260
DEFAULT_SCRIPT = "Hello world! Ünïcødé 你好. "
PAGE_SIZE, TOTAL_PAGES = 16, 64


class ByteDetokenizer:
    """Holds back an incomplete UTF-8 tail, like the real IncrementalDetokenizer."""

    def __init__(self, specials: dict[int, str], skip_special_tokens: bool = True):
        self.pending = b""
        self.specials = specials
        self.skip = skip_special_tokens

    def step(self, ids) -> str:
        out = []
        for t in ids:
            if t in self.specials:
                if not self.skip:
                    out.append(self._drain(final=True) + self.specials[t])
            elif t < 256:
                self.pending += bytes([t])
        out.append(self._drain(final=False))
        return "".join(out)

    def flush(self) -> str:
        return self._drain(final=True)

    def _drain(self, final: bool) -> str:
        """Decode all but an incomplete trailing character (everything when final)."""
        for keep in () if final else range(min(3, len(self.pending)) + 1):
            cut = len(self.pending) - keep
            try:
                text = self.pending[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.pending = self.pending[cut:]
            return text
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return text


class ByteTokenizer:
    """Bytes as ids plus BOS/EOS; a smaller ``vocab_size`` (with specials below 128)
    fits a real model whose vocabulary is ASCII-sized."""

    def __init__(self, vocab_size: int = VOCAB, bos: int = BOS, eos: int = EOS):
        self.vocab_size = vocab_size
        self.bos = bos
        self.eos_token_ids = [eos]
        self.specials = {bos: "<s>", eos: "</s>"}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([self.bos] if add_special_tokens else []) + list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        detok = self.detokenizer((), skip_special_tokens)
        return detok.step(list(ids)) + detok.flush()

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        if messages[0]["role"] == "assistant":
            raise ValueError("Conversation must start with a user or system message")
        text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")

    def detokenizer(self, prompt_ids=(), skip_special_tokens: bool = True) -> ByteDetokenizer:
        return ByteDetokenizer(self.specials, skip_special_tokens)


def default_script(input_ids: list[int]) -> list[int]:
    """The prompt picks the reply: "EOS" in it -> a short answer ending in EOS."""
    prompt = bytes(t for t in input_ids if t < 256).decode("utf-8", errors="replace")
    if "EOS" in prompt:
        return [*b"short answer", EOS]
    return list(DEFAULT_SCRIPT.encode("utf-8"))


class FakeEngine:
    """Deterministic engine on a thread: one token per running request per step."""

    def __init__(self, in_addr: str, out_addr: str, step_s: float = 0.002, script=default_script):
        self.in_addr, self.out_addr = in_addr, out_addr
        self.step_s = step_s
        self.script = script
        self.received: list = []
        self.running: dict[str, dict] = {}
        self.seen_prompts: set[tuple[int, ...]] = set()
        self.paused = False  # accept requests, generate nothing
        self.reject = None  # GenerateReq -> error message or None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="fake-engine", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> FakeEngine:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop (also how a test simulates a crash: the thread just ends)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def aborted(self) -> list[str]:
        return [m.rid for m in self.received if isinstance(m, AbortReq)]

    def generate_reqs(self) -> list[GenerateReq]:
        return [m for m in self.received if isinstance(m, GenerateReq)]

    def run(self) -> None:
        ctx = zmq.Context()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        for sock in (pull, push):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 5)  # the front end binds after we connect
        pull.connect(self.in_addr)
        push.connect(self.out_addr)
        try:
            while not self._stop.is_set():
                if pull.poll(int(self.step_s * 1000) or 1):
                    while True:
                        try:
                            data = pull.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(decode_to_engine(data), push)
                outs = [] if self.paused else self._step()
                if outs:
                    push.send(encode(outs))
        finally:
            pull.close()
            push.close()
            ctx.term()

    def _handle(self, msg, push) -> None:
        self.received.append(msg)
        if isinstance(msg, GenerateReq):
            problem = self.reject(msg) if self.reject else None
            if problem:
                push.send(encode([EngineError(msg.rid, problem, 400)]))
                return
            key = tuple(msg.input_ids)
            cached = (len(key) - 1) // PAGE_SIZE * PAGE_SIZE if key in self.seen_prompts else 0
            self.seen_prompts.add(key)
            self.running[msg.rid] = {"req": msg, "n": 0, "cached": cached}
        elif isinstance(msg, AbortReq):
            if self.running.pop(msg.rid, None) is not None:
                reason = {"type": "abort", "matched": None, "message": "aborted by the client"}
                push.send(encode([TokenOut(msg.rid, [], finish_reason=reason)]))
        elif isinstance(msg, StatsReq):
            push.send(encode([self.stats(msg.token)]))
        elif isinstance(msg, FlushCacheReq):
            flushed = not self.running
            if flushed:
                self.seen_prompts.clear()
            push.send(encode([self.stats(0, flushed)]))

    def stats(self, token: int, flushed: bool = False) -> EngineStats:
        used = sum(1 + len(r["req"].input_ids) // PAGE_SIZE for r in self.running.values())
        cached = len(self.seen_prompts)
        return EngineStats(
            token=token,
            num_running=len(self.running),
            num_waiting=0,
            total_pages=TOTAL_PAGES,
            free_pages=TOTAL_PAGES - used - cached,
            used_pages=used,
            cached_pages=cached,
            page_size=PAGE_SIZE,
            flushed=flushed,
        )

    def _step(self) -> list[TokenOut]:
        outs = []
        for rid, r in list(self.running.items()):
            req, sampling = r["req"], r["req"].sampling
            ids: list[int] = []
            reason = None
            if r["n"] < sampling["max_new_tokens"]:
                script = self.script(req.input_ids)
                tok = script[r["n"] % len(script)]
                r["n"] += 1
                ids = [tok]
                if tok == EOS and not sampling["ignore_eos"]:
                    reason = {"type": "stop", "matched": tok, "message": ""}
                elif tok in sampling["stop_token_ids"]:
                    reason = {"type": "stop", "matched": tok, "message": ""}
            if reason is None and r["n"] >= sampling["max_new_tokens"]:
                reason = {"type": "length", "matched": None, "message": ""}
            out = TokenOut(
                rid,
                ids,
                finish_reason=reason,
                prompt_tokens=len(req.input_ids),
                cached_tokens=r["cached"],
                completion_tokens=r["n"],
            )
            if req.return_logprob and ids:
                out.logprobs = [-0.5]
                out.top_logprobs = [
                    [[float((ids[0] + k) % 256), -0.5 - k] for k in range(req.top_logprobs_num)]
                ]
            outs.append(out)
            if reason is not None:
                del self.running[rid]
        return outs


def run_fake_engine(server_args_dict, in_addr, out_addr, ready_conn) -> None:
    """``run_engine``'s signature, for ``serve(engine_target=...)`` in a spawned process."""
    engine = FakeEngine(in_addr, out_addr)
    signal.signal(signal.SIGTERM, lambda *_: engine._stop.set())
    signal.signal(signal.SIGINT, lambda *_: engine._stop.set())
    engine.start()
    ready_conn.send(("ready", {"context_length": 256, "vocab_size": VOCAB, "pid": os.getpid()}))
    ready_conn.close()
    while engine.alive:
        time.sleep(0.05)


def run_failing_engine(server_args_dict, in_addr, out_addr, ready_conn) -> None:
    ready_conn.send(("error", "ModelLoadError: model.safetensors is missing tensor 'lm_head'"))
    ready_conn.close()
    raise SystemExit(1)
