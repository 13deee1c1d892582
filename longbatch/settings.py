"""All configuration in one pydantic-settings class: environment variables, then CLI flags.

Environment variables are prefixed LONGBATCH_ (LONGBATCH_DATA_DIR, LONGBATCH_MODEL, ...), except
the two the Anthropic SDK itself reads: ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from longbatch.catalog import DEFAULT_MODEL


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LONGBATCH_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where inbox/, reports/ and the ledger live.")
    model: str = Field(DEFAULT_MODEL, description="Claude model id.")
    prompts: list[str] = Field(default_factory=lambda: ["report"], description="Prompt names or files.")
    max_output_tokens: int | None = Field(
        None, ge=1, description="Output budget asked per request; default: the most the model allows in a batch."
    )
    min_output_tokens: int = Field(
        8_192, ge=1, description="A document that cannot get at least this much output does not fit."
    )
    budget_usd: float | None = Field(None, ge=0, description="Refuse to submit when the estimate exceeds this.")
    betas: list[str] = Field(default_factory=list, description="Extra beta headers for every batch.")
    pdf_mode: Literal["text", "native"] = Field(
        "text", description="PDFs as extracted text, or as the PDF itself (document blocks).")
    follow_links: bool = Field(False, description="Read what links in the inbox point to, even outside it.")

    simulate: bool = Field(False, description="Use the built-in local Batches API simulator.")
    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "LONGBATCH_API_KEY")
    )
    base_url: str | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "LONGBATCH_BASE_URL")
    )

    # Waiting: poll with backoff up to a deadline (a batch ends within 24 h by contract).
    poll_initial_seconds: float = 2.0
    poll_max_seconds: float = 60.0
    wait_timeout_seconds: float = 25 * 3600.0
    # A create still unconfirmed after this long is looked up on the server (and requeued if
    # absent). Longer than the client's request timeout, so a live create is never second-guessed.
    intent_grace_seconds: float = 900.0
    # How long an unconfirmed create may take to show up in the server's batch list before
    # we conclude it never happened and queue its requests again.
    create_grace_seconds: float = 120.0
    # messages.count_tokens is free but rate-limited: pace the exact counts.
    count_tokens_per_minute: float = 50.0

    @model_validator(mode="after")
    def _min_within_max(self) -> "Settings":
        # Only a minimum the user gave: the default one yields to a smaller maximum (see check_fit).
        given = "min_output_tokens" in self.model_fields_set
        if given and self.max_output_tokens is not None and self.min_output_tokens > self.max_output_tokens:
            raise ValueError(f"--min-output-tokens ({self.min_output_tokens:,}) is above --max-output-tokens "
                             f"({self.max_output_tokens:,}): no document could fit")
        return self

    @property
    def inbox(self) -> Path:
        return self.data_dir / "inbox"

