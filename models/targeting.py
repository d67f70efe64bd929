"""Target lists: which customers get an action, within a budget, from their latest scores.

:func:`make_list` is the one path every target list takes -- ``rapport targets`` and the
demo (``rapport.cli``), ``POST /targets`` (``serving.targets``) and the marketers' page:
check the definition (:func:`lookup` finds a saved one), read the candidates, select,
export, record for audit. It lives here, below both ``training`` and ``serving``, because
both must call it and ``serving`` may not import ``training``; and since ``models`` does
no I/O, it reads and writes through two ports it declares, :class:`ListSource` and
:class:`ListSink`. The adapters live where I/O is allowed: ``features.tables.lists``
reads the warehouse (:class:`~features.tables.lists.WarehouseLists`) and records there
directly (:class:`~features.tables.lists.AuditTables`, for the CLI); the service records
through its outbox instead (it never writes the warehouse). The candidate frame is the
scoring run's scores joined with the few fresh features the filter and the contact
policy read (:func:`needed_features`, :func:`feature_subset`).

The steps, in this order, are always applied (nothing here can be switched off):

1. **deduplication** on ``customer_id`` (the first row wins);
2. **suppression**: customers on the opt-out / suppression list are removed;
3. the marketer's **filter** (the safe expression language of :mod:`models.expressions`,
   errors point at the offending token);
4. **arbitration** (:func:`models.policy.arbitrate`, the code batch and live scoring use):
   the action's eligibility rule, **consent** for its channel, the **contact policy** and
   the **cool-down**. With ``action`` every customer is offered that action; without it,
   each customer's best allowed action (customers whose best is ``no_action`` are left
   out);
5. with ``profitable_only``, customers whose expected value does not exceed the action's
   cost are dropped (a budget maximises the expected value, not the net, so without it a
   list can cost more than it brings);
6. the **budget** (:func:`knapsack`): maximise the total expected incremental value of
   the chosen customers with their total cost within the budget;
7. **sort** and **top N**.

Expected value is the NBA model's (uplift x value, stored with the scores). Without an
NBA champion there is no uplift: the list then uses the *value at risk* of retention
actions -- ``churn_probability x value x margin_rate``, as if the action kept the
customer for sure, an upper bound -- and says so in ``basis`` (growth actions get 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.contract import NO_ACTION
from features.control import ControlGroup
from features.spec import Agg, Derived, FeatureSpec
from features.tables.lists import MEMBER_TYPES, TargetError, new_list_id
from features.tables.scores import RunInfo
from features.timeutil import as_utc
from models.catalog import CHURN_FIELD, Catalog
from models.expressions import Expression, ExpressionError, parse
from models.policy import Arbitration, Exclusion, arbitrate
from models.value import OUTPUT_COLUMNS
from models.yamlconfig import dotted, load_mapping, problems

#: score columns (besides ``customer_id``) a filter may read, with their types
SCORE_TYPES: dict[str, str] = {
    CHURN_FIELD: "float",
    **dict.fromkeys(OUTPUT_COLUMNS, "float"),
    "r_score": "float",
    "f_score": "float",
    "m_score": "float",
    "rfm_segment": "string",
    "abc_tier": "string",
    "best_action": "string",
    "best_channel": "string",
    "expected_value": "float",
    "action_cost": "float",
    "action_score": "float",
}
#: columns of an exported list, in order
LIST_COLUMNS = (
    "rank",
    "customer_id",
    "action",
    "channel",
    "expected_value",
    "cost",
    "net_value",
    CHURN_FIELD,
    *OUTPUT_COLUMNS,
    "abc_tier",
    "rfm_segment",
)
#: candidates x capacity units above which the exact budget DP gives way to greedy
MAX_DP_WORK = 400_000_000
BASIS_UPLIFT = "uplift"
BASIS_VALUE_AT_RISK = "value_at_risk"


# --------------------------------------------------------------------------- definitions
class TargetDefinition(BaseModel):
    """What a marketer asks for: a filter, an action, a budget, a size and an order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="Saved list name (audit).")
    description: str = ""
    filter: str | None = Field(default=None, description="Expression over scores/features.")
    action: str | None = Field(default=None, description="Action for everyone (default: best).")
    top: int | None = Field(default=None, gt=0, description="At most this many customers.")
    budget: float | None = Field(default=None, ge=0, description="Total cost allowed.")
    sort: str = Field(default="expected_value", description="COL or COL:asc / COL:desc.")
    profitable_only: bool = Field(
        default=False, description="Drop customers whose expected value <= cost first."
    )

    @property
    def expression(self) -> Expression | None:
        """The parsed filter (raises ExpressionError, pointing at the bad token)."""
        return parse(self.filter) if self.filter and self.filter.strip() else None

    def sort_key(self) -> tuple[str, bool]:
        """(column, ascending)."""
        column, _, order = self.sort.partition(":")
        order = order.strip().lower() or "desc"
        if order not in ("asc", "desc"):
            raise TargetError(f"sort order must be 'asc' or 'desc', got {order!r} in {self.sort!r}")
        return column.strip(), order == "asc"


