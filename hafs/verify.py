"""`hafs verify`: every VIP serves its shares over SMB, checked the way a client sees it.

Theory of operation
-------------------
For every VIP of the model, one SMB session as the cluster's ``check_user``:

1. **connect** to the VIP on port 445 (NTLMv2, direct TCP) with the VIP's name as the server name;
2. **list** the shares: the set (without ``IPC$`` and other special shares) must equal the VIP's
   shares in the model, nothing missing, nothing extra. The ``IPC$`` comment names the node
   that answered: every instance's smb.conf has ``server string = %h``, and Samba lists
   ``IPC$`` as ``IPC Service (<server string>)``, so the holder is known over SMB alone;
3. per share: a writable share gets a **canary** file written, read back, compared and deleted;
   a read-only share gets its root directory listed.

Every step is timed. The VIPs are checked in parallel (one thread each), so a whole cluster
takes about as long as its slowest VIP. A VIP passes when every step succeeded; any problem is
one line naming the VIP and the share.

The SMB calls live in one small adapter (:class:`PysmbConnector` / :class:`PysmbSession`)
behind the :class:`SmbSession` protocol; everything else here is plain logic, tested with a
fake session. Errors of the adapter are :class:`SmbError`: one line, with the NT status name
when the server answered one.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from hafs.cluster import Cluster, Share, Vip
from hafs.errors import HafsError
from hafs.table import table

SMB_PORT = 445
CLIENT_NAME = "hafs-verify"
CANARY_PREFIX = ".hafs-verify-"
_IPC_COMMENT = re.compile(r"IPC Service \((?P<host>[^)]*)\)")

# NT status codes a check meets, by name ([MS-ERREF] 2.3.1)
NT_STATUS = {
    0xC0000022: "STATUS_ACCESS_DENIED",
    0xC0000034: "STATUS_OBJECT_NAME_NOT_FOUND",
    0xC000003A: "STATUS_OBJECT_PATH_NOT_FOUND",
    0xC0000043: "STATUS_SHARING_VIOLATION",
    0xC000006D: "STATUS_LOGON_FAILURE",
    0xC00000A2: "STATUS_MEDIA_WRITE_PROTECTED",
    0xC00000BA: "STATUS_FILE_IS_A_DIRECTORY",
    0xC00000CC: "STATUS_BAD_NETWORK_NAME",
    0xC000007F: "STATUS_DISK_FULL",
    0xC0000120: "STATUS_CANCELLED",
}
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034


class SmbError(Exception):
    """One SMB step failed: a one-line reason, and the NT status if the server sent one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ListedShare:
    name: str
    comment: str
    special: bool  # IPC$, ADMIN$, C$: not a share of the model


class SmbSession(Protocol):
    """An authenticated SMB session to one VIP; every method raises :class:`SmbError`."""

    def list_shares(self) -> list[ListedShare]: ...

    def store(self, share: str, path: str, data: bytes) -> None: ...

    def retrieve(self, share: str, path: str) -> bytes: ...

    def delete(self, share: str, path: str) -> None: ...

    def list_dir(self, share: str, path: str) -> list[str]: ...

    def close(self) -> None: ...


Connector = Callable[[Vip], SmbSession]
"""Opens an authenticated session to a VIP, or raises :class:`SmbError`."""


# --- the pysmb adapter --------------------------------------------------------------------------


def describe(exc: BaseException, timeout: float) -> SmbError:
    """A pysmb or socket exception as a one-line :class:`SmbError`."""
    from smb.base import NotConnectedError, NotReadyError, SMBTimeout
    from smb.smb_structs import OperationFailure

    if isinstance(exc, OperationFailure):
        status = getattr(exc.smb_messages[-1], "status", None) if exc.smb_messages else None
        if isinstance(status, int):
            name = NT_STATUS.get(status, f"NT status 0x{status:08X}")
            return SmbError(f"{exc.message.rstrip('.')}: {name}", status)
        return SmbError(exc.message.rstrip("."))
    if isinstance(exc, SMBTimeout | TimeoutError):
        return SmbError(f"no answer within {timeout:g}s")
    if isinstance(exc, NotConnectedError | NotReadyError):
        return SmbError("the server closed the connection")
    if isinstance(exc, OSError):
        return SmbError(exc.strerror or str(exc))
    first_line = str(exc).strip().splitlines()[:1]
    return SmbError(f"{type(exc).__name__}: {first_line[0]}" if first_line else type(exc).__name__)


