"""Tests for gagpo.losses: hand-computed cases, a loop reference, gradients, masking and errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gagpo.losses import kl_k3, ppo_clip_loss, value_loss

DT = torch.float64


def t(values, dtype=DT, requires_grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# --------------------------------------------------------------------------------------------------
# A naive reference: Python loops over actions and tokens, autograd on scalars.
# --------------------------------------------------------------------------------------------------


def loop_reference(
    logp_new, logp_old, advantages, action_index, mask, ratio_level, aggregation, eps=0.2, eps_high=None
):
    """Per-token loss and per-token ratio from the definitions, one token at a time."""
    eps_high = eps if eps_high is None else eps_high
    lnew, lold = logp_new.reshape(-1), logp_old.reshape(-1)
    idx, valid = action_index.reshape(-1).tolist(), mask.reshape(-1).tolist()
    tokens_of = {}
    for tok, (a, ok) in enumerate(zip(idx, valid)):
        if ok:
            tokens_of.setdefault(a, []).append(tok)
    token_losses, action_losses, ratios = [], [], []
    for a, toks in tokens_of.items():
        if ratio_level == "action":
            mean_log_ratio = sum(lnew[s] - lold[s] for s in toks) / len(toks)
        losses_a = []
        for tok in toks:
            r = torch.exp(mean_log_ratio) if ratio_level == "action" else torch.exp(lnew[tok] - lold[tok])
            adv = advantages[a]
            surrogate = torch.min(r * adv, torch.clamp(r, 1 - eps, 1 + eps_high) * adv)
            losses_a.append(-surrogate)
            ratios.append(float(r.detach()))
        token_losses += losses_a
        action_losses.append(sum(losses_a) / len(losses_a))
    if aggregation == "token_mean":
        loss = sum(token_losses) / len(token_losses)
    else:
        loss = sum(action_losses) / len(action_losses)
    return loss, ratios


def random_batch(seed, shape=(3, 7), max_len=4, shift=0.3):
    """Random padded batch; actions of random length scattered over the batch in shuffled order."""
    g = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    mask = torch.rand(n, generator=g) < 0.8
    n_valid = int(mask.sum())
    lengths = []
    while sum(lengths) < n_valid:
        lengths.append(int(torch.randint(1, max_len + 1, (1,), generator=g)))
    lengths[-1] -= sum(lengths) - n_valid
    ids = torch.cat([torch.full((length,), a) for a, length in enumerate(lengths)])
    ids = ids[torch.randperm(n_valid, generator=g)]
    action_index = torch.full((n,), -1, dtype=torch.long)
    action_index[mask] = ids
    logp_old = -torch.rand(n, generator=g, dtype=DT) * 3
    logp_new = logp_old + shift * torch.randn(n, generator=g, dtype=DT)
    advantages = torch.randn(len(lengths), generator=g, dtype=DT)
    return (
        logp_new.reshape(shape).requires_grad_(True),
        logp_old.reshape(shape),
        advantages,
        action_index.reshape(shape),
        mask.reshape(shape),
    )


# --------------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------------


def test_token_ratio_hand_case_clips_both_sides():
    # One token per action, eps = 0.2, so the ratio range is [0.8, 1.2].
    #   r    A    r*A    clip(r)*A   -min     clipped?
    #  1.5   +1   1.5    1.2         -1.2     yes (A>0, r>1.2)
    #  0.5   -1  -0.5   -0.8          0.8     yes (A<0, r<0.8)
    #  1.5   -1  -1.5   -1.2          1.5     no  (pessimistic branch is the unclipped one)
    #  0.5   +2   1.0    1.6         -1.0     no
    #  1.1   +3   3.3    3.3         -3.3     no
    # token_mean = (-1.2 + 0.8 + 1.5 - 1.0 - 3.3) / 5 = -0.64 ; clip_fraction = 2/5
    r = [1.5, 0.5, 1.5, 0.5, 1.1]
    logp_old = t([-1.0, -2.0, -0.5, -1.5, -3.0])
    logp_new = (logp_old + torch.log(t(r))).detach().requires_grad_(True)
    advantages = t([1.0, -1.0, -1.0, 2.0, 3.0])
    action_index = torch.arange(5)
    loss, diag = ppo_clip_loss(logp_new, logp_old, advantages, action_index, ratio_level="token")
    assert loss.item() == pytest.approx(-0.64)
    assert diag["loss"] == pytest.approx(-0.64)
    assert diag["policy_loss"] == pytest.approx(-0.64)
    assert diag["clip_fraction"] == pytest.approx(0.4)
    assert diag["ratio_mean"] == pytest.approx(5.1 / 5)
    assert diag["ratio_min"] == pytest.approx(0.5)
    assert diag["ratio_max"] == pytest.approx(1.5)
    mean = 5.1 / 5
    assert diag["ratio_std"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in r) / 5))
    assert diag["approx_kl"] == pytest.approx(sum((x - 1) - math.log(x) for x in r) / 5)
    assert diag["kl_ref"] == 0.0 and diag["entropy"] == 0.0
    # d(-r A)/d logp_new = -A r where unclipped, 0 where clipped; then / 5 tokens.
    expected = t([0.0, 0.0, 1.5, -1.0, -3.3]) / 5
    torch.testing.assert_close(grad_of(loss, logp_new), expected)


def test_clip_eps_high_widens_only_the_upper_side():
    # eps = 0.2, eps_high = 0.28: range [0.8, 1.28].
    # r=1.5, A=+1 -> -min(1.5, 1.28) = -1.28 ; r=0.5, A=-1 -> -min(-0.5, -0.8) = 0.8  => mean -0.24
    logp_old = t([0.0, 0.0])
    logp_new = torch.log(t([1.5, 0.5]))
    loss, diag = ppo_clip_loss(
        logp_new, logp_old, t([1.0, -1.0]), torch.arange(2), ratio_level="token", clip_eps_high=0.28
    )
    assert loss.item() == pytest.approx((-1.28 + 0.8) / 2)
    assert diag["clip_fraction"] == pytest.approx(1.0)
    # r = 1.25 is inside the wider range: not clipped, although it is outside [0.8, 1.2].
    loss, diag = ppo_clip_loss(
        torch.log(t([1.25])), t([0.0]), t([1.0]), torch.arange(1), ratio_level="token", clip_eps_high=0.28
    )
    assert loss.item() == pytest.approx(-1.25)
    assert diag["clip_fraction"] == 0.0


def hand_action_batch():
    """A (2, 4) padded batch, actions interleaved across rows.

    action 0: two tokens with log ratios ln 2 and 0    -> r_0 = exp((ln 2 + 0)/2) = sqrt(2)
    action 1: three tokens with log ratio ln 0.9 each  -> r_1 = 0.9
    action 2: has no valid token (its advantage must be ignored everywhere)
    Padding holds garbage and action index -1.
    """
    log_ratio = t([[math.log(0.9), math.log(2.0), math.log(0.9), 0.0], [0.0, math.log(0.9), 0.0, 0.0]])
    action_index = torch.tensor([[1, 0, 1, -1], [0, 1, -1, -1]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    logp_old = t([[-1.0, -2.0, -0.3, 0.0], [-0.7, -1.2, 0.0, 0.0]])
    logp_new = torch.where(mask, logp_old + log_ratio, t(7.0)).requires_grad_(True)
    advantages = t([1.0, -2.0, 100.0])
    return logp_new, logp_old, advantages, action_index, mask


def test_action_ratio_hand_case():
    logp_new, logp_old, advantages, action_index, mask = hand_action_batch()
    # action 0: r = sqrt(2) > 1.2 with A = +1 -> clipped, loss -1.2 on each of its 2 tokens
    # action 1: r = 0.9 in range with A = -2  -> loss -(0.9 * -2) = 1.8 on each of its 3 tokens
    # token_mean  = (2 * -1.2 + 3 * 1.8) / 5 = 0.6
    # action_mean = (-1.2 + 1.8) / 2 = 0.3      (action 2 has no token and is left out)
    loss, diag = ppo_clip_loss(logp_new, logp_old, advantages, action_index, mask, ratio_level="action")
    assert loss.item() == pytest.approx(0.6)
    assert diag["clip_fraction"] == pytest.approx(2 / 5)
    assert diag["ratio_max"] == pytest.approx(math.sqrt(2))
    assert diag["ratio_min"] == pytest.approx(0.9)
    assert diag["ratio_mean"] == pytest.approx((2 * math.sqrt(2) + 3 * 0.9) / 5)
    # approx_kl always uses the token ratios 2, 1, 0.9, 0.9, 0.9.
    token_r = [2.0, 1.0, 0.9, 0.9, 0.9]
    assert diag["approx_kl"] == pytest.approx(sum((x - 1) - math.log(x) for x in token_r) / 5)
    # Gradient: action 0 is clipped as a whole -> 0 on both its tokens. Action 1 contributes
    # 3 * (-r_1 A_1) / 5 and d r_1 / d logp_t = r_1 / 3, so each of its tokens gets -A_1 r_1 / 5 = 0.36.
    expected = t([[0.36, 0.0, 0.36, 0.0], [0.0, 0.36, 0.0, 0.0]])
    torch.testing.assert_close(grad_of(loss, logp_new), expected)

    loss, diag = ppo_clip_loss(
        logp_new, logp_old, advantages, action_index, mask, ratio_level="action", aggregation="action_mean"
    )
    assert loss.item() == pytest.approx(0.3)
    # action_mean: action 1 contributes -r_1 A_1 / 2; per token -A_1 r_1 / (2 * 3) = 0.3.
    expected = t([[0.3, 0.0, 0.3, 0.0], [0.0, 0.3, 0.0, 0.0]])
    torch.testing.assert_close(grad_of(loss, logp_new), expected)


def test_token_ratio_on_the_action_batch_differs():
    logp_new, logp_old, advantages, action_index, mask = hand_action_batch()
    # Token ratios: action 0 -> 2 (clipped, -1.2) and 1 (not clipped, -1.0); action 1 -> 0.9 x3 (1.8 each).
    # token_mean = (-1.2 - 1.0 + 5.4) / 5 = 0.64 ; only 1 token of 5 clipped.
    loss, diag = ppo_clip_loss(logp_new, logp_old, advantages, action_index, mask, ratio_level="token")
    assert loss.item() == pytest.approx(0.64)
    assert diag["clip_fraction"] == pytest.approx(1 / 5)
    assert diag["ratio_max"] == pytest.approx(2.0)
    # The unclipped token of action 0 still gets gradient -A r / 5 = -0.2 (the action ratio gave 0).
    expected = t([[0.36, 0.0, 0.36, 0.0], [-0.2, 0.36, 0.0, 0.0]])
    torch.testing.assert_close(grad_of(loss, logp_new), expected)


# --------------------------------------------------------------------------------------------------
# Equivalences with the loop reference and between forms
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio_level", ["token", "action"])
@pytest.mark.parametrize("aggregation", ["token_mean", "action_mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_off_policy(ratio_level, aggregation, seed):
    logp_new, logp_old, advantages, action_index, mask = random_batch(seed)
    loss, diag = ppo_clip_loss(
        logp_new, logp_old, advantages, action_index, mask, ratio_level=ratio_level, aggregation=aggregation
    )
    ref_loss, ref_ratios = loop_reference(
        logp_new, logp_old, advantages, action_index, mask, ratio_level, aggregation
    )
    assert 0 < diag["clip_fraction"] < 1  # the batch really exercises both branches
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad_of(loss, logp_new), grad_of(ref_loss, logp_new))
    assert diag["ratio_min"] == pytest.approx(min(ref_ratios))
    assert diag["ratio_max"] == pytest.approx(max(ref_ratios))
    assert diag["ratio_mean"] == pytest.approx(sum(ref_ratios) / len(ref_ratios))


def test_action_ratio_is_exp_of_mean_log_ratio_per_action():
    # With a clip range too wide to bind, the token_mean loss is linear in the ratios:
    # L = -(1/N) sum_t r_{a(t)} A_{a(t)}. A one-hot advantage on action a reads off L = -n_a r_a / N,
    # which is compared with r_a = exp(mean log ratio) computed token by token in Python.
    logp_new, logp_old, _, action_index, mask = random_batch(3)
    n_actions = int(action_index.max()) + 1
    for a in range(n_actions):
        advantages = torch.zeros(n_actions, dtype=DT)
        advantages[a] = 1.0
        loss, _ = ppo_clip_loss(
            logp_new, logp_old, advantages, action_index, mask, clip_eps=10.0, clip_eps_high=1e9
        )
        log_ratios = [
            (logp_new.reshape(-1)[i] - logp_old.reshape(-1)[i]).item()
            for i in range(mask.numel())
            if mask.reshape(-1)[i] and action_index.reshape(-1)[i] == a
        ]
        r_a = math.exp(sum(log_ratios) / len(log_ratios))
        n_total = int(mask.sum())
        assert loss.item() == pytest.approx(-len(log_ratios) * r_a / n_total)


@pytest.mark.parametrize("aggregation", ["token_mean", "action_mean"])
def test_token_and_action_levels_agree_for_single_token_actions(aggregation):
    g = torch.Generator().manual_seed(7)
    n = 12
    logp_old = -torch.rand(n, generator=g, dtype=DT)
    logp_new = (logp_old + 0.5 * torch.randn(n, generator=g, dtype=DT)).requires_grad_(True)
    advantages = torch.randn(n, generator=g, dtype=DT)
    action_index = torch.randperm(n, generator=g)  # one token per action, any order
    out = {}
    for level in ("token", "action"):
        loss, diag = ppo_clip_loss(
            logp_new, logp_old, advantages, action_index, ratio_level=level, aggregation=aggregation
        )
        out[level] = (loss, diag, grad_of(loss, logp_new))
    assert out["token"][1]["clip_fraction"] > 0
    torch.testing.assert_close(out["token"][0], out["action"][0])
    torch.testing.assert_close(out["token"][2], out["action"][2])
    for key, value in out["token"][1].items():
        assert out["action"][1][key] == pytest.approx(value), key


@pytest.mark.parametrize("ratio_level", ["token", "action"])
@pytest.mark.parametrize("aggregation", ["token_mean", "action_mean"])
def test_on_policy_gradient_is_advantage_over_count(ratio_level, aggregation):
    # At logp_new == logp_old every ratio is 1. With L = (1/N) sum_a n_a (-r_a A_a) and
    # d r_a / d logp_t = r_a / n_a, the gradient on token t of action a is -A_a / N (token_mean);
    # with L = (1/M) sum_a (-r_a A_a) it is -A_a / (M n_a) (action_mean). Same for token ratios.
    logp_new, _, advantages, action_index, mask = random_batch(4)
    logp_old = logp_new.detach().clone()
    loss, diag = ppo_clip_loss(
        logp_new, logp_old, advantages, action_index, mask, ratio_level=ratio_level, aggregation=aggregation
    )
    grad = grad_of(loss, logp_new)
    n_valid = int(mask.sum())
    counts = torch.bincount(action_index[mask], minlength=len(advantages)).to(DT)
    n_present = int((counts > 0).sum())
    safe_index = torch.where(mask, action_index, 0)
    if aggregation == "token_mean":
        expected = -advantages[safe_index] / n_valid
    else:
        expected = -advantages[safe_index] / (n_present * counts[safe_index])
    expected = torch.where(mask, expected, torch.zeros((), dtype=DT))
    torch.testing.assert_close(grad, expected)
    ref_loss, _ = loop_reference(logp_new, logp_old, advantages, action_index, mask, ratio_level, aggregation)
    torch.testing.assert_close(grad, grad_of(ref_loss, logp_new))
    assert diag["approx_kl"] == 0.0
    assert diag["clip_fraction"] == 0.0
    assert diag["ratio_mean"] == pytest.approx(1.0) and diag["ratio_std"] == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------------
# KL, entropy and the diagnostics identity
# --------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=1, max_size=16),
    st.lists(st.floats(-20, 20), min_size=1, max_size=16),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_kl_k3_is_nonnegative(logp, logp_ref, dtype):
    n = min(len(logp), len(logp_ref))
    k3 = kl_k3(torch.tensor(logp[:n], dtype=dtype), torch.tensor(logp_ref[:n], dtype=dtype))
    assert bool((k3 >= 0).all()), k3


def test_kl_k3_values():
    # d = ln 2 -> 2 - ln 2 - 1 ; d = ln 0.5 -> 0.5 + ln 2 - 1 ; equal log-probs -> 0.
    logp = t([0.0, 0.0, -1.3])
    logp_ref = t([math.log(2.0), math.log(0.5), -1.3])
    expected = t([1 - math.log(2.0), math.log(2.0) - 0.5, 0.0])
    torch.testing.assert_close(kl_k3(logp, logp_ref), expected)


def test_kl_penalty_and_entropy_bonus():
    logp_new = t([0.0, 0.0], requires_grad=True)
    logp_old = logp_new.detach().clone()
    logp_ref = t([math.log(2.0), math.log(0.5)])
    entropy = t([1.0, 3.0], requires_grad=True)
    advantages = t([0.5, -1.0])
    loss, diag = ppo_clip_loss(
        logp_new, logp_old, advantages, torch.arange(2), ratio_level="action",
        logp_ref=logp_ref, kl_coef=0.1, entropy=entropy, entropy_coef=0.01,
    )
    # policy: -(0.5 - 1.0)/2 = 0.25 ; k3 mean = ((2 - ln2 - 1) + (0.5 + ln2 - 1))/2 = 0.25 ; entropy mean 2.
    assert diag["policy_loss"] == pytest.approx(0.25)
    assert diag["kl_ref"] == pytest.approx(0.25)
    assert diag["entropy"] == pytest.approx(2.0)
    assert loss.item() == pytest.approx(0.25 + 0.1 * 0.25 - 0.01 * 2.0)
    g_new, g_ent = torch.autograd.grad(loss, [logp_new, entropy])
    # d k3 / d logp_new = 1 - exp(logp_ref - logp_new) -> (1 - 2, 1 - 0.5); policy part -A / 2.
    torch.testing.assert_close(g_new, t([-0.25, 0.5]) + 0.1 * t([-1.0, 0.5]) / 2)
    torch.testing.assert_close(g_ent, t([-0.005, -0.005]))


@pytest.mark.parametrize("aggregation", ["token_mean", "action_mean"])
def test_kl_ref_is_zero_at_reference_and_loss_identity_holds(aggregation):
    logp_new, logp_old, advantages, action_index, mask = random_batch(5)
    entropy = torch.rand(logp_new.shape, dtype=DT)
    loss, diag = ppo_clip_loss(
        logp_new, logp_old, advantages, action_index, mask, aggregation=aggregation,
        logp_ref=logp_new.detach().clone(), kl_coef=0.5, entropy=entropy, entropy_coef=0.1,
    )
    assert diag["kl_ref"] == 0.0
    assert diag["loss"] == pytest.approx(diag["policy_loss"] - 0.1 * diag["entropy"])
    # The KL term contributes no gradient at the reference: same gradient as without it.
    plain, _ = ppo_clip_loss(logp_new, logp_old, advantages, action_index, mask, aggregation=aggregation)
    torch.testing.assert_close(grad_of(loss, logp_new), grad_of(plain, logp_new))
    # Away from the reference the identity still holds and kl_ref > 0.
    loss, diag = ppo_clip_loss(
        logp_new, logp_old, advantages, action_index, mask, aggregation=aggregation,
        logp_ref=logp_old, kl_coef=0.5, entropy=entropy, entropy_coef=0.1,
    )
    assert diag["kl_ref"] > 0
    assert diag["loss"] == pytest.approx(diag["policy_loss"] + 0.5 * diag["kl_ref"] - 0.1 * diag["entropy"])


def test_old_logps_and_advantages_get_no_gradient():
    logp_new, logp_old, advantages, action_index, mask = random_batch(6)
    logp_old.requires_grad_(True)
    advantages.requires_grad_(True)
    logp_ref = logp_old.detach().clone().requires_grad_(True)
    loss, _ = ppo_clip_loss(logp_new, logp_old, advantages, action_index, mask, logp_ref=logp_ref, kl_coef=0.1)
    loss.backward()
    assert logp_new.grad is not None and logp_new.grad.abs().sum() > 0
    assert logp_old.grad is None and advantages.grad is None and logp_ref.grad is None


# --------------------------------------------------------------------------------------------------
# Aggregation and masking
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio_level", ["token", "action"])
def test_aggregations_agree_with_equal_lengths_and_differ_otherwise(ratio_level):
    g = torch.Generator().manual_seed(8)
    n_actions, length = 4, 3
    action_index = torch.arange(n_actions).repeat_interleave(length)
    action_index = action_index[torch.randperm(n_actions * length, generator=g)]
    logp_old = -torch.rand(n_actions * length, generator=g, dtype=DT)
    logp_new = (logp_old + 0.3 * torch.randn(n_actions * length, generator=g, dtype=DT)).requires_grad_(True)
    advantages = torch.randn(n_actions, generator=g, dtype=DT)

    def both(idx, adv):
        results = []
        for aggregation in ("token_mean", "action_mean"):
            loss, _ = ppo_clip_loss(logp_new, logp_old, adv, idx, ratio_level=ratio_level, aggregation=aggregation)
            results.append((loss, grad_of(loss, logp_new)))
        return results

    (l_tok, g_tok), (l_act, g_act) = both(action_index, advantages)
    torch.testing.assert_close(l_tok, l_act)
    torch.testing.assert_close(g_tok, g_act)
    # Merge actions 0 and 1 into one action of length 6: lengths 6, 3, 3 now differ.
    merged = torch.where(action_index == 1, 0, action_index)
    (l_tok, g_tok), (l_act, g_act) = both(merged, advantages)
    assert abs(l_tok.item() - l_act.item()) > 1e-3
    assert (g_tok - g_act).abs().max() > 1e-3


@pytest.mark.parametrize("ratio_level", ["token", "action"])
@pytest.mark.parametrize("aggregation", ["token_mean", "action_mean"])
def test_masked_tokens_do_not_affect_loss_or_gradients(ratio_level, aggregation):
    logp_new, logp_old, advantages, action_index, mask = random_batch(9)
    logp_ref = logp_old - 0.1
    entropy = torch.rand(logp_new.shape, dtype=DT)
    kwargs = dict(ratio_level=ratio_level, aggregation=aggregation, kl_coef=0.2, entropy_coef=0.05)

    def run(lnew, lold, lref, ent, idx, m):
        lnew = lnew.detach().clone().requires_grad_(True)
        loss, diag = ppo_clip_loss(lnew, lold, advantages, idx, m, logp_ref=lref, entropy=ent, **kwargs)
        return loss, diag, grad_of(loss, lnew)

    base = run(logp_new, logp_old, logp_ref, entropy, action_index, mask)
    pad = ~mask
    junk = torch.tensor([math.nan, math.inf, -math.inf, 50.0], dtype=DT).repeat(pad.numel())[: pad.numel()]
    garbage = torch.where(pad, junk.reshape(pad.shape), 0.0)
    perturbed = run(
        torch.where(pad, garbage, logp_new),
        torch.where(pad, -garbage, logp_old),
        torch.where(pad, garbage, logp_ref),
        torch.where(pad, garbage, entropy),
        torch.where(pad, 0, action_index),  # a masked token "claiming" action 0 changes nothing
        mask.to(DT),  # a 0/1 float mask means the same as the bool mask
    )
    assert pad.any()
    torch.testing.assert_close(perturbed[0], base[0])
    torch.testing.assert_close(perturbed[2], base[2])
    assert bool(torch.isfinite(perturbed[2]).all()) and bool((perturbed[2][pad] == 0).all())
    for key, value in base[1].items():
        assert perturbed[1][key] == pytest.approx(value), key
    # Sanity: the same perturbation on a *valid* token does change the loss.
    first_valid = mask.reshape(-1).nonzero()[0, 0]
    shifted = logp_new.detach().clone().reshape(-1)
    shifted[first_valid] += 0.5
    changed = run(shifted.reshape(mask.shape), logp_old, logp_ref, entropy, action_index, mask)
    assert abs(changed[0].item() - base[0].item()) > 1e-6


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _args(n=3):
    return t([0.0] * n), t([0.0] * n), t([1.0] * n), torch.arange(n)


def test_unknown_modes_raise():
    with pytest.raises(ValueError, match=r"unknown ratio_level 'sequence'; expected one of"):
        ppo_clip_loss(*_args(), ratio_level="sequence")
    with pytest.raises(ValueError, match=r"unknown aggregation 'token_sum'; expected one of"):
        ppo_clip_loss(*_args(), aggregation="token_sum")


@pytest.mark.parametrize(
    "name, change",
    [
        ("logp_old", dict(logp_old=t([0.0, 0.0]))),
        ("action_index", dict(action_index=torch.arange(4))),
        ("mask", dict(mask=torch.ones(3, 1, dtype=torch.bool))),
        ("logp_ref", dict(logp_ref=t([[0.0, 0.0, 0.0]]))),
        ("entropy", dict(entropy=t([0.0]))),
    ],
)
def test_mismatched_shapes_name_the_argument(name, change):
    logp_new, logp_old, advantages, action_index = _args()
    kwargs = dict(logp_new=logp_new, logp_old=logp_old, advantages=advantages, action_index=action_index)
    kwargs.update(change)
    with pytest.raises(ValueError, match=rf"^{name} has shape .* expected \(3,\)"):
        ppo_clip_loss(**kwargs)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(advantages=t([[1.0, 1.0, 1.0]])), "advantages must be 1-D"),
        (dict(action_index=torch.tensor([0, 1, 3])), r"action_index of valid tokens must lie in \[0, 3\)"),
        (dict(action_index=torch.tensor([0, -1, 2])), r"must lie in \[0, 3\)"),
        (dict(action_index=t([0.0, 1.0, 2.0])), "action_index must be an integer tensor"),
        (dict(mask=torch.zeros(3, dtype=torch.bool)), "no valid tokens"),
        (dict(mask=t([1.0, 0.5, 1.0])), "mask must be bool or hold only 0 and 1"),
        (dict(kl_coef=0.1), "needs logp_ref"),
        (dict(entropy_coef=0.1), "needs entropy"),
        (dict(clip_eps=-0.1), "clip widths must be >= 0"),
    ],
)
def test_bad_inputs_raise(change, message):
    logp_new, logp_old, advantages, action_index = _args()
    kwargs = dict(logp_new=logp_new, logp_old=logp_old, advantages=advantages, action_index=action_index)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        ppo_clip_loss(**kwargs)


def test_out_of_range_index_on_a_masked_token_is_fine():
    loss, _ = ppo_clip_loss(
        t([0.0, 0.0, 0.0]), t([0.0, 0.0, 0.0]), t([1.0, 2.0]), torch.tensor([0, 1, 99]),
        torch.tensor([True, True, False]), ratio_level="token",
    )
    assert loss.item() == pytest.approx(-1.5)


# --------------------------------------------------------------------------------------------------
# Value loss
# --------------------------------------------------------------------------------------------------


def test_value_loss_hand_case():
    # (V - R)^2 = (1, 0, 4) -> 0.5 * 5 / 3
    values = t([1.0, 2.0, 3.0], requires_grad=True)
    returns = t([0.0, 2.0, 5.0])
    loss = value_loss(values, returns)
    assert loss.item() == pytest.approx(0.5 * 5 / 3)
    torch.testing.assert_close(grad_of(loss, values), t([1.0, 0.0, -2.0]) / 3)


def test_value_loss_clipping_hand_case():
    # V_old = (0, 2, 2), eps = 0.5: V - V_old = (1, 0, 1) -> clipped (0.5, 0, 0.5) -> V_clip = (0.5, 2, 2.5)
    # (V_clip - R)^2 = (0.25, 0, 6.25); unclipped (1, 0, 4); max = (1, 0, 6.25) -> 0.5 * 7.25 / 3
    values = t([1.0, 2.0, 3.0], requires_grad=True)
    returns = t([0.0, 2.0, 5.0])
    old_values = t([0.0, 2.0, 2.0])
    loss = value_loss(values, returns, old_values=old_values, clip_eps=0.5)
    assert loss.item() == pytest.approx(0.5 * 7.25 / 3)
    # Entry 0: unclipped branch wins -> gradient (V - R) / 3. Entry 2: clipped branch wins -> no gradient.
    torch.testing.assert_close(grad_of(loss, values), t([1.0 / 3, 0.0, 0.0]))
    # A wide clip never binds: same as no clipping.
    wide = value_loss(values, returns, old_values=old_values, clip_eps=10.0)
    assert wide.item() == pytest.approx(0.5 * 5 / 3)


def test_value_loss_mask_and_errors():
    values = t([[1.0, 9.0], [3.0, math.nan]], requires_grad=True)
    returns = t([[0.0, 0.0], [5.0, 0.0]])
    mask = torch.tensor([[True, False], [True, False]])
    loss = value_loss(values, returns, mask=mask)
    assert loss.item() == pytest.approx(0.5 * (1 + 4) / 2)
    grad = grad_of(loss, values)
    torch.testing.assert_close(grad, t([[0.5, 0.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"^returns has shape"):
        value_loss(values, returns[0])
    with pytest.raises(ValueError, match="both clip_eps and old_values"):
        value_loss(values, returns, clip_eps=0.2)
    with pytest.raises(ValueError, match="both clip_eps and old_values"):
        value_loss(values, returns, old_values=returns)
    with pytest.raises(ValueError, match=r"^old_values has shape"):
        value_loss(values, returns, old_values=returns[0], clip_eps=0.2)
    with pytest.raises(ValueError, match=r"^mask has shape"):
        value_loss(values, returns, mask=mask[0])
    with pytest.raises(ValueError, match="no valid entries"):
        value_loss(values, returns, mask=torch.zeros_like(mask))


def test_kl_penalty_is_capped_per_token():
    """One token far from the reference (k3 = e^12 - 13) adds at most kl_clip; kl_clip=None is unbounded."""
    logp_new = torch.tensor([-1.0, -1.0], requires_grad=True)
    logp_ref = torch.tensor([-1.0, 11.0])  # d = 0 and d = 12
    idx = torch.tensor([0, 0])
    common = dict(logp_ref=logp_ref, kl_coef=1.0, ratio_level="token")
    _, capped = ppo_clip_loss(logp_new, logp_new.detach(), torch.zeros(1), idx, **common)
    _, raw = ppo_clip_loss(logp_new, logp_new.detach(), torch.zeros(1), idx, kl_clip=None, **common)
    assert capped["kl_ref"] == pytest.approx(10.0 / 2)
    assert raw["kl_ref"] == pytest.approx((math.expm1(12.0) - 12.0) / 2, rel=1e-5)
    loss, _ = ppo_clip_loss(logp_new, logp_new.detach(), torch.zeros(1), idx, kl_clip=10.0, **common)
    loss.backward()
    assert logp_new.grad[1].item() == 0.0  # the capped token gets no KL gradient
    with pytest.raises(ValueError, match="kl_clip"):
        ppo_clip_loss(logp_new, logp_new.detach(), torch.zeros(1), idx, kl_clip=0.0, **common)
