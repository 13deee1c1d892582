"""`longbatch usage`: billed results grouped by day, model, prompt and run, with cache savings."""

from __future__ import annotations

import pytest

from flows.usage import NO_RUN, usage_frame, usage_report
from longbatch.cache import CachedUsage, batch_cost_usd
from longbatch.catalog import get_model
from longbatch.records import ResultRecord, UsageRecord

DAY1, DAY2 = 1_790_000_000.0, 1_790_000_000.0 + 86_400  # 2026-09-21 and -22 UTC
SONNET = get_model("claude-sonnet-4-6")


def record(prompt: str, at: float, run: str | None, write: int = 0, read: int = 0, kind: str = "succeeded",
           model: str = "claude-sonnet-4-6") -> UsageRecord:
    usage = CachedUsage(1_000, 500, cache_write_1h=write, cache_read=read)
    cost = batch_cost_usd(get_model(model), usage) if kind == "succeeded" else 0.0
    result = ResultRecord("msgbatch_x", f"{prompt}-{at}", "f" * 64, 1, kind, "end_turn", False, 1_000, 500, write,
                          read, cost, received_at=at)
    return UsageRecord(result, model, "a.txt", prompt, run, at - 60 if run else None)


RECORDS = [record("report", DAY1, "run-aaaaaaaa-1", write=100_000), record("summary", DAY1, "run-aaaaaaaa-1", read=100_000),
           record("report", DAY2, "process-bbbbbbbbcc"), record("summary", DAY2, None, kind="canceled"),
           record("report", DAY2, None, model="claude-opus-4-6")]


def test_grouped_by_day_model_prompt_and_run():
    frame = usage_frame(RECORDS)
    assert len(frame) == 4  # the canceled one is not billed
    assert set(frame["day"]) == {"2026-09-21", "2026-09-22"}
    assert set(frame["run"]) == {"2026-09-21 14:12 run-aaaa", "2026-09-22 14:12 bbbbbbbb", NO_RUN}
    by_day = usage_frame(RECORDS, ["day"]).set_index("day")
    assert by_day.loc["2026-09-21", "requests"] == 2 and by_day.loc["2026-09-22", "requests"] == 2
    assert by_day.loc["2026-09-21", "cache_hit_rate"] == pytest.approx(100_000 / 202_000, abs=1e-4)
    # The write lost 1x the input on 100K tokens, the read saved 0.9x: net 0.1 - ... in batch dollars.
    saved = (100_000 * 3 * 0.9 - 100_000 * 3 * 1.0) / 1e6 / 2
    assert by_day.loc["2026-09-21", "cache_saving_usd"] == pytest.approx(saved)
    assert by_day.loc["2026-09-22", "cache_saving_usd"] == 0 and by_day.loc["2026-09-22", "cache_hit_rate"] == 0
    by_prompt = usage_frame(RECORDS, ["prompt"]).set_index("prompt")
    assert by_prompt.loc["summary", "cache_saving_usd"] > 0 > by_prompt.loc["report", "cache_saving_usd"]
    assert usage_frame(RECORDS, ["model"])["cost_usd"].sum() == pytest.approx(sum(r.result.cost_usd for r in RECORDS))


def test_bad_groups_are_refused_and_no_results_say_so(tmp_path):
    with pytest.raises(ValueError, match="day, model, prompt, run"):
        usage_frame(RECORDS, ["week"])
    with pytest.raises(ValueError):
        usage_frame(RECORDS, [])
    assert usage_report([], ["model"], tmp_path / "u.csv").startswith("No billed results yet")
    assert (tmp_path / "u.csv").read_text().strip() == ",".join(["model", "requests", "input_tokens",
                                                                 "cache_write_tokens", "cache_read_tokens",
                                                                 "output_tokens", "cost_usd", "cache_hit_rate",
                                                                 "cache_saving_usd"])
