"""The fast single-row predictor gives exactly Booster.predict's numbers."""

from __future__ import annotations

import pickle
import threading

import lightgbm as lgb
import numpy as np
import pytest

from models import fastpredict
from models.fastpredict import (
    PREDICT_CONTRIB,
    PREDICT_NORMAL,
    PREDICT_RAW_SCORE,
    FastPredictor,
    RowBoosters,
    SplitKeys,
    fast_predictor,
)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 6))
    X[:, 2] = rng.integers(0, 5, size=600)  # categorical
    X[rng.random(X.shape) < 0.1] = np.nan
    logit = np.nan_to_num(X[:, 0]) + (np.nan_to_num(X[:, 2]) == 3) - 0.5 * np.nan_to_num(X[:, 1])
    y_bin = (rng.random(600) < 1 / (1 + np.exp(-logit))).astype(float)
    y_reg = logit + rng.normal(size=600)
    return X, y_bin, y_reg


#: the fast path's prediction types with the ``Booster.predict`` keywords of each (spelled
#: out here, not read from ``models.fastpredict``, so a wrong mapping there fails)
KINDS: list[tuple[int, dict[str, bool]]] = [
    (PREDICT_NORMAL, {}),
    (PREDICT_RAW_SCORE, {"raw_score": True}),
    (PREDICT_CONTRIB, {"pred_contrib": True}),
]


