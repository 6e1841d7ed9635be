"""How the drill takes a node down and brings it back: the :class:`Killer` protocol.

:class:`LabKiller` cuts a lab node's power and powers it on; :class:`CommandKiller` runs the
inventory's shell command templates for a real cluster; :class:`PipeKiller` asks another process,
whose end is :func:`serve_killer`, so the drill can run where the killer cannot (the lab's
client namespace).
"""

from __future__ import annotations

import json
import os
import signal
import string
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol

from hafs.cluster import Cluster
from hafs.drill import DrillError, Progress
from hafs.errors import HafsError
from hafs.service.runtime import RUN_DIR

if TYPE_CHECKING:
    from hafs.lab.cluster import ClusterLab

TEMPLATE_FIELDS = ("node", "address", "interface")


class Killer(Protocol):
    """Takes a node down abruptly and brings it back; both block until done and return when
    (``time.monotonic()``, one clock for every namespace of a machine) the node went down or
    began to come back."""

    def kill(self, node: str) -> float: ...

    def restore(self, node: str) -> float: ...

    def takeover_record(self, node: str, vip: str) -> dict[str, Any] | None:
        """What ``node`` wrote down of its last takeover of ``vip``
        (:class:`hafs.service.takeover.Record`), if this killer can read it there."""
        ...


class LabKiller:
    """A lab node: power loss (cable cut, every process killed) and power-on."""

    def __init__(self, lab: ClusterLab, progress: Progress) -> None:
        self.lab = lab
        self.progress = progress

    def kill(self, node: str) -> float:
        began = time.monotonic()
        self.lab.kill(node)  # its cable is cut first
        return began

    def restore(self, node: str) -> float:
        began = time.monotonic()
        self.lab.start(node, self.progress)
        return began

    def takeover_record(self, node: str, vip: str) -> dict[str, Any] | None:
        text = self.lab.run(node, ["cat", f"{RUN_DIR}/{vip}.takeover.json"], check=False)
        try:
            found = json.loads(text)
        except ValueError:
            return None
        return found if isinstance(found, dict) else None


@dataclass(frozen=True)
class CommandOutcome:
    returncode: int | None  # None: still running at the timeout, so it was killed
    output: str


Runner = Callable[[str, float], CommandOutcome]


