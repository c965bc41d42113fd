"""The one typed configuration of a training run; the command line is generated from it.

Every field carries its documentation in ``metadata["help"]`` and its constraints (``choices``,
bounds ``ge``/``gt``/``le``/``lt``, a ``check`` function; float values must be finite) beside it,
in the field helper :func:`_f`. That one table is read twice: by :func:`validate` in each config's
``__post_init__`` (a :class:`ConfigError`, a ``ValueError`` naming the field) and by
:func:`add_dataclass_arguments`, whose argparse types refuse a bad value at parse time
(``error: argument --lr: lr must be > 0; got -1.0``, exit status 2). ``python -m gagpo train --help``
prints exactly these texts and defaults, and notebooks build the same dataclass with overrides::

    cfg = TrainConfig(algo="gigpo", iterations=20, group_size=4)
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

ALGOS = ("reinforce", "grpo", "rloo", "ppo", "gigpo", "gagpo")
POLICIES = ("text", "tabular")
NORMS = ("mean_std", "mean", "none")
ANCHOR_MATCHES = ("exact", "near")

#: Short names accepted wherever an environment id is (``--env alfworld``).
ENV_ALIASES = {"alfworld": "gagpo/ALFWorld-v0", "keydoor": "toy_envs/KeyDoor-v0", "household": "toy_envs/MiniHousehold-v0"}

#: keywords that ``gymnasium.make`` takes itself (the others go to the environment's constructor)
GYM_MAKE_KEYWORDS = ("max_episode_steps", "autoreset", "apply_api_compatibility", "disable_env_checker", "render_mode")


class ConfigError(ValueError):
    """A configuration value that is not allowed; ``field`` names the dataclass field (``flag``: its
    command-line option)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


