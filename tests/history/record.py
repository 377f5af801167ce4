"""Writing a history: each process appends its operations to a JSONL file of its own
(no two processes share a file, so no line is ever torn), and the run merges the files
into one history ordered by time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

# Lines reach the disk at least this often: a process that dies loses at most this much.
FLUSH_SECONDS = 0.5


class Recorder:
    """Appends one JSON object a line to ``path``."""

    def __init__(self, path: Path, process: str) -> None:
        self.process = process
        self._file = path.open("a", buffering=1 << 16)
        self._flushed = time.monotonic()

    def write(self, op: str, **fields: Any) -> None:
        fields = {"op": op, "p": self.process, **fields}
        self._file.write(json.dumps(fields, separators=(",", ":")) + "\n")
        if time.monotonic() - self._flushed > FLUSH_SECONDS:
            self._file.flush()
            self._flushed = time.monotonic()

    def error(self, exc: BaseException) -> None:
        self.write("error", t=time.time(), error=f"{type(exc).__name__}: {exc}"[:300])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def when(line: str) -> float:
    op = json.loads(line)
    return float(op.get("t0", op.get("t", op.get("start", 0.0))))


def merge(parts: Iterable[Path], out: Path) -> Path:
    """One history from the parts, ordered by each operation's start."""
    lines = [line for part in parts for line in part.read_text().splitlines() if line.strip()]
    lines.sort(key=when)
    out.write_text("".join(line + "\n" for line in lines))
    return out
