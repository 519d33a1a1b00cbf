"""Test bots that speak real platforms' wire formats, written from their public docs and sources.

- RasaRestBot: Rasa's REST channel (rasa/core/channels/rest.py; legacy-docs-oss.rasa.com, "your own website").
- DialogflowCxBot: Dialogflow CX `sessions.detectIntent` (REST v3; the session is a path segment of <= 36 bytes).
- DialogflowWebhookBot: a Dialogflow CX webhook (WebhookRequest in, WebhookResponse out).
- BotpressConverseBot: Botpress 12's Converse API (`POST /api/v1/bots/<bot>/converse/<userId>`).

Each counts turns per conversation key (the key the platform reads) and records every request it saw, with that
key, so integration tests can check what the gateway placed. Replies are `turn <n>: <text>` everywhere.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

DF_MAX_SESSION_ID = 36  # bytes (cloud.google.com/dialogflow/cx/docs/concept/session)
DF_START_PAGE = "flows/00000000-0000-0000-0000-000000000000/pages/START_PAGE"
BOTPRESS_MAX_TEXT = 360  # characters (Botpress 12 ConverseService.sendMessage)


@dataclass(slots=True)
class Heard:
    """One request as a protocol bot saw it, and the conversation key it read (None: none, or refused)."""

    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    key: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True)
class ProtocolBot:
    """Turn counting and request recording shared by the bots below."""

    seen: list[Heard] = field(default_factory=list)
    turns: dict[str, int] = field(default_factory=dict)

    def app(self) -> web.Application:
        raise NotImplementedError

    @property
    def last(self) -> Heard:
        assert self.seen, f"the {type(self).__name__} saw no request"
        return self.seen[-1]

    @property
    def keys(self) -> list[str | None]:
        """The conversation key of every request, in order."""
        return [heard.key for heard in self.seen]

    async def hear(self, request: web.Request) -> Heard:
        body = await request.read()
        heard = Heard(request.method, request.raw_path, CIMultiDictProxy(CIMultiDict(request.headers)), body)
        self.seen.append(heard)
        return heard

    def count(self, key: str) -> int:
        self.turns[key] = turn = self.turns.get(key, 0) + 1
        return turn


# --- Rasa REST channel ---------------------------------------------------------------------------------


def _sanic_error(status: int, description: str, message: str) -> web.Response:
    """Sanic's JSON error body (Rasa's HTTP server is Sanic)."""
    return web.json_response(
        {"description": description, "status": status, "message": message}, status=status
    )


@dataclass(slots=True)
class RasaRestBot(ProtocolBot):
    """Rasa's REST channel: `{"sender", "message"}` in, a list of `{"recipient_id", "text"}` out.

    As Rasa: `sender` absent or null is "default" (UserMessage.DEFAULT_SENDER_ID), a non-string sender is str()-ed;
    a body that is not JSON is Sanic's 400; an empty body or JSON that is not an object fails `.get` (Sanic's 500);
    a missing or empty `message` is answered 200 `[]` (the channel catches the failure and returns what it
    collected), with no turn counted.
    """

    version: str = "3.6.20"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.hello)
        app.router.add_get("/webhooks/rest", self.health)  # Sanic routes without strict slashes
        app.router.add_get("/webhooks/rest/", self.health)
        app.router.add_post("/webhooks/rest/webhook", self.webhook)
        return app

    async def hello(self, request: web.Request) -> web.Response:
        return web.Response(text=f"Hello from Rasa: {self.version}")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def webhook(self, request: web.Request) -> web.Response:
        heard = await self.hear(request)
        try:
            data = json.loads(heard.body) if heard.body else None
        except ValueError:
            return _sanic_error(400, "Bad Request", "Failed when parsing body as json")
        if not isinstance(data, dict):
            return _sanic_error(
                500,
                "Internal Server Error",
                "The server encountered an internal error and cannot complete your request.",
            )
        sender = data.get("sender")
        heard.key = sender_id = "default" if sender is None else str(sender)
        message = data.get("message")
        if not isinstance(message, str) or not message.strip():
            return web.json_response([])
        turn = self.count(sender_id)
        return web.json_response([{"recipient_id": sender_id, "text": f"turn {turn}: {message.strip()}"}])


# --- Dialogflow CX -------------------------------------------------------------------------------------


def google_error(status: int, code: str, message: str, violation: str | None = None) -> web.Response:
    """Google APIs' error body (google.rpc.Status as JSON)."""
    error: dict[str, Any] = {"code": status, "message": message, "status": code}
    if violation is not None:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"description": violation}],
            }
        ]
    return web.json_response({"error": error}, status=status)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _invalid(message: str) -> web.Response:
    return google_error(400, "INVALID_ARGUMENT", message)


