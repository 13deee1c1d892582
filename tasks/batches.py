"""Stage 4 — batches on the API: submit (exactly once), wait (with backoff and a deadline),
download results (streamed to a local archive). The only stage that touches the network.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
from anthropic.types.beta.messages import BetaMessageBatch

from longbatch.api_errors import api_url, auth_failed, never_connected, unreachable, without_key, wrapped
from longbatch.client import create_client
from longbatch.errors import ApiResponseError, IncompleteDownloadError, WaitTimeoutError
from longbatch.failpoints import failpoint
from longbatch.ledger import Ledger
from longbatch.records import NOT_REBUILDABLE, BatchRecord, BatchState, RequestState
from longbatch.redact import redact, redact_file
from longbatch.transient import is_transient, tolerate_transient
from tasks.batch_body import BatchBody, Render, render_planned
from tasks.packing import BatchPlan

log = logging.getLogger(__name__)

# A batch can answer 404 for a few seconds right after create.
NOT_FOUND_GRACE_SECONDS = 120.0
# How far apart our intent and the server's created_at may be when matching an unknown create.
RECOVERY_WINDOW_SECONDS = 900.0
CREATE_RATE_LIMIT_TRIES = 5
DOWNLOAD_TRIES = 5
# While a create sends its body (256 MB on a slow link can take longer than any grace period),
# it refreshes its intent this often, so no other run takes a live create for an abandoned one.
INTENT_REFRESH_SECONDS = 30.0


class IntentTakenOver(Exception):
    """Another run took this create's intent for one a dead process left (it was not refreshed
    in time: the process was suspended, or stalled): the upload stops before its body is whole,
    so no batch is made and the other run's recovery decides what happens to its requests."""


@dataclass(frozen=True)
class SubmitOutcome:
    local_id: str
    api_id: str | None
    state: str  # submitted | failed | unknown | skipped
    error: str | None = None


def submit_batch(client: anthropic.Anthropic, ledger: Ledger, plan: BatchPlan, render: Render = render_planned,
                 spool_dir: Path | None = None) -> SubmitOutcome:
    """Render the batch's requests to a spool file (`render`: lean requests are rendered again
    from their documents; one that no longer renders the same fails with the reason), record
    the intent, then create the batch once, streaming its body from the spool. A create whose
    outcome is unknown (timeout, dropped connection, 5xx) is never blindly repeated: it is left
    `unknown` for `recover_unknown_batches` to find on the server."""
    with BatchBody.write(plan.requests, render, spool_dir) as body:
        for fingerprint, reason in body.failed.items():
            # Only if still queued: a concurrent run may have sent it (rendered before a change).
            ledger.set_request_state([fingerprint], RequestState.FAILED, NOT_REBUILDABLE, reason,
                                     only_from=RequestState.QUEUED)
        members = [(r.custom_id, r.fingerprint) for r in plan.requests if r.custom_id in body.lines]
        if not members:
            return SubmitOutcome("", None, "skipped", "no request of this batch could be rendered")
        local_id, won = ledger.record_intent(plan.betas, members)
        if not won:
            return SubmitOutcome(local_id, None, "skipped", "another run submitted these requests")
        mine = set(won)
        return _create(client, ledger, plan.betas, local_id, body, [cid for cid, _ in members if cid in mine])


