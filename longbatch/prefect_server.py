"""Prefect's temporary server for one CLI run, which must not outlive the run.

With no PREFECT_API_URL, Prefect starts a temporary ("ephemeral") API server in a subprocess
and stops it at exit. A run killed by SIGKILL or the OOM killer never gets to stop it: the
server lives on, reparented to init, one more per crash. So the CLI starts that server itself,
the way Prefect does, but through `longbatch.orphan_guard`, which asks the kernel to send the
server SIGKILL when its parent dies (Linux's parent-death signal).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def temporary_prefect_server() -> Iterator[str | None]:
    """Point Prefect at a temporary server that dies with this process, unless a server is
    configured (PREFECT_API_URL). Yields the server's API URL, or None when none was started."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    server = _server_dying_with_parent()
    server.start()  # from this thread, which lives as long as the process: the signal follows it
    try:
        # No flow-run heartbeats: they tell a lasting server that a run's process died, and this
        # server dies with it. Their thread costs every run ~1 s (it is joined at the end of the
        # run, after up to a second's sleep).
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            try:
                yield server.api_url
            finally:
                _drain_queued()
    finally:
        server.stop()


def _drain_queued(timeout: float = 60.0) -> None:
    """Send the log lines and events still queued in this process while the server is up. Left
    to Prefect's exit hooks they are sent after the server has stopped: Prefect then prints
    "Error logging to API ... All connection attempts failed", and a run of 10,000 documents
    waited ~70 s at exit for their retries and lost its last logs."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - lost log lines must not hide how the run ended
            logging.getLogger(__name__).debug("could not drain %s", service.__name__, exc_info=True)


def _server_dying_with_parent() -> Any:
    import prefect.server.api.server as prefect_server

    class ServerDyingWithParent(prefect_server.SubprocessASGIServer):
        # Prefect keeps one server per port for the whole process, and port None is shared:
        # without a registry of its own this would be the server some other code (a test
        # harness) already started, and stopping it at the end of the run would stop theirs.
        _instances: dict[int | None, Any] = {}

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            # Prefect's own command and environment, launched through the guard: swap the
            # `subprocess` that Prefect's module sees for the length of this call only.
            real = prefect_server.subprocess
            prefect_server.subprocess = _GuardedSubprocess()  # type: ignore[assignment]
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = real

    return ServerDyingWithParent()


class _GuardedSubprocess:
    """`subprocess`, except that Popen runs its command under `longbatch.orphan_guard`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:  # noqa: N802 - mirrors subprocess
        guard = [sys.executable, "-m", "longbatch.orphan_guard", str(os.getpid())]
        return subprocess.Popen([*guard, *args], **kwargs)
