"""The ledger's money bookkeeping: what the user canceled, requests held for a cache primer,
and the standing caps' reservations (a part of `Ledger`)."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

import sqlalchemy as sa

from longbatch.records import (CANCELED_BY_USER, PENDING_REQUEST_STATES, RequestState, StepState)
from longbatch.schema import (batches, meta, reductions, requests, results, spend_reservations)



class MoneyBook:
    """Cancel, priming and standing caps."""

    scope: str

    # -- cancel (issue 12) ------------------------------------------------------------------------

    def record_cancel(self, batch_id: str) -> None:
        """The user canceled this batch (recorded before the API is asked, so a collect never
        sees the canceled results without it)."""
        with self.tx() as conn:
            conn.execute(batches.update().where(self._mine(batches) & (batches.c.id == batch_id)
                                                & batches.c.canceled_at.is_(None))
                         .values(canceled_at=time.time()))

    def canceled_batches(self) -> set[str]:
        """Our ids of the batches the user canceled."""
        with self.tx() as conn:
            return set(conn.execute(sa.select(batches.c.id).where(self._mine(batches)
                                                                 & batches.c.canceled_at.is_not(None))).scalars())

    def cancel_queued(self, message: str) -> list[str]:
        """Queued and held requests (not yet in any batch) set aside as canceled by the user;
        each only if still so, so a request a concurrent run is sending is left to its batch."""
        done = []
        with self.tx() as conn:
            unsent = (RequestState.QUEUED, RequestState.HELD)
            for fp in conn.execute(sa.select(requests.c.fingerprint)
                                   .where(self._mine(requests) & requests.c.state.in_(unsent))).scalars().all():
                if conn.execute(requests.update().where(
                        self._mine(requests) & (requests.c.fingerprint == fp) & requests.c.state.in_(unsent))
                        .values(state=RequestState.FAILED, error_type=CANCELED_BY_USER, error_message=message,
                                updated_at=time.time())).rowcount:
                    done.append(fp)
        return done

    def requeue_canceled(self) -> list[str]:
        """`--resend-canceled`: requests the user canceled go back to queued (each once)."""
        with self.tx() as conn:
            fps = conn.execute(sa.select(requests.c.fingerprint).where(
                self._mine(requests) & (requests.c.state == RequestState.FAILED)
                & (requests.c.error_type == CANCELED_BY_USER))).scalars().all()
            done = []
            for fp in fps:
                if conn.execute(requests.update().where(
                        self._mine(requests) & (requests.c.fingerprint == fp) & (requests.c.state == RequestState.FAILED)
                        & (requests.c.error_type == CANCELED_BY_USER))
                        .values(state=RequestState.QUEUED, error_type=None, error_message=None,
                                updated_at=time.time())).rowcount:
                    done.append(fp)
            return done

    # -- priming (issue 12) -----------------------------------------------------------------------

    def held_with_primer_state(self) -> list[tuple[str, RequestState | None, str | None]]:
        """Held requests with their primer's state and error type (None: primer unknown)."""
        primers = requests.alias("primers")
        with self.tx() as conn:
            q = sa.select(requests.c.fingerprint, primers.c.state, primers.c.error_type).outerjoin(
                primers, (primers.c.scope == requests.c.scope) & (primers.c.fingerprint == requests.c.primer)
            ).where(self._mine(requests) & (requests.c.state == RequestState.HELD))
            return [(fp, RequestState(state) if state else None, error) for fp, state, error in conn.execute(q)]

    def release_held(self, fingerprint: str, to: RequestState, error_type: str | None = None,
                     error_message: str | None = None) -> bool:
        """held -> queued (or failed): one conditional update, so one caller wins it."""
        with self.tx() as conn:
            return conn.execute(requests.update().where(
                self._mine(requests) & (requests.c.fingerprint == fingerprint) & (requests.c.state == RequestState.HELD))
                .values(state=to, error_type=error_type, error_message=error_message,
                        updated_at=time.time())).rowcount == 1

    # -- standing caps (issue 12) -----------------------------------------------------------------

    def reserve_spend(self, decide: Any, reservation_ttl: float = 900.0) -> tuple[str | None, Any]:
        """Serialised with every other reservation (a write lock first, in one transaction):
        `decide(SpendState)` sees what was billed since each period start, the work in flight and
        the live reservations, and returns (amount to reserve or None to refuse, its verdict).
        Returns (reservation id or None, verdict)."""
        now = time.time()
        with self.tx() as conn:
            # Take the write lock before reading, so two runs cannot both see the same room.
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=meta.c.value))
            state = SpendState(
                billed=[(r.received_at, r.cost_usd or 0.0) for r in conn.execute(
                    sa.select(results.c.received_at, results.c.cost_usd).where(results.c.result_type == "succeeded"))],
                in_flight=[(r.model, r.max_tokens, r.max_cost_usd, r.batch_id) for r in conn.execute(
                    sa.select(requests.c.model, requests.c.max_tokens, requests.c.max_cost_usd, requests.c.batch_id)
                    .where(requests.c.state.in_(PENDING_REQUEST_STATES)))],
                waiting_steps=[json.loads(d) for d in conn.execute(
                    sa.select(reductions.c.data).where(reductions.c.state == StepState.WAITING)).scalars()],
                reserved=sum(conn.execute(sa.select(spend_reservations.c.amount_usd).where(
                    spend_reservations.c.created_at > now - reservation_ttl)).scalars()),
                now=now)
            amount, verdict = decide(state)
            if amount is None:
                return None, verdict
            rid = f"sr_{uuid.uuid4().hex[:20]}"
            conn.execute(spend_reservations.insert().values(id=rid, amount_usd=amount, created_at=now))
            return rid, verdict

    def release_spend(self, reservation_id: str) -> None:
        """The run has claimed its work (now counted as in flight) or gave up."""
        with self.tx() as conn:
            conn.execute(spend_reservations.delete().where(spend_reservations.c.id == reservation_id))


@dataclasses.dataclass(frozen=True)

class SpendState:
    """What the standing caps count, read under the lock (see Ledger.reserve_spend)."""
    billed: list[tuple[float, float]]  # (received_at, cost) of every billed result
    in_flight: list[tuple[str, int, float | None, str | None]]  # (model, max_tokens, worst case, batch) of pending requests
    waiting_steps: list[dict[str, Any]]  # recipes of combining steps not yet built
    reserved: float  # spend other runs were allowed and have not claimed yet
    now: float
