"""Schema 5 exactly as longbatch wrote it (copied from longbatch/schema.py before schema 6), to
build old ledgers that migration tests open. Frozen: never edit to follow the current schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

meta = sa.Table("meta", metadata, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text))

# The latest plan row per (document path, prompt, model): what summary.csv reports on. Rows of
# other prompts and models stay (schema 5): the summary is of everything the data dir holds.
plan_rows = sa.Table(
    "plan_rows", metadata,
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


# count_tokens answers, cached by what was counted (schema 3): free, but rate-limited.
token_counts = sa.Table(
    "token_counts", metadata,
    sa.Column("key", sa.String(200), primary_key=True),  # model:document sha256:prompt sha256
    sa.Column("input_tokens", sa.Integer, nullable=False),
    sa.Column("counted_at", sa.Float, nullable=False),
)


LOOKUP_INDEXES = [
    sa.Index("ix_requests_state", requests.c.state),
    sa.Index("ix_requests_custom_id", requests.c.custom_id),
    sa.Index("ix_results_fingerprint", results.c.fingerprint),
    sa.Index("ix_batches_state", batches.c.state),
    sa.Index("ix_batch_members_fingerprint", batch_members.c.fingerprint),
    sa.Index("ix_reductions_state", reductions.c.state),
]
