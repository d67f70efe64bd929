"""Single-row LightGBM prediction without ``Booster.predict``'s per-call Python overhead.

``Booster.predict`` on a one-row matrix spends ~40 us in Python (parameter deepcopy, a
fresh ``_InnerPredictor``, array conversion, ctypes casts) around a ~1 us tree walk. The
live scorer predicts one customer with ~18 boosters, so that overhead dominates.
:class:`FastPredictor` calls LightGBM's ``*SingleRowFast`` C API instead: the prediction
config is built once per (booster, predict type) and each call is one ctypes call.

The C handles are never pickled (models are pickled by MLflow / BentoML): they are created
lazily and :func:`fast_predictor` keeps them outside the model objects, keyed weakly by the
object that owns the booster. A handle is used by one thread at a time; a thread that finds
it busy falls back to ``Booster.predict`` (same numbers, just slower). Batch paths keep
using ``Booster.predict``.

TreeSHAP contributions (``PREDICT_CONTRIB``) of up to :data:`FAST_ROWS` rows come from
:class:`models.treeshap.TreeShap`, a numba port of LightGBM's own TreeSHAP with each
leaf's terms precomputed (the same bits as ``pred_contrib``, ~30 instead of ~115 us a row
on the demo's churn model); it is built at the first such call (a worker's warm-up
score), and a booster it cannot take (linear trees) keeps LightGBM's C call. One-row raw
scores (``PREDICT_RAW_SCORE``: the live churn and value models) come from
:class:`models.forest.Forest` the same way (the same bits, cheaper inside a whole score).

:meth:`FastPredictor.contributions` (the live churn reasons, TreeSHAP: the costliest
prediction of a score) keeps each customer's last row and its contributions. TreeSHAP
reads a row only through the side of every split of the booster it falls on (its
:class:`SplitKeys` key), so two rows with one key have the same contributions, bit for
bit: a repeat score of a customer whose features moved inside the same splits (the
recency features move with the clock) reads them back instead of walking the trees again.
The keys are compared only then: a first score (no other customer's row had its key on
the 20k demo: keys are near-unique) computes none.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
from lightgbm import basic as _lgb_basic

if TYPE_CHECKING:
    from models.forest import Forest
    from models.treeshap import TreeShap

#: owners (customers) whose last row's contributions a booster keeps
#: (:meth:`FastPredictor.contributions`; ~2 KB each)
CONTRIB_CACHE_ROWS = 8_192

#: LightGBM reads a value this close to 0 as 0 (``kZeroThreshold``: a dense row keeps only
#: the values beyond it, the others are the zeros of its buffer)
ZERO_THRESHOLD = 1.0000000180025095e-35

#: up to this many rows a prediction takes the fast path (one C call with the prediction
#: set up once; the live service's customer or micro-batch); larger matrices (batch
#: scoring) take ``Booster.predict`` with its threads
FAST_ROWS = 64

PREDICT_NORMAL = _lgb_basic._C_API_PREDICT_NORMAL
PREDICT_RAW_SCORE = _lgb_basic._C_API_PREDICT_RAW_SCORE
PREDICT_CONTRIB = _lgb_basic._C_API_PREDICT_CONTRIB
_DTYPE_FLOAT64 = _lgb_basic._C_API_DTYPE_FLOAT64

_LIB = _lgb_basic._LIB
# private prototypes (own argtypes, so lightgbm's own use of _LIB is untouched)
_FAST_INIT = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,  # BoosterHandle
    ctypes.c_int,  # predict_type
    ctypes.c_int,  # start_iteration
    ctypes.c_int,  # num_iteration
    ctypes.c_int,  # data_type
    ctypes.c_int32,  # ncol
    ctypes.c_char_p,  # parameter
    ctypes.POINTER(ctypes.c_void_p),  # out FastConfigHandle
)(("LGBM_BoosterPredictForMatSingleRowFastInit", _LIB))
_FAST_PREDICT = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,  # FastConfigHandle
    ctypes.c_void_p,  # data
    ctypes.c_void_p,  # int64_t* out_len
    ctypes.c_void_p,  # double* out_result
)(("LGBM_BoosterPredictForMatSingleRowFast", _LIB))
_FAST_FREE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(("LGBM_FastConfigFree", _LIB))
_PREDICT_MAT = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,  # BoosterHandle
    ctypes.c_void_p,  # data
    ctypes.c_int,  # data_type
    ctypes.c_int32,  # nrow
    ctypes.c_int32,  # ncol
    ctypes.c_int,  # is_row_major
    ctypes.c_int,  # predict_type
    ctypes.c_int,  # start_iteration
    ctypes.c_int,  # num_iteration
    ctypes.c_char_p,  # parameter
    ctypes.c_void_p,  # int64_t* out_len
    ctypes.c_void_p,  # double* out_result
)(("LGBM_BoosterPredictForMat", _LIB))

#: the one output of a one-output booster (a :class:`~models.forest.Forest` of it)
_FIRST = (0,)

_KWARGS = {
    PREDICT_NORMAL: {},
    PREDICT_RAW_SCORE: {"raw_score": True},
    PREDICT_CONTRIB: {"pred_contrib": True},
}


def _check(ret: int) -> None:
    if ret != 0:
        raise lgb.basic.LightGBMError(_LIB.LGBM_GetLastError().decode("utf-8"))


class _Handle:
    """One FastConfig: the C handle plus its preallocated output buffers."""

    __slots__ = ("address", "out", "out_address", "out_len", "out_len_address")

    def __init__(self, address: int, size: int) -> None:
        self.address = address
        self.out = np.empty(size, dtype=np.float64)
        self.out_address = self.out.ctypes.data
        self.out_len = np.zeros(1, dtype=np.int64)
        self.out_len_address = self.out_len.ctypes.data


class FastPredictor:
    """Fast one-row predictions of one booster, identical to ``Booster.predict``.

    Keeps a strong reference to the booster, so its C handles are always freed before the
    booster they point into.
    """

    def __init__(self, booster: lgb.Booster, treeshap: bool = True) -> None:
        """``treeshap``: contributions from :mod:`models.treeshap` and one-row raw scores
        from :mod:`models.forest` (False: LightGBM's C API for every row, the baseline
        ``bench/treeshap.py`` times)."""
        self.booster = booster
        self._lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self._num_feature = booster.num_feature()
        num_class = ctypes.c_int(0)
        _check(_LIB.LGBM_BoosterGetNumClasses(booster._handle, ctypes.byref(num_class)))
        self._num_class = max(1, num_class.value)
        # what Booster.predict(num_iteration=None) uses (<= 0: all iterations)
        self._num_iteration = booster.best_iteration
        #: the booster's split keys (False: not read yet; None: it cannot have them) and
        #: each owner's last row and contributions (:meth:`contributions`)
        self._split_keys: SplitKeys | bool | None = False
        self._contrib: dict[Hashable, _Explained] = {}
        self._cache_lock = threading.Lock()
        #: rows whose contributions :meth:`contributions` computed (the others were kept)
        self.contrib_computed = 0
        #: the booster's TreeSHAP port (:mod:`models.treeshap`; None: not built yet, or it
        #: has none, e.g. linear trees), used under ``_lock`` (its buffers are shared)
        self.treeshap = treeshap
        self._shap: TreeShap | None = None
        self._shap_tried = not treeshap
        #: the booster's one-row raw scores (:meth:`_raw_forest`), under ``_lock`` too
        self._raw: Forest | None = None
        self._raw_tried = not treeshap

    def __getstate__(self) -> dict[str, Any]:
        return {"booster": self.booster, "treeshap": self.treeshap}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["booster"], state.get("treeshap", True))  # type: ignore[misc]

    def __del__(self) -> None:
        handles = getattr(self, "_handles", None)
        free = _FAST_FREE  # None at interpreter exit (module globals cleared): the OS frees
        while handles and free is not None:
            free(handles.popitem()[1].address)

    def _init(self, predict_type: int) -> _Handle:
        out = ctypes.c_void_p()
        _check(
            _FAST_INIT(
                self.booster._handle,
                predict_type,
                0,
                self._num_iteration,
                _DTYPE_FLOAT64,
                self._num_feature,
                b"num_threads=1",
                ctypes.byref(out),
            )
        )
        assert out.value is not None
        per_class = self._num_feature + 1 if predict_type == PREDICT_CONTRIB else 1
        handle = _Handle(out.value, per_class * self._num_class)
        self._handles[predict_type] = handle
        return handle

    def predict_row(self, row: np.ndarray, predict_type: int = PREDICT_NORMAL) -> np.ndarray:
        """Predictions for one row (1-D, ``num_feature`` values): a fresh 1-D float64 array,
        ``Booster.predict(row[None, :], ...)[0]`` flattened."""
        data = np.ascontiguousarray(row, dtype=np.float64)
        if data.ndim != 1 or data.shape[0] != self._num_feature:
            raise ValueError(f"expected one row of {self._num_feature} features, got {row.shape}")
        if not self._lock.acquire(blocking=False):
            # another thread is using the handle: the slow, thread-safe path
            return np.asarray(
                self.booster.predict(data[None, :], **_KWARGS[predict_type]), dtype=np.float64
            ).ravel()
        try:
            if predict_type == PREDICT_CONTRIB and (shap := self._treeshap()) is not None:
                out = np.empty(shap.out.shape, dtype=np.float64)
                shap.contributions_into(data, out)
                return out
            if predict_type == PREDICT_RAW_SCORE and (forest := self._raw_forest()) is not None:
                return np.array(forest.predict(data, _FIRST), dtype=np.float64)
            handle = self._handles.get(predict_type) or self._init(predict_type)
            _check(
                _FAST_PREDICT(
                    handle.address, data.ctypes.data, handle.out_len_address, handle.out_address
                )
            )
            return handle.out[: int(handle.out_len[0])].copy()
        finally:
            self._lock.release()

    def predict_rows(self, X: np.ndarray, predict_type: int = PREDICT_NORMAL) -> np.ndarray:
        """Predictions for a few rows (``[rows, num_feature]``): ``[rows, outputs per row]``,
        ``Booster.predict(X, ...)`` as a 2-D array. One C call for all rows (the live
        service's micro-batches: the per-call overhead once per batch, and each tree
        stays in the cache for every row); one row takes :meth:`predict_row`."""
        data = np.ascontiguousarray(X, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != self._num_feature:
            raise ValueError(f"expected rows of {self._num_feature} features, got {X.shape}")
        rows = data.shape[0]
        if rows == 1:
            return self.predict_row(data[0], predict_type)[None, :]
        per_class = self._num_feature + 1 if predict_type == PREDICT_CONTRIB else 1
        if predict_type == PREDICT_CONTRIB and self._lock.acquire(blocking=False):
            try:  # the TreeSHAP port row by row (busy: LightGBM's matrix call below)
                if (shap := self._treeshap()) is not None:
                    contributions = np.empty((rows, per_class * self._num_class))
                    for i in range(rows):
                        shap.contributions_into(data[i], contributions[i])
                    return contributions
            finally:
                self._lock.release()
        out = np.empty(rows * per_class * self._num_class, dtype=np.float64)
        out_len = np.zeros(1, dtype=np.int64)
        _check(
            _PREDICT_MAT(
                self.booster._handle,
                data.ctypes.data,
                _DTYPE_FLOAT64,
                rows,
                self._num_feature,
                1,  # row major
                predict_type,
                0,
                self._num_iteration,
                b"num_threads=1",
                out_len.ctypes.data,
                out.ctypes.data,
            )
        )
        return out[: int(out_len[0])].reshape(rows, -1)

    def _treeshap(self) -> TreeShap | None:
        """The booster's :class:`models.treeshap.TreeShap`, built at the first use (the
        caller holds ``_lock``); None when it cannot have one (linear trees)."""
        if not self._shap_tried:
            self._shap_tried = True
            from models.treeshap import TreeShap  # numba: imported by the live path only

            try:
                self._shap = TreeShap(self.booster, self._num_iteration)
            except ValueError:  # LightGBM's C API then answers (or refuses) as before
                self._shap = None
        return self._shap

    def _raw_forest(self) -> Forest | None:
        """The booster's raw scores walked by :class:`models.forest.Forest`, built at the
        first use (the caller holds ``_lock``); None when it cannot (several outputs per
        row, averaged outputs, linear trees): LightGBM's C call then answers."""
        if not self._raw_tried:
            self._raw_tried = True
            from models.forest import Forest  # numba: imported by the live path only

            try:
                self._raw = Forest([self.booster], raw=True)
            except ValueError:
                self._raw = None
        return self._raw

    def forget(self) -> None:
        """Drop the contributions kept (a bench timing the computed path)."""
        with self._cache_lock:
            self._contrib.clear()

    def contributions(self, X: np.ndarray, owners: Sequence[Hashable] | None = None) -> np.ndarray:
        """``predict_rows(X, PREDICT_CONTRIB)``, a row read back from its owner's last one
        (``owners``: who each row is, e.g. the customer id) when that row was the same or
        had the same :class:`SplitKeys` key (the same numbers, bit for bit: see the module
        doc); the others predicted in one call and kept per owner, the least recently used
        dropped beyond :data:`CONTRIB_CACHE_ROWS`. A row's key is computed only when its
        owner comes back with another row: most first scores have no use for it."""
        data = np.ascontiguousarray(X, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != self._num_feature:
            raise ValueError(f"expected rows of {self._num_feature} features, got {X.shape}")
        if owners is not None and len(owners) != len(data):
            raise ValueError(f"{len(owners)} owners for {len(data)} rows")
        if self._split_keys is False:
            self._split_keys = SplitKeys.of(self.booster)
        splits = self._split_keys
        if owners is None or not isinstance(splits, SplitKeys) or not len(data):
            return self.predict_rows(data, PREDICT_CONTRIB)
        cache = self._contrib
        with self._cache_lock:
            kept = [cache.pop(owner, None) for owner in owners]
            for owner, entry in zip(owners, kept, strict=True):
                if entry is not None:
                    cache[owner] = entry  # most recently used last
        if all(entry is None for entry in kept):  # no owner seen (most first scores)
            fresh = self.predict_rows(data, PREDICT_CONTRIB)
            self.contrib_computed += len(data)
            self._keep(owners, data, [None] * len(data), [row.copy() for row in fresh])
            return fresh
        found: list[np.ndarray | None] = [None] * len(data)
        keys: list[bytes | None] = [None] * len(data)
        moved = []  # rows whose owner's last row differs: compared by key
        for i, entry in enumerate(kept):
            if entry is not None:
                if entry.row.tobytes() == data[i].tobytes():
                    found[i], keys[i] = entry.contributions, entry.key
                else:
                    moved.append(i)
        if moved:
            entries = [kept[i] for i in moved]
            unkeyed = [e for e in entries if e is not None and e.key is None]
            if unkeyed:  # the kept rows' keys, once, in one call
                rows = np.stack([e.row for e in unkeyed])
                for e, key in zip(unkeyed, splits.keys(rows), strict=True):
                    e.key = key
            for i, entry, key in zip(moved, entries, splits.keys(data[moved]), strict=True):
                assert entry is not None
                keys[i] = key
                if key == entry.key:
                    found[i] = entry.contributions
        missing = [i for i, row in enumerate(found) if row is None]
        if missing:
            fresh = self.predict_rows(data[missing], PREDICT_CONTRIB)
            for i, row in zip(missing, fresh, strict=True):
                found[i] = row.copy()
            self.contrib_computed += len(missing)
        self._keep(owners, data, keys, found)  # type: ignore[arg-type]
        return np.stack(found)  # type: ignore[arg-type]

    def _keep(
        self,
        owners: Sequence[Hashable],
        data: np.ndarray,
        keys: Sequence[bytes | None],
        contributions: Sequence[np.ndarray],
    ) -> None:
        """Keep each owner's row, its key (if computed) and contributions (arrays of their
        own), the least recently used dropped beyond :data:`CONTRIB_CACHE_ROWS`."""
        cache = self._contrib
        with self._cache_lock:
            for i, owner in enumerate(owners):
                cache[owner] = _Explained(data[i].copy(), keys[i], contributions[i])
            while len(cache) > CONTRIB_CACHE_ROWS:
                del cache[next(iter(cache))]


@dataclass(slots=True)
class _Explained:
    """An owner's last row, its split key once computed, and its contributions."""

    row: np.ndarray
    key: bytes | None
    contributions: np.ndarray


class RowBoosters:
    """Several boosters' predictions for one row, back to back, without per-call checks.

    The live NBA runs up to a dozen small boosters per customer. Their trees are walked
    together in one compiled call (:class:`models.forest.Forest`, built at the first
    prediction: the same numbers as LightGBM's, ~40 instead of ~70 us on the demo's 14);
    boosters it refuses (an objective it does not reproduce, linear trees) take LightGBM's
    C API: every booster's one-row prediction set up once (its own :class:`FastPredictor`
    handle, the same C call and configuration as :meth:`FastPredictor.predict_row`, so the
    same numbers), each writing its one output straight into one shared array. One lock
    and one row check per call of :meth:`predict`. Only for boosters of one output per row
    (regression, binary).
    """

    def __init__(self, boosters: Sequence[lgb.Booster]) -> None:
        self._predictors = [FastPredictor(b) for b in boosters]  # own handles, freed with it
        features = {p._num_feature for p in self._predictors}
        if len(features) > 1 or any(p._num_class != 1 for p in self._predictors):
            raise ValueError("RowBoosters needs one-output boosters of one feature count")
        self.num_feature = features.pop() if features else 0
        self._out = np.empty(len(boosters), dtype=np.float64)
        self._out_len = np.zeros(1, dtype=np.int64)
        self._out_len_address = self._out_len.ctypes.data
        self._row = np.empty(self.num_feature, dtype=np.float64)  # the row, copied in
        self._row_address = self._row.ctypes.data
        self._handles = [p._init(PREDICT_NORMAL).address for p in self._predictors]
        self._targets = [
            self._out.ctypes.data + i * self._out.itemsize for i in range(len(boosters))
        ]
        self._lock = threading.Lock()
        self._forest: Forest | None = None
        self._forest_tried = False

    def predict(self, row: np.ndarray, which: Sequence[int]) -> list[float] | None:
        """The predictions of the boosters at positions ``which`` for ``row`` (its
        ``num_feature`` values as float64, e.g. a ``[1, num_feature]`` matrix), as a list
        over all positions (the others' entries are stale: read only ``which``). None
        when another thread is using it: the caller takes its general path."""
        if row.size != self.num_feature:
            raise ValueError(f"expected one row of {self.num_feature} values, got {row.shape}")
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self._row[:] = row  # cheaper than reading the row's address (ctypes)
            if (forest := self._forest_or_none()) is not None:
                return forest.predict(self._row, which)
            data, out_len, handles, targets, call = (
                self._row_address,
                self._out_len_address,
                self._handles,
                self._targets,
                _FAST_PREDICT,
            )
            for i in which:
                if call(handles[i], data, out_len, targets[i]):
                    _check(1)
            return self._out.tolist()  # type: ignore[no-any-return]
        finally:
            self._lock.release()

    def _forest_or_none(self) -> Forest | None:
        """The boosters' :class:`models.forest.Forest`, built at the first use (the caller
        holds ``_lock``); None when it refuses one of them (LightGBM's C API then)."""
        if not self._forest_tried:
            self._forest_tried = True
            from models.forest import Forest  # numba: imported by the live path only

            try:
                self._forest = Forest([p.booster for p in self._predictors])
            except ValueError:
                self._forest = None
        return self._forest


class SplitKeys:
    """A row's side of every split of one booster, as a hashable key per row.

    Per feature the row's value is reduced to what any split on that feature can tell:
    for a numerical feature, how many of the booster's thresholds on it lie below the
    value (``value <= threshold`` decides each split), with a class of its own for a
    missing value and one for a value LightGBM reads as 0 (within ``ZERO_THRESHOLD``,
    missing for a zero-as-missing split); for a categorical feature the value itself. Two
    rows with one key take the same direction at every node of every tree, so TreeSHAP
    (which reads the row only through those directions) gives them the same contributions.
    Features no split reads are left out of the key. ``None`` from :meth:`of` for a
    booster whose trees read more than directions (linear trees).
    """

    def __init__(
        self, numerical: dict[int, list[float]], categorical: list[int], num_feature: int
    ) -> None:
        self._numerical = sorted(numerical)
        self._categorical = sorted(categorical)
        # every numerical threshold as (feature position, threshold): one sorted complex
        # array (numpy orders complex numbers by real part, then imaginary part), so one
        # searchsorted finds every feature's count of thresholds below its value
        parts = [(k, t) for k, f in enumerate(self._numerical) for t in sorted(numerical[f])]
        self._thresholds = np.empty(len(parts), dtype=np.complex128)
        self._thresholds.real = [k for k, _ in parts]
        self._thresholds.imag = [t for _, t in parts]
        before = np.cumsum([0] + [len(numerical[f]) for f in self._numerical])[:-1]
        self._before = before.astype(np.int64)  # thresholds of the features before each
        self._position = np.arange(len(self._numerical), dtype=np.float64)
        self.num_feature = num_feature

    @classmethod
    def of(cls, booster: lgb.Booster) -> SplitKeys | None:
        """The keys of ``booster``'s splits, read from its model text (the thresholds as
        LightGBM parsed them, printed with full precision)."""
        text = booster.model_to_string()
        trees = text.split("end of trees", 1)[0].split("\nTree=")[1:]
        numerical: dict[int, set[float]] = {}
        categorical: set[int] = set()
        for tree in trees:
            fields = dict(line.split("=", 1) for line in tree.splitlines()[1:] if "=" in line)
            if fields.get("is_linear", "0") != "0":
                return None
            if "split_feature" not in fields:  # a single leaf
                continue
            features = [int(v) for v in fields["split_feature"].split()]
            thresholds = [float(v) for v in fields["threshold"].split()]
            kinds = [int(v) for v in fields["decision_type"].split()]
            for feature, threshold, kind in zip(features, thresholds, kinds, strict=True):
                if kind & 1:  # categorical split
                    categorical.add(feature)
                else:
                    numerical.setdefault(feature, set()).add(threshold)
        for feature in categorical:  # its value is the key: finer than any threshold
            numerical.pop(feature, None)
        return cls(
            {f: sorted(ts) for f, ts in numerical.items()},
            sorted(categorical),
            booster.num_feature(),
        )

    def keys(self, X: np.ndarray) -> list[bytes]:
        """One key per row of ``X`` (``[rows, num_feature]``)."""
        rows = X.shape[0]
        values = X[:, self._numerical]
        query = np.empty(values.shape, dtype=np.complex128)
        query.real = self._position
        query.imag = values
        below = np.searchsorted(self._thresholds, query.ravel()).reshape(values.shape)
        below -= self._before
        below[np.abs(values) <= ZERO_THRESHOLD] = -2  # read as 0 by LightGBM
        below[np.isnan(values)] = -1
        numbers = below.astype(np.int32)
        if self._categorical:
            cats = X[:, self._categorical].copy()
            cats[np.abs(cats) <= ZERO_THRESHOLD] = 0.0
            cats[np.isnan(cats)] = -np.inf  # one missing class whatever the NaN's bits
            return [numbers[i].tobytes() + cats[i].tobytes() for i in range(rows)]
        return [numbers[i].tobytes() for i in range(rows)]


# owner object (a model) -> {id(booster): FastPredictor}; outside the owner so pickling
# the owner never sees a C handle, and dropped with the owner (before its boosters)
_REGISTRY: weakref.WeakKeyDictionary[Any, dict[int, FastPredictor]] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def fast_predictor(owner: Any, booster: lgb.Booster) -> FastPredictor:
    """The cached :class:`FastPredictor` of ``booster``, which ``owner`` holds."""
    try:
        cached = _REGISTRY[owner][id(booster)]
        if cached.booster is booster:
            return cached
    except KeyError:
        pass
    with _REGISTRY_LOCK:
        per_owner = _REGISTRY.setdefault(owner, {})
        found = per_owner.get(id(booster))
        if found is None or found.booster is not booster:
            found = per_owner[id(booster)] = FastPredictor(booster)
        return found
