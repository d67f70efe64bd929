"""API keys: only hashes are configured, scopes decide 401 / 403 / allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.auth import (
    SCOPES,
    KeyConfigError,
    KeyRing,
    add_key,
    hash_key,
    key_file,
    make_key,
    parse_entries,
)


def test_make_key_configures_only_the_hash() -> None:
    plain, entry = make_key(["events", "score"])
    digest, scopes = entry.split(":")
    assert plain not in entry and digest == hash_key(plain)
    assert scopes == "score+events"  # canonical order
    assert parse_entries(entry, "test") == {digest: frozenset({"score", "events"})}


def test_two_keys_differ() -> None:
    assert make_key(["score"])[0] != make_key(["score"])[0]


@pytest.mark.parametrize(
    ("header", "needed", "status"),
    [
        (None, "score", 401),
        ("", "score", 401),
        ("Bearer ", "score", 401),
        ("Basic abc", "score", 401),
        ("Bearer not-a-key", "score", 401),
        ("Bearer {score}", "events", 403),
        ("Bearer {score}", "score", 200),
        ("bearer   {score}  ", "score", 200),
        ("Bearer {admin}", "events", 200),
        ("Bearer {admin}", "feedback", 200),
    ],
)
def test_check(header: str | None, needed: str, status: int) -> None:
    score_key, score_entry = make_key(["score"])
    admin_key, admin_entry = make_key(["admin"])
    ring = KeyRing(parse_entries(f"{score_entry},{admin_entry}", "test"))
    if header is not None:
        header = header.format(score=score_key, admin=admin_key)
    verdict = ring.check(header, needed)
    assert verdict.status == status
    assert verdict.allowed == (status == 200)
    if status == 403:
        assert needed in verdict.reason


def test_admin_grants_every_scope() -> None:
    key, entry = make_key(["admin"])
    assert KeyRing(parse_entries(entry, "test")).scopes(f"Bearer {key}") == frozenset(SCOPES)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("abc:score", "entry 1: expected '<sha256 hex"),
        (f"{'a' * 64}", "entry 1: expected"),
        (f"{'a' * 64}:score,{'b' * 64}:scor", "entry 2: unknown scope(s) ['scor']"),
        (f"{'a' * 64}:", "entry 1: a key needs at least one scope"),
    ],
)
def test_bad_entries_name_source_and_entry(text: str, fragment: str) -> None:
    with pytest.raises(KeyConfigError, match="RAPPORT_API_KEYS") as info:
        parse_entries(text, "RAPPORT_API_KEYS")
    assert fragment in str(info.value)


def test_entries_merge_scopes_and_skip_comments() -> None:
    digest = "c" * 64
    text = f"# local keys\n{digest}:score\n\n{digest.upper()}:events , \n"
    assert parse_entries(text, "file") == {digest: frozenset({"score", "events"})}


def test_key_file_and_setting_are_both_read(tmp_path: Path) -> None:
    from_file = add_key(tmp_path, ["feedback"])
    from_setting, entry = make_key(["score"])
    assert from_file not in key_file(tmp_path).read_text()
    ring = KeyRing.load(entry, tmp_path)
    assert len(ring) == 2
    assert ring.check(f"Bearer {from_file}", "feedback").allowed
    assert ring.check(f"Bearer {from_file}", "score").status == 403
    assert ring.check(f"Bearer {from_setting}", "score").allowed


def test_no_keys_refuses_everyone(tmp_path: Path) -> None:
    ring = KeyRing.load(None, tmp_path)
    assert len(ring) == 0
    assert ring.check("Bearer anything", "score").status == 401
