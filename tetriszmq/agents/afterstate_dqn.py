"""Afterstate DQN for `PlacementTetris`, as a stable-baselines3 algorithm.

Q(s, a) is the value of the board that placement ``a`` leaves: one small MLP
shared by all 40 placements scores each candidate's feature vector, so the
network learns "how good is this board", not 40 unrelated action values. Read
top to bottom: the network, the masking, the replay of afterstates, then the
algorithm (exploration among legal placements, TD target, update).

It subclasses SB3's `DQN`, so callbacks, logger, `learn`, `save` and `load`
work unchanged; only the policy, the replay buffer, `predict` and `train` differ.
Hyper-parameters follow the Tetris afterstate-DQN literature (Stevens & Pradhan;
nuno-faria/tetris-ai): env reward (+1 per piece, +10 lines^2) plus a game-over
penalty, gamma 0.95-0.99, epsilon decaying to 1e-3.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, ClassVar, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import create_mlp
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs, Schedule
from stable_baselines3.common.vec_env import VecEnv
from torch import nn
from torch.nn import functional as F

from tetriszmq.tetris.features import typical_scales

# --- network ---------------------------------------------------------------------------------


class AfterstateValue(nn.Module):
    """V(afterstate): features ``(..., F)`` -> value ``(...)``, one MLP for every placement."""

    def __init__(self, feature_names: Sequence[str], net_arch: Sequence[int]) -> None:
        super().__init__()
        # fixed per-feature divisors: raw counts (holes ~ 10, heights ~ 100) would swamp a small MLP
        self.register_buffer("scale", th.as_tensor(typical_scales(feature_names)))
        self.mlp = nn.Sequential(*create_mlp(len(feature_names), 1, list(net_arch), nn.ReLU))
        self._linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
        self.lock = threading.Lock()  # held by a learner thread's optimiser step, so no copy is half-updated
        self._numpy: tuple[tuple[int, ...], np.ndarray, list[tuple[np.ndarray, np.ndarray]]] = ((), np.ones(0), [])

    def forward(self, features: th.Tensor) -> th.Tensor:
        return self.mlp(features / self.scale).squeeze(-1)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (or deep-copied) without the lock, which cannot be, and the numpy copy, which is rebuilt."""
        return {**super().__getstate__(), "lock": None, "_numpy": ((), np.ones(0), [])}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.lock = threading.Lock()

    def values(self, features: np.ndarray) -> np.ndarray:
        """`forward` in numpy, for acting: the same MLP on a copy of the weights.

        A step scores one board's 40 candidates (or a few envs' at once): torch's fixed cost per
        operation (~10 us for each layer, activation, mask and argmax) made that forward pass
        40% of a training step, numpy's matrix products take a few microseconds. The copy is
        refreshed whenever a parameter changed in place (an optimiser step, a load), which
        torch counts in each tensor's ``_version``.
        """
        scale, layers = self._weights()
        x = features / scale
        for i, (weight, bias) in enumerate(layers):
            x = x @ weight + bias
            if i < len(layers) - 1:
                np.maximum(x, 0, out=x)
        return x[..., 0]

    def _weights(self) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The scale and each layer's (weight transposed, bias) as numpy arrays, copied when changed."""
        tensors = [self.scale, *(t for layer in self._linears for t in (layer.weight, layer.bias))]
        if tuple(t._version for t in tensors) != self._numpy[0]:
            with self.lock:
                versions = tuple(t._version for t in tensors)
                scale, *arrays = [t.detach().cpu().numpy().copy() for t in tensors]
            layers = [(w.T.copy(), b) for w, b in zip(arrays[::2], arrays[1::2], strict=True)]
            self._numpy = (versions, scale, layers)
        return self._numpy[1:]


# --- masking ---------------------------------------------------------------------------------


def masked_values(values: th.Tensor, mask: th.Tensor) -> th.Tensor:
    """Illegal placements get -inf, so neither argmax nor max can pick them."""
    return values.masked_fill(mask == 0, -th.inf)


