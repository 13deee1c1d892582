"""The ledger: the single record of what was planned, submitted and returned.

SQLite in the data directory by default; any SQLAlchemy URL (LONGBATCH_DATABASE_URL, e.g.
PostgreSQL) works the same. A ledger is opened for one scope (a data dir, or a named project,
on a shared database; "" for a data dir's own SQLite file) and every query stays inside it: one
data dir never sees, collects, retries or rebuilds another's work. Requests are keyed by their fingerprint (a hash of the exact
params and betas), so the same work can be claimed for submission once only: the claim is an
INSERT that a unique key lets exactly one process win, not a check-then-act.

Callers see typed records (`longbatch/records.py`), never rows: rows are mapped here, and the
tables and migrations are in `longbatch/schema.py`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from longbatch.piece import Piece, StepLinks, stored_meta
from longbatch.records import (CANCELED_BY_USER, CREATE_FAILED, PENDING_REQUEST_STATES, SUPERSEDED, BatchRecord, BatchState, NewRequest, PlanRecord, PlanRow,
                               PlanStatus, RequestRecord, RequestState, ResultRecord, StepRecipe, StepRecord,
                               StepState, UsageRecord)
from longbatch.schema import (SCHEMA_VERSION, batch_members, batches, default_url, meta, open_engine, plan_rows,
                              reductions, requests, results, spend_reservations, token_counts)
from longbatch.runs import current_run_id
from longbatch.settings import Settings

__all__ = ["SCHEMA_VERSION", "BatchRecord", "Ledger", "default_url"]

_PLAN_ROW_FIELDS = {f.name for f in dataclasses.fields(PlanRow)} - {"piece"}
_RESULT_FIELDS = [f.name for f in dataclasses.fields(ResultRecord)]


def _betas(text: str) -> tuple[str, ...]:
    return tuple(b for b in text.split(",") if b)


def _request(r: Mapping[str, Any]) -> RequestRecord:
    meta = json.loads(r["meta"]) if r["meta"] else None
    return RequestRecord(
        r["fingerprint"], r["custom_id"], r["doc_id"], r["source"], r["sha256"], r["prompt"], r["model"],
        r["max_tokens"], _betas(r["betas"]), Piece.from_meta(meta), StepLinks.from_meta(meta),
        RequestState(r["state"]), r["attempts"], r["batch_id"], r["error_type"], r["error_message"],
        r["created_at"], r["updated_at"], primer=r["primer"])


def _result(r: Mapping[str, Any]) -> ResultRecord:
    return ResultRecord(**{name: r[name] for name in _RESULT_FIELDS})


def _step(r: Mapping[str, Any]) -> StepRecord:
    return StepRecord(StepRecipe.from_data(json.loads(r["data"])), StepState(r["state"]), r["fingerprint"], r["error"])


def upsert(conn: Connection, table: sa.Table, keys: tuple[str, ...], values: dict[str, Any]) -> None:
    """Insert, or update the row with the same keys: one statement (INSERT ... ON CONFLICT), so
    two writers never race between a delete and an insert."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - other databases: the portable, non-atomic way
        conn.execute(table.delete().where(sa.and_(*(table.c[k] == values[k] for k in keys))))
        conn.execute(table.insert().values(**values))
        return
    statement = insert(table).values(**values)
    conn.execute(statement.on_conflict_do_update(
        index_elements=list(keys), set_={k: v for k, v in values.items() if k not in keys}))


def _plan(r: Mapping[str, Any]) -> PlanRecord:
    data = json.loads(r["data"])
    row = PlanRow(**{k: v for k, v in data.items() if k in _PLAN_ROW_FIELDS})
    row = dataclasses.replace(row, status=PlanStatus(row.status), betas=_betas(data.get("betas") or ""))
    return PlanRecord(row, r["fingerprint"],
                      tuple(data.get("part_fingerprints") or ()))


