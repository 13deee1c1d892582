"""Stage 3 — the plan: every document and prompt, with its numbers, fit, grant, cost and batch.

Pure: `make_plan` takes what ingest produced and decides everything that would be sent,
so `longbatch plan` and `longbatch run` show and submit exactly the same thing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longbatch.catalog import ModelSpec, batch_cost_usd
from longbatch.tokens import (CALIBRATION, ERROR_BAND, EXACT_MARGIN, MAX_OVERCOUNT, TokenEstimate, bound_from_exact,
                             cl100k_count, estimate_from_cl100k)
from tasks.build import (PlannedRequest, build_native_request, build_request, count_key, make_custom_id, make_request,
                         native_content, render_native_instructions, render_part_message, render_reduce_message,
                         render_user_message)
from tasks.fit import WINDOW_MARGIN, check_fit, needs_exact_count
from tasks.ingest import Document, IngestFailure
from tasks.packing import MAX_BODY_BYTES, BatchPlan, pack
from tasks.prompts import SYSTEM_PROMPT, Prompt
from tasks.native import MAX_REQUEST_BYTES, REQUEST_BYTES_MARGIN, PdfChangedError, page_costs, page_limit
from tasks.split import Locator, Part, Unit, balanced_parts, pack_parts, page_spans, part_body, split_units

READY = "ready"
NOT_FIT = "does_not_fit"
FAILED = "error"
DUPLICATE = "duplicate"
PART = "part"  # one part of a split document (a row under the document's own row)
REDUCE = "reduce"  # a step combining part reports: sent once the parts it combines are done

NATIVE_MAX_BYTES = MAX_REQUEST_BYTES - REQUEST_BYTES_MARGIN
# custom_id steps have room for three digits.
MAX_PARTS = 999
# Output per part when one combining step cannot take every part's report (small windows,
# enormous documents): parts are combined in groups first, then the groups' reports.
TREE_PART_OUTPUT = 16_000
# Tags, the part's label and a possible "incomplete" banner around each part report.
REDUCE_TOKENS_PER_CHILD = 200


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
    parts: int | None = None  # a split document: how many parts it is read in
    part: str = ""  # rows of a split document's steps: "2/5", "merge 1", "final"
    covers: str = ""  # what a part or step covers: "pages 101–250"
    reduction: str | None = None  # the ReduceNode a row stands for (the final one on a document row)


@dataclass(frozen=True)
class ReduceNode:
    """A step that combines the reports of consecutive parts (or of earlier steps) into one.
    Its request can only be built once those reports exist, so the plan holds its recipe."""
    key: str  # a hash of everything below: the same recipe always has the same key
    custom_id: str
    role: str  # merge | final
    index: int
    doc_id: str
    source: str
    sha256: str
    pages: int | None
    prompt: str
    prompt_sha256: str
    model: str
    children: tuple[dict[str, str], ...]  # in order: {"fingerprint": part request} | {"reduction": key}
    child_covers: tuple[str, ...]
    covers: str
    leaf_covers: tuple[str, ...]  # what every part of the document covered, for the final report
    max_tokens: int
    extra_betas: tuple[str, ...]
    input_upper: int  # the most its input can be: every child using its whole grant
    final_key: str = ""
    pdf_mode: str = "text"  # how the parts read the document (the steps read part reports)

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Plan:
    model: str
    rows: tuple[PlanRow, ...]  # per document and prompt; a split document's parts and steps follow its row
    batches: tuple[BatchPlan, ...]
    reductions: tuple[ReduceNode, ...] = field(default=())

    @property
    def requests(self) -> list[PlannedRequest]:
        return [r for b in self.batches for r in b.requests]

    @property
    def document_rows(self) -> list[PlanRow]:
        return [r for r in self.rows if not r.part]

    @property
    def est_input_usd(self) -> float:
        return sum(r.est_input_usd for r in self.document_rows if r.status == READY)  # only what is sent

    @property
    def max_cost_usd(self) -> float:
        return sum(r.max_cost_usd for r in self.document_rows)


def make_plan(
    items: list[Document | IngestFailure],
    prompts: list[Prompt],
    model: ModelSpec,
    requested_output: int | None,
    min_output: int,
    exact_counts: Mapping[str, int] | None = None,
    extra_betas: tuple[str, ...] = (),
    pdf_mode: str = "text",
) -> Plan:
    """`exact_counts` (count_key -> count_tokens' input tokens) replace the local estimate
    for the documents they cover; `extra_betas` go on every batch (see normalize_betas);
    `pdf_mode` "native" sends PDFs as document blocks (see tasks/native.py)."""
    rows: list[PlanRow] = []
    ready: list[tuple[int, PlannedRequest]] = []
    reductions: list[ReduceNode] = []
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
            native = pdf_mode == "native" and item.kind == "pdf"
            plan_one = _plan_native_one if native else _plan_one
            try:
                row, request = plan_one(item, prompt, model, requested_output, min_output, exact_counts or {},
                                        extra_betas)
                split = (_plan_split(item, prompt, model, requested_output, min_output, extra_betas, row, native)
                         if row.status == NOT_FIT and not row.needs_exact else None)
            except PdfChangedError as exc:  # native mode reads the file again: it must be the one ingested
                rows.append(PlanRow(item.doc_id, item.source, item.kind, prompt.name, model.id, FAILED, str(exc),
                                    item.page_count, item.chars, sha256=item.sha256))
                continue
            if split is not None:
                if isinstance(split, str):
                    row = dataclasses.replace(row, reason=f"{row.reason}; and it cannot be split: {split}")
                else:
                    split_rows, part_requests, nodes = split
                    # split_rows: the document's row, then one per part (as part_requests), then steps
                    ready.extend((len(rows) + i, req) for i, req in enumerate(part_requests, 1))
                    rows.extend(split_rows)
                    reductions.extend(nodes)
                    continue
            rows.append(row)
            if request is not None:
                ready.append((len(rows) - 1, request))

    batches = pack([req for _, req in ready])
    batch_of = {req.custom_id: i for i, b in enumerate(batches) for req in b.requests}
    for index, req in ready:
        rows[index] = dataclasses.replace(rows[index], batch=batch_of[req.custom_id])
    return Plan(model.id, tuple(rows), tuple(batches), tuple(reductions))


def _plan_one(
    doc: Document, prompt: Prompt, model: ModelSpec, requested_output: int | None, min_output: int,
    exact_counts: Mapping[str, int], extra_betas: tuple[str, ...],
) -> tuple[PlanRow, PlannedRequest | None]:
    """The whole document's text in one request."""
    # The document body was counted once at ingest; count only what wraps it here.
    wrapper = render_user_message(dataclasses.replace(doc, body=""), prompt, model.max_batch_output)
    cl100k = doc.body_cl100k + cl100k_count(SYSTEM_PROMPT) + cl100k_count(wrapper)
    est = estimate_from_cl100k(cl100k, model.tokenizer)
    key = count_key(model.id, doc, prompt)
    return _plan_whole(doc, prompt, model, requested_output, min_output, exact_counts.get(key), key, est,
                       lambda grant: build_request(doc, prompt, model, grant, extra_betas), MAX_BODY_BYTES)


def _plan_native_one(
    doc: Document, prompt: Prompt, model: ModelSpec, requested_output: int | None, min_output: int,
    exact_counts: Mapping[str, int], extra_betas: tuple[str, ...],
) -> tuple[PlanRow, PlannedRequest | None]:
    """The whole PDF as one document block, when its pages, bytes and tokens allow."""
    costs = page_costs(doc, model)
    wrap = estimate_from_cl100k(cl100k_count(SYSTEM_PROMPT + render_native_instructions(
        doc, prompt, model.max_batch_output)), model.tokenizer)
    estimate = sum(c.estimate for c in costs) + wrap.estimate
    est = TokenEstimate(doc.body_cl100k, estimate, sum(c.upper for c in costs) + wrap.upper,
                        math.floor(estimate / MAX_OVERCOUNT))
    limit = page_limit(model)
    refusal = (f"{len(doc.pages)} pages: one native PDF request takes at most {limit} pages on {model.id}"
               if len(doc.pages) > limit else None)
    key = count_key(model.id, doc, prompt, native=True)
    return _plan_whole(doc, prompt, model, requested_output, min_output, exact_counts.get(key), key, est,
                       lambda grant: build_native_request(doc, prompt, model, grant, extra_betas), NATIVE_MAX_BYTES,
                       refusal)


def _plan_whole(
    doc: Document, prompt: Prompt, model: ModelSpec, requested_output: int | None, min_output: int,
    exact: int | None, key: str, est: TokenEstimate, build: Callable[[int], PlannedRequest], max_bytes: int,
    refusal: str | None = None,
) -> tuple[PlanRow, PlannedRequest | None]:
    """One request for the whole document: the fit decision shared by text and native mode.
    `exact` is count_tokens' figure where it was asked; `refusal` a limit already broken."""
    upper = est.upper if exact is None else bound_from_exact(exact)
    needs = (exact is None and refusal is None
             and needs_exact_count(est.lower, est.upper, model, requested_output, min_output))
    expected = est.estimate if exact is None else exact
    base = PlanRow(
        doc.doc_id, doc.source, doc.kind, prompt.name, model.id, READY, None, doc.page_count, doc.chars,
        est.cl100k, expected, upper, sha256=doc.sha256, exact_input_tokens=exact, needs_exact=needs, count_key=key,
        est_input_usd=round(batch_cost_usd(model, expected, 0), 6),
    )
    if refusal:
        return dataclasses.replace(base, status=NOT_FIT, reason=refusal), None
    fit = check_fit(upper, model, requested_output, min_output)
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
        base, granted_max_tokens=fit.granted, betas=",".join(request.betas), custom_id=request.custom_id,
        max_cost_usd=round(batch_cost_usd(model, expected, fit.granted), 6)), request


