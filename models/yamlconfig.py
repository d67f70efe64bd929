"""The one way a YAML configuration (catalog, alert thresholds, list definitions) is read.

Each configuration is a pydantic model over a YAML mapping; what they share is how a bad
file is reported: the source, where in it, and pydantic's message said for people.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Location = tuple[int | str, ...]
Where = Callable[[Location], str]
M = TypeVar("M", bound=BaseModel)


def load_mapping(
    text: str, source: str, error: type[Exception], expected: str
) -> tuple[dict[str, Any], yaml.Node | None]:
    """The YAML mapping in ``text`` and its node tree (for line numbers).

    Raises ``error`` naming ``source`` for text that is not YAML, or for YAML that is not
    a mapping (``expected`` says what the mapping should hold).
    """
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{source}: expected {expected}, got {type(data).__name__}")
    return data, node


def message(err: Any, unknown: str = "unknown key (typo?)") -> str:
    """pydantic's message for one error, without its 'Value error, ' prefix; ``unknown``
    for a key the model does not have."""
    if err["type"] == "extra_forbidden":
        return unknown
    return str(err["msg"]).removeprefix("Value error, ")


def problems(exc: ValidationError, where: Where, unknown: str = "unknown key (typo?)") -> list[str]:
    """``where(loc): message`` for every error of ``exc``."""
    return [f"{where(tuple(err['loc']))}: {message(err, unknown)}" for err in exc.errors()]


def dotted(loc: Location) -> str:
    """``a.b.0`` for a pydantic location."""
    return ".".join(str(part) for part in loc)


def line_of(node: yaml.Node | None, loc: Location) -> int | None:
    """1-based line of the YAML node at ``loc`` (the deepest one that exists)."""
    line = None if node is None else node.start_mark.line + 1
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == str(key):
                node, line = v, k.start_mark.line + 1
                break
        else:
            break
    return line


def at_line(source: str, node: yaml.Node | None) -> Where:
    """``source:line N: a.b`` for a location: where an operator finds it in the file."""

    def where(loc: Location) -> str:
        line = line_of(node, loc)
        return f"{source}:{f'line {line}' if line else '?'}: {dotted(loc) or '(top)'}"

    return where


def validate(
    model: type[M],
    data: dict[str, Any],
    error: type[Exception],
    title: str,
    where: Where,
    unknown: str = "unknown key (typo?)",
) -> M:
    """``model`` from ``data``, or ``error``: ``title``, then one indented line per problem
    (``where(loc): message``), so a file with several mistakes is fixed in one pass."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{title}\n  " + "\n  ".join(problems(exc, where, unknown))) from None
