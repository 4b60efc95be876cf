"""What viewer/fanout.py relies on in aiohttp's internals, pinned against the installed aiohttp.

The fan-out writes its own frames on a WebSocket's transport, beside aiohttp's `WebSocketWriter`
(see fanout.py's docstring). That is safe only while, on an uncompressed WebSocket,

1. aiohttp writes each frame it sends (text, binary, ping, pong, close) in one synchronous run of
   ``transport.write`` calls, with no await between them, so a frame of ours never lands inside one of
   its frames; and
2. ``ws.closed`` is already true when aiohttp writes its close frame, so the fan-out, which stops on
   ``ws.closed``, never writes after a close frame.

A real server and a real client check both on the wire; an aiohttp upgrade that changes either fails
here (pyproject also pins aiohttp to the minor version this was checked on).
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from viewer.fanout import ws_frame

CLOSE = 0x8
LARGE = b"L" * (3 * 2**14)  # aiohttp writes a frame this size as header, then payload: two writes
OURS = b"ours"


@dataclass
class Write:
    data: bytes
    ws_closed: bool  # ws.closed when this write was made


@dataclass
class Recorder:
    """A WebSocket's transport writes, grouped by synchronous run.

    The first write of a run schedules a callback that ends the group; it runs before any task
    that suspended after that write can resume, so writes separated by a real await fall in
    different groups.
    """

    ws: web.WebSocketResponse
    groups: list[list[Write]] = field(default_factory=list)
    open: bool = False

    def install(self, transport: asyncio.Transport) -> None:
        write = transport.write

        def recording_write(data: bytes) -> None:
            if not self.open:
                self.open = True
                self.groups.append([])
                asyncio.get_running_loop().call_soon(self.end_group)
            self.groups[-1].append(Write(bytes(data), self.ws.closed))
            write(data)

        transport.write = recording_write  # type: ignore[method-assign]

    def end_group(self) -> None:
        self.open = False


def frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Unmasked server frames in ``data`` as (opcode, payload), and what is left of a frame cut short."""
    found = []
    while len(data) >= 2:
        first, second = data[0], data[1]
        size, start = second & 0x7F, 2
        if size == 126:
            if len(data) < 4:
                break
            (size,), start = struct.unpack("!H", data[2:4]), 4
        elif size == 127:
            if len(data) < 10:
                break
            (size,), start = struct.unpack("!Q", data[2:10]), 10
        if len(data) < start + size:
            break
        found.append((first & 0x0F, data[start:start + size]))
        data = data[start + size:]
    return found, data


async def serve(recorders: list[Recorder]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)  # as viewer.app makes them
        await ws.prepare(request)
        recorder = Recorder(ws)
        recorders.append(recorder)
        transport = request.transport
        assert transport is not None
        recorder.install(transport)
        # aiohttp's frames and the fan-out's, alternately, the way the viewer interleaves them
        await ws.send_str("small")
        transport.write(ws_frame(OURS))
        await ws.send_bytes(LARGE)
        transport.write(ws_frame(OURS))
        await ws.ping(b"p")
        await ws.pong(b"q")
        transport.write(ws_frame(OURS))
        async for message in ws:  # answers the client's ping; a client's close frame ends the loop
            if message.type is WSMsgType.TEXT and message.data == "close, server":
                await ws.close(message=b"bye")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/ws"


async def exchange(closer: str) -> tuple[list[tuple[WSMsgType, object]], Recorder]:
    """Run one conversation; ``closer`` is who starts the closing handshake."""
    recorders: list[Recorder] = []
    runner, url = await serve(recorders)
    received: list[tuple[WSMsgType, object]] = []
    try:
        async with asyncio.timeout(60), aiohttp.ClientSession() as session:
            async with session.ws_connect(url, autoping=False, autoclose=False) as client:
                for _ in range(7):
                    message = await client.receive()
                    received.append((message.type, message.data))
                await client.ping(b"c")
                message = await client.receive()
                received.append((message.type, message.data))
                if closer == "server":
                    await client.send_str("close, server")
                    message = await client.receive()
                    received.append((message.type, message.extra))
                await client.close()
    finally:
        await runner.cleanup()
    return received, recorders[0]


@pytest.mark.parametrize("closer", ["server", "client"])
def test_aiohttp_writes_whole_frames_synchronously_and_is_closed_before_its_close_frame(closer: str):
    received, recorder = asyncio.run(exchange(closer))

    assert received[:8] == [
        (WSMsgType.TEXT, "small"), (WSMsgType.TEXT, OURS.decode()), (WSMsgType.BINARY, LARGE),
        (WSMsgType.TEXT, OURS.decode()), (WSMsgType.PING, b"p"), (WSMsgType.PONG, b"q"),
        (WSMsgType.TEXT, OURS.decode()), (WSMsgType.PONG, b"c"),
    ], "the client got every frame, aiohttp's and ours, whole and in order"
    if closer == "server":
        assert received[8] == (WSMsgType.CLOSE, "bye")

    written = []
    for group in recorder.groups:
        found, cut = frames(b"".join(w.data for w in group))
        assert cut == b"", f"a frame was split across an await: {[len(w.data) for w in group]} bytes written"
        written += [opcode for opcode, _ in found]
    assert written.count(CLOSE) == 1 and written[-1] == CLOSE, written

    close_group = next(g for g in recorder.groups if frames(b"".join(w.data for w in g))[0][-1][0] == CLOSE)
    assert all(w.ws_closed for w in close_group), "ws.closed must be set before the close frame is written"
