"""The non-finite guard (gagpo.guard): NaN injected into the forward pass or the gradients of the LM and toy
trainers is skipped (no weight or optimizer change), counted in ``nonfinite_steps``, stops the run after
``max_nonfinite_steps`` bad steps in a row with an error naming iteration and phase, never reaches a checkpoint,
and a checkpoint holding NaN is refused on resume."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from gagpo.config import TrainConfig
from gagpo.guard import NonFiniteError, NonFiniteGuard, all_finite
from gagpo.trainer import Trainer

transformers = pytest.importorskip("transformers")
from gagpo.llm.train import LMTrainConfig, LMTrainer  # noqa: E402


def lm_cfg(tmp_path, name="run", **kw) -> LMTrainConfig:
    base = dict(model="tiny", iterations=2, tasks_per_iter=2, group_size=2, max_steps=3, max_new_tokens=16,
                minibatch_size=8, micro_batch_size=4, eval_every=0, checkpoint_every=1, progress=False,
                out_dir=str(tmp_path / name), device="cpu", max_nonfinite_steps=3)
    base.update(kw)
    return LMTrainConfig(**base)


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


class NaNWhileTraining:
    """A forward hook that turns the model's logits into NaN whenever gradients are being recorded (the
    update's forward passes), ``times`` times at most; rollouts and scoring stay untouched."""

    def __init__(self, times: int = 10**9):
        self.left = times

    def __call__(self, module, inputs, output):
        if torch.is_grad_enabled() and self.left > 0:
            self.left -= 1
            return output * float("nan")
        return output


def test_guard_counts_and_stops_after_the_limit():
    guard = NonFiniteGuard(limit=2)
    guard.bad(1, "loss")
    guard.good()
    guard.bad(2, "loss")
    with pytest.raises(NonFiniteError, match=r"iteration 3: 2 optimizer steps in a row .*phase 'gradients'.*Likely causes"):
        guard.bad(3, "gradients")
    assert guard.total == 3
    assert all_finite([torch.ones(3), None]) and not all_finite([torch.tensor([1.0, math.inf])])
    with pytest.raises(ValueError, match="limit"):
        NonFiniteGuard(0)


def test_lm_nan_in_every_update_stops_the_run_and_leaves_weights_and_checkpoint_finite(tmp_path):
    trainer = LMTrainer(lm_cfg(tmp_path, iterations=5))
    before = snapshot(trainer.policy.parameters())
    trainer.policy.model.lm_head.register_forward_hook(NaNWhileTraining())
    with pytest.raises(NonFiniteError, match=r"iteration \d+: 3 optimizer steps in a row.*phase 'log-probs'"):
        trainer.train()
    assert same(before, trainer.policy.parameters())  # no step was taken
    assert not trainer.optimizer.state  # AdamW's moments were never created
    assert all(p.isfinite().all() for p in trainer.policy.parameters())
    ckpt = os.path.join(trainer.run_dir, "checkpoint")
    if os.path.exists(ckpt):  # checkpoints written before the stop hold the untouched, finite weights
        from safetensors.torch import load_file

        state = load_file(os.path.join(ckpt, "model.safetensors"))
        assert all(t.isfinite().all() for t in state.values())


