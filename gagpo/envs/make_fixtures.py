"""Author the small ALFWorld games used by the tests and by the CPU path of chapter 9.

    python -m gagpo.envs.make_fixtures tests/fixtures/alfworld

The real ALFWorld games come from ``alfworld-download``; these are written from scratch in the same
format, so the real engine (TextWorld's PDDL environment with ALFWorld's domain and grammar) plays
them unchanged. Each game is a directory in ALFWorld's layout::

    OUT_DIR/json_2.1.1/<split>/<task_type>-<Obj>-None-<Recep>-<kitchen>/<trial>/
        traj_data.json   task type and PDDL parameters (what alfworld reads)
        game.tw-pddl     JSON: pddl_domain, grammar (with the task sentence), pddl_problem,
                         solvable, walkthrough

Three kitchens: 11 and 12 serve the ``train`` and ``valid_seen`` games (seen rooms, other tasks),
kitchen 4 only the ``valid_unseen`` ones. Every split holds one game of each of the three task types
(pick_and_place_simple, pick_cool_then_place_in_recep, pick_heat_then_place_in_recep), ``train``
two. The walkthrough of each game is the plan of Fast Downward (the planner TextWorld ships), checked
here by replaying it: the game is won on its last command and not before.

The script is deterministic: running it again rewrites byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import textwrap
from dataclasses import dataclass
from pathlib import Path

DATA_SUBDIR = "json_2.1.1"

#: Kitchen number -> its receptacles as (ALFRED class, how many).
KITCHENS: dict[int, tuple[tuple[str, int], ...]] = {
    11: (("Cabinet", 2), ("CounterTop", 1), ("DiningTable", 1), ("Drawer", 1), ("Fridge", 1),
         ("GarbageCan", 1), ("Microwave", 1), ("SinkBasin", 1)),
    12: (("Cabinet", 1), ("CounterTop", 2), ("Drawer", 2), ("Fridge", 1), ("Microwave", 1),
         ("Shelf", 1), ("StoveBurner", 1)),
    4: (("Cabinet", 3), ("CounterTop", 1), ("DiningTable", 1), ("Fridge", 1), ("GarbageCan", 1),
        ("Microwave", 1), ("SideTable", 1)),
}


@dataclass(frozen=True)
class GameSpec:
    """One fixture game: a task in a kitchen with objects placed in receptacles."""

    split: str
    """"train", "valid_seen" or "valid_unseen"."""
    task_type: str
    """One of alfworld's task types (only the three below are authored here)."""
    target: str
    """ALFRED class of the object to move, e.g. "Apple"."""
    parent: str
    """ALFRED class of the receptacle it must end up in, e.g. "CounterTop"."""
    kitchen: int
    """Key of ``KITCHENS``."""
    objects: tuple[tuple[str, str], ...]
    """(ALFRED object class, receptacle as the game names it, e.g. "cabinet 2") per object."""
    annotation: str
    """A human-style goal description (``turk_annotations``; read only with human goals on)."""


