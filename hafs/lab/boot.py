"""A lab node's hardware and its boot: what ``hafs lab up`` makes per node, and what powering
it on (``up``, ``hafs lab start``) runs, in order.

Made once (:meth:`NodeBoot._make_node`): the node's network namespace ``NAME-n<i>``, cabled
to the lab's bridge with the inventory's interface name and fixed address; a sparse file for
its pool; its /etc/hafs (in the upper layer of its /etc overlay): cluster.json, the lab's
replication key, authorized_keys that let each peer (from its fixed address) run only
``hafs service ssh-command``, a host key and an sshd_config for its fixed address.

Booted (:meth:`NodeBoot._boot`): the *anchor* process first, the node's "hardware": it holds
a mount and UTS namespace with the hostname of the node, private tmpfs over ``/run`` and
``/var/lib/zfs`` and an overlay over ``/etc``, and sleeps. Everything else of the node runs
entered into its namespaces (:mod:`hafs.lab.supervise`): zfs-fuse, then the pool (created on
the first boot, imported on the next ones), sshd, then the CARP and service daemons.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Interface
from pathlib import Path

from hafs import agentconf
from hafs.cluster import Cluster, Node
from hafs.lab.netns import NETNS_DIR, Lab, LabError
from hafs.lab.state import Proc
from hafs.lab.supervise import HAFS, HAFS_FOR_PEERS, NodeProcesses
from hafs.service import config as service_config
from hafs.service.transport import peer_key_options

# What a node of the lab runs, and the Debian package that has it.
PROGRAMS = {
    "zfs-fuse": "zfs-fuse", "zfs": "zfs-fuse", "zpool": "zfs-fuse", "smbd": "samba",
    "sshd": "openssh-server", "ssh": "openssh-client", "ip": "iproute2",
    "nsenter": "util-linux", "unshare": "util-linux",
}  # fmt: skip
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"  # root's programs, on a PATH that may lack them


def check_programs(foreign: str | None) -> None:
    """Every program a lab node runs is installed, else one line naming each missing one
    and its package (without sshd, say, replication fails silently and the drill waits)."""
    needed = {**PROGRAMS, **({foreign: foreign} if foreign else {})}  # ucarp, keepalived
    path = f"{os.environ.get('PATH', '')}:{SBIN}"
    missing = {
        name: package for name, package in needed.items() if not shutil.which(name, path=path)
    }
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise LabError(
            f"the lab needs {', '.join(missing)}, not installed here: apt-get install {packages}"
        )


POOL_SIZE = "512M"
ZFS_MOUNT_ROOT = "/run/zpool"  # pools mount inside the node's private /run

ANCHOR = r"""
set -e
umount -R -l /run/netns 2>/dev/null || true
mount -t tmpfs -o mode=755,size=64m "hafs-$1-run" /run
mkdir -p /run/lock /run/hafs /run/sshd
mount -t tmpfs -o mode=755,size=1m "hafs-$1-zfs" /var/lib/zfs
mount -t overlay "hafs-$1-etc" -o "lowerdir=/etc,upperdir=$2/etc-upper,workdir=$2/etc-work" /etc
hostname "$1"
# root's commands over ssh run in a plain sh: no login-shell init (pyenv, rc files) on nodes
usermod -s /bin/sh root >/dev/null 2>&1 || true
echo ready
exec sleep infinity
"""
SSHD_CONFIG = """# hafs lab: replication and fencing between nodes, on the node's fixed address only
ListenAddress {address}
HostKey /etc/hafs/ssh_host_ed25519_key
AuthorizedKeysFile /etc/hafs/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile /run/hafs/sshd.pid
# a replication stream from a node that lost power must end within the master-down time:
# the receive holds the VIP's lock, and the takeover waits for it
ClientAliveInterval 1
ClientAliveCountMax 2
"""

Progress = Callable[[str], None]


class NodeBoot(NodeProcesses):
    """Making a lab's nodes, and powering them on."""

    def _make_node(
        self, lab: Lab, cluster: Cluster, node: Node, index: int, foreign: str | None
    ) -> None:
        ns = lab.add_node(f"n{index}")
        address = node.address or IPv4Interface(f"{cluster.source_address(node)}/32")
        port = lab.connect(ns, node.interface, address.with_prefixlen)
        node_dir = self.dir / node.name
        for sub in ("etc-upper", "etc-work"):
            (node_dir / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["truncate", "-s", POOL_SIZE, str(node_dir / "pool.img")], check=True)
        (node_dir / "pool.img").chmod(0o600)
        impl = foreign if foreign and node.os == "freebsd" else "hafs"
        self._write_etc(cluster, node, address, impl)
        self.state["nodes"][node.name] = {
            "index": index,
            "ns": ns.name,
            "peer": port.peer,
            "ifname": node.interface,
            "address": str(address.ip),
            "impl": impl,
            "pool_created": False,
            "procs": {},
        }
        self._save()

    def _write_etc(self, cluster: Cluster, node: Node, address: IPv4Interface, impl: str) -> None:
        """The node's /etc/hafs (in its /etc overlay): cluster.json, ssh keys, sshd_config."""
        etc = self.dir / node.name / "etc-upper" / "hafs"
        etc.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.dir / "replication_key"
        if not key.exists():  # one key for the whole lab; a real cluster has one per node
            _keygen(key, "hafs-lab-replication")
        shutil.copy(key, etc / "replication_key")
        (etc / "replication_key").chmod(0o600)
        public = (self.dir / "replication_key.pub").read_text().strip()
        peers = [(p.name, cluster.source_address(p)) for p in cluster.nodes if p.name != node.name]
        (etc / "authorized_keys").write_text(
            "".join(
                f"{peer_key_options(shlex.join(HAFS_FOR_PEERS), name, address)} {public}\n"
                for name, address in peers
                if address is not None
            )
        )
        _keygen(etc / "ssh_host_ed25519_key", f"{node.name}-host")
        (etc / "sshd_config").write_text(SSHD_CONFIG.format(address=address.ip))
        socket = agentconf.DEFAULT_CONTROL_SOCKET if impl == "hafs" else None
        config = service_config.render(cluster, node, hafs_command=HAFS, agent_socket=socket)
        (etc / "cluster.json").write_text(config)
        (etc / "cluster.json").chmod(0o600)

    def _boot(self, node: str, progress: Progress, carp: bool = True) -> None:
        """Power a node on: anchor, zfs-fuse with its pool, sshd, then its CARP and service
        daemons (unless ``carp`` is False: up starts those on every node at once)."""
        began = time.monotonic()
        state = self.node_state(node)
        state["procs"] = {}
        node_dir = self.dir / node
        netns = os.path.join(NETNS_DIR, state["ns"])
        anchor = subprocess.Popen(
            [
                "nsenter",
                f"--net={netns}",
                "--",
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                ANCHOR,
                "anchor",
                node,
                str(node_dir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert anchor.stdout is not None
        if anchor.stdout.readline().strip() != b"ready":
            anchor.kill()
            _, stderr = anchor.communicate(timeout=5)
            raise LabError(f"{node}: namespaces could not be set up: {stderr.decode().strip()}")
        anchor.stdout.close()
        if anchor.stderr is not None:
            anchor.stderr.close()
        self._record(node, "anchor", Proc.of(anchor))
        self._daemon(node, "zfs-fuse", ["zfs-fuse", "--no-daemon", "--no-kstat-mount"])
        self._wait(lambda: self._ok(node, ["zpool", "list"]), f"{node}: zfs-fuse to answer")
        pool = self.cluster().zfs_pool
        if state["pool_created"]:
            # -f: after a power loss the pool was never exported; only this node uses the file
            self._import(node, pool, node_dir, progress)
        else:
            self.run(
                node,
                [
                    "zpool",
                    "create",
                    "-m",
                    f"{ZFS_MOUNT_ROOT}/{pool}",
                    pool,
                    str(node_dir / "pool.img"),
                ],
            )
            self.run(node, ["zfs", "create", f"{pool}/hafs"])
            state["pool_created"] = True
            self._save()
        self._daemon(node, "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/hafs/sshd_config"])
        if carp:
            self._start_daemons(node)
            self._wait_for_agent(node)
        progress(
            f"node {node}: up ({state['impl']}, pool {pool}) in {time.monotonic() - began:.1f}s"
        )

    def _import(self, node: str, pool: str, node_dir: Path, progress: Progress) -> None:
        """Import the node's pool. A dataset that does not mount (say, files lie in its
        directory) does not stop the boot, as on a real host: the service daemon mounts a
        VIP's dataset before it serves it (:mod:`hafs.service.mounts`)."""
        imported = subprocess.run(
            [*self.enter(node), "zpool", "import", "-f", "-d", str(node_dir), pool],
            capture_output=True,
            text=True,
            check=False,
        )
        if imported.returncode == 0:
            return
        if not self._ok(node, ["zpool", "list", pool]):
            raise LabError(f"{node}: zpool import {pool}: {imported.stderr.strip()}")
        progress(f"node {node}: pool {pool} imported, but: {imported.stderr.strip()}")


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
