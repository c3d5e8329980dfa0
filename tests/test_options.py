from __future__ import annotations

import base64
from pathlib import Path

import pytest
from twisted.python import usage

from foreman.config import Config, LogFormat, UpstreamMode
from foreman.options import ForemanOptions
from foreman.wire.sizes import parse_size


def parse(args: list[str], environ: dict[str, str] | None = None) -> Config:
    options = ForemanOptions(environ or {})
    options.parseOptions(args)
    assert options.config is not None
    return options.config


def test_defaults() -> None:
    config = parse([])
    assert config.listen == "tcp:11435:interface=127.0.0.1"
    assert config.ollama_url == "http://127.0.0.1:11434"
    assert config.upstream is UpstreamMode.OLLAMA
    assert config.token is None
    assert config.poll_interval == 30.0
    assert config.max_body_size == 64 * 1024 * 1024
    assert config.log_format is LogFormat.TEXT


def test_environment_sets_every_option(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    config = parse(
        [],
        {
            "FOREMAN_LISTEN": "tcp:9999:interface=127.0.0.1",
            "FOREMAN_OLLAMA_URL": "http://10.0.0.5:11434/",
            "FOREMAN_UPSTREAM": "auto",
            "FOREMAN_TOKEN_FILE": str(token_file),
            "FOREMAN_OLLAMA_TOKEN": "upstream-secret",
            "FOREMAN_DATA_DIR": str(tmp_path / "d"),
            "FOREMAN_POLL_INTERVAL": "5s",
            "FOREMAN_CONNECT_TIMEOUT": "2",
            "FOREMAN_MAX_BODY_SIZE": "1MiB",
            "FOREMAN_LOG_FORMAT": "json",
            "FOREMAN_ALLOW_UNAUTHENTICATED": "yes",
        },
    )
    assert config.listen == "tcp:9999:interface=127.0.0.1"
    assert config.ollama_url == "http://10.0.0.5:11434"
    assert config.upstream is UpstreamMode.AUTO
    assert config.token == "from-file"
    assert config.ollama_token == "upstream-secret"
    assert config.data_dir == tmp_path / "d"
    assert config.poll_interval == 5.0
    assert config.connect_timeout == 2.0
    assert config.max_body_size == 1024 * 1024
    assert config.log_format is LogFormat.JSON
    assert config.allow_unauthenticated


def test_flags_beat_the_environment() -> None:
    config = parse(["--listen", "tcp:1:interface=127.0.0.1"], {"FOREMAN_LISTEN": "tcp:2"})
    assert config.listen == "tcp:1:interface=127.0.0.1"


def test_token_from_environment() -> None:
    assert parse([], {"FOREMAN_TOKEN": "s3cret"}).token == "s3cret"


def test_token_never_in_repr() -> None:
    config = parse([], {"FOREMAN_TOKEN": "s3cret", "FOREMAN_OLLAMA_TOKEN": "other"})
    assert "s3cret" not in repr(config)
    assert "other" not in repr(config)


def test_help_names_every_environment_variable() -> None:
    text = str(ForemanOptions({}))
    for env in [
        "FOREMAN_LISTEN",
        "FOREMAN_OLLAMA_URL",
        "FOREMAN_UPSTREAM",
        "FOREMAN_TOKEN",
        "FOREMAN_OLLAMA_TOKEN",
        "FOREMAN_DATA_DIR",
        "FOREMAN_POLL_INTERVAL",
        "FOREMAN_CONNECT_TIMEOUT",
        "FOREMAN_MAX_BODY_SIZE",
        "FOREMAN_LOG_FORMAT",
        "FOREMAN_ALLOW_UNAUTHENTICATED",
    ]:
        assert env in text


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--upstream", "cloud"], "--upstream"),
        (["--log-format", "xml"], "--log-format"),
        (["--ollama-url", "ftp://x"], "--ollama-url"),
        (["--poll-interval", "soon"], "--poll-interval"),
        (["--poll-interval", "0"], "--poll-interval"),
        (["--max-body-size", "lots"], "--max-body-size"),
        (["--token-file", "/nonexistent/token"], "cannot read token file"),
    ],
)
def test_bad_values_are_usage_errors(args: list[str], complaint: str) -> None:
    with pytest.raises(usage.UsageError, match=complaint):
        parse(args)


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("  \n")
    with pytest.raises(usage.UsageError, match="empty"):
        parse(["--token-file", str(empty)])


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1048576), ("512KiB", 524288), ("64MiB", 67108864), ("10MB", 10_000_000)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_the_jobs_and_metrics_settings_come_from_the_environment(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("hook-key\n")
    config = parse(
        [],
        {
            "FOREMAN_WEBHOOK_SECRET_FILE": str(secret_file),
            "FOREMAN_ARTIFACT_INLINE_LIMIT": "1KiB",
            "FOREMAN_METRICS_PUBLIC": "1",
        },
    )
    assert config.webhook_secret == "hook-key"
    assert config.artifact_inline_limit == 1024
    assert config.metrics_public
    assert "hook-key" not in repr(config)
    assert parse([], {"FOREMAN_WEBHOOK_SECRET": "from-env"}).webhook_secret == "from-env"
    defaults = parse([])
    assert (defaults.webhook_secret, defaults.metrics_public) == (None, False)
    assert defaults.artifact_inline_limit == 256 * 1024


def test_help_and_environment_cover_every_option() -> None:
    from foreman.options import _FLAGS, _PARAMETERS

    text = str(ForemanOptions({}))
    for parameter in _PARAMETERS:
        assert f"--{parameter[0]}" in text and parameter[1] in text
    for name, env, _help in _FLAGS:
        assert f"--{name}" in text and env in text


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--artifact-inline-limit", "big"], "--artifact-inline-limit"),
        (["--webhook-secret-file", "/nonexistent/secret"], "cannot read webhook secret file"),
    ],
)
def test_bad_jobs_settings_are_usage_errors(args: list[str], complaint: str) -> None:
    with pytest.raises(usage.UsageError, match=complaint):
        parse(args)


