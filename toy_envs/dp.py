r"""Exact tabular models of the toy environments, and dynamic programming on them.

Every toy task (one seed: one layout and one start) is a small *deterministic* MDP. This module
holds

* :class:`TabularModel` — the enumerated MDP of one task: states, their observation text, the
  admissible commands of each state and where each command leads;
* :func:`enumerate_model` — breadth-first enumeration of the states reachable from the start;
* :class:`TabularTextEnv` — the Gymnasium base class of the toy envs: a subclass describes the
  rules, the base compiles them into a :class:`TabularModel` on reset and then every ``step`` is a
  table look-up;
* dynamic programming on a model: :func:`policy_evaluation`, :func:`q_values`,
  :func:`optimal_values`, :func:`shortest_solution` and :func:`uniform_policy`.

Conventions. A state is *done* when the episode ends on entering it (goal, trap, task solved).
Transitions into a done state have ``terminal=True``; the reward is 1 when the done state is a
success and 0 otherwise. A done state is absorbing in the model: each of its commands loops to
itself with reward 0 and ``terminal=True``, so every value of a done state is 0.

Policies are ragged: ``probs[s]`` is a 1-D array with one probability per entry of
``model.actions[s]`` (the order of ``info["admissible_actions"]``). Finite-horizon values have
shape ``(H + 1, n_states)``; row ``k`` is the value with ``k`` decisions left (row 0 is zero), which
is what a step limit of ``H`` gives at the start of an episode.
"""
from __future__ import annotations

import string
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: Held-out evaluation seeds, shared by every toy env; training uses seeds in ``TRAIN_SEEDS``.
EVAL_SEEDS = range(10_000, 10_100)
#: Seeds an unseeded ``reset()`` draws its task from.
TRAIN_SEEDS = range(0, 10_000)
#: Every character an observation or a command of the toy envs may use.
CHARSET = string.ascii_letters + string.digits + " .,:;!?'()-\n"


def reset_task_seed(env, seed: int | None, options: dict | None) -> int:
    """The task seed a ``reset(seed=..., options=...)`` of a toy environment plays: ``options["task_seed"]``
    (without reseeding), else ``seed``, else one drawn from ``env.TRAIN_SEEDS`` with ``env.np_random``."""
    if options and "task_seed" in options:
        return int(options["task_seed"])
    if seed is not None:
        return int(seed)
    return int(env.np_random.integers(env.TRAIN_SEEDS.start, env.TRAIN_SEEDS.stop))


# ------------------------------------------------------------------------------- the model
@dataclass
class TabularModel:
    """The enumerated deterministic MDP of one task. Treat it as read-only (envs share it).

    All per-state lists are indexed by ``state_id`` (breadth-first order from the start state);
    the inner lists of ``actions``, ``next_state``, ``reward`` and ``terminal`` are aligned.
    """

    n_states: int
    """Number of states reachable from the start state."""
    obs_text: list[str]
    """Observation string of each state (distinct states have distinct strings)."""
    actions: list[list[str]]
    """Admissible commands of each state, in the order of ``info["admissible_actions"]``."""
    next_state: list[list[int]]
    """``next_state[s][a]``: the state that command ``a`` leads to from ``s``."""
    reward: list[list[float]]
    """``reward[s][a]``: the reward of that transition (1.0 on success, else 0.0)."""
    terminal: list[list[bool]]
    """``terminal[s][a]``: whether that transition ends the episode."""
    initial_state: int
    """The state ``reset`` starts in (0 for a model built by :func:`enumerate_model`)."""


