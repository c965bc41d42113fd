"""gagpo.integrations.verl: verl-agent's per-row calling convention in, the library's estimators inside.

Checked against the library on an independently built StepBatch, against hand-computed numbers (the
unbiased std), against a plain-loop transcription of verl-agent's GiGPO conventions, for torch/numpy
types, for the errors, and for an import that loads numpy only."""
from __future__ import annotations

import statistics
import subprocess
import sys

import numpy as np
import pytest

import gagpo
from gagpo.integrations import verl as V

GAMMA, LAM = 0.9, 0.7

# Two rollout groups; each trajectory: (uid, traj_uid, rewards, observations). Observations repeat
# across trajectories of a group (anchor states) and across groups (which must not be merged).
TRAJS = [
    ("u1", "a", [0.0, 0.0, 1.0], ["s0", "s1", "s2"]),
    ("u1", "b", [0.0, 0.5], ["s0", "s1"]),
    ("u1", "c", [0.0, 0.0, 0.0, 2.0], ["s0", "s3", "s1", "s2"]),
    ("u2", "d", [1.0], ["s0"]),
    ("u2", "e", [0.0, -1.0, 0.0], ["s0", "s1", "s1"]),
    ("u2", "f", [0.0, 3.0], ["s0", "s4"]),
]
L = 6


def rollout_rows(trajs=TRAJS, seed=0):
    """verl-agent-like rows: interleaved across trajectories (each trajectory's steps in order), with a
    padded response mask (one row has an empty response) and the episode reward on the last valid token."""
    rng = np.random.default_rng(seed)
    queues = [[(uid, tid, t, r, o, sum(rs)) for t, (r, o) in enumerate(zip(rs, obs))] for uid, tid, rs, obs in trajs]
    rows = []
    while any(queues):  # round-robin over the live trajectories, like a batched rollout loop
        for q in queues:
            if q:
                rows.append(q.pop(0))
    bs = len(rows)
    lengths = rng.integers(1, L + 1, size=bs)
    lengths[3] = 0  # an empty response: no token, but still a step of its trajectory
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.int64)
    token_rewards = np.zeros((bs, L), dtype=np.float32)
    for i, row in enumerate(rows):
        token_rewards[i, max(lengths[i] - 1, 0)] = row[5]
    cols = list(zip(*rows))
    return dict(
        index=np.array(cols[0], dtype=object), traj_index=np.array(cols[1], dtype=object), step=np.array(cols[2]),
        rewards=np.array(cols[3], dtype=object), anchor_obs=np.array(cols[4], dtype=object),
        episode=np.array(cols[5]), token_level_rewards=token_rewards, response_mask=mask,
    )


def library_batch(r):
    """The same rows as a StepBatch, built here from the explicit steps (not through the integration)."""
    succ = {(g, tr, t): o for g, tr, t, o in zip(r["index"], r["traj_index"], r["step"], r["anchor_obs"])}
    rows = []
    for g, tr, t, o, rew in zip(r["index"], r["traj_index"], r["step"], r["anchor_obs"], r["rewards"]):
        nxt = succ.get((g, tr, t + 1))
        rows.append(dict(group_id=g, traj_id=tr, step=int(t), obs_key=o, next_obs_key=nxt if nxt is not None else "END",
                         reward=float(rew), terminated=nxt is None, truncated=False))
    return gagpo.StepBatch.from_rows(rows)


def gagpo_call(r, **kw):
    return V.compute_gagpo_outcome_advantage(r["rewards"], r["response_mask"], r["anchor_obs"], r["index"], r["traj_index"],
                                             kw.pop("gamma", GAMMA), kw.pop("lam", LAM), **kw)


def gigpo_call(r, **kw):
    return V.compute_gigpo_outcome_advantage(r["token_level_rewards"], r["rewards"], r["response_mask"], r["anchor_obs"],
                                             r["index"], r["traj_index"], kw.pop("gamma", GAMMA), **kw)


