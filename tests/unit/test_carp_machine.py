"""The per-vhid CARP machine, driven with a fake clock (plain floats) and fake adverts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from itertools import count
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hafs.carp import vrrp, wire
from hafs.carp.machine import (
    Action,
    AddVips,
    AdvertReceived,
    Announce,
    DemotionChanged,
    Event,
    LinkDown,
    LinkUp,
    RemoveVips,
    Reranked,
    Resume,
    SendAdvert,
    SetTimer,
    Shutdown,
    State,
    Timeout,
    Transition,
    VhidConfig,
    VhidMachine,
    VrrpConfig,
    reranked,
)
from hafs.carp.vrrp import VrrpAdvert
from hafs.carp.wire import Advert

VIPS: tuple[wire.Address, ...] = (IPv4Address("10.0.0.101"), IPv6Address("2001:db8::101"))
PEER = IPv4Address("10.0.0.2")
KEY = wire.make_key("secret")
INIT, BACKUP, MASTER = State.INIT, State.BACKUP, State.MASTER


def randoms(start: int = 1000, step: int = 111) -> Callable[[], int]:
    """A deterministic random64: 1000, 1111, 1222, ... (never consecutive)."""
    values: Iterator[int] = count(start, step)
    return lambda: next(values)


def machine(random64: Callable[[], int] | None = None, **config: Any) -> VhidMachine:
    settings: dict[str, Any] = {"vhid": 1, "addresses": VIPS, "passphrase": "secret"} | config
    return VhidMachine(VhidConfig(**settings), random64 or randoms())


def backup(now: float = 0.0, **config: Any) -> VhidMachine:
    m = machine(**config)
    m.handle(now, LinkUp())
    assert m.state is BACKUP
    return m


def master(**config: Any) -> VhidMachine:
    """A machine that became MASTER at t=3.0 + advskew/256 (master down, nobody heard)."""
    m = backup(**config)
    assert m.deadline is not None
    m.handle(m.deadline, Timeout())
    assert m.state is MASTER
    return m


def heard(advbase: int = 1, advskew: int = 0, counter: int = 7) -> AdvertReceived:
    return AdvertReceived(Advert(1, advskew, advbase, counter, bytes(20)), PEER)


def advert(skew: int, counter: int, advbase: int = 1) -> SendAdvert:
    """The SendAdvert the machine under test must emit."""
    return SendAdvert(wire.encode(1, skew, advbase, counter, KEY, VIPS))


# Construction and configuration.


def test_starts_in_init_with_no_timer() -> None:
    m = machine()
    assert (m.state, m.deadline, m.since, m.reason) == (INIT, None, None, None)
    assert (m.adverts_sent, m.adverts_received, m.foreign_masters_seen) == (0, 0, 0)
    assert m.master_source is None
    assert m.advertised == 0


def test_state_values_are_devd_words() -> None:
    assert [s.value for s in State] == ["INIT", "BACKUP", "MASTER"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"vhid": 0}, "vhid: must be 1..255, got 0"),
        ({"vhid": 256}, "vhid: must be 1..255, got 256"),
        ({"advbase": 0}, "advbase: must be 1..255, got 0"),
        ({"advskew": 255}, "advskew: must be 0..254, got 255"),
        ({"addresses": (VIPS[0], VIPS[0])}, "addresses: 10.0.0.101 is listed twice"),
        (
            {"passphrase": "\ud800"},
            "passphrase: cannot be encoded as UTF-8 (surrogates not allowed)",
        ),
    ],
)
def test_config_validation_names_the_field(config: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"vhid": 1} | config
    with pytest.raises(ValueError) as excinfo:
        VhidConfig(**settings)  # type: ignore[arg-type]
    assert str(excinfo.value) == message


def test_config_rejects_address_strings() -> None:
    with pytest.raises(TypeError, match=r"^addresses: '10\.0\.0\.1' is not an IPv4Address"):
        VhidConfig(1, addresses=("10.0.0.1",))  # type: ignore[arg-type]


def test_config_derives_key_hides_pass_and_freezes_addresses() -> None:
    config = VhidConfig(1, advbase=2, advskew=128, addresses=list(VIPS), passphrase="secret")  # type: ignore[arg-type]
    assert config.key == KEY
    assert config.addresses == VIPS
    assert "secret" not in repr(config)
    assert config.master_down == 6.5
    assert hash(config) == hash(replace(config))


def test_demotion_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=r"^demotion: must be >= 0, got -1$"):
        DemotionChanged(-1)


# INIT.


def test_link_up_enters_backup_and_arms_master_down() -> None:
    m = machine(advskew=100)
    assert m.handle(10.0, LinkUp()) == [
        Transition(INIT, BACKUP, "initialization complete"),
        SetTimer(10.0 + 3 + 100 / 256),
    ]
    assert (m.state, m.since, m.reason) == (BACKUP, 10.0, "initialization complete")


def test_link_up_without_addresses_stays_init() -> None:
    m = machine(addresses=())
    assert m.handle(0.0, LinkUp()) == []
    assert m.state is INIT


@pytest.mark.parametrize("event", [LinkDown(), Timeout(), heard(), DemotionChanged(240)], ids=repr)
def test_init_ignores_everything_but_link_up(event: Event) -> None:
    m = machine()
    assert m.handle(5.0, event) == []
    assert (m.state, m.deadline) == (INIT, None)


# BACKUP.


def test_master_down_timer_makes_master() -> None:
    m = backup(advskew=10)
    assert m.handle(3.0, Timeout()) == []  # stale: before the deadline
    deadline = 3 + 10 / 256
    assert m.handle(deadline, Timeout()) == [
        Transition(BACKUP, MASTER, "master timed out"),
        advert(10, 1000),
        AddVips(VIPS),
        Announce(VIPS),
        SetTimer(deadline + 1 + 10 / 256),
    ]
    assert (m.state, m.since, m.reason) == (MASTER, deadline, "master timed out")
    assert m.adverts_sent == 1


def test_taking_over_from_a_master_names_it_for_fencing() -> None:
    m = backup(advskew=10)
    m.handle(1.0, heard(1, 0))
    [transition, *_] = m.handle(1.0 + 3 + 10 / 256, Timeout())
    assert transition == Transition(BACKUP, MASTER, "master timed out", previous_master=PEER)
    assert m.master_source is None  # a master backs up nobody
    [back, *_] = m.handle(9.0, heard(1, 0))  # a better master: back to BACKUP, no one to fence
    assert back == Transition(MASTER, BACKUP, "more frequent advertisement received")
    assert m.master_source == PEER


def test_every_advert_restarts_master_down() -> None:
    m = backup()
    assert m.handle(2.0, heard()) == [SetTimer(5.0)]
    assert m.handle(4.0, Timeout()) == []  # the old deadline 3.0 is gone
    assert m.handle(4.5, heard()) == [SetTimer(7.5)]
    assert m.state is BACKUP
    assert (m.master_source, m.master_advert) == (PEER, heard().advert)
    assert m.adverts_received == 2


# (our advskew, demotion, preempt, heard advbase, heard advskew) -> (state, reason or None)
BACKUP_HEARS = [
    # no preempt: a backup follows any master that will not time out
    (10, 0, False, 1, 0, BACKUP, None),
    (10, 0, False, 1, 10, BACKUP, None),
    (10, 0, False, 1, 50, BACKUP, None),  # a worse master, no preempt: stays backup
    (10, 0, False, 2, 0, BACKUP, None),
    (0, 0, False, 3, 0, BACKUP, None),  # T(3, 0) is not slower than T(3*1, 0)
    # a master slower than our master-down will time out anyway
    (0, 0, False, 3, 1, MASTER, "master will time out"),
    (0, 0, False, 4, 0, MASTER, "master will time out"),
    (0, 0, False, 255, 255, MASTER, "master will time out"),  # bow-out
    (0, 240, False, 3, 200, BACKUP, None),  # demotion raises our T(3*advbase, S) too
    (0, 0, False, 3, 200, MASTER, "master will time out"),
    # preempt: take over from any strictly slower master
    (10, 0, True, 1, 11, MASTER, "preempting a slower master"),
    (10, 0, True, 2, 0, MASTER, "preempting a slower master"),
    (10, 0, True, 255, 255, MASTER, "preempting a slower master"),  # a bow-out: at once
    (10, 0, True, 1, 10, BACKUP, None),  # equal is not slower
    (10, 0, True, 1, 9, BACKUP, None),
    (10, 50, True, 1, 50, BACKUP, None),  # demoted: S = 60 is worse than 50
    (100, 240, True, 1, 241, MASTER, "preempting a slower master"),  # S capped at 240
]


@pytest.mark.parametrize(
    ("advskew", "demotion", "preempt", "their_base", "their_skew", "state", "reason"),
    BACKUP_HEARS,
)
def test_backup_hears_an_advert(
    advskew: int,
    demotion: int,
    preempt: bool,
    their_base: int,
    their_skew: int,
    state: State,
    reason: str | None,
) -> None:
    m = backup(advskew=advskew, preempt=preempt)
    m.handle(0.5, DemotionChanged(demotion))
    actions = m.handle(at := 1.0, heard(their_base, their_skew, counter=41))
    skew = min(advskew + demotion, 240)
    if reason == "preempting a slower master" and their_base < 255:  # after our skew time
        at = 1.0 + skew / 256
        assert (m.state, actions) == (BACKUP, [SetTimer(at)])
        actions = m.handle(at, Timeout())
    assert m.state is state
    if reason is None:
        assert actions == [SetTimer(1.0 + 3 + advskew / 256)]
        assert m.master_source == PEER
        assert m.master_advert == heard(their_base, their_skew, counter=41).advert
    else:
        assert actions == [
            Transition(BACKUP, MASTER, reason, previous_master=PEER),
            advert(skew, 42),  # adopted the heard counter
            AddVips(VIPS),
            Announce(VIPS),
            SetTimer(at + 1 + skew / 256),
        ]
        assert m.master_source is None


def test_backup_demotion_change_sends_nothing_and_keeps_its_timer() -> None:
    m = backup(advskew=5)
    assert m.handle(1.0, DemotionChanged(240)) == []
    assert m.deadline == 3 + 5 / 256  # master-down uses the raw advskew
    assert (m.demotion, m.advertised) == (240, 240)


@pytest.mark.parametrize(
    ("preempt", "released_to", "becomes"),
    [(True, 0, MASTER), (True, 150, BACKUP), (False, 0, BACKUP)],
)
def test_a_backup_whose_demotion_drops_below_its_master_preempts_at_once(
    preempt: bool, released_to: int, becomes: State
) -> None:
    """A returning node releases its resync hold: it takes the VIP back now, not at the
    master's next advert (FreeBSD's way: up to advbase later)."""
    m = backup(advskew=0, preempt=preempt)
    m.handle(0.5, DemotionChanged(240))
    assert m.handle(1.0, heard(advskew=100)) == [SetTimer(4.0)]  # a better master: followed
    actions = m.handle(1.5, DemotionChanged(released_to))
    assert m.state is becomes
    if becomes is MASTER:
        assert actions[0] == Transition(BACKUP, MASTER, "preempting a slower master", PEER)
        assert AddVips(VIPS) in actions and Announce(VIPS) in actions
    else:
        assert actions == []


def test_a_master_reranked_worse_readvertises_at_once_and_yields_to_the_moved_to_node() -> None:
    """`hafs move`: the holder's advskew is raised at run time; it says so at once, and the
    node the VIP is moved to (its backup, now better) takes over on that advert."""
    m = master(advskew=0)
    now = 3.25
    worse = reranked(m.config, 10)
    assert isinstance(worse, VhidConfig) and worse.advskew == 10
    assert m.handle(now, Reranked(worse)) == [advert(10, 1111), SetTimer(now + 1 + 10 / 256)]
    assert m.handle(now, Reranked(worse)) == []  # no change, no advert
    assert m.handle(now + 0.1, heard(advskew=0))[0] == Transition(
        MASTER, BACKUP, "more frequent advertisement received"
    )


@pytest.mark.parametrize(("skew", "becomes"), [(0, MASTER), (20, BACKUP)])
def test_a_backup_reranked_better_than_its_master_preempts_at_once(
    skew: int, becomes: State
) -> None:
    m = backup(advskew=20, preempt=True)
    assert m.handle(1.0, heard(advskew=10)) == [SetTimer(4.0 + 20 / 256)]  # followed
    actions = m.handle(1.5, Reranked(reranked(m.config, skew)))
    assert m.state is becomes
    if becomes is MASTER:
        assert actions[0] == Transition(BACKUP, MASTER, "preempting a slower master", PEER)


def test_a_tie_does_not_preempt_under_carp_but_the_higher_address_wins_under_vrrp() -> None:
    """Why `hafs move` may rank the node it moves to first under CARP, not under VRRPv3."""
    m = backup(advskew=10, preempt=True)
    m.handle(1.0, heard(advskew=0))
    assert m.handle(1.5, Reranked(reranked(m.config, 0))) == []
    v = vrrp_machine(priority=244)  # our address 10.0.0.1 is lower than the master's
    v.handle(0.0, LinkUp())
    v.handle(1.0, vrrp_heard(254))
    assert v.handle(1.5, Reranked(reranked(v.config, 254))) == []
    high = vrrp_machine(priority=244, primary=IPv4Address("10.0.0.9"))
    high.handle(0.0, LinkUp())
    high.handle(1.0, vrrp_heard(254))
    high.handle(1.5, Reranked(reranked(high.config, 254)))
    assert high.state is MASTER


def test_a_rerank_must_keep_the_vhid_and_its_addresses() -> None:
    m = backup()
    with pytest.raises(ValueError, match="not vhid 1's config"):
        m.handle(1.0, Reranked(replace(m.config, vhid=2)))
    with pytest.raises(ValueError, match=r"^advskew: must be 0\.\.254, got 300$"):
        reranked(m.config, 300)


def test_a_backup_following_a_better_master_ignores_a_second_slower_one() -> None:
    """A healed isolation: the isolated node comes back as master at its demoted skew; the
    backups of the master that served meanwhile leave it to that master (FreeBSD would
    preempt: every backup would take the VIP for a moment, each announcing it)."""
    other = IPv4Address("10.0.0.3")
    m = backup(advskew=50, preempt=True)
    assert m.handle(1.0, heard(advskew=10)) == [SetTimer(1.0 + 3 + 50 / 256)]  # follows PEER
    second = AdvertReceived(Advert(1, 240, 1, 9, bytes(20)), other)
    assert m.handle(1.5, second) == []  # no preempt, and the timer keeps PEER's deadline
    assert (m.state, m.master_source, m.deadline) == (BACKUP, PEER, 1.0 + 3 + 50 / 256)
    assert m.handle(4.3, Timeout())[0] == Transition(BACKUP, MASTER, "master timed out", PEER)
    fresh = backup(advskew=50, preempt=True)  # following nobody: a slower master is preempted
    assert fresh.handle(1.0, second) == [SetTimer(1.0 + 50 / 256)]  # after its skew time
    assert fresh.handle(1.0 + 50 / 256, Timeout())[0] == Transition(
        BACKUP, MASTER, "preempting a slower master", other
    )


# MASTER.


def test_master_advertises_on_a_drift_free_rhythm() -> None:
    m = master()  # master since 3.0, next advert due at 4.0
    assert m.handle(3.9, Timeout()) == []
    assert m.handle(4.0, Timeout()) == [advert(0, 1111), SetTimer(5.0)]
    late_and_2s_on = [advert(0, 1222), Announce(VIPS), SetTimer(6.0)]  # see the next test
    assert m.handle(5.25, Timeout()) == late_and_2s_on
    assert m.handle(8.5, Timeout()) == [advert(0, 1333), SetTimer(9.5)]  # missed a whole slot
    assert m.adverts_sent == 4


def test_master_interval_includes_the_advertised_skew() -> None:
    m = master(advbase=2, advskew=64)
    start = 6 + 64 / 256
    assert m.deadline == start + 2.25
    first = [advert(64, 1111, 2), Announce(VIPS), SetTimer(start + 4.5)]  # 2 s on: announced
    assert m.handle(start + 2.25, Timeout()) == first
    assert m.handle(start + 4.5, Timeout()) == [advert(64, 1222, 2), SetTimer(start + 6.75)]


def test_a_backup_demoted_while_it_waits_to_preempt_does_not() -> None:
    m = backup(preempt=True, advskew=100)
    assert m.handle(1.0, heard(advskew=200)) == [SetTimer(1.0 + 100 / 256)]
    m.handle(1.2, DemotionChanged(240))  # a stall: the resync hold
    assert m.handle(1.0 + 100 / 256, Timeout()) == [SetTimer(1.0 + 100 / 256 + 3 + 100 / 256)]
    assert m.state is BACKUP


def test_a_new_master_announces_again_with_its_first_advert_two_seconds_on() -> None:
    """Another node may have been master for a moment beside us (every backup takes over a
    bow-out at once) and announced too; a client that kept its gratuitous ARP ignores ours
    for a second (Linux's neighbour locktime). The first advert ANNOUNCE_AGAIN (2 s) after
    becoming master announces again, once."""
    m = master()  # since 3.0
    announced = [t for t in (4.0, 5.0, 6.0, 7.0) if Announce(VIPS) in m.handle(t, Timeout())]
    assert announced == [5.0]


def test_backups_preempt_a_demoted_master_one_after_another() -> None:
    """A master demotes itself (a dead pool, a drain): each backup that outranks it waits
    its own skew time, so the best takes over and the next hears it in time and stays
    backup; none takes the addresses for a moment and announces them."""
    b, c = backup(preempt=True, advskew=100), backup(preempt=True, advskew=200)
    for m, skew in ((b, 100), (c, 200)):
        m.handle(1.0, heard(advskew=0))
        assert m.handle(10.0, heard(advskew=240)) == [SetTimer(10 + skew / 256)]
        assert m.handle(10.5, heard(advskew=240)) == []  # its next advert: no later
    b_took = b.handle(10 + 100 / 256, Timeout())
    assert b_took[0] == Transition(BACKUP, MASTER, "preempting a slower master", PEER)
    assert isinstance(b_took[1], SendAdvert)
    decoded = wire.decode(b_took[1].packet)
    assert isinstance(decoded, Advert)
    c.handle(10 + 100 / 256, AdvertReceived(decoded, IPv4Address("10.0.0.2")))
    assert c.handle(10 + 200 / 256, Timeout()) == []  # its preemption was called off
    assert c.state is BACKUP


# (our advbase, our advskew, demotion, heard advbase, heard advskew, steps down): a master
# that does not step down answers the worse master (see the rate-limit test below)
MASTER_HEARS = [
    (1, 0, 0, 1, 0, True),  # equal timing: step down, there is no tie break
    (1, 10, 0, 1, 9, True),
    (1, 10, 0, 1, 10, True),
    (1, 10, 0, 1, 11, False),
    (2, 0, 0, 1, 254, True),  # advbase dominates
    (1, 200, 0, 2, 0, False),
    (1, 0, 50, 1, 40, True),  # demoted: S = 50
    (1, 0, 50, 1, 60, False),
    (1, 100, 240, 1, 240, True),  # S capped at 240, equal
    (1, 0, 0, 255, 255, False),  # a bow-out from another master
]


@pytest.mark.parametrize(
    ("advbase", "advskew", "demotion", "their_base", "their_skew", "steps_down"), MASTER_HEARS
)
def test_master_hears_an_advert(
    advbase: int, advskew: int, demotion: int, their_base: int, their_skew: int, steps_down: bool
) -> None:
    m = master(advbase=advbase, advskew=advskew)
    m.handle(10.0, DemotionChanged(demotion))
    deadline = m.deadline
    actions = m.handle(10.5, heard(their_base, their_skew, counter=41))
    if steps_down:
        assert actions == [
            Transition(MASTER, BACKUP, "more frequent advertisement received"),
            RemoveVips(VIPS),
            SetTimer(10.5 + 3 * advbase + advskew / 256),
        ]
        assert (m.state, m.master_source, m.foreign_masters_seen) == (BACKUP, PEER, 0)
    else:
        skew = min(advskew + demotion, 240)
        assert actions == [advert(skew, 42, advbase), Announce(VIPS)]
        assert (m.state, m.master_source, m.foreign_masters_seen) == (MASTER, None, 1)
        assert m.deadline == deadline  # the extra advert leaves the rhythm alone


def test_master_answers_each_worse_master_at_most_once_per_advbase() -> None:
    m = master(advbase=2, advskew=10, preempt=True)
    other = IPv4Address("10.0.0.3")
    answer = [advert(10, 8, 2), Announce(VIPS)]
    assert m.handle(10.0, heard(2, 50)) == answer
    assert m.handle(11.9, heard(2, 50)) == []  # same source within advbase: counted only
    answered = m.handle(11.9, AdvertReceived(Advert(1, 50, 2, 7, bytes(20)), other))
    assert answered == answer  # another source is answered at once
    assert m.handle(12.0, heard(2, 50)) == answer  # an advbase later: answered again
    assert (m.state, m.foreign_masters_seen) == (MASTER, 4)


def test_master_readvertises_at_once_when_demotion_changes() -> None:
    m = master(advskew=100)
    now = 3 + 100 / 256 + 0.25
    assert m.handle(now, DemotionChanged(240)) == [advert(240, 1111), SetTimer(now + 1 + 240 / 256)]
    assert m.handle(now, DemotionChanged(240)) == []  # no change, no advert
    assert m.handle(now, DemotionChanged(0)) == [advert(100, 1222), SetTimer(now + 1 + 100 / 256)]
    assert m.demotion == 0


def test_a_master_signs_every_advert_with_its_own_configs_key_and_addresses() -> None:
    """The digest's prepared part (wire.Hmac) comes with the config: a config with other
    addresses or another pass signs for those, never with the first one's."""
    first = master(advskew=10)
    config = first.config
    assert isinstance(config, VhidConfig)
    other_vips = (IPv4Address("10.0.0.102"),)
    second = VhidMachine(replace(config, addresses=other_vips), randoms())
    second.handle(0.0, LinkUp())
    second.handle(second.deadline or 0.0, Timeout())  # master too
    for m, addresses, key in ((first, VIPS, KEY), (second, other_vips, KEY)):
        [sent, _] = m.handle(m.deadline or 0.0, Timeout())
        assert isinstance(sent, SendAdvert)
        decoded = wire.decode(sent.packet)
        assert isinstance(decoded, Advert) and decoded.advskew == 10
        assert wire.verify(decoded, key, addresses)
        assert not wire.verify(decoded, key, VIPS if addresses is other_vips else other_vips)
    renamed = replace(config, passphrase="other")
    assert renamed.hmac.digest(7) == wire.compute_digest(wire.make_key("other"), 1, VIPS, 7)


# Counter.


def test_random_counter_until_an_advert_is_heard_then_adopt_and_increment() -> None:
    m = master()
    assert m.handle(4.0, Timeout())[0] == advert(0, 1111)  # fresh random, not 1001
    answer = m.handle(4.5, heard(1, 5, counter=(1 << 64) - 3))  # worse: counter adopted
    assert answer[0] == advert(0, (1 << 64) - 2)
    assert m.handle(5.0, Timeout())[0] == advert(0, (1 << 64) - 1)
    assert m.handle(6.0, Timeout())[0] == advert(0, 0)  # wraps like a uint64


def test_random64_is_truncated_to_64_bits() -> None:
    m = master(random64=lambda: (1 << 64) + 5)
    assert m.handle(4.0, Timeout())[0] == advert(0, 5)


# Link loss and shutdown.


def test_link_down_as_master_drops_to_init_and_removes_vips() -> None:
    m = master()
    assert m.handle(4.2, LinkDown()) == [
        Transition(MASTER, INIT, "hardware interface down"),
        RemoveVips(VIPS),
        SetTimer(None),
    ]
    assert (m.state, m.deadline, m.since) == (INIT, None, 4.2)
    assert m.handle(5.0, Timeout()) == []
    assert m.handle(6.0, LinkUp()) == [
        Transition(INIT, BACKUP, "initialization complete"),
        SetTimer(9.0),
    ]


def test_link_down_as_backup() -> None:
    m = backup()
    m.handle(1.0, heard())
    assert m.handle(2.0, LinkDown()) == [
        Transition(BACKUP, INIT, "hardware interface down"),
        SetTimer(None),
    ]
    assert m.master_source is None


def test_shutdown_as_master_bows_out_then_removes_vips() -> None:
    m = master()
    actions = m.handle(3.5, Shutdown())
    assert actions == [
        Transition(MASTER, INIT, "shutdown"),
        advert(255, 1111, advbase=255),
        RemoveVips(VIPS),
        SetTimer(None),
    ]
    for event in (LinkUp(), Timeout(), heard(), DemotionChanged(1), LinkDown(), Shutdown()):
        assert m.handle(4.0, event) == []
    assert m.state is INIT


def test_shutdown_as_backup_and_in_init() -> None:
    m = backup()
    assert m.handle(1.0, Shutdown()) == [Transition(BACKUP, INIT, "shutdown"), SetTimer(None)]
    idle = machine()
    assert idle.handle(1.0, Shutdown()) == []
    assert idle.handle(2.0, LinkUp()) == []


# Several machines on one simulated link, exchanging real packets.


class Link:
    """Delivers every SendAdvert to the other running machines at once, through the codec."""

    def __init__(self, **machines: VhidMachine) -> None:
        self.machines = machines
        self.sources = {
            name: m.config.primary
            if isinstance(m.config, VrrpConfig)
            else IPv4Address(f"10.0.0.{i + 1}")
            for i, (name, m) in enumerate(machines.items())
        }
        self.log: list[tuple[float, str, Action]] = []

    def send(self, now: float, name: str, event: LinkUp | Shutdown | DemotionChanged) -> None:
        self.apply(now, name, self.machines[name].handle(now, event))

    def apply(self, now: float, name: str, actions: list[Action]) -> None:
        for action in actions:
            self.log.append((now, name, action))
            if not isinstance(action, SendAdvert):
                continue
            for other, m in self.machines.items():
                if other == name or m.state is INIT:
                    continue
                received = AdvertReceived(self.decode(m, action.packet, name), self.sources[name])
                self.apply(now, other, m.handle(now, received))

    def decode(self, receiver: VhidMachine, packet: bytes, sender: str) -> Advert | VrrpAdvert:
        """The advert as the agent would hand it over: decoded and authenticated."""
        config = receiver.config
        if isinstance(config, VrrpConfig):
            heard = vrrp.decode(packet, self.sources[sender], wire.CARP_GROUP_V4)
            assert isinstance(heard, VrrpAdvert)
            return heard
        decoded = wire.decode(packet)
        assert isinstance(decoded, Advert)
        assert wire.verify(decoded, config.key, config.addresses)
        return decoded

    def run(self, until: float) -> None:
        while True:
            due = [(m.deadline, n) for n, m in self.machines.items() if m.deadline is not None]
            if not due or min(due)[0] > until:
                return
            now, name = min(due)
            self.apply(now, name, self.machines[name].handle(now, Timeout()))

    def transitions(self) -> list[tuple[float, str, State, str]]:
        return [(t, n, a.new, a.reason) for t, n, a in self.log if isinstance(a, Transition)]


def pair(preempt: bool = False) -> Link:
    return Link(a=machine(advskew=0, preempt=preempt), b=machine(advskew=100, preempt=preempt))


def test_lower_advskew_wins_the_election() -> None:
    link = pair()
    link.send(0.0, "a", LinkUp())
    link.send(0.0, "b", LinkUp())
    link.run(until=60.0)
    assert (link.machines["a"].state, link.machines["b"].state) == (MASTER, BACKUP)
    assert link.transitions()[-1] == (3.0, "a", MASTER, "master timed out")
    assert link.machines["b"].master_source == link.sources["a"]
    assert link.machines["b"].adverts_sent == 0
    assert link.machines["a"].adverts_sent == 58  # one at 3.0, then one per second


@pytest.mark.parametrize(("preempt", "winner"), [(False, "b"), (True, "a")])
def test_a_returning_preferred_node_preempts_only_with_preempt(preempt: bool, winner: str) -> None:
    link = pair(preempt)
    link.send(0.0, "b", LinkUp())
    link.run(until=10.0)
    assert link.machines["b"].state is MASTER
    link.send(10.2, "a", LinkUp())
    link.run(until=30.0)
    assert link.machines[winner].state is MASTER
    loser = "b" if winner == "a" else "a"
    assert link.machines[loser].state is BACKUP


def test_preempt_handover_is_immediate() -> None:
    link = pair(preempt=True)
    link.send(0.0, "b", LinkUp())
    link.run(until=10.0)
    link.send(10.2, "a", LinkUp())
    link.run(until=11.0)  # b's advert at 3.390625 + 5 * 1.390625: a preempts, b steps down
    assert link.transitions()[-2:] == [
        (10.34375, "a", MASTER, "preempting a slower master"),
        (10.34375, "b", BACKUP, "more frequent advertisement received"),
    ]


def test_two_masters_with_equal_timing_both_step_down() -> None:
    a, b = master(), master()
    sent_a = a.handle(4.0, Timeout())[0]
    sent_b = b.handle(4.0, Timeout())[0]
    assert isinstance(sent_a, SendAdvert) and isinstance(sent_b, SendAdvert)
    for receiver, packet in ((b, sent_a.packet), (a, sent_b.packet)):
        decoded = wire.decode(packet)
        assert isinstance(decoded, Advert)
        receiver.handle(4.0, AdvertReceived(decoded, PEER))
    assert (a.state, b.state) == (BACKUP, BACKUP)
    assert a.reason == b.reason == "more frequent advertisement received"


def test_a_healed_split_brain_ends_at_the_worse_masters_first_advert() -> None:
    """Both sides of a partition became master; healed, the better master answers the worse
    one's advert at once (advert and gratuitous ARP), so the worse one steps down now."""
    link = Link(a=master(advskew=0), b=master(advskew=100))  # masters at 3.0 and 3.39
    link.apply(3.5, "b", link.machines["b"].handle(3.5, DemotionChanged(10)))  # b advertises
    assert (link.machines["a"].state, link.machines["b"].state) == (MASTER, BACKUP)
    assert link.transitions() == [(3.5, "b", BACKUP, "more frequent advertisement received")]
    assert (3.5, "a", Announce(VIPS)) in link.log
    assert link.machines["a"].foreign_masters_seen == 1


def test_bow_out_hands_over_at_once() -> None:
    link = pair()
    link.send(0.0, "a", LinkUp())
    link.send(0.0, "b", LinkUp())
    link.run(until=20.0)
    link.send(20.5, "a", Shutdown())
    assert link.machines["b"].state is MASTER
    assert link.transitions()[-2:] == [
        (20.5, "a", INIT, "shutdown"),
        (20.5, "b", MASTER, "master will time out"),
    ]


def test_demoted_master_loses_to_a_preempting_backup() -> None:
    link = pair(preempt=True)
    link.send(0.0, "a", LinkUp())
    link.send(0.0, "b", LinkUp())
    link.run(until=10.0)
    link.send(10.5, "a", DemotionChanged(240))  # a advertises skew 240 at once
    link.run(until=10.5 + 100 / 256)  # b preempts after its skew time
    assert (link.machines["a"].state, link.machines["b"].state) == (BACKUP, MASTER)
    link.run(until=12.0)  # b advertises skew 100 at 12.28: a, demoted to 240, follows it
    assert link.machines["a"].state is BACKUP
    link.send(12.0, "a", DemotionChanged(0))
    link.run(until=14.0)  # b's next advert (skew 100) lets a preempt back
    assert (link.machines["a"].state, link.machines["b"].state) == (MASTER, BACKUP)


# A reload: the agent re-executes itself and the new machines resume.


def test_a_master_hands_over_its_next_adverts_and_resumes_without_a_transition() -> None:
    old = master()  # random counters 1000, 1111, ...: its first advert used 1000
    assert old.next_adverts(2) == [advert(0, 1111).packet, advert(0, 1222).packet]
    new = machine(random64=randoms(5000))
    new.handle(9.0, DemotionChanged(20))
    assert new.handle(10.0, Resume(MASTER, 3.0, "master timed out")) == [
        advert(20, 5000),
        SetTimer(10.0 + 1 + 20 / 256),
    ]  # no Transition (no hooks) and no AddVips: the VIPs never left
    assert (new.state, new.since, new.reason) == (MASTER, 3.0, "master timed out")
    [sent, timer] = new.handle(11.078125, Timeout())
    assert (sent, timer) == (advert(20, 5111), SetTimer(11.078125 + 1 + 20 / 256))


def test_a_resumed_master_steps_down_to_a_better_one_as_any_master() -> None:
    m = machine()
    m.handle(10.0, Resume(MASTER, 3.0, "master timed out"))
    actions = m.handle(10.5, heard(advskew=0))
    assert actions[:2] == [
        Transition(MASTER, BACKUP, "more frequent advertisement received"),
        RemoveVips(VIPS),
    ]


def test_a_resumed_backup_waits_a_master_down_then_takes_over_with_its_hooks() -> None:
    m = machine(advskew=100)
    assert m.handle(10.0, Resume(BACKUP, 2.0, "initialization complete")) == [
        SetTimer(10.0 + 3 + 100 / 256)
    ]
    assert m.next_adverts(3) == []
    actions = m.handle(13.390625, Timeout())
    assert actions[0] == Transition(BACKUP, MASTER, "master timed out")
    assert AddVips(VIPS) in actions


def test_resume_only_from_init() -> None:
    running = backup()
    assert running.handle(5.0, Resume(MASTER, 1.0, "master timed out")) == []
    assert running.state is BACKUP
    stopped = machine()
    stopped.handle(1.0, Shutdown())
    assert stopped.handle(2.0, Resume(MASTER, 1.0, "master timed out")) == []
    assert stopped.state is INIT
    with pytest.raises(ValueError, match=r"^state: only MASTER or BACKUP can be resumed$"):
        Resume(INIT, 1.0, "x")


# VRRPv3 (RFC 5798): the same machine, asked by a VrrpConfig.

VRRP_VIPS = (IPv4Address("10.0.0.101"),)
ME = IPv4Address("10.0.0.1")


def vrrp_machine(**config: Any) -> VhidMachine:
    settings: dict[str, Any] = {"vhid": 1, "primary": ME, "addresses": VRRP_VIPS} | config
    return VhidMachine(VrrpConfig(**settings), randoms())


def vrrp_heard(
    priority: int = 100, interval: int = 100, source: IPv4Address = PEER
) -> AdvertReceived:
    return AdvertReceived(VrrpAdvert(1, priority, interval, VRRP_VIPS), source)


def vrrp_sent(priority: int, interval: int = 100) -> SendAdvert:
    return SendAdvert(vrrp.encode(1, priority, interval, VRRP_VIPS, ME))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"priority": 0}, "priority: must be 1..255, got 0"),
        ({"priority": 256}, "priority: must be 1..255, got 256"),
        ({"interval": 0}, "interval: must be 1..4095, got 0"),
        ({"interval": 4096}, "interval: must be 1..4095, got 4096"),
        ({"addresses": (ME, ME)}, "addresses: 10.0.0.1 is listed twice"),
    ],
)
def test_vrrp_config_validation_names_the_field(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        VrrpConfig(**({"vhid": 1, "primary": ME} | config))  # type: ignore[arg-type]
    assert str(excinfo.value) == message


def test_vrrp_config_takes_ipv4_only() -> None:
    with pytest.raises(TypeError, match=r"^addresses: IPv6Address\('2001:db8::1'\) is not"):
        VrrpConfig(1, ME, addresses=(IPv6Address("2001:db8::1"),))  # type: ignore[arg-type]


def test_vrrp_master_down_is_three_intervals_and_the_skew_time() -> None:
    """Skew_Time = (256 - 100) * 1 s / 256 = 0.609375 s; Master_Down = 3 s + Skew_Time."""
    m = vrrp_machine(priority=100, interval=100)
    assert m.config.master_down == 3.609375
    assert m.handle(10.0, LinkUp()) == [
        Transition(INIT, BACKUP, "initialization complete"),
        SetTimer(13.609375),
    ]
    assert m.handle(13.609375, Timeout()) == [
        Transition(BACKUP, MASTER, "master timed out"),
        vrrp_sent(100),
        AddVips(VRRP_VIPS),
        Announce(VRRP_VIPS),
        SetTimer(14.609375),  # the interval has no skew in VRRPv3
    ]


def test_vrrp_backup_learns_the_masters_interval() -> None:
    """A 1 s backup behind a 0.1 s master waits 3 * 0.1 s + (256 - 50) * 0.1 s / 256."""
    m = vrrp_machine(priority=50, interval=100)
    m.handle(0.0, LinkUp())
    assert m.handle(1.0, vrrp_heard(priority=200, interval=10)) == [
        SetTimer(1.0 + (30 + 206 * 10 / 256) / 100)
    ]
    assert m.master_advert == vrrp_heard(priority=200, interval=10).advert


def test_vrrp_bow_out_leaves_the_backup_its_skew_time_only() -> None:
    """Priority 0: the backup with the highest priority has the shortest skew and speaks
    first, instead of every backup taking over at once."""
    m = vrrp_machine(priority=200)
    m.handle(0.0, LinkUp())
    m.handle(1.0, vrrp_heard(priority=250, interval=10))
    assert m.handle(1.2, vrrp_heard(priority=0, interval=10)) == [
        SetTimer(1.2 + 56 * 10 / 256 / 100)
    ]
    [transition, *_] = m.handle(1.2 + 56 * 10 / 256 / 100, Timeout())
    assert transition == Transition(BACKUP, MASTER, "master timed out", PEER)


def test_vrrp_master_answers_a_bow_out_with_an_advert() -> None:
    m = vrrp_machine()
    m.handle(0.0, LinkUp())
    m.handle(3.609375, Timeout())
    assert m.handle(4.0, vrrp_heard(priority=0)) == [vrrp_sent(100), SetTimer(5.0)]
    assert m.state is MASTER


def test_vrrp_shutdown_bows_out_with_priority_zero() -> None:
    m = vrrp_machine()
    m.handle(0.0, LinkUp())
    m.handle(3.609375, Timeout())
    assert m.handle(4.0, Shutdown()) == [
        Transition(MASTER, INIT, "shutdown"),
        vrrp_sent(0),
        RemoveVips(VRRP_VIPS),
        SetTimer(None),
    ]


def test_vrrp_master_message_follows_every_priority_change() -> None:
    """The message is built once per priority sent (the config keeps it): a demotion, its
    end, the bow-out and another configured priority each send their own."""
    m = vrrp_machine(priority=100)
    m.handle(0.0, LinkUp())
    assert m.handle(3.609375, Timeout())[1] == vrrp_sent(100)
    assert m.handle(4.0, DemotionChanged(30))[0] == vrrp_sent(70)
    assert m.handle(m.deadline or 0.0, Timeout())[0] == vrrp_sent(70)
    assert m.handle(5.5, DemotionChanged(0))[0] == vrrp_sent(100)
    assert m.handle(m.deadline or 0.0, Timeout())[0] == vrrp_sent(100)
    assert isinstance(m.config, VrrpConfig)
    other = replace(m.config, priority=150)
    assert other.packet(0, False, lambda: 0) == vrrp_sent(150).packet
    assert m.handle(7.0, Shutdown())[1] == vrrp_sent(0)


def test_vrrp_address_owner_is_master_at_once_unless_demoted() -> None:
    owner = vrrp_machine(priority=255)
    [transition, sent, *_] = owner.handle(0.0, LinkUp())
    assert (transition, sent) == (Transition(INIT, MASTER, "address owner"), vrrp_sent(255))
    held = vrrp_machine(priority=255)
    held.handle(0.0, DemotionChanged(240))
    assert held.handle(0.0, LinkUp())[0] == Transition(INIT, BACKUP, "initialization complete")
    assert held.advertised == 15


# (our priority, demotion, preempt, their priority, their source) -> state after their advert
VRRP_BACKUP_HEARS = [
    (100, 0, True, 200, PEER, BACKUP),
    (100, 0, True, 50, PEER, MASTER),  # preempt: after Skew_Time (the RFC: master-down)
    (100, 0, False, 50, PEER, BACKUP),
    (100, 0, True, 100, IPv4Address("10.0.0.2"), BACKUP),  # tie: the higher address wins
    (100, 0, True, 100, IPv4Address("10.0.0.0"), MASTER),
    (100, 60, True, 50, PEER, BACKUP),  # demoted to 40
    (30, 240, True, 1, IPv4Address("10.0.0.0"), MASTER),  # both at 1: our address is higher
]


@pytest.mark.parametrize(
    ("priority", "demotion", "preempt", "theirs", "source", "state"), VRRP_BACKUP_HEARS
)
def test_vrrp_backup_hears_an_advert(
    priority: int, demotion: int, preempt: bool, theirs: int, source: IPv4Address, state: State
) -> None:
    m = vrrp_machine(priority=priority, preempt=preempt)
    m.handle(0.0, LinkUp())
    m.handle(0.5, DemotionChanged(demotion))
    m.handle(1.0, vrrp_heard(priority=theirs, source=source))
    m.handle(1.0 + m.config.skew_time(demotion), Timeout())  # a preempt waits its skew time
    assert m.state is state


@pytest.mark.parametrize(
    ("theirs", "source", "steps_down"),
    [
        (101, PEER, True),
        (99, PEER, False),
        (100, IPv4Address("10.0.0.2"), True),
        (100, IPv4Address("10.0.0.0"), False),
    ],
)
def test_vrrp_master_yields_to_a_higher_priority_or_address(
    theirs: int, source: IPv4Address, steps_down: bool
) -> None:
    m = vrrp_machine(priority=100)
    m.handle(0.0, LinkUp())
    m.handle(3.609375, Timeout())
    actions = m.handle(4.5, vrrp_heard(priority=theirs, interval=50, source=source))
    assert m.state is (BACKUP if steps_down else MASTER)
    if steps_down:  # the master's interval learned at once
        assert actions[-1] == SetTimer(4.5 + (150 + 156 * 50 / 256) / 100)


def vrrp_link(*priorities: int, preempt: bool = True) -> Link:
    return Link(
        **{
            f"n{i}": vrrp_machine(
                priority=p, primary=IPv4Address(f"10.0.0.{i + 1}"), preempt=preempt
            )
            for i, p in enumerate(priorities)
        }
    )


def test_vrrp_bow_out_hands_over_to_the_best_backup_after_its_skew() -> None:
    link = vrrp_link(200, 100, 150)
    for name in link.machines:
        link.send(0.0, name, LinkUp())
    link.run(until=10.0)
    assert [m.state for m in link.machines.values()] == [MASTER, BACKUP, BACKUP]
    link.send(10.05, "n0", Shutdown())
    link.run(until=20.0)
    skew = (256 - 150) / 256  # n2's Skew_Time at 1 s
    assert link.transitions()[-2:] == [
        (10.05, "n0", INIT, "shutdown"),
        (10.05 + skew, "n2", MASTER, "master timed out"),
    ]
    assert link.machines["n1"].state is BACKUP


@given(
    priorities=st.lists(st.integers(1, 254), min_size=2, max_size=4),
    starts=st.lists(st.floats(0, 10), min_size=4, max_size=4),
)
def test_vrrp_the_highest_priority_then_address_ends_up_master(
    priorities: list[int], starts: list[float]
) -> None:
    """Whatever order the nodes come up in, with preempt on exactly one is master: the
    highest priority, ties to the highest address; nobody else ever stays master."""
    link = vrrp_link(*priorities)
    for name, start in sorted(
        zip(link.machines, starts[: len(priorities)], strict=True), key=lambda x: x[1]
    ):
        link.run(until=start)
        link.send(start, name, LinkUp())
    link.run(until=40.0)
    best = max(range(len(priorities)), key=lambda i: (priorities[i], i))
    states = [m.state for m in link.machines.values()]
    assert states == [MASTER if i == best else BACKUP for i in range(len(priorities))]


def test_an_advert_of_the_other_protocol_is_a_bug_of_the_caller() -> None:
    carp, vrrp3 = backup(), vrrp_machine()
    vrrp3.handle(0.0, LinkUp())
    with pytest.raises(TypeError, match=r"^a CARP machine was given VrrpAdvert"):
        carp.handle(1.0, vrrp_heard())
    with pytest.raises(TypeError, match=r"^a VRRPv3 machine was given Advert"):
        vrrp3.handle(1.0, heard())


def test_vrrp_resumed_master_advertises_its_demoted_priority_at_once() -> None:
    old = vrrp_machine(interval=10)
    old.handle(0.0, LinkUp())
    old.handle(old.deadline or 0.0, Timeout())
    assert old.next_adverts(3) == [vrrp_sent(100, 10).packet] * 3
    new = vrrp_machine(interval=10)
    new.handle(4.9, DemotionChanged(60))
    assert new.handle(5.0, Resume(MASTER, 0.4, "master timed out")) == [
        vrrp_sent(40, 10),
        SetTimer(5.1),
    ]
