"""Prompt caching end to end: three prompts over two long documents through the real-API code
path (the SDK over HTTP, the simulator standing in for the API): the later requests read the
document from the cache, and the report JSON and summary.csv say so."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from flows.process import RunParameters, process_documents
from simulator.engine import SimConfig
from simulator.server import SimulatorServer


@pytest.fixture
def cached_api(monkeypatch):
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")
    # No hits inside a batch: every read comes from priming (the primers' batch goes first).
    with SimulatorServer(SimConfig(processing_seconds=0.3, output_tokens=300, cache_hit_rate_in_batch=0.0)) as sim:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
        yield sim


def test_three_prompts_over_two_documents_read_the_document_from_the_cache(data_dir, corpus, cached_api):
    inbox = data_dir / "inbox"
    shutil.copy(corpus / "text/sec_10k_apple.md", inbox / "apple.md")
    shutil.copy(corpus / "text/udhr_article1_multilingual.txt", inbox / "udhr.txt")
    (data_dir / "prompts").mkdir()
    (data_dir / "prompts" / "risks.md").write_text("List every risk the document names, with page references.\n")
    process_documents(RunParameters(data_dir=str(data_dir), prompts=["report", "summary", "risks"],
                                    max_output_tokens=2_000, cache="prime"))
    metas = [json.loads(p.read_text()) for p in (data_dir / "reports").rglob("*.json")]
    assert len(metas) == 6
    for source in ("apple.md", "udhr.txt"):
        mine = sorted((m for m in metas if m["source"] == source), key=lambda m: m["usage"]["cache_read_input_tokens"])
        writer, *readers = mine
        written = writer["usage"]["cache_creation_input_tokens"]
        assert written > 20_000 and writer["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] == written
        assert writer["cache"]["saving_usd"] < 0  # the 1 h write costs 2x
        for meta in readers:
            usage = meta["usage"]
            assert usage["cache_read_input_tokens"] == written  # the same document, byte for byte
            assert usage["cache_read_input_tokens"] > 10 * usage["input_tokens"]  # most of the input
            assert meta["cache"]["hit_rate"] > 0.9 and meta["cache"]["saving_usd"] > 0
        # Net over the document's three prompts: cheaper than sending it three times.
        assert sum(m["cache"]["saving_usd"] for m in mine) > 0
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert {"cache_hit_rate", "cache_saving_usd"} <= set(summary.columns)
    assert (summary["status"] == "complete").all()
    for source, rows in summary.groupby("source"):
        assert sorted(rows["cache_hit_rate"] > 0.9) == [False, True, True]
        assert rows["cache_saving_usd"].sum() > 0
    # `longbatch usage` shows the same: by prompt, the writer's prompt loses, the readers' save.
    from flows.usage import usage_frame, usage_report
    from longbatch.ledger import Ledger

    ledger = Ledger.for_data_dir(data_dir)
    records = ledger.usage_rows()
    ledger.close()
    by_model = usage_frame(records, ["model"])
    assert len(by_model) == 1 and by_model["requests"].iloc[0] == 6
    assert 0.5 < by_model["cache_hit_rate"].iloc[0] < 0.7  # four of six requests read the document
    assert by_model["cache_saving_usd"].iloc[0] == pytest.approx(summary["cache_saving_usd"].sum(), abs=1e-5)
    assert by_model["cost_usd"].iloc[0] == pytest.approx(summary["cost_usd"].sum(), abs=1e-5)
    by_all = usage_frame(records)
    assert list(by_all.columns[:4]) == ["day", "model", "prompt", "run"] and by_all["run"].nunique() == 1
    text = usage_report(records, ["day", "model"], data_dir / "usage.csv")
    assert "prompt caching saved $" in text and "cache_hit_rate" in text
    assert pd.read_csv(data_dir / "usage.csv")["requests"].sum() == 6
