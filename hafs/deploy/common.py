"""What every node's deploy shares: the target (model + node + settings) and the OS-neutral parts.

The target is read from pyinfra's own inventory with :func:`hafs.cluster.from_pyinfra`, so a
deploy sees exactly the cluster ``hafs check`` and ``hafs render`` see; a cluster that
``hafs check`` reports errors for is refused before anything is changed. The node is the
pyinfra host of the same name.

Deploy settings are host data (set them in ``group_data/all.py`` or per host):

``zfs_devices``
    vdev words for ``zpool create`` (``["ada1"]``, ``["mirror", "da1", "da2"]``). Without it
    the pool ``zfs_pool`` must already exist.
``zfs_package``
    Linux: the package with ``zpool``/``zfs`` (default ``zfsutils-linux``, Debian contrib,
    with DKMS; ``zfs-fuse`` in Debian main for labs and chroots).
``samba_package``
    default ``samba419`` on FreeBSD, ``samba`` on Linux.
``hafs_inventory``
    the inventory file, when pyinfra does not run from its directory (``secrets_file`` is
    found beside it); default ``inventory.py`` in pyinfra's working directory.
``hafs_start_services``
    default True. False for a node that is not running (an image, a chroot): then the deploy
    writes files, installs packages and enables services, but starts, restarts or loads
    nothing, and leaves the ZFS pool alone (ZFS needs its running kernel module or daemon).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.context import host, state
from pyinfra.operations import files, pip

import hafs
from hafs.check import check
from hafs.cluster import Cluster, Node, from_pyinfra
from hafs.deploy import ops
from hafs.errors import HafsError
from hafs.render import HAFS_BIN
from hafs.service import config as service_config
from hafs.service.transport import peer_key_options

SOURCE = Path(hafs.__file__).resolve().parents[1]
VENV = "/opt/hafs"
CONFIG_DIR = str(Path(service_config.DEFAULT_PATH).parent)  # /etc/hafs, root only
REPLICATION_KEY = service_config.DEFAULT_SSH_KEY  # where `hafs service` looks for it
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
DEFAULT_SAMBA = {"freebsd": "samba419", "linux": "samba"}
DEFAULT_ZFS_PACKAGE = "zfsutils-linux"


@dataclass(frozen=True)
class Settings:
    """The deploy's host data settings of one node (see the module docstring)."""

    start_services: bool
    zfs_devices: tuple[str, ...]
    zfs_package: str
    samba_package: str


@dataclass(frozen=True)
class Target:
    cluster: Cluster
    node: Node
    settings: Settings


