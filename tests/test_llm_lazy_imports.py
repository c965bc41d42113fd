"""``gagpo.llm`` imports its parts lazily: prompt building and action parsing load neither torch nor transformers,
while every public name (and every submodule as an attribute) stays reachable from the package."""
from __future__ import annotations

import subprocess
import sys

import gagpo.llm as llm


def test_prompts_and_parsing_load_no_torch():
    code = ("import sys, gagpo.llm.prompts, gagpo.llm.parsing; from gagpo.llm import build_prompt, parse_action; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_and_submodule_resolves():
    for name in llm.__all__:
        assert getattr(llm, name) is not None, name
    assert llm.train.LMTrainConfig is llm.LMTrainConfig and llm.policy.LMPolicy is llm.LMPolicy
    assert {"LMPolicy", "train", "collect_lm"} <= set(dir(llm))
    try:
        llm.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("an unknown name must raise AttributeError")
