r"""GAGPO and GiGPO with verl-agent's calling convention: per-row arrays in, token-level advantages out.

verl-agent (github.com/langfengQ/verl-agent) is an existing engine for agent RL on many GPUs and machines
(Ray, FSDP, vLLM). Its training batch holds **one row per agent step** (one model response), padded to a
common response length, and its GiGPO estimator ``gigpo.core_gigpo.compute_gigpo_outcome_advantage``
takes per-row arrays and returns token-level advantages. :func:`compute_gagpo_outcome_advantage` and
:func:`compute_gigpo_outcome_advantage` take the same arrays. Inside, the rows become a
:class:`~gagpo.batch.StepBatch` (one row per agent decision) and the library's estimators in
:mod:`gagpo.advantages` compute one advantage per row; this module only converts, checks and broadcasts.

Calling convention (``bs`` rows, response length ``L``)
--------------------------------------------------------
=======================  ================  ======================================================
``rewards``              (bs,)             the environment's reward for the row's action (verl-agent's
                                           ``non_tensor_batch["rewards"]``), *not* discounted
``token_level_rewards``  (bs, L) or (bs,)  GiGPO only: the episode reward of the row's trajectory
                                           (summed over tokens, as verl-agent does)
``response_mask``        (bs, L)           1 on the response's tokens, 0 on padding
``anchor_obs``           (bs,)             the observation the action was taken in (text, array, ...)
``index``                (bs,)             rollout-group id, verl-agent's ``uid`` (same task and seed)
``traj_index``           (bs,)             trajectory id, verl-agent's ``traj_uid``
``step_index``           (bs,), optional   the row's 0-based step in its trajectory
=======================  ================  ======================================================

Rows may come in any order when ``step_index`` is given. Without it, the step is the row's position
among its trajectory's rows in batch order (:func:`step_index_from_order`): verl-agent stores no step,
and its own discounting (``compute_step_discounted_returns``) relies on the same order — true as the
rollout loop gathers the rows, no longer true after ``adjust_batch`` (which appends copies of rows) and
``_balance_batch`` (which reorders them). With ``step_index``, rows sharing ``(traj_index, step_index)``
must be identical copies; each is computed once and every copy receives its advantage.

Both functions return ``(advantages, returns)``, each of shape ``(bs, L)``: the row's advantage times
its response mask, :math:`A_{i,k} = a_i\,m_{i,k}`. verl reads ``returns`` only to train a critic, which
GiGPO and GAGPO do not have; like verl-agent's GiGPO, ``returns`` repeats the advantages (a copy). Given
a torch tensor among the reward and mask arguments, both are tensors on the mask's device (else the
first tensor's), with the dtype of the first floating tensor among ``token_level_rewards``, ``rewards``,
``response_mask`` (torch's default dtype when none is floating); otherwise float64 numpy arrays.

Equations
---------
GAGPO is :func:`gagpo.advantages.gagpo_advantages`: GAE over the grouped value proxy
(:func:`gagpo.advantages.grouped_value_proxy`, :math:`\hat V(s)` = the mean return-to-go of the group's
visits to :math:`s`), normalised over all rows of the rollout group,

.. math::
    \delta_t = r_t + \gamma \hat V(s_{t+1}) - \hat V(s_t), \quad
    a_t = \delta_t + \gamma\lambda\, a_{t+1}, \quad
    \tilde a_t = \frac{a_t - \operatorname{mean}_g a}{\operatorname{std}_g a + \epsilon}.

The observation after a trajectory's last row is not in verl-agent's batch, so the last row has
:math:`\hat V(s_{t+1}) = 0` (no bootstrap). GiGPO is :func:`gagpo.advantages.gigpo_advantages`: the
episode term (the episode reward normalised within the rollout group) plus ``step_advantage_w`` times
the step term (the discounted return-to-go :math:`G_t` normalised within the anchor group: same
``index``, equal ``anchor_obs``).

Conventions: verl-agent's GiGPO and this library
------------------------------------------------
Read in verl-agent's ``gigpo/core_gigpo.py`` (``episode_norm_reward``, ``step_norm_reward``,
``compute_gigpo_outcome_advantage``) and ``verl/trainer/ppo/ray_trainer.py`` (``compute_advantage``,
``fit``), as found in several public forks of langfengQ/verl-agent (the upstream repository itself
was not available here; the forks agree on these functions):

* **standard deviation** — verl-agent uses ``torch.std``'s default, the unbiased (Bessel-corrected)
  one; this library the population one. ``std="unbiased"`` gives verl-agent's; for a group of n
  values the two differ by the factor :math:`\sqrt{n/(n-1)}`. Both put ε outside the root,
  :math:`(x - \mu)/(\sigma + \epsilon)`, with ε = 1e-6.
* **modes** — verl-agent's ``mode="mean_std_norm"`` / ``"mean_norm"`` are this library's
  ``norm="mean_std"`` / ``"mean"`` (verl-agent's config default, ``algorithm.gigpo.mode``, is
  ``"mean_norm"``; this library's default, used here, ``"mean_std"``); verl's GRPO flag
  ``norm_adv_by_std_in_grpo=True`` / ``False`` means the same. GAGPO also takes ``"none"``.
* **episode statistics** — verl-agent's episode term takes its mean and std over all *rows* of the
  group (``compute_mean_std_cross_steps=True``: a trajectory of L steps counts L times); this library's
  over *trajectories*, each once. ``episode_stats="rows"`` gives verl-agent's.
* **a group of one row** — verl-agent's episode term keeps its raw score (mean 0, std 1 there); here
  every singleton gets 0. Singleton anchor groups get 0 in both.
* **discounting** — verl-agent discounts the step rewards in ``fit`` (before ``adjust_batch``) and
  passes the returns in as ``step_rewards``; here the undiscounted ``rewards`` and γ are passed and
  :func:`gagpo.advantages.discounted_returns` discounts them.
* **copies** — rows that ``adjust_batch(mode="copy")`` appended enter verl-agent's statistics again;
  here (with ``step_index``) they count once.

So :func:`compute_gigpo_outcome_advantage` with ``std="unbiased", episode_stats="rows"`` reproduces
verl-agent's GiGPO on a batch without copies and without verl-agent's invalid-action penalty, which it
subtracts from the already discounted ``step_rewards`` of the penalised row only (a per-step reward
cannot express that).

Registering GAGPO in a verl-agent checkout
------------------------------------------
A recipe written from reading verl-agent's code. It was **not run inside verl here** (no verl install,
no GPU): what was tested, on CPU, is this module against the library's estimators.

0. Install this package into verl-agent's environment (``pip install -e /path/to/this/repository``;
   the estimators need numpy only).
1. ``verl/trainer/ppo/ray_trainer.py``, ``class AdvantageEstimator``: add ``GAGPO = "gagpo"``; in
   ``RayPPOTrainer.__init__``, add ``AdvantageEstimator.GAGPO`` to the estimators that set
   ``self.use_critic = False``.
2. Same file, ``RayPPOTrainer.fit``: where ``step_rewards`` are computed for GiGPO
   (``core_gigpo.compute_step_discounted_returns``), before ``adjust_batch`` and ``_balance_batch``,
   record each row's step::

       if self.config.algorithm.adv_estimator == AdvantageEstimator.GAGPO:
           from gagpo.integrations.verl import step_index_from_order
           batch.non_tensor_batch["step_index"] = step_index_from_order(batch.non_tensor_batch["traj_uid"])

3. Same file, function ``compute_advantage``: a branch beside ``AdvantageEstimator.GiGPO``::

       elif adv_estimator == AdvantageEstimator.GAGPO:
           from gagpo.integrations.verl import compute_gagpo_outcome_advantage
           advantages, returns = compute_gagpo_outcome_advantage(
               rewards=data.non_tensor_batch["rewards"], response_mask=data.batch["response_mask"],
               anchor_obs=data.non_tensor_batch["anchor_obs"], index=data.non_tensor_batch["uid"],
               traj_index=data.non_tensor_batch["traj_uid"], step_index=data.non_tensor_batch["step_index"],
               gamma=gamma, lam=lam, mode=kwargs.get("gagpo_mode", "mean_std_norm"),
               std=kwargs.get("gagpo_std", "population"))
           data.batch["advantages"] = advantages
           data.batch["returns"] = returns

   and pass ``gagpo_mode=self.config.algorithm.gagpo.mode, gagpo_std=self.config.algorithm.gagpo.std``
   at the ``compute_advantage(...)`` call in ``fit`` (it passes ``gamma=self.config.algorithm.gamma``
   and ``lam=self.config.algorithm.lam`` already).
4. ``verl/trainer/config/ppo_trainer.yaml``, under ``algorithm:``, add
   ``gagpo: {mode: mean_std_norm, std: population}``; train with ``algorithm.adv_estimator=gagpo
   algorithm.gamma=0.95 algorithm.lam=0.95`` (verl's defaults are γ = λ = 1.0; this book's 0.95).
5. To keep verl-agent's invalid-action penalty (``actor.use_invalid_action_penalty``), pass
   ``rewards=rewards - coef * (1 - is_action_valid)`` in step 3: GAGPO then discounts it like any reward.
"""
from __future__ import annotations