GAMES: tuple[GameSpec, ...] = (
    # ---- train: kitchens 11 and 12
    GameSpec("train", "pick_and_place_simple", "SaltShaker", "Cabinet", 11,
             (("SaltShaker", "countertop 1"), ("Apple", "diningtable 1"), ("Knife", "drawer 1"),
              ("Egg", "fridge 1")),
             "Put the salt shaker away in a cabinet."),
    GameSpec("train", "pick_and_place_simple", "Spatula", "Drawer", 12,
             (("Spatula", "countertop 2"), ("Tomato", "countertop 1"), ("PepperShaker", "shelf 1"),
              ("Bread", "cabinet 1")),
             "Put the spatula in a drawer."),
    GameSpec("train", "pick_cool_then_place_in_recep", "Apple", "CounterTop", 11,
             (("Apple", "diningtable 1"), ("Egg", "countertop 1"), ("Knife", "countertop 1"),
              ("Potato", "sinkbasin 1")),
             "Chill an apple and set it on the counter."),
    GameSpec("train", "pick_cool_then_place_in_recep", "Tomato", "Microwave", 12,
             (("Tomato", "cabinet 1"), ("Apple", "countertop 1"), ("Spatula", "drawer 2"),
              ("SaltShaker", "shelf 1")),
             "Cool a tomato in the fridge and put it in the microwave."),
    GameSpec("train", "pick_heat_then_place_in_recep", "Potato", "DiningTable", 11,
             (("Potato", "cabinet 2"), ("Apple", "countertop 1"), ("Spatula", "drawer 1"),
              ("Egg", "sinkbasin 1")),
             "Microwave a potato and put it on the dining table."),
    GameSpec("train", "pick_heat_then_place_in_recep", "Egg", "CounterTop", 12,
             (("Egg", "fridge 1"), ("Bread", "countertop 1"), ("Knife", "drawer 1"),
              ("Potato", "shelf 1")),
             "Heat an egg and leave it on a counter."),
    # ---- valid_seen: the same kitchens, other tasks and placements
    GameSpec("valid_seen", "pick_and_place_simple", "Knife", "DiningTable", 11,
             (("Knife", "drawer 1"), ("Tomato", "countertop 1"), ("SaltShaker", "cabinet 1"),
              ("Bread", "diningtable 1")),
             "Take the knife out of the drawer and put it on the table."),
    GameSpec("valid_seen", "pick_cool_then_place_in_recep", "Bread", "CounterTop", 12,
             (("Bread", "shelf 1"), ("Egg", "countertop 2"), ("Fork", "drawer 1"),
              ("Apple", "microwave 1")),
             "Cool the bread and put it on the counter."),
    GameSpec("valid_seen", "pick_heat_then_place_in_recep", "Apple", "GarbageCan", 11,
             (("Apple", "fridge 1"), ("Egg", "diningtable 1"), ("Spoon", "drawer 1"),
              ("Lettuce", "countertop 1")),
             "Heat the apple in the microwave, then throw it away."),
    # ---- valid_unseen: kitchen 4, never seen in training
    GameSpec("valid_unseen", "pick_and_place_simple", "PepperShaker", "Cabinet", 4,
             (("PepperShaker", "sidetable 1"), ("Lettuce", "diningtable 1"), ("Spoon", "countertop 1"),
              ("Tomato", "cabinet 2")),
             "Put the pepper shaker in a cabinet."),
    GameSpec("valid_unseen", "pick_cool_then_place_in_recep", "Potato", "DiningTable", 4,
             (("Potato", "countertop 1"), ("Apple", "sidetable 1"), ("SaltShaker", "cabinet 3"),
              ("Bread", "diningtable 1")),
             "Cool a potato and put it on the dining table."),
    GameSpec("valid_unseen", "pick_heat_then_place_in_recep", "Tomato", "SideTable", 4,
             (("Tomato", "garbagecan 1"), ("Egg", "diningtable 1"), ("Knife", "countertop 1"),
              ("Potato", "fridge 1")),
             "Warm up a tomato and put it on the side table."),
)


# ------------------------------------------------------------------------------ naming
def _display(cls: str) -> str:
    """How the engine names a class: 'CounterTop' -> 'countertop', 'SinkBasin' -> 'sinkbasin'."""
    return cls.lower()


def _entity_id(cls: str, number: int, count: int) -> str:
    """The PDDL id of instance ``number`` (1-based, as displayed) of ``count`` of class ``cls``.

    ALFWorld's demangler sorts the ids of a class and numbers them backwards (the first id gets
    the highest number), so displayed number k of n gets the id suffix n + 1 - k. A sink basin's id
    starts with ``Sink`` and ends with ``SinkBasin``: the demangler then calls it "sinkbasin".
    """
    suffix = f"{count + 1 - number:02d}"
    if cls == "SinkBasin":
        return f"Sink_bar_{suffix}_bar_SinkBasin"
    return f"{cls}_bar_{suffix}"


