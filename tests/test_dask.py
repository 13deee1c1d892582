"""Ingest on a Dask cluster (LONGBATCH_DASK_ADDRESS): a real scheduler and two worker processes
on 127.0.0.1, started here; the run's documents are read and counted on the workers, and the
run ends as it would on one machine."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from flows.process import RunParameters, process_documents
from tasks.ingest import Document, IngestFailure, read_document


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as local, Client(local) as client:
        yield local, client


def test_documents_are_read_and_counted_on_the_dask_workers(cluster, data_dir, corpus, sim, monkeypatch):
    from distributed import get_task_stream

    local, client = cluster
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    inbox = data_dir / "inbox"
    shutil.copy(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", inbox / "tracemonkey.pdf")
    shutil.copy(corpus / "pdf/enc_owner_restricted_rc4_dmca_18p.pdf", inbox / "dmca.pdf")
    shutil.copy(corpus / "text/sec_10k_apple.md", inbox / "apple.md")
    shutil.copy(corpus / "pdf/broken_header_and_eof_only_44bytes.pdf", inbox / "broken.pdf")  # bad input too

    with get_task_stream(client) as stream:
        result = process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=2_000,
                                                 dask_address=local.scheduler_address))
    ran_on = {task["worker"] for task in stream.data}
    assert len(stream.data) == 4, stream.data  # one task per document, each on a worker of the cluster
    assert ran_on <= set(local.scheduler_info["workers"]) and ran_on

    summary = pd.read_csv(result["summary_csv"]).set_index("source")
    assert summary.loc[["tracemonkey.pdf", "dmca.pdf", "apple.md"], "status"].tolist() == ["complete"] * 3
    assert summary.loc["broken.pdf", "status"] == "error" and "corrupt" in summary.loc["broken.pdf", "reason"]
    # What the workers read is what this machine reads: same documents, same sizes, same counts.
    for name in ("tracemonkey.pdf", "dmca.pdf", "apple.md"):
        local_doc = read_document(inbox / name, inbox)
        assert isinstance(local_doc, Document)
        row = summary.loc[name]
        assert (row["doc_id"], row["chars"]) == (local_doc.doc_id, local_doc.chars)
    assert isinstance(read_document(inbox / "broken.pdf", inbox), IngestFailure)
