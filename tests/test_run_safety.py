"""Never lose a run (issue 10): a run directory is never overwritten by accident and one process at a time
trains there; every file is replaced atomically and a crash, a full disk or a damaged file ends in an error
that names the file and the fix; every option is validated at parse time and in the config dataclasses from
one table of constraints; one seed gives one run."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import shutil
import subprocess
import sys
import typing

import pytest
import torch

from gagpo.__main__ import build_parser, main
from gagpo.config import ConfigError, TrainConfig, add_dataclass_arguments
from gagpo.rundir import RunDirError, RunLock, atomic_write, read_jsonl
from gagpo.trainer import Trainer, train

TOY = ["--env", "toy_envs/OpenGrid-v0", "--env-kwargs", '{"size": 4}', "--algo", "grpo", "--tasks-per-iter", "2",
       "--group-size", "2", "--eval-every", "0", "--checkpoint-every", "1", "--no-progress"]


def toy(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(env="toy_envs/OpenGrid-v0", env_kwargs={"size": 4}, algo="grpo", iterations=2, tasks_per_iter=2,
                group_size=2, eval_every=0, checkpoint_every=1, progress=False, out_dir=str(tmp_path / name))
    base.update(kw)
    return TrainConfig(**base)


def rows(run_dir) -> list[dict]:
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"))


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------------- 1. a run directory is never overwritten
def test_a_new_run_refuses_a_directory_that_holds_a_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TOY, "--iterations", "3", "--out-dir", out]) == 0
    capsys.readouterr()
    before = open(os.path.join(out, "metrics.jsonl")).read()
    assert main(["train", *TOY, "--iterations", "1", "--out-dir", out]) == 1  # no --resume: refused
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert open(os.path.join(out, "metrics.jsonl")).read() == before  # untouched
    assert main(["train", *TOY, "--iterations", "4", "--resume", "--out-dir", out]) == 0  # continued
    assert [r["iteration"] for r in rows(out)] == [1, 2, 3, 4]
    assert main(["train", *TOY, "--iterations", "1", "--overwrite", "--out-dir", out]) == 0  # replaced
    assert [r["iteration"] for r in rows(out)] == [1]
    assert not os.path.exists(os.path.join(out, "run.lock"))
    with pytest.raises(RunDirError, match="--overwrite"):  # the library refuses too, before building anything
        train(toy(tmp_path))
    with pytest.raises(ConfigError, match="exclude each other"):
        toy(tmp_path, resume=True, overwrite=True)


def test_resume_without_a_checkpoint_does_not_restart_over_the_metrics(tmp_path):
    cfg = toy(tmp_path)
    train(cfg)
    os.remove(os.path.join(cfg.out_dir, "checkpoint.pt"))
    with pytest.raises(RunDirError, match="no checkpoint to resume from.*--overwrite"):
        train(dataclasses.replace(cfg, resume=True, iterations=3))
    assert len(rows(cfg.out_dir)) == 2


def test_a_language_model_run_refuses_before_loading_the_model(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    import gagpo.llm.train as lm

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"iteration": 1}\n')
    monkeypatch.setattr(lm, "LMTrainer", lambda *a, **k: pytest.fail("built the trainer"))
    assert main(["train", "--model", "tiny", "--device", "cpu", "--no-progress", "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err


LOCK_HOLDER = "import sys, time; from gagpo.rundir import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)"


def test_a_second_process_refuses_at_once_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", *TOY, "--iterations", "1", "--out-dir", out]) == 1
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err and "another --out-dir" in err
        with pytest.raises(RunDirError, match="in use"):
            Trainer(toy(tmp_path)).train()
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(os.path.join(out, "run.lock"))  # left behind by the killed process: stale
    assert main(["train", *TOY, "--iterations", "1", "--out-dir", out]) == 0
    assert not os.path.exists(os.path.join(out, "run.lock"))


def test_a_waiting_harness_gets_the_lock_when_the_holder_ends(tmp_path):
    """gagpo.credit's way: wait for the other process instead of refusing."""
    out = str(tmp_path / "run")
    script = LOCK_HOLDER.replace("time.sleep(120)", "time.sleep(1)")
    holder = subprocess.Popen([sys.executable, "-c", script, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = RunLock(out)
        assert not lock.acquire()
        assert lock.acquire(wait=True, poll_s=0.05)
        assert holder.poll() is not None  # only once the holder had ended
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_in_one_process_and_released_when_the_run_fails(tmp_path, monkeypatch):
    cfg = toy(tmp_path)
    with RunLock(cfg.out_dir):  # a harness (gagpo.credit) holds the lock around the run
        train(cfg)
        assert os.path.exists(os.path.join(cfg.out_dir, "run.lock"))
    assert not os.path.exists(os.path.join(cfg.out_dir, "run.lock"))

    def boom(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "step", boom)
    trainer = Trainer(toy(tmp_path, "other"))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    lock = RunLock(trainer.run_dir)
    assert lock.acquire()  # free again
    lock.release()


# ---------------------------------------------------------------------- 2. atomic files, crashes, full disks, damage
def test_atomic_write_leaves_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.jsonl")
    with atomic_write(path) as fh:
        fh.write("old\n")
    with pytest.raises(ValueError):
        with atomic_write(path) as fh:
            fh.write("half a")
            raise ValueError("crash while writing")
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(RunDirError, match=r"could not write .*metrics.jsonl: no space left.*--resume") as exc:
        with atomic_write(path) as fh:
            fh.write("new\n")
    assert exc.value.errno == errno.ENOSPC
    assert open(path).read() == "old\n" and os.listdir(tmp_path) == ["metrics.jsonl"]


def test_metric_files_of_a_run_are_replaced_atomically(tmp_path, monkeypatch):
    cfg = toy(tmp_path)
    trainer = Trainer(cfg)
    trainer.train()
    before = {name: open(os.path.join(cfg.out_dir, name)).read() for name in ("metrics.jsonl", "metrics.csv", "config.json")}
    trainer.history.append({"iteration": 3})
    monkeypatch.setattr(os, "fsync", enospc)  # the disk fills up
    with pytest.raises(RunDirError, match="no space left"):
        trainer.write_metrics()
    assert {name: open(os.path.join(cfg.out_dir, name)).read() for name in before} == before
    assert not [n for n in os.listdir(cfg.out_dir) if n.endswith(".tmp")]


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def save_then_fill_up(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: the disk is full half-way
            f.write(b"partial")
            enospc()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fill_up)
    out = str(tmp_path / "run")
    assert main(["train", *TOY, "--iterations", "3", "--out-dir", out]) == 1
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "no space left" in err and "--resume" in err
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "metrics.csv", "metrics.jsonl"]  # no .tmp, no lock
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", *TOY, "--iterations", "3", "--resume", "--out-dir", out]) == 0  # space freed: resume
    assert [r["iteration"] for r in rows(out)] == [1, 2, 3]


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_a_read_only_directory_is_refused_before_any_work(tmp_path, monkeypatch, capsys, how):
    out = tmp_path / "run"
    out.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        out.chmod(0o555)
    else:
        real_open = os.open

        def read_only(path, flags, *args, **kwargs):
            if str(path).startswith(str(out)) and flags & os.O_CREAT:
                raise OSError(errno.EROFS, "Read-only file system", path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(Trainer, "step", lambda self: pytest.fail("trained in a read-only directory"))
    try:
        assert main(["train", *TOY, "--iterations", "1", "--out-dir", str(out)]) == 1
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert str(out) in err and "read-only" in err and "--out-dir" in err


def test_a_damaged_toy_checkpoint_names_the_file_and_the_fix(tmp_path):
    cfg = toy(tmp_path)
    train(cfg)
    path = os.path.join(cfg.out_dir, "checkpoint.pt")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(RunDirError, match=r"checkpoint\.pt cannot be read.*--overwrite"):
        train(dataclasses.replace(cfg, resume=True, iterations=3))


def test_a_truncated_metrics_file_drops_its_cut_line_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"itera')
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped line 3, cut short"):
        assert read_jsonl(str(path)) == [{"iteration": 1}, {"iteration": 2}]
    path.write_text('{"iteration": 1}\n{"itera\n{"iteration": 3}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl, line 2, is damaged"):
        read_jsonl(str(path))


# the language-model trainer's checkpoint folder
@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """One iteration of the tiny language model, checkpointed; tests copy the folder."""
    pytest.importorskip("transformers")
    from .test_llm_train import small

    cfg = small(tmp_path_factory.mktemp("lm"), iterations=1, eval_every=0, kl_coef=0.0)
    from gagpo.llm.train import train_lm

    train_lm(cfg)
    return cfg


def lm_copy(lm_run, tmp_path, **kw):
    out = tmp_path / "run"
    shutil.copytree(lm_run.out_dir, out)
    return dataclasses.replace(lm_run, out_dir=str(out), **kw)


def test_an_interrupted_lm_checkpoint_swap_resumes_from_checkpoint_old(lm_run, tmp_path):
    from gagpo.llm.train import LMTrainer

    cfg = lm_copy(lm_run, tmp_path, resume=True, iterations=2)
    ckpt = os.path.join(cfg.out_dir, "checkpoint")
    os.replace(ckpt, ckpt + ".old")  # the crash between "checkpoint -> .old" and "checkpoint.tmp -> checkpoint"
    trainer = LMTrainer(cfg)
    with pytest.warns(UserWarning, match="resuming from the previous checkpoint"):
        assert trainer.load_checkpoint() and trainer.iteration == 1
    assert os.path.isdir(ckpt) and not os.path.exists(ckpt + ".old")
    trainer.close()


@pytest.mark.parametrize("name", ["trainer_state.json", "model.safetensors", "optimizer.pt"])
def test_a_damaged_lm_checkpoint_file_is_named(lm_run, tmp_path, name):
    from gagpo.llm.train import LMTrainer

    cfg = lm_copy(lm_run, tmp_path, resume=True, iterations=2)
    path = os.path.join(cfg.out_dir, "checkpoint", name)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    trainer = LMTrainer(cfg)
    try:
        with pytest.raises(RunDirError, match=rf"{name} cannot be read.*--overwrite"):
            trainer.load_checkpoint()
    finally:
        trainer.close()


def test_a_full_disk_while_saving_an_lm_checkpoint_keeps_the_last_one(lm_run, tmp_path, monkeypatch):
    from gagpo.llm.train import LMTrainer

    cfg = lm_copy(lm_run, tmp_path, resume=True, iterations=2)
    trainer = LMTrainer(cfg)
    assert trainer.load_checkpoint()
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (f.write(b"partial"), enospc()))
    with pytest.raises(RunDirError, match=r"optimizer\.pt: no space left"):
        trainer.save_checkpoint()
    trainer.close()
    assert sorted(n for n in os.listdir(cfg.out_dir) if n.startswith("checkpoint")) == ["checkpoint"]
    state = json.load(open(os.path.join(cfg.out_dir, "checkpoint", "trainer_state.json")))
    assert state["iteration"] == 1


# ---------------------------------------------------------------------- 3. every option validated, one table
TOY_BAD = [
    (["--env", "toy_envs/Nowhere-v0"], "--env", "unknown environment"),
    (["--env-kwargs", '{"size": 1}'], "--env-kwargs", "size"),  # the environment refuses the value
    (["--env-kwargs", '{"bogus": 1}'], "--env-kwargs", "takes no keyword ['bogus']"),
    (["--env-kwargs", "[1]"], "--env-kwargs", "JSON object"),
    (["--env-kwargs", "{size: 4}"], "--env-kwargs", "JSON object"),
    (["--seed", "-1"], "--seed", "must be >= 0"),
    (["--lr", "-1"], "--lr", "must be > 0"),
    (["--lr", "nan"], "--lr", "finite"),
    (["--step-weight", "nan"], "--step-weight", "finite"),
    (["--adv-eps", "-1"], "--adv-eps", "must be > 0"),
    (["--adv-eps", "nan"], "--adv-eps", "finite"),
    (["--checkpoint-every", "-3"], "--checkpoint-every", "must be >= 0"),
    (["--hidden", "0"], "--hidden", "must be >= 1"),
    (["--max-grad-norm", "nan"], "--max-grad-norm", "finite"),
    (["--iterations", "2.5"], "--iterations", "an integer"),
    (["--eval-episodes", "100000"], "--eval-episodes", "at most 100"),
    (["--resume", "--overwrite"], "--overwrite", "exclude each other"),
]
LM_BAD = [
    (["--kl-coef", "nan"], "--kl-coef", "finite"),
    (["--invalid-penalty", "nan"], "--invalid-penalty", "finite"),
    (["--lora-alpha", "-5"], "--lora-alpha", "must be > 0"),
    (["--lr", "-1"], "--lr", "must be > 0"),
    (["--top-p", "1.5"], "--top-p", "(0, 1]"),
    (["--dtype", "float16", "--device", "cpu"], "--dtype", "float16 on a CPU"),
    (["--device", "tpu:7"], "--device", "unknown device"),
    (["--env", "alfworld", "--eval-splits", "a,a"], "--eval-splits", "distinct"),
    (["--eval-episodes", "100000"], "--eval-episodes", "at most 100"),
]


def assert_parse_error(argv, flag, text, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert f"error: argument {flag}: " in err and text in err, err


@pytest.mark.parametrize("argv,flag,text", TOY_BAD, ids=[" ".join(a) for a, _, _ in TOY_BAD])
def test_the_cli_refuses_bad_toy_options_at_parse_time(argv, flag, text, capsys, monkeypatch):
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("built a trainer"))
    assert_parse_error(["train", *TOY, *argv], flag, text, capsys)


@pytest.mark.parametrize("argv,flag,text", LM_BAD, ids=[" ".join(a) for a, _, _ in LM_BAD])
def test_the_cli_refuses_bad_lm_options_at_parse_time(argv, flag, text, capsys):
    pytest.importorskip("transformers")
    assert_parse_error(["train", "--model", "tiny", "--no-progress", *argv], flag, text, capsys)


def test_cuda_without_cuda_is_refused(capsys):
    pytest.importorskip("transformers")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_parse_error(["train", "--model", "tiny", "--device", "cuda"], "--device", "CUDA is not available", capsys)


def config_classes():
    classes = [(TrainConfig, build_parser().train_parser)]
    try:
        from gagpo.__main__ import build_lm_parser
        from gagpo.llm.train import LMTrainConfig
    except ImportError:
        return classes
    return classes + [(LMTrainConfig, build_lm_parser())]


def out_of_range(meta, kind):
    """One value just outside each bound of a field's constraints."""
    step = 1 if kind is int else 1e-3
    out = []
    if "ge" in meta:
        out.append(meta["ge"] - step)
    if "gt" in meta:
        out.append(meta["gt"])
    if "le" in meta:
        out.append(meta["le"] + step)
    if "lt" in meta:
        out.append(meta["lt"])
    return [kind(v) for v in out]


def test_one_table_of_constraints_serves_the_cli_and_the_dataclasses(capsys):
    """For every numeric field of both configs: a value outside its bounds, and NaN for a float, is refused by
    the dataclass (ConfigError naming the field) and by the parser (exit 2 naming --field)."""
    checked = 0
    for cls, parser in config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if kind not in (int, float):
                continue
            bad = out_of_range(f.metadata, kind) + ([math.nan, math.inf] if kind is float else [])
            assert bad, f"{cls.__name__}.{f.name} has no constraint"
            for value in bad:
                with pytest.raises(ConfigError) as exc:
                    cls(**{f.name: value})
                assert exc.value.field == f.name and f.name in str(exc.value)
                with pytest.raises(SystemExit):
                    parser.parse_args([f"--{f.name.replace('_', '-')}", str(value)])
                assert f"argument --{f.name.replace('_', '-')}" in capsys.readouterr().err
                checked += 1
    assert checked > 60


def test_parsed_defaults_build_the_default_config():
    for cls, parser in config_classes():
        args = parser.parse_args([])
        assert cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}) == cls()
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, TrainConfig)
    assert p.parse_args(["--env", "keydoor"]).env == "keydoor" and TrainConfig(env="keydoor").env == "toy_envs/KeyDoor-v0"


