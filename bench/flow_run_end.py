"""How long a flow run takes to end after its work, with Prefect's heartbeats and with longbatch's.

    python bench/flow_run_end.py [--runs 12]

A lasting Prefect server (as under a worker or with PREFECT_API_URL set), heartbeats at Prefect's
default (180 s). One flow whose body sleeps a different length each run (0.05-1.95 s, the same
lengths for both sides, interleaved), timed from the end of its body to the return of the flow
call: setting the final state, Prefect's teardown and the heartbeat thread's join. Prefect's own
heartbeat thread sleeps in 1 s steps, so its join waits for what is left of the current second;
`flows/heartbeats.py` wakes it at once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=12, help="runs on each side (default 12)")
    args = ap.parse_args()
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lb-flow-end-")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    import prefect.flow_engine as engine_module
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
    from prefect.server.api.server import SubprocessASGIServer

    from flows import heartbeats
    from longbatch.prefect_server import _drain_queued

    @flow(name="work-then-end")
    def work_then_end(seconds: float) -> float:
        time.sleep(seconds)
        return time.monotonic()

    server = SubprocessASGIServer()
    server.start()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            print(f"Prefect server at {server.api_url}; heartbeats every "
                  f"{get_current_settings().flows.heartbeat_frequency} s")
            assert heartbeats.install(), "this Prefect's engine lacks what flows/heartbeats.py needs"
            sides = {"Prefect's heartbeats": heartbeats.prefects_own, "longbatch's heartbeats": heartbeats.send_heartbeats}
            work_then_end(0.01)  # the flow registered, the client warm: not timed
            ends: dict[str, list[float]] = {name: [] for name in sides}
            for i in range(args.runs):
                seconds = 0.05 + (1.9 * i / max(args.runs - 1, 1))
                for name, heartbeat in sides.items():
                    engine_module._send_heartbeats = heartbeat
                    work_done = work_then_end(seconds)
                    ends[name].append(time.monotonic() - work_done)
            engine_module._send_heartbeats = heartbeats.send_heartbeats
            _drain_queued()  # the runs' log lines, before the server stops
    finally:
        server.stop()
    for name, values in ends.items():
        print(f"{name:24}: end of work to end of run: median {statistics.median(values):.3f} s, "
              f"mean {statistics.mean(values):.3f} s, max {max(values):.3f} s over {len(values)} runs")
    ours, theirs = statistics.mean(ends["longbatch's heartbeats"]), statistics.mean(ends["Prefect's heartbeats"])
    print(f"ratio longbatch / Prefect (mean): {ours / theirs:.2f}x; {theirs - ours:.2f} s less per flow run")


if __name__ == "__main__":
    main()
