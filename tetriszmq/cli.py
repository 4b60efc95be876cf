"""The ``tetriszmq`` command: ``train``, ``ctl``, ``relay``, ``eval``, ``play``, ``replay``, ``sweep`` and ``keys``."""

from __future__ import annotations

import argparse
import importlib.util
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from tetriszmq.stream.protocol import Command, State, is_run_id
from tetriszmq.stream.relay import EXPIRE, MAX_LISTED, RUNS, side
from tetriszmq.stream.security import ALLOWED, ALLOWED_TRAINERS, ClientCurve, SecurityError, make_keys
from tetriszmq.stream.sockets import DEFAULT_CTL, DEFAULT_PUB, check_endpoints, control_beside

TRIAL_DIR = re.compile(r"trial-\d+")  # a sweep trial's run directory (tetriszmq.sweep.trial)
CTL_DEFAULT_HELP = f"default {DEFAULT_CTL}, or any free port when the PUB endpoint's port is * or 0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tetriszmq", description="Train a Tetris agent and stream it over ZeroMQ.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an agent, streaming on PUB and obeying control on REP")
    train.add_argument("--config", type=Path, help="TOML run config (default: built-in defaults)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config value (repeatable); VALUE is read as TOML")
    train.add_argument("--pub", help="PUB endpoint (publish.pub)")
    train.add_argument("--ctl", help=f"REP control endpoint (publish.ctl); {CTL_DEFAULT_HELP}")
    train.add_argument("--run-dir", type=Path, help="run directory (default: <run.dir>/<run.name>)")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress line")
    train.add_argument("--relay", metavar="STREAM[,CONTROL]", help="also connect the stream and control out to "
                       "this relay's trainers side (publish.relay; CONTROL: STREAM's port + 1)")
    train.add_argument("--curve-secret-key", help="encrypt and authenticate with this CURVE secret key file "
                       "(security.curve_secret_key): the trainer's own sockets' with --curve-allow, towards the "
                       "relay with --curve-server-key")
    train.add_argument("--curve-allow", help="folder of client public keys allowed in (security.curve_allow)")
    train.add_argument("--curve-server-key", help="the relay's CURVE public key file (security.curve_server_key)")
    train.add_argument("--insecure", action="store_true",
                       help="allow binding or connecting beyond loopback without CURVE (security.insecure)")
    train.set_defaults(func=_train)

    ctl = commands.add_parser("ctl", help="send a control request to a running trainer, directly or via a relay")
    ctl.add_argument("cmd", choices=[*(str(c) for c in Command), RUNS],
                     help=f"a trainer's command; {RUNS}: the runs a --relay routes to")
    where = ctl.add_mutually_exclusive_group()
    where.add_argument("--ctl", help=f"the trainer's control endpoint (default {DEFAULT_CTL})")
    where.add_argument("--run-dir", type=Path, metavar="DIR",
                       help="the trainer training in DIR, at the control endpoint its run.json names (for a "
                            "trainer started on a * port)")
    ctl.add_argument("--relay", metavar="STREAM[,CONTROL]",
                     help="ask through this relay's viewers side instead (CONTROL: STREAM's port + 1)")
    ctl.add_argument("--run", help="with --relay: the run (process run id or lineage) the command is for; "
                     "without it, the relay's one run (several: an error listing them)")
    ctl.add_argument("--timeout", type=float, default=3.0, help="seconds to wait per attempt")
    ctl.add_argument("--retries", type=int, default=2)
    client_curve_arguments(ctl)
    ctl.set_defaults(func=_ctl)

    evaluate = commands.add_parser("eval", help="play seeded games with an agent and report lines per game")
    _player_arguments(evaluate, seed_help="the first game's seed; game i (from 1) plays seed + i - 1 (> 0)")
    evaluate.add_argument("--games", type=int, default=20)
    evaluate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    evaluate.add_argument("--workers", type=int,
                          help="processes playing games at once (default: one per CPU if games x max pieces >= 50,000)")
    evaluate.add_argument("--record", type=Path, metavar="DIR",
                          help="keep each game's episode record in DIR, for `tetriszmq replay DIR --episode N`")
    evaluate.set_defaults(func=_eval)

    play = commands.add_parser("play", help="play one game, streamed on PUB like a training run")
    _player_arguments(play, seed_help="the game's seed (> 0)")
    play.add_argument("--pub", default=DEFAULT_PUB)
    play.add_argument("--ctl", help=CTL_DEFAULT_HELP)
    play.add_argument("--pps", type=float, default=10.0, help="placements per second; 0: as fast as possible")
    play.add_argument("--insecure", action="store_true", help="allow a non-loopback endpoint without CURVE")
    play.set_defaults(func=_play)

    replay = commands.add_parser("replay", help="play a recorded episode again: streamed like a run, or --check'ed")
    replay.add_argument("path", type=Path, metavar="RUN_DIR",
                        help="a run directory, an `eval --record` folder, or one .rec file")
    replay.add_argument("--episode", default="best", help="best (most lines), last, or an episode number")
    replay.add_argument("--pub", default=DEFAULT_PUB)
    replay.add_argument("--ctl", help=CTL_DEFAULT_HELP)
    replay.add_argument("--pps", type=float, default=20.0, help="placements per second; 0: as fast as possible")
    replay.add_argument("--from-piece", type=int, default=0, metavar="K", help="start streaming at piece K")
    replay.add_argument("--check", action="store_true",
                        help="re-simulate at full speed; exit 1 if lines, score or pieces differ from the record")
    replay.add_argument("--insecure", action="store_true", help="allow a non-loopback endpoint without CURVE")
    replay.set_defaults(func=_replay)

    sweep = commands.add_parser("sweep", help="a hyper-parameter sweep on Optuna; each trial a real training run")
    sweep.add_argument("--study", required=True, help="the study's name (trials go to <runs>/<study>/trial-<n>)")
    sweep.add_argument("--storage", help="Optuna storage URL (postgresql://user@host/db, sqlite:///f.db) or a "
                       "journal file (default: <runs>/<study>/optuna.journal)")
    sweep.add_argument("--runs", type=Path, default=Path("runs"), help="where the trials' run directories go")
    sweep.add_argument("--config", type=Path, help="the run config every trial starts from")
    sweep.add_argument("--space", type=Path, help="TOML: the search space, objective and pruner")
    sweep.add_argument("--trials", type=int, default=16, help="trials in the study, shared by every sweep on it")
    sweep.add_argument("--jobs", type=int, default=1, help="trials run at once by this sweep")
    sweep.add_argument("--report", action="store_true", help="print the study's trials and best --set line, only")
    sweep.set_defaults(func=_sweep)

    relay = commands.add_parser("relay", help="route trainers that connect out to the viewers and clients that "
                                "connect in (ZeroMQ's proxy pattern); holds no run state")
    relay.add_argument("--trainers", default="tcp://127.0.0.1:5557", metavar="STREAM[,CONTROL]",
                       help="where trainers connect (`train --relay`): XSUB, and ROUTER at CONTROL "
                       "(default: STREAM's port + 1)")
    relay.add_argument("--viewers", default="tcp://127.0.0.1:5559", metavar="STREAM[,CONTROL]",
                       help="where viewers and `ctl --relay` connect: XPUB, and ROUTER at CONTROL "
                       "(default: STREAM's port + 1)")
    relay.add_argument("--curve-secret-key", type=Path, help="the relay's CURVE secret key file")
    relay.add_argument("--curve-allow", type=Path,
                       help="folder of the public keys of the clients (viewers, ctl) let in on the viewers side")
    relay.add_argument("--curve-allow-trainers", type=Path,
                       help="folder of the public keys of the trainers let in on the trainers side (apart, so a "
                       "client's key cannot register a run)")
    relay.add_argument("--insecure", action="store_true", help="allow a non-loopback address without CURVE")
    relay.add_argument("--expire", type=float, default=EXPIRE,
                       help="seconds without a trainer's hello before its run is forgotten")
    relay.set_defaults(func=_relay)

    keys = commands.add_parser("keys", help="create CURVE key pairs: a server's, its clients', and allowed/")
    keys.add_argument("directory", type=Path)
    keys.add_argument("--names", default="trainer,client", metavar="SERVER[,CLIENT,...]",
                      help="key pairs to make, the server first; the others' public keys go to allowed/ "
                      "(for a relay: relay,client)")
    keys.add_argument("--trainers", default="", metavar="NAME[,...]",
                      help="for a relay: key pairs of trainers that dial out to it; their public keys go to "
                      "allowed-trainers/ (the relay's --curve-allow-trainers)")
    keys.set_defaults(func=_keys)

    args = parser.parse_args(argv)
    if args.command in ("train", "eval", "play") and importlib.util.find_spec("tetris_gymnasium") is None:
        print(f"tetriszmq {args.command}: needs the game: pip install 'tetriszmq[tetris]'", file=sys.stderr)
        return 2
    return args.func(args)


