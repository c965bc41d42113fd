"""Packaging: environment.yml agrees with pyproject.toml; the CLI documents every option."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib

import yaml

from gagpo.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    expected = list(project["dependencies"])
    for extra in ("book", "dev"):
        expected += project["optional-dependencies"][extra]
    with open(os.path.join(ROOT, "environment.yml")) as fh:
        env = yaml.safe_load(fh)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pip = [p for p in pip if not p.startswith("-e")]
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))
    # the same requirement strings (a package listed in two extras collapses to one line)
    assert sorted({r.replace(" ", "") for r in pip}) == sorted({r.replace(" ", "") for r in expected})


def test_torch_range_admits_the_cpu_wheel():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    torch_req = next(d for d in deps if _name(d) == "torch")
    from packaging.specifiers import SpecifierSet

    assert "2.13.0" in SpecifierSet(torch_req[len("torch"):])


def test_train_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "gagpo", "train", "--help"], capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in out, flag
        first_words = " ".join(f.metadata["help"].split()[:4])
        assert first_words in flat, (flag, first_words)
    assert "(default: 0.95)" in flat  # defaults are printed


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, ".ci", "run")) as fh:
        ci = fh.read()
    with open(os.path.join(ROOT, "README.md")) as fh:
        readme = fh.read()
    assert "make test" in ci
    # the README opens with the two commands
    head = readme.split("\n## ")[0]
    assert "make run" in head and "make test" in head
