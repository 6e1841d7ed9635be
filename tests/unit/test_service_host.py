"""What the kernel says, parsed: captured FreeBSD and Linux output, and this host's own /proc."""

from __future__ import annotations

import os
import socket
from ipaddress import IPv4Address
from pathlib import Path

from hafs.service import host

VIP1, VIP2 = IPv4Address("172.21.0.211"), IPv4Address("172.21.0.212")

# FreeBSD 14 `ifconfig -a` on a node that is master of vhid 1 and backup of vhid 2: both CARP
# addresses are configured; only the carp: line tells who serves
IFCONFIG = """\
em0: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500
\toptions=481009b<RXCSUM,TXCSUM,VLAN_MTU,VLAN_HWTAGGING,VLAN_HWCSUM,VLAN_HWFILTER,NOMAP>
\tether 08:00:27:8a:1b:2c
\tinet 172.21.0.201 netmask 0xffffff00 broadcast 172.21.0.255
\tinet 172.21.0.211 netmask 0xffffffff broadcast 172.21.0.211 vhid 1
\tinet 172.21.0.212 netmask 0xffffffff broadcast 172.21.0.212 vhid 2
\tcarp: MASTER vhid 1 advbase 1 advskew 0
\tcarp: BACKUP vhid 2 advbase 1 advskew 100
\tmedia: Ethernet autoselect (1000baseT <full-duplex>)
\tstatus: active
\tnd6 options=29<PERFORMNUD,IFDISABLED,AUTO_LINKLOCAL>
em1: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500
\tinet 10.9.9.1 netmask 0xffffff00 broadcast 10.9.9.255
\tinet 172.21.0.213 netmask 0xffffffff broadcast 172.21.0.213
\tcarp: MASTER vhid 3 advbase 1 advskew 0
lo0: flags=1008049<UP,LOOPBACK,RUNNING,MULTICAST,LOWER_UP> metric 0 mtu 16384
\tinet 127.0.0.1 netmask 0xff000000
"""


def test_freebsd_holds_a_vip_only_where_its_vhid_is_master() -> None:
    assert host.ifconfig_holds(IFCONFIG, VIP1, 1)
    assert not host.ifconfig_holds(IFCONFIG, VIP2, 2)  # configured, but BACKUP
    assert not host.ifconfig_holds(IFCONFIG, VIP1, 2)  # the address belongs to another vhid
    # on em1 vhid 3 is MASTER, but the address is not attached to that vhid
    assert not host.ifconfig_holds(IFCONFIG, IPv4Address("172.21.0.213"), 3)
    assert not host.ifconfig_holds("", VIP1, 1)
    # INIT (link down) is not MASTER either
    assert not host.ifconfig_holds(IFCONFIG.replace("MASTER vhid 1", "INIT vhid 1"), VIP1, 1)


def test_linux_holds_a_vip_when_the_address_is_on_an_interface() -> None:
    out = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
        "2: em0    inet 172.21.0.201/24 brd 172.21.0.255 scope global em0\\       valid_lft\n"
        "2: em0    inet 172.21.0.211/32 scope global em0:1\\       valid_lft forever\n"
    )
    assert host.ip_addr_holds(out, VIP1)
    assert not host.ip_addr_holds(out, VIP2)
    assert not host.ip_addr_holds(out, IPv4Address("172.21.0.21"))  # no prefix matching


def test_ps_table_parses_pids_and_arguments() -> None:
    out = (
        "    1 /sbin/init --\n"
        "  812 /usr/local/sbin/smbd --daemon --configfile=/tank/hafs/vip1/samba/smb.conf\n"
        "  900 [kernel]\n"
        "  abc not a pid\n"
        " 1001\n"
    )
    table = host.parse_ps(out)
    assert table == {
        1: ["/sbin/init", "--"],
        812: ["/usr/local/sbin/smbd", "--daemon", "--configfile=/tank/hafs/vip1/samba/smb.conf"],
        900: ["[kernel]"],
    }


def test_sockstat_gives_listening_and_connected_ends_of_the_vip() -> None:
    out = (
        "USER     COMMAND    PID   FD  PROTO  LOCAL ADDRESS         FOREIGN ADDRESS\n"
        "root     smbd       1234  35  tcp4   172.21.0.211:445      *:*\n"
        "alice    smbd       1240  36  tcp4   172.21.0.211:445      172.21.0.50:50123\n"
        "root     smbd       1299  35  tcp4   172.21.0.212:445      *:*\n"
        "root     sshd       700   4   tcp4   172.21.0.201:22       172.21.0.50:40000\n"
    )
    assert host.sockstat_sockets(out, VIP1) == ["*:*", "172.21.0.50:50123"]
    assert host.sockstat_sockets(out, IPv4Address("172.21.0.214")) == []


def test_proc_net_tcp_gives_the_clients_of_an_address_and_port() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: D30015AC:01BD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
        "   1: D30015AC:01BD 320015AC:C3CB 01 00000000:00000000 00:00000000 00000000     0\n"
        "   2: D30015AC:01BD 330015AC:9C41 01 00000000:00000000 00:00000000 00000000     0\n"
        "   3: D30015AC:01BD 340015AC:9C42 06 00000000:00000000 00:00000000 00000000     0\n"
        "   4: D40015AC:01BD 350015AC:9C43 01 00000000:00000000 00:00000000 00000000     0\n"
        "   5: D30015AC:0016 360015AC:9C44 01 00000000:00000000 00:00000000 00000000     0\n"
    )  # a listener, two clients, one in TIME_WAIT, one of another VIP, one of sshd
    assert host.proc_net_tcp_clients(table, VIP1) == [
        ("172.21.0.50", 50123),
        ("172.21.0.51", 40001),
    ]


def test_proc_net_tcp_clients_of_a_connection_on_this_host() -> None:
    with socket.socket() as listening, socket.socket() as client:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        client.connect(listening.getsockname())
        port = listening.getsockname()[1]
        table = Path("/proc/net/tcp").read_text()
        found = host.proc_net_tcp_clients(table, IPv4Address("127.0.0.1"), port)
        assert found == [("127.0.0.1", client.getsockname()[1])]


def test_proc_net_tcp_listening_socket_on_this_host() -> None:
    with socket.socket() as listening, socket.socket() as bound:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound.bind(("127.0.0.1", 0))  # bound, not listening
        table = Path("/proc/net/tcp").read_text()
        loopback = IPv4Address("127.0.0.1")
        assert host.proc_net_tcp_listens(table, loopback, listening.getsockname()[1])
        assert not host.proc_net_tcp_listens(table, loopback, bound.getsockname()[1])
        assert host.listens(loopback, listening.getsockname()[1])


def test_processes_of_this_node_include_this_one() -> None:
    table = host.processes()
    assert os.getpid() in table
    assert "python" in table[os.getpid()][0]
    assert all(table.values())  # kernel threads (kthreadd: pid 2) have no argv: not listed
