"""ALFWorld, the text household benchmark, behind the toy environments' protocol.

ALFWorld (Shridhar et al., 2021) turns ALFRED's household tasks into text games played by
TextWorld's PDDL engine: the agent reads "You arrive at fridge 1. The fridge 1 is closed." and
answers with a command such as ``open fridge 1``. Its data has one directory per game::

    $ALFWORLD_DATA/json_2.1.1/<split>/<task_type>-<Obj>-None-<Recep>-<scene>/<trial>/
        traj_data.json   the task (type and PDDL parameters)
        game.tw-pddl     the game: PDDL domain, PDDL problem, text grammar

with splits ``train`` (3,553 games in the release), ``valid_seen`` (140; rooms seen in training)
and ``valid_unseen`` (134; new rooms).

:class:`AlfworldEnv` plays one game at a time with the real engine and speaks the protocol of
``toy_envs`` (text observations, ``info["admissible_actions"]``, ``info["won"]``, commands as
strings or indices), so :func:`gagpo.rollout.collect` runs on it unchanged. ``reset(seed=k)`` plays
game ``k mod n_games`` of the split (in sorted path order): every member of a rollout group gets the
same game, and evaluation runs the games of ``valid_seen`` or ``valid_unseen`` once each
(``env.seeds``).

:class:`~gagpo.envs.pool.ProcessEnvPool` (in :mod:`gagpo.envs.pool`, re-exported here) keeps
environments in worker processes and steps them in parallel (an ALFWorld step costs ~20 ms of CPU on
the small fixture games, more in the real rooms, and loading a game ~0.2 s).

Importing this module does not import alfworld; constructing an :class:`AlfworldEnv` does.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import string
import sys
from pathlib import Path
from typing import Iterator, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "DATA_SUBDIR",
    "FIXTURES_DIR",
    "SPLITS",
    "TASK_TYPES",
    "AlfworldEnv",
    "ProcessEnvPool",
    "RemoteEnv",
    "list_games",
    "resolve_data_dir",
]

#: The six ALFWorld task types (the prefix of every game directory's name).
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
#: The splits of the release: training games, and evaluation in seen and in unseen rooms.
SPLITS = ("train", "valid_seen", "valid_unseen")
#: Subdirectory of ``$ALFWORLD_DATA`` that holds the splits.
DATA_SUBDIR = "json_2.1.1"
#: The small hand-authored games of this repository (a source checkout only); usable as
#: ``ALFWORLD_DATA`` for smoke runs and tests. ``python -m gagpo.envs.make_fixtures DIR`` rewrites them.
FIXTURES_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "alfworld"

_INSTALL_HINT = 'pip install -e ".[alfworld]"'
_OBS_CHARSET = string.printable
_NOTHING_HAPPENS = "Nothing happens."


# ------------------------------------------------------------------------------- the data
def _missing_data(what: str) -> FileNotFoundError:
    fixtures = (f"export ALFWORLD_DATA={FIXTURES_DIR}" if FIXTURES_DIR.is_dir()
                else "export ALFWORLD_DATA=<gagpo repository>/tests/fixtures/alfworld")
    return FileNotFoundError(
        f"ALFWorld game data not found: {what}.\n"
        "Download the games (about 2 GB) with\n"
        "    pip install alfworld && alfworld-download\n"
        "    export ALFWORLD_DATA=~/.cache/alfworld\n"
        "or pass data_dir=... to the environment. For a smoke run without the download, use the small\n"
        "fixture games of this repository (tests/fixtures/alfworld, written by\n"
        "`python -m gagpo.envs.make_fixtures`):\n"
        f"    {fixtures}"
    )


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The ALFWorld data directory: ``data_dir``, else ``$ALFWORLD_DATA``.

    Raises FileNotFoundError (saying how to get the data) when neither is set or the directory
    has no ``json_2.1.1`` subdirectory.
    """
    if data_dir is None:
        env_value = os.environ.get("ALFWORLD_DATA")
        if not env_value:
            raise _missing_data("no data_dir was given and $ALFWORLD_DATA is not set")
        data_dir = env_value
    path = Path(os.path.expandvars(os.path.expanduser(str(data_dir))))
    if not (path / DATA_SUBDIR).is_dir():
        raise _missing_data(f"{path} has no {DATA_SUBDIR}/ directory")
    return path


