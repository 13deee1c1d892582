"""Stage 6 — reports: one Markdown report and its JSON metadata per document and prompt, and
`summary.csv` with a row for every document and prompt, failures included.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longbatch.cache import batch_cost_usd as cached_cost_usd
from longbatch.cache import cache_figures, saving_usd
from longbatch.catalog import get_model
from longbatch.fsutil import atomic_write_text, csv_text, slugify
from longbatch.ledger import Ledger
from longbatch.piece import Piece, PieceKind, StepLinks, stored_meta
from longbatch.records import CANCELED_BY_USER, PlanRecord, RequestRecord, RequestState, ResultRecord, StepState
from tasks.results import Outcome


@dataclass(frozen=True)
class ReportContext:
    """What the ledger knows about the request and batch an outcome belongs to."""
    request: RequestRecord
    attempt: int
    batch_local_id: str
    batch_api_id: str
    submitted_at: float | None
    ended_at: float | None


def report_paths(reports_dir: Path, doc_id: str, model: str, prompt: str,
                 piece: Piece = Piece()) -> tuple[Path, Path]:
    """`<doc_id>/<model>/<prompt>.md`: one folder per document and model, so a report paid for
    with one model is never overwritten by another's. A split document's parts and merge steps
    sit beside its report as `<prompt>.part-03.md` and `<prompt>.merge-01.md`."""
    # doc_id is a slug we made and model ids are the catalogue's: inbox names never pick the path.
    folder = reports_dir / doc_id / slugify(model, 64)
    stem = piece.report_stem(prompt)
    return folder / f"{stem}.md", folder / f"{stem}.json"


def _coverage(links: StepLinks) -> str:
    """Said by us, not left to the model: what each part of a split document covered."""
    lines = [f"> **Combined report.** The document was too long to read at once; it was read in "
             f"{len(links.leaf_covers)} parts whose reports were combined into this one:"]
    lines += [f"> - Part {i}: {covers}" for i, covers in enumerate(links.leaf_covers, 1)]
    return "\n".join(lines) + "\n\n"


def outcome_cost(outcome: Outcome) -> float:
    if outcome.result_type != "succeeded" or not outcome.model:
        return 0.0  # errored, canceled and expired requests are not billed
    return cached_cost_usd(get_model(outcome.model), outcome.usage)


def cache_summary(outcome: Outcome) -> dict[str, float]:
    """What prompt caching did for this request: the share of its input read from the cache,
    and the dollars saved against the same request uncached (negative: a write not yet read)."""
    usage = outcome.usage
    saved = saving_usd(get_model(outcome.model), usage) if outcome.model else 0.0
    return {"hit_rate": round(usage.hit_rate, 4), "saving_usd": round(saved, 6)}


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


def write_report(reports_dir: Path, outcome: Outcome, ctx: ReportContext, durable: bool = True) -> Path:
    """The report's Markdown and JSON. `durable=False`: no fsync; the caller makes them durable
    (`sync_filesystem`) before recording them in the ledger."""
    req = ctx.request
    md_path, json_path = report_paths(reports_dir, req.doc_id, req.model, req.prompt, req.piece)
    meta: dict[str, Any] = {
        "status": "refused" if outcome.refused else "truncated" if outcome.truncated else "complete",
        "source": req.source,
        "source_sha256": req.sha256,
        "doc_id": req.doc_id,
        "prompt": req.prompt,
        "model": outcome.model or req.model,
        "max_tokens": req.max_tokens,
        "betas": list(req.betas),
        "batch_id": ctx.batch_api_id,
        "ledger_batch_id": ctx.batch_local_id,
        "custom_id": outcome.custom_id,
        "request_fingerprint": req.fingerprint,
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
            "cache_creation": {"ephemeral_5m_input_tokens": outcome.usage.cache_write_5m,
                               "ephemeral_1h_input_tokens": outcome.usage.cache_write_1h},
        },
        "cost_usd": round(outcome_cost(outcome), 6),
        "cache": cache_summary(outcome),
        "timings": {
            "submitted_at": _iso(ctx.submitted_at),
            "ended_at": _iso(ctx.ended_at),
            "report_written_at": _iso(time.time()),
            "batch_seconds": round(ctx.ended_at - ctx.submitted_at, 1) if ctx.ended_at and ctx.submitted_at else None,
        },
    }
    header = ""
    meta["pdf_mode"] = req.piece.pdf_mode if req.source.lower().endswith(".pdf") else None
    if req.piece.kind != PieceKind.WHOLE:
        # A part: which one and its span; a combining step: the reports it combined.
        meta["split"] = stored_meta(req.piece, req.links)
        if req.piece.kind == PieceKind.FINAL and req.links is not None:
            header = _coverage(req.links)
    # The Markdown first, then the JSON: a present .json always has its report beside it.
    atomic_write_text(md_path, header + banner(outcome, req.max_tokens) + outcome.text, durable)
    atomic_write_text(json_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n", durable)
    return md_path


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


SUMMARY_COLUMNS = [
    "source", "prompt", "status", "reason", "model", "doc_id", "kind", "pages", "chars", "parts",
    "est_input_tokens", "granted_max_tokens", "est_max_cost_usd", "input_tokens", "output_tokens",
    "cost_usd", "cache_hit_rate", "cache_saving_usd", "stop_reason", "attempts", "batch_id", "report",
]


INT_COLUMNS = ["pages", "chars", "parts", "est_input_tokens", "granted_max_tokens", "input_tokens", "output_tokens", "attempts"]


def summary_rows(ledger: Ledger, data_dir: Path) -> list[dict[str, Any]]:
    """One row per document and prompt of the latest plan, with where its work stands."""
    rows = []
    records = ledger.plan()
    # Every document's request and latest result in a few queries, not two per document.
    wanted = [rec.fingerprint for rec in records if rec.fingerprint]
    requests, latest = ledger.requests_by_fingerprint(wanted), ledger.latest_results(wanted)
    for rec in records:
        plan = rec.row
        row = {
            "source": plan.source, "prompt": plan.prompt, "status": str(plan.status), "reason": plan.reason,
            "model": plan.model, "doc_id": plan.doc_id, "kind": plan.kind, "pages": plan.pages, "chars": plan.chars,
            "est_input_tokens": plan.est_input_tokens, "granted_max_tokens": plan.granted_max_tokens,
            "est_max_cost_usd": plan.max_cost_usd, "parts": plan.parts,
        }
        if rec.fingerprint:
            row.update(_request_status(requests.get(rec.fingerprint), latest.get(rec.fingerprint), data_dir))
        elif plan.reduction:
            row.update(_split_status(ledger, rec, data_dir))
        rows.append(row)
    return rows


def _split_status(ledger: Ledger, rec: PlanRecord, data_dir: Path) -> dict[str, Any]:
    """A split document: the final step's status and report, with the tokens and cost of every
    part and step together."""
    steps = ledger.reductions_of(rec.row.reduction or "")
    final = next((s for s in steps if s.key == rec.row.reduction), None)
    if final is None:
        return {"status": "planned"}
    fingerprints = list(rec.part_fingerprints) + [s.fingerprint for s in steps if s.fingerprint]
    requests = ledger.requests_by_fingerprint(fingerprints)
    billed = [r for r in (ledger.latest_result(fp) for fp in fingerprints) if r is not None]
    totals = {"input_tokens": sum(r.input_tokens or 0 for r in billed),
              "output_tokens": sum(r.output_tokens or 0 for r in billed),
              "cost_usd": round(sum(r.cost_usd or 0.0 for r in billed), 6),
              "attempts": max((r.attempts for r in requests.values()), default=0),
              **_cache_columns(rec.row.model, billed)}
    if final.state == StepState.FAILED:
        return {**totals, "status": "failed", "reason": f"split document: {final.error}"}
    if final.state == StepState.BUILT:
        out = _request_status(ledger.request(final.fingerprint or ""), ledger.latest_result(final.fingerprint or ""),
                              data_dir)
        return {**out, **totals} if out.get("status") != "planned" else out
    parts = [requests.get(fp) for fp in rec.part_fingerprints]
    done = sum(1 for p in parts if p and p.state == RequestState.SUCCEEDED)
    failed = [p for p in parts if p and p.state == RequestState.FAILED]
    if failed:  # the step is failed at the next collect; say so already
        return {**totals, "status": "failed", "reason": f"part {failed[0].custom_id} failed: "
                f"{failed[0].error_type}: {failed[0].error_message}"}
    stage = "parts" if done < len(parts) else "combining"
    return {**totals, "status": "pending",
            "reason": f"{stage}: {done} of {len(parts)} part report(s) done"}


def _request_status(req: RequestRecord | None, result: ResultRecord | None, data_dir: Path) -> dict[str, Any]:
    """A request's row of summary.csv, from the request and its latest result."""
    if req is None:
        return {"status": "planned"}
    out: dict[str, Any] = {"attempts": req.attempts}
    if result is not None:
        out.update(input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                   cost_usd=round(result.cost_usd or 0.0, 6), stop_reason=result.stop_reason,
                   batch_id=result.batch_id, **_cache_columns(req.model, [result]))
        if result.report_path:
            out["report"] = _shown_path(result.report_path, data_dir)
    if req.state == RequestState.SUCCEEDED and result is not None:
        if result.stop_reason == "refusal":
            out.update(status="refused", reason="the model refused (stop reason refusal)")
        elif result.truncated:
            out.update(status="truncated", reason=f"output stopped early: {result.stop_reason}")
        else:
            out.update(status="complete", reason=None)
    elif req.state == RequestState.FAILED and req.error_type == CANCELED_BY_USER:
        out.update(status="canceled", reason=req.error_message)
    elif req.state == RequestState.FAILED:
        out.update(status="failed", reason=f"{req.error_type}: {req.error_message}")
    else:  # queued, submitting, submitted, retryable
        out.update(status="pending", reason=f"request {req.state}")
    return out


