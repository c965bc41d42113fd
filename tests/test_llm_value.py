"""PPO with a learned critic for language models: the value head reads the prompt's last hidden state, its loss
falls on a fixed batch, V(s') follows the trajectory (bootstrapping at a cut), the head is checkpointed and
restored, and `python -m gagpo train --model tiny --algo ppo` runs and resumes exactly."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from gagpo.__main__ import main  # noqa: E402
from gagpo.advantages import discounted_returns  # noqa: E402
from gagpo.batch import StepBatch  # noqa: E402
from gagpo.losses import value_loss  # noqa: E402
from gagpo.llm.policy import LMPolicy  # noqa: E402
from gagpo.llm.tiny import tiny_model_path  # noqa: E402
from gagpo.llm.train import LMTrainConfig, LMTrainer  # noqa: E402
from gagpo.llm.value import VALUE_HEAD_FILE, ValueHead, explained_variance, next_state_values  # noqa: E402

from .test_llm_train import small as small_config  # noqa: E402


def small(tmp_path, name="ppo", **kw) -> LMTrainConfig:
    """The LM trainer tests' small configuration, with ``algo="ppo"`` and no evaluation."""
    return small_config(tmp_path, name, **{"algo": "ppo", "eval_every": 0, **kw})


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return LMPolicy.from_pretrained(tiny_model_path(seed=0, format_steps=0, cache_dir=str(tmp_path_factory.mktemp("c"))),
                                    device="cpu")


