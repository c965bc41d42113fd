"""Never lose a run (issue 10), the data side: estimators in memory linear in the rows, near-duplicate
anchors for thousands of distinct observations, and benchmark outputs that never overwrite each other."""
from __future__ import annotations

import os
import re
import time
import tracemalloc

import numpy as np
import pytest

from gagpo import advantages as A
from gagpo.anchors import JaccardIndex, jaccard_leader_clusters, near_duplicate_batch, shingles
from gagpo.batch import StepBatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ====================================================================== estimators: linear memory
def dense_reverse_scan(batch: StepBatch, x: np.ndarray, coef) -> np.ndarray:
    """The former implementation: an (n_traj, T_max + 1) grid, one column per time step."""
    rows, cols = batch.traj_index, batch.step
    t_max = int(cols.max()) + 1
    xg = np.zeros((batch.n_traj, t_max + 1))
    xg[rows, cols] = x
    cg = np.full((batch.n_traj, t_max + 1), float(coef)) if np.ndim(coef) == 0 else np.zeros((batch.n_traj, t_max + 1))
    if np.ndim(coef):
        cg[rows, cols] = coef
    yg = np.zeros_like(xg)
    for t in range(t_max - 1, -1, -1):
        yg[:, t] = xg[:, t] + cg[:, t] * yg[:, t + 1]
    return yg[rows, cols]


def ragged_batch(lengths, rng, group_of=None) -> StepBatch:
    traj = np.repeat(np.arange(len(lengths)), lengths)
    step = np.concatenate([np.arange(n) for n in lengths])
    perm = rng.permutation(len(traj))  # rows in any order
    n = len(traj)
    keys = np.asarray([f"s{k}" for k in rng.integers(0, 6, n + 1)], dtype=object)
    group = (traj % 3) if group_of is None else group_of[traj]
    return StepBatch(group_id=group[perm], traj_id=10 * traj[perm] + 7, step=step[perm], obs_key=keys[:-1],
                     next_obs_key=keys[1:], reward=rng.normal(size=n), terminated=np.zeros(n, bool), truncated=np.zeros(n, bool))


def test_reverse_scan_equals_the_dense_grid_bit_for_bit():
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = ragged_batch(rng.integers(1, 30, size=rng.integers(1, 20)), rng)
        x = rng.normal(size=len(b))
        for coef in (0.95, 1.0, 0.0, rng.random(len(b))):
            np.testing.assert_array_equal(A.reverse_scan(b, x, coef), dense_reverse_scan(b, x, coef))


def test_next_row_and_rows_by_step():
    rng = np.random.default_rng(1)
    b = ragged_batch([3, 1, 2], rng)
    for i, j in enumerate(b.next_row):
        if j < 0:
            assert b.step[i] == b.traj_length[b.traj_index[i]] - 1  # the last row of its trajectory
        else:
            assert (b.traj_index[j], b.step[j]) == (b.traj_index[i], b.step[i] + 1)
    order, bounds = b.rows_by_step
    assert bounds.tolist() == [0, 3, 5, 6]
    for t in range(3):
        assert set(b.step[order[bounds[t]:bounds[t + 1]]]) == {t}


def hand_ragged_rows(group="h", first_traj=0):
    """One trajectory of 4 steps s0 -> s1 -> s2 -> s3 -> win (reward 1 at the end) and three one-step
    trajectories from s0 with rewards 1, 0, 0; all terminated."""
    rows = [dict(group_id=group, traj_id=first_traj, step=t, obs_key=f"s{t}", next_obs_key=f"s{t + 1}" if t < 3 else "end",
                 reward=float(t == 3), terminated=t == 3, truncated=False) for t in range(4)]
    rows += [dict(group_id=group, traj_id=first_traj + k, step=0, obs_key="s0", next_obs_key="end", reward=r, terminated=True,
                  truncated=False) for k, r in ((1, 1.0), (2, 0.0), (3, 0.0))]
    return rows


