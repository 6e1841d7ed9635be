"""Network-namespace plumbing: the one place that creates, wires and removes lab namespaces.

Shape of a lab: a *switch* namespace ``<prefix>-sw`` holds a Linux bridge ``<prefix>-br``;
every node is a namespace ``<prefix>-<name>`` joined to the bridge by a veth pair whose node side
is named like a NIC (``eth0``) and whose bridge side is ``<prefix>-p<n>``. Each veth pair is
created inside the switch namespace with its peer put straight into the node namespace, so
nothing (no interface, no address, no multicast membership) ever exists in the root namespace,
and no lab namespace has a default route: lab traffic cannot leave the machine.

Cable cut: setting the *bridge-side* veth down (:meth:`Port.cut`) is what a pulled cable looks like
from inside the node: its interface keeps IFF_UP, loses IFF_LOWER_UP, shows ``NO-CARRIER`` and
operstate DOWN, and netlink reports it. Setting the node side down is an administrative down
(IFF_UP cleared) instead.

Isolation (:meth:`Port.isolate`): the bridge port's STP state is set to *disabled*, so the bridge
forwards nothing to or from it, while both veth ends stay up: the node keeps carrier (LOWER_UP)
and hears nobody, the failure of a dead switch port or a wrong VLAN that a cable cut cannot show.
The bridge runs no STP, so the kernel keeps the state until the port's carrier comes back: a cut
cable plugged in, or the node setting its interface down and up, ends an isolation (measured).
``ip link set ... type bridge_slave state 0`` is accepted by iproute2 6.1 but changes nothing
here; ``bridge link set ... state`` does.

Implementation: iproute2's ``ip`` and ``bridge`` commands, run as ``ip -n <ns> ...``. They are
what an operator reproduces by hand, their syntax is stable across iproute2 releases (pyroute2's
API changed between 0.7 and 0.9), and their one-line errors go straight into :class:`LabError`.
``ip netns exec`` execs the command in place, so a :class:`subprocess.Popen` handle's pid is the
command's own pid and the lab stops exactly the processes it started.

Everything carries the per-run prefix, so :func:`cleanup` can remove a crashed run's leftovers.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from hafs.errors import HafsError

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
# "<prefix>-p99" must fit IFNAMSIZ (15 characters): at most 10 characters of prefix.
_PREFIX_RE = re.compile(r"[a-z][a-z0-9-]{0,9}")
_NODE_RE = re.compile(r"[a-z0-9]{1,16}")
_IFNAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,15}")
_STOP_TIMEOUT = 3.0
_BR_STATE_DISABLED = "0"  # bridge port states, as in linux/if_bridge.h
_BR_STATE_FORWARDING = "3"


class LabError(HafsError):
    """A lab operation failed (an ``ip`` command was refused, teardown left something behind)."""

    exit_code = 1


def new_prefix(base: str = "hafs-t") -> str:
    """A fresh per-run prefix: ``base`` plus 4 random hex digits, e.g. ``hafs-t3f9a``."""
    return f"{base}{secrets.token_hex(2)}"


def _iproute2(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def _ip(*args: str) -> str:
    return _iproute2("ip", *args)


def list_namespaces(prefix: str) -> list[str]:
    """Names of the existing namespaces that belong to ``prefix`` (``prefix`` or ``prefix-*``)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n == prefix or n.startswith(f"{prefix}-"))


def cleanup(prefix: str) -> list[str]:
    """Delete every namespace of ``prefix`` (their interfaces go with them); return their names.

    Crash recovery: a run that died without :meth:`Lab.close` is removed by its prefix. Only the
    exact prefix is matched, so other runs (other prefixes) are never touched.
    """
    check_prefix(prefix)
    names = list_namespaces(prefix)
    for name in names:
        _ip("netns", "delete", name)
    left = list_namespaces(prefix)
    if left:
        raise LabError(f"namespaces still present after delete: {', '.join(left)}")
    return names


