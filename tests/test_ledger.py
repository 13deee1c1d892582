"""The ledger: claims are won once, schema versions migrate, newer ledgers are refused."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from longbatch.errors import ConfigError
from longbatch.ledger import SCHEMA_VERSION, Ledger
from longbatch.piece import Piece, PieceKind
from longbatch.records import NewRequest, StepRecipe, StepState


def request_row(fp: str = "f" * 64, custom_id: str = "doc--report") -> NewRequest:
    return NewRequest(fp, custom_id, "doc", "doc.txt", "0" * 64, "report", "claude-sonnet-4-6", 1000, ())


def test_claim_is_won_once_even_by_racing_threads(tmp_path):
    ledger = Ledger.for_data_dir(tmp_path)
    wins = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        wins.append(ledger.claim(request_row()))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_intent_takes_each_request_once(tmp_path):
    ledger = Ledger.for_data_dir(tmp_path)
    ledger.claim(request_row())
    first_id, first = ledger.record_intent((), [("doc--report", "f" * 64)])
    second_id, second = ledger.record_intent((), [("doc--report", "f" * 64)])
    assert first == ["doc--report"] and second == []
    assert [b.id for b in ledger.batches_in_state("intent")] == [first_id]
    assert ledger.request("f" * 64).attempts == 1


def test_create_that_never_happened_does_not_count_as_an_attempt(tmp_path):
    ledger = Ledger.for_data_dir(tmp_path)
    ledger.claim(request_row())
    batch_id, _ = ledger.record_intent((), [("doc--report", "f" * 64)])
    ledger.record_create_failed(batch_id, "HTTP 400", unknown=False)
    row = ledger.request("f" * 64)
    assert (row.state, row.attempts, row.error_type) == ("failed", 0, "create_failed")


def test_opening_a_v1_ledger_migrates_it(tmp_path):
    Ledger.for_data_dir(tmp_path).close()
    db = tmp_path / "ledger.sqlite"
    with sqlite3.connect(db) as conn:  # make it what schema 1 wrote
        conn.execute("ALTER TABLE batches DROP COLUMN adopted")
        conn.execute("ALTER TABLE batches DROP COLUMN run_id")  # schema 6
        conn.execute("ALTER TABLE batches DROP COLUMN canceled_at")  # schema 6
        conn.execute("ALTER TABLE requests DROP COLUMN primer")  # schema 6
        conn.execute("ALTER TABLE requests DROP COLUMN max_cost_usd")  # schema 6
        conn.execute("DROP TABLE spend_reservations")  # schema 6
        conn.execute("ALTER TABLE requests DROP COLUMN meta")  # schema 4
        conn.execute("DROP TABLE reductions")  # schema 4
        conn.execute("DROP TABLE token_counts")  # schema 3
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("INSERT INTO batches (id, state, betas, request_count, intent_at) VALUES ('lb_old', 'submitted', '', 3, 1.0)")
    ledger = Ledger.for_data_dir(tmp_path)
    [old] = ledger.batches_in_state("submitted")
    assert old.id == "lb_old" and old.adopted is False
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_opening_a_v3_ledger_keeps_its_requests_and_adds_split_support(tmp_path):
    ledger = Ledger.for_data_dir(tmp_path)
    assert ledger.claim(request_row())
    ledger.close()
    db = tmp_path / "ledger.sqlite"
    with sqlite3.connect(db) as conn:  # what schema 3 wrote: no requests.meta, no reductions
        conn.execute("ALTER TABLE requests DROP COLUMN meta")
        conn.execute("DROP TABLE reductions")
        conn.execute("ALTER TABLE batches DROP COLUMN run_id")  # schema 6
        conn.execute("ALTER TABLE batches DROP COLUMN canceled_at")  # schema 6
        conn.execute("ALTER TABLE requests DROP COLUMN primer")  # schema 6
        conn.execute("ALTER TABLE requests DROP COLUMN max_cost_usd")  # schema 6
        conn.execute("DROP TABLE spend_reservations")  # schema 6
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    ledger = Ledger.for_data_dir(tmp_path)
    [row] = ledger.requests_in_state("queued")
    assert row.piece == Piece() and row.fingerprint == request_row().fingerprint  # no meta: a whole document
    step = StepRecipe("k1", "doc--report-f", Piece(PieceKind.FINAL, reduction="k1"), "doc", "a.txt", "0" * 64, None,
                      "report", "0" * 64, "claude-sonnet-4-6", (), (), (), 1000, (), 0, "k1")
    assert ledger.claim_reduction(step) and not ledger.claim_reduction(step)  # one recipe, claimed once
    [waiting] = ledger.reductions_in_state(StepState.WAITING)
    assert waiting.key == "k1" and waiting.recipe == step  # read back as it was written
    ledger.close()


def test_a_newer_ledger_is_refused_with_advice(tmp_path):
    Ledger.for_data_dir(tmp_path).close()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ConfigError, match="upgrade longbatch"):
        Ledger.for_data_dir(tmp_path)


def test_database_url_is_honoured(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'shared.db'}"
    ledger = Ledger(url)
    assert ledger.claim(request_row())
    assert (tmp_path / "elsewhere" / "shared.db").exists()


def test_a_creator_takes_its_batch_back_from_a_mistaken_adoption(tmp_path):
    ledger = Ledger.for_data_dir(tmp_path)
    ledger.claim(request_row("a" * 64))
    ledger.claim(request_row("b" * 64, "other--report"))
    mine, _ = ledger.record_intent((), [("doc--report", "a" * 64)])
    theirs, _ = ledger.record_intent((), [("other--report", "b" * 64)])
    ledger.record_create_failed(mine, "HTTP 500", unknown=True)
    ledger.record_created(mine, "msgbatch_x", 1.0, adopted=True)  # recovery guessed wrong
    ledger.record_created(theirs, "msgbatch_x", 1.0)  # the real creator heard back
    states = {b.id: (b.state, b.api_id) for b in ledger.batches_in_state("unknown", "submitted")}
    assert states == {mine: ("unknown", None), theirs: ("submitted", "msgbatch_x")}
    assert ledger.request("a" * 64).state == "submitting"
    ledger.record_created(mine, "msgbatch_x", 1.0, adopted=True)  # and it cannot be taken again
    assert {b.id for b in ledger.batches_in_state("submitted")} == {theirs}
