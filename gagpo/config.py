"""The one typed configuration of a training run; the command line is generated from it.

Every field carries its documentation in ``metadata["help"]``; ``python -m gagpo train --help``
prints exactly these texts and defaults, and notebooks build the same dataclass with overrides::

    cfg = TrainConfig(algo="gigpo", iterations=20, group_size=4)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

ALGOS = ("reinforce", "grpo", "rloo", "ppo", "gigpo", "gagpo")
POLICIES = ("text", "tabular")
NORMS = ("mean_std", "mean", "none")
ANCHOR_MATCHES = ("exact", "near")


def _f(default: Any, help: str, choices: tuple | None = None, **kw) -> Any:  # noqa: A002 - argparse's name
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


#: The advantage estimator's settings, shared by :class:`TrainConfig` and
#: :class:`gagpo.llm.LMTrainConfig` (same names, defaults and help): name -> (default, help, choices).
ESTIMATOR_SETTINGS: dict[str, tuple[Any, str, tuple | None]] = {
    "gamma": (0.95, "discount factor γ", None),
    "lam": (0.95, "GAE λ (gagpo, ppo)", None),
    "norm": ("mean_std", "advantage normalisation within each rollout group (grpo, gigpo, gagpo); ppo normalises over the batch", NORMS),
    "step_weight": (1.0, "GiGPO: weight ω of the step-level (anchor-state) term", None),
    "reinforce_baseline": ("step_mean", "REINFORCE baseline: none, mean or step_mean", ("none", "mean", "step_mean")),
    "adv_eps": (1e-6, "ε added to standard deviations in normalisations", None),
    "anchor_match": ("exact", "anchor states (gigpo, gagpo): 'exact' observation text, or 'near' duplicates merged within a group (gagpo.anchors)", ANCHOR_MATCHES),
    "anchor_threshold": (0.8, "anchor_match 'near': merge observations whose word-bigram Jaccard similarity to a more-visited one is >= this", None),
}


def estimator_field(name: str) -> Any:
    """The dataclass field of estimator setting ``name`` (:data:`ESTIMATOR_SETTINGS`)."""
    default, help_text, choices = ESTIMATOR_SETTINGS[name]
    return _f(default, help_text, choices=choices)


def check_choices(cfg: Any) -> None:
    """Raise ``ValueError`` when a field of dataclass ``cfg`` with ``metadata["choices"]`` holds another value."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices is not None and value not in choices:
            raise ValueError(f"unknown {f.name} {value!r}; expected one of {list(choices)}")


