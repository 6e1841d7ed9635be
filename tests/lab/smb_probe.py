"""An SMB client for the lab tests, run inside the lab's client namespace.

``python -m tests.lab.smb_probe put|get|wait|writer VIP SHARE PATH USER PASSWORD [...]``:
- ``put`` stores stdin as PATH; ``get`` prints PATH's content;
- ``wait TIMEOUT`` retries ``get`` every 0.1 s and prints ``<monotonic time> <content>``
  on the first success (CLOCK_MONOTONIC is the same in every namespace);
- ``writer SECONDS [PERIOD]`` writes PATH.<n> every PERIOD (0.2) s and prints ``<n>
  <began> <acknowledged>`` (monotonic times: before its connect, after its reply) per
  acknowledged write (the RPO measurement);
- ``list`` prints the names in directory PATH of the share, one per line;
- ``fill`` writes 1 MiB files PATH.<n> until the server refuses one, and prints
  ``<n> <sha256>`` per acknowledged file, then the refusal's NT status on stderr;
- ``remove`` deletes every file of the share's top directory named PATH.<something>;
- ``login`` connects once: exit 0 if the server accepts USER/PASSWORD, 3 if it refuses;
- ``session SECONDS`` opens one session and, through it, writes PATH.<n> and reads it back
  every 0.2 s, printing ``<n> <monotonic time>`` per round trip; any failure ends it with
  exit 1 (the session did not survive);
- ``idle SECONDS`` opens a session, prints ``connected``, then sends nothing and prints
  ``<monotonic time> reset`` when the server side resets the connection (tickle ACKs), or
  ``<monotonic time> closed`` on an orderly close; exit 1 if neither came within SECONDS.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import sys
import time

from smb.base import OperationFailure
from smb.SMBConnection import SMBConnection


def connect(vip: str, user: str, password: str, timeout: float = 2) -> SMBConnection:
    conn = SMBConnection(user, password, "hafs-test", "vip", use_ntlm_v2=True, is_direct_tcp=True)
    if not conn.connect(vip, 445, timeout=timeout):
        raise OSError(f"{vip}: authentication failed")
    return conn


def get(vip: str, share: str, path: str, user: str, password: str) -> bytes:
    conn = connect(vip, user, password, timeout=0.5)
    try:
        buf = io.BytesIO()
        conn.retrieveFile(share, path, buf, timeout=2)
        return buf.getvalue()
    finally:
        conn.close()


def main() -> int:
    verb, vip, share, path, user, password, *rest = sys.argv[1:]
    if verb == "put":  # retried for 10 s, as a client would while a VIP settles
        data = sys.stdin.buffer.read()
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = connect(vip, user, password)
                conn.storeFile(share, path, io.BytesIO(data))
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    elif verb == "get":  # retried for 10 s like put; a missing file fails at once
        deadline = time.monotonic() + 10
        while True:
            try:
                data = get(vip, share, path, user, password)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sys.stdout.write(data.decode())
    elif verb == "wait":
        deadline = time.monotonic() + float(rest[0])
        while time.monotonic() < deadline:
            try:
                data = get(vip, share, path, user, password)
            except Exception:
                time.sleep(0.1)
                continue
            print(f"{time.monotonic():.3f} {data.decode()}", flush=True)
            return 0
        return 1
    elif verb == "writer":
        end = time.monotonic() + float(rest[0])
        period = float(rest[1]) if len(rest) > 1 else 0.2
        n = 0
        while time.monotonic() < end:
            began = time.monotonic()
            try:
                conn = connect(vip, user, password, timeout=0.5)
                conn.storeFile(share, f"{path}.{n}", io.BytesIO(str(n).encode()), timeout=2)
                conn.close()
                print(f"{n} {began:.3f} {time.monotonic():.3f}", flush=True)
                n += 1
            except Exception:
                pass
            time.sleep(period)
    elif verb == "fill":
        conn = connect(vip, user, password)
        try:
            for n in itertools.count():
                data = os.urandom(1 << 20)
                try:
                    conn.storeFile(share, f"{path}.{n}", io.BytesIO(data), timeout=10)
                except OperationFailure as exc:  # the NT status of the refusal, in one line
                    status = next((m.status for m in exc.smb_messages if m.status), 0)
                    print(f"{path}.{n} refused: NT status 0x{status:08X}", file=sys.stderr)
                    break
                print(f"{n} {hashlib.sha256(data).hexdigest()}", flush=True)
        finally:
            conn.close()
    elif verb == "remove":
        conn = connect(vip, user, password)
        try:
            for entry in conn.listPath(share, "/", pattern=f"{path}.*", timeout=10):
                conn.deleteFiles(share, entry.filename, timeout=10)
        finally:
            conn.close()
    elif verb == "list":  # the names in the share's top directory, one per line
        conn = connect(vip, user, password)
        try:
            entries = conn.listPath(share, path, timeout=10)
        finally:
            conn.close()
        for entry in entries:
            if entry.filename not in (".", ".."):
                print(entry.filename)
    elif verb == "login":
        try:
            connect(vip, user, password).close()
        except OSError as exc:
            print(exc, file=sys.stderr)
            return 3
    elif verb == "session":
        conn = connect(vip, user, password)
        end = time.monotonic() + float(rest[0])
        n = 0
        while time.monotonic() < end:
            data = str(n).encode()
            conn.storeFile(share, f"{path}.{n}", io.BytesIO(data), timeout=5)
            back = io.BytesIO()
            conn.retrieveFile(share, f"{path}.{n}", back, timeout=5)
            if back.getvalue() != data:
                print(f"{path}.{n}: read back {back.getvalue()!r}", file=sys.stderr)
                return 1
            print(f"{n} {time.monotonic():.3f}", flush=True)
            n += 1
            time.sleep(0.2)
        conn.close()
    elif verb == "idle":
        conn = connect(vip, user, password)
        print("connected", flush=True)
        conn.sock.settimeout(float(rest[0]))
        try:
            data = conn.sock.recv(1)
        except ConnectionResetError:
            print(f"{time.monotonic():.3f} reset", flush=True)
        except TimeoutError:
            return 1
        else:
            print(f"{time.monotonic():.3f} closed {data!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
