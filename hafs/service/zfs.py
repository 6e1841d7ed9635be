"""The one wrapper over the ``zfs``/``zpool`` command-line tools (no libzfs bindings).

Theory of operation: every method builds one argv, prepends the command prefix, runs it through
the injected runner and parses its output. The prefix says *where* the command runs: ``[]`` on a
real host, ``["nsenter", "--mount=/proc/<pid>/ns/mnt", "--"]`` for a lab node whose zfs-fuse
daemon lives in its own mount namespace (its control socket is ``/run/zfs/zfs_socket`` *in that
namespace*), or an ssh command. Streams are not run here: :meth:`Zfs.send_command` and
:meth:`Zfs.recv_command` return argv lists (prefix included) so the caller pipes one into the
other, across namespaces or hosts.

Rules, measured on Debian's zfs-fuse (pool version 23); the commands used are the subset that
OpenZFS and FreeBSD's zfs accept as well:

- Only options pool version 23 has: no ``-p`` on ``zfs list`` (``zfs get -p`` works), no
  bookmarks, no resumable receive (``recv -s``), no ``send -n``. Snapshots are ordered by
  ``createtxg``; ``creation`` has a one-second resolution.
- A receive is all or nothing: a stream cut mid-way (sender killed) fails the receive and leaves
  no partial snapshot, dataset or ``%recv`` clone behind, so every listed snapshot is complete.
  On zfs-fuse, killing the ``zfs recv`` process does *not* abort it (the daemon holds the
  stream and finishes it if more arrives): to abort, cut the stream.
- A mounted writable replica is "modified since the most recent snapshot" after a mere read
  (atime), which refuses a plain incremental receive: keep replicas ``readonly=on`` or receive
  with ``-F`` (the default here), which first rolls the replica back to its newest snapshot.
- zfs-fuse keeps the kernel's cached pages of a mounted replica across a receive: a file read
  before can show its old content afterwards (same size) until the dataset is remounted.
  ``zfs rollback`` remounts, so takeover rolls a replica back, even to the snapshot just received.
- Killing a ``zfs recv`` process once its stream has arrived leaves the received dataset in
  place but *not mounted* (the mount is the command's last step): check ``mounted`` before
  serving (:mod:`hafs.service.mounts`).
- Every failure raises :class:`ZfsError`: one line with the command and the tool's message.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from hafs.errors import HafsError

COMMAND_TIMEOUT = 120.0
BUSY_WAIT = 5.0  # seconds a rename or destroy waits for a dataset zfs says is busy
EMPTY_STREAM = 1024  # bytes: an incremental stream no longer than this carries no change
_MISSING = "dataset does not exist"


class ZfsError(HafsError):
    """A ``zfs``/``zpool`` command failed: one line, the full argv run (prefix included, so it
    says which node) and the tool's message."""

    exit_code = 1

    def __init__(self, argv: Sequence[str], message: str) -> None:
        self.argv = list(argv)
        self.message = " ".join(message.split())
        super().__init__(f"{shlex.join(self.argv)}: {self.message}")

    @property
    def missing(self) -> bool:
        """The dataset (or snapshot) named does not exist."""
        return _MISSING in self.message


