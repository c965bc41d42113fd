"""LM training: the action-level ratio is shared by an action's tokens; two iterations on the tiny model change
the parameters, log metrics, draw curves.png and resume exactly from a checkpoint; LoRA trains only the adapters;
held-out evaluation per split and task type; environments in worker processes that end with the run."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing as mp
import os
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from gagpo.config import add_dataclass_arguments, dataclass_from_args  # noqa: E402
from gagpo.llm.policy import LMPolicy, TokenLogprobs  # noqa: E402
from gagpo.llm.tiny import tiny_model_path  # noqa: E402
from gagpo.llm.train import (LM_ALGOS, LMTrainConfig, LMTrainer, action_level_loss, evaluation_metrics,  # noqa: E402
                              train_lm)
from gagpo.trainer import rollout_advantages  # noqa: E402

TIMING = ("time_rollout", "time_reference", "time_advantage", "time_update", "gen_tokens_per_s", "update_tokens_per_s")
LOGGED = ("success", "return", "episode_length", "invalid_rate", "clip_fraction", "approx_kl", "kl_ref",
          "gen_tokens_per_s", "update_tokens_per_s", "adv_std", "grad_norm", "anchor_frac_1")


def small(tmp_path, name="run", **kw) -> LMTrainConfig:
    base = dict(model="tiny", iterations=2, tasks_per_iter=2, group_size=4, max_steps=4, max_new_tokens=24,
                minibatch_size=16, micro_batch_size=8, eval_every=2, eval_episodes=2, checkpoint_every=1,
                progress=False, out_dir=str(tmp_path / name), device="cpu")
    base.update(kw)
    return LMTrainConfig(**base)


@pytest.fixture(scope="module")
def random_policy(tmp_path_factory):
    return LMPolicy.from_pretrained(tiny_model_path(seed=0, format_steps=0, cache_dir=str(tmp_path_factory.mktemp("c"))),
                                    device="cpu")


@pytest.mark.parametrize("level", ["action", "token"])
def test_tokens_of_one_action_share_one_ratio(random_policy, monkeypatch, level):
    """Through the trainer's wiring (row b's tokens -> action b), the loss uses exp(mean log-ratio of the row)
    for every token of the row at the action level, and each token's own ratio at the token level."""
    pol = random_policy
    prompts = [pol.tokenizer(pol.render(t), add_special_tokens=False)["input_ids"] for t in ("look", "go to desk 1", "open drawer 1")]
    responses = [[20, 21, 22, 23], [24, 25], [26, 27, 28]]
    lengths = [len(r) for r in responses]
    gen = torch.Generator().manual_seed(0)
    new = torch.randn(3, 4, generator=gen) * 0.1 - 2.0
    old = [(new[b, :n] + torch.randn(n, generator=gen) * 0.3).numpy() for b, n in enumerate(lengths)]
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    leaf = torch.where(mask, new, torch.zeros(())).requires_grad_(True)
    monkeypatch.setattr(pol, "token_logprobs", lambda *a, **k: TokenLogprobs(leaf, mask))
    adv = torch.tensor([1.0, -0.5, 2.0])
    cfg = LMTrainConfig(ratio_level=level, clip_eps=100.0, clip_eps_high=100.0, kl_coef=0.0)  # no clipping
    loss, diag = action_level_loss(pol, prompts, responses, old, adv, None, cfg)
    loss.backward()
    delta = [leaf[b, :n].detach() - torch.as_tensor(old[b]) for b, n in enumerate(lengths)]
    if level == "action":
        ratios = [torch.exp(d.mean()).expand(len(d)) for d in delta]
    else:
        ratios = [torch.exp(d) for d in delta]
    expected = -sum((adv[b] * ratios[b]).sum() for b in range(3)) / sum(lengths)
    torch.testing.assert_close(loss.detach(), expected)
    for b, n in enumerate(lengths):
        g = leaf.grad[b, :n]
        if level == "action":  # one ratio per action: every token of the action gets the same gradient
            torch.testing.assert_close(g, torch.full_like(g, float(-adv[b] * ratios[b][0] / sum(lengths))))
        else:
            assert g.unique().numel() == n
        assert torch.all(leaf.grad[b, n:] == 0)


