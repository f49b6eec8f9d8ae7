"""One short generation through the whole server: the health check and the warm-up.

On a PD server there is no peer to ask, so the probe takes the fake transfer
path (``disaggregation.fake``, as SGLang's warm-up does): prefill still
computes a first token and decode still runs a decode step, alone. It asks for
that path with ``GenerateInput.fake_transfer``, which only this code sets: a
client naming the fake bootstrap host is refused unless the whole server runs
the fake backend.
"""

from __future__ import annotations

import asyncio
import random

from pdcore.disaggregation.fake import FAKE_BOOTSTRAP_HOST
from pdcore.sampling_params import SamplingParams
from pdcore.server.errors import RequestError
from pdcore.server.request_state import GenerateInput

PROBE_TIMEOUT_S = 20.0
PROBE_IDS = [1, 2]  # the prompt without a tokenizer (--skip-tokenizer-init)


async def generate_probe(tm, purpose: str = "health", timeout: float = PROBE_TIMEOUT_S) -> None:
    """Generate a token or two for "Hi"; RequestError (503) if the engine cannot."""
    mode = tm.server_args.disaggregation_mode
    inp = GenerateInput(
        input_ids=tm.encode("Hi") if tm.has_tokenizer else list(PROBE_IDS),
        params=SamplingParams(max_new_tokens=2 if mode == "decode" else 1, temperature=0.0),
        rid=f"{purpose}-{tm.new_id()}",
    )
    if mode != "null":
        inp.fake_transfer = True
        inp.bootstrap_host = FAKE_BOOTSTRAP_HOST  # required in PD modes; never contacted
        inp.bootstrap_port = tm.server_args.disaggregation_bootstrap_port
        inp.bootstrap_room = random.getrandbits(63) or 1
    group = tm.submit([inp])
    try:
        await asyncio.wait_for(group.wait_all(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(f"{purpose}: engine did not generate a token in time", 503) from None
    finally:
        group.abort_unfinished(f"{purpose} over")
    error = group.first_error()
    if error is not None:
        raise RequestError(f"{purpose} generation failed: {error.message}", 503)
