"""A null-mode server's engine run in the test process: the greedy reference of PD
tests without one more server process to start on CI."""

from __future__ import annotations

import dataclasses
import threading

from e2e.pd_helpers import CHUNK, gen_body

from pdcore.config import ServerArgs
from pdcore.engine.io_struct import GenerateReq, TokenOut


class NullEngine:
    """A null-mode server's engine with the PD servers' flags, driven in process."""

    def __init__(self, model_path: str):
        from pdcore.engine.engine_process import _build_engine

        args = ServerArgs(
            model_path=model_path, chunked_prefill_size=CHUNK, max_total_tokens=4096, page_size=16
        )
        self.engine = _build_engine(dataclasses.asdict(args), None)
        self.lock = threading.Lock()

    def generate(self, prompt: list[int], logprob_start_len: int = -1) -> dict:
        """``/generate``'s JSON for ``gen_body(prompt)`` (the parts the tests read)."""
        sampling = gen_body(prompt)["sampling_params"]
        tokens, logprobs, top, inputs = [], [], [], []
        with self.lock:
            req = GenerateReq("ref", prompt, sampling, True, 2, logprob_start_len=logprob_start_len)
            self.engine.add_request(req)
            while self.engine.has_work():
                for out in self.engine.step():
                    assert isinstance(out, TokenOut), out
                    tokens += out.token_ids
                    logprobs += out.logprobs
                    inputs += out.input_logprobs
                    top += [[[lp, int(t), None] for t, lp in step] for step in out.top_logprobs]
        pairs = zip(logprobs, tokens, strict=True)
        return {
            "output_ids": tokens,
            "meta_info": {
                "output_token_logprobs": [[lp, t, None] for lp, t in pairs],
                "output_top_logprobs": top,
                "input_token_logprobs": [
                    [lp, t, None] for lp, t in zip(inputs, prompt[-len(inputs) :], strict=True)
                ],
            },
        }
