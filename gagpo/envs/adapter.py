"""Environment adapters: how the language-model side talks to one environment.

The rollout loop of a language model (:func:`gagpo.llm.rollout.collect_lm`) needs four things that
depend on the environment and on nothing else; an :class:`EnvAdapter` holds them:

* the **task** sentence and the **prompt** of a step (:meth:`EnvAdapter.task`, :meth:`EnvAdapter.prompt`:
  :func:`gagpo.llm.prompts.build_prompt` with the adapter's :class:`~gagpo.llm.prompts.PromptTemplate`);
* the **projection** of the model's text onto a command (:meth:`EnvAdapter.project`:
  :func:`gagpo.llm.parsing.parse_action`, which demands an admissible command, or also accepts the
  free-text commands that ``free_text`` matches — MiniShop's ``search[red cotton shirt]``);
* the **anchor key** of an observation (:meth:`EnvAdapter.anchor_key`: the observation text itself,
  so identical situations share a key);
* the **evaluation splits** that ``eval_splits="auto"`` means (ALFWorld: ``valid_seen, valid_unseen``).

The default adapter (:data:`DEFAULT_ADAPTER`) is the household one the library always used. An
environment declares its own in one of two ways, looked up by :func:`adapter_for` in this order:

1. ``register_adapter(env_id, EnvAdapter(...))`` — from any module, e.g. a notebook's own environment;
2. a class attribute ``ADAPTER`` on the environment: an :class:`EnvAdapter`, or a plain mapping of its
   fields (``template`` a mapping of :class:`~gagpo.llm.prompts.PromptTemplate`'s fields) — what the
   ``toy_envs`` and ALFWorld use, since an environment module imports nothing of ``gagpo``::

       class MiniShopEnv(gym.Env):
           ADAPTER = {"name": "minishop", "free_text": r"search\\[[^\\]]+\\]",
                      "template": {"intro": "You are shopping in a web store. Your instruction: {task}", ...}}

This module imports :mod:`gagpo.llm.prompts` and :mod:`gagpo.llm.parsing` (strings only).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..llm.parsing import ParsedAction, parse_action
from ..llm.prompts import DEFAULT_TEMPLATE, PromptTemplate, build_prompt, extract_task

__all__ = ["EnvAdapter", "DEFAULT_ADAPTER", "register_adapter", "adapter_for", "registered_adapters"]


@dataclass(frozen=True)
class EnvAdapter:
    """What the language-model side needs to know of one environment (plain data; methods are pure).

    Attributes:
        name: a label for logs and tests.
        template: the prompt wording.
        free_text: a regular expression of commands accepted although not in ``info["admissible_actions"]``
            (matched in full against the lower-cased, whitespace-collapsed command); ``""``: none, every
            command must be admissible.
        eval_splits: the held-out splits that ``eval_splits="auto"`` evaluates (each built with
            ``split=<name>``); ``()``: the environment's own ``EVAL_SEEDS``.
    """

    name: str = "household"
    template: PromptTemplate = DEFAULT_TEMPLATE
    free_text: str = ""
    eval_splits: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> EnvAdapter:
        """An adapter from a plain mapping of its fields (``template``: a mapping of the template's fields);
        ``ValueError`` on an unknown field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown adapter field(s) {unknown}; expected some of {sorted(known)}")
        fields = dict(fields)
        if isinstance(fields.get("template"), Mapping):
            fields["template"] = PromptTemplate(**fields["template"])
        if "eval_splits" in fields:
            fields["eval_splits"] = tuple(fields["eval_splits"])
        return cls(**fields)

    def task(self, observation: str, info: Mapping[str, Any]) -> str:
        """The task sentence at reset: ``info["task"]``, else read from the observation ("Your task is to: …")."""
        return info.get("task") or extract_task(observation)

    def prompt(self, task: str, observation: str, admissible: Sequence[str],
               history: Sequence[tuple[str, str]] = (), steps_taken: int | None = None) -> str:
        """The user-message text of one step (:func:`gagpo.llm.prompts.build_prompt` with this template)."""
        return build_prompt(task, observation, admissible, history, steps_taken, self.template)

    def project(self, response: object, admissible: Sequence[str], *, require_think: bool = False, strict: bool = False,
                finished: bool = True) -> ParsedAction:
        """The command a response names (:func:`gagpo.llm.parsing.parse_action`, whose ``require_think``,
        ``strict`` and ``finished`` these are): an admissible one in the environment's spelling, or a
        free-text one that ``free_text`` matches, normalised."""
        return parse_action(response, admissible, require_think=require_think, free_text=self.free_text or None,
                            strict=strict, finished=finished)

    def anchor_key(self, observation: str) -> str:
        """The anchor-state key of an observation (``StepBatch.obs_key``): the text itself."""
        return observation


DEFAULT_ADAPTER = EnvAdapter()
"""The household adapter: the default prompt, admissible commands only, the observation as anchor key, no splits."""

_ADAPTERS: dict[str, EnvAdapter] = {}


def register_adapter(env_id: str, adapter: EnvAdapter) -> EnvAdapter:
    """Declare ``adapter`` for the environment ``env_id`` (replacing any earlier one); returns it."""
    if not isinstance(adapter, EnvAdapter):
        raise TypeError(f"expected an EnvAdapter; got {type(adapter).__name__}")
    _ADAPTERS[env_id] = adapter
    return adapter


def registered_adapters() -> dict[str, EnvAdapter]:
    """A copy of the adapters registered with :func:`register_adapter`, by environment id."""
    return dict(_ADAPTERS)


def adapter_for(env_id: str) -> EnvAdapter:
    """The adapter of ``env_id`` (an alias such as ``household`` too): the registered one, else the
    environment class's ``ADAPTER`` attribute, else :data:`DEFAULT_ADAPTER`. ``ValueError`` for an unknown id."""
    from ..config import ENV_ALIASES, env_creator

    env_id = ENV_ALIASES.get(env_id, env_id)
    if env_id in _ADAPTERS:
        return _ADAPTERS[env_id]
    declared = getattr(env_creator(env_id), "ADAPTER", None)
    if declared is None:
        return DEFAULT_ADAPTER
    if isinstance(declared, EnvAdapter):
        return declared
    if isinstance(declared, Mapping):
        return EnvAdapter.from_mapping(declared)
    raise TypeError(f"{env_id}: ADAPTER must be an EnvAdapter or a mapping of its fields; got {type(declared).__name__}")
