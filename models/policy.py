"""Arbitration and exploration: which action each customer gets, and with what probability.

Arbitration is vectorised over customers (batch scoring a million customers is a handful
of numpy operations per action); :func:`arbitrate_one` and :meth:`Policy.decide` are thin
single-customer wrappers for the live service. :func:`arbitrate` also takes one customer
as a plain ``{column: value}`` mapping instead of a frame: the same checks and arithmetic
then run on plain values (rules through the expressions' row evaluator), without the
per-call numpy and pandas overhead that dominated a live score; a test holds the two
paths bit-identical (codes, figures, ranking, probabilities, exclusion texts).

Columns the customer frame must hold (``Catalog.required_fields`` lists them exactly):

* ``churn_probability`` and the catalog's ``value_field`` (default ``value_p50``);
* every field the eligibility rules read;
* each action's ``consent_field`` (true / 1 = consent; false, 0 or null = none);
* ``contacts_<channel>_<window>d`` per contact rule: contacts already made on that channel
  in the window (null = 0);
* ``days_since_action_<id>`` per action with a cool-down (null = never received);
* uplift, unless passed separately: ``uplift_conversion_<id>`` and ``uplift_revenue_<id>``
  (:meth:`models.uplift.UpliftPrediction.to_frame`).

Each action's expected value is ``uplift x value``: for ``incremental_revenue`` the revenue
uplift times the margin rate; for ``retained_value`` the conversion uplift read as a churn
reduction (capped at the churn probability) times the customer's value and margin rate.
Its score is ``weight x expected value - cost``; ``no_action`` scores 0, so an action is
ranked above doing nothing only when it pays for itself.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import uuid
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from features.contract import NO_ACTION
from models.catalog import CHURN_FIELD, Action, Catalog
from models.uplift import UpliftPrediction

#: customers as the rows of a frame, or one customer as a ``{column: value}`` mapping
Customers: TypeAlias = pd.DataFrame | Mapping[str, Any]


class Exclusion(IntEnum):
    """Why an action is not allowed for a customer (first failing check wins)."""

    NONE = 0
    NOT_ELIGIBLE = 1
    NO_CONSENT = 2
    CONTACT_POLICY = 3
    COOLDOWN = 4
    NO_UPLIFT = 5


#: the exclusions by code (``Exclusion(code)`` without the enum's lookup)
_EXCLUSIONS = {int(e): e for e in Exclusion}
#: how far from 1 the probabilities of a draw may sum (``Generator.choice``'s: sqrt(eps))
_SUM_TOLERANCE = math.sqrt(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class RankedAction:
    """One allowed action for one customer, with the parts of its score."""

    rank: int
    action: str
    channel: str
    score: float
    expected_value: float
    uplift: float
    value: float
    cost: float
    weight: float


@dataclass(frozen=True)
class CustomerArbitration:
    """A single customer's ranking (best first) and, when asked, why others were excluded."""

    ranked: list[RankedAction]
    exclusions: dict[str, str]