def run_shell(command: str, timeout: float) -> CommandOutcome:
    """``sh -c command`` in a session of its own; at the timeout its process group is killed."""
    proc = subprocess.Popen(
        ["sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this call created, nothing else
        output, _ = proc.communicate()
        return CommandOutcome(None, output)
    return CommandOutcome(proc.returncode, output)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


class CommandKiller:
    """Shell commands per node, e.g. ``ssh {address} "ifconfig {interface} down"``.

    A kill command may hang when it takes down the very link it talks over: after
    ``kill_timeout`` it is killed and the node counts as down. A restore command must finish
    with status 0 within ``restore_timeout``.
    """

    def __init__(
        self,
        commands: Mapping[str, tuple[str, str]],
        run: Runner = run_shell,
        kill_timeout: float = 10.0,
        restore_timeout: float = 300.0,
    ) -> None:
        self.commands = dict(commands)
        self.run = run
        self.kill_timeout = kill_timeout
        self.restore_timeout = restore_timeout

    @classmethod
    def from_templates(
        cls,
        cluster: Cluster,
        kill: Mapping[str, str | None],
        restore: Mapping[str, str | None],
        **options: Any,
    ) -> CommandKiller:
        """Fill ``{node}``, ``{address}`` and ``{interface}`` into each node's templates;
        :class:`HafsError` (exit 2) naming the key and node when one is missing or bad."""
        commands = {}
        for node in cluster.nodes:
            values = {
                "node": node.name,
                "address": None if node.address is None else str(node.address.ip),
                "interface": node.interface,
            }
            pair = []
            for key, templates in (("drill_kill", kill), ("drill_restore", restore)):
                template = templates.get(node.name)
                if not template:
                    raise HafsError(
                        f"host {node.name}: {key}: missing: give the command that "
                        f"{'takes the node down' if key == 'drill_kill' else 'brings it back'}, "
                        'e.g. ssh {address} "ifconfig {interface} down"'
                    )
                pair.append(_fill(template, values, f"host {node.name}: {key}"))
            commands[node.name] = (pair[0], pair[1])
        return cls(commands, **options)

    def _command(self, node: str, which: int) -> str:
        if node not in self.commands:
            raise DrillError(f"no drill commands for node {node!r}")
        return self.commands[node][which]

    def kill(self, node: str) -> float:
        command = self._command(node, 0)
        began = time.monotonic()
        outcome = self.run(command, self.kill_timeout)
        if outcome.returncode not in (0, None):
            raise DrillError(
                f"drill_kill of {node}: {command!r} exited {outcome.returncode}: "
                f"{_last_line(outcome.output)}"
            )
        return began

    def restore(self, node: str) -> float:
        command = self._command(node, 1)
        began = time.monotonic()
        outcome = self.run(command, self.restore_timeout)
        if outcome.returncode is None:
            raise DrillError(
                f"drill_restore of {node}: {command!r} did not finish within "
                f"{self.restore_timeout:g}s"
            )
        if outcome.returncode != 0:
            raise DrillError(
                f"drill_restore of {node}: {command!r} exited {outcome.returncode}: "
                f"{_last_line(outcome.output)}"
            )
        return began

    def takeover_record(self, node: str, vip: str) -> dict[str, Any] | None:
        return None  # the commands reach no node's files: the RTO is not split


def _fill(template: str, values: Mapping[str, str | None], where: str) -> str:
    fields = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise HafsError(f"{where}: {template!r}: {exc}: use {fields}") from None
    for name in sorted(used):
        if name not in values:
            raise HafsError(f"{where}: unknown field {{{name}}}: use {fields}")
        value = values[name]
        if value is None:
            raise HafsError(f"{where}: uses {{{name}}} but the node has no {name}")
    return template.format_map(values)


class PipeKiller:
    """Asks a :func:`serve_killer` on the other end of two pipes to kill and restore."""

    def __init__(self, requests: IO[str], replies: IO[str]) -> None:
        self.requests = requests
        self.replies = replies

    def _ask(self, op: str, node: str, vip: str | None = None) -> dict[str, Any]:
        self.requests.write(json.dumps({"op": op, "node": node, "vip": vip}) + "\n")
        self.requests.flush()
        line = self.replies.readline()
        if not line:
            raise DrillError(f"{op} {node}: the process doing kills and restores went away")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise DrillError(str(reply.get("error", f"{op} {node} failed")))
        return dict(reply)

    def kill(self, node: str) -> float:
        return float(self._ask("kill", node)["at"])

    def restore(self, node: str) -> float:
        return float(self._ask("restore", node)["at"])

    def takeover_record(self, node: str, vip: str) -> dict[str, Any] | None:
        found = self._ask("record", node, vip).get("record")
        return found if isinstance(found, dict) else None


def serve_killer(killer: Killer, requests: IO[str], replies: IO[str]) -> None:
    """Answer a :class:`PipeKiller`'s requests until it closes its end."""
    for line in requests:
        reply: dict[str, Any]
        try:
            request = json.loads(line)
            op, node = request["op"], request["node"]
            if op == "kill":
                reply = {"ok": True, "at": killer.kill(node)}
            elif op == "restore":
                reply = {"ok": True, "at": killer.restore(node)}
            elif op == "record":
                reply = {"ok": True, "record": killer.takeover_record(node, str(request["vip"]))}
            else:
                reply = {"ok": False, "error": f"unknown request {op!r}"}
        except HafsError as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": f"bad request {line.strip()!r}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
