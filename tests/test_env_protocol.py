"""The environment protocol, checked on every registered environment: reset/step signatures, the ``info`` keys
(:class:`gagpo.envs.EnvInfo`), admissible actions, determinism per seed, pools (:class:`gagpo.envs.EnvPoolProtocol`)
and the environment's adapter (prompt -> response -> command round trip). ALFWorld joins with the fixture
games when alfworld is importable."""
from __future__ import annotations

import importlib.util
import inspect
import os
import typing

import gymnasium as gym
import numpy as np
import pytest

import gagpo.envs
import toy_envs
from gagpo.envs import REQUIRED_INFO_KEYS, EnvFactory, EnvInfo, EnvPool, EnvPoolProtocol, ProcessEnvPool
from gagpo.envs.adapter import DEFAULT_ADAPTER, EnvAdapter, adapter_for, register_adapter, registered_adapters


# every registered environment of the two packages; ALFWorld plays the fixture games
KWARGS = {"gagpo/ALFWorld-v0": {"data_dir": str(gagpo.envs.FIXTURES_DIR)}}
ENVS = [(env_id, KWARGS.get(env_id, {})) for env_id in sorted(gym.registry) if env_id.startswith(("toy_envs/", "gagpo/"))
        and (env_id != "gagpo/ALFWorld-v0" or importlib.util.find_spec("alfworld") is not None)]
IDS = [env_id for env_id, _ in ENVS]
assert {*toy_envs.ENV_IDS, *toy_envs.FREE_TEXT_ENV_IDS} <= set(IDS)
SEEDS = (0, 3)
INFO_TYPES = typing.get_type_hints(EnvInfo)


@pytest.fixture(autouse=True)
def _alfworld_data(monkeypatch):  # importing alfworld creates $ALFWORLD_DATA (~/.cache/alfworld) unless set
    monkeypatch.setenv("ALFWORLD_DATA", os.environ.get("ALFWORLD_DATA", str(gagpo.envs.FIXTURES_DIR)))


def _check_info(info: dict) -> None:
    for key in REQUIRED_INFO_KEYS:
        assert key in info, key
    adm = info["admissible_actions"]
    assert isinstance(adm, list) and adm and all(isinstance(a, str) and a for a in adm)
    assert len(set(adm)) == len(adm), "admissible actions repeat"
    for key, value in info.items():
        if key not in INFO_TYPES or key == "admissible_actions":
            continue
        expected = typing.get_origin(INFO_TYPES[key]) or INFO_TYPES[key]
        if expected is int:
            assert isinstance(value, (int, np.integer)) and not isinstance(value, bool), key
        elif expected is bool:
            assert isinstance(value, (bool, np.bool_)), key
        else:
            assert isinstance(value, expected), key


def _play(env, seed: int, steps: int = 6) -> list:
    """Reset with ``seed`` and take the last admissible action ``steps`` times: the transcript."""
    obs, info = env.reset(seed=seed)
    out = [(obs, info["admissible_actions"])]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(len(info["admissible_actions"]) - 1)
        out.append((obs, float(reward), bool(terminated), bool(truncated), info["admissible_actions"]))
        if terminated or truncated:
            break
    return out