def _create(client: anthropic.Anthropic, ledger: Ledger, betas: tuple[str, ...], local_id: str, body: BatchBody,
            custom_ids: list[str]) -> SubmitOutcome:
    failpoint("before-create")
    creator = create_client(client)
    # The body streams from the spool; its length is given, so it goes as one sized body, as
    # the SDK's own `batches.create` sends it (which would first build it in memory, twice).
    headers = {"Content-Length": str(body.size(custom_ids))} | ({"anthropic-beta": ",".join(betas)} if betas else {})
    for attempt in range(1, CREATE_RATE_LIMIT_TRIES + 1):
        try:
            content = _kept_alive(body.stream(custom_ids), ledger, local_id)
            created = creator.post("/v1/messages/batches", cast_to=BetaMessageBatch, content=content,
                                   options={"headers": headers})
        except anthropic.RateLimitError as exc:
            # 429 is an answer, not a doubt: the batch was not made, so asking again is safe.
            if attempt == CREATE_RATE_LIMIT_TRIES:
                return _failed(ledger, local_id, f"rate limited {attempt} times: {exc.message}")
            time.sleep(_retry_after(exc, attempt))
            continue
        except anthropic.APIStatusError as exc:
            if exc.status_code >= 500:
                return _unknown(ledger, local_id, f"HTTP {exc.status_code}: {exc.message}")
            outcome = _failed(ledger, local_id, f"HTTP {exc.status_code}: {exc.message}")
            if exc.status_code in (401, 403):
                raise auth_failed(exc) from None  # every further call would be refused the same way
            return outcome
        except anthropic.APIResponseValidationError as exc:
            _unknown(ledger, local_id, f"unreadable answer to create: {exc.message}")
            raise _unreadable_create(client) from None
        except anthropic.APIConnectionError as exc:
            taken = wrapped(exc, IntentTakenOver)  # what stopped the upload, if it was that
            if taken is not None:
                # The upload stopped short: nothing was made. The intent is the other run's now.
                log.warning("%s", taken)
                return SubmitOutcome(local_id, None, "skipped", str(taken))
            if never_connected(exc):
                # Nothing left this machine: a plain failure (the requests go again next run), and
                # no point trying the next batch.
                _failed(ledger, local_id, f"connection never opened: {type(exc.__cause__ or exc).__name__}")
                raise unreachable(client, exc) from None
            return _unknown(ledger, local_id, f"connection failed: {type(exc).__name__}")
        confirmed = _created_fields(created)
        if confirmed is None:
            # A 200 whose body is not a batch: the batch may well exist. Exactly-once allows one
            # reading only: an unknown outcome, looked up on the server, never resent blindly.
            _unknown(ledger, local_id, "unreadable answer to create: no batch id or creation time")
            raise _unreadable_create(client)
        api_id, created_at = confirmed
        failpoint("after-create")
        ledger.record_created(local_id, api_id, created_at)
        failpoint("after-create-recorded")
        log.info("submitted batch %s: %d requests, %s bytes%s", api_id, len(custom_ids),
                 f"{body.size(custom_ids):,}", f" (betas: {', '.join(betas)})" if betas else "")
        return SubmitOutcome(local_id, api_id, "submitted")
    raise AssertionError("unreachable")


def _kept_alive(pieces: Iterator[bytes], ledger: Ledger, local_id: str) -> Iterator[bytes]:
    """The body's pieces, refreshing the intent every INTENT_REFRESH_SECONDS of sending; stops
    with IntentTakenOver (before the piece that would follow) when it is no longer ours. Wall
    time, not monotonic: a machine asleep mid-upload has to notice the time it was away."""
    refreshed = time.time()
    for piece in pieces:
        if time.time() - refreshed >= INTENT_REFRESH_SECONDS:
            if not ledger.refresh_intent(local_id):
                raise IntentTakenOver(
                    f"batch {local_id}: another run took this create for an abandoned one while its body was being "
                    "sent; stopped before the body was whole, so no batch was made")
            refreshed = time.time()
        yield piece


def _created_fields(created: Any) -> tuple[str, float] | None:
    """(batch id, creation time) from create's answer, or None when the answer lacks them (the
    SDK does not validate answers: a foreign body becomes an object with missing fields)."""
    api_id = getattr(created, "id", None)
    created_at = getattr(created, "created_at", None)
    if not isinstance(api_id, str) or not api_id or not hasattr(created_at, "timestamp"):
        return None
    return api_id, created_at.timestamp()


def _unreadable_create(client: anthropic.Anthropic) -> ApiResponseError:
    return ApiResponseError(
        f"The API at {api_url(client)} answered a batch create with something that is not a batch. The batch "
        "may have been made, so it is recorded as unconfirmed: `longbatch collect` (or the next run) looks "
        "for it on the server and adopts it, and sends its requests again only if it never appears. "
        "Check ANTHROPIC_BASE_URL points at the Anthropic API."
    )


def _failed(ledger: Ledger, local_id: str, error: str) -> SubmitOutcome:
    error = redact(error) or ""
    ledger.record_create_failed(local_id, error, unknown=False)
    log.error("batch was not created: %s", error)
    return SubmitOutcome(local_id, None, "failed", error)


def _unknown(ledger: Ledger, local_id: str, error: str) -> SubmitOutcome:
    error = redact(error) or ""
    ledger.record_create_failed(local_id, error, unknown=True)
    log.warning("batch create outcome unknown (%s); it will be looked up, never resent blindly", error)
    return SubmitOutcome(local_id, None, "unknown", error)


def _retry_after(exc: anthropic.APIStatusError, attempt: int) -> float:
    header = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return min(float(header), 60.0) if header else min(2.0 ** attempt, 60.0)
    except ValueError:
        return min(2.0 ** attempt, 60.0)


