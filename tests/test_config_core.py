"""One config core and one run loop (issue 11, items 2 and 3).

The toy and language-model configurations take every shared setting from one definition
(gagpo.config.EstimatorSettings / RunSettings) and validate through one path, so a bad value gets the
same error from both; the LM trainer reads its own configuration (it builds no toy TrainConfig); and
gagpo.runloop.RunLoop runs one iteration as rollout → (reference) → advantages → update, each phase
timed with one vocabulary."""
from __future__ import annotations

import dataclasses
import math
import typing
from types import SimpleNamespace

import numpy as np
import pytest

import gagpo
from gagpo import registry
from gagpo.config import (ESTIMATOR_SETTINGS, SHARED_FIELDS, BaseConfig, ConfigError, EstimatorSettings, RunSettings,
                          TrainConfig, shared)
from gagpo.runloop import TIME_METRICS, RunLoop

from .test_advantages import HAND

CONSTRAINTS = ("choices", "ge", "gt", "le", "lt", "check")


def lm_config_class():
    pytest.importorskip("transformers")
    from gagpo.llm.train import LMTrainConfig

    return LMTrainConfig


def fields_of(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def default_of(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


# ---------------------------------------------------------------------- one definition per shared setting
def test_both_configurations_take_every_shared_setting_from_its_one_definition():
    """A setting in both configurations is a shared one, with the shared type and the very same constraints
    (choices, bounds, check functions: the same objects); every shared setting is in both."""
    LMTrainConfig = lm_config_class()
    toy, lm = fields_of(TrainConfig), fields_of(LMTrainConfig)
    assert set(toy) & set(lm) == set(SHARED_FIELDS)
    hints = {cls: typing.get_type_hints(cls) for cls in (TrainConfig, LMTrainConfig, EstimatorSettings, RunSettings)}
    for name, base in SHARED_FIELDS.items():
        owner = EstimatorSettings if name in fields_of(EstimatorSettings) else RunSettings
        for cls, f in ((TrainConfig, toy[name]), (LMTrainConfig, lm[name])):
            assert hints[cls][name] == hints[owner][name], (cls.__name__, name)
            assert {k: f.metadata[k] for k in CONSTRAINTS if k in f.metadata} == \
                   {k: base.metadata[k] for k in CONSTRAINTS if k in base.metadata}, (cls.__name__, name)
            for k in CONSTRAINTS:
                if k in base.metadata:
                    assert f.metadata[k] is base.metadata[k], (cls.__name__, name, k)


def test_the_toy_configuration_keeps_the_shared_defaults_and_the_lm_one_says_where_it_differs():
    """TrainConfig uses every shared default and help; LMTrainConfig specialises these defaults (and some help
    texts), and nothing else: a changed default shows up here."""
    LMTrainConfig = lm_config_class()
    toy, lm = fields_of(TrainConfig), fields_of(LMTrainConfig)
    for name, base in SHARED_FIELDS.items():
        assert default_of(toy[name]) == default_of(base) and toy[name].metadata["help"] == base.metadata["help"], name
    lm_defaults = {n: default_of(lm[n]) for n, base in SHARED_FIELDS.items() if default_of(lm[n]) != default_of(base)}
    assert lm_defaults == {"env": "toy_envs/MiniHousehold-v0", "max_steps": 50, "iterations": 150, "tasks_per_iter": 16,
                           "lr": 1e-6, "update_epochs": 1, "entropy_coef": 0.0, "value_lr": 1e-4, "eval_every": 10,
                           "eval_episodes": 32, "threads": 0, "kl_coef": 0.01}
    # the estimator settings are the same in both, help included
    for name in fields_of(EstimatorSettings):
        if name != "algo":
            assert lm[name].metadata["help"] == toy[name].metadata["help"] == SHARED_FIELDS[name].metadata["help"]


def test_estimator_settings_table_and_shared_helper():
    assert tuple(ESTIMATOR_SETTINGS) == ("gamma", "lam", "norm", "step_weight", "reinforce_baseline", "adv_eps",
                                         "anchor_match", "anchor_threshold")
    assert {k: v["default"] for k, v in ESTIMATOR_SETTINGS.items()} == {
        "gamma": 0.95, "lam": 0.95, "norm": "mean_std", "step_weight": 1.0, "reinforce_baseline": "step_mean",
        "adv_eps": 1e-6, "anchor_match": "exact", "anchor_threshold": 0.8}
    with pytest.raises(ValueError, match="no shared setting 'policy'"):
        shared("policy")
    f = shared("iterations", 7, "other help")
    assert f.default == 7 and f.metadata["help"] == "other help" and f.metadata["ge"] == 1
    assert shared("env_kwargs").default_factory() == {}  # a fresh dict for every instance


def test_both_configurations_keep_their_field_order():
    """The order of --help, to_dict() and config.json (chapter 9 prints a configuration's fields in order)."""
    LMTrainConfig = lm_config_class()
    assert list(fields_of(TrainConfig))[:6] == ["env", "env_kwargs", "max_steps", "algo", "seed", "iterations"]
    assert list(fields_of(TrainConfig))[-2:] == ["progress", "threads"]
    names = list(fields_of(LMTrainConfig))
    assert names[:2] == ["model", "lora_r"] and names[-2:] == ["progress", "threads"]
    assert names.index("max_new_tokens") < names.index("gamma") < names.index("lr") < names.index("minibatch_size")
    assert list(LMTrainConfig().to_dict()) == names


# ---------------------------------------------------------------------- one validation path
BAD = [
    dict(gamma=1.5), dict(lam=-0.1), dict(norm="zscore"), dict(algo="nope"), dict(seed=-1), dict(iterations=0),
    dict(tasks_per_iter=0), dict(lr=0.0), dict(clip_eps=math.nan), dict(entropy_coef=math.inf), dict(ratio_level="sequence"),
    dict(anchor_threshold=2.0), dict(max_nonfinite_steps=0), dict(threads=-1), dict(eval_every=-1),
    dict(env="toy_envs/Nope-v0"), dict(env_kwargs="{not json"), dict(env_kwargs={"bogus": 1}),
    dict(resume=True, overwrite=True), dict(eval_episodes=1000), dict(kl_coef=-0.1),
]


@pytest.mark.parametrize("bad", BAD, ids=lambda d: ",".join(d))
def test_a_bad_value_gets_the_same_error_from_both_configurations(bad):
    LMTrainConfig = lm_config_class()
    common = dict(env="household")  # the same environment, so that messages that name it agree
    errors = []
    for cls in (TrainConfig, LMTrainConfig):
        with pytest.raises(ConfigError) as info:
            cls(**{**common, **bad})
        errors.append((info.value.field, str(info.value)))
    assert errors[0] == errors[1]
    assert errors[0][0] in bad or errors[0][0] == "overwrite"
    if set(bad) <= set(fields_of(EstimatorSettings)):  # the estimator settings alone validate the same way
        with pytest.raises(ConfigError) as info:
            EstimatorSettings(**bad)
        assert (info.value.field, str(info.value)) == errors[0]


def test_both_configurations_resolve_aliases_and_parse_env_kwargs_alike():
    LMTrainConfig = lm_config_class()
    for cls in (TrainConfig, LMTrainConfig):
        cfg = cls(env="household", env_kwargs='{"level": 1}')
        assert isinstance(cfg, BaseConfig)
        assert cfg.env == "toy_envs/MiniHousehold-v0" and cfg.env_kwargs == {"level": 1}


def test_estimator_settings_alone_configure_the_estimators():
    """EstimatorSettings is the smallest configuration that compute_advantages and critic_targets accept,
    and it gives what a full configuration with the same estimator fields gives."""
    from gagpo.trainer import critic_targets

    b = gagpo.StepBatch.from_rows(HAND)
    est = EstimatorSettings(algo="gagpo", gamma=0.9, lam=0.5, norm="mean")
    toy = TrainConfig(algo="gagpo", gamma=0.9, lam=0.5, norm="mean")
    assert np.array_equal(registry.compute_advantages(est.algo, b, est), registry.compute_advantages(toy.algo, b, toy))
    v, nv = np.linspace(0, 1, len(b)), np.linspace(1, 0, len(b))
    got = critic_targets(EstimatorSettings(algo="ppo", gamma=0.9), b, v, nv)
    want = critic_targets(TrainConfig(algo="ppo", gamma=0.9), b, v, nv)
    assert all(np.array_equal(got[k], want[k]) for k in ("advantages", "values", "returns"))


# ---------------------------------------------------------------------- the LM trainer builds no toy configuration
def test_the_lm_trainer_builds_no_toy_configuration_and_logs_every_phase(tmp_path, monkeypatch):
    """A PPO run with a KL penalty (the value head and the reference phase both run) never builds a
    TrainConfig; its rows carry time_rollout, time_reference, time_advantage and time_update."""
    LMTrainConfig = lm_config_class()
    from gagpo.llm.train import LMTrainer

    def refuse(self, *args, **kwargs):
        raise AssertionError("the LM trainer built a toy TrainConfig")

    cfg = LMTrainConfig(model="tiny", algo="ppo", kl_coef=0.01, iterations=1, tasks_per_iter=2, group_size=2, max_steps=3,
                        max_new_tokens=16, minibatch_size=16, micro_batch_size=8, eval_every=1, eval_episodes=1,
                        checkpoint_every=0, progress=False, device="cpu", threads=1, out_dir=str(tmp_path / "lm"))
    monkeypatch.setattr(TrainConfig, "__init__", refuse)
    with pytest.raises(AssertionError):
        TrainConfig()
    trainer = LMTrainer(cfg)
    assert trainer.estimator_cfg is trainer.cfg  # chapter 8's compute_advantages(trainer.estimator_cfg, ...)
    history = trainer.train()
    row = history[-1]
    assert set(TIME_METRICS) <= set(row)
    assert all(isinstance(row[k], float) and row[k] >= 0 for k in TIME_METRICS)
    assert "value_mean" in row and "kl_ref" in row and "eval_success" in row
    with pytest.raises(TypeError, match="inside targets"):
        trainer.update(None, {"advantages": np.zeros(1)}, ref_logp=[])


def test_the_toy_trainer_logs_the_same_timing_vocabulary_without_a_reference(tmp_path):
    from gagpo.trainer import Trainer

    cfg = TrainConfig(env="keydoor", env_kwargs={"size": 5, "min_solution_length": 3, "max_solution_length": 6},
                      max_steps=10, iterations=1, tasks_per_iter=2, group_size=2, eval_every=0, checkpoint_every=0,
                      progress=False, out_dir=str(tmp_path / "toy"))
    row = Trainer(cfg).train()[-1]
    assert {k for k in row if k.startswith("time_")} == {"time_rollout", "time_advantage", "time_update"}


# ---------------------------------------------------------------------- the run loop's hooks
class FakeRollout(SimpleNamespace):
    pass


class FakeLoop(RunLoop):
    """The hooks of RunLoop, recording the order they are called in."""

    SCORES_REFERENCE = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.pool = self.eval_pool = SimpleNamespace(close=lambda: self.calls.append("close"))
        self.calls: list[str] = []

    def rollout(self):
        self.calls.append("rollout")
        b = gagpo.StepBatch.from_rows(HAND)
        return FakeRollout(batch=b, n_steps=len(b), success_rate=0.5, invalid_rate=0.0, mean_return=0.5, mean_length=2.5)

    def reference_logp(self, rollout):
        self.calls.append("reference")
        return "scores"

    def advantages(self, rollout):
        self.calls.append("advantages")
        return {"advantages": np.ones(len(rollout.batch))}

    def update(self, rollout, targets):
        self.calls.append("update")
        assert targets["ref_logp"] == "scores"
        return {"policy_loss": 0.0}

    def evaluate(self):
        self.calls.append("evaluate")
        return {"eval_success": 1.0}

    def save_checkpoint(self):
        self.calls.append("save")

    def load_checkpoint(self):
        return False

    def step_metrics(self, rollout, targets, update, seconds):
        return {"mine": len(seconds)}


def test_the_run_loop_calls_its_hooks_in_order_and_times_every_phase(tmp_path):
    cfg = SimpleNamespace(threads=0, run_dir=lambda: str(tmp_path / "fake"), iterations=2, seed=0, tasks_per_iter=2,
                          n_train_tasks=0, eval_every=2, checkpoint_every=0, progress=False, resume=False, overwrite=False,
                          algo="fake", to_dict=lambda: {"algo": "fake"})
    loop = FakeLoop(cfg)
    history = loop.train()
    one = ["rollout", "reference", "advantages", "update"]
    assert loop.calls == one + one + ["evaluate", "save", "close", "close"]
    assert [r["iteration"] for r in history] == [1, 2] and history[-1]["env_steps"] == 2 * len(HAND)
    assert all(set(TIME_METRICS) <= set(r) and r["mine"] == 4 for r in history)
    assert (tmp_path / "fake" / "metrics.csv").exists()


def test_run_loop_hooks_are_abstract_and_reexported():
    import gagpo.trainer

    assert gagpo.trainer.RunLoop is RunLoop
    assert RunLoop.__abstractmethods__ == {"rollout", "advantages", "update", "evaluate", "save_checkpoint",
                                           "load_checkpoint"}

    class Incomplete(RunLoop):
        def rollout(self):
            return None

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(SimpleNamespace(threads=0, run_dir=lambda: "x"))
