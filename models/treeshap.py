"""LightGBM's TreeSHAP (``pred_contrib``) for one row, ported to numba, bit for bit.

Why: a live churn score's reasons are TreeSHAP contributions of one row; through LightGBM's
C API (:meth:`models.fastpredict.FastPredictor.predict_row` with ``PREDICT_CONTRIB``) that
costs ~110 us on the demo model (54 trees of depth 5), nearly all of it TreeSHAP's path
arithmetic (a few dozen dependent divisions per leaf). Here that arithmetic is done once
per booster: a leaf's terms (``phi[feature] += term`` for each feature on its path) depend
on the row only through which edges above it the row took (TreeSHAP's "hot" child) or not,
so :class:`TreeShap` computes every leaf's terms for every hot/cold pattern of its edges
(32 per leaf at depth 5: ~150k doubles on the demo) and a row's call only walks each tree
and adds its leaves' terms (~25 us). A booster with too many patterns
(:data:`MAX_TABLE_TERMS`) is refused: the same arithmetic run per row measured no faster
than LightGBM's C call (125-160 against ~115 us), which then stays.

Exactness: the port follows LightGBM 4.x ``src/io/tree.cpp`` / ``include/LightGBM/tree.h``
(``Tree::PredictContrib``, ``TreeSHAP``, ``ExtendPath``, ``UnwindPath``,
``UnwoundPathSum``, ``ExpectedValue``, ``NumericalDecision``, ``CategoricalDecision``)
operation for operation: the same expressions in the same order (the leaf sums'
independent loops interleaved, each sum's own order kept), no fast-math (no reassociation
or fused multiply-add), IEEE division (``error_model="numpy"``); trees in order, the hot
child's subtree before the cold child's (an explicit stack in place of the recursion),
each leaf's terms added in its path's order; the row read as LightGBM's dense-row
prediction reads it (values within ``kZeroThreshold`` of 0, -0.0 included, are 0). A
table's term is the double LightGBM computes for that leaf and pattern, so the
contributions equal ``booster.predict(X, pred_contrib=True)``'s bit for bit
(tests/models/test_treeshap.py).

The trees are read from ``booster.model_to_string()`` (thresholds and leaf values printed
with 17 significant digits: they parse back to the same doubles). Linear trees are refused
(LightGBM has no contributions for them either).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numba
import numpy as np

from models.fastpredict import ZERO_THRESHOLD


@dataclass(frozen=True, slots=True)
class TreeArrays:
    """A booster's trees flattened for :class:`TreeShap` (made by :meth:`of`).

    Nodes and leaves of tree ``t`` are ``node_start[t]:node_start[t + 1]`` and
    ``leaf_start[t]:leaf_start[t + 1]``; children are tree-local (negative: ``~leaf``).
    A categorical node's threshold is its index into the tree's ``cat_boundaries``
    (stored from ``cat_start[t]``, already offset into the one ``cat_threshold`` array).
    """

    num_feature: int
    num_class: int
    node_start: np.ndarray
    leaf_start: np.ndarray
    cat_start: np.ndarray
    split_feature: np.ndarray
    threshold: np.ndarray
    decision_type: np.ndarray
    #: per node, how :func:`_decision` routes it: ``ROUTE_*`` bits
    route: np.ndarray
    left_child: np.ndarray
    right_child: np.ndarray
    internal_count: np.ndarray
    leaf_value: np.ndarray
    leaf_count: np.ndarray
    cat_boundaries: np.ndarray
    cat_threshold: np.ndarray
    #: each output's bias column: the sum of its trees' ``ExpectedValue`` in tree order
    bias: np.ndarray
    max_depth: int
    #: the header's ``objective`` (e.g. ``binary sigmoid:1``; empty without one) and
    #: whether the outputs are averaged over the trees (random forest mode)
    objective: str = ""
    average_output: bool = False

    @classmethod
    def of(cls, booster: lgb.Booster, num_iteration: int | None = None) -> TreeArrays:
        """The trees ``booster.predict`` uses (``num_iteration``: as there; None: the best
        iteration if any, else all)."""
        if num_iteration is None:
            num_iteration = booster.best_iteration
        text = booster.model_to_string(num_iteration=-1)
        lines = text.split("\nTree=", 1)[0].splitlines()
        header = dict(line.split("=", 1) for line in lines if "=" in line)
        num_class = int(header.get("num_tree_per_iteration", "1"))
        num_feature = int(header["max_feature_idx"]) + 1
        blocks = text.split("end of trees", 1)[0].split("\nTree=")[1:]
        if num_iteration is not None and num_iteration > 0:
            blocks = blocks[: num_iteration * num_class]
        ints: dict[str, list[int]] = {k: [] for k in _INT_FIELDS}
        doubles: dict[str, list[float]] = {"threshold": [], "leaf_value": []}
        node_start, leaf_start, cat_start = [0], [0], [0]
        cat_threshold: list[int] = []
        bias = [0.0] * num_class
        max_depth = 0
        for t, block in enumerate(blocks):
            fields = dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line)
            if fields.get("is_linear", "0") != "0":
                raise ValueError("TreeSHAP is not defined for linear trees")
            num_leaves = int(fields["num_leaves"])
            values = [float(v) for v in fields["leaf_value"].split()]
            counts = [int(v) for v in fields.get("leaf_count", "0").split()]
            if num_leaves > 1:
                internal = [int(v) for v in fields["internal_count"].split()]
                expected, total = 0.0, float(internal[0])
                for count, value in zip(counts, values, strict=True):
                    expected += (count / total) * value  # Tree::ExpectedValue
                left = [int(v) for v in fields["left_child"].split()]
                right = [int(v) for v in fields["right_child"].split()]
                max_depth = max(max_depth, _depth(left, right))
                ints["split_feature"] += [int(v) for v in fields["split_feature"].split()]
                ints["decision_type"] += [int(v) for v in fields["decision_type"].split()]
                ints["left_child"] += left
                ints["right_child"] += right
                ints["internal_count"] += internal
                doubles["threshold"] += [float(v) for v in fields["threshold"].split()]
            else:
                expected = values[0]
                counts = [0]
            bias[t % num_class] += expected
            doubles["leaf_value"] += values
            ints["leaf_count"] += counts
            boundaries = [int(v) for v in fields.get("cat_boundaries", "").split()]
            ints["cat_boundaries"] += [b + len(cat_threshold) for b in boundaries]
            cat_threshold += [int(v) for v in fields.get("cat_threshold", "").split()]
            node_start.append(len(ints["split_feature"]))
            leaf_start.append(len(doubles["leaf_value"]))
            cat_start.append(len(ints["cat_boundaries"]))

        def i64(values: list[int]) -> np.ndarray:
            return np.asarray(values, dtype=np.int64)

        return cls(
            num_feature=num_feature,
            num_class=num_class,
            node_start=i64(node_start),
            leaf_start=i64(leaf_start),
            cat_start=i64(cat_start),
            split_feature=i64(ints["split_feature"]),
            threshold=np.asarray(doubles["threshold"], dtype=np.float64),
            decision_type=i64(ints["decision_type"]),
            route=_routes(ints, doubles["threshold"], node_start, cat_start, cat_threshold),
            left_child=i64(ints["left_child"]),
            right_child=i64(ints["right_child"]),
            internal_count=i64(ints["internal_count"]),
            leaf_value=np.asarray(doubles["leaf_value"], dtype=np.float64),
            leaf_count=i64(ints["leaf_count"]),
            cat_boundaries=i64(ints["cat_boundaries"]),
            cat_threshold=i64(cat_threshold),
            bias=np.asarray(bias, dtype=np.float64),
            max_depth=max_depth,
            objective=header.get("objective", "").strip(),
            average_output="average_output" in lines,
        )


_INT_FIELDS = (
    "split_feature",
    "decision_type",
    "left_child",
    "right_child",
    "internal_count",
    "leaf_count",
    "cat_boundaries",
)


#: :attr:`TreeArrays.route` bits: a categorical split; NaN goes left; 0 goes left
ROUTE_CATEGORICAL, ROUTE_NAN_LEFT, ROUTE_ZERO_LEFT = 1, 2, 4


def _routes(
    ints: dict[str, list[int]],
    thresholds: list[float],
    node_start: list[int],
    cat_start: list[int],
    cat_threshold: list[int],
) -> np.ndarray:
    """Each node's :data:`ROUTE_NAN_LEFT` / :data:`ROUTE_ZERO_LEFT` / :data:`ROUTE_CATEGORICAL`,
    as Tree::NumericalDecision / CategoricalDecision route NaN and 0 (the row read as
    :func:`_start` reads it: values within kZeroThreshold of 0 are 0)."""
    routes = np.zeros(len(thresholds), dtype=np.int64)
    tree = 0
    for node, (kind, threshold) in enumerate(zip(ints["decision_type"], thresholds, strict=True)):
        while node >= node_start[tree + 1]:
            tree += 1
        if kind & 1:  # NaN: right; 0: category 0's bit
            cat_idx = cat_start[tree] + int(threshold)
            start, end = ints["cat_boundaries"][cat_idx], ints["cat_boundaries"][cat_idx + 1]
            zero_left = end > start and cat_threshold[start] & 1
            routes[node] = ROUTE_CATEGORICAL | (ROUTE_ZERO_LEFT if zero_left else 0)
            continue
        missing, default_left, zero_le = (kind >> 2) & 3, bool(kind & 2), threshold >= 0.0
        nan_left = zero_le if missing == 0 else default_left  # None: NaN read as 0
        zero_left = default_left if missing == 1 else zero_le
        routes[node] = (ROUTE_NAN_LEFT if nan_left else 0) | (ROUTE_ZERO_LEFT if zero_left else 0)
    return routes


def _depth(left: list[int], right: list[int]) -> int:
    """The depth of a tree's deepest leaf (the root alone: 0)."""
    deepest, stack = 0, [(0, 0)]
    while stack:
        node, depth = stack.pop()
        if node < 0:
            deepest = max(deepest, depth)
        else:
            stack += [(left[node], depth + 1), (right[node], depth + 1)]
    return deepest


