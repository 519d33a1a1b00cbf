from __future__ import annotations

import dataclasses

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import SessionConfig
from gateway.errors import BadSessionCarrier
from gateway.sessions.carriage import Extractor, extract, last_segment

CFG = SessionConfig(query_param="sid")


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_precedence_header_over_cookie_over_path_over_query() -> None:
    headers = _headers(("X-Teneo-Session", "JSESSIONID=H"), ("Cookie", "JSESSIONID=C"))
    carried = extract("/e;jsessionid=P?sid=Q", headers, CFG)
    assert (carried.session_id, carried.carrier) == ("H", "header")
    carried = extract("/e;jsessionid=P?sid=Q", _headers(("Cookie", "JSESSIONID=C")), CFG)
    assert (carried.session_id, carried.carrier) == ("C", "cookie")
    carried = extract("/e;jsessionid=P?sid=Q", _headers(), CFG)
    assert (carried.session_id, carried.carrier) == ("P", "path")
    carried = extract("/e?sid=Q", _headers(), CFG)
    assert (carried.session_id, carried.carrier) == ("Q", "query")
    assert extract("/e", _headers(), CFG).carrier == "none"


def test_path_and_query_parameters_are_removed_byte_exact() -> None:
    carried = extract("/a%2Fb/engine;JSESSIONID=P;v=1?x=%20+y&sid=Q&z", _headers(), CFG)
    assert carried.target == "/a%2Fb/engine;v=1?x=%20+y&z"
    assert extract("/engine;jsessionid=P?sid=Q", _headers(), CFG).target == "/engine"


def test_header_pairs_merge_over_cookies_and_own_cookies_are_removed() -> None:
    headers = _headers(
        ("Cookie", "FOO=old; JSESSIONID=C; GatewayAffinity=x; keep=1"),
        ("X-Teneo-Session", "JSESSIONID=31992FA776A3XXXXX1031B5F; FOO=BAR; GatewayAffinity=default.sig"),
    )
    carried = extract("/", headers, CFG)
    assert carried.session_id == "31992FA776A3XXXXX1031B5F"
    assert carried.cookies == (("FOO", "BAR"), ("keep", "1"))
    assert carried.affinity == "default.sig"


@pytest.mark.parametrize(
    ("target", "headers", "fragment"),
    [
        ("/", [("X-Teneo-Session", "garbage")], "not a cookie string"),
        ("/", [("X-Teneo-Session", "JSESSIONID=a\x01b")], "control characters"),
        ("/", [("Cookie", "JSESSIONID=" + "A" * 129)], "longer than 128 bytes"),
        ("/", [("Cookie", "JSESSIONID=a\\b")], "characters a cookie may not carry"),
        ("/e?sid=a%20b", [], "characters a cookie may not carry"),
    ],
    ids=["not-cookie-string", "control", "too-long", "backslash", "space-in-query"],
)
def test_bad_carriers_are_refused(target: str, headers: list[tuple[str, str]], fragment: str) -> None:
    with pytest.raises(BadSessionCarrier, match=fragment):
        extract(target, _headers(*headers), CFG)


def test_an_invalid_lower_precedence_carrier_is_ignored() -> None:
    headers = _headers(("X-Teneo-Session", "JSESSIONID=good"), ("Cookie", "JSESSIONID=" + "A" * 500))
    assert extract("/", headers, CFG).session_id == "good"


def test_end_path_is_the_last_segment() -> None:
    assert extract("/engine/endsession;jsessionid=X", _headers(), CFG).is_end
    assert extract("/endsession/?x=1", _headers(), CFG).is_end
    assert not extract("/endsession/more", _headers(), CFG).is_end
    assert last_segment("/a/b;c=d") == "b"
    off = dataclasses.replace(CFG, path_param="")
    assert extract("/e;jsessionid=P", _headers(), off).session_id is None


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/", [("Cookie", "JSESSIONID=")]),
        ("/", [("X-Teneo-Session", "JSESSIONID=; FOO=BAR")]),
        ("/e;jsessionid=", []),
    ],
    ids=["cookie", "header", "path"],
)
def test_an_empty_session_id_is_no_session(target: str, headers: list[tuple[str, str]]) -> None:
    carried = extract(target, _headers(*headers), CFG)
    assert (carried.session_id, carried.carrier) == (None, "none")


def test_one_extractor_answers_as_fresh_ones_do_and_refuses_a_bad_value_every_time() -> None:
    """The Extractor remembers what the Cookie and session headers carry; the answers must not change."""
    extractor = Extractor(CFG)
    requests = [
        ("/e;jsessionid=P?sid=Q", [("Cookie", "JSESSIONID=C; keep=1")]),
        ("/e;jsessionid=P?sid=Q", [("Cookie", "keep=1")]),  # same cookies but the session: the path's
        ("/e?sid=Q", [("Cookie", "keep=1")]),
        ("/engine/endsession", [("Cookie", "JSESSIONID=C; keep=1")]),  # the target is never remembered
        ("/", [("Cookie", "a=" + "x" * 2000 + "; JSESSIONID=long")]),  # too long to remember
    ]
    for _ in range(2):
        for target, headers in requests:
            assert extractor(target, _headers(*headers)) == extract(target, _headers(*headers), CFG)
    bad = _headers(("X-Teneo-Session", "garbage"))
    for _ in range(2):
        with pytest.raises(BadSessionCarrier, match="not a cookie string"):
            extractor("/", bad)
