"""Bad input at the viewer: junk WebSocket frames, thousands of dropped connections, malformed control requests.

One real trainer and one real viewer serve the whole module, and one well-behaved WebSocket client
(tests/viewer_probe.py in its own process) watches throughout. After each kind of abuse the viewer must
still be running, that client must still be streaming with every ``seq`` in order, and the viewer's
memory and open files must be back near where they started.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import TrainerProcess, start_trainer, wait_for
from viewer_support import PROBE, ViewerProcess, start_viewer

from tetriszmq.stream import journal

pytestmark = pytest.mark.slow  # real trainer and viewer processes

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RSV1 = 0x40
MAX_BROWSER_MESSAGE = 4096  # viewer.app's limit on what a browser may send
RSS_GROWTH_LIMIT = 24 << 20
FD_GROWTH_LIMIT = 16
JOURNALED = frozenset({"status", "metrics", "episode"})  # the history topics, all in the trainer's metrics.jsonl


@dataclass
class Watcher:
    """The well-behaved client: one line per message it received, read by a thread."""

    proc: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(orjson.loads(line))

    def unexplained_gaps(self) -> list[tuple[int, int]]:
        """(expected, got) wherever a seq did not follow the one before it (or its snapshot's)."""
        gaps, expected = [], None
        for line in self.lines:
            if line["topic"] == "snapshot":
                expected = line["seq"] + 1 if line["run"] is not None else None
            elif line["seq"] is not None:
                if expected is not None and line["seq"] != expected:
                    gaps.append((expected, line["seq"]))
                expected = line["seq"] + 1
        return gaps

    def lost_history(self, journaled: list[dict[str, Any]]) -> list[str]:
        """Journaled messages after the first snapshot that did not arrive once each, in seq order.

        A gap on the trainer link loses boards and heartbeats for good (only the newest matters), but
        the viewer refills every history message from a snapshot: none may be missing or out of order.
        """
        lines = [line for line in list(self.lines) if line["seq"] is not None]
        snapshots = [line["seq"] for line in lines if line["topic"] == "snapshot"]
        received = [line["seq"] for line in lines if line["topic"] in JOURNALED and line["seq"] > snapshots[0]]
        problems = [f"{a} before {b}" for a, b in zip(received, received[1:], strict=False) if a >= b]
        expected = [m["seq"] for m in journaled
                    if m["run"] == lines[0]["run"] and snapshots[0] < m["seq"] <= max(received, default=-1)]
        covered = set(received)
        return problems + [f"{seq} missing" for seq in expected
                           if seq not in covered and not any(seq <= later for later in snapshots[1:])]


@dataclass
class Stage:
    trainer: TrainerProcess
    viewer: ViewerProcess
    watcher: Watcher
    rss: int = 0
    fds: int = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.viewer.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.viewer.proc.pid}/fd"))

    def let_go(self, label: str) -> None:
        """The viewer has closed what ``label``'s clients left: open files back, only the watcher attached."""
        try:
            wait_for(lambda: self.open_files() <= self.fds + FD_GROWTH_LIMIT
                     and self.viewer.status()["clients"]["clients"] == 1, timeout=30)
        except TimeoutError:
            raise AssertionError(f"{label}: the viewer holds {self.open_files() - self.fds} more files, "
                                 f"{self.viewer.status()['clients']['clients']} clients") from None

    def assert_unharmed(self, label: str) -> None:
        """The viewer runs, the watcher streams in order, clients, memory and files are back to normal."""
        assert self.viewer.proc.poll() is None, self.viewer.output()
        seen = len(self.watcher.lines)
        wait_for(lambda: len(self.watcher.lines) > seen + 10, timeout=20)
        wait_for(lambda: self.viewer.status()["clients"]["clients"] == 1, timeout=20)
        wait_for(lambda: self.open_files() <= self.fds + FD_GROWTH_LIMIT, timeout=20)
        status = self.viewer.status()
        assert status["clients"]["per_client"][0]["resyncs"] == 0  # the watcher was never too slow
        if status["trainer"]["gaps"] == 0:
            assert self.watcher.unexplained_gaps() == []  # every seq, in order
        else:  # the trainer link lost messages: only boards and heartbeats may stay missing
            assert self.watcher.lost_history(journal.read(self.trainer.run_dir / "metrics.jsonl")) == []
        rss = status["viewer"]["rss"]
        print(f"\n{label}: viewer RSS {self.rss / 2**20:.1f} -> {rss / 2**20:.1f} MiB, open files {self.fds} -> "
              f"{self.open_files()}, watcher {len(self.watcher.lines)} messages, last seq "
              f"{self.watcher.lines[-1]['seq']}, gaps {self.watcher.unexplained_gaps()}, "
              f"disconnected {status['clients']['disconnected']}")
        assert rss - self.rss < RSS_GROWTH_LIMIT
        assert "Traceback" not in self.viewer.output()
        assert self.trainer.proc.poll() is None


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    tmp = tmp_path_factory.mktemp("abuse")
    trainer = start_trainer(tmp / "run", "--set", "train.max_timesteps=10000000")
    procs: list[subprocess.Popen[Any]] = [trainer.proc]
    try:
        viewer = start_viewer(tmp, trainer.pub, trainer.ctl, "--send-timeout", "3")
        procs.append(viewer.proc)
        wait_for(lambda: viewer.status()["trainer"]["link"] == "online" and not viewer.status()["trainer"]["syncing"],
                 timeout=60)
        watcher = Watcher(subprocess.Popen([sys.executable, str(PROBE), "watch", viewer.url, "--seconds", "600"],
                                           stdout=subprocess.PIPE, text=True))
        procs.append(watcher.proc)
        watcher.start()
        wait_for(lambda: len(watcher.lines) > 20, timeout=30)
        stage = Stage(trainer, viewer, watcher)
        stage.rss, stage.fds = viewer.status()["viewer"]["rss"], stage.open_files()
        yield stage
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait(10)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


