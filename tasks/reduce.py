"""Stage 5b — combining: once every part of a split document has its report, build the step
that combines them (and, for very long documents, the steps above it, up to the final one).

The recipe of each step was fixed at plan time (`plan.ReduceNode`, kept in the ledger); the
request is built here from the part reports on disk (the results archive if a report file is
gone). The same reports always give the same request, so a step claimed twice is sent once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longbatch.catalog import get_model
from longbatch.errors import LongbatchError
from longbatch.failpoints import failpoint
from longbatch.ledger import Ledger
from longbatch.tokens import bound_from_exact, estimate_tokens
from tasks.build import PlannedRequest, make_request, render_reduce_message
from tasks.fit import WINDOW_MARGIN
from tasks.plan import REDUCE_TOKENS_PER_CHILD
from tasks.prompts import SYSTEM_PROMPT, load_prompt
from tasks.reports import banner
from tasks.results import read_outcomes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChildReport:
    covers: str
    custom_id: str
    fingerprint: str
    text: str
    output_tokens: int
    report: str | None
    leaf_parts: tuple[dict[str, Any], ...]  # the document's parts under this child, in order


class NotReady(Exception):
    """A child is still pending."""


class ChildFailed(Exception):
    """A child failed for good: the step cannot be built, and says why."""


def advance_reductions(ledger: Ledger, data_dir: Path) -> list[PlannedRequest]:
    """Build and claim (queued) every waiting step whose children are all done; fail those
    with a child that failed for good. Returns the steps' requests that are queued: claimed by
    this call, or claimed earlier by a process that stopped before sending them."""
    built = []
    for row in ledger.stranded_steps():
        try:
            built.append(build_reduce_request(ledger, json.loads(row["data"]), data_dir))
        except (NotReady, ChildFailed, LongbatchError) as exc:  # the queued_requests rebuild says why
            log.warning("%s: a claimed combining step cannot be rebuilt: %s", row["source"], exc)
    for row in ledger.reductions_in_state("waiting"):
        node = json.loads(row["data"])
        try:
            request = build_reduce_request(ledger, node, data_dir)
        except NotReady:
            continue
        except (ChildFailed, LongbatchError) as exc:
            ledger.set_reduction(node["key"], "failed", error=str(exc))
            log.error("%s (%s): cannot combine the parts: %s", node["source"], node["prompt"], exc)
            continue
        ledger.claim(claim_record(node, request))  # False when a crashed earlier call had claimed it
        failpoint("after-step-claimed")
        ledger.supersede(request.custom_id, request.fingerprint)
        ledger.set_reduction(node["key"], "built", fingerprint=request.fingerprint)
        failpoint("after-step-built")
        log.info("%s (%s): %s step over %d report(s) ready to send", node["source"], node["prompt"], node["role"],
                 len(node["children"]))
        built.append(request)
    return built


def claim_record(node: dict[str, Any], request: PlannedRequest) -> dict[str, Any]:
    return {"fingerprint": request.fingerprint, "custom_id": request.custom_id, "doc_id": node["doc_id"],
            "source": node["source"], "sha256": node["sha256"], "prompt": node["prompt"], "model": node["model"],
            "max_tokens": request.max_tokens, "betas": ",".join(request.betas), "meta": json.dumps(request.meta)}


def rebuild_reduce_request(ledger: Ledger, meta: dict[str, Any], data_dir: Path) -> PlannedRequest | str:
    """The request of a step that was claimed but not sent, or why it cannot be rebuilt."""
    row = ledger.reduction(meta["reduction"])
    if row is None:
        return "its combining step is not in the ledger"
    try:
        return build_reduce_request(ledger, json.loads(row["data"]), data_dir)
    except (NotReady, ChildFailed, LongbatchError) as exc:
        return f"cannot rebuild the combining step: {exc}"


def build_reduce_request(ledger: Ledger, node: dict[str, Any], data_dir: Path) -> PlannedRequest:
    children = [_child(ledger, ref, covers, data_dir) for ref, covers in zip(node["children"], node["child_covers"])]
    model = get_model(node["model"])
    prompt = load_prompt(node["prompt"], data_dir)
    if prompt.sha256 != node["prompt_sha256"]:
        raise ChildFailed(f"the prompt {node['prompt']!r} changed since the parts were sent; "
                          "`longbatch run` plans the document again")
    final = node["role"] == "final"
    # Children's sizes are known exactly (their output_tokens); only the wrapping is estimated.
    wrapper = render_reduce_message(node["source"], node["pages"], node["covers"], [(c.covers, "") for c in children],
                                    final, prompt, node["max_tokens"])
    upper = (bound_from_exact(sum(c.output_tokens for c in children))
             + estimate_tokens(SYSTEM_PROMPT + wrapper, model.tokenizer).upper + len(children) * REDUCE_TOKENS_PER_CHILD)
    grant = min(node["max_tokens"], model.context_window - WINDOW_MARGIN - upper)
    if grant < node["max_tokens"] // 2:
        raise ChildFailed(f"the part reports need up to {upper:,} tokens, leaving only {max(grant, 0):,} of the "
                          f"{model.context_window:,}-token window for the combined report")
    text = render_reduce_message(node["source"], node["pages"], node["covers"], [(c.covers, c.text) for c in children],
                                 final, prompt, grant)
    meta = {"role": node["role"], "index": node["index"], "reduction": node["key"], "covers": node["covers"],
            "pdf_mode": node.get("pdf_mode", "text"),
            "leaf_covers": node["leaf_covers"],
            "children": [{"covers": c.covers, "custom_id": c.custom_id, "fingerprint": c.fingerprint,
                          "report": c.report} for c in children],
            "parts": [leaf for c in children for leaf in c.leaf_parts]}
    return make_request(node["custom_id"], node["doc_id"], node["prompt"], model, grant, text,
                        tuple(node["extra_betas"]), meta)


def _child(ledger: Ledger, ref: dict[str, str], covers: str, data_dir: Path) -> ChildReport:
    if "reduction" in ref:
        step = ledger.reduction(ref["reduction"])
        if step is None or step["state"] == "waiting":
            raise NotReady
        if step["state"] == "failed":
            raise ChildFailed(f"combining {covers} failed: {step['error']}")
        fingerprint = step["fingerprint"]
    else:
        fingerprint = ref["fingerprint"]
    request = ledger.request(fingerprint)
    if request is None:
        raise NotReady
    if request["state"] == "failed":
        raise ChildFailed(f"the part covering {covers} failed: {request['error_type']}: {request['error_message']}")
    if request["state"] != "succeeded":
        raise NotReady
    result = ledger.latest_result(fingerprint)
    if result is None:
        raise NotReady
    text = _report_text(result, request["max_tokens"], data_dir)
    if text is None:
        raise ChildFailed(f"the report on {covers} is missing from reports/ and from the results archive")
    here = {"covers": covers, "custom_id": request["custom_id"], "fingerprint": fingerprint,
            "batch_id": result["batch_id"], "message_id": result["message_id"], "report": result["report_path"]}
    leaves = tuple(json.loads(request["meta"])["parts"]) if "reduction" in ref else (here,)
    return ChildReport(covers, request["custom_id"], fingerprint, text, result["output_tokens"] or 0,
                       result["report_path"], leaves)


def _report_text(result: dict[str, Any], max_tokens: int, data_dir: Path) -> str | None:
    """The report as written (banner included: the combining step should know a part was cut
    short); rebuilt the same way from the results archive when the file was removed."""
    if result["report_path"] and Path(result["report_path"]).is_file():
        return Path(result["report_path"]).read_text(encoding="utf-8")
    archive = data_dir / "results" / f"{result['batch_id']}.jsonl"
    if archive.is_file():
        for outcome in read_outcomes(archive):
            if outcome.custom_id == result["custom_id"] and outcome.result_type == "succeeded":
                return banner(outcome, max_tokens) + outcome.text
    return None
