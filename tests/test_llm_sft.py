"""Behaviour cloning on expert trajectories (gagpo.llm.sft): it learns (lower loss, higher held-out success than
the untrained start), its output folder is what `train --model` loads, it resumes exactly, two runs of one seed
are identical, bad steps are skipped, and the command line works."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from gagpo.__main__ import main  # noqa: E402
from gagpo.guard import NonFiniteError  # noqa: E402
from gagpo.llm.policy import LMPolicy  # noqa: E402
from gagpo.llm.sft import SFTConfig, SFTTrainer, sft  # noqa: E402
from gagpo.llm.tiny import tiny_model_path  # noqa: E402
from gagpo.rundir import read_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model with its format warm-up, in a private cache."""
    return tiny_model_path(seed=0, cache_dir=str(tmp_path_factory.mktemp("cache")))


def _small(tiny, out_dir, **overrides) -> SFTConfig:
    """A seconds-long run: MiniHousehold level 1, a few expert episodes, cheap evaluations."""
    kw = dict(model=tiny, env_kwargs={"level": 1}, device="cpu", gradient_checkpointing=False, history=0, lr=1e-2,
              iterations=6, batch_size=4, micro_batch_size=2, n_train_tasks=12, max_steps=3, max_new_tokens=8,
              eval_every=3, eval_episodes=2, checkpoint_every=3, out_dir=str(out_dir), progress=False)
    return SFTConfig(**{**kw, **overrides})


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _drop_times(history):
    return [{k: v for k, v in row.items() if not k.startswith("time")} for row in history]


# --------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def learned(tiny, tmp_path_factory):
    """A short behaviour-cloning run that learns: MiniHousehold level 1 (pick-and-place among three
    surfaces), no history in the prompt, 400 steps of 16 pairs from 300 expert episodes (~30 s on a CPU)."""
    cfg = SFTConfig(model=tiny, env_kwargs={"level": 1}, device="cpu", gradient_checkpointing=False, history=0,
                    lr=1e-2, iterations=400, batch_size=16, n_train_tasks=300, max_steps=10, max_new_tokens=32,
                    eval_every=400, eval_episodes=16, checkpoint_every=0, progress=False,
                    out_dir=str(tmp_path_factory.mktemp("learned")))
    trainer = SFTTrainer(cfg)
    history = trainer.train()
    return cfg, trainer, history


@pytest.mark.slow
def test_sft_lowers_the_loss_and_raises_held_out_greedy_success(learned):
    cfg, trainer, history = learned
    assert len(trainer.episodes) == 300 and all(ep.won for ep in trainer.episodes)
    assert len(trainer.examples) == 4 * 300  # every level-1 task takes 4 commands
    start, end = history[0], history[-1]
    assert start["iteration"] == 0 and "loss" not in start and end["iteration"] == 400  # iteration 0: the start
    losses = [row["loss"] for row in history if "loss" in row]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert end["eval_success"] > start["eval_success"]  # held-out tasks (EVAL_SEEDS), greedy episodes
    assert end["eval_invalid_rate"] < start["eval_invalid_rate"]
    assert all(row["nonfinite_steps"] == 0 for row in history[1:])
    rows = read_jsonl(os.path.join(cfg.run_dir(), "metrics.jsonl"))
    assert [r["iteration"] for r in rows] == list(range(401))
    assert os.path.exists(os.path.join(cfg.run_dir(), "metrics.csv")) and os.path.exists(os.path.join(cfg.run_dir(), "curves.png"))


@pytest.mark.slow
def test_the_exported_model_is_the_fine_tuned_policy(learned):
    cfg, trainer, _ = learned
    loaded = LMPolicy.from_pretrained(cfg.model_dir(), device="cpu")
    assert not loaded.is_lora
    ex = trainer.examples[:6]
    assert loaded.encode_prompts([e.prompt for e in ex]) == [e.prompt_ids for e in ex]  # the same tokenizer
    with torch.no_grad():
        a, mask = trainer.policy.token_logprobs([e.prompt_ids for e in ex], [e.response_ids for e in ex])
        b, _ = loaded.token_logprobs([e.prompt_ids for e in ex], [e.response_ids for e in ex])
    torch.testing.assert_close(a[mask], b[mask])


