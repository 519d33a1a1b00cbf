"""Where the session id goes towards the bot: JSON Pointer placement in bodies, path patterns, id formats."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.errors import BadRequestBody, ClientFault
from gateway.sessions.cookies import COOKIE_OCTETS
from gateway.sessions.placement import IdFormat, JsonPlacement, PathPlacement, parse_pointer

SID = "3f2c1b7e-0d4a-4c59-9d1e-8a6b5c4d3e2f"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


# --- JSON Pointer (RFC 6901) ---------------------------------------------------------------------------

# RFC 6901 §5's document and pointers, with the member each names
RFC_DOC = {
    "foo": ["bar", "baz"],
    "": 0,
    "a/b": 1,
    "c%d": 2,
    "e^f": 3,
    "g|h": 4,
    "i\\j": 5,
    'k"l': 6,
    " ": 7,
    "m~n": 8,
}


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", ()),
        ("/foo", ("foo",)),
        ("/foo/0", ("foo", "0")),
        ("/", ("",)),
        ("/a~1b", ("a/b",)),
        ("/c%d", ("c%d",)),
        ("/m~0n", ("m~n",)),
        ("/ ", (" ",)),
        ("/~01", ("~1",)),  # ~1 is decoded first, so this is "~1", never "/"
        ("/~10", ("/0",)),
        ("/a//b", ("a", "", "b")),
        ("/sessionInfo/session", ("sessionInfo", "session")),
    ],
    ids=[
        "whole",
        "member",
        "index",
        "empty-key",
        "slash",
        "percent",
        "tilde",
        "space",
        "~01",
        "~10",
        "empty-mid",
        "df",
    ],
)
def test_parse_pointer(text: str, tokens: tuple[str, ...]) -> None:
    assert parse_pointer(text) == tokens


@pytest.mark.parametrize(
    "text", ["sender", "#/sender", "/a~2b", "/a~", "/~x"], ids=["no-slash", "fragment", "~2", "~end", "~x"]
)
def test_parse_pointer_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="JSON Pointer"):
        parse_pointer(text)


@pytest.mark.parametrize(
    ("pointer", "value"),
    [
        ("/foo/0", "bar"),
        ("/a~1b", None),
        ("/m~0n", None),
        ("/foo/1", "baz"),
        ("/foo/2", None),
        ("/foo/01", None),
    ],
    ids=["index", "number", "number-tilde", "index-1", "out-of-range", "leading-zero"],
)
def test_read_rfc_examples(pointer: str, value: str | None) -> None:
    """read() gives strings only: RFC 6901's /a~1b is the number 1, so None."""
    assert JsonPlacement(pointer).read(json.dumps(RFC_DOC).encode()) == value


def test_placement_refuses_the_whole_document() -> None:
    with pytest.raises(ValueError, match="whole body"):
        JsonPlacement("")


@given(st.text())
def test_escaped_keys_round_trip(key: str) -> None:
    assert parse_pointer("/" + key.replace("~", "~0").replace("/", "~1")) == (key,)


# --- JsonPlacement.place ---------------------------------------------------------------------------------


def place(pointer: str, body: Any, session_id: str = SID) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return json.loads(JsonPlacement(pointer).place(raw, session_id))


@pytest.mark.parametrize(
    ("pointer", "body", "expected"),
    [
        ("/sender", {"sender": "bob", "message": "hi"}, {"sender": SID, "message": "hi"}),
        ("/sender", {"message": "hi"}, {"message": "hi", "sender": SID}),
        ("/sender", {"sender": {"nested": [1]}}, {"sender": SID}),
        ("/sender", {"sender": 7}, {"sender": SID}),
        ("/sender", {"sender": None}, {"sender": SID}),
        ("/sessionInfo/session", {}, {"sessionInfo": {"session": SID}}),
        ("/sessionInfo/session", {"sessionInfo": None}, {"sessionInfo": {"session": SID}}),
        (
            "/sessionInfo/session",
            {"sessionInfo": {"session": "x", "parameters": {"a": 1}}},
            {"sessionInfo": {"session": SID, "parameters": {"a": 1}}},
        ),
        ("/a/b/c", {"a": {}}, {"a": {"b": {"c": SID}}}),
        ("/a~1b", {}, {"a/b": SID}),
        ("/m~0n", {"m~n": 1}, {"m~n": SID}),
        ("/", {"": "x"}, {"": SID}),
        ("/items/0", {"items": ["x", "y"]}, {"items": [SID, "y"]}),
        ("/items/1/id", {"items": [1, {"id": 2}]}, {"items": [1, {"id": SID}]}),
        ("/items/-", {"items": ["x"]}, {"items": ["x", SID]}),
        ("/items/-/id", {"items": []}, {"items": [{"id": SID}]}),
        ("/items/0/id", {"items": [None]}, {"items": [{"id": SID}]}),
        ("/0", {"0": "x"}, {"0": SID}),
        ("/a/0", {}, {"a": {"0": SID}}),  # a missing parent is created as an object, never an array
    ],
    ids=[
        "replace",
        "create",
        "replace-object",
        "replace-number",
        "replace-null",
        "create-nested",
        "null-parent",
        "keep-siblings",
        "create-deep",
        "escaped-slash",
        "escaped-tilde",
        "empty-key",
        "array-index",
        "array-nested",
        "array-append",
        "array-append-nested",
        "array-null-element",
        "digit-key",
        "digit-key-created",
    ],
)
def test_place(pointer: str, body: Any, expected: Any) -> None:
    assert place(pointer, body) == expected


