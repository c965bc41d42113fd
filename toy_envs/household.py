"""MiniHousehold-v0: a small ALFWorld-like kitchen with ALFWorld's command wording.

A task puts one food item into a target receptacle, plain, cooled (with the fridge) or heated
(with the microwave). Closed receptacles (fridge, microwave, cabinets, drawers) must be opened
before anything can be taken from or put into them, and their contents are unknown until they
have been opened once; surfaces (countertops, tables, ...) are always in view. Only food can be
heated or cooled; the agent carries at most one object.

Three difficulty levels (``level``, default 3) share these rules and differ in the kitchen and the
task mix: 1 is pick-and-place in a small kitchen of surfaces only; 2 adds closed receptacles (still
pick-and-place); 3 is the full mix of plain, cooled and heated tasks (what the environment was before
it had levels: the same observations and rewards for the same seeds and actions).

The observation is the agent's whole knowledge in a fixed format: the task, where the agent is
and what it sees there, what it carries, and one line listing every receptacle with what the
agent knows of it. A receptacle never opened is "closed" with unknown contents, which can only be
its starting contents (only the agent moves things), so within a task the observation text names
the state exactly, as the book's anchor states need.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dp import TabularTextEnv

FOODS = ("apple", "bread", "egg", "lettuce", "potato", "tomato")
THINGS = ("book", "keychain", "mug", "pen", "spatula", "spoon")  # distractors: not food
SURFACES = ("countertop 1", "countertop 2", "diningtable 1", "shelf 1", "sidetable 1", "sinkbasin 1",
            "stoveburner 1")
STORAGE = ("cabinet 1", "cabinet 2", "drawer 1", "drawer 2")  # closed receptacles, not appliances
FRIDGE, MICROWAVE = "fridge 1", "microwave 1"
TASK_KINDS = ("pick", "cool", "heat")
NORMAL, HOT, COOL = 0, 1, 2  # temperature of an object
TEMPERATURES = ("", "hot ", "cool ")  # temperature -> adjective in text

# Status of a receptacle in the state.
UNOPENED, OPEN, CLOSED_SEEN = 0, 1, 2
MIDDLE, HELD = -1, -1  # agent location before the first move; position of a carried object

#: Difficulty level -> (task kinds, n_receptacles, n_closed, n_distractors) at that level's defaults.
LEVELS: dict[int, tuple[tuple[str, ...], int, int, int]] = {
    1: (("pick",), 3, 0, 0),  # pick-and-place among three surfaces: every object in view, 4 commands
    2: (("pick",), 4, 2, 1),  # + closed receptacles to open (what is inside is unknown until then)
    3: (TASK_KINDS, 5, 2, 1),  # + cooling with the fridge and heating with the microwave
}
DEFAULT_LEVEL = 3


@dataclass(frozen=True)
class HouseholdTask:
    kind: str  # one of TASK_KINDS
    receptacles: tuple[str, ...]  # sorted names
    closable: tuple[bool, ...]  # per receptacle
    objects: tuple[str, ...]  # sorted names, e.g. ("apple 1", "mug 1")
    food: tuple[bool, ...]  # per object
    target_object: int  # index into objects
    target_receptacle: int  # index into receptacles
    start_positions: tuple[int, ...]  # receptacle index per object


#: MiniHousehold state: (location, status per receptacle, position per object, temperature per object).
HouseholdState = tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _a_list(names: list[str]) -> str:
    """'a apple 1, a mug 1, and a pen 1' in ALFWorld's style (article 'a' throughout)."""
    items = [f"a {name}" for name in names]
    if len(items) <= 1:
        return "".join(items) or "nothing"
    return ", ".join(items[:-1]) + ", and " + items[-1]


