"""The records that cross stage boundaries: plan rows, requests, results, combining steps and
batches — frozen, typed, and mapped to and from database rows only inside the ledger.

States and their transitions are written down here, once:

    request   queued ──> submitting ──> submitted ──> succeeded
                 ^  │         │              ├──────> retryable ──> queued (another attempt)
                 │  │         │              └──────> failed       └──> failed (out of attempts)
                 │  │         └──> failed (create_failed: never reached the API) ──> queued
                 │  └──> failed (superseded by a newer plan; not_rebuildable)
    batch     intent ──> submitted ──> ended ──> collected
                 └──> failed (never created) | unknown (outcome unheard) ──> submitted (found) | failed
    step      waiting ──> built (its request claimed) | failed (a part failed for good)

    A request whose batch the user canceled ends failed (canceled_by_user); only
    `--resend-canceled` moves it back to queued.
    A request that reads a document another request caches first starts held:
    held ──> queued (its primer ended) | failed (canceled_by_user, with its primer; superseded)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from longbatch.piece import Piece, PieceKind, StepLinks


class RequestState(StrEnum):
    HELD = "held"  # waits for the request that primes the prompt cache (tasks/priming.py)
    QUEUED = "queued"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    RETRYABLE = "retryable"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


PENDING_REQUEST_STATES = (RequestState.HELD, RequestState.QUEUED, RequestState.SUBMITTING, RequestState.SUBMITTED,
                          RequestState.RETRYABLE)


class BatchState(StrEnum):
    INTENT = "intent"
    SUBMITTED = "submitted"
    ENDED = "ended"
    COLLECTED = "collected"
    FAILED = "failed"
    UNKNOWN = "unknown"


PENDING_BATCH_STATES = (BatchState.INTENT, BatchState.UNKNOWN, BatchState.SUBMITTED, BatchState.ENDED)


class StepState(StrEnum):
    WAITING = "waiting"
    BUILT = "built"
    FAILED = "failed"


# Our own reasons a request failed or was set aside (besides the API's error types).
CREATE_FAILED = "create_failed"  # the create was refused: the request never reached the API
SUPERSEDED = "superseded"  # a newer plan of the same document and prompt replaced it
NOT_REBUILDABLE = "not_rebuildable"  # its document or prompt changed before it could be sent
MISSING_RESULT = "missing_result"  # its batch ended without a line for it
# Its batch was canceled (longbatch never cancels on its own: a person did, with `longbatch
# cancel` or in the Console). Never resent unasked: `--resend-canceled` queues it again.
CANCELED_BY_USER = "canceled_by_user"


class PlanStatus(StrEnum):
    READY = "ready"
    NOT_FIT = "does_not_fit"
    FAILED = "error"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class PlanRow:
    """One line of the plan: a document and prompt, or (under it) one of its parts or steps."""
    doc_id: str
    source: str
    kind: str  # the document's: pdf | text | markdown
    prompt: str
    model: str
    status: PlanStatus
    reason: str | None = None
    pages: int | None = None
    chars: int = 0
    cl100k_tokens: int = 0
    est_input_tokens: int = 0
    upper_input_tokens: int = 0
    granted_max_tokens: int = 0
    betas: tuple[str, ...] = ()  # batch-level beta headers the request needs
    est_input_usd: float = 0.0
    max_cost_usd: float = 0.0  # input estimate plus every granted output token
    custom_id: str | None = None
    batch: int | None = None  # index into Plan.batches
    sha256: str = ""
    exact_input_tokens: int | None = None  # count_tokens' figure, where it decided
    needs_exact: bool = False  # near a limit and not yet counted exactly
    count_key: str = ""
    parts: int | None = None  # a split document: how many parts it is read in
    piece: Piece = field(default_factory=Piece)  # whole on a document's own row
    reduction: str | None = None  # the step a row stands for (the final one on a split document's row)

    @property
    def is_document(self) -> bool:
        """The document's own row (whole, even when read in parts); not one of its parts or steps."""
        return self.piece.kind == PieceKind.WHOLE

    @property
    def part(self) -> str:
        return "" if self.is_document else self.piece.label

    @property
    def covers(self) -> str:
        return self.piece.covers + (" (cut at whitespace)" if self.piece.span and self.piece.span.hard_cut else "")

    def csv_record(self) -> dict[str, Any]:
        """Flat, as plan.csv and the ledger's plan table keep it."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "piece"}  # flat: no deep copy
        out.update(status=str(self.status), betas=",".join(self.betas), piece=self.piece.kind.value, part=self.part,
                   covers=self.covers)
        return out


@dataclass(frozen=True)
class ChildRef:
    """What a combining step combines: a part's request, or an earlier step."""
    fingerprint: str | None = None
    reduction: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {"reduction": self.reduction} if self.reduction else {"fingerprint": self.fingerprint or ""}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> ChildRef:
        return cls(d.get("fingerprint"), d.get("reduction"))


