"""A VIP's own smbd: lay out its dataset and smb.conf, start it, keep it in line, stop it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hafs.service import host, users
from hafs.service.config import VipService
from hafs.service.runtime import RUN_DIR, ServiceError, read_text
from hafs.service.samba import (
    SambaInstance,
    reload_argv,
    render_smb_conf,
    scoped_argv,
    start_argv,
    stop_argvs,
)
from hafs.service.zfs import ZfsError

if TYPE_CHECKING:
    from hafs.service.node import NodeServices

log = logging.getLogger("hafs.service")

SMBD_READY_TIMEOUT = 10.0
SYSTEMD_BOOTED = Path("/run/systemd/system")  # sd_booted(3): systemd is init
SHARE_MODE = 0o2770  # setgid: new files get the shares' group


def start(services: NodeServices, vip: VipService) -> None:
    """Lay out the dataset, users and smb.conf, then start smbd and wait until it listens."""
    if services.smbd_pid(vip) is not None:
        return
    instance = services.instance(vip)  # (one `zfs get mountpoint`: the rest derives from it)
    users.sync_node_users(services.config)  # first: the shares' group
    lay_out(vip, instance)
    users.sync_passdb(services.config, instance)
    subprocess.run(launch_argv(instance), check=True, capture_output=True)
    deadline = time.monotonic() + SMBD_READY_TIMEOUT
    while not host.listens(vip.address):
        if time.monotonic() > deadline:
            raise ServiceError(f"{vip.name}: smbd does not listen on {vip.address}:445")
        time.sleep(0.02)


def launch_argv(instance: SambaInstance) -> list[str]:
    """How this node starts the instance's smbd: ``smbd -D``, in a scope of its own when
    systemd is init (a lab node has none: -D detaches it from the lab's daemons already)."""
    argv = start_argv(instance, foreground=False)
    return scoped_argv(instance, argv) if SYSTEMD_BOOTED.is_dir() else argv


def lay_out(vip: VipService, instance: SambaInstance) -> bool:
    """Samba's dirs, the share dirs and smb.conf; True if smb.conf changed. What is as it
    should be is left alone: a chown or chmod to the same values is a change to the dataset
    all the same (its ctime), which an idle VIP would then snapshot and send every round."""
    for directory in (instance.dirs.private, instance.dirs.state):
        Path(directory).mkdir(parents=True, exist_ok=True)
    for share in instance.shares:
        path = Path(share.path)
        path.mkdir(parents=True, exist_ok=True)
        found = path.stat()
        if (found.st_uid, found.st_gid) != (0, users.GID):
            os.chown(path, 0, users.GID)
        if stat.S_IMODE(found.st_mode) != SHARE_MODE:
            path.chmod(SHARE_MODE)
    runtime = RUN_DIR / "smb" / vip.name
    for sub in ("lock", "cache", "pid", "ncalrpc", "log"):
        (runtime / sub).mkdir(parents=True, exist_ok=True)
    text = render_smb_conf(instance)
    if read_text(Path(instance.config_file)) == text:
        return False
    Path(instance.config_file).write_text(text)
    return True


def refresh(services: NodeServices, vip: VipService) -> None:
    """Bring the served VIP in line with the configuration (a changed cluster.json): Unix
    users, shares and smb.conf (the running smbd re-reads it), passdb."""
    instance = services.instance(vip)
    users.sync_node_users(services.config)
    if lay_out(vip, instance):
        subprocess.run(reload_argv(instance), capture_output=True, check=False, timeout=10)
        log.info("%s: smb.conf changed: smbd reloaded it", vip.name)
    users.sync_passdb(services.config, instance)


def stop(services: NodeServices, vip: VipService) -> None:
    """Ask smbd and its samba-dcerpcd to shut down; kill what is left of the instance (all
    of it, when the pool does not answer: its smb.conf cannot be found then)."""
    with contextlib.suppress(ZfsError):
        if services.zfs.exists(services.dataset(vip)):
            instance = services.instance(vip)
            if Path(instance.config_file).exists():
                for argv in stop_argvs(instance):
                    subprocess.run(argv, capture_output=True, check=False, timeout=10)
    deadline = time.monotonic() + 5
    while services.smbd_pids(vip) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in services.smbd_pids(vip):  # did not stop: named by its own smb.conf, nothing else
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
