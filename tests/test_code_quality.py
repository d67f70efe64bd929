"""Lint, format, types and the one-way import rule, as part of the test command."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rapport", "features", "models", "training", "serving", "ui")
#: who may import whom (DESIGN.md): features <- models <- training; serving uses
#: features and models; the web page (ui) sits beside serving and uses its API keys
#: (serving.auth); the CLI (rapport) sits on top; rapport.settings is for everyone.
ALLOWED = {
    "features": {"features"},
    "models": {"features", "models"},
    "training": {"features", "models", "training"},
    "serving": {"features", "models", "serving"},
    "ui": {"features", "models", "serving", "ui"},
    "rapport": set(PACKAGES),
}
#: where the registry and serving frameworks may be imported (DESIGN.md): in ``models``
#: only its adapters (the MLflow registry, the pyfunc wrapper, the BentoML bundle); MLflow
#: also by training's run tracking, BentoML also by the service; PySpark only by the
#: session and Spark executions module. A path ending in "/" is a whole package.
FRAMEWORKS = {
    "mlflow": ("models/registry.py", "models/pyfunc.py", "training/"),
    "bentoml": ("models/bundle.py", "serving/"),
    "pyspark": ("features/spark.py",),
}


def imported_packages(path: Path, tops: Collection[str] = PACKAGES) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import of one of ``tops``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name == "rapport.settings" or name.startswith("rapport.settings."):
                continue
            top = name.split(".")[0]
            if top in tops:
                found.add((top, node.lineno))
    return found


def import_violations(root: Path) -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root).as_posix()
            for top, line in imported_packages(path, (*PACKAGES, *FRAMEWORKS)):
                homes = FRAMEWORKS.get(top)
                if homes is not None:
                    allowed = any(where == h or where.startswith(h) for h in homes if h)
                else:
                    allowed = top in ALLOWED[package]
                if not allowed:
                    problems.append(f"{where}:{line} imports {top}")
    return sorted(problems)


def test_imports_go_one_way() -> None:
    assert import_violations(ROOT) == []


def violations_in(root: Path, files: dict[str, str]) -> list[str]:
    """:func:`import_violations` of a made-up tree: the package folders, ``files`` in them."""
    for package in PACKAGES:
        (root / package).mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    return import_violations(root)


def test_import_rule_catches_a_wrong_edge(tmp_path: Path) -> None:
    files = {
        "serving/bad.py": "from training.jobs import train\n",
        "ui/bad.py": "from training.scoring import score_all\n",
        "features/worse.py": "import models.churn\n",
    }
    assert violations_in(tmp_path, files) == [
        "features/worse.py:1 imports models",
        "serving/bad.py:1 imports training",
        "ui/bad.py:1 imports training",
    ]


def test_import_rule_keeps_the_frameworks_in_their_adapters(tmp_path: Path) -> None:
    allowed = {
        "models/registry.py": "import mlflow\n",
        "models/bundle.py": "import bentoml\n",
        "training/tracking.py": "from mlflow import MlflowClient\n",
        "serving/service.py": "import bentoml\n",
    }
    # the wrong edges: MLflow in a pure model module and in serving, BentoML in training
    wrong = {
        "models/churn.py": "x = 1\nimport mlflow.pyfunc\n",
        "serving/runtime.py": "from mlflow.exceptions import E\n",
        "training/jobs.py": "def f():\n    import bentoml\n",
    }
    assert violations_in(tmp_path, allowed | wrong) == [
        "models/churn.py:2 imports mlflow",
        "serving/runtime.py:1 imports mlflow",
        "training/jobs.py:2 imports bentoml",
    ]


def test_tests_never_import_bench() -> None:
    """bench may use the tests' helpers (tests/serving_harness.py), never the reverse."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(name.split(".")[0] == "bench" for name in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-lint", "ruff-format", "mypy"],
)
def test_static_checks(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