@dataclass(frozen=True)
class StepRecipe:
    """A step that combines the reports of consecutive parts (or of earlier steps) into one.
    Its request can only be built once those reports exist, so the plan holds its recipe."""
    key: str  # a hash of the recipe: the same recipe always has the same key
    custom_id: str
    piece: Piece  # merge or final, with what it covers
    doc_id: str
    source: str
    sha256: str
    pages: int | None
    prompt: str
    prompt_sha256: str
    model: str
    children: tuple[ChildRef, ...]
    child_covers: tuple[str, ...]
    leaf_covers: tuple[str, ...]  # what every part of the document covered, for the final report
    max_tokens: int
    extra_betas: tuple[str, ...]
    input_upper: int  # the most its input can be: every child using its whole grant
    final_key: str = ""

    def to_data(self) -> dict[str, Any]:
        """The JSON the ledger keeps (the keys schema 4 wrote)."""
        return {"key": self.key, "custom_id": self.custom_id, "role": self.piece.kind.value,
                "index": self.piece.index, "doc_id": self.doc_id, "source": self.source, "sha256": self.sha256,
                "pages": self.pages, "prompt": self.prompt, "prompt_sha256": self.prompt_sha256, "model": self.model,
                "children": [c.as_dict() for c in self.children], "child_covers": list(self.child_covers),
                "covers": self.piece.covers, "leaf_covers": list(self.leaf_covers), "max_tokens": self.max_tokens,
                "extra_betas": list(self.extra_betas), "input_upper": self.input_upper, "final_key": self.final_key,
                "pdf_mode": self.piece.pdf_mode}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> StepRecipe:
        piece = Piece(PieceKind(d["role"]), d["index"], covers=d["covers"], pdf_mode=d.get("pdf_mode", "text"),
                      reduction=d["key"])
        return cls(d["key"], d["custom_id"], piece, d["doc_id"], d["source"], d["sha256"], d["pages"], d["prompt"],
                   d["prompt_sha256"], d["model"], tuple(ChildRef.from_dict(c) for c in d["children"]),
                   tuple(d["child_covers"]), tuple(d["leaf_covers"]), d["max_tokens"], tuple(d["extra_betas"]),
                   d["input_upper"], d.get("final_key", ""))


@dataclass(frozen=True)
class NewRequest:
    """What claiming a request records: the work, not yet its state."""
    fingerprint: str
    custom_id: str
    doc_id: str
    source: str
    sha256: str
    prompt: str
    model: str
    max_tokens: int
    betas: tuple[str, ...]
    piece: Piece = field(default_factory=Piece)
    links: StepLinks | None = None


@dataclass(frozen=True)
class Claim:
    """One request to claim: the work, the request priming its document's cache (it is held
    until then) and its worst-case cost."""
    request: NewRequest
    primer: str | None = None
    max_cost_usd: float | None = None


@dataclass(frozen=True)
class RequestRecord(NewRequest):
    """A request as the ledger holds it: the work and where it stands."""
    state: RequestState = RequestState.QUEUED
    attempts: int = 0
    batch_id: str | None = None  # the ledger's id of the batch holding the current attempt
    error_type: str | None = None
    error_message: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    primer: str | None = None  # the request priming the cache for this one (it was held until then)


@dataclass(frozen=True)
class ResultRecord:
    """One result line of one batch, as recorded."""
    batch_id: str  # the API's batch id
    custom_id: str
    fingerprint: str
    attempt: int
    result_type: str  # succeeded | errored | canceled | expired
    stop_reason: str | None = None
    truncated: bool | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    error_type: str | None = None
    error_message: str | None = None
    message_id: str | None = None
    report_path: str | None = None
    received_at: float = 0.0


@dataclass(frozen=True)
class ResultWrite:
    """A result to record and the state its request moves to, with the request's error."""
    result: ResultRecord
    request_state: RequestState
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class UsageRecord:
    """A result with the model, document and prompt it was for (`longbatch usage`), and the run
    that sent it (None for results older than schema 6)."""
    result: ResultRecord
    model: str
    source: str
    prompt: str
    run_id: str | None = None
    run_started_at: float | None = None
    max_tokens: int = 0  # the request's grant, to learn what share of it a model and prompt use


@dataclass(frozen=True)
class StepRecord:
    """A combining step as the ledger holds it."""
    recipe: StepRecipe
    state: StepState
    fingerprint: str | None = None  # its request, once built
    error: str | None = None

    @property
    def key(self) -> str:
        return self.recipe.key


@dataclass(frozen=True)
class PlanRecord:
    """A document row of the latest plan, with the request(s) it stands for."""
    row: PlanRow
    fingerprint: str | None  # the whole document's request (None when split, failed or not fitting)
    part_fingerprints: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchRecord:
    id: str
    api_id: str | None
    state: BatchState
    betas: tuple[str, ...]
    request_count: int
    intent_at: float
    created_at: float | None
    ended_at: float | None = None
    adopted: bool = False


def dump_json(value: Any) -> str:
    return json.dumps(value, default=str)
