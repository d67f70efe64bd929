"""The README's recipe: the features `rapport features --out` writes go into every
registered pyfunc as they are (the cutoff travels as the `as_of` column)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sample_data import trained_home

from models import registry
from rapport.cli import main
from training import tracking

AS_OF = "2026-10-01"


home, shared_home = trained_home("recipe-home", customers=1200, seed=9)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_the_pyfuncs_predict_on_what_rapport_features_writes(tmp_path: Path, suffix: str) -> None:
    import mlflow

    out = tmp_path / f"features{suffix}"
    result = CliRunner().invoke(main, ["features", "--as-of", AS_OF, "--out", str(out)])
    assert result.exit_code == 0, result.output
    features = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    assert (pd.to_datetime(features["as_of"], utc=True) == pd.Timestamp(AS_OF, tz="UTC")).all()

    tracking.configure()  # the README: MLFLOW_TRACKING_URI=sqlite:///<home>/mlruns/mlflow.db
    churn = mlflow.pyfunc.load_model("models:/churn@champion").predict(features)
    value = mlflow.pyfunc.load_model("models:/value@champion").predict(features)
    assert len(churn) == len(value) == len(features)
    assert churn["p_churn"].between(0, 1).all()
    native, _ = registry.load_model("value", "champion")
    expected = native.predict(features.assign(as_of=pd.Timestamp(AS_OF, tz="UTC")))
    np.testing.assert_allclose(value["value_mean"], expected["value_mean"], rtol=1e-6)
