"""The relay: trainers on two hosts dial out to it, a client on a fourth host follows and steers them."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import zmq
from conftest import ROOT, TRAINING, TrainerProcess, free_endpoint, free_port, reap, wait_for
from netns import LONG, Host, run_in
from viewer_support import ViewerProcess
from zmq.utils.monitor import parse_monitor_message

from tetriszmq.stream.control import request
from tetriszmq.stream.relay import encode_request
from tetriszmq.stream.security import ClientCurve, make_keys

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def relay_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tetriszmq keys --names relay,client --trainers node``'s keys; a stranger's node and client under stranger/."""
    directory = tmp_path_factory.mktemp("relay-keys")
    make_keys(directory, ("relay", "client"), trainers=("node",))
    make_keys(directory / "stranger", ("stranger-relay", "client"), trainers=("node",))
    return directory


def relay_curve(keys: Path) -> list[str]:
    """The relay's CURVE options: its key pair, the clients' keys and, apart, the trainers'."""
    return ["--curve-secret-key", str(keys / "relay.key_secret"), "--curve-allow", str(keys / "allowed"),
            "--curve-allow-trainers", str(keys / "allowed-trainers")]


def curve(keys: Path, who: str, stranger: bool = False) -> list[str]:
    """A node's or a client's CURVE options towards the relay."""
    secret = (keys / "stranger" if stranger else keys) / f"{who}.key_secret"
    return ["--curve-server-key", str(keys / "relay.key"), "--curve-secret-key", str(secret)]


@dataclass
class RelayProcess:
    args: list[str]
    log: Path
    trainers: str  # where trainers connect (`train --relay`)
    viewers: str  # where clients connect
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        starts = self.log.read_text().count("tetriszmq relay: trainers connect")
        wait_for(lambda: self.log.read_text().count("tetriszmq relay: trainers connect") > starts, 60,
                 what="relay ready", alive=lambda: self.proc.poll() is None)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no chance to close anything
        self.proc.wait(10)


@pytest.fixture
def relay(four_hosts: list[Host], relay_keys: Path, tmp_path: Path) -> Iterator[RelayProcess]:
    """A CURVE relay on the first host, binding its address; trainers' nodes and clients let in."""
    host = four_hosts[0]
    trainers, viewers = (f"tcp://{host.address}:{free_port()}" for _ in range(2))
    args = [*host.prefix(), sys.executable, "-m", "tetriszmq", "relay", "--trainers", trainers, "--viewers", viewers,
            *relay_curve(relay_keys)]
    process = RelayProcess(args, tmp_path / "relay.log", trainers, viewers)
    process.start()
    yield process
    reap([process.proc])


@contextlib.contextmanager
def loopback_relay(log: Path, *options: str) -> Iterator[RelayProcess]:
    """A relay on loopback with these options; it must exit 0 on SIGTERM."""
    trainers, viewers = (f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}" for _ in range(2))
    process = RelayProcess([sys.executable, "-m", "tetriszmq", "relay", "--trainers", trainers, "--viewers", viewers,
                            *options], log, trainers, viewers)
    process.start()
    try:
        yield process
        process.proc.terminate()
        assert process.proc.wait(30) == 0
    finally:
        reap([process.proc])


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[RelayProcess]:
    """A relay on loopback without CURVE."""
    with loopback_relay(tmp_path / "relay.log") as process:
        yield process


@pytest.fixture
def curve_loopback(relay_keys: Path, tmp_path: Path) -> Iterator[RelayProcess]:
    """A relay on loopback with CURVE, letting in `relay_keys`' node and client."""
    with loopback_relay(tmp_path / "relay.log", *relay_curve(relay_keys)) as process:
        yield process