@dataclass(frozen=True)
class Arbitration:
    """Scores of every catalog action for every customer (columns follow ``actions``)."""

    catalog: Catalog
    frame: Customers  # a frame, or one customer's mapping
    uplift: np.ndarray  # [n, K] incremental revenue or churn reduction
    value: np.ndarray  # [n, K] margin rate, or customer value x margin rate
    expected_value: np.ndarray  # [n, K] uplift x value
    score: np.ndarray  # [n, K] weight x expected value - cost
    reason: np.ndarray  # [n, K] Exclusion codes, 0 = allowed

    @property
    def actions(self) -> list[str]:
        return self.catalog.ids

    # computed once per result (a live score reads each several times per action)
    @functools.cached_property
    def cost(self) -> np.ndarray:
        return _constants(self.catalog).cost

    @functools.cached_property
    def weight(self) -> np.ndarray:
        return _constants(self.catalog).weight

    @functools.cached_property
    def allowed(self) -> np.ndarray:
        return self.reason == 0  # Exclusion.NONE (an int: numpy compares an IntEnum ~5x slower)

    @functools.cached_property
    def _ranking(self) -> np.ndarray:
        if len(self.score) == 1:  # one customer (the live path): Python's stable sort
            flags, scores = self.reason[0].tolist(), self.score[0].tolist()
            keys = [-x if not code else math.inf for x, code in zip(scores, flags, strict=True)]
            if not any(math.isnan(x) for x in keys):  # NaN: numpy's order (last)
                order = np.array([sorted(range(len(keys)), key=keys.__getitem__)])
                order.flags.writeable = False
                return order
        masked = np.where(self.allowed, self.score, -np.inf)
        order = np.argsort(-masked, axis=1, kind="stable")
        order.flags.writeable = False  # kept: a caller's change would show in later calls
        return order

    def ranking(self) -> np.ndarray:
        """``[n, K]`` action indices, allowed by score (ties: catalog order), then the rest
        (computed once per result: do not modify it)."""
        return self._ranking

    def best(self) -> np.ndarray:
        """The greedy choice per customer (action ids)."""
        return np.asarray(self.actions, dtype=object)[self.ranking()[:, 0]]

    def top(self, k: int = 3) -> pd.DataFrame:
        """Long frame of each customer's top-k allowed actions with their score parts."""
        order = self.ranking()[:, :k]
        n, k = order.shape
        rows = np.repeat(np.arange(n), k)
        cols = order.ravel()
        keep = self.allowed[rows, cols]
        rows, cols = rows[keep], cols[keep]
        channels = np.array([a.channel for a in self.catalog.actions], dtype=object)
        return pd.DataFrame(
            {
                "row": _row_labels(self.frame)[rows],
                "rank": np.tile(np.arange(1, k + 1), n)[keep],
                "action": np.asarray(self.actions, dtype=object)[cols],
                "channel": channels[cols],
                "score": self.score[rows, cols],
                "expected_value": self.expected_value[rows, cols],
                "uplift": self.uplift[rows, cols],
                "value": self.value[rows, cols],
                "cost": self.cost[cols],
                "weight": self.weight[cols],
            }
        )

    def offers(
        self, propensity: np.ndarray | Sequence[float], top_k: int | None = None
    ) -> list[dict[str, Any]]:
        """One customer's (the first row's) allowed actions, best first (the first ``top_k``),
        each with its figures and ``propensity[j]``, the probability the logging policy gave
        it: a live score's ranked actions, as plain values (the response validates them)."""
        ids, actions = self.actions, self.catalog.actions
        return [
            {
                "action": ids[j],
                "channel": str(actions[j].channel),
                "expected_value": float(self.expected_value[0, j]),
                "propensity": float(propensity[j]),
                "uplift": float(self.uplift[0, j]),
                "value": float(self.value[0, j]),
                "cost": float(self.cost[j]),
                "weight": float(self.weight[j]),
            }
            for j in self.ranking()[0][:top_k]
            if self.allowed[0, j]
        ]

    def customer(self, i: int, k: int = 3, exclusions: bool = False) -> CustomerArbitration:
        """The ``i``-th customer's (positional) ranking and exclusion reasons."""
        ranked = [
            RankedAction(
                rank=rank,
                action=self.actions[j],
                channel=self.catalog.actions[j].channel,
                score=float(self.score[i, j]),
                expected_value=float(self.expected_value[i, j]),
                uplift=float(self.uplift[i, j]),
                value=float(self.value[i, j]),
                cost=float(self.cost[j]),
                weight=float(self.weight[j]),
            )
            for rank, j in enumerate(self.ranking()[i, :k], start=1)
            if self.allowed[i, j]
        ]
        reasons = self.exclusions(i) if exclusions else {}
        return CustomerArbitration(ranked, reasons)

    def exclusions(self, i: int) -> dict[str, str]:
        """Plain-language reason for every excluded action of the ``i``-th customer."""
        row = self.frame.iloc[i] if isinstance(self.frame, pd.DataFrame) else self.frame
        codes = self.reason[i].tolist()
        fixed = _constants(self.catalog).texts
        return {
            action.id: fixed.get((j, code))
            or _reason_text(_EXCLUSIONS[code], action, row, self.catalog)
            for j, (action, code) in enumerate(zip(self.catalog.actions, codes, strict=True))
            if code
        }


