"""Issue 10, memory bounded by the batch: a run's plan keeps no document text (lean requests),
and each batch's body is rendered request by request into a spool file and streamed to create.
What reaches the API must be byte for byte what a plan holding every text would have sent."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from longbatch.catalog import get_model
from longbatch.ledger import Ledger
from longbatch.records import NOT_REBUILDABLE, RequestState
from longbatch.settings import Settings
from tasks.batch_body import BatchBody, Renderer, render_planned
from tasks.batches import submit_batch
from tasks.claim import claim_plan
from tasks.ingest import discover
from tasks.ingest_pool import read_documents
from tasks.plan import Plan, planner_for
from tasks.prompts import load_prompts

PROMPTS = ["report", "summary", "risks"]  # three prompts: the document block carries a cache breakpoint


def make_inbox(inbox: Path, corpus: Path) -> None:
    """Two long texts from the corpus (War and Peace is split into parts on Sonnet 4.5's 200K
    window), a short memo and a PDF."""
    inbox.mkdir(parents=True, exist_ok=True)
    prompts = inbox.parent / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "risks.md").write_text("List every risk $document_name names, with its page, in at most "
                                      "$max_output_tokens tokens.")
    shutil.copy(corpus / "text/war_and_peace_tolstoy.txt", inbox / "war_and_peace.txt")
    shutil.copy(corpus / "text/sec_10k_apple.md", inbox / "apple 10-k.md")
    (inbox / "memo.txt").write_text("The board approved the budget on Monday. " * 40)
    shutil.copy(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", inbox / "tracemonkey.pdf")


def plans(data_dir: Path, model: str = "claude-sonnet-4-5", keep: int = 0) -> tuple[Plan, Plan, Settings]:
    """The inbox planned holding every text, and planned lean as a run does (through the cache),
    keeping the text of requests up to `keep` bytes in all."""
    settings = Settings(data_dir=data_dir, model=model, prompts=PROMPTS, max_output_tokens=8_000, cache="prime")
    inbox, spec, prompts = settings.inbox_dir, get_model(model), load_prompts(PROMPTS, data_dir)
    paths = discover(inbox)
    full = planner_for(prompts, spec, settings).add(read_documents(paths, inbox, workers=1)).plan()
    lean = planner_for(prompts, spec, settings, keep_text_bytes=keep).add(
        read_documents(paths, inbox, cache_dir=data_dir / "cache", workers=1)).plan()
    return full, lean, settings


def test_a_lean_plan_is_the_full_plan_without_its_text(data_dir, corpus):
    make_inbox(data_dir / "inbox", corpus)
    full, lean, _ = plans(data_dir)
    assert [r.piece.kind for r in full.requests].count("part") >= 4  # the split document is in both
    assert [(r.custom_id, r.fingerprint, r.body_bytes, r.prefix) for r in lean.requests] == \
        [(r.custom_id, r.fingerprint, r.body_bytes, r.prefix) for r in full.requests]
    assert lean.rows == full.rows and lean.primers == full.primers and full.primers
    assert all(r.params is None for r in lean.requests) and all(r.params is not None for r in full.requests)
    text_bytes = sum(r.body_bytes for r in full.requests) / len(PROMPTS)  # the prompts share each text
    assert len(pickle.dumps(full)) > text_bytes
    assert len(pickle.dumps(lean)) < text_bytes / 50  # what a run holds: a few hundred bytes per request
    with pytest.raises(ValueError, match="lean"):
        lean.requests[0].as_request()


@pytest.mark.parametrize("keep", [0, 1_500_000])
def test_the_api_receives_exactly_what_the_full_plan_holds(data_dir, corpus, sim, client, keep):
    """Every request rendered again (keep 0), or the first ones kept as planned and the rest
    rendered (a run keeps up to 64 MiB of text: flows/reading.py)."""
    make_inbox(data_dir / "inbox", corpus)
    full, lean, settings = plans(data_dir, keep=keep)
    kept = [r.params is not None for r in lean.requests]
    assert (not any(kept)) if keep == 0 else (kept[0] and not kept[-1])
    assert sum(r.body_bytes for r in lean.requests if r.params is not None) <= keep
    ledger = Ledger.open(settings)
    claim_plan(ledger, lean)
    queued = {r.fingerprint for r in ledger.requests_in_state(RequestState.QUEUED)}
    render = Renderer(ledger, settings.inbox_dir, data_dir)
    sent = []
    for batch in lean.batches:
        todo = tuple(r for r in batch.requests if r.fingerprint in queued)
        render.prepare(list(todo))
        outcome = submit_batch(client, ledger, type(batch)(batch.betas, todo), render, data_dir)
        assert outcome.state == "submitted", outcome
        sent += sim.sim.store.requests_of(sim.sim._batches[outcome.api_id])
    expected = {r.custom_id: json.loads(render_planned(r)) for r in full.requests if r.fingerprint in queued}
    assert len(sent) == len(expected) >= 8
    assert {r["custom_id"]: r for r in sent} == expected  # text, breakpoints, grants: all the same
    assert not [p for p in data_dir.iterdir() if p.name.startswith("tmp")]  # the spool files are gone
    ledger.close()


def _submit_with_memo_rewritten(data_dir: Path, client, memo_text: str):
    """Plan lean, claim, rewrite memo.txt, then submit the queued requests of the one batch:
    (ledger, settings, the requests submitted, the outcome)."""
    _, lean, settings = plans(data_dir, model="claude-sonnet-4-6")
    ledger = Ledger.open(settings)
    claim_plan(ledger, lean)
    (data_dir / "inbox" / "memo.txt").write_text(memo_text)
    (batch,) = lean.batches
    queued = {r.fingerprint for r in ledger.requests_in_state(RequestState.QUEUED)}
    todo = tuple(r for r in batch.requests if r.fingerprint in queued)
    outcome = submit_batch(client, ledger, type(batch)(batch.betas, todo),
                           Renderer(ledger, settings.inbox_dir, data_dir), data_dir)
    return ledger, settings, todo, outcome


def test_a_document_changed_after_planning_fails_with_the_reason_and_the_rest_go(data_dir, corpus, sim, client):
    make_inbox(data_dir / "inbox", corpus)
    ledger, settings, todo, outcome = _submit_with_memo_rewritten(
        data_dir, client, "Someone rewrote the memo after the plan was made.")
    assert outcome.state == "submitted"
    failed = ledger.requests_in_state(RequestState.FAILED)
    assert {r.source for r in failed} == {"memo.txt"} and len(failed) == sum(r.doc_id.startswith("memo") for r in todo)
    assert all(r.error_type == NOT_REBUILDABLE and "changed since it was planned" in r.error_message for r in failed)
    sent = {r["custom_id"] for r in sim.sim.store.requests_of(sim.sim._batches[outcome.api_id])}
    assert sent == {r.custom_id for r in todo} - {r.custom_id for r in failed} and sent
    ledger.close()


def test_the_spooled_body_is_the_json_the_sdk_would_send_and_leaves_nothing(data_dir, corpus, tmp_path):
    make_inbox(data_dir / "inbox", corpus)
    full, _, _ = plans(data_dir, model="claude-sonnet-4-6")
    spool = tmp_path / "spool"
    requests = full.requests
    with BatchBody.write(requests, render_planned, spool) as body:
        ids = [r.custom_id for r in requests]
        streamed = b"".join(body.stream(ids))
        assert all(len(piece) <= 1 << 20 for piece in body.stream(ids))
        assert len(streamed) == body.size(ids) == full.batches[0].body_bytes
        assert json.loads(streamed) == {"requests": [json.loads(render_planned(r)) for r in requests]}
        some = ids[1::2]
        assert json.loads(b"".join(body.stream(some)))["requests"] == [
            json.loads(render_planned(r)) for r in requests[1::2]]
        assert len(b"".join(body.stream(some))) == body.size(some)
    assert list(spool.iterdir()) == []  # unnamed while open, gone once closed


def test_a_render_failing_in_a_second_run_never_marks_a_request_another_run_sent(data_dir, corpus, sim, client):
    """Two runs at once: each took the same queued requests to send. The first sends them; the
    memo then changes, so the second cannot render its requests. They were sent (and here
    already reported) by the first run: the second run's failed render must not mark them
    failed (a paid report shown as lost; a split document's combining step would fail)."""
    from tasks.batches import wait_for_batches
    from tasks.collect import collect_batch
    from longbatch.records import BatchState

    make_inbox(data_dir / "inbox", corpus)
    _, lean, settings = plans(data_dir, model="claude-sonnet-4-6")
    ledger = Ledger.open(settings)
    claim_plan(ledger, lean)
    (batch,) = lean.batches
    queued = {r.fingerprint for r in ledger.requests_in_state(RequestState.QUEUED)}
    todo = type(batch)(batch.betas, tuple(r for r in batch.requests if r.fingerprint in queued))
    memo = {r.fingerprint for r in todo.requests if r.doc_id.startswith("memo")}
    assert memo
    first = submit_batch(client, ledger, todo, Renderer(ledger, settings.inbox_dir, data_dir), data_dir)
    assert first.state == "submitted"
    wait_for_batches(client, ledger, 0.1, 0.5, 60, sleep=__import__("time").sleep)
    (ended,) = ledger.batches_in_state(BatchState.ENDED)
    collect_batch(client, ledger, ended, data_dir)
    assert {ledger.request(fp).state for fp in memo} == {RequestState.SUCCEEDED}

    (data_dir / "inbox" / "memo.txt").write_text("Someone rewrote the memo after the first run sent it.")
    second = submit_batch(client, ledger, todo, Renderer(ledger, settings.inbox_dir, data_dir), data_dir)
    assert second.state == "skipped"
    assert {ledger.request(fp).state for fp in memo} == {RequestState.SUCCEEDED}
    assert all(ledger.request(fp).error_type is None for fp in memo)
    ledger.close()


def test_a_rebuild_failing_after_another_run_took_the_request_leaves_it_to_that_run(data_dir, corpus, monkeypatch):
    """queued_requests reads the queue, then rebuilds each request; a concurrent run may take one
    into its batch in between (then the document changes): it stays that run's, not failed."""
    import tasks.rebuild as rebuild_mod
    from longbatch.errors import NotRebuildable

    make_inbox(data_dir / "inbox", corpus)
    _, lean, settings = plans(data_dir, model="claude-sonnet-4-6")
    ledger = Ledger.open(settings)
    claim_plan(ledger, lean)
    taken: list[str] = []

    def concurrent_run_takes_it(ledger_, record, *args, **kwargs):
        ledger_.record_intent((), [(record.custom_id, record.fingerprint)])  # the other run's intent
        taken.append(record.fingerprint)
        raise NotRebuildable("memo.txt changed since it was planned")

    monkeypatch.setattr(rebuild_mod, "rebuild", concurrent_run_takes_it)
    assert rebuild_mod.queued_requests(ledger, settings.inbox_dir, data_dir) == []
    assert taken and {ledger.request(fp).state for fp in taken} == {RequestState.SUBMITTING}
    ledger.close()


def test_a_document_back_as_it_was_planned_is_sent_by_the_next_run(data_dir, corpus, sim, client, monkeypatch):
    """A render that found the document changed (being rewritten, or edited and then undone)
    never reached the API; once the document is back as it was planned, the next run plans the
    very same request, so it must send it, not leave the document failed for good."""
    from flows.process import RunParameters, process_documents

    make_inbox(data_dir / "inbox", corpus)
    memo_text = (data_dir / "inbox" / "memo.txt").read_text()
    ledger, settings, _, _ = _submit_with_memo_rewritten(
        data_dir, client, "Half of the memo, as an editor saving it left it for a moment.")
    memo = {r.fingerprint for r in ledger.requests_in_state(RequestState.FAILED) if r.source == "memo.txt"}
    assert memo
    ledger.close()

    (data_dir / "inbox" / "memo.txt").write_text(memo_text)  # as it was planned
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")
    process_documents(RunParameters(data_dir=str(data_dir), model="claude-sonnet-4-6", prompts=PROMPTS,
                                    max_output_tokens=8_000, cache="prime"))
    ledger = Ledger.open(settings)
    everything = ledger.requests_in_state(*RequestState)
    assert {r.fingerprint for r in everything if r.source == "memo.txt"} == memo  # the same requests planned again
    assert {ledger.request(fp).state for fp in memo} == {RequestState.SUCCEEDED}
    ledger.close()
