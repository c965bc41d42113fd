r"""Policy and value losses: PPO clip with token- or action-level ratios, k3 KL, entropy, value clipping.

This module knows tensors only. The trainer hands it, for every generated token, the log-probability
under the current policy (``logp_new``, carries the gradient), under the policy that sampled it
(``logp_old``), the index of the agent action the token belongs to (``action_index``), and one
advantage per action (``advantages``, one per ``StepBatch`` row). It knows nothing of environments,
prompts or tokenisers.

Token ratios and action ratios
------------------------------
In a multi-turn agent one *action* (one environment step: "go to desk 1", a tool call) is a sequence of
``n_a`` tokens, and the advantage :math:`A_a` is assigned to the action as a whole. The exact importance
weight of an action is the product of its token ratios,

.. math::  \frac{\pi_\theta(a)}{\pi_{\mathrm{old}}(a)} = \prod_{t \in a} r_t,
           \qquad r_t = \exp(\log\pi_\theta(y_t) - \log\pi_{\mathrm{old}}(y_t)),

whose variance grows with the action's length. Two practical choices follow.

``ratio_level="token"`` (PPO as used in most LLM trainers): every token uses its own :math:`r_t` and is
clipped on its own. An action is then updated piecemeal: some of its tokens hit the clip and stop
contributing gradient while others keep pushing, and the number of independent clip decisions grows
with the action's length.

``ratio_level="action"`` (GAGPO; sequence-level like GSPO): every token of action *a* shares one ratio,
the geometric mean of its token ratios (a length-normalised action ratio),

.. math::  r_a = \exp\Big(\frac{1}{n_a} \sum_{t \in a}
                     \big(\log\pi_\theta(y_t) - \log\pi_{\mathrm{old}}(y_t)\big)\Big)
               = \Big(\frac{\pi_\theta(a)}{\pi_{\mathrm{old}}(a)}\Big)^{1/n_a},

where the sum and :math:`n_a` run over the action's *valid* (unmasked) tokens. The importance weight now
lives at the same granularity as the credit: one trust-region decision per action, on the same scale
as a token ratio whatever the action's length, and clipping switches the whole action off at once.

The two levels agree to first order on-policy: at :math:`\log\pi_\theta = \log\pi_{\mathrm{old}}` every
ratio is 1, :math:`\partial r_a / \partial \log\pi_\theta(y_t) = r_a / n_a`, and the surrogate's gradient
with respect to each token's log-prob is :math:`-A_a / N` under ``"token_mean"`` for both levels
(:math:`N` valid tokens). They differ once the policy has moved (several epochs or minibatches per
rollout): off-policy each unclipped token is weighted by :math:`r_a` instead of :math:`r_t`, and the clip
acts per action instead of per token. When every action is a single token the two levels coincide exactly.

Shapes
------
All per-token tensors share one shape ``S``: ``(B, T)`` for padded LM batches, ``(N,)`` when each action
is a single "token" (tabular or toy policies), or anything else; they are flattened internally.
Padding and prompt tokens are excluded with ``mask``; their values (even NaN or inf) and their
``action_index`` entries (conventionally -1) never reach the loss or the gradient.
"""

from __future__ import annotations

import torch

__all__ = ["RATIO_LEVELS", "AGGREGATIONS", "kl_k3", "ppo_clip_loss", "value_loss"]

RATIO_LEVELS = ("token", "action")
"""Accepted values of ``ppo_clip_loss(ratio_level=...)``."""

