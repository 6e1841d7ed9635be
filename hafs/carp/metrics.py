"""Prometheus metrics of the agent, read from its status at scrape time (opt-in)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hafs.errors import HafsError

if TYPE_CHECKING:
    from hafs.carp.agent import Agent


class AgentCollector:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def _status(self) -> dict[str, Any]:
        return self.agent.status()  # read on the loop's thread, never while it changes

    def collect(self) -> Iterator[Any]:
        status = asyncio.run_coroutine_threadsafe(self._status(), self.agent.loop).result(5)
        yield from self.families(status)

    @staticmethod
    def families(status: dict[str, Any]) -> Iterator[Any]:
        """The metric families of one status (a CARP vhid has a skew, a VRRPv3 one a
        priority)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["vhid", "interface"]
        state = GaugeMetricFamily(
            "hafs_carp_state", "1 for the vhid's current state", labels=[*labels, "state"]
        )
        sent = CounterMetricFamily("hafs_carp_adverts_sent", "adverts sent", labels=labels)
        received = CounterMetricFamily(
            "hafs_carp_adverts_received", "valid adverts received", labels=labels
        )
        drops = CounterMetricFamily(
            "hafs_carp_drops", "packets dropped, by reason", labels=["vhid", "reason"]
        )
        skew = GaugeMetricFamily("hafs_carp_advskew", "advertised skew", labels=labels)
        priority = GaugeMetricFamily(
            "hafs_vrrp_priority", "advertised VRRPv3 priority", labels=labels
        )
        for v in status["vhids"]:
            key = [str(v["vhid"]), v["interface"]]
            for name in ("INIT", "BACKUP", "MASTER"):
                state.add_metric([*key, name], 1.0 if v["state"] == name else 0.0)
            sent.add_metric(key, v["adverts_sent"])
            received.add_metric(key, v["adverts_received"])
            if "advertised_priority" in v:
                priority.add_metric(key, v["advertised_priority"])
            else:
                skew.add_metric(key, v["advertised_skew"])
            for reason, count in v["drops"].items():
                drops.add_metric([str(v["vhid"]), reason], count)
        for reason, count in status["drops"].items():
            drops.add_metric(["", reason], count)
        demotion = GaugeMetricFamily("hafs_carp_demotion", "host-wide demotion")
        demotion.add_metric([], status["demotion"]["total"])
        yield from (state, sent, received, drops, skew, priority, demotion)


def serve_metrics(agent: Agent, address: str) -> None:
    """Serve /metrics on ``address`` ("host:port") from a background thread."""
    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY

    host, _, port = address.rpartition(":")
    if not port.isdigit() or not host:
        raise HafsError(f"metrics: {address!r}: write host:port, e.g. 127.0.0.1:9612")
    REGISTRY.register(AgentCollector(agent))
    start_http_server(int(port), addr=host.strip("[]"))
