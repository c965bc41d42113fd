r"""The estimator registry: advantage estimators by name, and one :func:`compute_advantages` for all of them.

An estimator is a function of a :class:`~gagpo.batch.StepBatch` and keyword *settings* that returns
one advantage per row, shape ``(N,)``. Registering it under a name makes it an ``algo`` of both
trainers, of the command line and of the plots — no library file to touch::

    import gagpo

    @gagpo.register_estimator("mc_mean")
    def mc_mean(batch, gamma):
        '''Return-to-go minus its batch mean.'''
        returns = gagpo.discounted_returns(batch, gamma)
        return returns - returns.mean()

    gagpo.compute_advantages("mc_mean", batch, gamma=0.9)            # numpy in, numpy out
    gagpo.trainer.train(TrainConfig(algo="mc_mean", ...))            # the toy trainer
    gagpo.llm.train_lm(LMTrainConfig(algo="mc_mean", model="tiny"))  # the language-model trainer

Settings are read **by parameter name**: each parameter after the batch is looked up, in order, among
the keyword settings given to :func:`compute_advantages`, then as an attribute of its ``config`` (the
trainers pass their :class:`~gagpo.config.TrainConfig` or :class:`~gagpo.llm.train.LMTrainConfig`,
whose estimator fields are ``gamma``, ``lam``, ``norm``, ``step_weight``, ``reinforce_baseline``,
``adv_eps``, ...), then the function's own default, then the default of the configuration field of
that name (:data:`gagpo.config.ESTIMATOR_SETTINGS`); a setting found nowhere is an error.

Two flags change what the trainers do around an estimator:

* ``uses_anchors=True`` — it groups rows by anchor state (``obs_key``): with the setting
  ``anchor_match="near"`` it sees the batch with near-duplicate observations merged
  (:func:`gagpo.anchors.near_duplicate_batch`, threshold ``anchor_threshold``);
* ``needs_critic=True`` — it needs a learned critic: its parameters ``values`` and ``next_values``
  receive :math:`V(s_t)` and :math:`V(s'_t)` per row, which the trainers compute (the toy trainer's
  value network, the language model's value head) and regress onto the λ-returns
  :func:`gagpo.advantages.lambda_returns` (γ and λ of the configuration);
* ``group_local=True`` — every statistic it uses lies within one rollout group (GRPO, RLOO, GiGPO,
  GAGPO): the advantages of a group's rows depend on that group's rows only. A data-parallel run
  (:mod:`gagpo.distributed`) then computes it on each process's own groups; an estimator without the
  flag (PPO's normalisation over the batch, REINFORCE's ``mean`` and ``step_mean`` baselines, and any
  estimator registered without saying) is computed on the union of every process's rows, which is
  always exact and costs one gathering of the batch.

The built-in estimators are registered at the end of this module, each a thin adapter from the
configuration's names to a pure function of :mod:`gagpo.advantages`. Importing this module loads
numpy only (no torch, no gymnasium).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import advantages as A
from .batch import StepBatch

#: parameter names through which a critic estimator receives the critic's values
CRITIC_INPUTS = ("values", "next_values")
#: settings that :func:`compute_advantages` reads itself (anchor matching), whatever the estimator
BATCH_SETTINGS = ("anchor_match", "anchor_threshold")


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: its function and how the trainers must treat it."""

    name: str
    fn: Callable[..., np.ndarray]
    #: groups rows by anchor state: ``anchor_match="near"`` merges near-duplicate observations first
    uses_anchors: bool = False
    #: needs a learned critic: the trainers supply ``values`` and ``next_values``
    needs_critic: bool = False
    #: a group's advantages depend on that rollout group's rows only (a data-parallel run computes it per process)
    group_local: bool = False
    #: line colour in the book's figures (``None``: one of matplotlib's default cycle, by registration order)
    color: str | None = None

    @property
    def settings(self) -> tuple[str, ...]:
        """The names of the settings it reads (its parameters after the batch, critic inputs excluded)."""
        return tuple(p for p in _parameters(self.fn)[1:] if p not in CRITIC_INPUTS)

    @property
    def description(self) -> str:
        """The first line of its docstring."""
        return (inspect.getdoc(self.fn) or "").split("\n", 1)[0]


_REGISTRY: dict[str, Estimator] = {}


def _parameters(fn: Callable) -> list[str]:
    return list(inspect.signature(fn).parameters)


