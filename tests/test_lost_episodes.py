"""Episodes whose environment is lost (a worker process crashed or hung and was restarted, or the environment's
step raised) are neither trained on nor counted as failures, and the run logs them: ``lost_episodes`` and
``worker_restarts`` per iteration, ``eval_lost_episodes`` in evaluations."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
from gagpo.llm.rollout import collect_lm  # noqa: E402
from gagpo.llm.train import LMTrainConfig, LMTrainer, evaluation_metrics  # noqa: E402
from gagpo.rollout import EnvPool, make_env_fn  # noqa: E402

ENV = "toy_envs/MiniHousehold-v0"


class LosingPool(EnvPool):
    """An in-process pool whose environment ``victim`` is 'lost' at its second step, the way
    ``ProcessEnvPool`` reports a restarted worker: a truncated transition flagged ``worker_restarted``."""

    def __init__(self, factory, victim: int = 1):
        super().__init__(factory)
        self.victim, self.n_restarts, self._steps = victim, 0, {}

    def reset_many(self, seeds):
        self._steps = {}
        return super().reset_many(seeds)

    def step_many(self, indices, actions):
        out = super().step_many(indices, actions)
        for j, i in enumerate(indices):
            self._steps[i] = self._steps.get(i, 0) + 1
            if i == self.victim and self._steps[i] == 2:
                obs, _, _, _, info = out[j]
                self.n_restarts += 1
                out[j] = (obs, 0.0, False, True, {**info, "won": False, "worker_restarted": True})
        return out


@pytest.fixture(scope="module")
def policy():
    from gagpo.llm.policy import LMPolicy

    return LMPolicy.from_pretrained("tiny", device="cpu")


def test_a_lost_episode_leaves_the_batch_and_the_success_rate(policy):
    pool = LosingPool(make_env_fn(ENV, 4), victim=1)
    r = collect_lm(pool, policy, [3, 4], 2, seed=0)
    assert r.traj_lost.tolist() == [False, True, False, False] and r.lost_episodes == 1
    assert 1 not in set(r.batch.traj_id.tolist())  # no row of the lost episode is trained on
    assert len(r.prompt_ids) == len(r.batch) == len(r.token_logp)
    kept = [0, 2, 3]
    assert r.success_rate == pytest.approx(float(np.mean(r.traj_won[kept])))
    assert r.mean_return == pytest.approx(float(np.mean(r.traj_return[kept])))
    m = evaluation_metrics([r], "eval_")
    assert m["eval_episodes"] == 3 and m["eval_lost_episodes"] == 1
    # a rollout without losses reports every episode, and no eval_lost_episodes key
    clean = collect_lm(EnvPool(make_env_fn(ENV, 4)), policy, [3, 4], 2, seed=0)
    assert clean.lost_episodes == 0 and "eval_lost_episodes" not in evaluation_metrics([clean])


def test_the_trainer_logs_lost_episodes_and_worker_restarts(tmp_path, policy):
    cfg = LMTrainConfig(model="tiny", iterations=2, tasks_per_iter=2, group_size=2, max_steps=4, max_new_tokens=16,
                        minibatch_size=16, micro_batch_size=8, eval_every=0, checkpoint_every=0, progress=False,
                        out_dir=str(tmp_path / "run"), device="cpu", kl_coef=0.0)
    trainer = LMTrainer(cfg, policy=policy, pool=LosingPool(make_env_fn(ENV, 4), victim=1))
    history = trainer.train()
    assert [h["lost_episodes"] for h in history] == [1, 1]
    assert [h["worker_restarts"] for h in history] == [1, 1]  # per iteration, not cumulative
    assert all(np.isfinite(h["loss"]) for h in history)
