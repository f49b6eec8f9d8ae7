"""What the TP leader sends its followers per forward: the change, not the whole plan.

A ``StepPlan`` holds every row's page list, which grows with the sequence: at
256 rows of long contexts that is most of the bytes of every step. The pages
of a running request barely change between steps (a decode step adds at most
one), so the leader (``PlanSender``) gives each request a small handle when it
first appears and afterwards sends, per row, only how many of the pages the
followers already hold stay (``keep``) and the pages after them; a finished
request's handle is dropped (``done``). Each follower (``PlanMirror``) keeps its
own copy of every live request's pages and rebuilds the very same plan.

The per-row scalars (prefix and extend lengths, the tokens to feed, which rows
sample) are sent every step: a decode step feeds one new token per row, which
the followers cannot know (only the leader samples).

Every delta carries a sequence number; a follower that sees a gap, an unknown
handle or a page count that does not match the row's length raises
``WireError`` instead of running a forward that differs from the leader's.
"""

from __future__ import annotations

import msgspec

from pdcore.distributed.wire import WireError, broadcast_msg
from pdcore.engine.step_plan import StepPlan


class StepDelta(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """One forward for the followers (``stop``: exit instead)."""

    seq: int
    stop: bool = False
    is_decode: bool = False
    tokens: list[int] = []  # every row's new tokens, concatenated
    prefix_lens: list[int] = []
    extend_lens: list[int] = []
    sample: list[bool] = []
    handles: list[int] = []  # which mirrored request each row is
    keep: list[int] = []  # per row: pages of the mirror that stay
    new_pages: list[list[int]] = []  # per row: pages appended after them
    done: list[int] = []  # handles of requests that left (dropped before the rows apply)
    pd_stage: bool = False
    dp_tokens: list[int] | None = None
    # Prompt logprobs: per row, offsets scored; their target tokens; top-k (``StepPlan``)
    prompt_spans: list[tuple[int, int]] = []
    prompt_targets: list[int] = []
    prompt_top: int = 0


WHAT = "step plan from the TP leader"


def _common_prefix(mirror: list[int], pages: list[int]) -> int:
    n = len(mirror)
    if len(pages) >= n and pages[:n] == mirror:  # the usual case: pages only appended
        return n
    k = 0
    for a, b in zip(mirror, pages, strict=False):
        if a != b:
            break
        k += 1
    return k


class PlanSender:
    """The leader's side: which pages each follower holds per request, and the sequence.

    Only the engine's scheduling thread uses it (one call per forward)."""

    def __init__(self):
        self.seq = 0
        self._next_handle = 0
        # Req -> (handle, the pages the followers hold for it)
        self._sent: dict[object, tuple[int, list[int]]] = {}

    @property
    def tracked(self) -> int:
        """Requests the followers currently mirror."""
        return len(self._sent)

    def delta(self, plan: StepPlan, reqs: list) -> StepDelta:
        """``plan`` (built from ``reqs``, row for row) as a delta against what was sent."""
        done = [h for req, (h, _) in self._sent.items() if req.finished]
        if done:
            self._sent = {r: v for r, v in self._sent.items() if not r.finished}
        handles, keep, new_pages = [], [], []
        for req, pages in zip(reqs, plan.pages, strict=True):
            entry = self._sent.get(req)
            if entry is None:
                entry = self._sent[req] = (self._next_handle, [])
                self._next_handle += 1
            handle, mirror = entry
            k = _common_prefix(mirror, pages)
            fresh = pages[k:]
            del mirror[k:]
            mirror.extend(fresh)
            handles.append(handle)
            keep.append(k)
            new_pages.append(fresh)
        return StepDelta(
            seq=self._advance(),
            is_decode=plan.is_decode,
            tokens=plan.tokens,
            prefix_lens=plan.prefix_lens,
            extend_lens=plan.extend_lens,
            sample=plan.sample,
            handles=handles,
            keep=keep,
            new_pages=new_pages,
            done=done,
            pd_stage=plan.pd_stage,
            dp_tokens=plan.dp_tokens,
            prompt_spans=plan.prompt_spans,
            prompt_targets=plan.prompt_targets,
            prompt_top=plan.prompt_top,
        )

    def stop(self) -> StepDelta:
        return StepDelta(seq=self._advance(), stop=True)

    def _advance(self) -> int:
        self.seq += 1
        return self.seq

    def send(self, delta: StepDelta) -> None:
        broadcast_msg(delta, StepDelta, WHAT)


class PlanMirror:
    """A follower's side: its copy of every live request's pages; rebuilds the plans."""

    def __init__(self, page_size: int):
        self.page_size = page_size
        self.seq = 0
        self.pages: dict[int, list[int]] = {}

    def receive(self) -> StepPlan:
        """The leader's next plan (collective with the leader's ``send``)."""
        return self.apply(broadcast_msg(None, StepDelta, WHAT))

    def apply(self, d: StepDelta) -> StepPlan:
        if d.seq != self.seq + 1:
            raise WireError(
                f"{WHAT}: got step {d.seq} after step {self.seq}; "
                "this rank would diverge from the leader"
            )
        self.seq = d.seq
        if d.stop:
            return StepPlan(stop=True)
        for h in d.done:
            if self.pages.pop(h, None) is None:
                raise WireError(f"{WHAT}: step {d.seq} ends request handle {h}, never seen")
        n = len(d.handles)
        per_row = (d.prefix_lens, d.extend_lens, d.sample, d.keep, d.new_pages)
        if any(len(x) != n for x in per_row) or len(d.tokens) != sum(d.extend_lens):
            raise WireError(f"{WHAT}: step {d.seq} has rows of different lengths")
        if d.prompt_spans and (
            len(d.prompt_spans) != n
            or len(d.prompt_targets) != sum(hi - lo for lo, hi in d.prompt_spans)
        ):
            raise WireError(f"{WHAT}: step {d.seq} scores prompt positions it does not name")
        rows = []
        for h, k, fresh, start, ext in zip(
            d.handles, d.keep, d.new_pages, d.prefix_lens, d.extend_lens, strict=True
        ):
            mirror = self.pages.setdefault(h, [])
            if k > len(mirror) or min(start, ext) < 0:
                raise WireError(
                    f"{WHAT}: step {d.seq} keeps {k} pages of request handle {h}, "
                    f"which has {len(mirror)}"
                )
            del mirror[k:]
            mirror.extend(fresh)
            if len(mirror) != -(-(start + ext) // self.page_size):
                raise WireError(
                    f"{WHAT}: step {d.seq} gives request handle {h} {len(mirror)} pages "
                    f"for {start + ext} tokens"
                )
            rows.append(mirror)
        return StepPlan(
            is_decode=d.is_decode,
            tokens=d.tokens,
            prefix_lens=d.prefix_lens,
            extend_lens=d.extend_lens,
            pages=rows,
            sample=d.sample,
            pd_stage=d.pd_stage,
            dp_tokens=d.dp_tokens,
            prompt_spans=[tuple(span) for span in d.prompt_spans],
            prompt_targets=d.prompt_targets,
            prompt_top=d.prompt_top,
        )
