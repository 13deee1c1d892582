"""The ledger: claims are won once, schema versions migrate, newer ledgers are refused."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from longbatch.errors import ConfigError
from longbatch.ledger import SCHEMA_VERSION, Ledger


def request_row(fp: str = "f" * 64) -> dict:
    return {"fingerprint": fp, "custom_id": "doc--report", "doc_id": "doc", "source": "doc.txt", "sha256": "0" * 64,
            "prompt": "report", "model": "claude-sonnet-4-6", "max_tokens": 1000, "betas": ""}


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
    assert ledger.request("f" * 64)["attempts"] == 1


def test_create_that_never_happened_does_not_count_as_an_attempt(tmp_path):
    ledger = Ledger.for_data_dir(tmp_path)
    ledger.claim(request_row())
    batch_id, _ = ledger.record_intent((), [("doc--report", "f" * 64)])
    ledger.record_create_failed(batch_id, "HTTP 400", unknown=False)
    row = ledger.request("f" * 64)
    assert (row["state"], row["attempts"], row["error_type"]) == ("failed", 0, "create_failed")


def test_opening_a_v1_ledger_migrates_it(tmp_path):
    Ledger.for_data_dir(tmp_path).close()
    db = tmp_path / "ledger.sqlite"
    with sqlite3.connect(db) as conn:  # make it what schema 1 wrote
        conn.execute("ALTER TABLE batches DROP COLUMN adopted")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("INSERT INTO batches (id, state, betas, request_count, intent_at) VALUES ('lb_old', 'submitted', '', 3, 1.0)")
    ledger = Ledger.for_data_dir(tmp_path)
    [old] = ledger.batches_in_state("submitted")
    assert old.id == "lb_old" and old.adopted is False
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


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
