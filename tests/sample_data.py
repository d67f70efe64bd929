"""Small random contract tables for tests of the layers above ingest."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.contract import INTERACTION_CHANNELS, TABLES

T0 = datetime(2023, 1, 1, tzinfo=UTC)
ACTIONS = ["no_action", "retention_discount", "cross_sell", "service_callback"]


def _times(rng: np.random.Generator, n: int, days: int = 730) -> pd.Series:
    micros = rng.integers(0, days * 86_400_000_000, size=n)
    return pd.Series(pd.Timestamp(T0) + pd.to_timedelta(micros, unit="us"))


def random_tables(seed: int, customers: int = 40, events: int = 300) -> dict[str, pd.DataFrame]:
    """Messy but valid contract tables: nulls, returns, ties of kinds and channels."""
    rng = np.random.default_rng(seed)
    ids = [f"C{i:04d}" for i in range(customers)]

    def pick(values: list, n: int, null_share: float = 0.0) -> list:
        out = list(rng.choice(np.array(values, dtype=object), size=n))
        return [None if rng.random() < null_share else v for v in out]

    cust = pd.DataFrame(
        {
            "customer_id": ids,
            "signup_at": _times(rng, customers, 500),
            "region": pick(["north", "south", "east"], customers, 0.1),
            "acquisition_channel": pick(["search", "store"], customers),
            "preferred_channel": pick(["email", "call"], customers),
            "email_opt_in": pick([True, False], customers, 0.1),
            "phone_opt_in": pick([True, False], customers),
            "sms_opt_in": pick([True, False], customers),
        }
    )
    orders = pd.DataFrame(
        {
            "order_id": [f"O{i:05d}" for i in range(events)],
            "customer_id": pick(ids, events),
            "ordered_at": _times(rng, events),
            "amount": np.round(rng.lognormal(3, 1, events) * rng.choice([1, 1, 1, -1], events), 2),
            "margin": np.where(rng.random(events) < 0.1, np.nan, rng.random(events) * 20),
            "category": pick(["a", "b", "c", "d"], events, 0.1),
            "channel": pick(["web", "store"], events),
        }
    )
    interactions = pd.DataFrame(
        {
            "interaction_id": [f"I{i:05d}" for i in range(events)],
            "customer_id": pick(ids, events),
            "occurred_at": _times(rng, events),
            "channel": pick(list(INTERACTION_CHANNELS), events),
            "kind": pick(["complaint", "service", "open", "click", "sent", "visit"], events),
            "direction": pick(["inbound", "outbound"], events, 0.1),
            "duration_s": np.where(rng.random(events) < 0.5, np.nan, rng.random(events) * 600),
            "satisfaction": pd.array(
                np.where(rng.random(events) < 0.5, None, rng.integers(1, 6, events)), "Int64"
            ),
            "resolved": pick([True, False], events, 0.4),
        }
    )
    campaign = pd.DataFrame(
        {
            "decision_id": [f"D{i:05d}" for i in range(events // 2)],
            "customer_id": pick(ids, events // 2),
            "decided_at": _times(rng, events // 2),
            "action": pick(ACTIONS, events // 2),
            "channel": pick(["email", "call", "none"], events // 2),
            "propensity": rng.uniform(0.1, 0.9, events // 2),
            "outcome": pick([True, False], events // 2),
            "revenue": np.round(rng.random(events // 2) * 50, 2),
            "responded_at": _times(rng, events // 2),
        }
    )
    return {
        "customers": cust,
        "orders": orders,
        "interactions": interactions,
        "campaign_log": campaign,
    }


def load_tables(con: object, tables: dict[str, pd.DataFrame]) -> None:
    """Write contract frames straight into a warehouse (tests of layers above ingest)."""
    from features.warehouse import ensure_contract_tables, raw

    ensure_contract_tables(con)  # type: ignore[arg-type]
    db = raw(con)  # type: ignore[arg-type]
    for name, frame in tables.items():
        cols = ", ".join(f'"{c}"' for c in TABLES[name].column_names)
        missing = {c: None for c in TABLES[name].column_names if c not in frame.columns}
        db.register("_frame", frame.assign(**missing)[TABLES[name].column_names])
        db.execute(f'DELETE FROM "{name}"')
        db.execute(f'INSERT INTO "{name}" SELECT {cols} FROM _frame')
        db.unregister("_frame")


def cutoff(days: float) -> datetime:
    return T0 + timedelta(days=days)


def assert_features_equal(left: pd.DataFrame, right: pd.DataFrame, context: str = "") -> None:
    """Column by column; floats to 1e-9 relative; None and NaN are the same null."""
    assert list(left.columns) == list(right.columns), context
    assert list(left["customer_id"]) == list(right["customer_id"]), context
    for col in left.columns:
        a, b = left[col].to_numpy(dtype=object), right[col].to_numpy(dtype=object)
        a_null, b_null = pd.isna(a), pd.isna(b)
        bad = np.flatnonzero(a_null != b_null)
        assert not bad.size, f"{context} {col}: nulls differ at rows {bad[:5]}"
        both = ~a_null
        if pd.api.types.is_numeric_dtype(left[col]):
            x, y = a[both].astype(float), b[both].astype(float)
            close = np.isclose(x, y, rtol=1e-9, atol=1e-9)
            assert close.all(), f"{context} {col}: {x[~close][:3]} != {y[~close][:3]}"
        else:
            assert (a[both] == b[both]).all(), f"{context} {col} differs"


#: LightGBM settings that train a usable model in a second (tests, not quality)
FAST_PARAMS = {"num_boost_round": 30, "num_threads": 1, "min_data_in_leaf": 40}


def trained_workspace(home: Path, customers: int, seed: int, end: datetime | None = None) -> None:
    """Demo data (history to ``end``, default today) ingested into ``home`` with churn and
    value trained fast and promoted."""
    import pytest

    from features.ingest import discover_files, ingest
    from features.warehouse import connect
    from rapport.demo_data import generate, write
    from rapport.settings import get_settings, reset_settings
    from training import jobs
    from training.datasets import Window, build_training_set

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        reset_settings()
        settings = get_settings()
        settings.ensure_home()
        folder = write(generate(customers, seed=seed, end=end), home / "data", "parquet")
        con = connect(settings.warehouse_path)
        ingest(con, discover_files(folder["customers"].parent), now=datetime.now(UTC))
        training = build_training_set(con, Window(train_cutoffs=2))
        for kind in ("churn", "value"):
            jobs.train(kind, con, params=FAST_PARAMS, data=training)
            jobs.promote(kind)
        con.disconnect()
    reset_settings()


def use_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Body of a module's autouse fixture: every test sees ``home`` as RAPPORT_HOME."""
    from rapport.settings import reset_settings

    monkeypatch.setenv("RAPPORT_HOME", str(home))
    reset_settings()
    yield home
    reset_settings()


