r"""MiniShop: a WebShop-like toy — search a small catalogue, open a product, pick its options, buy.

WebShop (Yao et al., 2022) puts an agent in a web store of 1.18 million real products behind a search
engine: it reads an instruction ("i need a red cotton shirt in size m, price lower than 30 dollars"),
types free-text queries ``search[...]``, opens results with ``click[<product id>]``, chooses options
(``click[red]``) and ends the episode with ``click[buy now]``; the reward is how well the bought product
matches the instruction. Its data and its search engine cannot be reached offline, so this toy keeps the
shape of the task on a catalogue of 36 generated products and a keyword search:

* **catalogue** (:func:`catalogue`, the same for every task): six categories (shirt, shoes, mug, lamp,
  backpack, towel) × six products, each with two attributes of its category ("cotton", "slim fit"), two or
  three colours, its category's sizes (none for a mug or a lamp) and a price in dollars;
* **task** (one per seed): a target product; the instruction asks for its category, one or two of its
  attributes, one of its colours, one of its sizes and a price limit at or above its price. Other products
  share words with it, so a loose query returns distractors;
* **pages** and **commands**: the search page accepts ``search[<any text>]`` — free text; the results
  page (the four best keyword matches, ``[b012] cotton slim fit shirt 24 dollars``) accepts
  ``click[<product id>]`` and ``click[back to search]``; a product page accepts a click on each option
  (``click[red]``, ``click[size m]``; the last choice per option counts), ``click[< prev]`` (back to the
  results), ``click[back to search]`` and ``click[buy now]``;
* **reward** at purchase, as WebShop's attribute-match score:
  :math:`r = r_\text{type}\,\frac{|U_\text{att}\cap Y_\text{att}| + |U_\text{opt}\cap Y_\text{opt}| +
  \mathbb 1[y_\text{price}\le u_\text{price}]}{|U_\text{att}| + |U_\text{opt}| + 1}` with :math:`U` the
  instruction's attributes and options, :math:`Y` the bought product's attributes and the options chosen,
  and :math:`r_\text{type}` 1 for the right category, else 0.1. The episode ends at the purchase
  (``terminated``; ``won`` when :math:`r = 1`) or at the step limit (15, gymnasium's ``TimeLimit``).

A command outside the page's commands is a no-op (the observation stays, ``info["invalid_action"]``).
``info["admissible_actions"]`` lists the clicks of the page and, on the search page, three **canned
searches built from the instruction** (the category; the attributes and the category; colour, attributes
and category): a finite-action policy (the toy trainer's text or tabular policy) chooses among those, while
a language model may type any query — its adapter (``ADAPTER``, read by :func:`gagpo.envs.adapter.adapter_for`)
accepts any ``search[...]`` inside ``<action>…</action>`` and validates clicks against the page.

Exact evaluation: :meth:`MiniShopEnv.best_reward` is the best purchase score of the task over the whole
catalogue (1: the target is for sale) or over what the canned searches can reach;
:meth:`MiniShopEnv.exact_model` enumerates the finite-action MDP (canned searches and clicks) as a
:class:`~toy_envs.dp.TabularModel` with the purchase scores as rewards, for :func:`~toy_envs.dp.optimal_values`;
:meth:`MiniShopEnv.solution` is a shortest command list to the best purchase the canned searches reach.
"""
from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .dp import EVAL_SEEDS, TRAIN_SEEDS, TabularModel, reset_task_seed

__all__ = ["MiniShopEnv", "Product", "Goal", "catalogue", "search", "purchase_score", "CATEGORIES", "COLORS"]

#: category -> (its attributes, its sizes)
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "shirt": (("cotton", "linen", "slim fit", "long sleeve", "polyester"), ("s", "m", "l", "xl")),
    "shoes": (("leather", "canvas", "waterproof", "running", "slip on"), ("7", "8", "9", "10")),
    "mug": (("ceramic", "glass", "insulated", "large", "handmade"), ()),
    "lamp": (("led", "dimmable", "desk", "wooden", "rechargeable"), ()),
    "backpack": (("waterproof", "leather", "laptop", "hiking", "lightweight"), ("small", "large")),
    "towel": (("cotton", "quick dry", "bath", "beach", "soft"), ("small", "large")),
}
COLORS = ("red", "blue", "black", "white", "green", "grey")
PRODUCTS_PER_CATEGORY = 6
RESULTS_PER_PAGE = 4
CATALOGUE_SEED = 2022
BUY, PREV, BACK = "click[buy now]", "click[< prev]", "click[back to search]"
_SEARCH = re.compile(r"search\[\s*([^\]]*?)\s*\]")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Product:
    """One product: ``pid`` (``b000`` …), category, attributes, colours, sizes and price in dollars."""

    pid: str
    category: str
    attributes: tuple[str, ...]
    colors: tuple[str, ...]
    sizes: tuple[str, ...]
    price: int

    @property
    def title(self) -> str:
        return f"{' '.join(self.attributes)} {self.category}"

    @property
    def words(self) -> frozenset[str]:
        """What the keyword search indexes: the words of the title and of the colours."""
        return frozenset(_WORD.findall(" ".join((self.title,) + self.colors)))


