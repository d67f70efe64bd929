"""Demo data: a customer-base simulator with known ground truth.

Models trained on demo data should mean something, so the simulator draws every customer
from a latent "buy till you die" process (a personal purchase rate, a dropout hazard,
heavy-tailed spend) and lets touchpoints feed back into it: complaints, unresolved issues
and low satisfaction raise the dropout hazard, well-resolved service lowers it. A monthly
campaign wave picks actions with logged, attribute-dependent propensities, and each action
changes the chance of an order in the next 14 days differently for different customers.

Because the latent state is known, the simulator also writes the truth the models try to
recover at a cutoff: who is alive, the probability of no order and the expected spend over
the horizon, and the true effect of every action on every customer.

Time advances in weekly steps, each vectorised over all customers (no loop per customer or
per event). Customers are sorted by signup, so the customers active in a week are a prefix
of every array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import (
    CAMPAIGN_LOG,
    CUSTOMERS,
    INTERACTION_CHANNELS,
    INTERACTION_KINDS,
    INTERACTIONS,
    NO_ACTION,
    ORDERS,
    Table,
)
from features.timeutil import as_utc
from rapport.demo_identity import Identities, identities

if TYPE_CHECKING:
    from rapport.scenarios import Scenario

Progress = Callable[[str], None]

US_PER_SECOND = 1_000_000
US_PER_HOUR = 3600 * US_PER_SECOND
US_PER_DAY = 24 * US_PER_HOUR
US_PER_WEEK = 7 * US_PER_DAY
#: "never happened" for last-event timestamps (far in the past, no overflow on subtraction)
NEVER = -(2**60)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --- customer attributes -------------------------------------------------------------
REGIONS = ("north", "south", "east", "west", "central")
REGION_P = np.array([0.25, 0.22, 0.2, 0.18, 0.15])
ACQUISITION = ("search", "social", "referral", "store", "partner")
ACQUISITION_P = np.array([0.35, 0.25, 0.15, 0.15, 0.10])
PREFERRED = ("email", "call", "sms", "web", "store")
#: preferred channel given the acquisition channel (rows: ACQUISITION)
PREFERRED_P = np.array(
    [
        [0.40, 0.10, 0.10, 0.35, 0.05],
        [0.30, 0.05, 0.25, 0.35, 0.05],
        [0.35, 0.20, 0.10, 0.20, 0.15],
        [0.20, 0.15, 0.10, 0.05, 0.50],
        [0.35, 0.30, 0.10, 0.15, 0.10],
    ]
)
#: opt-in probability when the channel is / is not the preferred one
EMAIL_OPT_IN = (0.92, 0.70)
PHONE_OPT_IN = (0.88, 0.35)
SMS_OPT_IN = (0.90, 0.25)
#: cohort size grows by this factor from the first to the last signup day
COHORT_GROWTH = 3.0

# --- latent buy-till-you-die process --------------------------------------------------
LAMBDA_SHAPE = 0.9  # Gamma shape of the weekly purchase rate: many rare, some frequent buyers
LAMBDA_MEAN = 0.42  # orders per week
LAMBDA_BY_ACQUISITION = np.array([1.0, 0.8, 1.2, 1.15, 0.9])
HAZARD_SHAPE = 2.0
HAZARD_MEAN = 0.0017  # base dropout hazard per day (mean lifetime ~1.6 years)
HAZARD_BY_ACQUISITION = np.array([1.0, 1.4, 0.7, 0.8, 1.1])
SPEND_MEDIAN = 38.0
SPEND_SIGMA = 0.75  # lognormal: heavy-tailed mean order value across customers
SPEND_BY_REGION = np.array([1.1, 0.9, 1.0, 1.2, 0.85])
ORDER_NOISE_SHAPE = 4.0  # Gamma noise per order, mean 1
RETURN_P = 0.05
#: expected net amount per order relative to the customer's mean order value
NET_PER_ORDER = 1.0 - 2.0 * RETURN_P

CATEGORIES = ("grocery", "home", "apparel", "electronics", "beauty", "sports", "toys", "books")
CATEGORY_POPULARITY = np.array([0.24, 0.15, 0.15, 0.1, 0.1, 0.1, 0.08, 0.08])
CATEGORY_CONCENTRATION = 2.5  # Dirichlet total: most customers stick to 1-3 categories
MARGIN_FRACTION = np.array([0.12, 0.30, 0.45, 0.10, 0.50, 0.35, 0.30, 0.25])
ORDER_CHANNELS = ("web", "store", "app", "call")
#: order channel given the preferred channel (rows: PREFERRED)
ORDER_CHANNEL_P = np.array(
    [
        [0.55, 0.15, 0.25, 0.05],
        [0.30, 0.25, 0.10, 0.35],
        [0.40, 0.15, 0.40, 0.05],
        [0.60, 0.10, 0.28, 0.02],
        [0.15, 0.75, 0.08, 0.02],
    ]
)
#: relative order intensity Monday..Sunday
WEEKDAY_WEIGHT = np.array([0.9, 0.9, 0.95, 1.0, 1.1, 1.15, 1.0])
HOUR_WEIGHT = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 4, 4.5, 5, 6, 5.5, 5, 4.5, 4.5, 5, 6, 7, 7.5, 6, 4, 2]
)

# --- touchpoints ------------------------------------------------------------------------
CH = {name: code for code, name in enumerate(INTERACTION_CHANNELS)}
KIND = {name: code for code, name in enumerate(INTERACTION_KINDS)}
INBOUND, OUTBOUND = 0, 1
DIRECTIONS = ("inbound", "outbound")
#: weekly rates of "care" contacts for an alive customer
INQUIRY_RATE = 0.010
SERVICE_RATE = 0.008
COMPLAINT_RATE = 0.005  # times h0 / mean h0 times exp(0.35 stress)
#: care contact channel given the preferred channel, over (call, chat, email, store)
CARE_CHANNELS = np.array([CH["call"], CH["chat"], CH["email"], CH["store"]])
CARE_CHANNEL_P = np.array(
    [
        [0.25, 0.25, 0.45, 0.05],
        [0.70, 0.10, 0.10, 0.10],
        [0.40, 0.30, 0.20, 0.10],
        [0.25, 0.50, 0.20, 0.05],
        [0.30, 0.10, 0.10, 0.50],
    ]
)
WEB_VISIT_RATE = 0.05  # times engagement
STORE_VISIT_RATE = 0.03  # times engagement, 1/5 unless the customer prefers the store
MEETING_RATE = 0.003  # times relative spend
EMAIL_SEND_P = 0.08  # newsletter per week to opted-in customers, alive or not
SMS_SEND_P = 0.04

# Stress: a decaying score of bad experiences; the hazard is h0 * exp(STRESS_BETA * stress).
STRESS_DECAY = 0.94  # per week (half-life ~11 weeks)
STRESS_BETA = 1.0
STRESS_COMPLAINT = 1.0
STRESS_UNRESOLVED = 0.8
STRESS_LOW_SATISFACTION = 0.4
STRESS_GOOD_SERVICE = -0.5
STRESS_RANGE = (-1.0, 6.0)
#: unhappy customers also buy less: the purchase rate is lam * exp(-gamma * max(stress, 0))
STRESS_PURCHASE = 0.5

# --- campaigns ------------------------------------------------------------------------
ACTIONS = (
    NO_ACTION,
    "retention_discount",
    "loyalty_upgrade",
    "cross_sell",
    "service_callback",
    "winback_email",
)
ACTION_CHANNELS = ("none", "email", "email", "email", "call", "email")
A_NONE, A_RETENTION, A_LOYALTY, A_CROSS, A_CALLBACK, A_WINBACK = range(len(ACTIONS))
EMAIL_ACTIONS = np.array([c == "email" for c in ACTION_CHANNELS])
CALL_ACTIONS = np.array([c == "call" for c in ACTION_CHANNELS])
RESPONSE_WINDOW_DAYS = 14
CAMPAIGN_MONTHS = 18
WAVE_INCLUSION_P = 0.3
PROPENSITY_FLOOR = 0.05
#: revenue factor of the order an action triggers (discounts and coupons cut it)
REVENUE_FACTOR = np.array([1.0, 0.75, 1.05, 0.9, 1.0, 0.85])
# Policy logits (columns: ACTIONS) by observable attribute.
POLICY_BASE = np.array([0.6, 0.0, -0.3, 0.0, -0.6, -0.4])
POLICY_REGION = np.array(
    [
        [0.0, 0.4, 0.0, -0.2, 0.0, 0.0],
        [0.0, -0.2, 0.3, 0.2, 0.0, 0.0],
        [0.2, 0.0, 0.0, 0.3, -0.3, 0.0],
        [0.0, 0.2, -0.2, 0.0, 0.3, 0.2],
        [-0.2, 0.0, 0.2, 0.0, 0.0, -0.2],
    ]
)
POLICY_PREFERRED = np.array(
    [
        [0.0, 0.4, 0.4, 0.4, -0.5, 0.4],
        [0.0, -0.2, -0.2, -0.2, 1.0, -0.2],
        [0.3, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.2, 0.0, 0.3, -0.3, 0.0],
        [0.3, -0.2, 0.2, -0.2, 0.0, -0.2],
    ]
)
#: recency buckets: never ordered, <30, 30-90, 90-180, 180-365 days
RECENCY_EDGES = np.array([30.0, 90.0, 180.0])
POLICY_RECENCY = np.array(
    [
        [0.3, -0.5, -1.0, 0.5, -0.5, -2.0],
        [0.0, -0.8, 0.7, 0.5, 0.0, -2.0],
        [0.0, 0.4, 0.2, 0.2, 0.0, -0.8],
        [0.0, 0.8, -0.5, -0.3, 0.0, 0.6],
        [0.0, 0.5, -1.0, -0.8, -0.3, 1.5],
    ]
)
POLICY_UNRESOLVED_CALLBACK = 1.2
UNRESOLVED_MEMORY_DAYS = 30
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int8)

# --- wallets: what a customer spends in the category with every supplier ---------------
#: median yearly category budget (all suppliers); times SPEND_BY_REGION and the noise
WALLET_MEDIAN = 2000.0
WALLET_SIGMA = 0.35  # lognormal spread of needs between otherwise comparable customers
#: the largest share of a budget one supplier gets: a customer spending more with us than
#: their needs suggest has a budget of at least their spend with us over this
WALLET_SHARE_CAP = 0.95
WEEKS_PER_YEAR = 365.25 / 7.0
#: Monte Carlo replicates of the stress path behind the truth (orders and death are exact)
TRUTH_REPLICATES = 8

TRUTH_CUSTOMER_COLUMNS = (
    "customer_id",
    "as_of",
    "alive",
    "p_no_order",
    "expected_spend",
    "purchase_rate",
    "dropout_hazard",
    "budget",
    "wallet_share",
)
TRUTH_ACTION_COLUMNS = (
    "customer_id",
    "action",
    "p_convert_treated",
    "p_convert_control",
    "incremental_conversion",
    "incremental_revenue",
    "consent_ok",
    "expected_revenue_treated",
    "expected_revenue_control",
)


@dataclass
class DemoData:
    """The four contract tables plus the ground truth at ``truth_as_of``.

    ``truth_customers.purchase_rate`` is orders per day while alive and ``dropout_hazard``
    the hazard per day, both at ``truth_as_of``; the truth assumes no campaign after it.
    ``budget`` is the customer's yearly spend in the category with every supplier and
    ``wallet_share`` the share of it we get (expected yearly net spend with us at the
    current purchase rate over the budget; 0 for customers who dropped out).
    """

    customers: pd.DataFrame
    orders: pd.DataFrame
    interactions: pd.DataFrame
    campaign_log: pd.DataFrame
    truth_customers: pd.DataFrame
    truth_actions: pd.DataFrame
    #: which customer records are one person (``customer_id``, ``person_id``, ``how``)
    truth_identity: pd.DataFrame
    end: datetime
    truth_as_of: datetime
    horizon_days: int
    seed: int

    def tables(self) -> dict[str, pd.DataFrame]:
        """All six tables by file name (contract tables first)."""
        return {
            "customers": self.customers,
            "orders": self.orders,
            "interactions": self.interactions,
            "campaign_log": self.campaign_log,
            "truth_customers": self.truth_customers,
            "truth_actions": self.truth_actions,
            "truth_identity": self.truth_identity,
        }


# --- small numpy helpers ---------------------------------------------------------------
def _pick_rows(u: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """Bucket of each uniform draw, one row of cumulative probabilities per draw."""
    return (u[:, None] >= cum[:, :-1]).sum(axis=1).astype(np.int8)


def _cumulative(p: np.ndarray) -> np.ndarray:
    return np.cumsum(p / p.sum(axis=-1, keepdims=True), axis=-1)


def _micros(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    return as_utc(value)


class _Events:
    """Columns of one event table, collected week by week and joined once."""

    def __init__(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {}

    def add(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            self._parts.setdefault(name, []).append(values)

    def join(self, names: tuple[str, ...], dtypes: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The full columns; the weekly parts are released (memory)."""
        return {
            name: np.concatenate(self._parts.pop(name, []) or [np.empty(0, dtype)])
            for name, dtype in zip(names, dtypes, strict=True)
        }


