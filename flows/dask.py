"""Reading and counting documents on a Dask cluster (LONGBATCH_DASK_ADDRESS), through
prefect-dask's task runner: `pip install 'longbatch[dask]'`.

Only ingest goes there: it is the CPU-heavy stage (PDF text extraction, then tiktoken), one
task per document. The workers read each file themselves, so they must see the inbox at the
same absolute path as the flow run (a shared or network filesystem); what comes back is the
`Document` (its text and token count) or the `IngestFailure`.
"""

from __future__ import annotations

from typing import Any

from longbatch.errors import ConfigError


def on_dask(flow: Any, address: str) -> Any:
    """`flow` with its tasks sent to the Dask scheduler at `address`."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(f"LONGBATCH_DASK_ADDRESS is set ({address}) but prefect-dask is not installed: "
                          "pip install 'longbatch[dask]', or unset it to read documents on this machine.") from exc
    return flow.with_options(task_runner=DaskTaskRunner(address=address))