def test_place_serialises_compactly_and_keeps_order_and_unicode() -> None:
    body = '{ "message" : "Grüße, 你好 😀",\n  "sender" : "bob", "n": [1, 2.5, true, null] }'.encode()
    out = JsonPlacement("/sender").place(body, SID)
    assert out == f'{{"message":"Grüße, 你好 😀","sender":"{SID}","n":[1,2.5,true,null]}}'.encode()


@pytest.mark.parametrize("body", [b"", b" \r\n\t"], ids=["empty", "whitespace"])
def test_an_empty_body_is_an_empty_object(body: bytes) -> None:
    assert JsonPlacement("/sender").place(body, SID) == f'{{"sender":"{SID}"}}'.encode()
    assert JsonPlacement("/sender").read(body) is None


def test_duplicate_members_collapse_to_the_placed_one() -> None:
    """A client cannot smuggle a second `sender` past the gateway for a bot that reads the first one."""
    assert JsonPlacement("/sender").place(b'{"sender":"a","x":1,"sender":"b"}', SID) == (
        f'{{"sender":"{SID}","x":1}}'.encode()
    )


def test_a_lone_surrogate_escape_stays_an_escape() -> None:
    out = JsonPlacement("/sender").place(b'{"text":"\\ud83d"}', SID)
    assert out == f'{{"text":"\\ud83d","sender":"{SID}"}}'.encode()


@pytest.mark.parametrize(
    ("pointer", "body", "message"),
    [
        ("/sender", b"\xff\xfe{}", "is not UTF-8 (byte 0)"),
        ("/sender", b'{"text":"caf\xe9"}', "is not UTF-8"),
        ("/sender", b"sender=bob&message=hi", "is not JSON"),
        ("/sender", b'{"sender":"bob"', "is not JSON"),
        ("/sender", b'{"a":1} {"b":2}', "is not JSON (Extra data"),
        ("/sender", b"\xef\xbb\xbf{}", "is not JSON"),
        ("/sender", b'{"n":NaN}', "has a number JSON cannot carry"),
        ("/sender", b'{"n":1e400}', "has a number JSON cannot carry"),
        ("/sender", b'{"n":' + b"9" * 5000 + b"}", "has a number too long"),
        ("/sender", b"[" * 100_000, "nests too deeply"),
        ("/sender", b'["bob"]', "is an array, not a JSON object"),
        ("/sender", b'"bob"', "is a string, not a JSON object"),
        ("/sender", b"null", "is null, not a JSON object"),
        ("/sender", b"42", "is a number, not a JSON object"),
        ("/sender/id", b'{"sender":"bob"}', "has a string at /sender, not an object"),
        ("/a/b/c", b'{"a":{"b":true}}', "has a boolean at /a/b, not an object"),
        ("/items/2", b'{"items":[1,2]}', "has no element 2 in the array at /items (length 2)"),
        ("/items/01", b'{"items":[1,2]}', "has an array at /items, which '01' cannot index"),
        ("/items/x/y", b'{"items":[]}', "has an array at /items, which 'x' cannot index"),
        ("/items/0/id", b'{"items":["a"]}', "has a string at /items/0, not an object"),
    ],
    ids=[
        "utf16-bom",
        "latin1",
        "form",
        "truncated",
        "two-documents",
        "utf8-bom",
        "nan",
        "overflow",
        "long-int",
        "deep",
        "array",
        "string",
        "null",
        "number",
        "through-string",
        "through-boolean",
        "index-out-of-range",
        "leading-zero",
        "not-an-index",
        "index-to-scalar",
    ],
)
def test_place_refuses(pointer: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequestBody) as caught:
        JsonPlacement(pointer).place(body, SID)
    error = caught.value
    assert message in error.message
    assert error.message.endswith(f"so no session id can be placed at {pointer}.")
    assert (error.status, error.code, isinstance(error, ClientFault)) == (400, "bad_request_body", True)