class AfterstatePolicy(BasePolicy):
    """Greedy masked policy over afterstate values, with its target copy.

    :param feature_names: the environment's features, recorded so that a checkpoint
        can be played on the environment it was trained on.
    :param net_arch: hidden layer sizes of the shared MLP.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        feature_names: Sequence[str],
        net_arch: Sequence[int] = (64, 64),
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(observation_space, action_space, optimizer_class=optimizer_class,
                         optimizer_kwargs=optimizer_kwargs)
        self.feature_names = tuple(feature_names)
        self.net_arch = tuple(net_arch)
        self.q_net = AfterstateValue(self.feature_names, self.net_arch)
        self.q_net_target = AfterstateValue(self.feature_names, self.net_arch)
        self.q_net_target.load_state_dict(self.q_net.state_dict())
        self.q_net_target.train(False)
        self.optimizer = self.optimizer_class(self.q_net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def q_values(self, obs: PyTorchObs) -> th.Tensor:
        """``(B, 40)`` values of the placements' afterstates, -inf where illegal."""
        return masked_values(self.q_net(obs["features"]), obs["mask"])

    def forward(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return self._predict(obs, deterministic)

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's `BasePolicy.predict` for this policy's one observation shape, minus what costs.

        SB3's generic version deep-copies the observation dict and re-sets the training mode of
        every module on each call: a third of a training step's time with one env (py-spy and
        cProfile of `learn`); and torch's forward pass on 40 candidates cost more than numpy's
        (`AfterstateValue.values`). The candidates of all envs are scored in one pass.
        """
        features, mask = np.asarray(observation["features"]), np.asarray(observation["mask"])
        single = features.ndim == 2  # one env's (40, F), not a batch (n_envs, 40, F)
        if single:
            features, mask = features[None], mask[None]
        actions = self.placement_values(features, mask).argmax(axis=1)
        return (actions.squeeze(0) if single else actions), state

    def placement_values(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """`q_values` in numpy (``(..., 40)``, -inf where illegal): what acting and the page's candidates read."""
        return np.where(mask != 0, self.q_net.values(features), -np.inf)

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return self.q_values(observation).argmax(dim=1)

    def set_training_mode(self, mode: bool) -> None:
        self.q_net.train(mode)
        self.training = mode

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            feature_names=self.feature_names,
            net_arch=self.net_arch,
            lr_schedule=self._dummy_schedule,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data


# --- replay ----------------------------------------------------------------------------------


class AfterstateSamples(NamedTuple):
    afterstates: th.Tensor  # (B, F) features of the placement taken
    rewards: th.Tensor  # (B,)
    dones: th.Tensor  # (B,) 1 at game over; 0 on truncation, which is bootstrapped
    next_features: th.Tensor  # (B, 40, F) candidates of the next state
    next_masks: th.Tensor  # (B, 40)


