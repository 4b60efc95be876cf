"""`tetriszmq train`: one run, from config to final checkpoint.

The order of a run: check the config (so a bad one leaves no run directory
behind), resolve the run directory, bind the sockets (so a port in use fails
before any work), build or load the model, learn with the stream callback, and
always finish with a final checkpoint and a ``stopped`` status, or an ``error``
status saying why not.
"""

from __future__ import annotations

import inspect
import math
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from tetriszmq import agents
from tetriszmq import config as cfg
from tetriszmq.progress import ProgressLine
from tetriszmq.recorder import placement_callbacks
from tetriszmq.stream.broker import Broker
from tetriszmq.stream.callback import StreamCallback, describe
from tetriszmq.stream.checkpoints import CheckpointError, Checkpoints, counters_of, saved_counters
from tetriszmq.stream.protocol import State
from tetriszmq.stream.relay import Uplink, side
from tetriszmq.stream.security import ClientCurve, ServerCurve, check_exposure
from tetriszmq.stream.sockets import check_endpoints
from tetriszmq.stream.state import TrainerState, lineage_of, write_run_file
from tetriszmq.tetris.envs import check_env, make_vec_env


class RunError(RuntimeError):
    """A run that cannot start: the message says why and what to do."""


@dataclass
class RunOptions:
    run_dir: Path | None = None
    resume: bool = False
    quiet: bool = False


class StopConditions(BaseCallback):
    """Ends ``learn()`` on ``train.max_minutes`` or ``train.target_lines``.

    ``target_lines``: stop once any single episode (in any env) has cleared at
    least that many lines; the episode is counted when it ends.
    """

    def __init__(self, state: TrainerState, max_minutes: float, target_lines: int) -> None:
        super().__init__()
        self.state = state
        self.deadline = time.monotonic() + max_minutes * 60 if max_minutes else math.inf
        self.target_lines = target_lines or math.inf

    def _on_step(self) -> bool:
        state = self.state
        if state.best_lines >= self.target_lines:
            state.stop_reason = f"target_lines {self.target_lines} reached"
            return False
        if time.monotonic() >= self.deadline:
            state.stop_reason = "max_minutes reached"
            return False
        return True


def max_timesteps_reason(limit: int, timesteps: int) -> str:
    """Why ``learn()`` returned by itself. SB3 checks its total between rollouts and ends the one it is in
    (PPO: ``n_steps`` x ``n_envs`` steps), rather than throw its steps away: the reason says by how much."""
    if timesteps == limit:
        return f"max_timesteps {limit} reached"
    return f"max_timesteps {limit} reached at {timesteps} timesteps (the agent ends the rollout it is in)"


def resolve_run_dir(config: cfg.Config, options: RunOptions) -> tuple[Path, bool]:
    """The run's folder, made if need be, and whether this process made it.

    Without --run-dir a new run never overwrites an old one: ``runs/<name>``, else ``<name>-2``, ...
    """
    if options.run_dir is None and not options.resume:
        return claim_new_run_dir(Path(config.run.dir), config.run.name), True
    run_dir = options.run_dir or Path(config.run.dir) / config.run.name
    if not options.resume and (run_dir / "checkpoints" / "latest.zip").exists():
        raise RunError(f"{run_dir} already holds a run: add --resume to continue it, or pick another --run-dir")
    if options.resume and not (run_dir / "checkpoints" / "latest.zip").exists():
        raise RunError(f"--resume: no checkpoint at {run_dir / 'checkpoints' / 'latest.zip'}")
    fresh = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, fresh


