"""The ledger's schema: its tables, and the migrations that bring an older ledger up to date.

Queries live in `longbatch/ledger.py`; this module only says what is stored and opens the
database at the current schema.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from longbatch.errors import ConfigError

SCHEMA_VERSION = 7

# Every row of work belongs to a scope (schema 6): the data dir, or the project, that made it.
# A data dir's own SQLite ledger uses "" (the scope every row written before schema 6 has); a
# shared ledger (LONGBATCH_DATABASE_URL) uses LONGBATCH_PROJECT or the data dir's resolved path.
# Each table's key starts with it, so two scopes planning the same document never collide.


def _scope() -> sa.Column:
    return sa.Column("scope", sa.Text, nullable=False, server_default="")


def _scope_key() -> sa.Column:
    return sa.Column("scope", sa.Text, primary_key=True, server_default="")

metadata = sa.MetaData()

meta = sa.Table("meta", metadata, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text))

# The latest plan row per (document path, prompt, model): what summary.csv reports on. Rows of
# other prompts and models stay (schema 5): the summary is of everything the data dir holds.
plan_rows = sa.Table(
    "plan_rows", metadata,
    _scope_key(),
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("prompt", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("doc_id", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64)),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("data", sa.Text),  # the whole plan row as JSON, for the summary
    sa.Column("planned_at", sa.Float, nullable=False),
)

requests = sa.Table(
    "requests", metadata,
    _scope_key(),
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
    # Schema 6: the request that primes the prompt cache for this one; it is held until then.
    sa.Column("primer", sa.String(64)),
    # Schema 6: the most it can cost (every granted token used, cache write included), for the
    # standing caps' count of what is in flight.
    sa.Column("max_cost_usd", sa.Float),
)

# Schema 6: spend a run has been allowed under the standing caps (daily, monthly) but has not
# recorded as requests yet; counted as in flight until the run has claimed its work.
spend_reservations = sa.Table(
    "spend_reservations", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("amount_usd", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Combining steps of split documents (schema 4): the recipe is known at plan time, the request
# only once the reports it combines exist. waiting -> built (fingerprint set) | failed.
reductions = sa.Table(
    "reductions", metadata,
    _scope_key(),
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
    sa.Column("api_id", sa.String(128), unique=True),  # unique across scopes: one batch has one owner
    _scope(),
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
    # Schema 6: the run (Prefect flow run, else the process) that created it, for `longbatch
    # usage`; and when the user canceled it (`longbatch cancel`).
    sa.Column("run_id", sa.String(64)),
    sa.Column("canceled_at", sa.Float),
)

batch_members = sa.Table(
    "batch_members", metadata,
    sa.Column("batch_id", sa.String(64), sa.ForeignKey("batches.id"), primary_key=True),
    sa.Column("custom_id", sa.String(64), primary_key=True),
    # The request is (the batch's scope, fingerprint); batch ids are unique, so no scope here.
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
)

results = sa.Table(
    "results", metadata,
    _scope_key(),
    sa.Column("batch_id", sa.String(64), primary_key=True),  # the API's batch id
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


# Every lookup the ledger makes has an index (schema 5).
LOOKUP_INDEXES = [
    sa.Index("ix_requests_state", requests.c.state),
    sa.Index("ix_requests_custom_id", requests.c.custom_id),
    sa.Index("ix_results_fingerprint", results.c.fingerprint),
    sa.Index("ix_batches_state", batches.c.state),
    sa.Index("ix_batch_members_fingerprint", batch_members.c.fingerprint),
    sa.Index("ix_reductions_state", reductions.c.state),
]


# MIGRATIONS[n] takes a ledger from schema n to n + 1, inside the opening transaction.
def _v4_to_v5(conn: Connection) -> None:
    """Plan rows are kept per model as well (the summary lists every model's reports), and every
    lookup has an index."""
    conn.execute(sa.text("ALTER TABLE plan_rows RENAME TO plan_rows_v4"))
    if conn.dialect.name == "postgresql":  # constraint names are per schema there: free the key's
        pk = sa.inspect(conn).get_pk_constraint("plan_rows_v4")["name"]
        conn.execute(sa.text(f'ALTER TABLE plan_rows_v4 RENAME CONSTRAINT "{pk}" TO plan_rows_v4_pkey'))
    plan_rows.create(conn)
    conn.execute(sa.text(
        "INSERT INTO plan_rows (source, prompt, model, doc_id, sha256, status, reason, fingerprint, data, planned_at) "
        "SELECT source, prompt, COALESCE(model, ''), doc_id, sha256, status, reason, fingerprint, data, planned_at "
        "FROM plan_rows_v4"))
    conn.execute(sa.text("DROP TABLE plan_rows_v4"))
    for index in LOOKUP_INDEXES:
        index.create(conn, checkfirst=True)


# The tables whose key gains the scope (schema 6), and that key.
SCOPED_KEYS = {"plan_rows": ("scope", "source", "prompt", "model"), "requests": ("scope", "fingerprint"),
               "reductions": ("scope", "key"), "results": ("scope", "batch_id", "custom_id")}


def _v5_to_v6(conn: Connection) -> None:
    """Every row belongs to a scope: `scope` starts the keys of plan rows, requests, steps and
    results, and is a column of batches. Rows written before get "", the scope of a data dir's own
    SQLite ledger, so such a ledger reads on unchanged. Safe to run on a ledger that has it."""
    if conn.dialect.name == "sqlite":
        # SQLite cannot change a key in place: such tables are rebuilt. batch_members first, so
        # its old reference to requests.fingerprint (no longer a key on its own) goes with it.
        for table in (batch_members, plan_rows, requests, reductions, results):
            if table is batch_members or _key(conn, table.name) != SCOPED_KEYS[table.name]:
                _rebuild_sqlite(conn, table)
        if "scope" not in _columns(conn, "batches"):
            conn.execute(sa.text("ALTER TABLE batches ADD COLUMN scope TEXT NOT NULL DEFAULT ''"))
    else:
        for name in ("batches", *SCOPED_KEYS):
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS scope TEXT NOT NULL DEFAULT ''"))
        for fk in sa.inspect(conn).get_foreign_keys("batch_members"):
            if fk["referred_table"] == "requests" and fk["name"]:
                conn.execute(sa.text(f'ALTER TABLE batch_members DROP CONSTRAINT "{fk["name"]}"'))
        for name, key in SCOPED_KEYS.items():
            if _key(conn, name) != key:
                pk = sa.inspect(conn).get_pk_constraint(name)["name"]
                conn.execute(sa.text(f'ALTER TABLE {name} DROP CONSTRAINT "{pk}"'))
                conn.execute(sa.text(f"ALTER TABLE {name} ADD PRIMARY KEY ({', '.join(key)})"))
    for index in LOOKUP_INDEXES:
        index.create(conn, checkfirst=True)


def _columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns(table)}


def _key(conn: Connection, table: str) -> tuple[str, ...]:
    return tuple(sa.inspect(conn).get_pk_constraint(table)["constrained_columns"])


def _rebuild_sqlite(conn: Connection, table: sa.Table) -> None:
    """Recreate `table` at the current schema, keeping its rows (new columns take their default)."""
    old = f"{table.name}_v5"
    kept = [c for c in table.columns.keys() if c in _columns(conn, table.name)]
    conn.execute(sa.text(f"ALTER TABLE {table.name} RENAME TO {old}"))
    for index in sa.inspect(conn).get_indexes(old):  # index names are per database: free them
        conn.execute(sa.text(f'DROP INDEX "{index["name"]}"'))
    table.create(conn)
    columns = ", ".join(kept)
    conn.execute(sa.text(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {old}"))
    conn.execute(sa.text(f"DROP TABLE {old}"))


def _v6_to_v7(conn: Connection) -> None:
    """Batches say which run made them and when the user canceled them; a request which
    request primes the cache for it and its worst-case cost (spend_reservations is a new table:
    create_all has made it)."""
    # A table schema 6 rebuilt (SQLite) already has them: add only what is missing.
    for table, column, kind in (("requests", "primer", "VARCHAR(64)"), ("requests", "max_cost_usd", "FLOAT"),
                                ("batches", "run_id", "VARCHAR(64)"), ("batches", "canceled_at", "FLOAT")):
        if column not in _columns(conn, table):
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5, 5: _v5_to_v6, 6: _v6_to_v7}


# count_tokens answers, cached by what was counted (schema 3): free, but rate-limited.
token_counts = sa.Table(
    "token_counts", metadata,
    sa.Column("key", sa.String(200), primary_key=True),  # model:document sha256:prompt sha256
    sa.Column("input_tokens", sa.Integer, nullable=False),
    sa.Column("counted_at", sa.Float, nullable=False),
)


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'ledger.sqlite').resolve()}"


def open_engine(url: str) -> Engine:
    """An engine on the ledger at `url`, its tables created or migrated to SCHEMA_VERSION."""
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, future=True, connect_args={"timeout": 60} if is_sqlite else {})
    if is_sqlite:
        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()
    _migrate(engine, url)
    return engine


def _migrate(engine: Engine, url: str) -> None:
    # Of two processes opening a ledger at once, one creates or migrates it and the other then
    # finds it done: PostgreSQL holds the second on the locked schema_version row; SQLite, whose
    # driver runs DDL outside the transaction, by a file lock beside the database (else the
    # second could see, or recreate, a table the first is rebuilding).
    with _sqlite_lock(url):
        # Two processes creating a new PostgreSQL ledger race to create the tables; the loser
        # sees "already exists" and simply looks again.
        for attempt in range(5):
            try:
                metadata.create_all(engine)
                break
            except sa.exc.DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))
        try:
            with engine.begin() as conn:
                conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        except sa.exc.IntegrityError:
            pass  # an existing ledger (or a concurrent opener wrote it first)
        _migrate_once(engine, url)


@contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    if not url.startswith("sqlite"):
        yield
        return
    with open(url.split("///", 1)[1] + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _migrate_once(engine: Engine, url: str) -> None:
    with engine.begin() as conn:
        found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")
                             .with_for_update()).scalar_one()
        if int(found) > SCHEMA_VERSION:
            raise ConfigError(
                f"The ledger at {url} has schema {found}, newer than this longbatch ({SCHEMA_VERSION}): "
                "upgrade longbatch."
            )
        for version in range(int(found), SCHEMA_VERSION):
            MIGRATIONS[version](conn)
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version + 1)))
