"""How a node reaches its peers: ``hafs service ...`` over ssh to their fixed addresses.

Every peer operation (fence, snapshots, receive, sync, handover, held) runs on the peer through
its forced command (``hafs service ssh-command``), with the node's replication key.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Address

from hafs.service.config import ServiceConfig


def peer_key_options(hafs_command: str, peer: str, address: IPv4Address) -> str:
    """The authorized_keys options of ``peer``'s replication key (deployed node and lab alike).

    ``hafs service`` calls its peers as ``ssh root@<address> '<hafs> service <op> ...'``; the
    key may run only the forced command ``hafs service ssh-command``, which gets that request
    in ``$SSH_ORIGINAL_COMMAND`` and allows nothing else, with no pty or forwarding
    (``restrict``), and only from the peer's fixed address.
    """
    return f'restrict,command="{hafs_command} service ssh-command --peer {peer}",from="{address}"'


SSH_CONNECT_TIMEOUT = 2
# A peer that loses power mid-operation answers nothing, not even a reset: without keepalives
# ssh waits for it until the operation's own timeout (a send: 600 s), and with it the service
# daemon's round: no VIP of this node is snapshotted or sent meanwhile, not even one it takes
# over then (fault suite, two-nodes: the new holder's writes never reached a backup).
SSH_ALIVE_INTERVAL = 2  # seconds of silence before ssh asks the peer's sshd
SSH_ALIVE_COUNT = 3  # unanswered asks: ssh gives up (exit 255) 6-8 s after the peer died


class Transport:
    """ssh to the peers of ``config`` (read at each call: a reload replaces the config)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config

    def ssh(self, peer: str) -> list[str]:
        return [
            "ssh",
            "-i",
            self.config.ssh_key,
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"UserKnownHostsFile={self.config.known_hosts}",
            "-o",
            f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
            "-o",
            f"ServerAliveInterval={SSH_ALIVE_INTERVAL}",
            "-o",
            f"ServerAliveCountMax={SSH_ALIVE_COUNT}",
            "-o",
            "LogLevel=ERROR",
            f"root@{self.config.peers[peer]}",
        ]

    def remote_argv(self, peer: str, args: Sequence[str]) -> list[str]:
        command = shlex.join([*self.config.hafs_command, "service", *args])
        return [*self.ssh(peer), command]

    def remote(
        self, peer: str, args: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                self.remote_argv(peer, args),
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, 124, "", "timed out")
