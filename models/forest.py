"""Several LightGBM boosters' predictions for one row in one compiled call, bit for bit.

Why: the live NBA predicts up to 14 small boosters per customer (~900 trees on the demo);
through LightGBM's C API (one ``*SingleRowFast`` call per booster: the row copied into a
sparse vector and back into a dense buffer each time) that cost ~70 us a customer, and
walking the same trees here ~40 us. :class:`Forest` holds the boosters' trees flattened
one after the other (:class:`models.treeshap.TreeArrays`, the TreeSHAP port's reading of
the model text) and walks the ones asked for.

Exactness: LightGBM's ``GBDT::PredictRaw``: per booster, ``0.0`` plus each tree's leaf
value in tree order, each tree walked by ``Tree::NumericalDecision`` /
``CategoricalDecision`` (the TreeSHAP port's :func:`~models.treeshap._numerical_left` and
:func:`~models.treeshap._categorical_left`, on the row read as LightGBM's dense-row
prediction reads it); then the objective's ``ConvertOutput``: the identity for
``regression`` and ``1.0 / (1.0 + exp(-sigmoid * x))`` for ``binary``, with the C
library's ``exp`` as LightGBM's (numpy's own ``exp`` differs in the last bit on ~0.5% of
rows; ``math.exp`` does not). Other objectives, averaged outputs (random forests),
multiclass and linear trees are refused (:class:`ValueError`): their boosters keep
LightGBM's C call. Tests hold the outputs equal to ``Booster.predict``'s bytes
(``tests/models/test_forest.py``).

Raw scores (``raw=True``: ``PredictRaw`` without ``ConvertOutput``, so any one-output
objective, tweedie included) serve the live churn and value models' one-row scores
(:meth:`models.fastpredict.FastPredictor.predict_row`). Inside a whole ``/score`` the
C call cost more than in a loop of its own: its trees are separate allocations spread
over the heap, cold after the rest of a score; walking the flattened arrays measured
15-25 us less per score (A/B in one process, alternate requests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightgbm as lgb
import numba
import numpy as np

from models.fastpredict import ZERO_THRESHOLD
from models.treeshap import ROUTE_CATEGORICAL, TreeArrays, _categorical_left, _numerical_left

#: how each booster's raw sum becomes its output (``ConvertOutput``)
IDENTITY, SIGMOID = 0, 1


class Forest:
    """One-output boosters of one feature count, predicted together for one row.

    Not thread-safe (the row buffer is shared): the caller holds a lock.
    """

    def __init__(self, boosters: Sequence[lgb.Booster], raw: bool = False) -> None:
        """Raises ValueError for a booster whose output it cannot reproduce (see the
        module doc). ``raw``: every output is the raw score (``predict(raw_score=True)``,
        ``PredictRaw`` alone), whatever the objective."""
        trees = [TreeArrays.of(b) for b in boosters]
        kinds, scales = [], []
        for t in trees:
            name, *options = t.objective.split()
            if t.num_class != 1 or t.average_output:
                raise ValueError("a forest takes one-output boosters without averaging")
            if raw or (name == "regression" and not options):
                kinds.append(IDENTITY)
                scales.append(1.0)
            elif name == "binary":
                found = dict(o.split(":", 1) for o in options)
                kinds.append(SIGMOID)
                scales.append(float(found.get("sigmoid", "1")))
            else:
                raise ValueError(f"objective {t.objective!r}: LightGBM's C call predicts it")
        if len({t.num_feature for t in trees}) > 1:
            raise ValueError("a forest's boosters read one feature count")
        self.num_feature = trees[0].num_feature if trees else 0
        self._kinds = kinds
        self._minus_scales = [-s for s in scales]
        self._row = np.empty(self.num_feature, dtype=np.float64)
        self._out = np.empty(len(trees), dtype=np.float64)
        self._arrays = _concatenate(trees)

    def predict(self, row: np.ndarray, which: Sequence[int]) -> list[float]:
        """The outputs of the boosters at positions ``which`` (in any order) for ``row``
        (``num_feature`` float64 values, contiguous: not checked), as a list over all
        positions (the others' entries are stale: read only ``which``)."""
        wanted = np.fromiter(which, dtype=np.int64, count=len(which))
        _predict_raw(row, self._row, self._out, wanted, *self._arrays)
        out = self._out.tolist()
        for i in which:
            if self._kinds[i] == SIGMOID:
                out[i] = 1.0 / (1.0 + math.exp(self._minus_scales[i] * out[i]))
        return out  # type: ignore[no-any-return]


def _concatenate(trees: Sequence[TreeArrays]) -> tuple[np.ndarray, ...]:
    """The boosters' trees one after the other, plus each booster's first tree
    (:func:`_predict_raw`'s arrays after the row's)."""
    node_start, leaf_start, cat_start, booster_start = [0], [0], [0], [0]
    parts: dict[str, list[np.ndarray]] = {
        k: []
        for k in (
            "split_feature",
            "threshold",
            "route",
            "left_child",
            "right_child",
            "leaf_value",
            "cat_boundaries",
            "cat_threshold",
        )
    }
    cats = 0
    for t in trees:
        node_start += (t.node_start[1:] + node_start[-1]).tolist()
        leaf_start += (t.leaf_start[1:] + leaf_start[-1]).tolist()
        cat_start += (t.cat_start[1:] + cat_start[-1]).tolist()
        booster_start.append(len(node_start) - 1)
        for name in ("split_feature", "threshold", "route", "left_child", "right_child"):
            parts[name].append(getattr(t, name))
        parts["leaf_value"].append(t.leaf_value)
        parts["cat_boundaries"].append(t.cat_boundaries + cats)
        parts["cat_threshold"].append(t.cat_threshold)
        cats += len(t.cat_threshold)

    def joined(name: str, dtype: type) -> np.ndarray:
        return np.concatenate([np.empty(0, dtype=dtype), *parts[name]]).astype(dtype)

    def i64(values: list[int]) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    return (
        i64(booster_start),
        i64(node_start),
        i64(leaf_start),
        i64(cat_start),
        joined("split_feature", np.int64),
        joined("threshold", np.float64),
        joined("route", np.int64),
        joined("left_child", np.int64),
        joined("right_child", np.int64),
        joined("leaf_value", np.float64),
        joined("cat_boundaries", np.int64),
        joined("cat_threshold", np.int64),
    )


@numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
def _predict_raw(
    row: np.ndarray,
    x: np.ndarray,
    out: np.ndarray,
    which: np.ndarray,
    booster_start: np.ndarray,
    node_start: np.ndarray,
    leaf_start: np.ndarray,
    cat_start: np.ndarray,
    split_feature: np.ndarray,
    threshold: np.ndarray,
    route: np.ndarray,
    left_child: np.ndarray,
    right_child: np.ndarray,
    leaf_value: np.ndarray,
    cat_boundaries: np.ndarray,
    cat_threshold: np.ndarray,
) -> None:
    """GBDT::PredictRaw of the boosters ``which`` into ``out`` (the row read into ``x``
    as LightGBM's dense-row prediction reads it: values within kZeroThreshold are 0)."""
    for j in range(x.shape[0]):
        v = row[j]
        x[j] = v if (abs(v) > ZERO_THRESHOLD or np.isnan(v)) else 0.0
    for w in range(which.shape[0]):
        b = which[w]
        total = 0.0
        for t in range(booster_start[b], booster_start[b + 1]):
            n0 = node_start[t]
            if node_start[t + 1] == n0:  # a single leaf
                total += leaf_value[leaf_start[t]]
                continue
            node = 0
            # the decision spelled out as in treeshap._from_table: an inlined helper taking
            # the node arrays measured 58 instead of 42 us for the demo's 14 boosters
            while node >= 0:
                g = n0 + node
                kind = route[g]
                if kind & ROUTE_CATEGORICAL:
                    cat_idx = cat_start[t] + int(threshold[g])
                    go_left = _categorical_left(
                        x[split_feature[g]], kind, cat_idx, cat_boundaries, cat_threshold
                    )
                else:
                    go_left = _numerical_left(x[split_feature[g]], kind, threshold[g])
                node = left_child[g] if go_left else right_child[g]
            total += leaf_value[leaf_start[t] + ~node]
        out[b] = total
