"""The package layout: imports point one way, cli -> recipes -> training -> models -> data ->
config -> pooling (errors and metrics sit at the bottom beside pooling)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import poolft

PACKAGE = Path(poolft.__file__).parent

#: a stage may import only stages of a lower rank (and itself)
RANKS = {
    "pooling": 0,
    "errors": 0,
    "metrics": 0,
    "config": 1,
    "data": 2,
    "models": 3,
    "training": 4,
    "recipes": 5,
    "cli": 6,
    "__main__": 7,
}
#: the package root re-exports the public API; the alias module keeps a documented path
EXEMPT = {"__init__", "cpu_dropout"}


def stage_of(dotted: str) -> str:
    """``poolft.models.modeling`` -> ``models``; ``poolft`` -> ``""`` (the package root)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """Absolute ``poolft...`` modules that ``node`` in ``module`` imports (empty if not poolft's)."""
    if node.level:
        is_package = (PACKAGE / Path(*module.split(".")[1:]) / "__init__.py").is_file()
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not (target == "poolft" or target.startswith("poolft.")):
        return []
    if target == "poolft" or node.module is None:  # `from . import x`: x may be a module
        return [f"{target}.{alias.name}" for alias in node.names]
    return [target]


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    relative = path.relative_to(root.parent).with_suffix("")
    module = ".".join(p for p in relative.parts if p != "__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found += [(node.lineno, target) for target in resolve(module, node)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("poolft.")]
    return found


def reverse_imports(root: Path = PACKAGE) -> list[str]:
    """``file:line imports X`` for every import that runs up a level (or into an unknown stage)."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        own = path.relative_to(root).parts[0].removesuffix(".py")
        if own in EXEMPT:
            continue
        for line, target in imports_of(path, root):
            stage = stage_of(target)
            if stage in ("", "__version__"):  # the package root (``__version__``) is always loaded
                continue
            if own not in RANKS or stage not in RANKS:
                problems.append(f"{path.relative_to(root.parent)}:{line} {own} -> {target}: stage not in the layout")
            elif stage != own and RANKS[stage] >= RANKS[own]:
                problems.append(f"{path.relative_to(root.parent)}:{line} {own} imports {target} (a level up)")
    return problems


def test_imports_point_one_way():
    assert reverse_imports() == []


def test_every_stage_is_a_folder_with_a_docstring_that_says_what_it_may_import():
    for stage in ("pooling", "data", "models", "training", "recipes", "metrics"):
        init = PACKAGE / stage / "__init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring, f"{init} has no docstring"
        if stage not in ("pooling", "metrics"):
            assert "May import" in docstring, f"{init} does not say what the stage may import"


@pytest.mark.parametrize(
    ("file", "source", "reverse"),
    [
        ("data/text.py", "from ..models.modeling import patch_grid\n", True),
        ("models/backbones.py", "from ..training import loop\n", True),
        ("training/loop.py", "from poolft.recipes.sweep import run_sweep\n", True),
        ("config.py", "from .data.sources import load_splits\n", True),
        ("training/loop.py", "from ..models import backbones\nfrom .optim import build_optimizer\n", False),
        ("recipes/sweep.py", "    from ..training.loop import train\n".strip() + "\n", False),
    ],
)
def test_the_check_catches_a_reverse_import(tmp_path, file, source, reverse):
    """The checker itself, on a scratch package: an import up a level is reported, one down is not."""
    root = tmp_path / "poolft"
    for stage in ("data", "models", "training", "recipes"):
        (root / stage).mkdir(parents=True)
        (root / stage / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / file).write_text(source)
    assert bool(reverse_imports(root)) is reverse


def test_documented_paths_still_import_after_the_move():
    """The README's paths: ``poolft.cpu_dropout.use_cpu_dropout`` right after ``import poolft``."""
    import subprocess
    import sys

    code = "import poolft; poolft.cpu_dropout.use_cpu_dropout; poolft.PoolftForSequenceClassification"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from poolft.cpu_dropout import use_cpu_dropout
    from poolft.training.cpu_dropout import use_cpu_dropout as moved

    assert use_cpu_dropout is moved
