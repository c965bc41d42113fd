"""A picklable environment factory (no torch, no heavy imports: worker processes unpickle it)."""
from __future__ import annotations

import dataclasses
import importlib

import gymnasium as gym


def ensure_registered(env_id: str) -> None:
    """Import the package that registers ``env_id`` when the id is not registered yet.

    ``"toy_envs/KeyDoor-v0"`` imports ``toy_envs``; ``"gagpo/ALFWorld-v0"`` imports ``gagpo.envs``.
    Raises ``ValueError`` naming the id when it cannot be registered.
    """
    if env_id in gym.registry:
        return
    namespace = env_id.split("/")[0] if "/" in env_id else None
    if namespace:
        module = "gagpo.envs" if namespace == "gagpo" else namespace
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"unknown environment {env_id!r}: could not import {module!r}, which should register it ({exc})") from exc
    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if namespace and k.startswith(namespace + "/"))
        raise ValueError(f"unknown environment {env_id!r}; registered ids with this prefix: {known}")


@dataclasses.dataclass(frozen=True)
class EnvFactory:
    """A picklable ``make_env`` (for :class:`gagpo.envs.pool.EnvPool` and :class:`gagpo.envs.pool.ProcessEnvPool`): ``gym.make(env_id, ...)`` in the worker.

    ``max_steps > 0`` overrides the registered step limit; ``kwargs`` go to the env's constructor.
    For an id ``"namespace/Name-v0"`` the module ``namespace.envs`` (for ``gagpo``) or ``namespace``
    is imported first, which registers the id (a fresh worker process has an empty registry).
    """

    env_id: str
    max_steps: int = 0
    kwargs: dict = dataclasses.field(default_factory=dict)

    def __call__(self) -> gym.Env:
        ensure_registered(self.env_id)
        extra = dict(self.kwargs)
        if self.max_steps:
            extra["max_episode_steps"] = self.max_steps
        return gym.make(self.env_id, disable_env_checker=True, **extra)
