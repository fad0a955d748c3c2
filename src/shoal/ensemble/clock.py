"""Clock offset from NTP-style exchanges. Pure.

The server stamps a probe when it leaves (t0); the worker stamps its arrival (t1) and its
reply (t2) in its own clock; the server stamps the reply's arrival (t3). Then
    offset = ((t1 - t0) + (t2 - t3)) / 2      (worker clock minus server clock)
    delay  = (t3 - t0) - (t2 - t1)            (time on the wire, both ways)
A sample's error is at most half its delay, so the lowest-delay samples are the ones to trust.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

TRUSTED_SAMPLES = 3


@dataclass(frozen=True, slots=True)
class Sample:
    offset: float
    delay: float


def sample(t0: float, t1: float, t2: float, t3: float) -> Sample:
    return Sample(offset=((t1 - t0) + (t2 - t3)) / 2, delay=max(0.0, (t3 - t0) - (t2 - t1)))


@dataclass(frozen=True, slots=True)
class Estimate:
    offset: float  # add to a server time to get the worker's
    delay: float  # the worst round trip among the trusted samples
    samples: int


def estimate(samples: list[Sample]) -> Estimate:
    """The median offset of the lowest-delay samples."""
    if not samples:
        return Estimate(0.0, 0.0, 0)
    best = sorted(samples, key=lambda s: s.delay)[:TRUSTED_SAMPLES]
    return Estimate(statistics.median(s.offset for s in best), max(s.delay for s in best),
                    len(samples))