import sys
from typing import Any, Hashable, Sequence

import numpy as np

from .. import advantages as A
from ..batch import StepBatch, factorize

#: verl-agent's mode names and the library's ``norm`` each stands for
MODES = {"mean_std_norm": "mean_std", "mean_norm": "mean", "none": "none"}
#: GiGPO has no unnormalised form (as in :func:`gagpo.advantages.gigpo_advantages`)
GIGPO_MODES = ("mean_std_norm", "mean_norm")
#: ``"population"`` (ddof=0, this library's) or ``"unbiased"`` (ddof=1, ``torch.std``'s default, verl-agent's)
STDS = ("population", "unbiased")
#: what GiGPO's episode statistics run over: each trajectory once (this library) or every row (verl-agent)
EPISODE_STATS = ("trajectories", "rows")


class _EndOfTrajectory:
    """The next-observation key of a trajectory's last row: equal to no observation, so the grouped value
    proxy reads 0 there (verl-agent's batch does not hold the observation after the last step)."""

    def __repr__(self) -> str:
        return "<end of trajectory>"


_END = _EndOfTrajectory()


# ---------------------------------------------------------------------- public helpers
def step_index_from_order(traj_index) -> np.ndarray:
    """The 0-based step of each row: its position among its trajectory's rows, in batch order.

    ``traj_index`` is one trajectory id per row (verl-agent's ``traj_uid``), shape (bs,). This is the
    order verl-agent's rollout loop writes the rows in, and the one its ``compute_step_discounted_returns``
    assumes. Returns int64 of shape (bs,); e.g. ``["a", "b", "a", "a", "b"]`` gives ``[0, 0, 1, 2, 1]``.
    """
    codes, _ = factorize(_id_list(traj_index))
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    first = np.searchsorted(sorted_codes, sorted_codes)  # where each row's trajectory starts in sorted order
    step = np.empty(len(codes), dtype=np.int64)
    step[order] = np.arange(len(codes)) - first
    return step


