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
  nothing); ``hafs_service_replication_last_success_timestamp_seconds{vip,peer}``: when.
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
) -> str:
    """The metrics text: the ``vips`` this node carries, the round's replication ``report``
    (VIP -> peer -> outcome), the kept-aside copies (``DivergedCopy.as_dict()``) and the
    pool's space (None: not read this round)."""
    lines = []
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
    stamps = []
    for vip, peers in sorted(report.items()):
        for peer, item in sorted(peers.items()):
            lines.append(
                f"hafs_service_replication_ok{_labels(vip=vip, peer=peer)} {int(item['ok'])}"
            )
            if item["ok"]:
                stamps.append(f"{_labels(vip=vip, peer=peer)} {item['at']:.3f}")
    lines += [
        "# HELP hafs_service_replication_last_success_timestamp_seconds When the peer last had "
        "the VIP's newest snapshot.",
        "# TYPE hafs_service_replication_last_success_timestamp_seconds gauge",
        *(f"hafs_service_replication_last_success_timestamp_seconds{s}" for s in stamps),
    ]
    return "\n".join(lines) + "\n"
