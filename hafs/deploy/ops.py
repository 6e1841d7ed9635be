"""Operations the hafs deploys use where pyinfra's own do not converge or do not fit.

Each is a small generator in pyinfra's style: read a fact, compare, yield only the commands
that change something, so a second run yields nothing. pyinfra runs the generators again at
execution time, so an operation sees what earlier operations of the same run did (the
replication keys rely on that: peers' keys are read after every node has generated its own).

Why not pyinfra's own:

- ``freebsd.sysrc`` skips a key that has any value (or always rewrites it with
  ``overwrite=True``): :func:`sysrc_settings` compares values and sets only what differs.
- ``sysrc`` refuses names with dots, which loader.conf and sysctl.conf tunables have
  (``vfs.maxbcachebuf``): :func:`conf_lines` keeps such files as plain ``key=value`` lines.
- ``files.line`` would need one operation and one regex per key.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence

from pyinfra import logger
from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.api.operation import operation
from pyinfra.context import host, state
from pyinfra.facts.files import File, FileContents, FindInFile

from hafs.deploy.facts import (
    ConfAssignments,
    KernelModuleLoaded,
    SshdOption,
    SysctlValue,
    SystemdUnitEnabled,
    ZfsFilesystemNames,
    ZfsPoolNames,
    parse_assignment,
)

Commands = Generator[StringCommand, None, None]


def delete_lines(path: str, regex: str) -> StringCommand:
    """Delete the lines of ``path`` matching the basic ``regex`` (no ``/`` in it).

    ``sed -i`` takes a backup suffix on BSD and GNU alike only when it is attached.
    """
    suffix = ".hafs-bak"
    return StringCommand(
        "sed",
        f"-i{suffix}",
        "-e",
        QuoteString(f"/{regex}/d"),
        QuoteString(path),
        "&&",
        "rm",
        "-f",
        QuoteString(path + suffix),
    )


@operation()
def sysrc_settings(settings: dict[str, str], path: str = "/etc/rc.conf") -> Commands:
    """Each ``key=value`` of ``settings`` is set in the rc.conf-style ``path``, via sysrc."""
    current = host.get_fact(ConfAssignments, path=path)
    for key, value in settings.items():
        if current.get(key) != value:
            yield StringCommand("sysrc", "-f", QuoteString(path), QuoteString(f"{key}={value}"))


@operation()
def sysrc_removed(pattern: str, path: str = "/etc/rc.conf") -> Commands:
    """No key of ``path`` fully matches the Python regex ``pattern`` (removed via sysrc -x)."""
    current = host.get_fact(ConfAssignments, path=path)
    for key in current:
        if re.fullmatch(pattern, key):
            yield StringCommand("sysrc", "-f", QuoteString(path), "-x", QuoteString(key))


@operation()
def conf_lines(path: str, lines: Sequence[str]) -> Commands:
    """Each ``key=value`` line is the one assignment of its key in ``path``, verbatim.

    A key with another value loses every assignment it had, then the line is appended;
    a missing key is appended. Other lines of the file are left alone.
    """
    current = host.get_fact(ConfAssignments, path=path)
    for line in lines:
        parsed = parse_assignment(line)
        if parsed is None:
            raise OperationError(f"{path}: not a key=value line: {line!r}")
        key, value = parsed
        if key in current and current[key] == value:
            continue
        if key in current:
            yield delete_lines(path, rf"^[[:space:]]*{re.escape(key)}[[:space:]]*=")
        yield StringCommand("echo", QuoteString(line), ">>", QuoteString(path))


@operation()
def kernel_module(module: str) -> Commands:
    """The FreeBSD kernel module is loaded (``kldload``), now; loader.conf covers boots."""
    if not host.get_fact(KernelModuleLoaded, module=module):
        yield StringCommand("kldload", QuoteString(module))


@operation()
def sysctl_value(key: str, value: str) -> Commands:
    """The live sysctl has ``value`` (sysctl.conf, see :func:`conf_lines`, covers boots)."""
    if host.get_fact(SysctlValue, key=key) != value:
        yield StringCommand("sysctl", QuoteString(f"{key}={value}"))


@operation()
def zpool(pool: str, vdevs: Sequence[str]) -> Commands:
    """The pool exists; created from ``vdevs`` (zpool create's words) when it does not."""
    if pool in host.get_fact(ZfsPoolNames):
        return
    if not vdevs:
        raise OperationError(f"ZFS pool {pool!r} does not exist and no zfs_devices to create it")
    yield StringCommand("zpool", "create", QuoteString(pool), *[QuoteString(v) for v in vdevs])


@operation()
def zfs_filesystem(dataset: str) -> Commands:
    """The ZFS filesystem exists (its parent must exist); nothing else about it is changed."""
    if dataset not in host.get_fact(ZfsFilesystemNames):
        yield StringCommand("zfs", "create", QuoteString(dataset))


@operation()
def ssh_keypair(path: str, comment: str) -> Commands:
    """An ed25519 key pair without passphrase at ``path`` (+ .pub), generated if missing."""
    if host.get_fact(File, path=path) is None:
        yield StringCommand(
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            QuoteString(""),
            "-C",
            QuoteString(comment),
            "-f",
            QuoteString(path),
        )


AUTHORIZED_MARK = "hafs-replication@"


def authorized_line(options: str, public_key: str, peer: str) -> str:
    """The authorized_keys line of ``peer``: ``options type base64 hafs-replication@peer``."""
    kind, blob = public_key.split()[:2]
    return f"{options} {kind} {blob} {AUTHORIZED_MARK}{peer}"


@operation()
def authorized_peers(path: str, key_path: str, options: dict[str, str]) -> Commands:
    """``path`` authorises the replication key of every peer (``options``: name -> options).

    Each peer's public key is read from ``key_path``.pub *on that peer*, when this operation
    runs: an earlier operation generated it on every host. A peer without a key (its deploy
    failed before, or pyinfra is only detecting changes) is left out, with a warning when
    executing; the next run adds it. Lines of other keys in ``path`` are kept; the hafs lines
    (comment ``hafs-replication@<peer>``) are rewritten when they differ from the wanted set.
    """
    wanted: list[str] = []
    for peer, peer_options in options.items():
        public = state.inventory.get_host(peer).get_fact(FileContents, path=f"{key_path}.pub")
        if public:
            wanted.append(authorized_line(peer_options, public[0], peer))
        elif state.is_executing:
            host.log_styled(
                f"{peer}: no replication key {key_path}.pub yet: not authorised this run",
                fg="yellow",
                log_func=logger.warning,
            )
    current = host.get_fact(FileContents, path=path) or []
    ours = [line for line in current if f" {AUTHORIZED_MARK}" in line]
    if ours == wanted:
        return
    if ours:
        yield delete_lines(path, f" {AUTHORIZED_MARK}[^ ]*$")
    if wanted:
        yield StringCommand(
            "umask",
            "077",
            "&&",
            "printf",
            QuoteString("%s\\n"),
            *[QuoteString(line) for line in wanted],
            ">>",
            QuoteString(path),
        )


@operation()
def package_installed(venv: str, package: str, digest: str) -> Commands:
    """The package file (and its dependencies) is installed in ``venv``, recorded by sha256.

    The first pip install brings the dependencies; the second replaces the package itself
    even when its version did not change. The digest is written last, so an install that
    failed half-way is redone next run.
    """
    marker = f"{venv}/installed.sha256"
    if host.get_fact(FileContents, path=marker) == [digest]:
        return
    pip = [f"{venv}/bin/pip", "install", "--quiet", "--disable-pip-version-check"]
    yield StringCommand(*pip, QuoteString(package))
    yield StringCommand(*pip, "--no-deps", "--force-reinstall", QuoteString(package))
    yield StringCommand("echo", digest, ">", QuoteString(marker))


@operation()
def unit_enabled(unit: str, enabled: bool = True) -> Commands:
    """The systemd unit is enabled (or disabled), from its unit files: works in a chroot."""
    current = host.get_fact(SystemdUnitEnabled, unit=unit)
    if enabled and current not in ("enabled", "static", "alias"):
        yield StringCommand("systemctl", "enable", QuoteString(unit))
    elif not enabled and current == "enabled":
        yield StringCommand("systemctl", "disable", QuoteString(unit))


# sshd options replication needs: (option, its effective value that is wrong, lines to set)
SSHD_NEEDS = (
    # FreeBSD's default is ``no``; replication logs in as root with forced-command keys
    ("PermitRootLogin", "no", ("PermitRootLogin forced-commands-only",)),
    # default 0: a receive whose sender lost power would hold its VIP's lock for hours (TCP
    # keepalive), and every later send of that VIP to this node would wait behind it
    ("ClientAliveInterval", "0", ("ClientAliveInterval 2", "ClientAliveCountMax 3")),
)


@operation()
def sshd_for_replication(config: str = "/etc/ssh/sshd_config") -> Commands:
    """sshd admits root's forced-command keys and drops a client that went silent.

    An option whose effective value (``sshd -T``) is the wrong one :data:`SSHD_NEEDS` names
    gets its lines first in ``config`` (sshd takes an option's first value, and no ``Match``
    block is open there); any other effective value is left alone. An explicit line with the
    wrong value is the administrator's: refused with one line instead of overridden.
    """
    lines: list[str] = []
    for option, wrong, wanted in SSHD_NEEDS:
        if host.get_fact(SshdOption, option=option) != wrong.lower():
            continue
        pattern = rf"^[[:space:]]*{option}[[:space:]]"
        if host.get_fact(FindInFile, path=config, pattern=pattern):
            raise OperationError(
                f"{config}: {option} {wrong}: replication needs {wanted[0]}: set it"
            )
        lines += wanted
    if not lines:
        return
    staged = f"{config}.hafs-new"
    yield StringCommand(
        "{",
        *(part for line in lines for part in ("echo", QuoteString(line), ";")),
        "cat",
        QuoteString(config),
        ";",
        "}",
        ">",
        QuoteString(staged),
        "&&",
        "mv",
        QuoteString(staged),
        QuoteString(config),
    )
