"""Signing in to the page with an API key, the session cookie and the CSRF token.

The page accepts the service's own keys (:class:`serving.auth.KeyRing`: the
``RAPPORT_API_KEYS`` setting plus ``<home>/api_keys``, re-read at every sign-in so a key
added with ``rapport keys add`` works at once): one with the ``ui`` or ``targets`` scope
(``admin`` has both) signs in. The key is checked once and never kept; the browser gets
a random session id in a cookie that is ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it) and expiring (``max_age``, also
enforced here). Sessions live in the UI process's memory: restarting the page signs
everyone out.

Every form carries the session's CSRF token (htmx sends it as the ``X-CSRF-Token`` header);
a POST without the matching token is refused with 403. The sign-in form, before any
session exists, uses a double-submit token: a random value in a ``SameSite=Strict``
cookie that the form must repeat.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.auth import KeyRing

#: scopes that may sign in (``admin`` grants every scope)
UI_SCOPES = ("ui", "targets")
SESSION_COOKIE = "rapport_session"
SIGNIN_COOKIE = "rapport_signin"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
#: a session lasts this long after sign-in
SESSION_SECONDS = 8 * 3600


@dataclass
class Session:
    sid: str
    scopes: frozenset[str]
    expires: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


class SignInError(ValueError):
    """A key that may not sign in; the message is shown on the sign-in form."""


class Sessions:
    """The signed-in sessions of this process."""

    def __init__(self, api_keys: str | None, home: Path, seconds: int = SESSION_SECONDS) -> None:
        self.api_keys = api_keys
        self.home = home
        self.seconds = seconds
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def sign_in(self, key: str) -> Session:
        """A new session for ``key``, or SignInError (unknown key, or no ``ui`` scope)."""
        ring = KeyRing.load(self.api_keys, self.home)
        scopes = ring.scopes(f"Bearer {key.strip()}") if key.strip() else None
        if scopes is None:
            raise SignInError(
                "This key is not known. Check it, or create one with "
                "`rapport keys add NAME --scopes ui`."
            )
        if not scopes & set(UI_SCOPES):
            raise SignInError("This key may not sign in: it needs the 'ui' or 'targets' scope.")
        session = Session(secrets.token_urlsafe(32), scopes, time.time() + self.seconds)
        with self._lock:
            now = time.time()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            self._sessions[session.sid] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
        if session is None or session.expires <= time.time():
            return None
        return session

    def sign_out(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)


def same_token(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; a missing token never matches."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
