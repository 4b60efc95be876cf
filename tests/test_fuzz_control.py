"""Ten thousand malformed control requests: each gets an error reply, training goes on, memory stays flat."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import zmq
from conftest import TRAINING, start_trainer, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tetriszmq.stream.control import request

pytestmark = pytest.mark.slow  # real trainer processes

REQUESTS = 10_000
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def dumps(value: object) -> bytes:
    """The stdlib encoder: unlike orjson it writes integers beyond 64 bits, a case worth sending."""
    return json.dumps(value).encode()


not_an_object = json_values.filter(lambda v: not isinstance(v, dict)).map(dumps)
wrong_cmd_type = json_values.filter(lambda v: not isinstance(v, str)).map(lambda v: dumps({"cmd": v}))
unknown_cmd = st.text(max_size=50).filter(lambda c: c not in {"stop", "status", "save", "pause", "resume",
                                                                 "snapshot"}).map(lambda c: dumps({"cmd": c}))
extra_fields = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in {"cmd", "v"}), json_values,
                               min_size=1, max_size=3).map(lambda d: dumps({"cmd": "status", **d}))
bad_version = st.integers().filter(lambda v: v != 1).map(lambda v: dumps({"cmd": "status", "v": v}))
huge = st.integers(4097, 300_000).map(lambda n: b'{"cmd": "' + b"x" * n + b'"}')
deep = st.integers(100, 20_000).map(lambda n: b"[" * n + b"]" * n)
raw_bytes = st.binary(max_size=200).filter(lambda b: not _is_valid(b))
malformed = st.one_of(raw_bytes, not_an_object, wrong_cmd_type, unknown_cmd, extra_fields, bad_version, huge, deep)
frames = st.one_of(malformed.map(lambda b: [b]),
                   st.lists(st.binary(max_size=50), min_size=2, max_size=4))


def _is_valid(raw: bytes) -> bool:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and set(value) <= {"cmd", "v"}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory):
    process = start_trainer(tmp_path_factory.mktemp("fuzz") / "run", "--set", "train.max_timesteps=100000000",
                            "--set", "train.checkpoint_every=0")
    yield process
    process.proc.kill()
    process.proc.wait(10)


class Client:
    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sent = 0

    def ask(self, message: list[bytes]) -> dict:
        self.sock.send_multipart(message)
        self.sent += 1
        assert self.sock.poll(10_000), f"no reply to {message[0][:40]!r}"
        return orjson.loads(self.sock.recv())


def test_every_malformed_request_gets_an_error_and_training_goes_on(trainer):
    client = Client(trainer.ctl)
    # past torch's warm-up, the trainer's memory is at its plateau
    wait_for(lambda: request(trainer.ctl, "status", timeout=10)["timesteps"] >= 5000)
    warm = request(trainer.ctl, "status")

    @settings(max_examples=REQUESTS, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(frames)
    def one_request(message: list[bytes]) -> None:
        reply = client.ask(message)
        assert reply["ok"] is False and isinstance(reply["error"], str) and reply["error"]

    for _ in range(500):  # warm the trainer's allocator before measuring memory
        client.ask([b"warm-up"])
    before = rss_kib(trainer.proc.pid)
    one_request()
    after = rss_kib(trainer.proc.pid)
    status = request(trainer.ctl, "status", timeout=10)
    assert client.sent >= REQUESTS
    assert status["state"] in TRAINING and status["timesteps"] > warm["timesteps"]
    assert after - before < 30 * 1024, f"trainer memory grew by {(after - before) / 1024:.1f} MiB"
    print(f"\n{client.sent} malformed requests answered; trainer RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB")