def parse_definitions(text: str, source: str = "<string>") -> dict[str, TargetDefinition]:
    """Saved list definitions: YAML ``lists: {name: {filter, action, budget, ...}}``."""
    data, _ = load_mapping(text, source, TargetError, "a mapping 'lists: {name: {filter: ...}}'")
    lists = data.get("lists")
    if not isinstance(lists, dict):
        raise TargetError(f"{source}: expected a mapping 'lists: {{name: {{filter: ...}}}}'")
    out: dict[str, TargetDefinition] = {}
    for name, body in lists.items():
        if not isinstance(body, dict):
            raise TargetError(f"{source}: list {name!r} must be a mapping")
        try:
            out[str(name)] = TargetDefinition.model_validate({**body, "name": str(name)})
            if out[str(name)].filter:
                parse(str(out[str(name)].filter))
        except ExpressionError as exc:
            raise TargetError(f"{source}: list {name!r}: bad filter: {exc}") from None
        except ValidationError as exc:
            raise TargetError(f"{source}: list {name!r}: {_problems(exc)}") from None
    return out


# --------------------------------------------------------------------------- fields
def field_types(spec: FeatureSpec) -> dict[str, str]:
    """Everything a filter may name: the score columns and every feature of the spec."""
    cats = set(spec.categorical)
    types = {name: ("string" if name in cats else "float") for name in spec.names}
    return {**types, **SCORE_TYPES}


def check_filter(expression: Expression, spec: FeatureSpec) -> None:
    """Unknown fields and type clashes, before any data is read (errors point at tokens)."""
    types = field_types(spec)
    expression.check(["customer_id", *types], {**types, "customer_id": "string"})


def needed_features(definition: TargetDefinition, catalog: Catalog, spec: FeatureSpec) -> list[str]:
    """Features (not scores) to compute fresh: the filter's and what arbitration reads
    (rules, consent, contact counts and cool-downs of every catalog action)."""
    names: set[str] = set()
    expression = definition.expression
    if expression is not None:
        names |= set(expression.fields)
    for action in catalog.actions:  # arbitration screens every action
        names |= set(action.fields)
        names |= {rule.field for rule in catalog.contact_policy.for_channel(action.channel)}
    known = set(spec.names)
    return sorted(n for n in names if n in known and n not in SCORE_TYPES)


def feature_subset(
    spec: FeatureSpec, names: Iterable[str], all_attributes: bool = True
) -> FeatureSpec:
    """A spec computing ``names`` (plus every customer attribute, which cost little, or
    with ``all_attributes`` false only those named or derived from): the aggregations
    they are or derive from, and the derived ones asked for."""
    by_name = spec.by_name()
    wanted = set(names)
    unknown = sorted(wanted - set(by_name))
    if unknown:
        raise TargetError(f"unknown features {unknown}")
    derived: list[Derived] = [d for d in spec.derived if d.name in wanted]
    inputs = {i for d in derived for i in d.inputs}
    # derived features may read derived features: close over them
    while True:
        more = [d for d in spec.derived if d.name in inputs and d not in derived]
        if not more:
            break
        derived = [*more, *derived]
        inputs |= {i for d in more for i in d.inputs}
    aggs: list[Agg] = [a for a in spec.aggs if a.name in wanted | inputs]
    order = {d.name: i for i, d in enumerate(spec.derived)}
    attributes = spec.attributes
    if not all_attributes:
        attributes = tuple(a for a in attributes if a.name in wanted | inputs)
    return FeatureSpec(
        aggs=tuple(aggs),
        derived=tuple(sorted(derived, key=lambda d: order[d.name])),
        attributes=attributes,
        actions=spec.actions,
    )


# --------------------------------------------------------------------------- knapsack
@dataclass(frozen=True)
class BudgetChoice:
    """Which candidates a budget buys, how, and how close to the optimum."""

    chosen: np.ndarray  # bool mask over the candidates
    method: str
    #: upper bound on the best total value (equal to the chosen total when exact)
    bound: float

    @property
    def exact(self) -> bool:
        return self.method.startswith("exact")


