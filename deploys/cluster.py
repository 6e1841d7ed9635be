"""Build every node of the cluster: ``pyinfra inventory.py deploys/cluster.py``.

Run it from the inventory's directory (pyinfra reads ``group_data/`` there). The work is
:func:`hafs.deploy.node`; an inventory problem stops the run with one line.
"""

from pyinfra.api.exceptions import PyinfraError

from hafs.deploy import node
from hafs.errors import HafsError

try:
    node()
except HafsError as exc:
    raise PyinfraError(f"hafs: {exc}") from exc
