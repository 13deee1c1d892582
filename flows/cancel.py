"""`longbatch cancel` and the cancel-batches flow (for the Prefect UI): stop work in flight.

The cancel is recorded in the ledger as the user's before the API is asked. Requests of a
canceled batch that had not run come back `canceled` and end as `canceled_by_user`: neither
`collect` nor the next run sends them again unless asked (`--resend-canceled`). Results that
finished before the cancel are collected and reported like any others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import anthropic
from prefect import flow

from flows import heartbeats
from longbatch.api import check_api_access, open_api
from longbatch.errors import ConfigError
from longbatch.ledger import Ledger
from longbatch.records import BatchState
from longbatch.settings import Settings

heartbeats.install()  # a flow run ends when its work does, not up to 1 s later

log = logging.getLogger(__name__)

QUEUED_CANCELED = "canceled by user before it was sent; `longbatch collect --resend-canceled` sends it"


@dataclass
class CancelOutcome:
    canceled: list[str] = field(default_factory=list)  # API batch ids the API was told to cancel
    failed: dict[str, str] = field(default_factory=dict)  # batch id -> why it could not be canceled
    unconfirmed: list[str] = field(default_factory=list)  # our ids of creates not yet confirmed
    queued: int = 0  # queued requests set aside (--all)

    def lines(self) -> list[str]:
        out = [f"canceled {b}" for b in self.canceled]
        out += [f"could not cancel {b}: {why}" for b, why in self.failed.items()]
        out += [f"{b}: its create is not confirmed yet, so it cannot be canceled; run `longbatch collect` and cancel "
                "again" for b in self.unconfirmed]
        if self.queued:
            out.append(f"{self.queued} queued request(s) not yet sent were set aside")
        if not out:
            out.append("No batch in flight: nothing to cancel.")
        return out


def cancel_in_flight(client: anthropic.Anthropic, ledger: Ledger, batch_ids: list[str],
                     everything: bool) -> CancelOutcome:
    """Cancel the named batches (API ids or the ledger's own), or with `everything` every batch
    in flight and the requests still queued. An id that is not a batch in flight is refused."""
    if not batch_ids and not everything:
        raise ConfigError("Name the batches to cancel (see `longbatch status`), or use --all.")
    in_flight = ledger.batches_in_state(BatchState.INTENT, BatchState.UNKNOWN, BatchState.SUBMITTED)
    wanted = set(batch_ids)
    chosen = [b for b in in_flight if everything or b.api_id in wanted or b.id in wanted]
    unknown = wanted - {b.api_id for b in chosen} - {b.id for b in chosen}
    if unknown:
        raise ConfigError(f"Not a batch in flight from this data dir: {', '.join(sorted(unknown))}. "
                          "`longbatch status` lists them.")
    outcome = CancelOutcome()
    for batch in chosen:
        if batch.api_id is None:
            outcome.unconfirmed.append(batch.id)
            continue
        ledger.record_cancel(batch.id)  # the user's, before the API hears of it
        try:
            client.beta.messages.batches.cancel(batch.api_id)  # idempotent: the SDK retries transient failures
            outcome.canceled.append(batch.api_id)
        except anthropic.APIError as exc:  # said per batch: the others are still canceled
            outcome.failed[batch.api_id] = f"{type(exc).__name__}: the API did not take the cancel; try again"
    if everything:
        outcome.queued = len(ledger.cancel_queued(QUEUED_CANCELED))
    return outcome


def resend_canceled(ledger: Ledger) -> int:
    """`--resend-canceled`: what the user canceled goes back to the queue. Returns how many."""
    count = len(ledger.requeue_canceled())
    if count:
        log.info("queued %d request(s) canceled by the user again (--resend-canceled)", count)
    return count


@flow(name="cancel-batches")
def cancel_batches(batch_ids: list[str] | None = None, all_in_flight: bool = False, data_dir: str | None = None,
                   simulate: bool | None = None) -> dict[str, Any]:
    """Cancel batches in flight; what they had not run is never resent unless asked.

    Args:
        batch_ids: Batch ids to cancel (the API's msgbatch_... or the ledger's lb_...).
        all_in_flight: Cancel every batch in flight and set aside the requests still queued.
        data_dir: Data directory holding the ledger. Empty: LONGBATCH_DATA_DIR if set, else data.
        simulate: Talk to the built-in simulator instead of the Anthropic API.
    """
    settings = Settings.given(data_dir=data_dir, simulate=simulate)
    check_api_access(settings)
    ledger = Ledger.open(settings)
    try:
        with open_api(settings) as client:
            outcome = cancel_in_flight(client, ledger, list(batch_ids or []), all_in_flight)
    finally:
        ledger.close()
    return {"canceled": outcome.canceled, "failed": outcome.failed, "unconfirmed": outcome.unconfirmed,
            "queued_set_aside": outcome.queued, "lines": outcome.lines()}
