"""Customer identifiers, normalised: the one place that says what an e-mail or a phone is.

Customers may carry ``email``, ``phone``, ``loyalty_card``, ``cookie_id`` and ``name``
with ``postcode`` (:data:`features.contract.IDENTIFIERS`, the kinds;
:data:`~features.contract.IDENTIFIER_COLUMNS`, the columns each is given in). The
warehouse keeps them as they came (raw data is immutable); resolution
(:mod:`features.resolve`) compares them only in the form made here:

* e-mail: trimmed and lower-cased; it must look like ``local@domain.tld`` (one ``@``, no
  spaces, a dot in the domain), otherwise it is unusable;
* phone: E.164 (``+447911123456``) through ``phonenumbers``, numbers without a country
  code read in the default region (setting ``RAPPORT_PHONE_REGION``); a number that does
  not parse or is not a valid number there is unusable;
* loyalty card and cookie id: trimmed (case kept: card systems and cookies may be
  case-sensitive);
* name with postcode (one identifier, ``name|POSTCODE``; unusable unless both are): the
  name without accents, case folded, titles (``Mr``, ``Dr`` ...) dropped, apostrophes
  removed, hyphens, dots and commas read as spaces, whitespace collapsed, at least two
  words of letters (a given and a family name); the postcode upper-cased without spaces
  or hyphens, 3 to 10 letters and digits with at least one digit (the rule holds for UK,
  US, Canadian, Dutch, German ... postcodes alike, so it needs no region).

Which identifiers link two records *by themselves* (:func:`links_alone`): an e-mail and a
loyalty card; a phone only when it is a personal number (a mobile: a landline, a VoIP or a
shared-cost number is a household's or an office's, held by several people); a cookie
never (devices are shared); a name with postcode only where its records do not disagree on
a mobile or a card (a father and son of one name at one address are two people: the rule
needs the group, :func:`features.resolve.exact_links`).

An unusable value becomes null and is counted under a reason (:class:`Normalised`), never
an error: one bad cell must not stop a resolution. Identifiers are personal data: nothing
here logs or quotes a value, and the reasons name only the identifier's kind.

Outside the warehouse an identifier exists only as a *keyed hash* (:func:`hash_identifier`,
HMAC-SHA256 of the kind and the normal form under the workspace's secret key,
``<home>/identity.key``, :func:`identity_key`): the online store's identifier index and
the ids of provisional customers (:func:`provisional_id`) are made of it, so neither can
be reversed or matched against a list of e-mails without the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import phonenumbers

from features.contract import IDENTIFIER_COLUMNS, IDENTIFIERS
from features.durable import fsync_paths

#: the default region for phone numbers without a country code (``RAPPORT_PHONE_REGION``)
DEFAULT_PHONE_REGION = "GB"

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")


def check_region(region: str) -> str:
    """``region`` as an ISO 3166 code ``phonenumbers`` knows (upper case), or ValueError."""
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"phone region {region!r} is not a region code phonenumbers knows")
    return code


def _text(value: object) -> str | None:
    """The value as trimmed text, None when it is absent or blank."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):  # type: ignore[call-overload]
        return None
    text = str(value).strip()
    return text or None


def normalise_email(value: object) -> str | None:
    """The e-mail trimmed and lower-cased, or None when absent or not an address."""
    text = _text(value)
    if text is None:
        return None
    text = text.lower()
    return text if _EMAIL.fullmatch(text) else None


