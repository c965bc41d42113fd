"""MiniShop, the WebShop-like toy: its rules and reward, its exact evaluation, and both trainers running on it
through the environment protocol (the toy trainer on its canned searches and clicks, the LM trainer with
free-text ``search[...]`` through the environment's adapter)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from gagpo.config import TrainConfig
from gagpo.trainer import train
from toy_envs.dp import optimal_values
from toy_envs.minishop import BUY, Goal, Product, catalogue, purchase_score, search

ENV_ID = "toy_envs/MiniShop-v0"


@pytest.fixture
def env():
    e = gym.make(ENV_ID)
    yield e
    e.close()


def test_gymnasium_check_env_passes_and_tasks_vary():
    import warnings

    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make(ENV_ID).unwrapped)
    assert [str(w.message) for w in caught] == []
    env = gym.make(ENV_ID)
    assert len({env.reset(seed=seed)[1]["task"] for seed in range(20)}) >= 15


def test_catalogue_and_search_are_fixed_and_ranked():
    products = catalogue()
    assert len(products) == 36 and len({p.pid for p in products}) == 36 and catalogue() is products
    ids = search("red cotton shirt")
    assert 0 < len(ids) <= 4 and ids == search("  Red COTTON   shirt!")
    words = {"red", "cotton", "shirt"}
    hits = [len(words & next(p for p in products if p.pid == pid).words) for pid in ids]
    assert hits == sorted(hits, reverse=True) and hits[0] >= 2
    assert search("zebra") == ()


def test_reward_is_webshops_attribute_match():
    goal = Goal("shirt", ("cotton", "slim fit"), "red", "m", 30, "b000")
    p = Product("b999", "shirt", ("cotton", "linen"), ("red", "blue"), ("s", "m"), 25)
    assert purchase_score(goal, p, ("red", "size m")) == pytest.approx((1 + 2 + 1) / 5)
    assert purchase_score(goal, p, ()) == pytest.approx(2 / 5)
    exact = Product("b998", "shirt", ("cotton", "slim fit"), ("red",), ("m",), 30)
    assert purchase_score(goal, exact, ("red", "size m")) == 1.0
    mug = Product("b997", "mug", ("cotton", "slim fit"), ("red",), (), 5)
    assert purchase_score(goal, mug, ("red", "size m")) == pytest.approx(0.1)


def test_an_episode_search_click_options_buy(env):
    obs, info = env.reset(seed=0)
    u = env.unwrapped
    assert "Instruction: i need a" in obs and info["task"] == u.goal.instruction and info["task_type"] == u.goal.category
    assert info["admissible_actions"] == u.canned_searches() and len(u.canned_searches()) == 3
    obs, r, term, trunc, info = env.step("search[a query nobody canned " + u.goal.category + "]")  # free text
    assert not info["invalid_action"] and "Results for" in obs and r == 0 and not term
    assert info["admissible_actions"][-1] == "click[back to search]"
    obs, *_, info = env.step(0)  # the first result
    assert "[Buy Now]" in obs and BUY in info["admissible_actions"]
    obs2, *_, info = env.step("search[shirt]")  # no search bar on a product page: a no-op
    assert info["invalid_action"] and obs2 == obs
    obs, r, term, trunc, info = env.step(BUY)
    assert term and 0 < r <= 1 and info["won"] == (r == 1.0) and "Your score" in obs


def test_exact_model_and_solution_agree(env):
    u = env.unwrapped
    for seed in range(20):
        env.reset(seed=seed)
        model = u.exact_model()
        best = optimal_values(model, 1.0, 15)[-1][model.initial_state]
        assert best == pytest.approx(u.best_reward(free_text=False)) and u.best_reward() == 1.0
        total, steps = 0.0, u.solution()
        for command in steps:
            _, r, term, _, info = env.step(command)
            total += r
        assert term and total == pytest.approx(best) and len(steps) <= 5
        assert model.n_states < 400  # small enough for dynamic programming


def test_step_limit_truncates(env):
    env.reset(seed=1)
    for t in range(15):
        _, _, term, trunc, _ = env.step("click[back to search]" if t % 2 else 0)
    assert trunc and not term


def test_toy_trainer_learns_on_minishop(tmp_path):
    """The text policy over canned searches and clicks: the return of the last iterations beats the first."""
    cfg = TrainConfig(env=ENV_ID, algo="gagpo", policy="text", iterations=25, tasks_per_iter=4, group_size=8,
                      n_train_tasks=8, eval_every=25, eval_episodes=8, progress=False, out_dir=str(tmp_path / "run"))
    history = train(cfg)
    ret = [row["return"] for row in history]
    assert np.mean(ret[-5:]) > np.mean(ret[:5]) + 0.1, ret
    assert 0 <= history[-1]["eval_success"] <= 1


# ------------------------------------------------------------------------------ the LM trainer
class ScriptedShopper:
    """Stands in for the model's sampling: each step, with probability ``p`` an episode's next command of the
    environment's :meth:`~toy_envs.minishop.MiniShopEnv.solution` (while it has kept to it), else a
    distractor; written as ``<think>…</think><action>…</action>``. It follows the pools' calls to know
    which episodes are running."""

    DISTRACTORS = ("<action> click[back to search] </action>", "<action> click[buy now] </action>",
                   "<action> search[blue lamp] </action>", "i do not know")

    def __init__(self, tokenizer, pools, p=0.7, seed=0):
        self.tokenizer, self.p, self.rng = tokenizer, p, np.random.default_rng(seed)
        self.texts: list[str] = []
        for pool in pools:
            self._wrap(pool)

    def _wrap(self, pool):
        reset_many, step_many = pool.reset_many, pool.step_many

        def reset(seeds):
            out = reset_many(seeds)
            self.pool, self.active = pool, list(range(len(seeds)))
            self.plan = {i: pool.envs[i].unwrapped.solution() for i in self.active}
            return out

        def step(indices, actions):
            out = step_many(indices, actions)
            self.active = [i for i, r in zip(indices, out) if not (r[2] or r[3])]
            return out

        pool.reset_many, pool.step_many = reset, step

    def generate(self, prompt_ids, sampling=None, seed=None):
        from gagpo.llm.policy import Generation

        assert len(prompt_ids) == len(self.active)
        texts = []
        for i in self.active:
            plan = self.plan[i]
            if plan and self.rng.random() < self.p:
                texts.append(f"<think> i will shop </think> <action> {plan.pop(0)} </action>")
            else:
                self.plan[i] = []  # off the plan for good
                texts.append(str(self.rng.choice(self.DISTRACTORS)))
        self.texts += texts
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id] for t in texts]
        return Generation(texts=texts, response_ids=ids, prompt_ids=[list(p) for p in prompt_ids], finished=[True] * len(ids))


def test_lm_trainer_runs_minishop_through_the_adapter(tmp_path, monkeypatch):
    """The tiny model's vocabulary has no shop words, so a scripted sampler writes the responses; the rest —
    the shop prompt, free-text search accepted by the adapter, clicks checked against the page, rewards,
    advantages, the update and the evaluation per category — is the LM trainer's own code."""
    pytest.importorskip("transformers")
    import torch

    from gagpo.llm.train import LMTrainConfig, LMTrainer

    cfg = LMTrainConfig(model="tiny", env=ENV_ID, iterations=2, tasks_per_iter=2, group_size=4, max_steps=8,
                        max_new_tokens=24, minibatch_size=16, micro_batch_size=8, eval_every=2, eval_episodes=4,
                        checkpoint_every=0, progress=False, out_dir=str(tmp_path / "lm"), device="cpu", algo="gagpo")
    trainer = LMTrainer(cfg)
    assert trainer.adapter.name == "minishop" and trainer.eval_sets[0].split == ""
    shopper = ScriptedShopper(trainer.policy.tokenizer, [trainer.pool] + [s.pool for s in trainer.eval_sets])
    monkeypatch.setattr(trainer.policy, "generate", shopper.generate)
    seen = []
    collect = trainer.rollout

    def rollout():
        r = collect()
        seen.append(r)
        return r

    monkeypatch.setattr(trainer, "rollout", rollout)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    history = trainer.train()
    assert len(history) == 2 and all(np.isfinite(row["loss"]) for row in history)
    assert any(not torch.equal(a, b) for a, b in zip(trainer.policy.parameters(), before)), "no parameter changed"
    assert max(row["adv_std"] for row in history) > 0
    rows = [(cmd, reason, bad) for r in seen for cmd, reason, bad in zip(r.commands, r.parse_reason, r.invalid)]
    searches = [row for row in rows if row[0].startswith("search[")]
    assert searches and all(reason == "ok" for _, reason, _ in searches)  # free text is valid ...
    assert any(bad and cmd.startswith("search[") for cmd, _, bad in rows)  # ... but only on the search page
    assert all("You are shopping in a web store" in p for r in seen for p in r.prompts)
    assert any(r.traj_won.any() for r in seen) and any(not r.traj_won.all() for r in seen)
    for r in seen:
        np.testing.assert_allclose(r.traj_return, np.bincount(r.batch.traj_index, weights=r.batch.reward))
    assert "eval_success" in history[-1]
    assert any(k.startswith("eval_") and k.endswith("_success") and k != "eval_success" for k in history[-1])
    assert all(list(r.batch.obs_key) == r.observations for r in seen)  # the default anchor key: the page text

    # the anchor-key seam: an adapter that keys a page by its last line (what the page offers, not the instruction)
    from gagpo.llm.rollout import collect_lm

    class LastLineKey(type(trainer.adapter)):
        def anchor_key(self, observation: str) -> str:
            return observation.splitlines()[-1]

    adapter = LastLineKey(**{f: getattr(trainer.adapter, f) for f in ("name", "template", "free_text", "eval_splits")})
    r = collect_lm(trainer.pool, trainer.policy, [0, 1], 2, adapter=adapter, compute_logp=False)
    assert list(r.batch.obs_key) == [o.splitlines()[-1] for o in r.observations] != r.observations
    assert "[Search]" in r.batch.obs_key  # both tasks' search pages share one anchor state now