def anchor_key(obs: Any) -> Hashable:
    """A hashable key for an anchor observation, equal for equal observations.

    Strings and numbers are their own keys (numpy scalars become Python numbers); arrays and tensors
    become ``("ndarray", shape, values)``; lists and tuples a tuple of keys; dicts their sorted items. Any
    other hashable object is its own key; an unhashable one is a ``TypeError``.
    """
    if isinstance(obs, np.generic):
        return obs.item()
    if _is_tensor(obs):
        obs = obs.detach().cpu().numpy()
    if isinstance(obs, np.ndarray):
        return ("ndarray", obs.shape, tuple(obs.ravel().tolist()))
    if isinstance(obs, (list, tuple)):
        return tuple(anchor_key(o) for o in obs)
    if isinstance(obs, dict):
        return tuple(sorted((k, anchor_key(v)) for k, v in obs.items()))
    try:
        hash(obs)
    except TypeError:
        raise TypeError(f"anchor observation of type {type(obs).__name__} is not hashable and has no key") from None
    return obs


# ---------------------------------------------------------------------- the estimators
def compute_gagpo_outcome_advantage(
    rewards,
    response_mask,
    anchor_obs,
    index,
    traj_index,
    gamma: float,
    lam: float,
    *,
    mode: str = "mean_std_norm",
    std: str = "population",
    epsilon: float = 1e-6,
    step_index=None,
):
    r"""GAGPO's token-level advantages for verl-agent's rows (:func:`gagpo.advantages.gagpo_advantages`).

    Args:
        rewards: (bs,) the environment's reward for each row's action, undiscounted.
        response_mask: (bs, L) 1 on response tokens, 0 on padding; a row of zeros is allowed (it
            still counts in the statistics, as in verl-agent, and gets no token).
        anchor_obs: (bs,) the observation each action was taken in (see :func:`anchor_key`).
        index: (bs,) rollout-group ids (verl-agent's ``uid``).
        traj_index: (bs,) trajectory ids (verl-agent's ``traj_uid``).
        gamma, lam: γ and λ in [0, 1].
        mode: ``"mean_std_norm"``, ``"mean_norm"`` or ``"none"``: the normalisation within each rollout
            group (the library's ``norm`` ``"mean_std"``, ``"mean"``, ``"none"``).
        std: ``"population"`` (this library's) or ``"unbiased"`` (verl-agent's), for ``"mean_std_norm"``.
        epsilon: ε in :math:`(a - \mu)/(\sigma + \epsilon)`.
        step_index: (bs,) optional 0-based step of each row; default :func:`step_index_from_order`.
    Returns:
        ``(advantages, returns)``, each (bs, L): the row's advantage times its mask (``returns`` is a copy,
        as in verl-agent's GiGPO). Tensors when a tensor was given, numpy float64 otherwise.
    Raises:
        ValueError: arrays of different lengths, a mask that is not 2-D 0/1, an unknown ``mode`` or
            ``std``, γ or λ outside [0, 1], or a layout the :class:`StepBatch` refuses (a trajectory in
            two groups, a gap or a duplicate step, copies that differ).
    """
    norm = _norm(mode, tuple(MODES))
    _check_choice("std", std, STDS)
    mask, bs = _mask(response_mask)
    rows = _Rows.build(bs, _float_rows("rewards", rewards, bs), anchor_obs, index, traj_index, step_index)
    batch = rows.batch
    raw = A.gagpo_advantages(batch, gamma, lam, norm="none")
    per_row = _normalize(raw, batch.group_index, batch.n_groups, norm, std, epsilon)
    return _token_level(per_row[rows.inverse], mask, (rewards, response_mask), response_mask)