def recover_unknown_batches(client: anthropic.Anthropic, ledger: Ledger, create_grace_seconds: float,
                            results_dir: Path) -> list[str]:
    """Find on the server the batches whose create outcome we never heard, without ever
    guessing wrong:

    * a candidate is a server batch the ledger does not know, created within the recovery
      window after an intent, with the intent's request count;
    * a candidate that has ended is confirmed by its custom_ids (its results are archived and
      compared with the intent's members) and adopted by the intent it matches exactly;
    * a candidate still running is adopted only when the match is unambiguous (one intent, one
      candidate); two intents that could own the same batches wait until the results tell;
    * an intent with no candidate at all, older than `create_grace_seconds`, never reached the
      server: its requests are queued again.

    Returns the adopted API ids."""
    unknown = ledger.batches_in_state(BatchState.UNKNOWN)
    if not unknown:
        return []
    known = ledger.known_api_ids()  # every scope's: another data dir's batch is never ours to adopt
    earliest = min(b.intent_at for b in unknown) - 5.0
    candidates = []
    for server_batch in client.beta.messages.batches.list(limit=100):
        if server_batch.created_at.timestamp() < earliest:
            break  # newest first: everything after this is older than our intents
        if server_batch.id not in known:
            candidates.append(server_batch)

    def fits(record: BatchRecord, batch: Any) -> bool:
        created = batch.created_at.timestamp()
        return (record.intent_at - 5.0 <= created <= record.intent_at + RECOVERY_WINDOW_SECONDS
                and sum(batch.request_counts.to_dict().values()) == record.request_count)

    adopted: list[str] = []

    def adopt(record: BatchRecord, batch: Any) -> None:
        ledger.record_created(record.id, batch.id, batch.created_at.timestamp(), adopted=True)
        adopted.append(batch.id)
        candidates.remove(batch)
        unknown.remove(record)
        log.info("recovered batch %s for an unconfirmed create (no second submission)", batch.id)

    # 1. Ended candidates: their custom_ids decide.
    for batch in [b for b in candidates if b.processing_status == "ended" and any(fits(r, b) for r in unknown)]:
        try:
            archive = download_results(client, batch.id, results_dir)
        except anthropic.NotFoundError:
            # Listed but not yet retrievable: a batch can answer 404 for a few seconds after
            # create. It stays a candidate; the next round looks again.
            log.info("batch %s is listed but not retrievable yet; looking again next round", batch.id)
            continue
        ids = {json.loads(line)["custom_id"] for line in archive.read_bytes().splitlines() if line.strip()}
        owner = next((r for r in unknown if fits(r, batch) and set(ledger.members(r.id)) == ids), None)
        if owner is not None:
            adopt(owner, batch)
        else:
            archive.unlink(missing_ok=True)  # someone else's batch: not ours to keep
    # 2. Running candidates: adopt only a one-to-one match.
    for record in list(unknown):
        mine = [b for b in candidates if fits(record, b)]
        rivals = [r for r in unknown if r is not record and any(fits(r, b) for b in mine)]
        if len(mine) == 1 and not rivals and mine[0].processing_status != "ended":
            adopt(record, mine[0])
    # 3. No candidate at all, after the grace period: the create never happened.
    for record in list(unknown):
        if not any(fits(record, b) for b in candidates) and time.time() - record.intent_at > create_grace_seconds:
            members = ledger.members(record.id)
            ledger.record_create_failed(record.id, "the create never reached the server", unknown=False)
            for fp, _ in members.values():
                ledger.requeue(fp, RequestState.FAILED)
            log.info("an unconfirmed create of %d request(s) never reached the server; queued again",
                     record.request_count)
    return adopted


@dataclass(frozen=True)
class BatchStatus:
    record: BatchRecord
    status: str  # in_progress | canceling | ended | not_visible_yet | unreachable
    counts: dict[str, int]
    ended_at: float | None


def poll_once(client: anthropic.Anthropic, record: BatchRecord) -> BatchStatus:
    assert record.api_id is not None
    try:
        batch = client.beta.messages.batches.retrieve(record.api_id)
    except anthropic.NotFoundError:
        if record.created_at and time.time() - record.created_at < NOT_FOUND_GRACE_SECONDS:
            return BatchStatus(record, "not_visible_yet", {}, None)
        raise
    counts = batch.request_counts.to_dict()
    ended = batch.ended_at.timestamp() if batch.ended_at else None
    return BatchStatus(record, batch.processing_status, counts, ended)