def _hard_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rows wider-spread than the training data, with missing values and categories
    seen, unseen and negative (what the fast path must still get exactly right)."""
    rows = rng.normal(size=(n, 6)) * 2
    rows[:, 2] = rng.integers(-1, 9, size=n)
    rows[rng.random(rows.shape) < 0.15] = np.nan
    return rows


def _booster(X: np.ndarray, y: np.ndarray, objective: str) -> lgb.Booster:
    data = lgb.Dataset(X, y, categorical_feature=[2], params={"verbose": -1})
    params = {"objective": objective, "verbose": -1, "num_leaves": 7, "min_data_in_leaf": 10}
    return lgb.train(params, data, num_boost_round=30)


@pytest.mark.parametrize("objective", ["binary", "regression"])
def test_matches_booster_predict(objective: str) -> None:
    X, y_bin, y_reg = _data()
    booster = _booster(X, y_bin if objective == "binary" else y_reg, objective)
    fast = FastPredictor(booster)
    rows = np.vstack([X[:40], np.full((1, 6), np.nan), [[0.0, 0.0, 7.0, 0.0, 0.0, 0.0]]])
    for kind, kwargs in KINDS:
        expected = np.asarray(booster.predict(rows, **kwargs)).reshape(len(rows), -1)
        got = np.vstack([fast.predict_row(row, kind) for row in rows])
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_rejects_wrong_width() -> None:
    X, y_bin, _ = _data()
    with pytest.raises(ValueError):
        FastPredictor(_booster(X, y_bin, "binary")).predict_row(X[0, :3])


def test_pickles_without_handles_and_caches_per_owner() -> None:
    X, y_bin, _ = _data()
    booster = _booster(X, y_bin, "binary")

    class Owner:
        pass

    owner = Owner()
    fast = fast_predictor(owner, booster)
    assert fast_predictor(owner, booster) is fast
    before = fast.predict_row(X[0])
    copy = pickle.loads(pickle.dumps(fast))
    assert copy._handles == {}
    np.testing.assert_allclose(copy.predict_row(X[0]), before, rtol=1e-12)


def test_threads_get_the_same_numbers() -> None:
    X, y_bin, _ = _data()
    booster = _booster(X, y_bin, "binary")
    fast = FastPredictor(booster)
    expected = booster.predict(X[:200])
    errors: list[float] = []

    def work() -> None:
        got = np.array([fast.predict_row(row)[0] for row in X[:200]])
        errors.append(float(np.max(np.abs(got - expected))))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [0.0] * 4


@pytest.mark.parametrize("objective", ["binary", "regression", "tweedie"])
def test_equals_booster_predict_bit_for_bit_over_thousands_of_rows(objective: str) -> None:
    """Normal, raw and contrib predictions of the fast path are ``Booster.predict``'s
    numbers exactly (same bytes), on 3,000 rows with missing values, a categorical
    feature, unseen categories and all-missing rows."""
    rng = np.random.default_rng(11)
    X, y_bin, y_reg = _data(seed=5)
    y = {"binary": y_bin, "regression": y_reg, "tweedie": np.maximum(y_reg, 0.0)}[objective]
    booster = _booster(X, y, objective)
    rows = _hard_rows(rng, 3000)
    rows[:50] = np.nan
    fast = FastPredictor(booster)
    for kind, kwargs in KINDS:
        expected = np.asarray(booster.predict(rows, num_threads=1, **kwargs)).reshape(3000, -1)
        got = np.vstack([fast.predict_row(row, kind) for row in rows])
        assert got.shape == expected.shape
        assert got.tobytes() == expected.tobytes(), kind
        if kind == PREDICT_NORMAL:  # the batch path's default threads too
            assert got.ravel().tobytes() == np.asarray(booster.predict(rows)).tobytes()
    assert fast._raw is not None  # the raw scores came from the compiled forest


@pytest.mark.parametrize("objective", ["binary", "tweedie"])
def test_predict_rows_equals_booster_predict_bit_for_bit(objective: str) -> None:
    """The micro-batch path (several rows in one C call) gives ``Booster.predict``'s numbers
    exactly, for batches of 1 to 64 rows and every prediction type."""
    rng = np.random.default_rng(12)
    X, y_bin, y_reg = _data(seed=6)
    booster = _booster(X, y_bin if objective == "binary" else np.maximum(y_reg, 0.0), objective)
    rows = _hard_rows(rng, 400)
    fast = FastPredictor(booster)
    for kind, kwargs in KINDS:
        expected = np.asarray(booster.predict(rows, num_threads=1, **kwargs)).reshape(400, -1)
        start = 0
        for size in [1, 2, 3, 8, 16, 64, 5] * 10:
            if start >= len(rows):
                break
            got = fast.predict_rows(rows[start : start + size], kind)
            want = expected[start : start + size]
            assert got.shape == want.shape and got.tobytes() == want.tobytes(), (kind, size)
            start += size
    with pytest.raises(ValueError):
        fast.predict_rows(rows[:4, :3])


@pytest.mark.parametrize("missing", ["nan", "zero", "none"])
def test_kept_contributions_equal_fresh_ones_bit_for_bit(missing: str) -> None:
    """:meth:`FastPredictor.contributions` gives ``Booster.predict(pred_contrib=True)``'s
    bytes for every row, whether computed or read back from a row with the same split
    key. Each base row comes in variants that differ in one feature only, set to every
    value that could part two rows: on, just below and just above each threshold, zeros
    LightGBM reads as 0 (``-0.0``, ``1e-300``; missing for zero-as-missing splits), tiny
    values it does not, missing and infinite values, categories seen, unseen and negative.
    A key too coarse to tell two of them apart would hand one the other's contributions.
    The rows read back are counted, so the cache is shown to serve."""
    rng = np.random.default_rng(21)
    X, y_bin, _ = _data(seed=8)
    X[rng.random(X.shape) < 0.1] = 0.0
    options = {"zero_as_missing": missing == "zero", "use_missing": missing != "none"}
    data = lgb.Dataset(X, y_bin, categorical_feature=[2], params={"verbose": -1, **options})
    params = {"objective": "binary", "verbose": -1, "num_leaves": 7, "min_data_in_leaf": 10}
    booster = lgb.train({**params, **options}, data, num_boost_round=40)
    splits = SplitKeys.of(booster)
    assert splits is not None
    thresholds = sorted({t.imag for t in splits._thresholds.tolist()})
    edges = [v for t in thresholds for v in (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf))]
    edges += [0.0, -0.0, 1e-300, -1e-300, 1e-30, -1e-30, 0.3, -0.3, np.nan, np.inf, -np.inf]
    categories = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 7.0, np.nan, 1e-300]
    # one owner per (base row, feature): its variants come in turn, each compared with
    # the owner's last row (the owners interleaved at random, in chunks of random size)
    series = []
    for b, base in enumerate(X[:12]):
        for j in range(6):
            variants = []
            for value in categories if j == 2 else edges:
                row = base.copy()
                row[j] = value
                variants.append(row)
            series.append([(f"{b}-{j}", row) for row in variants])
    order = []
    while any(series):
        pick = series[int(rng.integers(len(series)))]
        if pick:
            order.append(pick.pop(0))
    owners = [owner for owner, _ in order]
    rows = np.array([row for _, row in order])
    fast = FastPredictor(booster)
    expected = np.asarray(booster.predict(rows, num_threads=1, pred_contrib=True))
    got, start = [], 0
    while start < len(rows):
        size = int(rng.choice([1, 2, 5, 8, 16]))
        got.append(fast.contributions(rows[start : start + size], owners[start : start + size]))
        start += size
    result = np.vstack(got)
    assert result.shape == expected.shape
    assert result.tobytes() == expected.tobytes()
    assert fast.contrib_computed < len(rows) // 2  # most variants share their last's key
    last = {owner: i for i, owner in enumerate(owners)}
    again = sorted(last.values())[:16]  # each owner's last row again: read back, same bytes
    computed = fast.contrib_computed
    repeated = fast.contributions(rows[again], [owners[i] for i in again])
    assert repeated.tobytes() == expected[again].tobytes()
    assert fast.contrib_computed == computed


def test_a_first_row_per_owner_computes_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The split keys cost ~15-40 us a row and only a returning owner can use them: rows of
    owners not seen before are predicted without any; without owners nothing is kept."""
    X, y_bin, _ = _data(seed=10)
    fast = FastPredictor(_booster(X, y_bin, "binary"))
    calls: list[int] = []
    keys = SplitKeys.keys

    def counted(self: SplitKeys, rows: np.ndarray) -> list[bytes]:
        calls.append(len(rows))
        return keys(self, rows)

    monkeypatch.setattr(SplitKeys, "keys", counted)
    expected = np.asarray(fast.booster.predict(X[:40], num_threads=1, pred_contrib=True))
    first = fast.contributions(X[:40], [f"c{i}" for i in range(40)])
    assert first.tobytes() == expected.tobytes() and calls == []
    assert fast.contributions(X[:40]).tobytes() == expected.tobytes()
    assert fast.contrib_computed == 40 and calls == [] and len(fast._contrib) == 40
    moved = X[:40].copy()
    moved[:, 0] = np.nextafter(moved[:, 0], np.inf)  # rarely across a split: mostly read back
    want = np.asarray(fast.booster.predict(moved, num_threads=1, pred_contrib=True))
    assert fast.contributions(moved, [f"c{i}" for i in range(40)]).tobytes() == want.tobytes()
    changed = sum(a.tobytes() != b.tobytes() for a, b in zip(moved, X[:40], strict=True))
    assert 30 < changed < 40  # NaN and infinite values stay: the same row, read back
    assert sum(calls) == 2 * changed  # the changed rows' keys and, once, their last rows'
    assert fast.contrib_computed < 40 + 40


