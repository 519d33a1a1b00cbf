"""Configuration: defaults, the example file, errors that name the key, precedence, environment coercion."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest_tools import REPO
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.config import Config, effective, load_config
from gateway.errors import ConfigError

EXAMPLE = REPO / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def section_fields() -> dict[str, set[str]]:
    return {
        section.name: {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        for section in dataclasses.fields(Config)
    }


# --- defaults and the example file ----------------------------------------------------------------------


def test_defaults() -> None:
    config = load_config(None, environ={})

    assert config == Config()
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8080)
    assert config.admin.port == 9090
    assert config.upstream.url == "http://127.0.0.1:8000"
    assert config.upstream.read_timeout == 120.0
    assert config.upstream.max_body_size == 10 * 1024 * 1024
    assert config.listen.trusted_proxies == ()
    assert (config.log.format, config.log.level, config.log.access) == ("json", "info", True)


def test_example_file_loads_as_the_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == Config()


def test_example_file_sets_every_key_of_every_section() -> None:
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))

    assert {name: set(table) for name, table in document.items()} == section_fields()


def test_example_file_explains_every_key() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    undocumented = [
        line.split("=", 1)[0].strip()
        for before, line in itertools.pairwise(lines)
        if re.match(r"^[a-z_]+ = ", line) and not before.startswith("#")
    ]
    assert undocumented == []


def test_effective_is_plain_data_with_secrets_masked() -> None:
    config = load_config(
        None,
        environ={
            "GATEWAY_SESSION_SECRET": "s3cret-value",
            "GATEWAY_SESSION_REDIS_URL": "redis://:hunter2@redis:6379/0",
            "GATEWAY_LISTEN_TRUSTED_PROXIES": "10.0.0.0/8",
        },
    )
    shown = effective(config)

    assert shown["session"]["secret"] == "***"
    assert "hunter2" not in shown["session"]["redis_url"]
    assert shown["listen"]["trusted_proxies"] == ["10.0.0.0/8"]
    assert shown["listen"]["port"] == 8080
    assert set(shown) == set(section_fields())


# --- errors that name the key ---------------------------------------------------------------------------


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.source == str(path)
    return caught.value


def test_unknown_section_is_an_error_naming_it(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[listen]\nport = 1\n[lisen]\nport = 2\n")

    assert error.key == "lisen"
    assert str(error).startswith("lisen: unknown section")


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[upstream]\nread_timout = 5\n")

    assert error.key == "upstream.read_timout"
    assert str(error).startswith("upstream.read_timout: unknown key")
    assert "read_timeout" in str(error)  # the known keys are listed


def test_a_section_that_is_not_a_table_is_an_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, "listen = 5\n")

    assert str(error).startswith("listen: expected a [section] table")


@pytest.mark.parametrize(
    ("toml", "key", "bad"),
    [
        ('[listen]\nport = "8080"', "listen.port", "'8080'"),
        ("[listen]\nport = true", "listen.port", "True"),
        ("[listen]\nport = 80.5", "listen.port", "80.5"),
        ('[listen]\ntrusted_proxies = "10.0.0.1"', "listen.trusted_proxies", "'10.0.0.1'"),
        ("[listen]\ntrusted_proxies = [1]", "listen.trusted_proxies", "1"),
        ('[listen]\ntrusted_proxies = ["not an ip"]', "listen.trusted_proxies", "'not an ip'"),
        ('[upstream]\nread_timeout = "fast"', "upstream.read_timeout", "'fast'"),
        ("[upstream]\nurl = 5", "upstream.url", "5"),
        ('[upstream]\nurl = "ftp://bot"', "upstream.url", "'ftp://bot'"),
        ('[upstream]\nurl = "http://bot/?q=1"', "upstream.url", "'http://bot/?q=1'"),
        ('[log]\naccess = "yes"', "log.access", "'yes'"),
        ('[log]\nformat = "xml"', "log.format", "'xml'"),
        ("[listen]\nport = 70000", "listen.port", "70000"),
        ("[upstream]\nread_timeout = 0", "upstream.read_timeout", "0"),
        ("[upstream]\nmax_body_size = -1", "upstream.max_body_size", "-1"),
        ('[upstream]\nready_path = "health"', "upstream.ready_path", "'health'"),
    ],
    ids=[
        "int-as-string",
        "int-as-bool",
        "int-as-float",
        "list-as-string",
        "list-of-ints",
        "list-of-garbage",
        "float-as-string",
        "string-as-int",
        "url-scheme",
        "url-with-query",
        "bool-as-string",
        "literal-not-a-choice",
        "port-out-of-range",
        "timeout-zero",
        "size-negative",
        "path-without-slash",
    ],
)
def test_wrong_value_names_the_key_and_the_value(tmp_path: Path, toml: str, key: str, bad: str) -> None:
    error = load_error(tmp_path, toml + "\n")

    assert str(error).startswith(f"{key}: ")
    assert bad in str(error)


@pytest.mark.parametrize("text", ["nan", "-inf"])
def test_a_positive_duration_is_not_nan(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"GATEWAY_UPSTREAM_READ_TIMEOUT": text})
    assert str(caught.value).startswith("upstream.read_timeout: ")


def test_missing_file_and_invalid_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[listen\nport = 1\n"), environ={})


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"GATEWAY_LISTEN_PORT": "eighty"})

    assert caught.value.source == "GATEWAY_LISTEN_PORT"
    assert str(caught.value) == "listen.port: expected an integer, got 'eighty'"


def test_unknown_key_in_the_environment_is_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"GATEWAY_UPSTREAM_READ_TIMOUT": "5"})

    assert caught.value.key == "upstream.read_timout"
    assert caught.value.source == "GATEWAY_UPSTREAM_READ_TIMOUT"


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={}, overrides={"log.level": "loud"})

    assert caught.value.source == "--set log.level"
    assert str(caught.value).startswith("log.level: expected one of")
    assert "'loud'" in str(caught.value)


# --- precedence and the environment ---------------------------------------------------------------------


def test_environment_beats_the_file_and_flags_beat_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[listen]\nport = 1111\nhost = "127.0.0.1"\n[upstream]\nread_timeout = 30.0\n')
    environ = {"GATEWAY_LISTEN_PORT": "2222", "GATEWAY_UPSTREAM_READ_TIMEOUT": "40"}

    file_only = load_config(path, environ={})
    with_env = load_config(path, environ=environ)
    with_flags = load_config(path, environ=environ, overrides={"listen.port": "3333"})

    assert (file_only.listen.port, file_only.upstream.read_timeout) == (1111, 30.0)
    assert (with_env.listen.port, with_env.upstream.read_timeout) == (2222, 40.0)
    assert (with_flags.listen.port, with_flags.upstream.read_timeout) == (3333, 40.0)
    assert with_flags.listen.host == "127.0.0.1"  # untouched keys keep the file's value


@pytest.mark.parametrize(
    "environ",
    [
        {"GATEWAY_PORT": "tcp://10.0.0.7:8080"},
        {"GATEWAY_PORT_8080_TCP": "tcp://10.0.0.7:8080", "GATEWAY_PORT_8080_TCP_ADDR": "10.0.0.7"},
        {"GATEWAY_SERVICE_HOST": "10.0.0.7", "GATEWAY_SERVICE_PORT": "8080"},
        {"GATEWAY_LISTEN": "x", "GATEWAY_": "y", "PATH": "/usr/bin", "UPSTREAM_URL": "ftp://x"},
    ],
    ids=["service-port", "service-port-details", "service-host", "no-key-or-prefix"],
)
def test_variables_without_a_known_section_are_ignored(environ: dict[str, str]) -> None:
    assert load_config(None, environ=environ) == Config()


def test_list_from_the_environment_as_commas_or_toml() -> None:
    commas = load_config(None, environ={"GATEWAY_LISTEN_TRUSTED_PROXIES": " 10.0.0.0/8, ::1 ,"})
    toml = load_config(None, environ={"GATEWAY_LISTEN_TRUSTED_PROXIES": '["10.0.0.0/8", "::1"]'})

    assert commas.listen.trusted_proxies == toml.listen.trusted_proxies == ("10.0.0.0/8", "::1")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_BOOL_WORD = st.sampled_from(_TRUE + _FALSE).flatmap(
    lambda w: st.tuples(*[st.sampled_from([c.lower(), c.upper()]) for c in w]).map("".join)
)
_ADDRESS = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.tuples(st.ip_addresses(v=4), st.integers(8, 32)).map(
        lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))
    ),
)


@given(
    port=st.integers(0, 65535),
    timeout=st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False),
    size=st.integers(1, 2**62),
    proxies=st.lists(_ADDRESS, max_size=4),
    access_word=_BOOL_WORD,
    level=st.sampled_from(["debug", "info", "warning", "error"]),
    host=st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
    pad=st.sampled_from(["", " ", "\t"]),
)
@example(port=0, timeout=1e-06, size=1, proxies=["::1"], access_word="Off", level="debug", host="", pad="")
@example(
    port=65535, timeout=0.1, size=2**62, proxies=[], access_word="YES", level="error", host=" x ", pad=" "
)
def test_environment_text_round_trips_to_the_value(
    port: int,
    timeout: float,
    size: int,
    proxies: list[str],
    access_word: str,
    level: str,
    host: str,
    pad: str,
) -> None:
    environ = {
        "GATEWAY_LISTEN_PORT": f"{pad}{port}{pad}",
        "GATEWAY_UPSTREAM_READ_TIMEOUT": repr(timeout),
        "GATEWAY_UPSTREAM_MAX_BODY_SIZE": str(size),
        "GATEWAY_LISTEN_TRUSTED_PROXIES": ", ".join(proxies),
        "GATEWAY_LOG_ACCESS": f"{pad}{access_word}{pad}",
        "GATEWAY_LOG_LEVEL": level,
        "GATEWAY_ADMIN_HOST": host,  # strings are taken as they are, spaces included
    }

    config = load_config(None, environ=environ)

    assert config.listen.port == port
    assert config.upstream.read_timeout == timeout
    assert config.upstream.max_body_size == size
    assert config.listen.trusted_proxies == tuple(proxies)
    assert config.log.access is (access_word.lower() in _TRUE)
    assert config.log.level == level
    assert config.admin.host == host


def _as_text(value: Any) -> str:
    """A value as an operator would type it after `--set`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(value)
    return repr(value) if isinstance(value, float) else str(value)


