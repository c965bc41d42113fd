"""The estimators against hand-computed cases, loop references, row order and the reductions."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gagpo import advantages as A
from gagpo.batch import StepBatch

from . import reference as ref


def make_rows(trajs):
    """trajs: list of (group_id, rewards, keys, end) with keys of length len(rewards) + 1.

    end is "terminated", "truncated" or "open" (the batch stops mid-episode).
    """
    rows = []
    for tid, (gid, rewards, keys, end) in enumerate(trajs):
        for t, r in enumerate(rewards):
            last = t == len(rewards) - 1
            rows.append(
                dict(group_id=gid, traj_id=tid, step=t, obs_key=keys[t], next_obs_key=keys[t + 1], reward=float(r),
                     terminated=last and end == "terminated", truncated=last and end == "truncated")
            )
    return rows


# Worked example used in chapter 6: one group, three rollouts from s0, gamma = 0.5.
#   A: s0 -> s1 -> s2 -> win (rewards 0, 0, 1)
#   B: s0 -> s1 -> s3 -> fail (rewards 0, 0, 0)
#   C: s0 -> s4 -> win (rewards 0, 1)
HAND = make_rows([
    ("g", [0, 0, 1], ["s0", "s1", "s2", "end"], "terminated"),
    ("g", [0, 0, 0], ["s0", "s1", "s3", "end"], "terminated"),
    ("g", [0, 1], ["s0", "s4", "end"], "terminated"),
])


@pytest.fixture
def hand():
    return StepBatch.from_rows(HAND)


def test_returns_by_hand(hand):
    np.testing.assert_allclose(A.discounted_returns(hand, 0.5), [0.25, 0.5, 1, 0, 0, 0, 0.5, 1])
    np.testing.assert_allclose(A.discounted_returns(hand, 1.0), [1, 1, 1, 0, 0, 0, 1, 1])


def test_value_proxy_by_hand(hand):
    values, next_values = A.grouped_value_proxy(hand, 0.5)
    # V(s0) = (0.25 + 0 + 0.5)/3, V(s1) = (0.5 + 0)/2, V(s2) = 1, V(s3) = 0, V(s4) = 1
    np.testing.assert_allclose(values, [0.25, 0.25, 1, 0.25, 0.25, 0, 0.25, 1])
    np.testing.assert_allclose(next_values, [0.25, 1, 0, 0.25, 0, 0, 1, 0])


def test_gagpo_by_hand(hand):
    # delta = r + 0.5 V(s') - V(s): A: -0.125, 0.25, 0 | B: -0.125, -0.25, 0 | C: 0.25, 0
    np.testing.assert_allclose(A.gagpo_advantages(hand, 0.5, 0.0, norm="none"), [-0.125, 0.25, 0, -0.125, -0.25, 0, 0.25, 0])
    # lambda = 0.5: A_t = delta_t + 0.25 A_{t+1}
    lam_half = [-0.0625, 0.25, 0, -0.1875, -0.25, 0, 0.25, 0]
    np.testing.assert_allclose(A.gagpo_advantages(hand, 0.5, 0.5, norm="none"), lam_half)
    np.testing.assert_allclose(A.gagpo_advantages(hand, 0.5, 0.5, norm="mean"), lam_half)  # these sum to 0
    x = np.array(lam_half)
    np.testing.assert_allclose(A.gagpo_advantages(hand, 0.5, 0.5, norm="mean_std", eps=0.0), x / x.std())
    # lambda = 1: G - V(s)
    np.testing.assert_allclose(A.gagpo_advantages(hand, 0.5, 1.0, norm="none"), [0, 0.25, 0, -0.25, -0.25, 0, 0.25, 0])


def test_grpo_rloo_by_hand(hand):
    s = np.sqrt(2 / 9)  # population std of (1, 0, 1)
    a, b = (1 / 3) / s, (-2 / 3) / s
    np.testing.assert_allclose(A.grpo_advantages(hand, "mean_std", eps=0.0), [a, a, a, b, b, b, a, a])
    np.testing.assert_allclose(A.grpo_advantages(hand, "mean"), [1 / 3] * 3 + [-2 / 3] * 3 + [1 / 3] * 2)
    np.testing.assert_allclose(A.grpo_advantages(hand, "none"), [1, 1, 1, 0, 0, 0, 1, 1])
    np.testing.assert_allclose(A.rloo_advantages(hand), [0.5] * 3 + [-1] * 3 + [0.5] * 2)


def test_gigpo_by_hand(hand):
    step = [0, 0.25, 0, -0.25, -0.25, 0, 0.25, 0]  # G - mean over the anchor group
    np.testing.assert_allclose(A.gigpo_step_advantages(hand, 0.5, norm="mean"), step)
    episode = np.array([1 / 3] * 3 + [-2 / 3] * 3 + [1 / 3] * 2)
    np.testing.assert_allclose(A.gigpo_advantages(hand, 0.5, step_weight=2.0, norm="mean"), episode + 2 * np.array(step))
    # mean_std: s0 group G = (0.25, 0, 0.5) has std sqrt(1/24); s1 group (0.5, 0) std 0.25; singletons give 0
    s0 = np.sqrt(((0.0) ** 2 + 0.25 ** 2 + 0.25 ** 2) / 3)
    expected = [0 / s0, 0.25 / 0.25, 0, -0.25 / s0, -0.25 / 0.25, 0, 0.25 / s0, 0]
    np.testing.assert_allclose(A.gigpo_step_advantages(hand, 0.5, norm="mean_std", eps=0.0), expected)


def test_reinforce_baselines_by_hand(hand):
    g = np.array([0.25, 0.5, 1, 0, 0, 0, 0.5, 1])
    np.testing.assert_allclose(A.reinforce_advantages(hand, 0.5), g)
    np.testing.assert_allclose(A.reinforce_advantages(hand, 0.5, baseline="mean"), g - g.mean())
    step_mean = np.array([0.25, 0.5, 0.5, 0.25, 0.5, 0.5, 0.25, 0.5])  # means at steps 0, 1, 2
    np.testing.assert_allclose(A.reinforce_advantages(hand, 0.5, baseline="step_mean"), g - step_mean)
    np.testing.assert_allclose(A.reinforce_advantages(hand, 0.5, baseline=np.ones(8)), g - 1)
    with pytest.raises(ValueError, match="shape"):
        A.reinforce_advantages(hand, 0.5, baseline=np.ones(3))


def test_gae_by_hand_with_truncation():
    # one trajectory cut by the step limit: the last row bootstraps from V(s'), a terminated one does not
    rows = make_rows([("g", [1, 0], ["a", "b", "c"], "truncated")])
    b = StepBatch.from_rows(rows)
    v, nv = np.array([0.5, 0.25]), np.array([0.25, 2.0])
    # delta_1 = 0 + 0.5*2 - 0.25 = 0.75; delta_0 = 1 + 0.5*0.25 - 0.5 = 0.625; A_0 = 0.625 + 0.5*0.5*0.75
    np.testing.assert_allclose(A.gae_advantages(b, v, nv, 0.5, 0.5), [0.625 + 0.1875, 0.75])
    rows[-1]["truncated"], rows[-1]["terminated"] = False, True
    b = StepBatch.from_rows(rows)
    np.testing.assert_allclose(A.gae_advantages(b, v, nv, 0.5, 0.5), [0.625 - 0.0625, -0.25])


def test_value_proxy_bootstraps_truncated_rows_only_from_seen_keys():
    rows = make_rows([
        ("g", [0, 0], ["a", "b", "a"], "truncated"),   # cut at "a", which the group has seen: bootstrap
        ("g", [1], ["a", "end"], "terminated"),
        ("g", [0], ["a", "never"], "truncated"),       # cut at a key never acted in: next value 0
    ])
    b = StepBatch.from_rows(rows)
    values, next_values = A.grouped_value_proxy(b, 1.0)
    va = (0 + 1 + 0) / 3
    np.testing.assert_allclose(values, [va, 0, va, va])
    np.testing.assert_allclose(next_values, [0, va, 0, 0])


def test_singletons_and_groups_of_one():
    b = StepBatch.from_rows(make_rows([("solo", [0, 3], ["a", "b", "c"], "terminated")]))
    for norm in ("mean", "mean_std"):
        np.testing.assert_array_equal(A.grpo_advantages(b, norm), 0)
        np.testing.assert_array_equal(A.gigpo_step_advantages(b, 1.0, norm), 0)
    np.testing.assert_array_equal(A.rloo_advantages(b), 0)
    np.testing.assert_allclose(A.grpo_advantages(b, "none"), 3)


@pytest.mark.parametrize("fn,kwargs", [
    (A.grpo_advantages, dict(norm="zscore")),
    (A.gagpo_advantages, dict(gamma=0.9, lam=0.9, norm="std")),
    (A.gigpo_advantages, dict(gamma=0.9, norm="none")),
    (A.reinforce_advantages, dict(gamma=0.9, baseline="median")),
])
def test_unknown_modes_raise(hand, fn, kwargs):
    with pytest.raises(ValueError, match="unknown"):
        fn(hand, **kwargs)


@pytest.mark.parametrize("gamma,lam", [(1.5, 0.9), (0.9, -0.1)])
def test_out_of_range_discount_raises(hand, gamma, lam):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.gagpo_advantages(hand, gamma, lam)


# ---------------------------------------------------------------------- random batches
@st.composite
def batches(draw, max_groups=4, max_group_size=5, max_len=7, n_keys=4, terminated=None):
    """Random but well-formed rollout groups; keys come from a small alphabet so anchor states repeat."""
    trajs = []
    for g in range(draw(st.integers(1, max_groups))):
        start = "s0"  # every trajectory of a group starts from the same task
        for _ in range(draw(st.integers(1, max_group_size))):
            length = draw(st.integers(1, max_len))
            keys = [start] + [f"s{draw(st.integers(0, n_keys - 1))}" for _ in range(length)]
            rewards = [draw(st.sampled_from([0.0, 0.0, 1.0, -0.5, 2.0])) for _ in range(length)]
            end = draw(st.sampled_from(["terminated", "truncated", "open"])) if terminated is None else "terminated"
            trajs.append((f"group{g}", rewards, keys, end))
    rows = make_rows(trajs)
    perm = draw(st.permutations(range(len(rows))))
    return [rows[i] for i in perm]


FAST = settings(max_examples=60, deadline=None)


@FAST
@given(rows=batches(), gamma=st.sampled_from([0.0, 0.5, 0.9, 1.0]), lam=st.sampled_from([0.0, 0.7, 1.0]),
       norm=st.sampled_from(["none", "mean", "mean_std"]))
def test_vectorised_equals_loops(rows, gamma, lam, norm):
    b = StepBatch.from_rows(rows)
    np.testing.assert_allclose(A.discounted_returns(b, gamma), ref.loop_returns(rows, gamma), atol=1e-12)
    np.testing.assert_allclose(A.grpo_advantages(b, norm), ref.loop_grpo(rows, norm), atol=1e-9)
    np.testing.assert_allclose(A.rloo_advantages(b), ref.loop_rloo(rows), atol=1e-12)
    v, nv = A.grouped_value_proxy(b, gamma)
    rv, rnv = ref.loop_value_proxy(rows, gamma)
    np.testing.assert_allclose(v, rv, atol=1e-12)
    np.testing.assert_allclose(nv, rnv, atol=1e-12)
    np.testing.assert_allclose(A.gagpo_advantages(b, gamma, lam, norm), ref.loop_gagpo(rows, gamma, lam, norm), atol=1e-9)
    if norm != "none":
        np.testing.assert_allclose(A.gigpo_step_advantages(b, gamma, norm), ref.loop_gigpo_step(rows, gamma, norm), atol=1e-9)
    rng = np.random.default_rng(len(rows))
    vals, nvals = rng.normal(size=len(rows)), rng.normal(size=len(rows))
    np.testing.assert_allclose(A.gae_advantages(b, vals, nvals, gamma, lam), ref.loop_gae(rows, vals, nvals, gamma, lam), atol=1e-9)


@FAST
@given(rows=batches(), seed=st.integers(0, 2**16))
def test_row_order_invariance(rows, seed):
    b = StepBatch.from_rows(rows)
    perm = np.random.default_rng(seed).permutation(len(rows))
    shuffled = b.take(perm)
    for fn in (lambda x: A.gagpo_advantages(x, 0.9, 0.8), lambda x: A.gigpo_advantages(x, 0.9),
               lambda x: A.grpo_advantages(x), lambda x: A.rloo_advantages(x),
               lambda x: A.reinforce_advantages(x, 0.9, "step_mean")):
        np.testing.assert_allclose(fn(shuffled), fn(b)[perm], atol=1e-12)


# ---------------------------------------------------------------------- reductions
@FAST
@given(rows=batches(terminated=True), gamma=st.sampled_from([0.5, 0.9, 1.0]))
def test_lambda_one_is_return_minus_proxy_and_gigpo_step_term(rows, gamma):
    b = StepBatch.from_rows(rows)
    values, _ = A.grouped_value_proxy(b, gamma)
    lam1 = A.gagpo_advantages(b, gamma, 1.0, norm="none")
    np.testing.assert_allclose(lam1, A.discounted_returns(b, gamma) - values, atol=1e-9)
    np.testing.assert_allclose(lam1, A.gigpo_step_advantages(b, gamma, norm="mean"), atol=1e-9)
    episode = A.grpo_advantages(b, "mean")
    np.testing.assert_allclose(A.gigpo_advantages(b, gamma, 1.0, "mean") - episode, lam1, atol=1e-9)


@FAST
@given(rows=batches(), gamma=st.sampled_from([0.5, 0.9, 1.0]))
def test_lambda_zero_is_one_step_td_error(rows, gamma):
    b = StepBatch.from_rows(rows)
    v, nv = A.grouped_value_proxy(b, gamma)
    td = b.reward + gamma * nv - v
    np.testing.assert_allclose(A.gagpo_advantages(b, gamma, 0.0, norm="none"), td, atol=1e-12)


@FAST
@given(data=st.data())
def test_distinct_states_reduce_to_dr_grpo_at_step_zero(data):
    rows = data.draw(batches(terminated=True, n_keys=10_000))
    # make every non-initial state distinct: rename keys after step 0 per trajectory
    for r in rows:
        if r["step"] > 0:
            r["obs_key"] = (r["traj_id"], r["obs_key"], r["step"])
        r["next_obs_key"] = (r["traj_id"], r["next_obs_key"], r["step"] + 1)
    b = StepBatch.from_rows(rows)
    first = b.step == 0
    gagpo = A.gagpo_advantages(b, 1.0, 1.0, norm="none")
    np.testing.assert_allclose(gagpo[first], A.grpo_advantages(b, "mean")[first], atol=1e-9)


def test_reduction_needs_distinct_states(hand):
    """The Dr. GRPO reduction is a property of the state structure, not an identity: shared states break it."""
    first = hand.step == 0
    gagpo = A.gagpo_advantages(hand, 0.5, 1.0, norm="none")[first]
    assert not np.allclose(gagpo, A.grpo_advantages(hand, "mean")[first])


def test_mean_std_normalisation_standardises_each_group():
    rows = make_rows([
        ("a", [0, 1], ["s0", "s1", "e"], "terminated"), ("a", [0, 0, 0], ["s0", "s2", "s3", "e"], "terminated"),
        ("b", [1], ["s0", "e"], "terminated"), ("b", [0, 0], ["s0", "s5", "e"], "truncated"),
    ])
    b = StepBatch.from_rows(rows)
    adv = A.gagpo_advantages(b, 0.9, 0.95, norm="mean_std", eps=0.0)
    for g in ("a", "b"):
        x = adv[b.group_id == g]
        assert abs(x.mean()) < 1e-12 and abs(x.std() - 1) < 1e-9
