"""The wire protocol between a trainer and its subscribers, in one place.

The trainer, the viewer, `tetriszmq ctl` and the tests all import these
definitions; `docs/PROTOCOL.md` is the same contract in prose.

Stream (PUB -> SUB): multipart ``[topic_frame, payload]``. ``topic_frame`` is
``b"<topic>:"`` so that no topic is a prefix of another and a subscriber can
filter with ``setsockopt(SUBSCRIBE, b"board:")``. ``payload`` is an orjson
object carrying the envelope (``v``, ``topic``, ``run``, ``seq``, ``t``) and
the topic's fields. ``topic`` is repeated inside the payload so that a relay
(the viewer) can forward the payload bytes verbatim to browsers.

Control (REQ -> REP): one frame, an orjson object ``{"cmd": ...}``; the reply
is ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

import orjson

VERSION = 1
MAX_REQUEST_BYTES = 4096
MAX_QUOTED = 40  # characters of a bad value that an error message repeats
BOARD_ROWS, BOARD_COLS = 20, 10
PIECE_KINDS = range(2, 9)  # I, O, T, S, Z, J, L as tetris-gymnasium numbers them
RUN_ID_CHARS = "[A-Za-z0-9._-]"  # a run id's characters: safe in a path, a URL and a JSON string unescaped
RUN_ID_MAX = 80
RUN_ID_PATTERN = re.compile(f"{RUN_ID_CHARS}{{1,{RUN_ID_MAX}}}")  # whole strings only: see `is_run_id`


class Topic(StrEnum):
    STATUS = "status"
    METRICS = "metrics"
    EPISODE = "episode"
    BOARD = "board"
    HEARTBEAT = "heartbeat"


class State(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    SAVING = "saving"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


class Command(StrEnum):
    STOP = "stop"
    STATUS = "status"
    SAVE = "save"
    PAUSE = "pause"
    RESUME = "resume"
    SNAPSHOT = "snapshot"


class Envelope(TypedDict):
    v: int
    topic: str
    run: str
    seq: int
    t: float


class StatusFields(TypedDict):
    state: str
    reason: str
    timesteps: int
    episodes: int
    best_lines: int


class MetricsFields(TypedDict):
    timesteps: int
    episodes: int
    sps: float
    dropped: int
    scalars: dict[str, float]


# Optional fields are declared in `total=False` bases: ``NotRequired`` under postponed annotations is
# not seen by Python 3.11's TypedDict, which would list them in ``__required_keys__``.
class BoardStatsFields(TypedDict, total=False):
    """A placement run's episode: means over the boards the agent left."""

    holes: float
    max_height: float
    bumpiness: float


class EpisodeFields(BoardStatsFields):
    episode: int
    reward: float
    lines: int
    length: int
    timesteps: int


class Candidate(TypedDict):
    action: int
    cells: list[list[int]]
    score: float


class ThinkingFields(TypedDict, total=False):
    """What the agent is thinking (docs/PROTOCOL.md, `board`)."""

    candidates: list[Candidate]
    chosen: int


class BoardFields(ThinkingFields):
    board: list[list[int]]
    next: list[int]
    hold: int | None
    episode: int
    step: int
    lines: int
    score: float


class HeartbeatFields(TypedDict):
    state: str
    reason: str
    lineage: str
    timesteps: int
    episodes: int
    best_lines: int
    sps: float
    uptime: float


class Request(TypedDict):
    cmd: str
    v: NotRequired[int]


FIELDS: dict[Topic, type] = {
    Topic.STATUS: StatusFields,
    Topic.METRICS: MetricsFields,
    Topic.EPISODE: EpisodeFields,
    Topic.BOARD: BoardFields,
    Topic.HEARTBEAT: HeartbeatFields,
}

TOPIC_FRAMES: dict[Topic, bytes] = {topic: f"{topic}:".encode() for topic in Topic}
_TOPIC_BY_FRAME: dict[bytes, Topic] = {frame: topic for topic, frame in TOPIC_FRAMES.items()}


class ProtocolError(ValueError):
    """A message or request that does not follow this protocol."""


def encode_body(fields: dict[str, Any]) -> bytes:
    """Encode a topic's fields (numpy scalars and arrays allowed) as a JSON object."""
    return orjson.dumps(fields, option=orjson.OPT_SERIALIZE_NUMPY)


def is_run_id(value: object) -> bool:
    """True for a string that is a run id as a whole.

    Every check goes through here: ``re.match`` with ``$`` would take a final newline too.
    """
    return isinstance(value, str) and RUN_ID_PATTERN.fullmatch(value) is not None


