"""Priming the cache: one request per document first, the others once it has ended — held in
the ledger meanwhile, released exactly once, resumable, and never sent after a user's cancel."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter

import anthropic
import pandas as pd
import pytest

from flows.cancel import cancel_in_flight
from flows.process import RunParameters, collect_batches, process_documents
from longbatch.catalog import get_model
from longbatch.ledger import Ledger
from longbatch.records import BatchState, NewRequest, RequestState
from simulator.engine import SimConfig
from simulator.server import SimulatorServer
from tasks.ingest import Document
from tasks.plan import make_plan
from tasks.priming import choose_primers, extra_saving_usd
from tasks.prompts import load_prompt

SONNET46 = get_model("claude-sonnet-4-6")
LONG = "The board met on Tuesday and approved the budget for the coming year. " * 400


def doc(text: str, name: str = "doc.txt") -> Document:
    sha = hashlib.sha256(text.encode()).hexdigest()
    return Document(f"{name.split('.')[0]}-{sha[:12]}", name, "text", sha, len(text), (text,), text, len(text) // 4)


def test_one_primer_per_document_and_prompt_group(tmp_path):
    prompts = [load_prompt(n, tmp_path) for n in ("report", "summary")]
    (tmp_path / "risks.md").write_text("List the risks.")
    prompts.append(load_prompt(str(tmp_path / "risks.md"), tmp_path))
    plan = make_plan([doc(LONG, "a.txt"), doc(LONG + " More.", "b.txt")], prompts, SONNET46, 20_000, 4_096,
                     cache="prime")
    primers = dict(plan.primers)
    assert len(primers) == 4  # two readers per document
    by_fp = {r.fingerprint: r for r in plan.requests}
    for reader, primer in primers.items():
        assert by_fp[reader].doc_id == by_fp[primer].doc_id and by_fp[primer].prompt == "report"
    assert make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="off").primers == ()
    assert make_plan([doc(LONG)], prompts[:1], SONNET46, 20_000, 4_096, cache="prime").primers == ()
    # auto: a 7K-token document is not worth the wait; a 500K-token one is.
    assert make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="auto").primers == ()
    requests = make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="prime").requests
    tokens = {r.custom_id: 500_000 for r in requests}
    assert len(choose_primers(requests, tokens, SONNET46, "auto")) == 2
    assert extra_saving_usd(SONNET46, 500_000, 2) == pytest.approx(2 * 500_000 * 0.5 * 3e-6 * 0.5 * 0.9)


def test_a_held_request_is_released_once(tmp_path):
    ledger = Ledger.for_data_dir(tmp_path)
    new = lambda fp, cid: NewRequest(fp, cid, "d", "a.txt", "0" * 64, "report", "claude-sonnet-4-6", 10, ())  # noqa: E731
    assert ledger.claim(new("p" * 64, "d--report"))
    assert ledger.claim(new("r" * 64, "d--summary"), primer="p" * 64)
    assert ledger.request("r" * 64).state == RequestState.HELD and ledger.request("r" * 64).primer == "p" * 64
    from tasks.priming import release_primed

    assert release_primed(ledger) == []  # the primer is still queued
    ledger.set_request_state(["p" * 64], RequestState.SUCCEEDED)
    assert release_primed(ledger) == ["r" * 64] and release_primed(ledger) == []
    assert ledger.release_held("r" * 64, RequestState.QUEUED) is False  # already moved: a second caller loses
    ledger.close()


@pytest.fixture
def api(monkeypatch, request):
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")
    marker = request.node.get_closest_marker("processing_seconds")
    # No hits inside a batch at all: every read below comes from priming.
    with SimulatorServer(SimConfig(processing_seconds=marker.args[0] if marker else 0.5, output_tokens=200,
                                   cache_hit_rate_in_batch=0.0)) as sim:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
        yield sim


def three_prompts(data_dir, corpus):
    shutil.copy(corpus / "text/sec_10k_apple.md", data_dir / "inbox" / "apple.md")
    shutil.copy(corpus / "text/udhr_article1_multilingual.txt", data_dir / "inbox" / "udhr.txt")
    (data_dir / "prompts").mkdir()
    (data_dir / "prompts" / "risks.md").write_text("List every risk the document names.\n")
    return ["report", "summary", "risks"]


def test_primed_run_reads_every_later_request_from_the_cache(data_dir, corpus, api):
    prompts = three_prompts(data_dir, corpus)
    process_documents(RunParameters(data_dir=str(data_dir), prompts=prompts, cache="prime", max_output_tokens=1_000))
    log = api.sim.create_log
    assert [len(ids) for _, ids in log] == [2, 4]  # the primers, then the readers
    assert Counter(cid for _, ids in log for cid in ids) == Counter({cid: 1 for _, ids in log for cid in ids})
    ledger = Ledger.for_data_dir(data_dir)
    results = {u.result.custom_id: u.result for u in ledger.usage_rows()}
    ledger.close()
    first, later = set(log[0][1]), set(log[1][1])
    assert all(results[c].cache_creation_tokens > 20_000 for c in first)
    assert all(results[c].cache_read_tokens > 20 * results[c].input_tokens for c in later)
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert (summary["status"] == "complete").all() and summary["cache_saving_usd"].sum() > 0


@pytest.mark.processing_seconds(6.0)  # the cancel lands before the primers have run
def test_priming_resumes_from_collect_and_stops_at_a_cancel(data_dir, corpus, api):
    prompts = three_prompts(data_dir, corpus)
    process_documents(RunParameters(data_dir=str(data_dir), prompts=prompts, cache="prime", max_output_tokens=1_000,
                                    wait=False))
    ledger = Ledger.for_data_dir(data_dir)
    assert len(ledger.requests_in_state(RequestState.HELD)) == 4
    [primers] = ledger.batches_in_state(BatchState.SUBMITTED)
    client = anthropic.Anthropic(api_key="k", base_url=api.url)
    cancel_in_flight(client, ledger, [primers.api_id], everything=False)  # before the primers ran
    collect_batches(data_dir=str(data_dir), wait=True)
    assert len(api.sim.create_log) == 1  # the held readers were not sent after the user's cancel
    assert sorted(r.error_type for r in ledger.requests_in_state(RequestState.FAILED)) == ["canceled_by_user"] * 6
    # Asked to resend: the primers go again, then the readers, each once.
    collect_batches(data_dir=str(data_dir), wait=True, resend_canceled=True)
    ledger.close()
    sent = Counter(cid for _, ids in api.sim.create_log[1:] for cid in ids)
    assert set(sent.values()) == {1} and len(sent) == 6
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert (summary["status"] == "complete").all()
