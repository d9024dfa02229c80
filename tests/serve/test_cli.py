"""`mixkit serve` input mistakes: one clear message, exit status 2, never a traceback."""

from __future__ import annotations

import socket
import sys

import pytest

from mixkit.cli import main

GOOD_CONFIG = """
aggregator = "a"
[agents.a]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "m"
"""


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mixkit", "serve", *args])
    monkeypatch.setenv("COLUMNS", "400")  # keep rich from wrapping the one line
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    return e.value.code, err


def test_a_port_in_use_is_one_line_naming_the_fix(monkeypatch, capsys, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_cli(monkeypatch, capsys, "--port", str(port), "--no-log")
    assert code == 2 and "Traceback" not in err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "config file not found"),
        ("aggregator = [", "not valid TOML"),
        ('aggregator = "a"\n[agents.a]\nprovider = "nope"\nmodel = "m"', "agents.a.provider"),
    ],
)
def test_a_bad_config_file_is_one_line(monkeypatch, capsys, tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
    code, err = run_cli(monkeypatch, capsys, "--config", str(path), "--port", "0")
    assert code == 2 and "Traceback" not in err and expected in err
    assert "bad.toml" in err


def test_a_missing_api_key_variable_names_it(monkeypatch, capsys):
    monkeypatch.delenv("MIXKIT_TEST_UNSET_KEY", raising=False)
    code, err = run_cli(
        monkeypatch, capsys, "--api-key-env", "MIXKIT_TEST_UNSET_KEY", "--port", "0"
    )
    assert code == 2 and "Traceback" not in err
    assert "MIXKIT_TEST_UNSET_KEY is not set" in err


def test_an_agent_key_variable_missing_fails_at_start_not_per_request(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.delenv("MIXKIT_TEST_AGENT_KEY", raising=False)
    path = tmp_path / "keyed.toml"
    path.write_text(GOOD_CONFIG + 'api_key_env = "MIXKIT_TEST_AGENT_KEY"\n')
    code, err = run_cli(monkeypatch, capsys, "--config", str(path), "--port", "0")
    assert code == 2 and "Traceback" not in err and "MIXKIT_TEST_AGENT_KEY" in err


def test_two_configs_with_one_name_are_refused(monkeypatch, capsys, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "same.toml").write_text(GOOD_CONFIG)
    args = ["-c", str(tmp_path / "a" / "same.toml"), "-c", str(tmp_path / "b" / "same.toml")]
    code, err = run_cli(monkeypatch, capsys, *args, "--port", "0")
    assert code == 2 and "both named 'same'" in err


def test_help_lists_the_options_the_readme_uses(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["mixkit", "serve", "--help"])
    try:
        main()
    except SystemExit as e:
        assert not e.code
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--config", "--api-key-env", "--max-concurrent", "--grace"):
        assert option in out


def test_the_listening_socket_gives_connections_tcp_nodelay():
    """asyncio sets TCP_NODELAY on accepted connections only for proto=IPPROTO_TCP sockets;
    without it, Nagle + delayed ACKs added ~40 ms to every response of `mixkit serve`."""
    import asyncio

    from mixkit.serve.server import bind

    async def go() -> int:
        sock = bind("127.0.0.1", 0)
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handle(reader, writer) -> None:
            conn = writer.get_extra_info("socket")
            seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        value = await asyncio.wait_for(seen, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(go()) != 0
