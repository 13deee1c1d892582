"""Flow-run heartbeats that stop the moment the run ends.

On a lasting Prefect server (a deployment's worker, `serve`, PREFECT_API_URL) each flow run sends
heartbeats from a thread, so that the server can tell a run whose process died (on by default,
every 180 s, since PrefectHQ/prefect#21058). Prefect 3.8.8 (also 3.9.1, and its main branch of
2026-08-21) sleeps that thread in steps of `time.sleep(1)` and joins it when the run ends (the
loop of PrefectHQ/prefect#19641): every run waited 0-1 s after its work was done (0.8 s of a 7.5 s
run of 1,000 small documents, measured with py-spy). `install()` puts in Prefect's place the same
heartbeats, sent at the same times, from a thread that waits on the stop event instead, so the
join returns at once. Where Prefect's engine no longer has the parts this relies on, Prefect's
own is left in place: slower, never wrong.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

_REQUIRED = ("heartbeat_seconds", "_build_heartbeat_event_template", "_emit_flow_run_heartbeat")
prefects_own: Any = None  # what `install()` replaced, for the tests that show why


def install() -> bool:
    """Use `send_heartbeats` for every flow run in this process. True when it is in place."""
    import prefect.flow_engine as engine_module

    theirs = getattr(engine_module, "_send_heartbeats", None)
    if theirs is send_heartbeats:
        return True
    engine_class = getattr(engine_module, "BaseFlowRunEngine", None)
    if (theirs is None or engine_class is None
            or list(inspect.signature(theirs).parameters) != ["engine", "join_on_exit"]
            or not all(hasattr(engine_class, name) for name in _REQUIRED)
            or not hasattr(engine_module, "MINIMUM_HEARTBEAT_INTERVAL")):
        return False  # a Prefect whose heartbeats changed shape: keep its own
    global prefects_own
    prefects_own = theirs
    engine_module._send_heartbeats = send_heartbeats
    return True


@contextmanager
def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Generator[None, None, None]:
    """Prefect's `_send_heartbeats`, line for line, but for how the thread waits between beats."""
    from prefect.flow_engine import MINIMUM_HEARTBEAT_INTERVAL

    heartbeat_seconds = engine.heartbeat_seconds
    if heartbeat_seconds is None:
        yield
        return
    heartbeat_seconds = max(heartbeat_seconds, MINIMUM_HEARTBEAT_INTERVAL)
    resource, related = engine._build_heartbeat_event_template()
    stop_event = threading.Event()

    def heartbeat_loop() -> None:
        while not stop_event.is_set():
            run = engine.flow_run
            if run and run.state and run.state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # noqa: BLE001 - as Prefect: a lost heartbeat must not fail the run
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            stop_event.wait(heartbeat_seconds)  # wakes as soon as the run ends

    # The thread sees this context's settings (PREFECT_API_URL), as in Prefect's: without them
    # a heartbeat at teardown could start an ephemeral server.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(heartbeat_loop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop_event.set()
        if join_on_exit:
            thread.join(timeout=2)