class Client:
    """tests/relay_client.py in a host: its events as they come, and reports on demand."""

    def __init__(self, host: Host, viewers: str, *extra: str) -> None:
        self.proc = subprocess.Popen([*host.prefix(), sys.executable, "tests/relay_client.py", viewers, *extra],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.events: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.put(orjson.loads(line))

    def until(self, predicate: Callable[[dict], bool], timeout: float = 90) -> dict:
        """Wait for the next event that satisfies ``predicate``, keeping every event in ``seen``."""
        while True:
            event = self.events.get(timeout=timeout)
            self.seen.append(event)
            if predicate(event):
                return event

    def report(self) -> dict[str, dict]:
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return self.until(lambda event: event["event"] == "report")["runs"]

    def close(self) -> None:
        self.proc.stdin.close()
        reap([self.proc])


def lineage(trainer: TrainerProcess) -> str:
    wait_for(lambda: (trainer.run_dir / "run.json").exists(), 120, what="run.json", alive=lambda: trainer.proc.poll()
             is None)
    return orjson.loads((trainer.run_dir / "run.json").read_bytes())["lineage"]


def journal_seqs(trainer: TrainerProcess, run: str, topics: tuple[str, ...] = ("episode", "metrics")) -> set[int]:
    """The seqs of the episodes and metrics (or ``topics``) that process ``run`` journaled."""
    lines = (orjson.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_bytes().splitlines())
    return {msg["seq"] for msg in lines if msg["run"] == run and msg["topic"] in topics}


def ctl(host: Host, relay: RelayProcess, cmd: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_in(host, "-m", "tetriszmq", "ctl", cmd, "--relay", relay.viewers, "--timeout", "3", *extra)


def test_two_trainers_behind_a_relay_stream_stop_and_survive_its_kill(four_hosts, relay, relay_keys, trainers):
    _, node_a, node_b, client_host = four_hosts
    a, b = (trainers(*LONG, "--relay", relay.trainers, *curve(relay_keys, "node"), prefix=node.prefix())
            for node in (node_a, node_b))
    lineages = {lineage(a): a, lineage(b): b}
    client = Client(client_host, relay.viewers, *curve(relay_keys, "client"))
    try:
        joined = {client.until(lambda e: e["event"] == "snapshot")["lineage"] for _ in range(2)}
        assert joined == set(lineages)
        listed = orjson.loads(ctl(client_host, relay, "runs", *curve(relay_keys, "client")).stdout)
        assert {r["lineage"] for r in listed["runs"]} == set(lineages)

        relay.kill()
        relay.start()
        restarted = time.time()
        wait_for(lambda: all(held["heard"] > restarted for held in client.report().values()), 120, every=0.1,
                 what="the client hears both runs again")  # in seq order: any gap filled by a snapshot first
        # A restarted relay learns where to route requests from each trainer's next hello (every heartbeat),
        # which its stream may beat: requests are routed once both are listed again.
        listed = lambda: orjson.loads(ctl(client_host, relay, "runs", *curve(relay_keys, "client")).stdout)  # noqa: E731
        wait_for(lambda: {r["lineage"] for r in listed()["runs"]} == set(lineages), 60, every=0.1,
                 what="the restarted relay routes to both runs")

        stopped = ctl(client_host, relay, "stop", "--run", lineage(a), *curve(relay_keys, "client"))
        assert orjson.loads(stopped.stdout) == {"ok": True, "state": "stopping"}, stopped.stderr
        assert a.wait(120) == 0
        status = lambda: orjson.loads(ctl(client_host, relay, "status", "--run", lineage(b),  # noqa: E731
                                          *curve(relay_keys, "client")).stdout)
        before = status()["timesteps"]
        wait_for(lambda: status()["timesteps"] > before, 120, every=0.1, what="the other run trains on")
        assert status()["state"] in TRAINING and b.proc.poll() is None

        run_a, run_b = (orjson.loads((t.run_dir / "run.json").read_bytes())["run"] for t in (a, b))
        wait_for(lambda: client.report()[run_a]["state"] == "stopped", 60, every=0.1, what="the stop seen")
        runs = client.report()
        assert set(runs) == {run_a, run_b}
        for trainer, run in ((a, run_a), (b, run_b)):
            held = runs[run]
            journaled = {seq for seq in journal_seqs(trainer, run) if seq <= held["seq"]}
            assert journaled <= set(held["kept"])  # whatever the kill cost on the wire, snapshots gave back
    finally:
        client.close()


def relayed_runs(viewer: ViewerProcess) -> dict[str, dict]:
    return {run["id"]: run for run in viewer.get("/api/runs")["runs"]}


def covered(viewer: ViewerProcess, ident: str, trainer: TrainerProcess) -> tuple[int, int]:
    """(episodes the viewer holds of a run, episodes its process journaled up to the viewer's last seq)."""
    snapshot = viewer.get(f"/api/runs/{ident}")
    run, seq = snapshot["run"], snapshot["seq"]
    wait_for(lambda: max(journal_seqs(trainer, run)) >= seq, 60, what="the journal catches up")
    episodes = [s for s in journal_seqs(trainer, run, ("episode",)) if s <= seq]
    return snapshot["history"]["episodes"]["raw"], len(episodes)


def test_a_viewer_of_the_relay_shows_every_trainer_stops_and_resumes_one_and_survives_the_relays_kill(
        four_hosts, relay, relay_keys, trainers, viewers):
    _, node_a, node_b, client_host = four_hosts
    a, b = (trainers(*LONG, "--relay", relay.trainers, *curve(relay_keys, "node"), prefix=node.prefix())
            for node in (node_a, node_b))
    ids = {f"trainer~{lineage(t)}": t for t in (a, b)}
    (id_a, _), (id_b, _) = ids.items()
    viewer = viewers(None, None, "--relay", relay.viewers, *curve(relay_keys, "client"), "--token", "relay-test",
                     prefix=tuple(client_host.prefix()))
    wait_for(lambda: {i: r["link"] for i, r in relayed_runs(viewer).items()} == dict.fromkeys(ids, "online"), 120,
             every=0.1, what="both trainers behind the relay listed, online")
    processes = {orjson.loads((t.run_dir / "run.json").read_bytes())["run"] for t in (a, b)}
    lines = viewer.watch(seconds=60, live=200)
    assert {line["run"] for line in lines if line["topic"] == "board"} == processes

    assert viewer.control("stop", id_a) == {"status": 200, "reply": {"ok": True, "state": "stopping",
                                                                            "run": id_a}}
    assert a.wait(120) == 0
    wait_for(lambda: relayed_runs(viewer)[id_a]["state"] == "stopped", 60, every=0.1, what="the stop seen")

    relay.kill()
    relay.start()
    restarted = time.time()
    heard = lambda: next(t for t in viewer.status()["trainers"] if t["id"] == id_b)  # noqa: E731
    wait_for(lambda: heard()["last_heard"] > restarted and not heard()["syncing"], 120, every=0.1,
             what="the viewer hears the other run through the new relay")
    assert viewer.control("pause", id_b)["reply"]["state"] == "paused"
    assert viewer.control("resume", id_b)["reply"]["state"] == "running"
    held, journaled = covered(viewer, id_b, b)
    assert held == journaled  # whatever the kill cost on the wire (if anything), a snapshot gave back
    assert relayed_runs(viewer)[id_a]["state"] == "stopped"

    stopped_with = relayed_runs(viewer)[id_a]["episodes"]
    trainers(*LONG, "--resume", "--relay", relay.trainers, *curve(relay_keys, "node"), run_dir=a.run_dir,
             prefix=node_a.prefix())
    wait_for(lambda: relayed_runs(viewer)[id_a]["live"] and relayed_runs(viewer)[id_a]["episodes"] > stopped_with,
             120, every=0.1, what="the resumed run goes on under its id")
    assert relayed_runs(viewer)[id_a]["process"] == orjson.loads((a.run_dir / "run.json").read_bytes())["run"]

    b.proc.kill()
    b.wait()
    wait_for(lambda: relayed_runs(viewer)[id_b]["link"] == "offline", 60, every=0.2, what="silence shown offline")
    wait_for(lambda: relayed_runs(viewer)[id_b]["state"] == "crashed", 60, every=0.1, what="then crashed")
    assert not relayed_runs(viewer)[id_b]["live"] and set(relayed_runs(viewer)) == set(ids)
    assert "Traceback" not in viewer.output()


def test_wrong_keys_get_nothing(four_hosts, relay, relay_keys, trainers):
    _, node_a, _, client_host = four_hosts
    stranger = trainers(*LONG, "--relay", relay.trainers, *curve(relay_keys, "node", stranger=True),
                        prefix=node_a.prefix())
    wait_for(lambda: len((stranger.run_dir / "metrics.jsonl").read_bytes().splitlines()) > 10, 120,
             what="the stranger trainer trains", tolerate=(FileNotFoundError,), alive=lambda: stranger.proc.poll()
             is None)
    listed = ctl(client_host, relay, "runs", *curve(relay_keys, "client"))
    assert orjson.loads(listed.stdout) == {"ok": True, "runs": []}  # a node whose key is not allowed is not routed
    refused = ctl(client_host, relay, "runs", "--retries", "0", *curve(relay_keys, "client", stranger=True))
    assert refused.returncode == 3 and "no reply" in refused.stderr
    heard = run_in(client_host, "tests/probe.py", relay.viewers, "--messages", "1", "--timeout", "3",
                   *curve(relay_keys, "client", stranger=True))
    assert orjson.loads(heard.stdout)["received"] == 0


def handshake(kind: int, endpoint: str, keys: list[str]) -> int:
    """Connect a ``kind`` socket with these CURVE options' keys; the monitor's verdict on its handshake."""
    options = dict(zip(keys[::2], keys[1::2], strict=True))
    sock = zmq.Context.instance().socket(kind)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        ClientCurve(Path(options["--curve-server-key"]), Path(options["--curve-secret-key"])).apply(sock)
        sock.connect(endpoint)
        assert monitor.poll(30_000), f"no handshake with {endpoint}"
        return parse_monitor_message(monitor.recv_multipart())["event"]
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def test_each_side_lets_in_its_own_keys_only(relay_keys, curve_loopback):
    """A client's key is refused where trainers connect, so it can neither register a run nor publish."""
    (up_stream, up_control), (down_stream, down_control) = (side.split(",") for side in
                                                            (curve_loopback.trainers, curve_loopback.viewers))
    node, client = curve(relay_keys, "node"), curve(relay_keys, "client")
    for kind, endpoint in ((zmq.DEALER, up_control), (zmq.PUB, up_stream)):
        assert handshake(kind, endpoint, client) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        assert handshake(kind, endpoint, node) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    for kind, endpoint in ((zmq.REQ, down_control), (zmq.SUB, down_stream)):
        assert handshake(kind, endpoint, node) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        assert handshake(kind, endpoint, client) == zmq.EVENT_HANDSHAKE_SUCCEEDED


@pytest.mark.parametrize(("keys", "said"), [
    (("--curve-server-key", "relay.key", "--curve-secret-key", "stranger/client.key_secret"),
     "the server refused this client's CURVE key (is its public key in the trainer's or relay's allow folder?)"),
    (("--curve-server-key", "client.key", "--curve-secret-key", "client.key_secret"),
     "the handshake failed (is --curve-server-key that trainer's or relay's public key"),
    ((), "the handshake failed: this client uses no CURVE keys; a server that uses CURVE needs "
         "--curve-server-key and --curve-secret-key"),
])
def test_ctl_says_why_a_curve_relay_does_not_answer(relay_keys, curve_loopback, keys, said):
    """Refused and unreadable keys look like silence to a client: the socket monitor tells them apart."""
    options = [str(relay_keys / option) if option.startswith(("relay", "client", "stranger")) else option
               for option in keys]
    result = subprocess.run([sys.executable, "-m", "tetriszmq", "ctl", "runs", "--relay", curve_loopback.viewers,
                             "--timeout", "1", "--retries", "0", *options], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3 and "no reply" in result.stderr and said in result.stderr, result.stderr
    assert "is the trainer running?" not in result.stderr


@pytest.mark.parametrize(("keys", "said"), [
    (("--curve-server-key", "relay.key", "--curve-secret-key", "client.key_secret"),
     "refused this trainer's CURVE key: is its public key in the relay's --curve-allow-trainers?"),
    ((), "failed the handshake: a relay that uses CURVE needs --curve-server-key (its public key) and "
         "--curve-secret-key"),
])
def test_a_trainer_the_relay_refuses_says_so_and_trains_on(relay_keys, curve_loopback, trainers, keys, said):
    """Otherwise it trains in silence while no viewer of the relay sees it."""
    options = [option if option.startswith("--") else str(relay_keys / option) for option in keys]
    trainer = trainers("--set", "train.max_timesteps=10000000", "--relay", curve_loopback.trainers, *options)
    wait_for(lambda: said in trainer.output(), 120, what="the trainer saying the relay refused it",
             alive=lambda: trainer.proc.poll() is None)
    trained = request(trainer.ctl, "status")["timesteps"]
    wait_for(lambda: request(trainer.ctl, "status")["timesteps"] > trained + 500, 120, what="training on")
    assert trainer.output().count(said) == 1, "said once, not at every retry of the handshake"


def test_ctl_to_a_relay_that_is_not_there_says_it_could_not_connect():
    nowhere = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "tetriszmq", "ctl", "runs", "--relay", nowhere,
                             "--timeout", "0.5", "--retries", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3
    assert "after 2 attempts of 0.5s: could not connect: is the trainer (or relay) running there?" in result.stderr


class FakeTrainer:
    """A trainer's DEALER to the relay, driven by the test: it says hello and answers what it is routed."""

    def __init__(self, control: str, run: str, lineage: str) -> None:
        self.hello = orjson.dumps({"run": run, "lineage": lineage, "started": time.time()})
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(control)
        self.say_hello()

    def say_hello(self) -> None:
        self.sock.send_multipart([b"hello", self.hello])

    def answer(self, reply: dict, timeout: float) -> bool:
        """Answer one routed request with ``reply``; False if none came within ``timeout`` s."""
        if not self.sock.poll(int(timeout * 1000)):
            return False
        frames = self.sock.recv_multipart()
        at = frames.index(b"")
        self.sock.send_multipart([*frames[:at + 1], orjson.dumps(reply)])
        return True


def test_a_second_connection_claiming_a_live_run_gets_none_of_its_control(loopback):
    up_control, down_control = loopback.trainers.split(",")[1], loopback.viewers.split(",")[1]
    trainer = FakeTrainer(up_control, "tiny-aaaaaa", "tiny-lineage")
    wait_for(lambda: request(down_control, "runs")["runs"], 30, what="the trainer's hello")
    trainer.say_hello()  # the trainer's run is fresh (`--expire` 5 s) when the rogue claims it
    rogue = FakeTrainer(up_control, "tiny-aaaaaa", "tiny-lineage")
    wait_for(lambda: "ignoring hellos for run \"tiny-aaaaaa\"" in loopback.log.read_text(), 30,
             what="the relay refusing the second connection")
    try:
        replies: queue.Queue[dict] = queue.Queue()
        for name in ("tiny-aaaaaa", "tiny-lineage"):
            trainer.say_hello()
            asking = threading.Thread(target=lambda n=name: replies.put(request(down_control, "status", run=n)))
            asking.start()
            assert trainer.answer({"ok": True, "who": "trainer"}, 30)
            asking.join(30)
            assert replies.get_nowait() == {"ok": True, "who": "trainer"}
        assert not rogue.answer({"ok": True, "who": "rogue"}, 0)
    finally:
        trainer.sock.close(linger=0)
        rogue.sock.close(linger=0)


def test_a_trainer_cannot_answer_a_request_it_was_not_sent(loopback):
    """Client addresses are sequential ROUTER ids: a rogue that learnt one must not be able to reply to it."""
    up_control, down_control = loopback.trainers.split(",")[1], loopback.viewers.split(",")[1]
    rogue = FakeTrainer(up_control, "rogue-aaaaaa", "rogue")
    client = zmq.Context.instance().socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(down_control)
    try:
        wait_for(lambda: request(down_control, "runs")["runs"], 30, what="the rogue's hello")
        for asked in (1, 2):
            rogue.say_hello()
            client.send_multipart([b"", encode_request("status", "rogue-aaaaaa")])
            assert rogue.sock.poll(30_000), "the relay routes the client's request to the run it names"
            frames = rogue.sock.recv_multipart()
            address = frames[:frames.index(b"") + 1]
            if asked == 1:
                rogue.sock.send_multipart([*address, orjson.dumps({"ok": True, "reply": 1})])
                assert client.poll(30_000) and orjson.loads(client.recv_multipart()[-1]) == {"ok": True, "reply": 1}
                rogue.sock.send_multipart([*address, orjson.dumps({"ok": True, "forged": True})])  # owed nothing
            else:
                rogue.sock.send_multipart([*address, orjson.dumps({"ok": True, "reply": 2})])
        # the forged reply left the rogue before reply 2, on the same connection: had it passed, it came first
        assert client.poll(30_000) and orjson.loads(client.recv_multipart()[-1]) == {"ok": True, "reply": 2}
    finally:
        rogue.sock.close(linger=0)
        client.close(linger=0)


def relay_section() -> str:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    return text[text.index("## Through a relay"):text.index("## Versioning")]


def test_the_protocol_documents_relay_answers_and_client_work_as_written(trainers, loopback):
    stream, control = loopback.viewers.split(",")
    trainer = trainers("--set", "train.max_timesteps=3000", "--relay", loopback.trainers)
    wait_for(lambda: (trainer.run_dir / "run.json").exists(), 120, what="run.json")
    run = orjson.loads((trainer.run_dir / "run.json").read_bytes())["run"]
    wait_for(lambda: request(control, "runs")["runs"], 60, what="the trainer's hello")
    section = relay_section()
    answers = re.findall(r"^(\{.*\})\s+-> (\{.*\})$", section, re.M)
    assert len(answers) == 3
    for asked, documented in answers[1:]:  # `runs` is checked above; its `seen` changes
        reply = request(control, orjson.loads(asked)["cmd"], run=orjson.loads(asked).get("run"))
        assert reply == orjson.loads(documented.replace("tiny-66dbdf", run))
    launched = request(control, "launch", run=run)  # the trainer's own parser answers what the relay forwards
    assert launched["ok"] is False and launched["error"].startswith('unknown command "launch"; known: stop')
    source = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    source = source.replace("tcp://127.0.0.1:5559", stream).replace("tcp://127.0.0.1:5560", control)
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("runs: ['")
    assert re.search(r"^status: (starting|running|saving)$", result.stdout, re.M)
    assert re.search(rf"^{run} episode \d+: \d+ lines$", result.stdout, re.M)
    assert trainer.wait(60) == 0


def readme_relay_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Training across machines: the relay"):]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_readmes_relay_commands_work_as_written(tmp_path):
    """Shortened: loopback for the hosts, free ports, the tiny config; a test's own run directory and ports."""
    sides = {port: f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}" for port in ("5557", "5559")}
    swaps = {"configs/default.toml": str(ROOT / "tests" / "tiny.toml"),
             **{f"tcp://{host}:{port}": side for port, side in sides.items() for host in ("0.0.0.0", "relay-box")}}

    def command(args: list[str]) -> list[str]:
        args = [swaps.get(arg, arg.replace("keys/", f"{tmp_path}/keys/")) for arg in args]
        program = {"tetriszmq": "tetriszmq", "tetriszmq-viewer": "viewer"}[args[0]]
        return [sys.executable, "-m", program, *args[1:]]

    keys, relay_args, train, runs, viewer_args, stop = (command(args) for args in readme_relay_commands())
    assert subprocess.run(keys, capture_output=True, timeout=60).returncode == 0
    assert [p.name for p in (tmp_path / "keys" / "allowed").iterdir()] == ["client.key"]
    assert [p.name for p in (tmp_path / "keys" / "allowed-trainers").iterdir()] == ["node.key"]
    process = RelayProcess(relay_args, tmp_path / "relay.log", sides["5557"], sides["5559"])
    process.start()
    trainer = subprocess.Popen([*train, "--run-dir", str(tmp_path / "run"), "--quiet", "--pub", "tcp://127.0.0.1:0",
                                "--ctl", "tcp://127.0.0.1:0", "--set", "train.max_timesteps=100000000"], cwd=ROOT)
    with open(tmp_path / "viewer.log", "wb") as out:
        viewer = ViewerProcess(subprocess.Popen([*viewer_args, "--runs", str(tmp_path / "none"), "--port",
                                                 str(free_port())], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"}), tmp_path / "viewer.log")
    try:
        listed = lambda: orjson.loads(subprocess.run(runs, capture_output=True, timeout=60).stdout)["runs"]  # noqa: E731
        wait_for(listed, 120, every=0.1, what="the trainer listed", alive=lambda: trainer.poll() is None)
        run = listed()[0]["lineage"]
        viewer.wait_ready()
        wait_for(lambda: [(r["id"], r["link"]) for r in relayed_runs(viewer).values()] == [(f"trainer~{run}",
                 "online")], 60, every=0.1, what="the viewer shows the run behind the relay")
        stopped = subprocess.run([arg.replace("RUN", run) for arg in stop], capture_output=True, timeout=60)
        assert orjson.loads(stopped.stdout) == {"ok": True, "state": "stopping"}
        assert trainer.wait(120) == 0
    finally:
        reap([trainer, viewer.proc])
        process.proc.terminate()
        assert process.proc.wait(30) == 0


def test_a_stream_callback_in_anyones_script_joins_a_relay_and_obeys_through_it(loopback):
    script = (f"from stable_baselines3 import PPO\nfrom tetriszmq import StreamCallback\n"
              f"PPO('MlpPolicy', 'CartPole-v1', n_steps=64, batch_size=64, n_epochs=1).learn(10_000_000, "
              f"callback=StreamCallback(pub='{free_endpoint()}', ctl='{free_endpoint()}', run_name='cartpole', "
              f"relay='{loopback.trainers}'))")
    user = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    control = loopback.viewers.split(",")[1]
    try:
        wait_for(lambda: request(control, "runs")["runs"], 120, every=0.1, what="the script's hello",
                 alive=lambda: user.poll() is None)
        (listed,) = request(control, "runs")["runs"]
        assert listed["run"].startswith("cartpole-")
        assert request(control, "stop", run=listed["lineage"]) == {"ok": True, "state": "stopping"}
        assert user.wait(60) == 0
    finally:
        reap([user])


def test_the_relay_and_ctl_load_neither_sb3_nor_torch():
    """A relay box needs no deep-learning stack: the command's imports stop at ZeroMQ."""
    probe = ("import sys, tetriszmq.cli, tetriszmq.stream.relay; "
             "print(sorted({'torch', 'stable_baselines3'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=60).stdout.strip() == "[]"


def relay_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tetriszmq", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_ctl_without_run_uses_the_relays_only_run_and_lists_several(trainers, loopback):
    """`--run` is needed only when the relay routes more than one run; the error says which there are."""
    control = loopback.viewers.split(",")[1]
    nobody = relay_cli("ctl", "status", "--relay", loopback.viewers)
    assert nobody.returncode == 1 and "routes no run yet" in nobody.stderr, nobody.stderr

    def behind_the_relay(count: int) -> tuple[TrainerProcess, str]:
        """Start a trainer that dials the relay; once the relay routes ``count`` runs, it and its run id."""
        trainer = trainers(*LONG, "--relay", loopback.trainers)
        wait_for(lambda: len(request(control, "runs")["runs"]) == count, 120, what=f"trainer {count}'s hello",
                 alive=lambda: trainer.proc.poll() is None)
        return trainer, orjson.loads((trainer.run_dir / "run.json").read_bytes())["run"]

    first, run = behind_the_relay(1)
    only = relay_cli("ctl", "status", "--relay", loopback.viewers)
    assert only.returncode == 0, only.stderr
    assert f"tetriszmq ctl: the relay routes one run, {run}: status goes to it" in only.stderr
    assert orjson.loads(only.stdout)["ok"] is True
    second, other = behind_the_relay(2)
    several = relay_cli("ctl", "stop", "--relay", loopback.viewers)
    assert several.returncode == 2, several.stderr
    assert "the relay routes 2 runs; give --run RUN, one of: " in several.stderr
    assert run in several.stderr and other in several.stderr and "Traceback" not in several.stderr
    assert first.proc.poll() is None and second.proc.poll() is None  # nobody was stopped


def test_a_request_for_an_unknown_run_gets_a_clear_error(loopback):
    viewers = loopback.viewers
    unknown = relay_cli("ctl", "status", "--relay", viewers, "--run", "nobody-123456")
    assert unknown.returncode == 1
    assert orjson.loads(unknown.stdout) == {"ok": False, "error": 'unknown run "nobody-123456": the relay '
                                            "routes to none (a process run id or a lineage)"}
    assert orjson.loads(relay_cli("ctl", "runs", "--relay", viewers).stdout) == {"ok": True, "runs": []}
    unnamed = request(viewers.split(",")[1], "status")
    assert unnamed["ok"] is False and '"run"' in unnamed["error"] and "runs" in unnamed["error"]


@pytest.mark.parametrize(("args", "message"), [
    (["relay", "--trainers", "tcp://127.0.0.1:6001", "--viewers", "tcp://127.0.0.1:6002"],
     "need four different endpoints"),
    (["relay", "--trainers", "tcp://0.0.0.0:6001"], "refusing to bind tcp://0.0.0.0:6001"),
    (["relay", "--viewers", "relay-box:5559"], "--viewers 'relay-box:5559': give tcp://HOST:PORT"),
    (["relay", "--curve-secret-key", "k"], "--curve-secret-key, --curve-allow and --curve-allow-trainers go together"),
    (["relay", "--curve-secret-key", "k", "--curve-allow", "."], "go together"),
    (["relay", "--expire", "0"], "--expire must be > 0"),
    (["relay", "--curve-secret-key", "missing.key_secret", "--curve-allow", ".", "--curve-allow-trainers", "."],
     "cannot read CURVE key"),
    (["relay", "--curve-secret-key", "k", "--curve-allow", ".", "--curve-allow-trainers", "nowhere"],
     "--curve-allow-trainers nowhere: not a folder"),
    (["ctl", "runs"], "go with --relay"),
    (["ctl", "status", "--curve-server-key", "missing.key", "--curve-secret-key", "missing.key_secret"],
     "cannot read CURVE key"),  # bad input, not the trainer's silence (exit 3)
    (["train", "--config", "tests/tiny.toml", "--relay", "tcp://relay-box"], "publish.relay 'tcp://relay-box'"),
    (["train", "--config", "tests/tiny.toml", "--relay", "tcp://10.1.2.3:5557"],
     "refusing to connect to tcp://10.1.2.3:5557"),
    (["train", "--config", "tests/tiny.toml", "--curve-server-key", "relay.key"], "needs publish.relay"),
])
def test_bad_relay_arguments_exit_2_with_a_clear_message(args, message, tmp_path):
    result = relay_cli(*args, *(["--run-dir", str(tmp_path / "r")] if args[0] == "train" else []))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("who", "stranger", "said"), [
    ("node", False, "the relay refused this viewer's CURVE key"),  # a trainer's key, not a client's
    ("client", True, "the relay refused this viewer's CURVE key"),
])
def test_a_viewer_the_relay_refuses_says_why_in_its_status_and_log(relay_keys, curve_loopback, viewers, who,
                                                                   stranger, said):
    viewer = viewers(None, None, "--relay", curve_loopback.viewers, *curve(relay_keys, who, stranger))
    wait_for(lambda: said in (viewer.status()["relay"]["handshake"] or ""), timeout=30, what="the refusal said")
    wait_for(lambda: f"relay {curve_loopback.viewers.split(',')[0]}: {said}" in viewer.output(), timeout=10,
             what="the refusal logged")