# A raw WebSocket client, to send what a real client library never would ----------------------------------------

def handshake(path: bytes = b"/ws") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, key))


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True,
          length: int | None = None) -> bytes:
    """A client-to-server frame; ``length`` claims a size other than the payload's."""
    size = len(payload) if length is None else length
    first, mask_bit = (0x80 if fin else 0) | rsv | opcode, 0x80 if masked else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return header + payload
    key = os.urandom(4)
    stream = (key * (len(payload) // 4 + 1))[:len(payload)]
    masked_payload = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(payload), "big")
    return header + key + masked_payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(size)


async def upgraded(stage: Stage) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*stage.address)
    writer.write(handshake())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def reaction(stage: Stage, data: bytes) -> str:
    """Send ``data`` on a fresh WebSocket, then a ping: 'alive' (the pong came), 'close <code>' or 'cut'."""
    reader, writer = await upgraded(stage)
    marker = os.urandom(8)
    try:
        writer.write(data + frame(PING, marker))
        async with asyncio.timeout(10):
            while True:
                opcode, payload = await read_frame(reader)
                if opcode == PONG and payload == marker:
                    return "alive"
                if opcode == CLOSE:
                    return f"close {int.from_bytes(payload[:2], 'big')}" if len(payload) >= 2 else "close"
    except (asyncio.IncompleteReadError, ConnectionError):
        return "cut"
    finally:
        writer.transport.abort()


def junk(size: int) -> bytes:
    return random.randbytes(size)


