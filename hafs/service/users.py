"""The SMB users on a node: the same Unix users and uids everywhere, each VIP's passdb in sync.

Unix users are node-local (made once per boot, or when the configured users change); a VIP's
passdb lives in its dataset and moves with it, so it is brought in line whenever the VIP is
served or the configuration changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import subprocess
from pathlib import Path

from hafs.cluster import uid_of
from hafs.service import host
from hafs.service.config import ServiceConfig
from hafs.service.runtime import RUN_DIR, read_text
from hafs.service.samba import SambaInstance, add_user_argv, delete_user_argv

log = logging.getLogger("hafs.service")

GROUP, GID = "hafs", 60000


def _digest(config: ServiceConfig) -> str:
    return hashlib.sha256(json.dumps(sorted(config.users.items())).encode()).hexdigest()


def sync_node_users(config: ServiceConfig) -> None:
    """The shares' group and every configured user, on this node."""
    marker = RUN_DIR / "users.sha256"  # node-local: the Unix users done on this boot
    digest = _digest(config)
    if read_text(marker) != digest:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with open(RUN_DIR / "users.lock", "w") as lock:  # hooks of several vhids run at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            _create_group_and_users(config)
        marker.write_text(digest)


def sync_passdb(config: ServiceConfig, instance: SambaInstance) -> None:
    """The VIP's passdb holds exactly the configured users and passwords."""
    marker = Path(instance.config_file).parent / "hafs-users.sha256"  # moves with the passdb
    digest = _digest(config)
    if read_text(marker) != digest:
        _ensure_passdb(config, instance)
        marker.write_text(digest)


def _useradd_argv(user: str, uid: int) -> list[str]:
    if host.FREEBSD:
        return [
            "pw", "useradd", user, "-u", str(uid), "-g", GROUP,
            "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
        ]  # fmt: skip
    return ["useradd", "-M", "-N", "-u", str(uid), "-g", GROUP, "-s", "/usr/sbin/nologin", user]


def _create_group_and_users(config: ServiceConfig) -> None:
    if subprocess.run(["getent", "group", GROUP], capture_output=True, check=False).returncode:
        argv = (
            ["pw", "groupadd", GROUP, "-g", str(GID)]
            if host.FREEBSD
            else ["groupadd", "-g", str(GID), GROUP]
        )
        subprocess.run(argv, check=True, capture_output=True)
    for user in config.users:
        if subprocess.run(["id", "-u", user], capture_output=True, check=False).returncode:
            subprocess.run(
                _useradd_argv(user, uid_of(user, config.uids)), check=True, capture_output=True
            )


def _ensure_passdb(config: ServiceConfig, instance: SambaInstance) -> None:
    """Make the VIP's passdb hold exactly the configured users: add the new ones, set every
    password (a changed one takes effect) and delete users no longer configured."""
    listed = subprocess.run(
        ["pdbedit", f"--configfile={instance.config_file}", "-L"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    present = {line.split(":")[0] for line in listed.splitlines() if ":" in line}
    for user, password in config.users.items():
        subprocess.run(
            add_user_argv(instance, user),
            input=f"{password}\n{password}\n",
            capture_output=True,
            text=True,
            check=True,
        )
    for user in sorted(present - set(config.users)):
        subprocess.run(delete_user_argv(instance, user), capture_output=True, check=True)
        log.info(
            "%s: user %s is no longer configured: removed from the passdb", instance.name, user
        )
