"""Who masks with whom: the complete graph, or a sparse random graph (Bell et al., CCS 2020).

The sparse graph is a Harary graph on a pseudo-random ordering of the advertised hospitals:
each hospital is joined to the ceil(k/2) hospitals on each side of it in the ordering, so
every hospital has the same degree 2*ceil(k/2) (or everyone, when that covers the ring).
The ordering is HMAC-SHA256(public seed, id), so every party computes the same graph from
public data and nobody picks it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence


def neighbours(ids: Sequence[str], degree: int | None, seed: bytes) -> dict[str, frozenset[str]]:
    """Each id's neighbours (never itself). ``degree`` None means everyone."""
    members = sorted(set(ids))
    n = len(members)
    half = n if degree is None else -(-degree // 2)
    if 2 * half >= n - 1:
        everyone = frozenset(members)
        return {member: everyone - {member} for member in members}
    ring = sorted(members, key=lambda member: hmac.new(seed, member.encode(), hashlib.sha256).digest())
    result = {}
    for position, member in enumerate(ring):
        offsets = [step for offset in range(1, half + 1) for step in (offset, -offset)]
        result[member] = frozenset(ring[(position + step) % n] for step in offsets)
    return result


def share_threshold(holders: int, threshold: int, sparse: bool) -> int:
    """How many of a hospital's share holders (its neighbours and itself) rebuild its secrets.

    Complete graph: the round threshold m. Sparse graph: a strict majority of the holders, so a
    coordinator can never collect enough of both kinds of share for one hospital (each holder
    reveals only one kind).
    """
    return threshold if not sparse else holders // 2 + 1
