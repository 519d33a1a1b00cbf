"""End-to-end CORS for cross-site chat widgets: the gateway answers preflights and decorates responses."""

from __future__ import annotations

import pytest
from session_helpers import HeaderEchoBot, Reply, Rig, StartEcho, StartRig

SHOP = "https://shop.example"
OTHER = "https://evil.example"
EXPOSED = {"x-gateway-session", "x-session-id", "x-session-new"}


def tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def cors_headers(reply: Reply) -> list[str]:
    return [name for name in reply.headers if name.lower().startswith("access-control-")]


async def preflight(rig: Rig, origin: str, request_headers: str = "x-teneo-session, content-type") -> Reply:
    return await rig.send(
        "/chat",
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": request_headers,
        },
    )


@pytest.fixture
async def bot(start_echo: StartEcho) -> HeaderEchoBot:
    # The bot answers with CORS headers of its own, which the gateway must replace.
    return await start_echo(
        response_headers={
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": "X-Bot-Secret",
            "Access-Control-Allow-Credentials": "false",
        }
    )


@pytest.fixture
async def rig(bot: HeaderEchoBot, rig_for: StartRig) -> Rig:
    return await rig_for(bot.url, cors={"allow_origins": (SHOP,), "allow_headers": ("X-Widget-Version",)})


async def test_preflight_from_an_allowed_origin_is_answered_by_the_gateway(
    rig: Rig, bot: HeaderEchoBot
) -> None:
    reply = await preflight(rig, SHOP)
    assert reply.status == 204
    assert bot.seen == []  # never forwarded
    h = reply.headers
    assert h.getall("Access-Control-Allow-Origin") == [SHOP]
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert {"content-type", "x-teneo-session", "x-widget-version"} <= tokens(
        h["Access-Control-Allow-Headers"]
    )
    assert "post" in tokens(h["Access-Control-Allow-Methods"])
    assert "origin" in tokens(h.get("Vary"))
    assert int(h["Access-Control-Max-Age"]) == 600
    # A preflight is no session request: nothing counted.
    assert rig.metric("session_carrier_total", carrier="none") == 0


async def test_actual_response_to_an_allowed_origin(rig: Rig, bot: HeaderEchoBot) -> None:
    reply = await rig.send("/chat", headers={"Origin": SHOP}, header="LIVE0001")
    assert reply.status == 200
    h = reply.headers
    assert h.getall("Access-Control-Allow-Origin") == [SHOP]
    assert h.getall("Access-Control-Allow-Credentials") == ["true"]
    exposed = tokens(",".join(h.getall("Access-Control-Expose-Headers")))
    assert exposed >= EXPOSED
    assert "x-bot-secret" not in exposed  # the bot's own CORS headers are replaced
    assert "origin" in tokens(h.get("Vary"))
    # The exposed headers are really there.
    assert h["X-Session-Id"] == "LIVE0001" and "X-Gateway-Session" in h
    assert bot.last.headers["Origin"] == SHOP  # the request itself is forwarded as usual


async def test_first_exchange_exposes_x_session_new(rig: Rig) -> None:
    reply = await rig.send("/chat", headers={"Origin": SHOP})
    assert "x-session-new" in tokens(reply.headers.get("Access-Control-Expose-Headers"))


async def test_other_origins_get_no_cors_headers(rig: Rig, bot: HeaderEchoBot) -> None:
    reply = await rig.send("/chat", headers={"Origin": OTHER}, header="LIVE0001")
    assert reply.status == 200
    assert cors_headers(reply) == []  # not even the bot's own
    assert "origin" in tokens(reply.headers.get("Vary"))  # caches must still key on Origin
    pre = await preflight(rig, OTHER)
    assert pre.status == 403
    assert pre.json["error"]["code"] == "cors_origin_not_allowed"
    assert cors_headers(pre) == []
    assert len(bot.seen) == 1  # the refused preflight was not forwarded either


async def test_no_origin_gets_no_cors_headers(rig: Rig) -> None:
    reply = await rig.send("/chat")
    assert reply.status == 200
    assert cors_headers(reply) == []


async def test_origin_match_is_exact(rig: Rig) -> None:
    for origin in ("https://shop.example:8443", "http://shop.example", "https://shop.example.evil", "null"):
        reply = await rig.send("/chat", headers={"Origin": origin})
        assert cors_headers(reply) == [], origin


async def test_wildcard_origin_never_allows_credentials(bot: HeaderEchoBot, rig_for: StartRig) -> None:
    rig = await rig_for(bot.url, cors={"allow_origins": ("*",)})
    pre = await preflight(rig, OTHER)
    assert pre.status == 204
    assert pre.headers.getall("Access-Control-Allow-Origin") == ["*"]
    assert "Access-Control-Allow-Credentials" not in pre.headers
    assert {"content-type", "x-teneo-session"} <= tokens(pre.headers["Access-Control-Allow-Headers"])
    reply = await rig.send("/chat", headers={"Origin": OTHER})
    assert reply.headers.getall("Access-Control-Allow-Origin") == ["*"]
    assert "Access-Control-Allow-Credentials" not in reply.headers  # not even the bot's "false"
    assert tokens(reply.headers.get("Access-Control-Expose-Headers")) >= EXPOSED
    assert bot.seen and all(s.method != "OPTIONS" for s in bot.seen)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"headers": {"X-Teneo-Session": "garbage"}}, 400, "bad_session_header"),
        ({"header": "A" * 200}, 400, "bad_session_header"),
    ],
    ids=["not-a-cookie-string", "id-too-long"],
)
async def test_error_responses_to_an_allowed_origin_carry_cors_headers(
    rig: Rig, bot: HeaderEchoBot, kwargs: dict[str, object], status: int, code: str
) -> None:
    headers = {"Origin": SHOP, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    reply = await rig.send("/chat", headers=headers, **kwargs)  # type: ignore[arg-type]
    assert reply.status == status
    assert reply.json["error"]["code"] == code
    assert reply.headers.getall("Access-Control-Allow-Origin") == [SHOP]
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"
    assert bot.seen == []


async def test_capacity_error_to_an_allowed_origin_carries_cors_headers(
    bot: HeaderEchoBot, rig_for: StartRig
) -> None:
    rig = await rig_for(
        bot.url, cors={"allow_origins": (SHOP,)}, issuer="gateway", max_sessions=1, on_full="reject"
    )
    assert (await rig.send("/chat", headers={"Origin": SHOP})).status == 200
    reply = await rig.send("/chat", headers={"Origin": SHOP})
    assert reply.status == 503
    assert reply.headers.getall("Access-Control-Allow-Origin") == [SHOP]


async def test_without_allow_origins_cors_is_left_to_the_bot(bot: HeaderEchoBot, rig_for: StartRig) -> None:
    rig = await rig_for(bot.url)
    pre = await preflight(rig, SHOP)
    assert pre.status == 200  # forwarded: the bot answers it
    assert bot.last.method == "OPTIONS"
    assert pre.headers.getall("Access-Control-Allow-Origin") == ["*"]  # the bot's own, untouched
    reply = await rig.send("/chat", headers={"Origin": SHOP})
    assert reply.headers["Access-Control-Expose-Headers"] == "X-Bot-Secret"
