"""Request and response contracts of the scoring service (pydantic; BentoML's OpenAPI).

Requests are strict about shape (unknown fields are refused, so a typo is a 422 and not a
silently ignored option) and never echo their input in error messages
(``hide_input_in_errors``): validation errors end up in logs, customer data must not.

The event models mirror the data contract (:mod:`features.contract`) column for column;
a test holds them equal, so a contract change cannot leave the service behind.
Timestamps without a time zone are read as UTC, as ingest does.

Events and ``/score`` name their customer by ``customer_id`` *or* by identifiers
(:class:`Identified`: ``email``, ``phone``, ``loyalty_card``, ``cookie_id``, ``name`` with
``postcode``), which the
service resolves against the online identifier index (:mod:`features.online.identifiers`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StringConstraints,
    model_validator,
)

from features.contract import IDENTIFIER_FIELDS, INTERACTION_CHANNELS, MAX_OUTCOME_REVENUE
from features.identity import (
    normalise_email,
    normalise_name,
    normalise_phone,
    normalise_postcode,
)
from features.timeutil import as_utc
from models.results import CustomerScore
from rapport.settings import get_settings

_REQUEST = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)
_RESPONSE = ConfigDict(ser_json_inf_nan="null")
#: events before this are data errors (default dates, epoch zero), as in ingest
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)


def _plausible(value: datetime) -> datetime:
    """Timestamps from the past (after 1990): an event cannot happen in the future."""
    value = as_utc(value)
    if value < EARLIEST:
        raise ValueError(f"is before {EARLIEST:%Y-%m-%d} (implausible)")
    if value > datetime.now(UTC):
        raise ValueError("is in the future")
    return value


#: the largest amount (order, margin, budget) taken: beyond it is a data error, and sums of
#: such amounts would overflow the features and the budget's arithmetic
MAX_AMOUNT = 1e12
#: the longest interaction (seconds, a year) and the longest target list (customers)
MAX_DURATION_S = 366 * 86400.0
MAX_LIST = 100_000_000

Amount = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Instant = Annotated[datetime, AfterValidator(as_utc)]
EventTime = Annotated[datetime, AfterValidator(_plausible)]


def _email(value: str) -> str:
    if normalise_email(value) is None:
        raise ValueError("is not an e-mail address")
    return value


def _phone(value: str) -> str:
    if normalise_phone(value, get_settings().phone_region) is None:
        raise ValueError("is not a valid phone number (in RAPPORT_PHONE_REGION without +)")
    return value


def _name(value: str) -> str:
    if normalise_name(value) is None:
        raise ValueError("is not a full name (a given and a family name, letters only)")
    return value


def _postcode(value: str) -> str:
    if normalise_postcode(value) is None:
        raise ValueError("is not a postcode (3 to 10 letters and digits, with a digit)")
    return value


_Token = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
_Name = Annotated[str, StringConstraints(min_length=3, max_length=200), AfterValidator(_name)]
_Postcode = Annotated[
    str, StringConstraints(min_length=3, max_length=16), AfterValidator(_postcode)
]
Email = Annotated[str, StringConstraints(min_length=3, max_length=254), AfterValidator(_email)]
Phone = Annotated[str, StringConstraints(min_length=3, max_length=64), AfterValidator(_phone)]


class Identified(BaseModel):
    """Who: ``customer_id``, or one or more identifiers in its place (personal data: never
    logged or echoed). Identifiers that name two different customers are refused (409);
    unknown ones create a provisional customer for an event, a 404 for a score."""

    model_config = _REQUEST

    email: Email | None = Field(default=None, description="In place of customer_id.")
    phone: Phone | None = Field(
        default=None, description="In place of customer_id; E.164 or in RAPPORT_PHONE_REGION."
    )
    loyalty_card: _Token | None = Field(default=None, description="In place of customer_id.")
    cookie_id: _Token | None = Field(default=None, description="In place of customer_id.")
    name: _Name | None = Field(
        default=None, description="With postcode, in place of customer_id: a full name."
    )
    postcode: _Postcode | None = Field(default=None, description="With name.")

    @model_validator(mode="after")
    def _one_way(self) -> Identified:
        given = [k for k in IDENTIFIER_FIELDS if getattr(self, k) is not None]
        if getattr(self, "customer_id", None) is None and not given:
            raise ValueError(
                "send customer_id or an identifier ("
                + ", ".join(IDENTIFIER_FIELDS[:-2])
                + ", or name with postcode)"
            )
        if (self.name is None) != (self.postcode is None):
            raise ValueError("name and postcode go together: send both, or neither")
        if getattr(self, "customer_id", None) is not None and given:
            raise ValueError("send customer_id or identifiers, not both")
        return self

    def identifiers(self) -> dict[str, str]:
        """The identifiers given, by kind."""
        return {k: v for k in IDENTIFIER_FIELDS if (v := getattr(self, k)) is not None}


# --------------------------------------------------------------------------- scoring
class ScoreContext(BaseModel):
    """Where and why the customer is in touch; free extra keys are passed to the scorer."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True, frozen=True)

    channel: Text | None = Field(
        default=None, description="Touchpoint: call, web, chat, store, ..."
    )
    reason: Text | None = Field(default=None, description="Why the customer is in touch.")


