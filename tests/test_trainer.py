"""The trainer: every algorithm runs, learning happens, runs are deterministic and resume exactly."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from gagpo.__main__ import main
from gagpo.config import ALGOS, TrainConfig
from gagpo.policies import TabularSoftmaxPolicy, TextPolicy, action_log_probs, kl_divergence
from gagpo.rollout import EnvPool, collect, make_env_fn
from gagpo.runloop import TIME_METRICS
from gagpo.trainer import Trainer, minibatch_loss, train

TIMING_KEYS = ("time_rollout", "time_advantage", "time_update")


def tiny(tmp_path, **kw) -> TrainConfig:
    base = dict(env="toy_envs/OpenGrid-v0", env_kwargs={"size": 4}, iterations=2, tasks_per_iter=2, group_size=4,
                eval_every=2, eval_episodes=4, progress=False, out_dir=str(tmp_path / "run"), checkpoint_every=1)
    base.update(kw)
    return TrainConfig(**base)


def strip(history):
    return [{k: v for k, v in row.items() if k not in TIME_METRICS} for row in history]


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_runs_and_changes_parameters(tmp_path, algo):
    cfg = tiny(tmp_path, algo=algo)
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    history = trainer.train()
    after = list(trainer.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), "no parameter changed"
    assert len(history) == 2
    row = history[-1]
    for key in ("env_steps", "success", "return", "episode_length", "invalid_rate", "clip_fraction", "approx_kl",
                "anchor_frac_1", "eval_success", *TIMING_KEYS):
        assert key in row and np.isfinite(row[key]), key
    assert sum(row[k] for k in row if k.startswith("anchor_frac_")) == pytest.approx(1.0)
    assert os.path.exists(os.path.join(cfg.out_dir, "metrics.csv"))
    assert os.path.exists(os.path.join(cfg.out_dir, "checkpoint.pt"))


def test_learning_happens_on_a_fixed_task(tmp_path):
    """A tabular GAGPO policy on one fixed 4x4 grid learns to reach the goal reliably."""
    cfg = tiny(tmp_path, algo="gagpo", policy="tabular", n_train_tasks=1, iterations=15, lr=0.5, update_epochs=2, eval_every=0)
    history = train(cfg)
    first, last = history[0]["success"], np.mean([r["success"] for r in history[-3:]])
    assert last >= 0.9 and last > first, (first, last)
    assert history[-1]["episode_length"] < history[0]["episode_length"]


def test_deterministic_for_a_seed(tmp_path):
    h1 = train(tiny(tmp_path / "a", algo="gigpo", iterations=3))
    h2 = train(tiny(tmp_path / "b", algo="gigpo", iterations=3))
    assert strip(h1) == strip(h2)
    h3 = train(tiny(tmp_path / "c", algo="gigpo", iterations=3, seed=1))
    assert strip(h1) != strip(h3)


@pytest.mark.parametrize("algo", ["gagpo", "ppo"])
def test_resume_is_exact(tmp_path, algo):
    straight = Trainer(tiny(tmp_path / "s", algo=algo, iterations=4))
    h_straight = straight.train()
    first = tiny(tmp_path / "r", algo=algo, iterations=2)
    Trainer(first).train()
    resumed = Trainer(tiny(tmp_path / "r", algo=algo, iterations=4, resume=True))
    h_resumed = resumed.train()
    assert strip(h_resumed) == strip(h_straight)
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_configuration(tmp_path):
    Trainer(tiny(tmp_path, algo="gagpo")).train()
    with pytest.raises(ValueError, match="different configuration"):
        Trainer(tiny(tmp_path, algo="grpo", iterations=3, resume=True)).train()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown algo"):
        TrainConfig(algo="dpo")
    with pytest.raises(ValueError, match="group_size"):
        TrainConfig(group_size=0)
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
        TrainConfig(gamma=1.5)


def test_cli_train_smoke(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--env", "toy_envs/OpenGrid-v0", "--env-kwargs", '{"size": 4}', "--algo", "rloo", "--iterations", "1",
               "--tasks-per-iter", "2", "--group-size", "2", "--eval-episodes", "2", "--no-progress", "--out-dir", str(out)])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["iteration"] == 1
    assert (out / "metrics.jsonl").exists()


def test_cli_reports_bad_values(capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's parse error: exit status 2
        main(["train", "--gamma", "2", "--no-progress"])
    assert exc.value.code == 2
    assert "argument --gamma: gamma must lie in [0, 1]" in capsys.readouterr().err


def test_env_step_budget_stops_the_run(tmp_path):
    history = train(tiny(tmp_path, algo="grpo", iterations=50, env_step_budget=200))
    assert 2 <= len(history) < 50
    assert history[-1]["env_steps"] >= 200 > history[-2]["env_steps"]
    assert "eval_success" in history[-1]  # the last iteration is evaluated


# ---------------------------------------------------------------------- the KL penalty to a reference policy
def test_kl_coef_zero_keeps_no_reference(tmp_path):
    """The default (kl_coef 0, no reference given): no reference policy is built or scored, nothing is logged for it."""
    trainer = Trainer(tiny(tmp_path, algo="grpo"))
    assert trainer.reference is None and not trainer.SCORES_REFERENCE
    history = trainer.train()
    assert not any("kl_ref" in row or "time_reference" in row for row in history)


def hand_made_policy(logits_by_row: dict[str, list[float]]) -> TabularSoftmaxPolicy:
    """A tabular policy whose logits on the rows of HAND_MADE are the given numbers."""
    policy = TabularSoftmaxPolicy(n_buckets=2**16)
    with torch.no_grad():
        for obs, logits in logits_by_row.items():
            for action, z in zip(HAND_MADE[obs], logits):
                policy.table[policy.index(obs, action)] = z
    return policy


HAND_MADE = {"at the start": ["go north", "go east", "go south"], "by the wall": ["go west", "go east"],
             "near the goal": ["go north", "go east", "go south", "go west"]}


def test_minibatch_loss_adds_beta_times_the_capped_k3_of_the_sampled_actions():
    """On a hand-made minibatch, with logits chosen by hand: loss = policy term + beta * mean(min(k3, 10))
    - c_H * mean(H), k3 = e^d - 1 - d, d = log pi_ref(a) - log pi(a); the third row's k3 (about 142) hits the cap."""
    policy = hand_made_policy({"at the start": [0.0, 1.0, 2.0], "by the wall": [0.5, -0.5], "near the goal": [-5.0, 0.0, 0.0, 0.0]})
    reference = hand_made_policy({"at the start": [2.0, 0.0, 0.0], "by the wall": [0.0, 0.0], "near the goal": [5.0, 0.0, 0.0, 0.0]})
    observations = list(HAND_MADE)
    admissible = [HAND_MADE[o] for o in observations]
    actions = torch.tensor([1, 0, 0])
    advantages = torch.tensor([1.0, -0.5, 0.25])

    def log_softmax(z):
        return [x - math.log(sum(math.exp(y) for y in z)) for x in z]

    pi = [log_softmax([policy.table[policy.index(o, a)].item() for a in HAND_MADE[o]]) for o in observations]
    ref = [log_softmax([reference.table[reference.index(o, a)].item() for a in HAND_MADE[o]]) for o in observations]
    logp = torch.tensor([pi[i][a] for i, a in enumerate(actions.tolist())])
    logp_old = logp + torch.tensor([0.1, -0.1, 0.0])  # ratios e^-0.1, e^0.1, 1: inside the clip
    d = [ref[i][a] - pi[i][a] for i, a in enumerate(actions.tolist())]
    k3 = [math.exp(x) - 1 - x for x in d]
    assert k3[2] > 10 > max(k3[:2])
    ratio = torch.exp(logp - logp_old)
    policy_term = float((-(ratio * advantages)).mean())
    kl_term = sum(min(k, 10.0) for k in k3) / 3
    entropy_term = sum(-sum(math.exp(x) * x for x in row) for row in pi) / 3
    logp_ref = torch.tensor([ref[i][a] for i, a in enumerate(actions.tolist())])
    for beta in (0.0, 0.5):
        cfg = TrainConfig(kl_coef=beta, entropy_coef=0.01)
        loss, diag, _ = minibatch_loss(policy, observations, admissible, actions, logp_old, advantages, cfg, logp_ref)
        assert diag["kl_ref"] == pytest.approx(kl_term, rel=1e-6)
        assert diag["entropy"] == pytest.approx(entropy_term, rel=1e-6)
        assert loss.item() == pytest.approx(policy_term + beta * kl_term - 0.01 * entropy_term, rel=1e-6, abs=1e-7)


