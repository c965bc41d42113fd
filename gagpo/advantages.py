r"""Advantage estimators, from REINFORCE to GAGPO — pure numpy functions of a :class:`StepBatch`.

Every function takes a :class:`~gagpo.batch.StepBatch` (one row per agent decision) and returns a
float64 array of shape ``(N,)`` aligned with the batch's row order (rows may be in any order).
Nothing here knows about torch, environments or policies.

Notation: trajectory :math:`i` of group :math:`g` has rows :math:`t = 0..L_i-1` with rewards
:math:`r_t`, observation keys :math:`s_t` and next keys :math:`s'_t`;
:math:`G_t = \sum_{k \ge t} \gamma^{k-t} r_k` is the discounted return-to-go (no bootstrap past the
last row) and :math:`R_i = \sum_t r_t` the undiscounted episode return.

Group statistics use the *population* standard deviation (``ddof=0``): a group of one has std 0,
so a singleton gets a zero advantage under ``"mean_std"`` and ``"mean"`` alike. (verl's GRPO uses
the unbiased std; with G ≥ 4 the two differ by a factor :math:`\sqrt{G/(G-1)}` only.)

Vectorisation: quantities that recurse along a trajectory (returns, GAE) are computed by
:func:`reverse_scan` with one numpy operation per time step over the rows at that step — a loop over
*time*, never over rows, in memory linear in the number of rows (no padded trajectory × time grid,
which a long trajectory among many short ones would blow up); group statistics use ``np.bincount``.
"""
from __future__ import annotations

import numpy as np

from .batch import StepBatch

NORMS = ("mean_std", "mean", "none")
GIGPO_NORMS = ("mean_std", "mean")


# ---------------------------------------------------------------------- helpers
def _check_norm(norm: str, allowed: tuple[str, ...] = NORMS) -> None:
    if norm not in allowed:
        raise ValueError(f"unknown norm {norm!r}; expected one of {list(allowed)}")


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1]; got {value}")
    return value