def envelope_prefix(topic: Topic, run: str) -> bytes:
    """The constant head of every payload of ``topic`` in ``run``, ready for `seal`.

    Computed once per topic and run, so sealing a message is two byte joins.
    """
    if not is_run_id(run):
        raise ProtocolError(f"run id {run!r} must match {RUN_ID_PATTERN.pattern}")
    return b'{"v":%d,"topic":"%s","run":"%s","seq":' % (VERSION, topic.encode(), run.encode())


def seal(prefix: bytes, seq: int, body: bytes) -> bytes:
    """Splice the envelope (from `envelope_prefix`) and ``seq`` into an encoded body.

    ``body`` is a non-empty JSON object (it always holds ``t``), so dropping its
    opening brace and joining gives one valid object without re-encoding.
    """
    return b"%s%d,%s" % (prefix, seq, body[1:])


def topic_of(frame: bytes) -> Topic:
    """The topic of a topic frame; raises `ProtocolError` for an unknown one."""
    topic = _TOPIC_BY_FRAME.get(frame)
    if topic is None:
        raise ProtocolError(f"unknown topic frame {frame[:40]!r}")
    return topic


def decode_message(frames: list[bytes]) -> tuple[Topic, dict[str, Any]]:
    """Decode one stream message; raises `ProtocolError` on anything malformed."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames, got {len(frames)}")
    return topic_of(frames[0]), decode_payload(frames[1])


def decode_payload(raw: bytes) -> dict[str, Any]:
    """A stream payload of this protocol version; raises `ProtocolError` on anything else."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not JSON: {exc}") from None
    if not isinstance(payload, dict) or payload.get("v") != VERSION:
        raise ProtocolError(f"payload is not a v{VERSION} object")
    return payload


def encode_request(cmd: Command | str) -> bytes:
    return orjson.dumps({"cmd": str(cmd), "v": VERSION})


def parse_request(frames: list[bytes]) -> Command:
    """Validate one control request and return its command.

    Every rejection raises `ProtocolError` with a message fit to send back.
    """
    if len(frames) != 1:
        raise ProtocolError(f"expected 1 frame, got {len(frames)}")
    request = decode_request(frames[0], {"cmd", "v"})
    version = request.get("v", VERSION)
    if type(version) is not int or version != VERSION:
        raise ProtocolError(f'"v" must be the number {VERSION} (this trainer speaks v{VERSION}), got {quote(version)}')
    return command_of(request, Command)


def decode_request(raw: bytes, fields: set[str], what: str = "request") -> dict[str, Any]:
    """A small JSON object with no fields but ``fields``, each at most once; `ProtocolError` otherwise.

    orjson keeps the last of repeated keys, so ``{"cmd":"status","cmd":"pause"}``
    would pause: the stdlib parser with a pairs hook sees every key. It also
    keeps integers beyond 64 bits exact, so an error can quote them as sent. It
    is slower than orjson and recursive, hence the size bound before it.
    """
    if len(raw) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"{what} of {len(raw)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        request = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_not_json)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError):  # json.JSONDecodeError is a ValueError
        raise ProtocolError(f"{what} is not valid UTF-8 JSON") from None
    except RecursionError:
        raise ProtocolError(f"{what} nests too deeply") from None
    if not isinstance(request, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {json_type(request)}")
    unexpected = [quote(name) for name in request if name not in fields]
    if unexpected:
        raise ProtocolError(f"unexpected fields: {', '.join(unexpected)[:200]}")
    return request


def command_of(request: dict[str, Any], known: Iterable[Command]) -> Command:
    """The request's ``cmd`` if it is one of ``known``; `ProtocolError` says what is wrong."""
    if "cmd" not in request:
        raise ProtocolError('"cmd" is missing')
    cmd = request["cmd"]
    if not isinstance(cmd, str):
        raise ProtocolError(f'"cmd" must be a string, got {json_type(cmd)}')
    known = list(known)
    if cmd not in known:
        raise ProtocolError(f"unknown command {quote(cmd)}; known: {', '.join(known)}")
    return Command(cmd)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type: error messages speak JSON, not Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def quote(value: Any) -> str:
    """A decoded value as JSON text, cut to `MAX_QUOTED` characters, for error messages."""
    text = json.dumps(value)  # ASCII only: a lone surrogate from the request cannot break the reply
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "..."


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    request = dict(pairs)
    if len(request) != len(pairs):
        repeated = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
        raise ProtocolError(f"repeated fields: {', '.join(map(quote, repeated))[:200]}")
    return request


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def ok_reply(fields: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"ok": True, **(fields or {})}, option=orjson.OPT_SERIALIZE_NUMPY)


def error_reply(message: str) -> bytes:
    return orjson.dumps({"ok": False, "error": message})
