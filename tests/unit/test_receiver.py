"""The long-lived receiver (hafs.service.receiver): both real ends, ssh replaced by a local
process that runs the peer's end (:func:`receiver.serve`) over a stand-in for the node."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from hafs.service import receiver
from hafs.service.config import ServiceConfig, VipService
from hafs.service.node import NodeServices
from hafs.service.receiver import Request
from hafs.service.runtime import ServiceError

VIP = VipService(1, "vip1", IPv4Address("10.0.0.100"), "n1", ("n1", "n2"), ())
CONFIG = ServiceConfig(
    node="n1", pool="tank", replication_interval=10, vips=(VIP,), users={},
    peers={"n2": IPv4Address("10.0.0.2")},
)  # fmt: skip

# The peer: each receive reads its "stream" (one line, as zfs recv reads a stream to its end
# record and no further) and records it; a stream "fail" fails as a full pool would.
PEER = """
import logging, os, sys, time, types
from hafs.service import receiver
from hafs.service.runtime import ServiceError

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
record = sys.argv[1]

class Node:
    def receive(self, vip, base, fd, keep, theirs, then_prune):
        assert not then_prune  # the receiver prunes once it has answered
        self.stream = stream = receiver.read_line(fd).decode().strip()
        if stream == "fail":
            raise ServiceError("vip1: zfs recv into tank/hafs/vip1 failed: out of space")
        logging.getLogger("hafs.service").warning("vip1: DIVERGED: kept as x")
        with open(record, "a") as f:
            f.write(f"{os.getpid()} {base} {','.join(keep)} {','.join(theirs)} {stream}\\n")

    def prune_replica(self, vip, keep):
        if self.stream == "unprunable":
            raise ServiceError("zfs destroy tank/hafs/vip1@s0: dataset is busy")
        while self.stream == "slow-prune" and not os.path.exists(record + ".go"):
            time.sleep(0.01)
        with open(record + ".pruned", "a") as f:
            f.write(f"{self.stream} {','.join(keep)}\\n")

sys.exit(receiver.serve(Node(), types.SimpleNamespace(name="vip1"), 0, sys.stdout.buffer))
"""


class Peer:
    """``remote_argv`` as the transport's: ``receiver`` runs :data:`PEER`; ``receive`` (one
    send per login) appends its stream to the record; ``refuse``: the peer's hafs is older."""

    def __init__(self, tmp: Path, refuse: bool = False, unreachable: bool = False) -> None:
        self.script = tmp / "peer.py"
        self.script.write_text(PEER)
        self.record = tmp / "received"
        self.record.touch()
        self.refuse, self.unreachable = refuse, unreachable
        self.asked: list[str] = []  # the operation of every ssh session started

    def remote_argv(self, peer: str, args: Sequence[str], shared: bool = False) -> list[str]:
        self.asked.append(args[0])
        if self.unreachable:
            return ["sh", "-c", "echo 'ssh: connect to host 10.0.0.2: No route' >&2; exit 255"]
        if args[0] == "receiver" and self.refuse:
            return ["sh", "-c", "echo 'hafs: peer n1: refused: receiver vip1' >&2; exit 2"]
        if args[0] == "receiver":
            return [sys.executable, str(self.script), str(self.record)]
        return [
            "sh",
            "-c",
            f'read stream; echo "one-shot {" ".join(args)} $stream" >> {self.record}',
        ]

    def received(self) -> list[str]:
        return self.record.read_text().splitlines()


def node_with(monkeypatch: pytest.MonkeyPatch, peer: Peer) -> NodeServices:
    monkeypatch.setattr(NodeServices, "transport", peer)
    return NodeServices(CONFIG)


def send(node: NodeServices, stream: str, base: str | None = "s1") -> None:
    request = Request(base, ("s0",), ("s2",))
    node.receivers.send(node, VIP, "n2", request, ["echo", stream], [])


def test_one_receiver_takes_every_send_whole_and_in_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three sends, one peer process: no login or Python start per send. Each stream
    arrives whole after its request; the peer's warnings are said in the sender's log."""
    node = node_with(monkeypatch, peer := Peer(tmp_path))
    try:
        for i in range(3):
            send(node, f"stream{i}", base=f"s{i}")
    finally:
        node.receivers.close_all()
    received = [line.split() for line in peer.received()]
    assert len({pid for pid, *_ in received}) == 1
    assert [rest for _, *rest in received] == [
        [f"s{i}", "s0", "s2", f"stream{i}"] for i in range(3)
    ]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3
    assert all(w.startswith("vip1: n2 says: ") and "DIVERGED" in w for w in warned)


def test_a_failed_receive_ends_the_session_and_the_next_send_starts_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The rest of a failed receive's stream would be read as the next request: the peer
    answers and exits, the send raises, and the next one runs in a new peer process."""
    node = node_with(monkeypatch, peer := Peer(tmp_path))
    try:
        send(node, "first")
        with pytest.raises(ServiceError, match=r"^vip1: n2: vip1: zfs recv .* out of space$"):
            send(node, "fail")
        assert node.receivers.sessions == {}
        send(node, "second")
    finally:
        node.receivers.close_all()
    pids = [line.split()[0] for line in peer.received()]
    assert len(pids) == 2 and pids[0] != pids[1]


