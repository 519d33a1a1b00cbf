"""`session-gateway serve|check|demo|sessions`: the only place that sets up logging and exits."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway import __version__
from gateway.config import PRESETS, Config, EventLoop, effective, load_config
from gateway.errors import ConfigError
from gateway.ops.logs import setup_logging

EXIT_CONFIG = 2
DEMO_BOTS = (
    "teneo",
    "rasa-rest",
)  # gateway.demo.run_demo's bots (not imported here: demo pulls in the server)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="session-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"session-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the gateway"),
        ("check", "validate the configuration and print the effective values"),
        ("demo", "run a demo bot (Teneo-style, or Rasa's REST channel) with the gateway in front of it"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        if name == "demo":
            cmd.add_argument(
                "--bot",
                choices=list(DEMO_BOTS),
                default="teneo",
                help="the demo bot: teneo (a JSESSIONID cookie) or rasa-rest (the conversation in the body's "
                "sender, placed by the gateway: session.preset = rasa-rest)",
            )
        _config_options(cmd)
        cmd.add_argument("--log-format", choices=["json", "text"], help="log line format (log.format)")
        cmd.add_argument(
            "--log-level", choices=["debug", "info", "warning", "error"], help="log level (log.level)"
        )
    _sessions_parser(sub.add_parser("sessions", help="list, show or end live sessions (the admin API)"))
    return parser


def _config_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--config", metavar="FILE", help="TOML configuration file")
    cmd.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one key (beats the file and the environment); repeatable",
    )


def _sessions_parser(cmd: argparse.ArgumentParser) -> None:
    """`sessions list|show|end`: calls the admin API of a running gateway (gateway/ops/admin_client.py)."""
    cmd.set_defaults(log_format=None, log_level=None)
    actions = cmd.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="live sessions, a page at a time (a table, or JSON Lines)")
    listing.add_argument(
        "--limit",
        type=_page_size,
        default=100,
        metavar="N",
        help="sessions per page, 1-1000 (default 100)",
    )
    listing.add_argument("--all", action="store_true", help="follow the pages to the last")
    listing.add_argument("--cursor", help="start after the page that printed this cursor")
    show = actions.add_parser("show", help="one live session")
    end = actions.add_parser("end", help="end a live session (reason admin)")
    for action in (show, end):
        action.add_argument("session_id", metavar="ID", help="the full session id")
    for action in (listing, show, end):
        action.add_argument(
            "--admin",
            metavar="URL",
            help="the admin API (default: http://127.0.0.1:<admin.port> of the configuration)",
        )
        action.add_argument(
            "--token", help="admin.token (default: the configuration's, or GATEWAY_ADMIN_TOKEN)"
        )
        _config_options(action)
    for action in (listing, show):
        action.add_argument("--json", action="store_true", help="JSON instead of text")


def _page_size(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 1000):
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 1000, got {text!r}")
    return int(text)


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(item, "expected --set section.key=value", source="--set")
        overrides[key.strip()] = value
    if args.log_format:
        overrides["log.format"] = args.log_format
    if args.log_level:
        overrides["log.level"] = args.log_level
    if getattr(args, "bot", "teneo") != "teneo":
        overrides.setdefault("session.preset", args.bot)
    return overrides


def _run(coro: Coroutine[Any, Any, None], loop: EventLoop) -> None:
    """Run on uvloop when installed (or asked for), else on asyncio's own loop."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                print("listen.event_loop = uvloop, but uvloop is not installed", file=sys.stderr)
                sys.exit(EXIT_CONFIG)
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> None:
    import os

    args = _parser().parse_args(argv)
    try:
        config: Config = load_config(
            args.config, os.environ if environ is None else environ, _overrides(args)
        )
    except ConfigError as exc:
        print(f"{exc.source}: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if args.command == "sessions":
        from gateway.ops.admin_client import run_sessions

        sys.exit(run_sessions(args, config))
    if args.command == "check":
        preset = config.session.preset
        if preset:  # what the preset filled in (keys set explicitly won)
            sets = ", ".join(f"session.{k} = {json.dumps(v)}" for k, v in PRESETS[preset].items())
            print(f"session.preset = {preset!r} sets, unless set explicitly: {sets}", file=sys.stderr)
        print(json.dumps(effective(config), indent=2))
        return
    setup_logging(config.log)
    if args.command == "serve":
        from gateway.server import serve

        _run(serve(config), config.listen.event_loop)
    else:
        from gateway.demo import run_demo

        _run(run_demo(config, bot=args.bot), config.listen.event_loop)