def _shown_path(report_path: str, data_dir: Path) -> str:
    """A report's path as summary.csv shows it: from the data dir when under it. Paths are
    recorded as `str(Path)`: a plain prefix test spares two Path objects a row; anything it
    does not settle is left to pathlib."""
    prefix = f"{data_dir}{os.sep}"
    if report_path.startswith(prefix):
        return report_path[len(prefix):].replace(os.sep, "/")
    path = Path(report_path)
    return path.relative_to(data_dir).as_posix() if path.is_relative_to(data_dir) else str(path)


def _cache_columns(model: str, results: list) -> dict[str, Any]:
    hit_rate, saved = cache_figures(model, results)
    return {"cache_hit_rate": None if hit_rate is None else round(hit_rate, 4), "cache_saving_usd": round(saved, 6)}


def summary_csv_path(data_dir: Path) -> Path:
    return data_dir / "reports" / "summary.csv"


def write_summary(ledger: Ledger, data_dir: Path) -> Path:
    import pandas as pd  # here, not at import: see flows/artifacts.py

    path = summary_csv_path(data_dir)
    frame = pd.DataFrame(summary_rows(ledger, data_dir), columns=SUMMARY_COLUMNS)
    for column in INT_COLUMNS:
        frame[column] = frame[column].astype("Int64")  # blanks stay blank, numbers stay whole
    atomic_write_text(path, csv_text(frame))  # one row per line, whatever the text holds
    return path
