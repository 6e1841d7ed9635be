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
