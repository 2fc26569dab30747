"""Notebooks' activity, told to their workflows: Jupyter's own record (``last_activity``,
kernels busy), signalled to the notebook's workflow when it changes."""

from __future__ import annotations

from typing import Any

from services.provisioner.watch import Signal, Watcher


class NotebookWatcher(Watcher):
    """Jupyter's activity -> ``activity`` signals, only when it changed."""

    NAME = "notebook-watcher"

    def __init__(self, notebooks: dict[str, Any], signal: Signal) -> None:
        super().__init__(signal)
        self._notebooks = notebooks
        self._seen: dict[str, tuple[float, bool]] = {}

    async def poll(self) -> None:
        for notebook_id, notebook in list(self._notebooks.items()):
            try:
                status = await notebook.status()
            except Exception:  # not answering: the workflow's cap and idle timers still run
                continue
            seen = (status.last_activity.timestamp(), status.busy)
            if self._seen.get(notebook_id) != seen:
                self._seen[notebook_id] = seen
                await self._signal(notebook_id, "activity", {"at_s": seen[0], "busy": seen[1]})
        for gone in set(self._seen) - set(self._notebooks):
            del self._seen[gone]
