"""One ledger shared by several data dirs (schema 6): every query stays in its scope, upserts
never race, and a schema-5 ledger migrates with its rows kept. On SQLite and a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from longbatch.ledger import SCHEMA_VERSION, Ledger
from longbatch.piece import Piece, PieceKind
from longbatch.records import NewRequest, PlanRecord, PlanRow, PlanStatus, ResultRecord, StepRecipe
from longbatch.settings import Settings
import schema_v5

FP = "f" * 64


def request_row(fp: str = FP, custom_id: str = "doc--report") -> NewRequest:
    return NewRequest(fp, custom_id, "doc", "doc.txt", "0" * 64, "report", "claude-sonnet-4-6", 1000, ())


def step(key: str = "k1") -> StepRecipe:
    return StepRecipe(key, "doc--report-f", Piece(PieceKind.FINAL, reduction=key), "doc", "doc.txt", "0" * 64, None,
                      "report", "0" * 64, "claude-sonnet-4-6", (), (), (), 1000, (), 0, key)


def plan_record(source: str = "doc.txt") -> PlanRecord:
    return PlanRecord(PlanRow("doc", source, "text", "report", "claude-sonnet-4-6", PlanStatus.READY,
                              custom_id="doc--report"), FP)


def at_once(*calls: Callable[[], object]) -> list[BaseException]:
    """Start every call at the same instant, each in its own thread; the errors they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - collected for the test to assert on
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.fixture
def url(ledger_url, tmp_path) -> str:
    return ledger_url or f"sqlite:///{tmp_path / 'shared.sqlite'}"


def test_two_scopes_on_one_database_never_see_each_others_work(url):
    a, b = Ledger(url, "/data/A"), Ledger(url, "/data/B")
    # The same document planned in both: each scope claims and owns its own request and step.
    assert a.claim(request_row()) and b.claim(request_row())
    assert not a.claim(request_row())  # within a scope, still claimed once
    assert a.claim_reduction(step()) and b.claim_reduction(step())
    a.record_plan([plan_record()], ["doc.txt"])
    b.record_plan([plan_record("other.txt")], ["other.txt"])
    assert [r.row.source for r in a.plan()] == ["doc.txt"] and [r.row.source for r in b.plan()] == ["other.txt"]

    batch_id, won = a.record_intent((), [("doc--report", FP)])
    assert won == ["doc--report"]
    assert [r.state for r in a.requests_in_state("submitting")] == ["submitting"]
    assert b.requests_in_state("submitting") == [] and [r.state for r in b.requests_in_state("queued")] == ["queued"]
    assert b.batches_in_state("intent") == [] and b.stale_intents_to_unknown(-1) == 0  # A's intent is A's
    assert [x.id for x in a.batches_in_state("intent")] == [batch_id]
    a.record_created(batch_id, "msgbatch_a", 1.0)
    assert b.known_api_ids() == {"msgbatch_a"}  # never a candidate for B's adoption

    a.record_result(ResultRecord("msgbatch_a", "doc--report", FP, 1, "succeeded", output_tokens=7, cost_usd=0.5),
                    "succeeded", (None, None))
    assert a.request(FP).state == "succeeded" and b.request(FP).state == "queued"
    assert a.latest_result(FP).output_tokens == 7 and b.latest_result(FP) is None
    assert [u.result.cost_usd for u in a.usage_rows()] == [0.5] and b.usage_rows() == []
    assert b.has_result("msgbatch_a", "doc--report") is False
    # A copy of A's reports recovered in a third scope records its own rows; A's stay A's.
    c = Ledger(url, "/data/C")
    assert c.record_recovered(request_row(), a.latest_result(FP))
    assert a.has_result("msgbatch_a", "doc--report") and a.latest_result(FP).output_tokens == 7
    # A's supersede or requeue never moves B's request.
    assert a.supersede("doc--report", "e" * 64) == 0
    assert b.supersede("doc--report", "e" * 64) == 1 and a.request(FP).state == "succeeded"
    assert a.reduction("k1").state == "waiting" and b.known_reductions(["k1"]) == {"k1"}
    assert a.request_count() and not Ledger(url, "/data/D").request_count()


def test_record_plan_drops_only_its_own_stale_rows(url):
    a, b = Ledger(url, "A"), Ledger(url, "B")
    gone = PlanRecord(PlanRow("gone", "gone.txt", "text", "report", "claude-sonnet-4-6", PlanStatus.FAILED), None)
    b.record_plan([gone], ["gone.txt"])
    a.record_plan([plan_record()], ["doc.txt"])  # gone.txt is not in A's inbox: B's row stays
    assert [r.row.source for r in b.plan()] == ["gone.txt"]
    b.record_plan([], [])  # nor in B's any more: its refusal row goes
    assert b.plan() == [] and [r.row.source for r in a.plan()] == ["doc.txt"]