def _train(args: argparse.Namespace) -> int:
    from tetriszmq import config as cfg
    from tetriszmq.trainer import RunError, RunOptions, train

    overrides = list(args.overrides)
    overrides += [f"publish.{key}={_toml_string(value)}" for key in ("pub", "ctl", "relay")
                  if (value := getattr(args, key)) is not None]
    overrides += [f"security.{key}={_toml_string(value)}" for key in ("curve_secret_key", "curve_allow",
                                                                        "curve_server_key")
                  if (value := getattr(args, key)) is not None]
    if args.insecure:
        overrides.append("security.insecure=true")
    try:
        config = cfg.load(args.config, overrides)
        if args.ctl is None:
            config.publish.ctl = control_beside(config.publish.pub, config.publish.ctl)
        return train(config, RunOptions(run_dir=args.run_dir, resume=args.resume, quiet=args.quiet))
    except (cfg.ConfigError, RunError) as exc:
        print(f"tetriszmq: {exc}", file=sys.stderr)
        return 2


def client_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every CURVE client: the trainer's public key and the client's own pair."""
    parser.add_argument("--curve-server-key", type=Path, help="the trainer's (or relay's) CURVE public key file")
    parser.add_argument("--curve-secret-key", type=Path, help="this client's CURVE secret key file")


def client_curve(args: argparse.Namespace) -> ClientCurve | None:
    if bool(args.curve_server_key) != bool(args.curve_secret_key):
        raise SecurityError("--curve-server-key and --curve-secret-key go together")
    return ClientCurve(args.curve_server_key, args.curve_secret_key) if args.curve_server_key else None


def _ctl(args: argparse.Namespace) -> int:
    from tetriszmq.stream.control import NoReply, request

    try:
        endpoint, run = _ctl_target(args)
        curve = client_curve(args)
    except ValueError as exc:  # SecurityError is a ValueError: a key file is bad input too
        print(f"tetriszmq ctl: {exc}", file=sys.stderr)
        return 2
    if args.run_dir is not None and (ended := _ended(args.run_dir)):
        print(f"tetriszmq ctl: {ended}: no trainer to ask", file=sys.stderr)
        return 3
    try:
        if args.relay is not None and run is None and args.cmd != RUNS:
            run = _only_run(endpoint, args, curve)
        reply = request(endpoint, args.cmd, timeout=args.timeout, retries=args.retries, curve=curve, run=run)
    except NoReply as exc:
        print(f"tetriszmq ctl: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:  # several runs: the user must say which
        print(f"tetriszmq ctl: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:  # none: as the relay answers for a run it does not know
        print(f"tetriszmq ctl: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if reply.get("ok") else 1


def _ctl_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The control endpoint to ask, and the run to name (through a relay only)."""
    if args.relay is None:
        if args.run is not None or args.cmd == RUNS:
            raise ValueError(f"--run and `{RUNS}` go with --relay")
        return (args.ctl or DEFAULT_CTL) if args.run_dir is None else _run_dir_control(args.run_dir), None
    if args.ctl is not None or args.run_dir is not None:
        raise ValueError("--relay asks the relay: give it --run RUN, not --ctl or --run-dir")
    return side(args.relay, "--relay").control, args.run