def enumerate_model(
    initial: Hashable,
    commands: Callable[[Any], Sequence[str]],
    transition: Callable[[Any, str], Any],
    describe: Callable[[Any], str],
    is_success: Callable[[Any], bool],
    is_failure: Callable[[Any], bool],
) -> tuple[TabularModel, list]:
    """Enumerate the states reachable from ``initial`` breadth-first.

    ``commands(state)`` lists the admissible commands (they are sorted here), ``transition(state,
    command)`` returns the next state (hashable), ``describe(state)`` its observation text.
    Entering a success or failure state ends the episode. Returns the model and the list of state
    objects, both indexed by ``state_id``. Raises ValueError when a reachable state has no
    admissible command.
    """
    states = [initial]
    index = {initial: 0}
    obs_text, actions, next_state, reward, terminal = [], [], [], [], []
    for state in states:  # ``states`` grows while we walk it: a breadth-first queue
        cmds = sorted(commands(state))
        if not cmds:
            raise ValueError(f"state {state!r} has no admissible command")
        sid = index[state]
        obs_text.append(describe(state))
        actions.append(cmds)
        if is_success(state) or is_failure(state):  # done: absorbing
            next_state.append([sid] * len(cmds))
            reward.append([0.0] * len(cmds))
            terminal.append([True] * len(cmds))
            continue
        row_next, row_reward, row_terminal = [], [], []
        for cmd in cmds:
            nxt = transition(state, cmd)
            if nxt not in index:
                index[nxt] = len(states)
                states.append(nxt)
            success = is_success(nxt)
            row_next.append(index[nxt])
            row_reward.append(1.0 if success else 0.0)
            row_terminal.append(success or is_failure(nxt))
        next_state.append(row_next)
        reward.append(row_reward)
        terminal.append(row_terminal)
    model = TabularModel(len(states), obs_text, actions, next_state, reward, terminal, initial_state=0)
    return model, states


# ------------------------------------------------------------------- dynamic programming
@dataclass(frozen=True)
class _Flat:
    """A model as flat arrays over its (state, action) pairs, in state-major order."""

    src: np.ndarray  # (P,) state of each pair
    dst: np.ndarray  # (P,) next state
    rew: np.ndarray  # (P,) reward
    cont: np.ndarray  # (P,) 1.0 where the transition does not end the episode
    starts: np.ndarray  # (n_states,) index of each state's first pair


def _flatten(model: TabularModel) -> _Flat:
    counts = np.fromiter((len(a) for a in model.actions), dtype=np.int64, count=model.n_states)
    if np.any(counts == 0):
        raise ValueError("every state of the model needs at least one action")
    total = int(counts.sum())
    dst = np.fromiter(chain.from_iterable(model.next_state), dtype=np.int64, count=total)
    rew = np.fromiter(chain.from_iterable(model.reward), dtype=np.float64, count=total)
    term = np.fromiter(chain.from_iterable(model.terminal), dtype=bool, count=total)
    src = np.repeat(np.arange(model.n_states), counts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return _Flat(src, dst, rew, (~term).astype(np.float64), starts)


def _check_gamma(gamma: float, horizon: int | None) -> float:
    gamma = float(gamma)
    if horizon is None and not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must lie in [0, 1) for infinite-horizon values; got {gamma} "
                         "(use a finite horizon for gamma = 1)")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1]; got {gamma}")
    if horizon is not None and (int(horizon) != horizon or horizon < 0):
        raise ValueError(f"horizon must be a non-negative integer or None; got {horizon!r}")
    return gamma


def _flat_probs(model: TabularModel, probs: Sequence[np.ndarray]) -> np.ndarray:
    if len(probs) != model.n_states:
        raise ValueError(f"probs needs one array per state ({model.n_states}); got {len(probs)}")
    for s, (p, acts) in enumerate(zip(probs, model.actions)):
        if np.shape(p) != (len(acts),):
            raise ValueError(f"probs[{s}] must have shape ({len(acts)},) — one entry per admissible "
                             f"action — got {np.shape(p)}")
    flat = np.concatenate([np.asarray(p, dtype=np.float64) for p in probs])
    if np.any(flat < 0) or not np.all(np.isfinite(flat)):
        raise ValueError("probs must be finite and non-negative")
    sums = np.add.reduceat(flat, _flatten(model).starts)
    if not np.allclose(sums, 1.0, atol=1e-6):
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"probs of each state must sum to 1; state {bad} sums to {sums[bad]}")
    return flat


def uniform_policy(model: TabularModel) -> list[np.ndarray]:
    """The policy that picks each admissible command of a state with equal probability."""
    return [np.full(len(a), 1.0 / len(a)) for a in model.actions]


