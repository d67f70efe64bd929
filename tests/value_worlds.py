"""Transaction-only simulator worlds for the value model: no touchpoints, no campaigns,
heavy-tailed spend -- where BG/NBD + Gamma-Gamma is hard to beat. Shared by
``tests/training/test_value_prior.py`` and ``bench/value_prior.py``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from features.ingest import ingest
from features.warehouse import connect
from models.value import PriorChoice, ValueModel
from rapport.demo_data import generate, write
from rapport.truth import TRUTH_TABLES, compare_holdout
from training.datasets import Window, build_training_set
from training.jobs import evaluate_holdout, fit_model

END = datetime(2025, 1, 1, tzinfo=UTC)
#: the spread of the customers' mean order value (the demo's is 0.75)
HEAVY_TAIL = 1.25
METRICS = ("rmse", "spearman", "top_decile_capture")


@dataclass
class WorldResult:
    """The value model and BG/NBD + Gamma-Gamma against the true expected spend."""

    seed: int
    model: dict[str, float]
    btyd: dict[str, float]
    choice: PriorChoice


def transaction_world(folder: Path, seed: int, customers: int) -> WorldResult:
    """Simulate, keep only customers and orders (plus the truth), train value, evaluate."""
    data = generate(customers, seed=seed, end=END, campaigns=False, spend_sigma=HEAVY_TAIL)
    files = write(data, folder / "files")
    for name in ("interactions", "campaign_log", "truth_actions"):
        files.pop(name)
    con = connect(folder / "warehouse.duckdb")
    ingest(con, files, now=END, as_is=TRUTH_TABLES)
    ts = build_training_set(con, Window(horizon_days=data.horizon_days))
    model = fit_model("value", ts, {"num_threads": 1}, seed=0)
    assert isinstance(model, ValueModel)
    evaluation = evaluate_holdout(
        "value", {"model": model}, ts.part("test"), con, 90, compare=compare_holdout
    )[0]
    assert evaluation.comparison is not None
    truth = evaluation.comparison.metrics
    return WorldResult(seed, truth["model"], truth["btyd"], model.choice_)
