"""The NBA model's live (dict) paths: their answers and their errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.catalog import default_catalog
from models.nba import ROW_BY_ROW, NbaModel
from models.uplift import UpliftModel, UpliftPrediction


@pytest.fixture(scope="module")
def nba() -> NbaModel:
    rng = np.random.default_rng(3)
    catalog = default_catalog()
    n = 2_000
    X = pd.DataFrame({"x0": rng.normal(size=n), "x1": rng.normal(size=n)})
    X["region"] = pd.Series(rng.choice(["north", "south"], size=n), dtype=object)
    outcome = (rng.random(n) < 0.3).astype(float)
    uplift = UpliftModel("dr", {"num_iterations": 5, "min_data_in_leaf": 20}).fit(
        X, rng.choice(catalog.ids[:3], n), np.full(n, 1 / 3), outcome, outcome * 40.0
    )
    return NbaModel(uplift, catalog)


def _rows(n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(4)
    return [
        {"x0": float(rng.normal()), "x1": None, "region": ["north", "west"][i % 2], "extra": 1}
        for i in range(n)
    ]


def _bytes(p: UpliftPrediction) -> list[bytes]:
    return [
        a.tobytes()
        for a in (
            p.incremental_conversion,
            p.incremental_revenue,
            p.baseline_conversion,
            p.baseline_revenue,
        )
    ]


@pytest.mark.parametrize("size", [6, ROW_BY_ROW + 6])  # one by one; each booster for all
def test_one_customer_and_a_micro_batch_give_the_same_bytes(nba: NbaModel, size: int) -> None:
    rows = _rows(size)
    ids = nba.uplift.actions_
    allowed = [set(ids[: i % 3]) for i in range(len(rows))]
    batch = nba.predict_rows(rows, allowed)
    assert batch.incremental_conversion.shape == (size, len(batch.actions))
    for i, row in enumerate(rows):
        one = nba.predict(row, allowed[i])
        assert _bytes(one) == _bytes(nba.predict_rows([row], [allowed[i]]))
        assert _bytes(one) == _bytes(batch.row(i))


def test_a_missing_column_is_named_and_a_bad_value_refused(nba: NbaModel) -> None:
    row = _rows(1)[0]
    lacking = {k: v for k, v in row.items() if k != "x1"}
    with pytest.raises(KeyError, match="x1"):
        nba.predict(lacking)
    for rows in ([lacking], [row, lacking]):
        with pytest.raises(KeyError, match="x1"):
            nba.predict_rows(rows, [set()] * len(rows))
    with pytest.raises(ValueError, match="x0"):
        nba.predict({**row, "x0": "many"})
    with pytest.raises(ValueError, match="x0"):
        nba.predict_rows([row, {**row, "x0": "many"}], [set(), set()])


def test_a_rows_pending_baseline_revenue_is_computed_only_when_read(nba: NbaModel) -> None:
    """The live arbitration never reads the DR learner's baseline revenue: a micro-batch's
    row leaves it pending (the control's revenue boosters are not run for the batch)."""
    rows = _rows(3)
    batch = nba.predict_rows(rows, [set()] * len(rows))
    assert callable(batch._baseline_revenue)
    first = batch.row(0)
    assert callable(batch._baseline_revenue) and callable(first._baseline_revenue)
    alone = nba.predict(rows[0], set()).baseline_revenue
    assert first.baseline_revenue.tobytes() == alone.tobytes()