class CustomerAttributes(BaseModel):
    """What a caller may know about a customer the store has never seen."""

    model_config = _REQUEST

    signup_at: Instant | None = Field(default=None, description="Default: now (tenure 0).")
    region: Text | None = None
    acquisition_channel: Text | None = None
    preferred_channel: Text | None = None
    email_opt_in: bool | None = None
    phone_opt_in: bool | None = None
    sms_opt_in: bool | None = None


class ColdStart(BaseModel):
    """Score an unknown customer from these attributes instead of answering 404."""

    model_config = _REQUEST

    attributes: CustomerAttributes = CustomerAttributes()


class ScoreOptions(BaseModel):
    """Options shared by ``/score`` and ``/score_batch``."""

    model_config = _REQUEST

    top_k: int = Field(default=3, ge=1, le=20, description="Next best actions to return.")
    explain: bool = Field(default=True, description="Return the churn reasons.")
    include_features: bool = Field(default=False, description="Return the feature vector used.")
    as_of: Instant | None = Field(
        default=None, description="Score as of this instant instead of now (admin scope only)."
    )


class ScoreRequest(ScoreOptions, Identified):
    customer_id: Id | None = None
    context: ScoreContext = ScoreContext()
    cold_start: ColdStart | None = Field(
        default=None, description="Attributes to score from when the customer is unknown."
    )


class BatchItem(Identified):
    """One customer of a batch: ``customer_id`` or identifiers, as ``/score`` takes them."""

    model_config = _REQUEST

    customer_id: Id | None = None
    context: ScoreContext = ScoreContext()


class ScoreBatchRequest(ScoreOptions):
    customers: list[BatchItem] = Field(
        min_length=1, description="At most RAPPORT_MAX_BATCH_SIZE customers."
    )
    explain: bool = Field(default=False, description="Return the churn reasons.")


class Meta(BaseModel):
    """Which models and feature set produced a response."""

    models: dict[str, str] = Field(description="Model name -> registered version.")
    feature_set: str
    catalog: str | None = None
    segments: str | None = Field(
        default=None, description="Version of the segment cut points (RFM / ABC) in use."
    )


class Score(CustomerScore):
    """One customer's scores and decision: the scorer's result plus who was scored, as of
    when, and the decision id to quote in /feedback."""

    customer_id: str
    decision_id: str = Field(description="Quote it in /feedback.")
    as_of: datetime
    cold_start: bool = False
    features: dict[str, float | str | None] | None = None


class ScoreResponse(Score):
    meta: Meta


class BatchError(BaseModel):
    #: None for an item named by identifiers that named no one customer (never echoed)
    customer_id: str | None
    status: int
    error: str
    item: int | None = Field(
        default=None, description="The item's position in `customers` (from 0)."
    )


class ScoreBatchResponse(BaseModel):
    results: list[Score]
    errors: list[BatchError] = Field(description="Customers that could not be scored.")
    meta: Meta


# --------------------------------------------------------------------------- events
class OrderEvent(Identified):
    """An order (negative amount: a return), as in the contract's ``orders`` table; the
    customer by ``customer_id`` or by identifiers."""

    model_config = _REQUEST

    order_id: Id
    customer_id: Id | None = None
    ordered_at: EventTime
    amount: Amount
    margin: Amount | None = None
    category: Text | None = None
    channel: Text | None = None


class InteractionEvent(Identified):
    """A touchpoint, as in the contract's ``interactions`` table; the customer by
    ``customer_id`` or by identifiers."""

    model_config = _REQUEST

    interaction_id: Id
    customer_id: Id | None = None
    occurred_at: EventTime
    channel: Literal[INTERACTION_CHANNELS]  # type: ignore[valid-type]
    kind: Text
    direction: Literal["inbound", "outbound"] | None = None
    duration_s: FiniteFloat | None = Field(default=None, ge=0, le=MAX_DURATION_S)
    satisfaction: int | None = Field(default=None, ge=1, le=5)
    resolved: bool | None = None


class EventsRequest(BaseModel):
    # "at least one event" in the OpenAPI document too, not only in the validator below
    model_config = ConfigDict(
        **_REQUEST,
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"minItems": 1}}}
                for name in ("orders", "interactions")
            ]
        },
    )

    orders: list[OrderEvent] = []
    interactions: list[InteractionEvent] = []

    @model_validator(mode="after")
    def _not_empty(self) -> EventsRequest:
        if not self.orders and not self.interactions:
            raise ValueError("send at least one order or interaction")
        return self

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """Contract rows per table (non-empty tables only), with the identifiers given in
        place of ``customer_id`` (:func:`features.online.identifiers.route_events` takes
        them out)."""
        out = {
            "orders": [e.model_dump() for e in self.orders],
            "interactions": [e.model_dump() for e in self.interactions],
        }
        return {table: rows for table, rows in out.items() if rows}