# --- calendar ---------------------------------------------------------------------------
def _season(day_of_year: np.ndarray) -> np.ndarray:
    """Order intensity by day of year: Black Friday, a December peak, a summer dip."""

    def bump(center: float, width: float) -> np.ndarray:
        dist = np.abs(day_of_year - center)
        dist = np.minimum(dist, 365.25 - dist)
        return np.exp(-0.5 * (dist / width) ** 2)

    return 1.0 + 0.9 * bump(350, 16) + 0.5 * bump(330, 5) - 0.25 * bump(190, 30)


@dataclass(frozen=True)
class _Calendar:
    """Weekly steps aligned so that ``truth_as_of`` is a step boundary.

    ``day_weight`` is the relative order intensity (season x weekday) of each day counted
    from ``origin_us``; a customer with weekly rate lam expects lam * sum(weights) / 7
    orders over those days.
    """

    origin_us: int
    end_us: int
    n_weeks: int
    as_of_week: int
    day_weight: np.ndarray
    day_cumsum: np.ndarray

    @classmethod
    def build(cls, start_us: int, end_us: int, as_of_us: int, extra_days: int) -> _Calendar:
        as_of_week = -(-(as_of_us - start_us) // US_PER_WEEK)
        origin_us = as_of_us - as_of_week * US_PER_WEEK
        n_weeks = -(-(end_us - origin_us) // US_PER_WEEK)
        n_days = n_weeks * 7 + extra_days
        day_starts = (origin_us + np.arange(n_days, dtype=np.int64) * US_PER_DAY).astype("M8[us]")
        days = day_starts.astype("M8[D]")
        day_of_year = (days - days.astype("M8[Y]")).astype(np.int64).astype(np.float64)
        weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
        weight = _season(day_of_year) * WEEKDAY_WEIGHT[weekday] / WEEKDAY_WEIGHT.mean()
        cumsum = np.concatenate([[0.0], np.cumsum(weight)])
        return cls(origin_us, end_us, n_weeks, as_of_week, weight, cumsum)

    def week_start(self, week: int) -> int:
        return self.origin_us + week * US_PER_WEEK

    def days_weight(self, first_day: np.ndarray | int, n_days: int) -> np.ndarray:
        """Expected orders per unit of weekly rate over ``n_days`` from ``first_day``."""
        first = np.asarray(first_day)
        return (self.day_cumsum[first + n_days] - self.day_cumsum[first]) / 7.0

    def window_weight(self, at_us: np.ndarray | int, n_days: int) -> np.ndarray:
        return self.days_weight((np.asarray(at_us) - self.origin_us) // US_PER_DAY, n_days)


# --- customers -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Population:
    """Static attributes and latent parameters, sorted by signup."""

    signup_us: np.ndarray
    region: np.ndarray
    acquisition: np.ndarray
    preferred: np.ndarray
    email_ok: np.ndarray
    phone_ok: np.ndarray
    sms_ok: np.ndarray
    lam: np.ndarray  # orders per week while alive
    mu: np.ndarray  # mean order value
    h0: np.ndarray  # base dropout hazard per day
    category_cum: np.ndarray  # cumulative category preferences, one row per customer

    @property
    def size(self) -> int:
        return len(self.signup_us)


def _signups(rng: np.random.Generator, n: int, start_us: int, end_us: int) -> np.ndarray:
    """Signup instants with exponentially growing cohorts, sorted."""
    growth = np.log(COHORT_GROWTH)
    fraction = np.log1p(rng.random(n) * (COHORT_GROWTH - 1.0)) / growth
    return np.sort(start_us + (fraction * (end_us - start_us)).astype(np.int64))


def _opt_in(rng: np.random.Generator, preferred: np.ndarray, channel: str, p: tuple) -> np.ndarray:
    chance = np.where(preferred == PREFERRED.index(channel), p[0], p[1])
    return rng.random(len(preferred)) < chance


def _population(
    rng: np.random.Generator, n: int, start_us: int, end_us: int, spend_sigma: float = SPEND_SIGMA
) -> _Population:
    signup = _signups(rng, n, start_us, end_us)
    region = rng.choice(len(REGIONS), size=n, p=REGION_P).astype(np.int8)
    acquisition = rng.choice(len(ACQUISITION), size=n, p=ACQUISITION_P).astype(np.int8)
    preferred = _pick_rows(rng.random(n), _cumulative(PREFERRED_P)[acquisition])
    lam_scale = LAMBDA_MEAN / LAMBDA_SHAPE * LAMBDA_BY_ACQUISITION[acquisition]
    hazard_scale = HAZARD_MEAN / HAZARD_SHAPE * HAZARD_BY_ACQUISITION[acquisition]
    spend_median = SPEND_MEDIAN * SPEND_BY_REGION[region]
    # Dirichlet preferences, drawn as normalised gammas (much faster than rng.dirichlet)
    prefs = rng.standard_gamma(CATEGORY_POPULARITY * CATEGORY_CONCENTRATION, size=(n, 8))
    prefs /= prefs.sum(axis=1, keepdims=True)
    return _Population(
        signup_us=signup,
        region=region,
        acquisition=acquisition,
        preferred=preferred,
        email_ok=_opt_in(rng, preferred, "email", EMAIL_OPT_IN),
        phone_ok=_opt_in(rng, preferred, "call", PHONE_OPT_IN),
        sms_ok=_opt_in(rng, preferred, "sms", SMS_OPT_IN),
        lam=rng.gamma(LAMBDA_SHAPE, lam_scale),
        mu=spend_median * rng.lognormal(0.0, spend_sigma, n),
        h0=rng.gamma(HAZARD_SHAPE, hazard_scale),
        category_cum=np.cumsum(prefs, axis=1).astype(np.float32),
    )


@dataclass
class _State:
    """What changes week by week: latent (alive, stress) and observed (history summaries)."""

    alive: np.ndarray
    stress: np.ndarray
    n_orders: np.ndarray
    last_order_us: np.ndarray
    category_mask: np.ndarray
    last_unresolved_us: np.ndarray
    block_lo: np.ndarray  # organic orders are replaced by the campaign response here
    block_hi: np.ndarray

    @classmethod
    def initial(cls, n: int) -> _State:
        return cls(
            alive=np.ones(n, dtype=bool),
            stress=np.zeros(n),
            n_orders=np.zeros(n, dtype=np.int32),
            last_order_us=np.full(n, NEVER, dtype=np.int64),
            category_mask=np.zeros(n, dtype=np.uint8),
            last_unresolved_us=np.full(n, NEVER, dtype=np.int64),
            block_lo=np.full(n, NEVER, dtype=np.int64),
            block_hi=np.full(n, NEVER, dtype=np.int64),
        )

    def head(self, n: int) -> _State:
        """A copy of the first ``n`` customers (the truth snapshot)."""
        return _State(**{k: v[:n].copy() for k, v in vars(self).items()})

    def record_orders(self, cust: np.ndarray, at_us: np.ndarray, category: np.ndarray) -> None:
        """Update the observed history with purchases (positive orders)."""
        self.n_orders += np.bincount(cust, minlength=len(self.n_orders)).astype(np.int32)
        np.maximum.at(self.last_order_us, cust, at_us)
        np.bitwise_or.at(self.category_mask, cust, (1 << category.astype(np.uint8)))


# --- the shared behavioural model: hazard, care contacts, campaign response ----------
def _hazard(h0: np.ndarray, stress: np.ndarray) -> np.ndarray:
    """Dropout hazard per day."""
    return h0 * np.exp(STRESS_BETA * stress)


def _purchase_rate(lam: np.ndarray, stress: np.ndarray) -> np.ndarray:
    """Orders per week while alive, damped by recent bad experiences."""
    return lam * np.exp(-STRESS_PURCHASE * np.maximum(stress, 0.0))


def _poisson_events(
    rng: np.random.Generator, rates: list[np.ndarray | float], exposure: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Events of competing weekly Poisson processes: whose (index) and which (rate number)."""
    total = np.zeros(len(exposure))
    for rate in rates:
        total += rate
    cust = np.repeat(np.arange(len(exposure)), rng.poisson(total * exposure))
    per_event = np.column_stack([np.broadcast_to(rate, total.shape)[cust] for rate in rates])
    cum = np.cumsum(per_event, axis=1) / total[cust, None]
    return cust, _pick_rows(rng.random(len(cust)), cum)


def _care_rates(h0: np.ndarray, stress: np.ndarray) -> list[np.ndarray | float]:
    """Weekly rates of inquiry, complaint, service for an alive customer."""
    complaint = COMPLAINT_RATE * (h0 / HAZARD_MEAN) * np.exp(0.35 * np.clip(stress, 0.0, 3.0))
    return [INQUIRY_RATE, complaint, SERVICE_RATE]


@dataclass(frozen=True)
class _Care:
    """Care contacts of one week: who, which kind, and how it went."""

    cust: np.ndarray  # index into the customers the rates were given for
    kind: np.ndarray  # KIND code: inquiry, complaint or service
    resolved: np.ndarray  # 1 / 0, -1 for null (inquiries)
    satisfaction: np.ndarray  # 1..5

    def stress_delta(self, n: int) -> np.ndarray:
        complaint = self.kind == KIND["complaint"]
        delta = (
            STRESS_COMPLAINT * complaint
            + STRESS_UNRESOLVED * (complaint & (self.resolved == 0))
            + STRESS_LOW_SATISFACTION * (self.satisfaction <= 2)
            + STRESS_GOOD_SERVICE
            * ((self.kind == KIND["service"]) & (self.resolved == 1) & (self.satisfaction >= 4))
        )
        return np.bincount(self.cust, weights=delta, minlength=n)


def _satisfaction(rng: np.random.Generator, n: int, p: list[float], low: int) -> np.ndarray:
    return (low + rng.choice(len(p), size=n, p=p)).astype(np.int8)


def _care_contacts(
    rng: np.random.Generator, rates: list[np.ndarray | float], exposure: np.ndarray
) -> _Care:
    """Sample care contacts and their outcomes (used by the history and the truth alike)."""
    cust, which = _poisson_events(rng, rates, exposure)
    kind = np.array([KIND["inquiry"], KIND["complaint"], KIND["service"]], dtype=np.int8)[which]
    complaint, service = kind == KIND["complaint"], kind == KIND["service"]
    resolved_p = np.where(complaint, 0.55, 0.85)
    resolved = np.where(complaint | service, rng.random(len(cust)) < resolved_p, -1).astype(np.int8)
    m = len(cust)
    happy = _satisfaction(rng, m, [0.15, 0.3, 0.35, 0.2], 2)  # 2..5
    unhappy = _satisfaction(rng, m, [0.45, 0.4, 0.15], 1)  # 1..3
    inquiry = _satisfaction(rng, m, [0.05, 0.1, 0.25, 0.35, 0.25], 1)
    satisfaction = np.where(resolved == 1, happy, np.where(resolved == 0, unhappy, inquiry))
    return _Care(cust, kind, resolved, satisfaction.astype(np.int8))


def _stress_step(stress: np.ndarray, delta: np.ndarray) -> np.ndarray:
    return np.clip(stress * STRESS_DECAY + delta, *STRESS_RANGE)


@dataclass(frozen=True)
class _Situation:
    """What a customer's response to a campaign action depends on."""

    alive: np.ndarray
    lam: np.ndarray  # the customer's usual weekly purchase rate
    rate: np.ndarray  # the current one (after stress)
    mu: np.ndarray
    hazard: np.ndarray  # per day
    n_categories: np.ndarray
    recency_days: np.ndarray  # inf when the customer never ordered
    unresolved: np.ndarray  # an unresolved complaint in the last 30 days
    window_weight: np.ndarray  # calendar weight of the 14-day response window

    @classmethod
    def of(
        cls, pop: _Population, st: _State, idx: np.ndarray, at_us: np.ndarray, cal: _Calendar
    ) -> _Situation:
        last = st.last_order_us[idx]
        recency = np.where(last == NEVER, np.inf, (at_us - last) / US_PER_DAY)
        return cls(
            alive=st.alive[idx],
            lam=pop.lam[idx],
            rate=_purchase_rate(pop.lam[idx], st.stress[idx]),
            mu=pop.mu[idx],
            hazard=_hazard(pop.h0[idx], st.stress[idx]),
            n_categories=POPCOUNT[st.category_mask[idx]],
            recency_days=recency,
            unresolved=st.last_unresolved_us[idx] >= at_us - UNRESOLVED_MEMORY_DAYS * US_PER_DAY,
            window_weight=cal.window_weight(at_us, RESPONSE_WINDOW_DAYS),
        )

    @property
    def loyal(self) -> np.ndarray:
        """Frequent high spenders score near 1."""
        return np.clip(self.lam / 0.8, 0.0, 1.0) * np.clip(self.mu / 70.0, 0.0, 1.0)


def _action_effect(action: int, s: _Situation) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier on the organic order intensity, added intensity) of one action."""
    one, zero = np.ones(len(s.lam)), np.zeros(len(s.lam))
    alive = s.alive.astype(np.float64)
    if action == A_RETENTION:
        risk = 1.0 - np.exp(-90.0 * s.hazard)
        return one, alive * (0.03 + 0.9 * risk) + (1.0 - alive) * 0.04
    if action == A_LOYALTY:
        return one, 0.35 * s.loyal * alive
    if action == A_CROSS:
        few = np.select([s.n_categories <= 2, s.n_categories == 3], [1.0, 0.4], 0.0)
        return np.where(s.n_categories >= 5, 0.85, 1.0), 0.2 * few * alive
    if action == A_CALLBACK:
        return np.where(s.unresolved, 1.0, 0.93), 0.3 * s.unresolved * alive
    if action == A_WINBACK:
        lapsed = np.clip((s.recency_days - 60.0) / 120.0, 0.0, 1.0)
        return np.where(s.recency_days < 30.0, 0.9, 1.0), 0.25 * lapsed
    return one, zero


def _response(action: int, s: _Situation) -> tuple[np.ndarray, np.ndarray]:
    """P(an order within 14 days) and the expected revenue of that first order."""
    organic = s.alive * s.rate * s.window_weight
    multiplier, added = _action_effect(action, s)
    p = -np.expm1(-(multiplier * organic + added))
    return p, p * s.mu * REVENUE_FACTOR[action]


def _action_stress(action: np.ndarray, s: _Situation) -> np.ndarray:
    """Stress change caused by the contact itself (lower stress, lower dropout hazard)."""
    return np.select(
        [action == A_RETENTION, action == A_LOYALTY, action == A_CALLBACK],
        [np.full(len(action), -0.4), -0.5 * s.loyal, -1.2 * s.unresolved],
        0.0,
    )


def _propensities(
    pop: _Population, idx: np.ndarray, recency_days: np.ndarray, unresolved: np.ndarray
) -> np.ndarray:
    """The logging policy: P(action) per customer from observable attributes only."""
    bucket = np.where(np.isinf(recency_days), 0, 1 + np.searchsorted(RECENCY_EDGES, recency_days))
    logits = (
        POLICY_BASE
        + POLICY_REGION[pop.region[idx]]
        + POLICY_PREFERRED[pop.preferred[idx]]
        + POLICY_RECENCY[bucket]
    )
    logits[:, A_CALLBACK] += POLICY_UNRESOLVED_CALLBACK * unresolved
    allowed = _consent(pop, idx)
    weight = np.where(allowed, np.exp(logits - logits.max(axis=1, keepdims=True)), 0.0)
    softmax = weight / weight.sum(axis=1, keepdims=True)
    n_allowed = allowed.sum(axis=1, keepdims=True)
    return np.where(allowed, PROPENSITY_FLOOR + (1 - PROPENSITY_FLOOR * n_allowed) * softmax, 0.0)


def _consent(pop: _Population, idx: np.ndarray) -> np.ndarray:
    """Which actions each customer may receive (email needs email opt-in, call phone)."""
    email_ok, phone_ok = pop.email_ok[idx, None], pop.phone_ok[idx, None]
    return (~EMAIL_ACTIONS | email_ok) & (~CALL_ACTIONS | phone_ok)


# --- the weekly simulation ------------------------------------------------------------
ORDER_COLUMNS = ("cust", "at", "amount", "margin", "category", "channel")
ORDER_DTYPES = ("int32", "int64", "float64", "float64", "int8", "int8")
CONTACT_COLUMNS = (
    "cust",
    "at",
    "channel",
    "kind",
    "direction",
    "duration",
    "satisfaction",
    "resolved",
)
CONTACT_DTYPES = ("int32", "int64", "int8", "int8", "int8", "float64", "int8", "int8")
DECISION_COLUMNS = ("cust", "at", "action", "propensity", "outcome", "revenue", "responded")
DECISION_DTYPES = ("int32", "int64", "int8", "float64", "int8", "float64", "int64")


class _Simulator:
    """Advances all customers week by week and collects the events they produce."""

    def __init__(
        self,
        rng: np.random.Generator,
        pop: _Population,
        cal: _Calendar,
        wave_weeks: set[int],
        scenario: Scenario | None = None,
    ) -> None:
        self.rng, self.pop, self.cal, self.wave_weeks = rng, pop, cal, wave_weeks
        self.scenario = scenario
        self.st = _State.initial(pop.size)
        self.orders, self.contacts, self.decisions = _Events(), _Events(), _Events()
        self.snapshot: _State | None = None

    def run(self, progress: Progress) -> None:
        cal = self.cal
        for week in range(cal.n_weeks):
            if week == cal.as_of_week:
                self._take_snapshot()
            if week % 26 == 0:
                progress(f"simulating week {week + 1}/{cal.n_weeks}")
            self._week(week)
        if cal.as_of_week == cal.n_weeks:
            self._take_snapshot()

    def _take_snapshot(self) -> None:
        as_of_us = self.cal.week_start(self.cal.as_of_week)
        self.snapshot = self.st.head(int(np.searchsorted(self.pop.signup_us, as_of_us)))

    def _week(self, week: int) -> None:
        lo = self.cal.week_start(week)
        hi = min(lo + US_PER_WEEK, self.cal.end_us)
        n_active = int(np.searchsorted(self.pop.signup_us, hi))
        # time each active customer could act in this week (signup may fall inside it)
        since = np.maximum(self.pop.signup_us[:n_active], lo)
        exposure = (hi - since) / US_PER_WEEK
        if self.scenario is not None and self.scenario.starts_in(lo, hi):
            self.scenario.change(self.pop)
        if week in self.wave_weeks:
            self._campaign_wave(lo, n_active)
        self._organic_orders(week, lo, n_active)
        self._care(since, exposure)
        level = self._engagement_level(n_active)
        self._engagement(since, exposure, level)
        self._outbound(since, exposure, level)
        self._deaths(exposure)

    # orders ----------------------------------------------------------------------------
    def _organic_orders(self, week: int, lo: int, n: int) -> None:
        pop, st, rng = self.pop, self.st, self.rng
        weight = self.cal.days_weight(week * 7, 7)
        live = np.flatnonzero(st.alive[:n])
        rate = _purchase_rate(pop.lam[live], st.stress[live])
        cust = np.repeat(live, rng.poisson(rate * weight))
        day_w = self.cal.day_weight[week * 7 : week * 7 + 7]
        day = rng.choice(7, size=len(cust), p=day_w / day_w.sum())
        hour = rng.choice(24, size=len(cust), p=HOUR_WEIGHT / HOUR_WEIGHT.sum())
        at = lo + day * US_PER_DAY + hour * US_PER_HOUR + rng.integers(0, US_PER_HOUR, len(cust))
        keep = (
            (at >= pop.signup_us[cust])
            & (at < self.cal.end_us)
            & ~((at >= st.block_lo[cust]) & (at < st.block_hi[cust]))
        )
        cust, at = cust[keep], at[keep]
        is_return = rng.random(len(cust)) < RETURN_P
        amount = np.where(is_return, -1.0, 1.0) * self._order_value(pop.mu[cust])
        category = _pick_rows(rng.random(len(cust)), pop.category_cum[cust])
        self._add_orders(cust, at, amount, category, np.ones(len(cust)))
        buy = ~is_return
        st.record_orders(cust[buy], at[buy], category[buy])

    def _order_value(self, mean: np.ndarray) -> np.ndarray:
        noise = self.rng.gamma(ORDER_NOISE_SHAPE, 1.0 / ORDER_NOISE_SHAPE, len(mean))
        return np.maximum(np.round(mean * noise, 2), 0.01)

    def _add_orders(
        self,
        cust: np.ndarray,
        at: np.ndarray,
        amount: np.ndarray,
        category: np.ndarray,
        margin_factor: np.ndarray,
        channel: np.ndarray | None = None,
    ) -> None:
        rng = self.rng
        if channel is None:
            channel_cum = _cumulative(ORDER_CHANNEL_P)[self.pop.preferred[cust]]
            channel = _pick_rows(rng.random(len(cust)), channel_cum)
        fraction = MARGIN_FRACTION[category] * rng.uniform(0.85, 1.15, len(cust))
        margin = np.round(amount * fraction * margin_factor, 2)
        self.orders.add(
            cust=cust.astype(np.int32),
            at=at,
            amount=amount,
            margin=margin,
            category=category,
            channel=channel.astype(np.int8),
        )

    # contacts --------------------------------------------------------------------------
    def _times(self, since: np.ndarray, exposure: np.ndarray, cust: np.ndarray) -> np.ndarray:
        span = exposure[cust] * US_PER_WEEK
        return since[cust] + (self.rng.random(len(cust)) * span).astype(np.int64)

    def _care(self, since: np.ndarray, exposure: np.ndarray) -> None:
        """Inquiries, complaints, service contacts; they move stress and so the hazard."""
        n, st, rng = len(since), self.st, self.rng
        rates = _care_rates(self.pop.h0[:n], st.stress[:n])
        care = _care_contacts(rng, rates, exposure * st.alive[:n])
        cust = care.cust
        at = self._times(since, exposure, cust)
        channel_cum = _cumulative(CARE_CHANNEL_P)[self.pop.preferred[cust]]
        channel = CARE_CHANNELS[_pick_rows(rng.random(len(cust)), channel_cum)].astype(np.int8)
        duration = self._duration(channel, care.kind == KIND["complaint"])
        self.contacts.add(
            cust=cust.astype(np.int32),
            at=at,
            channel=channel,
            kind=care.kind,
            direction=np.full(len(cust), INBOUND, dtype=np.int8),
            duration=duration,
            satisfaction=care.satisfaction,
            resolved=care.resolved,
        )
        unresolved = (care.kind == KIND["complaint"]) & (care.resolved == 0)
        np.maximum.at(st.last_unresolved_us, cust[unresolved], at[unresolved])
        st.stress[:n] = _stress_step(st.stress[:n], care.stress_delta(n))

    def _duration(self, channel: np.ndarray, long: np.ndarray) -> np.ndarray:
        """Seconds for calls and chats (complaints take longer), NaN otherwise."""
        rng, m = self.rng, len(channel)
        call = rng.lognormal(np.log(240.0), 0.6, m)
        chat = rng.lognormal(np.log(480.0), 0.5, m)
        seconds = np.where(
            channel == CH["call"], call, np.where(channel == CH["chat"], chat, np.nan)
        )
        return np.round(seconds * np.where(long, 1.6, 1.0))

    def _engagement_level(self, n: int) -> np.ndarray:
        """Alive customers who buy more browse and open more."""
        st, pop = self.st, self.pop
        level = 0.4 + 0.15 * np.sqrt(st.n_orders[:n]) + 0.4 * pop.lam[:n] / LAMBDA_MEAN
        return np.where(st.alive[:n], np.clip(level, 0.2, 3.0), 0.1)

    def _engagement(self, since: np.ndarray, exposure: np.ndarray, level: np.ndarray) -> None:
        """Web and store visits, account-manager meetings."""
        n, pop, rng = len(since), self.pop, self.rng
        store_pref = np.where(pop.preferred[:n] == PREFERRED.index("store"), 1.0, 0.2)
        relative_spend = np.clip(pop.mu[:n] / SPEND_MEDIAN, 0.2, 5.0)
        alive = self.st.alive[:n]
        rates: list[np.ndarray | float] = [
            WEB_VISIT_RATE * level,
            STORE_VISIT_RATE * level * store_pref * alive,
            MEETING_RATE * relative_spend * alive,
        ]
        cust, which = _poisson_events(rng, rates, exposure)
        channel = np.array([CH["web"], CH["store"], CH["visit"]], dtype=np.int8)[which]
        kind = np.array([KIND["visit"], KIND["visit"], KIND["meeting"]], dtype=np.int8)[which]
        direction = np.where(which == 2, OUTBOUND, INBOUND).astype(np.int8)
        self._add_plain(cust, self._times(since, exposure, cust), channel, kind, direction)

    def _outbound(self, since: np.ndarray, exposure: np.ndarray, level: np.ndarray) -> None:
        """Newsletters (email, sms) to opted-in customers, and the opens and clicks."""
        n, pop, rng = len(since), self.pop, self.rng
        email = np.flatnonzero(pop.email_ok[:n] & (rng.random(n) < EMAIL_SEND_P * exposure))
        sms = np.flatnonzero(pop.sms_ok[:n] & (rng.random(n) < SMS_SEND_P * exposure))
        sent = np.concatenate([email, sms])
        at = self._times(since, exposure, sent)
        channel = np.repeat(
            np.array([CH["email"], CH["sms"]], dtype=np.int8), [len(email), len(sms)]
        )
        self._add_plain(sent, at, channel, KIND["sent"], OUTBOUND)
        self._opens(email, at[: len(email)], level[email])

    def _opens(self, cust: np.ndarray, sent_at: np.ndarray, level: np.ndarray) -> None:
        rng, alive = self.rng, self.st.alive[cust]
        open_p = np.where(alive, np.clip(0.12 + 0.08 * level, 0.0, 0.6), 0.03)
        opened = rng.random(len(cust)) < open_p
        cust, alive, at = cust[opened], alive[opened], sent_at[opened]
        at = at + rng.exponential(0.5 * US_PER_DAY, len(cust)).astype(np.int64)
        self._add_plain(cust, at, CH["email"], KIND["open"], INBOUND)
        clicked = rng.random(len(cust)) < np.where(alive, 0.3, 0.05)
        click_at = at[clicked] + rng.exponential(120 * US_PER_SECOND, clicked.sum()).astype(
            np.int64
        )
        self._add_plain(cust[clicked], click_at, CH["email"], KIND["click"], INBOUND)

    def _add_plain(
        self,
        cust: np.ndarray,
        at: np.ndarray,
        channel: np.ndarray | int,
        kind: np.ndarray | int,
        direction: np.ndarray | int,
        duration: np.ndarray | None = None,
        satisfaction: np.ndarray | None = None,
        resolved: np.ndarray | None = None,
    ) -> None:
        """Contacts without outcome columns (null satisfaction / resolved unless given)."""
        keep = at < self.cal.end_us
        m = int(keep.sum())

        def col(value: np.ndarray | int | None, fill: float, dtype: str) -> np.ndarray:
            if value is None or np.isscalar(value):
                return np.full(m, fill if value is None else value, dtype=dtype)
            return np.asarray(value)[keep].astype(dtype)

        self.contacts.add(
            cust=cust[keep].astype(np.int32),
            at=at[keep],
            channel=col(channel, 0, "int8"),
            kind=col(kind, 0, "int8"),
            direction=col(direction, 0, "int8"),
            duration=col(duration, np.nan, "float64"),
            satisfaction=col(satisfaction, 0, "int8"),
            resolved=col(resolved, -1, "int8"),
        )

    def _deaths(self, exposure: np.ndarray) -> None:
        """Dropout at the end of the week, with the hazard after this week's contacts."""
        n, st = len(exposure), self.st
        hazard = _hazard(self.pop.h0[:n], st.stress[:n])
        survive = np.exp(-hazard * 7.0 * exposure)
        st.alive[:n] &= self.rng.random(n) < survive

    # campaigns -------------------------------------------------------------------------
    def _campaign_wave(self, lo: int, n: int) -> None:
        """One monthly wave: pick customers, draw actions, sample and log the responses."""
        pop, st, rng, cal = self.pop, self.st, self.rng, self.cal
        recent_buyer = st.last_order_us[:n] >= lo - 365 * US_PER_DAY
        new_customer = (st.n_orders[:n] == 0) & (pop.signup_us[:n] >= lo - 180 * US_PER_DAY)
        eligible = (pop.signup_us[:n] <= lo - 7 * US_PER_DAY) & (recent_buyer | new_customer)
        idx = np.flatnonzero(eligible & (rng.random(n) < WAVE_INCLUSION_P))
        at = lo + rng.integers(6 * US_PER_HOUR, 36 * US_PER_HOUR, len(idx))
        idx, at = idx[at < cal.end_us], at[at < cal.end_us]
        situation = _Situation.of(pop, st, idx, np.full(len(idx), lo), cal)
        propensity = _propensities(pop, idx, situation.recency_days, situation.unresolved)
        cum = np.cumsum(propensity, axis=1)
        u = rng.random(len(idx)) * cum[:, -1]
        action = (u[:, None] >= cum).sum(axis=1).astype(np.int8)
        p_convert = _p_convert_by_action(action, situation)
        self._respond(idx, at, action, propensity[np.arange(len(idx)), action], p_convert)
        st.stress[idx] = np.clip(st.stress[idx] + _action_stress(action, situation), *STRESS_RANGE)
        solved = (action == A_CALLBACK) & situation.unresolved
        st.last_unresolved_us[idx[solved]] = NEVER
        self._campaign_contacts(idx, at, action, situation.unresolved)

    def _respond(
        self,
        idx: np.ndarray,
        at: np.ndarray,
        action: np.ndarray,
        propensity: np.ndarray,
        p_convert: np.ndarray,
    ) -> None:
        """Sample conversions, create the converting orders, block organic orders meanwhile."""
        rng, st, end = self.rng, self.st, self.cal.end_us
        window = RESPONSE_WINDOW_DAYS * US_PER_DAY
        converts = rng.random(len(idx)) < p_convert
        delay = (rng.random(len(idx)) ** 1.5 * window).astype(np.int64)
        responded = np.where(converts, at + delay, NEVER)
        seen = converts & (responded < end)
        pending = ~seen & (at + window > end)
        value = self._order_value(self.pop.mu[idx] * REVENUE_FACTOR[action])
        category = self._response_category(idx, action == A_CROSS)
        web, app, call = (ORDER_CHANNELS.index(c) for c in ("web", "app", "call"))
        channel = np.where(
            action == A_CALLBACK, call, np.where(rng.random(len(idx)) < 0.7, web, app)
        )
        discount = np.minimum(REVENUE_FACTOR[action], 1.0)
        self._add_orders(
            idx[seen], responded[seen], value[seen], category[seen], discount[seen], channel[seen]
        )
        st.record_orders(idx[seen], responded[seen], category[seen])
        st.block_lo[idx] = at
        st.block_hi[idx] = np.where(converts, responded, at + window)
        self.decisions.add(
            cust=idx.astype(np.int32),
            at=at,
            action=action,
            propensity=propensity,
            outcome=np.where(pending, -1, seen).astype(np.int8),
            revenue=np.where(pending, np.nan, np.where(seen, value, 0.0)),
            responded=np.where(seen, responded, NEVER),
        )

    def _response_category(self, idx: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Category of the triggered order; a cross-sell sells a category not bought yet."""
        cum = self.pop.category_cum[idx].astype(np.float64)
        prefs = np.diff(cum, axis=1, prepend=0.0)
        bought = (self.st.category_mask[idx, None] >> np.arange(len(CATEGORIES))) & 1
        untried = prefs * (1 - bought) + 1e-9
        use_new = new & (bought.sum(axis=1) < len(CATEGORIES))
        cum = np.where(use_new[:, None], _cumulative(untried), cum)
        return _pick_rows(self.rng.random(len(idx)), cum)

    def _campaign_contacts(
        self, idx: np.ndarray, at: np.ndarray, action: np.ndarray, unresolved: np.ndarray
    ) -> None:
        """The campaign's own touchpoints: the email sent, or the service callback."""
        rng = self.rng
        email = EMAIL_ACTIONS[action]
        self._add_plain(idx[email], at[email] + US_PER_SECOND, CH["email"], KIND["sent"], OUTBOUND)
        call = action == A_CALLBACK
        m = int(call.sum())
        call_at = at[call] + rng.integers(US_PER_HOUR, 48 * US_PER_HOUR, m)
        satisfaction = np.where(unresolved[call], rng.integers(4, 6, m), rng.integers(3, 6, m))
        self._add_plain(
            idx[call],
            call_at,
            CH["call"],
            KIND["service"],
            OUTBOUND,
            duration=np.round(rng.lognormal(np.log(300.0), 0.5, m)),
            satisfaction=satisfaction,
            resolved=np.ones(m, dtype=np.int8),
        )


def _p_convert_by_action(action: np.ndarray, s: _Situation) -> np.ndarray:
    """Each customer's conversion probability under the action it got."""
    p = np.zeros(len(action))
    for code in range(len(ACTIONS)):
        p = np.where(action == code, _response(code, s)[0], p)
    return p


def _wave_weeks(cal: _Calendar) -> set[int]:
    """The first week starting in each calendar month of the last CAMPAIGN_MONTHS months."""
    first_us = cal.end_us - int(CAMPAIGN_MONTHS * 30.44 * US_PER_DAY)
    starts = np.array([cal.week_start(w) for w in range(cal.n_weeks)], dtype="M8[us]")
    months = starts.astype("M8[M]").astype(np.int64)
    new_month = np.concatenate([[True], months[1:] != months[:-1]])
    return {int(w) for w in np.flatnonzero(new_month & (starts.astype(np.int64) >= first_us))}


# --- ground truth ---------------------------------------------------------------------
def _truth_horizon(
    rng: np.random.Generator,
    h0: np.ndarray,
    lam: np.ndarray,
    stress0: np.ndarray,
    cal: _Calendar,
    horizon_days: int,
) -> tuple[np.ndarray, np.ndarray]:
    """P(no order) and expected number of orders over the horizon, for alive customers.

    Given a stress path, death (at week ends) and Poisson orders are integrated exactly;
    the stress path itself (random care contacts) is averaged over a few replicates.
    """
    n = len(h0)
    first_day = cal.as_of_week * 7
    weeks = [(d, min(7, horizon_days - d)) for d in range(0, horizon_days, 7)]
    p_none, orders = np.zeros(n), np.zeros(n)
    for _ in range(TRUTH_REPLICATES):
        stress, survive, intensity = stress0.copy(), np.ones(n), np.zeros(n)
        for offset, days in weeks:
            week_orders = _purchase_rate(lam, stress) * cal.days_weight(first_day + offset, days)
            intensity += week_orders
            orders += survive * week_orders
            care = _care_contacts(rng, _care_rates(h0, stress), np.full(n, days / 7.0))
            stress = _stress_step(stress, care.stress_delta(n))
            q = np.exp(-_hazard(h0, stress) * days)
            p_none += survive * (1.0 - q) * np.exp(-intensity)  # dies at the end of this week
            survive *= q
        p_none += survive * np.exp(-intensity)
    return p_none / TRUTH_REPLICATES, orders / TRUTH_REPLICATES


def _wallets(
    rng: np.random.Generator, pop: _Population, snap: _State
) -> tuple[np.ndarray, np.ndarray]:
    """Yearly category budget and the share of it we get, per customer at the snapshot.

    Needs vary with the region and, lognormally, between comparable customers; a
    customer buying more with us than their needs suggest has a budget of their spend
    with us over :data:`WALLET_SHARE_CAP` (the assumption behind estimating potential as
    a high quantile of comparable customers' spend). Drawn from their own random stream,
    so the rest of the simulation is the same with or without them.
    """
    n = len(snap.alive)
    need = WALLET_MEDIAN * SPEND_BY_REGION[pop.region] * rng.lognormal(0.0, WALLET_SIGMA, pop.size)
    ours = _purchase_rate(pop.lam[:n], snap.stress) * WEEKS_PER_YEAR * pop.mu[:n] * NET_PER_ORDER
    budget = np.maximum(need[:n], ours / WALLET_SHARE_CAP)
    return budget, np.where(snap.alive, ours / budget, 0.0)


def _truth_customers(
    rng: np.random.Generator,
    pop: _Population,
    snap: _State,
    cal: _Calendar,
    as_of_us: int,
    horizon_days: int,
    ids: pa.Array,
    wallets: tuple[np.ndarray, np.ndarray],
) -> pd.DataFrame:
    n = len(snap.alive)
    live = np.flatnonzero(snap.alive)
    p_none, orders = np.ones(n), np.zeros(n)
    p_none[live], orders[live] = _truth_horizon(
        rng, pop.h0[live], pop.lam[live], snap.stress[live], cal, horizon_days
    )
    return pd.DataFrame(
        {
            "customer_id": _strings(ids),
            "as_of": _timestamps(np.full(n, as_of_us, dtype=np.int64)),
            "alive": snap.alive,
            "p_no_order": p_none,
            "expected_spend": orders * pop.mu[:n] * NET_PER_ORDER,
            "purchase_rate": _purchase_rate(pop.lam[:n], snap.stress) / 7.0,
            "dropout_hazard": _hazard(pop.h0[:n], snap.stress),
            "budget": wallets[0],
            "wallet_share": wallets[1],
        }
    )


def _truth_actions(
    pop: _Population, snap: _State, cal: _Calendar, as_of_us: int, ids: pa.Array
) -> pd.DataFrame:
    """Every action for every customer, with the response model the campaign log used."""
    n, k = len(snap.alive), len(ACTIONS)
    idx = np.arange(n)
    situation = _Situation.of(pop, snap, idx, np.full(n, as_of_us, dtype=np.int64), cal)
    responses = [_response(action, situation) for action in range(k)]
    p_treated = np.column_stack([p for p, _ in responses]).ravel()
    revenue_treated = np.column_stack([r for _, r in responses]).ravel()
    p_control, revenue_control = (np.repeat(x, k) for x in responses[A_NONE])
    return pd.DataFrame(
        {
            "customer_id": _strings(pc.take(ids, np.repeat(idx, k))),
            "action": _labels(np.tile(np.arange(k), n), ACTIONS),
            "p_convert_treated": p_treated,
            "p_convert_control": p_control,
            "incremental_conversion": p_treated - p_control,
            "incremental_revenue": revenue_treated - revenue_control,
            "consent_ok": _consent(pop, idx).ravel(),
            # expected revenue of the triggered order (P(convert) x its mean value)
            "expected_revenue_treated": revenue_treated,
            "expected_revenue_control": revenue_control,
        }
    )


# --- frames ---------------------------------------------------------------------------
def _ids(prefix: str, n: int) -> pa.Array:
    """``C0000001``-style ids, numbered from 1 in the table's row order."""
    width = max(7, len(str(n)))
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(1, n + 1)), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _strings(values: pa.Array | pa.ChunkedArray) -> pd.Series:
    return pd.Series(pd.array(values, dtype="str"))


def _labels(codes: np.ndarray, labels: tuple[str, ...]) -> pd.Series:
    return _strings(pc.take(pa.array(labels), pa.array(np.asarray(codes, dtype=np.int64))))


def _timestamps(micros: np.ndarray) -> pd.Series:
    return pd.Series(micros.astype("M8[us]")).dt.tz_localize("UTC")


def _nullable_timestamps(micros: np.ndarray) -> pd.Series:
    values = pd.Series(np.where(micros == NEVER, np.datetime64("NaT"), micros.astype("M8[us]")))
    return values.astype("M8[us]").dt.tz_localize("UTC")


def _nullable_bool(codes: np.ndarray) -> pd.arrays.BooleanArray:
    return pd.arrays.BooleanArray(codes == 1, codes < 0)


def _in_table_order(table: Table, columns: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame({name: columns[name] for name in table.column_names})


def _customers_frame(pop: _Population, ids: pa.Array, who: Identities) -> pd.DataFrame:
    return _in_table_order(
        CUSTOMERS,
        {
            "customer_id": _strings(ids),
            "signup_at": _timestamps(pop.signup_us),
            "region": _labels(pop.region, REGIONS),
            "acquisition_channel": _labels(pop.acquisition, ACQUISITION),
            "preferred_channel": _labels(pop.preferred, PREFERRED),
            "email_opt_in": pop.email_ok,
            "phone_opt_in": pop.phone_ok,
            "sms_opt_in": pop.sms_ok,
            "email": pd.array(who.email, dtype="str"),
            "phone": pd.array(who.phone, dtype="str"),
            "loyalty_card": pd.array(who.loyalty_card, dtype="str"),
            "cookie_id": pd.array(who.cookie_id, dtype="str"),
            "name": pd.array(who.name, dtype="str"),
            "postcode": pd.array(who.postcode, dtype="str"),
        },
    )


def _by_time(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(columns["at"], kind="stable")
    for name in list(columns):  # one column at a time keeps the peak memory low
        columns[name] = columns[name][order]
    return columns


def _event_keys(
    table: Table, prefix: str, rows: dict[str, np.ndarray], ids: pa.Array
) -> dict[str, object]:
    """The columns every event table leads with, for ``rows`` in time order: its own ids
    (``prefix`` + number), the customer's id and the time."""
    return {
        table.id_column: _strings(_ids(prefix, len(rows["at"]))),
        "customer_id": _strings(pc.take(ids, rows["cust"])),
        table.time_column: _timestamps(rows["at"]),
    }


def _orders_frame(events: _Events, ids: pa.Array) -> pd.DataFrame:
    o = _by_time(events.join(ORDER_COLUMNS, ORDER_DTYPES))
    return _in_table_order(
        ORDERS,
        {
            **_event_keys(ORDERS, "O", o, ids),
            "amount": o["amount"],
            "margin": o["margin"],
            "category": _labels(o["category"], CATEGORIES),
            "channel": _labels(o["channel"], ORDER_CHANNELS),
        },
    )


def _interactions_frame(events: _Events, ids: pa.Array) -> pd.DataFrame:
    c = _by_time(events.join(CONTACT_COLUMNS, CONTACT_DTYPES))
    satisfaction = c["satisfaction"].astype(np.int64)
    return _in_table_order(
        INTERACTIONS,
        {
            **_event_keys(INTERACTIONS, "I", c, ids),
            "channel": _labels(c["channel"], INTERACTION_CHANNELS),
            "kind": _labels(c["kind"], INTERACTION_KINDS),
            "direction": _labels(c["direction"], DIRECTIONS),
            "duration_s": c["duration"],
            "satisfaction": pd.arrays.IntegerArray(satisfaction, satisfaction == 0),
            "resolved": _nullable_bool(c["resolved"]),
        },
    )


def _campaign_frame(events: _Events, ids: pa.Array) -> pd.DataFrame:
    d = _by_time(events.join(DECISION_COLUMNS, DECISION_DTYPES))
    return _in_table_order(
        CAMPAIGN_LOG,
        {
            **_event_keys(CAMPAIGN_LOG, "D", d, ids),
            "action": _labels(d["action"], ACTIONS),
            "channel": _labels(d["action"], ACTION_CHANNELS),
            "propensity": d["propensity"],
            "outcome": _nullable_bool(d["outcome"]),
            "revenue": d["revenue"],
            "responded_at": _nullable_timestamps(d["responded"]),
            # the history is an old CRM's export: it knew no control group
            "group": pd.Series([None] * len(d["at"]), dtype="str"),
        },
    )


# --- public API -----------------------------------------------------------------------
def _resolve_times(
    end: datetime | None, truth_as_of: datetime | None, horizon_days: int, years: float
) -> tuple[datetime, datetime, datetime]:
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be >= 1, got {horizon_days}")
    if years <= 0:
        raise ValueError(f"years must be > 0, got {years}")
    if end is None:
        end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = _utc(end, "end")
    start = end - timedelta(days=round(years * 365.25))
    as_of = _utc(truth_as_of, "truth_as_of") if truth_as_of else end - timedelta(days=horizon_days)
    if not start < as_of <= end:
        raise ValueError(
            f"truth_as_of {as_of:%Y-%m-%d %H:%M} must lie in the simulated history "
            f"({start:%Y-%m-%d} .. {end:%Y-%m-%d}]"
        )
    return start, as_of, end


def generate(
    customers: int,
    seed: int,
    end: datetime | None = None,
    truth_as_of: datetime | None = None,
    horizon_days: int = 90,
    years: float = 3.0,
    progress: Progress | None = None,
    *,
    campaigns: bool = True,
    spend_sigma: float = SPEND_SIGMA,
    scenario: Scenario | None = None,
) -> DemoData:
    """Simulate ``customers`` customers over ``years`` up to ``end`` (exclusive).

    ``end`` defaults to today 00:00 UTC, ``truth_as_of`` to ``end - horizon_days``. The
    same arguments give the same data. Other worlds, for tests: ``campaigns=False`` runs no
    campaign wave (an empty campaign log, as in transaction-only data); ``spend_sigma``
    sets the spread of the customers' lognormal mean order value (heavier tail above
    :data:`SPEND_SIGMA`). ``scenario`` changes the world from a date
    (:mod:`rapport.scenarios`); before that date the data equals the unchanged world's.
    """
    if customers < 1:
        raise ValueError(f"customers must be >= 1, got {customers}")
    say = progress or (lambda _message: None)
    start, as_of, end = _resolve_times(end, truth_as_of, horizon_days, years)
    # spawned children depend only on their position: a third stream leaves the others as
    # they were, so adding the wallets changed no other table (nor did the identities')
    sim_seed, truth_seed, wallet_seed, identity_seed = np.random.SeedSequence(seed).spawn(4)
    rng = np.random.default_rng(sim_seed)
    say(f"drawing {customers:,} customers")
    pop = _population(rng, customers, _micros(start), _micros(end), spend_sigma)
    extra_days = horizon_days + RESPONSE_WINDOW_DAYS + 7
    cal = _Calendar.build(_micros(start), _micros(end), _micros(as_of), extra_days)
    sim = _Simulator(rng, pop, cal, _wave_weeks(cal) if campaigns else set(), scenario)
    sim.run(say)
    assert sim.snapshot is not None
    ids = _ids("C", customers)
    snap, as_of_us = sim.snapshot, _micros(as_of)
    truth_ids = ids[: len(snap.alive)]
    say(f"computing ground truth for {len(truth_ids):,} customers")
    truth_rng = np.random.default_rng(truth_seed)
    wallets = _wallets(np.random.default_rng(wallet_seed), pop, snap)
    truth_customers = _truth_customers(
        truth_rng, pop, snap, cal, as_of_us, horizon_days, truth_ids, wallets
    )
    truth_actions = _truth_actions(pop, snap, cal, as_of_us, truth_ids)
    say("building tables: customers, orders")
    who = identities(np.random.default_rng(identity_seed), _strings(ids).tolist())
    customers_frame = _customers_frame(pop, ids, who)
    orders = _orders_frame(sim.orders, ids)
    say("building tables: interactions, campaign_log")
    interactions = _interactions_frame(sim.contacts, ids)
    if scenario is not None:
        interactions = scenario.recorded(interactions, customers_frame)
    return DemoData(
        customers=customers_frame,
        orders=orders,
        interactions=interactions,
        campaign_log=_campaign_frame(sim.decisions, ids),
        truth_customers=truth_customers,
        truth_actions=truth_actions,
        truth_identity=who.truth,
        end=end,
        truth_as_of=as_of,
        horizon_days=horizon_days,
        seed=seed,
    )


def write(
    data: DemoData, out_dir: Path, fmt: Literal["parquet", "csv"] = "parquet"
) -> dict[str, Path]:
    """Write one ``<table>.<fmt>`` file per table; the bytes depend only on the data."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, frame in data.tables().items():
        path = out_dir / f"{name}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path, index=False, compression="zstd")
        else:
            frame.to_csv(path, index=False)
        paths[name] = path
    return paths
