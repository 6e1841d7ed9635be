"""Facts the hafs deploys read: each runs one command and parses its output.

pyinfra's own facts cover files, packages and services; these cover what they do not,
or do not do portably across FreeBSD and Linux:

- :class:`ConfAssignments`: the ``key=value`` assignments of a shell-style file
  (``/etc/rc.conf``, ``/boot/loader.conf``, ``/etc/sysctl.conf``), last one wins like sh.
- :class:`KernelModuleLoaded`, :class:`SysctlValue`: FreeBSD's ``kldstat``/``sysctl``
  (pyinfra's ``KernelModules`` reads ``/proc/modules``, which FreeBSD has not, and its
  ``Sysctl`` reads every setting where one is wanted).
- :class:`ZfsPoolNames`, :class:`ZfsFilesystemNames`: names only, from ``zpool list`` and
  ``zfs list`` (pyinfra's ZFS facts require a Linux ``zfs`` kernel module, so they answer
  nothing on FreeBSD or zfs-fuse).
- :class:`SshdOption`: sshd's effective value of one option (``sshd -T``).
- :class:`SystemdUnitEnabled`: ``systemctl is-enabled``, which reads unit files and so works
  without a running systemd (a chroot), unlike pyinfra's facts that ask the manager.

Every command succeeds (``|| true``) when the thing is absent: pyinfra fails a host whose
fact command fails, and absence is an answer here, not an error.
"""

from __future__ import annotations

import re
import shlex

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.facts import FactBase

_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=(.*)$")


def parse_assignment(line: str) -> tuple[str, str] | None:
    """``key=value`` of one line as sh reads it (quotes removed, comment dropped), or None."""
    match = _ASSIGNMENT.match(line)
    if match is None:
        return None
    key, raw = match.groups()
    try:
        words = shlex.split(raw, comments=True)
    except ValueError:  # unbalanced quotes: compare the raw text, which never matches ours
        return key, raw
    return key, " ".join(words)


class ConfAssignments(FactBase[dict[str, str]]):
    """The assignments of a shell-style config file: ``{key: value}``; ``{}`` if absent."""

    default = dict

    def command(self, path: str) -> StringCommand:
        return StringCommand("cat", QuoteString(path), "2>/dev/null", "||", "true")

    def process(self, output: list[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        for line in output:
            parsed = parse_assignment(line)
            if parsed is not None:
                result[parsed[0]] = parsed[1]
        return result


class KernelModuleLoaded(FactBase[bool]):
    """Whether a FreeBSD kernel module is loaded (or compiled in): ``kldstat -q -m``."""

    default = bool

    def command(self, module: str) -> StringCommand:
        return StringCommand(
            "kldstat", "-q", "-m", QuoteString(module), "&&", "echo", "loaded", "||", "true"
        )

    def process(self, output: list[str]) -> bool:
        return output == ["loaded"]


class SysctlValue(FactBase[str | None]):
    """The live value of one sysctl, as text; None when the kernel does not have it."""

    def command(self, key: str) -> StringCommand:
        return StringCommand("sysctl", "-n", QuoteString(key), "2>/dev/null", "||", "true")

    def process(self, output: list[str]) -> str | None:
        return "\n".join(output).strip() or None


class ZfsPoolNames(FactBase[list[str]]):
    """Names of the imported ZFS pools; ``[]`` when there are none or ZFS is not running."""

    default = list

    def command(self) -> str:
        return "zpool list -H -o name 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class ZfsFilesystemNames(FactBase[list[str]]):
    """Names of the ZFS filesystems (not snapshots or volumes) of every imported pool."""

    default = list

    def command(self) -> str:
        return "zfs list -H -o name -t filesystem 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class SystemdUnitEnabled(FactBase[str]):
    """``systemctl is-enabled`` of one unit: enabled, disabled, masked, ...; ``""`` if unknown."""

    default = str

    def command(self, unit: str) -> StringCommand:
        return StringCommand(
            "systemctl", "is-enabled", QuoteString(unit), "2>/dev/null", "||", "true"
        )

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


class SshdOption(FactBase[str | None]):
    """sshd's effective value of one option, lower case (``sshd -T``); None if unknown."""

    def command(self, option: str) -> StringCommand:
        program = QuoteString(f'$1 == "{option.lower()}" {{print $2}}')
        return StringCommand("sshd", "-T", "2>/dev/null", "|", "awk", program, "||", "true")

    def process(self, output: list[str]) -> str | None:
        return output[0].strip().lower() if output else None