def test_results_and_token_counts_recorded_at_once_never_collide(url):
    """The report of issue 11: two threads recording results and counts failed 145 of 800 times
    on PostgreSQL when the ledger deleted then inserted. Both now upsert in one statement."""
    ledger = Ledger(url, "A")
    ledger.claim(request_row())

    def record() -> None:
        for i in range(200):
            ledger.record_result(ResultRecord("msgbatch_x", "doc--report", FP, 1, "errored",
                                              error_type="overloaded_error"), "retryable", ("e", str(i)))
            ledger.record_token_count(f"m:{i % 5}", i)

    assert at_once(record, record) == []
    assert ledger.latest_result(FP).error_type == "overloaded_error" and len(ledger.token_counts()) == 5


def test_plan_rows_recorded_by_racing_runs_never_collide(url):
    ledger_a, ledger_b = Ledger(url, "A"), Ledger(url, "A")  # two runs of one data dir

    def plan(ledger: Ledger) -> None:
        for _ in range(100):
            ledger.record_plan([plan_record(f"doc{i}.txt") for i in range(5)], [f"doc{i}.txt" for i in range(5)])

    assert at_once(lambda: plan(ledger_a), lambda: plan(ledger_b)) == [] and len(ledger_a.plan()) == 5


def make_schema_5_ledger(url: str) -> None:
    engine = sa.create_engine(url)
    schema_v5.metadata.create_all(engine)
    with engine.begin() as conn:  # what schema 5 wrote: a plan row, a request in a batch, a result, a step
        conn.execute(schema_v5.meta.insert().values(key="schema_version", value="5"))
        conn.execute(schema_v5.plan_rows.insert().values(
            source="doc.txt", prompt="report", model="claude-sonnet-4-6", doc_id="doc", status="ready",
            fingerprint=FP, data='{"source": "doc.txt", "prompt": "report", "model": "claude-sonnet-4-6", '
                                 '"doc_id": "doc", "kind": "text", "status": "ready"}', planned_at=1.0))
        conn.execute(schema_v5.requests.insert().values(
            fingerprint=FP, custom_id="doc--report", doc_id="doc", source="doc.txt", sha256="0" * 64,
            prompt="report", model="claude-sonnet-4-6", max_tokens=1000, betas="", state="submitted", attempts=1,
            batch_id="lb_old", created_at=1.0, updated_at=1.0))
        conn.execute(schema_v5.batches.insert().values(id="lb_old", api_id="msgbatch_old", state="submitted",
                                                       betas="", request_count=1, intent_at=1.0))
        conn.execute(schema_v5.batch_members.insert().values(batch_id="lb_old", custom_id="doc--report",
                                                             fingerprint=FP, attempt=1))
        conn.execute(schema_v5.results.insert().values(batch_id="msgbatch_old", custom_id="doc--report",
                                                       fingerprint=FP, attempt=1, result_type="succeeded",
                                                       received_at=1.0))
        conn.execute(schema_v5.reductions.insert().values(
            key="k1", final_key="k1", custom_id="doc--report-f", source="doc.txt", prompt="report", role="final",
            state="waiting", data='{"x": 1}', created_at=1.0, updated_at=1.0))
    engine.dispose()


def test_a_schema_5_ledger_migrates_keeping_every_row(url):
    make_schema_5_ledger(url)
    old = Ledger(url)  # the scope every row written before schema 6 has
    [request] = old.requests_in_state("submitted")
    assert (request.fingerprint, request.batch_id) == (FP, "lb_old")
    assert [b.api_id for b in old.batches_in_state("submitted")] == ["msgbatch_old"]
    assert old.members("lb_old") == {"doc--report": (FP, 1)}
    assert old.latest_result(FP).result_type == "succeeded"
    assert [r.row.source for r in old.plan()] == ["doc.txt"] and old.known_reductions(["k1"]) == {"k1"}
    # The keys now hold the scope: another scope claims the same work as its own.
    other = Ledger(url, "/elsewhere")
    assert other.claim(request_row()) and other.claim_reduction(step()) and old.request(FP).state == "submitted"
    with old.tx() as conn:
        assert conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar_one() == str(
            SCHEMA_VERSION)
    Ledger(url).close()  # opening it again: nothing left to migrate


def test_two_openers_of_a_schema_5_ledger_at_once_both_get_it_migrated(url):
    make_schema_5_ledger(url)
    opened: list[Ledger] = []
    assert at_once(*[lambda: opened.append(Ledger(url))] * 3) == [] and len(opened) == 3
    assert [r.fingerprint for r in opened[0].requests_in_state("submitted")] == [FP]


def test_the_scope_is_the_project_or_the_data_dir_on_a_shared_ledger_only(tmp_path, monkeypatch):
    monkeypatch.delenv("LONGBATCH_PROJECT", raising=False)
    own = Settings.given(data_dir=tmp_path / "d")
    assert own.ledger_scope == ""  # a data dir's own SQLite ledger: unchanged from schema 5
    assert Settings.given(data_dir=tmp_path / "d", project="acme").ledger_scope == ""
    shared = Settings.given(data_dir=tmp_path / "d" / ".." / "d", database_url="postgresql+psycopg://x/y")
    assert shared.ledger_scope == str((tmp_path / "d").resolve())
    monkeypatch.setenv("LONGBATCH_PROJECT", "acme")
    assert Settings.given(data_dir=Path("anywhere"), database_url="postgresql+psycopg://x/y").ledger_scope == "acme"
