"""`hafs verify --failover`: a failover drill, timed from a client's point of view.

Theory of operation
-------------------
The drill starts from a passing :func:`hafs.verify.run_verify` (it knows who holds what from
the ``IPC$`` comment) and a :class:`Monitor` that polls every VIP every ``interval`` (100 ms;
polls overlap, each with a short timeout). A poll reads the canary of every share that has one
(lists the root of the others) over a session it reuses or makes: then it has *served*; a new
session then lists the shares, which names the holder: then it has *answered*. Every poll is
kept as a :class:`Sample`, so the report and the timeline picture are built from the same
observations.

Then, for each node in turn (a *round*):

1. note the VIPs it holds now; write a fresh canary into every writable share of them and wait
   ``settle`` seconds (by default two replication intervals: one until the next snapshot, one
   for its send) so the backups have it;
2. **kill** it (:class:`Killer`): the first poll begun after the kill that answers from
   another node names the new holder; RTO is the time from the kill until the first poll of
   the unbroken run of served polls leading to it served (on a fresh smbd the first share
   list waits about a second for samba-dcerpcd; clients reading files do not). The canary as
   read in that poll is the data check (intact, missing, differs). The goal is
   ``3*advbase + advskew/256 + 1 s`` (VRRPv3: ``3*interval + Skew_Time + 1 s``), ``advskew``
   (priority) of the best surviving carrier, which is also
   the node expected to take over;
3. write a new canary through the new holder (data written during the outage must survive the
   failback);
4. **restore** it: failback time is from the restore to the first poll that answers from the
   VIP's home again; the canary then must be the one written during the outage. Nothing is
   expected when the node does not preempt (``failback = False``) or is not the VIP's home.

The drill passes when every VIP of every round came back within its goal, on the expected
node, with its data intact, and failed back with its data. The kill/restore methods are
:class:`Killer` implementations: :class:`LabKiller` (power loss and power-on of a lab node),
:class:`CommandKiller` (shell command templates for a real cluster) and :class:`PipeKiller`, which
asks another process to do it: ``hafs verify --failover --lab`` runs the drill inside the lab's
client namespace (all SMB traffic stays there) and serves the lab's kills from outside with
:func:`serve_killer`.

The package, one module per part: :mod:`~hafs.drill.monitor` (the polls and their samples),
:mod:`~hafs.drill.killers` (taking a node down and bringing it back), :mod:`~hafs.drill.run`
(the rounds, :func:`~hafs.drill.run.run_drill`), :mod:`~hafs.drill.report` (outcomes, goals,
verdicts, the text report) and :mod:`~hafs.drill.plot` (the timeline picture).
"""

from __future__ import annotations

from collections.abc import Callable

from hafs.errors import HafsError

Progress = Callable[[str], None]


class DrillError(HafsError):
    """The drill could not go on (a kill or restore failed, the cluster was unhealthy)."""

    exit_code = 1
