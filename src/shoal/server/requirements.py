"""Learned requirements: jobs of one `req_group` teach shoal how much memory and time they take.

A new job of the group that does not say its memory or time gets the 95th percentile of the
group's recent history (nearest rank), and its record says where the figure came from.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

HISTORY_PER_GROUP = 1000
MEBIBYTE = 1024 * 1024


def percentile(values: Iterable[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


class LearnedRequirements:
    def __init__(self, history: dict[str, list[tuple[int, float]]] | None = None):
        self._history: dict[str, deque[tuple[int, float]]] = {
            group: deque(rows, maxlen=HISTORY_PER_GROUP) for group, rows in (history or {}).items()
        }

    def record(self, group: str, peak_rss_bytes: int, wall_seconds: float) -> None:
        self._history.setdefault(group, deque(maxlen=HISTORY_PER_GROUP)).append(
            (peak_rss_bytes, wall_seconds))

    def suggest(self, group: str, *, memory: bool, time: bool
                ) -> tuple[int | None, float | None, str | None]:
        """(memory bytes, seconds, how they were found) for what the job left unsaid."""
        rows = self._history.get(group)
        if not rows or not (memory or time):
            return None, None, None
        learned_memory = learned_time = None
        said = []
        if memory:
            p95 = percentile((rss for rss, _ in rows), 0.95)
            learned_memory = max(MEBIBYTE, math.ceil(p95 / MEBIBYTE) * MEBIBYTE)
            said.append(f"memory {learned_memory // MEBIBYTE} MiB")
        if time:
            learned_time = round(percentile((wall for _, wall in rows), 0.95), 3)
            said.append(f"time {learned_time:g}s")
        source = (f"{' and '.join(said)} learned from req-group {group} "
                  f"(p95 of {len(rows)} runs)")
        return learned_memory, learned_time, source
