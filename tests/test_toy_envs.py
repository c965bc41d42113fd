"""The toy text environments: Gymnasium compliance, determinism, solvability, no-op actions,
observation/state bijection, step limits, and the dynamic programming on their exact models."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import toy_envs
from toy_envs import (
    KeyDoorEnv,
    MiniHouseholdEnv,
    OpenGridEnv,
    TabularModel,
    optimal_values,
    policy_evaluation,
    q_values,
    shortest_solution,
    uniform_policy,
)

ENV_IDS = list(toy_envs.ENV_IDS)
SEEDS = list(range(12)) + list(toy_envs.EVAL_SEEDS)[:4]


def make(env_id: str, **kwargs) -> gym.Env:
    return gym.make(env_id, disable_env_checker=True, **kwargs)


# ----------------------------------------------------------------------------- Gymnasium API
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes_without_warnings(env_id):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make(env_id).unwrapped)
        check_env(gym.make(env_id))
    messages = [str(w.message) for w in caught if "different from the unwrapped" not in str(w.message)]
    assert messages == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_step_limit_and_override(env_id):
    assert gym.make(env_id).spec.max_episode_steps == toy_envs.ENV_IDS[env_id][1]
    assert make(env_id, max_episode_steps=7).spec.max_episode_steps == 7


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_info_keys_and_observation_space(env_id):
    env = make(env_id)
    obs, info = env.reset(seed=3)
    assert set(info) >= {"admissible_actions", "won", "invalid_action", "feedback", "task", "state_id"}
    for _ in range(10):
        assert obs in env.observation_space
        assert info["admissible_actions"] == sorted(info["admissible_actions"]) and info["admissible_actions"]
        assert all(a in env.action_space for a in info["admissible_actions"])
        assert isinstance(info["state_id"], int) and isinstance(info["won"], bool)
        obs, _, terminated, truncated, info = env.step(0)
        if terminated or truncated:
            break


def test_unseeded_reset_draws_a_training_task():
    env = make("toy_envs/OpenGrid-v0")
    env.reset(seed=5)
    seeds = {env.reset()[1]["task_seed"] for _ in range(20)}
    assert len(seeds) > 10 and all(s in toy_envs.TRAIN_SEEDS for s in seeds)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_ansi_returns_a_map(env_id):
    env = make(env_id, render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert isinstance(text, str) and len(text.splitlines()) >= 3
    plain = make(env_id)
    plain.reset(seed=0)
    assert plain.render() is None  # no render_mode: nothing to render


@pytest.mark.parametrize("cls, kwargs", [
    (OpenGridEnv, dict(size=1)),
    (OpenGridEnv, dict(n_walls=100)),
    (OpenGridEnv, dict(size=2.5)),
    (KeyDoorEnv, dict(size=4)),
    (KeyDoorEnv, dict(min_solution_length=12, max_solution_length=10)),
    (MiniHouseholdEnv, dict(n_receptacles=9)),
    (MiniHouseholdEnv, dict(n_closed=0)),
    (MiniHouseholdEnv, dict(n_distractors=3)),
    (OpenGridEnv, dict(render_mode="human")),
    (KeyDoorEnv, dict(invalid_penalty=-1.0)),
])
def test_bad_constructor_arguments_raise(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


# ------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_with_a_seed_is_deterministic(env_id):
    a, b = make(env_id), make(env_id)
    a.reset(seed=99)  # a different history must not matter
    for seed in (0, 7, 10_003):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        assert obs_a == obs_b and info_a == info_b
        for k in range(8):
            step_a, step_b = a.step(k % 3), b.step(k % 3)
            assert step_a == step_b
            if step_a[2] or step_a[3]:
                break


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_layouts_differ_across_seeds(env_id):
    env = make(env_id, render_mode="ansi")
    layouts = set()
    for seed in range(20):
        env.reset(seed=seed)
        layouts.add(env.render())
    assert len(layouts) >= 15


# ---------------------------------------------------------------------------- solvability
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_task_is_solvable_and_the_solution_replays(env_id):
    env = make(env_id)
    for seed in SEEDS:
        env.reset(seed=seed)
        solution = shortest_solution(env.unwrapped.exact_model())
        assert solution is not None and len(solution) <= env.spec.max_episode_steps
        for t, command in enumerate(solution):
            obs, reward, terminated, truncated, info = env.step(command)
            last = t == len(solution) - 1
            assert (reward, terminated, info["won"]) == ((1.0, True, True) if last else (0.0, False, False))
            assert not truncated and not info["invalid_action"]


def test_keydoor_solution_lengths_are_in_the_configured_range():
    env = KeyDoorEnv()
    lengths = []
    for seed in range(40):
        env.reset(seed=seed)
        lengths.append(len(shortest_solution(env.exact_model())))
    assert min(lengths) >= env.min_solution_length and max(lengths) <= env.max_solution_length
    assert 12 <= np.mean(lengths) <= 16


# ------------------------------------------------------------------------ invalid actions
@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("penalty", [0.0, 0.25])
def test_invalid_actions_are_no_ops(env_id, penalty):
    env = make(env_id, invalid_penalty=penalty)
    obs0, info0 = env.reset(seed=4)
    n = len(info0["admissible_actions"])
    for action in ("xyz", "go up", "", -1, n, 10**9, None, 1.5, True, ["go north"]):
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs == obs0 and info["state_id"] == info0["state_id"]
        assert reward == -penalty and not terminated and not truncated
        assert info["invalid_action"] and info["feedback"].startswith("Nothing happens")
        assert info["admissible_actions"] == info0["admissible_actions"]
    obs, reward, terminated, truncated, info = env.step(info0["admissible_actions"][0].upper())
    assert not info["invalid_action"] and info["state_id"] != info0["state_id"]  # commands ignore case


@settings(max_examples=60, deadline=None)
@given(action=st.one_of(st.text(max_size=40), st.integers()))
def test_no_action_ever_raises(action):
    env = KeyDoorEnv()
    obs0, info0 = env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(action)
    if not info["invalid_action"]:  # it named an admissible command
        assert obs == env.exact_model().obs_text[info["state_id"]]
    else:
        assert obs == obs0 and reward == 0.0


def test_stepping_after_termination_changes_nothing():
    env = OpenGridEnv()
    env.reset(seed=2)
    for command in shortest_solution(env.exact_model()):
        obs, reward, terminated, _, info = env.step(command)
    assert terminated and reward == 1.0
    again = env.step(0)
    assert again[0] == obs and again[1] == 0.0 and again[2] and again[4]["won"]


# ------------------------------------------------------------------------- the exact model
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_observation_names_the_state_and_the_model_matches_the_env(env_id):
    env = make(env_id)
    rng = np.random.default_rng(0)
    for seed in range(4):
        obs, info = env.reset(seed=seed)
        model = env.unwrapped.exact_model()
        assert len(set(model.obs_text)) == model.n_states  # distinct states, distinct text
        assert info["state_id"] == model.initial_state
        for _ in range(60):
            s = info["state_id"]
            assert obs == model.obs_text[s] and info["admissible_actions"] == model.actions[s]
            a = int(rng.integers(len(model.actions[s])))
            obs, reward, terminated, truncated, info = env.step(a)
            assert (info["state_id"], reward, terminated) == (
                model.next_state[s][a], model.reward[s][a], model.terminal[s][a])
            if terminated or truncated:
                obs, info = env.reset(seed=seed)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_truncation_at_the_step_limit(env_id):
    env = make(env_id, max_episode_steps=3)
    env.reset(seed=0)
    results = [env.step("not a command") for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True]
    assert not any(r[2] for r in results)


# --------------------------------------------------------------------- dynamic programming
def _open_grid_2x2():
    """A 2x2 grid without walls: the goal G, two cells A next to it and the diagonal cell D."""
    env = OpenGridEnv(size=2)
    env.reset(seed=0)
    model = env.exact_model()
    kind = []
    for text in model.obs_text:
        if "reached the goal" in text:
            kind.append("G")
        else:
            kind.append("D" if " and " in text else "A")
    return model, np.array(kind)


def test_policy_evaluation_by_hand_on_a_2x2_grid():
    # Uniform policy: from A one of 2 moves reaches G (reward 1), the other leads to D; both moves
    # from D lead to an A. So V_A = 1/2 + (gamma/2) V_D and V_D = gamma V_A:
    # V_A = 0.5 / (1 - 0.5 gamma^2), V_D = gamma V_A, V_G = 0 (absorbing).
    model, kind = _open_grid_2x2()
    assert sorted(kind) == ["A", "A", "D", "G"]
    gamma = 0.9
    V = policy_evaluation(model, uniform_policy(model), gamma)
    v_a = 0.5 / (1 - 0.5 * gamma**2)
    np.testing.assert_allclose(V[kind == "A"], v_a, atol=1e-9)
    np.testing.assert_allclose(V[kind == "D"], gamma * v_a, atol=1e-9)
    np.testing.assert_allclose(V[kind == "G"], 0.0, atol=1e-12)
    # Finite horizon, rows k = 0..3 steps left, unrolled by hand.
    VH = policy_evaluation(model, uniform_policy(model), gamma, horizon=3)
    np.testing.assert_allclose(VH[:, kind == "A"][:, 0], [0, 0.5, 0.5, 0.5 + 0.25 * gamma**2])
    np.testing.assert_allclose(VH[:, kind == "D"][:, 0], [0, 0, 0.5 * gamma, 0.5 * gamma])
    # Q at an A: the move to the goal is worth 1, the other gamma V_D; at D both are gamma V_A.
    Q = q_values(model, V, gamma)
    a = int(np.flatnonzero(kind == "A")[0])
    np.testing.assert_allclose(sorted(Q[a]), [gamma**2 * v_a, 1.0])
    d = int(np.flatnonzero(kind == "D")[0])
    np.testing.assert_allclose(Q[d], [gamma * v_a] * 2)
    # Optimal values: 1 next to the goal, gamma on the diagonal.
    V_star = optimal_values(model, gamma)
    np.testing.assert_allclose(V_star[kind == "A"], 1.0)
    np.testing.assert_allclose(V_star[kind == "D"], gamma)


def test_infinite_horizon_values_satisfy_the_bellman_equation():
    env = MiniHouseholdEnv()
    env.reset(seed=5)
    model = env.exact_model()
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(len(a))) for a in model.actions]
    gamma = 0.9
    V = policy_evaluation(model, probs, gamma)
    Q = q_values(model, V, gamma)
    np.testing.assert_allclose([p @ q for p, q in zip(probs, Q)], V, atol=1e-9)
    VH = policy_evaluation(model, probs, gamma, horizon=400)  # gamma^400 is negligible
    np.testing.assert_allclose(VH[-1], V, atol=1e-9)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_optimal_value_is_gamma_to_the_shortest_solution_length(env_id):
    env = make(env_id)
    gamma = 0.95
    for seed in range(6):
        env.reset(seed=seed)
        model = env.unwrapped.exact_model()
        L = len(shortest_solution(model))
        s0 = model.initial_state
        assert optimal_values(model, gamma)[s0] == pytest.approx(gamma ** (L - 1), abs=1e-9)
        VH = optimal_values(model, gamma, horizon=L)
        assert VH[L, s0] == pytest.approx(gamma ** (L - 1)) and VH[L - 1, s0] == 0.0


def test_shortest_solution_is_none_without_a_rewarded_transition():
    # state 0 --a--> 1 (trap: terminal, no reward); state 0 --b--> 0.
    model = TabularModel(
        n_states=2, obs_text=["start", "trap"], actions=[["a", "b"], ["a"]], next_state=[[1, 0], [1]],
        reward=[[0.0, 0.0], [0.0]], terminal=[[True, False], [True]], initial_state=0,
    )
    assert shortest_solution(model) is None
    np.testing.assert_allclose(optimal_values(model, 0.9), 0.0)


def test_dp_rejects_bad_arguments():
    model, _ = _open_grid_2x2()
    with pytest.raises(ValueError):
        policy_evaluation(model, uniform_policy(model), gamma=1.0)  # needs a horizon
    with pytest.raises(ValueError):
        policy_evaluation(model, [np.ones(len(a)) for a in model.actions], gamma=0.9)  # not normalised
    with pytest.raises(ValueError):
        policy_evaluation(model, uniform_policy(model)[:-1], gamma=0.9)
    with pytest.raises(ValueError):
        q_values(model, np.zeros(model.n_states + 1), 0.9)


def _uniform_returns(env: gym.Env, seed: int, gamma: float, episodes: int, rng) -> np.ndarray:
    returns = np.zeros(episodes)
    for i in range(episodes):
        _, info = env.reset(seed=seed)
        discount, done = 1.0, False
        while not done:
            a = int(rng.integers(len(info["admissible_actions"])))
            _, reward, terminated, truncated, info = env.step(a)
            returns[i] += discount * reward
            discount *= gamma
            done = terminated or truncated
    return returns


@pytest.mark.parametrize("env_id, seed", [("toy_envs/OpenGrid-v0", 0), ("toy_envs/MiniHousehold-v0", 14)])
def test_finite_horizon_evaluation_matches_monte_carlo(env_id, seed):
    env = make(env_id)
    horizon, gamma = env.spec.max_episode_steps, 0.95
    env.reset(seed=seed)
    model = env.unwrapped.exact_model()
    values = policy_evaluation(model, uniform_policy(model), gamma, horizon=horizon)
    exact = values[horizon, model.initial_state]
    returns = _uniform_returns(env, seed, gamma, 3000, np.random.default_rng(0))
    stderr = returns.std() / np.sqrt(len(returns))
    assert exact > 0.01 and stderr > 0
    assert abs(returns.mean() - exact) < 3 * stderr


def test_random_policy_rarely_solves_keydoor():
    env = make("toy_envs/KeyDoor-v0")
    horizon = env.spec.max_episode_steps
    exact, wins = [], 0
    rng = np.random.default_rng(0)
    for seed in range(200):
        env.reset(seed=seed)
        model = env.unwrapped.exact_model()
        exact.append(policy_evaluation(model, uniform_policy(model), 1.0, horizon=horizon)[horizon, 0])
        wins += _uniform_returns(env, seed, 1.0, 1, rng)[0] > 0
    assert np.mean(exact) < 0.05  # exact success probability within the step limit, averaged over tasks
    assert wins < 10  # the same over 200 sampled episodes


# ------------------------------------------------------------------ MiniHousehold difficulty levels
def _household_fingerprint(kwargs: dict, seeds, episodes: int = 2, steps: int = 30) -> str:
    """SHA-256 of everything MiniHousehold shows for ``seeds``: each task's whole exact model (every
    state's observation, admissible commands, transitions, rewards, terminations), its task text, and
    the observation/reward/info stream of seeded random action sequences (valid commands by name and
    by index, and invalid ones)."""
    import hashlib
    import json

    h = hashlib.sha256()
    for seed in seeds:
        env = make("toy_envs/MiniHousehold-v0", **kwargs)
        obs, info = env.reset(seed=seed)
        m = env.unwrapped.exact_model()
        h.update(json.dumps([m.obs_text, m.actions, m.next_state, m.reward, m.terminal, m.initial_state,
                             info["task"]]).encode())
        rng = np.random.default_rng([seed, 99])
        for _ in range(episodes):
            for _ in range(steps):
                adm = info["admissible_actions"]
                u = rng.random()
                action = ("fly to the moon" if u < 0.1 else int(rng.integers(len(adm))) if u < 0.5
                          else adm[int(rng.integers(len(adm)))])
                obs, r, term, trunc, info = env.step(action)
                h.update(json.dumps([obs, r, term, trunc, info["admissible_actions"], info["won"],
                                     info["invalid_action"], info["feedback"], info["state_id"]]).encode())
                if term or trunc:
                    break
            obs, info = env.reset(seed=seed)
        env.close()
    return h.hexdigest()


# Recorded from the code before MiniHousehold had levels (committed benchmark CSVs depend on it): the
# default, and level 3 named explicitly, must reproduce it exactly.
HOUSEHOLD_BEFORE_LEVELS = [
    ({}, list(range(48)) + list(range(10_000, 10_016)),
     "33c8d86d976b06d56e1c78b6dd555afa0793d630da7a7b2be066e2bdce6e1bcd"),
    (dict(n_receptacles=3, n_closed=1, n_distractors=0), range(16),
     "fad8be5943d8ca5bb703139fc75b0c89a0f4cf7be4d582794c7b0c0a87d4a97b"),
    (dict(n_receptacles=6, n_closed=3, n_distractors=0), range(4),
     "a90cc5e847d8d11fa372b237c17488b533f9a264de1cc69de236a7fa530afcb6"),
    (dict(invalid_penalty=0.25, n_distractors=2), range(4),
     "68a63162b48c986eea5eeb2d513f1749ff309765d4add57dc3c1893a4184de7b"),
]


@pytest.mark.parametrize("explicit_level", [False, True])
@pytest.mark.parametrize("kwargs, seeds, expected", HOUSEHOLD_BEFORE_LEVELS)
def test_household_default_level_reproduces_the_environment_before_levels(kwargs, seeds, expected, explicit_level):
    if explicit_level:
        kwargs = {**kwargs, "level": 3}
    assert _household_fingerprint(kwargs, seeds) == expected


@pytest.mark.parametrize("level", [1, 2, 3])
def test_household_levels(level):
    """Level 1: pick-and-place among three surfaces, always 4 commands; level 2: closed receptacles,
    still pick-and-place; level 3: the cool and heat tasks too. Every task is solvable, and the
    levels differ in size as documented."""
    env = make("toy_envs/MiniHousehold-v0", level=level)
    kinds, n_receptacles, n_closed, n_distractors = toy_envs.household.LEVELS[level]
    lengths, task_words, states = [], set(), []
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        task = env.unwrapped._compiled.task
        assert len(task.receptacles) == n_receptacles and sum(task.closable) == n_closed
        assert len(task.objects) == 1 + n_distractors and task.kind in kinds
        model = env.unwrapped.exact_model()
        solution = shortest_solution(model)
        lengths.append(len(solution))
        states.append(model.n_states)
        task_words.add(info["task"].split()[2])  # "put a cool apple in ..." -> "cool"
        for command in solution:
            obs, reward, terminated, _, info = env.step(command)
        assert reward == 1.0 and terminated and info["won"]
    if level == 1:
        assert set(lengths) == {4} and "(closed)" not in obs and max(states) < 50
        assert task_words <= set(toy_envs.household.FOODS)
    if level == 2:
        assert min(lengths) >= 4 and max(lengths) > 4 and task_words <= set(toy_envs.household.FOODS)
    if level == 3:
        assert {"cool", "hot"} <= task_words


@pytest.mark.parametrize("kwargs", [dict(level=0), dict(level=4), dict(level=True), dict(level=1, n_closed=1),
                                    dict(level=2, n_closed=0), dict(level=2, n_receptacles=2)])
def test_household_bad_levels_raise(kwargs):
    with pytest.raises(ValueError):
        MiniHouseholdEnv(**kwargs)


def test_household_level_sizes_can_be_overridden():
    env = MiniHouseholdEnv(level=1, n_receptacles=5, n_distractors=2)
    env.reset(seed=3)
    task = env._compiled.task
    assert len(task.receptacles) == 5 and len(task.objects) == 3 and not any(task.closable)
    assert MiniHouseholdEnv(level=2)._config != MiniHouseholdEnv(level=3, n_receptacles=4)._config  # cache keys
