"""Small text environments for the book, each with an exact tabular model for dynamic programming.

Importing the package registers four Gymnasium environments::

    import gymnasium as gym
    import toy_envs

    env = gym.make("toy_envs/KeyDoor-v0")           # or OpenGrid-v0, MiniHousehold-v0, MiniShop-v0
    obs, info = env.reset(seed=0)                   # one seed -> one task (layout and start)
    obs, reward, terminated, truncated, info = env.step(info["admissible_actions"][0])  # or an index
    model = env.unwrapped.exact_model()             # the task's MDP; info["state_id"] indexes it

Observations and commands are strings (``gymnasium.spaces.Text``). Seeds in ``EVAL_SEEDS`` are
held out for evaluation; an unseeded reset draws its task from ``TRAIN_SEEDS``. Keyword
arguments of ``gym.make`` reach the env class (e.g. ``size=6``) and ``max_episode_steps``
overrides the registered step limit.

``MiniShop-v0`` (:mod:`toy_envs.minishop`) is a WebShop-like store with free-text ``search[...]``
commands and graded rewards: its ``exact_model()`` covers the canned searches and clicks only, and its
``info`` has no ``state_id``.
"""
from __future__ import annotations

import gymnasium as gym

from .dp import (
    CHARSET,
    EVAL_SEEDS,
    TRAIN_SEEDS,
    TabularModel,
    TabularTextEnv,
    enumerate_model,
    optimal_values,
    policy_evaluation,
    q_values,
    shortest_solution,
    uniform_policy,
)
from .gridworlds import KeyDoorEnv, OpenGridEnv
from .household import MiniHouseholdEnv
from .minishop import MiniShopEnv

#: Registered id -> (entry point, default step limit): the tabular toys (reward 1 on success only, an exact
#: model per task that the game is played from; ``tests/test_toy_envs.py`` checks each of them).
ENV_IDS = {
    "toy_envs/OpenGrid-v0": ("toy_envs.gridworlds:OpenGridEnv", 20),  # 4 x the default size 5
    "toy_envs/KeyDoor-v0": ("toy_envs.gridworlds:KeyDoorEnv", 60),
    "toy_envs/MiniHousehold-v0": ("toy_envs.household:MiniHouseholdEnv", 30),
}

#: Registered too, with free-text commands and graded rewards (not tabular: any ``search[...]`` text is a command).
FREE_TEXT_ENV_IDS = {
    "toy_envs/MiniShop-v0": ("toy_envs.minishop:MiniShopEnv", 15),  # a WebShop-like store
}

for _env_id, (_entry_point, _max_steps) in {**ENV_IDS, **FREE_TEXT_ENV_IDS}.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point=_entry_point, max_episode_steps=_max_steps)

__all__ = [
    "CHARSET",
    "ENV_IDS",
    "FREE_TEXT_ENV_IDS",
    "EVAL_SEEDS",
    "TRAIN_SEEDS",
    "KeyDoorEnv",
    "MiniHouseholdEnv",
    "MiniShopEnv",
    "OpenGridEnv",
    "TabularModel",
    "TabularTextEnv",
    "enumerate_model",
    "optimal_values",
    "policy_evaluation",
    "q_values",
    "shortest_solution",
    "uniform_policy",
]