def test_two_iterations_change_parameters_log_metrics_and_resume_exactly(tmp_path):
    cfg = small(tmp_path, "a")
    trainer = LMTrainer(cfg, eval_hook=lambda tr: {"hook_iteration": tr.iteration})
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    history = trainer.train()
    after = trainer.policy.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), "no parameter changed"
    assert len(history) == 2
    for row in history:
        for key in LOGGED:
            assert key in row and np.isfinite(row[key]), key
        assert 0 < row["invalid_rate"] < 1  # the warm-up model is sometimes valid: the advantages are not all zero
        assert row["adv_std"] > 0 and row["optimizer_steps"] == 2
    assert "eval_success" in history[-1] and "eval_success" not in history[0]
    assert history[-1]["hook_iteration"] == 2 and "hook_iteration" not in history[0]
    with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as fh:
        assert [json.loads(line)["iteration"] for line in fh] == [1, 2]
    assert open(os.path.join(cfg.out_dir, "metrics.csv")).readline().startswith("iteration,")
    assert os.path.getsize(os.path.join(cfg.out_dir, "curves.png")) > 0
    assert not trainer.eval_sets[0].split and trainer.eval_seeds == [10_000, 10_001]  # MiniHousehold: its EVAL_SEEDS
    ckpt = os.path.join(cfg.out_dir, "checkpoint")
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "tokenizer.json"} <= set(os.listdir(ckpt))

    # the same run, stopped after one iteration and resumed: identical metrics and weights
    first = train_lm(small(tmp_path, "b", iterations=1))
    resumed = LMTrainer(small(tmp_path, "b", iterations=2, resume=True))
    rest = resumed.train()
    assert len(first) == 1 and len(rest) == 2
    def strip(rows):  # timings vary; run "b" also evaluated at its end after iteration 1
        return [{k: v for k, v in row.items() if k not in TIMING and not k.startswith(("eval_", "hook_"))} for row in rows]

    assert strip(rest) == strip(history) and rest[-1]["eval_success"] == history[-1]["eval_success"]
    for a, b in zip(trainer.policy.parameters(), resumed.policy.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="different configuration"):
        LMTrainer(small(tmp_path, "b", iterations=3, resume=True, lr=1e-3)).train()


def test_an_update_raises_the_surrogate(tmp_path):
    """One large step moves log-probs in the direction of the advantages: sum_i A_i (log pi_new - log pi_old) > 0."""
    cfg = small(tmp_path, lr=1e-3, kl_coef=0.0, eval_every=0)
    trainer = LMTrainer(cfg)
    trainer.iteration = 1
    rollout = trainer.rollout()
    adv = rollout_advantages(trainer.cfg, rollout)["advantages"]  # the LM configuration has the estimator fields
    assert np.abs(adv).sum() > 0
    trainer.update(rollout, {"advantages": adv, "ref_logp": None})
    logp, mask = trainer.policy.token_logprobs(rollout.prompt_ids, rollout.response_ids)
    new = (logp * mask).sum(1).double().numpy()
    assert float(np.sum(adv * (new - rollout.logp))) > 0


def test_lora_trains_only_the_adapter_and_resumes(tmp_path):
    cfg = small(tmp_path, "lora", lora_r=4, lora_alpha=8, lora_lr=1e-2, iterations=1, eval_every=0, kl_coef=0.05)
    trainer = LMTrainer(cfg)
    base = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if "lora_" not in n}
    adapters = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if "lora_" in n}
    history = trainer.train()
    named = dict(trainer.policy.model.named_parameters())
    assert all(torch.equal(named[n], p) for n, p in base.items())
    assert any(not torch.equal(named[n], p) for n, p in adapters.items())
    assert history[0]["kl_ref"] >= 0
    assert "adapter_model.safetensors" in os.listdir(os.path.join(cfg.out_dir, "checkpoint"))
    again = LMTrainer(dataclasses.replace(cfg, resume=True))
    assert again.load_checkpoint() and again.iteration == 1
    for n, p in again.policy.model.named_parameters():
        torch.testing.assert_close(p, named[n], atol=0, rtol=0)


