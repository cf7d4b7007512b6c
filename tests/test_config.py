"""Settings: defaults, TOML files, the environment variable, and refusals naming the key."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

from imageserver.config import (
    CONFIG_ENV,
    ConfigError,
    IdentitySettings,
    IndexSettings,
    Settings,
    WorkerSettings,
    load_settings,
    parse_sentinels,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "etc" / "imageserver.example.toml"
DOCS = ROOT / "docs" / "configuration.md"


def sections() -> list[tuple[str, list[str]]]:
    """Every [section] and its keys, read from the dataclasses themselves."""
    defaults = Settings()
    return [
        (part.name, [key.name for key in dataclasses.fields(getattr(defaults, part.name))])
        for part in dataclasses.fields(Settings)
    ]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imageserver.toml"
    path.write_text(text)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value)


def test_defaults_are_the_legacy_constants() -> None:
    settings = Settings()
    assert settings.proxy.front_endpoint == "ipc://@imageserver-front"
    assert settings.proxy.back_endpoint == "tcp://127.0.0.1:60202"
    assert settings.session.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.cache.redis_url == "redis://127.0.0.1:6379/1"
    assert settings.cache.ttl_s == 300
    assert (settings.identity.esaf_group_pattern, settings.identity.esaf_threshold) == (
        "e{esaf}",
        40000,
    )
    assert settings.workers.threads == (os.cpu_count() or 1)
    assert settings.workers.request_deadline_s == 30.0
    limits = settings.limits
    assert (limits.max_xsize_px, limits.max_zoom, limits.max_label_height_px) == (10000, 64.0, 64)
    assert limits.max_string_length == 4096
    assert settings.logging.level == "INFO"


def test_no_file_and_no_environment_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert load_settings() == Settings()
    monkeypatch.setenv(CONFIG_ENV, "")
    assert load_settings() == Settings()


def test_a_file_changes_only_its_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[workers]\nthreads = 3\nidle_timeout_s = 60\n[logging]\nlevel = "debug"\n'
    )
    settings = load_settings(path)
    assert settings.workers == dataclasses.replace(WorkerSettings(), threads=3, idle_timeout_s=60.0)
    assert isinstance(settings.workers.idle_timeout_s, float)
    assert settings.logging.level == "DEBUG"
    assert settings.session == Settings().session


def test_the_environment_names_the_file_and_an_argument_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = write(tmp_path, "[identity]\nesaf_threshold = 50000\n")
    argument = tmp_path / "other.toml"
    argument.write_text("[identity]\nesaf_threshold = 60000\n")
    monkeypatch.setenv(CONFIG_ENV, str(from_env))
    assert load_settings().identity.esaf_threshold == 50000
    assert load_settings(argument).identity.esaf_threshold == 60000


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[session]\npublic_key_path = "keys/session.pub"\n')
    assert load_settings(path).session.public_key_path == tmp_path / "keys" / "session.pub"
    path = write(tmp_path, '[session]\npublic_key_path = "/etc/x.pem"\n')
    assert load_settings(path).session.public_key_path == Path("/etc/x.pem")


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[session]\nredis_ulr = "redis://x"\n')
    assert refusal(path) == (
        f"{path}: unknown key 'session.redis_ulr'; did you mean 'redis_url'? (known keys in"
        " [session]: redis_url, sentinels, sentinel_service, sentinel_password, redis_timeout_s,"
        " public_key_path, verified_signatures)"
    )
    path = write(tmp_path, "[sessions]\n")
    assert refusal(path).startswith(f"{path}: unknown key 'sessions'; did you mean 'session'?")
    path = write(tmp_path, "threads = 4\n")
    assert refusal(path).startswith(f"{path}: unknown key 'threads' (known keys at the top level: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[workers]\nthreads = "4"\n', "'workers.threads' must be an integer, not a string ('4')"),
        (
            "[workers]\nthreads = true\n",
            "'workers.threads' must be an integer, not a boolean (True)",
        ),
        ("[workers]\nthreads = 2.5\n", "'workers.threads' must be an integer, not a float (2.5)"),
        ("[limits]\nmax_zoom = [1]\n", "'limits.max_zoom' must be a number, not an array ([1])"),
        (
            "[session]\npublic_key_path = 3\n",
            "'session.public_key_path' must be a path string, not an integer (3)",
        ),
        ('proxy = "tcp://x"\n', "'proxy' must be a table ([proxy]), not a string"),
        ("[workers]\nthreads = 0\n", "[workers] threads must be ≥ 1"),
        ("[workers]\nrequest_deadline_s = 0\n", "[workers] request_deadline_s must be > 0"),
        (
            '[proxy]\nfront_endpoint = "http://x"\n',
            "[proxy] front_endpoint must start with one of tcp://, ipc://, inproc://,"
            " not 'http://x'",
        ),
        (
            '[cache]\nredis_url = "localhost:6379"\n',
            "[cache] redis_url must start with one of redis://, rediss://, unix://,"
            " not 'localhost:6379'",
        ),
        (
            '[session]\nsentinels = "10.0.0.1:26379,10.0.0.2"\n',
            "[session] sentinels must be HOST:PORT,HOST:PORT…: '10.0.0.2' is not HOST:PORT",
        ),
        (
            '[cache]\nsentinels = "10.0.0.1:26379"\nredis_url = "unix:///run/redis.sock"\n',
            "[cache] redis_url must be redis:// or rediss:// when sentinels are set,"
            " not 'unix:///run/redis.sock'",
        ),
        (
            '[cache]\nsentinels = "10.0.0.1:26379"\nsentinel_service = ""\n',
            "[cache] sentinel_service must be set",
        ),
        (
            '[identity]\nesaf_group_pattern = "esaf"\n',
            "[identity] esaf_group_pattern must contain {esaf}, not 'esaf'",
        ),
        (
            '[identity]\nesaf_group_pattern = "e{number}"\n',
            "[identity] esaf_group_pattern 'e{number}' is not a valid pattern"
            " with one {esaf} field: 'number'",
        ),
        (
            '[logging]\nlevel = "loud"\n',
            "[logging] level must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG, not 'loud'",
        ),
    ],
)
def test_wrong_types_and_values_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert refusal(path) == f"{path}: {message}"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    assert refusal(missing) == (
        f"cannot read the configuration file {missing}: No such file or directory"
    )
    path = write(tmp_path, "[workers\n")
    assert refusal(path).startswith(f"{path}: not valid TOML: ")


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.workers.threads = 2  # type: ignore[misc]
    with pytest.raises(ConfigError, match="esaf_threshold must be ≥ 0"):
        IdentitySettings(esaf_threshold=-1)


def test_the_example_file_sets_every_key_to_its_default() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    assert [(name, list(example[name])) for name, _ in sections()] == sections()
    settings = load_settings(EXAMPLE)
    defaults = Settings()
    assert dataclasses.replace(settings, workers=defaults.workers) == defaults
    assert (
        dataclasses.replace(settings.workers, threads=defaults.workers.threads) == defaults.workers
    )


def test_the_documentation_names_every_key() -> None:
    text = DOCS.read_text()
    for section, keys in sections():
        assert f"## [{section}]" in text
        for key in keys:
            assert f"| `{key}` |" in text, f"docs/configuration.md lacks [{section}] {key}"


@pytest.mark.parametrize(
    "allowed, host, port, expected",
    [
        ("127.0.0.1:6379,[::1]:6379", "127.0.0.1", 6379, True),
        ("127.0.0.1:6379,[::1]:6379", "127.0.0.1", 6380, False),
        ("127.0.0.1:6379,[::1]:6379", "::1", 6379, True),
        ("127.0.0.1:6379,[::1]:6379", "::1", 22, False),
        ("redis.example, ::1", "redis.example", 7000, True),  # a bare host: any port
        ("redis.example, ::1", "::1", 7000, True),
        ("redis.example", "other.example", 6379, False),
        ("", "127.0.0.1", 6379, False),
    ],
)
def test_progress_servers_are_allowed_by_host_and_port(
    allowed: str, host: str, port: int, expected: bool
) -> None:
    assert IndexSettings(progress_hosts=allowed).allows_progress_to(host, port) is expected


def test_sentinels_are_host_port_pairs(tmp_path: Path) -> None:
    path = write(tmp_path, '[session]\nsentinels = " 10.0.0.1:26379, [::1]:26380 "\n')
    assert parse_sentinels(load_settings(path).session.sentinels) == (
        ("10.0.0.1", 26379),
        ("::1", 26380),
    )
    assert parse_sentinels("") == ()
