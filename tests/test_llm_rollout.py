"""LLM group rollouts: invalid actions are counted, penalised and turned into no-ops, never a crash; the
StepBatch and the per-row token data line up."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from gagpo.llm.policy import Generation, LMPolicy, SamplingSettings  # noqa: E402
from gagpo.llm.rollout import NO_ACTION, collect_lm  # noqa: E402
from gagpo.llm.tiny import tiny_model_path  # noqa: E402
from gagpo.rollout import EnvPool, make_env_fn  # noqa: E402

# (response, valid, command the environment should receive); "look" and "inventory" are always admissible
SCRIPT = [
    ("<think> let me see </think> <action> look </action>", True, "look"),
    ("<action>  INVENTORY </action>", True, "inventory"),
    ("look", False, NO_ACTION),                                   # tags missing
    ("<think> go </think> <action> fly to the moon </action>", False, "fly to the moon"),  # not admissible
    ("}} <action <think> </action", False, NO_ACTION),             # garbage
]


class RecordingPool(EnvPool):
    """An EnvPool that remembers every command sent and the environment's own invalid flag."""

    def __init__(self, make_env):
        super().__init__(make_env)
        self.sent: list[str] = []
        self.env_invalid: list[bool] = []

    def step_many(self, indices, actions):
        results = super().step_many(indices, actions)
        self.sent += list(actions)
        self.env_invalid += [bool(r[4]["invalid_action"]) for r in results]
        return results


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return LMPolicy.from_pretrained(tiny_model_path(seed=0, format_steps=0, cache_dir=str(tmp_path_factory.mktemp("c"))),
                                    device="cpu")


def _scripted(policy, monkeypatch):
    """Replace sampling by the SCRIPT, cycled over (time step, row); returns the list of scripted rows."""
    given: list[int] = []
    calls = [0]

    def generate(prompts, sampling=None, seed=None):
        t = calls[0]
        calls[0] += 1
        picks = [(t + j) % len(SCRIPT) for j in range(len(prompts))]
        given.extend(picks)
        texts = [SCRIPT[k][0] for k in picks]
        ids = [policy.tokenizer(x, add_special_tokens=False)["input_ids"] + [policy.tokenizer.eos_token_id] for x in texts]
        return Generation(texts=texts, response_ids=ids, prompt_ids=[list(p) for p in prompts], finished=[True] * len(ids))

    monkeypatch.setattr(policy, "generate", generate)
    return given


def test_invalid_actions_are_counted_penalised_and_no_ops(policy, monkeypatch):
    given = _scripted(policy, monkeypatch)
    pool = RecordingPool(make_env_fn("toy_envs/MiniHousehold-v0", max_steps=4))
    r = collect_lm(pool, policy, task_seeds=[3, 5], group_size=3, history=2, invalid_penalty=0.1, seed=0)
    n = len(r.batch)
    assert n == 2 * 3 * 4 == len(given)  # nobody finishes: 4 steps each
    valid = np.array([SCRIPT[k][1] for k in given])
    assert r.responses == [SCRIPT[k][0] for k in given]
    assert r.commands == pool.sent == [SCRIPT[k][2] for k in given]
    np.testing.assert_array_equal(r.invalid, ~valid)
    np.testing.assert_array_equal(pool.env_invalid, ~valid)  # the environment saw no-ops exactly there
    np.testing.assert_allclose(r.batch.reward, np.where(valid, 0.0, -0.1))
    assert r.invalid_rate == pytest.approx(np.mean(~valid))
    assert r.format_error_rate == pytest.approx(np.mean([k in (2, 4) for k in given]))
    for i in range(n):
        if not valid[i]:
            assert r.next_observations[i] == r.observations[i] and r.actions[i] == -1
        else:
            assert r.admissible[i][r.actions[i]] == r.commands[i]
    np.testing.assert_allclose(r.traj_return, np.bincount(r.batch.traj_index, weights=r.batch.reward))
    # token data per row; old log-probs scored for exactly the response tokens
    assert len(r.prompt_ids) == len(r.response_ids) == len(r.token_logp) == n
    for i in range(n):
        assert len(r.token_logp[i]) == len(r.response_ids[i]) and np.all(r.token_logp[i] <= 0)
    np.testing.assert_allclose(r.logp, [x.sum() for x in r.token_logp], rtol=1e-6)
    # groups share a task seed; obs_key is the raw observation
    assert list(r.batch.obs_key) == r.observations
    for g in range(2):
        assert len(set(r.traj_task[r.batch.traj_index[r.batch.group_index == g]])) == 1