# --- JsonPlacement.read ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pointer", "body", "value"),
    [
        ("/sender", b'{"sender":"bob"}', "bob"),
        ("/sender", b'{"message":"hi"}', None),
        ("/sender", b'{"sender":42}', None),
        ("/sender", b'{"sender":null}', None),
        ("/sender", b'["bob"]', None),
        (
            "/sessionInfo/session",
            b'{"sessionInfo":{"session":"projects/p/sessions/s"}}',
            "projects/p/sessions/s",
        ),
        ("/sessionInfo/session", b'{"sessionInfo":"s"}', None),
        ("/a/1", b'{"a":["x","y"]}', "y"),
        ("/a/-", b'{"a":["x"]}', None),
        ("/sender", '{"sender":"bøb 😀"}'.encode(), "bøb 😀"),
    ],
    ids=[
        "present",
        "absent",
        "number",
        "null",
        "top-array",
        "nested",
        "through-string",
        "index",
        "dash",
        "unicode",
    ],
)
def test_read(pointer: str, body: bytes, value: str | None) -> None:
    assert JsonPlacement(pointer).read(body) == value


@pytest.mark.parametrize("body", [b"\xff", b"{", b"[" * 100_000], ids=["not-utf8", "not-json", "deep"])
def test_read_refuses_what_is_not_json(body: bytes) -> None:
    with pytest.raises(BadRequestBody, match="so no session id can be read at /sender"):
        JsonPlacement("/sender").read(body)


# --- properties and size ---------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
JSON_OBJECTS = st.dictionaries(st.text(), JSON_VALUES, max_size=6)
TOKENS = st.lists(st.text(max_size=8), min_size=1, max_size=3)


def pointer_of(tokens: list[str]) -> str:
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


@given(doc=JSON_OBJECTS, tokens=TOKENS, session_id=st.text())
@example(doc={"sender": "bob"}, tokens=["sender"], session_id=SID)
@example(doc={"a": ["x"]}, tokens=["a", "-"], session_id="id")
@example(doc={"s": "\ud800"}, tokens=["s"], session_id="\udfff")  # lone surrogates on both sides
def test_place_then_read_gives_the_id(doc: dict[str, Any], tokens: list[str], session_id: str) -> None:
    placement = JsonPlacement(pointer_of(tokens))
    try:
        body = json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: send it escaped, as a browser's JSON.stringify does
        body = json.dumps(doc).encode()
    try:
        out = placement.place(body, session_id)
    except BadRequestBody as exc:  # the pointer ran through a scalar or past an array: refused, never a 500
        assert exc.message.startswith("The request body has ")
        return
    if tokens[-1] == "-":
        return  # appended: "-" reads nothing back, by RFC 6901
    assert placement.read(out) == session_id


@given(doc=JSON_OBJECTS, key=st.text(), session_id=st.text())
def test_placing_a_member_keeps_everything_else(doc: dict[str, Any], key: str, session_id: str) -> None:
    body = json.dumps(doc).encode()
    out = json.loads(JsonPlacement(pointer_of([key])).place(body, session_id))
    assert out.pop(key) == session_id
    doc.pop(key, None)
    assert out == doc


def _rasa_body(size: int) -> bytes:
    doc: dict[str, Any] = {"sender": "bob", "message": "change my booking", "metadata": {"history": []}}
    while len(body := json.dumps(doc, ensure_ascii=False).encode()) < size:
        doc["metadata"]["history"].append({"role": "user", "text": "a line of the conversation, ünïcødé"})
    return body


