"""Action parsing: the last <action>…</action> names an admissible command, or the action is invalid."""
from __future__ import annotations

import random

import pytest

from gagpo.llm.parsing import REASONS, ParsedAction, normalize_command, parse_action

ADMISSIBLE = ["go to fridge 1", "open drawer 2", "take apple 1 from countertop 1", "look"]


def test_valid_action_returns_the_admissible_spelling():
    out = parse_action("<think>the apple is cold</think> <action>go to fridge 1</action>", ADMISSIBLE)
    assert out == ParsedAction("go to fridge 1", True, "ok")


def test_case_and_whitespace_are_normalised():
    out = parse_action("<action>  Take  APPLE 1\n from countertop 1 </action>", ADMISSIBLE)
    assert out.valid and out.command == "take apple 1 from countertop 1"
    out = parse_action("<ACTION>Look</Action>", ADMISSIBLE)
    assert out.valid and out.command == "look"


@pytest.mark.parametrize("response, reason", [
    ("go to fridge 1", "missing </action>"),                         # no tags at all
    ("<think>hmm</think> go to fridge 1", "missing </action>"),
    ("go to fridge 1</action>", "missing <action>"),                 # opening tag missing
    ("<action>go to fridge 1", "missing </action>"),                 # cut by the length limit
    ("<action>   </action>", "empty action"),
    ("<action>go to fridge 7</action>", "not admissible"),
    ("<action>go to fridge 1.</action>", "not admissible"),          # only case/whitespace are forgiven
    ("<action>go to fridge 1 or open drawer 2</action>", "not admissible"),
])
def test_invalid_responses(response, reason):
    out = parse_action(response, ADMISSIBLE)
    assert not out.valid and out.reason == reason


def test_inadmissible_keeps_the_raw_command_and_missing_tags_give_none():
    assert parse_action("<action> Fly Away </action>", ADMISSIBLE).command == "Fly Away"
    assert parse_action("no tags", ADMISSIBLE).command is None


def test_the_last_action_counts():
    two = "<action>look</action> on second thought <action>open drawer 2</action>"
    assert parse_action(two, ADMISSIBLE).command == "open drawer 2"
    # a valid draft followed by an invalid final answer is invalid
    out = parse_action("<action>look</action> <action>dance</action>", ADMISSIBLE)
    assert not out.valid and out.command == "dance"
    # an unclosed final <action> after a closed one: the closed one is the last complete action
    assert parse_action("<action>look</action> <action>open dr", ADMISSIBLE).command == "look"
    # nested opening tags: the innermost text before the last closing tag
    assert parse_action("<action> x <action>look</action>", ADMISSIBLE).command == "look"


def test_require_think():
    assert parse_action("<action>look</action>", ADMISSIBLE, require_think=True).reason == "missing <think>"
    assert parse_action("<think>ok</think><action>look</action>", ADMISSIBLE, require_think=True).valid
    # the reasoning must come before the action
    assert not parse_action("<action>look</action><think>ok</think>", ADMISSIBLE, require_think=True).valid


@pytest.mark.parametrize("garbage", [None, 3, b"<action>look</action>", ["<action>look</action>"]])
def test_non_strings_are_invalid(garbage):
    out = parse_action(garbage, ADMISSIBLE)
    assert out == ParsedAction(None, False, "not a string")


def test_garbage_never_raises():
    pieces = ["<action>", "</action>", "<think>", "</think>", "<", ">", "/", "look", "go to fridge 1", " ", "\n",
              "\x00", "é", "ß", "İ", "<action", "action>", "</ action >", "{", "}", "\\", "$", "*" * 50]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        out = parse_action(text, ADMISSIBLE)
        assert isinstance(out, ParsedAction) and out.reason in REASONS
        assert out.valid == (out.reason == "ok")
        if out.valid:
            assert out.command in ADMISSIBLE
    assert not parse_action("<action>look</action>", []).valid  # nothing is admissible


def test_normalize_command():
    assert normalize_command("  Go\tto  Fridge 1 ") == "go to fridge 1"


# ---------------------------------------------------------------------- the strict format
ADM_STRICT = ["go to fridge 1", "look", "inventory"]


@pytest.mark.parametrize("response, finished, reason, command", [
    ("<think> i will look </think> <action> look </action>", True, "ok", "look"),
    ("<action> look </action>  \n", True, "ok", "look"),
    # the exploit of chapter 8: safe blocks repeated up to the token limit
    ("<action> look </action> <action> look </action> <action> lo", False, "unfinished", None),
    ("<action> look </action> <action> look </action>", True, "several actions", "look"),
    ("<action> go to fridge 1 </action> <action> look", True, "several actions", "go to fridge 1"),
    ("<action> look </action> and then more", True, "text after the action", "look"),
    ("<action> look </action>", False, "unfinished", None),
    ("<action> </action>", True, "empty action", None),
    ("<action> go to desk 1 </action>", True, "not admissible", "go to desk 1"),
])
def test_strict_format(response, finished, reason, command):
    p = parse_action(response, ADM_STRICT, strict=True, finished=finished)
    assert p.reason == reason and p.command == command and p.valid == (reason == "ok")
    assert p.reason in REASONS


def test_strict_is_off_by_default_and_ignores_finished():
    exploit = "<action> look </action> <action> look </action> <action> look </action>"
    assert parse_action(exploit, ADM_STRICT).valid                        # lenient: the last block counts
    assert parse_action(exploit, ADM_STRICT, finished=False).valid        # finished is read only with strict
    assert not parse_action(exploit, ADM_STRICT, strict=True).valid
