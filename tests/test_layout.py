"""Layout contracts: `models` never depends on `kfac_mem`, the CLI starts, public names import."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import kfac_mem
import models
from kfac_mem import cli

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_models_never_imports_kfac_mem():
    files = sorted((ROOT / "models").rglob("*.py"))
    assert len(files) >= 10, files
    offenders = {
        str(f.relative_to(ROOT)): sorted(
            n for n in _imported_modules(f) if n.split(".")[0] == "kfac_mem"
        )
        for f in files
    }
    assert not {f: n for f, n in offenders.items() if n}, offenders


def test_importing_models_loads_no_kfac_mem_module():
    code = (
        "import sys, models; bad = [m for m in sys.modules if m.split('.')[0] == 'kfac_mem']; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


PUBLIC_PACKAGES = (
    "models",
    "kfac_mem",
    "kfac_mem.analysis",
    "kfac_mem.baselines",
    "kfac_mem.cli",
    "kfac_mem.demo",
    "kfac_mem.editing",
    "kfac_mem.evaluation",
    "kfac_mem.vision",
)


@pytest.mark.parametrize("name", PUBLIC_PACKAGES)
def test_public_names_import(name):
    package = importlib.import_module(name)
    assert package.__all__, f"{package.__name__}.__all__ is empty"
    for name in package.__all__:
        assert getattr(package, name) is not None, f"{package.__name__}.{name}"
    fresh = {}
    exec(f"from {package.__name__} import *", fresh)
    assert set(package.__all__) <= set(fresh)


@pytest.mark.parametrize("package", [models, kfac_mem])
def test_every_module_imports(package):
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # runs the program on import
            importlib.import_module(info.name)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: kfac-mem" in out
    for name in cli._available():
        assert name in out
        with pytest.raises(SystemExit) as sub_exit:
            cli.main([name, "--help"])
        assert sub_exit.value.code == 0, name
        assert f"usage: kfac-mem {name}" in capsys.readouterr().out


def test_console_script_entry_point():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("kfac-mem") == "kfac_mem.cli:main"
