"""The FreeBSD deploy through pyinfra's fake connector: exact commands, and none when done
(and, at the end, the Linux node's service operations: reloaded, never restarted).

The example inventory (``inventory.py`` + ``group_data/``) is read by pyinfra's loader, as
``pyinfra inventory.py deploys/cluster.py`` reads it; every host gets pyinfra's ``@fake``
connector, whose answers to fact commands (``fake_responses``) describe the node: empty for
a fresh FreeBSD install, the deploy's own result for a configured one. Operation commands and
uploads are recorded as pyinfra executes them; nothing leaves this process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.api.config import Config
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import OperationError
from pyinfra.api.inventory import Inventory
from pyinfra.api.operations import run_ops
from pyinfra.api.state import State
from pyinfra.connectors.fake import FakeConnector

from hafs import render
from hafs.cluster import load, read_pyinfra_inventory
from hafs.deploy import node
from hafs.deploy.common import source_archive
from hafs.deploy.facts import ConfAssignments
from hafs.deploy.freebsd import NETIF_HEADER, home_again
from hafs.errors import HafsError
from hafs.service import config as service_config

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventory.py"
NODE = "ha-file-server-1"
PEERS = ("ha-file-server-2", "ha-file-server-3", "ha-file-server-4")
LINUX_NODE = "ha-file-server-4"
PACKAGES = (
    "samba419",
    "python311",
    "py311-gevent",
    "py311-cryptography",
    "py311-bcrypt",
    "py311-pynacl",
    "py311-pydantic2",
)
Responses = dict[str | re.Pattern[str], Any]


def public_key(name: str) -> str:
    return f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{name[-1]} hafs-replication@{name}"


def authorized(peer: str) -> str:
    address = f"172.21.0.20{peer[-1]}"
    return (
        f'restrict,command="/usr/local/bin/hafs service ssh-command --peer {peer}",'
        f'from="{address}" '
        f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{peer[-1]} hafs-replication@{peer}"
    )


def fresh(name: str) -> Responses:
    """A FreeBSD install that hafs never saw; its replication key exists once generated."""
    return {
        "replication_key.pub": public_key(name),
        '"clientaliveinterval"': "0",  # sshd -T's defaults
        "sshd -T": "no",
    }


@dataclass
class Recorded:
    """What pyinfra executed on the node: shell commands, and uploads by destination."""

    commands: list[str] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    """Record the operations' commands (facts run through the connector directly)."""
    result = Recorded()
    run_command = StringCommand.execute
    upload = FileUploadCommand.execute

    def record_command(self: StringCommand, state: State, host: Any, arguments: Any) -> Any:
        if host.name in (NODE, LINUX_NODE):
            result.commands.append(self.get_masked_value())
        return run_command(self, state, host, arguments)

    def record_upload(self: FileUploadCommand, state: State, host: Any, arguments: Any) -> Any:
        if host.name in (NODE, LINUX_NODE):
            source = self.src
            assert isinstance(source, StringIO | BytesIO | str)
            data = Path(source).read_bytes() if isinstance(source, str) else source.getvalue()
            result.commands.append(f"upload {self.dest}")
            result.uploads[self.dest] = data.encode() if isinstance(data, str) else data
        return upload(self, state, host, arguments)

    monkeypatch.setattr(StringCommand, "execute", record_command)
    monkeypatch.setattr(FileUploadCommand, "execute", record_upload)
    return result


def fake_inventory(
    inventory: Path, responses: Callable[[str], Responses], **data: Any
) -> Inventory:
    # hafs's own reading of the inventory: pyinfra's loader without gevent's monkey-patching
    result: Inventory = read_pyinfra_inventory(inventory)
    for host in result:
        host.connector_cls = FakeConnector
        host.data.fake_delay = 0
        host.data.fake_delay_jitter = 0
        host.data.fake_responses = responses(host.name)
        for key, value in data.items():
            setattr(host.data, key, value)
    return result


def deploy(
    responses: Callable[[str], Responses],
    inventory: Path = INVENTORY,
    succeed: bool = True,
    target: str = NODE,
    **data: Any,
) -> State:
    """Run the deploy on ``target`` (its peers answer facts only) and return pyinfra's
    state."""
    state = State(fake_inventory(inventory, responses, **data), Config())  # type: ignore[no-untyped-call]
    state.cwd = str(inventory.parent)
    connect_all(state)
    add_deploy(state, node, host=[state.inventory.get_host(target)])
    run_ops(state)
    assert bool(state.failed_hosts) != succeed
    return state


