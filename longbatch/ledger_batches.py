"""The ledger's batch bookkeeping: intents, creates, ends and collects (a part of `Ledger`)."""

from __future__ import annotations

import json
import time
import uuid

import sqlalchemy as sa

from longbatch.records import (CREATE_FAILED, BatchRecord, BatchState, RequestState)
from longbatch.schema import (batch_members, batches, requests)
from longbatch.runs import current_run_id

from longbatch.rows import betas_of


class BatchBook:
    """Batches: what was about to be created, what the API made, what ended, what was collected."""

    scope: str

    # -- batches ------------------------------------------------------------------------------

    def record_intent(self, betas: tuple[str, ...], members: list[tuple[str, str]]) -> tuple[str, list[str]]:
        """Before `batches.create`: record the batch we are about to make. Each member
        (custom_id, fingerprint) moves queued -> submitting only if still queued, so of two
        processes packing the same requests each request joins one batch only.
        Returns our batch id and the custom_ids this batch won (send only those)."""
        batch_id = f"lb_{uuid.uuid4().hex[:20]}"
        now = time.time()
        with self.tx() as conn:
            conn.execute(batches.insert().values(id=batch_id, scope=self.scope, state=BatchState.INTENT, betas=",".join(betas),
                                                 request_count=0, intent_at=now, run_id=current_run_id()))
            # One UPDATE ... RETURNING per 500 members, not a statement (and a lookup) each.
            custom_ids = {fp: custom_id for custom_id, fp in members}
            taken: dict[str, int] = {}
            for i in range(0, len(members), 500):
                chunk = [fp for _, fp in members[i: i + 500]]
                taken.update(conn.execute(
                    requests.update()
                    .where(self._mine(requests) & requests.c.fingerprint.in_(chunk)
                           & (requests.c.state == RequestState.QUEUED))
                    .values(state=RequestState.SUBMITTING, attempts=requests.c.attempts + 1, batch_id=batch_id, updated_at=now)
                    .returning(requests.c.fingerprint, requests.c.attempts)).tuples().all())
            won = [custom_id for custom_id, fp in members if fp in taken]
            if taken:
                conn.execute(batch_members.insert(), [dict(batch_id=batch_id, custom_id=custom_ids[fp], fingerprint=fp,
                                                           attempt=attempt) for fp, attempt in taken.items()])
            if won:
                conn.execute(batches.update().where(batches.c.id == batch_id).values(request_count=len(won)))
            else:
                conn.execute(batches.delete().where(batches.c.id == batch_id))
        return batch_id, won

    def refresh_intent(self, batch_id: str) -> bool:
        """A create still sending its body says it is alive, so that no other run takes its intent
        for one a dead process left (`stale_intents_to_unknown`). False when it is no longer an
        intent: another run has taken it over, and this create must not complete."""
        with self.tx() as conn:
            return conn.execute(batches.update().where(
                (batches.c.id == batch_id) & (batches.c.state == BatchState.INTENT)
            ).values(intent_at=time.time())).rowcount == 1

    def stale_intents_to_unknown(self, older_than_seconds: float) -> int:
        """Intents left by a process that stopped between recording and hearing back from
        create: whether the batch exists is unknown until the server is asked."""
        with self.tx() as conn:
            return conn.execute(batches.update().where(
                self._mine(batches) & (batches.c.state == BatchState.INTENT)
                & (batches.c.intent_at < time.time() - older_than_seconds)
            ).values(state=BatchState.UNKNOWN, error="the process stopped during create")).rowcount

    def record_created(self, batch_id: str, api_id: str, created_at: float, adopted: bool = False) -> None:
        try:
            self._record_created(batch_id, api_id, created_at, adopted)
        except sa.exc.IntegrityError:
            # Another process recorded the same batch at this very moment (its creator and an
            # adoption): api_id is unique, so one of us failed; looking again sees who holds it.
            self._record_created(batch_id, api_id, created_at, adopted)

    def _record_created(self, batch_id: str, api_id: str, created_at: float, adopted: bool) -> None:
        with self.tx() as conn:
            holder = conn.execute(sa.select(batches.c.id, batches.c.adopted).where(
                (batches.c.api_id == api_id) & (batches.c.id != batch_id))).first()
            if holder is not None:
                if adopted or not holder.adopted:
                    return  # already owned: an adoption never takes a batch from its creator
                # We created it and hold the answer; a recovery had adopted it by mistake: that
                # intent goes back to unknown, to be resolved again.
                conn.execute(batches.update().where(batches.c.id == holder.id).values(
                    state=BatchState.UNKNOWN, api_id=None, adopted=False, created_at=None))
                conn.execute(requests.update().where(requests.c.batch_id == holder.id).values(
                    state=RequestState.SUBMITTING, updated_at=time.time()))
            conn.execute(batches.update().where(batches.c.id == batch_id).values(
                state=BatchState.SUBMITTED, api_id=api_id, created_at=created_at, adopted=adopted))
            conn.execute(requests.update().where(requests.c.batch_id == batch_id).values(
                state=RequestState.SUBMITTED, updated_at=time.time()))

    def record_create_failed(self, batch_id: str, error: str, unknown: bool) -> None:
        """`unknown`: the create may have happened (timeout, dropped connection): the requests
        stay out of any new batch until the outcome is resolved."""
        with self.tx() as conn:
            conn.execute(batches.update().where(batches.c.id == batch_id).values(
                state=BatchState.UNKNOWN if unknown else BatchState.FAILED, error=error))
            if not unknown:
                # The batch was never made: this attempt did not happen, so it is not counted.
                conn.execute(requests.update().where(requests.c.batch_id == batch_id).values(
                    state=RequestState.FAILED, error_type=CREATE_FAILED, error_message=error,
                    attempts=requests.c.attempts - 1, updated_at=time.time()))
                conn.execute(batch_members.delete().where(batch_members.c.batch_id == batch_id))

    def record_ended(self, batch_id: str, ended_at: float, counts: dict[str, int]) -> None:
        with self.tx() as conn:
            conn.execute(batches.update().where(batches.c.id == batch_id).values(
                state=BatchState.ENDED, ended_at=ended_at, counts=json.dumps(counts)))

    def mark_collected(self, batch_id: str) -> None:
        with self.tx() as conn:
            conn.execute(batches.update().where(batches.c.id == batch_id).values(
                state=BatchState.COLLECTED, collected_at=time.time()))

    def batches_in_state(self, *states: BatchState) -> list[BatchRecord]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(batches).where(self._mine(batches) & batches.c.state.in_(states))
                                .order_by(batches.c.intent_at)).mappings()
            return [BatchRecord(r["id"], r["api_id"], BatchState(r["state"]), betas_of(r["betas"]),
                                r["request_count"], r["intent_at"], r["created_at"], r["ended_at"],
                                bool(r["adopted"])) for r in rows]

    def known_api_ids(self) -> set[str]:
        """Every batch id the ledger holds, in every scope: a batch another data dir made is
        never a candidate for adoption by this one."""
        with self.tx() as conn:
            return set(conn.execute(sa.select(batches.c.api_id).where(batches.c.api_id.is_not(None))).scalars())

    def members(self, batch_id: str) -> dict[str, tuple[str, int]]:
        """custom_id -> (fingerprint, attempt) for a batch."""
        with self.tx() as conn:
            rows = conn.execute(sa.select(batch_members).where(batch_members.c.batch_id == batch_id)).mappings()
            return {r["custom_id"]: (r["fingerprint"], r["attempt"]) for r in rows}