def register_estimator(name: str, *, uses_anchors: bool = False, needs_critic: bool = False, group_local: bool = False,
                       color: str | None = None, replace: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(batch, **settings) -> advantages (N,)`` as the estimator ``name``.

    ``fn``'s first parameter is the :class:`StepBatch`; every other parameter is a setting, read by
    name (see the module docstring), so it must be nameable: no ``*args`` or ``**kwargs``. With
    ``needs_critic=True`` it must take ``values`` and ``next_values``. ``group_local=True`` declares that a
    group's advantages depend on that group's rows only (see the module docstring). A name already registered is
    refused unless ``replace=True`` (e.g. when a notebook cell is run again). Returns ``fn`` unchanged.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"an estimator name must be a non-empty string without surrounding spaces; got {name!r}")

    def decorate(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters.values()
        if not params or next(iter(params)).kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise ValueError(f"estimator {name!r}: the first parameter of {fn.__name__} must be the StepBatch")
        odd = [p.name for p in params if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        if odd:
            raise ValueError(f"estimator {name!r}: settings are read by name, so {fn.__name__} may not take *{odd[0]}")
        missing = [c for c in CRITIC_INPUTS if c not in _parameters(fn)]
        if needs_critic and missing:
            raise ValueError(f"estimator {name!r} needs a critic: {fn.__name__} must take the parameters {list(CRITIC_INPUTS)}")
        if name in _REGISTRY and not replace:
            raise ValueError(f"an estimator {name!r} is already registered ({_REGISTRY[name].fn.__qualname__}); "
                             f"pass replace=True to replace it")
        _REGISTRY[name] = Estimator(name, fn, bool(uses_anchors), bool(needs_critic), bool(group_local), color)
        return fn

    return decorate


def unregister_estimator(name: str) -> None:
    """Remove the estimator ``name`` (``ValueError`` if there is none), e.g. after a test or a notebook's experiment."""
    del _REGISTRY[get_estimator(name).name]


def get_estimator(name: str) -> Estimator:
    """The registered estimator ``name``; ``ValueError`` naming the registered ones if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown estimator {name!r}; expected one of {list(_REGISTRY)}") from None


def estimator_names() -> tuple[str, ...]:
    """The registered estimators' names, in registration order (the built-in ones first)."""
    return tuple(_REGISTRY)


def resolve_settings(name: str, config: Any = None, **settings: Any) -> dict[str, Any]:
    """The keyword arguments that estimator ``name`` is called with: each of its settings from
    ``settings``, else ``config``'s attribute, else the function's default, else the default of
    the configuration field of that name (:data:`gagpo.config.ESTIMATOR_SETTINGS`).

    A keyword in ``settings`` that the estimator does not read (besides :data:`BATCH_SETTINGS` and,
    for a critic estimator, :data:`CRITIC_INPUTS`) is a ``ValueError``, as is a setting found nowhere.
    """
    from .config import ESTIMATOR_SETTINGS  # stdlib only at import: no cycle, no torch

    est = get_estimator(name)
    wanted = est.settings + (CRITIC_INPUTS if est.needs_critic else ())
    unknown = sorted(set(settings) - set(wanted) - set(BATCH_SETTINGS))
    if unknown:
        raise ValueError(f"estimator {name!r} takes no setting {unknown}; its settings are {list(est.settings)}")
    if est.needs_critic and not all(c in settings for c in CRITIC_INPUTS):
        raise ValueError(f"estimator {name!r} needs a critic: pass values= and next_values= (V(s_t) and V(s'_t) per row)")
    params = inspect.signature(est.fn).parameters
    out = {}
    for p in wanted:
        if p in settings:
            out[p] = settings[p]
        elif config is not None and hasattr(config, p):
            out[p] = getattr(config, p)
        elif params[p].default is not inspect.Parameter.empty:
            continue  # the function's own default applies
        elif p in ESTIMATOR_SETTINGS:
            out[p] = ESTIMATOR_SETTINGS[p]["default"]
        else:
            raise ValueError(f"estimator {name!r} needs the setting {p!r}: pass {p}=... or a config with that field")
    return out


def _batch_setting(key: str, config: Any, settings: dict[str, Any]) -> Any:
    from .config import ESTIMATOR_SETTINGS

    if key in settings:
        return settings[key]
    return getattr(config, key) if config is not None and hasattr(config, key) else ESTIMATOR_SETTINGS[key]["default"]


def compute_advantages(name: str, batch: StepBatch, config: Any = None, **settings: Any) -> np.ndarray:
    """Per-row advantages of the registered estimator ``name``, float64 of shape ``(N,)``.

    ``config`` is any object whose attributes supply settings (a trainer's configuration);
    keyword ``settings`` override it (see :func:`resolve_settings`). For an estimator registered
    with ``uses_anchors=True`` and the setting ``anchor_match="near"``, the estimator sees
    :func:`gagpo.anchors.near_duplicate_batch` ``(batch, anchor_threshold)`` instead of ``batch``.
    """
    est = get_estimator(name)
    kwargs = resolve_settings(name, config, **settings)
    if est.uses_anchors:
        match = _batch_setting("anchor_match", config, settings)
        if match == "near":
            from .anchors import near_duplicate_batch

            batch = near_duplicate_batch(batch, _batch_setting("anchor_threshold", config, settings))
        elif match != "exact":
            raise ValueError(f"unknown anchor_match {match!r}; expected one of ['exact', 'near']")
    adv = np.asarray(est.fn(batch, **kwargs), dtype=np.float64)
    if adv.shape != (len(batch),):
        raise ValueError(f"estimator {name!r} returned shape {adv.shape}; expected one advantage per row, ({len(batch)},)")
    return adv


# ---------------------------------------------------------------------- the built-in estimators
# Each adapter's parameters are configuration field names; the mathematics is in gagpo.advantages.
@register_estimator("reinforce", color="#7f7f7f")
def reinforce(batch: StepBatch, gamma: float, reinforce_baseline: str) -> np.ndarray:
    """REINFORCE with reward-to-go (:func:`gagpo.advantages.reinforce_advantages`); ``reinforce_baseline``
    ``"none"`` (no baseline), ``"mean"`` or ``"step_mean"``."""
    return A.reinforce_advantages(batch, gamma, None if reinforce_baseline == "none" else reinforce_baseline)


@register_estimator("grpo", group_local=True, color="#1f77b4")
def grpo(batch: StepBatch, norm: str, adv_eps: float) -> np.ndarray:
    """GRPO: episode returns normalised within each rollout group (:func:`gagpo.advantages.grpo_advantages`)."""
    return A.grpo_advantages(batch, norm, adv_eps)


@register_estimator("rloo", group_local=True, color="#17becf")
def rloo(batch: StepBatch) -> np.ndarray:
    """RLOO: the episode return minus the mean of the group's other returns (:func:`gagpo.advantages.rloo_advantages`)."""
    return A.rloo_advantages(batch)


@register_estimator("ppo", needs_critic=True, color="#9467bd")
def ppo(batch: StepBatch, values: np.ndarray, next_values: np.ndarray, gamma: float, lam: float, norm: str,
        adv_eps: float) -> np.ndarray:
    """PPO: GAE over a learned critic (:func:`gagpo.advantages.gae_advantages`), normalised over the whole
    batch — classic PPO, not per rollout group."""
    adv = A.gae_advantages(batch, values, next_values, gamma, lam)
    return A.normalize_by_segment(adv, np.zeros(len(batch), dtype=np.int64), 1, norm, adv_eps)


@register_estimator("gigpo", uses_anchors=True, group_local=True, color="#ff7f0e")
def gigpo(batch: StepBatch, gamma: float, step_weight: float, norm: str, adv_eps: float) -> np.ndarray:
    """GiGPO: episode- plus step-level group-relative advantages (:func:`gagpo.advantages.gigpo_advantages`).

    GiGPO has no unnormalised form: ``norm="none"`` is read as ``"mean"`` (both terms centred, not
    scaled), so that one ``--norm none`` can be passed to every estimator."""
    return A.gigpo_advantages(batch, gamma, step_weight, "mean" if norm == "none" else norm, adv_eps)


@register_estimator("gagpo", uses_anchors=True, group_local=True, color="#d62728")
def gagpo(batch: StepBatch, gamma: float, lam: float, norm: str, adv_eps: float) -> np.ndarray:
    """GAGPO: GAE over the grouped value proxy, normalised per rollout group (:func:`gagpo.advantages.gagpo_advantages`)."""
    return A.gagpo_advantages(batch, gamma, lam, norm, adv_eps)


__all__ = ["Estimator", "register_estimator", "unregister_estimator", "get_estimator", "estimator_names",
           "resolve_settings", "compute_advantages", "CRITIC_INPUTS", "BATCH_SETTINGS"]
