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


# -- PostgreSQL: a real server for the shared-ledger tests ---------------------------------

def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on 127.0.0.1 for the session; yields its
    base URL. `.ci/run` installs the server when missing (and sets LONGBATCH_TEST_POSTGRES=required,
    so CI never skips these tests); elsewhere they are skipped with the reason."""
    import subprocess

    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("LONGBATCH_TEST_POSTGRES") == "required":
            pytest.fail("PostgreSQL is required but initdb was not found (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (initdb not found); .ci/run installs it")
    pytest.importorskip("psycopg", reason="the [postgres] extra (psycopg 3) is not installed")
    root = Path(tempfile.mkdtemp(prefix="lbpg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to `postgres`
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pgdata = root / "data"
    run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres",
                    "--no-sync"], **run)
    # Durability is not what these tests are about: fsync off keeps them fast.
    options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               f"-c full_page_writes=off -c max_connections=300")
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(pgdata), "-o", options, "-l", str(root / "log"),
                    "-w", "-t", "60", "start"], **run)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server; dropped after the test."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    yield f"{postgres_server}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request) -> str | None:
    """Run the test on each kind of ledger: None (SQLite in the data dir), then a PostgreSQL URL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")