def compute_gigpo_outcome_advantage(
    token_level_rewards,
    rewards,
    response_mask,
    anchor_obs,
    index,
    traj_index,
    gamma: float,
    *,
    step_advantage_w: float = 1.0,
    mode: str = "mean_std_norm",
    std: str = "population",
    episode_stats: str = "trajectories",
    epsilon: float = 1e-6,
    step_index=None,
):
    r"""GiGPO's token-level advantages for verl-agent's rows (:func:`gagpo.advantages.gigpo_advantages`).

    .. math:: a_t = A^{\text{episode}}_i + \omega\, A^{\text{step}}_t

    The episode term normalises ``token_level_rewards`` (summed over tokens when 2-D) within the rollout
    group — over trajectories, or over rows with ``episode_stats="rows"`` — and the step term normalises
    :math:`G_t` (from ``rewards`` and γ) within the anchor group; ω = ``step_advantage_w``. With
    ``episode_stats="trajectories"`` every row of a trajectory must carry the same episode reward.
    When each episode reward is the sum of its trajectory's ``rewards`` and ``std="population"``, this is
    :func:`gagpo.advantages.gigpo_advantages` exactly; ``std="unbiased", episode_stats="rows"`` gives
    verl-agent's numbers (see the module docstring for the one exception).

    Other arguments and the return value as in :func:`compute_gagpo_outcome_advantage`; ``mode`` is
    ``"mean_std_norm"`` or ``"mean_norm"``.
    """
    norm = _norm(mode, GIGPO_MODES)
    _check_choice("std", std, STDS)
    _check_choice("episode_stats", episode_stats, EPISODE_STATS)
    mask, bs = _mask(response_mask)
    episode = _episode_rewards(token_level_rewards, bs)
    rows = _Rows.build(bs, _float_rows("rewards", rewards, bs), anchor_obs, index, traj_index, step_index,
                       extra={"token_level_rewards": episode})
    batch, episode = rows.batch, episode[rows.keep]
    if episode_stats == "rows":
        episode_term = _normalize(episode, batch.group_index, batch.n_groups, norm, std, epsilon)
    else:
        per_traj = _one_per_trajectory(batch, episode)
        episode_term = _normalize(per_traj, batch.traj_group, batch.n_groups, norm, std, epsilon)[batch.traj_index]
    step_term = _normalize(A.discounted_returns(batch, gamma), batch.anchor_index, batch.n_anchors, norm, std, epsilon)
    per_row = episode_term + float(step_advantage_w) * step_term
    return _token_level(per_row[rows.inverse], mask, (token_level_rewards, rewards, response_mask), response_mask)