def _upper(text: str, model: ModelSpec) -> int:
    return estimate_from_cl100k(cl100k_count(text), model.tokenizer).upper


def _plan_split(
    doc: Document, prompt: Prompt, model: ModelSpec, requested_output: int | None, min_output: int,
    extra_betas: tuple[str, ...], base: PlanRow, native: bool = False,
) -> tuple[list[PlanRow], list[PlannedRequest], list[ReduceNode]] | str:
    """Parts that each fit with their own output, and the steps that combine their reports.

    One combining step is the aim: each part's grant is what the window leaves for its report
    when every part's report and the final output must fit one request. Only when that grant
    falls below the minimum output are parts combined in groups first (more levels)."""
    asked = min(model.max_batch_output if requested_output is None else requested_output, model.max_batch_output)
    floor = min(min_output, asked)
    free = model.context_window - WINDOW_MARGIN
    upper_per_cl100k = CALIBRATION[model.tokenizer] * (1 + ERROR_BAND)
    sample_covers = "pages 99,999–99,999 (from “" + "x" * 60 + "”)"
    if native:
        part_wrap = _upper(SYSTEM_PROMPT + render_native_instructions(doc, prompt, asked,
                                                                      (MAX_PARTS, MAX_PARTS, sample_covers)), model)
    else:
        part_wrap = _upper(SYSTEM_PROMPT + render_part_message(doc, MAX_PARTS, MAX_PARTS, sample_covers, "", prompt,
                                                               asked), model)
    reduce_wrap = _upper(SYSTEM_PROMPT + render_reduce_message(doc.source, doc.page_count, sample_covers, [], True,
                                                               prompt, asked), model)

    def capacity(grant: int) -> int:
        """cl100k tokens of document text a part may hold when its report may use `grant`."""
        return int((free - grant - part_wrap) / upper_per_cl100k)

    def child_budget(n: int, out: int) -> int:
        """The grant each of n children may have so their reports fit one step with `out` output."""
        return int((free - out - reduce_wrap - n * REDUCE_TOKENS_PER_CHILD) / n / (1 + EXACT_MARGIN))

    if capacity(asked) < 1_000 or free - asked - reduce_wrap < floor:
        return f"the {model.id} window ({model.context_window:,} tokens) leaves no room for parts of useful size"
    max_pages: int | None = None
    if native:  # whole pages only, each costing its text and its image; pages and bytes per request limited
        costs = page_costs(doc, model)
        units = [Unit(start, end, math.ceil(c.upper / upper_per_cl100k), False)
                 for (start, end), c in zip(page_spans(doc), costs)]
        # base64 adds a third; pages differ in size: start at what an average page allows, with room.
        per_page = doc.size_bytes * 4 / 3 * 1.25 / max(len(doc.pages), 1)
        max_pages = max(1, min(page_limit(model), int(NATIVE_MAX_BYTES / per_page)))
    else:
        units = split_units(doc, capacity(asked))

    def input_of(part: Part) -> tuple[int, int, int]:
        """(estimate, upper bound) of a part's input tokens, and its text's cl100k tokens."""
        if native:
            pages = costs[part.first_page - 1: part.last_page]
            return (sum(c.estimate for c in pages) + part_wrap, sum(c.upper for c in pages) + part_wrap,
                    cl100k_count(part_body(doc, part)))
        est = estimate_from_cl100k(part.cl100k, model.tokenizer)
        return est.estimate + part_wrap, est.upper + part_wrap, part.cl100k

    while True:
        grant, parts = 0, []
        n = 2
        while n <= MAX_PARTS:  # one combining step: more parts mean smaller grants, hence bigger parts
            g = min(asked, child_budget(n, asked))
            if g < floor:
                break
            parts = pack_parts(doc, units, capacity(g), max_units=max_pages)
            if len(parts) <= n:
                grant = g
                break
            n = len(parts)
        if not grant:  # several levels: parts with a modest report each, combined in groups
            grant = min(asked, max(floor, TREE_PART_OUTPUT))
        parts = balanced_parts(doc, units, capacity(grant), max_pages)
        if len(parts) > MAX_PARTS:
            return f"it would take {len(parts):,} parts, more than {MAX_PARTS}"
        inputs = [input_of(p) for p in parts]
        if any(upper + grant > free for _, upper, _ in inputs):  # a page or a join bigger than counted
            return f"{sum(u + grant > free for _, u, _ in inputs)} part(s) would not fit after splitting"
        requests = [_part_request(doc, part, prompt, model, grant, extra_betas, native) for part in parts]
        heavy = [p for p, r in zip(parts, requests) if native and r.body_bytes > NATIVE_MAX_BYTES]
        if not heavy:
            break
        if max_pages == 1:  # one page alone is over the limit
            return (f"{heavy[0].covers} is over {NATIVE_MAX_BYTES / 2**20:.1f} MB as one PDF request "
                    "(`--pdf-mode text` can still read the document)")
        assert max_pages is not None
        max_pages = max(1, max_pages * 2 // 3)  # some pages are heavier than average: smaller ranges

    nodes = _reduce_tree(doc, prompt, model, asked, floor, free, reduce_wrap, parts, requests, extra_betas)
    if isinstance(nodes, str):
        return nodes
    nodes = [dataclasses.replace(n, pdf_mode="native" if native else "text") for n in nodes]
    return _split_rows(doc, base, model, parts, inputs, requests, nodes), requests, nodes


def _part_request(doc: Document, part: Part, prompt: Prompt, model: ModelSpec, grant: int,
                  extra_betas: tuple[str, ...], native: bool = False) -> PlannedRequest:
    meta = {"role": "part", "index": part.index, "count": part.count, "covers": part.covers,
            "start": part.start, "end": part.end, "first_page": part.first_page, "last_page": part.last_page,
            "hard_cut": part.hard_cut, "pdf_mode": "native" if native else "text"}
    custom_id = make_custom_id(doc.doc_id, prompt.name, f"p{part.index}")
    if native:
        assert part.first_page is not None and part.last_page is not None
        content, identity = native_content(doc, prompt, grant, part.first_page, part.last_page,
                                           (part.index, part.count, part.covers))
        return make_request(custom_id, doc.doc_id, prompt.name, model, grant, content, extra_betas, meta, identity)
    text = render_part_message(doc, part.index, part.count, part.covers, part_body(doc, part), prompt, grant)
    return make_request(custom_id, doc.doc_id, prompt.name, model, grant, text, extra_betas, meta)


def _reduce_tree(doc: Document, prompt: Prompt, model: ModelSpec, asked: int, floor: int, free: int,
                 reduce_wrap: int, parts: list[Part], requests: list[PlannedRequest],
                 extra_betas: tuple[str, ...]) -> list[ReduceNode] | str:
    """Combining steps over the parts, bottom up, ending with the final one."""
    locator = Locator(doc)
    # (reference, grant, covers, start, end) per child of the next step
    children = [({"fingerprint": r.fingerprint}, r.max_tokens, p.covers, p.start, p.end)
                for p, r in zip(parts, requests)]
    leaf_covers = tuple(p.covers for p in parts)
    nodes: list[ReduceNode] = []

    def step_input(group: list) -> int:
        return (math.ceil(sum(c[1] for c in group) * (1 + EXACT_MARGIN)) + reduce_wrap
                + len(group) * REDUCE_TOKENS_PER_CHILD)

    def node(group: list, role: str, index: int, grant: int) -> ReduceNode:
        covers = locator.covers(group[0][3], group[-1][4])
        step = "f" if role == "final" else f"m{index}"
        recipe = {"children": [c[0] for c in group], "grant": grant, "model": model.id, "prompt": prompt.sha256,
                  "role": role, "betas": sorted(extra_betas), "source": doc.source, "sha256": doc.sha256}
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]
        return ReduceNode(key, make_custom_id(doc.doc_id, prompt.name, step), role, index, doc.doc_id, doc.source,
                          doc.sha256, doc.page_count, prompt.name, prompt.sha256, model.id,
                          tuple(c[0] for c in group), tuple(c[2] for c in group), covers, leaf_covers, grant,
                          tuple(extra_betas), step_input(group))

    merge_index = 0
    while step_input(children) + asked > free:
        grant = min(asked, max(floor, TREE_PART_OUTPUT))
        per_child = max(c[1] for c in children) * (1 + EXACT_MARGIN) + REDUCE_TOKENS_PER_CHILD
        fan_in = int((free - grant - reduce_wrap) // per_child)
        if fan_in < 2:
            return f"the reports on its parts cannot be combined within the {model.context_window:,}-token window"
        groups = _even_groups(children, math.ceil(len(children) / fan_in))
        if merge_index + len(groups) > MAX_PARTS:
            return "it would take more combining steps than a custom_id can number"
        next_children = []
        for group in groups:
            merge_index += 1
            merged = node(group, "merge", merge_index, grant)
            nodes.append(merged)
            next_children.append(({"reduction": merged.key}, grant, merged.covers, group[0][3], group[-1][4]))
        children = next_children
    final = node(children, "final", 0, asked)
    nodes.append(final)
    return [dataclasses.replace(n, final_key=final.key) for n in nodes]


def _even_groups(items: list, count: int) -> list[list]:
    size, extra = divmod(len(items), count)
    out, at = [], 0
    for i in range(count):
        n = size + (1 if i < extra else 0)
        out.append(items[at: at + n])
        at += n
    return out


def _split_rows(doc: Document, base: PlanRow, model: ModelSpec, parts: list[Part],
                inputs: list[tuple[int, int, int]], requests: list[PlannedRequest],
                nodes: list[ReduceNode]) -> list[PlanRow]:
    part_rows = []
    for part, (estimate, upper, cl100k), req in zip(parts, inputs, requests):
        pages = part.last_page - part.first_page + 1 if part.first_page and part.last_page else None
        part_rows.append(PlanRow(
            doc.doc_id, doc.source, doc.kind, base.prompt, model.id, PART, None, pages, part.end - part.start,
            cl100k, estimate, upper, req.max_tokens, ",".join(req.betas),
            round(batch_cost_usd(model, estimate, 0), 6),
            round(batch_cost_usd(model, estimate, req.max_tokens), 6), req.custom_id, sha256=doc.sha256,
            part=f"{part.index}/{part.count}", covers=part.covers + (" (cut at whitespace)" if part.hard_cut else "")))
    step_rows = [PlanRow(
        doc.doc_id, doc.source, doc.kind, base.prompt, model.id, REDUCE, None, None, 0, 0, n.input_upper,
        n.input_upper, n.max_tokens, ",".join(sorted(set(model.betas_for(n.max_tokens)) | set(n.extra_betas))),
        round(batch_cost_usd(model, n.input_upper, 0), 6), round(batch_cost_usd(model, n.input_upper, n.max_tokens), 6),
        n.custom_id, sha256=doc.sha256, part="final" if n.role == "final" else f"merge {n.index}", covers=n.covers,
        reduction=n.key) for n in nodes]
    detail = part_rows + step_rows
    final = nodes[-1]
    doc_row = dataclasses.replace(
        base, status=READY, reason=f"split into {len(parts)} parts and combined in {len(nodes)} step(s)",
        parts=len(parts), granted_max_tokens=final.max_tokens, needs_exact=False, reduction=final.key,
        est_input_usd=round(sum(r.est_input_usd for r in detail), 6),
        max_cost_usd=round(sum(r.max_cost_usd for r in detail), 6),
    )
    return [doc_row, *detail]


def rebuild_request(row: dict, inbox: Path, data_dir: Path) -> PlannedRequest | str:
    """Rebuild the request a ledger row stands for, from the document and prompt it was made
    from; or say why it cannot be rebuilt identically (checked by its fingerprint)."""
    from longbatch.catalog import get_model
    from longbatch.errors import LongbatchError
    from tasks.ingest import find_source, read_document
    from tasks.prompts import load_prompt

    path = find_source(inbox, row["source"])  # a name with escaped bytes is looked up
    if not path.is_file():
        return f"{row['source']} is no longer in the inbox ({inbox})"
    step = json.loads(row["meta"]) if row.get("meta") else None
    doc = read_document(path, inbox, native_pdf=bool(step) and step.get("pdf_mode") == "native")
    if isinstance(doc, IngestFailure) or doc.sha256 != row["sha256"]:
        return f"{row['source']} changed since it was planned; `longbatch run` plans the new version"
    betas = tuple(b for b in row["betas"].split(",") if b)
    try:
        prompt, model = load_prompt(row["prompt"], data_dir), get_model(row["model"])
        native = bool(step) and step.get("pdf_mode") == "native"
        if step and step["role"] == "part":
            part = Part(step["index"], step["count"], step["start"], step["end"], 0, step["covers"],
                        step["first_page"], step["last_page"], step["hard_cut"])
            request = _part_request(doc, part, prompt, model, row["max_tokens"], betas, native)
        elif native:
            request = build_native_request(doc, prompt, model, row["max_tokens"], betas)
        else:
            request = build_request(doc, prompt, model, row["max_tokens"], betas)
    except LongbatchError as exc:
        return f"cannot rebuild the request: {exc}"
    if request.fingerprint != row["fingerprint"]:
        return f"the prompt {row['prompt']!r} changed since it was planned; `longbatch run` plans the new version"
    return request