def test_kl_coef_zero_leaves_the_loss_and_its_gradient_identical():
    """With beta = 0 the reference's log-probs change nothing, bit for bit: the loss and every gradient equal
    those of the loss without a reference (so a run with kl_coef 0 trains exactly as before)."""
    policy = TextPolicy(seed=0)
    reference = TextPolicy(seed=1)
    observations = ["the key is 2 steps north", "the goal is 1 step east", "walls: west"]
    admissible = [["go north", "go east"], ["go east", "go south", "go west"], ["go north"]]
    actions = torch.tensor([0, 2, 0])
    with torch.no_grad():
        logp_old = action_log_probs(policy.logits(observations, admissible), actions) + 0.05
        logp_ref = action_log_probs(reference.logits(observations, admissible), actions)
    advantages = torch.tensor([0.7, -1.2, 0.4])
    cfg = TrainConfig(kl_coef=0.0)
    results = []
    for ref in (None, logp_ref):
        policy.zero_grad()
        loss, diag, _ = minibatch_loss(policy, observations, admissible, actions, logp_old, advantages, cfg, ref)
        loss.backward()
        results.append((loss.detach().clone(), [p.grad.clone() for p in policy.parameters()], diag))
    (loss0, grads0, diag0), (loss1, grads1, diag1) = results
    assert torch.equal(loss0, loss1) and all(torch.equal(a, b) for a, b in zip(grads0, grads1))
    assert diag0["kl_ref"] == 0.0 and diag1["kl_ref"] > 0  # measured, not charged
    with pytest.raises(ValueError, match="needs logp_ref"):
        minibatch_loss(policy, observations, admissible, actions, logp_old, advantages, TrainConfig(kl_coef=0.1))


