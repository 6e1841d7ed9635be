"""The seed cluster (shared/seed) as a hafs inventory, flaws included.

`hafs render` reproduces the seed's rc.conf and loader.conf from it, and `hafs check`
reports what the seed gets wrong: advskew ties on vhids 2 and 3, no fixed node
addresses, and failback wanted (ucarp --preempt) while FreeBSD's preempt is off.
The example `inventory.py` at the top of the repository is the corrected layout.
"""

# vhid -> advskew per node, the seed's explicit matrix (shared/seed/README.md)
_NODES = ("ha-file-server-1", "ha-file-server-2", "ha-file-server-3", "ha-file-server-4")
_MATRIX = {
    1: (0, 2, 3, 4),
    2: (2, 0, 2, 3),
    3: (3, 2, 0, 2),
    4: (4, 3, 2, 0),
}
# what every seed rc.conf sets besides the network and CARP lines
_RC_CONF = {
    "clear_tmp_enable": "YES",
    "sshd_enable": "YES",
    "ntpdate_enable": "YES",
    "dumpdev": "AUTO",
    "samba_server_enable": "YES",
}


def _vip(vhid: int) -> dict[str, object]:
    return {
        "vhid": vhid,
        "address": f"172.21.0.21{vhid}/20",
        "advskew": dict(zip(_NODES, _MATRIX[vhid], strict=True)),
    }


def _freebsd(vhid: int) -> tuple[str, dict[str, object]]:
    # no fixed address: the node's address is its own CARP VIP, as in the seed
    return _NODES[vhid - 1], {
        "os": "freebsd",
        "interface": "em0",
        "gateway": "172.21.0.1",
        "carp_preempt": False,  # the seed never sets net.inet.carp.preempt
        "rc_conf": _RC_CONF,
        "vips": [_vip(vhid)],
    }


freebsd = [_freebsd(1), _freebsd(2), _freebsd(3)]
linux = [
    (
        "ha-file-server-4",
        {
            "os": "linux",
            "interface": "ens36",
            "address": "172.21.0.214/20",  # the static address is also vhid 4's VIP
            "gateway": "172.21.0.1",
            "vips": [_vip(4)],
        },
    )
]
