"""A demo bot that speaks Rasa's REST channel, for `session-gateway demo --bot rasa-rest`.

`POST /webhooks/rest/webhook` with `{"sender": "<conversation>", "message": "hi"}` answers Rasa's list of bot
messages. The conversation is whatever `sender` says, as in Rasa: in front of it the gateway places its own
session id there (`session.place_json = "/sender"`), so a browser can neither pick nor guess a conversation.
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

REST_WEBHOOK: Final = "/webhooks/rest/webhook"
DEFAULT_SENDER: Final = "default"  # Rasa's UserMessage.DEFAULT_SENDER_ID, for a body without `sender`
MAX_SENDERS: Final = 10_000  # conversations remembered; the least recently active is forgotten first


def create_rasa_bot_app(*, max_senders: int = MAX_SENDERS) -> web.Application:
    """The Rasa REST demo bot: turns counted per `sender`; `GET /` answers like a Rasa server."""
    turns: dict[str, int] = {}  # by sender, least recently active first

    async def webhook(request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # Rasa's server (Sanic) answers a body it cannot parse with this error shape
            error = {
                "description": "Bad Request",
                "status": 400,
                "message": "Failed when parsing body as json",
            }
            return web.json_response(error, status=400)
        sender = data.get("sender")
        sender_id = DEFAULT_SENDER if sender is None else str(sender)
        message = data.get("message")
        if not isinstance(message, str) or not message.strip():
            return web.json_response([])  # Rasa answers a message it could not handle with no bot messages
        turn = turns.pop(sender_id, 0) + 1
        turns[sender_id] = turn  # re-inserted: now the most recently active
        if len(turns) > max_senders:
            del turns[next(iter(turns))]
        text = message.strip()
        custom: dict[str, Any] = {"turn": turn}
        if "X-Session-New" in request.headers:  # the gateway's new-session signal, shown by the demo page
            custom["gatewaySignal"] = request.headers["X-Session-New"]
        reply = f"Hello! You said: {text}" if turn == 1 else f"You said: {text}"
        # Rasa's REST answer: one object per bot message; `custom` carries a custom (JSON) response
        return web.json_response(
            [{"recipient_id": sender_id, "text": reply}, {"recipient_id": sender_id, "custom": custom}]
        )

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="Hello from Rasa: session-gateway demo")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/webhooks/rest/", health)
    app.router.add_post(REST_WEBHOOK, webhook)
    return app
