"""The Linux agent's configuration file (``/etc/hafs/agent.toml``): render and load.

One place for the format, so ``hafs render`` and ``hafs agent`` cannot disagree.
The file holds the CARP pass, so :func:`load` refuses it when group or others can
read it, and every problem is one line naming the key.

Example::

    node = "ha-file-server-4"
    interface = "ens36"
    srcip = "172.21.0.214"
    pass = "testok"
    preempt = true
    link_mode = "garp"            # or "vmac": FreeBSD-style 00:00:5e:00:01:<vhid>
    event_command = ["hafs", "event"]
    hook_timeout = 30.0
    start_demoted = true          # held at start until `hafs service run` has re-synced
    resync_holds = true           # `hafs service run` runs beside the agent: see below
    state_file = "/var/lib/hafs/agent-state.json"  # the moves (`hafs move`) kept across restarts

``resync_holds`` says that a service daemon (``hafs service run``) runs beside the agent and
releases the ``resync`` demotion hold once this node's data is in sync. With it, the agent
holds the node demoted whenever it may have missed changes: after a lost link, after the
agent itself stalled, and after it heard no peer for a while (see :mod:`hafs.carp.agent`);
``start_demoted`` holds it at start too (a node that was up before). Without them (a bare
CARP node, ``hafs ucarp``) nobody would release the hold, so the agent raises none.

    [[vhid]]
    vhid = 1
    addresses = ["172.21.0.211"]
    advbase = 1
    advskew = 4

``peers`` (optional, per ``[[vhid]]``) sends that vhid's adverts by unicast to each of these
addresses instead of to 224.0.0.18, for networks that drop multicast (FreeBSD 14's ``peer``,
keepalived's ``unicast_peer``); the vhid then hears only adverts from these addresses:

    peers = ["172.21.0.201", "172.21.0.202"]

IPv4 addresses, each once, not this node's ``srcip``. Without ``peers`` the vhid multicasts.

``protocol = "vrrp3"`` speaks VRRPv3 (RFC 5798) instead of CARP, as keepalived and FreeBSD
14.1+'s ``carpver 3`` do: each ``[[vhid]]`` (the VRID) then takes ``priority`` (1..255, higher
wins, 255 owns the addresses; default 100) and ``interval`` (seconds in 0.01 steps,
0.01..40.95; default 1) instead of ``advbase``/``advskew``. VRRPv3 has no authentication, so
no ``pass``; it needs ``srcip``, which goes into every advert's checksum and breaks ties
between equal priorities.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any, Literal, cast

from hafs.carp.vrrp import MAX_INTERVAL
from hafs.cluster import Cluster, LinkMode, Node
from hafs.errors import HafsError
from hafs.secretfile import check_private

DEFAULT_EVENT_COMMAND = ("hafs", "event")
DEFAULT_CONTROL_SOCKET = "/run/hafs/agent.sock"
DEFAULT_STATE_FILE = "/var/lib/hafs/agent-state.json"
# the environment of event_command: the agent's control socket, and on MASTER the source
# address of the master this node took over from, when it heard one (the node to fence)
AGENT_SOCKET_ENV = "HAFS_AGENT_SOCKET"
PREVIOUS_MASTER_ENV = "HAFS_PREVIOUS_MASTER"


Protocol = Literal["carp", "vrrp3"]
PROTOCOLS: tuple[Protocol, ...] = ("carp", "vrrp3")
CARP_ONLY = ("advbase", "advskew")
VRRP_ONLY = ("priority", "interval")


class AgentConfigError(HafsError):
    """The agent config is unusable (one line naming the key and the fix)."""


@dataclass(frozen=True)
class VhidEntry:
    vhid: int
    addresses: tuple[IPv4Address, ...]
    advbase: int = 1
    advskew: int = 0
    interface: str | None = None
    link_mode: LinkMode | None = None
    priority: int = 100  # VRRPv3
    interval: int = 100  # VRRPv3, centiseconds
    peers: tuple[IPv4Address, ...] = ()  # unicast to these instead of 224.0.0.18


@dataclass(frozen=True)
class AgentConfig:
    node: str
    interface: str
    srcip: IPv4Address | None
    passphrase: str
    vhids: tuple[VhidEntry, ...]
    preempt: bool = True
    link_mode: LinkMode = "garp"
    event_command: tuple[str, ...] = DEFAULT_EVENT_COMMAND
    hook_timeout: float = 30.0
    control_socket: str = DEFAULT_CONTROL_SOCKET
    metrics: str | None = None
    # a service daemon releases the "resync" hold: hold it at start (start_demoted) and
    # whenever this node may have missed changes: link lost, agent stalled, peers silent
    start_demoted: bool = False
    resync_holds: bool = False
    protocol: Protocol = "carp"
    state_file: str | None = None  # the moved vhids (`hafs move`), kept across restarts

    def interface_of(self, entry: VhidEntry) -> str:
        return entry.interface or self.interface

    def link_mode_of(self, entry: VhidEntry) -> LinkMode:
        return entry.link_mode or self.link_mode


def _toml(value: Any) -> str:
    """A TOML value: JSON's string/number/bool/array syntax is valid TOML for these."""
    return json.dumps(value, ensure_ascii=False)