# ---------------------------------------------------------------------- rows -> StepBatch
class _Rows:
    """verl-agent's rows as a :class:`StepBatch` of their distinct ``(traj_index, step)`` rows.

    ``batch`` holds the rows ``keep`` of the input (one per distinct step); ``inverse[i]`` is the batch
    row of input row i, so a per-row result ``x`` of the batch maps back as ``x[inverse]``.
    """

    def __init__(self, batch: StepBatch, keep: np.ndarray, inverse: np.ndarray):
        self.batch, self.keep, self.inverse = batch, keep, inverse

    @classmethod
    def build(cls, bs: int, rewards: np.ndarray, anchor_obs, index, traj_index, step_index,
              extra: dict[str, np.ndarray] | None = None) -> "_Rows":
        group = _id_array("index", index, bs)
        traj = _id_array("traj_index", traj_index, bs)
        obs = _object_rows("anchor_obs", anchor_obs, bs)
        keys = np.empty(bs, dtype=object)
        keys[:] = [anchor_key(o) for o in obs]
        step = step_index_from_order(traj) if step_index is None else _step_rows(step_index, bs)

        # one batch row per distinct (trajectory, step); copies must agree on everything else
        traj_codes, _ = factorize(traj.tolist())
        pair = traj_codes * (int(step.max(initial=0)) + 1) + step
        _, keep, inverse = np.unique(pair, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        if len(keep) < bs:
            columns = {"index": factorize(group.tolist())[0], "anchor_obs": factorize(keys.tolist())[0],
                       "rewards": rewards, **(extra or {})}
            for name, col in columns.items():
                differs = col[keep][inverse] != col
                if np.any(differs):
                    i = int(np.flatnonzero(differs)[0])
                    j = int(keep[inverse[i]])
                    raise ValueError(f"rows {j} and {i} are the same step (traj_index {traj[i]!r}, step {int(step[i])}) "
                                     f"but differ in {name!r}; only identical copies may repeat a step")

        # the next observation of a row is the anchor of its trajectory's next step (none after the last)
        t, s = traj_codes[keep], step[keep]
        order = np.lexsort((s, t))
        follows = (t[order][1:] == t[order][:-1]) & (s[order][1:] == s[order][:-1] + 1)
        next_keys = np.empty(len(keep), dtype=object)
        next_keys[:] = [_END] * len(keep)
        next_keys[order[:-1][follows]] = keys[keep][order[1:][follows]]
        last = np.ones(len(keep), dtype=bool)
        last[order[:-1][t[order][1:] == t[order][:-1]]] = False
        batch = StepBatch(group_id=group[keep], traj_id=traj[keep], step=s, obs_key=keys[keep],
                          next_obs_key=next_keys, reward=rewards[keep], terminated=last,
                          truncated=np.zeros(len(keep), dtype=bool))
        return cls(batch, keep, inverse)


def _one_per_trajectory(batch: StepBatch, episode: np.ndarray) -> np.ndarray:
    """The episode reward of each trajectory, shape (n_traj,); every row must carry the same one."""
    ti = batch.traj_index
    high = np.full(batch.n_traj, -np.inf)
    low = np.full(batch.n_traj, np.inf)
    np.maximum.at(high, ti, episode)
    np.minimum.at(low, ti, episode)
    spread = high - low
    bad = np.flatnonzero(spread > 1e-6 * np.maximum(1.0, np.abs(high)))
    if bad.size:
        traj_id = batch.traj_id[np.flatnonzero(ti == bad[0])[0]]
        raise ValueError(f"token_level_rewards: the rows of trajectory {traj_id!r} carry different episode rewards "
                         f"({low[bad[0]]} to {high[bad[0]]}); pass one episode reward per trajectory, or "
                         f"episode_stats='rows' to normalise over rows as verl-agent does")
    return high


# ---------------------------------------------------------------------- normalisation
def _normalize(values: np.ndarray, segment: np.ndarray, n_segments: int, norm: str, std: str, eps: float) -> np.ndarray:
    r"""Normalise ``values`` within each segment: the library's :func:`gagpo.advantages.normalize_by_segment`,
    or, for ``std="unbiased"`` and ``norm="mean_std"``, the same with Bessel's correction,

    .. math:: \frac{x - \mu}{\sqrt{\tfrac{1}{n-1}\sum (x_j - \mu)^2} + \epsilon}

    (``torch.std``'s default, as in verl-agent); a segment of one value gets 0 either way.
    """
    if std == "population" or norm != "mean_std":
        return A.normalize_by_segment(values, segment, n_segments, norm, eps)
    centred = A.normalize_by_segment(values, segment, n_segments, "mean", eps)
    count = np.bincount(segment, minlength=n_segments)
    var = np.bincount(segment, weights=centred * centred, minlength=n_segments) / np.maximum(count - 1, 1)
    return centred / (np.sqrt(var)[segment] + eps)  # a segment of one: centred 0, variance 0 -> 0


# ---------------------------------------------------------------------- checks and conversions
def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")


def _norm(mode: str, allowed: Sequence[str]) -> str:
    _check_choice("mode", mode, allowed)
    return MODES[mode]


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if its caller imported torch
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(x: Any) -> np.ndarray:
    if _is_tensor(x):
        x = x.detach().cpu()
        return (x.double() if x.is_floating_point() else x).numpy()
    return x if isinstance(x, np.ndarray) else np.asarray(x)


def _shape_error(name: str, bs: int, got) -> ValueError:
    return ValueError(f"{name} must hold one value per row of response_mask, shape ({bs},); got shape {got}")


def _mask(response_mask) -> tuple[np.ndarray, int]:
    mask = _to_numpy(response_mask)
    if mask.ndim != 2:
        raise ValueError(f"response_mask must have shape (bs, response_length); got shape {mask.shape}")
    try:
        mask = mask.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"response_mask must hold 0/1 (numbers or booleans); got dtype {mask.dtype}") from None
    if not np.all((mask == 0) | (mask == 1)):
        bad = np.argwhere((mask != 0) & (mask != 1))[0]
        raise ValueError(f"response_mask must hold only 0 and 1; row {bad[0]}, token {bad[1]} holds {mask[tuple(bad)]}")
    return mask, mask.shape[0]


