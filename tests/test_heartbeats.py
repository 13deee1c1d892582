"""Flow runs on a lasting server keep their heartbeats and end when their work does.

The session's Prefect test harness is a real server with Prefect's default heartbeats (180 s)."""

from __future__ import annotations

import time

import prefect.flow_engine as engine_module
from prefect import flow, get_client
from prefect.context import FlowRunContext
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.worker import EventsWorker
from prefect.settings import get_current_settings

from flows import heartbeats

WORK_SECONDS = 1.05  # the heartbeat thread is then ~0.05 s into a wait of 1 s in Prefect's loop


@flow(name="work-then-end")
def work_then_end(seconds: float) -> tuple[str, float]:
    time.sleep(seconds)
    return str(FlowRunContext.get().flow_run.id), time.monotonic()


def teardown_seconds() -> tuple[str, float]:
    """Run the flow; how long its run took to end after its work was done."""
    run_id, work_done = work_then_end(WORK_SECONDS)
    return run_id, time.monotonic() - work_done


def heartbeats_of(run_id: str, timeout: float = 20.0) -> list:
    """The heartbeat events the server stored for this flow run."""
    EventsWorker.drain_all(timeout=10)
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                                                  resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"])),
                                      limit=50)
        if page.events or time.monotonic() > deadline:
            return page.events
        time.sleep(0.5)


def test_the_flow_modules_put_the_prompt_heartbeats_in_place_on_the_pinned_prefect():
    import flows.process  # noqa: F401 - importing a flow module installs them

    assert heartbeats.install() is True
    assert engine_module._send_heartbeats is heartbeats.send_heartbeats


def test_a_run_on_a_lasting_server_sends_its_heartbeat_and_ends_without_waiting_for_the_thread():
    assert get_current_settings().flows.heartbeat_frequency  # heartbeats are on for this server
    heartbeats.install()
    run_id, ours = teardown_seconds()
    assert ours < 0.5, f"the run took {ours:.2f} s to end after its work"
    beats = heartbeats_of(run_id)
    assert beats, "the server has no heartbeat from the run"
    assert all(b.resource.id == f"prefect.flow-run.{run_id}" for b in beats)
    assert any(r.id.startswith("prefect.flow.") for r in beats[0].related)  # the same event as Prefect's


def test_prefects_own_heartbeats_still_hold_the_end_of_a_run(monkeypatch):
    """Why the workaround exists; when a Prefect upgrade makes this fail, drop flows/heartbeats.py."""
    heartbeats.install()
    assert heartbeats.prefects_own is not None and heartbeats.prefects_own is not heartbeats.send_heartbeats
    monkeypatch.setattr(engine_module, "_send_heartbeats", heartbeats.prefects_own)
    run_id, theirs = teardown_seconds()
    assert theirs > 0.7, f"Prefect's own heartbeats let the run end {theirs:.2f} s after its work"
    assert heartbeats_of(run_id)


def test_a_run_with_heartbeats_off_starts_no_thread():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    heartbeats.install()
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        run_id, ours = teardown_seconds()
    assert ours < 0.5
    assert heartbeats_of(run_id, timeout=3) == []


def test_a_prefect_whose_heartbeats_changed_shape_keeps_its_own(monkeypatch):
    heartbeats.install()

    def changed(engine, join_on_exit=True, grace_seconds=2.0):  # noqa: ANN001, ARG001 - a future Prefect's
        raise AssertionError("never called here")

    monkeypatch.setattr(engine_module, "_send_heartbeats", changed)
    assert heartbeats.install() is False
    assert engine_module._send_heartbeats is changed