# ---- arbitration ---------------------------------------------------------------------------
def arbitrate(
    frame: Customers,
    catalog: Catalog,
    uplift: UpliftPrediction | None = None,
    screened: np.ndarray | None = None,
) -> Arbitration:
    """Score and screen every catalog action for every customer of ``frame``.

    ``frame``: customers as rows, or one customer as a ``{column: value}`` mapping (the
    live path). ``uplift`` rows align with ``frame`` rows; without it the ``uplift_*``
    columns are read. ``screened``: :func:`screen`'s codes when the caller has them
    already (the live scorer screens first, to predict uplift for allowed actions only).
    """
    n, k = _size(frame), len(catalog.actions)
    if uplift is not None and len(uplift) != n:
        raise ValueError(f"uplift has {len(uplift)} rows, the frame {n}")
    if screened is not None and screened.shape != (n, k):
        raise ValueError(f"screened has shape {screened.shape}, expected {(n, k)}")
    if not isinstance(frame, pd.DataFrame):
        return _arbitrate_one(frame, catalog, uplift, screened)
    up = np.zeros((n, k))
    value = np.zeros((n, k))
    reason = np.zeros((n, k), dtype=np.int8)
    for j, action in enumerate(catalog.actions):
        if action.id == NO_ACTION:
            continue
        conversion, revenue = _action_uplift(frame, uplift, action.id)
        if conversion is None or revenue is None:
            reason[:, j] = Exclusion.NO_UPLIFT
            continue
        up[:, j], value[:, j] = _value_parts(frame, catalog, action, conversion, revenue)
        if screened is not None:
            reason[:, j] = screened[:, j]
        else:
            reason[:, j] = _first_exclusion(frame, catalog, action)
    expected = up * value
    weight = np.array([catalog.effective_weight(a) for a in catalog.actions])
    cost = np.array([a.cost for a in catalog.actions])
    score = weight * expected - cost
    return Arbitration(catalog, frame, up, value, expected, score, reason)


def screen(frame: Customers, catalog: Catalog) -> np.ndarray:
    """``[n, K]`` exclusion codes of the catalog's rules alone (eligibility, consent,
    contact policy, cool-down; ``no_action`` always allowed), before any uplift: what
    :func:`arbitrate` records for every action that has an uplift estimate."""
    if not isinstance(frame, pd.DataFrame):
        return np.array([_screen_one(frame, _constants(catalog))], dtype=np.int8)
    reason = np.zeros((_size(frame), len(catalog.actions)), dtype=np.int8)
    for j, action in enumerate(catalog.actions):
        if action.id != NO_ACTION:
            reason[:, j] = _first_exclusion(frame, catalog, action)
    return reason


# ---- one customer --------------------------------------------------------------------------
# The live service arbitrates one customer (a ``{column: value}`` mapping) per request. The
# frame path's numpy calls on one-element arrays cost ~10 us per action and check; this path
# runs the same checks on plain values and the value arithmetic as numpy calls over the
# actions (the same ufuncs element by element, so the same numbers:
# tests/models/test_policy.py holds it equal to the frame path).


@dataclass(frozen=True)
class _Constants:
    """One catalog's per-action constants and checks, arranged once."""

    cost: np.ndarray  # [K]
    weight: np.ndarray  # [K]
    #: per action but no_action: (position, rule, consent field, contact rules as
    #: (field, max), cool-down field or None, cool-down days)
    checks: tuple[tuple[int, Any, str | None, tuple[tuple[str, int], ...], str | None, int], ...]
    #: per action but no_action: (position, id, retained value?, margin rate)
    values: tuple[tuple[int, str, bool, float], ...]
    #: (position, exclusion code) -> :func:`_reason_text`'s words, for the codes whose
    #: words read nothing of the customer (not eligible, no uplift): per live score, the
    #: enum and the action's private rule cost more than the wording
    texts: dict[tuple[int, int], str]
    #: (weight, cost) per action as plain floats (a live score's arithmetic)
    plain: tuple[tuple[float, float], ...]


_CONSTANTS: dict[int, tuple[Catalog, _Constants]] = {}


