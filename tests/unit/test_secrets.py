"""Files derived from secrets: owner-only, and the users' digest keyed with a local secret."""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from hafs.secretfile import private_key, write_private
from hafs.service import users
from hafs.service.config import ServiceConfig
from hafs.service.samba import SambaDirs, SambaInstance

CONFIG = ServiceConfig(
    node="n1",
    pool="tank",
    replication_interval=10,
    peers={},
    vips=(),
    users={"alice": "alice-pw", "bob": "bob-pw"},
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_narrows_a_file_that_was_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "marker"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert (path.read_bytes(), mode(path)) == (b"new", 0o600)


def test_private_key_is_random_owner_only_and_kept(tmp_path: Path) -> None:
    first, second = private_key(tmp_path / "a.key"), private_key(tmp_path / "b.key")
    assert len(first) == 32 and first != second
    assert private_key(tmp_path / "a.key") == first
    assert mode(tmp_path / "a.key") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.key", "b.key"]  # no temp left


def unkeyed(config: ServiceConfig) -> str:
    """The digest hafs wrote before: anyone reading it could test guessed passwords."""
    return hashlib.sha256(json.dumps(sorted(config.users.items())).encode()).hexdigest()


def test_node_marker_is_keyed_and_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[ServiceConfig] = []
    monkeypatch.setattr(users, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(users, "_create_group_and_users", made.append)
    users.sync_node_users(CONFIG)
    users.sync_node_users(CONFIG)  # unchanged: nothing to do
    marker = tmp_path / "run" / "users.sha256"
    assert made == [CONFIG]
    assert mode(marker) == mode(tmp_path / "run" / "users.key") == 0o600
    assert marker.read_text() not in ("", unkeyed(CONFIG))


def test_passdb_marker_moves_with_its_key_and_changes_with_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[ServiceConfig] = []
    monkeypatch.setattr(users, "_ensure_passdb", lambda config, instance: synced.append(config))
    samba = tmp_path / "tank" / "hafs" / "vip1" / "samba"
    samba.mkdir(parents=True)
    instance = SambaInstance(
        "vip1",
        IPv4Address("10.0.0.101"),
        (),
        SambaDirs.for_vip(str(samba.parent), str(tmp_path / "run")),
        str(samba / "smb.conf"),
    )
    changed = replace(CONFIG, users={"alice": "new", "bob": "bob-pw"})
    users.sync_passdb(CONFIG, instance)
    users.sync_passdb(CONFIG, instance)
    first = (samba / "hafs-users.sha256").read_text()
    users.sync_passdb(changed, instance)
    assert synced == [CONFIG, changed]
    assert mode(samba / "hafs-users.sha256") == mode(samba / "hafs-users.key") == 0o600
    assert first != (samba / "hafs-users.sha256").read_text()
    assert unkeyed(CONFIG) != first
