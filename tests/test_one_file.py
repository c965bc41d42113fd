"""chapters/gagpo_in_one_file.py — the CleanRL-style single file — computes what the library computes.

Its advantages must equal ``gagpo.gagpo_advantages`` (and its value proxy and GAE the library's) on the
same rows, its loss must equal ``gagpo.losses.ppo_clip_loss(..., ratio_level="action")`` on the same
tensors, it must import nothing from ``gagpo``, and a tiny run must change the policy's parameters.
"""
import ast
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

from gagpo import advantages as lib
from gagpo.batch import StepBatch
from gagpo.losses import ppo_clip_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "chapters", "gagpo_in_one_file.py")


def _load():
    spec = importlib.util.spec_from_file_location("gagpo_in_one_file", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


one = _load()


def to_batch(ro) -> StepBatch:
    """The library's StepBatch holding the same rows as the one-file Rollout ``ro``."""
    return StepBatch(group_id=ro.group_id, traj_id=ro.traj_id, step=ro.step, obs_key=ro.obs, next_obs_key=ro.next_obs,
                     reward=ro.reward, terminated=ro.terminated, truncated=ro.truncated)


def permuted(ro, perm):
    """The same rows in another order (the estimators must not assume rows sorted or groups contiguous)."""
    take = lambda x: [x[i] for i in perm] if isinstance(x, list) else x[perm]  # noqa: E731
    fields = {k: take(v) for k, v in vars(ro).items() if k != "won"}
    return one.Rollout(**fields, won=ro.won)


def rollout(max_steps: int, seed: int, tasks=(3, 7, 11), group_size: int = 4):
    args = one.Args(max_steps=max_steps)
    torch.manual_seed(seed)
    policy = one.TextPolicy(hidden=16)
    envs = one.make_envs(args, len(tasks) * group_size)
    return policy, one.collect(envs, policy, list(tasks), group_size, torch.Generator().manual_seed(seed))


def hand_made():
    """Two groups written out by hand: revisits, a success, a trap (terminated, reward 0), truncations whose
    next observation the group did act in ("B") and did not ("Z"), a termination in a state that others act in
    ("B" again: still no bootstrap), a singleton group and a zero-spread group."""
    R = []  # (group, traj, step, obs, next_obs, reward, terminated, truncated)
    R += [(0, 0, 0, "A", "B", 0.0, False, False), (0, 0, 1, "B", "A", 0.0, False, False),
          (0, 0, 2, "A", "B", 0.0, False, False), (0, 0, 3, "B", "G", 1.0, True, False)]
    R += [(0, 1, 0, "A", "C", 0.0, False, False), (0, 1, 1, "C", "B", 0.0, False, True)]     # cut before B
    R += [(0, 2, 0, "A", "C", 0.0, False, False), (0, 2, 1, "C", "Z", 0.0, False, True)]     # cut before unseen Z
    R += [(0, 3, 0, "A", "T", 0.0, True, False)]                                            # trap
    R += [(0, 6, 0, "A", "B", 0.0, True, False)]                   # ends where others act: still no bootstrap
    R += [(5, 9, 0, "A", "B", 0.5, False, False), (5, 9, 1, "B", "G", 0.5, True, False)]     # singleton group
    R += [(2, 4, 0, "A", "Z", 0.0, False, True), (2, 5, 0, "A", "Z", 0.0, False, True)]     # zero spread
    g, t, s, o, no, r, te, tr = map(list, zip(*R))
    n = len(R)
    return one.Rollout(group_id=np.array(g), traj_id=np.array(t), step=np.array(s), obs=o, next_obs=no,
                       admissible=[["go"]] * n, action=np.zeros(n, dtype=int), logp=np.zeros(n), reward=np.array(r),
                       terminated=np.array(te), truncated=np.array(tr), won=np.zeros(len(set(t)), dtype=bool))


# ------------------------------------------------------------------------------ the file itself
def test_imports_nothing_but_numpy_torch_gymnasium_and_toy_envs():
    tree = ast.parse(open(PATH, encoding="utf-8").read())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    third_party = roots - set(sys.stdlib_module_names)
    assert third_party == {"numpy", "torch", "gymnasium", "toy_envs"}, third_party
    assert "gagpo" not in roots


def test_is_short():
    assert sum(1 for _ in open(PATH, encoding="utf-8")) <= 400


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exc:
        one.parse_args(["--help"])
    assert exc.value.code == 0
    assert "--total-steps" in capsys.readouterr().out


# ------------------------------------------------------------------------------ advantages
@pytest.mark.parametrize("gamma, lam", [(0.95, 0.95), (0.9, 0.0), (1.0, 1.0), (0.8, 0.5)])
def test_advantages_equal_the_library_on_hand_made_rows(gamma, lam):
    ro = hand_made()
    batch = to_batch(ro)
    np.testing.assert_allclose(one.discounted_returns(ro, gamma), lib.discounted_returns(batch, gamma), rtol=0, atol=1e-12)
    values, next_values = one.grouped_value_proxy(ro, gamma)
    lib_values, lib_next = lib.grouped_value_proxy(batch, gamma)
    np.testing.assert_allclose(values, lib_values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(next_values, lib_next, rtol=0, atol=1e-12)
    np.testing.assert_allclose(one.gae(ro, values, next_values, gamma, lam),
                               lib.gae_advantages(batch, lib_values, lib_next, gamma, lam), rtol=0, atol=1e-12)
    np.testing.assert_allclose(one.gagpo_advantages(ro, gamma, lam, 1e-6),
                               lib.gagpo_advantages(batch, gamma, lam, "mean_std", 1e-6), rtol=0, atol=1e-9)
    # the truncated row whose next observation B the group acted in bootstraps from V̂(B); the one cut before
    # the unseen Z, the terminated rows and the trap get no bootstrap
    assert next_values[5] == pytest.approx(values[1]) and next_values[5] != 0
    assert next_values[7] == 0 and next_values[3] == 0 and next_values[8] == 0 and next_values[9] == 0


def test_advantages_equal_the_library_on_keydoor_rollouts():
    # A near-uniform policy rarely reaches KeyDoor's goal within 60 steps (about 1% of episodes), and with
    # no reward every advantage is 0 on both sides; with a 150-step limit a few episodes of 12 succeed, some
    # fall into traps (terminated, reward 0) and some are cut by the limit (truncated: the bootstrap path).
    for seed in range(8):
        _, ro = rollout(150, seed)
        if ro.reward.sum() > 0 and ro.truncated.any():
            break
    else:
        pytest.fail("no rollout with both a success and a truncation in 8 seeds")
    assert ro.terminated.any()
    assert len(set(zip(ro.group_id, ro.obs))) < len(ro.obs)  # revisits: V̂ averages over several visits
    perm = np.random.default_rng(seed).permutation(len(ro.reward))
    for rows in (ro, permuted(ro, perm)):
        ours = one.gagpo_advantages(rows, 0.95, 0.95, 1e-6)
        theirs = lib.gagpo_advantages(to_batch(rows), 0.95, 0.95, "mean_std", 1e-6)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
        assert np.abs(ours).max() > 0.1


# ------------------------------------------------------------------------------ loss
def _check_loss(logp_new, logp_old, adv, action_index, entropy, clip_eps=0.2, entropy_coef=0.01):
    lp_a = logp_new.detach().clone().requires_grad_(True)
    lp_b = logp_new.detach().clone().requires_grad_(True)
    ent_a = entropy.detach().clone().requires_grad_(True)
    ent_b = entropy.detach().clone().requires_grad_(True)
    ours, d_ours = one.ppo_clip_loss(lp_a, logp_old, adv, action_index, clip_eps, ent_a, entropy_coef)
    theirs, d_theirs = ppo_clip_loss(lp_b, logp_old, adv, action_index, ratio_level="action", clip_eps=clip_eps,
                                     entropy=ent_b, entropy_coef=entropy_coef)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-7)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(lp_a.grad, lp_b.grad, rtol=0, atol=1e-7)
    torch.testing.assert_close(ent_a.grad, ent_b.grad, rtol=0, atol=1e-7)
    for key in ("policy_loss", "clip_fraction", "approx_kl"):
        assert d_ours[key] == pytest.approx(d_theirs[key], abs=1e-7), key
    return d_theirs


def test_loss_equals_the_library_on_multi_token_actions():
    g = torch.Generator().manual_seed(0)
    n_actions, n_tokens = 12, 40
    action_index = torch.randint(n_actions, (n_tokens,), generator=g)
    action_index[:n_actions] = torch.arange(n_actions)  # every action has a token; order is shuffled
    action_index = action_index[torch.randperm(n_tokens, generator=g)]
    logp_old = -torch.rand(n_tokens, generator=g, dtype=torch.float64) * 3
    logp_new = logp_old + 0.4 * torch.randn(n_tokens, generator=g, dtype=torch.float64)
    adv = torch.randn(n_actions, generator=g, dtype=torch.float64)
    diag = _check_loss(logp_new, logp_old, adv, action_index, torch.rand(n_tokens, generator=g, dtype=torch.float64))
    assert 0 < diag["clip_fraction"] < 1  # both branches of the clip are exercised


def test_loss_equals_the_library_on_a_keydoor_batch():
    policy, ro = rollout(150, 0)
    adv = torch.as_tensor(one.gagpo_advantages(ro, 0.95, 0.95, 1e-6), dtype=torch.float32)
    assert adv.abs().max() > 0.1
    with torch.no_grad():  # move the policy away from the one that sampled, so ratios leave [0.8, 1.2]
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    logits = policy.logits(ro.obs, ro.admissible)
    logp_new = torch.log_softmax(logits, -1).gather(-1, torch.as_tensor(ro.action)[:, None]).squeeze(-1)
    logp_old = torch.as_tensor(ro.logp, dtype=torch.float32)
    diag = _check_loss(logp_new, logp_old, adv, torch.arange(len(adv)), one.entropy(logits))
    assert diag["clip_fraction"] > 0


def test_entropy_matches_the_library():
    from gagpo.policies import entropy as lib_entropy
    logits = torch.tensor([[0.3, -1.0, float("-inf")], [2.0, float("-inf"), float("-inf")], [0.1, 0.2, 0.3]])
    torch.testing.assert_close(one.entropy(logits), lib_entropy(logits))


# ------------------------------------------------------------------------------ smoke run
def test_tiny_run_changes_the_parameters_and_reports(capsys):
    args = one.Args(total_steps=1, tasks_per_iter=2, group_size=2, max_steps=12, eval_every=1, eval_episodes=2)
    torch.manual_seed(0)
    policy = one.TextPolicy(args.hidden)
    before = [p.detach().clone() for p in policy.parameters()]
    trained, history = one.train(args, policy, verbose=True)
    assert trained is policy and len(history) == 1
    row = history[0]
    assert 0 < row["env_steps"] <= 2 * 2 * 12  # 2 groups x 2 episodes x at most 12 steps
    assert 0.0 <= row["held_out_greedy"] <= 1.0 and np.isfinite(row["approx_kl"])
    changed = [not torch.equal(b, p) for b, p in zip(before, policy.parameters())]
    assert any(changed), "one update changed no parameter"
    assert "held-out success (greedy)" in capsys.readouterr().out


def test_main_prints_the_final_held_out_success(capsys):
    one.main(["--total-steps", "1", "--tasks-per-iter", "1", "--group-size", "2", "--max-steps", "8",
              "--eval-every", "0", "--eval-episodes", "2"])
    assert "final greedy held-out success on 2 tasks" in capsys.readouterr().out
