"""The feature spec: every feature Rapport computes, declared once.

The same objects drive the batch build on the warehouse (``features.batch``, compiled to
Ibis), the online evaluator (``features.online.record``, numpy over one customer's events) and the
plain-language reasons of the churn model (each feature carries its own phrase). Nothing
else in the code base may define a feature.

A feature is one of:

* :class:`Agg` -- an aggregation over one event table, with an optional filter and a window
  ``[as_of - days - offset, as_of - offset)``; events at or after ``as_of`` never count;
* :class:`Derived` -- a ratio of two linear combinations of other features (trends, rates);
* :class:`Attribute` -- a customer attribute (tenure, region, consent...).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache, cached_property
from typing import Literal

from features.contract import INTERACTIONS, NO_ACTION, ORDERS, TABLES

AggKind = Literal[
    "count", "sum", "mean", "max", "min", "nunique", "last", "days_since_last", "days_since_first"
]
Op = Literal["==", "!=", "<", ">", "in"]


@dataclass(frozen=True)
class Cond:
    """``column op value``; a null column value never satisfies a condition."""

    column: str
    op: Op
    value: str | float | bool | tuple[str, ...]


@dataclass(frozen=True)
class Agg:
    name: str
    source: str
    agg: AggKind
    label: str
    column: str | None = None
    where: tuple[Cond, ...] = ()
    days: int | None = None  # None: all history before as_of
    offset: int = 0  # window ends ``offset`` days before as_of (previous-period trends)

    @property
    def window_text(self) -> str:
        if self.days is None:
            return "ever"
        if self.offset:
            return f"the {self.days} days before the last {self.offset}"
        return f"the last {self.days} days"

    @cached_property
    def phrase(self) -> str:
        """Template for an agent-readable reason; ``{value}`` is the feature value (made
        once per feature: every live score words its reasons with it)."""
        templates = {
            "count": "{value:.0f} " + self.label + " in " + self.window_text,
            "sum": self.label + " of {value:,.0f} in " + self.window_text,
            "mean": "average " + self.label + " {value:,.1f} in " + self.window_text,
            "max": "largest " + self.label + " {value:,.0f} in " + self.window_text,
            "min": "lowest " + self.label + " {value:,.1f} in " + self.window_text,
            "nunique": "{value:.0f} different " + self.label + " in " + self.window_text,
            "last": "last " + self.label + " {value:,.0f}",
            "days_since_last": "no " + self.label + " for {value:.0f} days",
            "days_since_first": "first " + self.label + " {value:.0f} days ago",
        }
        return templates[self.agg]


@dataclass(frozen=True)
class Derived:
    """``sum(numerator) / (sum(denominator) + constant)``; null when the denominator <= 0."""

    name: str
    numerator: tuple[tuple[str, float], ...]
    denominator: tuple[tuple[str, float], ...]
    phrase: str
    constant: float = 0.0

    @property
    def inputs(self) -> list[str]:
        return [n for n, _ in self.numerator + self.denominator]


@dataclass(frozen=True)
class Attribute:
    name: str
    column: str
    kind: Literal["category", "flag", "tenure_days"]
    phrase: str


Feature = Agg | Derived | Attribute


@dataclass(frozen=True)
class FeatureSpec:
    aggs: tuple[Agg, ...]
    derived: tuple[Derived, ...]
    attributes: tuple[Attribute, ...]
    actions: tuple[str, ...] = field(default=())

    @property
    def names(self) -> list[str]:
        """Output columns (besides ``customer_id``) in a fixed order."""
        return list(self.by_name())

    @property
    def categorical(self) -> list[str]:
        return [a.name for a in self.attributes if a.kind == "category"]

    @property
    def numeric(self) -> list[str]:
        cats = set(self.categorical)
        return [n for n in self.names if n not in cats]

    def by_name(self) -> dict[str, Feature]:
        features: list[Feature] = [*self.attributes, *self.aggs, *self.derived]
        return {f.name: f for f in features}

    def aggs_for(self, source: str) -> list[Agg]:
        return [a for a in self.aggs if a.source == source]

    @cached_property
    def version(self) -> str:
        """Hash of the canonical spec: changes whenever any definition changes (computed
        once per spec: the spec is frozen, and hashing it costs milliseconds)."""
        payload = json.dumps(asdict(self), sort_keys=True, default=str)
        return "fs-" + hashlib.sha256(payload.encode()).hexdigest()[:12]

    def validate(self) -> None:
        """Catch spec mistakes early: duplicate names, unknown columns, dangling inputs."""
        declared: list[Feature] = [*self.attributes, *self.aggs, *self.derived]
        all_names = [f.name for f in declared]
        seen: set[str] = set()
        for name in all_names:
            if name in seen:
                raise ValueError(f"feature {name!r} is declared twice")
            seen.add(name)
        for agg in self.aggs:
            cols = TABLES[agg.source].column_names
            for col in [agg.column, *(c.column for c in agg.where)]:
                if col is not None and col not in cols:
                    raise ValueError(f"feature {agg.name!r}: {agg.source} has no column {col!r}")
            if agg.agg != "count" and agg.column is None:
                raise ValueError(f"feature {agg.name!r}: aggregation {agg.agg} needs a column")
        for d in self.derived:
            missing = [n for n in d.inputs if n not in seen]
            if missing:
                raise ValueError(f"derived feature {d.name!r} uses unknown features {missing}")


WINDOWS = (7, 30, 90, 365)
#: actions whose last occurrence the contact policy needs (cool-downs)
DEFAULT_ACTIONS = (
    "retention_discount",
    "loyalty_upgrade",
    "cross_sell",
    "service_callback",
    "winback_email",
)


def _win(days: int | None) -> str:
    return "all" if days is None else f"{days}d"


def _order_features() -> list[Agg]:
    t = ORDERS.name
    out = [
        Agg("days_since_last_order", t, "days_since_last", "order", "ordered_at"),
        Agg("days_since_first_order", t, "days_since_first", "order", "ordered_at"),
    ]
    for days in (*WINDOWS, None):
        out.append(Agg(f"orders_{_win(days)}", t, "count", "orders", days=days))
    for days in (30, 90, 365, None):
        out.append(Agg(f"spend_{_win(days)}", t, "sum", "net spend", "amount", days=days))
    positive = (Cond("amount", ">", 0.0),)
    out += [
        Agg("spend_prev_90d", t, "sum", "net spend", "amount", days=90, offset=90),
        Agg("orders_prev_90d", t, "count", "orders", days=90, offset=90),
        Agg("avg_order_value_365d", t, "mean", "order value", "amount", positive, 365),
        Agg("avg_order_value_all", t, "mean", "order value", "amount", positive),
        Agg("max_order_value_365d", t, "max", "order value", "amount", positive, 365),
        Agg("last_order_amount", t, "last", "order amount", "amount"),
        Agg("returns_365d", t, "count", "returns", where=(Cond("amount", "<", 0.0),), days=365),
        Agg(
            "returned_amount_365d",
            t,
            "sum",
            "returned amount",
            "amount",
            (Cond("amount", "<", 0.0),),
            365,
        ),
        Agg("margin_365d", t, "sum", "margin", "margin", days=365),
        Agg("categories_365d", t, "nunique", "categories", "category", days=365),
        Agg("categories_all", t, "nunique", "categories", "category"),
    ]
    return out


def _interaction_features() -> list[Agg]:
    t = INTERACTIONS.name
    out: list[Agg] = [
        Agg("days_since_last_contact", t, "days_since_last", "contact", "occurred_at"),
        Agg(
            "days_since_last_inbound",
            t,
            "days_since_last",
            "inbound contact",
            "occurred_at",
            (Cond("direction", "==", "inbound"),),
        ),
        Agg(
            "days_since_last_complaint",
            t,
            "days_since_last",
            "complaint",
            "occurred_at",
            (Cond("kind", "==", "complaint"),),
        ),
    ]
    for days in (30, 90, 365):
        out.append(Agg(f"contacts_{days}d", t, "count", "contacts", days=days))
        out.append(
            Agg(
                f"complaints_{days}d",
                t,
                "count",
                "complaints",
                where=(Cond("kind", "==", "complaint"),),
                days=days,
            )
        )
    for days in (30, 90):
        out.append(
            Agg(
                f"unresolved_complaints_{days}d",
                t,
                "count",
                "unresolved complaints",
                where=(Cond("kind", "==", "complaint"), Cond("resolved", "==", False)),
                days=days,
            )
        )
    for channel in ("call", "web", "chat", "store", "sms", "visit"):
        for days in (30, 90):
            out.append(
                Agg(
                    f"{channel}_contacts_{days}d",
                    t,
                    "count",
                    f"{channel} contacts",
                    where=(Cond("channel", "==", channel),),
                    days=days,
                )
            )
    for kind in ("service", "inquiry"):
        out.append(
            Agg(
                f"{kind}_contacts_90d",
                t,
                "count",
                f"{kind} contacts",
                where=(Cond("kind", "==", kind),),
                days=90,
            )
        )
    for kind in ("sent", "open", "click"):
        out.append(
            Agg(
                f"emails_{kind}_90d",
                t,
                "count",
                f"emails {kind}",
                where=(Cond("channel", "==", "email"), Cond("kind", "==", kind)),
                days=90,
            )
        )
    for direction in ("inbound", "outbound"):
        out.append(
            Agg(
                f"{direction}_contacts_90d",
                t,
                "count",
                f"{direction} contacts",
                where=(Cond("direction", "==", direction),),
                days=90,
            )
        )
    out += [
        Agg("avg_satisfaction_90d", t, "mean", "satisfaction", "satisfaction", days=90),
        Agg("avg_satisfaction_365d", t, "mean", "satisfaction", "satisfaction", days=365),
        Agg("min_satisfaction_90d", t, "min", "satisfaction", "satisfaction", days=90),
        Agg(
            "avg_call_seconds_90d",
            t,
            "mean",
            "call length (s)",
            "duration_s",
            (Cond("channel", "==", "call"),),
            90,
        ),
    ]
    return out


def _campaign_features(actions: Sequence[str]) -> list[Agg]:
    t = "campaign_log"
    offer = (Cond("action", "!=", NO_ACTION),)
    out = [
        Agg("days_since_last_offer", t, "days_since_last", "offer", "decided_at", offer),
        Agg("offer_revenue_365d", t, "sum", "revenue from offers", "revenue", offer, 365),
        Agg("offers_accepted_365d", t, "sum", "offers accepted", "outcome", offer, 365),
    ]
    for days in (30, 90, 365):
        out.append(Agg(f"offers_{days}d", t, "count", "offers", where=offer, days=days))
    for channel in ("email", "call", "sms"):
        out.append(
            Agg(
                f"contacts_{channel}_30d",
                t,
                "count",
                f"{channel} offers",
                where=(Cond("channel", "==", channel),),
                days=30,
            )
        )
    for action in actions:
        out.append(
            Agg(
                f"days_since_action_{action}",
                t,
                "days_since_last",
                action.replace("_", " "),
                "decided_at",
                (Cond("action", "==", action),),
            )
        )
    return out


def _derived() -> list[Derived]:
    return [
        Derived(
            "spend_trend_90d",
            (("spend_90d", 1.0),),
            (("spend_prev_90d", 1.0),),
            "spend last 90 days is {value:.1f}x the 90 days before",
        ),
        Derived(
            "order_trend_90d",
            (("orders_90d", 1.0),),
            (("orders_prev_90d", 1.0),),
            "orders last 90 days are {value:.1f}x the 90 days before",
        ),
        Derived(
            "avg_days_between_orders",
            (("days_since_first_order", 1.0), ("days_since_last_order", -1.0)),
            (("orders_all", 1.0),),
            "orders every {value:.0f} days on average",
            constant=-1.0,
        ),
        Derived(
            "email_open_rate_90d",
            (("emails_open_90d", 1.0),),
            (("emails_sent_90d", 1.0),),
            "opens {value:.0%} of emails",
        ),
        Derived(
            "email_click_rate_90d",
            (("emails_click_90d", 1.0),),
            (("emails_sent_90d", 1.0),),
            "clicks {value:.0%} of emails",
        ),
        Derived(
            "offer_acceptance_rate_365d",
            (("offers_accepted_365d", 1.0),),
            (("offers_365d", 1.0),),
            "accepted {value:.0%} of offers this year",
        ),
        Derived(
            "return_rate_365d",
            (("returns_365d", 1.0),),
            (("orders_365d", 1.0),),
            "returned {value:.0%} of orders this year",
        ),
        Derived(
            "recency_over_cycle",
            (("days_since_last_order", 1.0),),
            (("avg_days_between_orders", 1.0),),
            "{value:.1f}x overdue against the usual order rhythm",
        ),
    ]


def _attributes() -> list[Attribute]:
    return [
        Attribute("tenure_days", "signup_at", "tenure_days", "customer for {value:.0f} days"),
        Attribute("region", "region", "category", "region {value}"),
        Attribute("acquisition_channel", "acquisition_channel", "category", "acquired via {value}"),
        Attribute("preferred_channel", "preferred_channel", "category", "prefers {value}"),
        Attribute("email_opt_in", "email_opt_in", "flag", "email opt-in {value:.0f}"),
        Attribute("phone_opt_in", "phone_opt_in", "flag", "phone opt-in {value:.0f}"),
        Attribute("sms_opt_in", "sms_opt_in", "flag", "sms opt-in {value:.0f}"),
    ]


def build_spec(actions: Sequence[str] = DEFAULT_ACTIONS) -> FeatureSpec:
    """The spec for a given action list (the actions set the cool-down features)."""
    spec = FeatureSpec(
        aggs=(*_order_features(), *_interaction_features(), *_campaign_features(actions)),
        derived=tuple(_derived()),
        attributes=tuple(_attributes()),
        actions=tuple(actions),
    )
    spec.validate()
    return spec


@cache
def default_spec() -> FeatureSpec:
    return build_spec()