def module_home(name: str, build: Callable[[Path], None] | None = None) -> tuple[Any, Any]:
    """A module's ``home`` (one workspace, built once by ``build``, else empty) and its
    autouse fixture that makes it every test's RAPPORT_HOME; assign both:
    ``home, shared_home = module_home(...)``."""

    @pytest.fixture(scope="module", name="home")
    def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
        path = tmp_path_factory.mktemp(name)
        if build is not None:
            build(path)
        return path

    @pytest.fixture(autouse=True, name="shared_home")
    def shared_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
        yield from use_home(home, monkeypatch)

    return home, shared_home


def trained_home(name: str, customers: int, seed: int) -> tuple[Any, Any]:
    """:func:`module_home` with demo data ingested and churn and value trained."""
    return module_home(name, partial(trained_workspace, customers=customers, seed=seed))


def warehouse_query(sql: str, params: list | None = None) -> pd.DataFrame:
    """``sql`` on the current workspace's warehouse, read-only, as a frame."""
    from features.warehouse import connect, raw
    from rapport.settings import get_settings

    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        return raw(con).execute(sql, params or []).to_arrow_table().to_pandas()
    finally:
        con.disconnect()


def write_lake(tables: dict[str, pd.DataFrame], lake: Path) -> Any:
    """The tables as the lake holds them, and a DuckDB connection reading the same files."""
    import ibis

    from features.lake import table_uri

    duck = ibis.duckdb.connect()
    for name, frame in tables.items():
        folder = Path(table_uri(str(lake), name))
        folder.mkdir(parents=True)
        frame.to_parquet(folder / "part-0.parquet")
        duck.read_parquet(folder / "part-0.parquet", table_name=name)
    return duck
