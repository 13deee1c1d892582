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

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from longbatch.records import (BatchRecord, NewRequest, PlanRecord, RequestRecord, RequestState, ResultRecord, StepRecipe, StepRecord,
                               StepState, UsageRecord)
from longbatch.schema import (SCHEMA_VERSION, batches, default_url, open_engine, plan_rows,
                              reductions, requests, results, token_counts)
from longbatch.settings import Settings
from longbatch.ledger_batches import BatchBook
from longbatch.ledger_bulk import BulkBook, chunks
from longbatch.ledger_money import MoneyBook, SpendState
from longbatch.rows import plan_of, request_of, request_values, result_of, result_values, step_of, upsert, upsert_many

__all__ = ["SCHEMA_VERSION", "BatchRecord", "Ledger", "SpendState", "default_url", "upsert"]


class Ledger(BatchBook, MoneyBook, BulkBook):
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
            rows = []
            for rec in records:
                row = rec.row
                data = {**row.csv_record(), "fingerprint": rec.fingerprint,
                        "part_fingerprints": list(rec.part_fingerprints)}
                rows.append(dict(
                    scope=self.scope, source=row.source, prompt=row.prompt, model=row.model, doc_id=row.doc_id, sha256=row.sha256,
                    status=str(row.status), reason=row.reason, fingerprint=rec.fingerprint,
                    data=json.dumps(data, default=str), planned_at=now))
            for chunk in chunks(rows):  # one statement compiled, not one per document
                upsert_many(conn, plan_rows, ("scope", "source", "prompt", "model"), list(chunk))

    def plan(self) -> list[PlanRecord]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(plan_rows).where(self._mine(plan_rows))
                                .order_by(plan_rows.c.source, plan_rows.c.prompt, plan_rows.c.model)).mappings()
            return [plan_of(r) for r in rows]

    # -- requests -----------------------------------------------------------------------------

    def request(self, fingerprint: str) -> RequestRecord | None:
        with self.tx() as conn:
            row = conn.execute(sa.select(requests).where(self._mine(requests) & (requests.c.fingerprint == fingerprint))
                               ).mappings().first()
            return request_of(row) if row else None

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
        state = RequestState.HELD if primer else RequestState.QUEUED
        try:
            with self.tx() as conn:
                conn.execute(requests.insert().values(**request_values(self.scope, req, state, 0),
                                                      primer=primer, max_cost_usd=max_cost_usd))
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
        try:
            with self.tx() as conn:
                conn.execute(requests.insert().values(
                    **request_values(self.scope, req, RequestState.SUCCEEDED, result.attempt)))
                upsert(conn, results, ("scope", "batch_id", "custom_id"),
                       result_values(self.scope, result, time.time()))
            return True
        except sa.exc.IntegrityError:
            return False

    def supersede(self, custom_id: str, current_fingerprint: str) -> int:
        """Older work for the same document and prompt that was never sent (queued, or failed
        before reaching the API) is dropped in favour of the current plan's request."""
        with self.tx() as conn:
            return self._supersede(conn, custom_id, current_fingerprint)

    def requeue(self, fingerprint: str, from_state: RequestState) -> bool:
        """Move a request back to queued for another attempt; only one caller wins the move."""
        with self.tx() as conn:
            res = conn.execute(requests.update()
                               .where(self._mine(requests) & (requests.c.fingerprint == fingerprint)
                                      & (requests.c.state == from_state))
                               .values(state=RequestState.QUEUED, updated_at=time.time()))
            return res.rowcount == 1

    def set_request_state(self, fingerprints: Iterable[str], state: RequestState, error_type: str | None = None,
                          error_message: str | None = None, only_from: RequestState | None = None) -> None:
        """`only_from`: move only the requests still in that state (another process may have
        moved them on since they were read)."""
        with self.tx() as conn:
            for fp in fingerprints:
                where = self._mine(requests) & (requests.c.fingerprint == fp)
                if only_from is not None:
                    where &= requests.c.state == only_from
                conn.execute(requests.update().where(where).values(
                    state=state, error_type=error_type, error_message=error_message, updated_at=time.time()))

    def requests_in_state(self, *states: RequestState) -> list[RequestRecord]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(requests).where(self._mine(requests) & requests.c.state.in_(states))).mappings()
            return [request_of(r) for r in rows]

    def requests_by_fingerprint(self, fingerprints: list[str]) -> dict[str, RequestRecord]:
        found: dict[str, RequestRecord] = {}
        with self.tx() as conn:
            for i in range(0, len(fingerprints), 500):
                rows = conn.execute(sa.select(requests).where(
                    self._mine(requests) & requests.c.fingerprint.in_(fingerprints[i: i + 500])))
                found.update({r["fingerprint"]: request_of(r) for r in rows.mappings()})
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
            return [step_of(r) for r in rows]

    def reductions_of(self, final_key: str) -> list[StepRecord]:
        """Every step of one split document's tree, the final one included."""
        with self.tx() as conn:
            rows = conn.execute(sa.select(reductions).where(self._mine(reductions)
                                                            & (reductions.c.final_key == final_key))).mappings()
            return [step_of(r) for r in rows]

    def reduction(self, key: str) -> StepRecord | None:
        with self.tx() as conn:
            row = conn.execute(sa.select(reductions).where(self._mine(reductions) & (reductions.c.key == key))
                               ).mappings().first()
            return step_of(row) if row else None

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
            return [step_of(r) for r in conn.execute(q).mappings()]

    def set_reduction(self, key: str, state: StepState, fingerprint: str | None = None,
                      error: str | None = None) -> None:
        """waiting -> built | failed; only from waiting, so a step is built once."""
        with self.tx() as conn:
            conn.execute(reductions.update().where(
                self._mine(reductions) & (reductions.c.key == key) & (reductions.c.state == StepState.WAITING))
                .values(state=state, fingerprint=fingerprint, error=error, updated_at=time.time()))

    # -- results ------------------------------------------------------------------------------

    def record_result(self, result: ResultRecord, request_state: RequestState,
                      error: tuple[str | None, str | None]) -> None:
        """One result and the request's new state, in one transaction: both or neither."""
        values = result_values(self.scope, result, time.time())
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
            return result_of(row) if row else None

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
            return [UsageRecord(result_of(r), r["model"], r["source"], r["prompt"], r["run_id"],
                                started.get(r["run_id"]), r["max_tokens"]) for r in rows]

