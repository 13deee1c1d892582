"""Standing caps: a daily and a monthly cap over what was billed plus the worst case of all
work in flight; a run that would cross one sends nothing and says why; two at once cannot
both take the same room."""

from __future__ import annotations

import threading
import time

import pytest

from flows.process import RunParameters, process_documents
from longbatch.errors import BudgetExceededError
from longbatch.ledger import Ledger, SpendState
from longbatch.records import NewRequest, RequestState, ResultRecord
from simulator.engine import SimConfig
from simulator.server import SimulatorServer
from tasks.caps import judge, period_starts, standing_caps

NOW = 1_795_000_000.0  # 2026-11-18 11:06 UTC


def state(billed=(), in_flight=(), reserved=0.0) -> SpendState:
    return SpendState(list(billed), list(in_flight), [], reserved, NOW)


def test_periods_are_the_utc_day_and_month():
    starts = period_starts(NOW)
    assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(starts["daily"])) == "2026-11-18 00:00"
    assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(starts["monthly"])) == "2026-11-01 00:00"


def test_billed_in_the_period_plus_in_flight_plus_new_is_held_against_each_cap():
    earlier_this_month = NOW - 5 * 86_400
    s = state(billed=[(NOW - 60, 3.0), (earlier_this_month, 40.0), (NOW - 40 * 86_400, 500.0)],
              in_flight=[("claude-sonnet-4-6", 1_000, 2.0, "lb_1"), ("claude-sonnet-4-6", 20_000, None, "lb_1")])
    # In flight: 2.0 recorded + 20K output tokens at $7.50/M for the one claimed before worst cases were kept.
    assert judge(s, 4.0, daily=10.0, monthly=None) == []  # 3 + 2.15 + 4 = 9.15
    [daily] = judge(s, 5.0, daily=10.0, monthly=None)
    assert daily.over_by == pytest.approx(0.15) and daily.billed == 3.0 and daily.in_flight == pytest.approx(2.15)
    [monthly] = judge(s, 4.0, daily=None, monthly=45.0)  # 43 billed this month
    assert monthly.billed == 43.0 and monthly.over_by == pytest.approx(4.15)
    assert len(judge(state(reserved=9.5), 1.0, daily=10.0, monthly=10.0)) == 2  # another run's room counts


def _ledger_with_billed(tmp_path, cost: float) -> Ledger:
    ledger = Ledger.for_data_dir(tmp_path)
    req = NewRequest("a" * 64, "d--report", "d", "a.txt", "0" * 64, "report", "claude-sonnet-4-6", 10, ())
    ledger.record_recovered(req, ResultRecord("msgbatch_a", "d--report", "a" * 64, 1, "succeeded", cost_usd=cost))
    return ledger


def test_two_runs_at_once_cannot_both_take_the_room(tmp_path):
    _ledger_with_billed(tmp_path, 4.0).close()
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        ledger = Ledger.for_data_dir(tmp_path)  # its own engine and connections, like another process
        barrier.wait()
        try:
            with standing_caps(ledger, 5.0, daily=10.0, monthly=None):
                outcomes.append("allowed")
                time.sleep(1.0)  # claiming its work, holding the room
        except BudgetExceededError as exc:
            outcomes.append(str(exc))
        finally:
            ledger.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o == "allowed" for o in outcomes) == [False, True]
    refusal = next(o for o in outcomes if o != "allowed")
    assert "daily cap of $10.00 by $4.00" in refusal and "$4.00 billed this day" in refusal
    ledger = Ledger.for_data_dir(tmp_path)
    with standing_caps(ledger, 6.0, daily=10.0, monthly=None):  # the room is back once the run has claimed
        pass
    ledger.close()


@pytest.fixture
def slow_api(monkeypatch):
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    with SimulatorServer(SimConfig(processing_seconds=120.0, output_tokens=100)) as sim:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
        yield sim


def test_a_second_run_that_would_cross_the_cap_is_refused_while_the_first_is_in_flight(data_dir, slow_api):
    inbox = data_dir / "inbox"
    (inbox / "a.txt").write_text("The first memo about the budget. " * 200)
    process_documents(RunParameters(data_dir=str(data_dir), wait=False, max_output_tokens=100_000,
                                    daily_cap_usd=1.0))
    ledger = Ledger.for_data_dir(data_dir)
    [first] = ledger.requests_in_state(RequestState.SUBMITTED)  # in flight: up to $0.75 of output and its input
    assert ledger.request(first.fingerprint).state == RequestState.SUBMITTED
    ledger.close()
    (inbox / "b.txt").write_text("The second memo about the plan. " * 200)
    with pytest.raises(BudgetExceededError, match=r"1 request\(s\) in 1 batch.*daily cap of \$1\.00 by \$0\.5"):
        process_documents(RunParameters(data_dir=str(data_dir), wait=False, max_output_tokens=100_000,
                                        daily_cap_usd=1.0))
    assert len(slow_api.sim.create_log) == 1  # the second run sent nothing
    # With room for both, the second run goes.
    process_documents(RunParameters(data_dir=str(data_dir), wait=False, max_output_tokens=100_000, daily_cap_usd=2.0))
    assert len(slow_api.sim.create_log) == 2