@dataclass(frozen=True)
class Goal:
    """What an instruction asks for: a category, attributes, a colour, a size (``""``: none) and a price limit."""

    category: str
    attributes: tuple[str, ...]
    color: str
    size: str
    max_price: int
    target: str  # the product it was drawn from

    @property
    def options(self) -> tuple[str, ...]:
        return (self.color,) + ((f"size {self.size}",) if self.size else ())

    @property
    def instruction(self) -> str:
        size = f" in size {self.size}" if self.size else ""
        return (f"i need a {self.color} {' '.join(self.attributes)} {self.category}{size}, "
                f"price lower than {self.max_price} dollars")


@functools.lru_cache(maxsize=1)
def catalogue() -> tuple[Product, ...]:
    """The 36 products of the store (generated once from ``CATALOGUE_SEED``; the same for every task)."""
    rng = np.random.default_rng(CATALOGUE_SEED)
    products = []
    for category, (attributes, sizes) in CATEGORIES.items():
        for _ in range(PRODUCTS_PER_CATEGORY):
            attrs = tuple(sorted(rng.choice(attributes, size=2, replace=False).tolist()))
            colors = tuple(sorted(rng.choice(COLORS, size=int(rng.integers(2, 4)), replace=False).tolist()))
            price = int(rng.integers(8, 60))
            products.append(Product(f"b{len(products):03d}", category, attrs, colors, tuple(sizes), price))
    return tuple(products)


def search(query: str, products: tuple[Product, ...] | None = None) -> tuple[str, ...]:
    """The ids of the best keyword matches of ``query`` (at most ``RESULTS_PER_PAGE``): products ranked by the
    number of query words in their title and colours, ties by id; products matching no word are left out."""
    products = catalogue() if products is None else products
    words = set(_WORD.findall(query.lower()))
    scored = [(-len(words & p.words), p.pid) for p in products if words & p.words]
    return tuple(pid for _, pid in sorted(scored)[:RESULTS_PER_PAGE])


def purchase_score(goal: Goal, product: Product, chosen: tuple[str, ...]) -> float:
    """WebShop's attribute-match reward for buying ``product`` with the options ``chosen`` (see the module)."""
    att = sum(a in product.attributes for a in goal.attributes)
    opt = sum(o in chosen for o in goal.options)
    price = product.price <= goal.max_price
    r_type = 1.0 if product.category == goal.category else 0.1
    return r_type * (att + opt + price) / (len(goal.attributes) + len(goal.options) + 1)


def _option_clicks(product: Product) -> list[str]:
    return [f"click[{c}]" for c in product.colors] + [f"click[size {s}]" for s in product.sizes]


