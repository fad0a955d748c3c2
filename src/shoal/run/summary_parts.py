"""What a run's summary lists, kept as jobs end (lines and runmaker files alike): a summary
never reads every job back, and a million jobs hold no more than these few."""

from __future__ import annotations

import heapq

SLOWEST_SHOWN = 3
MAX_FAILURES_SHOWN = 20
STDERR_TAIL_CHARS = 2000  # of a failed job's stderr, in the summary


def failure_entry(job_id: int, line: int, cmd: str, reason: str | None,
                  stderr: str) -> dict[str, object]:
    """One of the summary's `failures`."""
    return {"id": job_id, "line": line, "cmd": cmd, "reason": reason,
            "stderr_tail": stderr[-STDERR_TAIL_CHARS:]}


class SlowestJobs:
    """The SLOWEST_SHOWN slowest jobs that succeeded; of two as slow, the later job."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, str]] = []  # (wall seconds, id, line, cmd)

    def saw(self, wall_seconds: float | None, job_id: int, line: int, cmd: str) -> None:
        if wall_seconds is None:
            return
        heapq.heappush(self._heap, (wall_seconds, job_id, line, cmd))
        if len(self._heap) > SLOWEST_SHOWN:
            heapq.heappop(self._heap)

    def entries(self) -> list[dict[str, object]]:
        """The summary's `slowest`, the slowest first."""
        return [{"id": job_id, "line": line, "cmd": cmd, "wall_seconds": wall}
                for wall, job_id, line, cmd in sorted(self._heap, reverse=True)]
