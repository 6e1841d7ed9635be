"""The code stays formatted, linted, typed and layered: CI enforces it through the test command.

Layers: the CARP agent (hafs/carp) knows nothing of the service layer (hafs/service); what
combines the two lives above both (hafs/status.py). The service daemon runs on FreeBSD too,
where pyroute2 (Linux netlink, the agent's) has no business: importing it must not load it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)


def test_ruff_lint() -> None:
    result = run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function, by its full name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_carp_never_imports_service() -> None:
    found = {
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / "hafs" / "carp").glob("*.py"))
        for name in imported_modules(path)
        if name == "hafs.service" or name.startswith("hafs.service.")
    }
    assert not found, sorted(found)


@pytest.mark.parametrize("module", ["hafs.service.daemon", "hafs.service.cli"])
def test_the_service_layer_loads_no_pyroute2(module: str) -> None:
    code = f"import {module}, sys; print('pyroute2' in sys.modules)"
    result = run(sys.executable, "-c", code)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


# What a node runs: the CLI with every command group, the agent, the service daemon and its
# hooks, `hafs cluster status`. A node installs `hafs` without extras (pyproject.toml): none
# of these may need the deploy host's pyinfra, the drill's matplotlib or the tests' scapy.
NODE_CODE = (
    "import sys\n"
    "from hafs import cli, cluster_status, status\n"
    "from hafs.carp import agent\n"
    "from hafs.service import daemon, cli as service_cli\n"
    "for argv in (['--help'], ['service', 'run', '--help'], ['agent', '--help']):\n"
    "    try:\n"
    "        cli.main(argv)\n"
    "    except SystemExit:\n"
    "        pass\n"
    "print(sorted(m for m in ('pyinfra', 'matplotlib', 'scapy', 'gevent') if m in sys.modules))\n"
)


def test_what_a_node_runs_needs_no_extra() -> None:
    result = run(sys.executable, "-c", NODE_CODE)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


def test_an_inventory_without_pyinfra_is_one_line_naming_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['pyinfra'] = None  # as on a node: not installed\n"
        "from hafs.cli import main\n"
        "sys.exit(main(['check', '-i', 'inventory.py']))\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "reading an inventory needs pyinfra" in result.stderr
    assert "pip install 'hafs[deploy]'" in result.stderr
    assert "Traceback" not in result.stderr