def normalise_phone(value: object, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """The phone number in E.164, or None when absent, unparsable or not a valid number
    (numbers without a country code are read in ``region``)."""
    text = _text(value)
    if text is None:
        return None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


#: phone number types several people share (a household's landline, an office's VoIP line,
#: a company's service number): the same such number is no evidence of one person
SHARED_PHONE_TYPES = frozenset(
    {
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.VOIP,
        phonenumbers.PhoneNumberType.TOLL_FREE,
        phonenumbers.PhoneNumberType.SHARED_COST,
        phonenumbers.PhoneNumberType.UAN,
        phonenumbers.PhoneNumberType.PREMIUM_RATE,
    }
)


def personal_phone(normal: str) -> bool:
    """Whether a phone in E.164 is one person's (a mobile, or a number whose type the
    numbering plan does not tell, like the US's ``FIXED_LINE_OR_MOBILE``), not a
    household's landline or another shared line (:data:`SHARED_PHONE_TYPES`)."""
    try:
        number = phonenumbers.parse(normal, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.number_type(number) not in SHARED_PHONE_TYPES


def links_alone(kind: str, values: pd.Series) -> np.ndarray:
    """Per value in normal form of ``kind``: whether two records holding it are one person
    by that alone (see the module doc). Each distinct phone is typed once."""
    if kind in ("email", "loyalty_card"):
        return np.ones(len(values), dtype=bool)
    if kind == "phone":
        typed = {v: personal_phone(str(v)) for v in _distinct(values)}
        return np.array([typed.get(v, False) for v in values], dtype=bool)
    if kind in IDENTIFIERS:
        return np.zeros(len(values), dtype=bool)
    raise ValueError(f"unknown identifier kind {kind!r}; expected one of {', '.join(IDENTIFIERS)}")


def normalise_token(value: object) -> str | None:
    """A loyalty card number or a cookie id, trimmed (None when blank)."""
    return _text(value)


#: titles written before a name, dropped (they change, and say nothing of the person)
NAME_TITLES = frozenset(
    ["mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "dame", "lady", "lord", "rev"]
)
_APOSTROPHES = str.maketrans("", "", "'\u2019`")
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2014.,]+")
_POSTCODE = re.compile(r"(?=.*[0-9])[A-Z0-9]{3,10}")


def normalise_name(value: object) -> str | None:
    """A person's full name without accents, case or title, words separated by one space;
    None unless it is two or more words of letters (see the module doc)."""
    text = _text(value)
    if text is None:
        return None
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    words = _SEPARATORS.sub(" ", plain.casefold().translate(_APOSTROPHES)).split()
    while words and words[0] in NAME_TITLES:
        words = words[1:]
    if len(words) < 2 or not all(w.isalpha() for w in words):
        return None
    return " ".join(words)


def normalise_postcode(value: object) -> str | None:
    """A postcode upper-cased without spaces or hyphens (``sw1a 1aa`` -> ``SW1A1AA``);
    None unless 3 to 10 letters and digits with at least one digit."""
    text = _text(value)
    if text is None:
        return None
    code = re.sub(r"[\s\-]+", "", text).upper()
    return code if _POSTCODE.fullmatch(code) else None


#: what joins a name and its postcode in the normal form of a ``name_postcode``
NAME_POSTCODE_SEP = "|"


def normalise_name_postcode(value: object) -> str | None:
    """A ``(name, postcode)`` pair as one identifier, ``name|POSTCODE``; None unless both
    are usable."""
    if not isinstance(value, tuple) or len(value) != 2:
        return None
    name, postcode = normalise_name(value[0]), normalise_postcode(value[1])
    if name is None or postcode is None:
        return None
    return f"{name}{NAME_POSTCODE_SEP}{postcode}"


def split_name_postcode(normal: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The name and the postcode of ``name_postcode`` values in normal form."""
    parts = normal.str.split(NAME_POSTCODE_SEP, n=1, regex=False)
    return parts.str[0], parts.str[1]


def identifier_values(fields: Mapping[str, object]) -> dict[str, object]:
    """The identifiers among ``fields`` (column -> value as given: an event, a request, a
    row), by kind in the order of :data:`features.contract.IDENTIFIERS`, absent ones
    left out; a name with postcode is the pair ``(name, postcode)``, given when either
    is (alone it is unusable, never silently dropped)."""
    out: dict[str, object] = {}
    for kind, columns in IDENTIFIER_COLUMNS.items():
        values = tuple(fields.get(c) for c in columns)
        if all(v is None for v in values):
            continue
        out[kind] = values if len(values) > 1 else values[0]
    return out


def describe(kind: str) -> str:
    """An identifier kind in words, for messages (``name_postcode`` -> ``name with
    postcode``)."""
    return "name with postcode" if kind == "name_postcode" else kind.replace("_", " ")


def normalise_one(kind: str, value: object, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """One identifier of ``kind`` (:data:`features.contract.IDENTIFIERS`) in normal form
    (a name with postcode: the pair, :func:`identifier_values`)."""
    if kind == "email":
        return normalise_email(value)
    if kind == "phone":
        return normalise_phone(value, region)
    if kind == "name_postcode":
        return normalise_name_postcode(value)
    if kind in IDENTIFIERS:
        return normalise_token(value)
    raise ValueError(f"unknown identifier kind {kind!r}; expected one of {', '.join(IDENTIFIERS)}")


# --------------------------------------------------------------------------- keyed hashes
#: the prefix of a provisional customer's id (an event's identifier nobody holds yet)
PROVISIONAL_PREFIX = "anon-"
KEY_BYTES = 32


def identity_key(path: Path) -> bytes:
    """The workspace's secret key for identifier hashes, created (random, mode 0600) on
    first use. Several processes may ask at once: the key is written to a temporary file
    and linked into place, so every process reads the one complete key that won."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(KEY_BYTES) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process linked its key first
            os.link(partial, path)
        fsync_paths(path.parent)
    finally:
        partial.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def hash_identifier(key: bytes, kind: str, normal: str) -> str:
    """The keyed hash (hex) of an identifier already in normal form; the kind is part of
    it, so the same text as an e-mail and as a cookie never collide."""
    return hmac.new(key, f"{kind}:{normal}".encode(), hashlib.sha256).hexdigest()


def provisional_id(hashed: str) -> str:
    """The id of the provisional customer an unmatched identifier creates: derived from
    its keyed hash, so every event with that identifier (any worker, any retry) reaches
    the same customer until ``rapport resolve`` merges it."""
    return PROVISIONAL_PREFIX + hashed[:24]


@dataclass
class Normalised:
    """Identifiers in normal form (one column per kind, null when unusable) and the count
    of unusable values per reason (``"phone: not a valid number"``; blanks are not counted)."""

    frame: pd.DataFrame
    invalid: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        if not self.invalid:
            return "no unusable identifiers"
        parts = ", ".join(f"{reason} {n:,}" for reason, n in sorted(self.invalid.items()))
        return f"unusable identifiers set to null: {parts}"


_REASONS = {
    "email": "email: not an e-mail address",
    "phone": "phone: not a valid number",
    "name_postcode": "name_postcode: not a full name with a postcode",
}


def normalise(customers: pd.DataFrame, region: str = DEFAULT_PHONE_REGION) -> Normalised:
    """``customer_id`` and every identifier kind of ``customers`` in normal form (one
    column per kind); columns the frame lacks are null. Each distinct raw value is
    normalised once."""
    region = check_region(region)
    rules: dict[str, Callable[[object], str | None]] = {
        "email": normalise_email,
        "phone": lambda v: normalise_phone(v, region),
        "loyalty_card": normalise_token,
        "cookie_id": normalise_token,
        "name_postcode": normalise_name_postcode,
    }
    out = pd.DataFrame({"customer_id": customers["customer_id"].astype("string").to_numpy()})
    invalid: Counter[str] = Counter()
    for kind, columns in IDENTIFIER_COLUMNS.items():
        given = [c for c in columns if c in customers.columns]
        if not given:
            out[kind] = pd.Series(pd.NA, index=out.index, dtype="string")
            continue
        absent = pd.Series(None, index=customers.index, dtype=object)
        texts = [customers[c].map(_text) if c in given else absent for c in columns]
        raw = texts[0] if len(texts) == 1 else pd.Series(list(zip(*texts, strict=True)))
        mapping = {v: rules[kind](v) for v in dict.fromkeys(raw.dropna().tolist())}
        values = pd.array([mapping.get(v) for v in raw], dtype="string").to_numpy()
        # present when its first column is (a postcode alone is an address, no identifier)
        present = texts[0].notna().to_numpy()
        bad = int((present & pd.isna(values)).sum())
        if bad:
            invalid[_REASONS.get(kind, f"{kind}: unusable")] += bad
        out[kind] = values
    return Normalised(out, dict(invalid))


def _distinct(values: Iterable[object]) -> list[object]:
    return list(pd.unique(pd.Series(list(values), dtype="object").dropna()))