def test_the_peer_answers_before_it_prunes_and_a_failed_prune_ends_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder's send returns once the stream is in, while the peer still prunes; a prune
    that fails is said in the holder's log and the session goes on."""
    node = node_with(monkeypatch, peer := Peer(tmp_path))
    pruned = tmp_path / "received.pruned"
    try:
        send(node, "unprunable")
        send(node, "slow-prune")  # returns while the peer's prune waits for "go"
        assert not pruned.exists()
        (tmp_path / "received.go").touch()
        send(node, "last")
    finally:
        node.receivers.close_all()
    assert len({line.split()[0] for line in peer.received()}) == 1  # one peer process
    assert pruned.read_text().splitlines() == ["slow-prune s0", "last s0"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("old snapshots not pruned: zfs destroy" in w for w in warned)


def test_a_failed_zfs_send_ends_the_session_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The peer's zfs recv waits for the rest of a stream that never comes: the session is
    closed (its recv reads the end and fails) instead of waiting for an answer."""
    node = node_with(monkeypatch, Peer(tmp_path))
    request = Request("s1")
    failing = ["sh", "-c", "echo 'cannot open tank/hafs/vip1@s2' >&2; exit 1"]
    began = time.monotonic()
    with pytest.raises(ServiceError, match=r"^vip1: n2: zfs send: cannot open tank/hafs/vip1@s2$"):
        node.receivers.send(node, VIP, "n2", request, failing, [])
    assert time.monotonic() - began < receiver.ANSWER_TIMEOUT / 2
    assert node.receivers.sessions == {}


def test_a_peer_without_a_receiver_gets_one_login_per_send(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A peer with an older hafs refuses the operation: the send goes the old way."""
    node = node_with(monkeypatch, peer := Peer(tmp_path, refuse=True))
    send(node, "stream")
    assert peer.received() == ["one-shot receive vip1 --base s1 --keep s0 --theirs s2 stream"]
    assert node.receivers.sessions == {}


def test_an_unreachable_peer_is_an_error_not_a_second_try(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    node = node_with(monkeypatch, peer := Peer(tmp_path, unreachable=True))
    with pytest.raises(ServiceError, match=r"^vip1: n2 unreachable: ssh: connect to host"):
        send(node, "stream")
    assert peer.received() == []


def test_an_idle_session_is_closed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    node = node_with(monkeypatch, Peer(tmp_path))
    send(node, "stream")
    (session,) = node.receivers.sessions.values()
    node.receivers.close_idle(now=session.used + receiver.IDLE_CLOSE / 2)
    assert session.alive()
    node.receivers.close_idle(now=session.used + receiver.IDLE_CLOSE + 1)
    assert node.receivers.sessions == {}
    assert session.process.returncode == 0  # it read the end of its input and exited


def test_an_old_session_is_closed_even_if_busy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The peer's receiver keeps the config and code it started with: a deploy since takes
    over when the session is renewed."""
    node = node_with(monkeypatch, Peer(tmp_path))
    send(node, "stream")
    (session,) = node.receivers.sessions.values()
    session.used = session.started + receiver.MAX_AGE  # busy until now
    node.receivers.close_idle(now=session.started + receiver.MAX_AGE + 1)
    assert node.receivers.sessions == {} and not session.alive()


def test_a_line_is_read_to_its_newline_and_no_further() -> None:
    read, write = os.pipe()
    os.write(write, b'{"base": null}\nZFS STREAM')
    os.close(write)
    assert receiver.read_line(read) == b'{"base": null}\n'
    assert os.read(read, 100) == b"ZFS STREAM"
    assert receiver.read_line(read) is None
    os.close(read)


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b'{"base": "s1"}\n',
        b'{"base": 3, "keep": [], "theirs": []}\n',
        b'{"base": "s1", "keep": "s0", "theirs": []}\n',
        b'{"base": "s1", "keep": [1], "theirs": []}\n',
    ],
)
def test_a_bad_request_is_refused_in_one_line(line: bytes) -> None:
    with pytest.raises(ServiceError, match=r"^receiver: "):
        Request.parse(line)


def test_a_request_says_what_receive_takes() -> None:
    request = Request("s1", ("s0",), ("s2", "s3"))
    assert Request.parse(request.line()) == request
    assert Request.parse(Request(None).line()) == Request(None)