AGGREGATIONS = ("token_mean", "action_mean")
"""Accepted values of ``ppo_clip_loss(aggregation=...)``."""


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r"""Per-token k3 estimator of :math:`\mathrm{KL}(p \,\|\, q)` from a token sampled from ``p``.

    .. math::  k_3 = \frac{q}{p} - \log\frac{q}{p} - 1
                   = e^{d} - d - 1, \qquad d = \log q(y) - \log p(y),

    with ``logp`` = :math:`\log p(y)` and ``logp_ref`` = :math:`\log q(y)`. Since :math:`e^d \ge 1 + d`,
    every term is :math:`\ge 0`, it is 0 exactly where the two log-probs agree, and its expectation
    under ``p`` is :math:`\mathrm{KL}(p\|q)` (unbiased, lower variance than :math:`-d`).
    Computed as ``expm1(d) - d`` so that rounding cannot make it negative for tiny ``d``.

    Two uses in this module: ``kl_k3(logp_new, logp_ref)`` is the penalty to the reference policy,
    and ``kl_k3(logp_old, logp_new)`` = :math:`(r - 1) - \log r` is PPO's ``approx_kl`` diagnostic.

    Args:
        logp: log-probabilities under the sampling distribution ``p``, any shape.
        logp_ref: log-probabilities under ``q``, same shape.

    Returns:
        Tensor of the same shape, element-wise :math:`k_3 \ge 0`. Differentiable in both arguments.
    """
    if logp.shape != logp_ref.shape:
        raise ValueError(f"logp_ref has shape {tuple(logp_ref.shape)}; expected {tuple(logp.shape)} like logp")
    d = logp_ref - logp
    return torch.expm1(d) - d


def _check_shape(name: str, x: torch.Tensor, shape: torch.Size, like: str) -> None:
    if x.shape != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {tuple(shape)} like {like}")


def _valid_mask(mask: torch.Tensor | None, shape: torch.Size, device: torch.device, like: str) -> torch.Tensor:
    """Flattened bool mask of valid entries; a float mask must hold only 0 and 1."""
    if mask is None:
        return torch.ones(shape.numel(), dtype=torch.bool, device=device)
    _check_shape("mask", mask, shape, like)
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be bool or hold only 0 and 1 (it marks valid tokens, it is not a weight)")
        mask = mask != 0
    return mask.reshape(-1)


