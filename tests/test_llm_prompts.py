"""Step prompts: task, current observation, the last K (observation, action) pairs, admissible actions, format."""
from __future__ import annotations

import pytest

from gagpo.llm.prompts import DEFAULT_TEMPLATE, PromptTemplate, build_prompt, extract_task, render_prompt

TASK = "put a cool apple in countertop 1."
OBS = "You are at fridge 1. The fridge 1 is open. In it, you see a apple 1."
ADMISSIBLE = ["close fridge 1", "take apple 1 from fridge 1", "go to countertop 1"]
HISTORY = [("You are in the middle of a room.", "go to fridge 1"), ("You are at fridge 1.", "open fridge 1")]


def test_prompt_contains_task_observation_history_and_admissible_actions():
    text = build_prompt(TASK, OBS, ADMISSIBLE, HISTORY, steps_taken=5)
    assert TASK in text and OBS in text
    for obs, act in HISTORY:
        assert obs in text and act in text
    lines = text.splitlines()
    for a in ADMISSIBLE:
        assert f"- {a}" in lines
    # the shown pairs are the last two of five steps: numbered 4 and 5; the current step is 6
    assert "Observation 4: You are in the middle of a room." in lines
    assert "Action 5: open fridge 1" in lines
    assert "step 6" in text and "5 step(s)" in text
    assert "<think>" in text and "</think>" in text and "<action>" in text and "</action>" in text
    # order: task, history, current observation, admissible list, instruction
    positions = [text.index(s) for s in (TASK, HISTORY[0][0], OBS, ADMISSIBLE[0], "<action>")]
    assert positions == sorted(positions)


def test_first_step_and_no_history_shown():
    first = build_prompt(TASK, OBS, ADMISSIBLE)
    assert DEFAULT_TEMPLATE.first_step in first and "Observation 1:" not in first
    later = build_prompt(TASK, OBS, ADMISSIBLE, history=(), steps_taken=3)
    assert "3 step(s)" in later and "Observation" not in later.split("observe:")[0]
    with pytest.raises(ValueError, match="steps_taken"):
        build_prompt(TASK, OBS, ADMISSIBLE, HISTORY, steps_taken=1)


def test_same_arguments_same_text_and_templates_swap_wording():
    assert build_prompt(TASK, OBS, ADMISSIBLE, HISTORY) == build_prompt(TASK, OBS, ADMISSIBLE, list(HISTORY))
    custom = PromptTemplate(intro="GOAL: {task}", admissible_item="* {action}")
    text = build_prompt(TASK, OBS, ADMISSIBLE, template=custom)
    assert text.startswith("GOAL: " + TASK) and "* go to countertop 1" in text.splitlines()


def test_extract_task():
    obs = "Your task is to: put a hot egg in diningtable 1.\nYou are in the middle of a room."
    assert extract_task(obs) == "put a hot egg in diningtable 1."
    assert extract_task("no task here") == ""


class _ChatTokenizer:
    chat_template = "dummy"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


class _PlainTokenizer:
    chat_template = None


def test_render_prompt_uses_the_chat_template_when_there_is_one():
    assert render_prompt(_ChatTokenizer(), "hi") == "[user]hi[assistant]"
    assert render_prompt(_ChatTokenizer(), "hi", system="be brief") == "[system]be brief[user]hi[assistant]"
    assert render_prompt(_PlainTokenizer(), "hi") == "hi\n"
