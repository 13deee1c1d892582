"""Stage 5b — combining: once every part of a split document has its report, build the step
that combines them (and, for very long documents, the steps above it, up to the final one).

The recipe of each step was fixed at plan time (`StepRecipe`, kept in the ledger); the request
is built here from the part reports on disk (the results archive if a report file is gone).
The same reports always give the same request, so a step claimed twice is sent once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from longbatch.catalog import get_model
from longbatch.errors import LongbatchError, NotReady, StepFailed
from longbatch.failpoints import failpoint
from longbatch.ledger import Ledger
from longbatch.piece import PieceKind, ReportLink, StepLinks
from longbatch.records import ChildRef, NewRequest, RequestState, ResultRecord, StepRecipe, StepState
from longbatch.tokens import bound_from_exact, estimate_tokens
from tasks.build import PlannedRequest, make_request, render_reduce_message
from tasks.fit import WINDOW_MARGIN
from tasks.prompts import SYSTEM_PROMPT, load_prompt
from tasks.reports import banner
from tasks.results import read_outcomes
from tasks.split_plan import REDUCE_TOKENS_PER_CHILD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChildReport:
    link: ReportLink  # where its report is
    text: str
    output_tokens: int
    leaf_parts: tuple[ReportLink, ...]  # the document's parts under this child, in order


def advance_reductions(ledger: Ledger, data_dir: Path) -> list[PlannedRequest]:
    """Build and claim (queued) every waiting step whose children are all done; fail those
    with a child that failed for good. Returns the steps' requests that are queued: claimed by
    this call, or claimed earlier by a process that stopped before sending them."""
    built = []
    for stranded in ledger.stranded_steps():
        try:
            built.append(build_reduce_request(ledger, stranded.recipe, data_dir))
        except (NotReady, LongbatchError) as exc:  # the rebuild of queued work says why
            log.warning("%s: a claimed combining step cannot be rebuilt: %s", stranded.recipe.source, exc)
    for waiting in ledger.reductions_in_state(StepState.WAITING):
        recipe = waiting.recipe
        try:
            request = build_reduce_request(ledger, recipe, data_dir)
        except NotReady:
            continue
        except LongbatchError as exc:
            ledger.set_reduction(recipe.key, StepState.FAILED, error=str(exc))
            log.error("%s (%s): cannot combine the parts: %s", recipe.source, recipe.prompt, exc)
            continue
        ledger.claim(step_claim(recipe, request))  # False when a crashed earlier call had claimed it
        failpoint("after-step-claimed")
        ledger.supersede(request.custom_id, request.fingerprint)
        ledger.set_reduction(recipe.key, StepState.BUILT, fingerprint=request.fingerprint)
        failpoint("after-step-built")
        log.info("%s (%s): %s step over %d report(s) ready to send", recipe.source, recipe.prompt,
                 recipe.piece.kind.value, len(recipe.children))
        built.append(request)
    return built


def step_claim(recipe: StepRecipe, request: PlannedRequest) -> NewRequest:
    return NewRequest(request.fingerprint, request.custom_id, recipe.doc_id, recipe.source, recipe.sha256,
                      recipe.prompt, recipe.model, request.max_tokens, request.betas, request.piece, request.links)


def build_reduce_request(ledger: Ledger, recipe: StepRecipe, data_dir: Path) -> PlannedRequest:
    """The step's request from its children's reports; NotReady while one is pending,
    StepFailed when one failed for good or the window cannot take them."""
    children = [_child(ledger, ref, covers, data_dir) for ref, covers in zip(recipe.children, recipe.child_covers)]
    model = get_model(recipe.model)
    prompt = load_prompt(recipe.prompt, data_dir)
    if prompt.sha256 != recipe.prompt_sha256:
        raise StepFailed(f"the prompt {recipe.prompt!r} changed since the parts were sent; "
                         "`longbatch run` plans the document again")
    piece = recipe.piece
    final = piece.kind == PieceKind.FINAL
    # Children's sizes are known exactly (their output_tokens); only the wrapping is estimated.
    wrapper = render_reduce_message(recipe.source, recipe.pages, piece.covers,
                                    [(c.link.covers, "") for c in children], final, prompt, recipe.max_tokens)
    upper = (bound_from_exact(sum(c.output_tokens for c in children))
             + estimate_tokens(SYSTEM_PROMPT + wrapper, model.tokenizer).upper + len(children) * REDUCE_TOKENS_PER_CHILD)
    grant = min(recipe.max_tokens, model.context_window - WINDOW_MARGIN - upper)
    if grant < recipe.max_tokens // 2:
        raise StepFailed(f"the part reports need up to {upper:,} tokens, leaving only {max(grant, 0):,} of the "
                         f"{model.context_window:,}-token window for the combined report")
    text = render_reduce_message(recipe.source, recipe.pages, piece.covers,
                                 [(c.link.covers, c.text) for c in children], final, prompt, grant)
    links = StepLinks(recipe.leaf_covers, tuple(c.link for c in children),
                      tuple(leaf for c in children for leaf in c.leaf_parts))
    return make_request(recipe.custom_id, recipe.doc_id, recipe.prompt, model, grant, text, recipe.extra_betas,
                        piece, links)


def _child(ledger: Ledger, ref: ChildRef, covers: str, data_dir: Path) -> ChildReport:
    fingerprint = ref.fingerprint
    if ref.reduction:
        step = ledger.reduction(ref.reduction)
        if step is None or step.state == StepState.WAITING:
            raise NotReady
        if step.state == StepState.FAILED:
            raise StepFailed(f"combining {covers} failed: {step.error}")
        fingerprint = step.fingerprint
    assert fingerprint is not None
    request = ledger.request(fingerprint)
    if request is None:
        raise NotReady
    if request.state == RequestState.FAILED:
        raise StepFailed(f"the part covering {covers} failed: {request.error_type}: {request.error_message}")
    result = ledger.latest_result(fingerprint) if request.state == RequestState.SUCCEEDED else None
    if result is None:
        raise NotReady
    text = _report_text(result, request.max_tokens, data_dir)
    if text is None:
        raise StepFailed(f"the report on {covers} is missing from reports/ and from the results archive")
    link = ReportLink(covers, request.custom_id, fingerprint, result.report_path)
    if ref.reduction:
        assert request.links is not None
        leaves = request.links.parts
    else:
        leaves = (ReportLink(covers, request.custom_id, fingerprint, result.report_path, result.batch_id,
                             result.message_id),)
    return ChildReport(link, text, result.output_tokens or 0, leaves)


def _report_text(result: ResultRecord, max_tokens: int, data_dir: Path) -> str | None:
    """The report as written (banner included: the combining step should know a part was cut
    short); rebuilt the same way from the results archive when the file was removed."""
    if result.report_path and Path(result.report_path).is_file():
        return Path(result.report_path).read_text(encoding="utf-8")
    archive = data_dir / "results" / f"{result.batch_id}.jsonl"
    if archive.is_file():
        for outcome in read_outcomes(archive):
            if outcome.custom_id == result.custom_id and outcome.result_type == "succeeded":
                return banner(outcome, max_tokens) + outcome.text
    return None
