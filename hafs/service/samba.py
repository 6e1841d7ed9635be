"""One smbd instance per VIP: its smb.conf, rendered from a small dataclass, and its argv.

Pure: nothing here starts, stops or writes anything. Measured with Samba 4.17 and pysmb 1.2.15:

- The instance binds only its VIP (``interfaces = <vip>/32`` + ``bind interfaces only``), so
  several instances share port 445 on one node, one per VIP, and the node's own address is
  refused. The VIP must be present before smbd starts.
- pysmb speaks SMB 2.0/2.1 with NTLMv2: ``server min protocol = SMB2_02`` (4.17's default,
  pinned here because pysmb needs it); Samba's defaults do the rest (``ntlm auth =
  ntlmv2-only``, passdb ``tdbsam`` in the private dir).
- Persistent state (private dir: passdb, secrets; state directory: share ACLs, registry) lives on
  the VIP's dataset and moves with it. Volatile state (lock, cache, pid, ncalrpc dirs, log) lives
  on a node-local runtime dir: on the dataset it would be replicated, rolled back under a running
  smbd, and a read-only (fenced) dataset would make smbd drop every connection, whereas with this
  split smbd keeps serving reads and answers writes with STATUS_MEDIA_WRITE_PROTECTED.
- ``smbd --foreground`` calls setsid() itself and exits ("Failed to create session") if it is
  already a session leader: start it as a plain child, never with start_new_session. ``-D``
  forks first, so it works from anywhere. Never ``--no-process-group``.
- smbd starts samba-dcerpcd on the first RPC call (listing shares); it runs in its own session,
  outlives smbd, and only exits on its own about 60 s later, once its workers idled out. Stop it
  explicitly: :func:`stop_argvs` asks both through ``smbcontrol``, which finds them by the pid
  files in the instance's pid dir and messages them, so a stale pid file never signals an
  unrelated process.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import PurePosixPath

from hafs.errors import HafsError

_NETBIOS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,14}")
_SHARE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.$-]{0,79}")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_RESERVED_SHARES = {"global", "globals", "homes", "printers", "ipc$"}
# line breaks end the value, "%" starts a Samba macro, a trailing "\\" continues the line
_UNSAFE_PATH_CHARS = set("\n\r\0%\\")


class SambaConfigError(HafsError):
    """A value that cannot go into an smb.conf as given (bad name, path or user)."""


@dataclass(frozen=True)
class SambaShare:
    """One share: ``path`` on the VIP's dataset; ``valid_users`` empty means any known user."""

    name: str
    path: str
    writable: bool = True
    valid_users: tuple[str, ...] = ()


@dataclass(frozen=True)
class SambaDirs:
    """Where one instance keeps its files; every path absolute and its own."""

    private: str
    state: str
    lock: str
    cache: str
    pid: str
    ncalrpc: str
    log_file: str

    @classmethod
    def for_vip(cls, dataset_dir: str, runtime_dir: str) -> SambaDirs:
        """The layout hafs uses: persistent state under ``<dataset_dir>/samba`` (it moves with
        the VIP), volatile state under ``runtime_dir`` (node-local, e.g. ``/run/hafs/<vip>``)."""
        state = PurePosixPath(dataset_dir, "samba")
        run = PurePosixPath(runtime_dir)
        return cls(
            private=str(state / "private"),
            state=str(state / "state"),
            lock=str(run / "lock"),
            cache=str(run / "cache"),
            pid=str(run / "pid"),
            ncalrpc=str(run / "ncalrpc"),
            log_file=str(run / "log" / "smbd.log"),
        )


@dataclass(frozen=True)
class SambaInstance:
    """The smbd serving one VIP: ``name`` is its NetBIOS name (the same on every node)."""

    name: str
    vip: IPv4Address | IPv6Address
    shares: tuple[SambaShare, ...]
    dirs: SambaDirs
    config_file: str


def render_smb_conf(instance: SambaInstance) -> str:
    """The complete smb.conf of ``instance``; :class:`SambaConfigError` on an unsafe value."""
    _check(instance)
    dirs = instance.dirs
    lines = [
        f"# hafs: smbd instance for VIP {instance.name} ({instance.vip}). Generated; do not edit.",
        "[global]",
        f"netbios name = {instance.name}",
        "server string = %h",  # IPC$'s comment names the node serving: hafs verify reports it
        f"interfaces = {instance.vip}/{instance.vip.max_prefixlen}",
        "bind interfaces only = yes",
        "smb ports = 445",
        "disable netbios = yes",
        "server min protocol = SMB2_02",
        "load printers = no",
        "restrict anonymous = 2",  # no share list, no guest: every session is a known user
        "map to guest = never",
        f"private dir = {dirs.private}",
        f"state directory = {dirs.state}",
        f"lock directory = {dirs.lock}",
        f"cache directory = {dirs.cache}",
        f"pid directory = {dirs.pid}",
        f"ncalrpc dir = {dirs.ncalrpc}",
        f"log file = {dirs.log_file}",
    ]
    for share in instance.shares:
        lines += [
            "",
            f"[{share.name}]",
            f"path = {share.path}",
            f"read only = {'no' if share.writable else 'yes'}",
        ]
        if share.valid_users:
            lines.append(f"valid users = {' '.join(share.valid_users)}")
    return "\n".join(lines) + "\n"


