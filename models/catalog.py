"""The action catalog: what the next-best-action policy may do, at what cost, for whom.

Marketers edit the catalog as YAML; it is validated strictly on load so that a typo in a
rule or a forgotten consent flag fails loudly (naming the file, the action and the field)
instead of silently contacting the wrong customers. The catalog's ``version`` is a hash of
its canonical content, logged with every decision so that outcomes can be traced back to
the exact rules that produced them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import cache, cached_property
from importlib import resources
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from features.contract import NO_ACTION
from features.tables.outcomes import DEFAULT_ATTRIBUTION_DAYS, Attribution
from models.expressions import Expression, parse
from models.value import OUTPUT_COLUMNS as VALUE_FIELDS
from models.yamlconfig import Location, load_mapping, validate

#: channels that contact a person and therefore need their consent
CONSENT_CHANNELS = frozenset({"email", "call", "sms"})
#: churn score that caps the churn reduction of retained-value actions
CHURN_FIELD = "churn_probability"

ValueKind = Literal["incremental_revenue", "retained_value"]
_IDENT = r"^[a-z][a-z0-9_]*$"
_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")


class CatalogError(ValueError):
    """A catalog that cannot be used; the message names the source, action and field."""


class Action(BaseModel):
    """One thing the policy can do to a customer."""

    model_config = _STRICT

    id: str = Field(pattern=_IDENT)
    channel: str = Field(pattern=_IDENT, description="email, call, sms, none, ...")
    cost: float = Field(ge=0, description="Cost per contact (offer + channel).")
    value_kind: ValueKind = Field(
        default="incremental_revenue",
        description="incremental_revenue: revenue uplift x margin_rate; "
        "retained_value: churn reduction x predicted value x margin_rate.",
    )
    margin_rate: float = Field(default=1.0, ge=0, le=1)
    eligibility: str | None = Field(default=None, description="Rule; empty = everyone.")
    consent_field: str | None = Field(default=None, pattern=_IDENT)
    cooldown_days: int = Field(default=0, ge=0)
    attribution_days: int | None = Field(
        default=None,
        ge=1,
        le=365,
        description="Days after a decision in which an order counts as its conversion "
        "(default: the catalog's attribution_days).",
    )
    weight: float = Field(default=1.0, ge=0, description="Business lever on expected value.")
    goal: str | None = None
    description: str = ""

    _rule: Expression | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> Action:
        if self.channel in CONSENT_CHANNELS and self.consent_field is None:
            raise ValueError(
                f"channel {self.channel!r} contacts the customer: consent_field is required "
                "(e.g. email_opt_in)"
            )
        if self.id == NO_ACTION and (
            self.channel != "none" or self.cost != 0 or self.eligibility or self.consent_field
        ):
            raise ValueError(
                f"{NO_ACTION} is the control: channel 'none', cost 0, no eligibility or consent"
            )
        if self.id == NO_ACTION and self.attribution_days is not None:
            raise ValueError(
                f"{NO_ACTION} is measured with the catalog's attribution_days (so are control "
                "decisions): set that instead"
            )
        if self.eligibility:
            self._rule = parse(self.eligibility)
        return self

    @field_validator("eligibility", mode="after")
    @classmethod
    def _parses(cls, rule: str | None) -> str | None:
        """Reject a bad rule at load time (the error points at the offending token)."""
        if rule is None or not rule.strip():
            return None
        parse(rule)
        return rule

    @property
    def rule(self) -> Expression | None:
        """The parsed eligibility rule (None: always eligible)."""
        return self._rule

    @property
    def cooldown_field(self) -> str:
        """History column with the days since this action was last received (null: never)."""
        return f"days_since_action_{self.id}"

    @property
    def fields(self) -> frozenset[str]:
        """Every customer column this action's checks read."""
        names = set(self._rule.fields) if self._rule else set()
        if self.consent_field:
            names.add(self.consent_field)
        if self.cooldown_days:
            names.add(self.cooldown_field)
        return frozenset(names)


class ContactRule(BaseModel):
    """At most ``max_contacts`` actions on ``channel`` within ``window_days``."""

    model_config = _STRICT

    channel: str = Field(pattern=_IDENT)
    max_contacts: int = Field(ge=0)
    window_days: int = Field(gt=0)

    @property
    def field(self) -> str:
        """History column counting this channel's contacts in the window."""
        return f"contacts_{self.channel}_{self.window_days}d"


class ContactPolicy(BaseModel):
    """Contact pressure limits, across all actions of a channel."""

    model_config = _STRICT

    rules: tuple[ContactRule, ...] = Field(default=(), strict=False)  # YAML list -> tuple

    @model_validator(mode="after")
    def _unique(self) -> ContactPolicy:
        fields = [r.field for r in self.rules]
        if len(set(fields)) != len(fields):
            raise ValueError("contact rules repeat a channel and window")
        return self

    def for_channel(self, channel: str) -> tuple[ContactRule, ...]:
        return tuple(r for r in self.rules if r.channel == channel)


def _control_first(actions: list[Any]) -> list[Any]:
    """``no_action`` moved (or added) to the front, so that it is always action 0."""
    ids = [a.get("id") if isinstance(a, dict) else getattr(a, "id", None) for a in actions]
    if NO_ACTION not in ids:
        return [Action(id=NO_ACTION, channel="none", cost=0.0).model_dump(), *actions]
    at = ids.index(NO_ACTION)
    return [actions[at], *actions[:at], *actions[at + 1 :]]


