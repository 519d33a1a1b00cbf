"""End to end in headless Chromium: the demo chat widget in a cross-site iframe, with and without the client.

Two sites, as for a real embed: the host page on http://127.0.0.1:<port>, the widget and the gateway on
http://localhost:<port>. Chromium blocks the iframe's cookies (the control test proves it), so only the
session client keeps the conversation. The servers run on an asyncio loop in a thread; Playwright's sync API
drives Debian's Chromium (never a browser of Playwright's own). Screenshots of every step go to
test-artifacts/browser/.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.config import Config, DeferredConfig, load_config
from gateway.demo import add_demo_widget, create_bot_app, create_host_app, teneo_answer, widget_url_for
from gateway.demo_rasa import REST_WEBHOOK, create_rasa_bot_app
from gateway.edge.frontend import GatewayRunner

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
# The flags this machine's Chromium needs: no sandbox as root, and no background calls to the closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright disables ThirdPartyStoragePartitioning, which every current browser ships enabled: without it
# Chromium denies sessionStorage to a third-party iframe. The last --disable-features wins, so this restores
# the browser users have (Playwright's list minus that one feature).
AS_SHIPPED = (
    "--disable-features=AvoidUnnecessaryBeforeUnloadCheckSync,DestroyProfileOnBrowserClose,HttpsUpgrades,"
    "HttpsFirstBalancedModeAutoEnable,LensOverlay,MediaRouter,PaintHolding,AvoidCorsURLLoaderRestartOnRedirect,"
    "OptimizationHints,NetworkTimeServiceQuerying,AimEnabled,PreconnectToSearch"
)
CLIENT_FRAME = "Chat with the demo bot (session client)"
COOKIES_FRAME = "Chat with the demo bot (cookies only)"
IDLE_TIMEOUT = 600.0  # the gateway's; the tests move its clock instead of waiting
SLOW_SECONDS = 1.5  # the demo bot's answer to "think"
DEFERRED_AFTER = 0.3  # seconds before the gateway answers for the slow bot (tests that turn [deferred] on)
TIMEOUT_MS = 10_000


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: install Debian's chromium (scripts/_browser_setup.sh does, as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package (PyPI) is not installed"
    return None


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    """Skip without Chromium or Playwright on a developer's machine; CI must run these tests, so it fails."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


# --- servers on a loop in a thread ---------------------------------------------------------------------


class LoopThread:
    """An asyncio loop in a daemon thread: the servers run there while Playwright blocks the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="browser-test-servers", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class OffsetClock:
    """Wall time plus an offset the test moves: idle expiry without sleeping for minutes."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclasses.dataclass
class Stack:
    """The demo bot, the gateway with the widget, and the host page, each on its own port."""

    host_url: str
    gateway_url: str
    registry: CollectorRegistry
    clock: OffsetClock
    runners: list[web.AppRunner]

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