# ---------------------------------------------------------------------- (1), (2): equal to the library
@pytest.mark.parametrize("mode,norm", [("mean_std_norm", "mean_std"), ("mean_norm", "mean"), ("none", "none")])
def test_gagpo_equals_the_library_broadcast_over_the_mask(mode, norm):
    r = rollout_rows()
    expected_rows = gagpo.gagpo_advantages(library_batch(r), GAMMA, LAM, norm=norm)
    assert np.abs(expected_rows).max() > 0.1  # a case with signal
    adv, ret = gagpo_call(r, mode=mode)
    assert adv.shape == r["response_mask"].shape and isinstance(adv, np.ndarray) and adv.dtype == np.float64
    np.testing.assert_allclose(adv, expected_rows[:, None] * r["response_mask"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ret, adv)
    assert np.all(adv[r["response_mask"] == 0] == 0)
    assert np.all(adv[3] == 0) and expected_rows[3] != 0  # the empty response counts, but gets no token


def test_gagpo_depends_on_gamma_lambda_and_the_anchors():
    r = rollout_rows()
    base, _ = gagpo_call(r)
    assert not np.allclose(base, gagpo_call(r, lam=0.2)[0])
    assert not np.allclose(base, gagpo_call(r, gamma=0.5)[0])
    distinct = dict(r, anchor_obs=np.array([f"{o}-{i}" for i, o in enumerate(r["anchor_obs"])], dtype=object))
    assert not np.allclose(base, gagpo_call(distinct)[0])


@pytest.mark.parametrize("mode,norm", [("mean_std_norm", "mean_std"), ("mean_norm", "mean")])
@pytest.mark.parametrize("w", [1.0, 0.5])
def test_gigpo_equals_the_library_broadcast_over_the_mask(mode, norm, w):
    r = rollout_rows()
    expected_rows = gagpo.gigpo_advantages(library_batch(r), GAMMA, step_weight=w, norm=norm)
    adv, ret = gigpo_call(r, mode=mode, step_advantage_w=w)
    np.testing.assert_allclose(adv, expected_rows[:, None] * r["response_mask"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ret, adv)
    # the episode reward may also come as one number per row
    adv_1d, _ = V.compute_gigpo_outcome_advantage(r["episode"], r["rewards"], r["response_mask"], r["anchor_obs"], r["index"],
                                                  r["traj_index"], GAMMA, mode=mode, step_advantage_w=w)
    np.testing.assert_allclose(adv_1d, adv, rtol=0, atol=1e-12)


def test_row_order_copies_and_explicit_steps():
    """Shuffled rows plus appended copies (verl-agent's adjust_batch) with step_index give each row the
    advantage it had in rollout order; without step_index the order would be misread."""
    r = rollout_rows()
    base, _ = gagpo_call(r)
    base_gi, _ = gigpo_call(r)
    perm = np.random.default_rng(1).permutation(len(r["rewards"]))
    rows = np.concatenate([perm, perm[[2, 5]]])  # reorder, then append copies of two rows
    shuffled = {k: v[rows] for k, v in r.items()}
    adv, _ = gagpo_call(shuffled, step_index=shuffled["step"])
    np.testing.assert_allclose(adv, base[rows], rtol=0, atol=1e-12)
    adv_gi, _ = gigpo_call(shuffled, step_index=shuffled["step"])
    np.testing.assert_allclose(adv_gi, base_gi[rows], rtol=0, atol=1e-12)
    assert not np.allclose(gagpo_call({k: v[perm] for k, v in r.items()})[0], base[perm])


def test_step_index_from_order():
    np.testing.assert_array_equal(V.step_index_from_order(["a", "b", "a", "a", "b", "c"]), [0, 0, 1, 2, 1, 0])
    r = rollout_rows()
    np.testing.assert_array_equal(V.step_index_from_order(r["traj_index"]), r["step"])


def test_anchor_keys_of_arrays_lists_and_dicts():
    assert V.anchor_key(np.array([[1, 2], [3, 4]])) == V.anchor_key(np.array([[1, 2], [3, 4]]))
    assert V.anchor_key(np.array([1, 2, 3, 4])) != V.anchor_key(np.array([[1, 2], [3, 4]]))
    assert V.anchor_key([1, {"b": 2, "a": [3]}]) == V.anchor_key((1, {"a": [3], "b": 2}))
    assert V.anchor_key(np.float32(0.5)) == 0.5 and V.anchor_key("room") == "room"
    with pytest.raises(TypeError, match="not hashable"):
        V.anchor_key({1, 2})


def test_array_observations_form_anchor_groups():
    """Image-like observations (one array per row, as in verl-agent's Sokoban) group by equal content."""
    r = rollout_rows()
    codes = {o: i for i, o in enumerate(sorted(set(r["anchor_obs"])))}
    images = np.stack([np.full((2, 3), codes[o], dtype=np.uint8) for o in r["anchor_obs"]])
    np.testing.assert_allclose(gagpo_call(dict(r, anchor_obs=images))[0], gagpo_call(r)[0], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- (3): the unbiased std
def test_unbiased_std_by_hand():
    """One group, three one-step trajectories from the same state, rewards 1, 2, 4 (γ = 0.5, λ = 0.9).

    V(s0) = 7/3 and the episode ends, so δ = r - 7/3 = (-4/3, -1/3, 5/3) = the GAE advantage; mean 0,
    sum of squares 42/9: unbiased std sqrt(42/18) = sqrt(7/3), population sqrt(42/27) = sqrt(14/9)."""
    rewards = np.array([1.0, 2.0, 4.0])
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    obs, index, traj = (np.array(x, dtype=object) for x in (["s0"] * 3, ["g"] * 3, ["a", "b", "c"]))
    args = (rewards, mask, obs, index, traj)
    delta = np.array([-4 / 3, -1 / 3, 5 / 3])
    unbiased = delta / (np.sqrt(7 / 3) + 1e-6)
    population = delta / (np.sqrt(14 / 9) + 1e-6)
    adv_u, _ = V.compute_gagpo_outcome_advantage(*args, 0.5, 0.9, std="unbiased")
    adv_p, _ = V.compute_gagpo_outcome_advantage(*args, 0.5, 0.9)
    np.testing.assert_allclose(adv_u, unbiased[:, None] * mask, rtol=1e-12)
    np.testing.assert_allclose(adv_p, population[:, None] * mask, rtol=1e-12)
    assert np.abs(adv_u - adv_p).max() > 0.1
    # GiGPO: episode term and step term (one anchor state, returns = rewards) are both the normalised rewards
    adv_g, _ = V.compute_gigpo_outcome_advantage(rewards, *args, 0.5, std="unbiased")
    np.testing.assert_allclose(adv_g, 2 * unbiased[:, None] * mask, rtol=1e-12)
    # "mean_norm" does not divide, so the std convention does not matter
    m_u, _ = V.compute_gagpo_outcome_advantage(*args, 0.5, 0.9, mode="mean_norm", std="unbiased")
    np.testing.assert_allclose(m_u, delta[:, None] * mask, rtol=1e-12)


def test_episode_statistics_over_rows_by_hand():
    """Trajectory a: 2 steps, episode reward 1; trajectory b: 1 step, reward 0; distinct states, γ = 1.

    Over rows the scores are (1, 1, 0): mean 2/3, unbiased std sqrt(1/3); over trajectories (1, 0):
    mean 1/2, unbiased std sqrt(1/2). Step term: all states singletons -> 0."""
    mask = np.ones((3, 2))
    args = (np.array([0.0, 1.0, 0.0]), mask, np.array(["x", "y", "z"], dtype=object), np.array(["g"] * 3, dtype=object),
            np.array(["a", "a", "b"], dtype=object))
    episode = np.array([1.0, 1.0, 0.0])
    rows, _ = V.compute_gigpo_outcome_advantage(episode, *args, 1.0, std="unbiased", episode_stats="rows")
    trajs, _ = V.compute_gigpo_outcome_advantage(episode, *args, 1.0, std="unbiased")
    s = 1e-6
    np.testing.assert_allclose(rows[:, 0], np.array([1 / 3, 1 / 3, -2 / 3]) / (np.sqrt(1 / 3) + s), rtol=1e-12)
    np.testing.assert_allclose(trajs[:, 0], np.array([0.5, 0.5, -0.5]) / (np.sqrt(1 / 2) + s), rtol=1e-12)


def verl_agent_gigpo_reference(episode_scores, step_returns, anchor_obs, index, remove_std, w, eps=1e-6):
    """A plain loop with verl-agent's GiGPO conventions (as read in its gigpo/core_gigpo.py): episode
    statistics over every row of a group, unbiased std, ε outside the root; a group of one row keeps its
    score; anchor groups by (index, observation), a singleton anchor group gets 0."""
    def normalise(values, keys, singleton_mean_zero):
        out = []
        for v, k in zip(values, keys):
            members = [x for x, kk in zip(values, keys) if kk == k]
            if len(members) == 1:
                mean, sd = (0.0 if singleton_mean_zero else v), 1.0
            else:
                mean, sd = statistics.mean(members), statistics.stdev(members)
            out.append(v - mean if remove_std else (v - mean) / (sd + eps))
        return np.array(out)

    episode = normalise(list(episode_scores), list(index), singleton_mean_zero=True)
    step = normalise(list(step_returns), list(zip(index, anchor_obs)), singleton_mean_zero=False)
    return episode + w * step


@pytest.mark.parametrize("mode", ["mean_std_norm", "mean_norm"])
def test_verl_agent_conventions_reproduce_verl_agents_gigpo(mode):
    r = rollout_rows()
    # verl-agent's step_rewards: the discounted return-to-go of each row, rows of a trajectory in order
    returns = np.zeros(len(r["rewards"]))
    for tid in set(r["traj_index"]):
        rows = np.flatnonzero(r["traj_index"] == tid)
        running = 0.0
        for i in rows[::-1]:
            running = float(r["rewards"][i]) + GAMMA * running
            returns[i] = running
    expected = verl_agent_gigpo_reference(r["token_level_rewards"].sum(-1), returns, r["anchor_obs"], r["index"],
                                          remove_std=mode == "mean_norm", w=0.7)
    adv, _ = gigpo_call(r, mode=mode, step_advantage_w=0.7, std="unbiased", episode_stats="rows")
    np.testing.assert_allclose(adv, expected[:, None] * r["response_mask"], rtol=1e-6, atol=1e-9)
    if mode == "mean_std_norm":  # the book's defaults give other numbers on the same rows
        assert np.abs(gigpo_call(r, mode=mode, step_advantage_w=0.7)[0] - adv).max() > 0.05


# ---------------------------------------------------------------------- (4): types
def test_torch_in_torch_out_numpy_in_numpy_out():
    torch = pytest.importorskip("torch")
    r = rollout_rows()
    ref, _ = gagpo_call(r)
    ref_gi, _ = gigpo_call(r)
    mask = torch.as_tensor(r["response_mask"])  # int64, as verl's attention masks
    for dtype in (torch.float32, torch.float64):
        rt = dict(r, response_mask=mask, token_level_rewards=torch.as_tensor(r["token_level_rewards"], dtype=dtype))
        adv, ret = gigpo_call(rt)
        assert isinstance(adv, torch.Tensor) and adv.dtype == dtype and adv.device == mask.device and adv.shape == mask.shape
        assert isinstance(ret, torch.Tensor) and ret.data_ptr() != adv.data_ptr()
        np.testing.assert_allclose(adv.numpy(), ref_gi, rtol=1e-6, atol=1e-6)
        adv, _ = gagpo_call(dict(r, response_mask=mask, rewards=torch.as_tensor(r["rewards"].astype(float), dtype=dtype)))
        assert adv.dtype == dtype
        np.testing.assert_allclose(adv.numpy(), ref, rtol=1e-6, atol=1e-6)
    adv, _ = gagpo_call(dict(r, response_mask=mask))  # only the mask is a tensor: torch's default float dtype
    assert isinstance(adv, torch.Tensor) and adv.dtype == torch.get_default_dtype()
    adv, _ = gagpo_call(dict(r, response_mask=mask.bool()))
    assert adv.dtype == torch.get_default_dtype()
    np.testing.assert_allclose(adv.numpy(), ref, rtol=1e-6, atol=1e-6)
    assert isinstance(ref, np.ndarray) and ref.dtype == np.float64


# ---------------------------------------------------------------------- (5): errors
def test_clear_errors():
    r = rollout_rows()
    with pytest.raises(ValueError, match=r"index must hold one value per row of response_mask, shape \(15,\); got shape \(14,\)"):
        gagpo_call(dict(r, index=r["index"][:-1]))
    with pytest.raises(ValueError, match="rewards must hold one value per row"):
        gagpo_call(dict(r, rewards=r["rewards"][:-1]))
    with pytest.raises(ValueError, match="anchor_obs must hold one value per row"):
        gagpo_call(dict(r, anchor_obs=r["anchor_obs"][1:]))
    with pytest.raises(ValueError, match=r"token_level_rewards must have shape \(15, response_length\) or \(15,\)"):
        gigpo_call(dict(r, token_level_rewards=r["token_level_rewards"][1:]))
    with pytest.raises(ValueError, match=r"response_mask must have shape \(bs, response_length\)"):
        gagpo_call(dict(r, response_mask=r["response_mask"][:, 0]))
    with pytest.raises(ValueError, match="response_mask must hold only 0 and 1; row 0, token 0 holds 2"):
        gagpo_call(dict(r, response_mask=r["response_mask"] * 2))
    with pytest.raises(ValueError, match=r"unknown mode 'mean_std'; expected one of \['mean_std_norm', 'mean_norm', 'none'\]"):
        gagpo_call(r, mode="mean_std")
    with pytest.raises(ValueError, match="unknown mode 'none'"):
        gigpo_call(r, mode="none")  # GiGPO has no unnormalised form
    with pytest.raises(ValueError, match="unknown std 'sample'"):
        gagpo_call(r, std="sample")
    with pytest.raises(ValueError, match="unknown episode_stats 'steps'"):
        gigpo_call(r, episode_stats="steps")
    with pytest.raises(ValueError, match="lam must lie in"):
        gagpo_call(r, lam=1.5)
    with pytest.raises(ValueError, match="rewards must be finite"):
        gagpo_call(dict(r, rewards=np.where(np.arange(15) == 4, np.nan, r["rewards"].astype(float))))
    # a trajectory split across groups, a gap in the steps, copies that differ
    with pytest.raises(ValueError, match="appears in two groups"):
        gagpo_call(dict(r, index=np.where((r["traj_index"] == "e") & (r["step"] == 1), "u1", r["index"])))
    with pytest.raises(ValueError, match="gap in 'step'"):
        gagpo_call(r, step_index=np.where(r["step"] == 2, 5, r["step"]))
    dup = {k: np.concatenate([v, v[:1]]) for k, v in r.items()}
    dup["rewards"][-1] = 7.0
    with pytest.raises(ValueError, match="rows 0 and 15 are the same step .* differ in 'rewards'"):
        gagpo_call(dup, step_index=dup["step"])
    with pytest.raises(ValueError, match="step_index must hold integers >= 0"):
        gagpo_call(r, step_index=r["step"] - 1)
    # one episode reward per trajectory unless the statistics run over rows (verl-agent's KL-in-reward case)
    varied = dict(r, token_level_rewards=r["token_level_rewards"] + 0.01 * np.arange(15)[:, None] * r["response_mask"])
    with pytest.raises(ValueError, match="carry different episode rewards.*episode_stats='rows'"):
        gigpo_call(varied)
    assert np.isfinite(gigpo_call(varied, episode_stats="rows")[0]).all()


def test_an_all_zero_mask_is_no_error():
    r = rollout_rows()
    zero = np.zeros_like(r["response_mask"])
    adv, _ = gagpo_call(dict(r, response_mask=zero))
    assert adv.shape == zero.shape and not adv.any()


# ---------------------------------------------------------------------- (6): numpy only at import
def test_importing_the_integration_loads_no_torch():
    code = ("import sys, gagpo.integrations, gagpo.integrations.verl; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