def _run_dir_control(run_dir: Path) -> str:
    """The control endpoint the trainer in ``run_dir`` wrote in its ``run.json`` (the real port of a ``*``)."""
    try:
        endpoint = orjson.loads((run_dir / "run.json").read_bytes())["endpoints"]["ctl"]
    except FileNotFoundError:
        raise ValueError(f"--run-dir {run_dir}: no run.json there: is it a run directory, and has its trainer "
                         "started?") from None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"--run-dir {run_dir}: run.json names no control endpoint ({exc})") from None
    if not isinstance(endpoint, str):
        raise ValueError(f"--run-dir {run_dir}: run.json names no control endpoint")
    return endpoint


def _ended(run_dir: Path) -> str | None:
    """How the run in ``run_dir`` ended, if its journal's last message is the final status of the process its
    ``run.json`` names: asking its control port could only time out. A resumed run's new process journals its
    first status before it rewrites ``run.json``, so it is never taken for the one that ended."""
    from tetriszmq.stream import journal

    try:
        run = orjson.loads((run_dir / "run.json").read_bytes())["run"]
        status = journal.last(run_dir / "metrics.jsonl")
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return None  # no telling: asking says what is wrong
    if not status or status.get("topic") != "status" or status.get("run") != run or status.get("state") not in (
            State.STOPPED, State.ERROR):
        return None
    return (f"run {run} in {run_dir} has ended ({status['state']} at {status.get('timesteps', 0):,} timesteps: "
            f"{status.get('reason') or 'no reason given'})")


