"""The online evaluator must equal the batch build for every customer and cutoff."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sample_data import cutoff, load_tables, random_tables

from features.batch import build
from features.online.record import evaluate, records_from_frames
from features.spec import default_spec
from features.warehouse import connect


def assert_rows_equal(batch_row: dict, online_row: dict, context: str) -> None:
    for name in default_spec().names:
        a, b = batch_row[name], online_row[name]
        a_null = a is None or (isinstance(a, float) and math.isnan(a))
        b_null = b is None or (isinstance(b, float) and math.isnan(b))
        assert a_null == b_null, f"{context} {name}: batch={a!r} online={b!r}"
        if a_null:
            continue
        if isinstance(a, str) or isinstance(b, str):
            assert a == b, f"{context} {name}: batch={a!r} online={b!r}"
        else:
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (
                f"{context} {name}: batch={a!r} online={b!r}"
            )


@pytest.mark.parametrize("seed", [1, 2])
def test_online_evaluator_equals_batch_build(tmp_path: Path, seed: int) -> None:
    tables = random_tables(seed)
    con = connect(tmp_path / "w.duckdb")
    load_tables(con, tables)
    records = records_from_frames(
        tables["customers"], {k: v for k, v in tables.items() if k != "customers"}
    )
    rng = np.random.default_rng(seed)
    for days in rng.uniform(100, 760, size=4):
        as_of = cutoff(float(days))
        frame = build(con, as_of)
        assert len(frame) > 0
        for row in frame.to_dict("records"):
            online = evaluate(records[row["customer_id"]], as_of)
            assert_rows_equal(row, online, f"{row['customer_id']} @ {as_of:%Y-%m-%d %H:%M}")


def test_build_excludes_customers_signed_up_after_cutoff(tmp_path: Path) -> None:
    tables = random_tables(3)
    con = connect(tmp_path / "w.duckdb")
    load_tables(con, tables)
    as_of = cutoff(250)
    frame = build(con, as_of)
    signup = tables["customers"].set_index("customer_id")["signup_at"]
    assert (signup[frame["customer_id"]] < as_of).all()
    assert set(frame["customer_id"]) == set(signup[signup < as_of].index)
