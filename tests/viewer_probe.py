"""A browser stand-in for a viewer that the test process cannot reach itself (a viewer in another network namespace).

Run it where the viewer is: ``ip netns exec NS python tests/viewer_probe.py ...``.

    viewer_probe.py get URL                        print the JSON body of GET URL (exit 1 if unreachable)
    viewer_probe.py control URL TOKEN BODY         POST BODY to URL/api/control; print {"status", "reply"}
    viewer_probe.py watch URL --seconds S [--live N]
                                                   one JSON line per WebSocket message from URL/ws:
                                                   {"topic", "seq", "run"} (snapshots add "link"), until
                                                   N messages with a seq followed the first snapshot, or S s
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
import urllib.request

import orjson


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            sys.stdout.buffer.write(response.read())
    except (urllib.error.URLError, ConnectionError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def control(url: str, token: str, body: str) -> int:
    request = urllib.request.Request(url + "/api/control", data=body.encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, reply = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, reply = exc.code, exc.read()
    print(orjson.dumps({"status": status, "reply": orjson.loads(reply)}).decode())
    return 0


def digest(message: dict) -> dict:
    line = {"topic": message["topic"], "seq": message.get("seq"), "run": message.get("run")}
    if message["topic"] == "snapshot":
        line["link"] = message["link"]["state"]
    elif message["topic"] == "link":
        line["link"] = message["state"]
    return line


async def watch(url: str, seconds: float, live: int | None) -> int:
    import aiohttp

    counted = 0
    async with aiohttp.ClientSession() as session, session.ws_connect(
            url + "/ws", max_msg_size=0, heartbeat=None) as ws:
        try:
            async with asyncio.timeout(seconds):
                async for message in ws:
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        print(orjson.dumps({"topic": "ended", "type": message.type.name}).decode(), flush=True)
                        return 1
                    line = digest(orjson.loads(message.data))
                    print(orjson.dumps(line).decode(), flush=True)
                    counted += line["topic"] != "snapshot" and line["seq"] is not None
                    if live is not None and counted >= live:
                        return 0
        except TimeoutError:
            pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("get").add_argument("url")
    post = commands.add_parser("control")
    for name in ("url", "token", "body"):
        post.add_argument(name)
    stream = commands.add_parser("watch")
    stream.add_argument("url")
    stream.add_argument("--seconds", type=float, required=True)
    stream.add_argument("--live", type=int)
    args = parser.parse_args()
    if args.command == "get":
        return get(args.url)
    if args.command == "control":
        return control(args.url, args.token, args.body)
    return asyncio.run(watch(args.url, args.seconds, args.live))


if __name__ == "__main__":
    sys.exit(main())