def _constants(catalog: Catalog) -> _Constants:
    """The catalog's :class:`_Constants` (a catalog is immutable; a few are ever live)."""
    cached = _CONSTANTS.get(id(catalog))
    if cached is not None and cached[0] is catalog:
        return cached[1]
    actions = catalog.actions
    checks = []
    values = []
    for j, action in enumerate(actions):
        if action.id == NO_ACTION:
            continue
        contacts = tuple(
            (rule.field, rule.max_contacts)
            for rule in catalog.contact_policy.for_channel(action.channel)
        )
        cooldown = action.cooldown_field if action.cooldown_days else None
        checks.append(
            (j, action.rule, action.consent_field, contacts, cooldown, action.cooldown_days)
        )
        values.append(
            (j, action.id, action.value_kind != "incremental_revenue", action.margin_rate)
        )
    cost = np.array([a.cost for a in actions])
    weight = np.array([catalog.effective_weight(a) for a in actions])
    cost.flags.writeable = weight.flags.writeable = False  # shared by every result
    texts = {
        (j, int(code)): _reason_text(code, action, {}, catalog)
        for j, action in enumerate(actions)
        for code in (Exclusion.NOT_ELIGIBLE, Exclusion.NO_UPLIFT)
    }
    plain = tuple(zip(weight.tolist(), cost.tolist(), strict=True))
    constants = _Constants(cost, weight, tuple(checks), tuple(values), texts, plain)
    if len(_CONSTANTS) > 16:  # catalogs replaced by reloads
        _CONSTANTS.clear()
    _CONSTANTS[id(catalog)] = (catalog, constants)
    return constants


def _number(row: Mapping[str, Any], column: str) -> float:
    """:func:`_numeric` of one customer as a plain float (NaN for null)."""
    try:
        value = row[column]
    except KeyError:
        raise KeyError(
            f"arbitration needs column {column!r}, which the customer frame lacks"
        ) from None
    if value is None:
        return np.nan
    if isinstance(value, float | int):  # NaN stays NaN; bool and numpy floats included
        return float(value)
    return np.nan if pd.isna(value) else float(value)


def _screen_one(
    row: Mapping[str, Any], constants: _Constants, only: Container[int] | None = None
) -> list[int]:
    """:func:`screen`'s codes of one customer: every check is run (as the frame path does),
    the first failing one is the code. ``only``: the actions to screen (the others' code
    stays 0; :func:`arbitrate` screens only actions with an uplift estimate)."""
    reason = [0] * len(constants.cost)
    for j, rule, consent, contacts, cooldown, cooldown_days in constants.checks:
        if only is not None and j not in only:
            continue
        eligible = True if rule is None else bool(rule.evaluate_row(row))
        consented = True if consent is None else _number(row, consent) > 0
        under = True
        for field, most in contacts:  # no count: no contacts
            under = not (_number(row, field) >= most) and under  # every field read
        if cooldown is None:
            rested = True
        else:
            days = _number(row, cooldown)
            rested = math.isnan(days) or days >= cooldown_days
        if not eligible:
            reason[j] = Exclusion.NOT_ELIGIBLE
        elif not consented:
            reason[j] = Exclusion.NO_CONSENT
        elif not under:
            reason[j] = Exclusion.CONTACT_POLICY
        elif not rested:
            reason[j] = Exclusion.COOLDOWN
    return reason


def _arbitrate_one(
    row: Mapping[str, Any],
    catalog: Catalog,
    uplift: UpliftPrediction | None,
    screened: np.ndarray | None,
) -> Arbitration:
    """:func:`arbitrate` for one customer given as a mapping."""
    constants = _constants(catalog)
    k = len(constants.cost)
    codes = screened[0].tolist() if screened is not None else None
    reason = [0] * k
    known: list[int] = []  # actions with an uplift estimate
    conversions: list[float] = []
    revenues: list[float] = []
    kinds: list[bool] = []
    margins: list[float] = []
    if uplift is not None:  # the customer's estimates as plain floats
        conversion_of = uplift.incremental_conversion[0].tolist()
        revenue_of = uplift.incremental_revenue[0].tolist()
    for j, action_id, retains, margin_rate in constants.values:
        if uplift is not None:
            if action_id not in uplift.actions:
                reason[j] = Exclusion.NO_UPLIFT
                continue
            at = uplift.index(action_id)
            conversion, revenue = conversion_of[at], revenue_of[at]
        else:
            conv, rev = f"uplift_conversion_{action_id}", f"uplift_revenue_{action_id}"
            if conv not in row or rev not in row:
                reason[j] = Exclusion.NO_UPLIFT
                continue
            conversion, revenue = _number(row, conv), _number(row, rev)
        known.append(j)
        conversions.append(conversion)
        revenues.append(revenue)
        kinds.append(retains)
        margins.append(margin_rate)
    if codes is None:
        screened_codes = _screen_one(row, constants, set(known)) if known else reason
        for j in known:
            reason[j] = screened_codes[j]
    else:
        for j in known:
            reason[j] = codes[j]
    # plain floats, the frame path's numbers (IEEE arithmetic either way; np.minimum's
    # NaN and its second argument on a tie kept): a dozen one-element numpy calls cost
    # more than the arithmetic
    up = [0.0] * k
    value = [0.0] * k
    if any(kinds):  # the churn reduction, capped at the churn probability
        churn = _number(row, CHURN_FIELD)
        worth = _number(row, catalog.value_field)
        worth = 0.0 if math.isnan(worth) else worth
        for j, retains, margin, conversion, revenue in zip(
            known, kinds, margins, conversions, revenues, strict=True
        ):
            if retains:
                lower = conversion if conversion < churn else churn
                up[j] = 0.0 if math.isnan(conversion) or math.isnan(churn) else lower
                value[j] = worth * margin
            else:
                up[j] = 0.0 if math.isnan(revenue) else revenue
                value[j] = margin
    else:
        for j, margin, revenue in zip(known, margins, revenues, strict=True):
            up[j] = 0.0 if math.isnan(revenue) else revenue
            value[j] = margin
    expected = [u * v for u, v in zip(up, value, strict=True)]
    score = [w * e - c for (w, c), e in zip(constants.plain, expected, strict=True)]
    codes_array = np.array([reason], dtype=np.int8)
    return Arbitration(
        catalog,
        row,
        np.array([up]),
        np.array([value]),
        np.array([expected]),
        np.array([score]),
        codes_array,
    )


