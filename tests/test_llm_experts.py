"""Expert trajectories and their (prompt, response) pairs: the experts are optimal and win, and the pairs'
prompts are exactly the ones collect_lm builds when the policy takes the expert's actions."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

import toy_envs  # noqa: E402
from gagpo.llm.experts import (  # noqa: E402
    expert_episode,
    expert_episodes,
    expert_examples,
    expert_response,
    optimal_actions,
)
from gagpo.llm.parsing import parse_action  # noqa: E402
from gagpo.llm.policy import Generation, LMPolicy, SamplingSettings  # noqa: E402
from gagpo.llm.rollout import collect_lm  # noqa: E402
from gagpo.llm.tiny import tiny_model_path  # noqa: E402
from gagpo.rollout import EnvPool, make_env_fn  # noqa: E402

HOUSEHOLD = "toy_envs/MiniHousehold-v0"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_path(seed=0, format_steps=0, cache_dir=str(tmp_path_factory.mktemp("c")))


@pytest.fixture
def policy(model_path):
    return LMPolicy.from_pretrained(model_path, device="cpu")


class ScriptedEngine:
    """A rollout engine that answers every prompt it knows with the expert pair's response (and with
    no action at all for a prompt it does not know): what collect_lm records can then be compared
    with the pairs."""

    def __init__(self, examples):
        self.table = {tuple(ex.prompt_ids): ex for ex in examples}
        self.unknown = 0

    def generate(self, prompt_ids, sampling, seed=None):
        texts, ids = [], []
        for p in prompt_ids:
            ex = self.table.get(tuple(p))
            self.unknown += ex is None
            texts.append(ex.response if ex else "I do not know this prompt")
            ids.append(list(ex.response_ids) if ex else [0])
        return Generation(texts=texts, response_ids=ids, prompt_ids=[list(p) for p in prompt_ids],
                          finished=[True] * len(ids))

    def refresh(self):
        pass


def _compare_with_collect_lm(policy, env_id, seeds, max_steps, history, max_prompt_tokens=0, **env_kwargs):
    """Expert pairs of ``seeds`` vs the rows of collect_lm driven by the scripted expert engine, both with
    the environment's adapter (as the LM trainer and SFT use it)."""
    from gagpo.envs.adapter import adapter_for

    adapter = adapter_for(env_id)
    episodes = expert_episodes(make_env_fn(env_id, max_steps, **env_kwargs), seeds, adapter=adapter)
    assert all(ep.won for ep in episodes)
    examples = expert_examples(episodes, policy, history=history, max_prompt_tokens=max_prompt_tokens, adapter=adapter)
    assert len(examples) == sum(len(ep) for ep in episodes)
    policy.engine = engine = ScriptedEngine(examples)
    r = collect_lm(EnvPool(make_env_fn(env_id, max_steps, **env_kwargs)), policy, seeds, group_size=2,
                   history=history, sampling=SamplingSettings(max_new_tokens=64, greedy=True), compute_logp=False,
                   max_prompt_tokens=max_prompt_tokens, adapter=adapter)
    assert engine.unknown == 0 and not r.invalid.any() and r.traj_won.all()
    by_key = {(ex.task_seed, ex.step): ex for ex in examples}
    assert len(r.prompt_ids) == 2 * len(examples)  # both members of each group follow the expert
    for i in range(len(r.prompt_ids)):
        ex = by_key[(int(r.traj_task[r.batch.traj_id[i]]), int(r.batch.step[i]))]
        assert r.prompt_ids[i] == ex.prompt_ids
        assert r.prompts[i] == ex.prompt
        assert r.response_ids[i] == ex.response_ids and r.responses[i] == ex.response
    return examples, r