FRAMES: dict[str, tuple[Callable[[], bytes], set[str]]] = {
    # what is sent -> the reactions accepted
    "text junk": (lambda: frame(TEXT, os.urandom(300).hex().encode()), {"alive"}),
    "binary junk": (lambda: frame(BINARY, junk(1000)), {"alive"}),
    "ten pings": (lambda: b"".join(frame(PING, junk(125)) for _ in range(10)), {"alive"}),
    "unsolicited pong": (lambda: frame(PONG, b"hi"), {"alive"}),
    "invalid UTF-8 text": (lambda: frame(TEXT, b"ok \xc3\x28 \xff"), {"close 1007"}),
    "reserved opcode": (lambda: frame(random.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), b"x"), {"close 1002"}),
    "RSV1 without compression": (lambda: frame(TEXT, b"{}", rsv=RSV1), {"close 1002"}),
    "continuation with no start": (lambda: frame(CONTINUATION, b"x"), {"close 1002"}),
    "fragmented ping": (lambda: frame(PING, b"x", fin=False), {"close 1002"}),
    "ping over 125 bytes": (lambda: frame(PING, junk(126)), {"close 1002"}),
    "unmasked frame": (lambda: frame(TEXT, b"hello", masked=False), {"close 1002", "alive"}),
    "close with a 1-byte body": (lambda: frame(CLOSE, b"\x03"), {"close 1002", "cut"}),
    "close with code 999": (lambda: frame(CLOSE, struct.pack("!H", 999)), {"close 1002", "cut"}),
    "frame over 4 KiB": (lambda: frame(TEXT, b"x" * (MAX_BROWSER_MESSAGE + 1)), {"close 1009"}),
    "frame claiming 10 GB": (lambda: frame(BINARY, b"", length=10 << 30), {"close 1009"}),
    "frame claiming 2**63 - 1 bytes": (lambda: frame(BINARY, b"", length=(1 << 63) - 1), {"close 1009", "close 1002"}),
    "100 fragments of 100 bytes": (lambda: frame(TEXT, b"x" * 100, fin=False)
                                   + b"".join(frame(CONTINUATION, b"x" * 100, fin=False) for _ in range(99)),
                                   {"close 1009"}),
}



def check_tally(title: str, results: dict[str, Counter[str]], allowed: dict[str, set[str]]) -> None:
    """Print what each kind of abuse got back, then require only the allowed reactions."""
    print(f"\n{title}:")
    for name, counts in results.items():
        print(f"  {name}: {dict(counts)}")
    for name, counts in results.items():
        assert set(counts) <= allowed[name], f"{name}: {dict(counts)}"

def test_junk_websocket_frames_close_only_the_sender_with_a_reason(stage):
    repeat = 30
    results: dict[str, Counter[str]] = {name: Counter() for name in FRAMES}

    async def body() -> None:
        gate = asyncio.Semaphore(16)

        async def one(name: str) -> None:
            async with gate:
                results[name][await reaction(stage, FRAMES[name][0]())] += 1

        await asyncio.gather(*(one(name) for name in FRAMES for _ in range(repeat)))

    run(body)
    check_tally(f"{repeat * len(FRAMES)} junk-frame connections", results, {n: FRAMES[n][1] for n in FRAMES})
    stage.assert_unharmed("junk frames")


def test_a_client_that_pings_and_never_reads_is_cut_off(stage):
    """Every ping makes a pong: a client that never reads them must not make the viewer buffer without end."""
    async def body() -> None:
        reader, writer = await upgraded(stage)
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        pings = frame(PING, junk(125)) * 2000
        started = time.monotonic()
        try:
            async with asyncio.timeout(30):
                for _ in range(40):  # 80,000 pings, 10 MiB of pongs owed
                    writer.write(pings)
                    await writer.drain()
        except (ConnectionError, TimeoutError) as exc:
            outcome = type(exc).__name__
        else:
            outcome = "all sent"
        finally:
            writer.transport.abort()
        print(f"\nping flood without reading: {outcome} after {time.monotonic() - started:.1f}s")

    run(body)
    stage.assert_unharmed("ping flood")


# Connections opened and dropped ---------------------------------------------------------------------------------

async def reset(writer: asyncio.StreamWriter) -> None:
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                         struct.pack("ii", 1, 0))
    writer.transport.abort()


async def status_line(reader: asyncio.StreamReader) -> str:
    try:
        line = await reader.readline()
    except ConnectionError:
        return "cut"
    if not line:
        return "closed"
    return line.split(b" ")[1].decode() if line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else f"junk {line[:40]!r}"


async def half_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """Close our side, then read what the viewer does: it must answer or close too, not hold the connection."""
    writer.write_eof()
    return await status_line(reader)


# what a client does -> what it may read back (None: it leaves without reading; the check is that the viewer
# lets go of the connection, see `Stage.let_go`, which follows every kind)
DROPS: dict[str, tuple[Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[str | None]],
                       set[str] | None]] = {}


def drop(name: str, accepted: set[str] | None):
    def register(fn):
        DROPS[name] = (fn, accepted)
        return fn
    return register


