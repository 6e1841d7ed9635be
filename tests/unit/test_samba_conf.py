"""hafs.service.samba: the per-VIP smb.conf and argvs, as text (the lab test runs a real smbd)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from hafs.service import smbd
from hafs.service.samba import (
    SambaConfigError,
    SambaDirs,
    SambaInstance,
    SambaShare,
    add_user_argv,
    delete_user_argv,
    reload_argv,
    render_smb_conf,
    start_argv,
    stop_argvs,
)

DIRS = SambaDirs.for_vip("/tank/hafs/vip1", "/run/hafs/vip1")
VIP = IPv4Address("10.0.0.101")


def instance(*shares: SambaShare, vip: IPv4Address | IPv6Address = VIP) -> SambaInstance:
    return SambaInstance(
        name="vip1",
        vip=vip,
        shares=shares
        or (SambaShare("data", "/tank/hafs/vip1/shares/data", valid_users=("alice",)),),
        dirs=DIRS,
        config_file="/run/hafs/vip1/smb.conf",
    )


def parse(text: str) -> dict[str, dict[str, str]]:
    """smb.conf text -> {section: {key: value}}; fails on anything the renderer must not emit."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            assert line[1:-1] not in sections, f"section {line} twice"
            current = sections[line[1:-1]] = {}
            continue
        key, sep, value = line.partition(" = ")
        assert sep and current is not None, line
        assert key not in current, f"{key} twice"
        current[key] = value
    return sections


def test_layout_keeps_persistent_state_on_the_dataset_and_the_rest_on_the_node() -> None:
    expected = SambaDirs(
        private="/tank/hafs/vip1/samba/private",
        state="/tank/hafs/vip1/samba/state",
        lock="/run/hafs/vip1/lock",
        cache="/run/hafs/vip1/cache",
        pid="/run/hafs/vip1/pid",
        ncalrpc="/run/hafs/vip1/ncalrpc",
        log_file="/run/hafs/vip1/log/smbd.log",
    )
    assert expected == DIRS


def test_global_section_binds_only_the_vip_refuses_anonymous_and_owns_every_directory() -> None:
    conf = parse(render_smb_conf(instance()))
    assert conf["global"] == {
        "netbios name": "vip1",
        "server string": "%h",
        "interfaces": "10.0.0.101/32",
        "bind interfaces only": "yes",
        "smb ports": "445",
        "disable netbios": "yes",
        "server min protocol": "SMB2_02",
        "load printers": "no",
        "restrict anonymous": "2",
        "map to guest": "never",
        "private dir": "/tank/hafs/vip1/samba/private",
        "state directory": "/tank/hafs/vip1/samba/state",
        "lock directory": "/run/hafs/vip1/lock",
        "cache directory": "/run/hafs/vip1/cache",
        "pid directory": "/run/hafs/vip1/pid",
        "ncalrpc dir": "/run/hafs/vip1/ncalrpc",
        "log file": "/run/hafs/vip1/log/smbd.log",
    }


def test_ipv6_vip_is_a_single_address_interface() -> None:
    conf = parse(render_smb_conf(instance(vip=IPv6Address("fd00::101"))))
    assert conf["global"]["interfaces"] == "fd00::101/128"


def test_shares_render_in_order_with_access_and_users() -> None:
    text = render_smb_conf(
        instance(
            SambaShare("data", "/tank/hafs/vip1/shares/data", valid_users=("alice", "bob")),
            SambaShare("pub$", "/tank/hafs/vip1/shares/pub", writable=False),
        )
    )
    conf = parse(text)
    assert list(conf) == ["global", "data", "pub$"]
    assert conf["data"] == {
        "path": "/tank/hafs/vip1/shares/data",
        "read only": "no",
        "valid users": "alice bob",
    }
    assert conf["pub$"] == {"path": "/tank/hafs/vip1/shares/pub", "read only": "yes"}
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_an_instance_without_shares_still_renders() -> None:
    bare = replace(instance(), shares=())
    assert list(parse(render_smb_conf(bare))) == ["global"]


