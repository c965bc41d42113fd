"""MiniHousehold-v0: a small ALFWorld-like kitchen with ALFWorld's command wording.

A task puts one food item into a target receptacle, plain, cooled (with the fridge) or heated
(with the microwave). Closed receptacles (fridge, microwave, cabinets, drawers) must be opened
before anything can be taken from or put into them, and their contents are unknown until they
have been opened once; surfaces (countertops, tables, ...) are always in view. Only food can be
heated or cooled; the agent carries at most one object.

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
    ``max_episode_steps=30``. At the defaults a task has about 2,000 states (up to about 3,600),
    its shortest solution takes 4 to 7 commands, and the uniform random policy succeeds in about
    1% of episodes within 30 steps.

    Args:
        n_receptacles: receptacles in the kitchen (3 to 7; default 5).
        n_closed: how many of them open and close (1 to 3, fewer than ``n_receptacles``;
            default 2): the fridge for a cool task, the microwave for a heat task, the rest drawn
            from cabinets, drawers and the two appliances; the others are surfaces.
        n_distractors: non-food objects lying around (0 to 2; default 1).
        render_mode: None or "ansi".
        invalid_penalty: subtracted from the reward of an inadmissible action (default 0).

    Example observation (one line each)::

        Your task is to: put a cool apple in countertop 1.
        You are at fridge 1. The fridge 1 is open. In it, you see a apple 1.
        You are carrying: nothing.
        Around you: countertop 1 (on it: a mug 1), drawer 1 (closed), fridge 1 (open; inside: a apple 1), ...
    """

    MAX_OBS_LENGTH = 1024
    _CACHE_SIZE = 16  # a compiled kitchen takes a few MB

    def __init__(self, n_receptacles: int = 5, n_closed: int = 2, n_distractors: int = 1,
                 render_mode: str | None = None, invalid_penalty: float = 0.0):
        super().__init__(render_mode=render_mode, invalid_penalty=invalid_penalty)
        if isinstance(n_receptacles, bool) or n_receptacles not in range(3, 8):
            raise ValueError(f"n_receptacles must be an integer in [3, 7]; got {n_receptacles!r}")
        if isinstance(n_closed, bool) or n_closed not in range(1, min(3, n_receptacles - 1) + 1):
            raise ValueError(f"n_closed must be an integer in [1, min(3, n_receptacles - 1)]; "
                             f"got {n_closed!r}")
        if isinstance(n_distractors, bool) or n_distractors not in range(0, 3):
            raise ValueError(f"n_distractors must be an integer in [0, 2]; got {n_distractors!r}")
        self.n_receptacles = int(n_receptacles)
        self.n_closed = int(n_closed)
        self.n_distractors = int(n_distractors)

    @property
    def _config(self) -> tuple:
        return (self.n_receptacles, self.n_closed, self.n_distractors)

    # ----------------------------------------------------------------------- task draws
    def _propose_task(self, rng: np.random.Generator) -> HouseholdTask:
        kind = TASK_KINDS[int(rng.integers(len(TASK_KINDS)))]
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