def test_a_reference_with_kl_coef_zero_trains_exactly_as_without_one(tmp_path):
    """kl_coef 0 with a reference only measures: the same metrics (plus kl_ref and time_reference) and weights."""
    plain = Trainer(tiny(tmp_path / "plain", algo="gagpo", iterations=3))
    measured = Trainer(tiny(tmp_path / "measured", algo="gagpo", iterations=3), reference="initial")
    h_plain, h_measured = plain.train(), measured.train()
    assert all(row["kl_ref"] >= 0 for row in h_measured) and h_measured[-1]["kl_ref"] > 0
    assert strip(h_plain) == [{k: v for k, v in row.items() if k != "kl_ref"} for row in strip(h_measured)]
    assert all(torch.equal(a, b) for a, b in zip(plain.policy.parameters(), measured.policy.parameters()))


def test_the_reference_is_a_frozen_copy_of_the_initial_or_the_given_policy(tmp_path):
    cfg = tiny(tmp_path, algo="grpo", kl_coef=0.5, eval_every=0)
    trainer = Trainer(cfg)
    initial = [p.detach().clone() for p in trainer.policy.parameters()]
    history = trainer.train()
    assert all("kl_ref" in row and "time_reference" in row for row in history)
    assert all(not p.requires_grad for p in trainer.reference.parameters())
    assert all(torch.equal(a, b) for a, b in zip(trainer.reference.parameters(), initial))  # unchanged by training
    assert any(not torch.equal(a, b) for a, b in zip(trainer.policy.parameters(), initial))
    # the reference's log-probs of a rollout's actions are its own, not the policy's
    rollout = trainer.rollout()
    with torch.no_grad():
        expected = action_log_probs(trainer.reference.logits(rollout.observations, rollout.admissible),
                                    torch.as_tensor(rollout.actions)).double().numpy()
    assert np.array_equal(trainer.reference_logp(rollout), expected)
    given = TextPolicy(seed=7)
    other = Trainer(tiny(tmp_path / "given", algo="grpo"), reference=given)
    assert other.reference is not given and other.SCORES_REFERENCE
    assert all(torch.equal(a, b) for a, b in zip(other.reference.parameters(), given.parameters()))
    with pytest.raises(ValueError, match="reference must be"):
        Trainer(tiny(tmp_path / "bad", algo="grpo"), reference="final")