@pytest.mark.parametrize(
    ("section", "key"),
    [(s, k) for s, keys in section_fields().items() for k in sorted(keys)],
    ids=[f"{s}.{k}" for s, keys in section_fields().items() for k in sorted(keys)],
)
def test_check_output_round_trips_through_flags(section: str, key: str) -> None:
    """What `check` prints for a key, given back as `--set section.key=value`, is the same configuration."""
    text = _as_text(effective(Config())[section][key])
    assert load_config(None, environ={}, overrides={f"{section}.{key}": text}) == Config()


def test_float_round_trip_is_exact_for_awkward_values() -> None:
    for value in (0.1, 1e-05, 5e-324, 1.7976931348623157e308, 2.5):
        config = load_config(None, environ={"GATEWAY_UPSTREAM_CONNECT_TIMEOUT": repr(value)})
        assert config.upstream.connect_timeout == value
        assert not math.isnan(config.upstream.connect_timeout)


@pytest.mark.parametrize(
    ("session", "key"),
    [
        ('redis_cluster = true\nredis_sentinels = ["sentinel:26379"]', "session.redis_cluster"),
        ('redis_cluster = true\nredis_url = "redis://node:6379/2"', "session.redis_url"),
        ('redis_cluster = true\nredis_url = "unix:///run/redis.sock"', "session.redis_url"),
        ("redis_shards = 0", "session.redis_shards"),
    ],
    ids=["with-sentinels", "database-2", "unix-socket", "no-shards"],
)
def test_a_redis_cluster_is_reached_over_tcp_database_0_without_sentinels(
    tmp_path: Path, session: str, key: str
) -> None:
    assert str(load_error(tmp_path, f"[session]\n{session}\n")).startswith(f"{key}: ")
    cluster = load_config(None, environ={"GATEWAY_SESSION_REDIS_CLUSTER": "true"}).session
    assert cluster.redis_cluster and cluster.redis_url == "redis://127.0.0.1:6379/0"