def test_next_state_values_follow_each_trajectory_in_any_row_order():
    rows = [dict(group_id=0, traj_id=t, step=s, obs_key=f"{t}-{s}", next_obs_key=f"{t}-{s + 1}", reward=0.0,
                 terminated=(t == 0 and s == 2), truncated=(t == 1 and s == 1)) for t, n in ((0, 3), (1, 2)) for s in range(n)]
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(rows))
    batch = StepBatch.from_rows([rows[i] for i in perm])
    values = rng.normal(size=len(rows))
    end = rng.normal(size=len(rows))
    got = next_state_values(batch, values, end)
    index = {(int(batch.traj_id[i]), int(batch.step[i])): i for i in range(len(batch))}
    for (t, s), i in index.items():  # the loop definition
        expected = values[index[(t, s + 1)]] if (t, s + 1) in index else end[i]
        assert got[i] == expected
    with pytest.raises(ValueError, match="shape"):
        next_state_values(batch, values[:-1], end)
    assert explained_variance(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 1.0
    assert explained_variance(np.zeros(2), np.array([1.0, 3.0])) == 0.0


def test_the_head_reads_the_same_hidden_state_in_both_passes(policy):
    """The prompt-only pass (rollout-time values) and the prompt+response pass (update) give the same h(s)."""
    prompts = [policy.encode_prompts([policy.render(t)])[0] for t in ("look", "go to desk 1 and open the drawer", "x")]
    responses = [[20, 21, 22], [24], [26, 27, 28, 29]]
    alone = policy.prompt_hidden(prompts, micro_batch_size=2)
    logp, mask, joint = policy.token_logprobs(prompts, responses, return_hidden=True)
    assert alone.shape == joint.shape == (3, policy.hidden_size)
    torch.testing.assert_close(alone, joint, atol=1e-5, rtol=1e-4)
    single = torch.cat([policy.prompt_hidden([p]) for p in prompts])  # no padding at all
    torch.testing.assert_close(alone, single, atol=1e-5, rtol=1e-4)
    head = ValueHead.for_policy(policy)
    assert np.all(head.values(policy, prompts) == 0)  # zero-initialised


def test_value_loss_falls_on_a_fixed_batch_and_truncations_bootstrap(tmp_path):
    trainer = LMTrainer(small(tmp_path, kl_coef=0.0))
    trainer.iteration = 1
    rollout = trainer.rollout()
    b = rollout.batch
    assert b.truncated.any(), "max_steps=4 should cut some episodes"
    cut_traj = set(b.traj_id[b.truncated].tolist())
    assert all((len(ids) > 0) == (t in cut_traj) for t, ids in enumerate(rollout.bootstrap_prompt_ids))
    targets = trainer.advantages(rollout)
    # V = 0 at the start: the targets are the return-to-go discounted by γλ
    assert np.all(targets["values"] == 0)
    np.testing.assert_allclose(targets["returns"], discounted_returns(b, trainer.cfg.gamma * trainer.cfg.lam))
    head = trainer.value_head
    prompts, returns = rollout.prompt_ids, torch.as_tensor(targets["returns"], dtype=torch.float32)

    def loss() -> float:
        with torch.no_grad():
            return float(value_loss(head(trainer.policy.prompt_hidden(prompts)), returns))

    before = loss()
    assert before > 0
    diags = [trainer.update(rollout, targets["advantages"], None, targets["returns"]) for _ in range(5)]
    after = loss()
    assert after < 0.7 * before, (before, after)
    assert diags[-1]["value_loss"] < diags[0]["value_loss"]
    with pytest.raises(ValueError, match="returns"):
        trainer.update(rollout, targets["advantages"], None)

    # after the update the critic is no longer 0; a cut episode's V(s') is the value of its bootstrap prompt
    targets = trainer.advantages(rollout)
    last = np.flatnonzero(b.truncated)[0]
    boot = head.values(trainer.policy, [rollout.bootstrap_prompt_ids[b.traj_id[last]]])[0]
    assert boot != 0
    raw = targets["returns"] - targets["values"]  # the un-normalised GAE advantages
    np.testing.assert_allclose(raw[last], b.reward[last] + trainer.cfg.gamma * boot - targets["values"][last], atol=1e-6)


def test_with_lora_the_head_trains_alongside_the_adapter(tmp_path):
    cfg = small(tmp_path, "lora", lora_r=4, lora_alpha=8, lora_lr=1e-2, iterations=1, kl_coef=0.0)
    trainer = LMTrainer(cfg)
    named = dict(trainer.policy.model.named_parameters())
    base = {n: p.detach().clone() for n, p in named.items() if "lora_" not in n}
    adapters = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    trainer.train()
    assert all(torch.equal(named[n], p) for n, p in base.items())
    assert any(not torch.equal(named[n], p) for n, p in adapters.items())
    assert trainer.value_head.linear.weight.abs().sum() > 0
    ckpt = os.path.join(cfg.out_dir, "checkpoint")
    assert {"adapter_model.safetensors", VALUE_HEAD_FILE} <= set(os.listdir(ckpt))
    again = LMTrainer(dataclasses.replace(cfg, resume=True))
    assert again.load_checkpoint()
    torch.testing.assert_close(again.value_head.linear.weight, trainer.value_head.linear.weight, atol=0, rtol=0)


def test_cli_ppo_runs_two_iterations_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = ["--model", "tiny", "--algo", "ppo", "--device", "cpu", "--tasks-per-iter", "2", "--group-size", "4",
              "--max-steps", "4", "--max-new-tokens", "24", "--minibatch-size", "16", "--eval-every", "0",
              "--checkpoint-every", "1", "--no-progress"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", "--iterations", "2", "--out-dir", str(whole), *common]) == 0
    assert main(["train", "--iterations", "1", "--out-dir", str(parts), *common]) == 0
    assert main(["train", "--iterations", "2", "--resume", "--out-dir", str(parts), *common]) == 0
    capsys.readouterr()

    def rows(run):
        with open(run / "metrics.jsonl") as fh:
            return [{k: v for k, v in json.loads(line).items() if not k.startswith(("time_", "gen_tokens", "update_tokens"))}
                    for line in fh]

    a, b = rows(whole), rows(parts)
    assert [r["iteration"] for r in a] == [1, 2] and a == b
    assert all(np.isfinite(r["value_loss"]) and "explained_variance" in r for r in a)
    assert a[0]["value_mean"] == 0 and a[1]["value_mean"] != 0  # the critic learned between the iterations
    heads = [load_file(str(run / "checkpoint" / VALUE_HEAD_FILE)) for run in (whole, parts)]
    assert heads[0]["linear.weight"].abs().sum() > 0
    for k in heads[0]:
        torch.testing.assert_close(heads[0][k], heads[1][k], atol=0, rtol=0)
    assert (whole / "curves.png").stat().st_size > 0
