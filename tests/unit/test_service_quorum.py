"""Quorum as a pure function of heartbeats and a fake clock."""

from __future__ import annotations

from hafs.service.quorum import DEAD_AFTER, SHRINK_AFTER, Quorum

NODES = ("n1", "n2", "n3", "n4")
LONG = DEAD_AFTER + SHRINK_AFTER + 0.5  # a node unheard this long is forgotten (if quorate)


def beat(q: Quorum, now: float, *peers: str) -> None:
    for peer in peers:
        q.heartbeat(now, peer)


def test_a_daemon_that_starts_counts_every_peer_until_it_could_have_heard_them() -> None:
    q = Quorum("n1", NODES, started=100.0)
    assert q.verdict(100.0 + DEAD_AFTER).quorate
    assert not q.verdict(100.0 + DEAD_AFTER + 0.1).quorate  # nobody ever answered: isolated


def test_a_majority_serves_and_a_minority_does_not() -> None:
    q = Quorum("n1", NODES, started=0.0)
    beat(q, 1.0, "n2", "n3")
    v = q.verdict(3.0)
    assert v.quorate and v.members == ("n1", "n2", "n3") and "majority: 3 of 4" in v.reason
    q = Quorum("n4", ("n1", "n2", "n3", "n4", "n5"), started=0.0)
    beat(q, 1.0, "n5")
    assert not q.verdict(3.0).quorate  # 2 of 5


def test_nodes_lost_one_after_the_other_leave_the_last_two_quorate() -> None:
    q = Quorum("n3", NODES, started=0.0)
    t = 0.0
    for _ in range(20):  # n1 died at 0; n2 and n4 keep beating
        t += 0.5
        beat(q, t, "n2", "n4")
        assert q.verdict(t).quorate
    assert q.verdict(t).expected == ("n2", "n3", "n4")  # n1 no longer expected
    for _ in range(20):  # then n2 dies: 2 of 3
        t += 0.5
        beat(q, t, "n4")
        assert q.verdict(t).quorate
    assert q.verdict(t).expected == ("n3", "n4")
    # n1 comes back: expected again, majority 3 of 3
    beat(q, t + 0.5, "n1", "n4")
    v = q.verdict(t + 0.5)
    assert v.quorate and v.expected == ("n1", "n3", "n4")


def test_an_even_split_goes_to_the_side_with_the_first_node() -> None:
    with_first, without = Quorum("n2", NODES, started=0.0), Quorum("n3", NODES, started=0.0)
    for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5):
        beat(with_first, t, "n1")
        beat(without, t, "n4")
    assert with_first.verdict(3.5).quorate
    v = without.verdict(3.5)
    assert not v.quorate and "without n1" in v.reason
    assert without.verdict(3.5 + LONG).expected == NODES  # a minority forgets nobody


def test_a_node_hearing_nobody_serves_only_if_the_witness_answers() -> None:
    q = Quorum("n1", NODES, started=0.0)
    assert not q.verdict(10.0, witness=False).quorate
    assert not q.verdict(10.0).quorate  # no witness configured: isolated
    v = Quorum("n1", NODES, started=0.0).verdict(10.0, witness=True)
    assert v.quorate and "witness" in v.reason


def test_a_two_node_cluster() -> None:
    first, second = Quorum("a", ("a", "b"), started=0.0), Quorum("b", ("a", "b"), started=0.0)
    assert not second.verdict(5.0, witness=False).quorate  # lost its peer and its gateway
    assert second.verdict(5.0, witness=True).quorate  # the peer died: serve alone
    beat(first, 5.0, "b")
    assert first.verdict(5.5).quorate  # both up: 2 of 2
    assert not first.verdict(9.0, witness=False).quorate  # b gone, and no gateway either
