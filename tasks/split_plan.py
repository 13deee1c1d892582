"""Stage 3, for documents too long for one request: parts that each fit with their own output,
and the steps that combine their reports (pure, like the rest of the plan).

One combining step is the aim: each part's grant is what the window leaves for its report
when every part's report and the final output must fit one request. Only when that grant
falls below the minimum output are parts combined in groups first (more levels).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from longbatch.cache import write_premium_usd
from longbatch.catalog import batch_cost_usd
from longbatch.errors import CannotSplit
from longbatch.piece import Piece, PieceKind, Span
from longbatch.records import ChildRef, PlanRow, PlanStatus, StepRecipe
from longbatch.tokens import EXACT_MARGIN, cl100k_count, estimate_from_cl100k, estimate_tokens, upper_per_cl100k
from tasks.build import (PlannedRequest, make_custom_id, make_request, native_content, part_content,
                         render_native_instructions, render_part_message, render_reduce_message)
from tasks.ingest import Document
from tasks.native import NATIVE_MAX_BYTES, page_costs, page_limit
from tasks.policy import PlanPolicy
from tasks.prompts import SYSTEM_PROMPT, Prompt
from tasks.split import Locator, Part, Unit, balanced_parts, pack_parts, page_spans, part_body, split_units

# custom_id steps have room for three digits.
MAX_PARTS = 999
# Output per part when one combining step cannot take every part's report (small windows,
# enormous documents): parts are combined in groups first, then the groups' reports.
TREE_PART_OUTPUT = 16_000
# Tags, the part's label and a possible "incomplete" banner around each part report.
REDUCE_TOKENS_PER_CHILD = 200
# The longest label a part can have, for sizing the text around it.
_SAMPLE_COVERS = "pages 99,999–99,999 (from “" + "x" * 60 + "”)"


@dataclass(frozen=True)
class SplitPlan:
    rows: list[PlanRow]  # the document's own row, then one per part (as `requests`), then one per step
    requests: list[PlannedRequest]  # the parts'
    steps: list[StepRecipe]  # bottom up; the final one last


@dataclass(frozen=True)
class _Shape:
    """What a part and a step of this document cost beyond the text they carry."""
    part_wrap: int  # tokens around a part's text (system prompt, tags, instructions)
    reduce_wrap: int  # tokens around the part reports in a combining step
    per_cl100k: float  # bound tokens per cl100k token of text

    def capacity(self, policy: PlanPolicy, grant: int) -> int:
        """cl100k tokens of document text a part may hold when its report may use `grant`."""
        return int((policy.budget.free - grant - self.part_wrap) / self.per_cl100k)

    def child_grant(self, policy: PlanPolicy, n: int) -> int:
        """The grant each of n children may have so their reports and the final output fit one step."""
        budget = policy.budget
        return int((budget.free - budget.asked - self.reduce_wrap - n * REDUCE_TOKENS_PER_CHILD) / n
                   / (1 + EXACT_MARGIN))


def plan_split(doc: Document, prompt: Prompt, policy: PlanPolicy, base: PlanRow) -> SplitPlan:
    """The document read in parts and combined, or CannotSplit saying why not."""
    shape = _shape(doc, prompt, policy)
    budget = policy.budget
    if shape.capacity(policy, budget.asked) < 1_000 or budget.free - budget.asked - shape.reduce_wrap < budget.floor:
        raise CannotSplit(f"the {policy.model.id} window ({policy.model.context_window:,} tokens) leaves no room for "
                          "parts of useful size")
    parts, requests, inputs = _parts(doc, prompt, policy, shape)
    steps = _reduce_tree(doc, prompt, policy, shape, parts, requests)
    return SplitPlan(_split_rows(doc, base, policy, parts, inputs, requests, steps), requests, steps)


def _shape(doc: Document, prompt: Prompt, policy: PlanPolicy) -> _Shape:
    model, asked = policy.model, policy.budget.asked
    if policy.mode_for(doc) == "native":
        part_text = render_native_instructions(doc, prompt, asked, (MAX_PARTS, MAX_PARTS, _SAMPLE_COVERS))
    else:
        part_text = render_part_message(doc, MAX_PARTS, MAX_PARTS, _SAMPLE_COVERS, "", prompt, asked)
    reduce_text = render_reduce_message(doc.source, doc.page_count, _SAMPLE_COVERS, [], True, prompt, asked)
    return _Shape(estimate_tokens(SYSTEM_PROMPT + part_text, model.tokenizer).upper,
                  estimate_tokens(SYSTEM_PROMPT + reduce_text, model.tokenizer).upper,
                  upper_per_cl100k(model.tokenizer))


def _parts(doc: Document, prompt: Prompt, policy: PlanPolicy,
           shape: _Shape) -> tuple[list[Part], list[PlannedRequest], list[tuple[int, int, int]]]:
    """The parts, their requests, and per part (estimate, upper bound) of its input tokens and its
    text's cl100k tokens."""
    model, budget = policy.model, policy.budget
    native = policy.mode_for(doc) == "native"
    max_pages: int | None = None
    if native:  # whole pages only, each costing its text and its image; pages and bytes per request limited
        costs = page_costs(doc, model)
        units = [Unit(start, end, math.ceil(c.upper / shape.per_cl100k), False)
                 for (start, end), c in zip(page_spans(doc), costs)]
        # base64 adds a third; pages differ in size: start at what an average page allows, with room.
        per_page = doc.size_bytes * 4 / 3 * 1.25 / max(len(doc.pages), 1)
        max_pages = max(1, min(page_limit(model), int(NATIVE_MAX_BYTES / per_page)))
    else:
        units = split_units(doc, shape.capacity(policy, budget.asked))

    def input_of(part: Part) -> tuple[int, int, int]:
        if native:
            pages = costs[part.first_page - 1: part.last_page]
            return (sum(c.estimate for c in pages) + shape.part_wrap, sum(c.upper for c in pages) + shape.part_wrap,
                    cl100k_count(part_body(doc, part)))
        est = estimate_from_cl100k(part.cl100k, model.tokenizer)
        return est.estimate + shape.part_wrap, est.upper + shape.part_wrap, part.cl100k

    while True:
        grant = _part_grant(doc, policy, shape, units, max_pages)
        parts = balanced_parts(doc, units, shape.capacity(policy, grant), max_pages)
        if len(parts) > MAX_PARTS:
            raise CannotSplit(f"it would take {len(parts):,} parts, more than {MAX_PARTS}")
        inputs = [input_of(p) for p in parts]
        over = sum(upper + grant > budget.free for _, upper, _ in inputs)
        if over:  # a page or a join bigger than counted
            raise CannotSplit(f"{over} part(s) would not fit after splitting")
        requests = [part_request(doc, part, prompt, model, grant, policy.extra_betas, native, policy.cache_prefixes)
                    for part in parts]
        heavy = [p for p, r in zip(parts, requests) if native and r.body_bytes > NATIVE_MAX_BYTES]
        if not heavy:
            return parts, requests, inputs
        if max_pages == 1:  # one page alone is over the limit
            raise CannotSplit(f"{heavy[0].covers} is over {NATIVE_MAX_BYTES / 2**20:.1f} MB as one PDF request "
                              "(`--pdf-mode text` can still read the document)")
        assert max_pages is not None
        max_pages = max(1, max_pages * 2 // 3)  # some pages are heavier than average: smaller ranges


def _part_grant(doc: Document, policy: PlanPolicy, shape: _Shape, units: list[Unit], max_pages: int | None) -> int:
    """The output each part may ask: the most that lets one step combine them all, settled in a
    few rounds (more parts mean smaller grants, hence bigger parts); a modest fixed grant when
    that falls below the floor and parts are combined in groups."""
    budget = policy.budget
    n = 2
    while n <= MAX_PARTS:
        grant = min(budget.asked, shape.child_grant(policy, n))
        if grant < budget.floor:
            break
        needed = len(pack_parts(doc, units, shape.capacity(policy, grant), max_units=max_pages))
        if needed <= n:
            return grant
        n = needed
    return min(budget.asked, max(budget.floor, TREE_PART_OUTPUT))


def part_request(doc: Document, part: Part, prompt: Prompt, model, grant: int,  # noqa: ANN001 - a ModelSpec
                 extra_betas: tuple[str, ...], native: bool = False, cache: bool = False) -> PlannedRequest:
    piece = Piece(PieceKind.PART, part.index, part.count, part.covers, "native" if native else "text",
                  Span(part.start, part.end, part.first_page, part.last_page, part.hard_cut))
    custom_id = make_custom_id(doc.doc_id, prompt.name, piece)
    if native:
        assert part.first_page is not None and part.last_page is not None
        content, identity = native_content(doc, prompt, grant, part.first_page, part.last_page,
                                           (part.index, part.count, part.covers), cache)
        return make_request(custom_id, doc.doc_id, prompt.name, model, grant, content, extra_betas, piece,
                            identity_content=identity)
    content = part_content(doc, part.index, part.count, part.covers, part_body(doc, part), prompt, model, grant, cache)
    return make_request(custom_id, doc.doc_id, prompt.name, model, grant, content, extra_betas, piece)


@dataclass(frozen=True)
class _Child:
    """One input of the next combining step: a part's report, or an earlier step's."""
    ref: ChildRef
    grant: int
    covers: str
    start: int  # span in Document.body
    end: int


def _reduce_tree(doc: Document, prompt: Prompt, policy: PlanPolicy, shape: _Shape, parts: list[Part],
                 requests: list[PlannedRequest]) -> list[StepRecipe]:
    """Combining steps over the parts, bottom up, ending with the final one."""
    model, budget = policy.model, policy.budget
    locator = Locator(doc)
    children = [_Child(ChildRef(fingerprint=r.fingerprint), r.max_tokens, p.covers, p.start, p.end)
                for p, r in zip(parts, requests)]
    leaf_covers = tuple(p.covers for p in parts)
    mode = policy.mode_for(doc)

    def step_input(group: list[_Child]) -> int:
        return (math.ceil(sum(c.grant for c in group) * (1 + EXACT_MARGIN)) + shape.reduce_wrap
                + len(group) * REDUCE_TOKENS_PER_CHILD)

    def step(group: list[_Child], kind: PieceKind, index: int, grant: int) -> StepRecipe:
        covers = locator.covers(group[0].start, group[-1].end)
        recipe = {"children": [c.ref.as_dict() for c in group], "grant": grant, "model": model.id,
                  "prompt": prompt.sha256, "role": kind.value, "betas": sorted(policy.extra_betas),
                  "source": doc.source, "sha256": doc.sha256}
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]
        piece = Piece(kind, index, covers=covers, pdf_mode=mode, reduction=key)
        return StepRecipe(key, make_custom_id(doc.doc_id, prompt.name, piece), piece, doc.doc_id, doc.source,
                          doc.sha256, doc.page_count, prompt.name, prompt.sha256, model.id,
                          tuple(c.ref for c in group), tuple(c.covers for c in group), leaf_covers, grant,
                          tuple(policy.extra_betas), step_input(group))

    steps: list[StepRecipe] = []
    while step_input(children) + budget.asked > budget.free:
        grant = min(budget.asked, max(budget.floor, TREE_PART_OUTPUT))
        per_child = max(c.grant for c in children) * (1 + EXACT_MARGIN) + REDUCE_TOKENS_PER_CHILD
        fan_in = int((budget.free - grant - shape.reduce_wrap) // per_child)
        if fan_in < 2:
            raise CannotSplit(f"the reports on its parts cannot be combined within the "
                              f"{model.context_window:,}-token window")
        groups = _even_groups(children, math.ceil(len(children) / fan_in))
        if len(steps) + len(groups) > MAX_PARTS:
            raise CannotSplit("it would take more combining steps than a custom_id can number")
        next_children = []
        for group in groups:
            merged = step(group, PieceKind.MERGE, len(steps) + 1, grant)
            steps.append(merged)
            next_children.append(_Child(ChildRef(reduction=merged.key), grant, merged.piece.covers, group[0].start,
                                        group[-1].end))
        children = next_children
    final = step(children, PieceKind.FINAL, 0, budget.asked)
    steps.append(final)
    return [dataclasses.replace(s, final_key=final.key) for s in steps]


def _even_groups(items: list, count: int) -> list[list]:
    size, extra = divmod(len(items), count)
    out, at = [], 0
    for i in range(count):
        n = size + (1 if i < extra else 0)
        out.append(items[at: at + n])
        at += n
    return out


def _split_rows(doc: Document, base: PlanRow, policy: PlanPolicy, parts: list[Part],
                inputs: list[tuple[int, int, int]], requests: list[PlannedRequest],
                steps: list[StepRecipe]) -> list[PlanRow]:
    model = policy.model
    part_rows = []
    for part, (estimate, upper, cl100k), req in zip(parts, inputs, requests):
        pages = part.last_page - part.first_page + 1 if part.first_page and part.last_page else None
        part_rows.append(PlanRow(
            doc.doc_id, doc.source, doc.kind, base.prompt, model.id, PlanStatus.READY, None, pages,
            part.end - part.start, cl100k, estimate, upper, req.max_tokens, req.betas,
            round(batch_cost_usd(model, estimate, 0), 6),
            round(batch_cost_usd(model, estimate, req.max_tokens)
                  + (write_premium_usd(model, estimate) if req.writes_cache else 0.0), 6),
            req.custom_id, sha256=doc.sha256, piece=req.piece))
    step_rows = [PlanRow(
        doc.doc_id, doc.source, doc.kind, base.prompt, model.id, PlanStatus.READY, None, None, 0, 0, s.input_upper,
        s.input_upper, s.max_tokens, tuple(sorted(set(model.betas_for(s.max_tokens)) | set(s.extra_betas))),
        round(batch_cost_usd(model, s.input_upper, 0), 6), round(batch_cost_usd(model, s.input_upper, s.max_tokens), 6),
        s.custom_id, sha256=doc.sha256, piece=s.piece, reduction=s.key) for s in steps]
    detail = part_rows + step_rows
    doc_row = dataclasses.replace(
        base, status=PlanStatus.READY, reason=f"split into {len(parts)} parts and combined in {len(steps)} step(s)",
        parts=len(parts), granted_max_tokens=steps[-1].max_tokens, needs_exact=False, reduction=steps[-1].key,
        est_input_usd=round(sum(r.est_input_usd for r in detail), 6),
        max_cost_usd=round(sum(r.max_cost_usd for r in detail), 6),
    )
    return [doc_row, *detail]
