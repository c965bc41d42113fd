"""The typed configurations of a training run; the command line is generated from them.

Every field carries its documentation in ``metadata["help"]`` and its constraints (``choices``,
bounds ``ge``/``gt``/``le``/``lt``, a ``check`` function; float values must be finite) beside it,
in the field helper :func:`setting`. That one table is read twice: by :func:`validate` in each config's
``__post_init__`` (a :class:`ConfigError`, a ``ValueError`` naming the field) and by
:func:`add_dataclass_arguments`, whose argparse types refuse a bad value at parse time
(``error: argument --lr: lr must be > 0; got -1.0``, exit status 2). ``python -m gagpo train --help``
prints exactly these texts and defaults, and notebooks build the same dataclass with overrides::

    cfg = TrainConfig(algo="gigpo", iterations=20, group_size=4)

**One config core.** The toy trainer's :class:`TrainConfig` and the language-model trainer's
:class:`gagpo.llm.train.LMTrainConfig` share most settings. Each shared setting is defined once, as a
field of :class:`EstimatorSettings` (the advantage estimator: what :func:`gagpo.registry.compute_advantages`
reads by name) or of :class:`RunSettings` (seeds, rollouts, the update, evaluation, the run directory),
and a configuration takes it with :func:`shared`: the same name, type, constraints and (unless it says
otherwise) default and help. A configuration may give a shared setting its own default or help text
(``shared("iterations", 150, "training iterations ...")``: the language-model runs are longer per
iteration), never its own constraints. Both configurations derive from :class:`BaseConfig`, whose
``__post_init__`` is the one validation path (environment alias, ``env_kwargs`` parsing, the field
constraints, ``resume``/``overwrite``, the environment's keywords, then the configuration's own
:meth:`BaseConfig.check`). The configurations stay flat — ``cfg.gamma``, ``--gamma`` — and list their
fields in their own order (the order of ``--help``, of ``to_dict()`` and of ``config.json``), which is
why they take the shared fields one by one instead of inheriting them (a dataclass puts inherited
fields first).
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

from .registry import estimator_names

#: The built-in advantage estimators (a snapshot at import); an ``algo`` may be any name of the
#: estimator registry (:func:`gagpo.registry.estimator_names`), including ones registered later.
ALGOS = estimator_names()
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


def setting(default: Any, help: str, choices: tuple | Callable[[], Iterable] | None = None, *,  # noqa: A002 - argparse's name
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            check: Callable[[Any], None] | None = None, **kw) -> Any:
    """A dataclass field with its help text and its constraints: ``choices`` (a tuple, or a function
    returning them, called whenever a value is checked: e.g. the estimator registry's names, which
    grow when an estimator is registered); the bounds ``ge`` (>=), ``gt`` (>), ``le`` (<=), ``lt`` (<);
    ``check``, a function that raises ``ValueError(reason)`` for a value it refuses. A float value
    must also be finite (no NaN, no inf)."""
    meta = {"help": help}
    for key, value in (("choices", choices), ("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("check", check)):
        if value is not None:
            meta[key] = value
    return _field(default, meta, **kw)


def _field(default: Any, meta: Mapping[str, Any], **kw) -> Any:
    """A dataclass field with ``default`` (a dict or list default is copied for every instance) and ``meta``."""
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


def field_choices(meta: Mapping[str, Any]) -> tuple | None:
    """The allowed values of a field with metadata ``meta`` now (``None``: any value)."""
    choices = meta.get("choices")
    return tuple(choices()) if callable(choices) else choices


def field_problem(name: str, meta: Mapping[str, Any], value: Any) -> str | None:
    """What is wrong with ``value`` for the field ``name`` with metadata ``meta`` (a sentence naming the
    field), or ``None`` when the value is allowed."""
    choices = field_choices(meta)
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


def check_data_parallel(cfg: Any) -> None:
    """In a data-parallel run (:mod:`gagpo.distributed`: launched on several processes), ``tasks_per_iter``
    — the number of rollout groups of an iteration, over every process — must split into whole groups
    per process. Nothing to check in one process, or for a configuration without ``tasks_per_iter``."""
    from .distributed import check_divisible  # numpy only at import

    if getattr(cfg, "tasks_per_iter", None) is not None:
        try:
            check_divisible(cfg.tasks_per_iter)
        except ValueError as exc:
            raise ConfigError("tasks_per_iter", str(exc)) from None


# ---------------------------------------------------------------------- the shared settings
@dataclass
class EstimatorSettings:
    """The advantage estimator and its settings: the fields that :func:`gagpo.registry.compute_advantages`
    reads from a configuration, by name. :class:`TrainConfig` and :class:`gagpo.llm.train.LMTrainConfig`
    carry every one of them (:func:`shared`); on its own, an ``EstimatorSettings`` is the smallest
    configuration that :func:`gagpo.registry.compute_advantages` and :func:`gagpo.trainer.critic_targets`
    accept (``EstimatorSettings(algo="gigpo", gamma=0.9)``), validated like the others."""

    algo: str = setting("gagpo", "advantage estimator: a name of the estimator registry (gagpo.registry)", choices=estimator_names)
    gamma: float = setting(0.95, "discount factor γ", ge=0, le=1)
    lam: float = setting(0.95, "GAE λ (gagpo, ppo)", ge=0, le=1)
    norm: str = setting("mean_std", "advantage normalisation within each rollout group (grpo, gigpo, gagpo); ppo normalises over the batch", choices=NORMS)
    step_weight: float = setting(1.0, "GiGPO: weight ω of the step-level (anchor-state) term", ge=0)
    reinforce_baseline: str = setting("step_mean", "REINFORCE baseline: none, mean or step_mean", choices=("none", "mean", "step_mean"))
    adv_eps: float = setting(1e-6, "ε added to standard deviations in normalisations", gt=0)
    anchor_match: str = setting("exact", "anchor states (gigpo, gagpo): 'exact' observation text, or 'near' duplicates merged within a group (gagpo.anchors)", choices=ANCHOR_MATCHES)
    anchor_threshold: float = setting(0.8, "anchor_match 'near': merge observations whose word-bigram Jaccard similarity to a more-visited one is >= this", ge=0, le=1)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class RunSettings:
    """The settings that every training run has, toy policy or language model: the environment, the
    seed, the rollouts, the PPO-clip update, evaluation and the run directory. Their defaults and help
    are the toy trainer's (:class:`TrainConfig`); :class:`gagpo.llm.train.LMTrainConfig` gives some of
    them its own default or help (:func:`shared`). A table of definitions, read by :func:`shared`; the
    configurations are built from it, not from this class."""

    # --- what to train on
    env: str = setting("toy_envs/KeyDoor-v0", "gymnasium id of a text environment (toy_envs/OpenGrid-v0, toy_envs/KeyDoor-v0, toy_envs/MiniHousehold-v0) or an alias (keydoor, household)", check=check_env)
    env_kwargs: dict = setting({}, "extra keyword arguments for gymnasium.make, as JSON, e.g. '{\"size\": 6}'", check=parse_env_kwargs)
    max_steps: int = setting(0, "step limit per episode; 0 keeps the environment's registered limit", ge=0)
    seed: int = setting(0, "seed of the run: initial weights, task sampling and action sampling", ge=0)

    # --- rollouts
    iterations: int = setting(300, "number of training iterations (rollout -> advantages -> update)", ge=1)
    tasks_per_iter: int = setting(8, "rollout groups per iteration (distinct task seeds)", ge=1)
    group_size: int = setting(8, "trajectories per group, all started from the same task seed (G)", ge=1)
    n_train_tasks: int = setting(0, "size of a fixed pool of training task seeds 0..n-1; 0 draws fresh task seeds (< 10000) every iteration", ge=0)

    # --- update
    lr: float = setting(1e-3, "Adam learning rate of the policy", gt=0)
    update_epochs: int = setting(4, "passes over each iteration's rollouts (PPO epochs)", ge=1)
    clip_eps: float = setting(0.2, "PPO clip range ε", ge=0)
    entropy_coef: float = setting(0.01, "entropy bonus coefficient", ge=0)
    kl_coef: float = setting(0.0, "weight β of the k3 KL penalty to a frozen reference policy (a copy of the initial policy, or the one given to Trainer(cfg, reference=...)): β·min(k3, 10) on each sampled action's log-probabilities (gagpo.losses.kl_k3), logged as kl_ref; 0 keeps no reference unless one is given", ge=0)
    ratio_level: str = setting("action", "importance ratio per 'action' or per 'token' (identical for one-token toy actions)", choices=("action", "token"))
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0 disables)", ge=0)
    max_nonfinite_steps: int = setting(3, "skip an optimizer step whose log-probs, loss or gradients hold a NaN/inf (no weight change, counted in the nonfinite_steps metric); stop the run after this many skipped steps in a row", ge=1)
    value_lr: float = setting(1e-2, "PPO: Adam learning rate of the learned critic", gt=0)

    # --- evaluation, logging, checkpoints
    eval_every: int = setting(20, "evaluate on held-out task seeds every k iterations (and at the end); 0 disables", ge=0)
    eval_episodes: int = setting(50, "number of held-out task seeds per evaluation: the first n of the environment's EVAL_SEEDS (at most their number, 100 for the toy environments)", ge=0)
    eval_greedy: bool = setting(True, "evaluate the greedy (arg-max) policy instead of sampling")
    out_dir: str = setting("", "run directory for metrics.jsonl/csv and checkpoints; '' = runs/<env>-<algo>-seed<seed>")
    checkpoint_every: int = setting(10, "save a checkpoint every k iterations (and at the end); 0 only at the end", ge=0)
    resume: bool = setting(False, "continue from the checkpoint in out_dir if one exists")
    overwrite: bool = setting(False, "replace the run in out_dir (its metrics and checkpoints are deleted); without it, and without --resume, a directory that holds a run is refused")
    progress: bool = setting(True, "show a progress bar")
    threads: int = setting(1, "torch CPU threads; 0 keeps torch's default (1 is fastest for these small models and keeps runs deterministic)", ge=0)


#: The shared settings by name: every field of :class:`EstimatorSettings` and :class:`RunSettings`.
SHARED_FIELDS: dict[str, dataclasses.Field] = {f.name: f for cls in (EstimatorSettings, RunSettings) for f in dataclasses.fields(cls)}

#: The advantage estimator's settings but ``algo`` (fields of :class:`EstimatorSettings`): name ->
#: ``{"default": ..., "help": ..., constraints}``; :func:`gagpo.registry.resolve_settings` falls back on
#: these defaults.
ESTIMATOR_SETTINGS: dict[str, dict[str, Any]] = {
    f.name: {"default": f.default, **f.metadata} for f in dataclasses.fields(EstimatorSettings) if f.name != "algo"}


def copy_field(base: dataclasses.Field, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:  # noqa: A002 - as in setting
    """The dataclass field ``base`` as a field of another configuration: the same constraints (choices,
    bounds, check); ``default`` and ``help``, when given, replace ``base``'s for that configuration only."""
    meta = dict(base.metadata)
    if help is not None:
        meta["help"] = help
    if default is dataclasses.MISSING:
        default = base.default if base.default is not dataclasses.MISSING else base.default_factory()
    return _field(default, meta)


