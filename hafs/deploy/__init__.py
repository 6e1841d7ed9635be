"""pyinfra deploys that build every node of a hafs cluster from the one cluster model.

``pyinfra inventory.py deploys/cluster.py`` runs :func:`node` on every host. It reads the
cluster from pyinfra's inventory (the same model ``hafs check``/``hafs render`` read, see
:mod:`hafs.deploy.common`) and builds the host's node by its OS: :mod:`hafs.deploy.freebsd`
(kernel CARP in rc files, devd hook) or :mod:`hafs.deploy.linux` (the hafs CARP agent as a
systemd service). Both install Samba, the ZFS layout, hafs itself and the replication ssh
keys; :mod:`hafs.deploy.ops` and :mod:`hafs.deploy.facts` hold the operations and facts
pyinfra lacks. A second run changes nothing.

:mod:`hafs.deploy.vagrant` gives the same cluster as VMs (the repository's ``Vagrantfile``).
"""

from __future__ import annotations

from pyinfra.api.deploy import deploy

from hafs.deploy import common, freebsd, linux


@deploy("hafs node")
def node() -> None:
    """Build this host's node of the cluster (raises HafsError on a bad inventory)."""
    target = common.target()
    if target.node.os == "freebsd":
        freebsd.freebsd_node(target=target)
    else:
        linux.linux_node(target=target)