async def _site(
    app: web.Application, host: str = "127.0.0.1", runner_class: type[web.AppRunner] = web.AppRunner
) -> tuple[web.AppRunner, int]:
    runner = runner_class(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    port: int = runner.addresses[0][1]
    return runner, port


def stateless_bot() -> web.Application:
    """A bot with no session of its own: it counts turns by the X-Session-Id the gateway mints."""
    turns: dict[str, int] = {}

    async def handle(request: web.Request) -> web.Response:
        session_id = request.headers.get("X-Session-Id", "")
        if request.path.endswith("/endsession"):
            return web.json_response({"status": 1, "message": "logout"})
        text = str((await request.post()).get("userinput", ""))
        turns[session_id] = turns.get(session_id, 0) + 1
        return web.json_response(teneo_answer(text, f"You said: {text}", session_id, turns[session_id], {}))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def start_stack(issuer: str = "upstream", *, deferred: bool = False) -> Stack:
    """issuer: "upstream" (the Teneo-style demo bot), "gateway" (a stateless bot), or "rasa-rest" (the Rasa demo
    bot with session.preset = "rasa-rest", the widget speaking the REST channel). deferred: Teneo-shaped interim
    answers after DEFERRED_AFTER seconds, as `session-gateway demo` has them."""
    if issuer == "rasa-rest":
        bot = create_rasa_bot_app()
    elif issuer == "upstream":
        bot = create_bot_app(idle_timeout=IDLE_TIMEOUT * 10, slow_seconds=SLOW_SECONDS)
    else:
        bot = stateless_bot()
    deferral = {"deferred.after": str(DEFERRED_AFTER), "deferred.format": "teneo"} if deferred else {}
    bot_runner, bot_port = await _site(bot)
    config: Config = load_config(
        None,
        environ={},
        overrides={
            "upstream.url": f"http://127.0.0.1:{bot_port}",
            **({"session.preset": issuer} if issuer == "rasa-rest" else {"session.issuer": issuer}),
            "session.idle_timeout": str(IDLE_TIMEOUT),
            "session.sweep_interval": "0.1",
            "log.access": "false",
            **deferral,
        },
    )
    registry, clock = CollectorRegistry(), OffsetClock()
    gateway = create_app(config, registry=registry, clock=clock)
    add_demo_widget(gateway, config)
    gateway_runner, gateway_port = await _site(gateway, runner_class=GatewayRunner)
    gateway_url = f"http://localhost:{gateway_port}"
    params = {"bot": "rasa-rest", "endpoint": REST_WEBHOOK} if issuer == "rasa-rest" else {}
    host_runner, host_port = await _site(create_host_app(widget_url_for(gateway_url), params))
    return Stack(
        host_url=f"http://127.0.0.1:{host_port}/",
        gateway_url=gateway_url,
        registry=registry,
        clock=clock,
        runners=[host_runner, gateway_runner, bot_runner],
    )


@pytest.fixture(scope="module")
def servers() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def make_stack(servers: LoopThread) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(issuer: str = "upstream", **options: Any) -> Stack:
        stack: Stack = servers.run(start_stack(issuer, **options))
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        for runner in stack.runners:
            servers.run(runner.cleanup())


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


# --- the browser ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def _launch(playwright: Any, *extra: str) -> Any:
    # executable_path: Debian's Chromium; Playwright never downloads a browser of its own here.
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra], timeout=30_000)


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    browser = _launch(playwright, AS_SHIPPED)
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))  # uncaught exceptions, iframes included
    yield page
    assert errors == [], f"the page threw: {errors}"


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def open_chat(page: Any, url: str, title: str = CLIENT_FRAME) -> Any:
    """Load the host page and return the chat iframe's FrameLocator once its script is ready."""
    page.goto(url)
    chat = page.frame_locator(f'iframe[title="{title}"]')
    chat.locator(":root[data-ready=true]").wait_for(state="attached")
    return chat


def send_in_chat(chat: Any, text: str) -> int:
    """Type a message, press Enter, wait for the bot's answer; its turn counter."""
    from playwright.sync_api import expect

    answers = chat.locator("li.msg.bot")
    before = answers.count()
    box = chat.get_by_label("Message")
    box.fill(text)
    box.press("Enter")
    expect(answers).to_have_count(before + 1)
    expect(box).to_be_focused()  # focus stays in the composer for the next message
    return int(answers.last.get_attribute("data-turn"))


def think(chat: Any, on_interim: Callable[[], None] = lambda: None) -> int:
    """Ask the demo bot to "think": the gateway's interim line shows first, then the answer; its turn counter."""
    from playwright.sync_api import expect

    answers, interims = chat.locator("li.msg.bot"), chat.locator("li.msg.interim")
    before, shown = answers.count(), interims.count()
    box = chat.get_by_label("Message")
    box.fill("think")
    box.press("Enter")
    expect(interims).to_have_count(shown + 1)
    expect(interims.last).to_have_text(re.compile(re.escape(DeferredConfig().message)))
    assert answers.count() == before  # the bot is still thinking (for SLOW_SECONDS in all)
    expect(chat.locator("#typing")).to_be_visible()
    on_interim()
    expect(answers).to_have_count(before + 1)
    expect(answers.last).to_have_text(re.compile(f"I thought about it for {SLOW_SECONDS:g} seconds"))
    return int(answers.last.get_attribute("data-turn"))


def frame(page: Any, title: str = CLIENT_FRAME) -> Any:
    """The chat iframe's Frame, for evaluating script inside it."""
    return page.locator(f'iframe[title="{title}"]').element_handle().content_frame()


def reasons(chat: Any) -> list[str]:
    """The new-session reasons the widget has shown, oldest first."""
    items = chat.locator("li.notice[data-reason]")
    return [items.nth(i).get_attribute("data-reason") for i in range(items.count())]


