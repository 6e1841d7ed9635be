"""The agent's control socket: one JSON request line in, one JSON answer line out.

Requests: ``{"op": "status"}``; ``{"op": "demote", "adjust": N}`` (add N, may be negative),
``{"op": "demote", "set": N}``, ``{"op": "demote", "hold": NAME, "value": N, "cause": TEXT}``
(a named demotion, 0 releases it; the cause is optional), ``{"op": "demote"}`` (show);
``{"op": "move", "vhid": N, "to": NODE, "value": X, "cause": TEXT}`` (vhid N's advskew, or
VRRPv3 priority, is X at run time: ``hafs move`` made NODE its best carrier), ``{"op":
"move", "vhid": N}`` (back to its configured rank).
Answers: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. The socket is created
0600 in a 0700 directory: only root (the agent's user) can demote the node.

While the agent re-executes itself (a reload) nothing listens for a moment; the agent says so
with a marker beside the socket (:func:`reload_marker`), and :func:`request` waits for the new
image instead of reporting an agent that does not answer (the service daemon would take that
for a dead agent and stop serving its VIPs).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hafs.errors import HafsError

if TYPE_CHECKING:
    from hafs.carp.agent import Agent

MAX_REQUEST = 4096
CLIENT_TIMEOUT = 5.0
RELOAD_SECONDS = 60.0  # the longest a reload may take; an older marker is stale


class ControlError(HafsError):
    """The agent could not be reached or refused the request."""

    exit_code = 1


def answer(agent: Agent, request: Any) -> dict[str, Any]:
    """The answer to one decoded request (bad requests get ok=false, never an exception)."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "request must be a JSON object"}
    op = request.get("op")
    if op == "status":
        return {"ok": True, **agent.status()}
    if op == "move":
        return _move(agent, request)
    if op != "demote":
        return {"ok": False, "error": f"unknown op {op!r}: use status, demote or move"}
    numbers = {k: v for k, v in request.items() if k in ("adjust", "set", "value")}
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 1_000_000:
            return {"ok": False, "error": f"{key}: must be an integer, got {value!r}"}
    hold = request.get("hold")
    if hold is not None:
        if not isinstance(hold, str) or not hold or "value" not in numbers:
            return {"ok": False, "error": "hold: needs a name and an integer value"}
        cause = request.get("cause", "")
        if not isinstance(cause, str) or len(cause) > 200:
            return {"ok": False, "error": "cause: must be a short string"}
        agent.change_demotion(lambda d: d.hold(hold, numbers["value"], cause))
    elif "set" in numbers:
        agent.change_demotion(lambda d: d.set(numbers["set"]))
    elif "adjust" in numbers:
        agent.change_demotion(lambda d: d.adjust(numbers["adjust"]))
    return {"ok": True, "demotion": agent.demotion.as_dict()}


def _move(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    vhid, value = request.get("vhid"), request.get("value")
    if isinstance(vhid, bool) or not isinstance(vhid, int):
        return {"ok": False, "error": f"vhid: must be an integer, got {vhid!r}"}
    move = None
    if "to" in request:
        to, cause = request["to"], request.get("cause", "")
        if not isinstance(to, str) or not to or len(to) > 200:
            return {"ok": False, "error": f"to: must be a node's name, got {to!r}"}
        if isinstance(value, bool) or not isinstance(value, int):
            return {"ok": False, "error": f"value: must be an integer, got {value!r}"}
        if not isinstance(cause, str) or len(cause) > 200:
            return {"ok": False, "error": "cause: must be a short string"}
        move = {"to": to, "value": value, "cause": cause}
    try:
        agent.move(vhid, move)
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
    except OSError as exc:
        return {"ok": False, "error": f"not kept ({exc}): nothing changed"}
    return {"ok": True, "moved": agent.moves.get(vhid)}


async def serve(agent: Agent, path: str) -> asyncio.AbstractServer:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # left by an agent that was killed

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
            try:
                request = json.loads(line[:MAX_REQUEST])
            except ValueError:
                reply: dict[str, Any] = {"ok": False, "error": "request is not JSON"}
            else:
                reply = answer(agent, request)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    old_umask = os.umask(0o177)
    try:
        return await asyncio.start_unix_server(handle, path)
    finally:
        os.umask(old_umask)


def reload_marker(path: str) -> Path:
    """The file whose presence says that the agent of socket ``path`` is reloading."""
    return Path(f"{path}.reloading")


def reloading(path: str) -> bool:
    """Is the agent of socket ``path`` re-executing itself (a marker younger than
    :data:`RELOAD_SECONDS`)?"""
    try:
        return time.time() - reload_marker(path).stat().st_mtime < RELOAD_SECONDS
    except OSError:
        return False


def request(path: str, message: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the agent at ``path`` and return its answer (waiting for the new
    image while the agent reloads)."""
    while True:
        try:
            data = _exchange(path, message)
        except FileNotFoundError:
            if not reloading(path):
                raise ControlError(
                    f"no agent socket at {path}: is `hafs agent` running? (--socket PATH)"
                ) from None
        except OSError as exc:
            if not reloading(path):
                raise ControlError(f"agent socket {path}: {exc.strerror or exc}") from None
        else:
            if data or not reloading(path):
                break
        time.sleep(0.05)
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise ControlError(f"agent socket {path}: answered something that is not JSON") from None
    if not reply.get("ok"):
        raise ControlError(f"agent refused: {reply.get('error')}")
    return reply


def _exchange(path: str, message: dict[str, Any]) -> bytes:
    """One request line out, the answer line in (empty if the agent closed first)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect(path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data
