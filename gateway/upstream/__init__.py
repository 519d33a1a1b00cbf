"""The bot side: forwarding a request to a bot replica and streaming the answer back, WebSockets, slow bots'
deferred answers."""