class Runner(Protocol):
    """Runs one argv to completion; returns its exit code, stdout and stderr as text, and the
    argv itself as ``args`` (as :func:`subprocess.run` does)."""

    def __call__(self, argv: Sequence[str], /) -> subprocess.CompletedProcess[str]: ...


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """The default :class:`Runner`: a local subprocess, stdin closed, :data:`COMMAND_TIMEOUT`."""
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT,
    )


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of ``dataset``: ``name`` is the part after ``@``."""

    dataset: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{self.dataset}@{self.name}"


class Zfs:
    """``zfs``/``zpool`` commands run as ``prefix + argv`` through ``runner``."""

    def __init__(self, prefix: Sequence[str] = (), runner: Runner = run_command) -> None:
        self.prefix = list(prefix)
        self.runner = runner
        self.has_written = True  # until zfs says it has no "written@" property (zfs-fuse)

    def _run(self, *argv: str) -> str:
        """Run ``argv`` under the prefix; return stdout, or raise :class:`ZfsError`."""
        proc = self._call(argv)
        if proc.returncode != 0:
            raise _failed(proc)
        return proc.stdout

    def _run_when_free(self, *argv: str) -> str:
        """:meth:`_run`, retried for up to :data:`BUSY_WAIT` s while zfs says "dataset is
        busy": zfs-fuse goes on sending a stream for a moment after its reader went away
        (:meth:`unchanged` reads only the head of one), and holds the dataset meanwhile."""
        deadline = time.monotonic() + BUSY_WAIT
        while True:
            try:
                return self._run(*argv)
            except ZfsError as exc:
                if "dataset is busy" not in exc.message or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def _call(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        full = [*self.prefix, *argv]
        try:
            return self.runner(full)
        except subprocess.TimeoutExpired as exc:
            raise ZfsError(full, f"timed out after {exc.timeout:g}s") from exc
        except OSError as exc:
            raise ZfsError(full, f"cannot run: {exc.strerror or exc}") from exc

    # datasets

    def exists(self, name: str) -> bool:
        """Whether the dataset or snapshot ``name`` exists."""
        proc = self._call(("zfs", "list", "-H", "-o", "name", name))
        if proc.returncode == 0:
            return True
        if _MISSING in proc.stderr:
            return False
        raise _failed(proc)

    def list_datasets(self, root: str) -> list[str]:
        """``root`` and every filesystem below it, parents before children."""
        out = self._run("zfs", "list", "-H", "-o", "name", "-t", "filesystem", "-r", root)
        return out.splitlines()

    def create(self, name: str, props: Mapping[str, str] | None = None) -> None:
        """Create filesystem ``name`` (and missing parents) with ``props`` set on it."""
        options = [arg for key, value in (props or {}).items() for arg in ("-o", f"{key}={value}")]
        self._run("zfs", "create", "-p", *options, name)

    def set(self, name: str, prop: str, value: str) -> None:
        """Set ``prop=value`` on ``name`` (e.g. ``readonly=on`` to fence or make a replica)."""
        self._run("zfs", "set", f"{prop}={value}", name)

    def get(self, name: str, prop: str) -> str:
        """The value of ``prop`` on ``name``, exact (``-p``: bytes, seconds), ``-`` if none.

        zfs-fuse reports ``readonly`` of a *mounted* filesystem as ``off`` (source ``temporary``)
        even when it is on and enforced: its mounts show ``rw`` in the mount table. Do not read
        ``readonly`` back there; set it, and test a write if in doubt.
        """
        return self.values(name, prop)[0]

    def values(self, name: str, *props: str) -> list[str]:
        """The values of ``props`` on ``name``, in their order, as :meth:`get` gives one: one
        ``zfs`` process for all of them."""
        out = self._run("zfs", "get", "-H", "-p", "-o", "value", ",".join(props), name)
        return out.rstrip("\n").split("\n")

    def inherit(self, name: str, prop: str) -> None:
        """Clear ``prop`` set on ``name`` itself (a user property: gone)."""
        self._run("zfs", "inherit", prop, name)

    def having(self, root: str, prop: str) -> dict[str, str]:
        """Every dataset from ``root`` down with ``prop`` set on it -> its value (one call)."""
        out = self._run("zfs", "get", "-H", "-r", "-s", "local", "-o", "name,value", prop, root)
        pairs = (line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        return {name: value for name, value in pairs if "@" not in name}

    def user_properties(self, name: str) -> dict[str, str]:
        """The user properties (``module:name``) set on ``name`` itself, in one call."""
        out = self._run("zfs", "get", "-H", "-s", "local", "-o", "property,value", "all", name)
        pairs = (line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        return {key: value for key, value in pairs if ":" in key}

    # snapshots

    def snapshot(self, snapshot: str) -> None:
        """Take ``dataset@name``."""
        self._run("zfs", "snapshot", _snapshot_name("snapshot", snapshot))

    def snapshots(self, dataset: str) -> list[Snapshot]:
        """The snapshots of ``dataset`` itself (not of its children), oldest first.

        Ordered by ``createtxg`` (``creation`` has a one-second resolution); zfs-fuse prints
        that column in human units past 1000 ("1.11K") and has no ``list -p``, so the value
        is not read: ``-s createtxg`` sorts on the number itself.
        """
        out = self._run(
            "zfs", "list", "-H", "-o", "name", "-s", "createtxg",
            "-t", "snapshot", "-d", "1", dataset,
        )  # fmt: skip
        result = []
        for full in out.splitlines():
            parent, _, name = full.partition("@")
            result.append(Snapshot(parent, name))
        return result

    def unchanged(self, older: str, newer: str) -> bool:
        """Did nothing change in the dataset from snapshot ``older`` to ``newer``?

        OpenZFS answers with the ``written@<older>`` property of ``newer``. zfs-fuse has no
        such property; there the incremental stream between the two tells: measured on
        zfs-fuse, one with no change is 624 bytes (begin and end records), any change to a
        file or directory (a ``touch``, a ``chmod`` to the same mode included) makes it
        kilobytes. Only its first :data:`EMPTY_STREAM` + 1 bytes are read. A zfs that
        refused the property once is not asked again (the service daemon compares every
        round).
        """
        _snapshot_name("send", older)
        if self.has_written:
            proc = self._call(("zfs", "get", "-H", "-p", "-o", "value", f"written@{older}", newer))
            if proc.returncode == 0 and proc.stdout.strip().isdigit():
                return int(proc.stdout) == 0
            self.has_written = "invalid property" not in proc.stderr
        argv = self.send_command(newer, older, intermediates=False)
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        ) as sender:
            assert sender.stdout is not None
            head = sender.stdout.read(EMPTY_STREAM + 1)
            sender.kill()
        if not head:
            raise ZfsError(argv, "no stream: cannot compare the snapshots")
        return len(head) <= EMPTY_STREAM

    def destroy_snapshot(self, snapshot: str) -> None:
        """Destroy ``dataset@name`` (pruning); refuses anything that is not a snapshot name."""
        self._run_when_free("zfs", "destroy", _snapshot_name("destroy", snapshot))

    def unmount(self, dataset: str) -> None:
        """Unmount ``dataset`` even if busy (-f): its server is stopped before this."""
        self._run("zfs", "unmount", "-f", dataset)

    def rename(self, dataset: str, new_name: str) -> None:
        """Rename a dataset (a diverged replica is kept aside, never destroyed)."""
        self._run_when_free("zfs", "rename", dataset, new_name)

    def mount(self, dataset: str) -> None:
        self._run("zfs", "mount", dataset)

    def mounted(self, dataset: str) -> bool:
        """Is ``dataset`` mounted? (A killed ``zfs recv`` can leave it unmounted.)"""
        return self.get(dataset, "mounted") == "yes"

    def clone(self, snapshot: str, dataset: str) -> None:
        """A new filesystem ``dataset`` sharing every block of ``snapshot`` (nothing copied)."""
        self._run("zfs", "clone", _snapshot_name("clone", snapshot), dataset)

    def promote(self, clone: str) -> None:
        """Make ``clone`` own its origin's history up to the origin snapshot; the former
        parent becomes a clone of it (how a diverged copy is kept aside at no cost)."""
        self._run("zfs", "promote", clone)

    def destroy_recursive(self, dataset: str) -> None:
        """Destroy ``dataset`` with its snapshots (an operator's discard of a kept copy)."""
        if "/" not in dataset or "@" in dataset:
            raise ZfsError(("zfs", "destroy", "-r", dataset), "refused: not a child dataset")
        self._run_when_free("zfs", "destroy", "-r", dataset)

    def rollback(self, snapshot: str) -> None:
        """Roll the dataset back to ``snapshot``, its newest, discarding changes made since.

        zfs refuses when newer snapshots exist (``-r`` would destroy them): hafs never does
        that; a diverged replica's newer snapshots are kept aside first
        (:mod:`hafs.service.divergence`).
        """
        self._run("zfs", "rollback", _snapshot_name("rollback", snapshot))

    # streams

    def send_command(
        self, snapshot: str, incremental_from: str | None = None, *, intermediates: bool = True
    ) -> list[str]:
        """argv writing ``snapshot`` as a stream to stdout: full, or the delta from an older one.

        ``incremental_from`` is a snapshot of the same dataset, ``dataset@name`` or ``@name``.
        ``intermediates`` (``-I``, replication): the snapshots in between go too, so a node
        that receives from a new holder gets every snapshot the old one took: else another
        replica that has them would take them for its own (a false divergence).
        """
        flag = "-I" if intermediates else "-i"
        base = [] if incremental_from is None else [flag, incremental_from]
        return [*self.prefix, "zfs", "send", *base, _snapshot_name("send", snapshot)]

    def recv_command(self, dataset: str, *, force: bool = True) -> list[str]:
        """argv receiving a stream on stdin into ``dataset``.

        ``force`` (``-F``) first rolls ``dataset`` back to its newest snapshot, so reads (atime)
        or stray writes on the replica since then do not refuse the incremental.
        """
        flags = ["-F"] if force else []
        return [*self.prefix, "zfs", "recv", *flags, dataset]

    # pools

    def zpool_create_file(self, pool: str, path: str, size: int, mountpoint: str) -> None:
        """Create a sparse file of ``size`` bytes at ``path`` (which must not exist) and a pool
        ``pool`` on it, mounted at ``mountpoint``: the lab's and a test host's disk."""
        self._run(
            "sh", "-c", 'set -C && : > "$1" && truncate -s "$2" "$1"', "zpool-file", path, str(size)
        )
        self._run("zpool", "create", "-m", mountpoint, pool, path)

    def pool_health(self, pool: str, timeout: float) -> str:
        """``ONLINE``, ``DEGRADED``, ``FAULTED``, ...; raises when the pool does not answer
        within ``timeout`` seconds (a dead zfs-fuse, a hung pool)."""
        argv = [*self.prefix, "zpool", "list", "-H", "-o", "health", pool]
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise ZfsError(argv, f"no answer within {timeout:g}s") from None
        except OSError as exc:
            raise ZfsError(argv, f"cannot run: {exc.strerror or exc}") from exc
        if proc.returncode != 0:
            raise _failed(proc)
        return proc.stdout.strip()

    def zpool_import(self, pool: str, search_dir: str | None = None) -> None:
        """Import ``pool``, looking for its devices in ``search_dir`` (file vdevs) if given.

        zfs-fuse does not stop a pool being imported by two daemons at once: only import a pool
        whose previous holder exported it or is known dead.
        """
        where = [] if search_dir is None else ["-d", search_dir]
        self._run("zpool", "import", *where, pool)

    def zpool_export(self, pool: str) -> None:
        """Unmount and export ``pool``; fails while a process still uses one of its mounts."""
        self._run("zpool", "export", pool)


def _failed(proc: subprocess.CompletedProcess[str]) -> ZfsError:
    return ZfsError(proc.args, proc.stderr.strip() or f"exit status {proc.returncode}")


def _snapshot_name(verb: str, snapshot: str) -> str:
    """``snapshot`` if it is ``dataset@name``; otherwise the ``zfs verb`` is refused here."""
    dataset, at, name = snapshot.partition("@")
    if not (dataset and at and name) or "@" in name:
        raise ZfsError(("zfs", verb, snapshot), "not a snapshot name (dataset@name)")
    return snapshot
