"""Stage 5/6 glue — collect an ended batch: archive its results, record each outcome in the
ledger, write reports, and decide what may be retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import anthropic

from longbatch.failpoints import failpoint
from longbatch.ledger import Ledger
from longbatch.records import MISSING_RESULT, BatchRecord, RequestState, ResultRecord
from tasks.batches import download_results
from tasks.reports import ReportContext, outcome_cost, write_report
from tasks.results import read_outcomes

log = logging.getLogger(__name__)


@dataclass
class CollectStats:
    batch_id: str
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


def collect_batch(client: anthropic.Anthropic, ledger: Ledger, record: BatchRecord, data_dir: Path) -> CollectStats:
    assert record.api_id is not None
    stats = CollectStats(record.api_id)
    archive = download_results(client, record.api_id, data_dir / "results")
    members = ledger.members(record.id)
    seen: set[str] = set()
    for outcome in read_outcomes(archive):
        member = members.get(outcome.custom_id)
        if member is None:
            log.warning("batch %s returned an unknown custom_id %r; ignored", record.api_id, outcome.custom_id)
            continue
        seen.add(outcome.custom_id)
        fingerprint, attempt = member
        if ledger.has_result(record.api_id, outcome.custom_id):
            stats.add("already_recorded")  # a resumed collect: this one was done before the stop
            continue
        request = ledger.request(fingerprint)
        assert request is not None
        report_path = None
        if outcome.result_type == "succeeded":
            ctx = ReportContext(request, attempt, record.id, record.api_id, record.created_at, record.ended_at)
            report_path = str(write_report(data_dir / "reports", outcome, ctx))
            failpoint("after-report")
            state = RequestState.SUCCEEDED
        else:
            state = RequestState.RETRYABLE if outcome.retryable else RequestState.FAILED
        ledger.record_result(
            ResultRecord(record.api_id, outcome.custom_id, fingerprint, attempt, outcome.result_type,
                         outcome.stop_reason, outcome.truncated, outcome.input_tokens, outcome.output_tokens,
                         outcome.cache_creation_tokens, outcome.cache_read_tokens, outcome_cost(outcome),
                         outcome.error_type, outcome.error_message, outcome.message_id, report_path),
            state,
            (outcome.error_type or (outcome.result_type if state != RequestState.SUCCEEDED else None),
             outcome.error_message if state != RequestState.SUCCEEDED else None),
        )
        stats.add(outcome.result_type)
        failpoint("mid-results")
    if record.adopted and not seen:
        # An adopted batch holding none of our custom_ids was a wrong match: say so loudly; its
        # requests are treated as never sent (they are retried below).
        log.error("batch %s, adopted after an unconfirmed create, holds none of our requests", record.api_id)
    for custom_id in set(members) - seen:
        # The API promises a line per request; if one is missing, the request may be retried.
        fingerprint, _ = members[custom_id]
        ledger.set_request_state([fingerprint], RequestState.RETRYABLE, MISSING_RESULT,
                                 f"batch {record.api_id} returned no result for it")
        stats.add("missing")
    ledger.mark_collected(record.id)
    failpoint("after-collected")
    return stats


def settle_retries(ledger: Ledger, max_attempts: int) -> list[str]:
    """Requeue retryable requests that have attempts left; fail the rest with their last
    error. Returns the fingerprints requeued."""
    requeued = []
    for req in ledger.requests_in_state(RequestState.RETRYABLE):
        if req.attempts < max_attempts:
            if ledger.requeue(req.fingerprint, RequestState.RETRYABLE):
                requeued.append(req.fingerprint)
        else:
            ledger.set_request_state(
                [req.fingerprint], RequestState.FAILED, req.error_type,
                f"gave up after {req.attempts} attempts; last: {req.error_message}")
    return requeued
