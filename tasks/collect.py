"""Stage 5/6 glue — collect an ended batch: archive its results, record each outcome in the
ledger, write reports, and decide what may be retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import anthropic

from longbatch.failpoints import failpoint
from longbatch.fsutil import sync_filesystem
from longbatch.ledger import Ledger
from longbatch.records import MISSING_RESULT, BatchRecord, RequestState, ResultRecord, ResultWrite
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


# Results recorded per transaction while collecting: a batch of 10,000 is ten commits, not
# 10,000; a crash loses at most the chunk in flight, whose reports are rewritten on the rerun.
RESULTS_PER_COMMIT = 1_000


def collect_batch(client: anthropic.Anthropic, ledger: Ledger, record: BatchRecord, data_dir: Path) -> CollectStats:
    assert record.api_id is not None
    stats = CollectStats(record.api_id)
    archive = download_results(client, record.api_id, data_dir / "results")
    members = ledger.members(record.id)
    done = ledger.recorded_custom_ids(record.api_id)  # a resumed collect: recorded before the stop
    requests = ledger.requests_by_fingerprint(sorted({fp for fp, _ in members.values()}))
    reports_dir = data_dir / "reports"
    seen: set[str] = set()
    pending: list[ResultWrite] = []
    # The first result is committed alone: a stop right after leaves the batch partly recorded,
    # the case a resumed collect must handle, and the mid-results failpoint proves it does.
    limit = 1
    for outcome in read_outcomes(archive):
        member = members.get(outcome.custom_id)
        if member is None:
            log.warning("batch %s returned an unknown custom_id %r; ignored", record.api_id, outcome.custom_id)
            continue
        seen.add(outcome.custom_id)
        fingerprint, attempt = member
        if outcome.custom_id in done:
            stats.add("already_recorded")
            continue
        done.add(outcome.custom_id)
        request = requests[fingerprint]
        report_path = None
        if outcome.result_type == "succeeded":
            ctx = ReportContext(request, attempt, record.id, record.api_id, record.created_at, record.ended_at)
            # Not synced one by one: _record syncs the reports' filesystem once before recording them.
            report_path = str(write_report(reports_dir, outcome, ctx, durable=False))
            failpoint("after-report")
            state = RequestState.SUCCEEDED
        else:
            state = RequestState.RETRYABLE if outcome.retryable else RequestState.FAILED
        failed = state != RequestState.SUCCEEDED
        pending.append(ResultWrite(
            ResultRecord(record.api_id, outcome.custom_id, fingerprint, attempt, outcome.result_type,
                         outcome.stop_reason, outcome.truncated, outcome.input_tokens, outcome.output_tokens,
                         outcome.cache_creation_tokens, outcome.cache_read_tokens, outcome_cost(outcome),
                         outcome.error_type, outcome.error_message, outcome.message_id, report_path),
            state, outcome.error_type or (outcome.result_type if failed else None),
            outcome.error_message if failed else None))
        if len(pending) >= limit:
            _record(ledger, pending, stats, data_dir)
            pending, limit = [], RESULTS_PER_COMMIT
            failpoint("mid-results")
    _record(ledger, pending, stats, data_dir)
    if record.adopted and not seen:
        # An adopted batch holding none of our custom_ids was a wrong match: say so loudly; its
        # requests are treated as never sent (they are retried below).
        log.error("batch %s, adopted after an unconfirmed create, holds none of our requests", record.api_id)
    missing = sorted(set(members) - seen)
    if missing:  # the API promises a line per request; if one is missing, the request may be retried
        ledger.set_request_state([members[custom_id][0] for custom_id in missing], RequestState.RETRYABLE,
                                 MISSING_RESULT, f"batch {record.api_id} returned no result for it")
        stats.counts["missing"] = len(missing)
    ledger.mark_collected(record.id)
    failpoint("after-collected")
    return stats


def _record(ledger: Ledger, writes: list[ResultWrite], stats: CollectStats, data_dir: Path) -> None:
    """Record results, their reports on disk first (one syncfs for the chunk, not an fsync per
    file); a result another process recorded first (collecting the same batch) is theirs."""
    if any(w.result.report_path for w in writes):
        sync_filesystem(data_dir / "reports")
    recorded = ledger.record_results(writes)
    for w in writes:
        stats.add(w.result.result_type if w.result.custom_id in recorded else "already_recorded")


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
