"""Shared fixtures: one Prefect test harness per session, a simulator per test, the corpus,
and no network beyond 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

# Before Prefect is imported anywhere: its own state goes to a fresh temp home, the ephemeral
# server gets the time it needs on a small machine, and nothing phones home.
_PREFECT_HOME = tempfile.mkdtemp(prefix="longbatch-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "LONGBATCH_DATABASE_URL"):
    os.environ.pop(var, None)

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is missing: expected it at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Tests reach 127.0.0.1 only: the simulator and Prefect's test server."""
    real_connect = socket.socket.connect

    def guarded(self, address):  # noqa: ANN001
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test tried to reach {host}: only loopback is allowed")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def sim():
    """A simulator over real HTTP on 127.0.0.1, fast enough for tests."""
    from simulator.engine import SimConfig
    from simulator.server import SimulatorServer

    with SimulatorServer(SimConfig(processing_seconds=0.3, output_tokens=400)) as server:
        yield server


@pytest.fixture
def client(sim):
    import anthropic

    return anthropic.Anthropic(api_key="test-key", base_url=sim.url, max_retries=0)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    (d / "inbox").mkdir(parents=True)
    return d


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a `longbatch` subprocess: the test harness's Prefect server, no key."""
    import prefect.settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["PREFECT_API_URL"] = str(prefect.settings.PREFECT_API_URL.value())
    env.update(extra)
    return env


def longbatch_cmd() -> list[str]:
    """The installed console script, as a user runs it."""
    script = Path(sys.executable).parent / "longbatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


@pytest.fixture
def standalone_simulator(tmp_path, request):
    """`longbatch simulator` as its own process; its state dir is the record of every create.
    Yields (base URL, state dir). `@pytest.mark.sim_env(NAME=value)` adds LONGBATCH_SIM_* settings."""
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tmp_path / "simstate"
    marker = request.node.get_closest_marker("sim_env")
    extra = marker.kwargs if marker else {}
    proc = subprocess.Popen([*longbatch_cmd(), "simulator", "--port", str(port), "--processing-seconds", "0.4",
                             "--output-tokens", "400", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(**extra))
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the simulator did not start: " + proc.stderr.read())
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", state
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert "sk-ant-" not in out + err  # the simulator never prints a key it was sent
