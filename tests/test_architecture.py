"""The package's dependency order (pyproject.toml, [tool.importlinter]): nothing imports upward, no cycles, and no
module outside the CLI hides a dfgan import inside a function body to dodge one."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from dfgan.spec import REPO_ROOT

PACKAGE = REPO_ROOT / "dfgan"
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` with the repository's contract."""
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run([*LINT, "--no-cache", str(REPO_ROOT / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layers_contract_is_kept():
    out = _lint(REPO_ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_layers_contract_fails_on_an_upward_import(tmp_path):
    """The contract can fail: the spec (bottom layer) importing the training loop (above it) is reported."""
    shutil.copytree(PACKAGE, tmp_path / "dfgan", ignore=shutil.ignore_patterns("__pycache__"))
    spec = tmp_path / "dfgan" / "spec.py"
    spec.write_text(spec.read_text().replace("import yaml\n", "import yaml\n\nimport dfgan.train.loop  # noqa\n", 1))
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout and "dfgan.spec -> dfgan.train.loop" in out.stdout


def test_no_dfgan_imports_inside_functions_outside_the_cli():
    """Outside ``dfgan.cli`` (whose handlers import lazily so that ``dfgan --help`` stays fast), every dfgan
    import stands at the top of its module, where the contract sees it."""
    hidden = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    names = ([inner.module or ""] if isinstance(inner, ast.ImportFrom) and not inner.level else
                             [a.name for a in inner.names] if isinstance(inner, ast.Import) else [])
                    if any(n == "dfgan" or n.startswith("dfgan.") for n in names):
                        hidden.append(f"{path.relative_to(REPO_ROOT)}:{inner.lineno}")
    assert not hidden, f"dfgan imports inside functions: {hidden}"