@functools.lru_cache(maxsize=16)
def _scan_split(split_dir: str) -> tuple[tuple[str, str], ...]:
    """(task type, game file) of every game under ``split_dir``, sorted by path."""
    games = []
    root = Path(split_dir)
    for game_file in sorted(root.glob("*/*/game.tw-pddl")):
        rel = game_file.relative_to(root).as_posix()
        if "movable" in rel or "Sliced" in rel:  # alfworld skips these too
            continue
        if not (game_file.parent / "traj_data.json").is_file():
            continue
        task_type = rel.split("-", 1)[0]
        if task_type in TASK_TYPES:
            games.append((task_type, str(game_file)))
    return tuple(games)


def list_games(data_dir: str | os.PathLike | None = None, split: str = "train",
               task_types: Sequence[str] | None = None) -> list[str]:
    """Sorted paths of the ``game.tw-pddl`` files of ``split`` (optionally of some task types only).

    Like alfworld, directories whose path contains ``movable`` or ``Sliced`` and games without a
    ``traj_data.json`` are skipped; the task type is read from the directory name. Unlike alfworld,
    the ``solvable`` flag inside each game file is not checked (reading every file of the 3,553
    training games takes seconds per process); the released games all have it set.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    wanted = TASK_TYPES if task_types is None else tuple(task_types)
    unknown = [t for t in wanted if t not in TASK_TYPES]
    if unknown:
        raise ValueError(f"unknown task types {unknown}; expected a subset of {TASK_TYPES}")
    split_dir = resolve_data_dir(data_dir) / DATA_SUBDIR / split
    if not split_dir.is_dir():
        raise _missing_data(f"{split_dir} does not exist")
    games = [path for task_type, path in _scan_split(str(split_dir)) if task_type in wanted]
    if not games:
        raise _missing_data(f"{split_dir} holds no games of the task types {list(wanted)}")
    return games


def _import_engine(data_dir: Path):
    """TextWorld's PDDL environment and ALFWorld's wrappers, imported on first use.

    Importing alfworld creates the directory ``$ALFWORLD_DATA`` (default ``~/.cache/alfworld``) and
    sets the variable; when it is unset, it points at ``data_dir`` during the import and is unset again.
    """
    unset = "ALFWORLD_DATA" not in os.environ
    if unset:
        os.environ["ALFWORLD_DATA"] = str(data_dir)
    try:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs.pddl import PddlEnv
    except ImportError as exc:
        raise ImportError(f"AlfworldEnv needs the alfworld package: {_INSTALL_HINT} "
                          f"(it builds TextWorld's planner from source, a few minutes). ({exc})") from exc
    finally:
        if unset:
            os.environ.pop("ALFWORLD_DATA", None)
    return textworld, PddlEnv, AlfredDemangler


# -------------------------------------------------------------------------- the environment
@contextlib.contextmanager
def _keep_argv() -> Iterator[None]:
    """Restore ``sys.argv`` afterwards: the ALFWorld engine's planner (Fast Downward's ``translate``) sets
    ``sys.argv = ['translate.py', 'domain', 'task']`` in the calling process, which would break any later
    ``argparse`` call of the program that steps the environment."""
    argv, saved = sys.argv, list(sys.argv)
    try:
        yield
    finally:
        sys.argv = argv
        argv[:] = saved


class AlfworldEnv(gym.Env):
    """One ALFWorld game at a time, played by the real engine, with the ``toy_envs`` protocol.

    ``reset(seed=k)`` loads game ``k mod n_games`` of the split (sorted by path; the same ``k``
    always gives the same game and the same first observation) and returns the engine's opening
    text, which ends with "Your task is to: ...". Without a seed the game is drawn with the env's
    ``np_random``; ``options={"task_seed": k}`` picks game ``k`` without reseeding.

    ``step(action)`` takes a command string (case and surrounding blanks are ignored) or an
    integer index into ``info["admissible_actions"]``. An admissible command goes to the engine and
    the observation is the engine's reply ("You arrive at fridge 1. The fridge 1 is closed.").
    Anything else is a no-op and never raises: the engine is not called (it would answer
    "Nothing happens." and change nothing), the observation stays the previous one, the reward is
    ``-invalid_penalty``, ``info["invalid_action"]`` is True and ``info["feedback"]`` is
    "Nothing happens.". The reward is 1 on the step that completes the task, which also ends the
    episode (``terminated``); there is no other reward. A step after the end changes nothing
    (reward 0, ``terminated`` again). The step limit is gymnasium's ``TimeLimit``: registered as
    ``gagpo/ALFWorld-v0`` with ``max_episode_steps=50``.

    ``info`` holds ``admissible_actions`` (sorted list of str), ``won``, ``invalid_action``,
    ``feedback``, ``task`` (e.g. "put a cool apple in countertop."), ``task_type``, ``gamefile``,
    ``task_seed`` (the ``k`` of the reset) and ``game_index`` (``k mod n_games``).

    Args:
        data_dir: directory holding ``json_2.1.1/``; default ``$ALFWORLD_DATA``. FileNotFoundError
            (with download instructions) when missing.
        split: "train", "valid_seen" or "valid_unseen".
        task_types: restrict the games to these task types (default: all six).
        invalid_penalty: subtracted from the reward of an inadmissible action (default 0; the LLM
            trainer applies its own).
        render_mode: None or "ansi" (``render()`` returns the last observation and the commands).

    Observations differ from the toy environments' in one way that matters for anchor states:
    they are the engine's replies, not a full description of the state (two different states can
    give the same "You arrive at countertop 1. ..." text).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}
    MAX_OBS_LENGTH = 8192
    MAX_COMMAND_LENGTH = 256
    #: the language-model adapter (:func:`gagpo.envs.adapter.adapter_for`): the household prompt, admissible
    #: commands only, and ``eval_splits="auto"`` = the two validation splits
    ADAPTER = {"name": "alfworld", "eval_splits": ("valid_seen", "valid_unseen")}

    def __init__(self, data_dir: str | os.PathLike | None = None, split: str = "train",
                 task_types: Sequence[str] | None = None, invalid_penalty: float = 0.0,
                 render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; expected None or 'ansi'")
        invalid_penalty = float(invalid_penalty)
        if not (np.isfinite(invalid_penalty) and invalid_penalty >= 0.0):
            raise ValueError(f"invalid_penalty must be finite and >= 0; got {invalid_penalty}")
        self.data_dir = resolve_data_dir(data_dir)
        self.split = split
        self.game_files = list_games(self.data_dir, split, task_types)
        textworld, self._PddlEnv, self._Demangler = _import_engine(self.data_dir)
        self._request_infos = textworld.EnvInfos(won=True, admissible_commands=True)
        self.invalid_penalty = invalid_penalty
        self.render_mode = render_mode
        self.observation_space = spaces.Text(max_length=self.MAX_OBS_LENGTH, charset=_OBS_CHARSET)
        self.action_space = spaces.Text(max_length=self.MAX_COMMAND_LENGTH, charset=_OBS_CHARSET)
        self._game = None  # the engine, with the game of self._loaded
        self._loaded: str | None = None
        self._walkthrough: list[str] | None = None
        self._state = None  # the engine's last GameState
        self._obs = ""
        self._done = False
        self._task = ""
        self._task_type = ""
        self.task_seed: int | None = None

    # ------------------------------------------------------------------------- the games
    @property
    def n_games(self) -> int:
        """Number of games in the split (after the ``task_types`` filter)."""
        return len(self.game_files)

    @property
    def seeds(self) -> range:
        """Reset seeds that play every game of the split once (what evaluation runs)."""
        return range(self.n_games)

    EVAL_SEEDS = seeds  # the toy envs' name; evaluate on an env built with a valid_* split

    def walkthrough(self) -> list[str] | None:
        """The stored solution of the current game (``game.tw-pddl``'s "walkthrough"), if any."""
        if self._loaded is None:
            raise RuntimeError("call reset() before walkthrough()")
        return None if self._walkthrough is None else list(self._walkthrough)

    def _load(self, game_file: str) -> None:
        if game_file == self._loaded:
            return
        with open(game_file) as fh:
            data = json.load(fh)
        with open(Path(game_file).parent / "traj_data.json") as fh:
            task_type = json.load(fh)["task_type"]
        if self._game is None:
            # One engine per env, reused for every game: each PddlEnv loads its own copy of Fast
            # Downward's 34 MB shared library (the library keeps global state), never unloaded.
            self._game = self._Demangler()(self._PddlEnv(self._request_infos))
        self._loaded = None
        with _keep_argv():
            self._game.load(data)  # a dict: TextWorld's own file loading leaves the file open
        self._loaded, self._walkthrough, self._task_type = game_file, data.get("walkthrough"), task_type

    # --------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "task_seed" in options:
            task_seed = int(options["task_seed"])
        elif seed is not None:
            task_seed = int(seed)
        else:
            task_seed = int(self.np_random.integers(self.n_games))
        self.task_seed = task_seed
        self._load(self.game_files[task_seed % self.n_games])
        with _keep_argv():
            self._state = self._game.reset()
        self._obs = self._state.feedback
        self._task = self._obs.rsplit("Your task is to: ", 1)[-1].strip() if "Your task is to: " in self._obs else ""
        self._done = False
        return self._obs, self._info(feedback=self._obs, invalid=False)

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        admissible = self._state["admissible_commands"]
        command = self._resolve(action, admissible)
        if self._done:
            return self._obs, 0.0, True, False, self._info("The episode is over; call reset().", invalid=False)
        if command is None:
            return self._obs, 0.0 - self.invalid_penalty, False, False, self._info(_NOTHING_HAPPENS, invalid=True)
        with _keep_argv():
            self._state, _, _ = self._game.step(command)
        self._obs = self._state.feedback
        won = bool(self._state["won"])
        self._done = won
        return self._obs, 1.0 if won else 0.0, won, False, self._info(self._obs, invalid=False)

    @staticmethod
    def _resolve(action, admissible: list[str]) -> str | None:
        """The admissible command that ``action`` names, or None."""
        if isinstance(action, (int, np.integer)) and not isinstance(action, (bool, np.bool_)):
            return admissible[int(action)] if 0 <= action < len(admissible) else None
        if isinstance(action, str):
            command = " ".join(action.lower().split())
            return command if command in admissible else None
        return None

    def _info(self, feedback: str, invalid: bool) -> dict:
        return {
            "admissible_actions": list(self._state["admissible_commands"]),
            "won": bool(self._state["won"]),
            "invalid_action": invalid,
            "feedback": feedback,
            "task": self._task,
            "task_type": self._task_type,
            "gamefile": self._loaded,
            "task_seed": self.task_seed,
            "game_index": self.task_seed % self.n_games,
        }

    def render(self):
        if self.render_mode is None or self._state is None:
            return None
        commands = ", ".join(self._state["admissible_commands"])
        return f"{self._obs}\n> admissible: {commands}\n"

    def close(self):
        if self._game is not None:
            self._game.close()
        self._game, self._loaded, self._state = None, None, None


# The process pool moved to gagpo.envs.pool; importable from here as before.
from .pool import ProcessEnvPool, RemoteEnv  # noqa: E402,F401