def _f(default: Any, help: str, choices: tuple | None = None, *, ge: float | None = None,  # noqa: A002 - argparse's name
       gt: float | None = None, le: float | None = None, lt: float | None = None,
       check: Callable[[Any], None] | None = None, **kw) -> Any:
    """A dataclass field with its help text and its constraints: ``choices``; the bounds ``ge`` (>=),
    ``gt`` (>), ``le`` (<=), ``lt`` (<); ``check``, a function that raises ``ValueError(reason)`` for a
    value it refuses. A float value must also be finite (no NaN, no inf)."""
    meta = {"help": help}
    for key, value in (("choices", choices), ("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("check", check)):
        if value is not None:
            meta[key] = value
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _bounds_text(meta: Mapping[str, Any]) -> str:
    lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"lie in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"be {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    return f"be {'<=' if hi[0] == ']' else '<'} {hi[1]}"


def field_problem(name: str, meta: Mapping[str, Any], value: Any) -> str | None:
    """What is wrong with ``value`` for the field ``name`` with metadata ``meta`` (a sentence naming the
    field), or ``None`` when the value is allowed."""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        return f"unknown {name} {value!r}; expected one of {list(choices)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number; got {value}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = all(("ge" not in meta or value >= meta["ge"], "gt" not in meta or value > meta["gt"],
                  "le" not in meta or value <= meta["le"], "lt" not in meta or value < meta["lt"]))
        if not ok:
            return f"{name} must {_bounds_text(meta)}; got {value}"
    if "check" in meta:
        try:
            meta["check"](value)
        except ValueError as exc:
            return f"{name}: {exc}"
    return None


def validate(cfg: Any) -> None:
    """Raise :class:`ConfigError` for the first field of dataclass ``cfg`` whose value breaks its constraints."""
    for f in dataclasses.fields(cfg):
        problem = field_problem(f.name, f.metadata, getattr(cfg, f.name))
        if problem:
            raise ConfigError(f.name, problem)


# ---------------------------------------------------------------------- environments
def env_creator(env_id: str) -> Callable[..., Any]:
    """The constructor registered for ``env_id`` (an alias of :data:`ENV_ALIASES` too); ``ValueError``
    naming the id, the registered ids and the aliases when there is none."""
    import gymnasium as gym

    from .envs.factory import ensure_registered

    env_id = ENV_ALIASES.get(env_id, env_id)
    try:
        ensure_registered(env_id)
    except ValueError as exc:
        if "could not import" in str(exc):
            raise
        known = sorted(k for k in gym.registry if k.startswith(("toy_envs/", "gagpo/")))
        raise ValueError(f"unknown environment {env_id!r}; expected a registered gymnasium id such as {known}, "
                         f"or an alias: {sorted(ENV_ALIASES)}") from None
    creator = gym.spec(env_id).entry_point
    return gym.envs.registration.load_env_creator(creator) if isinstance(creator, str) else creator


def env_keywords(env_id: str) -> set[str] | None:
    """The keywords that ``env_id``'s constructor takes (``None`` when it takes any: ``**kwargs``)."""
    creator = env_creator(env_id)
    try:
        params = inspect.signature(creator).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_env(env_id: str) -> None:
    """``ValueError`` unless ``env_id`` is a registered gymnasium id or an alias (:data:`ENV_ALIASES`)."""
    env_creator(env_id)


def parse_env_kwargs(value: Any) -> dict:
    """``env_kwargs`` as a dict: a JSON object string ('' = {}) or a dict; ``ValueError`` otherwise."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON object, e.g. '{{\"size\": 6}}'; got {value!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object (a dict), e.g. '{{\"size\": 6}}'; got {value!r}")
    return value


def check_env_options(cfg: Any) -> None:
    """Every keyword of ``cfg.env_kwargs`` is one that the constructor of ``cfg.env`` (or
    ``gymnasium.make``) takes; the values are checked by building the environment (the command line
    does, ``gagpo.__main__``)."""
    keywords = env_keywords(cfg.env)
    if keywords is not None:
        unknown = sorted(set(cfg.env_kwargs) - keywords - set(GYM_MAKE_KEYWORDS))
        if unknown:
            raise ConfigError("env_kwargs", f"env_kwargs: {cfg.env} takes no keyword {unknown}; its keywords are {sorted(keywords)}")


def check_eval_episodes(cfg: Any) -> None:
    """``eval_episodes`` may not exceed the number of the environment's held-out task seeds
    (its class attribute ``EVAL_SEEDS``, when it has one that does not depend on the instance)."""
    seeds = getattr(env_creator(cfg.env), "EVAL_SEEDS", None)
    if hasattr(seeds, "__len__") and cfg.eval_episodes > len(seeds):
        raise ConfigError("eval_episodes", f"eval_episodes {cfg.eval_episodes} is more than the {len(seeds)} held-out task "
                                           f"seeds of {cfg.env} (its EVAL_SEEDS): use at most {len(seeds)}")


def check_run_options(cfg: Any) -> None:
    """``resume`` (continue the run in ``out_dir``) and ``overwrite`` (replace it) exclude each other."""
    if cfg.resume and cfg.overwrite:
        raise ConfigError("overwrite", "overwrite and resume exclude each other: --resume continues the run in the "
                                       "directory, --overwrite deletes it and starts again")


#: The advantage estimator's settings, shared by :class:`TrainConfig` and
#: :class:`gagpo.llm.LMTrainConfig` (same names, defaults, help and constraints): name -> keyword
#: arguments of :func:`_f`.
ESTIMATOR_SETTINGS: dict[str, dict[str, Any]] = {
    "gamma": dict(default=0.95, help="discount factor γ", ge=0, le=1),
    "lam": dict(default=0.95, help="GAE λ (gagpo, ppo)", ge=0, le=1),
    "norm": dict(default="mean_std", help="advantage normalisation within each rollout group (grpo, gigpo, gagpo); ppo normalises over the batch", choices=NORMS),
    "step_weight": dict(default=1.0, help="GiGPO: weight ω of the step-level (anchor-state) term", ge=0),
    "reinforce_baseline": dict(default="step_mean", help="REINFORCE baseline: none, mean or step_mean", choices=("none", "mean", "step_mean")),
    "adv_eps": dict(default=1e-6, help="ε added to standard deviations in normalisations", gt=0),
    "anchor_match": dict(default="exact", help="anchor states (gigpo, gagpo): 'exact' observation text, or 'near' duplicates merged within a group (gagpo.anchors)", choices=ANCHOR_MATCHES),
    "anchor_threshold": dict(default=0.8, help="anchor_match 'near': merge observations whose word-bigram Jaccard similarity to a more-visited one is >= this", ge=0, le=1),
}


def estimator_field(name: str) -> Any:
    """The dataclass field of estimator setting ``name`` (:data:`ESTIMATOR_SETTINGS`)."""
    return _f(**ESTIMATOR_SETTINGS[name])


@dataclass
class TrainConfig:
    """Configuration of one training run (one algorithm, one seed). Field docs are the CLI's help."""

    #: fields that may differ between a checkpoint (or a finished run) and the run that resumes or reuses it
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "iterations", "env_step_budget", "resume", "overwrite", "progress", "out_dir", "checkpoint_every", "eval_every",
        "max_nonfinite_steps")

    # --- what to train on
    env: str = _f("toy_envs/KeyDoor-v0", "gymnasium id of a text environment (toy_envs/OpenGrid-v0, toy_envs/KeyDoor-v0, toy_envs/MiniHousehold-v0) or an alias (keydoor, household)", check=check_env)
    env_kwargs: dict = _f({}, "extra keyword arguments for gymnasium.make, as JSON, e.g. '{\"size\": 6}'", check=parse_env_kwargs)
    max_steps: int = _f(0, "step limit per episode; 0 keeps the environment's registered limit", ge=0)
    algo: str = _f("gagpo", "advantage estimator", choices=ALGOS)
    seed: int = _f(0, "seed of the run: initial weights, task sampling and action sampling", ge=0)

    # --- rollouts
    iterations: int = _f(300, "number of training iterations (rollout -> advantages -> update)", ge=1)
    env_step_budget: int = _f(0, "stop once this many environment steps have been taken (checked after each iteration); 0 = no limit", ge=0)
    tasks_per_iter: int = _f(8, "rollout groups per iteration (distinct task seeds)", ge=1)
    group_size: int = _f(8, "trajectories per group, all started from the same task seed (G)", ge=1)
    n_train_tasks: int = _f(0, "size of a fixed pool of training task seeds 0..n-1; 0 draws fresh task seeds (< 10000) every iteration", ge=0)

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
    hidden: int = _f(64, "hidden width of the text policy and critic", ge=1)
    lr: float = _f(1e-3, "Adam learning rate of the policy", gt=0)
    update_epochs: int = _f(4, "passes over each iteration's rollouts (PPO epochs)", ge=1)
    minibatches: int = _f(2, "minibatches per epoch", ge=1)
    clip_eps: float = _f(0.2, "PPO clip range ε", ge=0)
    entropy_coef: float = _f(0.01, "entropy bonus coefficient", ge=0)
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)", ge=0)
    max_nonfinite_steps: int = _f(3, "skip an optimizer step whose log-probs, loss or gradients hold a NaN/inf (no weight change, counted in the nonfinite_steps metric); stop the run after this many skipped steps in a row", ge=1)
    ratio_level: str = _f("action", "importance ratio per 'action' or per 'token' (identical for one-token toy actions)", choices=("action", "token"))
    value_lr: float = _f(1e-2, "PPO: Adam learning rate of the learned critic", gt=0)
    value_epochs: int = _f(4, "PPO: critic regression passes per iteration", ge=1)

    # --- evaluation, logging, checkpoints
    eval_every: int = _f(20, "evaluate on held-out task seeds every k iterations (and at the end); 0 disables", ge=0)
    eval_episodes: int = _f(50, "number of held-out task seeds per evaluation: the first n of the environment's EVAL_SEEDS (at most their number, 100 for the toy environments)", ge=0)
    eval_greedy: bool = _f(True, "evaluate the greedy (arg-max) policy instead of sampling")
    out_dir: str = _f("", "run directory for metrics.jsonl/csv and checkpoints; '' = runs/<env>-<algo>-seed<seed>")
    checkpoint_every: int = _f(10, "save a checkpoint every k iterations (and at the end); 0 only at the end", ge=0)
    resume: bool = _f(False, "continue from the checkpoint in out_dir if one exists")
    overwrite: bool = _f(False, "replace the run in out_dir (its metrics and checkpoints are deleted); without it, and without --resume, a directory that holds a run is refused")
    progress: bool = _f(True, "show a progress bar")
    threads: int = _f(1, "torch CPU threads (1 is fastest for these small models and keeps runs deterministic)", ge=1)

    def __post_init__(self) -> None:
        self.env = ENV_ALIASES.get(self.env, self.env)
        if isinstance(self.env_kwargs, str):
            try:
                self.env_kwargs = parse_env_kwargs(self.env_kwargs)
            except ValueError as exc:
                raise ConfigError("env_kwargs", f"env_kwargs {exc}") from None
        validate(self)  # the constraints written beside each field
        check_run_options(self)
        check_env_options(self)
        check_eval_episodes(self)

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
def _arg_type(name: str, kind: type, meta: Mapping[str, Any]) -> Callable[[str], Any]:
    """An argparse ``type``: converts the text with ``kind``, then applies the field's constraints
    (:func:`field_problem`), so that a bad value stops the parse: ``error: argument --lr: ...``."""
    def parse(text: str) -> Any:
        try:
            value = parse_env_kwargs(text) if kind is dict else kind(text)
        except ValueError as exc:
            if kind is dict:
                raise argparse.ArgumentTypeError(f"{name} {exc}") from None
            raise argparse.ArgumentTypeError(f"{name} must be {'an integer' if kind is int else 'a ' + kind.__name__}; got {text!r}") from None
        problem = field_problem(name, {k: v for k, v in meta.items() if k != "choices"}, value)  # argparse checks choices
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__
    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--field-name`` option per dataclass field, with its type, default, choices and help;
    its type function refuses values that break the field's constraints (see :func:`_f`)."""
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
            parser.add_argument(flag, type=_arg_type(f.name, dict, f.metadata), default=default, metavar="JSON", help=help_text)
        else:
            parser.add_argument(flag, type=_arg_type(f.name, kind, f.metadata), default=default,
                                choices=f.metadata.get("choices"), help=help_text)


def dataclass_from_args(cls: type, args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> Any:
    """``cls`` built from the parsed ``args``. With ``parser``, a :class:`ConfigError` (a cross-field
    check of ``__post_init__``) ends the program as argparse does: ``error: argument --flag: ...``, exit 2."""
    try:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
    except ConfigError as exc:
        if parser is None:
            raise
        parser.error(f"argument {exc.flag}: {exc}")
