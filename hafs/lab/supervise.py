"""A lab node's processes: running commands inside the node, starting, finding and stopping
its daemons.

Everything of a node runs entered into its anchor's namespaces (``nsenter`` into the network,
mount and UTS namespaces of the process that stands for the node's hardware, see
:mod:`hafs.lab.boot`): its zfs-fuse daemon, sshd, its CARP daemon (``hafs agent``, or stock
ucarp or keepalived for FreeBSD nodes with ``--foreign``) and its service daemon (``hafs service
run``), each detached in a session of its own, logging to ``<node>/<key>.log`` and recorded
in the lab's state (:mod:`hafs.lab.state`) by pid and start time.

The agent and the service daemon run under small shell supervisors that do what systemd does
on a deployed node (hooks/hafs-agent.service, hooks/hafs-service.service): restart them when
they die, run the agent's cleanup after a crash. The lab records the supervisor; the daemon
itself is found as the supervisor's child (:meth:`NodeProcesses.agent`).

Processes are stopped by pid only: the ones recorded, and those found inside the lab's own
namespaces (by the namespace's inode, never by name).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hafs import agentconf, render
from hafs.cluster import Cluster, Node
from hafs.lab.netns import NETNS_DIR, LabError
from hafs.lab.state import LabState, Proc, start_time

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
SERVICE_STOP_TIMEOUT = 60.0
HAFS = (sys.executable, "-m", "hafs")  # the hafs of this checkout, inside every node
# ... and run by sshd for a peer, which passes no environment: another hafs installed for that
# Python would answer the peers' operations, not this checkout's
HAFS_FOR_PEERS = ("env", f"PYTHONPATH={Path(__file__).resolve().parents[2]}", *HAFS)

# Stock ucarp stands in for FreeBSD's kernel CARP, which goes on advertising while devd runs
# `hafs event`. ucarp waits for its scripts and sends nothing meanwhile (its first advert as
# master comes after the up script), so the event runs in the background: waited for, a
# takeover's seconds let every other backup time out and take the VIP too. The address
# changes first, as in the kernel; the events serialise on the VIP's lock and look at the
# address they find, so their order does not matter.
UCARP_UP = (
    '#!/bin/sh\nip addr add "$2/32" dev "$1" label "$1:$3"\n'
    '{hafs} event "$3@$1" MASTER </dev/null &\n'
)
UCARP_DOWN = (
    '#!/bin/sh\nip addr del "$2/32" dev "$1" 2>/dev/null || true\n'
    '{hafs} event "$3@$1" BACKUP </dev/null &\n'
)
# The agent supervised as systemd runs it (hooks/hafs-agent.service): when it dies otherwise
# than by a graceful stop (exit 0: it bowed out and ran its own hooks), its cleanup removes
# its VIPs and steps its services down (ExecStopPost), and it starts again 2 s later with the
# restart config, which holds it demoted (Restart=always). SIGTERM/SIGINT go to the agent and
# end the supervision. The lab records the supervisor's pid as the node's "agent"; its kill
# (power loss) kills both, and no cleanup runs, as with a real power loss.
# Arguments: the config, the restart config, then the agent's argv.
AGENT_SUPERVISOR = r"""
trap 'stopping=1; [ -z "$pid" ] || kill -TERM "$pid"' TERM INT
config=$1 restart=$2
shift 2
while [ -z "$stopping" ]; do
    "$@" --config "$config" &
    pid=$!
    [ -z "$stopping" ] || kill -TERM "$pid"
    while :; do  # a trapped signal interrupts wait: wait again until the agent is gone
        wait "$pid" 2>/dev/null  # no untimestamped "Killed" in the log
        status=$?
        [ "$status" -ge 128 ] && kill -0 "$pid" 2>/dev/null || break
    done
    pid=
    [ "$status" -eq 0 ] || "$@" --config "$config" --cleanup
    [ -n "$stopping" ] || sleep 2
    config=$restart
done
"""
# The service daemon supervised as systemd runs it (hooks/hafs-service.service: Restart=always,
# RestartSec=1): killed or crashed, it runs again a second later. SIGTERM/SIGINT go to the
# daemon (it quiesces and sends the final incremental) and end the supervision.
SERVICE_SUPERVISOR = r"""
trap 'stopping=1; [ -z "$pid" ] || kill -TERM "$pid"' TERM INT
while [ -z "$stopping" ]; do
    "$@" &
    pid=$!
    [ -z "$stopping" ] || kill -TERM "$pid"
    while :; do  # a trapped signal interrupts wait: wait again until the daemon is gone
        wait "$pid" 2>/dev/null
        status=$?
        [ "$status" -ge 128 ] && kill -0 "$pid" 2>/dev/null || break
    done
    pid=
    [ -n "$stopping" ] || sleep 1