# ------------------------------------------------------------------------- PDDL problem
def pddl_problem(spec: GameSpec, name: str) -> str:
    """The PDDL problem of ``spec`` in ALFWorld's ``alfred`` domain.

    Each receptacle stands at its own location; the agent starts at ``loc_bar_0``, where there is
    none ("You are in the middle of a room"). Object properties (pickupable, heatable, coolable,
    cleanable), which receptacles open, and which receptacle type can contain which object type
    come from ALFRED's tables in ``alfworld.gen.constants``; the goal is alfworld's own goal
    formula for the task type.
    """
    import alfworld.gen.constants as C
    import alfworld.gen.goal_library as glib

    receptacles: dict[str, tuple[str, str, str]] = {}  # display name -> (id, class, location)
    for cls, count in KITCHENS[spec.kitchen]:
        for k in range(1, count + 1):
            receptacles[f"{_display(cls)} {k}"] = (_entity_id(cls, k, count), cls, f"loc_bar_{len(receptacles) + 1}")
    counts: dict[str, int] = {}
    for cls, _ in spec.objects:
        counts[cls] = counts.get(cls, 0) + 1
    objects: list[tuple[str, str, str]] = []  # (id, class, receptacle display name)
    seen: dict[str, int] = {}
    for cls, where in spec.objects:
        if where not in receptacles:
            raise ValueError(f"{spec.split}/{spec.task_type}: no receptacle {where!r} in kitchen {spec.kitchen}")
        seen[cls] = seen.get(cls, 0) + 1
        objects.append((_entity_id(cls, seen[cls], counts[cls]), cls, where))
    if spec.target not in counts or spec.parent not in {c for _, c, _ in receptacles.values()}:
        raise ValueError(f"{spec}: the target object or receptacle is missing from the kitchen")
    if spec.target not in C.VAL_RECEPTACLE_OBJECTS.get(spec.parent, ()):
        # an unreachable goal makes the engine crash on load (KeyError 'val1')
        raise ValueError(f"{spec}: a {spec.parent} cannot contain a {spec.target} in ALFRED")

    otypes = sorted({cls for _, cls, _ in objects})
    rtypes = sorted({cls for _, cls, _ in receptacles.values()})
    lines = ["(define (problem plan_" + name + ")", "(:domain alfred)", "(:objects", "  agent1 - agent"]
    lines += [f"  {t}Type - otype" for t in otypes]
    lines += [f"  {t}Type - rtype" for t in rtypes]
    lines += [f"  {oid} - object" for oid, _, _ in sorted(objects)]
    lines += [f"  {rid} - receptacle" for rid, _, _ in sorted(receptacles.values())]
    lines += ["  loc_bar_0 - location"] + [f"  {loc} - location" for _, _, loc in receptacles.values()]
    lines += [")", "(:init", "  (atLocation agent1 loc_bar_0)"]
    for rid, cls, loc in sorted(receptacles.values()):
        lines.append(f"  (receptacleType {rid} {cls}Type)")
        lines.append(f"  (receptacleAtLocation {rid} {loc})")
        if cls in C.OPENABLE_CLASS_LIST:
            lines.append(f"  (openable {rid})")
    for oid, cls, where in sorted(objects):
        rid, _, loc = receptacles[where]
        lines.append(f"  (objectType {oid} {cls}Type)")
        lines.append(f"  (pickupable {oid})")
        for prop, table in (("heatable", "Heatable"), ("coolable", "Coolable"), ("cleanable", "Cleanable")):
            if cls in C.VAL_ACTION_OBJECTS[table]:
                lines.append(f"  ({prop} {oid})")
        lines.append(f"  (inReceptacle {oid} {rid})")
        lines.append(f"  (objectAtLocation {oid} {loc})")
    for r in rtypes:
        lines += [f"  (canContain {r}Type {o}Type)" for o in otypes if o in C.VAL_RECEPTACLE_OBJECTS.get(r, ())]
    lines.append(")")
    goal = glib.gdict[spec.task_type]["pddl"].format(obj=spec.target, recep=spec.parent)
    goal = textwrap.dedent(goal.replace("#", "-"))  # alfworld writes "?r # receptacle", then '#' -> '-'
    return "\n".join(lines) + "\n" + goal.strip() + "\n"