def _only_run(endpoint: str, args: argparse.Namespace, curve: ClientCurve | None) -> str:
    """Without ``--run``: the one run the relay routes (said on stderr), asked with the relay's own ``runs``.

    A lineage counts once: a resumed run's old process lingers in the relay's table for ``--expire`` s, and
    the lineage routes to its newest process. Several lineages raise `ValueError` naming them, none `LookupError`.
    """
    from tetriszmq.stream.control import request

    reply = request(endpoint, RUNS, timeout=args.timeout, retries=args.retries, curve=curve)
    if not reply.get("ok"):
        raise ValueError(f"--relay needs --run RUN here: the relay did not list its runs ({reply.get('error')})")
    lineages = {route["lineage"]: route["run"] for route in reply["runs"]}
    if not lineages:
        raise LookupError(f"the relay at {endpoint} routes no run yet: no trainer connected with --relay has said "
                          "hello (see `ctl runs --relay ...`)")
    if len(lineages) > 1:
        listed = ", ".join(f"{run} (lineage {lineage})" for lineage, run in sorted(lineages.items())[:MAX_LISTED])
        raise ValueError(f"the relay routes {len(lineages)} runs; give --run RUN, one of: {listed}")
    (lineage, run), = lineages.items()
    chosen = run if sum(route["lineage"] == lineage for route in reply["runs"]) == 1 else lineage
    print(f"tetriszmq ctl: the relay routes one run, {chosen}: {args.cmd} goes to it", file=sys.stderr)
    return chosen


def _relay(args: argparse.Namespace) -> int:
    from tetriszmq.stream.relay import Relay
    from tetriszmq.stream.security import RelayCurve, check_exposure

    try:
        trainers, viewers = side(args.trainers, "--trainers"), side(args.viewers, "--viewers")
        endpoints = [trainers.stream, trainers.control, viewers.stream, viewers.control]
        if len(set(endpoints)) != 4:
            raise ValueError(f"--trainers {args.trainers} and --viewers {args.viewers} need four different "
                             f"endpoints, got {', '.join(endpoints)} (CONTROL defaults to STREAM's port + 1)")
        keys = (args.curve_secret_key, args.curve_allow, args.curve_allow_trainers)
        if any(keys) and not all(keys):
            raise SecurityError("--curve-secret-key, --curve-allow and --curve-allow-trainers go together "
                                "(the clients' and the trainers' public keys are let in apart)")
        if args.expire <= 0:
            raise ValueError(f"--expire must be > 0 seconds, got {args.expire:g}")
        curve = RelayCurve(*keys) if all(keys) else None
        check_exposure(endpoints, curve is not None, args.insecure)
        relay = Relay(trainers, viewers, curve=curve, expire=args.expire)
        previous = {signum: signal.signal(signum, lambda *_: relay.stop()) for signum in (signal.SIGINT,
                                                                                          signal.SIGTERM)}
        try:
            relay.serve(on_ready=lambda: print(
                f"tetriszmq relay: trainers connect to {trainers.stream} (stream) and {trainers.control} (control); "
                f"viewers to {viewers.stream} and {viewers.control}", file=sys.stderr, flush=True))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    except (ValueError, OSError) as exc:  # SecurityError is a ValueError
        print(f"tetriszmq relay: {exc}", file=sys.stderr)
        return 2
    return 0


def _player_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", type=Path,
                     help="a checkpoint of a placement agent (e.g. runs/x/checkpoints/final)")
    who.add_argument("--agent", choices=["dellacherie", "bcts"], help="a hand-tuned agent")
    parser.add_argument("--algo", help="the checkpoint's algorithm (default: from its run's config.toml)")
    parser.add_argument("--max-pieces", type=int, default=10_000, help="piece cap per game")
    parser.add_argument("--seed", type=int, default=1, help=seed_help)


