"""The simulator's identities: who the demo's customer records are, and which are one person.

Part of the simulator (:mod:`rapport.demo_data` calls :func:`identities`). Every record gets
identifiers as a company's systems would hold them: an e-mail made of a name, a number
and a provider, a UK mobile number, a loyalty card, a web-shop cookie, each present with
its own chance and written in the ways people type them (capitals, spaces, ``+44`` or a
leading ``0``). A share of the records (:data:`DUPLICATE_SHARE`) are a *second record* of
the person behind an earlier one, made one of these ways (``how`` in the truth):

* ``typo``: the e-mail with one typing error (a letter dropped, doubled, swapped or
  replaced), the same phone half of the time (else none), a new cookie;
* ``changed_email``: an e-mail at another provider, the same phone, a new cookie, the
  same loyalty card sometimes;
* ``second_cookie``: the same e-mail written differently, no phone, a new cookie (the
  person on another device);
* ``card``: a store record with the same loyalty card and no other identifier but
  the name with postcode.

**Names and addresses** (drawn after everything else, :func:`_addresses`, so the other
identifiers stay as they were): :data:`P_ADDRESS` of the records hold the person's full
name and postcode (a UK postcode drawn from a pool :data:`POSTCODES_PER_RECORD` times
as large as the population, so some neighbours share one), written in the record's own
style (capitals, a title, extra spaces, an accent kept or dropped; the postcode with or
without its space). A second record's name has one typing error with chance
:data:`NAME_TYPO`, and its postcode is a new one with chance :data:`MOVED` (the person
moved house). Household members share the postcode, each with a first name of their own
(not one letter from another member's), and most share the family name (in the name
column; their e-mails keep the name they were made with). Which records are one person
stays the truth's ``person_id``, whatever the noise.

**Households** (:data:`HOUSEHOLD_SHARE` of the persons, two or three each) share a
landline: every member's records give the household's number as their phone (written in
their own style), so two *different* persons hold the same phone. The truth says they
are different persons (``person_id``), which is what keeps resolution from merging them
on the phone alone (:func:`features.identity.links_alone`: a landline is no evidence),
nor on the postcode (a name with postcode is a person's only with the first name).

The second record's events and behaviour are those of the simulated customer the record
was drawn for: the truth says only which records belong to one person
(``truth_identity``: ``customer_id``, ``person_id``, ``how``), which is what linkage is
judged on (:func:`rapport.truth.compare_identity`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: the share of customer records that are a second record of another person
DUPLICATE_SHARE = 0.06
#: how second records are made, and their shares
HOW = ("typo", "changed_email", "second_cookie", "card")
HOW_P = (0.35, 0.3, 0.2, 0.15)
#: chance that an original record holds each identifier
P_EMAIL, P_PHONE, P_CARD, P_COOKIE = 0.9, 0.65, 0.45, 0.6

_FIRST_NAMES = (
    "amelia olivia isla ava mia ivy lily sophia grace freya emily ella poppy evie "
    "chloe jack oliver harry george noah leo arthur oscar charlie jacob thomas james "
    "william henry alfie muhammad joshua daniel samuel ethan lucas adam ryan aisha "
    "priya sara fatima zara hannah lucy ruby anna"
)
FIRST = tuple(_FIRST_NAMES.split())
_LAST_NAMES = (
    "smith jones taylor brown williams wilson johnson davies patel wright robinson "
    "wood thompson evans walker white roberts green hall thomas clarke jackson lewis "
    "hill harris martin cooper king lee ward turner moore khan ali begum murphy kelly "
    "scott baker mitchell carter phillips shaw"
)
LAST = tuple(_LAST_NAMES.split())
PROVIDERS = (
    "gmail.com",
    "outlook.com",
    "yahoo.co.uk",
    "hotmail.co.uk",
    "icloud.com",
    "btinternet.com",
)
#: UK mobile prefixes (07xx) whose numbers phonenumbers accepts as valid
MOBILE_PREFIXES = ("074", "075", "078", "079")
#: the share of persons living in a household of two or three that shares a landline
HOUSEHOLD_SHARE = 0.12
#: UK geographic area codes (London, Manchester, Glasgow, Liverpool) followed by seven
#: digits: numbers phonenumbers accepts as valid fixed lines
LANDLINE_PREFIXES = ("0207", "0208", "0161", "0141", "0151")
#: chance that a record holds a name with postcode; that a second record's name has a typo;
#: that a second record's postcode is another (moved house); that a household member
#: takes the household's family name
P_ADDRESS, NAME_TYPO, MOVED, SAME_FAMILY_NAME = 0.9, 0.1, 0.1, 0.7
#: postcodes in the pool per record: the simulator has 2,250 full names where a real
#: population has far more, so a pool as large as the population (one person a postcode)
#: made two unrelated persons of one name at one postcode about a thousand times likelier
#: than they are (a UK postcode holds some 40 people among 1.7 million postcodes)
POSTCODES_PER_RECORD = 10
#: UK postcode areas (outward code: area, district; inward: sector digit, two unit letters)
POSTCODE_AREAS = ("SW", "SE", "N", "E", "W", "NW", "M", "G", "L", "B", "LS", "BS", "CF")
POSTCODE_UNIT_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
NAME_TITLES = ("Mr", "Mrs", "Ms", "Dr")
#: how some first names are written with their accent
ACCENTED = {"chloe": "chloé", "aisha": "aïsha", "fatima": "fátima"}


@dataclass(frozen=True)
class Identities:
    """The identifier columns of the customer records (None: absent) and the truth."""

    email: list[str | None]
    phone: list[str | None]
    loyalty_card: list[str | None]
    cookie_id: list[str | None]
    truth: pd.DataFrame
    name: list[str | None]
    postcode: list[str | None]


def _typo(rng: np.random.Generator, text: str) -> str:
    """One typing error in the part before the ``@``."""
    local, _, domain = text.partition("@")
    return f"{_one_edit(rng, local)}@{domain}"


def _one_edit(rng: np.random.Generator, local: str) -> str:
    """A letter of ``local`` dropped, doubled, swapped or replaced by a keyboard neighbour."""
    i = int(rng.integers(0, len(local)))
    kind = int(rng.integers(0, 4))
    if kind == 0 and len(local) > 3:  # dropped
        local = local[:i] + local[i + 1 :]
    elif kind == 1:  # doubled
        local = local[:i] + local[i] + local[i:]
    elif kind == 2 and i < len(local) - 1 and local[i] != local[i + 1]:  # swapped
        local = local[:i] + local[i + 1] + local[i] + local[i + 2 :]
    else:  # replaced by a neighbour on the keyboard row
        row = "qwertyuiopasdfghjklzxcvbnm"
        c = local[i]
        j = row.find(c)
        local = local[:i] + (row[(j + 1) % len(row)] if j >= 0 else "x") + local[i + 1 :]
    return local


def _written(choice: int, email: str) -> str:
    """The same e-mail as a person might type it again (capitals, spaces; ``choice``: 0-2)."""
    if choice == 0:
        return email.upper()
    if choice == 1:
        return f" {email.capitalize()} "
    return email


#: where the digits of a UK number are grouped as it is dialled (the area code first)
MOBILE_GROUPS, LANDLINE_GROUPS = (5,), (4, 7)


def _phone_written(choice: int, national: str, groups: tuple[int, ...] = MOBILE_GROUPS) -> str:
    """A UK number (mobile ``07xxxxxxxxx``, landline ``0207xxxxxxx``) as a system might
    store it (``choice``: 0-2): international, grouped at ``groups`` as dialled, or bare."""
    area = groups[0]
    if choice == 0:
        return f"+44 {national[1:area]} {national[area:]}"
    if choice == 1:
        return " ".join(national[a:b] for a, b in itertools.pairwise((0, *groups, None)))
    return national


def _households(
    rng: np.random.Generator,
    person: np.ndarray,
    how: np.ndarray,
    phone: list[str | None],
    style: np.ndarray,
) -> list[np.ndarray]:
    """Group :data:`HOUSEHOLD_SHARE` of the persons into households of two or three sharing
    a landline: each member's original record, and those of their second records that
    carry a phone, give the household's number instead (``phone`` changed in place).
    Drawn after every other identity, so the rest of the identities stay as they were.
    Returns the households (their persons)."""
    persons = np.flatnonzero(how == "original")
    members = rng.permutation(persons)[: int(HOUSEHOLD_SHARE * len(persons))]
    sizes = rng.choice((2, 3), size=len(members), p=(0.6, 0.4))
    ends = np.cumsum(sizes)
    ends = ends[ends <= len(members)]
    starts = ends - sizes[: len(ends)]
    prefix = np.asarray(LANDLINE_PREFIXES)[rng.integers(0, len(LANDLINE_PREFIXES), len(ends))]
    digits = rng.integers(0, 10**7, len(ends))
    line_of: dict[int, str] = {}
    for a, b, pre, d in zip(starts, ends, prefix, digits, strict=True):
        for p in members[a:b]:
            line_of[int(p)] = f"{pre}{d:07d}"
    for j, p in enumerate(person):
        line = line_of.get(int(p))
        if line is not None and (j == p or phone[j] is not None):
            phone[j] = _phone_written(int(style[j]), line, LANDLINE_GROUPS)
    return [members[a:b] for a, b in zip(starts, ends, strict=True)]


def _postcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` UK-style postcodes (``SW12 3AB``), drawn independently (some repeat)."""
    area = np.asarray(POSTCODE_AREAS)[rng.integers(0, len(POSTCODE_AREAS), n)]
    district = rng.integers(1, 21, n)
    sector = rng.integers(0, 10, n)
    units = np.asarray(list(POSTCODE_UNIT_LETTERS))[rng.integers(0, 20, (2, n))]
    return np.array(
        [f"{a}{d} {s}{u}{v}" for a, d, s, u, v in zip(area, district, sector, *units, strict=True)]
    )