class AfterstateReplayBuffer(BaseBuffer):
    """Keeps only what the afterstate TD update reads.

    SB3's dict buffer would store all 40 candidates of both the state and the
    next state; the update needs just the chosen afterstate and the next
    candidates, about half the memory. Features are stored as float16, exact for
    these small integer and half-integer counts.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
    ) -> None:
        super().__init__(buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.buffer_size = max(buffer_size // n_envs, 1)
        n_actions, n_features = observation_space["features"].shape
        shape = (self.buffer_size, n_envs)
        self.afterstates = np.zeros((*shape, n_features), dtype=np.float16)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.dones = np.zeros(shape, dtype=np.float32)
        self.next_features = np.zeros((*shape, n_actions, n_features), dtype=np.float16)
        self.next_masks = np.zeros((*shape, n_actions), dtype=bool)

    def add(self, obs: dict[str, np.ndarray], next_obs: dict[str, np.ndarray], action: np.ndarray,
            reward: np.ndarray, done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        truncated = np.array([info.get("TimeLimit.truncated", False) for info in infos])
        self.afterstates[self.pos] = obs["features"][np.arange(self.n_envs), action.reshape(-1)]
        self.rewards[self.pos] = reward
        self.dones[self.pos] = done & ~truncated
        self.next_features[self.pos] = next_obs["features"]
        self.next_masks[self.pos] = next_obs["mask"]
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full, self.pos = True, 0

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> AfterstateSamples:
        envs = np.random.randint(0, self.n_envs, size=len(batch_inds))
        at = (batch_inds, envs)
        return AfterstateSamples(
            afterstates=self.to_torch(self.afterstates[at].astype(np.float32)),
            rewards=self.to_torch(self.rewards[at]),
            dones=self.to_torch(self.dones[at]),
            next_features=self.to_torch(self.next_features[at].astype(np.float32)),
            next_masks=self.to_torch(self.next_masks[at]),
        )


# --- algorithm -------------------------------------------------------------------------------

PLACEMENTS_PER_UPDATE = 128  # the measured default: more often collapsed mid-run (docs/PERFORMANCE.md)


def _train_freq(train_freq: int | tuple[int, str] | list | None, env: GymEnv | str | None) -> int | tuple[int, str]:
    """SB3's ``train_freq``; None: one update per `PLACEMENTS_PER_UPDATE` placements over all envs."""
    if train_freq is None:
        n_envs = env.num_envs if isinstance(env, VecEnv) else 1
        return max(1, PLACEMENTS_PER_UPDATE // n_envs), "step"
    return tuple(train_freq) if isinstance(train_freq, list) else train_freq  # a config gives lists


class AfterstateDQN(DQN):
    """DQN over afterstate values with legal-only exploration and a game-over penalty.

    Takes every `DQN` keyword argument (``learning_rate``, ``buffer_size``,
    ``batch_size``, ``gamma``, ``train_freq``, ``target_update_interval``,
    ``exploration_*``, ...) with defaults measured on placement Tetris
    (docs/PERFORMANCE.md): one update of 512 afterstates every 128 placements
    (``train_freq`` None: ``128 // n_envs`` steps of the vectorised env, so that
    changing ``n_envs`` keeps the updates per placement, as SB3 already does for
    ``target_update_interval``), the target network synced every 8,000
    placements, and a buffer of 1.5M placements (up to
    1.4 GB, all of a 10-minute run). With a 300k buffer the early game overs
    left it, the network learnt that taller boards were worth more, stacked and
    died; frequent updates then only made that collapse come sooner. Plus:

    :param exploration_steps: epsilon falls linearly to its final value over this
        many environment steps, whatever total ``learn`` is given (a Tetris run is
        usually bounded by time, not steps); None: SB3's ``exploration_fraction``.
    :param game_over_penalty: added to the reward of the step that ends the game,
        so that losing is worse than any short game's remaining +1s.
    :param net_arch: hidden layer sizes of the shared MLP (also settable in ``policy_kwargs``).
    :param learner_thread: run each update in a second thread while the next placements are
        played: torch releases the GIL inside its operations, so the update's arithmetic can use a
        second core. The updates per placement are the same (``train`` waits for the previous
        update before starting the next), each acting on weights at most one update old. Off by
        default: the update is ~50 small torch calls, each taking the GIL back from the playing
        thread, and on the shared 2-CPU machine it measured slower (docs/PERFORMANCE.md, section 5).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"AfterstatePolicy": AfterstatePolicy}
    policy: AfterstatePolicy
    replay_buffer: AfterstateReplayBuffer

    def __init__(
        self,
        policy: str | type[AfterstatePolicy] = "AfterstatePolicy",
        env: GymEnv | str | None = None,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_500_000,
        learning_starts: int = 1_000,
        batch_size: int = 512,
        gamma: float = 0.95,
        train_freq: int | tuple[int, str] | list | None = None,
        gradient_steps: int = 1,
        target_update_interval: int = 8_000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 1e-3,
        exploration_steps: int | None = 20_000,
        game_over_penalty: float = -10.0,
        net_arch: Sequence[int] = (64, 64),
        learner_thread: bool = False,
        policy_kwargs: dict[str, Any] | None = None,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            policy, env, learning_rate=learning_rate, buffer_size=buffer_size, learning_starts=learning_starts,
            batch_size=batch_size, gamma=gamma, gradient_steps=gradient_steps,
            train_freq=_train_freq(train_freq, env),
            target_update_interval=target_update_interval, exploration_fraction=exploration_fraction,
            exploration_initial_eps=exploration_initial_eps, exploration_final_eps=exploration_final_eps,
            replay_buffer_class=AfterstateReplayBuffer, policy_kwargs=dict(policy_kwargs or {}),
            _init_setup_model=False, **kwargs,
        )
        self.exploration_steps = exploration_steps
        self.game_over_penalty = game_over_penalty
        self.learner_thread = learner_thread
        self._learner: ThreadPoolExecutor | None = None
        self._update_in_flight: Future | None = None
        self.policy_kwargs.setdefault("net_arch", tuple(net_arch))
        if self.env is not None and "feature_names" not in self.policy_kwargs:
            self.policy_kwargs["feature_names"] = tuple(self.env.get_attr("feature_names")[0])
        per_episode = isinstance(self.train_freq, tuple) and self.train_freq[1] == "episode"
        if self.env is not None and self.n_envs > 1 and per_episode:
            raise ValueError("train_freq per episode needs one env: with n_envs > 1 give steps, e.g. 16")
        if _init_setup_model:
            self._setup_model()

    @classmethod
    def load(cls, path: Any, env: GymEnv | None = None, device: th.device | str = "auto",
             custom_objects: dict[str, Any] | None = None, **kwargs: Any) -> AfterstateDQN:
        """SB3's load, with this module's classes given by name rather than unpickled by module path.

        A checkpoint pickles ``policy_class`` and ``replay_buffer_class`` with the module they
        lived in; naming them here keeps checkpoints loadable when the package layout moves.
        """
        ours = {"policy_class": AfterstatePolicy, "replay_buffer_class": AfterstateReplayBuffer}
        return super().load(path, env=env, device=device, custom_objects={**ours, **(custom_objects or {})},
                            **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_learner", "_update_in_flight"]

    def learn(self, *args: Any, **kwargs: Any) -> AfterstateDQN:
        try:
            return super().learn(*args, **kwargs)
        finally:
            self._finish_update()

    def save(self, path: str | Path | IO[bytes], *args: Any, **kwargs: Any) -> None:
        """SB3's save, once an update in flight has finished (its weights and optimiser state with it)."""
        self._finish_update()
        super().save(path, *args, **kwargs)

    def _on_step(self) -> None:
        if (self._n_calls + 1) % max(self.target_update_interval // self.n_envs, 1) == 0:
            self._finish_update()  # SB3's `_on_step` copies the network into the target now
        super()._on_step()
        if self.exploration_steps:
            progress = min(self.num_timesteps / self.exploration_steps, 1.0)
            self.exploration_rate = self.exploration_initial_eps + progress * (
                self.exploration_final_eps - self.exploration_initial_eps)
            self.logger.record("rollout/exploration_rate", self.exploration_rate)

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Greedy masked action; with probability epsilon a uniformly random *legal* one."""
        action, state = self.policy.predict(observation, state, episode_start, deterministic)
        if deterministic:
            return action, state
        masks = np.asarray(observation["mask"]).reshape(-1, self.action_space.n)
        explore = np.random.rand(len(masks)) < self.exploration_rate
        for i in np.flatnonzero(explore):
            np.put(action, i, np.random.choice(np.flatnonzero(masks[i])))
        return action, state

    def _store_transition(self, replay_buffer: AfterstateReplayBuffer, buffer_action: np.ndarray,
                          new_obs: dict[str, np.ndarray], reward: np.ndarray, dones: np.ndarray,
                          infos: list[dict[str, Any]]) -> None:
        """SB3's, without its deep copy of every next observation (a tenth of a training step).

        The afterstate buffer copies what it keeps, so only the arrays that get an ended
        episode's terminal observation in place of the next episode's first are copied.
        """
        if self._vec_normalize_env is not None:
            super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
            return
        next_obs = dict(new_obs)
        ended = [i for i in np.flatnonzero(dones) if infos[i].get("terminal_observation") is not None]
        if ended:
            next_obs = {key: array.copy() for key, array in new_obs.items()}
            for i in ended:
                for key in next_obs:
                    next_obs[key][i] = infos[i]["terminal_observation"][key]
        self._last_original_obs = self._last_obs
        replay_buffer.add(self._last_obs, next_obs, buffer_action, reward, dones, infos)
        self._last_obs = new_obs

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1):
        """Warm-up included, act through `predict`: SB3's warm-up samples illegal placements too."""
        action, _ = self.predict(self._last_obs, deterministic=False)
        return action, action

    def train(self, gradient_steps: int, batch_size: int = 128) -> None:
        """The TD update; in the learner thread if there is one (see ``learner_thread``)."""
        self._finish_update()
        if self._learner is None and self.learner_thread:
            self._learner = ThreadPoolExecutor(1, thread_name_prefix="learner")
        if self._learner is None:
            self._update(gradient_steps, batch_size)
        else:
            self._update_in_flight = self._learner.submit(self._update, gradient_steps, batch_size)

    def _finish_update(self) -> None:
        """Wait for the update in flight, if any; its exception, if it raised one, is raised here."""
        if getattr(self, "_update_in_flight", None) is not None:
            update, self._update_in_flight = self._update_in_flight, None
            update.result()

    def _update(self, gradient_steps: int, batch_size: int) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size)
            with th.no_grad():
                # TD target: best legal next placement under the target network; game over ends the sum
                next_value = masked_values(self.q_net_target(data.next_features), data.next_masks).amax(dim=1)
                target = data.rewards + data.dones * self.game_over_penalty \
                    + (1 - data.dones) * self.gamma * next_value
            value = self.q_net(data.afterstates)
            loss = F.mse_loss(value, target)
            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            with self.q_net.lock:
                self.policy.optimizer.step()
            losses.append(loss.item())
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", float(np.mean(losses)))
