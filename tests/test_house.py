"""The shape of the code: imports point one way (commands -> runs -> models -> engine), and the
commands only parse, call and print."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "stagetune"
LAYERS = ["engine", "vision|collab|curvefit", "runs|sweeps", "commands"]  # each may import only those before it


def imported(path: Path) -> set[str]:
    """The stagetune modules a file imports, at any depth (deferred imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("stagetune.")}


def layer_of(module: str) -> int | None:
    part = module.split(".")[1]
    return next((k for k, names in enumerate(LAYERS) if part in names.split("|")), None)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_points_back_up(path):
    here = layer_of("stagetune." + ".".join(path.relative_to(SRC).with_suffix("").parts))
    if here is None:
        return
    upward = sorted(m for m in imported(path) if (there := layer_of(m)) is not None and there > here)
    assert not upward, f"{path.relative_to(ROOT)} imports from a layer above it: {upward}"


def test_nothing_but_the_entry_points_imports_a_command():
    outside = [p for p in [*SRC.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")] if "commands" not in p.parts and p.name != "__main__.py"]
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported(p) if m.startswith("stagetune.commands")) for p in outside}
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("path", sorted((SRC / "commands").glob("*.py")), ids=lambda p: p.name)
def test_a_command_is_short(path):
    """A command parses, calls the run or the library, and prints: about 150 lines at most."""
    assert len(path.read_text().splitlines()) <= 150