def start_argv(instance: SambaInstance, *, foreground: bool) -> list[str]:
    """argv starting the instance's smbd: ``--foreground`` under a supervisor that keeps it as
    a plain child (no new session), else ``--daemon`` (``-D``: forks, finds by its pid file)."""
    mode = "--foreground" if foreground else "--daemon"
    return ["smbd", mode, f"--configfile={instance.config_file}"]


SMBD_SLICE = "hafs-smbd.slice"


def scoped_argv(instance: SambaInstance, argv: list[str]) -> list[str]:
    """``argv`` run by ``systemd-run`` in a transient scope of its own, in
    :data:`SMBD_SLICE`: the unit whose process starts smbd (the agent, whose hooks take a VIP
    over, or the service daemon, which restarts a dead smbd) may then be stopped or restarted
    without killing the VIP's smbd and its clients' sessions (a unit's stop kills its whole
    cgroup). The scope lives as long as the instance's processes, samba-dcerpcd included."""
    return [
        "systemd-run", "--scope", "--quiet", "--collect", f"--slice={SMBD_SLICE}",
        f"--description=hafs: smbd of VIP {instance.name}", "--", *argv,
    ]  # fmt: skip


def stop_argvs(instance: SambaInstance) -> list[list[str]]:
    """argvs stopping the instance, in order: smbd (and its client connections), then the
    samba-dcerpcd it spawned. Either fails harmlessly ("Can't find pid") if not running."""
    return [
        ["smbcontrol", f"--configfile={instance.config_file}", daemon, "shutdown"]
        for daemon in ("smbd", "samba-dcerpcd")
    ]


def reload_argv(instance: SambaInstance) -> list[str]:
    """argv making the running smbd re-read its smb.conf (shares added, removed or changed)."""
    return ["smbcontrol", f"--configfile={instance.config_file}", "smbd", "reload-config"]


def add_user_argv(instance: SambaInstance, user: str) -> list[str]:
    """argv adding (or updating) ``user`` in the instance's own passdb: feed the password twice
    on stdin (``f"{pw}\\n{pw}\\n"``). The Unix account ``user`` must exist on the node."""
    _check_user(user)
    return ["smbpasswd", "-c", instance.config_file, "-a", "-s", user]


def delete_user_argv(instance: SambaInstance, user: str) -> list[str]:
    """argv deleting ``user`` from the instance's own passdb."""
    _check_user(user)
    return ["pdbedit", f"--configfile={instance.config_file}", "-x", "-u", user]


def _check(instance: SambaInstance) -> None:
    if not _NETBIOS_RE.fullmatch(instance.name):
        raise SambaConfigError(
            f"VIP name {instance.name!r}: a NetBIOS name is 1-15 letters, digits or '-'"
        )
    for field, path in asdict(instance.dirs).items():
        _check_path(f"samba {field.replace('_', ' ')}", path)
    _check_path("smb.conf", instance.config_file)
    seen: set[str] = set()
    for share in instance.shares:
        key = share.name.lower()
        if not _SHARE_RE.fullmatch(share.name) or key in _RESERVED_SHARES:
            raise SambaConfigError(
                f"share name {share.name!r}: use 1-80 letters, digits or '_.$-', "
                f"not one of {', '.join(sorted(_RESERVED_SHARES))}"
            )
        if key in seen:
            raise SambaConfigError(f"share name {share.name!r} is used twice (case-insensitive)")
        seen.add(key)
        _check_path(f"share {share.name} path", share.path)
        for user in share.valid_users:
            _check_user(user)


def _check_path(what: str, path: str) -> None:
    if not path.startswith("/") or _UNSAFE_PATH_CHARS & set(path) or path != path.strip():
        raise SambaConfigError(
            f"{what} {path!r}: use an absolute path without line breaks, '%', '\\' or outer spaces"
        )


def _check_user(user: str) -> None:
    if not _USER_RE.fullmatch(user):
        raise SambaConfigError(
            f"user {user!r}: use 1-32 letters, digits or '_.-', not starting with '.' or '-'"
        )
