"""The viewer's HTTP contract to the letter (docs/VIEWER.md): errors, authorization, counters, start-up checks.

One real viewer with no trainer behind it serves the module: everything here is the viewer's own answer.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import ROOT, free_port, reap
from viewer_support import ViewerProcess, start_viewer

from viewer.__main__ import check_token, new_token

TOKEN = "t0ken-_.~+/="


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerProcess]:
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    process = start_viewer(tmp_path_factory.mktemp("viewer"), pub, ctl, "--token", TOKEN)
    yield process
    reap([process.proc])


def call(viewer: ViewerProcess, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request: status, headers and the JSON body (every answer must be JSON)."""
    async def go() -> tuple[int, dict[str, str], Any]:
        async with aiohttp.ClientSession() as session, session.request(
                method, viewer.url + path, data=body, headers=headers or {}) as response:
            assert response.content_type == "application/json", (response.status, await response.text())
            return response.status, dict(response.headers), await response.json()
    return asyncio.run(go())


def post_control(viewer: ViewerProcess, body: bytes, authorization: str | None = f"Bearer {TOKEN}"
                 ) -> tuple[int, dict[str, str], Any]:
    return call(viewer, "POST", "/api/control", body, {} if authorization is None else
                {"Authorization": authorization})


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/nowhere", b"", 404),
    ("GET", "/static/nothing.js", b"", 404),
    ("GET", "/static/%2e%2e%2fapp.py", b"", 404),
    ("GET", "/api/control", b"", 405),
    ("DELETE", "/api/status", b"", 405),
    ("POST", "/api/control", b'{"cmd": "stop", "pad": "' + b"x" * 2000 + b'"}', 413),
    ("GET", "/ws", b"", 400),  # not a WebSocket upgrade
])
def test_every_error_the_viewer_returns_is_the_documented_json(viewer, method, path, body, status):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    got, response_headers, reply = call(viewer, method, path, body, headers)
    assert got == status
    assert reply["ok"] is False and isinstance(reply["error"], str) and reply["error"]
    if status == 405:
        assert response_headers["Allow"]


@pytest.mark.parametrize(("authorization", "status"), [
    (None, 401),
    ("", 401),
    ("Bearer", 401),
    ("Bearer ", 401),
    (TOKEN, 401),  # no scheme
    (f"Basic {TOKEN}", 401),
    (f"Bearer {TOKEN} {TOKEN}", 401),  # exactly one token
    (f"bearer{TOKEN}", 401),
    ("Bearer wrong", 403),
    (f"Bearer x{TOKEN}", 403),
    (f"Bearer {TOKEN[:-1]}", 403),
])
def test_control_authorization_follows_rfc_6750(viewer, authorization, status):
    got, headers, reply = post_control(viewer, b'{"cmd": "pause"}', authorization)
    assert (got, reply["ok"]) == (status, False)
    assert headers["WWW-Authenticate"].startswith('Bearer realm="tetriszmq"')


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(viewer, scheme):
    got, _, reply = post_control(viewer, b'{"cmd": "pause", "run": "no-such-run"}', f"{scheme}  {TOKEN}")
    assert (got, reply["error"]) == (404, "no run no-such-run"), reply  # past authorization, to the run lookup


@pytest.mark.parametrize(("body", "error"), [
    (b'{"cmd": "status", "cmd": "pause"}', 'repeated fields: "cmd"'),
    (b'{"cmd": "pause", "cmd": "pause"}', 'repeated fields: "cmd"'),
    (b"null", "body must be a JSON object, got null"),
    (b"[1]", "body must be a JSON object, got array"),
    (b'{"cmd": true}', '"cmd" must be a string, got boolean'),
    (b'{"cmd": null}', '"cmd" must be a string, got null'),
    (b'{"cmd": 123456789012345678901234567890}', '"cmd" must be a string, got number'),
    (b'{"cmd": "status"}', 'unknown command "status"; known: stop, pause, resume, save'),
    (b'{"cmd": "' + b"x" * 100 + b'"}', 'unknown command "' + "x" * 39 + '...; known: stop, pause, resume, save'),
    (b'{"cmd": "stop", "force": true}', 'unexpected fields: "force"'),
    (b"{}", '"cmd" is missing'),
    (b'{"cmd": NaN}', "body is not valid UTF-8 JSON"),
])
def test_a_malformed_control_body_is_refused_in_json_terms(viewer, body, error):
    assert post_control(viewer, body)[::2] == (400, {"ok": False, "error": error})


def test_a_control_request_nobody_answers_gets_504_saying_so_once(viewer):
    status, _, reply = post_control(viewer, b'{"cmd": "pause"}')
    assert status == 504
    assert reply["error"].count("is the trainer running?") == 1 and "3 attempts of 2s" in reply["error"]


def test_status_counters_are_cumulative_and_count_every_disconnect(viewer):
    async def go() -> None:
        before = (await status(viewer))["clients"]
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(viewer.url + "/ws") for _ in range(3)]
            for ws in sockets:
                assert (await ws.receive_json())["topic"] == "snapshot"
            await sockets[0].close()
            sockets[1]._response.connection.transport.abort()  # an abrupt drop: no close frame
            while (await status(viewer))["clients"]["clients"] > before["clients"] + 1:
                await asyncio.sleep(0.05)
            after = (await status(viewer))["clients"]
        assert after["sent"] == before["sent"] + 3
        assert sum(after["disconnected"].values()) == sum(before["disconnected"].values()) + 2

    async def status(viewer: ViewerProcess) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(viewer.url + "/api/status") as response:
            return await response.json()

    asyncio.run(go())


