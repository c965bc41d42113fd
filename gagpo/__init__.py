"""gagpo — advantage estimators for multi-turn LLM agents, from REINFORCE to GAGPO.

The pieces, in the order data flows through them::

    environment -> rollout -> StepBatch -> advantages -> losses -> update

* :class:`gagpo.StepBatch` — one row per agent decision (the data contract);
* :mod:`gagpo.advantages` — pure numpy estimators (REINFORCE, GRPO, RLOO, GAE, GiGPO, GAGPO);
* :mod:`gagpo.registry` — the estimators by name: :func:`register_estimator` adds one to both
  trainers, the command line and the plots; :func:`compute_advantages` runs any of them;
* :mod:`gagpo.config` — the settings that every configuration shares: :class:`EstimatorSettings` (what
  the estimators read) and :class:`RunSettings` (seeds, rollouts, update, evaluation, run directory);
* :mod:`gagpo.losses` — the PPO clipped surrogate with token- or action-level ratios;
* :mod:`gagpo.policies`, :mod:`gagpo.rollout`, :mod:`gagpo.trainer` — the toy-chapter stack;
* :mod:`gagpo.distributed` — one run on several processes (``accelerate launch``, ``torchrun``): whole
  rollout groups per process, gradients summed over them, files written by the main process.

Importing ``gagpo`` (the estimators and the registry) loads numpy, not torch or gymnasium.
"""
from .advantages import (
    discounted_returns,
    gae_advantages,
    gagpo_advantages,
    gigpo_advantages,
    gigpo_step_advantages,
    grouped_value_proxy,
    grpo_advantages,
    reinforce_advantages,
    rloo_advantages,
)
from .batch import StepBatch
from .config import EstimatorSettings, RunSettings
from .registry import compute_advantages, estimator_names, get_estimator, register_estimator

__version__ = "0.1.0"

__all__ = [
    "StepBatch",
    "discounted_returns",
    "reinforce_advantages",
    "grpo_advantages",
    "rloo_advantages",
    "gae_advantages",
    "gigpo_advantages",
    "gigpo_step_advantages",
    "grouped_value_proxy",
    "gagpo_advantages",
    "register_estimator",
    "compute_advantages",
    "estimator_names",
    "get_estimator",
    "EstimatorSettings",
    "RunSettings",
]