@drop("connect, close", {"closed"})
async def _(reader, writer):
    return await half_close(reader, writer)


@drop("connect, reset", None)
async def _(reader, writer):
    await reset(writer)


@drop("half a request line, close", {"400", "closed"})
async def _(reader, writer):
    writer.write(b"GET /w")
    return await half_close(reader, writer)


@drop("half the upgrade headers, reset", None)
async def _(reader, writer):
    writer.write(handshake()[:70])
    await writer.drain()
    await reset(writer)


@drop("whole upgrade request, leave before the answer", None)
async def _(reader, writer):
    writer.write(handshake())
    await writer.drain()


@drop("upgrade, leave right after 101", {"101"})
async def _(reader, writer):
    writer.write(handshake())
    return await status_line(reader)


@drop("upgrade, read the first frame, reset", {"101"})
async def _(reader, writer):
    writer.write(handshake())
    answer = await status_line(reader)
    await reader.readuntil(b"\r\n\r\n")
    await read_frame(reader)
    await reset(writer)
    return answer


@drop("upgrade with an unknown WebSocket version", {"400"})
async def _(reader, writer):
    writer.write(handshake().replace(b"Version: 13", b"Version: 99"))
    return await status_line(reader)


@drop("binary junk for a request", {"400", "closed", "cut"})
async def _(reader, writer):
    writer.write(junk(200) + b"\r\n\r\n")
    return await status_line(reader)


@drop("a TLS hello on plain HTTP", {"400", "closed", "cut"})
async def _(reader, writer):
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + junk(100))
    return await status_line(reader)


