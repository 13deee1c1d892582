"""How the simulator behaves: one settings class, `LONGBATCH_SIM_*` variables or
`longbatch simulator` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SimConfig(BaseSettings):
    """How the simulator behaves. Every field can be set by a LONGBATCH_SIM_* environment
    variable (LONGBATCH_SIM_FAULT_RATE=0.2, ...) or by `longbatch simulator` flags."""

    model_config = SettingsConfigDict(env_prefix="LONGBATCH_SIM_", extra="ignore")

    processing_seconds: float = 2.0  # time for a whole batch to finish
    output_tokens: int = 1_500  # length the simulated model aims for in each report
    expiry_seconds: float = 24 * 3600.0  # scaled down in tests to exercise `expired`
    max_batch_requests: int = 100_000
    max_body_bytes: int = 256_000_000
    state_dir: Path | None = None  # where batches survive a restart; in memory when None

    # Fault injection (all off by default).
    fault_rate: float = 0.0  # chance that an HTTP call answers with one of fault_statuses
    fault_statuses: list[int] = Field(default_factory=lambda: [429, 500, 529])
    fault_endpoints: list[str] = Field(default_factory=list)  # empty: every endpoint
    not_found_after_create_seconds: float = 0.0  # retrieve answers 404 this long after create
    drop_after_create_rate: float = 0.0  # create succeeds, then the connection drops unanswered
    errored_rate: float = 0.0  # chance a request ends errored (overloaded_error: retryable)
    expired_rate: float = 0.0  # chance a request ends expired
    results_bytes_per_second: float = 0.0  # throttle results downloads; 0: full speed
    upload_bytes_per_second: float = 0.0  # read request bodies this fast (a slow link); 0: full speed
    seed: int = 0
    # Misbehaving servers, for the tests of what users hit first (all off by default):
    # error answers and errored results quote the request's x-api-key / Authorization header
    # (as some proxies and servers do); a key the server refuses (401 for any other key); a
    # create that makes the batch but answers 200 with a body that is not a batch ("json": a
    # JSON object without id, "html": an HTML page).
    echo_key_in_errors: bool = False
    require_api_key: str | None = None
    bogus_create_body: Literal["", "json", "html"] = ""
    # Prompt caching: the chance that a request reads a prefix another request of the same batch
    # wrote (best effort in batches: 30-98 % is reported); across batches a live entry always hits.
    cache_hit_rate_in_batch: float = Field(0.6, ge=0, le=1)
    # The service's own model facts where they differ from the built-in table, e.g.
    # {"claude-sonnet-4-6": {"context_window": 500000, "lifecycle": "deprecated"}}.
    model_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
