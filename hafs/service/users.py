"""The SMB users on a node: the same Unix users and uids everywhere, each VIP's passdb in sync.

Unix users are node-local (made once per boot, or when the configured users change); a VIP's
passdb lives in its dataset and moves with it, so it is brought in line whenever the VIP is
served or the configuration changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import subprocess
from pathlib import Path

from hafs.cluster import uid_of
from hafs.secretfile import private_key, write_private
from hafs.service import host
from hafs.service.config import ServiceConfig
from hafs.service.runtime import RUN_DIR, read_text
from hafs.service.samba import SambaInstance, add_user_argv, delete_user_argv

log = logging.getLogger("hafs.service")

GROUP, GID = "hafs", 60000


def _digest(config: ServiceConfig, key: Path) -> str:
    """The configured users and passwords as an HMAC-SHA256 under the random ``key`` file: it
    tells when they change, and nobody can test guessed passwords against it."""
    users = json.dumps(sorted(config.users.items())).encode()
    return hmac.new(private_key(key), users, hashlib.sha256).hexdigest()


def sync_node_users(config: ServiceConfig) -> None:
    """The shares' group and every configured user, on this node."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    marker = RUN_DIR / "users.sha256"  # node-local: the Unix users done on this boot
    digest = _digest(config, RUN_DIR / "users.key")
    if read_text(marker) != digest:
        with open(RUN_DIR / "users.lock", "w") as lock:  # hooks of several vhids run at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            _create_group_and_users(config)
        write_private(marker, digest.encode())


def sync_passdb(config: ServiceConfig, instance: SambaInstance) -> None:
    """The VIP's passdb holds exactly the configured users and passwords."""
    state = Path(instance.config_file).parent  # moves with the passdb, and so do key and marker
    marker = state / "hafs-users.sha256"
    digest = _digest(config, state / "hafs-users.key")
    if read_text(marker) != digest:
        _ensure_passdb(config, instance)
        write_private(marker, digest.encode())


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
