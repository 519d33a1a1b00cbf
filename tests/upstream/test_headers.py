"""Pure header functions: hop-by-hop stripping, X-Forwarded-*, WebSocket detection, path redaction."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict, istr

from gateway.upstream.headers import (
    HOP_BY_HOP,
    connection_tokens,
    is_trusted,
    is_websocket_upgrade,
    redact_path,
    set_forwarded,
    strip_hop_by_hop,
)


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


@pytest.mark.parametrize(
    ("given_headers", "kept"),
    [
        ([("Connection", "X-Foo"), ("X-Foo", "1"), ("X-Keep", "y")], [("X-Keep", "y")]),
        ([("connection", "close, x-foo"), ("X-FOO", "1"), ("X-Keep", "y")], [("X-Keep", "y")]),
        ([("Connection", "A"), ("Connection", "B"), ("A", "1"), ("B", "2"), ("C", "3")], [("C", "3")]),
        ([("Connection", " , ,"), ("X-Keep", "y")], [("X-Keep", "y")]),
        (
            [("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Trailer", "X-Sum"), ("X-Keep", "y")],
            [("X-Keep", "y")],
        ),
        ([("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("X-Keep", "y")], [("X-Keep", "y")]),
        (
            [("Proxy-Authorization", "Basic x"), ("Proxy-Authenticate", "Basic"), ("Proxy-Connection", "k")],
            [],
        ),
        (
            [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Set-Cookie", "c=3")],
            [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Set-Cookie", "c=3")],
        ),
        (
            [("Content-Encoding", "gzip"), ("Content-Length", "10")],
            [("Content-Encoding", "gzip"), ("Content-Length", "10")],
        ),
    ],
    ids=[
        "connection-names-a-field",
        "connection-case-insensitive",
        "repeated-connection-fields",
        "empty-connection-tokens",
        "keep-alive-te-trailer",
        "transfer-encoding-upgrade",
        "proxy-auth-pair",
        "repeated-set-cookie-kept",
        "end-to-end-kept",
    ],
)
def test_strip_hop_by_hop(given_headers: list[tuple[str, str]], kept: list[tuple[str, str]]) -> None:
    assert list(strip_hop_by_hop(headers(*given_headers)).items()) == kept


def test_strip_hop_by_hop_extra_names_and_input_untouched() -> None:
    original = headers(("Host", "a"), ("Expect", "100-continue"), ("X-Keep", "y"))
    stripped = strip_hop_by_hop(original, extra=frozenset({istr("Host"), istr("Expect")}))

    assert list(stripped.items()) == [("X-Keep", "y")]
    assert len(original) == 3


_NAME = st.sampled_from(["X-A", "X-B", "x-a", "Set-Cookie", "Content-Type", *sorted(HOP_BY_HOP)])


@given(
    pairs=st.lists(st.tuples(_NAME, st.sampled_from(["1", "2", "v"])), max_size=12),
    listed=st.lists(st.sampled_from(["X-A", "x-b", "keep-alive", "close"]), max_size=3),
)
def test_strip_hop_by_hop_keeps_exactly_the_end_to_end_fields(
    pairs: list[tuple[str, str]], listed: list[str]
) -> None:
    given_headers = headers(*pairs)
    if listed:
        given_headers.add("Connection", ", ".join(listed))
    drop = {n.lower() for n in HOP_BY_HOP} | {n.lower() for n in listed}

    stripped = strip_hop_by_hop(given_headers)

    assert list(stripped.items()) == [(n, v) for n, v in given_headers.items() if n.lower() not in drop]


def test_connection_tokens_across_fields() -> None:
    tokens = connection_tokens(headers(("Connection", "keep-alive, X-Foo ,,"), ("connection", "x-bar")))
    assert {t.lower() for t in tokens} == {"keep-alive", "x-foo", "x-bar"}


NETS = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("127.0.0.1/32"),
)


@pytest.mark.parametrize(
    ("peer", "trusted", "expected"),
    [
        ("10.1.2.3", NETS, True),
        ("127.0.0.1", NETS, True),
        ("::1", NETS, True),
        ("11.0.0.1", NETS, False),
        ("127.0.0.2", NETS, False),
        ("10.1.2.3", (), False),
        (None, NETS, False),
        ("", NETS, False),
        ("not-an-ip", NETS, False),  # a unix socket peer, say
    ],
    ids=[
        "cidr",
        "single",
        "ipv6",
        "outside",
        "next-to-single",
        "nothing-trusted",
        "no-peer",
        "empty-peer",
        "garbage",
    ],
)
def test_is_trusted(
    peer: str | None, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], expected: bool
) -> None:
    assert is_trusted(peer, trusted) is expected


@pytest.mark.parametrize(
    ("sent", "peer", "trusted", "expected"),
    [
        (
            [],
            "1.2.3.4",
            False,
            {"X-Forwarded-For": ["1.2.3.4"], "X-Forwarded-Proto": ["http"], "X-Forwarded-Host": ["h"]},
        ),
        (
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil")],
            "1.2.3.4",
            False,
            {"X-Forwarded-For": ["1.2.3.4"], "X-Forwarded-Proto": ["http"], "X-Forwarded-Host": ["h"]},
        ),
        (
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "site")],
            "10.0.0.1",
            True,
            {
                "X-Forwarded-For": ["6.6.6.6, 10.0.0.1"],
                "X-Forwarded-Proto": ["https"],
                "X-Forwarded-Host": ["site"],
            },
        ),
        (
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "7.7.7.7")],
            "10.0.0.1",
            True,
            {
                "X-Forwarded-For": ["6.6.6.6, 7.7.7.7, 10.0.0.1"],
                "X-Forwarded-Proto": ["http"],
                "X-Forwarded-Host": ["h"],
            },
        ),
        (
            [],
            "10.0.0.1",
            True,
            {"X-Forwarded-For": ["10.0.0.1"], "X-Forwarded-Proto": ["http"], "X-Forwarded-Host": ["h"]},
        ),
        (
            [("X-Forwarded-For", "6.6.6.6")],
            None,
            False,
            {"X-Forwarded-For": [], "X-Forwarded-Proto": ["http"], "X-Forwarded-Host": ["h"]},
        ),
    ],
    ids=[
        "added",
        "untrusted-replaced",
        "trusted-appended",
        "trusted-repeated-joined",
        "trusted-none-sent",
        "no-peer",
    ],
)
def test_set_forwarded(
    sent: list[tuple[str, str]], peer: str | None, trusted: bool, expected: dict[str, list[str]]
) -> None:
    given_headers = headers(*sent)
    set_forwarded(given_headers, peer=peer, scheme="http", host="h", trusted=trusted)

    assert {name: given_headers.getall(name, []) for name in expected} == expected


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("Connection", "Upgrade"), ("Upgrade", "websocket")], True),
        ([("Connection", "keep-alive, Upgrade"), ("Upgrade", "WebSocket")], True),
        ([("Connection", "upgrade"), ("Upgrade", "h2c")], False),
        ([("Upgrade", "websocket")], False),
        ([("Connection", "Upgrade")], False),
        ([], False),
    ],
    ids=["plain", "token-list-any-case", "h2c", "no-connection-upgrade", "no-upgrade", "nothing"],
)
def test_is_websocket_upgrade(pairs: list[tuple[str, str]], expected: bool) -> None:
    assert is_websocket_upgrade(headers(*pairs)) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/chat", "/chat"),
        ("/chat?userinput=secret", "/chat"),
        ("/chat;jsessionid=SECRET", "/chat;jsessionid=…"),
        ("/a;jsessionid=SECRET/b;x=1;y=2?q=SECRET", "/a;jsessionid=…/b;x=…;y=…"),
        ("/a;flag", "/a;flag=…"),
        ("/", "/"),
    ],
    ids=["plain", "query-dropped", "path-param-masked", "every-param-and-query", "bare-param", "root"],
)
def test_redact_path(path: str, expected: str) -> None:
    assert redact_path(path) == expected


_SEGMENT = st.text(alphabet="abcdefghij-._~%", max_size=8)


@given(
    segments=st.lists(_SEGMENT, min_size=1, max_size=4),
    where=st.integers(min_value=0, max_value=3),
    secret=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=40),
    query_secret=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=40),
)
@example(segments=["chat"], where=0, secret="31992FA7E1B2C3D4", query_secret="TOKEN1234")
def test_redact_path_never_shows_a_session_id_or_the_query(
    segments: list[str], where: int, secret: str, query_secret: str
) -> None:
    index = where % len(segments)
    segments[index] += f";jsessionid={secret}"
    path = "/" + "/".join(segments) + f"?jsessionid={query_secret}&x=1"

    redacted = redact_path(path)

    assert secret not in redacted
    assert query_secret not in redacted
    assert "?" not in redacted
