"""The estimator registry (gagpo.registry): built-ins equal the pure functions, settings are read by name,
a user's estimator registered with one decorator trains in both trainers and on the command line, and
importing the estimators loads neither torch nor gymnasium."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import gagpo
from gagpo import advantages as A
from gagpo import registry
from gagpo.anchors import near_duplicate_batch
from gagpo.config import ESTIMATOR_SETTINGS, TrainConfig

from .test_advantages import HAND, make_rows


def hand():
    return gagpo.StepBatch.from_rows(HAND)


def test_importing_the_estimators_loads_neither_torch_nor_gymnasium():
    code = ("import gagpo, gagpo.advantages, gagpo.registry, gagpo.anchors, gagpo.config, gagpo.text, sys; "
            "gagpo.register_estimator; loaded = [m for m in ('torch', 'gymnasium') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builtin_estimators_equal_the_pure_functions():
    b = hand()
    assert gagpo.estimator_names()[:6] == ("reinforce", "grpo", "rloo", "ppo", "gigpo", "gagpo")
    flags = {n: (registry.get_estimator(n).uses_anchors, registry.get_estimator(n).needs_critic) for n in gagpo.estimator_names()[:6]}
    assert flags == {"reinforce": (False, False), "grpo": (False, False), "rloo": (False, False), "ppo": (False, True),
                     "gigpo": (True, False), "gagpo": (True, False)}
    cfg = SimpleNamespace(gamma=0.5, lam=0.7, norm="mean", step_weight=2.0, reinforce_baseline="none", adv_eps=1e-3)
    c = gagpo.compute_advantages
    assert np.array_equal(c("reinforce", b, cfg), A.reinforce_advantages(b, 0.5, None))
    assert np.array_equal(c("reinforce", b, cfg, reinforce_baseline="step_mean"), A.reinforce_advantages(b, 0.5, "step_mean"))
    assert np.array_equal(c("grpo", b, cfg), A.grpo_advantages(b, "mean", 1e-3))
    assert np.array_equal(c("rloo", b, cfg), A.rloo_advantages(b))
    assert np.array_equal(c("gigpo", b, cfg), A.gigpo_advantages(b, 0.5, 2.0, "mean", 1e-3))
    assert np.array_equal(c("gagpo", b, cfg), A.gagpo_advantages(b, 0.5, 0.7, "mean", 1e-3))
    v, nv = np.linspace(0, 1, len(b)), np.linspace(1, 0, len(b))
    gae = A.gae_advantages(b, v, nv, 0.5, 0.7)
    assert np.array_equal(c("ppo", b, cfg, values=v, next_values=nv), gae - gae.mean())
    assert np.array_equal(A.lambda_returns(b, v, nv, 0.5, 0.7), gae + v)


def test_gigpo_reads_norm_none_as_mean():
    """GiGPO has no unnormalised form: the registered adapter maps norm "none" to "mean" (documented there)."""
    b = hand()
    assert np.array_equal(gagpo.compute_advantages("gigpo", b, gamma=0.5, norm="none"), A.gigpo_advantages(b, 0.5, norm="mean"))
    assert "none" in registry.get_estimator("gigpo").fn.__doc__
    with pytest.raises(ValueError, match="unknown norm"):
        A.gigpo_advantages(b, 0.5, norm="none")  # the pure function itself refuses it


def test_settings_come_from_keywords_then_config_then_defaults():
    b = hand()
    cfg = SimpleNamespace(gamma=0.5, norm="mean")
    # keyword > config attribute > configuration default (ESTIMATOR_SETTINGS)
    assert np.array_equal(gagpo.compute_advantages("gagpo", b, cfg, gamma=0.9),
                          A.gagpo_advantages(b, 0.9, ESTIMATOR_SETTINGS["lam"]["default"], "mean"))
    assert registry.resolve_settings("grpo") == {"norm": "mean_std", "adv_eps": 1e-6}
    assert registry.get_estimator("gigpo").settings == ("gamma", "step_weight", "norm", "adv_eps")
    assert registry.get_estimator("ppo").settings == ("gamma", "lam", "norm", "adv_eps")
    with pytest.raises(ValueError, match=r"estimator 'grpo' takes no setting \['gamma'\]"):
        gagpo.compute_advantages("grpo", b, gamma=0.9)
    with pytest.raises(ValueError, match="needs a critic"):
        gagpo.compute_advantages("ppo", b)
    with pytest.raises(ValueError, match=r"unknown estimator 'a2c'; expected one of \['reinforce'"):
        gagpo.compute_advantages("a2c", b)


def test_near_duplicate_anchors_apply_to_estimators_that_use_anchors():
    b = gagpo.StepBatch.from_rows(make_rows([
        ("g", [0, 1], ["The key is 2 steps north.", "The key is 1 step north.", "end"], "terminated"),
        ("g", [0, 0], ["The key is 3 steps north.", "The key is 1 step north.", "end"], "terminated"),
    ]))
    seen = []

    @gagpo.register_estimator("test_anchor_probe", uses_anchors=True)
    def probe(batch):
        seen.append(batch)
        return np.zeros(len(batch))

    try:
        gagpo.compute_advantages("test_anchor_probe", b, anchor_match="near", anchor_threshold=0.3)
        assert np.array_equal(seen[-1].anchor_index, near_duplicate_batch(b, 0.3).anchor_index)
        assert seen[-1].n_anchors < b.n_anchors
        gagpo.compute_advantages("test_anchor_probe", b)  # anchor_match defaults to "exact"
        assert seen[-1] is b
        near = gagpo.compute_advantages("gagpo", b, anchor_match="near", anchor_threshold=0.3)
        assert np.array_equal(near, A.gagpo_advantages(near_duplicate_batch(b, 0.3), 0.95, 0.95))
        grpo = gagpo.compute_advantages("grpo", b, anchor_match="near", anchor_threshold=0.3)
        assert np.array_equal(grpo, A.grpo_advantages(b))  # grpo does not use anchors: unchanged
    finally:
        registry.unregister_estimator("test_anchor_probe")


def test_registration_is_checked():
    with pytest.raises(ValueError, match="already registered"):
        gagpo.register_estimator("grpo")(lambda batch: np.zeros(len(batch)))
    with pytest.raises(ValueError, match="read by name"):
        gagpo.register_estimator("test_bad")(lambda batch, **kw: np.zeros(len(batch)))
    with pytest.raises(ValueError, match="must take the parameters"):
        gagpo.register_estimator("test_bad", needs_critic=True)(lambda batch, values: values)
    with pytest.raises(ValueError, match="non-empty string"):
        gagpo.register_estimator(" ")
    assert "test_bad" not in gagpo.estimator_names()

    @gagpo.register_estimator("test_shape")
    def wrong_shape(batch):
        return np.zeros(len(batch) + 1)

    try:
        with pytest.raises(ValueError, match="returned shape"):
            gagpo.compute_advantages("test_shape", hand())
        with pytest.raises(ValueError, match="needs the setting 'temperature'"):
            gagpo.register_estimator("test_shape", replace=True)(lambda batch, temperature: np.zeros(len(batch)))
            gagpo.compute_advantages("test_shape", hand())
    finally:
        registry.unregister_estimator("test_shape")
    assert "test_shape" not in gagpo.estimator_names()


# ---------------------------------------------------------------------- a user's estimators in both trainers
CALLS: list[dict] = []


@pytest.fixture
def user_estimators():
    """Two estimators registered as a user would, from outside the library: critic-free and with a critic."""
    CALLS.clear()

    @gagpo.register_estimator("test_mc_mean", color="#000000")
    def mc_mean(batch, gamma, shift=0.25):
        """Return-to-go minus its batch mean, plus a constant ``shift`` (a setting with its own default)."""
        returns = gagpo.discounted_returns(batch, gamma)
        adv = returns - returns.mean() + shift
        CALLS.append({"name": "test_mc_mean", "gamma": gamma, "adv": adv})
        return adv

    @gagpo.register_estimator("test_td0", needs_critic=True)
    def td0(batch, values, next_values, gamma):
        """One-step TD error over the trainer's critic."""
        adv = batch.reward + gamma * np.where(batch.terminated, 0.0, next_values) - values
        CALLS.append({"name": "test_td0", "gamma": gamma, "adv": adv, "values": np.array(values)})
        return adv

    yield
    for name in ("test_mc_mean", "test_td0"):
        registry.unregister_estimator(name)


