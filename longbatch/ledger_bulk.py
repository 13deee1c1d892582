"""The ledger's bulk writes (a part of `Ledger`): many claims, or many results, per transaction.

A commit costs an fsync (~2 ms on SQLite, a round trip and a WAL flush on PostgreSQL); at
thousands of documents one commit per request was most of a run's ledger time. Each chunk is
one transaction, so what it holds is recorded entirely or not at all: a crash between chunks
leaves whole claims and whole results, never a result without its request's new state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from longbatch.records import CREATE_FAILED, SUPERSEDED, Claim, RequestState, ResultRecord, ResultWrite
from longbatch.rows import insert_new_many, request_values, result_of, result_values
from longbatch.schema import requests, results

# Rows per transaction: large enough that commits stop mattering, small enough that a
# transaction holds its locks (PostgreSQL) or the write lock (SQLite) for well under a second.
CHUNK_ROWS = 1_000

T = TypeVar("T")

# Work never sent: queued, held, or failed before reaching the API. Only it may be superseded.
_UNSENT = ((requests.c.state == RequestState.QUEUED) | (requests.c.state == RequestState.HELD)
           | ((requests.c.state == RequestState.FAILED) & (requests.c.error_type == CREATE_FAILED)))


def chunks(items: Sequence[T], size: int = CHUNK_ROWS) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


class BulkBook:
    """Claims and results written in chunks of CHUNK_ROWS, one transaction each."""

    scope: str

    def tx(self) -> AbstractContextManager[Connection]:  # provided by Ledger
        raise NotImplementedError

    def _mine(self, table: sa.Table) -> sa.ColumnElement[bool]:  # provided by Ledger
        raise NotImplementedError

    def claim_many(self, claims: Sequence[Claim], supersede: Sequence[tuple[str, str]] = ()) -> set[str]:
        """Record new requests as queued (held, with a primer), as `claim` does one by one, and
        drop older unsent work of each (custom_id, current fingerprint) in `supersede`, as
        `supersede` does. Returns the fingerprints this call created: a request already known
        (from an earlier run or a concurrent one) is not claimed again.

        Inserts go in fingerprint order and supersedes in custom_id order, so two processes
        claiming overlapping plans on PostgreSQL take row locks in the same order (no deadlock)."""
        claimed: set[str] = set()
        ordered = sorted(claims, key=lambda c: c.request.fingerprint)
        for chunk in chunks(ordered):
            rows = [{**request_values(self.scope, c.request, RequestState.HELD if c.primer else RequestState.QUEUED, 0),
                     "primer": c.primer, "max_cost_usd": c.max_cost_usd} for c in chunk]
            with self.tx() as conn:
                claimed |= insert_new_many(conn, requests, rows, "fingerprint")
        statement = requests.update().where(
            (requests.c.scope == sa.bindparam("b_scope")) & (requests.c.custom_id == sa.bindparam("b_custom_id"))
            & (requests.c.fingerprint != sa.bindparam("b_current")) & _UNSENT).values(
            state=RequestState.FAILED, error_type=SUPERSEDED, updated_at=sa.bindparam("b_now"),
            error_message="replaced by a newer plan of the same document and prompt")
        for sup in chunks(sorted(supersede)):
            now = time.time()
            with self.tx() as conn:
                conn.execute(statement, [{"b_scope": self.scope, "b_custom_id": custom_id, "b_current": current,
                                          "b_now": now} for custom_id, current in sup])
        return claimed

    def _supersede(self, conn: Connection, custom_id: str, current_fingerprint: str) -> int:
        """Older work for the same document and prompt that was never sent (queued, held, or
        failed before reaching the API) is dropped in favour of the current plan's request."""
        return conn.execute(requests.update().where(
            self._mine(requests) & (requests.c.custom_id == custom_id) & (requests.c.fingerprint != current_fingerprint)
            & _UNSENT).values(state=RequestState.FAILED, error_type=SUPERSEDED, updated_at=time.time(),
                              error_message="replaced by a newer plan of the same document and prompt")).rowcount

    def record_results(self, writes: Sequence[ResultWrite]) -> set[str]:
        """Results and their requests' new states, a chunk per transaction: each result is
        recorded with its request's state or not at all. A result already recorded (the same
        batch and custom_id) is left as it is, and so is its request: of two processes collecting
        one batch at once, the later cannot set back a request the earlier has already retried.
        `writes` are of one batch; returns the custom_ids this call recorded."""
        recorded: set[str] = set()
        statement = requests.update().where(
            (requests.c.scope == sa.bindparam("b_scope")) & (requests.c.fingerprint == sa.bindparam("b_fingerprint"))
        ).values(state=sa.bindparam("b_state"), error_type=sa.bindparam("b_error_type"),
                 error_message=sa.bindparam("b_error_message"), updated_at=sa.bindparam("b_now"))
        for chunk in chunks(writes):
            now = time.time()
            rows = [result_values(self.scope, w.result, now) for w in chunk]
            with self.tx() as conn:
                new = insert_new_many(conn, results, rows, "custom_id")
                states = [{"b_scope": self.scope, "b_fingerprint": w.result.fingerprint, "b_state": w.request_state,
                           "b_error_type": w.error_type, "b_error_message": w.error_message, "b_now": now}
                          for w in chunk if w.result.custom_id in new]
                if states:
                    conn.execute(statement, states)
            recorded |= new
        return recorded

    def latest_results(self, fingerprints: Sequence[str]) -> dict[str, ResultRecord]:
        """`latest_result` for many requests (summary.csv, which wants nearly every request of
        the scope): one pass over the scope's results. Not `fingerprint IN (chunk)` queries:
        SQLite, without statistics, answers each of those by scanning the whole scope."""
        wanted = set(fingerprints)
        latest: dict[str, ResultRecord] = {}
        with self.tx() as conn:
            for row in conn.execute(sa.select(results).where(self._mine(results))).mappings():
                if row["fingerprint"] not in wanted:
                    continue
                res = result_of(row)
                best = latest.get(res.fingerprint)
                if best is None or (res.attempt, res.received_at) > (best.attempt, best.received_at):
                    latest[res.fingerprint] = res
        return latest

    def recorded_custom_ids(self, batch_id: str) -> set[str]:
        """The custom_ids of a batch whose results are recorded already (a resumed collect)."""
        with self.tx() as conn:
            return set(conn.execute(sa.select(results.c.custom_id).where(
                self._mine(results) & (results.c.batch_id == batch_id))).scalars())