done
"""


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str]:
    """The arguments of ``pid``; empty if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def triples(argv: Sequence[str]) -> set[tuple[str, str, str]]:
    """Every three consecutive arguments of ``argv``."""
    return set(zip(argv, argv[1:], argv[2:], strict=False))


def pids_in_netns(ns: str) -> list[int]:
    """Every process whose network namespace is ``ns`` (by inode, never by name)."""
    try:
        target = os.stat(os.path.join(NETNS_DIR, ns)).st_ino
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                    pids.append(int(entry))
    return pids


def supervised_agent(config: Path, restart_config: Path) -> list[str]:
    """The argv of ``hafs agent --config config`` under :data:`AGENT_SUPERVISOR`."""
    return [
        "sh", "-c", AGENT_SUPERVISOR, "hafs-agent-supervisor",
        str(config), str(restart_config), *HAFS, "agent",
    ]  # fmt: skip


def supervised_service() -> list[str]:
    """The argv of ``hafs service run`` under :data:`SERVICE_SUPERVISOR`."""
    return ["sh", "-c", SERVICE_SUPERVISOR, "hafs-service-supervisor", *HAFS, "service", "run"]


class NodeProcesses(LabState):
    """The lab's state, and what runs inside its nodes."""

    # --- running things inside a node ------------------------------------------------------------

    def enter(self, node: str) -> list[str]:
        """The argv prefix that runs a command inside ``node`` (or the client namespace)."""
        if node == "client":
            return ["ip", "netns", "exec", self.state["client"]["ns"]]
        anchor = self.procs(node).get("anchor")
        if anchor is None or not anchor.alive:
            raise LabError(f"lab {self.name}: node {node} is down: hafs lab start {node}")
        return ["nsenter", f"--target={anchor.pid}", "--mount", "--net", "--uts", "--"]

    def run(self, node: str, argv: Sequence[str], check: bool = True) -> str:
        proc = subprocess.run(
            [*self.enter(node), *argv], capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise LabError(f"{node}: {' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def _ok(self, node: str, argv: Sequence[str]) -> bool:
        return (
            subprocess.run([*self.enter(node), *argv], capture_output=True, check=False).returncode
            == 0
        )

    @staticmethod
    def _wait(condition: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.05)

    def _daemon(self, node: str, key: str, argv: Sequence[str]) -> Proc:
        """Start ``argv`` inside ``node``, detached, logging to ``<node>/<key>.log``."""
        log = self.dir / node / f"{key}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [*self.enter(node), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc.of(popen)
        self._record(node, key, proc)
        return proc

    # --- the CARP and service daemons --------------------------------------------------------

    def _start_daemons(self, node: str) -> None:
        """The CARP daemon, then the service daemon. A node that was up before starts demoted
        until its service daemon has re-synced its replicas (failback loses nothing)."""
        state = self.node_state(node)
        self._start_carp(node, start_demoted=bool(state.get("booted")))
        self._daemon(node, "service", supervised_service())
        state["booted"] = True
        self._save()

    def _start_carp(self, node: str, start_demoted: bool) -> None:
        cluster = self.cluster()
        model = cluster.node(node)
        state = self.node_state(node)
        if state["impl"] == "ucarp":
            self._start_ucarp(cluster, model)
            return
        if state["impl"] == "keepalived":
            self._start_keepalived(cluster, model)
            return
        configs = []
        for name, demoted in (("agent.toml", start_demoted), ("agent-restart.toml", True)):
            config = self.dir / node / name
            text = agentconf.render(
                cluster,
                model,
                event_command=(*HAFS, "event"),
                start_demoted=demoted,
                state_file=str(self.dir / node / "agent-state.json"),  # the node's, kept
            )
            config.write_text(text)
            os.chmod(config, 0o600)
            configs.append(config)
        self._daemon(node, "agent", supervised_agent(*configs))

    def _wait_for_agent(self, node: str) -> None:
        if self.node_state(node)["impl"] == "hafs":
            self._wait(
                lambda: self._ok(node, ["test", "-S", agentconf.DEFAULT_CONTROL_SOCKET]),
                f"{node}: hafs agent to start",
            )

    def _start_ucarp(self, cluster: Cluster, node: Node) -> None:
        node_dir = self.dir / node.name
        passfile = node_dir / "carp.pass"
        passfile.write_text(cluster.carp_pass + "\n")
        os.chmod(passfile, 0o600)
        scripts = {}
        for kind, text in (("up", UCARP_UP), ("down", UCARP_DOWN)):
            scripts[kind] = node_dir / f"ucarp-{kind}.sh"
            scripts[kind].write_text(text.format(hafs=shlex.join(HAFS)))
            os.chmod(scripts[kind], 0o700)
        source = cluster.source_address(node)
        for vip in cluster.vips_of(node.name):
            argv = [
                "ucarp",
                "-i",
                node.interface,
                "-s",
                str(source),
                "-v",
                str(vip.vhid),
                "-o",
                str(passfile),
                "-a",
                str(vip.address),
                "-b",
                str(vip.advbase),
                "-k",
                str(vip.advskew[node.name]),
                "-u",
                str(scripts["up"]),
                "-d",
                str(scripts["down"]),
                "-x",
                str(vip.vhid),
                "-z",
            ]
            if node.preempt:
                argv.append("-P")
            self._daemon(node.name, f"ucarp-{vip.vhid}", argv)

    def _start_keepalived(self, cluster: Cluster, node: Node) -> None:
        """keepalived in the foreground, its config rendered as for a real node (its notify
        scripts run ``hafs event``, in the background as devd's do); pid files of its own."""
        node_dir = self.dir / node.name
        config = node_dir / "keepalived.conf"
        config.write_text(render.keepalived_conf(cluster, node, hafs_command=shlex.join(HAFS)))
        os.chmod(config, 0o600)
        argv = ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp"]
        argv += ["--use-file", str(config)]
        for flag, suffix in (("--pid", "main"), ("--vrrp_pid", "vrrp")):
            argv += [flag, str(node_dir / f"keepalived-{suffix}.pid")]
        self._daemon(node.name, "keepalived", argv)

    def agent(self, node: str) -> Proc | None:
        """The node's running ``hafs agent`` process (not its supervisor, nor its cleanup);
        None if none runs now."""
        return self._supervised(node, "agent", ("hafs", "agent", "--config"))

    def service(self, node: str) -> Proc | None:
        """The node's running ``hafs service run`` process (not its supervisor)."""
        return self._supervised(node, "service", ("hafs", "service", "run"))

    def _supervised(self, node: str, key: str, marks: tuple[str, str, str]) -> Proc | None:
        """The process the lab recorded as ``key``, or its child when it is a supervisor,
        whose argv has the three words ``marks`` in a row (a supervisor's does not)."""
        recorded = self.procs(node).get(key)
        if recorded is None or not recorded.alive:
            return None
        for pid in pids_in_netns(self.node_state(node)["ns"]):
            if recorded.pid not in (pid, parent_pid(pid)):
                continue
            argv = cmdline(pid)
            if argv[:1] != ["sh"] and marks in triples(argv) and "--cleanup" not in argv:
                start = start_time(pid)
                if start is not None:
                    return Proc(pid, start)
        return None

    # --- stopping ------------------------------------------------------------------------------

    def _stop_daemons(self, node: str) -> None:
        """In order: the service daemon (it quiesces and sends the final incremental), the CARP
        daemon (it bows out and its hooks run), the pool (exported), zfs-fuse."""
        procs = self.procs(node)
        service = procs.get("service")
        if service is not None:
            service.signal(signal.SIGTERM)
            self._wait_gone([service], SERVICE_STOP_TIMEOUT)
        carp = [
            p
            for key, p in procs.items()
            if key in ("agent", "keepalived") or key.startswith("ucarp-")
        ]
        for proc in carp:
            proc.signal(signal.SIGTERM)
        self._wait_gone(carp, STOP_TIMEOUT)
        if procs.get("anchor") and procs["anchor"].alive:
            self.run(node, ["zpool", "export", self.cluster().zfs_pool], check=False)
        zfs = procs.get("zfs-fuse")
        if zfs is not None:
            zfs.signal(signal.SIGTERM)
            self._wait_gone([zfs], STOP_TIMEOUT)

    @staticmethod
    def _wait_gone(procs: Sequence[Proc], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(p.alive for p in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        for proc in procs:
            proc.signal(signal.SIGKILL)

    @staticmethod
    def _kill_netns(ns: str) -> None:
        """SIGKILL every process in the namespace (the node's daemons, hooks, smbd, anchor)."""
        for _ in range(50):
            pids = pids_in_netns(ns)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        raise LabError(f"processes in {ns} survive SIGKILL: {pids_in_netns(ns)}")
