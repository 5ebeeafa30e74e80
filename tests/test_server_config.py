"""ServerConfig: flag > GANSERVE_* env > default, validation messages, the CLI's exit code."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from ganserve.server.config import ConfigError, ServerConfig, add_arguments


def build(argv: list[str], env: dict[str, str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return ServerConfig.from_sources(parser.parse_args(argv), env or {})


def test_defaults(tmp_path: Path) -> None:
    config = build(["--model-dir", str(tmp_path)])
    assert (config.host, config.port, config.metrics_port) == ("127.0.0.1", 50051, 8000)
    assert config.runtime.device == "auto" and config.batching.enabled
    assert config.max_images_per_request == 4096 and config.max_message_bytes == 64 * 2**20
    assert config.max_request_bytes == 16 * 2**20
    assert config.auth_token is None and not config.tls
    assert config.runtime.rewrite_conv_transpose is None  # measured at load
    assert (config.runtime.tuning, config.runtime.small_batch_max) == ("auto", None)
    assert config.batching.side_batches and config.batching.instances == 1


def test_side_batches_switch(tmp_path: Path) -> None:
    env = {"GANSERVE_MODEL_DIR": str(tmp_path), "GANSERVE_SIDE_BATCHES": "off"}
    assert not build([], env).batching.side_batches
    assert build(["--side-batches"], env).batching.side_batches
    assert not build(["--model-dir", str(tmp_path), "--no-side-batches"]).batching.side_batches


def test_conv_transpose_rewrite_switch(tmp_path: Path) -> None:
    off = {"GANSERVE_MODEL_DIR": str(tmp_path), "GANSERVE_REWRITE_CONV_TRANSPOSE": "0"}
    assert not build([], off).runtime.rewrite_conv_transpose
    assert build(["--rewrite-conv-transpose"], off).runtime.rewrite_conv_transpose
    flag = ["--model-dir", str(tmp_path), "--no-rewrite-conv-transpose"]
    assert not build(flag).runtime.rewrite_conv_transpose


def test_flag_beats_env_beats_default(tmp_path: Path) -> None:
    env = {
        "GANSERVE_MODEL_DIR": str(tmp_path),
        "GANSERVE_PORT": "6000",
        "GANSERVE_MAX_BATCH_SIZE": "8",
        "GANSERVE_BATCHING": "false",
        "GANSERVE_LOG_LEVEL": "debug",
        "GANSERVE_WARMUP_BATCH_SIZES": "1,4",
        "GANSERVE_AUTH_TOKEN": "Xy9secret",
    }
    config = build(["--port", "7000", "--batching"], env)
    assert config.port == 7000  # flag
    assert config.model_dir == tmp_path and config.batching.max_batch_size == 8  # env
    assert config.batching.enabled  # flag --batching beats GANSERVE_BATCHING=false
    assert config.log_level == "DEBUG" and config.runtime.warmup_batch_sizes == (1, 4)
    assert config.metrics_port == 8000  # default
    assert "Xy9secret" not in config.describe() and "auth_token=set" in config.describe()
    assert not build([], env).batching.enabled


def test_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    config = build(["--model-dir", str(tmp_path), "--auth-token-file", str(token)])
    assert config.auth_token == "abc"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "70000"], {}, "--port"),
        ([], {"GANSERVE_PORT": "abc"}, "GANSERVE_PORT"),
        (["--metrics-port", "-2"], {}, "--metrics-port"),
        (["--device", "tpu"], {}, "--device"),
        (["--max-batch-size", "0"], {}, "--max-batch-size"),
        (["--model-instances", "0"], {}, "--model-instances"),
        (["--max-pending-rpcs", "0"], {}, "--max-pending-rpcs"),
        (["--tls-cert", "cert.pem"], {}, "--tls-key"),
        (["--tls-client-ca", "ca.pem"], {}, "--tls-client-ca"),
        (["--metrics-tls-key", "k.pem"], {}, "--metrics-tls-cert and --metrics-tls-key"),
        (["--metrics-tls-client-ca", "ca.pem"], {}, "--metrics-tls-client-ca .mutual TLS. needs"),
        (["--metrics-tls-cert", "c", "--metrics-tls-key", "k"], {}, "--metrics-tls-cert c is not"),
        (
            ["--metrics-port", "-1", "--metrics-tls-cert", "c", "--metrics-tls-key", "k"],
            {},
            "needs the metrics server",
        ),
        (["--auth-token", "a", "--auth-token-file", "f"], {}, "not both"),
        (["--auth-token", ""], {}, "--auth-token"),
        (["--stream-chunk-default", "9000"], {}, "--stream-chunk-default"),
        (["--max-images-per-request", "100000"], {}, "--max-message-bytes"),
        (["--max-request-bytes", "1000"], {}, "--max-request-bytes must be >= 1 MiB"),
        (["--max-buffered-bytes", str(8 << 20)], {}, "must hold at least the largest reply"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--max-versions", "-1"], {}, "--max-versions must be >= 0"),
        ([], {"GANSERVE_BATCHING": "maybe"}, "GANSERVE_BATCHING"),
        # found in review: the checks of the whole config named the flag, not the variable
        ([], {"GANSERVE_PORT": "70000"}, r"^GANSERVE_PORT must be in \[0, 65535\]$"),
        ([], {"GANSERVE_METRICS_PORT": "-2"}, r"^GANSERVE_METRICS_PORT must be"),
        (
            [],
            {"GANSERVE_AUTH_TOKEN": "a", "GANSERVE_AUTH_TOKEN_FILE": "f"},
            "give either GANSERVE_AUTH_TOKEN or GANSERVE_AUTH_TOKEN_FILE",
        ),
        (
            ["--max-buffered-bytes", str(8 << 20)],
            {"GANSERVE_MAX_REQUEST_BYTES": str(16 << 20)},
            r"--max-buffered-bytes .* --max-message-bytes .* GANSERVE_MAX_REQUEST_BYTES \(",
        ),
    ],
)
def test_invalid_values_name_the_setting(tmp_path, argv, env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build(["--model-dir", str(tmp_path), *argv], env)


# A bad value of every setting that belongs to the core's configs (RuntimeConfig,
# BatchingConfig), whose own checks name their fields, not the flags.
_BAD_CORE_VALUES = {
    "--device": "tpu",
    "--intra-op-threads": "-1",
    "--inter-op-threads": "-1",
    "--small-batch-max": "-1",
    "--tuning": "bogus",
    "--tuning-budget-s": "0",
    "--warmup-batch-sizes": "1,0",
    "--max-batch-size": "0",
    "--max-queue-delay-ms": "-1",
    "--max-queue-size": "0",
    "--max-queue-wait-ms": "0",
    "--inline-max-images": "-1",
    "--model-instances": "0",
}


def test_every_core_setting_is_refused_by_its_flag(tmp_path: Path) -> None:
    from ganserve.server.config import _OPTIONS

    core = {opt.flag for opt in _OPTIONS if "." in opt.dest and not opt.is_bool}
    assert core <= set(_BAD_CORE_VALUES), f"give a bad value for {core - set(_BAD_CORE_VALUES)}"
    for flag, bad in _BAD_CORE_VALUES.items():
        with pytest.raises(ConfigError) as caught:
            build(["--model-dir", str(tmp_path), flag, bad])
        message = str(caught.value)
        assert message.startswith(f"{flag} must "), message
        assert "_" not in message.partition(",")[0], message  # no field name
        variable = "GANSERVE_" + flag[2:].upper().replace("-", "_")
        with pytest.raises(ConfigError, match=f"^{variable} must "):
            build(["--model-dir", str(tmp_path)], {variable: bad})
    with pytest.raises(ConfigError, match=r"0 = one per usable core\)"):
        build(["--model-dir", str(tmp_path), "--intra-op-threads", "-1"])


def test_log_level_any_case(tmp_path: Path) -> None:
    for level in ("debug", "Info", "warning", "ERROR", "critical"):
        assert build(["--model-dir", str(tmp_path), "--log-level", level]).log_level == (
            level.upper()
        )


def test_a_variable_is_named_where_it_stands_not_inside_a_value(tmp_path: Path) -> None:
    """Found in review: the flag was replaced inside the quoted value too."""
    env = {"GANSERVE_MODEL_DIR": str(tmp_path / "--port"), "GANSERVE_PORT": "1"}
    with pytest.raises(ConfigError, match=r"^GANSERVE_MODEL_DIR .*/--port is not a directory$"):
        build([], env)


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--model-dir"):
        build(["--model-dir", str(tmp_path / "nope")])


def test_cli_reports_config_errors_without_traceback(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ganserve", "serve", "--model-dir", str(tmp_path / "nope")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--model-dir" in result.stderr and "Traceback" not in result.stderr


def test_option_table_lists_every_option_with_its_default() -> None:
    from ganserve.server.config import environment_variables, option_table

    rows = {row.env: row for row in option_table()}
    assert set(rows) == environment_variables()
    assert rows["GANSERVE_PORT"].default == str(ServerConfig().port)
    assert rows["GANSERVE_MAX_BATCH_SIZE"].default == "64"
    assert rows["GANSERVE_BATCHING"].is_bool and rows["GANSERVE_BATCHING"].default == "true"
    assert rows["GANSERVE_TLS_CERT"].default == ""
    assert all(row.flag.startswith("--") and row.help for row in rows.values())
    assert not rows["GANSERVE_MODEL_DIR"].default.startswith("/")  # no path of this install