def test_origins_add_to_ollamas_defaults() -> None:
    assert parse([]).origins == ()
    from_env = parse([], {"FOREMAN_ORIGINS": "https://app.example.com, chrome-extension://*"})
    assert from_env.origins == ("https://app.example.com", "chrome-extension://*")
    from_flag = parse(["--origins", "*.example.org"], {"FOREMAN_ORIGINS": "app://x"})
    assert from_flag.origins == ("*.example.org",)
    assert "FOREMAN_ORIGINS" in str(ForemanOptions({}))


@pytest.mark.parametrize(
    ("value", "complaint"),
    [("example.com", "must contain"), ("https://*.example.com:*", r"only one \*")],
)
def test_bad_origins_are_usage_errors(value: str, complaint: str) -> None:
    with pytest.raises(usage.UsageError, match=f"--origins: .*{complaint}"):
        parse(["--origins", value])


def test_scheduling_and_front_door_settings() -> None:
    config = parse([])
    assert (config.max_wait, config.batch_max_wait) == (60.0, 1800.0)
    assert (config.header_timeout, config.body_timeout, config.idle_timeout) == (60, 60, 75)
    assert config.max_connections is None  # auto: from the open-files limit
    config = parse(
        ["--max-wait", "2m", "--header-timeout", "10s", "--max-connections", "500"],
        {
            "FOREMAN_BATCH_MAX_WAIT": "1h",
            "FOREMAN_BODY_TIMEOUT": "90",
            "FOREMAN_IDLE_TIMEOUT": "5s",
            "FOREMAN_MAX_CONNECTIONS": "7",
        },
    )
    assert (config.max_wait, config.batch_max_wait) == (120.0, 3600.0)
    assert (config.header_timeout, config.body_timeout, config.idle_timeout) == (10, 90, 5)
    assert config.max_connections == 500
    assert parse(["--max-connections", "AUTO"]).max_connections is None


def test_the_swap_grace_is_unset_unless_given() -> None:
    # Unset: a model whose callers are not known yet is held up to a load of it.
    assert parse([]).swap_grace is None
    assert parse(["--swap-grace", "2s"]).swap_grace == 2.0
    assert parse([], {"FOREMAN_SWAP_GRACE": "0"}).swap_grace == 0.0
    with pytest.raises(usage.UsageError, match="--swap-grace"):
        parse(["--swap-grace", "-1s"])


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--max-wait", "0"], "--max-wait must be a positive, finite duration"),
        (["--batch-max-wait", "-1s"], "--batch-max-wait must be a positive"),
        (["--max-wait", "soon"], "--max-wait"),
        (["--header-timeout", "0s"], "--header-timeout must be a positive"),
        (["--body-timeout", "forever"], "--body-timeout"),
        (["--idle-timeout", "-5"], "--idle-timeout must be a positive"),
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--max-connections", "many"], "--max-connections must be a whole number or auto"),
    ],
)
def test_bad_scheduling_and_front_door_settings_are_usage_errors(
    args: list[str], complaint: str
) -> None:
    with pytest.raises(usage.UsageError, match=complaint):
        parse(args)


def test_limits_on_ollamas_silence() -> None:
    config = parse([])
    assert (config.load_timeout, config.stall_timeout) == (600.0, 300.0)
    config = parse(["--load-timeout", "15m"], {"FOREMAN_STALL_TIMEOUT": "90s"})
    assert (config.load_timeout, config.stall_timeout) == (900.0, 90.0)
    assert parse(["--stall-timeout", "2"], {"FOREMAN_STALL_TIMEOUT": "90s"}).stall_timeout == 2.0
    for option in ("--load-timeout", "--stall-timeout"):
        with pytest.raises(usage.UsageError, match=f"{option} must be a positive"):
            parse([option, "0"])
        with pytest.raises(usage.UsageError, match=option):
            parse([option, "a while"])


def test_a_standard_webhooks_secret_is_checked_and_never_shown(tmp_path: Path) -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    config = parse([], {"FOREMAN_OPENAI_WEBHOOK_SECRET": secret})
    assert config.openai_webhook_secret == secret and secret not in repr(config)
    secret_file = tmp_path / "openai-secret"
    secret_file.write_text(secret + "\n")
    from_file = parse(["--openai-webhook-secret-file", str(secret_file)])
    assert from_file.openai_webhook_secret == secret
    for bad in ("whsec_not base64!", "whsec_"):
        with pytest.raises(usage.UsageError, match="OpenAI webhook secret"):
            parse([], {"FOREMAN_OPENAI_WEBHOOK_SECRET": bad})
    assert parse([]).openai_webhook_secret is None
