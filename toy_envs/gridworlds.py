"""Grid worlds with egocentric text observations: OpenGrid-v0 and KeyDoor-v0.

Cells are ``(row, col)`` with row 0 the northern edge. Observations give offsets to the things
that matter ("The goal is 2 steps north and 3 steps east.") and the blocked directions around the
agent, so the same words mean the same thing on every layout and identical situations give
identical strings. Within one task the goal is fixed, so the offset to the goal (plus the key and
door flags in KeyDoor) names the state: observation text and state are in one-to-one
correspondence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dp import TabularModel, TabularTextEnv

Cell = tuple[int, int]

#: Move commands and their (row, col) steps, in the order directions are listed in observations.
MOVES: dict[str, Cell] = {"north": (-1, 0), "south": (1, 0), "east": (0, 1), "west": (0, -1)}


def _shift(cell: Cell, direction: str) -> Cell:
    dr, dc = MOVES[direction]
    return cell[0] + dr, cell[1] + dc


def _inside(cell: Cell, size: int) -> bool:
    return 0 <= cell[0] < size and 0 <= cell[1] < size


def _offset_text(source: Cell, target: Cell) -> str:
    """'2 steps north and 1 step east' — the walk from ``source`` to ``target``."""
    parts = []
    dr, dc = target[0] - source[0], target[1] - source[1]
    if dr:
        parts.append(f"{abs(dr)} step{'s' if abs(dr) > 1 else ''} {'north' if dr < 0 else 'south'}")
    if dc:
        parts.append(f"{abs(dc)} step{'s' if abs(dc) > 1 else ''} {'east' if dc > 0 else 'west'}")
    return " and ".join(parts) if parts else "here"


def _list_text(directions: list[str]) -> str:
    return ", ".join(directions) if directions else "none"


def _draw(size: int, marks: dict[Cell, str]) -> str:
    """An ASCII map with a border; ``marks`` maps cells to characters, the rest is floor '.'."""
    border = "#" * (size + 2)
    rows = ["#" + "".join(marks.get((r, c), ".") for c in range(size)) + "#" for r in range(size)]
    return "\n".join([border, *rows, border])


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    try:
        ok = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an integer; got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}; got {value}")
    return value


# ----------------------------------------------------------------------------- OpenGrid
@dataclass(frozen=True)
class OpenGridTask:
    size: int
    walls: frozenset
    start: Cell
    goal: Cell


class OpenGridEnv(TabularTextEnv):
    """Walk to the goal on a ``size`` x ``size`` grid with a few interior walls.

    State: the agent's cell. Commands: ``go north|south|east|west``, admissible where the move
    stays on the grid and off walls. Reward 1 and termination on reaching the goal.
    Registered as ``toy_envs/OpenGrid-v0`` with ``max_episode_steps=20`` (4 x the default size).

    Args:
        size: side of the grid (>= 2; default 5).
        n_walls: interior wall cells (at most ``size * size // 2``); default ``size * size // 8``.
        render_mode: None or "ansi".
        invalid_penalty: subtracted from the reward of an inadmissible action (default 0).

    Example observation: ``"You are in a 5x5 grid. The goal is 2 steps north and 1 step east.
    Walls: west."``
    """

    def __init__(self, size: int = 5, n_walls: int | None = None, render_mode: str | None = None,
                 invalid_penalty: float = 0.0):
        super().__init__(render_mode=render_mode, invalid_penalty=invalid_penalty)
        self.size = _check_int("size", size, 2)
        default_walls = self.size * self.size // 8
        self.n_walls = _check_int("n_walls", default_walls if n_walls is None else n_walls, 0,
                                  self.size * self.size // 2)

    @property
    def _config(self) -> tuple:
        return (self.size, self.n_walls)

    def _propose_task(self, rng: np.random.Generator) -> OpenGridTask:
        n = self.size
        cells = [(r, c) for r in range(n) for c in range(n)]
        order = rng.permutation(len(cells))
        walls = frozenset(cells[i] for i in order[: self.n_walls])
        start, goal = cells[order[self.n_walls]], cells[order[self.n_walls + 1]]
        return OpenGridTask(n, walls, start, goal)

    def _initial_state(self, task: OpenGridTask) -> Cell:
        return task.start

    def _commands(self, task: OpenGridTask, cell: Cell) -> list[str]:
        return [f"go {d}" for d in MOVES if self._open(task, _shift(cell, d))]

    @staticmethod
    def _open(task: OpenGridTask, cell: Cell) -> bool:
        return _inside(cell, task.size) and cell not in task.walls

    def _transition(self, task: OpenGridTask, cell: Cell, command: str) -> Cell:
        return _shift(cell, command.split()[1])

    def _is_success(self, task: OpenGridTask, cell: Cell) -> bool:
        return cell == task.goal

    def _describe(self, task: OpenGridTask, cell: Cell) -> str:
        head = f"You are in a {task.size}x{task.size} grid."
        if cell == task.goal:
            return f"{head} You reached the goal."
        walls = [d for d in MOVES if not self._open(task, _shift(cell, d))]
        return f"{head} The goal is {_offset_text(cell, task.goal)}. Walls: {_list_text(walls)}."

    def _feedback(self, task, cell, command, next_cell) -> str:
        return f"You go {command.split()[1]}."

    def _task_text(self, task: OpenGridTask) -> str:
        return "Reach the goal."

    def _render_text(self, task: OpenGridTask, cell: Cell) -> str:
        marks = {w: "#" for w in task.walls}
        marks[task.goal] = "G"
        marks[cell] = "A"
        return _draw(task.size, marks)


# ------------------------------------------------------------------------------ KeyDoor
@dataclass(frozen=True)
class KeyDoorTask:
    size: int
    walls: frozenset
    traps: frozenset
    door: Cell
    key: Cell
    start: Cell
    goal: Cell


#: KeyDoor state: (row, col, has_key, door_open).
KeyDoorState = tuple[int, int, bool, bool]


class KeyDoorEnv(TabularTextEnv):
    """Take the key, open the locked door, reach the goal in the other room; avoid the traps.

    Two rooms split by a wall with one locked door; the start and the key are in one room, the
    goal in the other; interior walls make dead ends and traps end the episode with reward 0.
    The layout (including the orientation of the dividing wall) varies with the seed and is
    always solvable. Commands: ``go north|south|east|west`` (where not blocked; stepping onto a
    trap is allowed), ``take key`` (on the key's cell), ``open door`` (next to the locked door,
    holding the key). Registered as ``toy_envs/KeyDoor-v0`` with ``max_episode_steps=60``. At the
    defaults the shortest solution takes 10 to 17 steps (13.5 on average) and the uniform random
    policy over admissible commands succeeds in about 1.2% of episodes within 60 steps (exact,
    averaged over training seeds 0-199); ``size=8`` gives 12 to 20 steps and about 0.3%.

    Args:
        size: side of the grid (>= 5; default 7).
        n_walls: interior wall cells besides the dividing wall; default ``size * size // 10``.
        n_traps: trap cells; default ``size // 4``.
        min_solution_length, max_solution_length: tasks whose shortest solution (moves plus
            ``take key`` and ``open door``) is outside this range are re-drawn; defaults
            ``3 * size // 2`` and ``5 * size // 2`` (10 and 17 at the default size 7).
        render_mode: None or "ansi".
        invalid_penalty: subtracted from the reward of an inadmissible action (default 0).

    Example observation (seed 0): ``"The key is 2 steps north and 2 steps west. The locked door is
    3 steps north and 1 step east. The goal is 1 step south and 2 steps east. Walls: east, west.
    Traps: none."``
    """

    def __init__(self, size: int = 7, n_walls: int | None = None, n_traps: int | None = None,
                 min_solution_length: int | None = None, max_solution_length: int | None = None,
                 render_mode: str | None = None, invalid_penalty: float = 0.0):
        super().__init__(render_mode=render_mode, invalid_penalty=invalid_penalty)
        self.size = _check_int("size", size, 5)
        room_cells = self.size * (self.size - 1)
        self.n_walls = _check_int("n_walls", self.size * self.size // 10 if n_walls is None else n_walls,
                                  0, room_cells // 3)
        self.n_traps = _check_int("n_traps", self.size // 4 if n_traps is None else n_traps,
                                  0, room_cells // 3)
        self.min_solution_length = _check_int(
            "min_solution_length", 3 * self.size // 2 if min_solution_length is None else min_solution_length,
            3, 3 * self.size)
        self.max_solution_length = _check_int(
            "max_solution_length", 5 * self.size // 2 if max_solution_length is None else max_solution_length,
            self.min_solution_length)

    @property
    def _config(self) -> tuple:
        return (self.size, self.n_walls, self.n_traps, self.min_solution_length, self.max_solution_length)

    def _propose_task(self, rng: np.random.Generator) -> KeyDoorTask:
        n = self.size
        split = int(rng.integers(2, n - 2))  # dividing wall column; each room >= 2 columns wide
        door = (int(rng.integers(n)), split)
        left = [(r, c) for r in range(n) for c in range(split)]
        right = [(r, c) for r in range(n) for c in range(split + 1, n)]
        start, key = (left[i] for i in rng.choice(len(left), size=2, replace=False))
        goal = right[int(rng.integers(len(right)))]
        keep_free = {start, key, goal, (door[0], split - 1), (door[0], split + 1)}
        free = [cell for cell in left + right if cell not in keep_free]
        chosen = rng.choice(len(free), size=self.n_walls + self.n_traps, replace=False)
        walls = {free[i] for i in chosen[: self.n_walls]} | {(r, split) for r in range(n) if r != door[0]}
        traps = {free[i] for i in chosen[self.n_walls:]}
        # One of the 8 symmetries of the square, so the dividing wall runs either way.
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))

        def sym(cell: Cell) -> Cell:
            r, c = cell
            if flip:
                c = n - 1 - c
            for _ in range(turns):
                r, c = c, n - 1 - r
            return r, c

        return KeyDoorTask(n, frozenset(map(sym, walls)), frozenset(map(sym, traps)), sym(door),
                           sym(key), sym(start), sym(goal))

    def _accept(self, task, model: TabularModel, solution: list[str]) -> bool:
        return self.min_solution_length <= len(solution) <= self.max_solution_length

    def _initial_state(self, task: KeyDoorTask) -> KeyDoorState:
        return (*task.start, False, False)

    @staticmethod
    def _passable(task: KeyDoorTask, cell: Cell, door_open: bool) -> bool:
        return _inside(cell, task.size) and cell not in task.walls and (door_open or cell != task.door)

    @staticmethod
    def _next_to_door(task: KeyDoorTask, cell: Cell) -> bool:
        return abs(cell[0] - task.door[0]) + abs(cell[1] - task.door[1]) == 1

    def _commands(self, task: KeyDoorTask, state: KeyDoorState) -> list[str]:
        r, c, has_key, door_open = state
        cmds = [f"go {d}" for d in MOVES if self._passable(task, _shift((r, c), d), door_open)]
        if (r, c) == task.key and not has_key:
            cmds.append("take key")
        if has_key and not door_open and self._next_to_door(task, (r, c)):
            cmds.append("open door")
        return cmds

    def _transition(self, task: KeyDoorTask, state: KeyDoorState, command: str) -> KeyDoorState:
        r, c, has_key, door_open = state
        if command == "take key":
            return r, c, True, door_open
        if command == "open door":
            return r, c, has_key, True
        return (*_shift((r, c), command.split()[1]), has_key, door_open)

    def _is_success(self, task: KeyDoorTask, state: KeyDoorState) -> bool:
        return state[:2] == task.goal

    def _is_failure(self, task: KeyDoorTask, state: KeyDoorState) -> bool:
        return state[:2] in task.traps

    def _describe(self, task: KeyDoorTask, state: KeyDoorState) -> str:
        r, c, has_key, door_open = state
        cell = (r, c)
        parts = []
        if cell in task.traps:
            parts.append("You fell into a trap!")
        if has_key:
            parts.append("You have the key.")
        elif cell == task.key:
            parts.append("The key is here.")
        else:
            parts.append(f"The key is {_offset_text(cell, task.key)}.")
        if cell == task.door:
            parts.append("You are in the open doorway.")
        else:
            parts.append(f"The {'open' if door_open else 'locked'} door is {_offset_text(cell, task.door)}.")
        if cell == task.goal:
            parts.append("You reached the goal!")
        else:
            parts.append(f"The goal is {_offset_text(cell, task.goal)}.")
        walls = [d for d in MOVES if not _inside(_shift(cell, d), task.size) or _shift(cell, d) in task.walls]
        traps = [d for d in MOVES if _shift(cell, d) in task.traps]
        parts.append(f"Walls: {_list_text(walls)}. Traps: {_list_text(traps)}.")
        return " ".join(parts)

    def _feedback(self, task, state, command, next_state) -> str:
        if command == "take key":
            return "You take the key."
        if command == "open door":
            return "You unlock and open the door."
        return f"You go {command.split()[1]}."

    def _task_text(self, task: KeyDoorTask) -> str:
        return "Take the key, open the locked door and reach the goal."

    def _render_text(self, task: KeyDoorTask, state: KeyDoorState) -> str:
        r, c, has_key, door_open = state
        marks = {w: "#" for w in task.walls}
        marks.update({t: "^" for t in task.traps})
        marks[task.door] = "/" if door_open else "D"
        if not has_key:
            marks[task.key] = "k"
        marks[task.goal] = "G"
        marks[(r, c)] = "A"
        legend = "A agent, k key, D locked door, / open door, G goal, ^ trap, # wall"
        return f"{_draw(task.size, marks)}\n{legend}\n"
