"""The code's layout holds as the README describes it: two halves, short functions, declared options."""
import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

from largebatch.training.config import Config
from largebatch.training.recipes import RECIPES, recipe_of

PACKAGE = ROOT / "largebatch"
MAX_FUNCTION_LINES = 60


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Absolute names of the largebatch modules `path` imports."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            names.add(".".join(p for p in (base, node.module or "") if p))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("largebatch")}


def test_every_option_declares_whether_it_shapes_the_trajectory():
    for f in dataclasses.fields(Config):
        assert isinstance(f.metadata.get("trajectory"), bool), f"{f.name} is not classified"
    shaping = set(Config().trajectory())
    assert {"global_batch", "base_lr", "warmup", "bn_batch", "seed", "model", "optimizer"} <= shaping
    assert not {"run_dir", "resume", "workers", "report_to", "data_dir", "allow_change"} & shaping


def test_training_never_imports_the_tools():
    for path in (PACKAGE / "training").glob("*.py"):
        tools = {n for n in _imported(path) if n.startswith("largebatch.tools")}
        assert not tools, f"{path.relative_to(ROOT)} imports {tools}"


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({length} lines)")
    assert not long, long


def test_every_recipe_script_is_a_registered_recipe():
    scripts = {p.stem for p in (ROOT / "recipes").glob("*.py")}
    assert scripts == set(RECIPES)
    for name in scripts:
        assert recipe_of(f"recipes/{name}.py")[1] is RECIPES[name]
        assert f'run_recipe("{name}")' in (ROOT / "recipes" / f"{name}.py").read_text()


@pytest.mark.slow
def test_python_m_largebatch_is_the_command():
    out = subprocess.run([sys.executable, "-m", "largebatch", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for command in ("compare", "sweep", "report", "dashboard", "plan", "noise"):
        assert command in out.stdout
