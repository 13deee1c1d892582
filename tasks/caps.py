"""Standing spend caps: besides `--budget-usd` (one run), a cap per UTC day and per UTC month.

What counts against a cap: what was billed in the period (from results' usage), plus the worst
case of everything in flight (requests queued, held, sent or to be retried; combining steps not
yet built; spend other runs were just allowed), plus the worst case of this run's new work. A
run that would cross a cap sends nothing and says by how much and what is in flight. The check
and the reservation are one locked transaction in the ledger, so two runs at once cannot both
take the same room.
"""

from __future__ import annotations

import calendar
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from longbatch.catalog import ALIASES, BUILTIN_MODELS, batch_cost_usd
from longbatch.errors import BudgetExceededError
from longbatch.ledger import Ledger, SpendState


@dataclass(frozen=True)
class CapLine:
    period: str  # "daily" | "monthly"
    cap: float
    billed: float
    in_flight: float
    new: float

    @property
    def over_by(self) -> float:
        return self.billed + self.in_flight + self.new - self.cap


def period_starts(now: float) -> dict[str, float]:
    """Start of the current UTC day and month."""
    t = time.gmtime(now)
    return {"daily": float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))),
            "monthly": float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))}


def request_worst_case(model_id: str, max_tokens: int, recorded: float | None) -> float:
    """A pending request's worst case: as recorded at claim time; for one claimed before that
    was recorded, every granted output token (its input is unknown here)."""
    if recorded is not None:
        return recorded
    spec = BUILTIN_MODELS.get(ALIASES.get(model_id, model_id))
    return batch_cost_usd(spec, 0, max_tokens) if spec else 0.0


def step_worst_case(recipe: dict) -> float:
    spec = BUILTIN_MODELS.get(ALIASES.get(recipe["model"], recipe["model"]))
    return batch_cost_usd(spec, recipe["input_upper"], recipe["max_tokens"]) if spec else 0.0


def in_flight_usd(state: SpendState) -> tuple[float, int, set[str]]:
    """(worst case of all work in flight, its request count, the ledger ids of its batches)."""
    total = sum(request_worst_case(m, t, c) for m, t, c, _ in state.in_flight)
    total += sum(step_worst_case(r) for r in state.waiting_steps) + state.reserved
    return total, len(state.in_flight), {b for *_, b in state.in_flight if b}


def judge(state: SpendState, new_usd: float, daily: float | None, monthly: float | None) -> list[CapLine]:
    """The caps this new work would cross (empty: it may go)."""
    starts = period_starts(state.now)
    flight, _, _ = in_flight_usd(state)
    lines = []
    for period, cap in (("daily", daily), ("monthly", monthly)):
        if cap is None:
            continue
        billed = sum(cost for at, cost in state.billed if at >= starts[period])
        line = CapLine(period, cap, billed, flight, new_usd)
        if line.over_by > 1e-9:
            lines.append(line)
    return lines


def refusal(lines: list[CapLine], state: SpendState) -> str:
    _, count, batches = in_flight_usd(state)
    worst = max(lines, key=lambda line: line.over_by)
    return (f"This run could cost up to ${worst.new:,.2f}; with ${worst.billed:,.2f} billed this "
            f"{'day' if worst.period == 'daily' else 'month'} (UTC) and up to ${worst.in_flight:,.2f} in flight "
            f"({count} request(s) in {len(batches)} batch(es), waiting steps and other runs' reservations, "
            f"every granted token counted), it would cross the {worst.period} cap of ${worst.cap:,.2f} by "
            f"${worst.over_by:,.2f}. Nothing was sent. Wait for work in flight to end (`longbatch status`), "
            f"cancel some (`longbatch cancel`), lower --max-output-tokens, or raise the cap.")


@contextlib.contextmanager
def standing_caps(ledger: Ledger, new_usd: float, daily: float | None, monthly: float | None) -> Iterator[None]:
    """Hold room for `new_usd` under the caps while the caller claims its work; refuse (raise
    BudgetExceededError) when it would cross one."""
    if daily is None and monthly is None:
        yield
        return

    def decide(state: SpendState) -> tuple[float | None, str | None]:
        lines = judge(state, new_usd, daily, monthly)
        return (None, refusal(lines, state)) if lines else (new_usd, None)

    reservation, verdict = ledger.reserve_spend(decide)
    if reservation is None:
        raise BudgetExceededError(verdict)
    try:
        yield
    finally:
        ledger.release_spend(reservation)