# gamma = 0.5. Returns: long trajectory 0.125, 0.25, 0.5, 1; one-step 1, 0, 0. V(s0) = (0.125 + 1 + 0 + 0) / 4.
V0 = 1.125 / 4
HAND_RAGGED = {
    "returns": [0.125, 0.25, 0.5, 1, 1, 0, 0],
    "grpo_mean": [0.5] * 4 + [0.5, -0.5, -0.5],                 # episode returns 1, 1, 0, 0 around their mean 0.5
    "rloo": [2 / 3] * 4 + [2 / 3, -2 / 3, -2 / 3],             # R_i - mean of the other three
    "values": [V0, 0.25, 0.5, 1, V0, V0, V0],
    "next_values": [0.25, 0.5, 1, 0, 0, 0, 0],                   # terminated rows never bootstrap
    "gagpo_lam1_none": [0.125 - V0, 0, 0, 0, 1 - V0, -V0, -V0],  # lambda = 1: G_t - V(s_t)
    "gigpo_mean": [0.5 + 0.125 - V0, 0.5, 0.5, 0.5, 0.5 + 1 - V0, -0.5 - V0, -0.5 - V0],
    "reinforce_step_mean": [0.125 - V0, 0, 0, 0, 1 - V0, -V0, -V0],  # step 0's mean return is V(s0) here
    # values 0.5 everywhere, lambda 1: G_t - 0.5 (no bootstrap after a terminated row)
    "gae": [-0.375, -0.25, 0, 0.5, 0.5, -0.5, -0.5],
}


def estimators(b: StepBatch) -> dict[str, np.ndarray]:
    """Every estimator of the book on ``b`` (gamma 0.5)."""
    values, next_values = A.grouped_value_proxy(b, 0.5)
    half = np.full(len(b), 0.5)
    return {
        "returns": A.discounted_returns(b, 0.5),
        "grpo_mean": A.grpo_advantages(b, "mean"),
        "grpo": A.grpo_advantages(b),
        "rloo": A.rloo_advantages(b),
        "values": values,
        "next_values": next_values,
        "gagpo_lam1_none": A.gagpo_advantages(b, 0.5, 1.0, norm="none"),
        "gagpo": A.gagpo_advantages(b, 0.5, 0.95),
        "gigpo_mean": A.gigpo_advantages(b, 0.5, norm="mean"),
        "gigpo": A.gigpo_advantages(b, 0.5),
        "reinforce_step_mean": A.reinforce_advantages(b, 0.5, "step_mean"),
        "reinforce_mean": A.reinforce_advantages(b, 0.5, "mean"),
        "gae": A.gae_advantages(b, half, half, 0.5, 1.0),
    }


def test_every_estimator_on_a_small_ragged_batch_by_hand():
    got = estimators(StepBatch.from_rows(hand_ragged_rows()))
    for name, expected in HAND_RAGGED.items():
        np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-15, err_msg=name)


def test_every_estimator_runs_in_linear_memory_on_a_long_trajectory_among_one_step_ones():
    # group 0: one trajectory of 20,000 steps and 20,000 one-step trajectories; group 1: the hand case above.
    # A padded (trajectory x time) grid would be 20,001 x 20,000 float64 = 3.2 GB per array.
    L = K = 20_000
    traj = np.concatenate([np.zeros(L, np.int64), np.arange(1, K + 1)])
    step = np.concatenate([np.arange(L), np.zeros(K, np.int64)])
    n = L + K
    rng = np.random.default_rng(0)
    obs = np.asarray([f"room {i % 50}" for i in range(n)], dtype=object)
    nxt = np.asarray([f"room {(i + 1) % 50}" for i in range(n)], dtype=object)
    last = np.zeros(n, bool)
    last[L - 1] = last[L:] = True
    reward = np.where(last, rng.integers(0, 2, n), 0).astype(float)
    reward[L - 1] = 1.0
    hand = hand_ragged_rows(group="hand", first_traj=K + 1)
    big = StepBatch.concat([
        StepBatch(group_id=np.zeros(n, np.int64), traj_id=traj, step=step, obs_key=obs, next_obs_key=nxt, reward=reward,
                  terminated=last, truncated=np.zeros(n, bool)),
        StepBatch.from_rows(hand),
    ])
    dense_bytes = (big.n_traj * (L + 1)) * 8
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        got = estimators(big)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20 < dense_bytes / 30, f"peak {peak / 2**20:.0f} MiB"
    assert elapsed < 60, elapsed  # one vector operation per time step: well under a second on an idle core
    # the long trajectory: G_t = 0.5 ** (L - 1 - t) (powers of two: exact); the one-step ones: their reward
    np.testing.assert_array_equal(got["returns"][:L], 0.5 ** (L - 1 - np.arange(L)))
    np.testing.assert_array_equal(got["returns"][L:n], reward[L:])
    # every estimator except the batch-wide REINFORCE baselines is local to a group: the hand group is unchanged
    small = estimators(StepBatch.from_rows(hand))
    for name, values in got.items():
        assert np.all(np.isfinite(values)) and values.shape == (len(big),), name
        if not name.startswith("reinforce"):
            np.testing.assert_allclose(values[n:], small[name], rtol=1e-12, atol=1e-15, err_msg=name)


