"""ALFWorld behind the toy protocol, on the fixture games: every game is solvable by its walkthrough,
invalid commands are no-ops, the step limit truncates, rollout groups share their game, the process
pool steps many games at once and survives workers that crash or hang, and the errors explain
themselves. Skipped when alfworld is not installed (pip install -e ".[alfworld]")."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest

import gagpo.envs  # does not import alfworld
from gagpo.envs import FIXTURES_DIR, AlfworldEnv, EnvFactory, ProcessEnvPool, list_games, make_fixtures

with pytest.MonkeyPatch.context() as _mp:  # importing alfworld creates $ALFWORLD_DATA (~/.cache/alfworld)
    _mp.setenv("ALFWORLD_DATA", os.environ.get("ALFWORLD_DATA", str(FIXTURES_DIR)))
    pytest.importorskip("alfworld", reason='ALFWorld is not installed: pip install -e ".[alfworld]"')

DATA = str(FIXTURES_DIR)
ENV_ID = "gagpo/ALFWorld-v0"
ALL_GAMES = [(split, k) for split in gagpo.envs.SPLITS for k in range(len(list_games(DATA, split)))]


def make(**kwargs) -> gym.Env:
    return gym.make(ENV_ID, disable_env_checker=True, data_dir=DATA, **kwargs)


@pytest.fixture(scope="module")
def env():
    e = make()
    yield e
    e.close()


# ------------------------------------------------------------------------------ the fixture games
def test_fixtures_layout_and_size():
    counts = {split: len(list_games(DATA, split)) for split in gagpo.envs.SPLITS}
    assert counts == {"train": 6, "valid_seen": 3, "valid_unseen": 3}
    for split in gagpo.envs.SPLITS:
        types = {path.split(f"/{split}/")[1].split("-")[0] for path in list_games(DATA, split)}
        assert types == {"pick_and_place_simple", "pick_cool_then_place_in_recep", "pick_heat_then_place_in_recep"}
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(DATA) for f in files)
    assert size < 2_000_000
    for path in list_games(DATA, "train"):
        with open(path) as fh:
            game = json.load(fh)
        assert game["solvable"] is True and set(game) >= {"pddl_domain", "grammar", "pddl_problem", "walkthrough"}
        assert "UNKNOWN GOAL" not in game["grammar"]


def test_make_fixtures_is_reproducible(tmp_path):
    written = make_fixtures.write_game(make_fixtures.GAMES[0], 0, tmp_path)
    committed = FIXTURES_DIR / written.relative_to(tmp_path)
    assert written.read_bytes() == committed.read_bytes()
    assert (written.parent / "traj_data.json").read_bytes() == (committed.parent / "traj_data.json").read_bytes()


@pytest.mark.parametrize("split,k", ALL_GAMES)
def test_walkthrough_wins_with_reward_one(split, k):
    env = make(split=split)
    obs, info = env.reset(seed=k)
    assert "Your task is to: " in obs and info["task"] and obs.rstrip().endswith(info["task"])
    assert info["gamefile"] == list_games(DATA, split)[k] and info["task_type"] in info["gamefile"]
    walkthrough = env.unwrapped.walkthrough()
    assert 4 <= len(walkthrough) <= 10
    rewards = []
    for t, command in enumerate(walkthrough):
        assert command in info["admissible_actions"]
        obs, reward, terminated, truncated, info = env.step(command)
        rewards.append(reward)
        assert terminated == (t == len(walkthrough) - 1) and not truncated
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0 and info["won"]
    # after the end nothing changes
    assert env.step(0)[1:4] == (0.0, True, False)


def test_reset_is_deterministic_and_indexes_games_modulo(env):
    u = env.unwrapped
    assert u.n_games == 6 and list(u.seeds) == list(range(6)) and u.split == "train"
    first = env.reset(seed=2)
    again = env.reset(seed=2 + u.n_games)
    assert first[0] == again[0] and first[1]["gamefile"] == again[1]["gamefile"]
    assert again[1]["task_seed"] == 8 and again[1]["game_index"] == 2
    assert env.reset(seed=3)[1]["gamefile"] != first[1]["gamefile"]
    assert env.reset(options={"task_seed": 2})[0] == first[0]
    # the admissible commands are sorted strings, in the action space
    _, info = env.reset(seed=0)
    adm = info["admissible_actions"]
    assert adm == sorted(adm) and "look" in adm and all(a in env.action_space for a in adm)


def test_check_env_passes():
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(AlfworldEnv(data_dir=DATA, split="valid_seen"), skip_render_check=True)
    assert [str(w.message) for w in caught] == []


def test_render_ansi_shows_the_observation_and_commands():
    env = AlfworldEnv(data_dir=DATA, split="valid_seen", render_mode="ansi")
    obs, info = env.reset(seed=0)
    text = env.render()
    assert text.startswith(obs) and info["admissible_actions"][0] in text
    assert AlfworldEnv(data_dir=DATA, split="valid_seen").render() is None


def test_task_type_filter_and_bad_arguments():
    env = AlfworldEnv(data_dir=DATA, task_types=["pick_cool_then_place_in_recep"])
    assert env.n_games == 2 and all("pick_cool" in f for f in env.game_files)
    with pytest.raises(ValueError, match="unknown split"):
        AlfworldEnv(data_dir=DATA, split="test")
    with pytest.raises(ValueError, match="unknown task types"):
        AlfworldEnv(data_dir=DATA, task_types=["cook"])
    with pytest.raises(ValueError, match="invalid_penalty"):
        AlfworldEnv(data_dir=DATA, invalid_penalty=-1)


# ---------------------------------------------------------------------- invalid commands, limits
def test_invalid_commands_are_no_ops():
    env = make(invalid_penalty=0.1)
    obs0, info0 = env.reset(seed=1)
    for bad in ("fly to the moon", "take apple 1 from fridge 1", 99, -1, 2.5, None, True):
        obs, reward, terminated, truncated, info = env.step(bad)
        assert (obs, terminated, truncated) == (obs0, False, False)
        assert reward == pytest.approx(-0.1) and info["invalid_action"] and info["feedback"] == "Nothing happens."
        assert info["admissible_actions"] == info0["admissible_actions"] and not info["won"]
    # the state did not move: the walkthrough (its last command in odd case and blanks) still wins
    walkthrough = env.unwrapped.walkthrough()
    for command in walkthrough[:-1]:
        assert env.step(command)[1:4] == (0.0, False, False)
    assert env.step(f"  {walkthrough[-1].upper()} ")[1:3] == (1.0, True)


def test_an_index_names_an_admissible_command(env):
    _, info = env.reset(seed=0)
    command = env.unwrapped.walkthrough()[0]
    by_text = env.step(command)[0]
    _, info = env.reset(seed=0)
    obs, _, _, _, info = env.step(info["admissible_actions"].index(command))
    assert obs == by_text and not info["invalid_action"]


def test_default_invalid_penalty_is_zero(env):
    env.reset(seed=0)
    assert env.step("dance")[1] == 0.0


def test_step_limit_truncates_via_gym_make():
    assert gym.make(ENV_ID, data_dir=DATA).spec.max_episode_steps == 50
    env = make(max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step("look")[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


# --------------------------------------------------------------------------- errors and imports
def test_missing_data_error_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        AlfworldEnv()
    msg = str(err.value)
    assert "alfworld-download" in msg and "export ALFWORLD_DATA=~/.cache/alfworld" in msg
    assert "tests/fixtures/alfworld" in msg
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="json_2.1.1"):
        gym.make(ENV_ID)
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no games"):
        AlfworldEnv()
    with pytest.raises(FileNotFoundError, match="valid_seen"):
        AlfworldEnv(split="valid_seen")


def test_environment_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", DATA)
    assert AlfworldEnv(split="valid_unseen").n_games == 3


def test_missing_alfworld_raises_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "alfworld.agents.environment.alfred_tw_env", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[alfworld\]"'):
        AlfworldEnv(data_dir=DATA)


def test_importing_gagpo_envs_does_not_import_alfworld():
    code = ("import sys, gymnasium as gym, gagpo.envs; assert 'gagpo/ALFWorld-v0' in gym.registry; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alfworld', 'textworld')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------- the pool
class _Sabotage(gym.Wrapper):
    """Test-only: the command "crash" kills the worker process, "hang" blocks it."""

    def step(self, action):
        if action == "crash":
            os._exit(13)
        if action == "hang":
            time.sleep(3600)
        return self.env.step(action)


def _sabotaged_env(max_steps: int = 50) -> gym.Env:
    return _Sabotage(make(max_episode_steps=max_steps))


def uniform_policy():
    """The uniform random policy over the admissible commands: zero logits, padded with -inf.
    (torch is imported here, not at the top: the pool's workers import this module.)"""
    import torch

    class Uniform(torch.nn.Module):
        def logits(self, observations, admissible):
            out = torch.full((len(admissible), max(map(len, admissible))), float("-inf"))
            for i, a in enumerate(admissible):
                out[i, : len(a)] = 0.0
            return out

    return Uniform()


@pytest.fixture(scope="module")
def pool():
    """Two workers, step limit 4 (shared: starting workers costs seconds)."""
    with ProcessEnvPool(EnvFactory(ENV_ID, max_steps=4, kwargs={"data_dir": DATA}), n_workers=2) as p:
        yield p


@pytest.fixture(scope="module")
def sabotaged_pool():
    """Two workers whose environments crash on "crash" and hang on "hang" (timeout 3 s)."""
    with ProcessEnvPool(functools.partial(_sabotaged_env), n_workers=2, step_timeout=3.0) as p:
        yield p


def test_collect_groups_share_their_game_across_two_workers(pool):
    import torch

    from gagpo.rollout import collect

    seeds, G = [0, 3, 4], 3
    r = collect(pool, uniform_policy(), seeds, G, torch.Generator().manual_seed(0))
    assert pool.n_restarts == 0 and len(set(pool.worker_pids)) == 2
    b = r.batch
    assert len(b) == len(seeds) * G * 4  # no fixture game can be won in 4 steps: every episode is cut at 4
    assert np.array_equal(r.traj_task, np.repeat(seeds, G)) and (r.traj_length == 4).all()
    assert b.truncated[b.step == 3].all() and not b.terminated.any()
    files = list_games(DATA, "train")
    for g, seed in enumerate(seeds):
        rows = np.flatnonzero((b.group_id == g) & (b.step == 0))
        assert len(rows) == G and len(set(b.traj_id[rows])) == G
        firsts = {r.observations[i] for i in rows}
        assert len(firsts) == 1  # the anchor state every member of the group starts from
        with open(os.path.join(os.path.dirname(files[seed]), "traj_data.json")) as fh:
            target = json.load(fh)["pddl_params"]["object_target"].lower()
        assert "Your task is to: " in firsts.pop() and target in r.observations[rows[0]]
    # the groups' first observations differ: three different games
    assert len({r.observations[i] for i in np.flatnonzero(b.step == 0)}) == len(seeds)


def test_reset_many_batches_several_games_in_order(pool):
    out = pool.reset_many([5, 0, 4, 1])
    assert [info["gamefile"] for _, info in out] == [list_games(DATA, "train")[k] for k in (5, 0, 4, 1)]
    steps = pool.step_many([2, 0], ["look", 0])
    assert [s[4]["gamefile"] for s in steps] == [out[2][1]["gamefile"], out[0][1]["gamefile"]]
    assert steps[0][4]["feedback"].startswith("You are in the middle of a room")
    # handles from get(n) talk to the same environments
    handle = pool.get(4)[3]
    assert handle.step("look")[4]["gamefile"] == out[3][1]["gamefile"]


def _cut_short(transition, first_obs) -> bool:
    obs, reward, terminated, truncated, info = transition
    return ((reward, terminated, truncated) == (0.0, False, True) and info["worker_restarted"]
            and bool(info["admissible_actions"]) and obs == first_obs)


def test_worker_crash_ends_only_its_episodes_and_is_restarted(sabotaged_pool):
    pool = sabotaged_pool
    restarts = pool.n_restarts
    first = pool.reset_many([0, 1, 2, 3])
    pid0 = pool.worker_pids[0]
    out = pool.step_many([0, 1, 2, 3], ["crash", "look", "look", "look"])
    # envs 0 and 2 lived in worker 0: both episodes end, flagged; worker 1's are untouched
    assert _cut_short(out[0], first[0][0]) and _cut_short(out[2], first[2][0])
    assert not out[1][3] and not out[3][3] and "worker_restarted" not in out[1][4]
    assert pool.n_restarts == restarts + 1
    # a lost episode stays over until its environment is reset
    assert _cut_short(pool.step_many([2], ["look"])[0], first[2][0])
    again = pool.reset_many([0, 1, 2, 3])
    assert pool.worker_pids[0] not in (None, pid0)
    assert [o for o, _ in again] == [o for o, _ in first]
    assert not pool.step_many([0], ["look"])[0][3]


def test_killed_worker_is_detected_between_calls(sabotaged_pool):
    pool = sabotaged_pool
    restarts = pool.n_restarts
    first = pool.reset_many([0, 1])
    os.kill(pool.worker_pids[1], signal.SIGKILL)
    time.sleep(0.2)
    out = pool.step_many([0, 1], [0, 0])
    assert not out[0][3] and _cut_short(out[1], first[1][0])
    assert pool.n_restarts == restarts + 1
    assert pool.reset_many([0, 1])[1][1]["game_index"] == 1


def test_hung_worker_times_out_and_is_restarted(sabotaged_pool):
    pool = sabotaged_pool
    restarts = pool.n_restarts
    first = pool.reset_many([0, 1])
    start = time.monotonic()
    out = pool.step_many([0, 1], ["hang", "look"])
    assert 3.0 <= time.monotonic() - start < 20.0
    assert _cut_short(out[0], first[0][0]) and not out[1][3]
    assert pool.n_restarts == restarts + 1
    assert pool.reset_many([0])[0][0] == first[0][0]


def test_pool_rejects_an_unpicklable_factory():
    with pytest.raises(TypeError, match="picklable"):
        ProcessEnvPool(lambda: make())


def test_the_engine_leaves_sys_argv_alone(monkeypatch):
    """ALFWorld's planner sets ``sys.argv`` to ['translate.py', 'domain', 'task'] in the calling process; the
    environment restores it around every engine call, so a program can parse its arguments after stepping."""
    argv = ["prog", "--flag", "value"]
    monkeypatch.setattr(sys, "argv", argv)
    fresh = AlfworldEnv(data_dir=FIXTURES_DIR, split="valid_seen")   # a new engine: the planner runs on this load
    try:
        fresh.reset(seed=1)
        assert sys.argv is argv and argv == ["prog", "--flag", "value"]
        fresh.step(fresh.walkthrough()[0])
        fresh.reset(seed=2)
        assert sys.argv is argv and argv == ["prog", "--flag", "value"]
    finally:
        fresh.close()