@pytest.mark.slow
def test_train_loads_the_exported_model(learned, tmp_path, capsys):
    cfg, _, _ = learned
    rc = main(["train", "--model", cfg.model_dir(), "--env-kwargs", '{"level": 1}', "--iterations", "1",
               "--tasks-per-iter", "2", "--group-size", "2", "--max-steps", "4", "--history", "0", "--max-new-tokens", "32",
               "--eval-every", "1", "--eval-episodes", "4", "--device", "cpu", "--no-gradient-checkpointing",
               "--no-progress", "--out-dir", str(tmp_path / "rl")])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.splitlines()[0])
    assert last["iteration"] == 1 and "eval_success" in last


# --------------------------------------------------------------------------- LoRA
def test_lora_sft_exports_the_base_model_with_the_adapters_merged(tiny, tmp_path):
    cfg = _small(tiny, tmp_path, lora_r=4, lora_lr=1e-2, eval_every=0)
    trainer = SFTTrainer(cfg)
    base = _weights(trainer.policy.model.get_base_model())
    trainer.train()
    assert trainer.policy.is_lora
    after = _weights(trainer.policy.model.get_base_model())
    frozen = [k for k in base if "lora_" not in k]
    assert all(torch.equal(base[k], after[k]) for k in frozen)  # only the adapters trained
    files = os.listdir(cfg.model_dir())
    assert "model.safetensors" in files and "adapter_model.safetensors" not in files
    loaded = LMPolicy.from_pretrained(cfg.model_dir(), device="cpu")
    ex = trainer.examples[:4]
    with torch.no_grad():
        a, mask = trainer.policy.token_logprobs([e.prompt_ids for e in ex], [e.response_ids for e in ex])
        b, _ = loaded.token_logprobs([e.prompt_ids for e in ex], [e.response_ids for e in ex])
    torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-4)  # W + (α/r)BA merged into W
    with torch.no_grad():
        c, _ = LMPolicy.from_pretrained(tiny, device="cpu").token_logprobs([e.prompt_ids for e in ex],
                                                                         [e.response_ids for e in ex])
    assert not torch.allclose(a[mask], c[mask])  # and the merged model is not the untouched base


