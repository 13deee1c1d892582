"""Stage 6 — reports: one Markdown report and its JSON metadata per document and prompt, and
`summary.csv` with a row for every document and prompt, failures included.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from longbatch.catalog import batch_cost_usd, get_model
from longbatch.fsutil import atomic_write_text, csv_text
from longbatch.ledger import Ledger
from tasks.results import Outcome


@dataclass(frozen=True)
class ReportContext:
    """What the ledger knows about the request and batch an outcome belongs to."""
    request: dict[str, Any]
    attempt: int
    batch_local_id: str
    batch_api_id: str
    submitted_at: float | None
    ended_at: float | None


def report_paths(reports_dir: Path, doc_id: str, prompt: str, step: dict | None = None) -> tuple[Path, Path]:
    """`<doc_id>/<prompt>.md`; a split document's parts and merge steps beside it as
    `<prompt>.part-03.md` and `<prompt>.merge-01.md` (the final combined report is `<prompt>.md`)."""
    folder = reports_dir / doc_id  # doc_id is a slug we made: inbox names never pick the path
    stem = prompt
    if step and step.get("role") in ("part", "merge"):
        stem += f".{step['role']}-{step['index']:02d}"
    return folder / f"{stem}.md", folder / f"{stem}.json"


def request_meta(request: dict[str, Any]) -> dict[str, Any] | None:
    return json.loads(request["meta"]) if request.get("meta") else None


def _coverage(step: dict[str, Any]) -> str:
    """Said by us, not left to the model: what each part of a split document covered."""
    lines = [f"> **Combined report.** The document was too long to read at once; it was read in "
             f"{len(step['leaf_covers'])} parts whose reports were combined into this one:"]
    lines += [f"> - Part {i}: {covers}" for i, covers in enumerate(step["leaf_covers"], 1)]
    return "\n".join(lines) + "\n\n"


def outcome_cost(outcome: Outcome) -> float:
    if outcome.result_type != "succeeded" or not outcome.model:
        return 0.0  # errored, canceled and expired requests are not billed
    return batch_cost_usd(get_model(outcome.model), outcome.input_tokens, outcome.output_tokens,
                          outcome.cache_creation_tokens, outcome.cache_read_tokens)


def banner(outcome: Outcome, max_tokens: int) -> str:
    if outcome.refused:
        return ("> **Refused.** The model declined to write this report (stop reason `refusal`). "
                "What follows is all it returned.\n\n")
    if outcome.stop_reason == "max_tokens":
        return (f"> **Incomplete report.** The output stopped at the max_tokens limit "
                f"({max_tokens:,} tokens) before the model finished.\n\n")
    if outcome.stop_reason == "model_context_window_exceeded":
        return ("> **Incomplete report.** The output stopped because input and output together filled "
                "the model's context window (stop reason `model_context_window_exceeded`).\n\n")
    return ""


def write_report(reports_dir: Path, outcome: Outcome, ctx: ReportContext) -> Path:
    req = ctx.request
    step = request_meta(req)
    md_path, json_path = report_paths(reports_dir, req["doc_id"], req["prompt"], step)
    meta: dict[str, Any] = {
        "status": "refused" if outcome.refused else "truncated" if outcome.truncated else "complete",
        "source": req["source"],
        "source_sha256": req["sha256"],
        "doc_id": req["doc_id"],
        "prompt": req["prompt"],
        "model": outcome.model or req["model"],
        "max_tokens": req["max_tokens"],
        "betas": [b for b in req["betas"].split(",") if b],
        "batch_id": ctx.batch_api_id,
        "ledger_batch_id": ctx.batch_local_id,
        "custom_id": outcome.custom_id,
        "request_fingerprint": req["fingerprint"],
        "message_id": outcome.message_id,
        "attempt": ctx.attempt,
        "stop_reason": outcome.stop_reason,
        "truncated": outcome.truncated,
        "refused": outcome.refused,
        "usage": {
            "input_tokens": outcome.input_tokens,
            "output_tokens": outcome.output_tokens,
            "cache_creation_input_tokens": outcome.cache_creation_tokens,
            "cache_read_input_tokens": outcome.cache_read_tokens,
        },
        "cost_usd": round(outcome_cost(outcome), 6),
        "timings": {
            "submitted_at": _iso(ctx.submitted_at),
            "ended_at": _iso(ctx.ended_at),
            "report_written_at": _iso(time.time()),
            "batch_seconds": round(ctx.ended_at - ctx.submitted_at, 1) if ctx.ended_at and ctx.submitted_at else None,
        },
    }
    header = ""
    meta["pdf_mode"] = (step or {}).get("pdf_mode", "text") if req["source"].lower().endswith(".pdf") else None
    if step and step["role"] != "whole":
        meta["split"] = step  # a part: which one and its span; a combining step: the reports it combined
        if step["role"] == "final":
            header = _coverage(step)
    # The Markdown first, then the JSON: a present .json always has its report beside it.
    atomic_write_text(md_path, header + banner(outcome, req["max_tokens"]) + outcome.text)
    atomic_write_text(json_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return md_path


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


SUMMARY_COLUMNS = [
    "source", "prompt", "status", "reason", "model", "doc_id", "kind", "pages", "chars", "parts",
    "est_input_tokens", "granted_max_tokens", "est_max_cost_usd", "input_tokens", "output_tokens",
    "cost_usd", "stop_reason", "attempts", "batch_id", "report",
]


INT_COLUMNS = ["pages", "chars", "parts", "est_input_tokens", "granted_max_tokens", "input_tokens", "output_tokens", "attempts"]


def summary_rows(ledger: Ledger, data_dir: Path) -> list[dict[str, Any]]:
    """One row per document and prompt of the latest plan, with where its work stands."""
    rows = []
    for plan in ledger.plan():
        data = json.loads(plan["data"])
        row = {
            "source": plan["source"], "prompt": plan["prompt"], "status": plan["status"], "reason": plan["reason"],
            "model": plan["model"], "doc_id": plan["doc_id"], "kind": data.get("kind"), "pages": data.get("pages"),
            "chars": data.get("chars"), "est_input_tokens": data.get("est_input_tokens"),
            "granted_max_tokens": data.get("granted_max_tokens"), "est_max_cost_usd": data.get("max_cost_usd"),
            "parts": data.get("parts"),
        }
        if plan["fingerprint"]:
            row.update(_request_status(ledger, plan["fingerprint"], data_dir))
        elif data.get("reduction"):
            row.update(_split_status(ledger, data, data_dir))
        rows.append(row)
    return rows


def _split_status(ledger: Ledger, data: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """A split document: the final step's status and report, with the tokens and cost of every
    part and step together."""
    steps = ledger.reductions_of(data["reduction"])
    final = next((s for s in steps if s["key"] == data["reduction"]), None)
    if final is None:
        return {"status": "planned"}
    fingerprints = list(data.get("part_fingerprints") or []) + [s["fingerprint"] for s in steps if s["fingerprint"]]
    requests = ledger.requests_by_fingerprint(fingerprints)
    billed = [r for r in (ledger.latest_result(fp) for fp in fingerprints) if r is not None]
    totals = {"input_tokens": sum(r["input_tokens"] or 0 for r in billed),
              "output_tokens": sum(r["output_tokens"] or 0 for r in billed),
              "cost_usd": round(sum(r["cost_usd"] or 0.0 for r in billed), 6),
              "attempts": max((r["attempts"] for r in requests.values()), default=0)}
    if final["state"] == "failed":
        return {**totals, "status": "failed", "reason": f"split document: {final['error']}"}
    if final["state"] == "built":
        out = _request_status(ledger, final["fingerprint"], data_dir)
        return {**out, **totals} if out.get("status") != "planned" else out
    parts = [requests.get(fp) for fp in data.get("part_fingerprints") or []]
    done = sum(1 for p in parts if p and p["state"] == "succeeded")
    failed = [p for p in parts if p and p["state"] == "failed"]
    if failed:  # the step is failed at the next collect; say so already
        return {**totals, "status": "failed", "reason": f"part {failed[0]['custom_id']} failed: "
                f"{failed[0]['error_type']}: {failed[0]['error_message']}"}
    stage = "parts" if done < len(parts) else "combining"
    return {**totals, "status": "pending",
            "reason": f"{stage}: {done} of {len(parts)} part report(s) done"}


def _request_status(ledger: Ledger, fingerprint: str, data_dir: Path) -> dict[str, Any]:
    req = ledger.request(fingerprint)
    if req is None:
        return {"status": "planned"}
    out: dict[str, Any] = {"attempts": req["attempts"]}
    result = ledger.latest_result(fingerprint)
    if result is not None:
        out.update(input_tokens=result["input_tokens"], output_tokens=result["output_tokens"],
                   cost_usd=round(result["cost_usd"] or 0.0, 6), stop_reason=result["stop_reason"],
                   batch_id=result["batch_id"])
        if result["report_path"]:
            out["report"] = Path(result["report_path"]).relative_to(data_dir).as_posix() \
                if Path(result["report_path"]).is_relative_to(data_dir) else result["report_path"]
    state = req["state"]
    if state == "succeeded" and result is not None:
        if result["stop_reason"] == "refusal":
            out.update(status="refused", reason="the model refused (stop reason refusal)")
        elif result["truncated"]:
            out.update(status="truncated", reason=f"output stopped early: {result['stop_reason']}")
        else:
            out.update(status="complete", reason=None)
    elif state == "failed":
        out.update(status="failed", reason=f"{req['error_type']}: {req['error_message']}")
    else:  # queued, submitting, submitted, retryable
        out.update(status="pending", reason=f"request {state}")
    return out


def write_summary(ledger: Ledger, data_dir: Path) -> Path:
    path = data_dir / "reports" / "summary.csv"
    frame = pd.DataFrame(summary_rows(ledger, data_dir), columns=SUMMARY_COLUMNS)
    for column in INT_COLUMNS:
        frame[column] = frame[column].astype("Int64")  # blanks stay blank, numbers stay whole
    atomic_write_text(path, csv_text(frame))  # one row per line, whatever the text holds
    return path