@dataclass
class TrainConfig:
    """Configuration of one training run (one algorithm, one seed). Field docs are the CLI's help."""

    #: fields that may differ between a checkpoint (or a finished run) and the run that resumes or reuses it
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "iterations", "env_step_budget", "resume", "progress", "out_dir", "checkpoint_every", "eval_every")

    # --- what to train on
    env: str = _f("toy_envs/KeyDoor-v0", "gymnasium id of a text environment (toy_envs/OpenGrid-v0, toy_envs/KeyDoor-v0, toy_envs/MiniHousehold-v0)")
    env_kwargs: dict = _f({}, "extra keyword arguments for gymnasium.make, as JSON, e.g. '{\"size\": 6}'")
    max_steps: int = _f(0, "step limit per episode; 0 keeps the environment's registered limit")
    algo: str = _f("gagpo", "advantage estimator", choices=ALGOS)
    seed: int = _f(0, "seed of the run: initial weights, task sampling and action sampling")

    # --- rollouts
    iterations: int = _f(300, "number of training iterations (rollout -> advantages -> update)")
    env_step_budget: int = _f(0, "stop once this many environment steps have been taken (checked after each iteration); 0 = no limit")
    tasks_per_iter: int = _f(8, "rollout groups per iteration (distinct task seeds)")
    group_size: int = _f(8, "trajectories per group, all started from the same task seed (G)")
    n_train_tasks: int = _f(0, "size of a fixed pool of training task seeds 0..n-1; 0 draws fresh task seeds (< 10000) every iteration")

    # --- estimator (shared with gagpo.llm.LMTrainConfig)
    gamma: float = estimator_field("gamma")
    lam: float = estimator_field("lam")
    norm: str = estimator_field("norm")
    step_weight: float = estimator_field("step_weight")
    reinforce_baseline: str = estimator_field("reinforce_baseline")
    adv_eps: float = estimator_field("adv_eps")
    anchor_match: str = estimator_field("anchor_match")
    anchor_threshold: float = estimator_field("anchor_threshold")

    # --- policy and update
    policy: str = _f("text", "policy class: 'text' (bag-of-words MLP, generalises across layouts) or 'tabular' (one logit per observation-action pair)", choices=POLICIES)
    hidden: int = _f(64, "hidden width of the text policy and critic")
    lr: float = _f(1e-3, "Adam learning rate of the policy")
    update_epochs: int = _f(4, "passes over each iteration's rollouts (PPO epochs)")
    minibatches: int = _f(2, "minibatches per epoch")
    clip_eps: float = _f(0.2, "PPO clip range ε")
    entropy_coef: float = _f(0.01, "entropy bonus coefficient")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)")
    ratio_level: str = _f("action", "importance ratio per 'action' or per 'token' (identical for one-token toy actions)", choices=("action", "token"))
    value_lr: float = _f(1e-2, "PPO: Adam learning rate of the learned critic")
    value_epochs: int = _f(4, "PPO: critic regression passes per iteration")

    # --- evaluation, logging, checkpoints
    eval_every: int = _f(20, "evaluate on held-out task seeds every k iterations (and at the end); 0 disables")
    eval_episodes: int = _f(50, "number of held-out task seeds per evaluation (the environment's EVAL_SEEDS)")
    eval_greedy: bool = _f(True, "evaluate the greedy (arg-max) policy instead of sampling")
    out_dir: str = _f("", "run directory for metrics.jsonl/csv and checkpoints; '' = runs/<env>-<algo>-seed<seed>")
    checkpoint_every: int = _f(10, "save a checkpoint every k iterations (and at the end); 0 only at the end")
    resume: bool = _f(False, "continue from the checkpoint in out_dir if one exists")
    progress: bool = _f(True, "show a progress bar")
    threads: int = _f(1, "torch CPU threads (1 is fastest for these small models and keeps runs deterministic)")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("iterations", "tasks_per_iter", "group_size", "update_epochs", "minibatches", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("gamma", "lam", "anchor_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {getattr(self, name)}")
        if self.max_steps < 0 or self.n_train_tasks < 0 or self.env_step_budget < 0 or self.eval_every < 0 or self.eval_episodes < 0:
            raise ValueError("max_steps, n_train_tasks, env_step_budget, eval_every and eval_episodes must be >= 0")
        if isinstance(self.env_kwargs, str):
            self.env_kwargs = json.loads(self.env_kwargs) if self.env_kwargs else {}
        if not isinstance(self.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a dict (JSON object); got {self.env_kwargs!r}")

    def run_dir(self) -> str:
        if self.out_dir:
            return self.out_dir
        name = self.env.split("/")[-1].replace("-v0", "")
        return f"runs/{name}-{self.algo}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()) -> dict[str, tuple]:
    """``{field: (saved, current)}`` for every saved field, except ``ignore``, whose value differs now
    (a field the current configuration lacks counts as ``None``); empty when a run may resume."""
    ignore = set(ignore)
    return {k: (v, current.get(k)) for k, v in saved.items() if k not in ignore and v != current.get(k)}


# ---------------------------------------------------------------------- CLI generation
def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--field-name`` option per dataclass field, with its type, default, choices and help."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "") + " (default: %(default)s)"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif kind is dict:
            parser.add_argument(flag, type=json.loads, default=default, metavar="JSON", help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, choices=f.metadata.get("choices"), help=help_text)


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
