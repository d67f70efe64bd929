"""API keys: hashed in the configuration, each with the scopes it grants.

A caller sends ``Authorization: Bearer <key>``. The service only ever stores the SHA-256
of a key (hex), next to its scopes, as ``<sha256hex>:<scope>+<scope>`` entries --
comma-separated in ``RAPPORT_API_KEYS`` (settings) and/or one per line in the workspace
file ``<home>/api_keys`` that :func:`add_key` appends to (``rapport demo`` uses it to hand
out a local key). Nothing secret is ever written down: a leaked configuration gives no key.

Scopes: ``score`` (``/score``, ``/score_batch``), ``events`` (``/events``), ``feedback``
(``/feedback``), ``targets`` (target lists), ``ui`` (signing in to the marketers' page,
:mod:`ui`; a ``targets`` key signs in too) and ``admin``, which grants every scope and may
also override ``as_of`` when scoring.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("score", "events", "feedback", "targets", "ui", "admin")
ADMIN = "admin"
#: workspace file with one key entry per line (hashes only)
KEY_FILE = "api_keys"
KEY_PREFIX = "rk_"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class KeyConfigError(ValueError):
    """A malformed key entry; the message names where it came from and which entry."""


def hash_key(plain: str) -> str:
    """SHA-256 hex of a key, the only form the service keeps."""
    return hashlib.sha256(plain.encode()).hexdigest()


def _check_scopes(scopes: Iterable[str], where: str) -> frozenset[str]:
    chosen = frozenset(s.strip() for s in scopes if s.strip())
    unknown = sorted(chosen - set(SCOPES))
    if unknown:
        raise KeyConfigError(f"{where}: unknown scope(s) {unknown}; expected some of {SCOPES}")
    if not chosen:
        raise KeyConfigError(f"{where}: a key needs at least one scope of {SCOPES}")
    return chosen


def make_key(scopes: Iterable[str]) -> tuple[str, str]:
    """A new random key and its configuration entry: ``(plain_key, "sha256hex:s1+s2")``.

    Show the plain key once to its owner; configure only the entry.
    """
    chosen = _check_scopes(scopes, "make_key")
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    return plain, f"{hash_key(plain)}:{'+'.join(s for s in SCOPES if s in chosen)}"


def parse_entries(text: str | None, source: str) -> dict[str, frozenset[str]]:
    """``sha256hex:scope+scope`` entries separated by commas or new lines -> digest: scopes.

    Blank entries and ``#`` comment lines are skipped; anything else malformed raises
    :class:`KeyConfigError` naming ``source`` and the entry number.
    """
    keys: dict[str, frozenset[str]] = {}
    lines = [line for line in (text or "").splitlines() if not line.lstrip().startswith("#")]
    entries = [e.strip() for line in lines for e in line.split(",")]
    for number, entry in enumerate((e for e in entries if e), start=1):
        where = f"{source}, entry {number}"
        digest, sep, scopes = entry.partition(":")
        digest = digest.strip().lower()
        if not sep or not _HEX64.match(digest):
            raise KeyConfigError(
                f"{where}: expected '<sha256 hex of the key>:<scope>+<scope>' "
                "(create one with serving.auth.make_key)"
            )
        keys[digest] = keys.get(digest, frozenset()) | _check_scopes(scopes.split("+"), where)
    return keys


def key_file(home: Path) -> Path:
    return Path(home) / KEY_FILE


def add_key(home: Path, scopes: Iterable[str], name: str | None = None) -> str:
    """Create a key, append its entry to the workspace key file, return the plain key.

    ``name`` (who or what the key is for) goes on a ``#`` comment line above the entry.
    """
    plain, entry = make_key(scopes)
    path = key_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        if name:
            handle.write(f"# {' '.join(name.split())}\n")
        handle.write(entry + "\n")
    return plain


def list_keys(home: Path) -> list[tuple[str, str, frozenset[str]]]:
    """``(name, digest prefix, scopes)`` of the workspace key file's entries, in order."""
    path = key_file(home)
    if not path.is_file():
        return []
    keys, name = [], ""
    for line in path.read_text("utf-8").splitlines():
        text = line.strip()
        if text.startswith("#"):
            name = text.lstrip("# ").strip()
        elif text:
            for digest, scopes in parse_entries(text, str(path)).items():
                keys.append((name, digest[:12], scopes))
            name = ""
    return keys


@dataclass(frozen=True)
class Verdict:
    """Outcome of a check: ``status`` 200 (allowed), 401 or 403, and why."""

    status: int
    reason: str
    scopes: frozenset[str] = frozenset()

    @property
    def allowed(self) -> bool:
        return self.status == 200


class KeyRing:
    """The configured keys, checked against ``Authorization`` headers."""

    def __init__(self, keys: Mapping[str, frozenset[str]]) -> None:
        self._keys = dict(keys)

    @classmethod
    def load(cls, setting: str | None, home: Path) -> KeyRing:
        """Keys from the ``RAPPORT_API_KEYS`` setting plus the workspace key file."""
        keys = parse_entries(setting, "RAPPORT_API_KEYS")
        path = key_file(home)
        if path.is_file():
            for digest, scopes in parse_entries(path.read_text("utf-8"), str(path)).items():
                keys[digest] = keys.get(digest, frozenset()) | scopes
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def scopes(self, authorization: str | None) -> frozenset[str] | None:
        """Scopes of the bearer key in the header; None when missing or unknown."""
        if not authorization:
            return None
        kind, _, token = authorization.strip().partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            return None
        granted = self._keys.get(hash_key(token.strip()))
        if granted is None:
            return None
        return frozenset(SCOPES) if ADMIN in granted else granted

    def check(self, authorization: str | None, needed: str) -> Verdict:
        """401 without a valid key, 403 when the key lacks ``needed``."""
        granted = self.scopes(authorization)
        if granted is None:
            missing = not authorization
            return Verdict(
                401,
                "missing API key: send 'Authorization: Bearer <key>'"
                if missing
                else "invalid API key",
            )
        if needed not in granted:
            return Verdict(403, f"this API key lacks the '{needed}' scope", granted)
        return Verdict(200, "ok", granted)