class PysmbSession:
    """:class:`SmbSession` over one ``smb.SMBConnection.SMBConnection``."""

    def __init__(self, conn: Any, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._conn, method)(*args, timeout=self._timeout)
        except Exception as exc:
            raise describe(exc, self._timeout) from exc

    def list_shares(self) -> list[ListedShare]:
        return [
            ListedShare(s.name, s.comments, bool(s.isSpecial) or s.type == s.IPC)
            for s in self._call("listShares")
        ]

    def store(self, share: str, path: str, data: bytes) -> None:
        self._call("storeFile", share, path, io.BytesIO(data))

    def retrieve(self, share: str, path: str) -> bytes:
        out = io.BytesIO()
        self._call("retrieveFile", share, path, out)
        return out.getvalue()

    def delete(self, share: str, path: str) -> None:
        self._call("deleteFiles", share, path)

    def list_dir(self, share: str, path: str) -> list[str]:
        return [f.filename for f in self._call("listPath", share, path)]

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class PysmbConnector:
    """Connects as ``user`` to a VIP's address, port 445; every step times out after ``timeout``."""

    user: str
    password: str
    timeout: float = 5.0

    def __call__(self, vip: Vip) -> SmbSession:
        from smb.SMBConnection import SMBConnection

        conn = SMBConnection(
            self.user, self.password, CLIENT_NAME, vip.name, use_ntlm_v2=True, is_direct_tcp=True
        )
        try:
            authenticated = conn.connect(str(vip.address), SMB_PORT, timeout=self.timeout)
        except Exception as exc:
            conn.close()
            raise describe(exc, self.timeout) from exc
        if not authenticated:
            conn.close()
            raise SmbError(f"logon as {self.user!r} refused: check smb_users and check_user")
        return PysmbSession(conn, self.timeout)


def credentials(cluster: Cluster) -> tuple[str, str]:
    """The check user and its password; :class:`HafsError` (exit 2) naming the key if unset."""
    user = cluster.check_user
    if user is None:
        raise HafsError(
            "check_user: not set: name the user hafs verify connects as in group_data/all.py, "
            "e.g. check_user = 'hafs-check', and give it a password in smb_users"
        )
    if user not in cluster.smb_users:
        raise HafsError(f"check_user: {user!r} is not in smb_users: add it with a password")
    return user, cluster.smb_users[user]


# --- one VIP -------------------------------------------------------------------------------------


@dataclass
class ShareResult:
    name: str
    writable: bool
    ok: bool = False
    error: str | None = None
    skipped: str | None = None  # why only its listing was checked
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds


@dataclass
class VipResult:
    vhid: int
    name: str
    address: str
    home: str
    holder: str | None = None  # the node that answered (from the IPC$ comment)
    shares_expected: list[str] = field(default_factory=list)
    shares_found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    shares: list[ShareResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # connect, list, total: seconds
    error: str | None = None  # the session failed (connect or list): no share was checked

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.missing
            and not self.extra
            and all(s.ok for s in self.shares)
        )

    @property
    def label(self) -> str:
        return f"{self.name} {self.address}"

    def problems(self) -> list[str]:
        """Every problem as one line naming the VIP and the share."""
        if self.error is not None:
            unchecked = ", ".join(self.shares_expected) or "none"
            return [f"{self.label}: {self.error} (shares not checked: {unchecked})"]
        lines = [f"{self.label}: share {s}: missing from the share list" for s in self.missing]
        lines += [f"{self.label}: share {s}: listed but not in the model" for s in self.extra]
        lines += [f"{self.label}: share {s.name}: {s.error}" for s in self.shares if not s.ok]
        return lines

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["problems"] = self.problems()
        return data


def holder_from_shares(listed: Sequence[ListedShare], nodes: Sequence[str]) -> str | None:
    """The node named by the ``IPC$`` comment ``IPC Service (<host>)``: the inventory's spelling
    when the host (or its first DNS label) is a node, else the host as given; None if absent."""
    for share in listed:
        if share.name.upper() != "IPC$":
            continue
        match = _IPC_COMMENT.fullmatch(share.comment.strip())
        if match is None or not match["host"]:
            return None
        host = match["host"]
        by_name = {n.lower(): n for n in nodes}
        return by_name.get(host.lower()) or by_name.get(host.split(".")[0].lower()) or host
    return None


def accessible(share: Share, user: str | None) -> bool:
    """Whether the check user may use ``share`` per the model (no check user: assume so)."""
    return user is None or user in share.users


def canary_path(token: str) -> str:
    return f"/{CANARY_PREFIX}{token}"


def canary_data(token: str, vip: Vip, share: str) -> bytes:
    return f"hafs verify {token} {vip.name}/{share}\n".encode()


def _timed(timings: dict[str, float], step: str, began: float) -> None:
    timings[step] = round(time.monotonic() - began, 6)


def _read_back(session: SmbSession, share: str, path: str, data: bytes) -> None:
    back = session.retrieve(share, path)
    if back != data:
        raise SmbError(f"read back {len(back)} bytes that differ from the {len(data)} written")


