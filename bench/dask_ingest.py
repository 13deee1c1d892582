"""Ingest of the corpus's long PDFs on a 2-worker Dask cluster vs on this machine, as ratios
against the raw library in the same run.

    python bench/dask_ingest.py [--corpus ../shared/corpus] [--workers 2]

1. raw: `tasks.ingest.read_document` over every PDF, one after another, in this process (what
   one core does; pypdf and tiktoken inside).
2. local: one `ingest-documents` task per document (`ingest_task.map` on Prefect's default
   thread pool: one process, so the GIL shares one core among the threads). (A run without a
   Dask address reads in worker processes instead: bench/ingest_parallel.py.)
3. dask: the `ingest-on-cluster` subflow on `DaskTaskRunner(address=...)` of a
   `distributed.LocalCluster` of worker processes on 127.0.0.1 (the LONGBATCH_DASK_ADDRESS path).
A ratio below 1 means faster than raw. Every measurement includes Prefect's own task overhead
except raw's; the cluster's start-up is not counted (it is already running in real use).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="lb-bench-prefect-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

PDFS = ["long_freeculture_lessig_2004_352p.pdf", "long_irs_irm_2.3.59_400p.pdf",
        "long_mupdf_explored_book_285p.pdf", "long_who_hcv_guidelines_2022_155p.pdf"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from distributed import LocalCluster
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from flows.dask import on_dask
    from flows.reading import ingest_on_cluster, ingest_task
    from tasks.ingest import Document, read_document

    inbox = (args.corpus / "pdf").absolute()
    paths = [inbox / name for name in PDFS]

    @flow(name="bench-local-ingest")
    def local_ingest(paths: list[Path], inbox: Path) -> list:
        futures = ingest_task.map([[p] for p in paths], inbox=inbox, native_pdf=False, follow_links=False,
                                  label=[p.name for p in paths])
        return [item for future in futures for item in future.result()]

    with prefect_test_harness(server_startup_timeout=120):
        read_document(paths[0], inbox)  # warm: imports, fonts and the file cache, as the others are
        start = time.perf_counter()
        raw = [read_document(p, inbox) for p in paths]
        t_raw = time.perf_counter() - start
        pages = sum(d.page_count or 0 for d in raw if isinstance(d, Document))

        local_ingest(paths[:1], inbox)  # warm Prefect up: its first flow run pays one-off costs
        start = time.perf_counter()
        local = local_ingest(paths, inbox)
        t_local = time.perf_counter() - start

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster:
            on_cluster = on_dask(ingest_on_cluster, cluster.scheduler_address)
            on_cluster(paths[:1], inbox, False, False)  # warm the workers' imports, as a running cluster would be
            start = time.perf_counter()
            remote = on_cluster(paths, inbox, False, False)
            t_dask = time.perf_counter() - start

    same = [(d.doc_id, d.body_cl100k) for d in raw] == [(d.doc_id, d.body_cl100k) for d in local] == \
        [(d.doc_id, d.body_cl100k) for d in remote]
    print(f"{len(paths)} PDFs, {pages:,} pages; {os.cpu_count()} cores here; same documents and counts: {same}")
    print(f"{'raw read_document, sequential':<40} {t_raw:7.1f} s  {pages / t_raw:6.1f} pages/s  ratio 1.00")
    print(f"{'local flow ingest (threads)':<40} {t_local:7.1f} s  {pages / t_local:6.1f} pages/s  "
          f"ratio {t_local / t_raw:.2f}")
    print(f"{f'Dask, {args.workers} worker processes':<40} {t_dask:7.1f} s  {pages / t_dask:6.1f} pages/s  "
          f"ratio {t_dask / t_raw:.2f}")


if __name__ == "__main__":
    main()
