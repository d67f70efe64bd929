"""Merged histories of resolved persons (issue 20, items 2 and 4): point in time (a merge
learned at t leaves features as of earlier cutoffs unchanged), and the effect of
resolution on churn AUC on the demo (records vs persons, the same model settings)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sample_data import FAST_PARAMS, assert_features_equal
from sklearn.metrics import roc_auc_score

from features.batch import build
from features.resolve import clusters_as_of, merge_histories, resolve
from features.warehouse import connect, raw
from rapport.demo_data import generate, write
from rapport.truth import ingest_demo
from training.datasets import Window, build_training_set
from training.jobs import fit_model

END = datetime(2025, 1, 1, tzinfo=UTC)
#: the demo's seed and size (environment, for a figure over more seeds or customers)
SEED = int(os.environ.get("RAPPORT_EFFECT_SEED", "5"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    folder = tmp_path_factory.mktemp("resolution-effect")
    customers = int(os.environ.get("RAPPORT_EFFECT_CUSTOMERS", "3000"))
    data = generate(customers, seed=SEED, end=END, years=2.0)
    files = write(data, folder / "files")["customers"].parent
    con = connect(folder / "warehouse.duckdb")
    ingest_demo(con, files, now=END)
    return folder, con, data


def _merged(folder: Path, con: Any, clusters: pd.DataFrame, name: str) -> Any:
    target = connect(folder / f"{name}.duckdb")
    merge_histories(con, target, clusters)
    return target


def test_a_merge_learned_at_t_leaves_earlier_cutoffs_unchanged(
    demo: tuple[Path, Any, Any],
) -> None:
    folder, con, _ = demo
    learned = END - timedelta(days=30)
    report = resolve(con, learned)
    assert report.merges > 0
    before, after = learned - timedelta(days=60), END
    earlier = _merged(folder, con, clusters_as_of(con, before), "as-of-before")
    later = _merged(folder, con, clusters_as_of(con, after), "as-of-after")
    try:
        # as of a cutoff before the merge was learned: every record's features as they were
        assert clusters_as_of(con, before).empty
        assert_features_equal(_sorted(build(con, before)), _sorted(build(earlier, before)))
        # after: one row per person, whose history is the sum of its records'
        clusters = clusters_as_of(con, after)
        merged = build(later, after).set_index("customer_id")
        records = build(con, after).set_index("customer_id")
        persons = clusters.groupby("cluster_id")["customer_id"].apply(list)
        many = persons[persons.map(len) > 1]
        assert len(merged) == len(records) - sum(len(m) - 1 for m in many)
        for person, members in many.items():
            assert merged.loc[person, "orders_all"] == records.loc[members, "orders_all"].sum()
    finally:
        earlier.disconnect()
        later.disconnect()


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("customer_id").reset_index(drop=True)


def _churn_auc(con: Any) -> tuple[float, int]:
    data = build_training_set(con, Window(train_cutoffs=2))
    model = fit_model("churn", data, params=FAST_PARAMS)
    test = data.part("test", active_only=True)
    scores = model.predict_proba(data.features("test", active_only=True))
    return float(roc_auc_score(test["churned"].astype(int), scores)), len(test)


@pytest.mark.slow
def test_effect_of_resolution_on_churn_auc(demo: tuple[Path, Any, Any]) -> None:
    """Churn trained and tested on records (duplicates unresolved), on the persons
    ``rapport resolve`` finds, and on the simulator's true persons: the AUC of each on its
    own test cutoff (the populations differ: records vs persons)."""
    folder, con, data = demo
    resolve(con, END)
    truth = data.truth_identity
    first = truth.groupby("person_id")["customer_id"].transform("min")
    truth = pd.DataFrame({"customer_id": truth["customer_id"], "cluster_id": first})
    aucs: dict[str, tuple[float, int]] = {"records": _churn_auc(con)}
    for name, clusters in (("resolved", clusters_as_of(con)), ("truth", truth)):
        merged = _merged(folder, con, clusters, f"persons-{name}")
        try:
            aucs[name] = _churn_auc(merged)
        finally:
            merged.disconnect()
    line = ", ".join(f"{k} {auc:.4f} ({n:,} active)" for k, (auc, n) in aucs.items())
    print(
        f"\nchurn AUC on the demo ({len(data.customers):,} records, seed {SEED}): {line}; "
        f"resolved - records {aucs['resolved'][0] - aucs['records'][0]:+.4f}"
    )
    for auc, _ in aucs.values():
        assert 0.6 < auc < 1.0
    assert aucs["resolved"][1] < aucs["records"][1]  # fewer persons than records
    assert raw(con).execute("SELECT count(*) FROM identity_clusters").fetchone()[0] == len(
        data.customers
    )
