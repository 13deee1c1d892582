"""The ledger: the single record of what was planned, submitted and returned.

SQLite in the data directory by default; any SQLAlchemy URL (LONGBATCH_DATABASE_URL, e.g.
PostgreSQL) works the same. Requests are keyed by their fingerprint (a hash of the exact
params and betas), so the same work can be claimed for submission once only: the claim is an
INSERT that a unique key lets exactly one process win, not a check-then-act.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from longbatch.errors import ConfigError

SCHEMA_VERSION = 4

metadata = sa.MetaData()

meta = sa.Table("meta", metadata, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text))

# The latest plan row per (document path, prompt): what summary.csv reports on.
plan_rows = sa.Table(
    "plan_rows", metadata,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("prompt", sa.String(64), primary_key=True),
    sa.Column("doc_id", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64)),
    sa.Column("model", sa.String(64)),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("data", sa.Text),  # the whole plan row as JSON, for the summary
    sa.Column("planned_at", sa.Float, nullable=False),
)

requests = sa.Table(
    "requests", metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("custom_id", sa.String(64), nullable=False),
    sa.Column("doc_id", sa.String(64), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("prompt", sa.String(64), nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("max_tokens", sa.Integer, nullable=False),
    sa.Column("betas", sa.Text, nullable=False),
    # queued -> submitting -> submitted -> succeeded | failed
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("batch_id", sa.String(64)),  # local id of the batch holding the current attempt
    sa.Column("error_type", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # A split document's part or combining step (schema 4), as JSON: which one, what it covers.
    sa.Column("meta", sa.Text),
)

# Combining steps of split documents (schema 4): the recipe is known at plan time, the request
# only once the reports it combines exist. waiting -> built (fingerprint set) | failed.
reductions = sa.Table(
    "reductions", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("final_key", sa.String(64), nullable=False, index=True),
    sa.Column("custom_id", sa.String(64), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("prompt", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("error", sa.Text),
    sa.Column("data", sa.Text, nullable=False),  # the whole ReduceNode as JSON
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

batches = sa.Table(
    "batches", metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # ours, made before the API knows the batch
    sa.Column("api_id", sa.String(128), unique=True),
    # intent -> submitted -> ended -> collected; or failed (never created) / unknown (outcome unknown)
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("betas", sa.Text, nullable=False),
    sa.Column("request_count", sa.Integer, nullable=False),
    sa.Column("intent_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("collected_at", sa.Float),
    sa.Column("counts", sa.Text),
    sa.Column("error", sa.Text),
    # Found on the server after an unconfirmed create (schema 2): its custom_ids are checked
    # against ours when its results arrive.
    sa.Column("adopted", sa.Boolean, nullable=False, server_default=sa.false()),
)

batch_members = sa.Table(
    "batch_members", metadata,
    sa.Column("batch_id", sa.String(64), sa.ForeignKey("batches.id"), primary_key=True),
    sa.Column("custom_id", sa.String(64), primary_key=True),
    sa.Column("fingerprint", sa.String(64), sa.ForeignKey("requests.fingerprint"), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
)

results = sa.Table(
    "results", metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("custom_id", sa.String(64), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("result_type", sa.String(16), nullable=False),
    sa.Column("stop_reason", sa.String(48)),
    sa.Column("truncated", sa.Boolean),
    sa.Column("input_tokens", sa.Integer, default=0),
    sa.Column("output_tokens", sa.Integer, default=0),
    sa.Column("cache_creation_tokens", sa.Integer, default=0),
    sa.Column("cache_read_tokens", sa.Integer, default=0),
    sa.Column("cost_usd", sa.Float, default=0.0),
    sa.Column("error_type", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("message_id", sa.String(128)),
    sa.Column("report_path", sa.Text),
    sa.Column("received_at", sa.Float, nullable=False),
)


def _v1_to_v2(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE batches ADD COLUMN adopted BOOLEAN NOT NULL DEFAULT FALSE"))


def _v2_to_v3(conn: Connection) -> None:
    """token_counts is a new table: create_all has made it already; nothing else changes."""


def _v3_to_v4(conn: Connection) -> None:
    """Split documents: requests say which part they are; reductions is a new table."""
    conn.execute(sa.text("ALTER TABLE requests ADD COLUMN meta TEXT"))


# MIGRATIONS[n] takes a ledger from schema n to n + 1, inside the opening transaction.
MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


# count_tokens answers, cached by what was counted (schema 3): free, but rate-limited.
token_counts = sa.Table(
    "token_counts", metadata,
    sa.Column("key", sa.String(200), primary_key=True),  # model:document sha256:prompt sha256
    sa.Column("input_tokens", sa.Integer, nullable=False),
    sa.Column("counted_at", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class BatchRecord:
    id: str
    api_id: str | None
    state: str
    betas: tuple[str, ...]
    request_count: int
    intent_at: float
    created_at: float | None
    ended_at: float | None = None
    adopted: bool = False


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'ledger.sqlite').resolve()}"


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = url
        is_sqlite = url.startswith("sqlite")
        if is_sqlite:
            Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = sa.create_engine(
            url, future=True, connect_args={"timeout": 60} if is_sqlite else {}
        )
        if is_sqlite:
            @sa.event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()
        self._migrate()

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> "Ledger":
        """The ledger of a data dir: LONGBATCH_DATABASE_URL when set, else SQLite inside it."""
        return cls(os.environ.get("LONGBATCH_DATABASE_URL") or default_url(data_dir))

    @classmethod
    def existing(cls, data_dir: Path) -> "Ledger | None":
        """The ledger if there is one; None (and nothing created) when nothing was ever recorded."""
        if os.environ.get("LONGBATCH_DATABASE_URL") or (data_dir / "ledger.sqlite").exists():
            return cls.for_data_dir(data_dir)
        return None

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- schema -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        # Two processes opening a new ledger at once race to create the tables; the loser
        # sees "already exists" and simply looks again.
        for attempt in range(5):
            try:
                metadata.create_all(self.engine)
                break
            except sa.exc.DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))
        try:
            with self.tx() as conn:
                conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        except sa.exc.IntegrityError:
            pass  # an existing ledger (or a concurrent opener wrote it first)
        with self.tx() as conn:
            found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar_one()
            if int(found) > SCHEMA_VERSION:
                raise ConfigError(
                    f"The ledger at {self.url} has schema {found}, newer than this longbatch ({SCHEMA_VERSION}): "
                    "upgrade longbatch."
                )
            for version in range(int(found), SCHEMA_VERSION):
                MIGRATIONS[version](conn)
                conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version + 1)))

    # -- plan ---------------------------------------------------------------------------------

    def record_plan(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the plan with this run's: summary.csv reports on the inbox as it is now."""
        now = time.time()
        rows = list(rows)
        with self.tx() as conn:
            conn.execute(plan_rows.delete())
            for row in rows:
                conn.execute(plan_rows.delete().where(
                    (plan_rows.c.source == row["source"]) & (plan_rows.c.prompt == row["prompt"])))
                conn.execute(plan_rows.insert().values(
                    source=row["source"], prompt=row["prompt"], doc_id=row["doc_id"], sha256=row.get("sha256"),
                    model=row.get("model"), status=row["status"], reason=row.get("reason"),
                    fingerprint=row.get("fingerprint"), data=json.dumps(row, default=str), planned_at=now))

    def plan(self) -> list[dict[str, Any]]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(plan_rows).order_by(plan_rows.c.source, plan_rows.c.prompt)).mappings()
            return [dict(r) for r in rows]

    # -- requests -----------------------------------------------------------------------------

    def request(self, fingerprint: str) -> dict[str, Any] | None:
        with self.tx() as conn:
            row = conn.execute(sa.select(requests).where(requests.c.fingerprint == fingerprint)).mappings().first()
            return dict(row) if row else None

    def known_fingerprints(self, fingerprints: list[str]) -> set[str]:
        """Which of these requests the ledger already holds: one query per 500, not one each."""
        found: set[str] = set()
        with self.tx() as conn:
            for i in range(0, len(fingerprints), 500):
                chunk = fingerprints[i: i + 500]
                found.update(conn.execute(sa.select(requests.c.fingerprint)
                                          .where(requests.c.fingerprint.in_(chunk))).scalars())
        return found

    def claim(self, req: dict[str, Any]) -> bool:
        """Record a new request as queued. True if this call created it; False if the same work
        (same fingerprint) is already known, from an earlier run or a concurrent one."""
        now = time.time()
        try:
            with self.tx() as conn:
                conn.execute(requests.insert().values(
                    **req, state="queued", attempts=0, created_at=now, updated_at=now))
            return True
        except sa.exc.IntegrityError:
            return False

    def supersede(self, custom_id: str, current_fingerprint: str) -> int:
        """Older work for the same document and prompt that was never sent (queued, or failed
        before reaching the API) is dropped in favour of the current plan's request."""
        with self.tx() as conn:
            return conn.execute(requests.update().where(
                (requests.c.custom_id == custom_id) & (requests.c.fingerprint != current_fingerprint)
                & ((requests.c.state == "queued")
                   | ((requests.c.state == "failed") & (requests.c.error_type == "create_failed")))
            ).values(state="failed", error_type="superseded", updated_at=time.time(),
                     error_message="replaced by a newer plan of the same document and prompt")).rowcount

    def requeue(self, fingerprint: str, from_state: str) -> bool:
        """Move a request back to queued for another attempt; only one caller wins the move."""
        with self.tx() as conn:
            res = conn.execute(requests.update()
                               .where((requests.c.fingerprint == fingerprint) & (requests.c.state == from_state))
                               .values(state="queued", updated_at=time.time()))
            return res.rowcount == 1

    def set_request_state(self, fingerprints: Iterable[str], state: str, **values: Any) -> None:
        with self.tx() as conn:
            for fp in fingerprints:
                conn.execute(requests.update().where(requests.c.fingerprint == fp)
                             .values(state=state, updated_at=time.time(), **values))

    def requests_in_state(self, *states: str) -> list[dict[str, Any]]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(requests).where(requests.c.state.in_(states))).mappings()
            return [dict(r) for r in rows]

    def requests_by_fingerprint(self, fingerprints: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        with self.tx() as conn:
            for i in range(0, len(fingerprints), 500):
                rows = conn.execute(sa.select(requests).where(requests.c.fingerprint.in_(fingerprints[i: i + 500])))
                found.update({r["fingerprint"]: dict(r) for r in rows.mappings()})
        return found

    # -- reductions ---------------------------------------------------------------------------

    def claim_reduction(self, node: dict[str, Any]) -> bool:
        """Record a combining step as waiting; False if the same recipe is already known."""
        now = time.time()
        try:
            with self.tx() as conn:
                conn.execute(reductions.insert().values(
                    key=node["key"], final_key=node["final_key"], custom_id=node["custom_id"], source=node["source"],
                    prompt=node["prompt"], role=node["role"], state="waiting", data=json.dumps(node),
                    created_at=now, updated_at=now))
            return True
        except sa.exc.IntegrityError:
            return False

    def reductions_in_state(self, *states: str) -> list[dict[str, Any]]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(reductions).where(reductions.c.state.in_(states))
                                .order_by(reductions.c.created_at, reductions.c.custom_id)).mappings()
            return [dict(r) for r in rows]

    def reductions_of(self, final_key: str) -> list[dict[str, Any]]:
        """Every step of one split document's tree, the final one included."""
        with self.tx() as conn:
            rows = conn.execute(sa.select(reductions).where(reductions.c.final_key == final_key)).mappings()
            return [dict(r) for r in rows]

    def reduction(self, key: str) -> dict[str, Any] | None:
        with self.tx() as conn:
            row = conn.execute(sa.select(reductions).where(reductions.c.key == key)).mappings().first()
            return dict(row) if row else None

    def known_reductions(self, keys: list[str]) -> set[str]:
        with self.tx() as conn:
            return set(conn.execute(sa.select(reductions.c.key).where(reductions.c.key.in_(keys))).scalars())

    def stranded_steps(self) -> list[dict[str, Any]]:
        """Steps built and claimed whose request is still queued: a process stopped before
        sending them."""
        with self.tx() as conn:
            q = sa.select(reductions).join(requests, requests.c.fingerprint == reductions.c.fingerprint).where(
                (reductions.c.state == "built") & (requests.c.state == "queued"))
            return [dict(r) for r in conn.execute(q).mappings()]

    def set_reduction(self, key: str, state: str, fingerprint: str | None = None, error: str | None = None) -> None:
        """waiting -> built | failed; only from waiting, so a step is built once."""
        with self.tx() as conn:
            conn.execute(reductions.update().where((reductions.c.key == key) & (reductions.c.state == "waiting"))
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
            conn.execute(batches.insert().values(id=batch_id, state="intent", betas=",".join(betas),
                                                 request_count=0, intent_at=now))
            for custom_id, fp in members:
                taken = conn.execute(
                    requests.update()
                    .where((requests.c.fingerprint == fp) & (requests.c.state == "queued"))
                    .values(state="submitting", attempts=requests.c.attempts + 1, batch_id=batch_id, updated_at=now)
                ).rowcount
                if not taken:
                    continue
                attempt = conn.execute(sa.select(requests.c.attempts).where(requests.c.fingerprint == fp)).scalar_one()
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
                (batches.c.state == "intent") & (batches.c.intent_at < time.time() - older_than_seconds)
            ).values(state="unknown", error="the process stopped during create")).rowcount

    def record_created(self, batch_id: str, api_id: str, created_at: float, adopted: bool = False) -> None:
        with self.tx() as conn:
            holder = conn.execute(sa.select(batches.c.id, batches.c.adopted).where(
                (batches.c.api_id == api_id) & (batches.c.id != batch_id))).first()
            if holder is not None:
                if adopted or not holder.adopted:
                    return  # already owned: an adoption never takes a batch from its creator
                # We created it and hold the answer; a recovery had adopted it by mistake: that
                # intent goes back to unknown, to be resolved again.
                conn.execute(batches.update().where(batches.c.id == holder.id).values(
                    state="unknown", api_id=None, adopted=False, created_at=None))
                conn.execute(requests.update().where(requests.c.batch_id == holder.id).values(
                    state="submitting", updated_at=time.time()))
            conn.execute(batches.update().where(batches.c.id == batch_id).values(
                state="submitted", api_id=api_id, created_at=created_at, adopted=adopted))
            conn.execute(requests.update().where(requests.c.batch_id == batch_id).values(
                state="submitted", updated_at=time.time()))

    def record_create_failed(self, batch_id: str, error: str, unknown: bool) -> None:
        """`unknown`: the create may have happened (timeout, dropped connection): the requests
        stay out of any new batch until the outcome is resolved."""
        with self.tx() as conn:
            conn.execute(batches.update().where(batches.c.id == batch_id).values(
                state="unknown" if unknown else "failed", error=error))
            if not unknown:
                # The batch was never made: this attempt did not happen, so it is not counted.
                conn.execute(requests.update().where(requests.c.batch_id == batch_id).values(
                    state="failed", error_type="create_failed", error_message=error,
                    attempts=requests.c.attempts - 1, updated_at=time.time()))
                conn.execute(batch_members.delete().where(batch_members.c.batch_id == batch_id))

    def record_ended(self, batch_id: str, ended_at: float, counts: dict[str, int]) -> None:
        with self.tx() as conn:
            conn.execute(batches.update().where(batches.c.id == batch_id).values(
                state="ended", ended_at=ended_at, counts=json.dumps(counts)))

    def mark_collected(self, batch_id: str) -> None:
        with self.tx() as conn:
            conn.execute(batches.update().where(batches.c.id == batch_id).values(
                state="collected", collected_at=time.time()))

    def batches_in_state(self, *states: str) -> list[BatchRecord]:
        with self.tx() as conn:
            rows = conn.execute(sa.select(batches).where(batches.c.state.in_(states))
                                .order_by(batches.c.intent_at)).mappings()
            return [BatchRecord(r["id"], r["api_id"], r["state"], tuple(b for b in r["betas"].split(",") if b),
                                r["request_count"], r["intent_at"], r["created_at"], r["ended_at"],
                                bool(r["adopted"])) for r in rows]

    def members(self, batch_id: str) -> dict[str, tuple[str, int]]:
        """custom_id -> (fingerprint, attempt) for a batch."""
        with self.tx() as conn:
            rows = conn.execute(sa.select(batch_members).where(batch_members.c.batch_id == batch_id)).mappings()
            return {r["custom_id"]: (r["fingerprint"], r["attempt"]) for r in rows}

    # -- results ------------------------------------------------------------------------------

    def record_result(self, row: dict[str, Any], request_state: str, error: tuple[str | None, str | None]) -> None:
        """One result and the request's new state, in one transaction: both or neither."""
        with self.tx() as conn:
            conn.execute(results.delete().where(
                (results.c.batch_id == row["batch_id"]) & (results.c.custom_id == row["custom_id"])))
            conn.execute(results.insert().values(**row, received_at=time.time()))
            conn.execute(requests.update().where(requests.c.fingerprint == row["fingerprint"]).values(
                state=request_state, error_type=error[0], error_message=error[1], updated_at=time.time()))

    def has_result(self, batch_id: str, custom_id: str) -> bool:
        with self.tx() as conn:
            return conn.execute(sa.select(results.c.custom_id).where(
                (results.c.batch_id == batch_id) & (results.c.custom_id == custom_id))).first() is not None

    def latest_result(self, fingerprint: str) -> dict[str, Any] | None:
        with self.tx() as conn:
            row = conn.execute(sa.select(results).where(results.c.fingerprint == fingerprint)
                               .order_by(results.c.attempt.desc(), results.c.received_at.desc())).mappings().first()
            return dict(row) if row else None

    def token_counts(self) -> dict[str, int]:
        with self.tx() as conn:
            return {r.key: r.input_tokens for r in conn.execute(sa.select(token_counts))}

    def record_token_count(self, key: str, input_tokens: int) -> None:
        with self.tx() as conn:
            conn.execute(token_counts.delete().where(token_counts.c.key == key))
            conn.execute(token_counts.insert().values(key=key, input_tokens=input_tokens, counted_at=time.time()))

    def usage_rows(self) -> list[dict[str, Any]]:
        with self.tx() as conn:
            q = sa.select(results, requests.c.model, requests.c.source, requests.c.prompt).join(
                requests, requests.c.fingerprint == results.c.fingerprint)
            return [dict(r) for r in conn.execute(q).mappings()]