def test_resume_with_a_kl_penalty_is_exact(tmp_path):
    straight = Trainer(tiny(tmp_path / "s", algo="grpo", iterations=4, kl_coef=0.5))
    h_straight = straight.train()
    Trainer(tiny(tmp_path / "r", algo="grpo", iterations=2, kl_coef=0.5)).train()
    resumed = Trainer(tiny(tmp_path / "r", algo="grpo", iterations=4, kl_coef=0.5, resume=True))
    assert strip(resumed.train()) == strip(h_straight)
    assert all(torch.equal(a, b) for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()))


def test_a_large_kl_coef_keeps_the_run_closer_to_its_reference(tmp_path):
    """Eight iterations with beta = 2 against the same run with beta = 0 (both measuring KL to the initial
    policy): the penalised run's logged kl_ref and its exact KL to the reference, on held-out states, are a
    fraction of the free run's (which does drift)."""
    exact, logged = {}, {}
    for beta in (0.0, 2.0):
        trainer = Trainer(tiny(tmp_path / f"beta{beta}", algo="grpo", iterations=8, eval_every=0, kl_coef=beta),
                          reference="initial")
        history = trainer.train()
        logged[beta] = history[-1]["kl_ref"]
        pool = EnvPool(make_env_fn("toy_envs/OpenGrid-v0", 0, size=4))
        states = collect(pool, trainer.reference, [10_000, 10_001, 10_002, 10_003], 4, torch.Generator().manual_seed(0))
        pool.close()
        with torch.no_grad():
            exact[beta] = kl_divergence(trainer.policy.logits(states.observations, states.admissible),
                                        trainer.reference.logits(states.observations, states.admissible)).mean().item()
    assert exact[0.0] > 0.02 and logged[0.0] > 0.02, (exact, logged)  # the free run moved away
    assert exact[2.0] < 0.25 * exact[0.0] and logged[2.0] < 0.25 * logged[0.0], (exact, logged)


def test_eval_sampled_adds_the_sampled_policy_and_changes_nothing_else(tmp_path):
    """``eval_sampled``: each evaluation also plays the held-out tasks with sampled actions (its own
    generator, seeded with the run's seed); the greedy metrics and the training are those of a run without it."""
    plain = Trainer(tiny(tmp_path / "a", eval_every=1, eval_episodes=12))
    both = Trainer(tiny(tmp_path / "b", eval_every=1, eval_episodes=12, eval_sampled=True))
    for _ in range(3):
        plain.step(), both.step()
    assert strip(plain.history) == [{k: v for k, v in r.items() if k != "eval_success_sampled"} for r in strip(both.history)]
    assert all("eval_success_sampled" in r for r in both.history) and not any("eval_success_sampled" in r for r in plain.history)
    expected = collect(both.eval_pool, both.policy, both.eval_seeds, 1, torch.Generator().manual_seed(both.cfg.seed), greedy=False)
    assert both.evaluate()["eval_success_sampled"] == expected.success_rate
    greedy = collect(both.eval_pool, both.policy, both.eval_seeds, 1, torch.Generator().manual_seed(0), greedy=True)
    assert both.evaluate()["eval_success"] == greedy.success_rate
    plain.close(), both.close()