def shared(name: str, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:  # noqa: A002 - as in setting
    """The shared setting ``name`` (a field of :class:`EstimatorSettings` or :class:`RunSettings`) as a
    field of a configuration (:func:`copy_field`): the same constraints; ``default`` and ``help``, when
    given, replace the shared ones for this configuration only."""
    try:
        base = SHARED_FIELDS[name]
    except KeyError:
        raise ValueError(f"no shared setting {name!r}; the shared settings are {sorted(SHARED_FIELDS)}") from None
    return copy_field(base, default, help)


class BaseConfig:
    """What every run configuration does (:class:`TrainConfig`, :class:`gagpo.llm.train.LMTrainConfig`):
    one validation path, run by the dataclass's ``__post_init__``, and ``to_dict``.

    A subclass is a dataclass with the fields ``env``, ``env_kwargs``, ``resume``, ``overwrite`` and
    ``eval_episodes`` (:class:`RunSettings`) among its own; it adds its cross-field checks by overriding
    :meth:`check`, and lists in ``RESUMABLE`` the fields that may change when a run is resumed."""

    #: fields that may differ between a checkpoint (or a finished run) and the run that resumes or reuses it
    RESUMABLE: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        """The one validation path: resolve an environment alias, parse ``env_kwargs`` given as JSON
        text, check every field's constraints (:func:`validate`), ``resume`` against ``overwrite``
        (:func:`check_run_options`), ``tasks_per_iter`` against the number of processes of a data-parallel
        run (:func:`check_data_parallel`), the environment's keywords (:func:`check_env_options`), then
        :meth:`check`. Raises :class:`ConfigError` naming the field."""
        self.env = ENV_ALIASES.get(self.env, self.env)
        if isinstance(self.env_kwargs, str):
            try:
                self.env_kwargs = parse_env_kwargs(self.env_kwargs)
            except ValueError as exc:
                raise ConfigError("env_kwargs", f"env_kwargs {exc}") from None
        validate(self)  # the constraints written beside each field
        check_run_options(self)
        check_data_parallel(self)
        check_env_options(self)
        self.check()

    def check(self) -> None:
        """Cross-field checks of this configuration, after the shared ones; here: ``eval_episodes``
        against the environment's held-out seeds (:func:`check_eval_episodes`)."""
        check_eval_episodes(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- the toy trainer's configuration
@dataclass
class TrainConfig(BaseConfig):
    """Configuration of one training run (one algorithm, one seed). Field docs are the CLI's help.

    The settings shared with :class:`gagpo.llm.train.LMTrainConfig` (``shared(...)``) are those of
    :class:`EstimatorSettings` and :class:`RunSettings`, with their defaults; the others are the toy
    trainer's own."""

    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "iterations", "env_step_budget", "resume", "overwrite", "progress", "out_dir", "checkpoint_every", "eval_every",
        "max_nonfinite_steps")

    # --- what to train on
    env: str = shared("env")
    env_kwargs: dict = shared("env_kwargs")
    max_steps: int = shared("max_steps")
    algo: str = shared("algo")
    seed: int = shared("seed")

    # --- rollouts
    iterations: int = shared("iterations")
    env_step_budget: int = setting(0, "stop once this many environment steps have been taken (checked after each iteration); 0 = no limit", ge=0)
    tasks_per_iter: int = shared("tasks_per_iter")
    group_size: int = shared("group_size")
    n_train_tasks: int = shared("n_train_tasks")

    # --- estimator (EstimatorSettings, shared with gagpo.llm.LMTrainConfig)
    gamma: float = shared("gamma")
    lam: float = shared("lam")
    norm: str = shared("norm")
    step_weight: float = shared("step_weight")
    reinforce_baseline: str = shared("reinforce_baseline")
    adv_eps: float = shared("adv_eps")
    anchor_match: str = shared("anchor_match")
    anchor_threshold: float = shared("anchor_threshold")

    # --- policy and update
    policy: str = setting("text", "policy class: 'text' (bag-of-words MLP, generalises across layouts) or 'tabular' (one logit per observation-action pair)", choices=POLICIES)
    hidden: int = setting(64, "hidden width of the text policy and critic", ge=1)
    lr: float = shared("lr")
    update_epochs: int = shared("update_epochs")
    minibatches: int = setting(2, "minibatches per epoch", ge=1)
    clip_eps: float = shared("clip_eps")
    entropy_coef: float = shared("entropy_coef")
    kl_coef: float = shared("kl_coef")
    max_grad_norm: float = shared("max_grad_norm")
    max_nonfinite_steps: int = shared("max_nonfinite_steps")
    ratio_level: str = shared("ratio_level")
    value_lr: float = shared("value_lr")
    value_epochs: int = setting(4, "PPO: critic regression passes per iteration", ge=1)

    # --- evaluation, logging, checkpoints
    eval_every: int = shared("eval_every")
    eval_episodes: int = shared("eval_episodes")
    eval_greedy: bool = shared("eval_greedy")
    eval_sampled: bool = setting(False, "also play the held-out tasks with sampled actions at every evaluation (metric eval_success_sampled, beside the greedy eval_success); its own generator, seeded with the run's seed, so training is unchanged")
    out_dir: str = shared("out_dir")
    checkpoint_every: int = shared("checkpoint_every")
    resume: bool = shared("resume")
    overwrite: bool = shared("overwrite")
    progress: bool = shared("progress")
    threads: int = shared("threads")

    def run_dir(self) -> str:
        if self.out_dir:
            return self.out_dir
        name = self.env.split("/")[-1].replace("-v0", "")
        return f"runs/{name}-{self.algo}-seed{self.seed}"


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
                                choices=field_choices(f.metadata), help=help_text)


def dataclass_from_args(cls: type, args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> Any:
    """``cls`` built from the parsed ``args``. With ``parser``, a :class:`ConfigError` (a cross-field
    check of ``__post_init__``) ends the program as argparse does: ``error: argument --flag: ...``, exit 2."""
    try:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
    except ConfigError as exc:
        if parser is None:
            raise
        parser.error(f"argument {exc.flag}: {exc}")
