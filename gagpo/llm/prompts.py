"""Prompt templates: what the language model reads before each action.

One step's prompt holds four things (the layout of GiGPO's public ALFWorld setup, in our own words):

* the **task** ("put a cool apple in countertop 1.");
* the **history**: the last ``K`` (observation, action) pairs of the episode, oldest first, and how
  many steps were taken in all — the model sees no more of the past than this;
* the **current observation**;
* the **admissible actions**, one per line,

followed by the answer format: reason inside ``<think>…</think>``, then name one admissible action
inside ``<action>…</action>`` (:mod:`gagpo.llm.parsing` reads it back). The text is wrapped as one
user message; :func:`render_prompt` applies the tokenizer's chat template when it has one.

Templates are plain data (:class:`PromptTemplate`): a chapter or an environment can swap the wording
without touching the rollout, the parser or the environment.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["PromptTemplate", "DEFAULT_TEMPLATE", "build_prompt", "build_messages", "render_prompt", "extract_task"]

_TASK = re.compile(r"your task is to:\s*(.+)", re.IGNORECASE)


@dataclass(frozen=True)
class PromptTemplate:
    """The wording of a step prompt; fields are ``str.format`` templates.

    Fields and their placeholders:
        intro: ``{task}`` — who the agent is and what it must do.
        first_step: shown instead of the history at step 0.
        steps_only: ``{steps}`` — shown after step 0 when no pair is shown (``K = 0``).
        history_header: ``{steps}`` (steps taken so far), ``{shown}`` (pairs shown below).
        history_item: ``{index}`` (1-based step number), ``{observation}``, ``{action}``.
        current: ``{index}`` (1-based number of the step to take), ``{observation}``.
        admissible_header: introduces the list of admissible actions.
        admissible_item: ``{action}``, one line each.
        instruction: the answer format (``<think>…</think>`` then ``<action>…</action>``).
    """

    intro: str = "You are an agent acting in a text-based household. Your task is to: {task}"
    first_step: str = "This is your first step."
    steps_only: str = "You have taken {steps} step(s) so far."
    history_header: str = "You have taken {steps} step(s) so far. The last {shown}, oldest first:"
    history_item: str = "Observation {index}: {observation}\nAction {index}: {action}"
    current: str = "Now, at step {index}, you observe: {observation}"
    admissible_header: str = "The admissible actions are:"
    admissible_item: str = "- {action}"
    instruction: str = (
        "First think about what to do next, step by step, inside <think> </think>. "
        "Then write exactly one admissible action, copied from the list, inside <action> </action>."
    )


DEFAULT_TEMPLATE = PromptTemplate()


def extract_task(observation: str) -> str:
    """The task sentence of an ALFWorld-style observation ("Your task is to: …"), else ``""``."""
    match = _TASK.search(observation or "")
    return match.group(1).splitlines()[0].strip() if match else ""


def build_prompt(
    task: str,
    observation: str,
    admissible: Sequence[str],
    history: Sequence[tuple[str, str]] = (),
    steps_taken: int | None = None,
    template: PromptTemplate = DEFAULT_TEMPLATE,
) -> str:
    """The user-message text of one step.

    Args:
        task: the task sentence (see :func:`extract_task` for environments that only put it in the
            observation).
        observation: the current observation.
        admissible: the commands the environment accepts now, listed in this order.
        history: the (observation, action) pairs to show, oldest first — the caller keeps the last
            ``K`` (``history[-K:]``); ``()`` shows none.
        steps_taken: steps already taken in the episode (``≥ len(history)``); ``None`` means
            ``len(history)``. It numbers the shown pairs and the current step.
        template: the wording.

    Returns:
        The text; the same arguments always give the same text (anchor states rely on the
        observation, not on the prompt, but reproducibility relies on this).
    """
    steps = len(history) if steps_taken is None else int(steps_taken)
    if steps < len(history):
        raise ValueError(f"steps_taken={steps} is smaller than the {len(history)} history pairs shown")
    parts = [template.intro.format(task=task.strip())]
    if steps == 0:
        parts.append(template.first_step)
    elif history:
        parts.append(template.history_header.format(steps=steps, shown=len(history)))
        first = steps - len(history) + 1
        parts += [template.history_item.format(index=first + j, observation=o.strip(), action=a.strip())
                  for j, (o, a) in enumerate(history)]
    else:
        parts.append(template.steps_only.format(steps=steps))
    parts.append(template.current.format(index=steps + 1, observation=observation.strip()))
    parts.append(template.admissible_header)
    parts += [template.admissible_item.format(action=a) for a in admissible]
    parts.append(template.instruction)
    return "\n".join(parts)


def build_messages(user_text: str, system: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one step: an optional system message, then the user message."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user_text}]


def render_prompt(tokenizer: Any, user_text: str, system: str | None = None) -> str:
    """The exact prompt string the model continues.

    With a chat template: ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``
    as text (the template then holds any BOS token, so encode it with ``add_special_tokens=False``).
    Without one: the user text and a newline.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(build_messages(user_text, system), add_generation_prompt=True,
                                             tokenize=False)
    return (f"{system}\n\n" if system else "") + user_text + "\n"