def test_config_documents_every_field_and_rejects_unknown_modes(tmp_path):
    for f in dataclasses.fields(LMTrainConfig):
        assert f.metadata.get("help"), f.name
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, LMTrainConfig)
    cfg = dataclass_from_args(LMTrainConfig, parser.parse_args(["--algo", "grpo", "--lora-r", "16", "--env-kwargs", '{"n_receptacles": 4}']))
    assert cfg.algo == "grpo" and cfg.lora is not None and cfg.learning_rate == 1e-5 and cfg.env_kwargs == {"n_receptacles": 4}
    defaults = LMTrainConfig()
    assert (defaults.group_size, defaults.tasks_per_iter, defaults.gamma, defaults.lam, defaults.history, defaults.max_steps,
            defaults.kl_coef, defaults.invalid_penalty, defaults.learning_rate) == (8, 16, 0.95, 0.95, 2, 50, 0.01, 0.1, 1e-6)
    assert set(LM_ALGOS) == {"reinforce", "grpo", "rloo", "gigpo", "gagpo", "ppo"}
    with pytest.raises(ValueError, match="unknown algo 'a2c'"):
        LMTrainConfig(algo="a2c")
    with pytest.raises(ValueError, match="unknown ratio_level"):
        LMTrainConfig(ratio_level="sequence")
    with pytest.raises(ValueError, match="group_size"):
        LMTrainConfig(group_size=0)


def test_eval_splits_resolve_from_the_environment():
    assert LMTrainConfig().eval_split_names() == []  # MiniHousehold takes no split: its own EVAL_SEEDS
    assert LMTrainConfig(env="gagpo/ALFWorld-v0").eval_split_names() == ["valid_seen", "valid_unseen"]
    assert LMTrainConfig(env="gagpo/ALFWorld-v0", eval_splits=" valid_unseen ").eval_split_names() == ["valid_unseen"]
    assert LMTrainConfig(env="gagpo/ALFWorld-v0", eval_splits="").eval_split_names() == []
    with pytest.raises(ValueError, match="split"):
        LMTrainConfig(eval_splits="valid_seen").eval_split_names()
    for bad in ("valid_seen,,valid_unseen", "a,a"):
        with pytest.raises(ValueError, match="eval_splits"):
            LMTrainConfig(eval_splits=bad)
    with pytest.raises(ValueError, match="num_workers"):
        LMTrainConfig(num_workers=-1)


def test_evaluation_metrics_pool_episodes_and_split_them_by_task_type():
    def episodes(won, types, invalid):
        return SimpleNamespace(traj_won=np.array(won), traj_task_type=types, invalid=np.array(invalid),
                               traj_return=np.array(won, dtype=float), traj_length=np.full(len(won), 2))

    seen = episodes([True, False, True], ["put", "heat", "put"], [False, True, False, False, False, False])
    unseen = episodes([False, False], ["put", "cool"], [True, True, False, False])
    m = evaluation_metrics([seen], "eval_valid_seen_")
    assert m["eval_valid_seen_success"] == pytest.approx(2 / 3) and m["eval_valid_seen_episodes"] == 3
    assert m["eval_valid_seen_put_success"] == 1.0 and m["eval_valid_seen_heat_success"] == 0.0
    assert m["eval_valid_seen_invalid_rate"] == pytest.approx(1 / 6)
    pooled = evaluation_metrics([seen, unseen], "eval_", by_task_type=False)
    assert pooled["eval_success"] == pytest.approx(2 / 5) and pooled["eval_invalid_rate"] == pytest.approx(3 / 10)
    assert not any(k.endswith(("put_success", "cool_success")) for k in pooled)
    untyped = evaluation_metrics([episodes([True], [], [False, False])])
    assert set(untyped) == {"eval_success", "eval_return", "eval_length", "eval_invalid_rate", "eval_episodes"}


