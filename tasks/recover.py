"""Recovery from a lost ledger: the reports on disk say what was paid for.

Each report's JSON holds its request's fingerprint, custom_id, batch, usage and cost. When a
run opens a ledger that has no record of any request while reports/ holds reports (the ledger
file was deleted, or the data dir moved to a new database), those requests are recorded as
succeeded from their JSON, so the plan finds them known and nothing is sent again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from longbatch.ledger import Ledger
from longbatch.piece import Piece, StepLinks
from longbatch.records import NewRequest, ResultRecord

log = logging.getLogger(__name__)


def recover_from_reports(ledger: Ledger, data_dir: Path) -> int:
    """Record the requests behind the reports in `data_dir/reports` in an empty ledger; returns
    how many. A JSON file that is not a report's (or is damaged) is passed over."""
    reports = data_dir / "reports"
    if not reports.is_dir() or ledger.request_count():
        return 0
    recovered = 0
    for path in sorted(reports.rglob("*.json")):
        found = _from_report(path)
        if found is not None and ledger.record_recovered(*found):
            recovered += 1
    if recovered:
        log.warning("The ledger %s had no record of the %d report(s) in %s (was it deleted?): their requests are "
                    "recorded from the reports' JSON and will not be sent again.", ledger.url.split("/")[-1],
                    recovered, reports)
    return recovered


def _from_report(path: Path) -> tuple[NewRequest, ResultRecord] | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        split = meta.get("split")
        request = NewRequest(
            meta["request_fingerprint"], meta["custom_id"], meta["doc_id"], meta["source"], meta["source_sha256"],
            meta["prompt"], meta["model"], int(meta["max_tokens"]), tuple(meta["betas"]),
            Piece.from_meta(split) if split else Piece(pdf_mode=meta.get("pdf_mode") or "text"),
            StepLinks.from_meta(split))
        usage = meta["usage"]
        result = ResultRecord(
            meta["batch_id"], meta["custom_id"], meta["request_fingerprint"], int(meta["attempt"]), "succeeded",
            meta.get("stop_reason"), bool(meta.get("truncated")), usage["input_tokens"], usage["output_tokens"],
            usage.get("cache_creation_input_tokens") or 0, usage.get("cache_read_input_tokens") or 0,
            float(meta["cost_usd"]), message_id=meta.get("message_id"), report_path=str(path.with_suffix(".md")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not path.with_suffix(".md").is_file():
        return None
    return request, result
