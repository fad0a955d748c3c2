"""Lease ids: increasing (a sequence in the high bits) and not guessable (random low bits).

The random bits come from the operating system's CSPRNG, read in blocks: one read for many
leases, where a read per lease cost more than the rest of an assignment's bookkeeping.
"""

from __future__ import annotations

import os
import struct

RANDOM_BITS = 20  # keeps lease ids below 2**53, exact in any JSON reader
_MASK = (1 << RANDOM_BITS) - 1
_BLOCK = 1024  # nonces per read


class LeaseIds:
    def __init__(self, at_least: int):
        # The first sequence whose lease ids are all at least `at_least`.
        self._sequence = -(-at_least >> RANDOM_BITS)
        self._nonces: list[int] = []

    @property
    def above_all(self) -> int:
        """Above every lease id handed out: where a restarted server goes on from."""
        return self._sequence << RANDOM_BITS

    def next(self) -> int:
        if not self._nonces:
            block = struct.unpack(f"{_BLOCK}I", os.urandom(4 * _BLOCK))
            self._nonces = [value & _MASK for value in block]
        lease_id = (self._sequence << RANDOM_BITS) | self._nonces.pop()
        self._sequence += 1
        return lease_id