@dataclass(slots=True)
class DialogflowCxBot(ProtocolBot):
    """`POST /v3/projects/<p>/locations/<l>/agents/<a>[/environments/<e>]/sessions/<id>:detectIntent`.

    The recorded key is the session id from the path; turns count per full session name. Session parameters
    persist per session: `queryParams.parameters` merge in, and `turn` (a number) is set on every turn.
    Unknown top-level fields are refused as Google does, so a body placement aimed wrong shows up as a 400.
    """

    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)  # by session name

    def app(self) -> web.Application:
        app = web.Application()
        agent = "/v3/projects/{project}/locations/{location}/agents/{agent}"
        app.router.add_post(agent + "/sessions/{session}:detectIntent", self.detect_intent)
        app.router.add_post(
            agent + "/environments/{environment}/sessions/{session}:detectIntent", self.detect_intent
        )
        return app

    async def detect_intent(self, request: web.Request) -> web.Response:
        heard = await self.hear(request)
        info = request.match_info
        session = info["session"]
        if len(session.encode()) > DF_MAX_SESSION_ID:  # wording ours; the limit and status are Google's
            return _invalid(
                f"Session ID must be at most {DF_MAX_SESSION_ID} bytes, got {len(session.encode())}."
            )
        heard.key = session
        try:
            body = json.loads(heard.body)
        except ValueError:
            return _invalid("Invalid JSON payload received. Unexpected token.")
        if not isinstance(body, dict):
            return _invalid("Invalid JSON payload received. Expected an object.")
        for name in body:
            if name not in ("queryParams", "queryInput", "outputAudioConfig", "responseView"):
                violation = f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
                return google_error(400, "INVALID_ARGUMENT", violation, violation)
        query_input = _object(body.get("queryInput"))
        text = _object(query_input.get("text")).get("text")
        language = query_input.get("languageCode")
        if not isinstance(text, str) or not text:
            return _invalid(
                "Query input must have one of text, intent, audio, event, dtmf or tool call result."
            )
        if not language:
            return _invalid("Query input must have a language code.")
        agent_name = f"projects/{info['project']}/locations/{info['location']}/agents/{info['agent']}"
        environment = f"/environments/{info['environment']}" if "environment" in info else ""
        name = f"{agent_name}{environment}/sessions/{session}"
        params = self.parameters.setdefault(name, {})
        params.update(_object(_object(body.get("queryParams")).get("parameters")))
        params["turn"] = turn = self.count(name)
        return web.json_response(
            {
                "responseId": str(uuid.uuid4()),
                "queryResult": {
                    "text": text,
                    "languageCode": language,
                    "parameters": params,
                    "responseMessages": [{"text": {"text": [f"turn {turn}: {text}"]}}],
                    "currentPage": {"name": f"{agent_name}/{DF_START_PAGE}", "displayName": "Start Page"},
                    "intentDetectionConfidence": 1,
                    "match": {"matchType": "NO_MATCH"},
                },
                "responseType": "FINAL",
            }
        )


@dataclass(slots=True)
class DialogflowWebhookBot(ProtocolBot):
    """A Dialogflow CX webhook at `path`: turns count per `sessionInfo.session` (a full session name).

    Dialogflow always sends `sessionInfo.session`; without it this webhook answers 400 (a webhook's own choice).
    """

    path: str = "/webhook"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(self.path, self.webhook)
        return app

    async def webhook(self, request: web.Request) -> web.Response:
        heard = await self.hear(request)
        try:
            body = json.loads(heard.body)
        except ValueError:
            return web.json_response({"error": "not JSON"}, status=400)
        info = body.get("sessionInfo") if isinstance(body, dict) else None
        session = info.get("session") if isinstance(info, dict) else None
        if not isinstance(session, str) or "/sessions/" not in session:
            return web.json_response({"error": "sessionInfo.session is missing"}, status=400)
        heard.key = session
        turn = self.count(session)
        text = body.get("text") or ""
        return web.json_response(
            {
                "fulfillmentResponse": {"messages": [{"text": {"text": [f"turn {turn}: {text}"]}}]},
                "sessionInfo": {"parameters": {"turn": turn}},
            }
        )


# --- Botpress ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class BotpressConverseBot(ProtocolBot):
    """Botpress 12's Converse API: `{"type": "text", "text"}` in, `{"responses": [...]}` out, per userId.

    The recorded key is the userId from the path. A text that is missing, not a string or over 360 characters is
    Botpress's 400 InvalidParameterError.
    """

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/bots/{bot}/converse/{user}", self.converse)
        return app

    async def converse(self, request: web.Request) -> web.Response:
        heard = await self.hear(request)
        try:
            payload = json.loads(heard.body)
        except ValueError:
            return web.Response(
                status=400, text="SyntaxError: Unexpected token in JSON"
            )  # Express body-parser
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not text or len(text) > BOTPRESS_MAX_TEXT:
            message = f"Text must be a valid string of less than {BOTPRESS_MAX_TEXT} chars"
            error = {"statusCode": 400, "type": "InvalidParameterError", "message": message}
            return web.json_response(error, status=400)
        user = request.match_info["user"]
        heard.key = user
        turn = self.count(user)
        return web.json_response(
            {"responses": [{"type": "text", "markdown": True, "text": f"turn {turn}: {text}"}]}
        )