def poll_round(client: anthropic.Anthropic, ledger: Ledger) -> list[BatchStatus]:
    """Look once at every submitted batch and record the ones that ended. A batch that cannot
    be reached now (transient error) is reported `unreachable` and looked at next time."""
    statuses = [tolerate_transient(lambda: poll_once(client, record), BatchStatus(record, "unreachable", {}, None),
                                   f"could not poll batch {record.api_id} this round", log)
                for record in ledger.batches_in_state(BatchState.SUBMITTED)]
    failpoint("while-waiting")
    for st in statuses:
        if st.status == "ended":
            ledger.record_ended(st.record.id, st.ended_at or time.time(), st.counts)
            failpoint("after-ended")
    return statuses


# How late an ended batch may be seen, as a share of the time already waited: a batch that
# took 20 minutes is seen within 2 more, one that took 20 seconds within the first interval.
POLL_LATENESS = 0.1


def poll_interval(waited: float, initial: float, maximum: float) -> float:
    """Seconds to the next look after `waited` seconds: `initial` at first, then a tenth of the
    time waited, never more than `maximum`. A growing interval that multiplied itself each round
    (2, 3, 4.5, 6.75 ...) saw a batch ending at 14 s only at 16.25 s, and one ending at 27 s at
    41.6 s; this keeps that lateness under 10 % for about as many looks over a day (1,477
    against 1,448)."""
    return min(maximum, max(initial, waited * POLL_LATENESS))  # a maximum below initial wins, as it did


def wait_for_batches(
    client: anthropic.Anthropic,
    ledger: Ledger,
    initial: float,
    maximum: float,
    timeout: float,
    on_progress: Callable[[list[BatchStatus]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[BatchStatus]:
    """Poll every submitted batch until all have ended or `timeout` passes, at `poll_interval`."""
    start = clock()
    deadline = start + timeout
    while True:
        statuses = poll_round(client, ledger)
        if on_progress:
            on_progress(statuses)
        if all(st.status == "ended" for st in statuses):
            return statuses
        now = clock()
        interval = poll_interval(now - start, initial, maximum)
        if now + interval > deadline:
            pending = [st.record.api_id for st in statuses if st.status != "ended"]
            raise WaitTimeoutError(
                f"{len(pending)} batch(es) still running after {timeout:.0f} s: {', '.join(map(str, pending))}. "
                "They go on server-side; run `longbatch collect` later to finish the job."
            )
        sleep(interval)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def download_results(client: anthropic.Anthropic, api_id: str, results_dir: Path) -> Path:
    """Stream a batch's results JSONL to `results_dir/<api_id>.jsonl` (through a .part file,
    so a present .jsonl is always complete). The SDK's own line decoder is avoided: it slows
    down sharply on multi-megabyte lines, and a 300K-token report is one such line."""
    final = results_dir / f"{api_id}.jsonl"
    if final.exists():
        return final
    results_dir.mkdir(parents=True, exist_ok=True)
    # A part file of our own: two processes collecting the same batch never share one.
    fd, tmp = tempfile.mkstemp(dir=results_dir, prefix=f".{api_id}.{os.getpid()}.", suffix=".part")
    os.close(fd)
    part = Path(tmp)
    try:
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            try:
                with client.beta.messages.batches.with_streaming_response.results(api_id) as response:
                    expected = int(response.headers.get("content-length") or -1)
                    with part.open("wb") as fh:  # a retry starts the file afresh
                        for chunk in response.iter_bytes(1 << 20):
                            fh.write(chunk)
                            fh.flush()
                            failpoint("mid-download")
                if expected >= 0 and part.stat().st_size != expected:
                    raise IncompleteDownloadError(f"got {part.stat().st_size:,} of {expected:,} bytes")
                # An error message that echoes the key must not be archived with it.
                if redact_file(part):
                    log.warning("results of %s quoted an API key or auth header; archived redacted", api_id)
                break
            except Exception as exc:  # noqa: BLE001 - only transient errors are retried
                if attempt == DOWNLOAD_TRIES or not is_transient(exc):
                    if without_key(exc) is not exc:
                        raise without_key(exc) from None
                    raise
                log.warning("results download of %s failed (%s); retrying", api_id, type(exc).__name__)
                time.sleep(min(2.0 ** attempt, 30.0))
        try:
            os.replace(part, final)
        except FileNotFoundError:
            if not final.exists():  # another collector of this batch finished first and tidied up
                raise
    finally:
        part.unlink(missing_ok=True)
    for stale in results_dir.glob(f".{api_id}.*.part"):  # left by a process killed mid-download
        if not _alive(int(stale.name.split(".")[2])):
            stale.unlink(missing_ok=True)
    failpoint("after-download")
    return final