def test_fresh_node_gets_exactly_these_commands(recorded: Recorded) -> None:
    archive = source_archive()
    deploy(fresh, zfs_devices=["ada1"])
    peers = " ".join(f"'{authorized(peer)}'" for peer in PEERS)
    assert recorded.commands == [
        *(f"pkg install -y -- {package}" for package in PACKAGES),
        "echo 'carp_load=\"YES\"' >> /boot/loader.conf",
        "echo vfs.maxbcachebuf=1048576 >> /boot/loader.conf",
        "echo net.inet.carp.preempt=1 >> /etc/sysctl.conf",
        "sysrc -f /etc/rc.conf hostname=ha-file-server-1",
        "sysrc -f /etc/rc.conf defaultrouter=172.21.0.1",
        "sysrc -f /etc/rc.conf zfs_enable=YES",
        "sysrc -f /etc/rc.conf sshd_enable=YES",
        "sysrc -f /etc/rc.conf hafs_demote_enable=YES",
        "sysrc -f /etc/rc.conf hafs_service_enable=YES",
        "mkdir -p /etc/rc.conf.d",
        "chown root:wheel /etc/rc.conf.d",
        "upload /etc/rc.conf.d/netif",
        "chown root:wheel /etc/rc.conf.d/netif",
        "chmod 600 /etc/rc.conf.d/netif",
        "mkdir -p /usr/local/etc/devd",
        "upload /usr/local/etc/devd/hafs.conf",
        "chmod 644 /usr/local/etc/devd/hafs.conf",
        "mkdir -p /usr/local/etc/rc.d",
        "upload /usr/local/etc/rc.d/hafs_service",
        "chmod 755 /usr/local/etc/rc.d/hafs_service",
        "mkdir -p /usr/local/etc/rc.d",
        "upload /usr/local/etc/rc.d/hafs_demote",
        "chmod 755 /usr/local/etc/rc.d/hafs_demote",
        "python3.11 -m venv --system-site-packages /opt/hafs",
        "mkdir -p /opt/hafs/dist",
        f"upload /opt/hafs/dist/{archive.name}",
        "/opt/hafs/bin/pip install --quiet --disable-pip-version-check "
        f"/opt/hafs/dist/{archive.name}",
        "/opt/hafs/bin/pip install --quiet --disable-pip-version-check --no-deps "
        f"--force-reinstall /opt/hafs/dist/{archive.name}",
        f"echo {archive.sha256} > /opt/hafs/installed.sha256",
        "mkdir -p /usr/local/bin",
        "ln -s /opt/hafs/bin/hafs /usr/local/bin/hafs",
        "mkdir -p /etc/hafs",
        "chmod 700 /etc/hafs",
        "chown root /etc/hafs",
        "upload /etc/hafs/cluster.json",
        "chown root /etc/hafs/cluster.json",
        "chmod 600 /etc/hafs/cluster.json",
        "ssh-keygen -q -t ed25519 -N '' -C hafs-replication@ha-file-server-1 "
        "-f /etc/hafs/replication_key",
        "mkdir -p /root/.ssh",
        "chmod 700 /root/.ssh",
        f"umask 077 && printf '%s\\n' {peers} >> /root/.ssh/authorized_keys",
        "{ echo 'PermitRootLogin forced-commands-only' ; echo 'ClientAliveInterval 2' ; "
        "echo 'ClientAliveCountMax 3' ; cat /etc/ssh/sshd_config ; } "
        "> /etc/ssh/sshd_config.hafs-new && mv /etc/ssh/sshd_config.hafs-new /etc/ssh/sshd_config",
        "service sshd reload",
        "kldload carp",
        "sysctl net.inet.carp.preempt=1",
        "service devd restart",
        "zpool create tank ada1",
        "zfs create tank/hafs",
        "zfs create tank/hafs/vip1",
        "service hafs_service restart",
        "service netif restart em0",
        "service routing restart",
        'timeout 180 sh -c \'until ifconfig em0 | grep -q "carp: MASTER vhid 1 "; do sleep 1;'
        " done'",
    ]