def _check_share(session: SmbSession, vip: Vip, result: ShareResult, token: str) -> None:
    """A writable share: write, read back and delete a canary; a read-only one: list it."""
    share = result.name
    path, data = canary_path(token), canary_data(token, vip, share)
    steps: list[tuple[str, Callable[[], object]]]
    if result.writable:
        steps = [
            ("write", lambda: session.store(share, path, data)),
            ("read", lambda: _read_back(session, share, path, data)),
            ("delete", lambda: session.delete(share, path)),
        ]
    else:
        steps = [("list", lambda: session.list_dir(share, "/"))]
    for step, action in steps:
        began = time.monotonic()
        try:
            action()
        except SmbError as exc:
            result.error = f"{step}: {exc}"
            if step == "read":
                with contextlib.suppress(SmbError):  # leave no canary behind
                    session.delete(share, path)
            return
        _timed(result.timings, step, began)
    result.ok = True


def check_vip(
    connect: Connector, vip: Vip, nodes: Sequence[str], token: str, user: str | None = None
) -> VipResult:
    """Connect, list and compare the shares, exercise each share; never raises.

    A share whose users in the model do not include ``user`` (the check user) is only checked
    for being listed: the server is right to refuse that user."""
    expected = [s.name for s in vip.shares]
    result = VipResult(vip.vhid, vip.name, str(vip.address), vip.home, shares_expected=expected)
    began = time.monotonic()
    try:
        session = connect(vip)
    except SmbError as exc:
        result.error = f"cannot connect: {exc}"
        _timed(result.timings, "total", began)
        return result
    _timed(result.timings, "connect", began)
    try:
        step = time.monotonic()
        try:
            listed = session.list_shares()
        except SmbError as exc:
            result.error = f"cannot list shares: {exc}"
            return result
        _timed(result.timings, "list", step)
        result.holder = holder_from_shares(listed, nodes)
        found = sorted(s.name for s in listed if not s.special)
        result.shares_found = found
        lowered = {name.lower() for name in found}
        result.missing = [name for name in expected if name.lower() not in lowered]
        wanted = {name.lower() for name in expected}
        result.extra = [name for name in found if name.lower() not in wanted]
        for share in vip.shares:
            if share.name in result.missing:
                continue
            checked = ShareResult(share.name, share.writable)
            if not accessible(share, user):
                checked.ok = True
                checked.skipped = f"listed; {user} is not one of its users"
            else:
                _check_share(session, vip, checked, token)
            result.shares.append(checked)
    finally:
        session.close()
        _timed(result.timings, "total", began)
    return result


def run_verify(cluster: Cluster, connect: Connector, token: str | None = None) -> list[VipResult]:
    """Check every VIP of ``cluster`` in parallel; results by vhid."""
    run_token = token or secrets.token_hex(4)
    nodes = [n.name for n in cluster.nodes]
    vips = sorted(cluster.vips, key=lambda v: v.vhid)
    if not vips:
        return []
    with ThreadPoolExecutor(max_workers=len(vips), thread_name_prefix="verify") as pool:
        return list(
            pool.map(lambda v: check_vip(connect, v, nodes, run_token, cluster.check_user), vips)
        )


# --- output --------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def format_results(results: Sequence[VipResult]) -> str:
    """The table (VHID, VIP, address, holder, shares ok, connect and total latency, result),
    then every problem on its own line."""
    rows = []
    for r in results:
        passed = sum(s.ok for s in r.shares)
        rows.append(
            [
                str(r.vhid),
                r.name,
                r.address,
                r.holder or "-",
                f"{passed}/{len(r.shares_expected)}",
                _ms(r.timings.get("connect")),
                _ms(r.timings.get("total")),
                "ok" if r.ok else "FAIL",
            ]
        )
    headers = ["VHID", "VIP", "ADDRESS", "HOLDER", "SHARES OK", "CONNECT", "TOTAL", "RESULT"]
    lines = [table(headers, rows)]
    lines += [problem for r in results for problem in r.problems()]
    return "\n".join(lines)


def results_json(results: Sequence[VipResult], seconds: float) -> dict[str, Any]:
    return {
        "ok": all(r.ok for r in results),
        "seconds": round(seconds, 3),
        "vips": [r.as_json() for r in results],
    }


def verdict(results: Sequence[VipResult], seconds: float) -> str:
    failed = [r.name for r in results if not r.ok]
    if not failed:
        return f"verdict: PASS: {len(results)} VIP(s) serve their shares ({seconds:.2f}s)"
    return f"verdict: FAIL: {len(failed)} of {len(results)} VIP(s) failed: {', '.join(failed)}"
