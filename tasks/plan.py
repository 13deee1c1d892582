"""Stage 3 — the plan: every document and prompt, with its numbers, fit, grant, cost and batch.

Pure: `make_plan` takes what ingest produced and decides everything that would be sent,
so `longbatch plan` and `longbatch run` show and submit exactly the same thing. A document
too long for one request is read in parts (`tasks/split_plan.py`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from longbatch.cache import write_premium_usd
from longbatch.catalog import ModelSpec, batch_cost_usd, normalize_betas
from longbatch.errors import CannotSplit, PdfChangedError
from longbatch.records import PlanRow, PlanStatus, StepRecipe
from longbatch.settings import Settings
from longbatch.tokens import (MAX_OVERCOUNT, TokenEstimate, bound_from_exact, cl100k_count, cl100k_count_paragraphs,
                             estimate_from_cl100k)
from tasks.build import (PlannedRequest, build_native_request, build_request, count_key, render_native_instructions,
                         render_user_message)
from tasks.fit import OutputBudget
from tasks.ingest import Document, IngestFailure
from tasks.native import NATIVE_MAX_BYTES, page_costs, page_limit
from tasks.packing import MAX_BODY_BYTES, BatchPlan, pack
from tasks.policy import PlanPolicy, shares_prefixes
from tasks.priming import choose_primers, unprimed_without_breakpoints
from tasks.prompts import SYSTEM_PROMPT, Prompt
from tasks.split_plan import plan_split

READY, NOT_FIT, FAILED, DUPLICATE = PlanStatus.READY, PlanStatus.NOT_FIT, PlanStatus.FAILED, PlanStatus.DUPLICATE


@dataclass(frozen=True)
class Plan:
    model: str
    rows: tuple[PlanRow, ...]  # per document and prompt; a split document's parts and steps follow its row
    batches: tuple[BatchPlan, ...]
    reductions: tuple[StepRecipe, ...] = field(default=())
    # (fingerprint, its primer's): requests held until another caches their document (tasks/priming.py)
    primers: tuple[tuple[str, str], ...] = field(default=())

    @property
    def requests(self) -> list[PlannedRequest]:
        return [r for b in self.batches for r in b.requests]

    @property
    def document_rows(self) -> list[PlanRow]:
        return [r for r in self.rows if r.is_document]

    @property
    def est_input_usd(self) -> float:
        return sum(r.est_input_usd for r in self.document_rows if r.status == READY)  # only what is sent

    @property
    def max_cost_usd(self) -> float:
        return sum(r.max_cost_usd for r in self.document_rows)


def plan_for(items: Iterable[Document | IngestFailure], prompts: list[Prompt], model: ModelSpec, settings: Settings,
             exact_counts: Mapping[str, int] | None = None) -> Plan:
    """The plan these settings make of these documents."""
    return planner_for(prompts, model, settings, exact_counts).add(items).plan()


def planner_for(prompts: list[Prompt], model: ModelSpec, settings: Settings,
                exact_counts: Mapping[str, int] | None = None, keep_text_bytes: int | None = None) -> Planner:
    """A planner with these settings, for documents that arrive a few at a time (see Planner)."""
    return Planner(prompts, model, settings.max_output_tokens, settings.min_output_tokens, exact_counts,
                   normalize_betas(settings.betas)[0], settings.pdf_mode, settings.cache, keep_text_bytes)


def make_plan(
    items: Iterable[Document | IngestFailure],
    prompts: list[Prompt],
    model: ModelSpec,
    requested_output: int | None,
    min_output: int,
    exact_counts: Mapping[str, int] | None = None,
    extra_betas: tuple[str, ...] = (),
    pdf_mode: str = "text",
    cache: str = "auto",
) -> Plan:
    """`exact_counts` (count_key -> count_tokens' input tokens) replace the local estimate
    for the documents they cover; `extra_betas` go on every batch (see normalize_betas);
    `pdf_mode` "native" sends PDFs as document blocks (see tasks/native.py)."""
    return Planner(prompts, model, requested_output, min_output, exact_counts, extra_betas, pdf_mode,
                   cache).add(items).plan()


class Planner:
    """Plans documents as they are read, one at a time, so a run never holds its whole inbox:
    each document's rows and requests are decided (and its cache primer chosen: only requests
    for the same document share a prefix) when it is added. Requests keep their text up to
    `keep_text_bytes` in all (None: no limit); from the first one past it on they are lean
    (no text: it is rendered again when their batch is written). `plan()` packs the batches."""

    def __init__(self, prompts: list[Prompt], model: ModelSpec, requested_output: int | None, min_output: int,
                 exact_counts: Mapping[str, int] | None = None, extra_betas: tuple[str, ...] = (),
                 pdf_mode: str = "text", cache: str = "auto", keep_text_bytes: int | None = None) -> None:
        self.prompts, self.model, self.cache = prompts, model, cache
        self.text_budget = keep_text_bytes
        self.policy = PlanPolicy(OutputBudget(model, requested_output, min_output), extra_betas,
                                 pdf_mode, exact_counts or {},  # type: ignore[arg-type]
                                 cache_prefixes=shares_prefixes(cache, len(prompts)))
        self.rows: list[PlanRow] = []
        self.ready: list[tuple[int, PlannedRequest]] = []  # (index in rows, request)
        self.reductions: list[StepRecipe] = []
        self.primers: dict[str, str] = {}
        self.first_by_sha: dict[str, str] = {}

    def add(self, items: Iterable[Document | IngestFailure]) -> Planner:
        for item in items:
            ready = self._document(item)
            primers = choose_primers([req for _, req in ready],
                                     {self.rows[i].custom_id: self.rows[i].est_input_tokens for i, _ in ready},
                                     self.model, self.cache)
            self.primers.update(primers)
            self.ready += [(i, self._kept(req)) for i, req in unprimed_without_breakpoints(ready, primers, self.cache)]
        return self

    def _kept(self, request: PlannedRequest) -> PlannedRequest:
        if self.text_budget is None:
            return request
        if request.body_bytes <= self.text_budget:  # a small inbox is never read twice
            self.text_budget -= request.body_bytes
            return request
        self.text_budget = 0  # from here on every request is lean: the order decides, not the size
        return request.lean()

    def plan(self) -> Plan:
        rows = list(self.rows)
        batches = pack([req for _, req in self.ready])
        batch_of = {req.custom_id: i for i, b in enumerate(batches) for req in b.requests}
        for index, req in self.ready:
            rows[index] = dataclasses.replace(rows[index], batch=batch_of[req.custom_id])
        return Plan(self.model.id, tuple(rows), tuple(batches), tuple(self.reductions), tuple(self.primers.items()))

    def _document(self, item: Document | IngestFailure) -> list[tuple[int, PlannedRequest]]:
        """The rows of one document (one per prompt; a split one's parts and steps under it) and
        its requests, with the index of each one's row."""
        model, rows, ready = self.model, self.rows, []
        for prompt in self.prompts:
            if isinstance(item, IngestFailure):
                rows.append(PlanRow(item.doc_id, item.source, "", prompt.name, model.id, FAILED,
                                    f"{item.category}: {item.reason}", sha256=item.sha256))
                continue
            original = self.first_by_sha.setdefault(item.sha256, item.source)
            if original != item.source:
                rows.append(PlanRow(item.doc_id, item.source, item.kind, prompt.name, model.id, DUPLICATE,
                                    f"same content as {original!r}, which is processed once",
                                    item.page_count, item.chars, sha256=item.sha256))
                continue
            try:
                row, request = plan_whole(item, prompt, self.policy)
                if row.status == NOT_FIT and not row.needs_exact:
                    split = plan_split(item, prompt, self.policy, row)
                    ready.extend((len(rows) + i, req) for i, req in enumerate(split.requests, 1))
                    rows.extend(split.rows)  # the document's row, one per part (as requests), then the steps
                    self.reductions.extend(split.steps)
                    continue
            except CannotSplit as exc:
                row, request = dataclasses.replace(row, reason=f"{row.reason}; and it cannot be split: {exc}"), None
            except PdfChangedError as exc:  # native mode reads the file again: it must be the one ingested
                row, request = PlanRow(item.doc_id, item.source, item.kind, prompt.name, model.id, FAILED, str(exc),
                                       item.page_count, item.chars, sha256=item.sha256), None
            rows.append(row)
            if request is not None:
                ready.append((len(rows) - 1, request))
        return ready


def plan_whole(doc: Document, prompt: Prompt, policy: PlanPolicy) -> tuple[PlanRow, PlannedRequest | None]:
    """The whole document in one request — its text, or in native mode the PDF as one
    document block when its pages and bytes allow — if it fits with its output."""
    model = policy.model
    if policy.mode_for(doc) == "native":
        costs = page_costs(doc, model)
        wrap = estimate_from_cl100k(cl100k_count(SYSTEM_PROMPT + render_native_instructions(
            doc, prompt, model.max_batch_output)), model.tokenizer)
        estimate = sum(c.estimate for c in costs) + wrap.estimate
        est = TokenEstimate(doc.body_cl100k, estimate, sum(c.upper for c in costs) + wrap.upper,
                            math.floor(estimate / MAX_OVERCOUNT))
        limit = page_limit(model)
        refusal = (f"{len(doc.pages)} pages: one native PDF request takes at most {limit} pages on {model.id}"
                   if len(doc.pages) > limit else None)
        return _fit_whole(doc, prompt, policy, count_key(model.id, doc, prompt, native=True), est,
                          lambda grant: build_native_request(doc, prompt, model, grant, policy.extra_betas,
                                                             policy.cache_prefixes),
                          NATIVE_MAX_BYTES, refusal)
    # The document body was counted once at ingest; count only what wraps it here.
    wrapper = render_user_message(doc, prompt, model.max_batch_output, body="")
    cl100k = doc.body_cl100k + _system_prompt_cl100k() + cl100k_count_paragraphs(wrapper)
    return _fit_whole(doc, prompt, policy, count_key(model.id, doc, prompt), estimate_from_cl100k(cl100k, model.tokenizer),
                      lambda grant: build_request(doc, prompt, model, grant, policy.extra_betas, policy.cache_prefixes),
                      MAX_BODY_BYTES)


@lru_cache(maxsize=1)
def _system_prompt_cl100k() -> int:
    return cl100k_count(SYSTEM_PROMPT)


def _fit_whole(doc: Document, prompt: Prompt, policy: PlanPolicy, key: str, est: TokenEstimate,
               build: Callable[[int], PlannedRequest], max_bytes: int,
               refusal: str | None = None) -> tuple[PlanRow, PlannedRequest | None]:
    """The fit decision shared by text and native mode. count_tokens' figure is used where it
    was asked (`policy.exact_counts[key]`); `refusal` is a limit already broken."""
    model, budget = policy.model, policy.budget
    exact = policy.exact_counts.get(key)
    upper = est.upper if exact is None else bound_from_exact(exact)
    needs = exact is None and refusal is None and budget.needs_exact_count(est.lower, est.upper)
    expected = est.estimate if exact is None else exact
    base = PlanRow(
        doc.doc_id, doc.source, doc.kind, prompt.name, model.id, READY, None, doc.page_count, doc.chars,
        est.cl100k, expected, upper, sha256=doc.sha256, exact_input_tokens=exact, needs_exact=needs, count_key=key,
        est_input_usd=round(batch_cost_usd(model, expected, 0), 6),
    )
    if refusal:
        return dataclasses.replace(base, status=NOT_FIT, reason=refusal), None
    fit = budget.fit(upper)
    if not fit.fits:
        reason = fit.reason + (" — by the local estimate; an exact count (count_tokens) may still let it fit"
                               if needs else "")
        return dataclasses.replace(base, status=NOT_FIT, reason=reason), None
    request = build(fit.granted)
    if request.body_bytes > max_bytes:  # a size limit, not a token question: no count can change it
        return dataclasses.replace(base, status=NOT_FIT, needs_exact=False, reason=(
            f"the request would be {request.body_bytes / 2**20:.1f} MB; one request may be at most "
            f"{max_bytes / 2**20:.1f} MB")), None
    return dataclasses.replace(
        base, granted_max_tokens=fit.granted, betas=request.betas, custom_id=request.custom_id,
        max_cost_usd=round(batch_cost_usd(model, expected, fit.granted)
                           + (write_premium_usd(model, expected) if request.writes_cache else 0.0), 6),
        piece=request.piece), request