def _float_rows(name: str, values, bs: int) -> np.ndarray:
    arr = _to_numpy(values)
    if arr.shape != (bs,):
        raise _shape_error(name, bs, arr.shape)
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers; got dtype {arr.dtype}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; NaN/inf at rows {np.flatnonzero(~np.isfinite(arr))[:5].tolist()}")
    return arr


def _episode_rewards(token_level_rewards, bs: int) -> np.ndarray:
    arr = _to_numpy(token_level_rewards)
    if arr.ndim == 2 and arr.shape[0] == bs:
        arr = arr.astype(np.float64).sum(axis=-1)  # verl-agent: token_level_rewards.sum(dim=-1)
    elif arr.shape != (bs,):
        raise ValueError(f"token_level_rewards must have shape ({bs}, response_length) or ({bs},); got shape {arr.shape}")
    return _float_rows("token_level_rewards", arr, bs)


def _id_list(ids) -> list:
    return _to_numpy(ids).tolist() if _is_tensor(ids) else list(ids)


def _object_rows(name: str, values, bs: int) -> list:
    items = list(values) if not _is_tensor(values) else list(values.detach().cpu().numpy())
    if len(items) != bs:
        raise _shape_error(name, bs, (len(items),))
    return items


def _id_array(name: str, ids, bs: int) -> np.ndarray:
    items = _object_rows(name, _id_list(ids), bs)
    out = np.empty(bs, dtype=object)
    out[:] = [i.item() if isinstance(i, np.generic) else i for i in items]
    return out


def _step_rows(step_index, bs: int) -> np.ndarray:
    step = _to_numpy(step_index)
    if step.shape != (bs,):
        raise _shape_error("step_index", bs, step.shape)
    try:
        as_int = step.astype(np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"step_index must hold integers; got dtype {step.dtype}") from None
    if np.any(as_int != step) or np.any(as_int < 0):
        bad = int(np.flatnonzero((as_int != step) | (as_int < 0))[0])
        raise ValueError(f"step_index must hold integers >= 0 (the step in the trajectory); row {bad} holds {step[bad]!r}")
    return as_int


def _token_level(per_row: np.ndarray, mask: np.ndarray, inputs: tuple, response_mask):
    """``per_row[:, None] * mask`` twice (advantages, returns), as tensors when any input is one."""
    advantages = per_row[:, None] * mask
    tensors = [x for x in inputs if _is_tensor(x)]
    if not tensors:
        return advantages, advantages.copy()
    torch = sys.modules["torch"]
    floating = [x.dtype for x in tensors if x.is_floating_point()]
    device = response_mask.device if _is_tensor(response_mask) else tensors[0].device
    out = torch.as_tensor(advantages, dtype=floating[0] if floating else torch.get_default_dtype(), device=device)
    return out, out.clone()


__all__ = ["compute_gagpo_outcome_advantage", "compute_gigpo_outcome_advantage", "step_index_from_order", "anchor_key",
           "MODES", "GIGPO_MODES", "STDS", "EPISODE_STATS"]
