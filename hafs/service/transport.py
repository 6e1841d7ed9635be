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
