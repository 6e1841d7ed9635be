"""The agent's runtime pieces: hooks (order, timeout, logs), metrics, systemd notifications."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hafs.agentconf import AGENT_SOCKET_ENV, PREVIOUS_MASTER_ENV, AgentConfig, VhidEntry
from hafs.carp.agent import Agent
from hafs.carp.hooks import Command, HookRunner
from hafs.carp.machine import LinkUp, State, Transition
from hafs.carp.metrics import AgentCollector

PEER = IPv4Address("10.0.0.2")


def test_hooks_of_one_vhid_run_in_order_and_never_block(tmp_path: Path) -> None:
    out = tmp_path / "order"

    async def main() -> float:
        runner = HookRunner(timeout=5)
        loop = asyncio.get_running_loop()
        began = loop.time()
        slow = Command(("sh", "-c", f"sleep 0.3; echo first >> {out}"))
        fast = Command(("sh", "-c", f"echo second >> {out}"))
        runner.submit(1, [slow, fast])
        returned = loop.time() - began  # submit returns at once
        await runner.drain(5)
        await runner.close()
        return returned

    returned = asyncio.run(main())
    assert returned < 0.05
    assert out.read_text().split() == ["first", "second"]


def test_hooks_of_other_vhids_run_beside(tmp_path: Path) -> None:
    async def main() -> list[str]:
        runner = HookRunner(timeout=5)
        runner.submit(1, [Command(("sh", "-c", f"sleep 0.5; echo one >> {tmp_path}/x"))])
        runner.submit(2, [Command(("sh", "-c", f"echo two >> {tmp_path}/x"))])
        await runner.drain(5)
        await runner.close()
        return (tmp_path / "x").read_text().split()

    assert asyncio.run(main()) == ["two", "one"]


def test_hook_timeout_kills_its_process_group_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hafs.hooks")

    async def main() -> None:
        runner = HookRunner(timeout=0.3)
        runner.submit(1, [Command(("sh", "-c", "echo started; sleep 30 & sleep 30"))])
        await runner.drain(5)
        await runner.close()
        assert runner.results[-1].returncode is None
        assert runner.results[-1].seconds < 5

    asyncio.run(main())
    assert "killed after 0.3s" in caplog.text
    assert "vhid 1 hook output: started" in caplog.text


def test_hook_exit_status_and_env_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hafs.hooks")

    async def main() -> None:
        runner = HookRunner(timeout=5)
        command = Command(("sh", "-c", 'echo "vhid=$UCARP_VHID"; exit 3'), {"UCARP_VHID": "4"})
        runner.submit(4, [command, Command(("/nonexistent/hook",))])
        await runner.drain(5)
        await runner.close()

    asyncio.run(main())
    assert "exited 3" in caplog.text and "vhid 4 hook output: vhid=4" in caplog.text
    assert "cannot start" in caplog.text


@pytest.fixture
def agent() -> Iterator[Agent]:
    config = AgentConfig(
        node="n1", interface="eth0", srcip=IPv4Address("10.0.0.1"), passphrase="p",
        vhids=(VhidEntry(7, (IPv4Address("10.0.0.100"),), advskew=10),), event_command=(),
    )  # fmt: skip
    agent = Agent(config)
    agent._loop = asyncio.new_event_loop()
    agent.interfaces["eth0"] = SimpleNamespace(  # type: ignore[assignment]
        own={IPv4Address("10.0.0.1")}, running=True, srcip=IPv4Address("10.0.0.1"),
        sock=SimpleNamespace(recv=lambda: None),
    )  # fmt: skip
    agent.hooks.submit = lambda vhid, commands: None  # type: ignore[method-assign]
    agent._handle(agent.vhids[("eth0", 7)], LinkUp())
    yield agent
    agent._loop.close()


def test_metrics_describe_every_vhid(agent: Agent) -> None:
    agent.drops["bad ttl"] = 3
    collector = AgentCollector(agent)

    async def scrape() -> list[Any]:  # the loop runs while another thread scrapes
        return await asyncio.to_thread(lambda: list(collector.collect()))

    families = agent.loop.run_until_complete(scrape())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    state = ("hafs_carp_state", (("interface", "eth0"), ("state", "BACKUP"), ("vhid", "7")))
    assert samples[state] == 1.0
    assert samples[("hafs_carp_advskew", (("interface", "eth0"), ("vhid", "7")))] == 10
    assert samples[("hafs_carp_drops_total", (("reason", "bad ttl"), ("vhid", "")))] == 3
    assert samples[("hafs_carp_demotion", ())] == 0


def test_a_hook_leaving_a_child_on_its_stdout_does_not_stall_its_vhid() -> None:
    async def main() -> float:
        runner = HookRunner(timeout=10)
        began = asyncio.get_running_loop().time()
        runner.submit(1, [Command(("sh", "-c", "sleep 5 & echo left"))])
        await runner.drain(10)
        took = asyncio.get_running_loop().time() - began
        await runner.close()
        assert runner.results[-1].returncode == 0
        return took

    assert asyncio.run(main()) < 3


def test_the_event_hook_is_told_which_master_it_replaces(caplog: pytest.LogCaptureFixture) -> None:
    config = AgentConfig(
        node="n1", interface="eth0", srcip=IPv4Address("10.0.0.1"), passphrase="p",
        vhids=(VhidEntry(7, (IPv4Address("10.0.0.100"),), advskew=10),),
        event_command=("hafs", "event"), control_socket="/run/x.sock",
    )  # fmt: skip
    agent = Agent(config)
    submitted: list[Command] = []
    agent.hooks.submit = lambda vhid, commands: submitted.extend(commands)  # type: ignore[method-assign]
    vhid = agent.vhids[("eth0", 7)]
    caplog.set_level(logging.INFO, "hafs.agent")
    agent._transition(vhid, Transition(State.BACKUP, State.MASTER, "master timed out", PEER))
    agent._transition(vhid, Transition(State.MASTER, State.BACKUP, "more frequent ..."))
    assert [c.argv for c in submitted] == [
        ("hafs", "event", "7@eth0", "MASTER"),
        ("hafs", "event", "7@eth0", "BACKUP"),
    ]
    assert submitted[0].env == {AGENT_SOCKET_ENV: "/run/x.sock", PREVIOUS_MASTER_ENV: "10.0.0.2"}
    assert submitted[1].env == {AGENT_SOCKET_ENV: "/run/x.sock"}
    assert "BACKUP -> MASTER (master timed out; master was 10.0.0.2)" in caplog.text