def _player(args: argparse.Namespace):
    """The policy named on the command line: a hand-tuned agent or a loaded checkpoint."""
    from tetriszmq.evaluate import ModelPolicy
    from tetriszmq.tetris.bcts import Bcts
    from tetriszmq.tetris.dellacherie import Dellacherie

    if args.agent is not None:
        return {"dellacherie": Dellacherie, "bcts": Bcts}[args.agent]()
    from tetriszmq import agents
    from tetriszmq import config as cfg

    path = args.checkpoint
    if path.is_dir():  # a run directory, most likely: say which file it holds
        runs = _runs_inside(path)
        if runs:
            raise cfg.ConfigError(f"--checkpoint {_what_folder(path, runs)}: give a checkpoint file of one, such as "
                                  f"{runs[0] / 'checkpoints' / 'final'}")
        final = path / "checkpoints" / "final" if (path / "checkpoints").is_dir() else "RUN_DIR/checkpoints/final"
        raise cfg.ConfigError(f"--checkpoint {path} is a folder: give a checkpoint file, such as {final}")
    run_config = path.resolve().parent.parent / "config.toml"
    algo = args.algo or (cfg.load(run_config).agent.algo if run_config.exists() else "afterstate-dqn")
    try:
        return ModelPolicy(agents.algo_class(algo).load(path, device="cpu"))
    except FileNotFoundError:
        raise cfg.ConfigError(f"--checkpoint {path}: no such checkpoint") from None


def _eval(args: argparse.Namespace) -> int:
    from tetriszmq.config import ConfigError
    from tetriszmq.evaluate import default_workers, evaluate

    def progress(game: int, result: dict) -> None:  # on stderr: --json's stdout stays one object
        print(f"tetriszmq eval: seed {args.seed + game - 1}: {result['lines']:,} lines, {result['pieces']:,} pieces"
              f"{' (capped)' if result['capped'] else ''}, {result['seconds']:,.1f} s", file=sys.stderr)

    try:
        result = evaluate(_player(args), games=args.games, max_pieces=args.max_pieces, seed=args.seed,
                          record=args.record, workers=args.workers or default_workers(args.games, args.max_pieces),
                          on_game=progress)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"tetriszmq eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(result).decode())
        return 0
    print(f"{args.games} games, cap {args.max_pieces:,} pieces, seeds {args.seed}..{args.seed + args.games - 1}")
    print(f"lines per game: mean {result['mean']:,.1f}  median {result['median']:,.1f}  "
          f"min {result['min']:,}  max {result['max']:,}")
    print(f"games that reached the piece cap: {result['capped']} of {args.games}")
    return 0


