"""The one episode loop (:mod:`gagpo.episodes`): any actor plugs in — here scripted ones of a few lines — and the
loop alone owns the rows, their order, the invalid penalty, truncation and lost episodes."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gagpo.episodes import ROW_COLUMNS, ActorStep, run_episodes
from gagpo.rollout import EnvPool, make_env_fn

ENV = "toy_envs/MiniHousehold-v0"


class Scripted:
    """A scripted actor: always the same command (an index into the admissible list, or free text, which the
    actor itself declares invalid when ``valid`` is False); it stores the time step it acted at."""

    def __init__(self, command: int | str = 0, valid: bool = True):
        self.command, self.valid, self.tasks = command, valid, []

    def reset(self, observations, infos):
        self.tasks = [info["task"] for info in infos]

    def act(self, active, observations, admissible, infos, t):
        return ActorStep(commands=[self.command] * len(active), valid=[self.valid] * len(active),
                         rows={"t": [t] * len(active)})


def test_a_scripted_actor_plugs_into_the_loop():
    actor = Scripted("look")
    ep = run_episodes(EnvPool(make_env_fn(ENV, 3)), actor, [3, 5], 2)
    assert len(actor.tasks) == 4 and actor.tasks[0] == actor.tasks[1] != actor.tasks[2]  # reset saw every episode
    batch = ep.batch()
    # lockstep: time step by time step, episodes in index order within a step
    assert ep.column("traj") == [0, 1, 2, 3] * 3 and ep.column("t") == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.group_id.tolist() == [0, 0, 1, 1] * 3 and batch.step.tolist() == ep.column("t")
    assert ep.task_of.tolist() == [3, 3, 5, 5] and ep.traj_length.tolist() == [3] * 4
    # the step limit cuts every episode: its last row is truncated, never terminated, and the loop says where
    assert batch.truncated.tolist() == [False] * 8 + [True] * 4 and not batch.terminated.any()
    assert ep.traj_truncated.all() and ep.last_observation == ep.column("next_obs")[-4:]
    assert not ep.traj_lost.any() and not any(ep.column("invalid"))
    assert list(batch.obs_key) == ep.column("obs") and list(batch.next_obs_key) == ep.column("next_obs")
    assert [len(a) for a in ep.column("adm")] == [len(info["admissible_actions"]) for info in ep.reset_infos] * 3


def test_invalid_actions_are_penalised_whoever_declares_them():
    """The actor's own verdict (``valid=False``) and the environment's (``info["invalid_action"]``) both make a row
    invalid, with ``invalid_penalty`` taken off its reward."""
    by_actor = run_episodes(EnvPool(make_env_fn(ENV, 2)), Scripted("look", valid=False), [3], 2, invalid_penalty=0.5)
    by_env = run_episodes(EnvPool(make_env_fn(ENV, 2)), Scripted("dance wildly"), [3], 2, invalid_penalty=0.5)
    free = run_episodes(EnvPool(make_env_fn(ENV, 2)), Scripted("dance wildly"), [3], 2)
    for ep in (by_actor, by_env):
        assert all(ep.column("invalid")) and ep.column("reward") == [-0.5] * 4
        np.testing.assert_array_equal(ep.traj_return, [-1.0, -1.0])
    assert all(free.column("invalid")) and free.column("reward") == [0.0] * 4  # no penalty by default


class LosingPool(EnvPool):
    """Environment ``victim`` is lost at its first step (a truncated transition flagged ``worker_restarted``)."""

    def __init__(self, factory, victim: int):
        super().__init__(factory)
        self.victim = victim

    def step_many(self, indices, actions):
        out = super().step_many(indices, actions)
        for j, i in enumerate(indices):
            if i == self.victim:
                obs, _, _, _, info = out[j]
                out[j] = (obs, 0.0, False, True, {**info, "won": False, "worker_restarted": True})
        return out


@pytest.mark.parametrize("drop_lost", [True, False])
def test_lost_episodes_are_marked_and_their_rows_dropped(drop_lost):
    ep = run_episodes(LosingPool(make_env_fn(ENV, 3), victim=1), Scripted(), [3], 2, drop_lost=drop_lost)
    assert ep.traj_lost.tolist() == [False, True] and ep.traj_length.tolist() == [3, 1]
    assert (1 in ep.column("traj")) is not drop_lost
    assert all(len(ep.column(name)) == len(ep.batch()) for name in (*ROW_COLUMNS, "t"))


def test_the_loop_checks_what_an_actor_answers():
    class Short(Scripted):
        def act(self, active, observations, admissible, infos, t):
            return ActorStep(commands=[0] * (len(active) - 1))

    class Clashing(Scripted):
        def act(self, active, observations, admissible, infos, t):
            return ActorStep(commands=[0] * len(active), rows={"reward": [1.0] * len(active)})

    class Changing(Scripted):
        def act(self, active, observations, admissible, infos, t):
            return ActorStep(commands=[0] * len(active), rows={f"x{t}": [t] * len(active)})

    pool = EnvPool(make_env_fn(ENV, 3))
    for actor, match in ((Short(), "entries for 2 active"), (Clashing(), "clash"), (Changing(), "changed")):
        with pytest.raises(ValueError, match=match):
            run_episodes(pool, actor, [3], 2)
    with pytest.raises(ValueError, match="group_size"):
        run_episodes(pool, Scripted(), [3], 0)
    with pytest.raises(ValueError, match="invalid_penalty"):
        run_episodes(pool, Scripted(), [3], 1, invalid_penalty=-1)


def test_no_episode_gives_empty_columns():
    ep = run_episodes(EnvPool(make_env_fn(ENV, 3)), Scripted(), [], 2)
    assert len(ep.batch()) == 0 and ep.column("t") == [] and ep.traj_return.shape == (0,)


def test_the_toy_collector_is_the_loop_with_a_policy_actor():
    """``collect`` adds nothing to the loop but its actor: the same rows, the same sampled actions."""
    import torch

    from gagpo.policies import make_policy
    from gagpo.rollout import PolicyActor, collect

    policy = make_policy("text", seed=0)
    r = collect(EnvPool(make_env_fn(ENV, 4)), policy, [3, 5], 3, torch.Generator().manual_seed(1))
    ep = run_episodes(EnvPool(make_env_fn(ENV, 4)), PolicyActor(policy, torch.Generator().manual_seed(1)), [3, 5], 3,
                      drop_lost=False)
    assert r.actions.tolist() == ep.column("action") and r.logp.tolist() == ep.column("logp")
    assert r.observations == ep.column("obs") and r.batch.reward.tolist() == ep.column("reward")


def test_the_loop_loads_neither_torch_nor_gymnasium():
    code = ("import sys, gagpo.episodes; "
            "assert 'torch' not in sys.modules and 'gymnasium' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