def _name_written(rng: np.random.Generator, first: str, last: str) -> str:
    """A full name as one record writes it (case, a title, spaces, the accent)."""
    first = ACCENTED.get(first, first) if rng.random() < 0.5 else first
    choice = int(rng.integers(0, 4))
    if choice == 0:
        return f"{first.title()} {last.title()}"
    if choice == 1:
        return f"{first} {last}".upper()
    if choice == 2:
        return f" {first}  {last} "
    return f"{NAME_TITLES[int(rng.integers(0, len(NAME_TITLES)))]} {first.title()} {last.title()}"


def _near(a: str, b: str) -> bool:
    """Whether two names are the same or one edit apart (``sara``, ``zara``): a family
    does not give two members such names, and the simulator's short list of first names
    would make it far likelier than it is."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        swapped = len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
        return len(diff) == 1 or (swapped and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def _addresses(
    rng: np.random.Generator,
    person: np.ndarray,
    how: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    homes: list[np.ndarray],
) -> tuple[list[str | None], list[str | None]]:
    """Every record's name and postcode as written (None: absent; see the module doc):
    the person's (first and last drawn for their original record), household members at
    the household's postcode with first names of their own and mostly its family name; a
    second record with a typo in the name (:data:`NAME_TYPO`) or at a new postcode
    (:data:`MOVED`)."""
    n = len(person)
    pool = _postcodes(rng, max(n, 1) * POSTCODES_PER_RECORD)
    home = pool[rng.integers(0, len(pool), n)]  # indexed by person (an original's record)
    given, family = first.astype(object).copy(), last.astype(object).copy()
    for members in homes:
        head = int(members[0])
        taken = {given[head]}
        for p in members[1:]:
            p = int(p)
            home[p] = home[head]
            if rng.random() < SAME_FAMILY_NAME:
                family[p] = family[head]
            while any(_near(str(given[p]), t) for t in taken):
                given[p] = FIRST[int(rng.integers(0, len(FIRST)))]
            taken.add(given[p])
    has = rng.random(n) < P_ADDRESS
    typo = rng.random(n) < NAME_TYPO
    moved = rng.random(n) < MOVED
    name: list[str | None] = [None] * n
    postcode: list[str | None] = [None] * n
    for j in range(n):
        if not has[j]:
            continue
        p, second = int(person[j]), how[j] != "original"
        given_j, family_j = str(given[p]), str(family[p])
        if second and typo[j]:
            family_j = _one_edit(rng, family_j)
        name[j] = _name_written(rng, given_j, family_j)
        code = str(pool[int(rng.integers(0, len(pool)))]) if second and moved[j] else str(home[p])
        written = int(rng.integers(0, 3))
        postcode[j] = (
            code if written == 0 else code.replace(" ", "").lower() if written == 1 else f" {code} "
        )
    return name, postcode


def identities(rng: np.random.Generator, ids: list[str]) -> Identities:
    """Identifiers for the records ``ids`` (in order) and which of them are one person.

    The first record of every person comes before their second one (records are sorted by
    signup); the same ``rng`` state gives the same identities.
    """
    n = len(ids)
    person = np.arange(n)
    how = np.full(n, "original", dtype=object)
    second = np.flatnonzero(rng.random(n) < DUPLICATE_SHARE)
    second = second[second > 0]
    firsts = np.setdiff1d(np.arange(n), second)
    # each second record: the same person as an original record drawn among the earlier ones
    earlier = np.searchsorted(firsts, second)
    drawn = (rng.random(len(second)) * earlier).astype(np.int64)
    person[second] = np.where(earlier > 0, firsts[np.minimum(drawn, len(firsts) - 1)], second)
    second = second[person[second] != second]
    how[second] = rng.choice(HOW, size=len(second), p=HOW_P)

    # every record's own identifiers, drawn at once (second records overwrite theirs)
    first = np.asarray(FIRST)[rng.integers(0, len(FIRST), n)]
    last = np.asarray(LAST)[rng.integers(0, len(LAST), n)]
    provider = rng.integers(0, len(PROVIDERS), n)
    base = [
        f"{f}.{lname}{i + 1}@{PROVIDERS[p]}"
        for i, (f, lname, p) in enumerate(zip(first, last, provider, strict=True))
    ]
    prefix = np.asarray(MOBILE_PREFIXES)[rng.integers(0, len(MOBILE_PREFIXES), n)]
    digits = rng.integers(0, 10**8, n)
    national = [f"{p}{d:08d}" for p, d in zip(prefix, digits, strict=True)]
    cards = [f"LC{c}" for c in rng.integers(10**9, 10**10, n)]
    cookies = [f"ck_{c:016x}" for c in rng.integers(0, 2**62, n)]
    retyped = rng.random(n) < 0.2
    style = rng.integers(0, 3, (2, n))  # how each record writes its e-mail and its phone
    has = rng.random((4, n)) < np.array([P_EMAIL, P_PHONE, P_CARD, P_COOKIE])[:, None]
    # a second record's evidence exists on the first: the e-mail it retypes, the phone
    has[0, person[second[np.isin(how[second], ("typo", "second_cookie"))]]] = True
    has[1, person[second[how[second] == "changed_email"]]] = True
    has[2, person[second[how[second] == "card"]]] = True
    email: list[str | None] = [
        (_written(style[0, i], base[i]) if retyped[i] else base[i]) if has[0, i] else None
        for i in range(n)
    ]
    phone: list[str | None] = [
        _phone_written(style[1, i], national[i]) if has[1, i] else None for i in range(n)
    ]
    card: list[str | None] = [cards[i] if has[2, i] else None for i in range(n)]
    cookie: list[str | None] = [cookies[i] if has[3, i] else None for i in range(n)]
    for j in second:
        i, kind = int(person[j]), str(how[j])
        email[j] = phone[j] = card[j] = cookie[j] = None
        if kind == "typo":
            email[j] = _typo(rng, base[i])
            phone[j] = _phone_written(style[1, j], national[i]) if rng.random() < 0.5 else None
            cookie[j] = cookies[j]
        elif kind == "changed_email":
            others = [p for p in PROVIDERS if not base[i].endswith(p)]
            email[j] = f"{first[i][0]}{last[i]}{j + 1}@{rng.choice(others)}"
            phone[j] = _phone_written(style[1, j], national[i])
            cookie[j] = cookies[j]
            card[j] = card[i] if rng.random() < 0.3 else None
        elif kind == "second_cookie":
            email[j] = _written(style[0, j], base[i])
            cookie[j] = cookies[j]
        else:  # card: a store record
            card[j] = card[i]
    homes = _households(rng, person, how, phone, style[1])
    name, postcode = _addresses(rng, person, how, first, last, homes)
    truth = pd.DataFrame(
        {
            "customer_id": pd.array(ids, dtype="string"),
            "person_id": pd.array([f"P{p + 1:07d}" for p in person], dtype="string"),
            "how": pd.array(how.tolist(), dtype="string"),
        }
    )
    return Identities(email, phone, card, cookie, truth, name, postcode)
