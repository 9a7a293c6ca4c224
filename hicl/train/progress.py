"""Progress for a console that is not a terminal (a log file, a pipe, CI): plain lines, not a bar.

rich's live bar draws nothing until the end when it cannot redraw in place, so a redirected run
looked hung. `LineProgress` has the part of rich's `Progress` interface the loop uses and prints one
line per `every_s` seconds and one at the end of each task.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich.console import Console


class LineProgress:
    def __init__(self, console: Console, every_s: float = 30.0):
        self.console = console
        self.every_s = every_s
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            for task_id in self.tasks:
                self._print(task_id)

    def add_task(self, description: str, total: int, completed: int = 0, **fields: Any) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = {"description": description, "total": total, "completed": completed,
                               "started": time.monotonic(), "printed": time.monotonic(), **fields}
        return task_id

    def update(self, task_id: int, advance: int = 0, **fields: Any) -> None:
        task = self.tasks[task_id]
        task["completed"] += advance
        task.update(fields)
        if time.monotonic() - task["printed"] >= self.every_s:
            self._print(task_id)

    def _print(self, task_id: int) -> None:
        task = self.tasks[task_id]
        task["printed"] = time.monotonic()
        elapsed = time.monotonic() - task["started"]
        rate = f", {task['rate']:.0f} img/s" if task.get("rate") else ""
        losses = f", {task['losses']}" if task.get("losses") else ""
        self.console.print(
            f"{task['description']}: step {task['completed']}/{task['total']}{rate}{losses}, {elapsed:.0f} s",
            markup=False, highlight=False,
        )
