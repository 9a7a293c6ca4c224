"""How a run's last session ended, in `outcome.json`: finished, stopped (SIGINT/SIGTERM), collapsed, diverged or
failed.

`hicl runs` reads it (with the run lock, which tells a running run) to show each run's state; the file is
removed when a session starts, so a run that is killed outright shows as `interrupted`.
"""

from __future__ import annotations

import json
from typing import Any

from hicl.run_list import OUTCOME
from hicl.train.callbacks import Callback, RunState
from hicl.train.signals import Stopped


def outcome_of(error: BaseException | None) -> str:
    """finished (no error), stopped (a stop signal or Ctrl-C), collapsed (the collapse monitor stopped it),
    diverged (a non-finite or exploded model), failed (anything else)."""
    if error is None:
        return "finished"
    if isinstance(error, Stopped):
        return "stopped" if error.reason is None else "collapsed"
    if isinstance(error, KeyboardInterrupt):
        return "stopped"
    return "diverged" if "training diverged" in str(error) else "failed"


class RunOutcome(Callback):
    """Writes `outcome.json` at the end of every session of a run (rank 0)."""

    def on_run_start(self, run: RunState) -> None:
        run.run.inside(run.run.path / OUTCOME).unlink(missing_ok=True)

    def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        record: dict[str, Any] = {"state": outcome_of(error), "epoch": run.epoch, "step": run.step, "loss": run.loss}
        if error is not None and record["state"] != "stopped":  # why it ended, for `hicl runs --json`
            record["error"] = str(error)[:500]
        (run.run.inside(run.run.path / OUTCOME)).write_text(json.dumps(record) + "\n")
