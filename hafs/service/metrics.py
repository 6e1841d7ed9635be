"""The service daemon's metrics, for node_exporter's textfile collector.

Every round the daemon writes :data:`METRICS_FILE` (Prometheus text format, replaced
atomically): point ``node_exporter --collector.textfile.directory`` at ``/var/run/hafs``.

- ``hafs_service_diverged_copies{vip}``, ``hafs_service_diverged_bytes{vip}``: kept-aside copies
  on this node (:mod:`hafs.service.divergence`): data that exists here only, waiting for an
  operator. Alert on any above 0.
- ``hafs_service_pool_size_bytes``, ``hafs_service_pool_free_bytes``,
  ``hafs_service_pool_headroom_bytes`` (:mod:`hafs.service.space`): alert when free is below
  headroom; ``hafs_service_diverged_budget_bytes``: alert when the copies near it.
- ``hafs_service_replication_ok{vip,peer}``: 1 if, at the last round, the peer had the newest
  snapshot of a VIP held here (sent then, or before: a VIP with nothing written sends
  nothing); ``hafs_service_replication_last_success_timestamp_seconds{vip,peer}``: when;
  ``hafs_service_replication_as_of_timestamp_seconds{vip,peer}``: the peer has every write made
  before then (alert on ``time() -`` it above a few replication intervals: the lag).
- ``hafs_service_demotion_hold{name}``: this node's demotion holds (the agent's on Linux, the
  kernel's on FreeBSD), the advskew each adds: a node held back does not preempt.
- ``hafs_service_takeover_seconds{vip}``, ``hafs_service_takeover_step_seconds{vip,step}``:
  this node's last takeover of the VIP, from its CARP master to smbd serving and the clients
  told (:class:`hafs.service.takeover.Record`), and each step's share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hafs.service.config import VipService
from hafs.service.runtime import RUN_DIR
from hafs.service.space import Space

METRICS_FILE = RUN_DIR / "hafs_service.prom"


def _labels(**labels: str) -> str:
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + ",".join(escaped) + "}"


def render(
    vips: Iterable[VipService],
    report: Mapping[str, Mapping[str, Any]],
    diverged: list[dict[str, Any]],
    pool: Space | None = None,
    holds: Mapping[str, int] | None = None,
    takeovers: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The metrics text: the ``vips`` this node carries, the round's replication ``report``
    (VIP -> peer -> outcome), the kept-aside copies (``DivergedCopy.as_dict()``), the
    pool's space (None: not read this round), the demotion ``holds`` (None: not known) and
    the last takeover record per VIP."""
    lines = _holds(holds) + _takeovers(takeovers or {})
    if pool is not None:
        for metric, value, text in (
            ("pool_size_bytes", pool.size, "The pool's size (used and available)."),
            ("pool_free_bytes", pool.free, "The pool's available space."),
            ("pool_headroom_bytes", pool.headroom, "Space the shares never take."),
            ("diverged_budget_bytes", pool.diverged_budget, "Space for kept-aside copies."),
        ):
            lines += [
                f"# HELP hafs_service_{metric} {text}",
                f"# TYPE hafs_service_{metric} gauge",
                f"hafs_service_{metric} {value}",
            ]
    lines += [
        "# HELP hafs_service_diverged_copies Kept-aside copies of diverged data on this node.",
        "# TYPE hafs_service_diverged_copies gauge",
    ]
    names = sorted({*(v.name for v in vips), *(c["vip"] for c in diverged)})
    for vip in names:
        count = sum(1 for c in diverged if c["vip"] == vip)
        lines.append(f"hafs_service_diverged_copies{_labels(vip=vip)} {count}")
    lines += [
        "# HELP hafs_service_diverged_bytes Space used by the kept-aside copies.",
        "# TYPE hafs_service_diverged_bytes gauge",
    ]
    for vip in names:
        used = sum(c["used"] for c in diverged if c["vip"] == vip)
        lines.append(f"hafs_service_diverged_bytes{_labels(vip=vip)} {used}")
    lines += [
        "# HELP hafs_service_replication_ok 1 if the peer had the VIP's newest snapshot at the "
        "last round.",
        "# TYPE hafs_service_replication_ok gauge",
    ]
    stamps, as_of = [], []
    for vip, peers in sorted(report.items()):
        for peer, item in sorted(peers.items()):
            lines.append(
                f"hafs_service_replication_ok{_labels(vip=vip, peer=peer)} {int(item['ok'])}"
            )
            if item["ok"]:
                stamps.append(f"{_labels(vip=vip, peer=peer)} {item['at']:.3f}")
            if item["ok"] and "as_of" in item:
                as_of.append(f"{_labels(vip=vip, peer=peer)} {item['as_of']:.3f}")
    lines += [
        "# HELP hafs_service_replication_last_success_timestamp_seconds When the peer last had "
        "the VIP's newest snapshot.",
        "# TYPE hafs_service_replication_last_success_timestamp_seconds gauge",
        *(f"hafs_service_replication_last_success_timestamp_seconds{s}" for s in stamps),
        "# HELP hafs_service_replication_as_of_timestamp_seconds The peer has every write of "
        "the VIP made before this.",
        "# TYPE hafs_service_replication_as_of_timestamp_seconds gauge",
        *(f"hafs_service_replication_as_of_timestamp_seconds{s}" for s in as_of),
    ]
    return "\n".join(lines) + "\n"


def _holds(holds: Mapping[str, int] | None) -> list[str]:
    if holds is None:
        return []
    return [
        "# HELP hafs_service_demotion_hold A demotion hold of this node: the advskew it adds.",
        "# TYPE hafs_service_demotion_hold gauge",
        *(f"hafs_service_demotion_hold{_labels(name=n)} {v}" for n, v in sorted(holds.items())),
    ]


def _takeovers(takeovers: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each VIP's last takeover here: master (or the takeover's start) to serving, and the
    steps until then. A record this code cannot read is left out."""
    totals, steps = [], []
    for vip, record in sorted(takeovers.items()):
        try:
            began = record["master"] if record.get("master") is not None else record["began"]
            totals.append(f"{_labels(vip=vip)} {float(record['served']) - float(began):.4f}")
            steps += [
                f"{_labels(vip=vip, step=str(name))} {float(took):.4f}"
                for name, took in record["steps"]
            ]
        except (KeyError, TypeError, ValueError):
            continue
    if not totals:
        return []
    return [
        "# HELP hafs_service_takeover_seconds This node's last takeover of the VIP: from its "
        "CARP master to smbd serving.",
        "# TYPE hafs_service_takeover_seconds gauge",
        *(f"hafs_service_takeover_seconds{t}" for t in totals),
        "# HELP hafs_service_takeover_step_seconds The seconds of each step of that takeover.",
        "# TYPE hafs_service_takeover_step_seconds gauge",
        *(f"hafs_service_takeover_step_seconds{s}" for s in steps),
    ]
