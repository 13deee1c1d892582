"""A killed `longbatch run` leaves no temporary Prefect server behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env, longbatch_cmd

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the guard is Linux's")


def _children(pid: int) -> dict[int, str]:
    """Live child processes of `pid` and their command lines."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(entry.name)] = cmdline
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by init


def test_a_killed_run_takes_its_temporary_prefect_server_with_it(tmp_path):
    inbox = tmp_path / "data" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "notes.txt").write_text("Minutes of the harbour board, with figures and names. " * 200)
    env = cli_env(PREFECT_HOME=str(tmp_path / "prefect-home"), LONGBATCH_SIM_PROCESSING_SECONDS="600")
    del env["PREFECT_API_URL"]  # as a user runs it: no server configured, a temporary one is started
    proc = subprocess.Popen([*longbatch_cmd(), "run", "--simulate", "--data-dir", str(tmp_path / "data")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    servers: dict[int, str] = {}
    try:
        deadline = time.time() + 300
        # Mid-run: the server is up and the batch is sent (it takes 600 s to end).
        while not (tmp_path / "data" / "ledger.sqlite").exists() or not servers:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            assert time.time() < deadline, "the run did not get going"
            servers = {p: c for p, c in _children(proc.pid).items() if "prefect.server.api.server" in c}
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while any(_alive(p) for p in servers) and time.time() < deadline:
            time.sleep(0.2)
        survivors = [p for p in servers if _alive(p)]
        assert not survivors, f"the temporary Prefect server outlived its run: {servers}"
    finally:
        proc.kill()
        for pid in servers:  # without the fix, do not leave it running for the rest of the suite
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_temporary_server_runs_flows_without_heartbeats_and_a_configured_one_keeps_them():
    """Heartbeats tell a lasting server that a run died; the CLI's own server dies with the run."""
    from prefect import flow
    from prefect.settings import get_current_settings

    from longbatch.prefect_server import temporary_prefect_server

    @flow
    def heartbeat_of_this_run() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    configured_heartbeat = get_current_settings().flows.heartbeat_frequency
    assert configured_heartbeat is not None  # Prefect's default: 180 s
    with temporary_prefect_server() as configured:  # the test harness's server is configured
        assert configured is None and heartbeat_of_this_run() == configured_heartbeat
    import prefect.settings

    with prefect.settings.temporary_settings({prefect.settings.PREFECT_API_URL: None}):
        with temporary_prefect_server() as url:
            assert url and url.startswith("http://127.0.0.1") and heartbeat_of_this_run() is None
    # It was a server of its own, and stopping it left the harness's server (another
    # SubprocessASGIServer in this process) running: the next flow still reaches it.
    assert url != prefect.settings.PREFECT_API_URL.value()
    assert heartbeat_of_this_run() == configured_heartbeat
