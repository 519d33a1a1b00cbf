"""A gateway whose memory store already tracks N sessions (ids "%032X" % i), for the 1M-sessions run."""

from __future__ import annotations

import sys

from gateway.app import create_app, create_store
from gateway.config import load_config
from gateway.server import serve


async def main(port: int, admin: int, upstream: str, count: int) -> None:
    config = load_config(
        None,
        {
            "GATEWAY_LISTEN_HOST": "127.0.0.1",
            "GATEWAY_LISTEN_PORT": str(port),
            "GATEWAY_ADMIN_HOST": "127.0.0.1",
            "GATEWAY_ADMIN_PORT": str(admin),
            "GATEWAY_UPSTREAM_URL": upstream,
            "GATEWAY_LOG_ACCESS": "false",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_SESSION_MAX_SESSIONS": str(count + 1000),
            "GATEWAY_SESSION_IDLE_TIMEOUT": "3600",
        },
    )
    store = create_store(config)
    now = __import__("time").time()
    for i in range(count):
        await store.create(f"{i:032X}", now, idle_timeout=3600.0, replica="default")
    await serve(config, app=create_app(config, store=store))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