def _play(args: argparse.Namespace) -> int:
    from tetriszmq.config import ConfigError
    from tetriszmq.play import play
    from tetriszmq.stream.security import check_exposure
    from tetriszmq.tetris.placement_env import PlacementTetris

    try:
        ctl = args.ctl or control_beside(args.pub, DEFAULT_CTL)
        check_endpoints(args.pub, ctl)
        check_exposure([args.pub, ctl], secured=False, insecure=args.insecure)
        policy = _player(args)
        env = PlacementTetris(features=policy.feature_names, max_pieces=args.max_pieces)
        env.set_scorer(getattr(policy, "scores", None))  # frames show the candidates it weighs
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # ends the game as Ctrl-C does
        result = play(policy, env, pub=args.pub, ctl=ctl, seed=args.seed, pps=args.pps,
                      on_bound=_say_where("tetriszmq play: "))
    except (ConfigError, SecurityError, OSError, ValueError) as exc:
        print(f"tetriszmq play: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(result).decode())
    return 130 if result["end"] == "interrupted" else 0


def _replay(args: argparse.Namespace) -> int:
    from tetriszmq.replay import check, replay
    from tetriszmq.stream.security import check_exposure
    from tetriszmq.tetris import records

    try:
        _refuse_what_keeps_no_records(args.path)
        path = records.locate(args.path, args.episode)
        record = records.read(path)
        if args.check:
            result = check(record)
            print(orjson.dumps({"file": str(path), **result}).decode())
            return 0 if result["ok"] else 1
        ctl = args.ctl or control_beside(args.pub, DEFAULT_CTL)
        check_endpoints(args.pub, ctl)
        check_exposure([args.pub, ctl], secured=False, insecure=args.insecure)
        result = replay(record, pub=args.pub, ctl=ctl, pps=args.pps, from_piece=args.from_piece,
                        on_bound=_say_where(f"tetriszmq replay: episode {record.episode} of {path}, "))
    except (records.RecordError, OSError, ValueError) as exc:  # SecurityError is a ValueError
        print(f"tetriszmq replay: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(result).decode())
    return 0


def _say_where(prefix: str) -> Callable[[dict[str, str]], None]:
    """Print where a game streams, once bound: the real ports, also for a ``*`` or ``0`` port."""
    def say(endpoints: dict[str, str]) -> None:
        print(f"{prefix}streaming on {endpoints['pub']}, control on {endpoints['ctl']}", file=sys.stderr, flush=True)
    return say


def _runs_inside(path: Path) -> list[Path]:
    """The run directories (those with a ``config.toml``) right inside ``path``, when ``path`` is not one itself:
    a sweep's study folder (``trial-0``, ``trial-1``, ...) or a ``runs/`` folder. Sorted by the number in the name."""
    if not path.is_dir() or (path / "config.toml").is_file():
        return []
    return sorted((child for child in path.iterdir() if (child / "config.toml").is_file()), key=_numbered_name)


def _numbered_name(path: Path) -> tuple[str, int]:
    """``trial-10`` after ``trial-9``."""
    stem = path.name.rstrip("0123456789")
    return stem, int(path.name[len(stem):] or -1)


def _what_folder(path: Path, runs: list[Path]) -> str:
    """``path`` and what it holds, for an error: ``runs/study is a sweep folder; its runs are trial-0, ...``."""
    sweep = all(TRIAL_DIR.fullmatch(run.name) for run in runs)
    names = ", ".join(run.name for run in runs[:MAX_LISTED]) + (", ..." if len(runs) > MAX_LISTED else "")
    return f"{path} is {'a sweep folder' if sweep else 'a folder of runs'}; its runs are {names}"


def _refuse_what_keeps_no_records(path: Path) -> None:
    """A raw-board run keeps no records: its episodes are thousands of key presses (see docs/REPLAY.md).

    A folder of runs (a sweep's) is no run either: say which runs it holds.
    """
    from tetriszmq import config as cfg
    from tetriszmq.tetris.records import RecordError

    runs = _runs_inside(path)
    if runs and not (path / "episodes").is_dir():
        raise RecordError(f"{_what_folder(path, runs)}: replay one of them, such as `tetriszmq replay {runs[0]}`")
    try:
        kind = cfg.load(path / "config.toml").env.kind if (path / "config.toml").is_file() else "placement"
    except cfg.ConfigError as exc:
        raise RecordError(f"{path / 'config.toml'}: {exc}") from None
    if kind != "placement":
        raise RecordError(f"{path} is a {kind}-board run (env.kind = {kind!r}): only placement runs "
                          "(env.kind = 'placement') record their episodes")


def _sweep(args: argparse.Namespace) -> int:
    from tetriszmq.config import ConfigError
    from tetriszmq.sweep import SpaceError, StorageError, report, sweep

    try:
        if args.report:
            return report(args.study, args.storage, args.runs)
        if args.space is None:
            raise SpaceError("--space is required (or --report)")
        return sweep(args.config, args.space, args.trials, args.jobs, args.study, args.storage, args.runs)
    except (ConfigError, SpaceError, StorageError) as exc:
        print(f"tetriszmq sweep: {exc}", file=sys.stderr)
        return 2


def _keys(args: argparse.Namespace) -> int:
    names, trainers = (tuple(name.strip() for name in given.split(",") if name.strip())
                       for given in (args.names, args.trainers))
    every = (*names, *trainers)
    if not names or len(every) < 2 or len(set(every)) != len(every) or not all(map(is_run_id, every)):
        print(f"tetriszmq keys: --names {args.names!r} --trainers {args.trainers!r}: give two or more different "
              "names (letters, digits, . _ -), the server first", file=sys.stderr)
        return 2
    try:
        made = make_keys(args.directory, names, trainers)
    except (SecurityError, OSError) as exc:
        print(f"tetriszmq keys: {exc}", file=sys.stderr)
        return 2
    for path in made.written:
        print(path)
    for name in made.kept:
        print(f"tetriszmq keys: kept the existing pair {args.directory}/{name}.key(_secret): the nodes that hold it "
              "stay connected (delete both files to make a new one)", file=sys.stderr)
    server, directory = names[0], args.directory
    allow = f" --curve-allow-trainers {directory}/{ALLOWED_TRAINERS}" if trainers else ""
    print(f"{server}: --curve-secret-key {directory}/{server}.key_secret --curve-allow {directory}/{ALLOWED}{allow}")
    for name in every[1:]:
        print(f"{name}: --curve-server-key {directory}/{server}.key --curve-secret-key {directory}/{name}.key_secret")
    return 0


def _toml_string(value: str) -> str:
    return orjson.dumps(value).decode()


if __name__ == "__main__":
    sys.exit(main())