def draw(rng: np.random.Generator, probabilities: Sequence[float]) -> int:
    """``int(rng.choice(len(p), p=p))``, the same index and the same state of ``rng``
    after it (its checks, its CDF summed and divided, one ``rng.random()``, the right
    side of the search), in plain floats: ``choice`` validates and converts for ~10 us,
    the live score's costliest call of its draw (``tests/models/test_policy.py`` holds
    the two equal)."""
    p = [float(x) for x in probabilities]
    if not p:
        raise ValueError("a must be a positive integer unless no samples are taken")
    if not all(x >= 0.0 for x in p):  # NaN fails the comparison too
        if any(math.isnan(x) for x in p):
            raise ValueError("Probabilities contain NaN")
        raise ValueError("Probabilities are not non-negative")
    if abs(math.fsum(p) - 1.0) > _SUM_TOLERANCE:
        raise ValueError("Probabilities do not sum to 1")
    cdf = list(itertools.accumulate(p))
    total = cdf[-1]
    return bisect.bisect_right([c / total for c in cdf], rng.random())


def arbitrate_one(
    row: Mapping[str, Any],
    catalog: Catalog,
    uplift: UpliftPrediction | None = None,
    k: int = 3,
    exclusions: bool = True,
) -> CustomerArbitration:
    """One customer (a mapping of features, scores, history and uplift columns)."""
    result = arbitrate(pd.DataFrame([dict(row)]), catalog, uplift)
    return result.customer(0, k=k, exclusions=exclusions)


def _size(frame: Customers) -> int:
    return len(frame) if isinstance(frame, pd.DataFrame) else 1


def _has(frame: Customers, column: str) -> bool:
    return column in (frame.columns if isinstance(frame, pd.DataFrame) else frame)


def _row_labels(frame: Customers) -> np.ndarray:
    return frame.index.to_numpy() if isinstance(frame, pd.DataFrame) else np.arange(1)


