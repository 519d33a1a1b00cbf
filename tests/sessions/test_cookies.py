from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.sessions.cookies import (
    build_set_cookie,
    parse_cookie_header,
    parse_cookie_string,
    render_cookie_header,
    rewrite_set_cookie,
    set_cookie_deletes,
    set_cookie_name_value,
)

TOKEN_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
OCTETS = st.sampled_from([chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\'])
pairs_strategy = st.lists(
    st.tuples(st.text(TOKEN_CHARS, min_size=1, max_size=12), st.text(OCTETS, max_size=40)),
    min_size=1,
    max_size=6,
)


def test_teneo_document_example() -> None:
    assert parse_cookie_string("JSESSIONID=31992FA776A3XXXXX1031B5F; FOO=BAR") == [
        ("JSESSIONID", "31992FA776A3XXXXX1031B5F"),
        ("FOO", "BAR"),
    ]


@given(pairs_strategy)
@example([("JSESSIONID", "")])
def test_cookie_string_round_trip(pairs: list[tuple[str, str]]) -> None:
    assert parse_cookie_string(render_cookie_header(pairs)) == pairs


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("garbage", "not a name=value"),
        ("=x", "not a name=value"),
        ("a=b c", "characters a cookie may not carry"),
        ('a="b\\"', "characters a cookie may not carry"),
        ("a=b\x01", "control characters"),
        ("; ;", "no cookie pair"),
    ],
    ids=["no-equals", "no-name", "space", "backslash", "control", "empty"],
)
def test_bad_cookie_strings_say_what_is_wrong(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_cookie_string(value)


def test_lenient_cookie_header_keeps_odd_pieces() -> None:
    assert parse_cookie_header("a=1; flag; b=2") == [("a", "1"), ("", "flag"), ("b", "2")]
    assert render_cookie_header(parse_cookie_header("a=1; flag; b=2")) == "a=1; flag; b=2"


def test_set_cookie_name_value_and_deletion() -> None:
    assert set_cookie_name_value('JSESSIONID="ABC"; Path=/') == ("JSESSIONID", "ABC")
    assert set_cookie_deletes("JSESSIONID=; Max-Age=0; Path=/")
    assert set_cookie_deletes("JSESSIONID=; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
    assert not set_cookie_deletes("JSESSIONID=ABC; Path=/; HttpOnly")
    assert not set_cookie_deletes("JSESSIONID=ABC; Max-Age=600")


def test_build_set_cookie_for_cross_site() -> None:
    value = build_set_cookie("G", "v", samesite="None", secure=True, partitioned=True)
    assert value == "G=v; Path=/; HttpOnly; Secure; SameSite=None; Partitioned"
    expired = build_set_cookie("G", "", samesite="Lax", secure=False, partitioned=False, max_age=0)
    assert "Max-Age=0" in expired and "Expires=Thu, 01 Jan 1970" in expired


def test_rewrite_replaces_cross_site_attributes_only() -> None:
    original = "JSESSIONID=ABC; Path=/engine; SameSite=Strict; HttpOnly"
    rewritten = rewrite_set_cookie(original, samesite="None", secure=True, partitioned=True)
    assert rewritten == "JSESSIONID=ABC; Path=/engine; HttpOnly; Secure; SameSite=None; Partitioned"
