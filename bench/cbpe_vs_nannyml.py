"""Rapport's label-free AUC estimate (CBPE, :func:`models.monitoring.cbpe_auc`) against
NannyML's on the same calibrated probabilities, and both against the realised AUC.

NannyML does not install beside the project's pins (it caps LightGBM below 4.6; see
:mod:`models.monitoring`), so this runs in a scratch environment with this checkout on
the path (``models.monitoring`` needs only numpy, pandas and scipy)::

    uv venv /tmp/nml && VIRTUAL_ENV=/tmp/nml uv pip install nannyml==0.13.1 statsmodels "pandas>=3"
    NML_DISABLE_USAGE_LOGGING=1 PYTHONPATH=. /tmp/nml/bin/python -m bench.cbpe_vs_nannyml

(NannyML 0.13.1 imports statsmodels without declaring it.) Per seed, a reference and a
shifted current sample of ``--rows`` probabilities with labels drawn from them (so the
probabilities are calibrated, CBPE's assumption); NannyML is fitted on the reference (its
calibration step) and estimates the current sample as one chunk. Prints both estimates
with their intervals (ours 90%; NannyML's default band, 3 standard errors) and the
realised AUC. Never fails on what it measures.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from models.monitoring import cbpe_auc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import nannyml as nml

    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        frames = []
        for a, b in ((1.2, 4.0), (1.5, 3.5)):  # the reference, then a shifted current
            p = rng.beta(a, b, args.rows)
            y = (rng.random(args.rows) < p).astype(int)
            frames.append(pd.DataFrame({"p": p, "pred": (p > 0.5).astype(int), "y": y}))
        ref, cur = frames
        estimator = nml.CBPE(
            y_pred_proba="p",
            y_pred="pred",
            y_true="y",
            metrics=["roc_auc"],
            chunk_number=1,
            problem_type="classification_binary",
        )
        estimator.fit(ref)
        found = estimator.estimate(cur).to_df().iloc[-1]
        theirs = [
            float(found[("roc_auc", k)])
            for k in ("value", "lower_confidence_boundary", "upper_confidence_boundary")
        ]
        ours = cbpe_auc(cur["p"].to_numpy())
        realised = roc_auc_score(cur["y"], cur["p"])
        print(
            f"seed {seed}: rapport {ours[0]:.4f} [{ours[1]:.4f}, {ours[2]:.4f}]  "
            f"nannyml {theirs[0]:.4f} [{theirs[1]:.4f}, {theirs[2]:.4f}]  "
            f"realised {realised:.4f}  (rapport - nannyml {ours[0] - theirs[0]:+.4f})"
        )


if __name__ == "__main__":
    main()
