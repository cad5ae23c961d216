"""With `--workers N`, one repository state for every worker: the repository extension's loads and unloads, shared.

Each worker process holds its own runtime sessions (that is what workers are for), so each loads the versions
itself; what must be one is the decision of what serves. Every worker reads the same folder with the same policy,
checks and control mode, so they reach the same versions; the one thing a single worker could decide alone is an
explicit load or unload, which lands on whichever worker the connection reached. So a load or unload is applied by
that worker, then published in a control file in a folder the supervisor creates for the server's lifetime
(`CONTROL_ENV`), under an exclusive lock with a generation number; every worker follows the file (every
`FOLLOW_SECONDS`) and applies the same change, and a worker the supervisor restarts applies it at start. The index
every worker reports is therefore the same once the followers have caught up (a fraction of a second).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from pathlib import Path

from kerasport.fsutil import write_json_atomic

CONTROL_ENV = "KERASPORT_REPOSITORY_CONTROL"
CONTROL_NAME = "control.json"
LOCK_NAME = "control.lock"
FOLLOW_SECONDS = 0.2


class SharedControl:
    """The control file: `{"generation": n, "unloaded": {model: true|false}}`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.seen = -1

    @classmethod
    def from_environment(cls) -> SharedControl | None:
        folder = os.environ.get(CONTROL_ENV)
        return cls(folder) if folder and os.path.isdir(folder) else None

    def read(self) -> tuple[int, dict[str, bool]]:
        try:
            data = json.loads((self.folder / CONTROL_NAME).read_text())
        except (OSError, ValueError):
            return 0, {}
        return int(data.get("generation", 0)), {str(k): bool(v) for k, v in data.get("unloaded", {}).items()}

    def publish(self, name: str, unloaded: bool) -> int:
        """Record that `name` is (un)loaded for every worker; returns the new generation."""
        with open(self.folder / LOCK_NAME, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation, states = self.read()
            states[name] = unloaded
            write_json_atomic(self.folder / CONTROL_NAME, {"generation": generation + 1, "unloaded": states})
        return generation + 1

    async def follow(self, apply) -> None:
        """Call `apply(states)` whenever the generation changes (first call: at once, for a restarted worker)."""
        while True:
            generation, states = await asyncio.to_thread(self.read)
            if generation != self.seen:
                self.seen = generation
                await apply(states)
            await asyncio.sleep(FOLLOW_SECONDS)
