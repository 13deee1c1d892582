"""Named points where a test can kill the process, to prove that a crash anywhere loses
nothing and pays for nothing twice.

`LONGBATCH_FAILPOINT=<name>` makes the process SIGKILL itself on reaching that point: no
cleanup, no atexit, no flushing, exactly like a power cut or an OOM kill (`<name>|<name>…`: at
any of them). Unset (always, in normal use), a failpoint is one environment lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "after-ingest",          # documents read, nothing recorded
    "after-plan",            # plan recorded in the ledger, nothing claimed
    "before-create",         # intent recorded, batches.create not called
    "after-create",          # the batch exists on the server, its id is not recorded
    "after-create-recorded",  # batch id recorded, not yet polled
    "while-waiting",         # after a first poll of pending batches
    "after-ended",           # the batch's end recorded, results not downloaded
    "mid-download",          # part of the results file written
    "after-download",        # results archived, none recorded
    "after-report",          # a report written, its result not yet in the ledger
    "mid-results",           # some results recorded, others not
    "after-collected",       # batch marked collected, summary not written
    "before-retry",          # retryable requests requeued, not yet resubmitted
)
# Points reached only by split documents, between their parts and the step combining them.
SPLIT_POINTS = (
    "after-step-claimed",    # the combining request claimed (queued), its step still "waiting"
    "after-step-built",      # the step marked built, its request not yet sent
)


def failpoint(name: str) -> None:
    wanted = os.environ.get("LONGBATCH_FAILPOINT")
    if wanted and name in wanted.split("|"):
        os.kill(os.getpid(), signal.SIGKILL)