@pytest.mark.skipif(importlib.util.find_spec("alfworld") is None, reason='ALFWorld is not installed: pip install -e ".[alfworld]"')
def test_alfworld_eval_per_split_and_task_type_in_worker_processes(tmp_path, monkeypatch):
    """Two worker processes per pool, one iteration with an evaluation on valid_seen and valid_unseen; every worker
    has exited when train() returns."""
    from gagpo.envs import FIXTURES_DIR, TASK_TYPES, ProcessEnvPool, list_games

    monkeypatch.setenv("ALFWORLD_DATA", str(FIXTURES_DIR))  # importing alfworld would create ~/.cache/alfworld
    before = set(mp.active_children())
    cfg = small(tmp_path, "alfworld", env="gagpo/ALFWorld-v0", env_kwargs={"data_dir": str(FIXTURES_DIR)}, iterations=1,
                tasks_per_iter=2, group_size=2, max_steps=3, max_new_tokens=16, eval_every=1, eval_episodes=5,
                num_workers=2)
    pids: list[int] = []
    trainer = LMTrainer(cfg, eval_hook=lambda tr: pids.extend(
        pid for pool in [tr.pool] + [s.pool for s in tr.eval_sets] for pid in pool.worker_pids) or {})
    assert isinstance(trainer.pool, ProcessEnvPool) and [s.split for s in trainer.eval_sets] == ["valid_seen", "valid_unseen"]
    n_games = {split: len(list_games(FIXTURES_DIR, split)) for split in ("valid_seen", "valid_unseen")}
    assert [len(s.seeds) for s in trainer.eval_sets] == [min(5, n_games["valid_seen"]), min(5, n_games["valid_unseen"])]
    (row,) = trainer.train()
    assert len(pids) == 6 and all(pids), pids  # 2 training + 2 × 2 evaluation workers, all started
    assert set(mp.active_children()) <= before, "worker processes outlived the run"
    assert all(w is None for pool in [trainer.pool] + [s.pool for s in trainer.eval_sets] for w in pool._workers)
    total = 0
    for split in ("valid_seen", "valid_unseen"):
        assert row[f"eval_{split}_episodes"] == n_games[split]
        assert 0 <= row[f"eval_{split}_success"] <= 1 and 0 <= row[f"eval_{split}_invalid_rate"] <= 1
        types = [k[len(f"eval_{split}_"):-len("_success")] for k in row
                 if k.startswith(f"eval_{split}_") and k.endswith("_success") and k != f"eval_{split}_success"]
        assert len(types) == 3 and set(types) <= set(TASK_TYPES), types  # the fixtures hold three task types
        total += row[f"eval_{split}_success"] * n_games[split]
    assert row["eval_success"] == pytest.approx(total / sum(n_games.values()))
    assert row["eval_episodes"] == sum(n_games.values())
    assert os.path.getsize(os.path.join(cfg.out_dir, "curves.png")) > 0


def test_alfworld_training_games_are_drawn_uniformly(tmp_path):
    """With n_train_tasks=0 the task seeds index ALFWorld's games directly (0..n_games-1), so every game of
    the split is equally likely (seeds < 10000 taken mod n_games would favour the first 10000 mod n)."""
    pytest.importorskip("alfworld")
    from gagpo.envs import FIXTURES_DIR

    cfg = LMTrainConfig(model="tiny", env="gagpo/ALFWorld-v0", env_kwargs={"data_dir": str(FIXTURES_DIR)},
                        tasks_per_iter=4, group_size=1, kl_coef=0.0, eval_every=0, progress=False,
                        out_dir=str(tmp_path / "run"), eval_splits="")
    trainer = LMTrainer(cfg)
    try:
        assert trainer.n_env_tasks == 6  # the fixture's train split
        seeds = [s for it in range(1, 200) for s in trainer.task_seeds(it)]
        assert set(seeds) == set(range(6))
        counts = np.bincount(seeds, minlength=6)
        assert counts.min() > 0.7 * counts.mean()
    finally:
        trainer.close()