def traj_data(spec: GameSpec, trial: str) -> dict:
    """The fields of ``traj_data.json`` that alfworld reads, plus the scene number."""
    return {
        "task_id": trial,
        "task_type": spec.task_type,
        "pddl_params": {
            "object_target": spec.target,
            "parent_target": spec.parent,
            "mrecep_target": "",
            "toggle_target": "",
            "object_sliced": False,
        },
        "scene": {"floor_plan": f"FloorPlan{spec.kitchen}", "scene_num": spec.kitchen},
        "turk_annotations": {"anns": [{"task_desc": spec.annotation}]},
    }


# ----------------------------------------------------------------------------- writing
def _engine(game: dict, **infos):
    """A TextWorld PDDL environment with ALFWorld's names, loaded with ``game`` (a game.tw-pddl dict)."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs.pddl import PddlEnv

    env = AlfredDemangler()(PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True, **infos)))
    env.load(game)
    return env


def plan(game: dict) -> list[str]:
    """Fast Downward's plan for ``game`` from its start, as commands."""
    return list(_engine(game, policy_commands=True).reset()["policy_commands"])


def replay(game: dict, commands: list[str]) -> list[bool]:
    """Play ``commands`` from the start of ``game``; whether the game is won after each one.
    Raises RuntimeError on a command that is not admissible."""
    env = _engine(game)
    state = env.reset()
    won = []
    for cmd in commands:
        if cmd not in state["admissible_commands"]:
            raise RuntimeError(f"walkthrough command {cmd!r} is not admissible")
        state, _, _ = env.step(cmd)
        won.append(bool(state["won"]))
    return won


def write_game(spec: GameSpec, index: int, out_dir: Path) -> Path:
    """Write one game; returns its game.tw-pddl path."""
    import alfworld.info
    from alfworld.agents.utils.misc import add_task_to_grammar

    trial = f"trial_T20240101_000000_{index:06d}"
    task_dir = f"{spec.task_type}-{spec.target}-None-{spec.parent}-{spec.kitchen}"
    path = out_dir / DATA_SUBDIR / spec.split / task_dir / trial
    path.mkdir(parents=True, exist_ok=True)
    data = traj_data(spec, trial)
    with open(alfworld.info.ALFRED_PDDL_PATH) as fh:
        domain = fh.read()
    with open(alfworld.info.ALFRED_TWL2_PATH) as fh:
        grammar = fh.read()
    # add_task_to_grammar picks the sentence template with the global ``random``: seed it (and
    # restore the caller's random state afterwards).
    saved = random.getstate()
    random.seed(index)
    try:
        grammar = add_task_to_grammar(grammar, data, goal_desc_human_anns_prob=0.0, rng=random.Random(index))
    finally:
        random.setstate(saved)
    game = {"pddl_domain": domain, "grammar": grammar, "pddl_problem": pddl_problem(spec, trial),
            "solvable": True}
    walkthrough = plan(game)
    won = replay(game, walkthrough)
    if not won or not won[-1] or any(won[:-1]):
        raise RuntimeError(f"{task_dir}: the planner's walkthrough does not win exactly at its end")
    game["walkthrough"] = walkthrough
    with open(path / "traj_data.json", "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    with open(path / "game.tw-pddl", "w") as fh:
        json.dump(game, fh)
    return path / "game.tw-pddl"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="where to write json_2.1.1/<split>/... "
                        "(use it as ALFWORLD_DATA)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # importing alfworld creates $ALFWORLD_DATA (default ~/.cache/alfworld): point it here instead
    os.environ.setdefault("ALFWORLD_DATA", str(args.out_dir.resolve()))
    for index, spec in enumerate(GAMES):
        game_file = write_game(spec, index, args.out_dir)
        with open(game_file) as fh:
            steps = len(json.load(fh)["walkthrough"])
        print(f"{game_file.relative_to(args.out_dir)}  ({steps} steps)")


if __name__ == "__main__":
    main()