def check_prefix(prefix: str) -> None:
    """A lab's name: the prefix of its namespaces and interfaces, and a directory name."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise HafsError(
            f"lab name {prefix!r}: use 1-10 characters of a-z, 0-9, '-', starting with a letter"
        )


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabError(f"setns: {os.strerror(err)}")


@dataclass(frozen=True)
class Netns:
    """One network namespace, by name."""

    name: str

    def ip(self, *args: str) -> str:
        """Run ``ip -n <name> args...`` and return its output; :class:`LabError` if it fails."""
        return _ip("-n", self.name, *args)

    def bridge(self, *args: str) -> str:
        """Run ``bridge -n <name> args...`` and return its output; :class:`LabError` if it fails."""
        return _iproute2("bridge", "-n", self.name, *args)

    def set_link(self, ifname: str, up: bool) -> None:
        """Administratively set ``ifname`` up or down (IFF_UP)."""
        self.ip("link", "set", ifname, "up" if up else "down")

    def add_address(self, ifname: str, cidr: str) -> None:
        """Add ``cidr`` (e.g. ``10.9.0.1/24``) to ``ifname``."""
        self.ip("address", "add", cidr, "dev", ifname)


@contextlib.contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """Run the calling thread inside ``ns`` for the block, then move it back.

    Sockets and netlink handles opened in the block stay in ``ns`` after it. setns(2) moves only
    the calling thread; the mount namespace does not change, so ``/sys/class/net`` still shows the
    old namespace: ask netlink, not sysfs.
    """
    with (
        open("/proc/thread-self/ns/net", "rb") as home,
        open(os.path.join(NETNS_DIR, ns.name), "rb") as target,
    ):
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


@dataclass(frozen=True)
class Port:
    """One cable: the node's interface ``ifname`` and its bridge-side peer in the switch."""

    node: Netns
    ifname: str
    switch: Netns
    peer: str

    def cut(self) -> None:
        """Pull the cable: the node's interface loses carrier (stays IFF_UP)."""
        self.switch.set_link(self.peer, up=False)

    def plug(self) -> None:
        """Plug the cable back in: carrier returns (and the port forwards, even if isolated)."""
        self.switch.set_link(self.peer, up=True)

    def isolate(self) -> None:
        """The bridge stops forwarding to and from the port; the node keeps its carrier."""
        self.switch.bridge("link", "set", "dev", self.peer, "state", _BR_STATE_DISABLED)

    def rejoin(self) -> None:
        """The bridge forwards to and from the port again."""
        self.switch.bridge("link", "set", "dev", self.peer, "state", _BR_STATE_FORWARDING)

    def state(self) -> str:
        """``cut`` (no carrier), ``isolated`` (carrier, not forwarding) or ``up``."""
        (link,) = json.loads(self.switch.ip("-d", "-j", "link", "show", "dev", self.peer))
        if "UP" not in link["flags"]:
            return "cut"
        forwarding = link["linkinfo"]["info_slave_data"]["state"] == "forwarding"
        return "up" if forwarding else "isolated"


@dataclass
class Lab:
    """A switch namespace with a bridge, and node namespaces cabled to it. Use as a context manager.

    ``close()`` stops the processes started with :meth:`popen` (by their handles), deletes the
    veths and namespaces, and raises :class:`LabError` if any namespace of the prefix is left.
    A lab nobody closed is closed at interpreter exit.
    """

    prefix: str
    persistent: bool = False  # True: outlives this process (hafs lab); close() only on demand
    switch: Netns = field(init=False)
    bridge: str = field(init=False)
    nodes: dict[str, Netns] = field(init=False, default_factory=dict)
    ports: list[Port] = field(init=False, default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        self.switch = Netns(f"{self.prefix}-sw")
        self.bridge = f"{self.prefix}-br"
        try:
            _ip("netns", "add", self.switch.name)
            self.switch.set_link("lo", up=True)
            self.switch.ip("link", "add", self.bridge, "type", "bridge")
            self.switch.set_link(self.bridge, up=True)
        except BaseException:
            cleanup(self.prefix)
            raise
        if not self.persistent:
            atexit.register(self.close)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_node(self, name: str) -> Netns:
        """Create the namespace ``<prefix>-<name>`` with loopback up and no other interface."""
        if not _NODE_RE.fullmatch(name) or name in {"sw", *self.nodes}:
            raise HafsError(
                f"lab node name {name!r}: use 1-16 characters of a-z and 0-9, unique, not 'sw'"
            )
        ns = Netns(f"{self.prefix}-{name}")
        _ip("netns", "add", ns.name)
        self.nodes[name] = ns
        ns.set_link("lo", up=True)
        return ns

    def connect(self, node: Netns, ifname: str = "eth0", cidr: str | None = None) -> Port:
        """Cable ``node`` to the bridge: its new interface ``ifname`` comes up, with ``cidr``."""
        if not _IFNAME_RE.fullmatch(ifname):
            raise HafsError(f"interface name {ifname!r}: use 1-15 characters of a-z, 0-9, '._-'")
        port = Port(node, ifname, self.switch, f"{self.prefix}-p{len(self.ports)}")
        self.switch.ip(
            "link", "add", port.peer, "type", "veth", "peer", "name", ifname, "netns", node.name
        )
        self.ports.append(port)
        self.switch.ip("link", "set", port.peer, "master", self.bridge, "up")
        node.set_link(ifname, up=True)
        if cidr is not None:
            node.add_address(ifname, cidr)
        return port

    def popen(
        self,
        node: Netns,
        argv: Sequence[str],
        *,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``node`` (``ip netns exec``); ``close()`` stops it by its pid."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.name, *argv], stdout=stdout, stderr=stderr
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Stop the started processes, delete every veth and namespace of the prefix, verify."""
        atexit.unregister(self.close)
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        # Deleting one end removes the pair even if a leaked socket keeps a namespace alive.
        for port in self.ports:
            with contextlib.suppress(LabError):
                self.switch.ip("link", "delete", port.peer)
        self.ports.clear()
        self.nodes.clear()
        cleanup(self.prefix)
