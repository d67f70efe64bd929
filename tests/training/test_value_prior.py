"""The value model never loses to BG/NBD + Gamma-Gamma, even on transaction-only worlds
(no touchpoints, no campaigns, heavy-tailed spend), over several seeds; the noise is the
spread of the differences across seeds. Figures: ``uv run python -m bench.value_prior``."""

from __future__ import annotations

import numpy as np
import pytest
from value_worlds import METRICS, WorldResult, transaction_world

SEEDS = (1, 2, 3)
CUSTOMERS = 2000


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> list[WorldResult]:
    return [transaction_world(tmp_path_factory.mktemp(f"world{s}"), s, CUSTOMERS) for s in SEEDS]


def test_value_model_is_at_least_as_good_as_bgnbd_within_the_noise_of_seeds(
    worlds: list[WorldResult],
) -> None:
    for metric in METRICS:
        sign = -1.0 if metric == "rmse" else 1.0  # positive: the model is better
        gain = np.array([sign * (w.model[metric] - w.btyd[metric]) for w in worlds])
        noise = gain.std(ddof=1) / np.sqrt(len(gain))
        print(f"{metric}: model better by {gain.mean():+.4f} (standard error {noise:.4f})")
        assert gain.mean() >= -2 * noise, (metric, gain)


def test_the_choice_is_never_worse_than_the_prior_on_validation(worlds: list[WorldResult]) -> None:
    for w in worlds:
        rmse = w.choice.rmse
        assert rmse["chosen"] <= min(rmse["boosted"], rmse["prior"]), w.choice
        assert w.choice.kind in ("boosted", "prior", "blend")
