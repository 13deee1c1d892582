"""The one place a run opens its API: Anthropic's (or ANTHROPIC_BASE_URL), or the built-in
simulator on 127.0.0.1; and the model's facts as that API reports them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import anthropic

from longbatch.api_errors import list_models
from longbatch.catalog import ModelSpec, get_model, refreshed_catalog
from longbatch.client import api_key, make_client
from longbatch.settings import Settings
from longbatch.transient import tolerate_transient

log = logging.getLogger(__name__)

# The simulator takes any key; this one says what it is wherever it shows.
SIMULATED_KEY = "simulated-no-key-needed"


def check_api_access(settings: Settings) -> None:
    """Fail before anything is created when there is no way to reach an API."""
    if not settings.simulate:
        api_key(settings)  # raises MissingApiKeyError with what to do


@contextlib.contextmanager
def open_api(settings: Settings, keep_state: bool = True) -> Iterator[anthropic.Anthropic]:
    """The client for this run. With `simulate`, a simulator serves it for as long as the
    block runs; with `keep_state` its batches live in the data dir, so `collect` finds them
    (`plan` keeps nothing)."""
    if not settings.simulate:
        yield make_client(settings)
        return
    from simulator.engine import SimConfig
    from simulator.server import SimulatorServer

    # Speed, report length and faults come from LONGBATCH_SIM_* variables (see SimConfig).
    config = SimConfig(state_dir=settings.data_dir / "simulator") if keep_state else SimConfig()
    with SimulatorServer(config) as server:
        yield anthropic.Anthropic(api_key=SIMULATED_KEY, base_url=server.url, max_retries=4)


def model_from_api(client: anthropic.Anthropic, model_id: str) -> ModelSpec:
    """The model's facts as the Models API reports them now; the built-in table when the API
    cannot be asked (a transient failure is logged, not fatal)."""
    # list_models raises an ApiError when the API cannot be used at all (unreachable, key refused).
    catalog = tolerate_transient(lambda: refreshed_catalog(list_models(client)), None,
                                 "Models API unavailable: using the built-in model table", log,
                                 also=(anthropic.NotFoundError,))
    return get_model(model_id) if catalog is None else get_model(model_id, catalog)