def test_before_any_trainer_the_status_and_the_snapshot_say_none_the_same_way(viewer):
    async def snapshot() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.ws_connect(viewer.url + "/ws") as ws:
            return await ws.receive_json()

    first = asyncio.run(snapshot())
    trainer = viewer.status()["trainer"]
    assert (first["run"], first["seq"]) == (trainer["run"], trainer["seq"]) == (None, -1)


@pytest.mark.parametrize(("args", "says"), [
    (["--trainer", "tcp://127.0.0.1:5555", "--ctl", "tcp://127.0.0.1"], "'tcp://127.0.0.1' is not a ZeroMQ endpoint"),
    (["--trainer", "tcp://127.0.0.1:5555,tcp://127.0.0.1"], "'tcp://127.0.0.1' is not a ZeroMQ endpoint"),
    (["--ctl", "tcp://127.0.0.1:5556"], "--ctl goes with exactly one --trainer PUB"),
    (["--trainer", "nonsense://x", "--ctl", "tcp://127.0.0.1:1"], "'nonsense://x' is not a ZeroMQ endpoint"),
    (["--trainer", "gpu-a:5555"], "'gpu-a:5555' is not a ZeroMQ endpoint"),  # the scheme forgotten: not about --ctl
    (["--token", "two words"], "the control token may hold only"),
    (["--snapshot-rate", "0"], "must be a positive number"),
    (["--relay", "relay-box:5559"], "--relay 'relay-box:5559': give tcp://HOST:PORT"),
    (["--relay", "tcp://127.0.0.1:5559,nonsense"], "--relay 'tcp://127.0.0.1:5559,nonsense'"),
])
def test_the_viewer_refuses_bad_endpoints_and_tokens_at_start(args, says):
    done = subprocess.run([sys.executable, "-m", "viewer", "--port", str(free_port()), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr, done.stderr


def raw_get(viewer: ViewerProcess, path: str, host: str, *extra: str) -> tuple[int, bytes]:
    """GET ``path`` with this ``Host`` header, as a page on a name re-pointed at 127.0.0.1 would send it."""
    address, port = viewer.url.removeprefix("http://").rsplit(":", 1)
    head = "".join(f"{line}\r\n" for line in (f"GET {path} HTTP/1.1", f"Host: {host}", *extra, "Connection: close"))
    with socket.create_connection((address, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536) or b"\r\n\r\n"
        status = int(answer.split(b" ", 2)[1])
        if status != 101:  # an upgraded socket stays open: its head is all there is to read
            answer += b"".join(iter(lambda: sock.recv(65536), b""))
    return status, answer.partition(b"\r\n\r\n")[2]


UPGRADE = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
           "Sec-WebSocket-Version: 13")


@pytest.mark.parametrize("path", ["/", "/api/runs", "/api/runs/anything", "/api/status", "/healthz",
                                  "/static/app.js", "/ws", "/ws?runs=1"])
def test_a_request_addressed_to_another_name_is_refused_on_every_route(viewer, path):
    """DNS rebinding: evil.example re-pointed at 127.0.0.1 makes its page same-origin with the viewer."""
    port = viewer.url.rsplit(":", 1)[1]
    extra = UPGRADE if path.startswith("/ws") else ()
    status, body = raw_get(viewer, path, f"evil.example:{port}", *extra)
    assert status == 421, body
    assert "evil.example" in orjson.loads(body)["error"]
    for own in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}", f"[::1]:{port}", "127.0.0.1"):
        assert raw_get(viewer, path, own, *extra)[0] in (101, 200, 404), own


def test_allow_origin_admits_its_host_name_too(viewers, tmp_path):
    trusting = viewers(None, None, "--allow-origin", "https://dash.example.org")
    assert raw_get(trusting, "/api/status", "dash.example.org")[0] == 200
    assert raw_get(trusting, "/api/status", "evil.example")[0] == 421
    anyone = viewers(None, None, "--allow-origin", "*")
    assert raw_get(anyone, "/api/status", "evil.example")[0] == 200


def test_a_runs_folder_that_is_not_there_is_said_at_start(viewers, tmp_path):
    there = tmp_path / "runs"
    there.mkdir()
    viewer = viewers(None, None, "--runs", str(there), "--runs", str(tmp_path / "rnus"))
    assert f"runs in {there}, {tmp_path / 'rnus'} (not there yet: its runs appear once it is made)" \
        in viewer.output()


def test_a_generated_token_can_be_given_back_as_token_on_a_command_line():
    """A random token once began with '-' (1 start in 64): ``--token -abc`` then reads as an option, in our
    tools and a user's shell alike. Generated tokens are hex, 128 bits."""
    tokens = {new_token() for _ in range(1_000)}
    assert len(tokens) == 1_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", token) and check_token(token) == token for token in tokens)
