"""`python -m longbatch.orphan_guard PARENT_PID COMMAND...`: run COMMAND (in this same process)
so that it is killed when its parent dies, however the parent died.

Linux's parent-death signal survives exec; elsewhere the command simply runs. Used for
Prefect's temporary server (see longbatch/prefect_server.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        # SIGKILL, not SIGTERM: a server still starting up defers SIGTERM until it is up
        # (seen: 20 s). It only ever fires when the parent is already gone; a normal exit
        # stops the server gracefully first. SQLite's journal keeps Prefect's database whole.
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the signal was armed
            sys.exit(0)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
