"""All configuration in one pydantic-settings class: the one source of every default.

Values come from what the caller gives (CLI flags, the Prefect form, a deployment's parameters),
then environment variables prefixed LONGBATCH_ (LONGBATCH_DATA_DIR, LONGBATCH_MODEL, ...), then
the defaults below. The API key and endpoint are the two the Anthropic SDK itself reads:
ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL. A value that cannot work is refused here, with the
setting's name, before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from longbatch.catalog import DEFAULT_MODEL

DEFAULT_MIN_OUTPUT_TOKENS = 8_192


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LONGBATCH_", extra="ignore")

    # What a run does (also the fields of the Prefect form: flows/parameters.py).
    data_dir: Path = Field(Path("data"), description="Data directory: inbox/, reports/, results/ and the ledger.")
    inbox: Path | None = Field(None, description="Folder of documents (.pdf, .txt, .md); default: the data "
                                                 "directory's inbox/.")
    model: str = Field(DEFAULT_MODEL, description="Claude model id, e.g. claude-sonnet-4-6 or claude-opus-4-6.")
    prompts: list[str] = Field(default_factory=lambda: ["report"],
                               description="Prompt names (built-in: report, summary) or template files.")
    max_output_tokens: int | None = Field(
        None, gt=0, description="Output tokens asked per document; default: the most the model allows in a batch.")
    min_output_tokens: int = Field(
        DEFAULT_MIN_OUTPUT_TOKENS, gt=0, description="A document that cannot get this much output does not fit.")
    budget_usd: float | None = Field(
        None, ge=0, description="Refuse to submit when the most this run could cost exceeds this many dollars.")
    daily_cap_usd: float | None = Field(
        None, ge=0, description="Refuse to submit when what was billed today (UTC) plus the worst case of all work "
                                "in flight and of this run would exceed this many dollars.")
    monthly_cap_usd: float | None = Field(
        None, ge=0, description="The same, for the current month (UTC).")
    betas: list[str] = Field(
        default_factory=list, description="Extra beta headers for every batch (the retired context-1m is dropped).")
    pdf_mode: Literal["text", "native"] = Field(
        "text", description="PDFs as extracted text, or as the PDF itself, for tables and figures (document "
                            "blocks; split into page ranges over 600 pages or 32 MB).")
    cache: Literal["auto", "prime", "off"] = Field(
        "auto", description="Prompt caching of documents three or more prompts read (with two, the 1 h write "
                            "costs more than the read saves): a 1 h cache breakpoint after the document (later reads "
                            "cost a tenth). prime: one request per document goes "
                            "first, the others once it has ended; auto: prime when that saves at least $0.10 "
                            "more per document than hits inside one batch, else no caching; off: no caching.")
    exact_count: bool = Field(False, description="Count every document with count_tokens, not only those near a "
                                                 "limit.")
    simulate: bool = Field(False, description="Use the built-in local simulator instead of the Anthropic API.")
    wait: bool = Field(True, description="Wait for the batches and write reports; off = submit and return "
                                         "(the collector finishes).")
    max_attempts: int = Field(3, ge=1, le=10, description="Tries per request for expired and transiently failed "
                                                          "requests.")
    resend_canceled: bool = Field(False, description="Send again the requests whose batch the user canceled "
                                                     "(never done unasked).")
    follow_links: bool = Field(False, description="Read what links in the inbox point to, even outside it.")

    # Where things are.
    database_url: str | None = Field(
        None, description="The ledger's SQLAlchemy URL (e.g. postgresql+psycopg://...); default: SQLite in the "
                          "data directory.")
    project: str | None = Field(
        None, description="On a shared ledger (database_url), the project this data directory's work belongs to: "
                          "runs of one project share their work, other projects never see it. Default: the data "
                          "directory's resolved path. Name one when several machines share a data directory.")
    dask_address: str | None = Field(
        None, description="A Dask scheduler (tcp://host:8786) to read and count the documents on, through "
                          "prefect-dask (the [dask] extra); its workers must see the inbox at the same path. "
                          "Default: read on this machine.")
    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "LONGBATCH_API_KEY")
    )
    base_url: str | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "LONGBATCH_BASE_URL")
    )

    # Waiting: poll with backoff up to a deadline (a batch ends within 24 h by contract).
    poll_initial_seconds: float = Field(2.0, gt=0)
    poll_max_seconds: float = Field(60.0, gt=0)
    wait_timeout_seconds: float = Field(25 * 3600.0, gt=0)
    # A create still unconfirmed after this long is looked up on the server (and requeued if
    # absent). A live create refreshes its intent while it sends (tasks/batches.py:
    # INTENT_REFRESH_SECONDS), so only a dead or stalled one gets this old.
    intent_grace_seconds: float = Field(900.0, ge=0)
    # How long an unconfirmed create may take to show up in the server's batch list before
    # we conclude it never happened and queue its requests again.
    create_grace_seconds: float = Field(120.0, ge=0)
    # messages.count_tokens is free but rate-limited: pace the exact counts.
    count_tokens_per_minute: float = Field(50.0, ge=0)

    @model_validator(mode="after")
    def _min_within_max(self) -> Settings:
        # Only a minimum the user gave: the default one yields to a smaller maximum (see check_fit).
        given = "min_output_tokens" in self.model_fields_set
        if given and self.max_output_tokens is not None and self.min_output_tokens > self.max_output_tokens:
            raise ValueError(f"--min-output-tokens ({self.min_output_tokens:,}) is above --max-output-tokens "
                             f"({self.max_output_tokens:,}): no document could fit")
        return self

    @property
    def ledger_scope(self) -> str:
        """Whose rows a run sees in the ledger: "" in a data dir's own SQLite ledger (it holds only
        that data dir's work); on a shared one the project, else the data dir's resolved path."""
        if not self.database_url:
            return ""
        return self.project or str(self.data_dir.resolve())

    @property
    def inbox_dir(self) -> Path:
        return self.inbox or self.data_dir / "inbox"

    @classmethod
    def given(cls, **values: Any) -> Settings:
        """Settings from what a caller gave: None means "not given" (the environment and the
        defaults above decide), so a form or a flag never masks LONGBATCH_* by accident."""
        return cls(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def described(cls, name: str) -> str:
        """A field's description with its default, for forms and --help."""
        info = cls.model_fields[name]
        default = info.get_default(call_default_factory=True)
        env = f"LONGBATCH_{name.upper()}"
        if default is None or default == []:
            return f"{info.description} Empty: {env} if set."
        shown = ", ".join(default) if isinstance(default, list) else default
        return f"{info.description} Empty: {env} if set, else {shown}."
