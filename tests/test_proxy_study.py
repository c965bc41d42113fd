"""The value-proxy microscope (gagpo.proxy_study): exact truths agree with sampled returns; the study runs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gagpo import discounted_returns
from gagpo.policies import make_policy
from gagpo.proxy_study import (
    SIZE_LABELS,
    ProxySetting,
    agreement,
    analyse_rollout,
    error_by_size,
    proxy_study,
    row_truth,
    size_bin,
    truths_for,
)
from gagpo.rollout import EnvPool, collect, make_env_fn
from toy_envs import q_values

H, GAMMA = 6, 0.9  # a short step limit: many episodes are truncated, so the horizon convention matters
SEEDS = list(range(8))


@pytest.fixture(scope="module")
def setup():
    pool = EnvPool(make_env_fn("toy_envs/OpenGrid-v0", H, size=4))
    policy = make_policy("text", seed=0)
    rollouts = [collect(pool, policy, SEEDS, 8, torch.Generator().manual_seed(r)) for r in range(24)]
    yield pool, policy, rollouts
    pool.close()


def test_exact_values_are_the_expected_sampled_returns(setup):
    """E[G_t - V_{H-t}(s_t)] = 0 and E[G_t - Q_{H-t}(s_t, a_t)] = 0 over many rollouts; an off-by-one
    horizon (H-t+1 or H-t-1 steps left) is biased far beyond the sampling error."""
    pool, policy, rollouts = setup
    assert pool.get(1)[0].spec.max_episode_steps == H
    for horizon, should_be_unbiased in ((H, True), (H - 1, False), (H + 1, False)):
        truths = truths_for(pool, policy, SEEDS, GAMMA, horizon)
        v_err, q_err = [], []
        for roll in rollouts:
            v, a = row_truth(roll, truths, horizon, GAMMA)
            g = discounted_returns(roll.batch, GAMMA)
            v_err.append(g - v)
            q_err.append(g - v - a)
        v_err, q_err = np.concatenate(v_err), np.concatenate(q_err)
        se = v_err.std() / np.sqrt(len(v_err))
        if should_be_unbiased:
            assert abs(v_err.mean()) < 3 * se and abs(q_err.mean()) < 3 * q_err.std() / np.sqrt(len(q_err)), (v_err.mean(), se)
        else:
            assert abs(v_err.mean()) > 5 * se, (horizon, v_err.mean(), se)


def test_true_advantages_match_q_values_of_the_library(setup):
    pool, policy, rollouts = setup
    roll = rollouts[0]
    truths = truths_for(pool, policy, SEEDS, GAMMA, H)
    v, a = row_truth(roll, truths, H, GAMMA)
    env = pool.get(1)[0]
    b = roll.batch
    for i in range(0, len(b), 7):  # a naive per-row check on every 7th row
        seed = int(roll.traj_task[b.traj_index[i]])
        env.reset(seed=seed)
        model = env.unwrapped.exact_model()
        s = model.obs_text.index(roll.observations[i])
        k = H - int(b.step[i])
        values = truths[seed].values
        q = q_values(model, values[k - 1], GAMMA)[s][roll.actions[i]]
        assert v[i] == pytest.approx(values[k, s]) and a[i] == pytest.approx(q - values[k, s])
    # under π the advantages average to zero in every state: sum_a π(a|s) A(s, a) = 0
    for seed in SEEDS[:3]:
        env.reset(seed=seed)
        model = env.unwrapped.exact_model()
        from gagpo.proxy_study import policy_probs

        probs = policy_probs(policy, model)
        values = truths[seed].values
        for s in range(model.n_states):
            q = q_values(model, values[2], GAMMA)[s]
            assert float(np.dot(probs[s], q - values[3, s])) == pytest.approx(0.0, abs=1e-12)


def test_error_by_size_and_agreement_on_hand_made_data():
    sizes = np.array([1, 1, 2, 2, 4, 20])
    assert size_bin(sizes).tolist() == [0, 0, 1, 1, 2, 5] and len(SIZE_LABELS) == 6
    v_hat = np.array([1.0, 0.0, 0.5, 0.5, 0.2, 0.0])
    v_true = np.array([0.5, 0.5, 0.25, 0.25, 0.2, 0.1])
    rec = {r["size_bin"]: r for r in error_by_size(v_hat, v_true, sizes)}
    assert rec["1"]["bias"] == pytest.approx(0.0) and rec["1"]["std"] == pytest.approx(0.5) and rec["1"]["rmse"] == pytest.approx(0.5)
    assert rec["2"]["bias"] == pytest.approx(0.25) and rec["2"]["std"] == pytest.approx(0.0)
    assert rec[">16"]["bias"] == pytest.approx(-0.1) and rec["5-8"]["rows"] == 0
    truth = np.array([0.25, -2.0, 0.0, 3.0])
    # 2A - 1 is perfectly correlated with A but flips the sign of the small positive 0.25; the zero row is left out
    assert agreement(2 * truth - 1, truth) == {"corr": pytest.approx(1.0), "sign_agreement": pytest.approx(2 / 3),
                                               "zero_frac": 0.0, "sign_agreement_nonzero": pytest.approx(2 / 3)}
    assert agreement(-truth, truth)["sign_agreement"] == 0.0
    # a zero estimate gives no direction: a miss for sign_agreement, left out of sign_agreement_nonzero
    res = agreement(np.array([0.0, -1.0, 5.0, -3.0]), truth)
    assert res["sign_agreement"] == pytest.approx(1 / 3) and res["zero_frac"] == pytest.approx(1 / 3)
    assert res["sign_agreement_nonzero"] == pytest.approx(1 / 2)


def test_singleton_proxy_is_the_return_and_larger_groups_share_it(setup):
    pool, policy, rollouts = setup
    truths = truths_for(pool, policy, SEEDS, GAMMA, H)
    out = analyse_rollout(rollouts[1], truths, H, GAMMA, 0.95, thresholds=(0.0, 1.0))
    single = out["anchor_size"] == 1
    assert single.any() and (~single).any()
    assert np.allclose(out["v_hat"][single], out["returns"][single])
    # threshold 0 merges a whole group into one anchor; threshold 1 changes nothing on these distinct texts
    assert np.all(out["anchor_size_near0.0"] >= out["anchor_size"])
    assert np.allclose(out["v_hat_near1.0"], out["v_hat"])
    for est in ("grpo", "gigpo", "gagpo", "gagpo_raw"):
        assert out[f"adv_{est}"].shape == out["a_true"].shape


def test_the_study_runs_on_a_tiny_setting(tmp_path):
    tiny = ProxySetting("opengrid4", {"size": 4}, H, train_iterations=2, snapshots=(0, 2), group_sizes=(2, 8), n_tasks=4,
                        repeats=2, gamma=GAMMA, env="toy_envs/OpenGrid-v0")
    out = proxy_study(figures_dir=str(tmp_path), settings=[tiny])
    rec = out["records"]
    for name in ("proxy_bias_variance.png", "proxy_singletons.png", "proxy_advantages.png", "proxy_near_duplicates.png",
                 "proxy_study.csv", "proxy_study.md"):
        assert os.path.exists(tmp_path / name), name
    # more rollouts of the same task revisit more states: fewer singleton anchor groups at G = 8 than at G = 2
    for it in (0, 2):
        frac = {r["group_size"]: r["singleton_row_frac"] for r in rec["anchors"] if r["iteration"] == it}
        assert frac[8] < frac[2]
    assert {r["estimator"] for r in rec["advantages"]} == {"grpo", "gigpo", "gagpo", "gagpo_raw"}
    assert all(-1.0 <= r["corr"] <= 1.0 for r in rec["advantages"])
    assert "python -m gagpo bench proxy" in out["table"]


def test_a_quick_study_writes_under_runs_not_into_the_committed_figures(tmp_path, monkeypatch):
    tiny = ProxySetting("opengrid4", {"size": 4}, H, train_iterations=1, snapshots=(0,), group_sizes=(2,), n_tasks=2,
                        repeats=1, gamma=GAMMA, env="toy_envs/OpenGrid-v0")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GAGPO_SAVE_DIR", raising=False)
    proxy_study(quick=True, settings=[tiny])
    assert (tmp_path / "runs" / "proxy-quick" / "figures" / "proxy_study_quick.md").exists()
    assert not (tmp_path / "figures").exists()