@drop("a 10 kB request line", {"400", "414", "closed", "cut"})
async def _(reader, writer):
    writer.write(b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return await status_line(reader)


@drop("a path out of /static", {"403", "404"})
async def _(reader, writer):
    writer.write(b"GET /static/../../../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    return await status_line(reader)


@drop("GET /api/status, leave before the answer", None)
async def _(reader, writer):
    writer.write(b"GET /api/status?clients=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()


def test_thousands_of_connections_opened_and_dropped_leave_nothing_behind(stage):
    """Each kind in its own burst, so that what one kind leaves behind is charged to it."""
    per_kind = 300
    results: dict[str, Counter[str]] = {name: Counter() for name in DROPS}

    async def burst(name: str) -> None:
        gate = asyncio.Semaphore(48)

        async def one() -> None:
            async with gate:
                reader, writer = await asyncio.open_connection(*stage.address)
                try:
                    async with asyncio.timeout(15):
                        if (seen := await DROPS[name][0](reader, writer)) is not None:
                            results[name][seen] += 1
                finally:
                    writer.transport.abort()

        await asyncio.gather(*(one() for _ in range(per_kind)))

    started = time.monotonic()
    for name in DROPS:
        run(lambda: burst(name))  # noqa: B023 (run awaits it before the loop moves on)
        stage.let_go(name)
    check_tally(f"{per_kind * len(DROPS)} connections in {time.monotonic() - started:.1f}s", results,
                {n: DROPS[n][1] or set() for n in DROPS})
    for name, (_, accepted) in DROPS.items():
        assert (sum(results[name].values()) == per_kind) == (accepted is not None), name
    stage.assert_unharmed("dropped connections")


# Malformed control requests -------------------------------------------------------------------------------------

MALFORMED_BODIES = [
    b"", b"stop", b"{", b'{"cmd": "stop"', b"\xff\xfe\x00", b"null", b"NaN", b"[]", b"1", b'"stop"',
    b"{}", b'{"command": "stop"}', b'{"cmd": 1}', b'{"cmd": null}', b'{"cmd": ["stop"]}', b'{"cmd": {"stop": 1}}',
    b'{"cmd": true}', b'{"cmd": "status"}', b'{"cmd": "snapshot"}', b'{"cmd": "STOP"}', b'{"cmd": "stop "}',
    b'{"cmd": "\\u0000"}', b'{"cmd": "stop", "force": true}', b"[" * 1000, b'{"cmd": "' + "é".encode() * 400 + b'"}',
]


def random_body(rng: random.Random) -> bytes:
    """Random bytes, or random JSON that is never exactly one of the four commands."""
    if rng.random() < 0.5:
        return rng.randbytes(rng.randint(0, 1024))
    value = rng.choice([rng.random(), rng.randint(-2**63, 2**63 - 1), None, True, "".join(
        rng.choices("stopauservx\"\\ \u00e9\u2603", k=rng.randint(0, 20)))])
    for _ in range(rng.randint(0, 3)):
        value = rng.choice([[value], {"cmd": value}, {"cmd": "stop", "x": value}, {rng.choice("cmdx"): value}])
    body = orjson.dumps(value)
    return body + b" " if body in {b'{"cmd":"stop"}', b'{"cmd":"pause"}', b'{"cmd":"resume"}', b'{"cmd":"save"}'} \
        else body


def test_malformed_control_requests_and_wrong_tokens_are_refused_and_training_goes_on(stage):
    viewer, rng = stage.viewer, random.Random(5)
    token = viewer.token
    wrong_tokens = ["", "Bearer", "Bearer ", "Bearer wrong", f"Bearer {token[:-1]}", f"Bearer {token}x",
                    f"Basic {token}", f"bearer{token}", f"Bearer {token.upper()}", "Bearer " + "x" * 4000]
    bodies = MALFORMED_BODIES * 20 + [random_body(rng) for _ in range(1500)]
    statuses: Counter[int] = Counter()

    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            async def post(data: bytes, authorization: str | None, method: str = "POST") -> None:
                headers = {} if authorization is None else {"Authorization": authorization}
                async with session.request(method, viewer.url + "/api/control", data=data,
                                           headers=headers) as response:
                    reply = await response.read()
                    statuses[response.status] += 1
                    if response.status < 500 and response.content_type == "application/json":
                        assert orjson.loads(reply)["ok"] is False
                    assert response.status in {400, 401, 403, 405, 413, 431}, (data[:80], authorization, reply)

            gate = asyncio.Semaphore(16)

            async def gated(*args: Any) -> None:
                async with gate:
                    await post(*args)

            await asyncio.gather(*(gated(data, f"Bearer {token}") for data in bodies))
            await asyncio.gather(*(gated(b'{"cmd": "stop"}', header) for header in wrong_tokens * 10))
            await asyncio.gather(*(gated(b'{"cmd": "stop"}', None) for _ in range(10)))
            for size in (1025, 100_000, 8 << 20):
                await post(b'{"cmd": "stop", "pad": "' + b"x" * size + b'"}', f"Bearer {token}")

            async def chunked() -> Any:
                for _ in range(4096):
                    yield b"x" * 1024
            await post(chunked(), f"Bearer {token}")
            await post(b'{"cmd": "stop"}', f"Bearer {token}", method="GET")

    run(body)
    raw = raw_control_requests(stage)
    print(f"\n{sum(statuses.values())} malformed control requests: {dict(sorted(statuses.items()))}; raw: {raw}")
    assert raw["non-UTF-8 token"] == "401"  # not a token at all
    assert raw["body shorter than its Content-Length"] in {"400", "closed"}  # not acted on, not held open
    assert stage.viewer.status()["trainer"]["link"] == "online"
    stage.assert_unharmed("control")


def raw_control_requests(stage: Stage) -> dict[str, str]:
    """Two requests no HTTP library sends: a token that is not UTF-8, and a valid command whose body
    claims more bytes than come before the client closes: it must not be carried out."""
    async def send(request: bytes, close_first: bool) -> str:
        """The status line read back, after closing our side first if ``close_first``."""
        reader, writer = await asyncio.open_connection(*stage.address)
        try:
            writer.write(request)
            await writer.drain()
            async with asyncio.timeout(30):
                return await (half_close(reader, writer) if close_first else status_line(reader))
        finally:
            writer.transport.abort()

    body = b'{"cmd": "stop"}'
    head = b"POST /api/control HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nAuthorization: Bearer %s\r\n\r\n"

    async def both() -> dict[str, str]:
        return {"non-UTF-8 token": await send(head % (len(body), b"\xff\xfe" + stage.viewer.token.encode()) + body,
                                              close_first=False),
                "body shorter than its Content-Length": await send(head % (1000, stage.viewer.token.encode())
                                                                   + body, close_first=True)}
    return asyncio.run(both())
