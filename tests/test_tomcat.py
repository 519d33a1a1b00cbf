"""End to end against a real Apache Tomcat (tests/tomcat.py): the gateway in front of a servlet container that
keeps its sessions in JSESSIONID, scopes that cookie to its context path `/bot`, renames sessions with
changeSessionId() and writes `;jsessionid=` into redirects. One Tomcat serves the whole module; every test
starts its own conversations on it. Skipped without Tomcat, failed under CI=true."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from session_helpers import FakeClock, P, Reply, Rig, StartRig, carrying, make_session_config, start_rig
from tomcat import TomcatServer, running_tomcat


@pytest.fixture(scope="module")
def tomcat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TomcatServer]:
    with running_tomcat(tmp_path_factory.mktemp("tomcat")) as server:
        yield server


@pytest.fixture
def gateway(aiohttp_client: Any, clock: FakeClock, tomcat: TomcatServer) -> StartRig:
    """start(environ=None, **session options) -> a gateway (memory store) with upstream.url = Tomcat's /bot."""

    async def start(*, environ: dict[str, str] | None = None, **session: Any) -> Rig:
        config = make_session_config(tomcat.url, session=session, environ=environ)
        return await start_rig(aiohttp_client, config, clock)

    return start


@pytest.fixture
async def direct(tomcat: TomcatServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of Tomcat itself, bypassing the gateway: no cookie jar, no redirects followed."""
    async with aiohttp.ClientSession(tomcat.origin, cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def send_unredirected(
    rig: Rig, path: str = "/engine?userinput=hi", *, method: str = "GET", header: str | None = None
) -> Reply:
    """One request through the gateway, redirects not followed; `header=<id>` carries it in X-Teneo-Session."""
    async with rig.client.request(method, path, headers=carrying(header), allow_redirects=False) as response:
        return Reply(response.status, response.headers, await response.read())


def turn(reply: Reply) -> int:
    assert reply.status == 200, (reply.status, reply.body)
    return int(reply.json["turn"])


def bot_id(reply: Reply) -> str:
    """The session id Tomcat answered under."""
    return str(reply.json["sessionId"])


def cookie_path(reply: Reply, name: str = "JSESSIONID") -> str | None:
    cookie = reply.set_cookie(name)
    assert cookie is not None, reply.set_cookies
    for attr in cookie.split(";")[1:]:
        key, _, value = attr.partition("=")
        if key.strip().lower() == "path":
            return value.strip()
    return None


def counter_total(rig: Rig, family: str) -> float:
    """A counter's sum over all its labels."""
    return sum(
        sample.value
        for metric in rig.registry.collect()
        if metric.name == P + family
        for sample in metric.samples
        if sample.name == P + family + "_total"
    )


# --- Tomcat itself: what the tests below rely on ----------------------------------------------------------


async def test_tomcat_scopes_its_cookie_to_the_context_and_encodes_new_sessions_in_redirects(
    tomcat: TomcatServer, direct: aiohttp.ClientSession
) -> None:
    async with direct.get("/bot/engine/endsession") as response:
        assert await response.json() == {"status": 1, "message": "logout", "invalidated": False}
        assert "Set-Cookie" not in response.headers  # endsession never creates a session
    async with direct.get("/bot/engine?redirect=1", allow_redirects=False) as response:
        assert response.status == 302
        session_id = response.cookies["JSESSIONID"].value
        assert response.cookies["JSESSIONID"]["path"] == "/bot"
        # a new session and no cookie: Tomcat cannot know the client keeps cookies
        assert response.headers["Location"] == f"{tomcat.url}/engine;jsessionid={session_id}?after=1"
    cookie = {"Cookie": f"JSESSIONID={session_id}"}
    async with direct.get("/bot/engine?redirect=1", headers=cookie, allow_redirects=False) as response:
        assert response.headers["Location"] == f"{tomcat.url}/engine?after=1"
    async with direct.get("/bot/engine", headers=cookie) as response:
        assert (await response.json())["turn"] == 1


# --- continuing a conversation (passes with today's gateway) ----------------------------------------------


async def test_a_conversation_continues_by_header(gateway: StartRig) -> None:
    rig = await gateway()
    first = await send_unredirected(rig)
    assert (first.new, turn(first)) == ("first", 1)
    session_id = first.session_id
    assert session_id == bot_id(first)
    for expected in (2, 3):
        reply = await send_unredirected(rig, header=session_id)
        assert (reply.new, reply.session_id, turn(reply), bot_id(reply)) == (
            None,
            session_id,
            expected,
            session_id,
        )


async def test_a_conversation_continues_by_path_parameter(gateway: StartRig) -> None:
    rig = await gateway()
    first = await send_unredirected(rig, "/engine")
    session_id = first.session_id
    assert (first.new, turn(first)) == ("first", 1)
    for expected in (2, 3):
        reply = await send_unredirected(rig, f"/engine;jsessionid={session_id}?userinput=hi")
        assert (reply.new, reply.session_id, turn(reply)) == (None, session_id, expected)


async def test_a_session_tomcat_ended_on_its_own_restarts_as_upstream(gateway: StartRig) -> None:
    rig = await gateway()
    session_id = (await send_unredirected(rig)).session_id
    ended = await send_unredirected(
        rig, "/engine?end=1", header=session_id
    )  # Tomcat invalidates after answering
    assert turn(ended) == 2
    reply = await send_unredirected(rig, header=session_id)
    assert (reply.new, turn(reply)) == ("upstream", 1)
    assert reply.session_id == bot_id(reply) != session_id


async def test_a_rotated_id_restarts_the_conversation_by_default(gateway: StartRig) -> None:
    rig = await gateway()
    session_id = (await send_unredirected(rig)).session_id
    await send_unredirected(rig, header=session_id)
    rotated = await send_unredirected(rig, "/engine?rotate=1", header=session_id)
    assert turn(rotated) == 3  # Tomcat kept the conversation; the default still reads a new id as a new one
    assert (rotated.new, rotated.session_id) == ("upstream", bot_id(rotated))
    assert rotated.session_id != session_id


# --- endsession for an id the gateway does not know -------------------------------------------------------


async def test_endsession_for_an_unknown_id_is_forwarded_to_the_bot(
    gateway: StartRig, direct: aiohttp.ClientSession
) -> None:
    a = await gateway()
    session_id = (await send_unredirected(a)).session_id
    assert session_id is not None
    assert turn(await send_unredirected(a, header=session_id)) == 2
    await a.client.close()

    b = await gateway()  # a fresh memory store: B never saw this session
    ended = await send_unredirected(b, f"/engine/endsession;jsessionid={session_id}", method="POST")
    assert (ended.status, ended.json) == (200, {"status": 1, "message": "logout", "invalidated": True})

    async with direct.get("/bot/engine", headers={"Cookie": f"JSESSIONID={session_id}"}) as response:
        body = await response.json()
        assert (body["turn"], body["sessionId"] != session_id) == (1, True)  # Tomcat forgot it

    after = await send_unredirected(b, header=session_id)
    assert (after.new, turn(after)) == ("ended", 1)
    assert after.session_id == bot_id(after) != session_id
    assert b.ended("client") == 0  # B had no record to end


# --- session.on_bot_new_id = "rename" ---------------------------------------------------------------------


async def test_rename_follows_tomcats_change_of_session_id(gateway: StartRig) -> None:
    rig = await gateway(on_bot_new_id="rename")
    old = (await send_unredirected(rig)).session_id
    assert turn(await send_unredirected(rig, header=old)) == 2
    rotated = await send_unredirected(rig, "/engine?rotate=1", header=old)
    new = bot_id(rotated)
    assert turn(rotated) == 3
    assert new != old
    assert (rotated.new, rotated.session_id) == (None, new)
    assert rig.metric("sessions_renamed_total") == 1
    assert (counter_total(rig, "sessions_started"), counter_total(rig, "sessions_ended")) == (1, 0)

    other_tab = await send_unredirected(rig, header=old)  # still presenting the id it had
    assert (other_tab.new, other_tab.session_id, turn(other_tab), bot_id(other_tab)) == (None, new, 4, new)


# --- cookie paths and redirects mapped from /bot to the public prefix -------------------------------------


async def test_a_cookie_keeping_client_continues_with_the_cookie_path_mapped(gateway: StartRig) -> None:
    rig = await gateway()
    url = rig.client.make_url("/engine")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        replies = []
        for _ in range(3):
            async with client.get(url) as response:
                replies.append(Reply(response.status, response.headers, await response.read()))
    assert cookie_path(replies[0]) == "/"  # Tomcat sent Path=/bot, which /engine is not under
    assert [turn(reply) for reply in replies] == [1, 2, 3]
    assert [reply.new for reply in replies] == ["first", None, None]
    assert len({reply.session_id for reply in replies}) == 1


@pytest.mark.parametrize(
    ("environ", "path"),
    [
        ({}, "/"),
        ({"GATEWAY_UPSTREAM_PUBLIC_PREFIX": "/chat"}, "/chat"),
        ({"GATEWAY_UPSTREAM_REWRITE_PATHS": "false"}, "/bot"),
    ],
    ids=["root", "public-prefix", "rewrite-off"],
)
async def test_the_cookie_path_becomes_the_public_prefix(
    gateway: StartRig, environ: dict[str, str], path: str
) -> None:
    rig = await gateway(environ=environ)
    assert cookie_path(await send_unredirected(rig)) == path


@pytest.mark.parametrize(
    ("redirect", "environ", "location"),
    [
        ("1", {}, "/engine?after=1"),
        ("path", {}, "/engine?after=1"),
        ("1", {"GATEWAY_UPSTREAM_PUBLIC_PREFIX": "/chat"}, "/chat/engine?after=1"),
    ],
    ids=["absolute", "path-absolute", "public-prefix"],
)
async def test_a_redirect_into_the_bot_becomes_a_public_path(
    gateway: StartRig, redirect: str, environ: dict[str, str], location: str
) -> None:
    rig = await gateway(environ=environ)
    session_id = (await send_unredirected(rig)).session_id
    reply = await send_unredirected(rig, f"/engine?redirect={redirect}", header=session_id)
    assert (reply.status, reply.headers.get("Location")) == (302, location)


@pytest.mark.parametrize("carrier", ["header", "path"])
async def test_tomcats_jsessionid_in_a_redirect_is_kept_only_for_path_parameter_clients(
    gateway: StartRig, carrier: str
) -> None:
    """Tomcat writes `;jsessionid=` into a redirect when it starts a session on a request without a cookie:
    here, after the client ended its session and presents the old id."""
    rig = await gateway()
    old = (await send_unredirected(rig)).session_id

    def carried(path: str, query: str = "") -> dict[str, Any]:
        if carrier == "header":
            return {"path": path + query, "header": old}
        return {"path": f"{path};jsessionid={old}{query}"}

    assert (await send_unredirected(rig, **carried("/engine/endsession"), method="POST")).status == 200
    reply = await send_unredirected(rig, **carried("/engine", "?redirect=1"))
    assert (reply.status, reply.new) == (302, "ended")
    new = reply.session_id
    assert new is not None
    assert new != old
    if carrier == "header":
        assert reply.headers["Location"] == "/engine?after=1"
    else:
        assert reply.headers["Location"] == f"/engine;jsessionid={new}?after=1"