# ---------------------------------------------------------------------- 4. one seed, one run
def test_two_lora_runs_with_one_seed_are_identical(tmp_path):
    pytest.importorskip("peft")
    from gagpo.llm.train import LMTrainer

    from .test_llm_train import small

    def run(name, seed=0):
        trainer = LMTrainer(small(tmp_path, name, lora_r=4, lora_alpha=8, lora_lr=1e-2, iterations=1, eval_every=0,
                                  kl_coef=0.0, seed=seed))
        init = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if "lora_" in n}
        (row,) = trainer.train()
        return row["grad_norm"], init, {n: p.detach() for n, p in trainer.policy.model.named_parameters() if "lora_" in n}

    g1, init1, w1 = run("a")
    torch.rand(100)  # whatever happened to torch's global random state in between
    g2, init2, w2 = run("b")
    assert g1 == g2
    for n in w1:
        torch.testing.assert_close(init1[n], init2[n], atol=0, rtol=0)
        torch.testing.assert_close(w1[n], w2[n], atol=0, rtol=0)
    _, init3, _ = run("c", seed=1)
    assert any(not torch.equal(init1[n], init3[n]) for n in init1)


def test_the_value_head_draws_no_random_number():
    pytest.importorskip("transformers")
    from gagpo.llm.value import ValueHead

    state = torch.get_rng_state()
    head = ValueHead(16)
    assert torch.equal(torch.get_rng_state(), state)
    assert not head.linear.weight.detach().any() and not head.linear.bias.detach().any()
