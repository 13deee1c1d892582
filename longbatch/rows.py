"""Rows to records and back: the only place a ledger row is read by its column names."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from longbatch.piece import Piece, StepLinks, stored_meta
from longbatch.records import (NewRequest, PlanRecord, PlanRow,
                               PlanStatus, RequestRecord, RequestState, ResultRecord, StepRecipe, StepRecord,
                               StepState)


_PLAN_ROW_FIELDS = {f.name for f in dataclasses.fields(PlanRow)} - {"piece"}
_RESULT_FIELDS = [f.name for f in dataclasses.fields(ResultRecord)]


def betas_of(text: str) -> tuple[str, ...]:
    return tuple(filter(None, text.split(",")))


def request_of(r: Mapping[str, Any]) -> RequestRecord:
    meta = json.loads(r["meta"]) if r["meta"] else None
    return RequestRecord(
        r["fingerprint"], r["custom_id"], r["doc_id"], r["source"], r["sha256"], r["prompt"], r["model"],
        r["max_tokens"], betas_of(r["betas"]), Piece.from_meta(meta), StepLinks.from_meta(meta),
        RequestState(r["state"]), r["attempts"], r["batch_id"], r["error_type"], r["error_message"],
        r["created_at"], r["updated_at"], primer=r["primer"])


def result_of(r: Mapping[str, Any]) -> ResultRecord:
    return ResultRecord(**{name: r[name] for name in _RESULT_FIELDS})


def result_values(scope: str, result: ResultRecord, received_at: float) -> dict[str, Any]:
    """A result's row. Its fields are plain values: a shallow copy, not `dataclasses.asdict`'s
    deep one (a tenth of the time, for every result a collect records)."""
    return {**vars(result), "scope": scope, "received_at": received_at}


def step_of(r: Mapping[str, Any]) -> StepRecord:
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


def _dialect_insert(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def upsert_many(conn: Connection, table: sa.Table, keys: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """`upsert` for many rows (all with the same columns) in one executemany: the statement is
    compiled once, not once a row."""
    if not rows:
        return
    if conn.dialect.name not in ("postgresql", "sqlite"):  # pragma: no cover - the portable way
        for row in rows:
            upsert(conn, table, keys, row)
        return
    statement = _dialect_insert(conn)(table)
    conn.execute(statement.on_conflict_do_update(
        index_elements=list(keys), set_={k: statement.excluded[k] for k in rows[0] if k not in keys}), rows)


def insert_new_many(conn: Connection, table: sa.Table, rows: list[dict[str, Any]], key: str) -> set[Any]:
    """`insert_new` for many rows (all with the same columns) in one executemany; returns the
    `key` values of the rows this call inserted (INSERT ... ON CONFLICT DO NOTHING RETURNING)."""
    if not rows:
        return set()
    if conn.dialect.name not in ("postgresql", "sqlite"):  # pragma: no cover - the portable way
        return {row[key] for row in rows if insert_new(conn, table, row)}
    statement = _dialect_insert(conn)(table).on_conflict_do_nothing().returning(table.c[key])
    return set(conn.execute(statement, rows).scalars())


def insert_new(conn: Connection, table: sa.Table, values: dict[str, Any]) -> bool:
    """Insert unless a row with the same key exists; True if this call inserted it. One statement
    (INSERT ... ON CONFLICT DO NOTHING), so a duplicate does not abort the transaction it is in:
    many claims can share one commit."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - other databases: a savepoint keeps a duplicate from aborting the rest
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(**values))
            return True
        except sa.exc.IntegrityError:
            return False
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(sa.literal(1))
    return conn.execute(statement).first() is not None  # a row back: this call inserted it


def plan_of(r: Mapping[str, Any]) -> PlanRecord:
    data = json.loads(r["data"])
    values = {k: v for k, v in data.items() if k in _PLAN_ROW_FIELDS}
    values.update(status=PlanStatus(data["status"]), betas=betas_of(data.get("betas") or ""))
    return PlanRecord(PlanRow(**values), r["fingerprint"], tuple(data.get("part_fingerprints") or ()))




def request_values(scope: str, req: NewRequest, state: RequestState, attempts: int) -> dict[str, Any]:
    """A new request's row."""
    now = time.time()
    meta = stored_meta(req.piece, req.links)
    return dict(scope=scope, fingerprint=req.fingerprint, custom_id=req.custom_id, doc_id=req.doc_id,
                source=req.source, sha256=req.sha256, prompt=req.prompt, model=req.model, max_tokens=req.max_tokens,
                betas=",".join(req.betas), meta=json.dumps(meta) if meta else None, state=state, attempts=attempts,
                created_at=now, updated_at=now)