#: the most precomputed leaf terms a booster may need (8 bytes each: 16 MB); more, and
#: :class:`TreeShap` refuses it
MAX_TABLE_TERMS = 1 << 21


def _leaf_shapes(trees: TreeArrays) -> tuple[np.ndarray, np.ndarray]:
    """Each leaf's depth and its unique path's length (distinct features above it)."""
    t = trees
    depth = np.zeros(len(t.leaf_value), dtype=np.int64)
    unique = np.zeros(len(t.leaf_value), dtype=np.int64)
    for k in range(len(t.node_start) - 1):
        n0, l0 = int(t.node_start[k]), int(t.leaf_start[k])
        if t.node_start[k + 1] == n0:
            continue
        stack: list[tuple[int, tuple[int, ...]]] = [(0, ())]
        while stack:
            node, features = stack.pop()
            if node < 0:
                depth[l0 + ~node], unique[l0 + ~node] = len(features), len(set(features))
            else:
                above = (*features, int(t.split_feature[n0 + node]))
                stack += [(int(t.left_child[n0 + node]), above)]
                stack += [(int(t.right_child[n0 + node]), above)]
    return depth, unique


class TreeShap:
    """One booster's contributions for one row at a time, with its buffers preallocated.

    A leaf's terms (``phi[feature] += term`` for each feature on its unique path) depend
    on the row only through which edges above it the row took ("hot") or not: when the
    booster has at most :data:`MAX_TABLE_TERMS` of them (a depth-5 tree: 32 hot/cold
    patterns per leaf) they are computed once, by the same steps as LightGBM (the same
    doubles), and a row's call walks each tree once, adding its leaves' terms in
    LightGBM's order.

    Not thread-safe (the buffers are shared): one per thread.
    """

    def __init__(self, booster: lgb.Booster, num_iteration: int | None = None) -> None:
        """Raises ValueError for linear trees and for a booster whose table would pass
        :data:`MAX_TABLE_TERMS`."""
        self.trees = t = TreeArrays.of(booster, num_iteration)
        path_len = t.max_depth + 1
        slots = path_len * (path_len + 1) // 2
        self._row = np.empty(t.num_feature, dtype=np.float64)
        self._path = (
            np.empty(slots, dtype=np.int64),  # feature_index
            np.empty(slots, dtype=np.float64),  # zero_fraction
            np.empty(slots, dtype=np.float64),  # one_fraction
            np.empty(slots, dtype=np.float64),  # pweight
        )
        self._stack_int = np.empty((4 * path_len + 4, 6), dtype=np.int64)
        self._stack_float = np.empty((4 * path_len + 4, 2), dtype=np.float64)
        #: ``(depth - j) / (double)(depth + 1)`` of UnwoundPathSum, at ``depth * path_len + j``
        self._ratio = np.zeros(path_len * path_len, dtype=np.float64)
        for d in range(path_len):
            for j in range(d):
                self._ratio[d * path_len + j] = (d - j) / float(d + 1)
        self._scratch = np.empty(2 * path_len, dtype=np.float64)
        self.out = np.empty(t.num_class * (t.num_feature + 1), dtype=np.float64)
        leaf_depth, unique = _leaf_shapes(t)
        sizes = unique << leaf_depth
        if int(sizes.sum()) > MAX_TABLE_TERMS:
            raise ValueError(
                f"the booster's leaves need {int(sizes.sum()):,} precomputed terms, more than "
                f"{MAX_TABLE_TERMS:,}"
            )
        self._unique = unique
        self._term_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._feature_start = np.concatenate([[0], np.cumsum(unique)]).astype(np.int64)
        self._terms = np.zeros(int(self._term_start[-1]), dtype=np.float64)
        self._term_feature = np.zeros(int(self._feature_start[-1]), dtype=np.int64)
        _build_table(
            t.node_start, t.leaf_start, t.split_feature, t.left_child, t.right_child,
            t.internal_count, t.leaf_value, t.leaf_count, self._term_start,
            self._feature_start, self._terms, self._term_feature, *self._path,
            self._stack_int, self._stack_float, self._ratio, self._scratch,
        )  # fmt: skip

    def contributions_into(self, row: np.ndarray, out: np.ndarray) -> None:
        """Write ``row``'s contributions (1-D contiguous float64, ``num_feature`` values:
        not checked) into ``out`` (``num_class * (num_feature + 1)`` float64:
        ``booster.predict(row[None, :], pred_contrib=True)[0]``)."""
        t = self.trees
        _from_table(
            row, out, self._row, t.node_start, t.leaf_start, t.cat_start,
            t.split_feature, t.threshold, t.route, t.left_child, t.right_child,
            t.cat_boundaries, t.cat_threshold, t.bias, self._unique, self._term_start,
            self._feature_start, self._terms, self._term_feature, self._stack_int,
        )  # fmt: skip

    def contributions(self, row: np.ndarray) -> np.ndarray:
        """``row``'s contributions as a fresh array (see :meth:`contributions_into`)."""
        data = np.ascontiguousarray(row, dtype=np.float64)
        if data.shape != (self.trees.num_feature,):
            raise ValueError(f"expected one row of {self.trees.num_feature} features")
        self.contributions_into(data, self.out)
        return self.out.copy()