def train_and_check(trainer, name, gamma):
    """Train; the parameters changed, and every iteration's logged advantages are the estimator's."""
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    history = trainer.train()
    assert any(not np.array_equal(a.detach().numpy(), b.numpy()) for a, b in zip(trainer.policy.parameters(), before))
    calls = [c for c in CALLS if c["name"] == name]
    assert len(calls) == len(history) == 2
    for row, call in zip(history, calls):
        assert call["gamma"] == gamma
        assert row["adv_mean"] == pytest.approx(float(call["adv"].mean()))
    if name == "test_mc_mean":
        assert history[0]["adv_mean"] == pytest.approx(0.25)  # the estimator's own default shift
    else:
        assert all(np.isfinite(row["value_loss"]) for row in history)  # the trainer trained its critic
        assert np.any(calls[-1]["values"] != 0)  # the critic's values reached the estimator (after an update)


@pytest.mark.parametrize("name", ["test_mc_mean", "test_td0"])
def test_a_registered_estimator_trains_in_the_toy_trainer(tmp_path, user_estimators, name):
    from gagpo.trainer import Trainer

    with pytest.raises(ValueError, match="unknown algo 'test_unregistered'"):
        TrainConfig(algo="test_unregistered")
    cfg = TrainConfig(env="toy_envs/OpenGrid-v0", env_kwargs={"size": 4}, algo=name, gamma=0.9, iterations=2,
                      tasks_per_iter=2, group_size=4, eval_every=0, progress=False, out_dir=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    assert (trainer.value_net is not None) == (name == "test_td0")
    train_and_check(trainer, name, 0.9)


def test_a_registered_estimator_is_a_command_line_choice(tmp_path, user_estimators, capsys):
    from gagpo.__main__ import main

    assert main(["train", "--algo", "test_mc_mean", "--env", "toy_envs/OpenGrid-v0", "--env-kwargs", '{"size": 4}',
                 "--iterations", "2", "--tasks-per-iter", "2", "--group-size", "4", "--eval-every", "0",
                 "--no-progress", "--out-dir", str(tmp_path / "cli")]) == 0
    assert len(CALLS) == 2
    from gagpo.plotting import ALGO_COLORS

    assert ALGO_COLORS["test_mc_mean"] == "#000000" and ALGO_COLORS["test_td0"].startswith("#")


@pytest.mark.parametrize("name", ["test_mc_mean", "test_td0"])
def test_a_registered_estimator_trains_in_the_lm_trainer(tmp_path, user_estimators, name):
    pytest.importorskip("transformers")
    from gagpo.llm.train import LMTrainConfig, LMTrainer

    cfg = LMTrainConfig(model="tiny", algo=name, gamma=0.8, iterations=2, tasks_per_iter=2, group_size=2, max_steps=3,
                        max_new_tokens=16, minibatch_size=16, micro_batch_size=8, eval_every=0, checkpoint_every=0,
                        progress=False, device="cpu", threads=1, out_dir=str(tmp_path / "lm"))
    trainer = LMTrainer(cfg)
    assert (trainer.value_head is not None) == (name == "test_td0")
    train_and_check(trainer, name, 0.8)