class Ledger:
    def __init__(self, url: str, scope: str = "") -> None:
        self.url = url
        self.scope = scope
        self.engine = open_engine(url)

    @classmethod
    def open(cls, settings: Settings) -> Ledger:
        """The ledger these settings name: `database_url`, else SQLite in the data dir; in the
        settings' scope."""
        return cls(settings.database_url or default_url(settings.data_dir), settings.ledger_scope)

    @classmethod
    def existing(cls, settings: Settings) -> Ledger | None:
        """The ledger if there is one; None (and nothing created) when nothing was ever recorded."""
        if settings.database_url or (settings.data_dir / "ledger.sqlite").exists():
            return cls.open(settings)
        return None

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Ledger:
        """SQLite in `data_dir`, whatever the environment says (tests and tools)."""
        return cls(default_url(data_dir))

    def _mine(self, table: sa.Table) -> sa.ColumnElement[bool]:
        """The condition every query of a scoped table carries."""
        return table.c.scope == self.scope

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- plan ---------------------------------------------------------------------------------

    def record_plan(self, records: Iterable[PlanRecord], inbox_sources: Iterable[str]) -> None:
        """Record this run's plan rows, each replacing the row of the same document, prompt and
        model; rows of other prompts and models stay, so summary.csv shows everything the data
        dir holds. A document gone from the inbox keeps its row if work was sent for it (its
        reports are here); rows that stood only for a refusal (an unreadable file, one that did
        not fit) go with their file."""
        now = time.time()
        present = set(inbox_sources)
        with self.tx() as conn:
            stale = [r.source for r in conn.execute(sa.select(plan_rows.c.source, plan_rows.c.data)
                                                      .where(self._mine(plan_rows) & plan_rows.c.fingerprint.is_(None)))
                     if r.source not in present and not json.loads(r.data or "{}").get("reduction")]
            for i in range(0, len(stale), 500):
                conn.execute(plan_rows.delete().where(self._mine(plan_rows)
                                                      & plan_rows.c.source.in_(stale[i: i + 500])))
            for rec in records:
                row = rec.row
                data = {**row.csv_record(), "fingerprint": rec.fingerprint,
                        "part_fingerprints": list(rec.part_fingerprints)}
                upsert(conn, plan_rows, ("scope", "source", "prompt", "model"), dict(
                    scope=self.scope, source=row.source, prompt=row.prompt, model=row.model, doc_id=row.doc_id, sha256=row.sha256,
                    status=str(row.status), reason=row.reason, fingerprint=rec.fingerprint,
                    data=json.dumps(data, default=str), planned_at=now))

    def plan(self) -> list[PlanRecord]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(plan_rows).where(self._mine(plan_rows))
                                .order_by(plan_rows.c.source, plan_rows.c.prompt, plan_rows.c.model)).mappings()
            return [_plan(r) for r in rows]

    # -- requests -----------------------------------------------------------------------------

    def request(self, fingerprint: str) -> RequestRecord | None:
        with self.tx() as conn:
            row = conn.execute(sa.select(requests).where(self._mine(requests) & (requests.c.fingerprint == fingerprint))
                               ).mappings().first()
            return _request(row) if row else None

    def known_fingerprints(self, fingerprints: list[str]) -> set[str]:
        """Which of these requests the ledger already holds: one query per 500, not one each."""
        found: set[str] = set()
        with self.tx() as conn:
            for i in range(0, len(fingerprints), 500):
                chunk = fingerprints[i: i + 500]
                found.update(conn.execute(sa.select(requests.c.fingerprint)
                                          .where(self._mine(requests) & requests.c.fingerprint.in_(chunk))).scalars())
        return found

    def claim(self, req: NewRequest, primer: str | None = None, max_cost_usd: float | None = None) -> bool:
        """Record a new request as queued (held, when `primer` is the request that caches its
        document first). True if this call created it; False if the same work (same
        fingerprint) is already known, from an earlier run or a concurrent one."""
        now = time.time()
        meta = stored_meta(req.piece, req.links)
        try:
            with self.tx() as conn:
                conn.execute(requests.insert().values(
                    scope=self.scope, fingerprint=req.fingerprint, custom_id=req.custom_id, doc_id=req.doc_id, source=req.source,
                    sha256=req.sha256, prompt=req.prompt, model=req.model, max_tokens=req.max_tokens,
                    betas=",".join(req.betas), meta=json.dumps(meta) if meta else None, primer=primer,
                    max_cost_usd=max_cost_usd,
                    state=RequestState.HELD if primer else RequestState.QUEUED, attempts=0, created_at=now,
                    updated_at=now))
            return True
        except sa.exc.IntegrityError:
            return False

    def request_count(self) -> int:
        """How many distinct requests were ever recorded here (in this scope)."""
        with self.tx() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(requests)
                                    .where(self._mine(requests))).scalar_one())

    def record_recovered(self, req: NewRequest, result: ResultRecord) -> bool:
        """A request known only from its report (the ledger was lost): recorded as succeeded with
        its result, in one transaction. False if the ledger knows it already."""
        now = time.time()
        meta = stored_meta(req.piece, req.links)
        try:
            with self.tx() as conn:
                conn.execute(requests.insert().values(
                    scope=self.scope, fingerprint=req.fingerprint, custom_id=req.custom_id, doc_id=req.doc_id, source=req.source,
                    sha256=req.sha256, prompt=req.prompt, model=req.model, max_tokens=req.max_tokens,
                    betas=",".join(req.betas), meta=json.dumps(meta) if meta else None,
                    state=RequestState.SUCCEEDED, attempts=result.attempt, created_at=now, updated_at=now))
                upsert(conn, results, ("scope", "batch_id", "custom_id"),
                       {**dataclasses.asdict(result), "scope": self.scope, "received_at": now})
            return True
        except sa.exc.IntegrityError:
            return False

    def supersede(self, custom_id: str, current_fingerprint: str) -> int:
        """Older work for the same document and prompt that was never sent (queued, or failed
        before reaching the API) is dropped in favour of the current plan's request."""
        with self.tx() as conn:
            return conn.execute(requests.update().where(
                self._mine(requests) & (requests.c.custom_id == custom_id) & (requests.c.fingerprint != current_fingerprint)
                & ((requests.c.state == RequestState.QUEUED) | (requests.c.state == RequestState.HELD)
                   | ((requests.c.state == RequestState.FAILED) & (requests.c.error_type == CREATE_FAILED)))
            ).values(state=RequestState.FAILED, error_type=SUPERSEDED, updated_at=time.time(),
                     error_message="replaced by a newer plan of the same document and prompt")).rowcount

    def requeue(self, fingerprint: str, from_state: RequestState) -> bool:
        """Move a request back to queued for another attempt; only one caller wins the move."""
        with self.tx() as conn:
            res = conn.execute(requests.update()
                               .where(self._mine(requests) & (requests.c.fingerprint == fingerprint)
                                      & (requests.c.state == from_state))
                               .values(state=RequestState.QUEUED, updated_at=time.time()))
            return res.rowcount == 1

    def set_request_state(self, fingerprints: Iterable[str], state: RequestState, error_type: str | None = None,
                          error_message: str | None = None) -> None:
        with self.tx() as conn:
            for fp in fingerprints:
                conn.execute(requests.update().where(self._mine(requests) & (requests.c.fingerprint == fp)).values(
                    state=state, error_type=error_type, error_message=error_message, updated_at=time.time()))

    def requests_in_state(self, *states: RequestState) -> list[RequestRecord]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(requests).where(self._mine(requests) & requests.c.state.in_(states))).mappings()
            return [_request(r) for r in rows]

    def requests_by_fingerprint(self, fingerprints: list[str]) -> dict[str, RequestRecord]:
        found: dict[str, RequestRecord] = {}
        with self.tx() as conn:
            for i in range(0, len(fingerprints), 500):
                rows = conn.execute(sa.select(requests).where(
                    self._mine(requests) & requests.c.fingerprint.in_(fingerprints[i: i + 500])))
                found.update({r["fingerprint"]: _request(r) for r in rows.mappings()})
        return found

    # -- combining steps ----------------------------------------------------------------------

    def claim_reduction(self, recipe: StepRecipe) -> bool:
        """Record a combining step as waiting; False if the same recipe is already known."""
        now = time.time()
        try:
            with self.tx() as conn:
                conn.execute(reductions.insert().values(
                    scope=self.scope, key=recipe.key, final_key=recipe.final_key, custom_id=recipe.custom_id, source=recipe.source,
                    prompt=recipe.prompt, role=recipe.piece.kind.value, state=StepState.WAITING,
                    data=json.dumps(recipe.to_data()), created_at=now, updated_at=now))
            return True
        except sa.exc.IntegrityError:
            return False

    def reductions_in_state(self, *states: StepState) -> list[StepRecord]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(reductions).where(self._mine(reductions) & reductions.c.state.in_(states))
                                .order_by(reductions.c.created_at, reductions.c.custom_id)).mappings()
            return [_step(r) for r in rows]

    def reductions_of(self, final_key: str) -> list[StepRecord]:
        """Every step of one split document's tree, the final one included."""
        with self.tx() as conn:
            rows = conn.execute(sa.select(reductions).where(self._mine(reductions)
                                                            & (reductions.c.final_key == final_key))).mappings()
            return [_step(r) for r in rows]

    def reduction(self, key: str) -> StepRecord | None:
        with self.tx() as conn:
            row = conn.execute(sa.select(reductions).where(self._mine(reductions) & (reductions.c.key == key))
                               ).mappings().first()
            return _step(row) if row else None

    def known_reductions(self, keys: list[str]) -> set[str]:
        with self.tx() as conn:
            return set(conn.execute(sa.select(reductions.c.key).where(self._mine(reductions)
                                                                       & reductions.c.key.in_(keys))).scalars())

    def stranded_steps(self) -> list[StepRecord]:
        """Steps built and claimed whose request is still queued: a process stopped before
        sending them."""
        with self.tx() as conn:
            q = sa.select(reductions).join(requests, (requests.c.scope == reductions.c.scope)
                                           & (requests.c.fingerprint == reductions.c.fingerprint)).where(
                self._mine(reductions) & (reductions.c.state == StepState.BUILT)
                & (requests.c.state == RequestState.QUEUED))
            return [_step(r) for r in conn.execute(q).mappings()]

    def set_reduction(self, key: str, state: StepState, fingerprint: str | None = None,
                      error: str | None = None) -> None:
        """waiting -> built | failed; only from waiting, so a step is built once."""
        with self.tx() as conn:
            conn.execute(reductions.update().where(
                self._mine(reductions) & (reductions.c.key == key) & (reductions.c.state == StepState.WAITING))
                .values(state=state, fingerprint=fingerprint, error=error, updated_at=time.time()))

    # -- batches ------------------------------------------------------------------------------

    def record_intent(self, betas: tuple[str, ...], members: list[tuple[str, str]]) -> tuple[str, list[str]]:
        """Before `batches.create`: record the batch we are about to make. Each member
        (custom_id, fingerprint) moves queued -> submitting only if still queued, so of two
        processes packing the same requests each request joins one batch only.
        Returns our batch id and the custom_ids this batch won (send only those)."""
        batch_id = f"lb_{uuid.uuid4().hex[:20]}"
        now = time.time()
        won: list[str] = []
        with self.tx() as conn:
            conn.execute(batches.insert().values(id=batch_id, scope=self.scope, state=BatchState.INTENT, betas=",".join(betas),
                                                 request_count=0, intent_at=now, run_id=current_run_id()))
            for custom_id, fp in members:
                taken = conn.execute(
                    requests.update()
                    .where(self._mine(requests) & (requests.c.fingerprint == fp)
                           & (requests.c.state == RequestState.QUEUED))
                    .values(state=RequestState.SUBMITTING, attempts=requests.c.attempts + 1, batch_id=batch_id, updated_at=now)
                ).rowcount
                if not taken:
                    continue
                attempt = conn.execute(sa.select(requests.c.attempts).where(
                    self._mine(requests) & (requests.c.fingerprint == fp))).scalar_one()
                conn.execute(batch_members.insert().values(batch_id=batch_id, custom_id=custom_id,
                                                           fingerprint=fp, attempt=attempt))
                won.append(custom_id)
            if won:
                conn.execute(batches.update().where(batches.c.id == batch_id).values(request_count=len(won)))
            else:
                conn.execute(batches.delete().where(batches.c.id == batch_id))
        return batch_id, won

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
            return [BatchRecord(r["id"], r["api_id"], BatchState(r["state"]), _betas(r["betas"]),
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

    # -- results ------------------------------------------------------------------------------

    def record_result(self, result: ResultRecord, request_state: RequestState,
                      error: tuple[str | None, str | None]) -> None:
        """One result and the request's new state, in one transaction: both or neither."""
        values = {**dataclasses.asdict(result), "scope": self.scope, "received_at": time.time()}
        with self.tx() as conn:
            upsert(conn, results, ("scope", "batch_id", "custom_id"), values)
            conn.execute(requests.update().where(self._mine(requests) & (requests.c.fingerprint == result.fingerprint)).values(
                state=request_state, error_type=error[0], error_message=error[1], updated_at=time.time()))

    def has_result(self, batch_id: str, custom_id: str) -> bool:
        with self.tx() as conn:
            return conn.execute(sa.select(results.c.custom_id).where(
                self._mine(results) & (results.c.batch_id == batch_id) & (results.c.custom_id == custom_id))).first() is not None

    def latest_result(self, fingerprint: str) -> ResultRecord | None:
        with self.tx() as conn:
            row = conn.execute(sa.select(results).where(self._mine(results) & (results.c.fingerprint == fingerprint))
                               .order_by(results.c.attempt.desc(), results.c.received_at.desc())).mappings().first()
            return _result(row) if row else None

    def token_counts(self) -> dict[str, int]:
        with self.tx() as conn:
            return {r.key: r.input_tokens for r in conn.execute(sa.select(token_counts))}

    def record_token_count(self, key: str, input_tokens: int) -> None:
        with self.tx() as conn:
            upsert(conn, token_counts, ("key",), dict(key=key, input_tokens=input_tokens, counted_at=time.time()))

    def usage_rows(self) -> list[UsageRecord]:
        """Every result with its request's model, source and prompt, and the run of its batch."""
        with self.tx() as conn:
            q = sa.select(results, requests.c.model, requests.c.source, requests.c.prompt, requests.c.max_tokens,
                          batches.c.run_id).join(
                requests, (requests.c.scope == results.c.scope) & (requests.c.fingerprint == results.c.fingerprint)
            ).outerjoin(batches, batches.c.api_id == results.c.batch_id).where(self._mine(results))
            rows = list(conn.execute(q).mappings())
            run_ids = sorted({r["run_id"] for r in rows if r["run_id"]})
            started = dict(conn.execute(sa.select(batches.c.run_id, sa.func.min(batches.c.intent_at))
                                        .where(batches.c.run_id.in_(run_ids)).group_by(batches.c.run_id)).all())
            return [UsageRecord(_result(r), r["model"], r["source"], r["prompt"], r["run_id"],
                                started.get(r["run_id"]), r["max_tokens"]) for r in rows]

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
