"""SGLang's ``/start_profile`` and ``/stop_profile``: the torch profiler of this
server's engine process, whose trace files carry the server's role.

``POST /start_profile`` takes an optional JSON body, every field optional:
``output_dir`` (created if missing; relative to the profile directory, and after
``..`` and symlinks inside it, else a 400: clients pick a folder, never a place on
the server's disk. The profile directory is ``$PDCORE_TORCH_PROFILER_DIR``, else
``$SGLANG_TORCH_PROFILER_DIR``, else /tmp; it is also the default), ``num_steps``
(stop after this many model steps),
``activities`` (``["CPU"]``, ``["CPU", "GPU"]``; GPU and CUDA are one), ``record_shapes``,
``with_stack`` (both off by default: they slow every operator down),
``profile_by_stage`` (PD servers only: each one already traces a single stage) and
``profile_prefix``. A field we do not know is a 400 naming it, so an SGLang option
pdcore lacks is never silently ignored. ``POST /stop_profile`` writes the trace
and answers with its path in ``files``. Both change the server's state, so GET is
a 405 (a link or an image tag cannot start a trace).
"""

from __future__ import annotations

import os
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

    @router.post("/start_profile")
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
            output_dir=confined(body.output_dir, profiler_dir()),
            num_steps=body.num_steps,
            activities=body.activities,
            record_shapes=bool(body.record_shapes),
            with_stack=bool(body.with_stack),
            prefix=body.profile_prefix or "",
        )
        return _answer(await tm.engine.profile(msg))

    @router.post("/stop_profile")
    async def stop_profile():
        return _answer(await tm.engine.profile(StopProfileReq()))

    return router


def confined(output_dir: str | None, root: str) -> str:
    """``output_dir`` (relative to ``root``, or absolute) as a real path inside ``root``.

    Both are resolved (``..``, symlinks) first, so neither a ``../`` nor a symlink
    placed under ``root`` leads out of it; a path outside is a ``RequestError``.
    """
    real_root = os.path.realpath(root)
    if not output_dir:
        return real_root
    target = os.path.realpath(os.path.join(real_root, output_dir))
    if os.path.commonpath((real_root, target)) != real_root:
        raise RequestError(
            f"output_dir {output_dir!r} is outside the profile directory {real_root} "
            "(set PDCORE_TORCH_PROFILER_DIR or SGLANG_TORCH_PROFILER_DIR on the server "
            "to move it)"
        )
    return target


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