def claim_new_run_dir(parent: Path, name: str) -> Path:
    """The first of ``parent/name``, ``name-2``, ... that does not exist, made by this process.

    Made by ``mkdir``, which fails if the folder exists: of trainers started together (seeds in a
    shell loop), each gets its own folder, where a look then a make could give two the same.
    """
    parent.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while True:
        run_dir = parent / (name if suffix == 1 else f"{name}-{suffix}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            suffix += 1


def _say_config_changes(recorded: Path, config: cfg.Config) -> None:
    """A --resume runs the config it is given, not the one the run recorded: say what that changes."""
    try:
        before = cfg.load(recorded)
    except cfg.ConfigError:
        return  # a new run, or a record it cannot read: nothing to compare
    for change in cfg.changes(before, config):
        print(f"resume: {change} (the run recorded the first; repeat its --set to keep it)", file=sys.stderr)


def train(config: cfg.Config, options: RunOptions) -> int:
    """Run one training; returns the process exit code."""
    agents.check_pairing(config.agent, config.env)
    check_env(config.env)
    curve, relay = _security(config)
    run_dir, fresh = resolve_run_dir(config, options)
    if options.resume:
        _say_config_changes(run_dir / "config.toml", config)
    (run_dir / "config.toml").write_text(cfg.to_toml(config))
    torch.set_num_threads(config.agent.torch_threads)

    resumed = saved_counters(run_dir / "checkpoints" / "latest.zip") if options.resume else {}
    state = TrainerState(run=f"{config.run.name}-{secrets.token_hex(3)}", can_save=True,
                         lineage=lineage_of(run_dir if options.resume else None, config.run.name), **resumed)
    publish = config.publish
    broker = Broker(state, publish.pub, publish.ctl, hwm=publish.hwm, history=publish.history,
                    journal=run_dir / "metrics.jsonl", heartbeat_every=publish.heartbeat_every,
                    metrics_every=publish.metrics_every, curve=curve, relay=relay)
    try:
        broker.start()
    except OSError as exc:
        if fresh:  # nothing ran: no folder left for a viewer to list as a run
            shutil.rmtree(run_dir, ignore_errors=True)
        raise RunError(str(exc)) from None
    checkpoints = Checkpoints(run_dir / "checkpoints", config.train.checkpoint_every, config.train.save_replay)
    stream = StreamCallback(broker, checkpoints=checkpoints, board_fps=publish.board_fps)
    stream.set_state(State.STARTING)
    write_run_file(run_dir, state)
    progress = None if options.quiet else ProgressLine(state, run_dir, config.train.max_timesteps,
                                                            config.train.max_minutes)
    previous = _stop_on_signals(state)
    try:
        try:
            model = _model(config, run_dir, options.resume, state, checkpoints)
        except Exception as exc:
            return _not_started(stream, exc, options.resume)
        if options.resume:  # the loaded model's counters (the first status had the zip's, read without it)
            stream.set_state(State.STARTING, f"resumed at {state.timesteps} timesteps")
        game = placement_callbacks(run_dir, state.episodes, state) if config.env.kind == "placement" else []
        return _learn(model, config, state, stream, progress, game)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if progress is not None:
            progress.close()
        broker.close()


def _security(config: cfg.Config) -> tuple[ServerCurve | None, Uplink | None]:
    """CURVE for the trainer's own sockets, and the way out to a relay, if configured.

    Refuses to bind or connect beyond loopback without CURVE (unless ``security.insecure``).
    """
    sec, publish = config.security, config.publish
    curve = ServerCurve(Path(sec.curve_secret_key), Path(sec.curve_allow)) if sec.curve_allow else None
    try:
        if curve is not None:
            curve.load()  # unusable key files are bad input: refused before the run directory is made
        check_endpoints(publish.pub, publish.ctl)  # a malformed one is the problem, not its exposure
        check_exposure([publish.pub, publish.ctl], curve is not None, sec.insecure)
        if not publish.relay:
            return curve, None
        keys = ClientCurve(Path(sec.curve_server_key), Path(sec.curve_secret_key)) if sec.curve_server_key else None
        relay = Uplink(side(publish.relay, "publish.relay"), keys)
        check_exposure([relay.side.stream, relay.side.control], keys is not None, sec.insecure,
                       "Use --curve-server-key and --curve-secret-key (see `tetriszmq keys`), or --insecure.",
                       action="connect to")
    except ValueError as exc:  # a SecurityError too
        raise RunError(str(exc)) from None
    return curve, relay


def _model(config: cfg.Config, run_dir: Path, resume: bool, state: TrainerState,
           checkpoints: Checkpoints) -> BaseAlgorithm:
    env = make_vec_env(config.env, config.run.seed)
    if not resume:
        return agents.build_model(config.agent, env, config.run.seed)
    model = agents.load_model(config.agent, checkpoints.latest, env)
    try:
        if not checkpoints.restore(model):  # the replay buffer and RNG states: learning goes on where it stopped
            _refill_first(model, config.agent)
    except (CheckpointError, OSError, ValueError) as exc:
        raise RunError(f"--resume: {exc}") from None
    env.seed(config.run.seed + model.num_timesteps)  # new games, not the run's first ones again
    counters = counters_of(model)
    state.timesteps = model.num_timesteps
    state.episodes = counters.get("episodes", 0)
    state.best_lines = counters.get("best_lines", 0)
    return model


def _refill_first(model: BaseAlgorithm, agent: cfg.AgentSection) -> None:
    """A checkpoint saved without its replay buffer resumes with an empty one: updates wait, as at a run's start,
    for ``learning_starts`` new steps (the config's, or the algorithm's default), rather than sample a few rows."""
    declared = inspect.signature(type(model)).parameters.get("learning_starts")
    starts = int(agent.params.get("learning_starts", declared.default if declared else 0))
    model.learning_starts = model.num_timesteps + starts
    print(f"tetriszmq: --resume: the checkpoint holds no replay buffer (saved with train.save_replay = false): it "
          f"starts empty, and updates resume after {starts} new steps, at timestep {model.learning_starts}",
          file=sys.stderr)


def _not_started(stream: StreamCallback, exc: Exception, resume: bool) -> int:
    """The model could not be built or loaded: the run's last status is ``error``, saying why.

    A config or run error goes on to the command (exit 2, its message); anything else exits 1 here.
    """
    expected = isinstance(exc, (cfg.ConfigError, RunError))
    stream.set_state(State.ERROR, str(exc) if expected else describe(exc))
    if expected:
        raise exc
    print(f"tetriszmq: cannot {'load' if resume else 'build'} the model: {describe(exc)}", file=sys.stderr)
    return 1


def _learn(model: BaseAlgorithm, config: cfg.Config, state: TrainerState, stream: StreamCallback,
           progress: ProgressLine | None, game: list[BaseCallback]) -> int:
    remaining = config.train.max_timesteps - model.num_timesteps
    if remaining <= 0:
        return _nothing_to_train(model, config, stream)
    stops = StopConditions(state, config.train.max_minutes, config.train.target_lines)
    if progress is not None:
        progress.start()
    try:
        model.learn(remaining, callback=CallbackList([stream, *game, stops]), reset_num_timesteps=False)
    except Exception as exc:
        stream.set_state(State.ERROR, f"{type(exc).__name__}: {exc}")
        print(f"tetriszmq: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        model.get_env().close()
    why = state.stop_reason or max_timesteps_reason(config.train.max_timesteps, model.num_timesteps)
    stream.set_state(State.STOPPING, why)
    try:
        stream.save(final=True)
    except OSError as exc:
        stream.set_state(State.ERROR, f"final checkpoint failed: {exc}")
        print(f"tetriszmq: final checkpoint failed: {exc}", file=sys.stderr)
        return 1
    stream.set_state(State.STOPPED, why)
    return 0


def _nothing_to_train(model: BaseAlgorithm, config: cfg.Config, stream: StreamCallback) -> int:
    """A ``--resume`` of a run already at ``train.max_timesteps``: it stops at once, saying how to go on.

    No checkpoint is written: the one it loaded is unchanged (and the stream's callback never saw the model).
    """
    model.get_env().close()
    limit = config.train.max_timesteps
    print(f"tetriszmq: --resume: the checkpoint is at {model.num_timesteps:,} timesteps, already at "
          f"train.max_timesteps ({limit}): nothing to train; to go on, raise it: --set "
          f"train.max_timesteps={2 * model.num_timesteps}", file=sys.stderr)
    stream.set_state(State.STOPPED, f"max_timesteps {limit} already reached")
    return 0


def _stop_on_signals(state: TrainerState) -> dict[signal.Signals, signal.Handlers]:
    """Ctrl-C or SIGTERM stops like a ``stop`` request (checkpoint, exit 0); a second Ctrl-C aborts.

    Returns the handlers it replaced, for `train` to put back.
    """
    def handler(signum: int, frame: FrameType | None) -> None:
        if state.stop_requested:
            raise KeyboardInterrupt
        state.request_stop(f"signal {signal.Signals(signum).name}")

    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
