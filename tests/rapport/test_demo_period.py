"""``rapport demo``'s simulated period: the policy's batch decisions (control group held
out) are played by the simulator, ingested and measured by ``rapport impact``; the demo
prints the headline beside the simulator's true value. Built like the demo's batch part on
a small world (churn/value fast, NBA with few bootstraps); its setup trains every model,
~100 s on a loaded 2-core machine, so it is marked slow (`uv run pytest -m slow`)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sample_data import FAST_PARAMS

from features.warehouse import connect
from rapport.demo import simulated_period
from rapport.demo_data import generate, write
from rapport.settings import get_settings, reset_settings
from rapport.truth import ingest_demo

END = datetime(2026, 6, 1, tzinfo=UTC)
HEADLINE = re.compile(
    r"headline: incremental value per treated customer (-?[\d,.]+) \(95% interval "
    r"(-?[\d,.]+) \.\. (-?[\d,.]+), (\w+); ([\d,]+) treated vs ([\d,]+) control customers\)\n"
    r"  the simulator's true incremental value per treated customer: (-?[\d,.]+) "
    r"\((inside|OUTSIDE) the interval\)"
)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo home after the batch part: truth loaded, champions, NBA, batch scores."""
    from features.batch import build
    from features.spec import default_spec
    from features.tables.segments import snapshot_segments
    from features.warehouse import raw
    from training import jobs
    from training.datasets import build_training_set
    from training.nba import promote_nba, train_nba
    from training.scoring import score_all

    home = tmp_path_factory.mktemp("demo-period")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        reset_settings()
        settings = get_settings()
        settings.ensure_home()
        data = write(generate(1500, seed=42, end=END), home / "demo-data", "parquet")
        con = connect(settings.warehouse_path)
        ingest_demo(con, data["customers"].parent, now=END)
        spec = default_spec()  # the demo's step 3: segments as of the end of history
        snapshot_segments(raw(con), build(con, END), END, spec.version, END)
        training = build_training_set(con, horizon_days=90, train_cutoffs=2, step_months=3)
        for kind in ("churn", "value"):
            jobs.train(kind, con, params=FAST_PARAMS, data=training)
            jobs.promote(kind)
        nba = train_nba(con, compare_methods=False, n_boot=30)
        promote_nba(nba.version)
        score_all(con, END)
        con.disconnect()
    reset_settings()
    return home


def _period(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RAPPORT_HOME", str(home))
    reset_settings()
    said: list[str] = []
    con = connect(get_settings().warehouse_path)
    try:
        simulated_period(con, get_settings(), END, said.append, lambda _: None)
    finally:
        con.disconnect()
        reset_settings()
    return "\n".join(said)


@pytest.mark.slow
def test_demo_prints_impact_beside_the_truth_and_replays_the_same(
    scored: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _period(scored, monkeypatch)
    assert "the campaign tool executes scores" in first
    assert "incr value/cust" in first  # the `rapport impact` table itself
    found = HEADLINE.search(first)
    assert found, first
    estimate, lo, hi = (_number(found[i]) for i in (1, 2, 3))
    treated, control = _number(found[5]), _number(found[6])
    truth = _number(found[7])
    assert all(math.isfinite(v) for v in (estimate, lo, hi, truth))
    assert lo < estimate < hi and treated > 10 * control > 0
    assert lo <= truth <= hi and found[8] == "inside", first

    # a second demo run on the same home: the same decisions played again, nothing new
    second = _period(scored, monkeypatch)
    assert "logged by an earlier demo run: played again" in second
    assert "inserted 0," in second and "quarantined 0" in second
    assert HEADLINE.search(second)[0] == found[0]  # type: ignore[index]