def render(
    cluster: Cluster,
    node: Node,
    event_command: Sequence[str] = DEFAULT_EVENT_COMMAND,
    start_demoted: bool = True,
    state_file: str = DEFAULT_STATE_FILE,
) -> str:
    """The agent.toml of a Linux node: every vhid it carries, with its advskew."""
    src = cluster.source_address(node)
    lines = [
        f"# hafs agent configuration for {node.name}, generated by `hafs render` from "
        f"{cluster.source.name}.",
        "# It holds the CARP pass: keep it mode 0600.",
        f"node = {_toml(node.name)}",
        f"interface = {_toml(node.interface)}",
    ]
    if src is not None:
        lines.append(f"srcip = {_toml(str(src))}")
    if cluster.protocol == "vrrp3":
        lines.append('protocol = "vrrp3"')
    else:
        lines.append(f"pass = {_toml(cluster.carp_pass)}")
    lines += [
        f"preempt = {_toml(node.preempt)}",
        f"link_mode = {_toml(node.link_mode)}",
        f"event_command = {_toml(list(event_command))}",
        "# demoted at start, and after a lost link, a stall or silent peers, until",
        "# `hafs service run` has pulled what changed meanwhile",
        f"start_demoted = {_toml(start_demoted)}",
        "resync_holds = true",
        "# the vhids moved by `hafs move`, kept across restarts of the agent",
        f"state_file = {_toml(state_file)}",
    ]
    if node.metrics is not None:
        lines.append(f"metrics = {_toml(node.metrics)}")
    for vip in cluster.vips_of(node.name):
        lines += [
            "",
            "[[vhid]]",
            f"# {vip.name}, home {vip.home}, takeover order: {', '.join(vip.carriers)}",
            f"vhid = {vip.vhid}",
            f"addresses = {_toml([str(vip.address)])}",
        ]
        if cluster.protocol == "vrrp3":
            lines += [
                f"priority = {vip.priority(node.name)}",
                f"interval = {cluster.vrrp_interval}",
            ]
        else:
            lines += [f"advbase = {vip.advbase}", f"advskew = {vip.advskew[node.name]}"]
        if cluster.unicast:
            lines.append(f"peers = {_toml([str(a) for a in cluster.peers(vip, node)])}")
    return "\n".join(lines) + "\n"


TOP_KEYS = {
    "node",
    "interface",
    "srcip",
    "pass",
    "pass_file",
    "preempt",
    "link_mode",
    "event_command",
    "hook_timeout",
    "control_socket",
    "metrics",
    "start_demoted",
    "resync_holds",
    "protocol",
    "state_file",
    "vhid",
}
VHID_KEYS = {"vhid", "addresses", *CARP_ONLY, *VRRP_ONLY, "interface", "link_mode", "peers"}