class Catalog(BaseModel):
    """Actions (``no_action`` first), the contact policy and the goal weights."""

    model_config = _STRICT

    actions: tuple[Action, ...] = Field(strict=False)  # YAML list -> tuple
    contact_policy: ContactPolicy = ContactPolicy()
    goal_weights: dict[str, float] = Field(default_factory=dict)
    value_field: str = Field(
        default="value_p50",
        pattern=_IDENT,
        description="Predicted customer value that retained-value actions protect.",
    )
    attribution_days: int = Field(
        default=DEFAULT_ATTRIBUTION_DAYS,
        ge=1,
        le=365,
        description="Attribution window of no_action, control decisions and every action "
        "without its own.",
    )

    @model_validator(mode="before")
    @classmethod
    def _add_control(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("actions"), list | tuple):
            data = {**data, "actions": _control_first(list(data["actions"]))}
        return data

    @model_validator(mode="after")
    def _check(self) -> Catalog:
        if len(self.actions) < 2:
            raise ValueError(f"the catalog needs at least one action besides {NO_ACTION}")
        seen: set[str] = set()
        for action in self.actions:
            if action.id in seen:
                raise ValueError(f"action {action.id!r} is declared twice")
            seen.add(action.id)
        for goal, weight in self.goal_weights.items():
            if weight < 0:
                raise ValueError(f"goal weight {goal!r} must be >= 0, got {weight}")
        return self

    @cached_property
    def version(self) -> str:
        """Hash of the canonical content: same rules, same version, whatever the YAML layout."""
        # attribution windows measure outcomes, they never change a decision
        content = self.model_dump(mode="json", exclude={"attribution_days"})
        for action in content["actions"]:
            action.pop("attribution_days", None)
        payload = json.dumps(content, sort_keys=True)
        return "cat-" + hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def ids(self) -> list[str]:
        return [a.id for a in self.actions]

    def action(self, action_id: str) -> Action:
        for action in self.actions:
            if action.id == action_id:
                return action
        raise KeyError(f"catalog {self.version} has no action {action_id!r}")

    def attribution(self) -> Attribution:
        """The attribution windows of :func:`features.tables.outcomes.attribute`."""
        return Attribution(
            self.attribution_days,
            {
                a.id: a.attribution_days
                for a in self.actions
                if a.attribution_days is not None and a.id != NO_ACTION
            },
        )

    def effective_weight(self, action: Action) -> float:
        """Action weight times its goal's weight (goals without a weight count 1)."""
        goal = self.goal_weights.get(action.goal, 1.0) if action.goal else 1.0
        return action.weight * goal

    def score_needs(self) -> dict[str, tuple[str, ...]]:
        """Per action, the champion models (``churn``, ``value``) whose scores it reads: a
        retained-value action reads both, a rule reads the scores it names. Actions that
        need none are absent (an NBA policy of those trains from features alone)."""
        out = {}
        for action in self.actions:
            needs = set()
            if action.value_kind == "retained_value":
                needs |= {"churn", "value"}
            if CHURN_FIELD in action.fields:
                needs.add("churn")
            if action.fields & set(VALUE_FIELDS):
                needs.add("value")
            if needs:
                out[action.id] = tuple(sorted(needs))
        return out

    @property
    def score_fields(self) -> set[str]:
        """The score columns arbitration reads (churn probability, the value field)."""
        needed = {kind for kinds in self.score_needs().values() for kind in kinds}
        fields = {CHURN_FIELD} if "churn" in needed else set()
        return fields | ({self.value_field} if "value" in needed else set())

    @property
    def required_fields(self) -> list[str]:
        """Every customer column arbitration needs: scores, rules, consent, history."""
        names = set(self.score_fields)
        for action in self.actions:
            names |= action.fields
            names |= {rule.field for rule in self.contact_policy.for_channel(action.channel)}
        return sorted(names)

    def check_fields(self, known_fields: Iterable[str]) -> None:
        """Fail early when a rule or policy reads a column the features do not provide."""
        known = set(known_fields)
        problems = [
            f"action {a.id!r}: unknown fields {sorted(a.fields - known)}"
            for a in self.actions
            if a.fields - known
        ]
        others = self.score_fields | {r.field for r in self.contact_policy.rules}
        if others - known:
            problems.append(f"scores / contact policy: unknown fields {sorted(others - known)}")
        if problems:
            raise CatalogError(f"catalog {self.version}:\n  " + "\n  ".join(problems))


def _where(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    """'action 'x' field 'cost'' for a pydantic error location inside the raw YAML."""
    if len(loc) >= 2 and loc[0] == "actions" and isinstance(loc[1], int):
        raw = data.get("actions") or []
        index = loc[1]
        item = raw[index] if index < len(raw) else None
        name = item.get("id") if isinstance(item, dict) else None
        label = f"action {name!r}" if name else f"action #{index + 1}"
        rest = ".".join(str(p) for p in loc[2:])
        return f"{label} field {rest!r}" if rest else label
    return "field " + repr(".".join(str(p) for p in loc)) if loc else "catalog"


def parse_catalog(text: str, source: str = "<string>") -> Catalog:
    """Parse and validate catalog YAML; errors name ``source``, the action and the field."""
    data, _ = load_mapping(text, source, CatalogError, "a mapping with an 'actions' list")

    def where(loc: Location) -> str:
        actions = data.get("actions")
        if isinstance(actions, list):  # error locations count no_action first
            return f"{source}: {_where(loc, {**data, 'actions': _control_first(actions)})}"
        return f"{source}: {_where(loc, data)}"

    return validate(Catalog, data, CatalogError, "invalid action catalog", where)


@cache
def default_catalog() -> Catalog:
    """The packaged demo catalog (``models/default_catalog.yaml``), parsed once (it is
    frozen; the service builds a scorer over it on every reload)."""
    text = resources.files("models").joinpath("default_catalog.yaml").read_text("utf-8")
    return parse_catalog(text, source="models/default_catalog.yaml")