def _fastest(run: Any, number: int) -> float:
    """The best of five runs of `number` calls, per call."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            run()
        best = min(best, time.perf_counter() - start)
    return best / number


def test_placing_grows_linearly_with_the_body() -> None:
    """64 times the body costs about 45 times as much (fixed costs amortise); quadratic would be ~4000."""
    placement = JsonPlacement("/sender")
    small, large = _rasa_body(1024), _rasa_body(64 * 1024)
    per_small = _fastest(lambda: placement.place(small, SID), 200)
    per_large = _fastest(lambda: placement.place(large, SID), 10)
    assert per_large / per_small < 64 * 5


# --- PathPlacement ---------------------------------------------------------------------------------------

DF = "/v3/projects/*/locations/*/agents/*/sessions/{session}"
DF_METHOD = "/v3/projects/*/locations/*/agents/*/sessions/{session}:detectIntent"
DF_PATH = "/v3/projects/p-1/locations/global/agents/a1b2/sessions/"


@pytest.mark.parametrize(
    ("pattern", "path", "placed"),
    [
        ("/sessions/{session}", "/sessions/abc", f"/sessions/{SID}"),
        ("/sessions/{session}", "/bot/sessions/abc/history", f"/bot/sessions/{SID}/history"),
        ("/sessions/{session}", "/sessions/abc?x=1&y=%2F+%20", f"/sessions/{SID}?x=1&y=%2F+%20"),
        ("/sessions/{session}", "/sessions/abc?next=/sessions/x", f"/sessions/{SID}?next=/sessions/x"),
        ("/sessions/{session}", "/sessions/a/sessions/b", f"/sessions/{SID}/sessions/b"),
        ("/sessions/{session}", "/sessions/abc:detectIntent", f"/sessions/{SID}:detectIntent"),
        ("/sessions/{session}", "/sessions/:detectIntent", f"/sessions/{SID}:detectIntent"),
        ("/sessions/{session}", "/sessions/abc;jsessionid=1", f"/sessions/{SID}"),
        ("/sessions/{session}", "/x;v=1/sessions/abc", f"/x;v=1/sessions/{SID}"),
        ("/sessions/{session}", "/sessions", None),
        ("/sessions/{session}", "/sessions/", None),
        ("/sessions/{session}", "/session/abc", None),
        ("/sessions/{session}", "/my-sessions/abc", None),
        ("/sessions/{session}", "", None),
        ("/webhooks/{session}", "/webhooks/rest/webhook", f"/webhooks/{SID}/webhook"),
        (
            "/api/v1/bots/*/converse/{session}",
            "/api/v1/bots/b1/converse/u1",
            f"/api/v1/bots/b1/converse/{SID}",
        ),
        ("/api/v1/bots/*/converse/{session}", "/api/v1/bots/converse/u1", None),
        (
            "/api/v1/bots/*/converse/{session}",
            "/api/v1/bots/b1/converse/u1/secured",
            f"/api/v1/bots/b1/converse/{SID}/secured",
        ),
        (DF, DF_PATH + "old:detectIntent", DF_PATH + SID + ":detectIntent"),
        (DF, DF_PATH + "old", DF_PATH + SID),
        (DF_METHOD, DF_PATH + "old:detectIntent", DF_PATH + SID + ":detectIntent"),
        (DF_METHOD, DF_PATH + "old:matchIntent", None),
        (DF_METHOD, DF_PATH + "old", None),
        (DF_METHOD, "/v3/projects/p/locations/l/agents/a/environments/e/sessions/s:detectIntent", None),
        ("/users/u-{session}", "/users/u-abc", f"/users/u-{SID}"),
        ("/users/u-{session}", "/users/abc", None),
    ],
    ids=[
        "exact",
        "prefix-and-rest",
        "query-byte-exact",
        "query-not-matched",
        "leftmost",
        "custom-method-kept",
        "empty-id-method",
        "params-of-the-id-dropped",
        "other-params-kept",
        "no-id-segment",
        "trailing-slash",
        "other-literal",
        "literal-is-whole-segment",
        "empty-path",
        "rasa-like",
        "botpress",
        "wildcard-needs-a-segment",
        "botpress-secured",
        "df-any",
        "df-no-method",
        "df-method",
        "df-other-method",
        "df-method-missing",
        "df-environments",
        "head-text",
        "head-text-missing",
    ],
)
def test_path_place(pattern: str, path: str, placed: str | None) -> None:
    assert PathPlacement(pattern).place(path, SID) == placed


@pytest.mark.parametrize(
    ("path", "placed"),
    [
        ("/%73essions/victim", f"/%73essions/{SID}"),
        ("/SESSIONS/victim", f"/SESSIONS/{SID}"),
        ("/sessions;x=1/victim", f"/sessions;x=1/{SID}"),
        ("/sessions//victim", f"/sessions//{SID}"),
        ("//sessions/victim", f"//sessions/{SID}"),
        ("/sessions/x/../victim", f"/sessions/{SID}"),
        ("/sessions/x/%2E%2e/victim", f"/sessions/{SID}"),
        ("/sessions/x/..;a=b/victim", f"/sessions/{SID}"),
        ("/sessions/./victim", f"/sessions/{SID}"),
        ("/a/../sessions/victim", f"/sessions/{SID}"),
        ("/sessions/victim%3AdetectIntent", f"/sessions/{SID}:detectIntent"),
        ("/sessions/vic%2Ftim", f"/sessions/{SID}"),
    ],
    ids=[
        "encoded-literal",
        "upper-case",
        "literal-params",
        "double-slash",
        "leading-double-slash",
        "dot-dot",
        "encoded-dot-dot",
        "dot-dot-params",
        "dot",
        "dot-dot-before",
        "encoded-colon",
        "encoded-slash-in-id",
    ],
)
def test_path_place_cannot_be_dodged(path: str, placed: str) -> None:
    """Spellings that lenient routers treat as /sessions/victim are matched, so the victim's id never passes."""
    assert PathPlacement("/sessions/{session}").place(path, SID) == placed