def test_uploads_are_what_hafs_render_prints(recorded: Recorded) -> None:
    cluster = load(INVENTORY)
    node_model = cluster.node(NODE)
    deploy(fresh, zfs_devices=["ada1"])

    rc_conf = render.rc_conf(cluster, node_model).splitlines()
    netif = recorded.uploads["/etc/rc.conf.d/netif"].decode().splitlines()
    carp_lines = [line for line in rc_conf if line.startswith("ifconfig_")]
    assert [line for line in netif if not line.startswith("#")] == carp_lines
    assert any(f"pass {cluster.carp_pass} " in line for line in carp_lines)
    assert not any(cluster.carp_pass in command for command in recorded.commands)

    devd = recorded.uploads["/usr/local/etc/devd/hafs.conf"].decode()
    assert devd == render.devd_conf(cluster, node_model)
    assert 'action "/usr/local/bin/hafs event $subsystem $type";' in devd
    assert recorded.uploads[f"/opt/hafs/dist/{source_archive().name}"] == source_archive().data
    cluster_json = recorded.uploads["/etc/hafs/cluster.json"].decode()
    assert cluster_json == service_config.render(cluster, node_model)


def stat(path: str, kind: str, mode: str, user: str = "root", group: str = "wheel") -> str:
    name = f"'{path}'"
    return f"user={user} group={group} mode={kind}{mode} atime=0 mtime=0 ctime=0 size=1 {name}"


def configured(name: str) -> Responses:
    """The node as the deploy left it: every fact answers what the deploy wants."""
    cluster = load(INVENTORY)
    node_model = cluster.node(name)
    netif_text = NETIF_HEADER.format(node=name) + "".join(
        f"{line}\n"
        for line in render.rc_conf(cluster, node_model).splitlines()
        if line.startswith("ifconfig_")
    )
    archive = source_archive()
    tarball = f"/opt/hafs/dist/{archive.name}"
    files = {
        "/etc/hafs/cluster.json": service_config.render(cluster, node_model).encode(),
        "/etc/rc.conf.d/netif": netif_text.encode(),
        "/usr/local/etc/devd/hafs.conf": render.devd_conf(cluster, node_model).encode(),
        "/usr/local/etc/rc.d/hafs_service": (REPO / "hooks" / "hafs_service.rc").read_bytes(),
        "/usr/local/etc/rc.d/hafs_demote": (REPO / "hooks" / "hafs_demote.rc").read_bytes(),
        tarball: archive.data,
    }
    responses: Responses = {"replication_key.pub": public_key(name)}
    for path, data in files.items():
        responses[re.compile(rf"^test -e {re.escape(path)} && \( sha1sum")] = (
            f"{hashlib.sha1(data).hexdigest()}  {path}"
        )
    statted = {
        "/etc/rc.conf.d/netif": stat("/etc/rc.conf.d/netif", "-", "rw-------"),
        "/etc/rc.conf.d": stat("/etc/rc.conf.d", "d", "rwxr-xr-x"),
        "/usr/local/etc/devd/hafs.conf": stat("/usr/local/etc/devd/hafs.conf", "-", "rw-r--r--"),
        "/usr/local/etc/devd": stat("/usr/local/etc/devd", "d", "rwxr-xr-x"),
        "/usr/local/etc/rc.d/hafs_service": stat(
            "/usr/local/etc/rc.d/hafs_service", "-", "rwxr-xr-x"
        ),
        "/usr/local/etc/rc.d/hafs_demote": stat(
            "/usr/local/etc/rc.d/hafs_demote", "-", "rwxr-xr-x"
        ),
        "/usr/local/etc/rc.d": stat("/usr/local/etc/rc.d", "d", "rwxr-xr-x"),
        "/opt/hafs/bin/activate": stat("/opt/hafs/bin/activate", "-", "rw-r--r--"),
        tarball: stat(tarball, "-", "rw-r--r--"),
        "/opt/hafs/dist": stat("/opt/hafs/dist", "d", "rwxr-xr-x"),
        "/usr/local/bin/hafs": stat("/usr/local/bin/hafs", "l", "rwxr-xr-x").replace(
            "'/usr/local/bin/hafs'", "'/usr/local/bin/hafs' -> '/opt/hafs/bin/hafs'"
        ),
        "/usr/local/bin": stat("/usr/local/bin", "d", "rwxr-xr-x"),
        "/etc/hafs": stat("/etc/hafs", "d", "rwx------"),
        "/etc/hafs/cluster.json": stat("/etc/hafs/cluster.json", "-", "rw-------"),
        "/etc/hafs/replication_key": stat("/etc/hafs/replication_key", "-", "rw-------"),
        "/root/.ssh": stat("/root/.ssh", "d", "rwx------"),
    }
    for path, line in statted.items():
        responses[re.compile(rf"^! \(test -e {re.escape(path)} ")] = line
    rc_conf = [
        line
        for line in render.rc_conf(cluster, node_model).splitlines()
        if not line.startswith("ifconfig_")
    ]
    responses.update(
        {
            re.compile(r"^pkg info -E -- (\S+)"): "installed-1.0",
            "cat /boot/loader.conf": render.loader_conf(cluster, node_model),
            "cat /etc/sysctl.conf": "# admin's own\nkern.coredump=0\n"
            + render.sysctl_conf(cluster, node_model),
            "cat /etc/rc.conf": [
                *rc_conf,
                'sshd_enable="YES"',
                'hafs_demote_enable="YES"',
                'hafs_service_enable="YES"',
                'ifconfig_em1="DHCP"',
            ],
            "/opt/hafs/installed.sha256": archive.sha256,
            "/root/.ssh/authorized_keys": [
                "ssh-ed25519 AAAAadmin admin@laptop",
                *(authorized(peer) for peer in (NODE, *PEERS) if peer != name),
            ],
            "sshd -T": "forced-commands-only",
            "kldstat -q -m carp": "loaded",
            "sysctl -n net.inet.carp.preempt": "1",
            "zpool list": "tank",
            "zfs list": ["tank", "tank/hafs", f"tank/hafs/vip{name[-1]}"],
        }
    )
    return responses


