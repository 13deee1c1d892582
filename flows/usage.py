"""`longbatch usage`: tokens and dollars billed, by day, model, prompt and run, with what prompt
caching saved — a table on the terminal and the same as CSV.

Everything comes from the ledger's results (billed from the API's `usage`); a result's day is
the UTC day it was received, its run the Prefect flow run (or process) that created its batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from longbatch.cache import cache_figures
from longbatch.fsutil import atomic_write_text
from longbatch.records import UsageRecord

GROUPS = ("day", "model", "prompt", "run")
COLUMNS = ["requests", "input_tokens", "cache_write_tokens", "cache_read_tokens", "output_tokens", "cost_usd",
           "cache_hit_rate", "cache_saving_usd"]
NO_RUN = "(before runs were recorded)"


def run_label(run_id: str | None, started_at: float | None) -> str:
    """When the run started and the start of its id: readable, and unique enough to tell apart."""
    if run_id is None:
        return NO_RUN
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(started_at)) if started_at else "?"
    return f"{when} {run_id.removeprefix('process-')[:8]}"


def usage_frame(records: Iterable[UsageRecord], by: Iterable[str] = GROUPS) -> pd.DataFrame:
    """Billed (succeeded) results summed per group, with the cache's hit rate and saving."""
    by = list(by)
    unknown = [g for g in by if g not in GROUPS]
    if unknown or not by:
        raise ValueError(f"group by one or more of {', '.join(GROUPS)}; got {', '.join(by) or 'nothing'}")
    rows = []
    for u in records:
        r = u.result
        if r.result_type != "succeeded":
            continue  # errored, canceled and expired requests are not billed
        _, saved = cache_figures(u.model, [r])
        rows.append({"day": time.strftime("%Y-%m-%d", time.gmtime(r.received_at)), "model": u.model,
                     "prompt": u.prompt, "run": run_label(u.run_id, u.run_started_at), "requests": 1,
                     "input_tokens": r.input_tokens or 0, "cache_write_tokens": r.cache_creation_tokens or 0,
                     "cache_read_tokens": r.cache_read_tokens or 0, "output_tokens": r.output_tokens or 0,
                     "cost_usd": r.cost_usd or 0.0, "cache_saving_usd": saved})
    if not rows:
        return pd.DataFrame(columns=[*by, *COLUMNS])
    sums = pd.DataFrame(rows).groupby(by, as_index=False)[
        [c for c in COLUMNS if c != "cache_hit_rate"]].sum()
    all_input = sums["input_tokens"] + sums["cache_write_tokens"] + sums["cache_read_tokens"]
    sums["cache_hit_rate"] = (sums["cache_read_tokens"] / all_input.where(all_input > 0)).round(4)
    sums["cost_usd"] = sums["cost_usd"].round(6)
    sums["cache_saving_usd"] = sums["cache_saving_usd"].round(6)
    return sums[[*by, *COLUMNS]]


def render(frame: pd.DataFrame, unbilled: int) -> str:
    if frame.empty:
        return "No billed results yet: nothing spent."
    table = frame.to_string(index=False, formatters={
        "cost_usd": "${:,.4f}".format, "cache_saving_usd": "${:,.4f}".format,
        "cache_hit_rate": lambda v: "-" if pd.isna(v) else f"{v:.0%}"})
    return (f"{table}\n\nTotal: ${frame['cost_usd'].sum():,.4f} for {int(frame['requests'].sum())} billed request(s); "
            f"prompt caching saved ${frame['cache_saving_usd'].sum():,.4f}; {unbilled} unbilled (errored, canceled "
            f"or expired).")


def usage_report(records: list[UsageRecord], by: Iterable[str], csv_path: Path | None) -> str:
    """The table `longbatch usage` prints; with `csv_path`, the same rows written there."""
    frame = usage_frame(records, by)
    if csv_path is not None:
        atomic_write_text(csv_path, frame.to_csv(index=False))
    unbilled = sum(1 for u in records if u.result.result_type != "succeeded")
    return render(frame, unbilled) + (f"\nCSV: {csv_path}" if csv_path is not None else "")
