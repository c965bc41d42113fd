"""Action parsing: from a model's free-text response to one admissible environment command.

The model is asked to reason inside ``<think>…</think>`` and to answer inside ``<action>…</action>``
(see :mod:`gagpo.llm.prompts`). :func:`parse_action` turns its response into a
:class:`ParsedAction`; it never raises on model output, whatever the model wrote. The rule, in order:

1. the response must contain a closing ``</action>``; the *last* one counts, together with the last
   ``<action>`` before it (so a model that drafts several actions is judged by its final answer);
2. the text between them, lower-cased with runs of whitespace collapsed to one space, must equal
   one admissible command normalised the same way; the command returned is the admissible string
   itself (its canonical spelling), so the environment receives exactly what it listed;
3. optionally (``require_think=True``) the response must also hold a ``<think>…</think>`` pair
   before the action;
4. optionally (``strict=True``, the *strict format*) the response must hold exactly one
   ``<action>…</action>`` block, nothing but whitespace after it, and must have ended by itself
   (``finished``: the end-of-sequence token, not the length limit). The lenient rule 1 lets a model
   that repeats ``<action> look </action>`` up to the token limit stay valid whatever it writes
   last — a loophole a policy finds (chapter 8); the strict rule closes it.

An environment with free-text commands (MiniShop's ``search[red cotton shirt]``) passes a pattern as
``free_text``: a command that is not admissible but matches the pattern as a whole (after the same
normalisation) is valid too, and is returned normalised. Its environment adapter
(:mod:`gagpo.envs.adapter`) holds that pattern.

Anything else is *invalid*: the rollout penalises it and sends the environment a no-op.
This module knows strings only: no tokenizer, no environment, no model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["ParsedAction", "parse_action", "normalize_command", "REASONS"]

_OPEN = re.compile(r"<\s*action\s*>", re.IGNORECASE)
_CLOSE = re.compile(r"<\s*/\s*action\s*>", re.IGNORECASE)
_THINK = re.compile(r"<\s*think\s*>.*?<\s*/\s*think\s*>", re.IGNORECASE | re.DOTALL)

REASONS = ("ok", "not a string", "missing </action>", "missing <action>", "empty action", "missing <think>",
           "not admissible", "unfinished", "several actions", "text after the action")
"""Every ``ParsedAction.reason`` :func:`parse_action` can return."""


@dataclass(frozen=True)
class ParsedAction:
    """The outcome of parsing one response.

    Attributes:
        command: the admissible command in the environment's own spelling when ``valid``; the raw
            text found between the tags (stripped) when the tags were there but the text is not
            admissible; ``None`` when no action could be extracted at all.
        valid: the response names exactly one admissible command in the expected format.
        reason: ``"ok"`` or why the response is invalid (one of :data:`REASONS`).
    """

    command: str | None
    valid: bool
    reason: str


def normalize_command(text: str) -> str:
    """Lower-case and collapse whitespace: ``"  Go to  Fridge 1 "`` → ``"go to fridge 1"``."""
    return " ".join(text.lower().split())


def parse_action(response: object, admissible: Sequence[str], *, require_think: bool = False,
                 free_text: str | re.Pattern | None = None, strict: bool = False, finished: bool = True) -> ParsedAction:
    """Extract the last ``<action>…</action>`` of ``response`` and match it against ``admissible``.

    Args:
        response: the model's decoded response (anything: a non-string is reported as invalid).
        admissible: the commands the environment accepts in the current state.
        require_think: also demand a ``<think>…</think>`` pair before the action.
        free_text: a regular expression (or ``None``: none); a command outside ``admissible`` that it
            matches in full (``re.fullmatch`` on the normalised command) is valid and returned
            normalised, e.g. ``r"search\\[[^\\]]+\\]"`` accepts ``"Search[ red  shoes]"`` as
            ``"search[ red shoes]"``.
        strict: the strict format: exactly one ``<action>`` and one ``</action>``, nothing but
            whitespace after ``</action>``, and a response that ended by itself (reasons
            ``"unfinished"``, ``"several actions"``, ``"text after the action"``).
        finished: whether the response ended with the end-of-sequence token (``False``: cut by the
            length limit); read only with ``strict``.

    Returns:
        A :class:`ParsedAction`. Examples::

            parse_action("<think>hungry</think><action>Take Apple 1 from table 1</action>",
                         ["take apple 1 from table 1"])
            # ParsedAction(command='take apple 1 from table 1', valid=True, reason='ok')
            parse_action("go to desk 1", ["go to desk 1"])
            # ParsedAction(command=None, valid=False, reason='missing </action>')
    """
    if not isinstance(response, str):
        return ParsedAction(None, False, "not a string")
    if strict and not finished:
        return ParsedAction(None, False, "unfinished")
    closes = list(_CLOSE.finditer(response))
    if not closes:
        return ParsedAction(None, False, "missing </action>")
    end = closes[-1]
    opens = [m for m in _OPEN.finditer(response, 0, end.start())]
    if not opens:
        return ParsedAction(None, False, "missing <action>")
    start = opens[-1]
    raw = response[start.end():end.start()].strip()
    if strict and (len(closes) > 1 or len(_OPEN.findall(response)) > 1):
        return ParsedAction(raw or None, False, "several actions")
    if strict and response[end.end():].strip():
        return ParsedAction(raw or None, False, "text after the action")
    if not raw:
        return ParsedAction(None, False, "empty action")
    if require_think and not _THINK.search(response, 0, start.start()):
        return ParsedAction(raw, False, "missing <think>")
    wanted = normalize_command(raw)
    for command in admissible:
        if isinstance(command, str) and normalize_command(command) == wanted:
            return ParsedAction(command, True, "ok")
    if free_text is not None and re.fullmatch(free_text, wanted):
        return ParsedAction(wanted, True, "ok")
    return ParsedAction(raw, False, "not admissible")