def policy_evaluation(
    model: TabularModel, probs: Sequence[np.ndarray], gamma: float, horizon: int | None = None,
    tol: float = 1e-10,
) -> np.ndarray:
    r"""Exact state values :math:`V^\pi` of the policy ``probs`` on ``model``.

    With :math:`r_\pi(s) = \sum_a \pi(a|s)\, r(s,a)` and
    :math:`P_\pi(s, s') = \sum_{a:\, s \to s' \text{ not terminal}} \pi(a|s)`, the Bellman backup is
    :math:`V \leftarrow r_\pi + \gamma P_\pi V` (one sparse product over the (state, action) pairs).

    * ``horizon=H``: :math:`V_0 = 0` and :math:`H` backups; shape ``(H + 1, n_states)``, row ``k``
      the value with ``k`` steps left. :math:`\gamma = 1` is allowed: ``V[H, s]`` is then the
      probability of succeeding within ``H`` steps from ``s``.
    * ``horizon=None``: the discounted infinite-horizon values, the fixed point of the backup,
      shape ``(n_states,)``; requires :math:`0 \le \gamma < 1`. Backups repeat until
      :math:`\frac{\gamma}{1-\gamma} \max_s |V_{k} - V_{k-1}| <` ``tol``, which bounds the
      distance to the fixed point by ``tol``.
    """
    gamma = _check_gamma(gamma, horizon)
    flat = _flatten(model)
    p = _flat_probs(model, probs)
    n = model.n_states
    r_pi = np.bincount(flat.src, weights=p * flat.rew, minlength=n)
    w = p * flat.cont  # probability of moving on to dst without ending the episode

    def backup(V: np.ndarray) -> np.ndarray:
        return r_pi + gamma * np.bincount(flat.src, weights=w * V[flat.dst], minlength=n)

    if horizon is not None:
        V = np.zeros((int(horizon) + 1, n))
        for k in range(1, int(horizon) + 1):
            V[k] = backup(V[k - 1])
        return V
    return _fixed_point(backup, n, gamma, tol)


def _fixed_point(backup: Callable[[np.ndarray], np.ndarray], n: int, gamma: float, tol: float,
                 max_iter: int = 1_000_000) -> np.ndarray:
    """Iterate a gamma-contraction from zero until the a-posteriori error bound is below tol."""
    V = np.zeros(n)
    for _ in range(max_iter):
        new = backup(V)
        if gamma * np.max(np.abs(new - V), initial=0.0) <= tol * (1.0 - gamma):
            return new
        V = new
    raise RuntimeError(f"the backup did not converge within {max_iter} iterations")


def q_values(model: TabularModel, V: np.ndarray, gamma: float) -> list[np.ndarray]:
    r""":math:`Q(s, a) = r(s, a) + \gamma\, [\text{not terminal}]\, V(s')` for every state.

    ``V`` has shape ``(n_states,)``; for finite-horizon values pass row ``k - 1`` of
    :func:`policy_evaluation`'s output to get Q with ``k`` steps left. Returns a ragged list aligned
    with ``model.actions``.
    """
    V = np.asarray(V, dtype=np.float64)
    if V.shape != (model.n_states,):
        raise ValueError(f"V must have shape ({model.n_states},); got {V.shape}")
    flat = _flatten(model)
    q = flat.rew + float(gamma) * flat.cont * V[flat.dst]
    return np.split(q, flat.starts[1:])