def read_settings(node: Node, data: Mapping[str, Any]) -> Settings:
    where = f"host {node.name}"
    start = data.get("hafs_start_services", True)
    if not isinstance(start, bool):
        raise HafsError(f"{where}: hafs_start_services: must be True or False, got {start!r}")
    devices = data.get("zfs_devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, str) and d for d in devices):
        raise HafsError(
            f"{where}: zfs_devices: must be a list of zpool create words, e.g. ['ada1']"
        )
    return Settings(
        start_services=start,
        zfs_devices=tuple(devices),
        zfs_package=_package(data, "zfs_package", DEFAULT_ZFS_PACKAGE, where),
        samba_package=_package(data, "samba_package", DEFAULT_SAMBA[node.os], where),
    )


def _package(data: Mapping[str, Any], key: str, default: str, where: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise HafsError(f"{where}: {key}: must be a package name, got {value!r}")
    return value


def target() -> Target:
    """The cluster, this host's node and its settings; refuses a cluster with check errors."""
    data: dict[str, Any] = host.data.dict()  # type: ignore[no-untyped-call]
    default = Path(state.cwd or os.getcwd()) / "inventory.py"
    source = Path(str(data.get("hafs_inventory", default)))
    cluster = from_pyinfra(state.inventory, source)
    errors = [p for p in check(cluster) if p.level == "error"]
    if errors:
        raise HafsError(
            f"hafs check reports {len(errors)} error(s), deploying nothing; first: {errors[0]}"
        )
    node = cluster.node(host.name)
    return Target(cluster, node, read_settings(node, data))


@dataclass(frozen=True)
class SourceArchive:
    """This checkout as an sdist-shaped ``.tar.gz``: what pip installs on the node."""

    name: str
    data: bytes
    sha256: str


@cache
def source_archive() -> SourceArchive:
    """pyproject.toml, README.md and hafs/ of this checkout, packed reproducibly.

    Same source, same bytes (sorted, owner root, every timestamp 0), so an unchanged
    hafs is neither uploaded nor installed again. The node builds it with pip, which
    fetches the build backend and the dependencies from PyPI.
    """
    pyproject = SOURCE / "pyproject.toml"
    if not pyproject.is_file():
        raise HafsError(f"{SOURCE}: no pyproject.toml: deploy from a hafs source checkout")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    top = f"{project['name']}-{project['version']}"
    paths = [pyproject, SOURCE / "README.md"]
    paths += sorted(
        p for p in (SOURCE / "hafs").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in paths:
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{top}/{path.relative_to(SOURCE).as_posix()}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return SourceArchive(f"{top}.tar.gz", data, hashlib.sha256(data).hexdigest())


@deploy("hafs in /opt/hafs")
def install_hafs(python: str, site_packages: bool) -> OperationMeta:
    """hafs from this checkout in a venv, ``/usr/local/bin/hafs`` linked to it.

    Returns the install operation (it changes when hafs changed: restart what runs it).
    """
    archive = source_archive()
    remote = f"{VENV}/dist/{archive.name}"
    pip.venv(name="hafs venv", path=VENV, python=python, site_packages=site_packages)
    files.put(name="hafs source", src=io.BytesIO(archive.data), dest=remote)
    installed = ops.package_installed(
        name="hafs installed", venv=VENV, package=remote, digest=archive.sha256
    )
    files.link(name="hafs command", path=HAFS_BIN, target=f"{VENV}/bin/hafs")
    return installed


@deploy("ZFS pool and datasets")
def zfs_layout(cluster: Cluster, node: Node, settings: Settings) -> None:
    """The pool, ``<pool>/hafs`` and the dataset of every VIP this node is home of.

    Backups receive their replicas by replication, which creates them.
    """
    pool = cluster.zfs_pool
    ops.zpool(name=f"ZFS pool {pool}", pool=pool, vdevs=list(settings.zfs_devices))
    ops.zfs_filesystem(name=f"{pool}/hafs", dataset=f"{pool}/hafs")
    for vip in cluster.vips:
        if vip.home == node.name:
            dataset = f"{pool}/hafs/{vip.name}"
            ops.zfs_filesystem(name=dataset, dataset=dataset)


@deploy("hafs configuration")
def service_configuration(cluster: Cluster, node: Node) -> OperationMeta:
    """``/etc/hafs`` (0700) and its ``cluster.json`` (0600: SMB passwords), for ``hafs service``.

    Returns the cluster.json operation (restart what reads it when it changed).
    """
    files.directory(name=CONFIG_DIR, path=CONFIG_DIR, user="root", mode="700")
    return files.put(
        name=service_config.DEFAULT_PATH,
        src=io.StringIO(service_config.render(cluster, node)),
        dest=service_config.DEFAULT_PATH,
        user="root",
        mode="600",
        create_remote_dir=False,
    )


@deploy("replication ssh keys")
def replication_keys(cluster: Cluster, node: Node) -> OperationMeta:
    """An ed25519 key for root, every peer's key authorised for replication only.

    Each peer's key is restricted by :func:`peer_key_options`. Returns the sshd configuration
    operation (reload sshd when it changed).
    """
    options: dict[str, str] = {}
    for peer in cluster.nodes:
        if peer.name == node.name:
            continue
        if peer.address is None:
            raise HafsError(
                f"host {peer.name}: address: replication keys are limited to each peer's "
                "fixed address: set 'address'"
            )
        options[peer.name] = peer_key_options(HAFS_BIN, peer.name, peer.address.ip)
    ops.ssh_keypair(
        name="replication key", path=REPLICATION_KEY, comment=f"hafs-replication@{node.name}"
    )
    files.directory(name="/root/.ssh", path="/root/.ssh", mode="700")
    ops.authorized_peers(
        name="peers' replication keys authorised",
        path=AUTHORIZED_KEYS,
        key_path=REPLICATION_KEY,
        options=options,
    )
    return ops.sshd_for_replication(
        name="sshd admits root's forced-command keys and drops silent clients"
    )
