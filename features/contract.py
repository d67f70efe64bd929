"""The data contract: the four input tables (and the outcomes file), their columns and types.

Every other module (ingest, features, the online store, the simulator) reads the column
lists from here, so the contract is written down exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnType = Literal["string", "timestamp", "float", "int", "bool"]

#: DuckDB type used in the warehouse for each contract type.
DUCKDB_TYPES: dict[ColumnType, str] = {
    "string": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "float": "DOUBLE",
    "int": "BIGINT",
    "bool": "BOOLEAN",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    required: bool = True
    #: allowed values for categorical string columns (None: free text)
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Table:
    name: str
    id_column: str
    #: the event time (None for customers, whose reference time is signup_at)
    time_column: str
    columns: tuple[Column, ...]
    #: identifier columns a file of this table may carry to name a row's customer in place
    #: of ``customer_id`` (resolved at ingest, never stored with the event)
    identifiers: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name!r} has no column {name!r}")


INTERACTION_CHANNELS = ("call", "email", "web", "chat", "store", "sms", "visit")
INTERACTION_KINDS = (
    "inquiry",
    "complaint",
    "service",
    "open",
    "click",
    "visit",
    "meeting",
    "sent",
)

#: a logged decision's group: the control group gets no policy action; treated customers get
#: the policy's greedy choice, or an exploration draw ("explore")
CONTROL, TREATED, EXPLORE = "control", "treated", "explore"
DECISION_GROUPS = (CONTROL, TREATED, EXPLORE)

#: the identifier kinds and the columns each is given in (features/identity.py normalises
#: them): a name is an identifier only with its postcode, two columns making one kind
IDENTIFIER_COLUMNS: dict[str, tuple[str, ...]] = {
    "email": ("email",),
    "phone": ("phone",),
    "loyalty_card": ("loyalty_card",),
    "cookie_id": ("cookie_id",),
    "name_postcode": ("name", "postcode"),
}
#: the identifier kinds (what is normalised, hashed, resolved and indexed)
IDENTIFIERS = tuple(IDENTIFIER_COLUMNS)
#: the identifier columns (of ``customers``, and optional on orders and interactions)
IDENTIFIER_FIELDS = tuple(c for columns in IDENTIFIER_COLUMNS.values() for c in columns)

CUSTOMERS = Table(
    name="customers",
    id_column="customer_id",
    time_column="signup_at",
    columns=(
        Column("customer_id", "string"),
        Column("signup_at", "timestamp"),
        Column("region", "string", required=False),
        Column("acquisition_channel", "string", required=False),
        Column("preferred_channel", "string", required=False),
        Column("email_opt_in", "bool", required=False),
        Column("phone_opt_in", "bool", required=False),
        Column("sms_opt_in", "bool", required=False),
        # identifiers (personal data, never logged), kept as they came; resolution reads
        # them in normal form (features/identity.py) to find one person behind many records
        Column("email", "string", required=False),
        Column("phone", "string", required=False),
        Column("loyalty_card", "string", required=False),
        Column("cookie_id", "string", required=False),
        Column("name", "string", required=False),  # full name: with postcode, one identifier
        Column("postcode", "string", required=False),
    ),
)

ORDERS = Table(
    name="orders",
    id_column="order_id",
    time_column="ordered_at",
    columns=(
        Column("order_id", "string"),
        Column("customer_id", "string"),
        Column("ordered_at", "timestamp"),
        Column("amount", "float"),
        Column("margin", "float", required=False),
        Column("category", "string", required=False),
        Column("channel", "string", required=False),
    ),
    identifiers=IDENTIFIER_FIELDS,
)

INTERACTIONS = Table(
    name="interactions",
    id_column="interaction_id",
    time_column="occurred_at",
    columns=(
        Column("interaction_id", "string"),
        Column("customer_id", "string"),
        Column("occurred_at", "timestamp"),
        Column("channel", "string", choices=INTERACTION_CHANNELS),
        Column("kind", "string"),
        Column("direction", "string", required=False, choices=("inbound", "outbound")),
        Column("duration_s", "float", required=False),
        Column("satisfaction", "int", required=False),
        Column("resolved", "bool", required=False),
    ),
    identifiers=IDENTIFIER_FIELDS,
)

CAMPAIGN_LOG = Table(
    name="campaign_log",
    id_column="decision_id",
    time_column="decided_at",
    columns=(
        Column("decision_id", "string"),
        Column("customer_id", "string"),
        Column("decided_at", "timestamp"),
        Column("action", "string"),
        Column("channel", "string"),
        # the probability with which the logging policy chose the action; most CRM exports
        # have none (null: unknown), and next-best-action training then estimates it
        Column("propensity", "float", required=False),
        Column("outcome", "bool", required=False),
        Column("revenue", "float", required=False),
        Column("responded_at", "timestamp", required=False),
        # who the decision was for: the always-on control group (no policy action), the
        # policy's greedy choice, or an exploration draw (features/control.py); null: unknown
        Column("group", "string", required=False, choices=DECISION_GROUPS),
    ),
)

#: the most revenue one outcome may carry (per decision, in the currency of the orders):
#: larger values are taken for data errors (cents as units, a stray 1e9) -- ``POST
#: /feedback`` answers 422, ingest quarantines the row
MAX_OUTCOME_REVENUE = 1_000_000.0

#: outcomes reported for logged decisions (``rapport ingest`` file ``outcomes.csv|parquet``,
#: and ``POST /feedback`` through the outbox). Not a warehouse table of its own: rows are
#: versions of a decision's outcome, kept by :mod:`features.tables.outcomes`.
OUTCOMES = Table(
    name="outcomes",
    id_column="decision_id",
    time_column="responded_at",
    columns=(
        Column("decision_id", "string"),
        Column("outcome", "bool"),
        Column("revenue", "float", required=False),
        # when the customer responded (null: unknown)
        Column("responded_at", "timestamp", required=False),
        # when the source stated the outcome (orders corrections; null: the ingest time)
        Column("recorded_at", "timestamp", required=False),
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (CUSTOMERS, ORDERS, INTERACTIONS, CAMPAIGN_LOG)}
#: event tables, in the order features and the online store use them
EVENT_TABLES: tuple[Table, ...] = (ORDERS, INTERACTIONS, CAMPAIGN_LOG)

#: the control action that always exists in the campaign log and the action catalog
NO_ACTION = "no_action"

#: the customer columns the online store and features carry: every column but the
#: identifiers (personal data stays in the warehouse, where ``rapport forget`` reaches it)
CUSTOMER_ATTRIBUTES: tuple[str, ...] = tuple(
    c for c in CUSTOMERS.column_names if c not in IDENTIFIER_FIELDS
)
