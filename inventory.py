"""The example cluster: the seed's four file servers, laid out the way hafs recommends.

Each node has a fixed address of its own (.201-.204) and is home of one VIP, the
address clients use (.211-.214, the seed's addresses). Every node backs up every
VIP with a derived advskew layout (no ties; two failures spread over the
survivors). `hafs lab up` runs exactly this cluster in network namespaces.
"""

_SUBNET = "172.21.0.{}/20"
_GATEWAY = "172.21.0.1"


def _node(index: int, os: str, interface: str, shares: list[str]) -> tuple[str, dict[str, object]]:
    return f"ha-file-server-{index}", {
        "os": os,
        "interface": interface,
        "address": _SUBNET.format(200 + index),
        "gateway": _GATEWAY,
        "vips": [
            {
                "vhid": index,
                "name": f"vip{index}",
                "address": f"172.21.0.{210 + index}",
                "shares": shares,
            }
        ],
    }


freebsd = [
    _node(1, "freebsd", "em0", ["projects"]),
    _node(2, "freebsd", "em0", ["home"]),
    _node(3, "freebsd", "em0", ["media"]),
]
linux = [_node(4, "linux", "ens36", ["archive"])]