# no fast-math: LightGBM's operations in its order, IEEE division (no ZeroDivisionError)
_jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
#: helpers inlined into their caller (Numba IR inlining). The per-row path's take scalars
#: where they can: array arguments, even inlined, measured ~15 us a demo row more
_inline = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy", inline="always")


@_inline
def _extend_path(
    pf: np.ndarray,
    pz: np.ndarray,
    po: np.ndarray,
    pw: np.ndarray,
    b: int,
    depth: int,
    zero_fraction: float,
    one_fraction: float,
    feature: int,
) -> None:  # Tree::ExtendPath on the path at offset b
    pf[b + depth] = feature
    pz[b + depth] = zero_fraction
    po[b + depth] = one_fraction
    pw[b + depth] = 1.0 if depth == 0 else 0.0
    for i in range(depth - 1, -1, -1):
        pw[b + i + 1] += one_fraction * pw[b + i] * (i + 1) / float(depth + 1)
        pw[b + i] = zero_fraction * pw[b + i] * (depth - i) / float(depth + 1)


@_inline
def _unwind_path(
    pf: np.ndarray, pz: np.ndarray, po: np.ndarray, pw: np.ndarray, b: int, depth: int, index: int
) -> None:  # Tree::UnwindPath
    one_fraction = po[b + index]
    zero_fraction = pz[b + index]
    next_one_portion = pw[b + depth]
    for i in range(depth - 1, -1, -1):
        if one_fraction != 0:
            tmp = pw[b + i]
            pw[b + i] = next_one_portion * (depth + 1) / ((i + 1) * one_fraction)
            next_one_portion = tmp - pw[b + i] * zero_fraction * (depth - i) / float(depth + 1)
        else:
            pw[b + i] = (pw[b + i] * (depth + 1)) / (zero_fraction * (depth - i))
    for i in range(index, depth):
        pf[b + i] = pf[b + i + 1]
        pz[b + i] = pz[b + i + 1]
        po[b + i] = po[b + i + 1]


