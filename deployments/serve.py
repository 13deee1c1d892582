"""Serve longbatch's flows from this process: a nightly run over data/inbox, an on-demand
run with a parameter form in the Prefect UI, and a collector every 15 minutes.

    python deployments/serve.py            # needs a Prefect server: `prefect server start`

Importing this module has no side effects; only running it serves.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.process import RunParameters, collect_batches, process_documents  # noqa: E402


def build_deployments(data_dir: str = "data") -> list:
    nightly = process_documents.to_deployment(
        name="nightly",
        cron="0 2 * * *",
        # Submit and return: batches take up to 24 h, and the collector writes their reports.
        parameters={"params": RunParameters(data_dir=data_dir, wait=False).model_dump()},
        description="Every night at 02:00: submit every new or changed document in the inbox; the collector "
                    "writes the reports when the batches end.",
        tags=["longbatch", "scheduled"],
    )
    on_demand = process_documents.to_deployment(
        name="on-demand",
        parameters={"params": RunParameters(data_dir=data_dir).model_dump()},
        description="Run from the Prefect UI: the form sets model, prompts, output budget and budget cap.",
        tags=["longbatch", "manual"],
    )
    collector = collect_batches.to_deployment(
        name="collector",
        interval=900,
        parameters={"data_dir": data_dir},
        description="Every 15 minutes: write the reports of batches that ended (nightly runs, and runs started "
                    "with wait off) and resend what may be retried.",
        tags=["longbatch", "collector"],
    )
    return [nightly, on_demand, collector]


if __name__ == "__main__":
    from prefect import serve

    serve(*build_deployments(*(sys.argv[1:2] or [])))