def load(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate an agent.toml (mode 0600 required)."""
    path = Path(path)
    check_private(path, "config", AgentConfigError)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"config {path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"config {path}: not valid TOML: {exc}") from exc
    return parse(data, path)


def parse(data: Mapping[str, Any], path: Path) -> AgentConfig:
    where = f"config {path}"
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise AgentConfigError(
            f"{where}: unknown key {unknown[0]!r}: allowed are {sorted(TOP_KEYS)}"
        )
    protocol = data.get("protocol", "carp")
    if protocol not in PROTOCOLS:
        raise AgentConfigError(f"{where}: protocol: must be 'carp' or 'vrrp3', got {protocol!r}")
    if protocol == "vrrp3":
        _refuse_pass(data, where)
        if "srcip" not in data:
            raise AgentConfigError(
                f'{where}: srcip: VRRPv3 needs it (it is in every checksum): set srcip = "..."'
            )
    passphrase = "" if protocol == "vrrp3" else _passphrase(data, path)
    entries = data.get("vhid")
    if not isinstance(entries, list) or not entries:
        raise AgentConfigError(f"{where}: vhid: add at least one [[vhid]] table")
    srcip = _ipv4(data["srcip"], f"{where}: srcip") if "srcip" in data else None
    vhids = tuple(_entry(e, f"{where}: vhid[{i}]", protocol, srcip) for i, e in enumerate(entries))
    seen: set[int] = set()
    for entry in vhids:
        if entry.vhid in seen:
            raise AgentConfigError(
                f"{where}: vhid {entry.vhid}: configured twice: keep one [[vhid]]"
            )
        seen.add(entry.vhid)
    command = data.get("event_command", list(DEFAULT_EVENT_COMMAND))
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise AgentConfigError(f"{where}: event_command: must be a list of strings (argv)")
    return AgentConfig(
        node=_str(data, "node", where),
        interface=_str(data, "interface", where),
        srcip=srcip,
        passphrase=passphrase,
        vhids=vhids,
        preempt=_typed(data, "preempt", bool, where, True),
        link_mode=_link_mode(data.get("link_mode", "garp"), where),
        event_command=tuple(command),
        hook_timeout=float(_typed(data, "hook_timeout", (int, float), where, 30.0)),
        control_socket=str(_typed(data, "control_socket", str, where, DEFAULT_CONTROL_SOCKET)),
        metrics=_typed(data, "metrics", str, where, None),
        start_demoted=_typed(data, "start_demoted", bool, where, False),
        resync_holds=_typed(data, "resync_holds", bool, where, False),
        protocol=cast(Protocol, protocol),
        state_file=_typed(data, "state_file", str, where, None),
    )


def _refuse_pass(data: Mapping[str, Any], where: str) -> None:
    for key in ("pass", "pass_file"):
        if key in data:
            raise AgentConfigError(
                f"{where}: {key}: VRRPv3 has no authentication (RFC 5798): remove {key}"
            )


def _passphrase(data: Mapping[str, Any], path: Path) -> str:
    if "pass" in data and "pass_file" in data:
        raise AgentConfigError(f"config {path}: pass and pass_file: set only one")
    if "pass_file" in data:
        pass_path = Path(str(data["pass_file"]))
        check_private(pass_path, "pass_file", AgentConfigError)
        try:
            return pass_path.read_text(encoding="utf-8").rstrip("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise AgentConfigError(
                f"config {path}: pass_file {pass_path}: cannot read: {exc}"
            ) from exc
    value = data.get("pass")
    if not isinstance(value, str):
        raise AgentConfigError(f'config {path}: pass: missing: set pass = "..." or pass_file')
    return value


def _entry(raw: Any, where: str, protocol: str, srcip: IPv4Address | None) -> VhidEntry:
    if not isinstance(raw, dict):
        raise AgentConfigError(f"{where}: must be a [[vhid]] table")
    unknown = sorted(set(raw) - VHID_KEYS)
    if unknown:
        raise AgentConfigError(
            f"{where}: unknown key {unknown[0]!r}: allowed are {sorted(VHID_KEYS)}"
        )
    vhid = _typed(raw, "vhid", int, where, None)
    if vhid is None or not 1 <= vhid <= 255:
        raise AgentConfigError(f"{where}: vhid: must be 1..255, got {raw.get('vhid')!r}")
    where = f"{where} (vhid {vhid})"
    addresses = raw.get("addresses")
    if not isinstance(addresses, list) or not addresses:
        raise AgentConfigError(f"{where}: addresses: must be a non-empty list of IPv4 addresses")
    other, instead = (VRRP_ONLY, CARP_ONLY) if protocol == "carp" else (CARP_ONLY, VRRP_ONLY)
    for key in other:
        if key in raw:
            raise AgentConfigError(
                f"{where}: {key}: not a {protocol} setting: with protocol = {protocol!r} set "
                f"{' and '.join(instead)}"
            )
    advbase = _typed(raw, "advbase", int, where, 1)
    if not 1 <= advbase <= 254:
        raise AgentConfigError(f"{where}: advbase: must be 1..254, got {advbase}")
    advskew = _typed(raw, "advskew", int, where, 0)
    if not 0 <= advskew <= 254:
        raise AgentConfigError(f"{where}: advskew: must be 0..254, got {advskew}")
    priority = _typed(raw, "priority", int, where, 100)
    if not 1 <= priority <= 255:
        raise AgentConfigError(f"{where}: priority: must be 1..255, got {priority}")
    mode = raw.get("link_mode")
    return VhidEntry(
        vhid=vhid,
        addresses=tuple(_ipv4(a, f"{where}: addresses") for a in addresses),
        advbase=advbase,
        advskew=advskew,
        interface=_typed(raw, "interface", str, where, None),
        link_mode=None if mode is None else _link_mode(mode, where),
        priority=priority,
        interval=_interval(_typed(raw, "interval", (int, float), where, 1), where),
        peers=_peers(raw["peers"], where, srcip) if "peers" in raw else (),
    )


def _peers(value: Any, where: str, srcip: IPv4Address | None) -> tuple[IPv4Address, ...]:
    """The unicast peers of a vhid: IPv4 unicast addresses, each once, none of them srcip."""
    if not isinstance(value, list) or not value:
        raise AgentConfigError(
            f'{where}: peers: must be a non-empty list like ["10.0.0.2"] (or no peers: '
            f"multicast), got {value!r}"
        )
    peers = tuple(_ipv4(a, f"{where}: peers") for a in value)
    for peer in peers:
        if peer.is_multicast or peer.is_unspecified or peer == IPv4Address("255.255.255.255"):
            raise AgentConfigError(
                f"{where}: peers: {peer} is not a unicast address: list the peers' own addresses"
            )
        if peers.count(peer) > 1:
            raise AgentConfigError(f"{where}: peers: {peer} is listed twice: list it once")
        if peer == srcip:
            raise AgentConfigError(
                f"{where}: peers: {peer} is this node's srcip: list the other nodes only"
            )
    return peers


def _interval(seconds: float, where: str) -> int:
    """VRRPv3's interval in centiseconds, from seconds in 0.01 steps (the wire's unit)."""
    centiseconds = round(seconds * 100) if math.isfinite(seconds) else 0
    if not 1 <= centiseconds <= MAX_INTERVAL or abs(seconds * 100 - centiseconds) > 1e-6:
        raise AgentConfigError(
            f"{where}: interval: must be seconds in 0.01 steps, 0.01..40.95, got {seconds}"
        )
    return centiseconds


def _link_mode(value: Any, where: str) -> LinkMode:
    if value not in ("garp", "vmac"):
        raise AgentConfigError(f"{where}: link_mode: must be 'garp' or 'vmac', got {value!r}")
    return cast(Literal["garp", "vmac"], value)


def _ipv4(value: Any, where: str) -> IPv4Address:
    try:
        parsed = ip_address(str(value))
    except ValueError:
        raise AgentConfigError(f"{where}: {value!r} is not an IPv4 address") from None
    if not isinstance(parsed, IPv4Address):
        raise AgentConfigError(f"{where}: {value!r}: only IPv4 is supported")
    return parsed


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise AgentConfigError(f'{where}: {key}: missing: set {key} = "..."')
    return value


def _typed(data: Mapping[str, Any], key: str, kind: Any, where: str, default: Any) -> Any:
    if key not in data:
        return default
    value = data[key]
    if isinstance(value, bool) and kind is not bool:
        raise AgentConfigError(f"{where}: {key}: must be {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise AgentConfigError(f"{where}: {key}: must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: Any) -> str:
    if isinstance(kind, tuple):
        return "a number"
    return {bool: "true or false", int: "an integer", str: "a string"}.get(kind, str(kind))