def test_prompts_show_the_history(policy, monkeypatch):
    given = _scripted(policy, monkeypatch)
    r = collect_lm(EnvPool(make_env_fn("toy_envs/MiniHousehold-v0", max_steps=3)), policy, [7], 1, history=1,
                   compute_logp=False)
    assert len(given) == 3 and r.token_logp == [] and np.all(r.logp == 0)
    assert "first step" in r.prompts[0]
    assert f"Action 1: {r.commands[0]}" in r.prompts[1]
    assert f"Action 2: {r.commands[1]}" in r.prompts[2] and "Action 1:" not in r.prompts[2]  # K = 1
    for i in range(3):
        assert "Your task is to:" in r.prompts[i] and all(f"- {a}" in r.prompts[i] for a in r.admissible[i])


def test_sampled_garbage_never_crashes(policy):
    """The untrained model writes nonsense: every action is invalid and penalised, episodes run to the limit."""
    torch.manual_seed(0)
    r = collect_lm(EnvPool(make_env_fn("toy_envs/MiniHousehold-v0", max_steps=3)), policy, [1, 2], 2,
                   sampling=SamplingSettings(max_new_tokens=8), invalid_penalty=0.25, seed=1)
    assert len(r.batch) == 12 and r.invalid.all() and r.invalid_rate == 1.0
    np.testing.assert_allclose(r.batch.reward, -0.25)
    assert r.batch.truncated.sum() == 4 and not r.traj_won.any()
    again = collect_lm(EnvPool(make_env_fn("toy_envs/MiniHousehold-v0", max_steps=3)), policy, [1, 2], 2,
                       sampling=SamplingSettings(max_new_tokens=8), invalid_penalty=0.25, seed=1)
    assert again.response_ids == r.response_ids  # seeded sampling is reproducible


def test_bad_arguments():
    pool = EnvPool(make_env_fn("toy_envs/MiniHousehold-v0"))
    with pytest.raises(ValueError, match="group_size"):
        collect_lm(pool, None, [0], 0)
    with pytest.raises(ValueError, match="invalid_penalty"):
        collect_lm(pool, None, [0], 1, invalid_penalty=-1)


def test_strict_format_closes_the_repetition_loophole(policy, monkeypatch):
    """Chapter 8's exploit — safe action blocks repeated up to the token limit — is valid under the lenient
    parser and invalid (penalised, a no-op) under the strict format; a clean response is valid under both."""
    exploit = "<action> look </action> <action> look </action> <action> look </action> <action> lo"
    clean = "<think> i will look </think> <action> look </action>"

    def generate(prompts, sampling=None, seed=None):
        texts = [exploit if j % 2 == 0 else clean for j in range(len(prompts))]
        ids = [policy.tokenizer(x, add_special_tokens=False)["input_ids"] for x in texts]
        ids = [x if j % 2 == 0 else x + [policy.tokenizer.eos_token_id] for j, x in enumerate(ids)]  # the exploit is cut
        return Generation(texts=texts, response_ids=ids, prompt_ids=[list(p) for p in prompts],
                          finished=[j % 2 == 1 for j in range(len(prompts))])

    monkeypatch.setattr(policy, "generate", generate)
    runs = {}
    for strict in (False, True):
        runs[strict] = collect_lm(EnvPool(make_env_fn("toy_envs/MiniHousehold-v0", max_steps=2)), policy, [4], 2,
                                  invalid_penalty=0.1, seed=0, compute_logp=False, strict=strict)
    lenient, strict = runs[False], runs[True]
    assert not lenient.invalid.any() and lenient.commands == ["look"] * 4
    np.testing.assert_array_equal(strict.invalid, [True, False, True, False])
    assert strict.parse_reason == ["unfinished", "ok"] * 2
    assert strict.commands == [NO_ACTION, "look"] * 2
    np.testing.assert_allclose(strict.batch.reward, [-0.1, 0.0, -0.1, 0.0])