def test_configured_node_gets_no_command(recorded: Recorded) -> None:
    state = deploy(configured, zfs_devices=["ada1"])
    assert recorded.commands == []
    results = state.get_results_for_host(state.inventory.get_host(NODE))
    assert results.error_ops == 0
    assert results.success_ops == len(state.get_op_order()) > 25  # type: ignore[no-untyped-call]


def test_drifted_rc_files_converge_value_by_value(recorded: Recorded) -> None:
    """A wrong value is rewritten, the seed's CARP lines (with the pass) leave rc.conf."""

    def drifted(name: str) -> Responses:
        responses = configured(name)
        responses["cat /etc/rc.conf"] = [
            'hostname="ha-file-server-1"',
            'defaultrouter="172.21.0.254"',
            'zfs_enable="YES"',
            'sshd_enable="YES"',
            'hafs_demote_enable="YES"',
            'hafs_service_enable="YES"',
            'ifconfig_em0="vhid 1 pass testok 172.21.0.211/20 up"',
            'ifconfig_em0_alias0="vhid 2 advskew 2 pass testok 172.21.0.212/32"',
            'ifconfig_em1="DHCP"',
        ]
        responses["cat /boot/loader.conf"] = ['carp_load="YES"', "vfs.maxbcachebuf=65536"]
        return responses

    deploy(drifted, zfs_devices=["ada1"])
    assert recorded.commands == [
        "sed -i.hafs-bak -e '/^[[:space:]]*vfs\\.maxbcachebuf[[:space:]]*=/d' /boot/loader.conf "
        "&& rm -f /boot/loader.conf.hafs-bak",
        "echo vfs.maxbcachebuf=1048576 >> /boot/loader.conf",
        "sysrc -f /etc/rc.conf defaultrouter=172.21.0.1",
        "sysrc -f /etc/rc.conf -x ifconfig_em0",
        "sysrc -f /etc/rc.conf -x ifconfig_em0_alias0",
    ]


def test_not_running_node_is_configured_but_nothing_started(recorded: Recorded) -> None:
    deploy(fresh, hafs_start_services=False)
    started = ("kldload", "sysctl ", "service ", "zpool ", "zfs ")
    assert not [c for c in recorded.commands if c.startswith(started)]
    assert "upload /etc/rc.conf.d/netif" in recorded.commands


@pytest.mark.parametrize(
    ("option", "value", "needed"),
    [
        ("PermitRootLogin", "no", "PermitRootLogin forced-commands-only"),
        ("ClientAliveInterval", "0", "ClientAliveInterval 2"),
    ],
)
def test_an_explicit_sshd_option_replication_cannot_use_is_refused_not_overridden(
    option: str, value: str, needed: str
) -> None:
    def explicit(name: str) -> Responses:
        return {**fresh(name), f"grep -e '^[[:space:]]*{option}": f"{option} {value}"}

    with pytest.raises(
        OperationError,
        match=rf"^/etc/ssh/sshd_config: {option} {value}: replication needs {needed}",
    ):
        deploy(explicit, zfs_devices=["ada1"])


