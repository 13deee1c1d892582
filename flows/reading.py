"""The run's documents, read and planned: in Prefect tasks of up to INGEST_CHUNK documents, each
named after its documents (the run's artifacts show each document's outcome), every document
planned as it is read and its text let go, so a run holds a few documents, never the inbox.
On a Dask cluster (flows/dask.py) documents are read there, one task each.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.dask import on_dask
from flows import heartbeats
from longbatch.catalog import ModelSpec
from longbatch.settings import Settings
from tasks.ingest import Document, IngestFailure, display_name
from tasks.ingest_pool import WorkerPool, read_documents, size_chunks, total_bytes
from tasks.plan import Plan, Planner, planner_for
from tasks.prompts import Prompt

heartbeats.install()  # a flow run ends when its work does, not up to 1 s later

# Documents per ingest task: Prefect's ~25 ms a task stays off the per-document path at
# thousands of documents (10,000 small ones: 4.9 s in tasks of 200, 3.8 s in tasks of 1,000),
# and each task reads on every core. Big files close a task sooner, so that a run over large
# documents still shows its progress task by task.
INGEST_CHUNK = 1_000
INGEST_CHUNK_BYTES = 256 * 2**20
# Request lines (the JSON each request is sent as, UTF-8) a run keeps from planning to sending;
# beyond it requests are lean and rendered again from the ingest cache when their batch is
# written. Small inboxes (10,000 documents of 5 KB) are never read twice, and what is kept is
# written to the batch body as it is; big ones hold this much more memory at most.
KEEP_TEXT_BYTES = 64 * 2**20


@task(name="ingest-and-plan", task_run_name="ingest-{label}", cache_policy=NO_CACHE)
def ingest_and_plan_task(paths: list[Path], settings: Settings, planner: Planner, pool: WorkerPool,
                         label: str) -> None:
    """Read these documents (the run's worker processes, the cache) and plan each as it
    arrives: the planner keeps no document's text."""
    reading = read_documents(paths, settings.inbox_dir, settings.pdf_mode == "native", settings.data_dir / "cache",
                             follow_links=settings.follow_links, pool=pool)
    with closing(reading):  # planning failed: its workers stop now, not when the traceback goes
        planner.add(_warn_failures(reading))


@task(name="ingest-documents", task_run_name="ingest-{label}", cache_policy=NO_CACHE)
def ingest_task(paths: list[Path], inbox: Path, native_pdf: bool, follow_links: bool,
                label: str) -> list[Document | IngestFailure]:
    """Read these documents in this process (a Dask worker) and return them."""
    return list(_warn_failures(read_documents(paths, inbox, native_pdf, None, 1, follow_links)))


@flow(name="ingest-on-cluster")
def ingest_on_cluster(paths: list[Path], inbox: Path, native_pdf: bool,
                      follow_links: bool) -> list[Document | IngestFailure]:
    """Read and count every document on this flow's task runner (a Dask cluster: flows/dask.py),
    one task per document: the cluster spreads them over its workers, each reading in-process."""
    futures = [ingest_task.submit([path], inbox, native_pdf, follow_links, path.name) for path in paths]
    return [item for future in futures for item in future.result()]


@task(name="make-plan", cache_policy=NO_CACHE)
def plan_task(planner: Planner) -> Plan:
    """Pack the planned requests into batches."""
    return planner.plan()


class Inbox:
    """The run's documents, planned as often as the plan changes (the model's facts as the API
    gives them, exact counts), each time read again through the ingest cache (a hash per file).
    On a Dask cluster they are read there once and kept: its workers do not share this cache,
    and their requests keep their text (rendering them here would read every file again)."""

    def __init__(self, paths: list[Path], settings: Settings) -> None:
        self.paths, self.settings = paths, settings
        self.cluster_items: list[Document | IngestFailure] | None = None
        if settings.dask_address and paths:  # on the cluster's workers: absolute paths, not symlinks resolved
            self.cluster_items = on_dask(ingest_on_cluster, settings.dask_address)(
                [p.absolute() for p in paths], settings.inbox_dir.absolute(), settings.pdf_mode == "native",
                settings.follow_links)

    def plan(self, prompts: list[Prompt], model: ModelSpec, counts: Mapping[str, int] | None = None) -> Plan:
        if self.cluster_items is not None:
            return plan_task(planner_for(prompts, model, self.settings, counts).add(self.cluster_items))
        planner = planner_for(prompts, model, self.settings, counts, keep_text_bytes=KEEP_TEXT_BYTES)
        with WorkerPool(run_bytes=total_bytes(self.paths)) as pool:  # started once for all the tasks
            for chunk in ingest_chunks(self.paths):
                label = chunk[0].name if len(chunk) == 1 else f"{chunk[0].name}-and-{len(chunk) - 1}-more"
                ingest_and_plan_task(chunk, self.settings, planner, pool, label)
        return plan_task(planner)

    def documents(self, sources: set[str]) -> Iterator[Document]:
        """These documents, read again (through the cache) one at a time."""
        items: Iterable[Document | IngestFailure]
        if self.cluster_items is not None:
            items = self.cluster_items
        else:
            inbox = self.settings.inbox_dir
            paths = [p for p in self.paths if display_name(p.relative_to(inbox).as_posix()) in sources]
            items = read_documents(paths, inbox, self.settings.pdf_mode == "native", self.settings.data_dir / "cache",
                                   follow_links=self.settings.follow_links)
        return (d for d in items if isinstance(d, Document) and d.source in sources)


def ingest_chunks(paths: list[Path]) -> Iterator[list[Path]]:
    """The paths in order, in chunks of at most INGEST_CHUNK files and INGEST_CHUNK_BYTES."""
    for chunk in size_chunks(paths, INGEST_CHUNK, INGEST_CHUNK_BYTES):
        yield [paths[i] for i in chunk]


def _warn_failures(items: Iterable[Document | IngestFailure]) -> Iterator[Document | IngestFailure]:
    for item in items:
        if isinstance(item, IngestFailure):
            get_run_logger().warning("%s: %s (%s)", item.source, item.reason, item.category)
        yield item
