"""How a node reaches its peers: ``hafs service ...`` over ssh to their fixed addresses.

Every peer operation (fence, snapshots, receive, sync, handover, held, report, prefer) runs on
the peer through its forced command (``hafs service ssh-command``), with the node's
replication key.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Address

from hafs.service.config import ServiceConfig
from hafs.service.runtime import RUN_DIR


def peer_key_options(hafs_command: str, peer: str, address: IPv4Address) -> str:
    """The authorized_keys options of ``peer``'s replication key (deployed node and lab alike).

    ``hafs service`` calls its peers as ``ssh root@<address> '<hafs> service <op> ...'``; the
    key may run only the forced command ``hafs service ssh-command``, which gets that request
    in ``$SSH_ORIGINAL_COMMAND`` and allows nothing else, with no pty or forwarding
    (``restrict``), and only from the peer's fixed address.
    """
    return f'restrict,command="{hafs_command} service ssh-command --peer {peer}",from="{address}"'


SHARED_DIR = RUN_DIR / "ssh"  # the shared connections' sockets, root's only
SSH_CONNECT_TIMEOUT = 2
# A peer that loses power mid-operation answers nothing, not even a reset: without keepalives
# ssh waits for it until the operation's own timeout (a send: 600 s), and with it the service
# daemon's round: no VIP of this node is snapshotted or sent meanwhile, not even one it takes
# over then (fault suite, two-nodes: the new holder's writes never reached a backup).
SSH_ALIVE_INTERVAL = 2  # seconds of silence before ssh asks the peer's sshd
SSH_ALIVE_COUNT = 3  # unanswered asks: ssh gives up (exit 255) 6-8 s after the peer died


# AES-GCM first: file servers' CPUs have AES instructions, and with them it costs a third of
# the CPU of ssh's default, chacha20 (512 MB over loopback: 0.23 s of user time, not 0.60);
# then chacha20 and two more that every OpenSSH since 6.5 has, so a peer without it connects.
CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr"
# Replication's sends go over one connection per peer, kept this long after its last send: a
# login costs 0.35 s of key exchange and authentication on a quiet node, more than the stream
# of a busy round. The others log in afresh: short questions (fence, held, snapshots), whose
# ConnectTimeout must hold for a peer that just died, which a shared connection notices only
# after its keepalives (up to 8 s); and pulls, the handover above all, which must not go
# through a connection a send made at replication's low CPU priority.
SHARED_FOR = 60


class Transport:
    """ssh to the peers of ``config`` (read at each call: a reload replaces the config)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config

    def ssh(self, peer: str, shared: bool = False) -> list[str]:
        """``shared``: over this node's one connection to ``peer`` (made if there is none)."""
        sharing = []
        if shared:
            SHARED_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
            sharing = [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={SHARED_DIR}/%C",
                "-o",
                f"ControlPersist={SHARED_FOR}",
            ]
        return [
            "ssh",
            *sharing,
            "-o",
            f"Ciphers={CIPHERS}",
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

    def remote_argv(self, peer: str, args: Sequence[str], shared: bool = False) -> list[str]:
        command = shlex.join([*self.config.hafs_command, "service", *args])
        return [*self.ssh(peer, shared), command]

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