# ====================================================================== near-duplicate anchors
def old_jaccard_matrix(sets):
    """The former :func:`gagpo.anchors.jaccard_matrix`: a dense incidence matrix and one matrix product."""
    vocab = {x: j for j, x in enumerate(dict.fromkeys(x for s in sets for x in s))}
    incidence = np.zeros((len(sets), max(len(vocab), 1)))
    for i, s in enumerate(sets):
        incidence[i, [vocab[x] for x in s]] = 1.0
    inter = incidence @ incidence.T
    sizes = np.diag(inter)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)


def loop_leader_clusters(similarity, order, threshold):
    labels = [-1] * len(order)
    for i in order:
        if labels[i] < 0:
            for j in range(len(order)):
                if labels[j] < 0 and (similarity[i][j] >= threshold or j == i):
                    labels[j] = i
    return labels


def test_blocked_matching_equals_the_old_algorithm():
    rng = np.random.default_rng(0)
    for trial in range(40):
        u, vocab = int(rng.integers(1, 90)), int(rng.integers(1, 30))
        sets = [frozenset(rng.choice(vocab, size=rng.integers(0, min(vocab, 8) + 1), replace=False).tolist()) for _ in range(u)]
        J = old_jaccard_matrix(sets)
        for dense_fraction in (0.0, 1 / 32, 2.0):  # all shared shingles dense, the default split, all sparse
            np.testing.assert_array_equal(JaccardIndex(sets, dense_fraction).rows(np.arange(u)), J)
        order = rng.permutation(u)
        for threshold in (0.0, 0.3, 0.8, 1.0):
            expected = loop_leader_clusters(J, order, threshold)
            for block_bytes in (1, 8 * u * 5, 2**30):  # one row, five rows, everything at a time
                assert jaccard_leader_clusters(sets, order, threshold, block_bytes).tolist() == expected, (trial, threshold)


def observation(i: int, rng) -> str:
    return (f"Step {i}. You are at row {rng.integers(7)}, column {rng.integers(7)}. The key is {rng.integers(9)} steps north "
            f"and {rng.integers(9)} steps east. The door is {rng.integers(9)} steps south. You hold {rng.choice(['the key', 'nothing'])}.")


def test_near_duplicates_of_ten_thousand_distinct_observations_in_one_group():
    rng = np.random.default_rng(0)
    n = 10_000
    texts = [observation(i, rng) for i in range(n)]
    b = StepBatch(group_id=np.zeros(n, np.int64), traj_id=np.arange(n), step=np.zeros(n, np.int64),
                  obs_key=np.asarray(texts, dtype=object), next_obs_key=np.asarray(["END"] * n, dtype=object), reward=np.zeros(n),
                  terminated=np.ones(n, bool), truncated=np.zeros(n, bool))
    assert b.n_anchors == n  # every observation distinct (the step counter)
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        merged = near_duplicate_batch(b, 0.8)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 15, elapsed  # the dense version: ~20 s and ~4 GB
    assert peak < 2**30, f"peak {peak / 2**20:.0f} MiB"
    assert 1 < merged.n_anchors < n  # near duplicates exist (same room and distances, another step) and merge
    # every key is within the threshold of its leader, and a leader leads itself
    leader_of = dict(zip(b.obs_key, merged.obs_key))
    for key, leader in leader_of.items():
        a, c = shingles(key), shingles(leader)
        assert len(a & c) / len(a | c) >= 0.8
        assert leader_of[leader] == leader


# ====================================================================== benchmark outputs
def test_quick_and_full_headline_runs_live_apart():
    from gagpo.bench import headline_config

    full, quick = headline_config("gagpo", 0), headline_config("gagpo", 0, quick=True)
    assert full.run_dir().startswith(os.path.join("runs", "headline", ""))
    assert quick.run_dir().startswith(os.path.join("runs", "headline-quick", ""))
    assert quick.env_step_budget < full.env_step_budget


def test_make_run_writes_under_runs_only():
    with open(os.path.join(ROOT, "Makefile")) as fh:
        recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", fh.read(), re.M).group(1)
    assert "gagpo headline" in recipe
    assert re.search(r"--figures-dir runs/", recipe), recipe  # never the committed figures/
