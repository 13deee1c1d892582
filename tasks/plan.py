"""Stage 3 — the plan: every document and prompt, with its numbers, fit, grant, cost and batch.

Pure: `make_plan` takes what ingest produced and decides everything that would be sent,
so `longbatch plan` and `longbatch run` show and submit exactly the same thing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from longbatch.catalog import ModelSpec, batch_cost_usd
from longbatch.tokens import bound_from_exact, cl100k_count, estimate_from_cl100k
from tasks.build import PlannedRequest, build_request, count_key, render_user_message
from tasks.fit import check_fit, needs_exact_count
from tasks.ingest import Document, IngestFailure
from tasks.packing import MAX_BODY_BYTES, BatchPlan, pack
from tasks.prompts import SYSTEM_PROMPT, Prompt

READY = "ready"
NOT_FIT = "does_not_fit"
FAILED = "error"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class PlanRow:
    doc_id: str
    source: str
    kind: str
    prompt: str
    model: str
    status: str  # ready | does_not_fit | error | duplicate
    reason: str | None = None
    pages: int | None = None
    chars: int = 0
    cl100k_tokens: int = 0
    est_input_tokens: int = 0
    upper_input_tokens: int = 0
    granted_max_tokens: int = 0
    betas: str = ""
    est_input_usd: float = 0.0
    max_cost_usd: float = 0.0  # input estimate plus every granted output token
    custom_id: str | None = None
    batch: int | None = None  # index into Plan.batches
    sha256: str = ""
    exact_input_tokens: int | None = None  # count_tokens' figure, where it decided
    needs_exact: bool = False  # near a limit and not yet counted exactly
    count_key: str = ""


@dataclass(frozen=True)
class Plan:
    model: str
    rows: tuple[PlanRow, ...]
    batches: tuple[BatchPlan, ...]

    @property
    def requests(self) -> list[PlannedRequest]:
        return [r for b in self.batches for r in b.requests]

    @property
    def est_input_usd(self) -> float:
        return sum(r.est_input_usd for r in self.rows)

    @property
    def max_cost_usd(self) -> float:
        return sum(r.max_cost_usd for r in self.rows)


def make_plan(
    items: list[Document | IngestFailure],
    prompts: list[Prompt],
    model: ModelSpec,
    requested_output: int | None,
    min_output: int,
    exact_counts: Mapping[str, int] | None = None,
    extra_betas: tuple[str, ...] = (),
) -> Plan:
    """`exact_counts` (count_key -> count_tokens' input tokens) replace the local estimate
    for the documents they cover; `extra_betas` go on every batch (see normalize_betas)."""
    rows: list[PlanRow] = []
    ready: list[tuple[int, PlannedRequest]] = []
    first_by_sha: dict[str, str] = {}
    for item in items:
        for prompt in prompts:
            if isinstance(item, IngestFailure):
                rows.append(PlanRow(item.doc_id, item.source, "", prompt.name, model.id, FAILED,
                                    f"{item.category}: {item.reason}", sha256=item.sha256))
                continue
            original = first_by_sha.setdefault(item.sha256, item.source)
            if original != item.source:
                rows.append(PlanRow(item.doc_id, item.source, item.kind, prompt.name, model.id, DUPLICATE,
                                    f"same content as {original!r}, which is processed once",
                                    item.page_count, item.chars, sha256=item.sha256))
                continue
            row, request = _plan_one(item, prompt, model, requested_output, min_output, exact_counts or {},
                                     extra_betas)
            rows.append(row)
            if request is not None:
                ready.append((len(rows) - 1, request))

    batches = pack([req for _, req in ready])
    batch_of = {req.custom_id: i for i, b in enumerate(batches) for req in b.requests}
    for index, req in ready:
        rows[index] = dataclasses.replace(rows[index], batch=batch_of[req.custom_id])
    return Plan(model.id, tuple(rows), tuple(batches))


def _plan_one(
    doc: Document, prompt: Prompt, model: ModelSpec, requested_output: int | None, min_output: int,
    exact_counts: Mapping[str, int], extra_betas: tuple[str, ...],
) -> tuple[PlanRow, PlannedRequest | None]:
    # The document body was counted once at ingest; count only what wraps it here.
    wrapper = render_user_message(dataclasses.replace(doc, body=""), prompt, model.max_batch_output)
    cl100k = doc.body_cl100k + cl100k_count(SYSTEM_PROMPT) + cl100k_count(wrapper)
    est = estimate_from_cl100k(cl100k, model.tokenizer)
    key = count_key(model.id, doc, prompt)
    exact = exact_counts.get(key)
    upper = est.upper if exact is None else bound_from_exact(exact)
    needs = exact is None and needs_exact_count(est.lower, est.upper, model, requested_output, min_output)
    fit = check_fit(upper, model, requested_output, min_output)
    expected = est.estimate if exact is None else exact
    base = PlanRow(
        doc.doc_id, doc.source, doc.kind, prompt.name, model.id, READY, None, doc.page_count, doc.chars,
        cl100k, expected, upper, sha256=doc.sha256, exact_input_tokens=exact, needs_exact=needs, count_key=key,
        est_input_usd=round(batch_cost_usd(model, expected, 0), 6),
    )
    if not fit.fits:
        reason = fit.reason + (" — by the local estimate; an exact count (count_tokens) may still let it fit"
                               if needs else "")
        return dataclasses.replace(base, status=NOT_FIT, reason=reason), None
    request = build_request(doc, prompt, model, fit.granted, extra_betas)
    if request.body_bytes > MAX_BODY_BYTES:
        reason = f"the request body would be {request.body_bytes:,} bytes, over the batch limit"
        return dataclasses.replace(base, status=NOT_FIT, reason=reason), None
    row = dataclasses.replace(
        base,
        granted_max_tokens=fit.granted,
        betas=",".join(request.betas),
        max_cost_usd=round(batch_cost_usd(model, expected, fit.granted), 6),
        custom_id=request.custom_id,
    )
    return row, request


def rebuild_request(row: dict, inbox: Path, data_dir: Path) -> PlannedRequest | str:
    """Rebuild the request a ledger row stands for, from the document and prompt it was made
    from; or say why it cannot be rebuilt identically (checked by its fingerprint)."""
    from longbatch.catalog import get_model
    from longbatch.errors import LongbatchError
    from tasks.ingest import read_document
    from tasks.prompts import load_prompt

    path = inbox / row["source"]
    if not path.is_file():
        return f"{row['source']} is no longer in the inbox ({inbox})"
    doc = read_document(path, inbox)
    if isinstance(doc, IngestFailure) or doc.sha256 != row["sha256"]:
        return f"{row['source']} changed since it was planned; `longbatch run` plans the new version"
    try:
        request = build_request(doc, load_prompt(row["prompt"], data_dir), get_model(row["model"]), row["max_tokens"],
                                tuple(b for b in row["betas"].split(",") if b))
    except LongbatchError as exc:
        return f"cannot rebuild the request: {exc}"
    if request.fingerprint != row["fingerprint"]:
        return f"the prompt {row['prompt']!r} changed since it was planned; `longbatch run` plans the new version"
    return request