def test_contributions_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond ``CONTRIB_CACHE_ROWS`` the least recently used owners go; what stays is exact."""
    monkeypatch.setattr(fastpredict, "CONTRIB_CACHE_ROWS", 50)
    X, y_bin, _ = _data(seed=9)
    booster = _booster(X, y_bin, "binary")
    fast = FastPredictor(booster)
    for start in range(0, 600, 8):
        fast.contributions(X[start : start + 8], list(range(start, start + 8)))
    assert len(fast._contrib) <= 50
    expected = np.asarray(booster.predict(X[-40:], num_threads=1, pred_contrib=True))
    computed = fast.contrib_computed
    assert fast.contributions(X[-40:], list(range(560, 600))).tobytes() == expected.tobytes()
    assert fast.contrib_computed == computed  # the latest owners were kept


def test_row_boosters_equal_predict_row_bit_for_bit() -> None:
    """:class:`RowBoosters` gives each booster's :meth:`FastPredictor.predict_row` number
    exactly (same bytes) for the boosters asked, on 2,000 hard rows and random subsets."""
    rng = np.random.default_rng(13)
    X, y_bin, y_reg = _data(seed=7)
    boosters = [
        _booster(X, y_bin, "binary"),
        _booster(X, y_reg, "regression"),
        _booster(X, np.maximum(y_reg, 0.0), "tweedie"),
    ]
    fast = [FastPredictor(b) for b in boosters]
    together = RowBoosters(boosters)
    rows = _hard_rows(rng, 2000)
    rows[:20] = np.nan
    rows[20:40] = 0.0
    rows[40:60] = -0.0
    rows[60:80] *= 1e300
    for row in rows:
        which = [i for i in range(3) if rng.random() < 0.7]
        got = together.predict(row, which)
        assert got is not None and len(got) == 3
        for i in which:
            assert np.float64(got[i]).tobytes() == fast[i].predict_row(row).tobytes()


def test_row_boosters_step_aside_when_busy_and_check_rows() -> None:
    X, y_bin, _ = _data()
    together = RowBoosters([_booster(X, y_bin, "binary")])
    with together._lock:  # another thread predicting: the caller takes its general path
        assert together.predict(X[0].copy(), [0]) is None
    for bad in (X[0, :3].copy(), X[:2], np.zeros(1)):
        with pytest.raises(ValueError):
            together.predict(bad, [0])
    fast = FastPredictor(together._predictors[0].booster)
    for row in (X[0].astype(np.float32), np.asfortranarray(X[:6, :6])[:, 1], X[None, 0]):
        got = together.predict(row, [0])  # read as float64, as predict_row reads it
        assert got is not None
        assert np.float64(got[0]).tobytes() == fast.predict_row(row.ravel()).tobytes()
    multi = lgb.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1},
        lgb.Dataset(X, (y_bin + (X[:, 0] > 0)).astype(int)),
        num_boost_round=3,
    )
    with pytest.raises(ValueError):
        RowBoosters([multi])