def _check_row_array(batch: StepBatch, name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (len(batch),):
        raise ValueError(f"{name} must have shape ({len(batch)},) — one value per batch row — got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; found NaN/inf")
    return arr


def reverse_scan(batch: StepBatch, x: np.ndarray, coef: float | np.ndarray) -> np.ndarray:
    r"""Solve :math:`y_t = x_t + c_t\, y_{t+1}` backwards along each trajectory (:math:`y_{L} = 0`).

    ``x`` and ``coef`` are per-row arrays of shape (N,) (``coef`` may be a scalar). The loop runs over
    time steps, from the last to the first; step t is one vector operation over the rows at step t of
    every trajectory, each reading :math:`y_{t+1}` of its successor row (:attr:`StepBatch.next_row`;
    a trajectory's last row reads 0). Time and memory are linear in the number of rows — a batch
    of one 20,000-step trajectory and 20,000 one-step ones needs no 20,000 × 20,000 grid. Returns y
    aligned with the batch rows.
    """
    n = len(batch)
    if n == 0:
        return np.zeros(0)
    x = np.asarray(x, dtype=np.float64)
    c = np.broadcast_to(np.asarray(coef, dtype=np.float64), (n,))
    nxt = np.where(batch.next_row >= 0, batch.next_row, n)  # row n holds the 0 after a trajectory's end
    y = np.zeros(n + 1)
    order, bounds = batch.rows_by_step
    for t in range(len(bounds) - 2, -1, -1):
        rows = order[bounds[t] : bounds[t + 1]]
        y[rows] = x[rows] + c[rows] * y[nxt[rows]]
    return y[:n]


def _segment_mean_std(values: np.ndarray, segment: np.ndarray, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment mean and population std of ``values``, each of shape (n_segments,)."""
    count = np.bincount(segment, minlength=n_segments).astype(np.float64)
    safe = np.maximum(count, 1.0)
    mean = np.bincount(segment, weights=values, minlength=n_segments) / safe
    centred = values - mean[segment]
    var = np.bincount(segment, weights=centred * centred, minlength=n_segments) / safe
    return mean, np.sqrt(var)


def normalize_by_segment(values: np.ndarray, segment: np.ndarray, n_segments: int, norm: str, eps: float) -> np.ndarray:
    r"""Centre (``"mean"``), standardise (``"mean_std"``: :math:`(x-\mu)/(\sigma+\epsilon)`) or keep
    (``"none"``) ``values`` within each segment (a group, an anchor group, ...)."""
    _check_norm(norm)
    if norm == "none":
        return values.astype(np.float64, copy=True)
    mean, std = _segment_mean_std(values, segment, n_segments)
    out = values - mean[segment]
    if norm == "mean_std":
        denom = std[segment] + eps
        out = np.divide(out, denom, out=np.zeros_like(out), where=denom > 0)  # zero-spread group -> 0
    return out


def episode_returns(batch: StepBatch) -> np.ndarray:
    r"""Undiscounted return of each trajectory, :math:`R_i = \sum_t r_t`, shape (n_traj,)."""
    return np.bincount(batch.traj_index, weights=batch.reward, minlength=batch.n_traj)


# ---------------------------------------------------------------------- estimators
def discounted_returns(batch: StepBatch, gamma: float) -> np.ndarray:
    r"""Discounted return-to-go within each trajectory.

    .. math:: G_t = r_t + \gamma\, G_{t+1}, \qquad G_{L-1} = r_{L-1}

    No bootstrapping past a trajectory's last row (terminated, truncated or not).

    Args:
        batch: the rows.
        gamma: discount :math:`\gamma \in [0, 1]`.
    Returns:
        ``returns`` of shape (N,), aligned with the batch rows.
    """
    gamma = _check_unit("gamma", gamma)
    return reverse_scan(batch, batch.reward, gamma)


def reinforce_advantages(batch: StepBatch, gamma: float, baseline: str | np.ndarray | None = None) -> np.ndarray:
    r"""REINFORCE with reward-to-go: :math:`A_t = G_t - b_t`.

    ``baseline``:
      * ``None`` — :math:`b_t = 0` (plain reward-to-go);
      * ``"mean"`` — :math:`b_t = \bar G`, the mean of :math:`G` over all rows of the batch;
      * ``"step_mean"`` — :math:`b_t = \operatorname{mean}\{G_{t'} : \text{step}' = t\}`, a
        time-dependent baseline (the mean return-to-go of all rows at the same step index);
      * an array of shape (N,) — any per-row baseline, e.g. a learned :math:`V(s_t)`.

    Any baseline that does not depend on the action leaves the gradient unbiased; a good one
    reduces its variance (chapter 2 measures how much).
    """
    returns = discounted_returns(batch, gamma)
    if baseline is None:
        return returns
    if isinstance(baseline, str):
        if baseline == "mean":
            return returns - (returns.mean() if len(returns) else 0.0)
        if baseline == "step_mean":
            n_steps = int(batch.step.max()) + 1 if len(batch) else 0
            mean, _ = _segment_mean_std(returns, batch.step, n_steps)
            return returns - mean[batch.step]
        raise ValueError(f"unknown baseline {baseline!r}; expected None, 'mean', 'step_mean' or an array of shape (N,)")
    return returns - _check_row_array(batch, "baseline", baseline)


def grpo_advantages(batch: StepBatch, norm: str = "mean_std", eps: float = 1e-6) -> np.ndarray:
    r"""GRPO: the episode return, normalised over the trajectories of its rollout group.

    .. math::
        A_{i,t} = \frac{R_i - \operatorname{mean}_{j \in g(i)} R_j}{\operatorname{std}_{j \in g(i)} R_j + \epsilon}

    broadcast to every row of trajectory :math:`i`. ``norm="mean"`` drops the division (Dr. GRPO);
    ``norm="none"`` returns :math:`R_i` itself. The statistics are over *trajectories*, not rows, so a
    long trajectory does not weigh more. A trajectory alone in its group gets 0 (``"mean"``,
    ``"mean_std"``).
    """
    _check_norm(norm)
    totals = episode_returns(batch)
    per_traj = normalize_by_segment(totals, batch.traj_group, batch.n_groups, norm, eps)
    return per_traj[batch.traj_index]


def rloo_advantages(batch: StepBatch) -> np.ndarray:
    r"""RLOO (leave-one-out): the episode return minus the mean return of the *other* trajectories.

    .. math:: A_{i,t} = R_i - \frac{1}{n_g - 1} \sum_{j \in g(i),\, j \ne i} R_j
              = \frac{n_g}{n_g - 1}\,\bigl(R_i - \bar R_g\bigr)

    broadcast to the rows of trajectory :math:`i`; 0 for a trajectory alone in its group.
    """
    totals = episode_returns(batch)
    g = batch.traj_group
    n = np.bincount(g, minlength=batch.n_groups).astype(np.float64)
    s = np.bincount(g, weights=totals, minlength=batch.n_groups)
    others = n[g] - 1.0
    per_traj = np.where(others > 0, totals - (s[g] - totals) / np.maximum(others, 1.0), 0.0)
    return per_traj[batch.traj_index]


def gae_advantages(batch: StepBatch, values, next_values, gamma: float, lam: float) -> np.ndarray:
    r"""Generalised advantage estimation (Schulman et al., 2016) with given state values.

    .. math::
        \delta_t = r_t + \gamma\,(1 - \text{terminated}_t)\, V(s'_t) - V(s_t), \qquad
        A_t = \delta_t + \gamma\lambda\, A_{t+1}, \quad A_{L-1} = \delta_{L-1}

    ``values[i]`` is :math:`V(s_t)` and ``next_values[i]`` is :math:`V(s'_t)` for row i (both shape
    (N,)). A terminated row never bootstraps (its next value is masked to 0); a truncated row does —
    pass the critic's value of the observation at which the episode was cut. λ=0 gives the one-step
    TD error, λ=1 the discounted return minus the value (plus the discounted bootstrap at the end).
    The critic's regression target is ``advantages + values``.
    """
    gamma, lam = _check_unit("gamma", gamma), _check_unit("lam", lam)
    values = _check_row_array(batch, "values", values)
    next_values = _check_row_array(batch, "next_values", next_values)
    delta = batch.reward + gamma * np.where(batch.terminated, 0.0, next_values) - values
    return reverse_scan(batch, delta, gamma * lam)


def lambda_returns(batch: StepBatch, values, next_values, gamma: float, lam: float) -> np.ndarray:
    r"""The λ-returns :math:`R^\lambda_t = A^{\text{GAE}}_t + V(s_t)`: a critic's regression targets.

    :math:`A^{\text{GAE}}` is :func:`gae_advantages` with the same arguments (before any
    normalisation); λ=1 gives the discounted return (bootstrapped after a truncation), λ=0 the
    one-step target :math:`r_t + \gamma V(s'_t)`. Shape (N,), aligned with the batch rows.
    """
    return gae_advantages(batch, values, next_values, gamma, lam) + _check_row_array(batch, "values", values)


def gigpo_step_advantages(batch: StepBatch, gamma: float, norm: str = "mean_std", eps: float = 1e-6) -> np.ndarray:
    r"""GiGPO's step-level term: the return-to-go relative to its anchor group.

    .. math::
        A^{\text{step}}_t = \frac{G_t - \operatorname{mean}_{a(t)} G}{\operatorname{std}_{a(t)} G + \epsilon}

    where :math:`a(t)` is the anchor group of row t (same ``group_id``, equal ``obs_key``);
    ``norm="mean"`` drops the division. A singleton anchor group gives 0 — the *singleton problem*:
    a state visited once gets no step-level signal.
    """
    _check_norm(norm, GIGPO_NORMS)
    returns = discounted_returns(batch, gamma)
    return normalize_by_segment(returns, batch.anchor_index, batch.n_anchors, norm, eps)


def gigpo_advantages(
    batch: StepBatch, gamma: float, step_weight: float = 1.0, norm: str = "mean_std", eps: float = 1e-6
) -> np.ndarray:
    r"""GiGPO (Feng et al., 2025): episode-level plus step-level group-relative advantages.

    .. math:: A_t = A^{\text{episode}}_{i} + \omega\, A^{\text{step}}_t

    with :math:`A^{\text{episode}}` = :func:`grpo_advantages` (same ``norm``) and
    :math:`A^{\text{step}}` = :func:`gigpo_step_advantages`; :math:`\omega` = ``step_weight``.
    ``norm`` is ``"mean_std"`` or ``"mean"`` (both terms only mean-centred), as in GiGPO's code.
    """
    _check_norm(norm, GIGPO_NORMS)
    return grpo_advantages(batch, norm, eps) + float(step_weight) * gigpo_step_advantages(batch, gamma, norm, eps)


def grouped_value_proxy(batch: StepBatch, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    r"""GAGPO's non-parametric critic: the mean return of every visit to a state within its group.

    .. math::
        \hat V(s) = \operatorname{mean}\{G_t : \text{group}_t = g,\ s_t = s\}

    Returns ``(values, next_values)`` of shape (N,): ``values[i]`` = :math:`\hat V(s_t)` and
    ``next_values[i]`` = :math:`\hat V(s'_t)` looked up in the same group; ``next_values`` is 0 when
    the row is terminated and 0 when :math:`s'_t` never occurs as an ``obs_key`` in the group (e.g.
    the observation at which a truncated episode was cut, if no other rollout acted there).
    """
    returns = discounted_returns(batch, gamma)
    mean_per_anchor = np.bincount(batch.anchor_index, weights=returns, minlength=batch.n_anchors) / np.maximum(
        np.bincount(batch.anchor_index, minlength=batch.n_anchors), 1
    )
    values = mean_per_anchor[batch.anchor_index]
    nxt = batch.next_anchor_index
    next_values = np.where((nxt >= 0) & ~batch.terminated, mean_per_anchor[np.maximum(nxt, 0)], 0.0)
    return values, next_values


def gagpo_advantages(
    batch: StepBatch, gamma: float, lam: float, norm: str = "mean_std", eps: float = 1e-6
) -> np.ndarray:
    r"""GAGPO: GAE over the grouped value proxy, normalised per rollout group.

    .. math::
        \delta_t = r_t + \gamma\, \hat V(s'_t) - \hat V(s_t), \qquad
        A_t = \delta_t + \gamma\lambda\, A_{t+1} \ (A_{L-1} = \delta_{L-1}), \qquad
        \tilde A_t = \frac{A_t - \operatorname{mean}_{g} A}{\operatorname{std}_{g} A + \epsilon}

    with :math:`\hat V` from :func:`grouped_value_proxy` (0 after a terminated row) and the
    normalisation over *all rows* of each rollout group (``"mean_std"``; ``"mean"`` only centres;
    ``"none"`` returns :math:`A_t`).

    Reductions (proved in chapter 6, tested in ``tests/test_advantages.py``), without normalisation:
    λ=0 gives the one-step TD error :math:`\delta_t`; λ=1 on terminated trajectories gives
    :math:`G_t - \hat V(s_t)`, which is GiGPO's step term with ``norm="mean"``; if every non-initial
    state is distinct, λ=1 and γ=1 give at step 0 the Dr. GRPO advantage :math:`R_i - \bar R_g`.
    """
    _check_norm(norm)
    values, next_values = grouped_value_proxy(batch, gamma)
    adv = gae_advantages(batch, values, next_values, gamma, lam)
    return normalize_by_segment(adv, batch.group_index, batch.n_groups, norm, eps)