def knapsack(
    values: np.ndarray, costs: np.ndarray, budget: float, max_work: float = MAX_DP_WORK
) -> BudgetChoice:
    """0/1 knapsack: maximise ``sum(values[chosen])`` with ``sum(costs[chosen]) <= budget``.

    Costs are rounded to cents and measured in units of their greatest common divisor
    (catalog costs are few and round, so units are coarse). Items with equal cost are
    interchangeable but for their value, so an optimal solution takes the most valuable
    ones of each cost group first: the problem becomes choosing *how many* of each group
    (concave returns). One group (a single action): the top ``budget // cost`` by value,
    exact. Several: dynamic programming over the budget units, one group at a time, the
    largest group closed-form at the end (exact). Only when that work would exceed
    ``max_work`` (very large budgets in very fine units) does it fall back to greedy by
    value/cost, with the LP relaxation as the reported upper bound. Items with value <= 0
    are never chosen; items costing nothing are always chosen when their value is > 0.
    """
    values = np.asarray(values, dtype="float64")
    costs = np.asarray(costs, dtype="float64")
    if values.shape != costs.shape:
        raise ValueError("values and costs must have the same shape")
    if budget < 0 or not math.isfinite(budget):
        raise TargetError(f"the budget must be a non-negative amount, got {budget}")
    if (costs < 0).any() or not np.isfinite(costs).all():
        raise TargetError("costs must be finite and non-negative")
    chosen = np.zeros(values.shape, dtype=bool)
    useful = np.nan_to_num(values, nan=0.0) > 0
    cents = np.round(costs * 100).astype("int64")
    free = useful & (cents == 0)
    chosen[free] = True
    free_value = float(values[free].sum())
    paid = np.flatnonzero(useful & (cents > 0))
    # a budget above what everything costs buys everything: capping it keeps the cents
    # (and the DP's capacity) finite for any budget, 1e307 included
    budget_cents = math.floor(min(budget, float(cents[paid].sum()) / 100) * 100 + 1e-6)
    if not paid.size or budget_cents <= 0:
        return BudgetChoice(chosen, "exact (nothing to choose)", free_value)
    unit = int(np.gcd.reduce(cents[paid]))
    capacity = budget_cents // unit
    weights = cents[paid] // unit
    groups: list[tuple[int, np.ndarray, np.ndarray]] = []  # (weight, items by value, prefix)
    for weight in np.unique(weights):
        items = paid[weights == weight]
        items = items[np.argsort(-values[items], kind="stable")]
        items = items[: capacity // int(weight)]
        if items.size:
            prefix = np.concatenate([[0.0], np.cumsum(values[items])])
            groups.append((int(weight), items, prefix))
    if not groups:
        return BudgetChoice(chosen, "exact (nothing fits)", free_value)
    if len(groups) == 1:
        chosen[groups[0][1]] = True
        return BudgetChoice(chosen, "exact (one cost: top by value)", float(values[chosen].sum()))
    groups.sort(key=lambda g: g[1].size)
    last = groups[-1]
    work = sum(g[1].size for g in groups[:-1]) * (capacity + 1)
    if work > max_work:
        return _greedy(values, costs, budget, chosen, paid)
    best = np.zeros(capacity + 1)
    choices: list[np.ndarray] = []
    for weight, items, prefix in groups[:-1]:
        new = best.copy()
        choice = np.zeros(capacity + 1, dtype=np.int32)
        for m in range(1, items.size + 1):
            shift = m * weight
            candidate = best[: capacity + 1 - shift] + prefix[m]
            better = candidate > new[shift:]
            new[shift:][better] = candidate[better]
            choice[shift:][better] = m
        best = new
        choices.append(choice)
    weight, items, prefix = last
    room = capacity - np.arange(capacity + 1)  # capacity left for the last group
    totals = best + prefix[np.minimum(room // weight, items.size)]
    spent = int(np.argmax(totals))
    chosen[items[: min((capacity - spent) // weight, items.size)]] = True
    for (weight, items, _), choice in zip(reversed(groups[:-1]), reversed(choices), strict=True):
        m = int(choice[spent])
        chosen[items[:m]] = True
        spent -= m * weight
    return BudgetChoice(chosen, "exact (dynamic programming by cost)", float(values[chosen].sum()))


def _greedy(
    values: np.ndarray, costs: np.ndarray, budget: float, chosen: np.ndarray, paid: np.ndarray
) -> BudgetChoice:
    order = paid[np.argsort(-(values[paid] / costs[paid]), kind="stable")]
    left = budget - float(costs[chosen].sum())
    bound = float(values[chosen].sum())
    fractional_done = False
    for i in order:
        if costs[i] <= left + 1e-9:
            chosen[i] = True
            left -= costs[i]
            if not fractional_done:
                bound += values[i]
        elif not fractional_done:
            bound += values[i] * max(left, 0.0) / costs[i]
            fractional_done = True
    return BudgetChoice(chosen, "greedy by value/cost (LP bound)", bound)


# --------------------------------------------------------------------------- selection
@dataclass
class Selection:
    """A built target list and what happened on the way (for the summary and the audit)."""

    members: pd.DataFrame
    definition: TargetDefinition
    #: step -> customers removed by it
    removed: dict[str, int] = field(default_factory=dict)
    considered: int = 0
    basis: str = BASIS_UPLIFT
    budget_method: str | None = None
    budget_bound: float | None = None
    #: per catalog action, how many of the customers past the filter it could reach
    #: (:func:`action_reach`)
    reach: list[dict[str, Any]] = field(default_factory=list)
    #: per contact channel, customers past the filter with consent for it
    consent: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def total_expected_value(self) -> float:
        return float(self.members["expected_value"].sum())

    @property
    def total_cost(self) -> float:
        return float(self.members["cost"].sum())

    def segment_mix(self, column: str = "abc_tier") -> dict[str, int]:
        if not self.count:
            return {}
        return {str(k): int(v) for k, v in self.members[column].value_counts().items()}

    def stats(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "total_expected_value": round(self.total_expected_value, 2),
            "total_cost": round(self.total_cost, 2),
            "considered": self.considered,
            "removed": dict(self.removed),
            "basis": self.basis,
            "budget_method": self.budget_method,
            "budget_bound": None if self.budget_bound is None else round(self.budget_bound, 2),
            "abc_tier": self.segment_mix("abc_tier"),
            "rfm_segment": self.segment_mix("rfm_segment"),
            "actions": self.segment_mix("action"),
            "consent": dict(self.consent),
            "reach": list(self.reach),
        }

    def audit(
        self,
        list_id: str,
        run_id: str,
        scores_as_of: datetime,
        features_as_of: datetime,
        output: str | None = None,
    ) -> tuple[dict[str, Any], pd.DataFrame]:
        """The list's ``target_lists`` row and ``target_list_members`` rows
        (:func:`features.tables.lists.record_lists`, directly or through the outbox)."""
        d = self.definition
        row = {
            "list_id": list_id,
            "name": d.name,
            "created_at": datetime.now(UTC),
            "run_id": run_id,
            "scores_as_of": scores_as_of,
            "features_as_of": features_as_of,
            "definition": json.dumps(d.model_dump()),
            "filter": d.filter,
            "action": d.action,
            "budget": d.budget,
            "top": d.top,
            "sort": d.sort,
            "customers": self.count,
            "total_expected_value": self.total_expected_value,
            "total_cost": self.total_cost,
            "basis": self.basis,
            "budget_method": self.budget_method,
            "stats": json.dumps(self.stats()),
            "output": output,
        }
        members = self.members[[c for c in MEMBER_TYPES if c != "list_id"]].copy()
        members.insert(0, "list_id", list_id)
        return row, members

    def summary(self) -> str:
        d = self.definition
        what = d.name or "ad-hoc list"
        lines = [
            f"{what}: {self.count:,} customers of {self.considered:,} scored, expected "
            f"value {self.total_expected_value:,.2f}, cost {self.total_cost:,.2f}, net "
            f"{self.total_expected_value - self.total_cost:,.2f}"
            + (f" (budget {d.budget:,.2f})" if d.budget is not None else ""),
        ]
        if d.filter:
            lines.append(f"  filter: {d.filter}")
        lines.append(f"  action: {d.action or 'best allowed per customer'}")
        if d.profitable_only:
            lines.append("  profitable only: expected value > cost")
        removed = ", ".join(f"{n:,} {step}" for step, n in self.removed.items() if n)
        lines.append(f"  removed: {removed or 'nobody'}")
        if self.budget_method:
            gap = ""
            if self.budget_bound is not None and self.budget_bound > self.total_expected_value:
                gap = f", optimum <= {self.budget_bound:,.2f}"
            lines.append(f"  budget: {self.budget_method}{gap}")
        if self.basis == BASIS_VALUE_AT_RISK:
            lines.append(
                "  note: no NBA champion, so no uplift: expected value is the value at risk "
                "(churn x value x margin), an upper bound"
            )
        for column in ("action", "abc_tier", "rfm_segment"):
            mix = self.segment_mix(column)
            if mix:
                shown = ", ".join(f"{k} {v:,}" for k, v in mix.items())
                lines.append(f"  {column}: {shown}")
        return "\n".join(lines)


def _prepare_uplift(
    frame: pd.DataFrame, catalog: Catalog, fallback: bool
) -> tuple[pd.DataFrame, bool]:
    """Per action both uplift columns, or none (arbitration then excludes the action as
    having no uplift estimate); with ``fallback``, actions without any estimate get the
    value-at-risk uplift (full churn reduction, no revenue). Returns (frame, fell back)."""
    filled = False
    extra: dict[str, Any] = {}
    drop: list[str] = []
    for action in catalog.actions:
        if action.id == NO_ACTION:
            continue
        pair = (f"uplift_conversion_{action.id}", f"uplift_revenue_{action.id}")
        present = [c for c in pair if c in frame.columns and frame[c].notna().any()]
        if present:
            extra.update({c: np.nan for c in pair if c not in frame.columns})
            continue
        drop += [c for c in pair if c in frame.columns]
        if fallback:
            extra[pair[0]], extra[pair[1]] = 1.0, 0.0
            filled = True
    frame = frame.drop(columns=drop)
    if extra:
        frame = frame.assign(**extra)
    return frame, filled


_REASONS = {
    Exclusion.NOT_ELIGIBLE: "not eligible",
    Exclusion.NO_CONSENT: "no consent",
    Exclusion.CONTACT_POLICY: "contact policy",
    Exclusion.COOLDOWN: "cool-down",
    Exclusion.NO_UPLIFT: "no uplift estimate",
}


def action_reach(
    result: Arbitration, catalog: Catalog, assigned: np.ndarray
) -> list[dict[str, Any]]:
    """Per catalog action (``no_action`` aside), of the customers arbitrated: ``eligible``
    (its rule holds and it has an uplift estimate), ``consented`` (eligible with consent
    for its channel), ``allowed`` (also within the contact policy and out of cool-down)
    and ``chosen`` (assigned the action, before profitability, budget and top N). The
    exclusion codes are first-failure-wins, so the steps nest."""
    rows = []
    for j, action in enumerate(catalog.actions):
        if action.id == NO_ACTION:
            continue
        code = result.reason[:, j]
        eligible = (code != Exclusion.NOT_ELIGIBLE) & (code != Exclusion.NO_UPLIFT)
        consented = eligible & (code != Exclusion.NO_CONSENT)
        rows.append(
            {
                "action": action.id,
                "channel": action.channel,
                "consent_field": action.consent_field,
                "eligible": int(eligible.sum()),
                "consented": int(consented.sum()),
                "allowed": int((code == Exclusion.NONE).sum()),
                "chosen": int((assigned == j).sum()),
            }
        )
    return rows


def channel_consent(frame: pd.DataFrame, catalog: Catalog) -> dict[str, int]:
    """Per channel that needs consent, the customers of ``frame`` who gave it (the
    channel's actions' ``consent_field``; unknown consent is no consent, as in
    arbitration)."""
    fields = {a.channel: a.consent_field for a in catalog.actions if a.consent_field}
    return {
        channel: int((frame[name].astype("float64").fillna(0.0) > 0).sum())
        for channel, name in sorted(fields.items())
        if name in frame.columns
    }


def check_definition(
    definition: TargetDefinition, catalog: Catalog, columns: Iterable[str]
) -> None:
    """A definition's action and sort column, against the catalog and the candidates'
    ``columns`` (TargetError before anything is selected)."""
    if definition.action is not None:
        try:
            catalog.action(definition.action)
        except KeyError:
            raise TargetError(
                f"unknown action {definition.action!r}; the catalog has {catalog.ids[1:]}"
            ) from None
        if definition.action == NO_ACTION:
            raise TargetError(f"{NO_ACTION} contacts nobody: choose an action of {catalog.ids[1:]}")
    column, _ = definition.sort_key()
    if column not in LIST_COLUMNS and column not in set(columns):
        raise TargetError(f"cannot sort by unknown column {column!r}")


@dataclass
class Screened:
    """Steps 2 to 5 over some deduplicated candidates: the members that passed, with their
    action, and the counts of what happened, which add up over parts (:meth:`combine`):
    Spark screens each batch in its executors (:mod:`training.spark_lists`)."""

    members: pd.DataFrame
    removed: dict[str, int]
    considered: int
    basis: str
    reach: list[dict[str, Any]]
    consent: dict[str, int]
    #: members before any shortlist, and those of them with an expected value > 0 (what
    #: the budget step counts when ``members`` is a shortlist of them)
    count: int
    positive: int

    def counts(self) -> dict[str, Any]:
        """Everything but the members, as JSON-able values."""
        names = ("removed", "considered", "basis", "reach", "consent", "count", "positive")
        return {name: getattr(self, name) for name in names}

    @classmethod
    def combine(cls, parts: Sequence[Mapping[str, Any]], members: pd.DataFrame) -> Screened:
        """The :meth:`counts` of several parts summed, with ``members`` (all of theirs, or
        a shortlist). Parts agree on the basis: the value-at-risk fallback applies only to
        runs without an NBA model, whose uplift columns are null in every row."""
        if not parts:
            raise ValueError("Screened.combine needs at least one part")
        removed: dict[str, int] = {}
        consent: dict[str, int] = {}
        reach = [dict(row) for row in parts[0]["reach"]]
        for part in parts:
            for key, n in part["removed"].items():
                removed[key] = removed.get(key, 0) + int(n)
            for key, n in part["consent"].items():
                consent[key] = consent.get(key, 0) + int(n)
        for row in reach:
            for key in ("eligible", "consented", "allowed", "chosen"):
                row[key] = 0
        for part in parts:
            for total, row in zip(reach, part["reach"], strict=True):
                for key in ("eligible", "consented", "allowed", "chosen"):
                    total[key] += int(row[key])
        basis = (
            BASIS_VALUE_AT_RISK
            if any(p["basis"] == BASIS_VALUE_AT_RISK for p in parts)
            else (BASIS_UPLIFT)
        )
        return cls(
            members,
            removed,
            sum(int(p["considered"]) for p in parts),
            basis,
            reach,
            consent,
            sum(int(p["count"]) for p in parts),
            sum(int(p["positive"]) for p in parts),
        )


def screen(
    rows: pd.DataFrame,
    catalog: Catalog,
    definition: TargetDefinition,
    suppressed: Iterable[str] | None,
    value_at_risk_fallback: bool,
    control: ControlGroup | None,
) -> Screened:
    """Steps 2 to 5 (suppression, control group, filter, arbitration, profitability) over
    ``rows``, deduplicated candidates; row by row, so any split of the rows gives parts
    whose :meth:`Screened.combine` is the whole's. Arguments as :func:`select_targets`,
    without defaults: a caller of this step says which suppressions and control group
    apply (None: none), it never leaves them out by omission."""
    column, _ = definition.sort_key()
    removed: dict[str, int] = {}
    considered = len(rows)
    # each step counts the customers the steps before it kept; the (wide) frame is cut
    # once, after the last (the filter reads row by row, so reading all rows is the same)
    keep = np.ones(len(rows), dtype=bool)
    blocked = set(suppressed or ())
    if blocked:
        keep = ~rows["customer_id"].astype(str).isin(blocked).to_numpy()
        removed["suppressed"] = int((~keep).sum())
    if control is not None and control.share > 0:
        held_out = control.mask(rows["customer_id"]) & keep
        removed["control group"] = int(held_out.sum())
        keep &= ~held_out
    expression = definition.expression
    if expression is not None:
        out = ~np.asarray(expression.evaluate_frame(rows), dtype=bool) & keep
        removed["filter"] = int(out.sum())
        keep &= ~out
    rows = rows[keep].reset_index(drop=True)
    rows, filled = _prepare_uplift(rows, catalog, value_at_risk_fallback)
    basis = BASIS_VALUE_AT_RISK if filled else BASIS_UPLIFT
    result = arbitrate(rows, catalog)
    n = len(rows)
    if definition.action is not None:
        j = catalog.ids.index(definition.action)
        assigned = np.full(n, j)
        reasons = result.reason[:, j]
        for code, text in _REASONS.items():
            removed[text] = int((reasons == code).sum())
        ok = reasons == Exclusion.NONE
    else:
        assigned = result.ranking()[:, 0]
        best_allowed = result.allowed[np.arange(n), assigned]
        ok = best_allowed & (assigned != catalog.ids.index(NO_ACTION))
        removed["no worthwhile allowed action"] = int((~ok).sum())
    reach = action_reach(result, catalog, np.where(ok, assigned, -1))
    consent = channel_consent(rows, catalog)
    idx = np.flatnonzero(ok)
    cols = assigned[idx]
    channels = np.array([a.channel for a in catalog.actions], dtype=object)
    members = pd.DataFrame(
        {
            "customer_id": rows["customer_id"].to_numpy()[idx],
            "action": np.asarray(catalog.ids, dtype=object)[cols],
            "channel": channels[cols],
            "expected_value": result.expected_value[idx, cols],
            "cost": result.cost[cols],
        }
    )
    members["net_value"] = members["expected_value"] - members["cost"]
    for name in (CHURN_FIELD, *OUTPUT_COLUMNS, "abc_tier", "rfm_segment"):
        if name in rows.columns:
            members[name] = rows[name].to_numpy()[idx]
    extra = [c for c in (column,) if c not in members.columns and c in rows.columns]
    for name in extra:
        members[name] = rows[name].to_numpy()[idx]
    if definition.profitable_only:
        profitable = (members["expected_value"] > members["cost"]).to_numpy()
        removed["not profitable"] = int((~profitable).sum())
        members = members[profitable]
    positive = int((np.nan_to_num(members["expected_value"].to_numpy()) > 0).sum())
    return Screened(members, removed, considered, basis, reach, consent, len(members), positive)


def budget_room(costs: Iterable[float], budget: float) -> dict[float, int | None]:
    """Per distinct cost, the most customers of that cost ``budget`` can buy (None: it
    costs nothing, no limit; at least 1, so every cost group stays in the knapsack's
    cost unit). :func:`knapsack` only ever chooses among the most valuable that many of
    each cost, so a shortlist of them (with expected value > 0) gives the same choice:
    what Spark collects for the budget step."""
    if budget < 0 or not math.isfinite(budget):
        raise TargetError(f"the budget must be a non-negative amount, got {budget}")
    budget_cents = math.floor(budget * 100 + 1e-6)
    room: dict[float, int | None] = {}
    for cost in costs:
        cents = int(np.round(float(cost) * 100))
        room[float(cost)] = None if cents <= 0 else max(1, budget_cents // cents)
    return room


def choose(screened: Screened, definition: TargetDefinition) -> Selection:
    """Steps 6 and 7 (the budget, then sort and top N) on screened members: all of them,
    or (on Spark) a shortlist holding every member the steps can keep -- the
    :func:`budget_room` of each cost with a budget, else the first ``top`` in the list's
    order -- with ``count`` and ``positive`` counting all of them."""
    column, ascending = definition.sort_key()
    removed = dict(screened.removed)
    members = screened.members
    available = screened.count
    method = bound = None
    if definition.budget is not None:
        choice = knapsack(
            members["expected_value"].to_numpy(), members["cost"].to_numpy(), definition.budget
        )
        removed["no expected value"] = screened.count - screened.positive
        removed["budget"] = screened.positive - int(choice.chosen.sum())
        members = members[choice.chosen]
        available = len(members)
        method, bound = choice.method, choice.bound
    members = members.sort_values(
        [column, "customer_id"], ascending=[ascending, True], kind="stable"
    )
    if definition.top is not None and available > definition.top:
        removed["top"] = available - definition.top
        members = members.head(definition.top)
    members = members.reset_index(drop=True)
    members.insert(0, "rank", np.arange(1, len(members) + 1))
    ordered = [c for c in LIST_COLUMNS if c in members.columns]
    members = members[ordered + [c for c in members.columns if c not in ordered]]
    return Selection(
        members,
        definition,
        removed,
        screened.considered,
        screened.basis,
        method,
        bound,
        screened.reach,
        screened.consent,
    )


def select_targets(
    frame: pd.DataFrame,
    catalog: Catalog,
    definition: TargetDefinition,
    suppressed: Iterable[str] | None = None,
    value_at_risk_fallback: bool = True,
    control: ControlGroup | None = None,
    unique: bool = False,
) -> Selection:
    """The target list for ``definition`` from ``frame`` (scores + the needed features).

    ``suppressed``: customer ids that must never be contacted (opt-outs, suppression
    list). ``value_at_risk_fallback``: rank actions without any uplift estimate by the
    value at risk (pass False when the scores came with an NBA model). ``control``: the
    always-on control group, whose customers never enter a list (counted in ``removed``
    as ``control group``; computed from the share and salt, not from the scores' stored
    ``group``, so a reshuffle since scoring is honoured). Raises
    :class:`TargetError` (or :class:`ExpressionError`) on a bad definition.

    Deduplication here (``unique``: the caller's frame is one row per customer already,
    e.g. the web page's scores, deduplicated once per run: a second pass over a million
    ids costs half a second), then :func:`screen` and :func:`choose` (Spark runs the same
    two over its batches and a shortlist, :func:`training.spark_lists.select_on_spark`).
    """
    check_definition(definition, catalog, frame.columns)
    rows = frame if unique else frame.drop_duplicates("customer_id", keep="first")
    screened = screen(rows, catalog, definition, suppressed, value_at_risk_fallback, control)
    screened.removed = {"duplicates": len(frame) - len(rows), **screened.removed}
    screened.considered = len(frame)
    return choose(screened, definition)


def _problems(exc: ValidationError) -> str:
    """pydantic's errors as ``field: message; ...``."""
    return "; ".join(problems(exc, lambda loc: dotted(loc) or "list"))


def definition_from(
    options: Mapping[str, Any], base: TargetDefinition | None = None
) -> TargetDefinition:
    """A definition from a saved one (``base``) with the non-None ``options`` on top."""
    data: dict[str, Any] = base.model_dump() if base is not None else {}
    data.update({k: v for k, v in options.items() if v is not None})
    try:
        definition = TargetDefinition.model_validate(data)
    except ValidationError as exc:
        raise TargetError(f"invalid target list options: {_problems(exc)}") from None
    if definition.filter is not None and not definition.filter.strip():
        definition = definition.model_copy(update={"filter": None})
    if definition.filter:
        parse(definition.filter)  # ExpressionError pointing at the token
    return definition


def default_definitions() -> dict[str, TargetDefinition]:
    """The packaged example lists (``models/default_target_lists.yaml``)."""
    from importlib import resources

    text = resources.files("models").joinpath("default_target_lists.yaml").read_text("utf-8")
    return parse_definitions(text, source="models/default_target_lists.yaml")


def saved_definitions(texts: Iterable[tuple[str, str]] = ()) -> dict[str, TargetDefinition]:
    """The packaged example lists, then each ``(source, YAML text)`` in order (a later
    list of the same name wins); the texts come from
    :func:`features.tables.lists.definition_texts`."""
    found = default_definitions()
    for source, text in texts:
        found.update(parse_definitions(text, source=source))
    return found


def lookup(
    name: str | None, options: Mapping[str, Any], saved: Mapping[str, TargetDefinition]
) -> TargetDefinition:
    """The saved list ``name`` (from ``saved``) with the non-None ``options`` on top, or
    an ad-hoc definition from ``options`` alone."""
    base = None
    if name is not None:
        if name not in saved:
            raise TargetError(f"no saved list {name!r}; known lists: {sorted(saved)}")
        base = saved[name]
    return definition_from(options, base)


# --------------------------------------------------------------------------- the one path
#: how a list is selected from the candidates (:func:`select_targets`, or Spark's):
#: (candidates, catalog, definition, suppressed ids, value-at-risk fallback, control)
Selector = Callable[[Any, Catalog, TargetDefinition, set[str], bool, ControlGroup], Selection]


class ListSource(Protocol):
    """Where a list's inputs come from (:class:`features.tables.lists.WarehouseLists`).
    Entered for the reads only: a read-only warehouse is released before selection."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: Any) -> None: ...

    def run(self, run_id: str | None) -> RunInfo:
        """The latest scoring run, or ``run_id``."""
        ...

    def candidates(
        self, run: RunInfo, spec: FeatureSpec, columns: Sequence[str], as_of: datetime
    ) -> pd.DataFrame:
        """The run's scores joined with the feature ``columns`` (computed with ``spec``);
        on Spark (:class:`features.spark.LakeLists`) a lazy DataFrame that the list's
        ``select`` reads."""
        ...

    def suppressed(self) -> set[str]:
        """Customers no list may contact."""
        ...


class ListSink(Protocol):
    """Where a finished list goes: a file when the caller wants one, and always its audit
    record (:class:`features.tables.lists.AuditTables` writes both directly; the service
    records through its outbox)."""

    def export(self, members: pd.DataFrame, list_id: str) -> Path | None:
        """Write the list to a file if this caller wants one; where it went, or None."""
        ...

    def record(self, row: Mapping[str, Any], members: pd.DataFrame) -> None:
        """Keep the ``target_lists`` row and ``target_list_members`` rows for audit."""
        ...


@dataclass
class TargetList:
    """A selection with where it came from: the scoring run, the features' as-of, its id."""

    selection: Selection
    run: RunInfo
    as_of: datetime
    list_id: str
    output: Path | None = None

    def audit(self) -> tuple[dict[str, Any], pd.DataFrame]:
        """The list's ``target_lists`` row and its ``target_list_members`` rows."""
        output = str(self.output) if self.output is not None else None
        return self.selection.audit(
            self.list_id, self.run.run_id, self.run.as_of, self.as_of, output
        )

    def deliver(self, sink: ListSink) -> None:
        """Export the list (if ``sink`` wants a file) and record it for audit: what
        :func:`make_list` does with its ``sink``; a caller that selected without one (a
        preview it then saves) delivers the same list afterwards."""
        self.output = sink.export(self.selection.members, self.list_id)
        sink.record(*self.audit())

    def summary(self) -> str:
        head = (
            f"list {self.list_id} from scores {self.run.run_id} (as of "
            f"{self.run.as_of:%Y-%m-%d %H:%M} UTC), features as of {self.as_of:%Y-%m-%d %H:%M}"
        )
        lines = [head, self.selection.summary()]
        if self.output is not None:
            lines.append(f"  written to {self.output}")
        return "\n".join(lines)


def make_list(
    source: ListSource,
    definition: TargetDefinition,
    spec: FeatureSpec,
    as_of: datetime,
    *,
    run_id: str | None = None,
    control: ControlGroup,
    suppress: Iterable[str] = (),
    sink: ListSink | None = None,
    progress: Callable[[str], None] | None = None,
    select: Selector | None = None,
) -> TargetList:
    """The target list for ``definition`` from the scores of the latest run (or
    ``run_id``), with consent and contact history as of ``as_of``.

    The filter is checked against ``spec`` before anything is read. ``suppress`` adds to
    the warehouse's suppressions. ``control`` (required, so no caller forgets it: pass
    :data:`features.control.NO_CONTROL` for none) is the control group, left out and
    counted. With ``sink``, the list is exported (if the sink wants
    a file) and recorded for audit before this returns; without one nothing is written
    (a preview). Raises TargetError / ExpressionError for a bad definition and whatever
    the source raises when it cannot read (NoScoresError without scores).

    ``select`` (default :func:`select_targets`) makes the selection from what the
    source's ``candidates`` returned: on Spark a lazy DataFrame, selected in the
    executors (:func:`training.spark_lists.select_on_spark`).
    """
    expression = definition.expression
    if expression is not None:
        check_filter(expression, spec)
    as_of = as_utc(as_of)
    with source:
        run = source.run(run_id)
        catalog = Catalog.model_validate(run.catalog)
        if progress is not None:
            progress(
                f"reading scores {run.run_id} ({run.rows:,} customers) and current consent "
                "/ contacts"
            )
        names = needed_features(definition, catalog, spec)
        frame = source.candidates(run, feature_subset(spec, names), names, as_of)
        blocked = source.suppressed() | set(suppress)
    selection = (select or select_targets)(
        frame, catalog, definition, blocked, not run.has_uplift, control
    )
    target = TargetList(selection, run, as_of, new_list_id())
    if sink is not None:
        target.deliver(sink)
    return target