def test_lm_one_bad_step_is_skipped_and_counted_then_training_goes_on(tmp_path):
    trainer = LMTrainer(lm_cfg(tmp_path, iterations=2))
    before = snapshot(trainer.policy.parameters())
    trainer.policy.model.lm_head.register_forward_hook(NaNWhileTraining(times=1))
    history = trainer.train()
    assert history[0]["nonfinite_steps"] == 1 and history[1]["nonfinite_steps"] == 0
    assert history[1]["optimizer_steps"] >= 1 and math.isfinite(history[1]["grad_norm"])
    assert not same(before, trainer.policy.parameters())  # the later steps did train
    assert all(p.isfinite().all() for p in trainer.policy.parameters())
    with open(os.path.join(trainer.run_dir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    assert [r["nonfinite_steps"] for r in rows] == [1, 0]


def test_lm_nan_gradients_are_skipped_with_the_phase_named(tmp_path):
    trainer = LMTrainer(lm_cfg(tmp_path, iterations=4, max_nonfinite_steps=2))
    before = snapshot(trainer.policy.parameters())
    first = trainer.policy.parameters()[0]
    first.register_hook(lambda g: g * float("nan"))  # the forward is fine; the backward is not
    with pytest.raises(NonFiniteError, match="phase 'gradients'"):
        trainer.train()
    assert same(before, trainer.policy.parameters())


def test_lm_checkpoint_refuses_nan_weights_and_resume_refuses_a_nan_checkpoint(tmp_path):
    cfg = lm_cfg(tmp_path, iterations=1)
    trainer = LMTrainer(cfg)
    trainer.train()
    ckpt = os.path.join(trainer.run_dir, "checkpoint", "model.safetensors")
    saved = open(ckpt, "rb").read()
    with torch.no_grad():
        trainer.policy.parameters()[0][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to write the checkpoint"):
        trainer.save_checkpoint()
    assert open(ckpt, "rb").read() == saved  # the last checkpoint is as it was
    # a checkpoint that holds NaN (written by some other tool, or an older version) is refused on resume
    from safetensors.torch import load_file, save_file

    state = load_file(ckpt)
    name = next(iter(state))
    state[name][..., 0] = float("nan")
    save_file(state, ckpt, metadata={"format": "pt"})
    resumed = LMTrainer(lm_cfg(tmp_path, iterations=2, resume=True))
    with pytest.raises(ValueError, match="non-finite weights"):
        resumed.load_checkpoint()


def toy_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(env="toy_envs/OpenGrid-v0", algo="gagpo", iterations=3, tasks_per_iter=4, group_size=4, eval_every=0,
                checkpoint_every=1, progress=False, out_dir=str(tmp_path / "toy"), max_nonfinite_steps=3)
    base.update(kw)
    return TrainConfig(**base)


def poison_logits(policy, hook: NaNWhileTraining) -> None:
    """Route the toy policy's ``logits`` (called directly, not through ``forward``) through ``hook``."""
    logits = policy.logits
    policy.logits = lambda *a, **k: hook(policy, a, logits(*a, **k))


def test_toy_trainer_skips_nan_steps_and_stops_after_the_limit(tmp_path):
    trainer = Trainer(toy_cfg(tmp_path, iterations=10))
    before = snapshot(trainer.policy.parameters())
    poison_logits(trainer.policy, NaNWhileTraining())
    with pytest.raises(NonFiniteError, match="3 optimizer steps in a row"):
        trainer.train()
    assert same(before, trainer.policy.parameters())
    if os.path.exists(trainer.checkpoint_path()):
        state = torch.load(trainer.checkpoint_path(), weights_only=False)
        assert all(t.isfinite().all() for t in state["policy"].values())


def test_toy_trainer_counts_a_single_bad_step(tmp_path):
    trainer = Trainer(toy_cfg(tmp_path, iterations=2))
    poison_logits(trainer.policy, NaNWhileTraining(times=1))
    history = trainer.train()
    assert sum(r["nonfinite_steps"] for r in history) == 1
    assert all(p.isfinite().all() for p in trainer.policy.parameters())


def test_toy_resume_refuses_a_nan_checkpoint(tmp_path):
    Trainer(toy_cfg(tmp_path, iterations=1)).train()
    path = os.path.join(str(tmp_path / "toy"), "checkpoint.pt")
    state = torch.load(path, weights_only=False)
    name = next(iter(state["policy"]))
    state["policy"][name].view(-1)[0] = float("nan")
    torch.save(state, path)
    with pytest.raises(ValueError, match="non-finite weights"):
        Trainer(toy_cfg(tmp_path, iterations=2, resume=True)).load_checkpoint()
