"""The front end's request side: tokenize, check limits, submit, route outputs back.

One ``TokenizerManager`` per server. ``submit`` validates a whole group (batch
and/or ``n`` choices) against the model limits before anything is sent, then
pushes one ``GenerateReq`` per choice. Engine outputs arrive through the
``EngineClient`` and are applied to each request's ``RequestState``
(detokenizing and matching stop strings; a stop string aborts the engine-side
request at once). An engine that dies fails every pending request with 503.
Under DP attention each request goes to one DP leader (``_dp_rank``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable

import msgspec

from pdcore.config import ServerArgs
from pdcore.disaggregation.fake import reserved_host_error
from pdcore.engine import io_struct
from pdcore.engine.io_struct import AbortReq, EngineError, EngineStats, GenerateReq, TokenOut
from pdcore.sampling_params import MAX_TOP_LOGPROBS
from pdcore.server.engine_client import EngineClient
from pdcore.server.errors import RequestError
from pdcore.server.metrics import ServerMetrics
from pdcore.server.no_tokenizer import NoTokenizer, needs_tokenizer
from pdcore.server.request_group import RequestGroup
from pdcore.server.request_state import GenerateInput, RequestState

logger = logging.getLogger(__name__)


class TokenizerManager:
    """Tokenizer + request router of one server (see module docstring).

    ``tokenizer``: a ``pdcore.model.tokenizer.Tokenizer`` or anything with its
    ``encode``/``decode``/``apply_chat_template``/``detokenizer``/``vocab_size``.
    ``in_addr``/``out_addr``: the ZMQ addresses this side binds (PUSH/PULL); the
    engine connects to both (DP attention: one ``in_addr`` per DP leader).
    ``engine_alive``: returns False once the engine process is gone (launch
    passes ``process.is_alive``).
    """

    def __init__(
        self,
        tokenizer,
        in_addr: str | list[str],
        out_addr: str,
        *,
        context_length: int,
        server_args: ServerArgs | None = None,
        engine_alive: Callable[[], bool] | None = None,
        health_poll_s: float = 0.5,
        request_timeout_s: float = 10.0,
    ):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.server_args = server_args or ServerArgs()
        self.vocab_size = int(tokenizer.vocab_size)
        self.model_path = self.server_args.model_path or "default"
        # SGLang's default: the model path as given (so routers list the same name)
        self.served_model_name = self.server_args.served_model_name or self.model_path
        self.metrics = ServerMetrics(self.served_model_name)
        self.engine = EngineClient(
            in_addr,
            out_addr,
            on_output=self._on_output,
            on_dead=self._fail_all,
            engine_alive=engine_alive,
            health_poll_s=health_poll_s,
            timeout_s=request_timeout_s,
        )
        self.dp_size = self.engine.num_leaders
        self._round_robin = itertools.count()
        self._states: dict[str, RequestState] = {}
        self._flush_lock = asyncio.Lock()
        self._token_text: dict[int, str] = {}

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        error = RequestError("server is shutting down", 503)
        await self.engine.stop(error)
        self._fail_all(error)

    @property
    def healthy(self) -> bool:
        return self.engine.dead_reason is None and self.engine.running

    @property
    def dead_reason(self) -> str | None:
        return self.engine.dead_reason

    @property
    def has_tokenizer(self) -> bool:
        """False under ``--skip-tokenizer-init``: ids in, ids out."""
        return not isinstance(self.tokenizer, NoTokenizer)

    def require_tokenizer(self, what: str) -> None:
        """400 naming ``--skip-tokenizer-init`` when ``what`` needs text and there is none."""
        if not self.has_tokenizer:
            raise needs_tokenizer(what)

    # ---- inputs -------------------------------------------------------------------

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``text``'s ids, possibly none (``/tokenize``); ``encode`` for a prompt."""
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        except (UnicodeError, ValueError, TypeError) as e:  # e.g. a lone surrogate "\ud800"
            raise RequestError(f"cannot tokenize the prompt: {e}") from None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not text:
            raise RequestError("the prompt is empty")
        ids = self.tokenize(text, add_special_tokens)
        if not ids:
            raise RequestError("the prompt encodes to no tokens")
        return ids

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """Render the chat template and tokenize it (the template adds BOS itself)."""
        try:
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except Exception as e:  # jinja templates raise anything (e.g. role order)
            raise RequestError(f"cannot apply the chat template: {e}") from None
        return self.encode(prompt, add_special_tokens=False)

    def check_ids(self, ids: list[int], what: str = "input_ids") -> list[int]:
        if not ids:
            raise RequestError(f"{what} is empty")
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise RequestError(
                f"{what} contains token id {bad}, outside the vocabulary [0, {self.vocab_size})"
            )
        return ids

    def token_text(self, token_id: int) -> str:
        """One token's text, special tokens included (logprob entries); cached."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_text[token_id] = text
        return text

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- generation ---------------------------------------------------------------

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def submit(self, inputs: list[GenerateInput]) -> RequestGroup:
        """Check every input, then send them all; nothing is sent if one is invalid."""
        self.engine.require()
        rids = [inp.rid for inp in inputs]
        if len(set(rids)) != len(rids) or any(r in self._states for r in rids):
            raise RequestError("duplicate request id (rid)")
        payloads = [(self._payload(inp), self._dp_rank(inp)) for inp in inputs]
        notify = asyncio.Event()
        states = []
        for inp, (payload, dp_rank) in zip(inputs, payloads, strict=True):
            detok = self.tokenizer.detokenizer(inp.input_ids, inp.params.skip_special_tokens)
            state = RequestState(inp, detok, notify)
            self._states[inp.rid] = state
            states.append(state)
            self.engine.send_bytes(payload, dp_rank)
        return RequestGroup(states, notify, self.abort_one)

    def abort_one(self, rid: str, message: str = "aborted") -> bool:
        state = self._states.pop(rid, None)
        if state is None:
            return False
        self.engine.send(AbortReq(rid=rid))
        state.abort(message)
        self.metrics.observe_finish(state)
        return True

    def abort(self, rid: str) -> int:
        """Abort ``rid`` and its ``n>1`` choices (``rid-<i>``); returns how many."""
        matches = [r for r in self._states if r == rid or r.startswith(f"{rid}-")]
        return sum(self.abort_one(r, "aborted by /abort_request") for r in matches)

    def abort_all(self) -> int:
        return sum(self.abort_one(r, "aborted by /abort_request") for r in list(self._states))

    @property
    def rank_stats(self) -> list[EngineStats]:
        """Each DP leader's stats from the last ``get_stats`` round."""
        return self.engine.rank_stats

    @property
    def num_pending(self) -> int:
        return len(self._states)

    # ---- engine queries -----------------------------------------------------------

    async def get_stats(self) -> EngineStats:
        """Summed over DP leaders; each leader's in ``rank_stats``."""
        stats = await self.engine.stats()
        self.metrics.observe_engine(stats)
        return stats

    async def flush_cache(self) -> tuple[bool, str]:
        """Flush the prefix cache; refused while requests are running."""
        async with self._flush_lock:
            if self._states:
                return False, f"Cache not flushed: {len(self._states)} requests are running."
            reply = await self.engine.flush()
        if not reply.flushed:
            busy = reply.num_running + reply.num_waiting
            return False, f"Cache not flushed: the engine has {busy} requests running or waiting."
        return True, "Cache flushed."

    # ---- internals ----------------------------------------------------------------

    def _dp_rank(self, inp: GenerateInput) -> int:
        """The DP leader that serves ``inp``: ``bootstrap_room % dp_size`` in PD modes
        (prefill's bootstrap server routes the room's transfer by the same rule),
        else ``data_parallel_rank`` when given, else round robin."""
        pinned = inp.data_parallel_rank
        if pinned is not None and not 0 <= pinned < self.dp_size:
            raise RequestError(
                f"'data_parallel_rank' must be in [0, {self.dp_size}) "
                f"(this server has --dp-size {self.dp_size}), got {pinned}"
            )
        if self.server_args.disaggregation_mode != "null" and inp.bootstrap_room is not None:
            rank = inp.bootstrap_room % self.dp_size
            if pinned is not None and pinned != rank:
                raise RequestError(
                    f"'data_parallel_rank' {pinned} conflicts with 'bootstrap_room': a PD "
                    f"request runs on DP rank bootstrap_room % {self.dp_size} = {rank}"
                )
            return rank
        if pinned is not None:
            return pinned
        return next(self._round_robin) % self.dp_size

    def _payload(self, inp: GenerateInput) -> bytes:
        """Check one input against the model limits and encode its ``GenerateReq``."""
        self.check_ids(inp.input_ids)
        params = inp.params
        try:
            params.validate(self.vocab_size)
        except ValueError as e:
            raise RequestError(str(e)) from None
        prompt_len, ctx = len(inp.input_ids), self.context_length
        if prompt_len >= ctx:
            raise RequestError(
                f"The prompt has {prompt_len} tokens, but the model's context length is "
                f"{ctx} tokens; shorten the prompt."
            )
        if not inp.max_tokens_given:
            params.max_new_tokens = min(params.max_new_tokens, ctx - prompt_len)
            params.min_new_tokens = min(params.min_new_tokens, params.max_new_tokens)
        if prompt_len + params.max_new_tokens > ctx:
            raise RequestError(
                f"Requested {prompt_len + params.max_new_tokens} tokens "
                f"({prompt_len} in the prompt + {params.max_new_tokens} max new tokens), "
                f"but the model's context length is {ctx} tokens; reduce max_tokens "
                f"to at most {ctx - prompt_len}."
            )
        if params.stop and not self.has_tokenizer:
            raise needs_tokenizer("'stop' (stop strings; use 'stop_token_ids')")
        if not 0 <= inp.top_logprobs_num <= MAX_TOP_LOGPROBS:
            raise RequestError(
                f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {inp.top_logprobs_num}"
            )
        start = inp.logprob_start_len
        if start != -1 and not 0 <= start < prompt_len:
            raise RequestError(
                "logprob_start_len must be -1 (the last prompt token only) or a prompt "
                f"position in [0, {prompt_len}) for this {prompt_len}-token prompt, got {start}"
            )
        self._check_bootstrap(inp)
        sampling = params.to_dict()
        sampling["n"] = 1
        req = GenerateReq(
            rid=inp.rid,
            input_ids=inp.input_ids,
            sampling=sampling,
            return_logprob=inp.return_logprob,
            top_logprobs_num=(
                max(inp.top_logprobs_num, inp.prompt_top_logprobs_num) if inp.return_logprob else 0
            ),
            logprob_start_len=start if inp.return_logprob else -1,
            bootstrap_host=inp.bootstrap_host,
            bootstrap_port=inp.bootstrap_port,
            bootstrap_room=inp.bootstrap_room,
            fake_transfer=inp.fake_transfer,
        )
        try:
            return io_struct.encode(req)
        except (OverflowError, msgspec.EncodeError, TypeError) as e:
            raise RequestError(f"a sampling parameter is out of range: {e}") from None

    def _check_bootstrap(self, inp: GenerateInput) -> None:
        """In PD modes both servers must learn the room and prefill's address from the body."""
        if self.server_args.disaggregation_mode == "null":
            return
        for name in ("bootstrap_host", "bootstrap_port", "bootstrap_room"):
            if getattr(inp, name) is None:
                raise RequestError(
                    f"'{name}' is required in --disaggregation-mode "
                    f"{self.server_args.disaggregation_mode} (the router adds it)"
                )
        if inp.params.n != 1:
            raise RequestError("n > 1 is not supported with PD disaggregation")
        if not 0 < inp.bootstrap_room < 2**64:
            raise RequestError(f"'bootstrap_room' must be in [1, 2^64), got {inp.bootstrap_room}")
        if not 0 < inp.bootstrap_port < 65536:
            raise RequestError(f"'bootstrap_port' must be a TCP port, got {inp.bootstrap_port}")
        refused = reserved_host_error(
            inp.bootstrap_host, self.server_args.disaggregation_transfer_backend
        )
        if refused and not inp.fake_transfer:
            raise RequestError(refused)

    def _on_output(self, out, now: float) -> None:
        if isinstance(out, TokenOut):
            self._on_token_out(out, now)
        elif isinstance(out, EngineError):
            state = self._states.pop(out.rid, None)
            if state is None:
                logger.error("engine error for unknown request %r: %s", out.rid, out.message)
                return
            state.fail(RequestError(out.message, out.status))

    def _on_token_out(self, out: TokenOut, now: float) -> None:
        state = self._states.get(out.rid)
        if state is None:
            return  # aborted or stopped here already; the engine drops it too
        previous = state.last_token_time
        stopped = state.apply(out, now)
        self.metrics.observe_tokens(len(out.token_ids), now, state.created, previous)
        if stopped:
            self.engine.send(AbortReq(rid=out.rid))
        if state.finished:
            del self._states[out.rid]
            self.metrics.observe_finish(state)

    def _fail_all(self, error: RequestError) -> None:
        states, self._states = self._states, {}
        for state in states.values():
            state.fail(error)