@pytest.mark.parametrize(
    ("session_id", "segment"),
    [
        ("projects/p/sessions/x", "projects%2Fp%2Fsessions%2Fx"),
        ("a b", "a%20b"),
        ("a%b", "a%25b"),
        ("a;b?c#d", "a%3Bb%3Fc%23d"),
        ("A-z_0.9~!$&'()*+,=:@", "A-z_0.9~!$&'()*+,=:@"),
        ("é", "%C3%A9"),
    ],
    ids=["slash", "space", "percent", "delimiters", "pchar-kept", "utf8"],
)
def test_path_place_encodes_the_id(session_id: str, segment: str) -> None:
    assert PathPlacement("/sessions/{session}").place("/sessions/x?q", session_id) == f"/sessions/{segment}?q"


def test_path_place_keeps_undecodable_bytes_of_the_suffix() -> None:
    assert PathPlacement("/s/{session}").place("/s/x:%FF%41", SID) == f"/s/{SID}:%FFA"


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "sessions/{session}",
        "/sessions",
        "/sessions/{session}/{session}",
        "/sessions//{session}",
        "/sessions/{session}/",
        "/sessions/{sesion}",
        "/sessions/{session}?x=1",
        "/sessions/{session};v=1",
        "/sess*/{session}",
        "/sessions/*{session}",
        "/a/{b}/{session}",
    ],
    ids=[
        "empty",
        "relative",
        "no-placeholder",
        "two-placeholders",
        "empty-segment",
        "trailing-slash",
        "typo",
        "query",
        "params",
        "partial-wildcard",
        "wildcard-with-placeholder",
        "other-braces",
    ],
)
def test_path_pattern_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        PathPlacement(pattern)


# --- IdFormat --------------------------------------------------------------------------------------------


def test_id_formats() -> None:
    uuid4, hex32 = IdFormat(), IdFormat("hex32")
    template = IdFormat("projects/p/locations/l/agents/a/sessions/{uuid}")
    assert UUID4.fullmatch(uuid4.mint()) and uuid4.max_length == 36
    assert re.fullmatch(r"[0-9a-f]{32}", hex32.mint()) and hex32.max_length == 32
    minted = template.mint()
    assert minted.startswith("projects/p/locations/l/agents/a/sessions/")
    assert UUID4.fullmatch(minted.rsplit("/", 1)[1])
    assert len(minted.encode()) == template.max_length == 41 + 36
    assert IdFormat("{uuid}:x").max_length == 38 and IdFormat("{uuid}").max_length == 36
    for fmt in (uuid4, hex32, template):
        ids = {fmt.mint() for _ in range(100)}
        assert len(ids) == 100 and all(COOKIE_OCTETS.fullmatch(i) for i in ids)
    assert IdFormat("uuid4") == IdFormat() and repr(hex32) == "IdFormat(spec='hex32', max_length=32)"


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "uuid",
        "UUID4",
        "hex",
        "{uuid}{uuid}",
        "sessions/{uuid4}",
        "a b/{uuid}",
        "a;{uuid}",
        "a,{uuid}",
        "é{uuid}",
        "{x}{uuid}",
    ],
    ids=[
        "empty",
        "uuid",
        "upper",
        "hex",
        "twice",
        "typo",
        "space",
        "semicolon",
        "comma",
        "non-ascii",
        "braces",
    ],
)
def test_id_format_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        IdFormat(spec)
