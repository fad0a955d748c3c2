"""What the jobs themselves saw: a ledger every copy of every job appends to, and its checker.

Each copy of a job writes lines of the form ``JOB_ID LEASE_ID PID EVENT EPOCH_SECONDS`` to one
shared file, where EVENT is ``start`` (before its work), ``tick`` (while working, for long jobs)
or ``end`` (after its work). ``>>`` opens with O_APPEND and bash's ``echo`` writes a short line
in one ``write``, so lines never interleave, even between copies killed with SIGKILL.

A *copy* is one process that ran the job's command: (job, lease, pid). The checker does not
trust the server: it derives from the ledger alone

- which jobs finished (an ``end`` line), and which finished more than once;
- which copies were killed (a ``start`` and no ``end``);
- whether two copies of one job were ever alive at the same time.

A finished copy was alive over ``[start, end]``. A killed copy's death is not recorded (SIGKILL
leaves no trace), so only ``[start, last line it wrote]`` is certain; ticks keep that close to
the truth. Overlaps are judged on these certain intervals only, so every overlap reported is
real; an overlap shorter than one tick period may go unseen.

Pure: no I/O but reading the file, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

EVENTS = ("start", "tick", "end")


def ledger_command(ledger: Path, work: str, tag: str) -> str:
    """A shell command that records its copy's start, `work`'s progress and its end.

    `work` may call ``tick`` to record that the copy is still alive. `tag` makes the command
    unique (the server treats the same command in the same directory as the same job).
    """
    note = f'echo "$SHOAL_JOB_ID $SHOAL_ATTEMPT_LEASE $$ $1 $EPOCHREALTIME" >> {ledger}'
    return (f"note() {{ {note}; }}; tick() {{ note tick; }}; note start; {work}; "
            f"note end # {tag}")


def ticking_work(seconds: float, period: float = 0.1) -> str:
    """Shell code that works for about `seconds`, ticking every `period`."""
    steps = max(1, round(seconds / period))
    return f"for _ in $(seq {steps}); do sleep {period}; tick; done"


@dataclass
class Copy:
    """One process that ran a job's command."""

    job_id: int
    lease_id: int
    pid: int
    start: float | None = None
    end: float | None = None
    last_seen: float = float("-inf")
    starts: int = 0
    ends: int = 0

    @property
    def finished(self) -> bool:
        return self.end is not None

    @property
    def alive(self) -> tuple[float, float]:
        """When this copy is known to have been alive."""
        first = self.start if self.start is not None else self.last_seen
        return first, self.end if self.end is not None else self.last_seen

    def __str__(self) -> str:
        first, last = self.alive
        how = "finished" if self.finished else "killed, last seen"
        return (f"job {self.job_id} lease {self.lease_id} pid {self.pid}: "
                f"started {first:.3f}, {how} {last:.3f}")


@dataclass
class LedgerReport:
    expected: list[int]
    copies: dict[int, list[Copy]] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)

    @property
    def end_counts(self) -> Counter[int]:
        return Counter({job_id: sum(c.ends for c in copies)
                        for job_id, copies in self.copies.items()})

    @property
    def missing(self) -> list[int]:
        """Expected jobs that never finished."""
        counts = self.end_counts
        return [job_id for job_id in self.expected if counts[job_id] == 0]

    @property
    def duplicated(self) -> dict[int, int]:
        """Jobs that finished more than once, with how many times."""
        return {job_id: n for job_id, n in sorted(self.end_counts.items()) if n > 1}

    @property
    def unexpected(self) -> list[int]:
        wanted = set(self.expected)
        return sorted(job_id for job_id in self.copies if job_id not in wanted)

    @property
    def killed(self) -> list[Copy]:
        return [c for copies in self.copies.values() for c in copies if not c.finished]

    @property
    def overlaps(self) -> list[tuple[Copy, Copy, float]]:
        """Pairs of copies of one job known to be alive at once, with for how long."""
        found = []
        for copies in self.copies.values():
            ordered = sorted(copies, key=lambda c: c.alive)
            for index, first in enumerate(ordered):
                for second in ordered[index + 1:]:
                    (a_start, a_end), (b_start, b_end) = first.alive, second.alive
                    shared = min(a_end, b_end) - max(a_start, b_start)
                    if shared > 0:
                        found.append((first, second, shared))
        return found

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected or self.overlaps
                    or self.malformed)

    def summary(self) -> dict[str, int]:
        return {
            "jobs": len(self.expected),
            "copies": sum(len(copies) for copies in self.copies.values()),
            "killed_copies": len(self.killed),
            "missing": len(self.missing),
            "duplicated": len(self.duplicated),
            "overlaps": len(self.overlaps),
            "malformed": len(self.malformed),
        }

    def describe(self, limit: int = 10) -> str:
        """Every problem, with the copies involved, for an assertion message."""
        lines = [f"ledger: {self.summary()}"]
        if self.missing:
            lines.append(f"never finished: {self.missing[:limit]}")
        for job_id, count in list(self.duplicated.items())[:limit]:
            lines.append(f"job {job_id} finished {count} times:")
            lines.extend(f"    {c}" for c in self.copies[job_id])
        if self.unexpected:
            lines.append(f"jobs nobody added: {self.unexpected[:limit]}")
        for first, second, shared in self.overlaps[:limit]:
            lines.append(f"overlap of {shared:.3f} s:\n    {first}\n    {second}")
        lines.extend(f"malformed: {line!r}" for line in self.malformed[:limit])
        return "\n".join(lines)


def check_lines(lines: Iterable[str], expected: Iterable[int]) -> LedgerReport:
    report = LedgerReport(expected=sorted(expected))
    by_key: dict[tuple[int, int, int], Copy] = {}
    for line in lines:
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 5 or parts[3] not in EVENTS:
                raise ValueError(line)
            job_id, lease_id, pid = int(parts[0]), int(parts[1]), int(parts[2])
            at = float(parts[4])
        except ValueError:
            report.malformed.append(line)
            continue
        key = (job_id, lease_id, pid)
        copy = by_key.get(key)
        if copy is None:
            copy = by_key[key] = Copy(job_id, lease_id, pid)
            report.copies.setdefault(job_id, []).append(copy)
        copy.last_seen = max(copy.last_seen, at)
        if parts[3] == "start":
            copy.starts += 1
            copy.start = at if copy.start is None else min(copy.start, at)
        elif parts[3] == "end":
            copy.ends += 1
            copy.end = at if copy.end is None else max(copy.end, at)
    for copy in by_key.values():
        if copy.starts != 1 or copy.ends > 1:
            report.malformed.append(f"{copy}: {copy.starts} start and {copy.ends} end lines")
        elif copy.end is not None and copy.start is not None and copy.end < copy.start:
            report.malformed.append(f"{copy}: ends before it starts")
    return report


def check_ledger(path: Path, expected: Iterable[int]) -> LedgerReport:
    text = path.read_text() if path.exists() else ""
    return check_lines(text.splitlines(), expected)
