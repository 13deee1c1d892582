"""What a run takes from the Prefect form, a deployment or Python: the run's settings.

Every field is optional: empty means "the setting's own default", taken from the environment
(LONGBATCH_*) and then `longbatch/settings.py`, the one place defaults live. So a worker's
LONGBATCH_MODEL reaches a run started from a deployment that names no model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from longbatch.catalog import model_choices
from longbatch.settings import Settings


def _described(name: str, **constraints: float):  # noqa: ANN202 - a pydantic FieldInfo
    return Field(None, description=Settings.described(name), **constraints)


def _model_choice(schema: dict) -> None:
    """The form offers the catalogue's models (the server checks a run's parameters against it);
    from Python and the CLI any id reaches the catalogue, which refuses an unknown one itself."""
    for branch in schema.get("anyOf", []):
        if branch.get("type") == "string":
            branch["enum"] = model_choices()


class RunParameters(BaseModel):
    """What a run needs. In the Prefect UI these fields are the form of a run."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str | None = _described("data_dir")
    inbox: str | None = _described("inbox")
    model: str | None = Field(None, description=Settings.described("model"), json_schema_extra=_model_choice)
    prompts: list[str] | None = _described("prompts")
    max_output_tokens: int | None = _described("max_output_tokens", gt=0)
    min_output_tokens: int | None = _described("min_output_tokens", gt=0)
    wait: bool | None = _described("wait")
    budget_usd: float | None = _described("budget_usd", ge=0)
    daily_cap_usd: float | None = _described("daily_cap_usd", ge=0)
    monthly_cap_usd: float | None = _described("monthly_cap_usd", ge=0)
    simulate: bool | None = _described("simulate")
    max_attempts: int | None = _described("max_attempts", ge=1, le=10)
    exact_count: bool | None = _described("exact_count")
    betas: list[str] | None = _described("betas")
    pdf_mode: Literal["text", "native"] | None = _described("pdf_mode")
    follow_links: bool | None = _described("follow_links")
    project: str | None = _described("project")
    dask_address: str | None = _described("dask_address")
    cache: Literal["auto", "prime", "off"] | None = _described("cache")
    resend_canceled: bool | None = _described("resend_canceled")

    def settings(self) -> Settings:
        return Settings.given(**self.model_dump())
