"""SGLang's ``/start_profile`` and ``/stop_profile``: the torch profiler of this
server's engine process, whose trace files carry the server's role.

``POST /start_profile`` takes an optional JSON body, every field optional:
``output_dir`` (default ``$PDCORE_TORCH_PROFILER_DIR``, ``$SGLANG_TORCH_PROFILER_DIR``
or /tmp; created if missing), ``num_steps`` (stop after this many model steps),
``activities`` (``["CPU"]``, ``["CPU", "GPU"]``; GPU and CUDA are one), ``record_shapes``,
``with_stack`` (both off by default: they slow every operator down),
``profile_by_stage`` (PD servers only: each one already traces a single stage) and
``profile_prefix``. A field we do not know is a 400 naming it, so an SGLang option
pdcore lacks is never silently ignored. ``POST /stop_profile`` writes the trace
and answers with its path in ``files``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from pdcore.engine.io_struct import ProfileReply, StartProfileReq, StopProfileReq
from pdcore.envs import profiler_dir
from pdcore.server.errors import RequestError
from pdcore.server.protocol import Int


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


Activity = Annotated[Literal["CPU", "GPU", "CUDA"], BeforeValidator(_upper)]


class ProfileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: Annotated[str, Field(min_length=1)] | None = None
    num_steps: Annotated[Int, Field(ge=1)] | None = None
    activities: Annotated[list[Activity], Field(min_length=1)] | None = None
    record_shapes: StrictBool | None = None
    with_stack: StrictBool | None = None
    profile_by_stage: StrictBool = False
    profile_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = None


def profile_router(tm) -> APIRouter:
    """The two routes for ``tm`` (a ``TokenizerManager``)."""
    router = APIRouter()

    @router.api_route("/start_profile", methods=["GET", "POST"])
    async def start_profile(body: ProfileRequest | None = None):
        body = body or ProfileRequest()
        mode = tm.server_args.disaggregation_mode
        if body.profile_by_stage and mode == "null":
            raise RequestError(
                "profile_by_stage: this server runs prefill and decode in one engine "
                "(--disaggregation-mode null); profile a PD pair, whose prefill and decode "
                "servers each trace their own stage"
            )
        msg = StartProfileReq(
            output_dir=body.output_dir or profiler_dir(),
            num_steps=body.num_steps,
            activities=body.activities,
            record_shapes=bool(body.record_shapes),
            with_stack=bool(body.with_stack),
            prefix=body.profile_prefix or "",
        )
        return _answer(await tm.engine.profile(msg))

    @router.api_route("/stop_profile", methods=["GET", "POST"])
    async def stop_profile():
        return _answer(await tm.engine.profile(StopProfileReq()))

    return router


def _answer(reply: ProfileReply) -> dict:
    if not reply.success:
        raise RequestError(reply.message, reply.status)
    return {
        "success": True,
        "message": reply.message,
        "role": reply.role,
        "output_dir": reply.output_dir,
        "activities": reply.activities,
        "num_steps": reply.num_steps,
        "steps": reply.steps,
        "files": reply.files,
    }
