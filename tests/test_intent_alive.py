"""A create whose body takes long to send is not taken for an abandoned one (exactly once on a
slow link). The uploader refreshes its intent while it sends; another run that finds the intent
stale marks it unknown, and a live uploader that sees that stops before its body is whole, so the
server never makes a batch the other run is about to queue again. Over real HTTP, to a simulator
that reads request bodies at 1 MB/s, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import anthropic
import httpx2
import pytest

from longbatch.catalog import get_model
from longbatch.ledger import Ledger
from longbatch.records import BatchState, NewRequest, RequestState
from simulator.engine import SimConfig
from simulator.server import SimulatorServer

SECRET = "sk-ant-api03-intent-alive-test-key-0000000000"
UPLOAD_BYTES_PER_SECOND = 1_000_000
BODY_MB = 6  # ~6 s to send: far longer than the other run's grace below


def _ledger(ledger_url: str | None, data_dir: Path) -> Ledger:
    return Ledger(ledger_url, "scope-a") if ledger_url else Ledger.for_data_dir(data_dir)


def _big_batch(data_dir: Path, ledger: Ledger):
    """Four 1.5 MB documents, claimed, packed into one batch of ~6 MB."""
    from tasks.build import build_request
    from tasks.ingest import read_document
    from tasks.packing import pack
    from tasks.prompts import load_prompts

    inbox = data_dir / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    prompt = load_prompts(["report"], data_dir)[0]
    planned = []
    for i in range(BODY_MB * 2 // 3):
        path = inbox / f"minutes_{i}.txt"
        path.write_text("".join(f"Item {n} of meeting {i}: the board approved line {n * 7 + i}.\n"
                                for n in range(24_000)))
        doc = read_document(path, inbox)
        req = build_request(doc, prompt, get_model("claude-sonnet-4-6"), 2_000)
        ledger.claim(NewRequest(req.fingerprint, req.custom_id, req.doc_id, path.name, doc.sha256, req.prompt,
                                req.model, req.max_tokens, req.betas))
        planned.append(req)
    (plan,) = pack(planned)
    assert sum(len(r.line or b"") for r in plan.requests) > (BODY_MB - 1) * 1_000_000
    return plan


class OtherRun(threading.Thread):
    """Another run on the same ledger, doing what `process_documents` does at its start: intents
    older than its grace are taken as left by a dead process (`stale_intents_to_unknown`)."""

    def __init__(self, ledger: Ledger, grace_seconds: float) -> None:
        super().__init__(daemon=True)
        self.ledger, self.grace, self.taken, self.saw_intent = ledger, grace_seconds, 0, False
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.saw_intent = self.saw_intent or bool(self.ledger.batches_in_state(BatchState.INTENT))
            self.taken += self.ledger.stale_intents_to_unknown(self.grace)
            time.sleep(0.05)


@pytest.fixture
def slow_link():
    """The simulator reading bodies at 1 MB/s, and a client whose socket holds 64 KB in flight, as
    on a real slow link (on loopback the kernel would take ~4 MB of the body at once)."""
    small_send_buffer = httpx2.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)])
    with SimulatorServer(SimConfig(upload_bytes_per_second=UPLOAD_BYTES_PER_SECOND, processing_seconds=0.5)) as server:
        with anthropic.DefaultHttpxClient(transport=small_send_buffer) as http:
            yield server, anthropic.Anthropic(api_key=SECRET, base_url=server.url, max_retries=0, http_client=http)


@pytest.fixture
def two_runs(ledger_url, tmp_path, monkeypatch):
    """This run's ledger and another run's on the same database; intents refreshed every 0.2 s."""
    import tasks.batches as batch_io

    monkeypatch.setattr(batch_io, "INTENT_REFRESH_SECONDS", 0.2)
    ledger, other = _ledger(ledger_url, tmp_path), _ledger(ledger_url, tmp_path)
    yield ledger, other
    ledger.close()
    other.close()


def _submit_beside(other: Ledger, grace_seconds: float, client: anthropic.Anthropic, ledger: Ledger, plan):
    """Submit `plan` while the other run looks for stale intents; (outcome, seconds, other run)."""
    from tasks.batches import submit_batch

    watcher = OtherRun(other, grace_seconds)
    watcher.start()
    started = time.time()
    try:
        outcome = submit_batch(client, ledger, plan)
    finally:
        watcher.stop.set()
        watcher.join()
    return outcome, time.time() - started, watcher


def test_a_slow_upload_keeps_its_intent_and_is_never_taken_for_abandoned(two_runs, tmp_path, slow_link):
    (_, client), (ledger, other) = slow_link, two_runs
    plan = _big_batch(tmp_path, ledger)
    outcome, took, watcher = _submit_beside(other, 3.0, client, ledger, plan)  # the upload takes twice that
    assert took > 4.0, f"the upload was not slow ({took:.1f} s): the test proves nothing"
    assert watcher.saw_intent and watcher.taken == 0
    assert outcome.state == "submitted" and outcome.api_id
    (record,) = ledger.batches_in_state(BatchState.SUBMITTED)
    assert record.api_id == outcome.api_id and record.intent_at > time.time() - 3.0  # refreshed to the end
    assert [b.id for b in client.beta.messages.batches.list()] == [outcome.api_id]


def test_an_upload_whose_intent_was_taken_over_stops_and_makes_no_batch(two_runs, tmp_path, slow_link):
    (_, client), (ledger, other) = slow_link, two_runs
    plan = _big_batch(tmp_path, ledger)
    # The other run takes any intent it sees, as it would one whose process stalled past the grace.
    outcome, took, watcher = _submit_beside(other, 0.0, client, ledger, plan)
    assert watcher.taken == 1
    assert outcome.state == "skipped" and outcome.api_id is None and "another run" in (outcome.error or "")
    assert took < 4.0, f"the upload went on after its intent was taken ({took:.1f} s)"
    time.sleep(1.0)  # whatever the server would make of a body it got, it has made by now
    assert list(client.beta.messages.batches.list()) == []  # nothing to pay for, nothing to find
    # The intent is the other run's to resolve, as it left it; this run wrote nothing over it.
    (record,) = ledger.batches_in_state(BatchState.UNKNOWN)
    assert (record.id, record.api_id) == (outcome.local_id, None)
    assert len(ledger.requests_in_state(RequestState.SUBMITTING)) == len(plan.requests)