class MiniHouseholdEnv(TabularTextEnv):
    """ALFWorld-like pick-and-place, cool-then-place and heat-then-place tasks in a tiny kitchen.

    Commands: ``go to R``, ``open R``, ``close R``, ``take O from R``, ``move O to R``,
    ``cool O with fridge 1``, ``heat O with microwave 1``, ``look``, ``inventory`` (the last two
    change nothing). Reward 1 and termination when the task's food item is in the target
    receptacle with the required temperature. Registered as ``toy_envs/MiniHousehold-v0`` with
    ``max_episode_steps=30``. At the defaults (level 3) a task has about 2,000 states (up to about
    3,600), its shortest solution takes 4 to 7 commands, and the uniform random policy succeeds in
    about 1% of episodes within 30 steps.

    Levels (:data:`LEVELS`; the size arguments below default to the level's values):

    ====  =======================  ============  ========  ===========
    level tasks                    receptacles   closed    distractors
    ====  =======================  ============  ========  ===========
    1     pick-and-place           3             0         0
    2     pick-and-place           4             2         1
    3     pick, cool, heat (mix)   5             2         1
    ====  =======================  ============  ========  ===========

    A level-1 task has 11 states and is always solved in 4 commands (go to the food, take it, go to
    the target, move it there); the uniform random policy solves about 28% of them within 30 steps.
    Level 2 adds opening closed receptacles: about 700 states (up to about 1,100), 4 to 6 commands,
    about 6% for the random policy.

    Args:
        n_receptacles: receptacles in the kitchen (3 to 7; default: the level's).
        n_closed: how many of them open and close (0 at level 1; otherwise 1 to 3, fewer than
            ``n_receptacles``; default: the level's): the fridge for a cool task, the microwave for
            a heat task, the rest drawn from cabinets, drawers and the two appliances; the others
            are surfaces.
        n_distractors: non-food objects lying around (0 to 2; default: the level's).
        render_mode: None or "ansi".
        invalid_penalty: subtracted from the reward of an inadmissible action (default 0).
        level: difficulty, 1, 2 or 3 (default 3, the full task mix).

    Example observation (one line each)::

        Your task is to: put a cool apple in countertop 1.
        You are at fridge 1. The fridge 1 is open. In it, you see a apple 1.
        You are carrying: nothing.
        Around you: countertop 1 (on it: a mug 1), drawer 1 (closed), fridge 1 (open; inside: a apple 1), ...
    """

    MAX_OBS_LENGTH = 1024
    _CACHE_SIZE = 16  # a compiled kitchen takes a few MB

    def __init__(self, n_receptacles: int | None = None, n_closed: int | None = None,
                 n_distractors: int | None = None, render_mode: str | None = None,
                 invalid_penalty: float = 0.0, level: int = DEFAULT_LEVEL):
        super().__init__(render_mode=render_mode, invalid_penalty=invalid_penalty)
        if isinstance(level, bool) or level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; expected one of {sorted(LEVELS)}")
        kinds, default_receptacles, default_closed, default_distractors = LEVELS[level]
        n_receptacles = default_receptacles if n_receptacles is None else n_receptacles
        n_closed = default_closed if n_closed is None else n_closed
        n_distractors = default_distractors if n_distractors is None else n_distractors
        if isinstance(n_receptacles, bool) or n_receptacles not in range(3, 8):
            raise ValueError(f"n_receptacles must be an integer in [3, 7]; got {n_receptacles!r}")
        if level == 1:
            if isinstance(n_closed, bool) or n_closed != 0:
                raise ValueError(f"level 1 has no closed receptacles: n_closed must be 0; got {n_closed!r}")
        elif isinstance(n_closed, bool) or n_closed not in range(1, min(3, n_receptacles - 1) + 1):
            raise ValueError(f"n_closed must be an integer in [1, min(3, n_receptacles - 1)]; "
                             f"got {n_closed!r}")
        if isinstance(n_distractors, bool) or n_distractors not in range(0, 3):
            raise ValueError(f"n_distractors must be an integer in [0, 2]; got {n_distractors!r}")
        self.level = int(level)
        self.task_kinds: tuple[str, ...] = kinds
        self.n_receptacles = int(n_receptacles)
        self.n_closed = int(n_closed)
        self.n_distractors = int(n_distractors)

    @property
    def _config(self) -> tuple:
        return (self.level, self.n_receptacles, self.n_closed, self.n_distractors)

    # ----------------------------------------------------------------------- task draws
    def _propose_task(self, rng: np.random.Generator) -> HouseholdTask:
        # Level 3 draws exactly as the environment did before it had levels (same random numbers).
        kind = self.task_kinds[int(rng.integers(len(self.task_kinds)))]
        closed = {"pick": [], "cool": [FRIDGE], "heat": [MICROWAVE]}[kind]
        spare = [r for r in STORAGE + (FRIDGE, MICROWAVE) if r not in closed]
        closed += [spare[i] for i in rng.choice(len(spare), size=self.n_closed - len(closed), replace=False)]
        open_ = [SURFACES[i] for i in rng.choice(len(SURFACES), size=self.n_receptacles - self.n_closed,
                                                 replace=False)]
        targets = [r for r in closed + open_ if r not in (FRIDGE, MICROWAVE)]
        target = targets[int(rng.integers(len(targets)))]
        receptacles = tuple(sorted(closed + open_))
        food = f"{FOODS[int(rng.integers(len(FOODS)))]} 1"
        things = [f"{THINGS[i]} 1" for i in rng.choice(len(THINGS), size=self.n_distractors, replace=False)]
        objects = tuple(sorted([food, *things]))
        t_recep = receptacles.index(target)
        starts = []
        for name in objects:  # the food never starts in the target (the task would be done)
            allowed = [i for i in range(len(receptacles)) if name != food or i != t_recep]
            starts.append(allowed[int(rng.integers(len(allowed)))])
        return HouseholdTask(
            kind=kind,
            receptacles=receptacles,
            closable=tuple(r not in SURFACES for r in receptacles),
            objects=objects,
            food=tuple(name == food for name in objects),
            target_object=objects.index(food),
            target_receptacle=t_recep,
            start_positions=tuple(starts),
        )

    def _initial_state(self, task: HouseholdTask) -> HouseholdState:
        status = tuple(UNOPENED if c else OPEN for c in task.closable)
        return MIDDLE, status, task.start_positions, (NORMAL,) * len(task.objects)

    # ------------------------------------------------------------------------ the rules
    def _commands(self, task: HouseholdTask, state: HouseholdState) -> list[str]:
        loc, status, pos, _ = state
        cmds = ["look", "inventory"]
        cmds += [f"go to {r}" for i, r in enumerate(task.receptacles) if i != loc]
        if loc == MIDDLE:
            return cmds
        here = task.receptacles[loc]
        if task.closable[loc]:
            cmds.append(f"close {here}" if status[loc] == OPEN else f"open {here}")
        held = [o for o, p in enumerate(pos) if p == HELD]
        if status[loc] == OPEN:
            if held:
                cmds.append(f"move {task.objects[held[0]]} to {here}")
            else:
                cmds += [f"take {task.objects[o]} from {here}" for o, p in enumerate(pos) if p == loc]
        if held and task.food[held[0]] and here in (FRIDGE, MICROWAVE):
            verb = "cool" if here == FRIDGE else "heat"
            cmds.append(f"{verb} {task.objects[held[0]]} with {here}")
        return cmds

    def _transition(self, task: HouseholdTask, state: HouseholdState, command: str) -> HouseholdState:
        loc, status, pos, temp = state
        if command in ("look", "inventory"):
            return state
        if command.startswith("go to "):
            return task.receptacles.index(command[6:]), status, pos, temp
        verb = command.split()[0]
        if verb in ("open", "close"):
            new = OPEN if verb == "open" else CLOSED_SEEN
            return loc, status[:loc] + (new,) + status[loc + 1:], pos, temp
        obj = task.objects.index(" ".join(command.split()[1:3]))
        if verb == "take":
            return loc, status, pos[:obj] + (HELD,) + pos[obj + 1:], temp
        if verb == "move":
            return loc, status, pos[:obj] + (loc,) + pos[obj + 1:], temp
        new_temp = COOL if verb == "cool" else HOT
        return loc, status, pos, temp[:obj] + (new_temp,) + temp[obj + 1:]

    def _is_success(self, task: HouseholdTask, state: HouseholdState) -> bool:
        _, _, pos, temp = state
        o = task.target_object
        wanted = {"pick": None, "cool": COOL, "heat": HOT}[task.kind]
        return pos[o] == task.target_receptacle and (wanted is None or temp[o] == wanted)

    # --------------------------------------------------------------------------- text
    def _task_text(self, task: HouseholdTask) -> str:
        food = task.objects[task.target_object].split()[0]
        adjective = {"pick": "", "cool": "cool ", "heat": "hot "}[task.kind]
        return f"put a {adjective}{food} in {task.receptacles[task.target_receptacle]}."

    @staticmethod
    def _names_in(task: HouseholdTask, state: HouseholdState, r: int) -> list[str]:
        _, _, pos, temp = state
        return [TEMPERATURES[temp[o]] + task.objects[o] for o in range(len(task.objects)) if pos[o] == r]

    def _known(self, task: HouseholdTask, state: HouseholdState, r: int) -> str:
        """What the agent knows about receptacle ``r``, e.g. 'fridge 1 (open; inside: a apple 1)'."""
        name, status = task.receptacles[r], state[1][r]
        if not task.closable[r]:
            return f"{name} (on it: {_a_list(self._names_in(task, state, r))})"
        if status == UNOPENED:
            return f"{name} (closed)"
        word = "open" if status == OPEN else "closed"
        return f"{name} ({word}; inside: {_a_list(self._names_in(task, state, r))})"

    def _describe(self, task: HouseholdTask, state: HouseholdState) -> str:
        loc, status, pos, temp = state
        if loc == MIDDLE:
            where = "You are in the middle of a room."
        else:
            here = task.receptacles[loc]
            seen = _a_list(self._names_in(task, state, loc))
            if not task.closable[loc]:
                where = f"You are at {here}. On the {here}, you see {seen}."
            elif status[loc] == OPEN:
                where = f"You are at {here}. The {here} is open. In it, you see {seen}."
            else:
                where = f"You are at {here}. The {here} is closed."
        around = ", ".join(self._known(task, state, r) for r in range(len(task.receptacles)))
        return (f"Your task is to: {self._task_text(task)}\n{where}\n"
                f"You are carrying: {_a_list(self._names_in(task, state, HELD))}.\nAround you: {around}.")

    def _feedback(self, task, state, command, next_state) -> str:
        words = command.split()
        if command == "look":
            return "You look around."
        if command == "inventory":
            return f"You are carrying: {_a_list(self._names_in(task, state, HELD))}."
        if words[0] == "go":
            return f"You arrive at {command[6:]}."
        if words[0] in ("open", "close"):
            return f"You {words[0]} the {' '.join(words[1:])}."
        obj, recep = " ".join(words[1:3]), " ".join(words[4:])
        return {
            "take": f"You pick up the {obj} from the {recep}.",
            "move": f"You move the {obj} to the {recep}.",
            "cool": f"You cool the {obj} using the {recep}.",
            "heat": f"You heat the {obj} using the {recep}.",
        }[words[0]]

    def _render_text(self, task: HouseholdTask, state: HouseholdState) -> str:
        loc = state[0]
        lines = [f"Task: {self._task_text(task)}"]
        lines += [f"{'@' if r == loc else ' '} {self._known(task, state, r)}"
                  for r in range(len(task.receptacles))]
        lines.append(f"Carrying: {_a_list(self._names_in(task, state, HELD))}")
        if loc == MIDDLE:
            lines.append("(@ marks the agent; it stands in the middle of the room)")
        return "\n".join(lines) + "\n"
