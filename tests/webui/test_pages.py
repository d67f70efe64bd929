"""The web page's pieces without a browser: saved definitions round-trip to what
``rapport targets --list`` reads, the builder form's errors, the sign-in rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.tables.lists import TargetError, definition_texts, save_definition
from models.targeting import saved_definitions
from serving.auth import add_key
from ui.app import definition_of
from ui.session import Sessions, SignInError


def test_a_saved_definition_is_what_rapport_targets_reads(tmp_path: Path) -> None:
    path = tmp_path / "target_lists.yaml"
    path.write_text("lists:\n  mine:\n    filter: abc_tier == 'A'\n    top: 5\n")
    form = {"filter": "churn_probability > 0.5", "budget": "1,500", "profitable_only": "on"}
    definition = definition_of(form, "spring")
    save_definition(path, "spring", definition.model_dump(exclude_none=True, exclude={"name"}))
    saved = saved_definitions(definition_texts(path))
    assert saved["spring"] == definition and saved["spring"].budget == 1500
    assert saved["mine"].top == 5  # other lists are kept
    with pytest.raises(TargetError, match="list name"):
        save_definition(path, "../evil", {})


def test_the_builder_form_names_the_bad_field() -> None:
    with pytest.raises(TargetError, match="Budget must be a number"):
        definition_of({"budget": "lots"})
    with pytest.raises(TargetError, match="Top N must be a whole number"):
        definition_of({"top": "2.5"})
    assert definition_of({"filter": "  ", "action": ""}).filter is None


def test_sign_in_needs_a_ui_or_targets_key(tmp_path: Path) -> None:
    sessions = Sessions(None, tmp_path, seconds=60)
    ui_key, targets_key = add_key(tmp_path, ["ui"]), add_key(tmp_path, ["targets"])
    admin, score = add_key(tmp_path, ["admin"]), add_key(tmp_path, ["score"])
    for key in (ui_key, targets_key, admin):
        session = sessions.sign_in(key)
        assert sessions.get(session.sid) is session and len(session.csrf) >= 32
    for key, why in ((score, "scope"), ("rk_unknown", "not known"), ("", "not known")):
        with pytest.raises(SignInError, match=why):
            sessions.sign_in(key)
    session = sessions.sign_in(ui_key)
    sessions.sign_out(session.sid)
    assert sessions.get(session.sid) is None
    short = Sessions(None, tmp_path, seconds=-1)  # expired as soon as made
    assert short.get(short.sign_in(ui_key).sid) is None
