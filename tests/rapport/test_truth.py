"""The demo's ground truth behind one seam: loaded only by the demo, read and compared only
in :mod:`rapport.truth`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.ingest import discover_files, ingest
from features.warehouse import connect
from rapport.demo_data import DemoData, generate, write
from rapport.truth import TRUTH_TABLES, compare_holdout, ingest_demo, load_truth

ROOT = Path(__file__).resolve().parents[2]
END = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, DemoData, Path]:
    folder = tmp_path_factory.mktemp("demo")
    data = generate(1200, seed=3, end=END)
    files = write(data, folder / "files")["customers"].parent
    con = connect(folder / "warehouse.duckdb")
    report = ingest_demo(con, files, now=END)
    assert all(report.tables[name].replaced for name in TRUTH_TABLES)
    return con, data, files


def test_only_the_demo_loads_the_truth(demo: tuple, tmp_path: Path) -> None:
    con, _, files = demo
    assert set(TRUTH_TABLES) <= set(con.list_tables())
    plain = connect(tmp_path / "warehouse.duckdb")
    report = ingest(plain, discover_files(files), now=END)  # what `rapport ingest` does
    assert not set(TRUTH_TABLES) & set(report.tables)
    assert not set(TRUTH_TABLES) & set(plain.list_tables())


def test_truth_is_found_only_at_its_cutoff(demo: tuple) -> None:
    con, data, _ = demo
    truth = load_truth(con, data.truth_as_of)
    assert truth is not None and len(truth) == len(data.truth_customers)
    assert {"p_no_order", "expected_spend"} <= set(truth.columns)
    assert load_truth(con, data.truth_as_of - timedelta(days=1)) is None


def test_holdout_scores_are_compared_with_the_truth(demo: tuple) -> None:
    con, data, _ = demo
    truth = data.truth_customers.reset_index(drop=True)
    rows = pd.DataFrame({"customer_id": [*truth["customer_id"], "nobody"]})
    y = np.random.default_rng(0).random(len(rows)) < 0.3
    p = np.append(truth["p_no_order"].to_numpy(), 0.5)
    churn = compare_holdout(con, "churn", data.truth_as_of, rows, y, {"model": p, "flat": p * 0})
    assert churn is not None and churn.key == "truth"
    # a scorer that is the true probability ranks exactly as the oracle
    assert churn.metrics["model"]["auc"] == pytest.approx(churn.metrics["oracle"]["auc"])
    assert churn.ratios["model_auc_over_oracle"] == pytest.approx(1.0)
    assert churn.metrics["flat"]["auc"] == pytest.approx(0.5)
    assert churn.notes == ["1 holdout customers have no ground truth"]
    spend = np.append(truth["expected_spend"].to_numpy(), 0.0)
    value = compare_holdout(
        con, "value", data.truth_as_of, rows, y, {"model": spend, "btyd": spend + 10.0}
    )
    assert value is not None
    assert value.metrics["model"]["mae"] == pytest.approx(0.0)
    assert value.metrics["btyd"]["mae"] == pytest.approx(10.0)
    assert value.ratios["model_mae_over_btyd"] == pytest.approx(0.0)
    assert compare_holdout(con, "churn", END, rows, y, {"model": p}) is None


def test_production_code_never_mentions_the_truth() -> None:
    """Only the demo (rapport/) knows the ground truth; the packages may point at the seam."""
    found = []
    for package in ("features", "models", "training", "serving"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search("truth", line.replace("rapport.truth", ""), re.IGNORECASE):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