class MiniShopEnv(gym.Env):
    """The MiniShop environment (see the module docstring). ``reset(seed=k)`` starts task ``k``.

    A state is ``("search",)``, ``("results", query, ids)``, ``("item", query, ids, pid, colour, size)`` or
    ``("bought", score)``. Actions are command strings (case and blanks normalised) or indices into
    ``info["admissible_actions"]``; on the search page any ``search[<text>]`` is accepted.

    Args:
        invalid_penalty: subtracted from the reward of a no-op (default 0; the LM trainer applies its own).
        render_mode: None or "ansi".
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}
    EVAL_SEEDS = EVAL_SEEDS
    TRAIN_SEEDS = TRAIN_SEEDS
    #: the language-model adapter (:func:`gagpo.envs.adapter.adapter_for`): free-text searches, a shop prompt
    ADAPTER = {
        "name": "minishop",
        "free_text": r"search\[[^\[\]]*[a-z0-9][^\[\]]*\]",
        "template": {
            "intro": "You are shopping in a web store. Your instruction: {task}",
            "admissible_header": "Clickable now (on the search page you may also type any search[your query]):",
            "instruction": ("First think about what to do next, step by step, inside <think> </think>. Then write "
                            "exactly one action inside <action> </action>: search[your query], or one of the clicks "
                            "listed."),
        },
    }
    _CACHE_SIZE = 128

    def __init__(self, invalid_penalty: float = 0.0, render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; expected None or 'ansi'")
        invalid_penalty = float(invalid_penalty)
        if not (np.isfinite(invalid_penalty) and invalid_penalty >= 0.0):
            raise ValueError(f"invalid_penalty must be finite and >= 0; got {invalid_penalty}")
        self.invalid_penalty = invalid_penalty
        self.render_mode = render_mode
        self.observation_space = spaces.Text(max_length=2048, charset=string.printable)
        self.action_space = spaces.Text(max_length=128, charset=string.printable)
        self.products = {p.pid: p for p in catalogue()}
        self.goal: Goal | None = None
        self.state: tuple | None = None
        self.task_seed: int | None = None

    # ------------------------------------------------------------------ tasks
    @staticmethod
    @functools.lru_cache(maxsize=_CACHE_SIZE)
    def make_goal(task_seed: int) -> Goal:
        """The goal of task ``task_seed`` (deterministic)."""
        rng = np.random.default_rng([task_seed, 7])
        products = catalogue()
        p = products[int(rng.integers(len(products)))]
        n_att = int(rng.integers(1, 3))
        attrs = tuple(sorted(rng.choice(p.attributes, size=n_att, replace=False).tolist()))
        color = str(rng.choice(p.colors))
        size = str(rng.choice(p.sizes)) if p.sizes else ""
        max_price = int(np.ceil((p.price + 1) / 10) * 10 + 10 * rng.integers(0, 2))
        return Goal(p.category, attrs, color, size, max_price, p.pid)

    def canned_searches(self) -> list[str]:
        """The three searches a finite-action policy may choose on the search page, built from the instruction."""
        g = self.goal
        queries = [g.category, f"{' '.join(g.attributes)} {g.category}", f"{g.color} {' '.join(g.attributes)} {g.category}"]
        return [f"search[{q}]" for q in dict.fromkeys(queries)]

    # ------------------------------------------------------------------ rules
    def commands(self, state: tuple) -> list[str]:
        """The clicks of a page (and the canned searches on the search page), in a fixed order."""
        kind = state[0]
        if kind == "search":
            return self.canned_searches()
        if kind == "results":
            return [f"click[{pid}]" for pid in state[2]] + [BACK]
        if kind == "item":
            return _option_clicks(self.products[state[3]]) + [BUY, PREV, BACK]
        return [BACK]  # bought: absorbing

    def transition(self, state: tuple, command: str) -> tuple | None:
        """The next state, or ``None`` when ``command`` is not accepted here."""
        kind = state[0]
        if kind == "search":
            m = _SEARCH.fullmatch(command)
            if m and _WORD.search(m.group(1)):
                query = " ".join(_WORD.findall(m.group(1)))
                return ("results", query, search(query))
            return None
        if command not in self.commands(state):
            return None
        if command == BACK:
            return ("search",)
        if kind == "results":
            return ("item", state[1], state[2], command[6:-1], "", "")
        if command == PREV:
            return ("results", state[1], state[2])
        _, query, ids, pid, color, size = state
        if command == BUY:
            chosen = tuple(x for x in (color, f"size {size}" if size else "") if x)
            return ("bought", round(purchase_score(self.goal, self.products[pid], chosen), 6))
        option = command[6:-1]
        if option.startswith("size "):
            return ("item", query, ids, pid, color, option[5:])
        return ("item", query, ids, pid, option, size)

    def describe(self, state: tuple) -> str:
        """The page text of a state (distinct states, distinct texts)."""
        head = f"WebShop. Instruction: {self.goal.instruction}"
        kind = state[0]
        if kind == "search":
            return f"{head}\n[Search]"
        if kind == "results":
            lines = [f"[{pid}] {self.products[pid].title} {self.products[pid].price} dollars" for pid in state[2]]
            return "\n".join([head, f"[Back to Search] Results for '{state[1]}':"] + (lines or ["No results."]))
        if kind == "item":
            _, query, _, pid, color, size = state
            p = self.products[pid]
            opts = [f"color: {' '.join(f'[{c}]' for c in p.colors)}"]
            if p.sizes:
                opts.append(f"size: {' '.join(f'[{s}]' for s in p.sizes)}")
            chosen = f"Chosen: color {color or 'none'}" + (f", size {size or 'none'}" if p.sizes else "")
            return "\n".join([head, f"[Back to Search] [< Prev] results for '{query}'",
                              f"{p.title} ({pid}), price {p.price} dollars"] + opts + [chosen, "[Buy Now]"])
        return f"{head}\nThank you for shopping with us! Your score: {state[1]:.3f}"

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start task ``seed`` (``options={"task_seed": k}`` without reseeding; else drawn from ``TRAIN_SEEDS``)."""
        super().reset(seed=seed)
        task_seed = reset_task_seed(self, seed, options)
        self.task_seed, self.goal, self.state = task_seed, self.make_goal(task_seed), ("search",)
        return self.describe(self.state), self._info("", False)

    def step(self, action):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        admissible = self.commands(self.state)
        if isinstance(action, (int, np.integer)) and not isinstance(action, (bool, np.bool_)):
            command = admissible[action] if 0 <= action < len(admissible) else None
        else:
            command = " ".join(action.lower().split()) if isinstance(action, str) else None
        if self.state[0] == "bought":
            return self.describe(self.state), 0.0, True, False, self._info("The episode is over; call reset().", False)
        nxt = None if command is None else self.transition(self.state, command)
        if nxt is None:
            return (self.describe(self.state), -self.invalid_penalty, False, False,
                    self._info(f"Nothing happens: {action!r} is not a command of this page.", True))
        self.state = nxt
        reward = float(nxt[1]) if nxt[0] == "bought" else 0.0
        return self.describe(nxt), reward, nxt[0] == "bought", False, self._info("", False)

    def _info(self, feedback: str, invalid: bool) -> dict:
        won = self.state[0] == "bought" and self.state[1] >= 1.0
        return {"admissible_actions": self.commands(self.state), "won": bool(won), "invalid_action": invalid,
                "feedback": feedback, "task": self.goal.instruction, "task_type": self.goal.category,
                "task_seed": self.task_seed}

    def render(self):
        return None if self.render_mode is None or self.state is None else self.describe(self.state)

    # ------------------------------------------------------------------ exact evaluation
    def best_reward(self, free_text: bool = True) -> float:
        """The best purchase score of the current task: over the whole catalogue (``free_text=True``: a
        free-text query can find any product — always 1, the target is for sale) or over the products the
        canned searches return (what a finite-action policy can reach)."""
        if self.goal is None:
            raise RuntimeError("call reset() before best_reward()")
        pids = [p.pid for p in catalogue()] if free_text else sorted(
            {pid for q in self.canned_searches() for pid in search(_SEARCH.fullmatch(q).group(1))})
        best = 0.0
        for pid in pids:
            p = self.products[pid]
            for color in p.colors:
                for size in p.sizes or ("",):
                    chosen = (color, f"size {size}") if size else (color,)
                    best = max(best, purchase_score(self.goal, p, chosen))
        return best

    def solution(self) -> list[str]:
        """A shortest command list, among canned searches and clicks, to a purchase of the best score they
        reach (:meth:`best_reward` with ``free_text=False``): breadth-first search in :meth:`exact_model`."""
        model = self.exact_model()
        best = max(r for row in model.reward for r in row)
        parent: dict[int, tuple[int, str]] = {model.initial_state: (-1, "")}
        queue = [model.initial_state]
        for s in queue:
            for a, (t, r) in enumerate(zip(model.next_state[s], model.reward[s])):
                if model.terminal[s][a] and r == best:
                    path = [model.actions[s][a]]
                    while s != model.initial_state:
                        s, command = parent[s]
                        path.append(command)
                    return path[::-1]
                if t not in parent and not model.terminal[s][a]:
                    parent[t] = (s, model.actions[s][a])
                    queue.append(t)
        raise RuntimeError("no purchase reachable")  # unreachable: every results page has a product

    def exact_model(self) -> TabularModel:
        """The finite-action MDP of the current task (canned searches and clicks; a purchase ends the episode
        with its score as reward), enumerated breadth-first from the search page; state 0 is the start."""
        if self.goal is None:
            raise RuntimeError("call reset() before exact_model()")
        states, index = [("search",)], {("search",): 0}
        obs, actions, nxt, rew, term = [], [], [], [], []
        for s in states:
            cmds = self.commands(s)
            obs.append(self.describe(s))
            actions.append(cmds)
            if s[0] == "bought":
                sid = index[s]
                nxt.append([sid] * len(cmds)), rew.append([0.0] * len(cmds)), term.append([True] * len(cmds))
                continue
            row_n, row_r, row_t = [], [], []
            for c in cmds:
                t = self.transition(s, c)
                if t not in index:
                    index[t] = len(states)
                    states.append(t)
                row_n.append(index[t])
                row_r.append(float(t[1]) if t[0] == "bought" else 0.0)
                row_t.append(t[0] == "bought")
            nxt.append(row_n), rew.append(row_r), term.append(row_t)
        return TabularModel(len(states), obs, actions, nxt, rew, term, initial_state=0)
