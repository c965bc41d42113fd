"""Real benchmark environments, behind the same protocol as ``toy_envs``.

Importing the package registers ``gagpo/ALFWorld-v0`` (step limit 50) without importing alfworld;
constructing the environment needs it (``pip install -e ".[alfworld]"``) and its data
(``$ALFWORLD_DATA``, or the fixture games in ``tests/fixtures/alfworld``)::

    import gymnasium as gym
    import gagpo.envs

    env = gym.make("gagpo/ALFWorld-v0", data_dir=gagpo.envs.FIXTURES_DIR, split="train")
    obs, info = env.reset(seed=0)            # game 0 of the split; info["admissible_actions"]
    obs, reward, terminated, truncated, info = env.step(info["admissible_actions"][0])  # or an index

    pool = gagpo.envs.ProcessEnvPool(gagpo.envs.EnvFactory("gagpo/ALFWorld-v0"), n_workers=2)
    # gagpo.rollout.collect(pool, policy, task_seeds, group_size) steps the games in 2 processes

The environment protocol is explicit: :class:`EnvInfo` (the ``info`` keys) and :class:`EnvPoolProtocol`
(what a pool offers) in :mod:`gagpo.envs.pool`; how a language model talks to an environment (prompt,
text -> command, anchor key, evaluation splits) is its :class:`EnvAdapter` (:mod:`gagpo.envs.adapter`,
``adapter_for(env_id)``).
"""
from __future__ import annotations

import gymnasium as gym

from .factory import EnvFactory, ensure_registered
from .pool import REQUIRED_INFO_KEYS, EnvInfo, EnvPool, EnvPoolProtocol, ProcessEnvPool, RemoteEnv
from .alfworld import (
    DATA_SUBDIR,
    FIXTURES_DIR,
    SPLITS,
    TASK_TYPES,
    AlfworldEnv,
    list_games,
    resolve_data_dir,
)

#: Registered id -> (entry point, default step limit).
ENV_IDS = {
    "gagpo/ALFWorld-v0": ("gagpo.envs.alfworld:AlfworldEnv", 50),
}

for _env_id, (_entry_point, _max_steps) in ENV_IDS.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point=_entry_point, max_episode_steps=_max_steps)

__all__ = [
    "DATA_SUBDIR",
    "ENV_IDS",
    "FIXTURES_DIR",
    "SPLITS",
    "TASK_TYPES",
    "AlfworldEnv",
    "EnvAdapter",
    "EnvFactory",
    "EnvInfo",
    "EnvPool",
    "EnvPoolProtocol",
    "REQUIRED_INFO_KEYS",
    "ProcessEnvPool",
    "RemoteEnv",
    "list_games",
    "resolve_data_dir",
    "adapter_for",
    "ensure_registered",
    "register_adapter",
]


def __getattr__(name: str):
    """The adapter API (:mod:`gagpo.envs.adapter`) on first use: it reads :mod:`gagpo.llm.prompts`, which
    worker processes that only build environments need not import."""
    if name in ("EnvAdapter", "adapter_for", "register_adapter"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