def optimal_values(
    model: TabularModel, gamma: float, horizon: int | None = None, tol: float = 1e-10
) -> np.ndarray:
    r"""Optimal values :math:`V^*` by value iteration, :math:`V \leftarrow \max_a Q(s, a)`.

    ``horizon=H``: shape ``(H + 1, n_states)``, row ``k`` the optimal value with ``k`` steps left.
    ``horizon=None``: shape ``(n_states,)``, iterated to within ``tol`` as in
    :func:`policy_evaluation` (requires :math:`\gamma < 1`). On these tasks (reward 1 on success
    only) :math:`V^*(s) = \gamma^{L-1}`, with :math:`L` the length of the shortest solution from
    ``s`` (0 where there is none).
    """
    gamma = _check_gamma(gamma, horizon)
    flat = _flatten(model)

    def backup(V: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(flat.rew + gamma * flat.cont * V[flat.dst], flat.starts)

    if horizon is not None:
        V = np.zeros((int(horizon) + 1, model.n_states))
        for k in range(1, int(horizon) + 1):
            V[k] = backup(V[k - 1])
        return V
    return _fixed_point(backup, model.n_states, gamma, tol)


def shortest_solution(model: TabularModel) -> list[str] | None:
    """The shortest command sequence from the start to a rewarded terminal transition, or None.

    Breadth-first search over non-terminal transitions; ties break by action order.
    """
    parent: dict[int, tuple[int, int] | None] = {model.initial_state: None}
    queue = deque([model.initial_state])
    while queue:
        s = queue.popleft()
        for a, (nxt, r, term) in enumerate(zip(model.next_state[s], model.reward[s], model.terminal[s])):
            if term and r > 0:
                path = [model.actions[s][a]]
                while parent[s] is not None:
                    s, a_prev = parent[s]
                    path.append(model.actions[s][a_prev])
                return path[::-1]
            if not term and nxt not in parent:
                parent[nxt] = (s, a)
                queue.append(nxt)
    return None


# -------------------------------------------------------------------- the env base class
@dataclass(frozen=True)
class _Compiled:
    """A task compiled for play: its model, its state objects and a command look-up per state."""

    task: Any
    task_text: str
    model: TabularModel
    states: list
    action_index: list[dict[str, int]]
    done: list[bool]
    won: list[bool]


class TabularTextEnv(gym.Env):
    """Base class of the toy text envs: rules in the subclass, play from a compiled table.

    A subclass implements the rules of one task as pure functions of ``(task, state)``
    (``_propose_task``, ``_initial_state``, ``_commands``, ``_transition``, ``_describe``,
    ``_is_success``, ``_is_failure``, ``_feedback``, ``_task_text``, ``_render_text``) and lists
    its constructor arguments in ``_config``. ``reset(seed=s)`` turns the seed into a task
    (re-proposing until the task is solvable), enumerates its states once (cached per task) and
    afterwards ``step`` only looks commands up in the table.

    Actions are command strings (case and surrounding blanks are ignored) or integer indices into
    ``info["admissible_actions"]``. Anything else is a no-op: the state and the observation stay
    as they are, the reward is ``-invalid_penalty``, ``info["invalid_action"]`` is True and
    ``info["feedback"]`` says why.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}
    EVAL_SEEDS = EVAL_SEEDS
    TRAIN_SEEDS = TRAIN_SEEDS
    MAX_OBS_LENGTH = 512
    MAX_COMMAND_LENGTH = 64
    _CACHE_SIZE = 128  # compiled tasks kept per env class (a group of rollouts shares one task)
    _cache: OrderedDict  # per subclass, created in __init_subclass__

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._cache = OrderedDict()

    def __init__(self, render_mode: str | None = None, invalid_penalty: float = 0.0):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; expected None or one of "
                             f"{self.metadata['render_modes']}")
        invalid_penalty = float(invalid_penalty)
        if not (np.isfinite(invalid_penalty) and invalid_penalty >= 0.0):
            raise ValueError(f"invalid_penalty must be finite and >= 0; got {invalid_penalty}")
        self.render_mode = render_mode
        self.invalid_penalty = invalid_penalty
        self.observation_space = spaces.Text(max_length=self.MAX_OBS_LENGTH, charset=CHARSET)
        self.action_space = spaces.Text(max_length=self.MAX_COMMAND_LENGTH, charset=CHARSET)
        self._compiled: _Compiled | None = None
        self._state_id = 0
        self.task_seed: int | None = None

    # ---------------------------------------------------------------- subclass interface
    @property
    def _config(self) -> tuple:
        """Constructor arguments that change the tasks (part of the compile-cache key)."""
        raise NotImplementedError

    def _propose_task(self, rng: np.random.Generator) -> Hashable:
        raise NotImplementedError

    def _accept(self, task, model: TabularModel, solution: list[str]) -> bool:
        """Extra acceptance test for a proposed (already solvable) task."""
        return True

    def _initial_state(self, task) -> Hashable:
        raise NotImplementedError

    def _commands(self, task, state) -> list[str]:
        raise NotImplementedError

    def _transition(self, task, state, command: str) -> Hashable:
        raise NotImplementedError

    def _describe(self, task, state) -> str:
        raise NotImplementedError

    def _is_success(self, task, state) -> bool:
        raise NotImplementedError

    def _is_failure(self, task, state) -> bool:
        return False

    def _feedback(self, task, state, command: str, next_state) -> str:
        raise NotImplementedError

    def _task_text(self, task) -> str:
        raise NotImplementedError

    def _render_text(self, task, state) -> str:
        raise NotImplementedError

    # ---------------------------------------------------------------------- compilation
    def _compile(self, task) -> _Compiled:
        model, states = enumerate_model(
            self._initial_state(task),
            lambda s: self._commands(task, s),
            lambda s, c: self._transition(task, s, c),
            lambda s: self._describe(task, s),
            lambda s: self._is_success(task, s),
            lambda s: self._is_failure(task, s),
        )
        index = [{c: a for a, c in enumerate(acts)} for acts in model.actions]
        won = [self._is_success(task, s) for s in states]
        done = [w or self._is_failure(task, s) for w, s in zip(won, states)]
        return _Compiled(task, self._task_text(task), model, states, index, done, won)

    def _compiled_task(self, task_seed: int) -> _Compiled:
        key = (self._config, task_seed)
        cache = type(self)._cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        rng = np.random.default_rng(task_seed)
        for _ in range(1000):
            try:
                compiled = self._compile(self._propose_task(rng))
            except ValueError:  # a reachable state without commands (e.g. a walled-in start)
                continue
            solution = shortest_solution(compiled.model)
            if solution is not None and self._accept(compiled.task, compiled.model, solution):
                break
        else:
            raise ValueError(f"no solvable task found for seed {task_seed} with {self._config}; "
                             "the constructor arguments leave too little room")
        cache[key] = compiled
        if len(cache) > self._CACHE_SIZE:
            cache.popitem(last=False)
        return compiled

    # ------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start the task of ``seed`` (``options={"task_seed": k}`` does the same without reseeding).

        Without either, the task seed is drawn from ``TRAIN_SEEDS`` with the env's ``np_random``.
        """
        super().reset(seed=seed)
        task_seed = reset_task_seed(self, seed, options)
        self.task_seed = task_seed
        self._compiled = self._compiled_task(task_seed)
        self._state_id = self._compiled.model.initial_state
        return self._compiled.model.obs_text[self._state_id], self._info(feedback="", invalid=False)

    def step(self, action):
        c = self._compiled
        if c is None:
            raise RuntimeError("call reset() before step()")
        s = self._state_id
        command, problem = self._resolve(action, c.model.actions[s], c.action_index[s])
        if problem is not None:
            reward = -self.invalid_penalty
            info = self._info(feedback=problem, invalid=True)
        elif c.done[s]:
            reward = 0.0
            info = self._info(feedback="The episode is over; call reset().", invalid=False)
        else:
            a = c.action_index[s][command]
            self._state_id = c.model.next_state[s][a]
            reward = c.model.reward[s][a]
            info = self._info(
                feedback=self._feedback(c.task, c.states[s], command, c.states[self._state_id]),
                invalid=False,
            )
        return c.model.obs_text[self._state_id], reward, c.done[self._state_id], False, info

    @staticmethod
    def _resolve(action, actions: list[str], index: dict[str, int]) -> tuple[str | None, str | None]:
        """(command, None) for an admissible action, else (None, why it is a no-op)."""
        if isinstance(action, (int, np.integer)) and not isinstance(action, (bool, np.bool_)):
            if 0 <= action < len(actions):
                return actions[action], None
            return None, (f"Nothing happens: action index {int(action)} is out of range; there are "
                          f"{len(actions)} admissible actions.")
        if isinstance(action, str):
            command = " ".join(action.lower().split())
            if command in index:
                return command, None
            return None, f"Nothing happens: {action!r} is not a valid command here."
        return None, f"Nothing happens: an action must be a command string or an index; got {action!r}."

    def _info(self, feedback: str, invalid: bool) -> dict:
        c = self._compiled
        s = self._state_id
        return {
            "admissible_actions": list(c.model.actions[s]),
            "won": c.won[s],
            "invalid_action": invalid,
            "feedback": feedback,
            "task": c.task_text,
            "state_id": s,
            "task_seed": self.task_seed,
        }

    def render(self):
        if self.render_mode is None or self._compiled is None:
            return None
        c = self._compiled
        return self._render_text(c.task, c.states[self._state_id])

    # ---------------------------------------------------------------------- exact model
    def exact_model(self) -> TabularModel:
        """The enumerated MDP of the current task (shared and cached: do not modify it)."""
        if self._compiled is None:
            raise RuntimeError("call reset() before exact_model()")
        return self._compiled.model

    @property
    def state_id(self) -> int:
        """Index of the current state in :meth:`exact_model`."""
        return self._state_id
