"""Quorum: may this node serve? A pure function of who was heard when (the clock passed in).

Theory of operation (the ideas of corosync's votequorum, one vote per node):

- Every node's service daemon sends a heartbeat to every peer each second
  (:mod:`hafs.service.membership`); a peer heard within :data:`DEAD_AFTER` is a member.
- **Majority.** The node is quorate when its members (itself included) are more than half
  of the *expected* nodes: a minority side of a partition releases its VIPs and takes none.
- **Last man standing.** While quorate, a node unheard for :data:`SHRINK_AFTER` is dropped
  from the expected set, so nodes lost one after another leave the rest quorate down to
  two (votequorum's ``last_man_standing``); a node heard again is expected again.
- **Tie-break.** An even split (members exactly half the expected set) is quorate on the
  side that has the expected node first in name order (votequorum's ``auto_tie_breaker``,
  lowest node id). So a 2-node cluster whose peer is lost is quorate only on the node
  first in name order — unless the witness answers (next rule).
- **Witness.** A node that hears no peer at all is isolated, however many peers it
  expected, unless the witness (the nodes' gateway, or the address the inventory names)
  still answers: then its peers died, and it serves alone. A node whose network failed
  reaches neither.

Never wall clocks: ``now`` is a monotonic time, as given by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEAD_AFTER = 2.5  # heartbeats every 1 s: two lost in a row are still a member; under CARP's 3 s
SHRINK_AFTER = 3.0  # unheard this much longer (while quorate): no longer expected


@dataclass(frozen=True)
class Verdict:
    quorate: bool
    members: tuple[str, ...]
    expected: tuple[str, ...]
    reason: str


@dataclass
class Quorum:
    """The quorum of ``node`` among ``nodes`` (every node of the cluster, itself included)."""

    node: str
    nodes: tuple[str, ...]
    started: float  # every peer counts as heard then: a daemon that starts drops nothing
    heard: dict[str, float] = field(default_factory=dict)
    expected: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.expected = set(self.nodes)
        self.heard = {p: self.started for p in self.nodes if p != self.node}

    def heartbeat(self, now: float, peer: str) -> None:
        if peer in self.nodes and peer != self.node:
            self.heard[peer] = now

    def members(self, now: float) -> set[str]:
        alive = {p for p, at in self.heard.items() if now - at <= DEAD_AFTER}
        return {self.node, *alive}

    def verdict(self, now: float, witness: bool | None = None) -> Verdict:
        """Quorate or not, and why. ``witness``: does the witness answer (None: not asked,
        or none configured). Call it regularly: it also shrinks and regrows the expected set."""
        members = self.members(now)
        self.expected |= members  # a node heard again is expected again
        quorate, reason = self._decide(members, witness)
        if quorate:  # last man standing: forget nodes long gone, while we may still decide
            gone = {
                p
                for p in self.expected - members
                if now - self.heard[p] > DEAD_AFTER + SHRINK_AFTER
            }
            self.expected -= gone
        return Verdict(quorate, tuple(sorted(members)), tuple(sorted(self.expected)), reason)

    def _decide(self, members: set[str], witness: bool | None) -> tuple[bool, str]:
        expected = self.expected
        if len(expected) == 1:
            return True, "the only node expected"
        if members == {self.node}:
            if witness:
                return True, "no peer heard, but the witness answers: the peers are down"
            return False, "isolated: no peer heard and the witness does not answer"
        present = len(members & expected)
        if 2 * present > len(expected):
            return True, f"majority: {present} of {len(expected)} expected"
        if 2 * present == len(expected):
            first = min(expected)
            if first in members:
                return True, f"even split: {present} of {len(expected)}, with {first}"
            return False, f"even split: {present} of {len(expected)}, without {first}"
        return False, f"minority: {present} of {len(expected)} expected"