def test_argvs_use_the_instance_config_file() -> None:
    inst = instance()
    assert start_argv(inst, foreground=True) == [
        "smbd",
        "--foreground",
        "--configfile=/run/hafs/vip1/smb.conf",
    ]
    assert start_argv(inst, foreground=False) == [
        "smbd",
        "--daemon",
        "--configfile=/run/hafs/vip1/smb.conf",
    ]
    assert reload_argv(inst) == [
        "smbcontrol",
        "--configfile=/run/hafs/vip1/smb.conf",
        "smbd",
        "reload-config",
    ]
    assert stop_argvs(inst) == [
        ["smbcontrol", "--configfile=/run/hafs/vip1/smb.conf", "smbd", "shutdown"],
        ["smbcontrol", "--configfile=/run/hafs/vip1/smb.conf", "samba-dcerpcd", "shutdown"],
    ]
    assert add_user_argv(inst, "alice") == [
        "smbpasswd",
        "-c",
        "/run/hafs/vip1/smb.conf",
        "-a",
        "-s",
        "alice",
    ]
    assert delete_user_argv(inst, "bob") == [
        "pdbedit",
        "--configfile=/run/hafs/vip1/smb.conf",
        "-x",
        "-u",
        "bob",
    ]


@pytest.mark.parametrize("never", ["--no-process-group", "-F", "-i", "--interactive"])
def test_start_never_shares_the_callers_process_group(never: str) -> None:
    for foreground in (True, False):
        assert never not in start_argv(instance(), foreground=foreground)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "a-name-longer-than-15"}, "NetBIOS name"),
        ({"name": "vip 1"}, "NetBIOS name"),
        ({"shares": (SambaShare("global", "/x"),)}, "share name 'global'"),
        ({"shares": (SambaShare("IPC$", "/x"),)}, "share name 'IPC$'"),
        ({"shares": (SambaShare("a]b", "/x"),)}, "share name 'a]b'"),
        ({"shares": (SambaShare("data", "/x"), SambaShare("DATA", "/y"))}, "used twice"),
        ({"shares": (SambaShare("data", "relative/path"),)}, "share data path"),
        ({"shares": (SambaShare("data", "/x\n[evil]"),)}, "share data path"),
        ({"shares": (SambaShare("data", "/home/%u"),)}, "share data path"),
        ({"shares": (SambaShare("data", "/x\\"),)}, "share data path"),
        ({"shares": (SambaShare("data", "/x "),)}, "share data path"),
        ({"shares": (SambaShare("data", "/x", valid_users=("a b",)),)}, "user 'a b'"),
        ({"shares": (SambaShare("data", "/x", valid_users=("@staff",)),)}, "user '@staff'"),
        ({"dirs": replace(DIRS, lock="run/lock")}, "samba lock 'run/lock'"),
        ({"dirs": replace(DIRS, log_file="/run/log\n")}, "samba log file"),
        ({"config_file": "smb.conf"}, "smb.conf 'smb.conf'"),
    ],
)
def test_unsafe_values_are_refused_with_a_one_line_reason(
    change: dict[str, Any], message: str
) -> None:
    bad = replace(instance(), **change)
    with pytest.raises(SambaConfigError, match=message.replace("$", r"\$")) as info:
        render_smb_conf(bad)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_add_user_refuses_a_user_smbpasswd_would_misread() -> None:
    with pytest.raises(SambaConfigError, match="user '-a'"):
        add_user_argv(instance(), "-a")
    with pytest.raises(SambaConfigError, match="user '-x'"):
        delete_user_argv(instance(), "-x")


def test_smbd_runs_in_a_scope_of_its_own_only_under_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = instance()
    monkeypatch.setattr(smbd, "SYSTEMD_BOOTED", tmp_path / "absent")
    assert smbd.launch_argv(inst) == start_argv(inst, foreground=False)  # the lab
    monkeypatch.setattr(smbd, "SYSTEMD_BOOTED", tmp_path)
    assert smbd.launch_argv(inst) == [
        "systemd-run", "--scope", "--quiet", "--collect", "--slice=hafs-smbd.slice",
        "--description=hafs: smbd of VIP vip1", "--",
        "smbd", "--daemon", "--configfile=/run/hafs/vip1/smb.conf",
    ]  # fmt: skip
