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
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any

import lightgbm as lgb
import numpy as np
from lightgbm import basic as _lgb_basic

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

    def __init__(self, booster: lgb.Booster) -> None:
        self.booster = booster
        self._lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self._num_feature = booster.num_feature()
        num_class = ctypes.c_int(0)
        _check(_LIB.LGBM_BoosterGetNumClasses(booster._handle, ctypes.byref(num_class)))
        self._num_class = max(1, num_class.value)
        # what Booster.predict(num_iteration=None) uses (<= 0: all iterations)
        self._num_iteration = booster.best_iteration

    def __getstate__(self) -> dict[str, Any]:
        return {"booster": self.booster}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["booster"])  # type: ignore[misc]

    def __del__(self) -> None:
        handles = getattr(self, "_handles", None)
        while handles:
            _FAST_FREE(handles.popitem()[1].address)

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