@pytest.mark.parametrize("env_id,kwargs", ENVS, ids=IDS)
def test_reset_step_info_and_determinism(env_id, kwargs):
    env = EnvFactory(env_id, 0, kwargs)()
    try:
        sig = inspect.signature(env.unwrapped.reset).parameters
        assert {"seed", "options"} <= set(sig) and all(sig[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("seed", "options"))
        assert list(inspect.signature(env.unwrapped.step).parameters) == ["action"]
        for seed in SEEDS:
            obs, info = env.reset(seed=seed)
            assert isinstance(obs, str) and obs
            _check_info(info)
            # an admissible command by name and by index give the same transition
            name = env.step(info["admissible_actions"][0])
            env.reset(seed=seed)
            index = env.step(0)
            assert name[0] == index[0] and name[1] == index[1] and name[4]["admissible_actions"] == index[4]["admissible_actions"]
            assert isinstance(name[1], (float, int)) and isinstance(name[2], bool) and isinstance(name[3], bool)
            _check_info(name[4])
            assert not name[4].get("invalid_action", False)
            # a command no environment accepts is a no-op, flagged
            obs, info = env.reset(seed=seed)
            nxt, reward, terminated, truncated, bad = env.step("xyzzy frobnicate")
            assert nxt == obs and bad["invalid_action"] and not terminated and reward <= 0
            assert bad["admissible_actions"] == info["admissible_actions"]
            # the same seed and actions, the same transcript
            assert _play(env, seed) == _play(env, seed)
    finally:
        env.close()


@pytest.mark.parametrize("env_id,kwargs", ENVS, ids=IDS)
def test_pools_keep_the_pool_protocol(env_id, kwargs):
    factory = EnvFactory(env_id, 0, kwargs)
    pool = EnvPool(factory)
    process_pool = ProcessEnvPool(factory, n_workers=1)  # no worker starts: attribute() probes in this process
    try:
        assert isinstance(pool, EnvPoolProtocol) and isinstance(process_pool, EnvPoolProtocol)
        first = pool.reset_many([SEEDS[0]] * 2 + [SEEDS[1]])
        assert first[0] == first[1] and len(first) == 3
        steps = pool.step_many([0, 2], [0, 0])
        assert len(steps) == 2 and all(len(s) == 5 for s in steps)
        for name in ("EVAL_SEEDS", "n_games"):
            assert repr(pool.attribute(name)) == repr(process_pool.attribute(name)), name
        assert pool.attribute("no_such_attribute") is None and process_pool.worker_pids == [None]
    finally:
        pool.close()
        process_pool.close()


@pytest.mark.parametrize("env_id,kwargs", ENVS, ids=IDS)
def test_the_adapter_round_trip(env_id, kwargs):
    """The adapter's prompt shows the task, the observation and every admissible action; a response naming
    an action projects back onto it, and the environment accepts it."""
    adapter = adapter_for(env_id)
    assert isinstance(adapter, EnvAdapter)
    env = EnvFactory(env_id, 0, kwargs)()
    try:
        obs, info = env.reset(seed=SEEDS[1])
        task = adapter.task(obs, info)
        assert task and task in (info.get("task") or obs)
        adm = info["admissible_actions"]
        prompt = adapter.prompt(task, obs, adm)
        assert prompt == adapter.prompt(task, obs, adm) and task.strip() in prompt and obs.strip() in prompt
        assert all(a in prompt for a in adm)
        for command in adm:
            parsed = adapter.project(f"<think> ok </think> <action> {command.upper()} </action>", adm)
            assert parsed.valid and parsed.command == command
        parsed = adapter.project("<action> xyzzy frobnicate </action>", adm)
        assert not parsed.valid and parsed.reason == "not admissible"
        *_, after = env.step(adapter.project(f"<action>{adm[-1]}</action>", adm).command)
        assert not after["invalid_action"]
        assert adapter.anchor_key(obs) == adapter.anchor_key(obs) and isinstance(adapter.anchor_key(obs), str)
        assert all(isinstance(s, str) and s for s in adapter.eval_splits)
    finally:
        env.close()


def test_default_adapter_is_todays_household_behaviour():
    from gagpo.llm.parsing import parse_action
    from gagpo.llm.prompts import DEFAULT_TEMPLATE, build_prompt

    for env_id in ("toy_envs/KeyDoor-v0", "toy_envs/MiniHousehold-v0", "household"):
        assert adapter_for(env_id) == DEFAULT_ADAPTER
    alf = adapter_for("alfworld")
    assert alf.template == DEFAULT_TEMPLATE and not alf.free_text and alf.eval_splits == ("valid_seen", "valid_unseen")
    adm = ["look", "go to fridge 1"]
    args = ("cool an apple", "You see a fridge.", adm, [("o", "look")], 3)
    assert DEFAULT_ADAPTER.prompt(*args) == build_prompt(*args, DEFAULT_TEMPLATE)
    assert DEFAULT_ADAPTER.task("Hi. Your task is to: cool an apple.\nMore", {}) == "cool an apple."
    assert DEFAULT_ADAPTER.task("Your task is to: x", {"task": "y"}) == "y"
    for response in ("<action>Go to  Fridge 1</action>", "<action>search[apple]</action>", "no tags"):
        assert DEFAULT_ADAPTER.project(response, adm) == parse_action(response, adm)


def test_free_text_adapters_accept_matching_commands_only():
    shop = adapter_for("toy_envs/MiniShop-v0")
    assert shop.name == "minishop" and shop.free_text and shop.eval_splits == ()
    p = shop.project("<think>look</think><action> Search[ Red  COTTON shirt ] </action>", ["click[b001]"])
    assert p.valid and p.command == "search[ red cotton shirt ]"
    for bad in ("search[]", "search[ ]", "search red shirt", "buy[b001]", "search[a] click[b]"):
        assert not shop.project(f"<action>{bad}</action>", ["click[b001]"]).valid, bad
    assert shop.project("<action>click[B001]</action>", ["click[b001]"]).command == "click[b001]"


def test_register_adapter_overrides_the_declared_one():
    mine = EnvAdapter(name="mine", eval_splits=("dev",))
    try:
        assert register_adapter("toy_envs/KeyDoor-v0", mine) is mine
        assert adapter_for("keydoor") is mine and "toy_envs/KeyDoor-v0" in registered_adapters()
    finally:
        gagpo.envs.adapter._ADAPTERS.pop("toy_envs/KeyDoor-v0", None)
    assert adapter_for("toy_envs/KeyDoor-v0") == DEFAULT_ADAPTER
    with pytest.raises(TypeError):
        register_adapter("x/Y-v0", {"name": "not an adapter"})
    with pytest.raises(ValueError, match="unknown adapter field"):
        EnvAdapter.from_mapping({"nme": "typo"})
    with pytest.raises(ValueError, match="unknown environment"):
        adapter_for("toy_envs/NoSuch-v0")


def test_old_import_places_still_work():
    import gagpo.envs.alfworld as alfworld
    import gagpo.rollout

    assert gagpo.rollout.EnvPool is EnvPool and alfworld.ProcessEnvPool is ProcessEnvPool
    assert gagpo.envs.EnvAdapter is EnvAdapter and gagpo.envs.adapter_for is adapter_for