@pytest.mark.parametrize("level", [1, 2, 3])
def test_household_expert_is_optimal_at_every_level(level):
    env = toy_envs.MiniHouseholdEnv(level=level)
    for seed in list(range(15)) + [10_000, 10_001]:
        ep = expert_episode(env, seed)
        model = env.exact_model()
        assert ep.won and ep.rewards[-1] == 1.0 and sum(ep.rewards) == 1.0
        assert len(ep) == len(toy_envs.shortest_solution(model))  # as short as can be
        assert all(c in adm for c, adm in zip(ep.commands, ep.admissible))
        assert ep.observations[0] == env.reset(seed=seed)[0] and ep.task == env.reset(seed=seed)[1]["task"]


def test_optimal_actions_agree_with_dynamic_programming():
    env = toy_envs.MiniHouseholdEnv()
    env.reset(seed=4)
    model = env.exact_model()
    best = optimal_actions(model, gamma=0.8)
    v = toy_envs.optimal_values(model, 0.8)
    q = toy_envs.q_values(model, v, 0.8)
    for s in range(model.n_states):
        assert np.allclose(q[s][best[s]], v[s]) and len(best[s]) >= 1
    assert toy_envs.shortest_solution(model)[0] in [model.actions[0][a] for a in best[0]]
    with pytest.raises(ValueError, match="gamma"):
        optimal_actions(model, gamma=1.0)


@pytest.mark.parametrize("level, history, max_prompt_tokens", [(1, 2, 0), (3, 2, 0), (3, 1, 0), (2, 2, 330)])
def test_expert_prompts_are_the_prompts_collect_lm_builds(policy, level, history, max_prompt_tokens):
    examples, r = _compare_with_collect_lm(policy, HOUSEHOLD, [10_000, 10_003, 7], 50, history,
                                           max_prompt_tokens=max_prompt_tokens, level=level)
    if max_prompt_tokens:  # the limit dropped history pairs (the same ones: the prompts are equal)
        assert r.dropped_history > 0
    assert "first step" in examples[0].prompt and "<|assistant|>" in examples[0].prompt  # rendered with the chat template


def test_expert_prompts_on_alfworld_walkthroughs(policy):
    pytest.importorskip("alfworld")
    from gagpo.envs.alfworld import FIXTURES_DIR

    for split in ("train", "valid_unseen"):
        env_kwargs = dict(data_dir=str(FIXTURES_DIR), split=split)
        examples, r = _compare_with_collect_lm(policy, "gagpo/ALFWorld-v0", [0, 2], 50, 2, **env_kwargs)
        assert "Your task is to:" in examples[0].prompt and set(r.traj_task_type) >= {"pick_and_place_simple"}


def test_responses_are_the_format_warm_up_responses(policy):
    """The tiny model's format warm-up answers `<think> i will CMD </think> <action> CMD </action>` + EOS:
    the expert's responses tokenize to exactly the same ids for the same command."""
    from gagpo.llm.tiny import format_examples

    tok = policy.tokenizer
    for _, response_ids in format_examples(tok, n=20, seed=0, context=128):
        command = parse_action(tok.decode(response_ids, skip_special_tokens=True), []).command
        ours = tok(expert_response(command), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ours == response_ids


def test_episodes_that_fail_are_left_out_and_environments_without_an_expert_raise(policy):
    episodes = expert_episodes(make_env_fn(HOUSEHOLD, max_steps=3, level=3), [0, 1, 2, 3])  # too few steps for most
    assert any(not ep.won for ep in episodes)
    examples = expert_examples(episodes, policy)
    assert {ex.task_seed for ex in examples} == {ep.task_seed for ep in episodes if ep.won}
    assert len(expert_examples(episodes, policy, won_only=False)) == sum(len(ep) for ep in episodes)

    class NoExpert:
        unwrapped = None

        def reset(self, seed=None):
            return "Your task is to: nothing.", {"admissible_actions": ["look"]}

    env = NoExpert()
    env.unwrapped = env
    with pytest.raises(ValueError, match="has no expert"):
        expert_episode(env, 0)