# --------------------------------------------------------------------------- seeds, resume
def test_two_runs_of_one_seed_are_identical_and_another_seed_differs(tiny, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        trainer = SFTTrainer(_small(tiny, tmp_path / name, seed=seed))
        runs[name] = (_drop_times(trainer.train()), _weights(trainer.policy.model))
    assert runs["a"][0] == runs["b"][0]
    assert all(torch.equal(v, runs["b"][1][k]) for k, v in runs["a"][1].items())
    assert runs["a"][0] != runs["c"][0]


def test_resume_continues_exactly(tiny, tmp_path, monkeypatch):
    straight = SFTTrainer(_small(tiny, tmp_path / "straight"))
    expected = _drop_times(straight.train())

    step = SFTTrainer.step

    def crash_in_step_4(self):
        if self.iteration == 3:  # steps 1-3 done and checkpointed
            raise KeyboardInterrupt("simulated crash after the checkpoint of step 3")
        return step(self)

    monkeypatch.setattr(SFTTrainer, "step", crash_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        sft(_small(tiny, tmp_path / "resumed"))
    monkeypatch.setattr(SFTTrainer, "step", step)
    with open(tmp_path / "resumed" / "checkpoint" / "trainer_state.json") as fh:
        assert json.load(fh)["iteration"] == 3
    resumed = SFTTrainer(_small(tiny, tmp_path / "resumed", resume=True))
    history = _drop_times(resumed.train())
    assert history == expected
    assert all(torch.equal(v, straight.policy.model.state_dict()[k]) for k, v in resumed.policy.model.state_dict().items())
    with pytest.raises(ValueError, match="different configuration"):  # lr matters: refused
        SFTTrainer(_small(tiny, tmp_path / "resumed", resume=True, lr=1e-3)).train()


def test_batches_cover_every_pair_once_per_epoch(tiny, tmp_path):
    trainer = SFTTrainer(_small(tiny, tmp_path, eval_every=0))
    n, b = len(trainer.examples), trainer.cfg.batch_size
    steps_per_epoch = n // b
    seen = np.concatenate([trainer.batch_indices(k) for k in range(steps_per_epoch)])
    assert sorted(seen.tolist()) == list(range(n))
    assert not np.array_equal(trainer.batch_indices(0), trainer.batch_indices(steps_per_epoch))  # reshuffled
    assert trainer.lr_at(0) == trainer.cfg.lr and trainer.lr_at(3) == pytest.approx(trainer.cfg.lr / 2)


# --------------------------------------------------------------------------- the guard
def test_a_step_with_non_finite_log_probs_is_skipped(tiny, tmp_path, monkeypatch):
    trainer = SFTTrainer(_small(tiny, tmp_path, eval_every=0, max_nonfinite_steps=2))
    before = _weights(trainer.policy.model)
    real = trainer.policy.token_logprobs

    def poisoned(*args, **kwargs):
        logp, mask = real(*args, **kwargs)
        return logp * float("nan"), mask

    monkeypatch.setattr(trainer.policy, "token_logprobs", poisoned)
    row = trainer.step()
    assert row["nonfinite_steps"] == 1 and "loss" not in row
    assert all(torch.equal(v, trainer.policy.model.state_dict()[k]) for k, v in before.items())  # unchanged
    with pytest.raises(NonFiniteError, match="2 optimizer steps in a row"):
        trainer.step()
    monkeypatch.setattr(trainer.policy, "token_logprobs", real)


# --------------------------------------------------------------------------- configuration, command line
def test_bad_configurations_raise(tiny):
    with pytest.raises(ValueError, match="thought"):
        SFTConfig(model=tiny, thought="i will {action}")
    with pytest.raises(ValueError, match="n_train_tasks"):
        SFTConfig(model=tiny, n_train_tasks=20_000)
    with pytest.raises(ValueError, match="exclude each other"):
        SFTConfig(model=tiny, resume=True, overwrite=True)
    assert SFTConfig(model=tiny).train_config().kl_coef == 0.0  # no reference model is loaded


def test_command_line(tiny, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["sft", "--model", tiny, "--env", "household", "--env-kwargs", '{"level": 1}', "--iterations", "2",
            "--batch-size", "4", "--n-train-tasks", "4", "--max-steps", "3", "--max-new-tokens", "8", "--eval-every", "2",
            "--eval-episodes", "2", "--history", "0", "--device", "cpu", "--no-gradient-checkpointing", "--no-progress",
            "--out-dir", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    summary = json.loads(text.splitlines()[0])
    assert summary["iteration"] == 2 and summary["eval_success_before"] is not None
    assert str(out / "model") in text and os.path.exists(out / "model" / "config.json")
    assert main(args) == 1  # the directory holds a run: refused without --resume or --overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # a finished run: nothing to do, the model is written again
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--lr", "-1"])
    assert exc.value.code == 2


def test_sft_on_alfworld_walkthroughs(tiny, tmp_path):
    pytest.importorskip("alfworld")
    from gagpo.envs.alfworld import FIXTURES_DIR

    cfg = SFTConfig(model=tiny, env="alfworld", env_kwargs={"data_dir": str(FIXTURES_DIR)}, device="cpu",
                    gradient_checkpointing=False, iterations=2, batch_size=4, max_steps=10, max_new_tokens=8,
                    eval_every=2, eval_episodes=1, eval_splits="valid_seen", checkpoint_every=0, progress=False,
                    out_dir=str(tmp_path))
    trainer = SFTTrainer(cfg)
    assert len(trainer.episodes) == 6  # every game of the training split, once
    assert len(trainer.examples) == sum(len(ep) for ep in trainer.episodes)
    history = trainer.train()
    assert "eval_valid_seen_success" in history[-1] and history[0]["iteration"] == 0
