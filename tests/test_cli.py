"""`session-gateway check|--version` as a subprocess: output, stderr and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_helpers import clean_environ

from gateway import __version__
from gateway.config import effective, load_config

pytestmark = pytest.mark.slow


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=clean_environ(**env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_version() -> None:
    result = run_cli("--version")

    assert result.returncode == 0
    assert result.stdout.strip() == f"session-gateway {__version__}"


def test_check_prints_the_effective_configuration_as_json(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[listen]\nport = 8181\n[upstream]\nurl = "http://127.0.0.1:9000/bot"\n', encoding="utf-8"
    )

    result = run_cli("check", "--config", str(path))

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown == effective(load_config(path, environ={}))
    assert shown["listen"]["port"] == 8181
    assert shown["upstream"]["url"] == "http://127.0.0.1:9000/bot"


def test_check_applies_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[listen]\nport = 1111\n[admin]\nport = 1112\n", encoding="utf-8")

    result = run_cli(
        "check",
        "--config",
        str(path),
        "--set",
        "listen.port=3333",
        "--log-level",
        "debug",
        GATEWAY_LISTEN_PORT="2222",
        GATEWAY_ADMIN_PORT="2223",
    )

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["listen"]["port"], shown["admin"]["port"], shown["log"]["level"]) == (3333, 2223, "debug")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[listen]\nport = "x"\n', "listen.port: expected an integer, got 'x'"),
        ("[upstream]\nread_timout = 5\n", "upstream.read_timout: unknown key"),
        ("[lisen]\nport = 1\n", "lisen: unknown section"),
        ("[listen]\nport = 70000\n", "listen.port: expected a port 0-65535, got 70000"),
    ],
    ids=["wrong-type", "unknown-key", "unknown-section", "out-of-range"],
)
def test_a_bad_file_names_file_and_key_and_exits_2(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")

    result = run_cli("check", "--config", str(path))

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"{path}: {message}")
    assert "Traceback" not in result.stderr


def test_a_bad_variable_is_named_on_stderr() -> None:
    result = run_cli("check", GATEWAY_UPSTREAM_READ_TIMEOUT="soon")

    assert result.returncode == 2
    assert result.stderr.startswith(
        "GATEWAY_UPSTREAM_READ_TIMEOUT: upstream.read_timeout: expected a number, got 'soon'"
    )


def test_a_malformed_set_flag_exits_2() -> None:
    result = run_cli("check", "--set", "listen.port")

    assert result.returncode == 2
    assert "expected --set section.key=value" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_file_exits_2_before_listening(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[log]\nformat = "xml"\n', encoding="utf-8")

    result = run_cli("serve", "--config", str(path))

    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: log.format: expected one of")


def test_check_says_what_a_preset_sets_and_explicit_keys_win() -> None:
    result = run_cli("check", "--set", "session.preset=dialogflow-cx", GATEWAY_SESSION_IDLE_TIMEOUT="300")

    assert result.returncode == 0, result.stderr
    session = json.loads(result.stdout)["session"]
    assert (session["issuer"], session["place_path"], session["place_required"]) == (
        "gateway",
        "/sessions/{session}",
        True,
    )
    assert session["idle_timeout"] == 300.0  # set explicitly: the preset's 1800 does not apply
    assert "session.preset = 'dialogflow-cx' sets" in result.stderr
    assert 'session.place_path = "/sessions/{session}"' in result.stderr