def test_missing_pool_without_devices_is_one_line() -> None:
    with pytest.raises(OperationError, match=r"^ZFS pool 'tank' does not exist and no zfs_devices"):
        deploy(fresh)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"zfs_devices": "ada1"}, "host ha-file-server-1: zfs_devices: must be a list"),
        ({"hafs_start_services": "no"}, "hafs_start_services: must be True or False"),
        ({"samba_package": ""}, "samba_package: must be a package name"),
    ],
)
def test_bad_settings_are_one_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(HafsError, match=message) as caught:
        deploy(fresh, **data)
    assert "\n" not in str(caught.value)


def test_cluster_with_check_errors_is_refused() -> None:
    with pytest.raises(HafsError, match=r"^hafs check reports \d+ error\(s\), deploying nothing"):
        deploy(fresh, inventory=REPO / "examples" / "seed" / "inventory.py")


def test_peer_without_key_is_left_out_until_it_has_one(
    recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    def keyless_peer(name: str) -> Responses:
        return {} if name == "ha-file-server-3" else fresh(name)

    deploy(keyless_peer, zfs_devices=["ada1"])
    [printf] = [c for c in recorded.commands if "authorized_keys" in c]
    assert "hafs-replication@ha-file-server-2" in printf
    assert "hafs-replication@ha-file-server-3" not in printf
    assert "ha-file-server-3: no replication key" in caplog.text


def test_conf_assignments_read_like_sh() -> None:
    text = [
        "# comment",
        'hostname="a"',
        "  zfs_enable=YES # trailing comment",
        "ifconfig_em0='inet 10.0.0.1/24'",
        'hostname="b"',
        "vfs.maxbcachebuf=1048576",
        "not an assignment",
        'broken="unbalanced',
    ]
    assert ConfAssignments().process(text) == {
        "hostname": "b",
        "zfs_enable": "YES",
        "ifconfig_em0": "inet 10.0.0.1/24",
        "vfs.maxbcachebuf": "1048576",
        "broken": '"unbalanced',
    }


def test_source_archive_is_reproducible() -> None:
    first = source_archive.__wrapped__()
    second = source_archive.__wrapped__()
    assert first.data == second.data
    assert first.name == "hafs-0.1.0.tar.gz"


def test_restarts_go_one_node_at_a_time_and_netif_waits_for_the_vips(recorded: Recorded) -> None:
    state = deploy(fresh, zfs_devices=["ada1"])
    metas = [state.get_op_meta(op) for op in state.get_op_order()]  # type: ignore[no-untyped-call]
    serial = [m for m in metas if m.global_arguments.get("_serial")]
    assert [sorted(m.names)[0].rsplit(" | ", 1)[-1] for m in serial] == [
        "hafs service daemon (re)started, one node at a time",
        "em0 and routes reconfigured, one node at a time",
    ]
    cluster = load(INVENTORY)
    node = cluster.node(NODE)
    assert len(home_again(cluster, node)) == len([v for v in cluster.vips if v.home == NODE])
    assert home_again(cluster, replace(node, preempt=False)) == []  # never takes them back


# The Linux node (hafs.deploy.linux): what runs once the files are in place.


def debian(running: bool) -> Callable[[str], Responses]:
    """A Debian node whose units are running (or not), as `systemctl show` tells."""
    units = "Id=hafs-agent.service\nSubState=running\n\nId=hafs-service.service\nSubState=running\n"

    def responses(name: str) -> Responses:
        return fresh(name) | {"systemctl show --all": units if running else ""}

    return responses


def service_commands(commands: list[str]) -> list[str]:
    return [c for c in commands if "systemctl" in c and "hafs-" in c and "enable" not in c]


def test_a_running_linux_agent_is_reloaded_never_restarted(recorded: Recorded) -> None:
    deploy(debian(running=True), target=LINUX_NODE, zfs_devices=["sdb"])
    assert service_commands(recorded.commands) == [
        "systemctl reload hafs-agent.service",
        "systemctl reload hafs-service.service",
    ]
    assert "systemd-tmpfiles --create /etc/tmpfiles.d/hafs.conf" in recorded.commands


def test_a_linux_agent_not_running_yet_is_started_not_reloaded(recorded: Recorded) -> None:
    deploy(debian(running=False), target=LINUX_NODE, zfs_devices=["sdb"])
    assert service_commands(recorded.commands) == [
        "systemctl start hafs-agent.service",
        "systemctl start hafs-service.service",
    ]
