"""Which run is at work: the Prefect flow run when there is one, else this process. The ledger
stamps each batch with it, so `longbatch usage` can show what each run spent."""

from __future__ import annotations

import uuid

# A run outside Prefect (a script calling the stages): one id for the life of the process.
_PROCESS_RUN = f"process-{uuid.uuid4().hex[:16]}"


def current_run_id() -> str:
    try:
        from prefect.runtime import flow_run
    except ImportError:  # pragma: no cover - Prefect is a dependency; the stages do not need it
        return _PROCESS_RUN
    return str(flow_run.id or _PROCESS_RUN)