def _action_uplift(
    frame: Customers, uplift: UpliftPrediction | None, action_id: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if uplift is not None:
        if action_id not in uplift.actions:
            return None, None
        j = uplift.index(action_id)
        return uplift.incremental_conversion[:, j], uplift.incremental_revenue[:, j]
    conv, rev = f"uplift_conversion_{action_id}", f"uplift_revenue_{action_id}"
    if not _has(frame, conv) or not _has(frame, rev):
        return None, None
    return _numeric(frame, conv), _numeric(frame, rev)


def _value_parts(
    frame: Customers,
    catalog: Catalog,
    action: Action,
    conversion: np.ndarray,
    revenue: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(uplift, value per unit of uplift); missing inputs make the expected value 0."""
    if action.value_kind == "incremental_revenue":
        return _zero_nan(revenue), np.full(_size(frame), action.margin_rate)
    churn = _numeric(frame, CHURN_FIELD)
    reduction = _zero_nan(np.minimum(conversion, churn))
    worth = _zero_nan(_numeric(frame, catalog.value_field)) * action.margin_rate
    return reduction, worth


def _zero_nan(values: np.ndarray) -> np.ndarray:
    """NaN -> 0 (``np.nan_to_num`` costs several times more on the live one-row arrays)."""
    return np.where(np.isnan(values), 0.0, values)


def _first_exclusion(frame: Customers, catalog: Catalog, action: Action) -> np.ndarray:
    """Exclusion code per customer: eligibility, then consent, contact policy, cool-down."""
    reason = np.zeros(_size(frame), dtype=np.int8)
    checks = [
        (Exclusion.NOT_ELIGIBLE, _eligible(frame, action)),
        (Exclusion.NO_CONSENT, _consented(frame, action)),
        (Exclusion.CONTACT_POLICY, _under_contact_limits(frame, catalog, action)),
        (Exclusion.COOLDOWN, _out_of_cooldown(frame, action)),
    ]
    for code, passed in reversed(checks):
        reason[~passed] = code
    return reason


def _eligible(frame: Customers, action: Action) -> np.ndarray:
    if action.rule is None:
        return np.ones(_size(frame), dtype=bool)
    if not isinstance(frame, pd.DataFrame):
        return np.array([action.rule.evaluate_row(frame)])
    return action.rule.evaluate_frame(frame)


def _consented(frame: Customers, action: Action) -> np.ndarray:
    if action.consent_field is None:
        return np.ones(_size(frame), dtype=bool)
    return _numeric(frame, action.consent_field) > 0  # unknown consent is no consent


def _under_contact_limits(frame: Customers, catalog: Catalog, action: Action) -> np.ndarray:
    ok = np.ones(_size(frame), dtype=bool)
    for rule in catalog.contact_policy.for_channel(action.channel):
        ok &= ~(_numeric(frame, rule.field) >= rule.max_contacts)  # no count: no contacts
    return ok


def _out_of_cooldown(frame: Customers, action: Action) -> np.ndarray:
    if not action.cooldown_days:
        return np.ones(_size(frame), dtype=bool)
    days = _numeric(frame, action.cooldown_field)
    return np.isnan(days) | (days >= action.cooldown_days)


def _numeric(frame: Customers, column: str) -> np.ndarray:
    if not _has(frame, column):
        raise KeyError(f"arbitration needs column {column!r}, which the customer frame lacks")
    if not isinstance(frame, pd.DataFrame):
        value = frame[column]
        return np.array([np.nan if value is None or pd.isna(value) else float(value)])
    values = frame[column]
    if pd.api.types.is_object_dtype(values.dtype):
        values = values.astype("float64")
    return values.to_numpy(dtype="float64", na_value=np.nan)


def _reason_text(
    code: Exclusion, action: Action, row: pd.Series | Mapping[str, Any], catalog: Catalog
) -> str:
    if code == Exclusion.NOT_ELIGIBLE and action.rule is not None:
        return f"not eligible: {action.rule.source}"
    if code == Exclusion.NO_CONSENT and action.consent_field is not None:
        state = "missing" if pd.isna(row[action.consent_field]) else "false"
        return f"no consent ({action.consent_field} is {state})"
    if code == Exclusion.CONTACT_POLICY:
        for rule in catalog.contact_policy.for_channel(action.channel):
            count = 0 if pd.isna(row[rule.field]) else int(row[rule.field])
            if count >= rule.max_contacts:
                noun = action.channel if count == 1 else f"{action.channel}s"
                return (
                    f"contact policy: {count} {noun} in {rule.window_days} days "
                    f"(max {rule.max_contacts})"
                )
    if code == Exclusion.COOLDOWN:
        days = float(row[action.cooldown_field])
        return f"cool-down: last sent {days:g} days ago (< {action.cooldown_days})"
    if code == Exclusion.NO_UPLIFT:
        return "no uplift estimate for this action"
    return code.name.lower()


# ---- exploration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """What one customer gets; log ``decision_id``, ``action`` and ``propensity``."""

    decision_id: str
    action: str
    channel: str
    propensity: float
    explored: bool
    catalog_version: str
    arbitration: CustomerArbitration


class Policy:
    """Chooses among the allowed actions, greedily with exploration, logging propensities.

    ``epsilon``: epsilon-greedy (the top action with 1 - eps + eps/K, every other allowed
    action with eps/K, K = allowed actions); ``temperature``: softmax over scores (same
    currency units). Neither: greedy (propensity 1).
    """

    def __init__(
        self,
        catalog: Catalog,
        epsilon: float = 0.0,
        temperature: float | None = None,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if temperature is not None and epsilon > 0:
            raise ValueError("choose epsilon-greedy or softmax exploration, not both")
        self.catalog = catalog
        self.epsilon = epsilon
        self.temperature = temperature
        self.rng = np.random.default_rng(seed)

    def arbitrate(self, frame: pd.DataFrame, uplift: UpliftPrediction | None = None) -> Arbitration:
        return arbitrate(frame, self.catalog, uplift)

    def probabilities(self, result: Arbitration) -> np.ndarray:
        """``[n, K]`` probability of each catalog action (0 for excluded ones); rows sum to 1."""
        allowed = result.allowed
        if self.temperature is not None:
            masked = np.where(allowed, result.score, -np.inf)
            logits = (masked - masked.max(axis=1, keepdims=True)) / self.temperature
            weights = np.exp(logits)
            return weights / weights.sum(axis=1, keepdims=True)
        if len(allowed) == 1 and allowed.any():  # one customer (the live path)
            return np.array([self.probabilities_one(result)])
        n_allowed = allowed.sum(axis=1, keepdims=True)
        probs = np.where(allowed, self.epsilon / n_allowed, 0.0)
        probs[np.arange(len(probs)), result.ranking()[:, 0]] += 1.0 - self.epsilon
        return probs

    def probabilities_one(self, result: Arbitration) -> list[float]:
        """:meth:`probabilities` of a one-customer epsilon-greedy result with an allowed
        action, as plain floats (the same numbers: a live score reads them one by one)."""
        flags = result.allowed[0].tolist()
        count = sum(flags)
        if self.temperature is not None or len(result.allowed) != 1 or not count:
            return self.probabilities(result)[0].tolist()
        share = self.epsilon / count
        row = [share if flag else 0.0 for flag in flags]
        row[int(result.ranking()[0, 0])] += 1.0 - self.epsilon
        return row

    def action_probabilities(
        self, frame: pd.DataFrame, uplift: UpliftPrediction | None = None
    ) -> np.ndarray:
        """The full action distribution per customer (what off-policy evaluation needs)."""
        return self.probabilities(self.arbitrate(frame, uplift))

    def choose(self, frame: pd.DataFrame, uplift: UpliftPrediction | None = None) -> pd.DataFrame:
        """Batch decisions: decision_id, action, channel, propensity, score, explored."""
        result = self.arbitrate(frame, uplift)
        chosen, propensity = self._sample(self.probabilities(result))
        rows = np.arange(len(frame))
        channels = np.array([a.channel for a in self.catalog.actions], dtype=object)
        return pd.DataFrame(
            {
                "decision_id": [uuid.uuid4().hex for _ in rows],
                "action": np.asarray(result.actions, dtype=object)[chosen],
                "channel": channels[chosen],
                "propensity": propensity,
                "score": result.score[rows, chosen],
                "expected_value": result.expected_value[rows, chosen],
                "explored": chosen != result.ranking()[:, 0],
                "catalog_version": self.catalog.version,
            },
            index=frame.index,
        )

    def decide(
        self, row: Mapping[str, Any], uplift: UpliftPrediction | None = None, k: int = 3
    ) -> Decision:
        """One live decision with its propensity, ranking and exclusion reasons."""
        result = self.arbitrate(pd.DataFrame([dict(row)]), uplift)
        chosen, propensity = self._sample(self.probabilities(result))
        j = int(chosen[0])
        action = self.catalog.actions[j]
        return Decision(
            decision_id=uuid.uuid4().hex,
            action=action.id,
            channel=action.channel,
            propensity=float(propensity[0]),
            explored=j != int(result.ranking()[0, 0]),
            catalog_version=self.catalog.version,
            arbitration=result.customer(0, k=k, exclusions=True),
        )

    def _sample(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One draw per row by inverse CDF; returns (action index, its probability)."""
        cdf = np.cumsum(probs, axis=1)
        draw = self.rng.random(len(probs))[:, None] * cdf[:, -1:]
        chosen = np.minimum((cdf <= draw).sum(axis=1), probs.shape[1] - 1)
        # never land on a zero-probability action through rounding at the top of the CDF
        chosen = np.where(probs[np.arange(len(probs)), chosen] > 0, chosen, probs.argmax(axis=1))
        return chosen, probs[np.arange(len(probs)), chosen]