class EventRoute(BaseModel):
    """The customer one event went to."""

    table: Literal["orders", "interactions"]
    id: str = Field(description="The event's order_id or interaction_id.")
    customer_id: str
    matched_by: str = Field(
        description="customer_id, the identifier kind that named the customer, or "
        "'provisional': no customer held the identifiers, one was created."
    )
    provisional: bool = Field(
        description="The customer is provisional (created from an identifier) until "
        "`rapport resolve` merges it."
    )


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events in the request, now durable.")
    new: int = Field(description="Events the customers' records did not hold yet.")
    duplicates: int = Field(description="Events already known (same id, same content).")
    customers: list[str]
    routes: list[EventRoute] = Field(description="The customer each event went to.")
    meta: Meta


# --------------------------------------------------------------------------- feedback
class FeedbackRequest(BaseModel):
    model_config = _REQUEST

    decision_id: Id
    outcome: bool = Field(description="Did the customer respond (convert)?")
    revenue: FiniteFloat | None = Field(
        default=None,
        ge=0,
        le=MAX_OUTCOME_REVENUE,
        description=f"Revenue attributed to the action: 0..{MAX_OUTCOME_REVENUE:,.0f} "
        "(larger values are taken for errors: 422).",
    )
    responded_at: EventTime | None = Field(default=None, description="Default: now.")


class FeedbackResponse(BaseModel):
    """The outcome is durable; it is matched to its decision by ``rapport ingest --outbox``
    (a decision not in the warehouse yet keeps it pending there, never lost)."""

    decision_id: str
    recorded_at: datetime
    status: Literal["accepted"] = Field(
        default="accepted",
        description="Durable; matched to the decision at the next ingest (an unknown "
        "decision: quarantined with a reason and retried on every ingest).",
    )
    meta: Meta


# --------------------------------------------------------------------------- target lists
class TargetsRequest(BaseModel):
    """A target list from the latest batch scores (``rapport score``); the options of
    ``rapport targets``. Consent, contact policy, cool-downs, the warehouse's suppression
    list and deduplication are always applied."""

    model_config = _REQUEST

    name: Text | None = Field(default=None, description="A saved list definition by name.")
    filter: Annotated[str, StringConstraints(max_length=4000)] | None = Field(
        default=None, description="e.g. churn_probability > 0.5 and abc_tier == 'A'"
    )
    action: Text | None = Field(default=None, description="Default: best allowed action.")
    top: int | None = Field(default=None, ge=1, le=MAX_LIST)
    budget: FiniteFloat | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    sort: Text | None = Field(default=None, description="COL or COL:asc (default: value desc).")
    profitable_only: bool | None = Field(
        default=None, description="Drop customers whose expected value <= cost first."
    )
    suppress: list[Id] = Field(
        default_factory=list, max_length=100_000, description="Extra ids never to contact."
    )
    max_rows: int = Field(
        default=1000,
        ge=0,
        le=10_000,
        description="Longer lists are returned as a download link instead.",
    )
    format: Literal["parquet", "csv"] | None = Field(
        default=None,
        description="File format of the download; when set, a link is returned for any "
        "list (default: Parquet, for lists longer than max_rows only).",
    )


class TargetMember(BaseModel):
    model_config = _RESPONSE

    rank: int
    customer_id: str
    action: str
    channel: str
    expected_value: float
    cost: float
    net_value: float
    churn_probability: float | None = None
    value_mean: float | None = None
    value_p10: float | None = None
    value_p50: float | None = None
    value_p90: float | None = None
    abc_tier: str | None = None
    rfm_segment: str | None = None


class TargetsResponse(BaseModel):
    model_config = _RESPONSE

    list_id: str
    name: str | None
    run_id: str = Field(description="The scoring run the list was selected from.")
    scores_as_of: datetime
    features_as_of: datetime = Field(
        description="When the consent, contact history and suppressions the list applied "
        "were read: now, or the scoring run's as_of while a batch job holds the warehouse."
    )
    count: int
    total_expected_value: float
    total_cost: float
    stats: dict[str, Any] = Field(description="Removed per step, segment and action mix.")
    members: list[TargetMember] | None = Field(
        default=None, description="The list, when it has at most max_rows customers."
    )
    download_url: str | None = Field(
        default=None,
        description="Relative URL of the list as a file (GET, key scope 'targets'), when "
        "it is longer than max_rows or a format was asked for.",
    )
    meta: Meta


# --------------------------------------------------------------------------- errors
class FieldError(BaseModel):
    field: str
    message: str
    type: str


class ErrorResponse(BaseModel):
    error: str
    fields: list[FieldError] | None = None