def _segment_mean(x: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-action mean of per-token ``x`` (masked entries already zero); 0 for actions with no valid token."""
    sums = x.new_zeros(counts.shape[0]).index_add(0, idx, x)
    return sums / counts.clamp(min=1)


def ppo_clip_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    action_index: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    ratio_level: str = "action",
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    logp_ref: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    aggregation: str = "token_mean",
    kl_clip: float | None = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""PPO clipped surrogate with a token- or action-level ratio, k3 KL to a reference, entropy bonus.

    Let :math:`V` be the valid tokens, :math:`a(t)` = ``action_index[t]`` the action of token *t*,
    :math:`n_a` the number of valid tokens of action *a*, :math:`\varepsilon` = ``clip_eps`` and
    :math:`\varepsilon_h` = ``clip_eps_high`` (defaults to :math:`\varepsilon`). Per valid token:

    .. math::
        \rho_t &= \log\pi_\theta(y_t) - \log\pi_{\mathrm{old}}(y_t) \\
        r_t &= e^{\rho_t} \qquad (\text{"token"}) \\
        r_t &= r_{a(t)}, \quad
            r_a = \exp\Big(\tfrac{1}{n_a} \textstyle\sum_{s \in V,\, a(s) = a} \rho_s\Big) \qquad (\text{"action"}) \\
        \ell^{\mathrm{pg}}_t &= -\min\big(r_t A_{a(t)},\
            \mathrm{clip}(r_t, 1-\varepsilon, 1+\varepsilon_h)\, A_{a(t)}\big) \\
        \ell_t &= \ell^{\mathrm{pg}}_t + \beta\, \min\big(k_3(\log\pi_\theta(y_t), \log\pi_{\mathrm{ref}}(y_t)),\ \kappa\big)
                 - c_H\, H_t

    with :math:`\beta` = ``kl_coef``, :math:`\kappa` = ``kl_clip`` (a cap on each token's k3 term, as
    verl applies; k3 grows like :math:`e^{d}` and one token far from the reference can otherwise dominate
    the loss — a token at the cap gets no KL gradient), :math:`c_H` = ``entropy_coef``, :math:`H_t` = ``entropy[t]`` and
    :math:`k_3` from :func:`kl_k3`. The per-token terms are then aggregated:

    ``"token_mean"``: :math:`L = \frac{1}{|V|} \sum_{t \in V} \ell_t` — every valid token in the batch
    counts equally, so long actions weigh more.

    ``"action_mean"``: :math:`L = \frac{1}{|A^+|} \sum_{a \in A^+} \frac{1}{n_a} \sum_{t \in V,\, a(t)=a} \ell_t`,
    :math:`A^+ = \{a : n_a > 0\}` — mean within each action, then over actions, so every action counts
    equally whatever its length. Actions with no valid token are left out.

    Gradients at :math:`r = 1` (on-policy), :math:`\partial L / \partial \log\pi_\theta(y_t)`:
    :math:`-A_{a(t)}/|V|` for ``"token_mean"`` and :math:`-A_{a(t)}/(|A^+|\, n_{a(t)})` for
    ``"action_mean"``, for both ratio levels.

    Args:
        logp_new: (S) log-probs of the sampled tokens under the current policy; carries the gradient.
        logp_old: (S) log-probs under the sampling policy; treated as constants (detached).
        advantages: (n_actions,) one advantage per agent action (per ``StepBatch`` row); detached.
        action_index: (S) integer index into ``advantages`` of the action each token belongs to.
            Entries of masked tokens are ignored (conventionally -1). Need not be sorted or contiguous.
        mask: (S) bool, or float holding 0/1, marking valid tokens; ``None`` means all are valid.
        ratio_level: ``"token"`` or ``"action"`` (see above and the module docstring).
        clip_eps: lower clip width :math:`\varepsilon \ge 0`; the ratio is clipped to
            :math:`[1-\varepsilon, 1+\varepsilon_h]`.
        clip_eps_high: upper clip width :math:`\varepsilon_h \ge 0` ("clip-higher"); ``None`` means ``clip_eps``.
        logp_ref: (S) log-probs under a frozen reference policy (detached); required when ``kl_coef != 0``.
        kl_coef: :math:`\beta`, weight of the k3 penalty.
        entropy: (S) per-token entropy of the current policy, computed by the caller (may carry a
            gradient); required when ``entropy_coef != 0``.
        entropy_coef: :math:`c_H`, weight of the entropy bonus (subtracted from the loss).
        aggregation: ``"token_mean"`` or ``"action_mean"``.
        kl_clip: :math:`\kappa > 0`, the cap on each token's k3 term; ``None`` leaves it unbounded.

    Returns:
        ``(loss, diagnostics)``: ``loss`` a scalar tensor to minimise; ``diagnostics`` python floats:

        - ``loss``, ``policy_loss`` (:math:`\ell^{\mathrm{pg}}` aggregated), ``kl_ref`` (:math:`k_3` to the
          reference, aggregated; 0.0 without ``logp_ref``), ``entropy`` (aggregated; 0.0 without
          ``entropy``). All three use ``aggregation``, so ``loss = policy_loss + kl_coef * kl_ref
          - entropy_coef * entropy``.
        - ``clip_fraction``: fraction of valid tokens whose gradient the clip zeroes, i.e.
          :math:`A > 0, r > 1+\varepsilon_h` or :math:`A < 0, r < 1-\varepsilon`.
        - ``approx_kl``: mean over valid tokens of :math:`(r_t - 1) - \log r_t` with the *token* ratio
          :math:`r_t` (k3 estimate of :math:`\mathrm{KL}(\pi_{\mathrm{old}}\|\pi_\theta)`), at either level.
        - ``ratio_mean``, ``ratio_min``, ``ratio_max``, ``ratio_std``: of the ratio actually used, over
          valid tokens (so an action ratio is counted once per token); ``ratio_std`` is the population
          std (0.0 for a single token).

    Raises:
        ValueError: unknown ``ratio_level`` or ``aggregation``; a per-token tensor whose shape differs
            from ``logp_new``'s; ``advantages`` not 1-D; non-integer ``action_index`` or a valid token's
            index outside ``[0, n_actions)``; no valid token; negative clip widths or ``kl_clip <= 0``; a non-zero
            coefficient without its tensor.
    """
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio_level {ratio_level!r}; expected one of {RATIO_LEVELS}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
    eps_low = float(clip_eps)
    eps_high = eps_low if clip_eps_high is None else float(clip_eps_high)
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip widths must be >= 0; got clip_eps={eps_low}, clip_eps_high={eps_high}")
    if kl_clip is not None and not kl_clip > 0:
        raise ValueError(f"kl_clip must be > 0 (or None for no cap); got {kl_clip}")
    if kl_coef != 0 and logp_ref is None:
        raise ValueError(f"kl_coef={kl_coef} needs logp_ref")
    if entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy")

    shape = logp_new.shape
    _check_shape("logp_old", logp_old, shape, "logp_new")
    _check_shape("action_index", action_index, shape, "logp_new")
    if logp_ref is not None:
        _check_shape("logp_ref", logp_ref, shape, "logp_new")
    if entropy is not None:
        _check_shape("entropy", entropy, shape, "logp_new")
    if advantages.dim() != 1:
        raise ValueError(f"advantages must be 1-D (one per action); got shape {tuple(advantages.shape)}")
    if action_index.dtype.is_floating_point or action_index.dtype.is_complex or action_index.dtype == torch.bool:
        raise ValueError(f"action_index must be an integer tensor; got dtype {action_index.dtype}")

    valid = _valid_mask(mask, shape, logp_new.device, "logp_new")
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("no valid tokens: mask is all False")
    n_actions = advantages.shape[0]
    idx_valid = action_index.reshape(-1)[valid]
    if int(idx_valid.min()) < 0 or int(idx_valid.max()) >= n_actions:
        raise ValueError(
            f"action_index of valid tokens must lie in [0, {n_actions}) (advantages has {n_actions} entries); "
            f"got values in [{int(idx_valid.min())}, {int(idx_valid.max())}]"
        )

    # Replace masked entries by harmless zeros *before* any arithmetic, so that their values (even
    # NaN/inf) reach neither the forward pass nor, through 0 * inf, the backward pass.
    zero = logp_new.new_zeros(())
    idx = torch.where(valid, action_index.reshape(-1), torch.zeros_like(action_index.reshape(-1))).long()
    lp_new = torch.where(valid, logp_new.reshape(-1), zero)
    lp_old = torch.where(valid, logp_old.detach().reshape(-1).to(lp_new.dtype), zero)
    valid_f = valid.to(lp_new.dtype)
    counts = valid_f.new_zeros(n_actions).index_add(0, idx, valid_f)  # n_a, valid tokens per action

    def aggregate(x: torch.Tensor) -> torch.Tensor:
        x = torch.where(valid, x, zero)
        if aggregation == "token_mean":
            return x.sum() / n_valid
        per_action = _segment_mean(x, idx, counts)
        return per_action[counts > 0].mean()

    token_log_ratio = lp_new - lp_old
    if ratio_level == "token":
        log_ratio = token_log_ratio
    else:
        log_ratio = _segment_mean(token_log_ratio, idx, counts)[idx]
    ratio = torch.exp(log_ratio)

    adv = advantages.detach().to(lp_new.dtype)[idx]
    clipped_ratio = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    pg_tok = -torch.minimum(ratio * adv, clipped_ratio * adv)
    policy_loss = aggregate(pg_tok)
    loss = policy_loss

    kl_ref = zero
    if logp_ref is not None:
        lp_ref = torch.where(valid, logp_ref.detach().reshape(-1).to(lp_new.dtype), zero)
        k3 = kl_k3(lp_new, lp_ref)
        kl_ref = aggregate(k3 if kl_clip is None else torch.clamp(k3, max=kl_clip))
        loss = loss + kl_coef * kl_ref
    ent = zero
    if entropy is not None:
        ent = aggregate(entropy.reshape(-1).to(lp_new.dtype))  # aggregate() drops masked entries
        loss = loss - entropy_coef * ent

    with torch.no_grad():
        r_valid = ratio[valid]
        a_valid = adv[valid]
        clipped = ((a_valid > 0) & (r_valid > 1.0 + eps_high)) | ((a_valid < 0) & (r_valid < 1.0 - eps_low))
        approx_kl = kl_k3(lp_old, lp_new)[valid].mean()
        diagnostics = {
            "loss": float(loss),
            "policy_loss": float(policy_loss),
            "kl_ref": float(kl_ref),
            "entropy": float(ent),
            "clip_fraction": float(clipped.to(lp_new.dtype).mean()),
            "approx_kl": float(approx_kl),
            "ratio_mean": float(r_valid.mean()),
            "ratio_min": float(r_valid.min()),
            "ratio_max": float(r_valid.max()),
            "ratio_std": float(r_valid.std(correction=0)),
        }
    return loss, diagnostics


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip_eps: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Squared-error value loss, optionally with PPO value clipping.

    Over the valid entries :math:`V` (all entries when ``mask`` is ``None``):

    .. math::
        L &= \frac{1}{2|V|} \sum_{i \in V} (v_i - R_i)^2 \qquad \text{(no clipping)} \\
        L &= \frac{1}{2|V|} \sum_{i \in V} \max\big((v_i - R_i)^2,\
             (v^{\mathrm{old}}_i + \mathrm{clip}(v_i - v^{\mathrm{old}}_i, -\varepsilon, \varepsilon) - R_i)^2\big)
             \qquad \text{(clipping)}

    With clipping, an entry whose clipped prediction is further from the target than the unclipped one
    gets no gradient: the critic cannot move more than :math:`\varepsilon` from ``old_values`` in a step
    that only makes that entry worse.

    Args:
        values: (S) current value predictions :math:`v`; carries the gradient.
        returns: (S) targets :math:`R`; detached.
        old_values: (S) predictions of the critic that collected the data; detached. Needed with ``clip_eps``.
        clip_eps: :math:`\varepsilon \ge 0`; ``None`` means no clipping. Needs ``old_values``.
        mask: (S) bool, or float holding 0/1, marking valid entries; ``None`` means all are valid.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: mismatched shapes, ``clip_eps`` without ``old_values`` (or the reverse),
            negative ``clip_eps``, or no valid entry.
    """
    shape = values.shape
    _check_shape("returns", returns, shape, "values")
    if (clip_eps is None) != (old_values is None):
        raise ValueError("value clipping needs both clip_eps and old_values (or neither)")
    if old_values is not None:
        _check_shape("old_values", old_values, shape, "values")
    if clip_eps is not None and clip_eps < 0:
        raise ValueError(f"clip_eps must be >= 0; got {clip_eps}")
    valid = _valid_mask(mask, shape, values.device, "values")
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("no valid entries: mask is all False")

    zero = values.new_zeros(())
    v = torch.where(valid, values.reshape(-1), zero)
    target = torch.where(valid, returns.detach().reshape(-1).to(v.dtype), zero)
    sq = (v - target) ** 2
    if old_values is not None:
        v_old = torch.where(valid, old_values.detach().reshape(-1).to(v.dtype), zero)
        v_clipped = v_old + torch.clamp(v - v_old, -clip_eps, clip_eps)
        sq = torch.maximum(sq, (v_clipped - target) ** 2)
    return 0.5 * torch.where(valid, sq, zero).sum() / n_valid
