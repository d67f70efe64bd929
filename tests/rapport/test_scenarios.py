"""The simulator's scenarios change exactly what they say, from their date."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from rapport.demo_data import REGIONS, _Population
from rapport.scenarios import scenarios


def _population(n: int) -> _Population:
    rng = np.random.default_rng(0)
    ones = np.ones(n)
    return _Population(
        signup_us=np.arange(n, dtype="int64"),
        region=rng.integers(0, len(REGIONS), n).astype(np.int8),
        acquisition=np.zeros(n, dtype=np.int8),
        preferred=np.zeros(n, dtype=np.int8),
        email_ok=ones.astype(bool),
        phone_ok=ones.astype(bool),
        sms_ok=ones.astype(bool),
        lam=rng.gamma(1.0, 0.4, n),
        mu=rng.gamma(2.0, 20.0, n),
        h0=rng.gamma(2.0, 0.001, n),
        category_cum=np.ones((n, 1)),
    )


def test_region_hazard_doubles_the_hazard_of_north_only() -> None:
    start = datetime(2025, 9, 10, tzinfo=UTC)
    chosen = scenarios(start)["region_hazard"]
    pop = _population(1000)
    before_h0, before_mu = pop.h0.copy(), pop.mu.copy()
    north = pop.region == REGIONS.index("north")
    chosen.change(pop)
    assert np.allclose(pop.h0[north], 2 * before_h0[north])
    assert np.array_equal(pop.h0[~north], before_h0[~north]) and north.any() and (~north).any()
    assert np.array_equal(pop.mu, before_mu)
    week = 7 * 86_400 * 1_000_000
    assert chosen.starts_in(chosen.start_us - 1, chosen.start_us - 1 + week)
    assert not chosen.starts_in(chosen.start_us + 1, chosen.start_us + week)
    # the shipped base-wide hazard scenario still hits everyone
    everyone = _population(1000)
    h0 = everyone.h0.copy()
    scenarios(start)["hazard"].change(everyone)
    assert np.allclose(everyone.h0, 3 * h0)


def test_standing_complaints_repeat_one_regions_complaints_from_the_start() -> None:
    """North's complaints recorded ~1.5x as often over the whole history, nothing else:
    the other regions' interactions, north's other kinds, orders and customers are the
    unchanged world's; every interaction keeps a unique id."""
    from rapport.demo_data import DemoData, generate
    from rapport.scenarios import standing_complaints

    end = datetime(2026, 6, 1, tzinfo=UTC)
    same = generate(4000, seed=2, end=end)
    more = generate(4000, seed=2, end=end, scenario=standing_complaints(1.5))

    def per_region(data: DemoData) -> dict[tuple[str, str], int]:
        i = data.interactions.merge(data.customers[["customer_id", "region"]], on="customer_id")
        return i.groupby(["region", "kind"]).size().to_dict()

    before, after = per_region(same), per_region(more)
    for (region, kind), count in before.items():
        if (region, kind) == ("north", "complaint"):
            assert after[(region, kind)] == pytest.approx(1.5 * count, rel=0.15)
        else:
            assert after[(region, kind)] == count
    assert more.interactions["interaction_id"].is_unique
    assert more.orders.equals(same.orders) and more.customers.equals(same.customers)
    assert more.interactions["occurred_at"].is_monotonic_increasing
    with pytest.raises(ValueError, match="complaint_factor"):
        generate(100, seed=2, end=end, scenario=standing_complaints(0.5))
