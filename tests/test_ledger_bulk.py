"""Bulk ledger writes (issue 10): many claims or results per transaction behave like the one-by-one
versions — exactly once, both or neither — on SQLite and PostgreSQL; and a run over hundreds of
small documents records every one of them."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from longbatch.ledger import Ledger
from longbatch.records import SUPERSEDED, Claim, NewRequest, RequestState, ResultRecord, ResultWrite
from longbatch.schema import results
from longbatch.settings import Settings


@pytest.fixture
def ledger(ledger_url, tmp_path):
    led = Ledger(ledger_url, "scope-a") if ledger_url else Ledger.for_data_dir(tmp_path)
    yield led
    led.close()


def claim_of(i: int, custom_id: str | None = None, primer: str | None = None) -> Claim:
    fp = f"{i:064x}"
    req = NewRequest(fp, custom_id or f"doc{i}--report", f"doc{i}", f"doc{i}.txt", "0" * 64, "report",
                     "claude-sonnet-4-6", 1000, ())
    return Claim(req, primer, 0.01 * i)


def test_claiming_the_same_work_twice_claims_nothing_the_second_time(ledger):
    claims = [claim_of(i) for i in range(1, 2_501)]  # three chunks of CHUNK_ROWS
    claims[1] = claim_of(2, primer=claims[0].request.fingerprint)
    assert ledger.claim_many(claims) == {c.request.fingerprint for c in claims}
    assert ledger.claim_many(claims) == set()
    assert ledger.claim(claims[5].request) is False  # the one-by-one claim agrees
    assert ledger.request_count() == 2_500
    got = ledger.requests_by_fingerprint([c.request.fingerprint for c in claims[:3]])
    assert [got[c.request.fingerprint].state for c in claims[:3]] == [
        RequestState.QUEUED, RequestState.HELD, RequestState.QUEUED]
    assert got[claims[1].request.fingerprint].primer == claims[0].request.fingerprint


def test_claim_many_supersedes_older_unsent_work_only(ledger):
    old_queued, old_sent = claim_of(1, "a--report"), claim_of(2, "b--report")
    ledger.claim_many([old_queued, old_sent])
    ledger.set_request_state([old_sent.request.fingerprint], RequestState.SUBMITTED)
    new_a, new_b = claim_of(3, "a--report"), claim_of(4, "b--report")
    claimed = ledger.claim_many([new_a, new_b], [("a--report", new_a.request.fingerprint),
                                                 ("b--report", new_b.request.fingerprint)])
    assert claimed == {new_a.request.fingerprint, new_b.request.fingerprint}
    got = ledger.requests_by_fingerprint([c.request.fingerprint for c in (old_queued, old_sent, new_a, new_b)])
    assert (got[old_queued.request.fingerprint].state, got[old_queued.request.fingerprint].error_type) == (
        RequestState.FAILED, SUPERSEDED)
    assert got[old_sent.request.fingerprint].state == RequestState.SUBMITTED  # in flight: never dropped
    assert got[new_a.request.fingerprint].state == got[new_b.request.fingerprint].state == RequestState.QUEUED


def test_two_ledgers_claiming_overlapping_plans_at_once_claim_each_request_once(ledger_url, tmp_path):
    url = ledger_url or f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    Ledger(url, "shared").close()  # the schema exists before the race
    every = [claim_of(i) for i in range(1, 1_501)]
    plans = [every[:1_000], list(reversed(every[500:]))]  # 500 in common, claimed in opposite orders
    won: list[set[str]] = [set(), set()]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(k: int) -> None:
        led = Ledger(url, "shared")
        try:
            barrier.wait()
            won[k] = led.claim_many(plans[k])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            led.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not won[0] & won[1]
    assert won[0] | won[1] == {c.request.fingerprint for c in every}


def write_of(claim: Claim, result_type: str = "succeeded") -> ResultWrite:
    fp = claim.request.fingerprint
    state = RequestState.SUCCEEDED if result_type == "succeeded" else RequestState.RETRYABLE
    return ResultWrite(ResultRecord("msgbatch_1", claim.request.custom_id, fp, 1, result_type, input_tokens=10),
                       state, None if result_type == "succeeded" else result_type)


def test_record_results_writes_each_result_with_its_request_state_and_again_changes_nothing(ledger):
    claims = [claim_of(i) for i in range(1, 1_201)]
    ledger.claim_many(claims)
    writes = [write_of(c, "succeeded" if i % 3 else "errored") for i, c in enumerate(claims)]
    ledger.record_results(writes)
    ledger.record_results(writes[:10])  # a resumed collect recording a chunk again
    assert ledger.recorded_custom_ids("msgbatch_1") == {c.request.custom_id for c in claims}
    with ledger.tx() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(results)).scalar_one() == 1_200
    states = ledger.requests_by_fingerprint([c.request.fingerprint for c in claims])
    assert [states[c.request.fingerprint].state for c in claims[:3]] == [
        RequestState.RETRYABLE, RequestState.SUCCEEDED, RequestState.SUCCEEDED]
    assert states[claims[0].request.fingerprint].error_type == "errored"
    assert ledger.latest_result(claims[1].request.fingerprint).input_tokens == 10


def test_a_chunk_that_fails_midway_records_none_of_its_results_nor_states(ledger):
    claims = [claim_of(i) for i in range(1, 6)]
    ledger.claim_many(claims)
    broken = ResultWrite(ResultRecord("msgbatch_1", "x--report", claims[4].request.fingerprint, 1, None),  # type: ignore[arg-type]
                         RequestState.SUCCEEDED)  # result_type NOT NULL: the database refuses it
    with pytest.raises(sa.exc.IntegrityError):
        ledger.record_results([write_of(c) for c in claims[:4]] + [broken])
    assert ledger.recorded_custom_ids("msgbatch_1") == set()
    states = ledger.requests_by_fingerprint([c.request.fingerprint for c in claims])
    assert {s.state for s in states.values()} == {RequestState.QUEUED}


def test_a_run_over_three_hundred_small_documents_records_every_one(ledger_url, tmp_path, monkeypatch, sim):
    if ledger_url:
        monkeypatch.setenv("LONGBATCH_DATABASE_URL", ledger_url)
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    data_dir = tmp_path / "data"
    inbox = data_dir / "inbox"
    inbox.mkdir(parents=True)
    for i in range(300):
        (inbox / f"note-{i:03d}.txt").write_text(f"Note {i}. The board met and approved item {i}. " * 20,
                                                  encoding="utf-8")
    from flows.process import RunParameters, process_documents

    process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=1_000))
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert len(summary) == 300
    assert set(summary["status"]) == {"complete"}
    assert all((data_dir / Path(r)).is_file() for r in summary["report"])
    ledger = Ledger.open(Settings.given(data_dir=data_dir))
    try:
        assert ledger.request_count() == 300
        assert {r.state for r in ledger.requests_in_state(*RequestState)} == {RequestState.SUCCEEDED}
    finally:
        ledger.close()


def test_latest_results_agree_with_latest_result_one_by_one(ledger):
    claims = [claim_of(i) for i in range(1, 701)]
    ledger.claim_many(claims)
    ledger.record_results([write_of(c, "errored") for c in claims])
    retried = [dataclasses.replace(write_of(c), result=dataclasses.replace(write_of(c).result, batch_id="msgbatch_2",
                                                                              attempt=2, input_tokens=20))
               for c in claims[::2]]
    ledger.record_results(retried)
    fps = [c.request.fingerprint for c in claims]
    latest = ledger.latest_results(fps + ["0" * 64])  # one never recorded: absent
    assert set(latest) == set(fps)
    for fp in fps[:50]:
        assert latest[fp] == ledger.latest_result(fp)
    assert latest[fps[0]].attempt == 2 and latest[fps[1]].attempt == 1
    assert set(ledger.latest_results(fps[:10])) == set(fps[:10])  # only the requests asked for


def test_a_late_second_collector_does_not_set_back_a_retried_request(ledger):
    """Two processes collect one batch: the first records `errored`, the request is requeued and
    retried; the second, late, records the same result again. Nothing changes: the request is not
    made retryable again (which would send it, and pay for it, twice)."""
    claim = claim_of(1)
    ledger.claim_many([claim])
    first = write_of(claim, "errored")
    assert ledger.record_results([first]) == {claim.request.custom_id}
    assert ledger.requeue(claim.request.fingerprint, RequestState.RETRYABLE)
    assert ledger.record_results([first]) == set()
    assert ledger.request(claim.request.fingerprint).state == RequestState.QUEUED