@_inline
def _categorical_left(
    fval: float, kind: int, cat_idx: int, cat_boundaries: np.ndarray, cat_threshold: np.ndarray
) -> bool:
    """Tree::CategoricalDecision: whether the value (as :func:`_start` reads it) goes left
    (``cat_idx``: the node's bitset, offset into ``cat_boundaries``)."""
    if fval != fval:
        return False
    if fval == 0.0:
        return kind & ROUTE_ZERO_LEFT != 0
    # static_cast<int>: truncation; out of int range x86 gives INT_MIN (negative)
    if fval >= 2147483648.0 or fval <= -2147483649.0:
        return False
    int_fval = int(fval)
    if int_fval < 0:
        return False
    start = cat_boundaries[cat_idx]
    if int_fval // 32 >= cat_boundaries[cat_idx + 1] - start:
        return False
    return (cat_threshold[start + int_fval // 32] >> (int_fval % 32)) & 1 != 0


@_inline
def _numerical_left(fval: float, kind: int, threshold: float) -> bool:
    """Tree::NumericalDecision: whether the value (as :func:`_start` reads it) goes left;
    NaN and 0 replaced by -inf (left) or NaN (right: a threshold can be +inf) as the node
    routes them (selects, not branches: a row's NaN and 0 are unpredictable)."""
    value = fval
    value = (-np.inf if kind & ROUTE_NAN_LEFT else np.nan) if fval != fval else value
    value = (-np.inf if kind & ROUTE_ZERO_LEFT else np.nan) if fval == 0.0 else value
    return value <= threshold


@_inline
def _leaf_terms(
    value: float,
    pf: np.ndarray,
    pz: np.ndarray,
    po: np.ndarray,
    pw: np.ndarray,
    b: int,
    depth: int,
    ratio: np.ndarray,
    scratch: np.ndarray,
    terms: np.ndarray,
    features: np.ndarray,
    at: int,
    feature_at: int,
) -> None:
    """TreeSHAP at a leaf: its terms ``UnwoundPathSum(i) * (one - zero) * value`` and
    features for the path's elements ``i = 1..depth``, into ``terms[at:]`` and
    ``features[feature_at:]`` (LightGBM adds them to ``phi`` in that order). The sums'
    loops are interleaved (one pass over the path computes every element's sum, each by
    LightGBM's operations in its order: independent divisions overlap in the CPU), and
    ``(depth - j) / (double)(depth + 1)`` is read from ``ratio`` (the same double)."""
    n = scratch.shape[0] // 2  # [0, n): each element's next_one_portion; [n, 2n): its sum
    for i in range(1, depth + 1):
        scratch[i] = pw[b + depth]
        scratch[n + i] = 0.0
    row = depth * n
    for j in range(depth - 1, -1, -1):
        r = ratio[row + j]
        weight = pw[b + j]
        for i in range(1, depth + 1):
            one_fraction = po[b + i]
            if one_fraction != 0:
                tmp = scratch[i] * (depth + 1) / ((j + 1) * one_fraction)
                scratch[n + i] += tmp
                scratch[i] = weight - tmp * pz[b + i] * r
            else:
                scratch[n + i] += (weight / pz[b + i]) / r
    for i in range(1, depth + 1):
        terms[at + i - 1] = scratch[n + i] * (po[b + i] - pz[b + i]) * value
        features[feature_at + i - 1] = pf[b + i]


@_inline
def _start(row: np.ndarray, out: np.ndarray, x: np.ndarray, bias: np.ndarray) -> None:
    """The row as LightGBM's dense-row prediction reads it (only values beyond
    kZeroThreshold, NaN included; the others 0) into ``x``; ``out`` zeroed but for each
    output's bias."""
    num_feature = x.shape[0]
    for j in range(num_feature):
        v = row[j]
        x[j] = v if (abs(v) > ZERO_THRESHOLD or np.isnan(v)) else 0.0
    for j in range(out.shape[0]):
        out[j] = 0.0
    for k in range(bias.shape[0]):
        out[k * (num_feature + 1) + num_feature] = bias[k]


@_inline
def _enter(
    pf: np.ndarray,
    pz: np.ndarray,
    po: np.ndarray,
    pw: np.ndarray,
    parent: int,
    depth: int,
    zero_fraction: float,
    one_fraction: float,
    feature: int,
) -> int:
    """TreeSHAP's entry into a node: the parent's unique path copied to this node's slot
    (``parent_unique_path + unique_depth``) and extended; that slot's offset."""
    b = parent + depth
    for i in range(depth):
        pf[b + i] = pf[parent + i]
        pz[b + i] = pz[parent + i]
        po[b + i] = po[parent + i]
        pw[b + i] = pw[parent + i]
    _extend_path(pf, pz, po, pw, b, depth, zero_fraction, one_fraction, feature)
    return b


@_inline
def _split_again(
    pf: np.ndarray, pz: np.ndarray, po: np.ndarray, pw: np.ndarray, b: int, depth: int, feature: int
) -> tuple[float, float, int]:
    """A node's incoming zero and one fractions and the path's depth: a feature the path
    split on before is unwound from it (to be redone at this node), as TreeSHAP does."""
    incoming_zero_fraction = 1.0
    incoming_one_fraction = 1.0
    path_index = 0
    while path_index <= depth:
        if pf[b + path_index] == feature:
            break
        path_index += 1
    if path_index != depth + 1:
        incoming_zero_fraction = pz[b + path_index]
        incoming_one_fraction = po[b + path_index]
        _unwind_path(pf, pz, po, pw, b, depth, path_index)
        depth -= 1
    return incoming_zero_fraction, incoming_one_fraction, depth


@_jit
def _build_table(
    node_start: np.ndarray,
    leaf_start: np.ndarray,
    split_feature: np.ndarray,
    left_child: np.ndarray,
    right_child: np.ndarray,
    internal_count: np.ndarray,
    leaf_value: np.ndarray,
    leaf_count: np.ndarray,
    term_start: np.ndarray,
    feature_start: np.ndarray,
    terms: np.ndarray,
    term_feature: np.ndarray,
    pf: np.ndarray,
    pz: np.ndarray,
    po: np.ndarray,
    pw: np.ndarray,
    stack_int: np.ndarray,
    stack_float: np.ndarray,
    ratio: np.ndarray,
    scratch: np.ndarray,
) -> None:
    """Every leaf's terms for every hot/cold pattern of the edges above it (bit ``k`` of
    the pattern: the edge out of the depth-``k`` node was hot), at ``term_start[leaf] +
    pattern * unique_depth``: TreeSHAP's steps (``Tree::TreeSHAP``) with each child taken
    both hot and cold (the same path arithmetic, so the same doubles)."""
    for t in range(node_start.shape[0] - 1):
        n0 = node_start[t]
        if node_start[t + 1] == n0:
            continue
        l0 = leaf_start[t]
        # (node, unique_depth, parent path offset, parent feature, pattern, tree depth)
        stack_int[0, 0] = 0
        stack_int[0, 1] = 0
        stack_int[0, 2] = 0
        stack_int[0, 3] = -1
        stack_int[0, 4] = 0
        stack_int[0, 5] = 0
        stack_float[0, 0] = 1.0
        stack_float[0, 1] = 1.0
        sp = 1
        while sp > 0:
            sp -= 1
            node = stack_int[sp, 0]
            depth = stack_int[sp, 1]
            parent = stack_int[sp, 2]
            pattern = stack_int[sp, 4]
            level = stack_int[sp, 5]
            b = _enter(
                pf, pz, po, pw, parent, depth, stack_float[sp, 0], stack_float[sp, 1],
                stack_int[sp, 3],
            )  # fmt: skip
            if node < 0:
                leaf = l0 + ~node
                at = term_start[leaf] + pattern * depth
                _leaf_terms(
                    leaf_value[leaf], pf, pz, po, pw, b, depth, ratio, scratch, terms,
                    term_feature, at, feature_start[leaf],
                )  # fmt: skip
                continue
            g = n0 + node
            feature = split_feature[g]
            w = float(internal_count[g])
            incoming_zero_fraction, incoming_one_fraction, depth = _split_again(
                pf, pz, po, pw, b, depth, feature
            )
            for side in range(2):
                child = left_child[g] if side == 0 else right_child[g]
                count = internal_count[n0 + child] if child >= 0 else leaf_count[l0 + ~child]
                zero_fraction = count / w
                for hot in range(2):
                    stack_int[sp, 0] = child
                    stack_int[sp, 1] = depth + 1
                    stack_int[sp, 2] = b
                    stack_int[sp, 3] = feature
                    stack_int[sp, 4] = pattern | (hot << level)
                    stack_int[sp, 5] = level + 1
                    stack_float[sp, 0] = zero_fraction * incoming_zero_fraction
                    stack_float[sp, 1] = incoming_one_fraction if hot else 0.0
                    sp += 1


@_jit
def _from_table(
    row: np.ndarray,
    out: np.ndarray,
    x: np.ndarray,
    node_start: np.ndarray,
    leaf_start: np.ndarray,
    cat_start: np.ndarray,
    split_feature: np.ndarray,
    threshold: np.ndarray,
    route: np.ndarray,
    left_child: np.ndarray,
    right_child: np.ndarray,
    cat_boundaries: np.ndarray,
    cat_threshold: np.ndarray,
    bias: np.ndarray,
    unique: np.ndarray,
    term_start: np.ndarray,
    feature_start: np.ndarray,
    terms: np.ndarray,
    term_feature: np.ndarray,
    stack: np.ndarray,
) -> None:
    """GBDT::PredictContrib of one row into ``out`` from :func:`_build_table`'s terms:
    each tree walked hot child then cold child, as TreeSHAP, each leaf's terms for its
    pattern added in order."""
    _start(row, out, x, bias)
    num_feature = x.shape[0]
    num_class = bias.shape[0]
    for t in range(node_start.shape[0] - 1):
        n0 = node_start[t]
        if node_start[t + 1] == n0:
            continue
        l0 = leaf_start[t]
        phi = (t % num_class) * (num_feature + 1)
        stack[0, 0] = 0  # node
        stack[0, 1] = 0  # pattern
        stack[0, 2] = 0  # tree depth
        sp = 1
        while sp > 0:
            sp -= 1
            node = stack[sp, 0]
            pattern = stack[sp, 1]
            level = stack[sp, 2]
            if node < 0:
                leaf = l0 + ~node
                n = unique[leaf]
                at = term_start[leaf] + pattern * n
                f0 = feature_start[leaf]
                for i in range(n):
                    out[phi + term_feature[f0 + i]] += terms[at + i]
                continue
            g = n0 + node
            left = left_child[g]
            right = right_child[g]
            kind = route[g]
            if kind & ROUTE_CATEGORICAL:
                cat_idx = cat_start[t] + int(threshold[g])
                go_left = _categorical_left(
                    x[split_feature[g]], kind, cat_idx, cat_boundaries, cat_threshold
                )
            else:
                go_left = _numerical_left(x[split_feature[g]], kind, threshold[g])
            hot = left if go_left else right
            stack[sp, 0] = right if hot == left else left
            stack[sp, 1] = pattern
            stack[sp, 2] = level + 1
            stack[sp + 1, 0] = hot
            stack[sp + 1, 1] = pattern | (1 << level)
            stack[sp + 1, 2] = level + 1
            sp += 2
