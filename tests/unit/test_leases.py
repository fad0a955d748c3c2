from __future__ import annotations

from itertools import pairwise

from shoal.server.leases import RANDOM_BITS, LeaseIds


def test_lease_ids_increase_across_blocks_of_random_bits() -> None:
    leases = LeaseIds(at_least=5 << RANDOM_BITS)
    ids = [leases.next() for _ in range(3000)]  # several reads of the random source
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[0] >= 5 << RANDOM_BITS
    assert all(b >> RANDOM_BITS == (a >> RANDOM_BITS) + 1 for a, b in pairwise(ids))
    assert leases.above_all > ids[-1] and max(ids) < 2**53
    # The low bits are drawn, not counted: nearly all differ, and they span the range.
    low = [lease & ((1 << RANDOM_BITS) - 1) for lease in ids]
    assert len(set(low)) > 2900
    assert min(low) < 1 << (RANDOM_BITS - 4) and max(low) > (1 << RANDOM_BITS) - (1 << 16)


def test_two_servers_from_the_same_point_hand_out_different_ids() -> None:
    first, second = LeaseIds(at_least=1), LeaseIds(at_least=1)
    assert [first.next() for _ in range(8)] != [second.next() for _ in range(8)]


def test_a_restart_goes_on_above_every_id_handed_out() -> None:
    leases = LeaseIds(at_least=1)
    last = [leases.next() for _ in range(10)][-1]
    assert LeaseIds(at_least=leases.above_all).next() > last