# --- the tests ------------------------------------------------------------------------------------------


def test_cookies_alone_lose_the_conversation_in_the_iframe(stack: Stack, page: Any) -> None:
    """The control: a widget relying on its cookie starts over with every message: the browser blocks it."""
    chat = open_chat(page, stack.host_url, COOKIES_FRAME)
    turns = [send_in_chat(chat, text) for text in ("Hi there", "Do you remember me?", "Still nothing?")]
    shot(page, "01-cookies-only-iframe-forgets")
    assert turns == [1, 1, 1]
    assert reasons(chat) == ["first", "first", "first"]
    # The same widget opened top-level (first-party) gets its cookie back: the iframe is what breaks it. (Its
    # first turn may continue the iframe's last session: Chromium stored that cookie, it only never sent it.)
    page.goto(widget_url_for(stack.gateway_url) + "?mode=cookies")
    page.locator(":root[data-ready=true]").wait_for(state="attached")
    first = send_in_chat(page, "First-party")
    assert send_in_chat(page, "Again") == first + 1


def test_session_client_keeps_the_conversation(stack: Stack, page: Any) -> None:
    chat = open_chat(page, stack.host_url)
    shot(page, "02-host-page-before-chatting")
    turns = [
        send_in_chat(chat, text)
        for text in ("Hi there", "Do you remember me?", "What turn is this?", "One more")
    ]
    assert turns == [1, 2, 3, 4]
    assert reasons(chat) == ["first"]
    assert stack.sample("session_gateway_session_carrier_total", carrier="header") == 3
    # Next to it, the widget without the client starts over every time (the README's screenshot).
    cookies_only = page.frame_locator(f'iframe[title="{COOKIES_FRAME}"]')
    assert [send_in_chat(cookies_only, text) for text in ("Hi there", "Do you remember me?")] == [1, 1]
    shot(page, "03-session-client-turns-1-to-4")


def test_idle_timeout_shows_the_expired_notice(stack: Stack, page: Any) -> None:
    from playwright.sync_api import expect

    chat = open_chat(page, stack.host_url)
    assert [send_in_chat(chat, "Hello"), send_in_chat(chat, "Still there?")] == [1, 2]
    stack.clock.offset += IDLE_TIMEOUT + 1  # the gateway's idle timeout passes (the bot's own is longer)
    deadline = time.monotonic() + 5
    while stack.sample("session_gateway_sessions_active") != 0:  # the sweeper ends it with no request
        assert time.monotonic() < deadline, "the sweeper did not end the idle session"
        time.sleep(0.05)
    assert send_in_chat(chat, "I am back") == 1
    expect(chat.locator("li.notice").last).to_have_text(re.compile("previous conversation timed out"))
    assert reasons(chat) == ["first", "expired"]
    shot(page, "04-idle-timeout-expired-notice")
    assert stack.sample("session_gateway_sessions_ended_total", reason="idle") == 1


def test_end_chat_starts_a_new_session_with_reason_ended(stack: Stack, page: Any) -> None:
    from playwright.sync_api import expect

    chat = open_chat(page, stack.host_url)
    assert [send_in_chat(chat, "Hello"), send_in_chat(chat, "Bye soon")] == [1, 2]
    chat.get_by_role("button", name="End chat").click()
    expect(chat.locator("li.notice").last).to_have_text(re.compile("You ended the chat"))
    expect(chat.get_by_label("Message")).to_be_focused()
    assert stack.sample("session_gateway_sessions_ended_total", reason="client") == 1
    shot(page, "05-end-chat")
    assert send_in_chat(chat, "Hello again") == 1
    assert reasons(chat) == ["first", "ended"]
    shot(page, "06-after-end-chat-new-session")


def test_reload_keeps_the_conversation_and_a_new_tab_does_not_share_it(
    stack: Stack, page: Any, context: Any
) -> None:
    chat = open_chat(page, stack.host_url)
    assert [send_in_chat(chat, "Hello"), send_in_chat(chat, "Remember this")] == [1, 2]
    page.reload()
    chat = open_chat(page, stack.host_url)
    assert chat.locator("li.msg.bot").count() == 2  # the transcript is back too
    assert send_in_chat(chat, "After the reload") == 3
    shot(page, "07-after-reload-turn-3")

    other = context.new_page()
    other_chat = open_chat(other, stack.host_url)
    assert send_in_chat(other_chat, "A second tab") == 1
    assert reasons(other_chat) == ["first"]
    shot(other, "08-new-tab-own-conversation")
    assert send_in_chat(chat, "Back in the first tab") == 4
    assert reasons(chat) == ["first"]


