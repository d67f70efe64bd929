"""Identifiers in normal form: e-mails trimmed and lower-cased, phones in E.164 in the
configured default region, cards and cookies trimmed; unusable values null and counted."""

from __future__ import annotations

import pandas as pd
import pytest

from features.contract import CUSTOMER_ATTRIBUTES, CUSTOMERS, IDENTIFIER_FIELDS, IDENTIFIERS
from features.identity import (
    check_region,
    identifier_values,
    links_alone,
    normalise,
    normalise_email,
    normalise_name,
    normalise_name_postcode,
    normalise_one,
    normalise_phone,
    normalise_postcode,
    normalise_token,
    personal_phone,
)


def test_identifiers_are_optional_customer_columns_kept_out_of_the_online_attributes() -> None:
    for name in IDENTIFIER_FIELDS:
        assert not CUSTOMERS.column(name).required
        assert name not in CUSTOMER_ATTRIBUTES
    assert "region" in CUSTOMER_ATTRIBUTES


def test_email_is_trimmed_and_lower_cased_and_non_addresses_become_null() -> None:
    assert normalise_email("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    assert normalise_email("ann lee@example.com") is None
    assert normalise_email("ann@example") is None
    assert normalise_email("a@@b.com") is None
    assert normalise_email("   ") is None
    assert normalise_email(None) is None


def test_phone_goes_to_e164_in_the_default_region() -> None:
    assert normalise_phone("07911 123456", "GB") == "+447911123456"
    assert normalise_phone("+44 (0)7911-123456", "GB") == "+447911123456"
    assert normalise_phone("0044 7911 123456", "GB") == "+447911123456"
    # the same digits mean another number in another region
    assert normalise_phone("(201) 555-0123", "US") == "+12015550123"
    assert normalise_phone("(201) 555-0123", "GB") == "+442015550123"
    assert normalise_phone("12", "GB") is None
    assert normalise_phone("call me", "GB") is None


def test_tokens_are_trimmed_with_their_case_kept() -> None:
    assert normalise_token("  LC-00Ab12 ") == "LC-00Ab12"
    assert normalise_token("") is None


def test_names_lose_case_accents_titles_and_spacing() -> None:
    assert normalise_name("  Mr  Seán   O'Brien-Smith ") == "sean obrien smith"
    assert normalise_name("ZOË LEE") == normalise_name("zoe lee") == "zoe lee"
    assert normalise_name("Dr. Ann  Lee") == "ann lee"
    # a given name alone, digits or a title alone: not a full name
    for bad in ("Ann", "Mrs Lee", "Ann Lee 2", "  ", None):
        assert normalise_name(bad) is None


def test_postcodes_are_upper_cased_without_spaces() -> None:
    assert normalise_postcode(" sw1a 1aa ") == "SW1A1AA"
    assert normalise_postcode("12345-6789") == "123456789"
    assert normalise_postcode("K1A 0B6") == "K1A0B6"
    for bad in ("N/A", "none", "12", "ABCDEFGHIJK1", ""):
        assert normalise_postcode(bad) is None


def test_a_name_is_an_identifier_only_with_its_postcode() -> None:
    assert normalise_name_postcode(("Ann Lee", "sw1a 1aa")) == "ann lee|SW1A1AA"
    assert normalise_one("name_postcode", ("ANN  LEE", "SW1A1AA")) == "ann lee|SW1A1AA"
    assert normalise_name_postcode(("Ann Lee", None)) is None
    assert normalise_name_postcode(("Ann", "SW1A 1AA")) is None
    # by kind, from the columns: a name without its postcode is given (and unusable)
    got = identifier_values({"email": "a@b.io", "name": "Ann Lee", "postcode": None})
    assert got == {"email": "a@b.io", "name_postcode": ("Ann Lee", None)}
    assert identifier_values({"cookie_id": "k"}) == {"cookie_id": "k"}
    # name with postcode never links two records by itself (the group decides: resolve)
    assert not links_alone("name_postcode", pd.Series(["ann lee|SW1A1AA"])).any()


def test_unknown_region_is_refused_with_the_value() -> None:
    assert check_region("gb") == "GB"
    with pytest.raises(ValueError, match="'XX'"):
        check_region("XX")


def test_normalise_counts_unusable_values_without_quoting_them() -> None:
    customers = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3", "c4"],
            "email": [" A@B.io", "not-an-email", None, ""],
            "phone": ["07911 123456", "999", "+33 6 12 34 56 78", None],
        }
    )
    done = normalise(customers, region="GB")
    frame = done.frame.set_index("customer_id")
    assert list(frame.columns) == list(IDENTIFIERS)
    assert frame.loc["c1", "email"] == "a@b.io"
    assert pd.isna(frame.loc["c2", "email"]) and pd.isna(frame.loc["c2", "phone"])
    assert frame.loc["c3", "phone"] == "+33612345678"
    assert frame["loyalty_card"].isna().all() and frame["cookie_id"].isna().all()
    # blanks are absent, not invalid
    assert done.invalid == {"email: not an e-mail address": 1, "phone: not a valid number": 1}
    assert "not-an-email" not in done.line() and "999" not in done.line()


def test_normalise_makes_one_column_of_name_and_postcode() -> None:
    customers = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3", "c4"],
            "name": [" Ann  LÉE", "Bob", None, "Cy Young"],
            "postcode": ["sw1a 1aa", "N1 9GU", "E1 6AN", None],
        }
    )
    done = normalise(customers)
    frame = done.frame.set_index("customer_id")
    assert frame.loc["c1", "name_postcode"] == "ann lee|SW1A1AA"
    assert frame[["name_postcode"]].iloc[1:].isna().all().all()
    # a postcode alone is an address, not an unusable identifier; a name without one is
    assert done.invalid == {"name_postcode: not a full name with a postcode": 2}
    assert "Bob" not in done.line() and "Cy Young" not in done.line()


def test_only_personal_phones_link_records_by_themselves() -> None:
    assert personal_phone("+447911123456")  # a UK mobile
    assert not personal_phone("+442079460123")  # a London landline: a household's
    assert personal_phone("+12125550199")  # the US plan cannot tell: counted personal
    phones = pd.Series(["+447911123456", "+442079460123", "+447911123456"])
    assert links_alone("phone", phones).tolist() == [True, False, True]
    assert links_alone("email", phones).all() and not links_alone("cookie_id", phones).any()
    with pytest.raises(ValueError, match="unknown identifier kind"):
        links_alone("name", phones)