def test_gateway_issued_sessions(make_stack: Callable[..., Stack], page: Any) -> None:
    """issuer = gateway: the id comes from X-Session-Id (a UUID4) and reaches a stateless bot."""
    stack = make_stack("gateway")
    chat = open_chat(page, stack.host_url)
    assert [send_in_chat(chat, text) for text in ("One", "Two", "Three")] == [1, 2, 3]
    stored = frame(page).evaluate(
        "() => JSON.parse(sessionStorage.getItem('session-gateway:' + location.origin))"
    )
    assert uuid.UUID(stored["id"]).version == 4
    assert stored["pair"].startswith("GatewayAffinity=")
    shot(page, "09-gateway-issued-sessions")


def test_a_rasa_rest_bot_keeps_its_conversation_in_a_cookieless_iframe(
    make_stack: Callable[..., Stack], page: Any
) -> None:
    """session.preset = "rasa-rest": the widget never picks a sender; the gateway's id is the conversation."""
    stack = make_stack("rasa-rest")
    chat = open_chat(page, stack.host_url)
    assert [send_in_chat(chat, text) for text in ("One", "Two", "Three")] == [1, 2, 3]
    cookies_only = open_chat(page, stack.host_url, COOKIES_FRAME)
    assert [send_in_chat(cookies_only, text) for text in ("One", "Two")] == [
        1,
        1,
    ]  # the control: cookies are blocked
    chat.get_by_role("button", name="End chat").click()
    assert send_in_chat(chat, "Again") == 1
    assert reasons(chat)[-1] == "ended"
    shot(page, "10-rasa-rest")


def test_end_on_pagehide_uses_keepalive(stack: Stack, page: Any) -> None:
    chat = open_chat(page, stack.host_url + "?endOnPageHide=1")
    assert send_in_chat(chat, "Hello") == 1
    page.goto("about:blank")  # pagehide in the iframe: the client ends the session with a keepalive fetch
    deadline = time.monotonic() + 5
    while stack.sample("session_gateway_sessions_ended_total", reason="client") != 1:
        assert time.monotonic() < deadline, "the session was not ended on pagehide"
        time.sleep(0.05)


def test_storage_denied_to_the_iframe_falls_back_to_memory(stack: Stack, playwright: Any) -> None:
    """Where a browser denies sessionStorage to third-party iframes, the session lives as long as the page."""
    browser = _launch(playwright)  # Playwright's defaults: no storage partitioning, so storage is denied
    try:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        chat = open_chat(page, stack.host_url)
        probe = "() => { try { sessionStorage; return 'allowed' } catch { return 'denied' } }"
        assert frame(page).evaluate(probe) == "denied"
        assert [send_in_chat(chat, text) for text in ("One", "Two", "Three")] == [1, 2, 3]
        page.reload()
        chat = open_chat(page, stack.host_url)
        assert send_in_chat(chat, "After the reload") == 1
        assert reasons(chat) == ["first"]
    finally:
        browser.close()


def test_a_slow_answer_shows_the_interim_then_the_answer(make_stack: Callable[..., Stack], page: Any) -> None:
    """[deferred]: the gateway answers for the slow bot; the client picks the answer up in the cookie-blocked
    iframe, where only X-Teneo-Session carries the session to the pick-up."""
    stack = make_stack(deferred=True)
    chat = open_chat(page, stack.host_url)
    assert send_in_chat(chat, "Hello") == 1
    started = time.monotonic()
    assert think(chat, lambda: shot(page, "11-deferred-interim")) == 2
    assert time.monotonic() - started >= SLOW_SECONDS
    shot(page, "12-deferred-answer")
    assert send_in_chat(chat, "And now?") == 3  # the same conversation, the slow turn counted once
    assert reasons(chat) == ["first"]
    assert stack.sample("session_gateway_deferred_total", outcome="delivered") == 1
    # The widget without the client picks its answer up too, in a new conversation as every time.
    cookies_only = page.frame_locator(f'iframe[title="{COOKIES_FRAME}"]')
    assert think(cookies_only) == 1
