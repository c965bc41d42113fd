"""Data-parallel training (gagpo.distributed) on CPUs: two processes talking through gloo.

The runs are launched the way a user launches them — ``accelerate launch`` with the committed configuration
(``gagpo/configs/accelerate_multi_gpu.yaml``; on a machine without a visible GPU it starts CPU processes
through torchrun) and ``torchrun`` — and must be *one* run: one metrics file with one row per iteration and
``world_size`` 2, one checkpoint, one summary line. The test hook ``$GAGPO_DUMP_ITERATIONS`` makes every
process write its rollout, targets, update diagnostics, weights and gradients of each iteration
(:meth:`gagpo.runloop.RunLoop.dump_iteration`); from those the tests check that

* the two processes hold identical weights after every update (bit for bit), and
* the first iteration is the one a single process computes on the union of both processes' groups: the
  same advantages (PPO's batch-wide normalisation and REINFORCE's batch baseline included), the same loss
  and gradients, the same weights after the update (float tolerance: the sums run in another order).

Plus, in one process: the seam's functions are identities, the per-process arithmetic of sharding and
seeds, the clear errors (``tasks_per_iter`` not a multiple of the processes, FSDP outside the LM trainer —
``sft`` included —, an SFT batch smaller than the processes), and that every estimator declared
``group_local`` really is.

Behaviour cloning (``python -m gagpo sft``) on two processes: each takes its share of every batch, and its
first step is the one-process step on the whole batch (the same loss, gradients and weights).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import gagpo.distributed as dist
from gagpo.batch import COLUMNS, StepBatch
from gagpo.config import ConfigError, TrainConfig
from gagpo.registry import compute_advantages, estimator_names, get_estimator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATE = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")

#: toy KeyDoor runs small enough for a few seconds; one minibatch and one epoch, so that the update of two
#: processes is the full-batch update of one process on the union of their groups
TOY_ARGS = ["train", "--env", "keydoor", "--env-kwargs", '{"size": 5, "min_solution_length": 3, "max_solution_length": 6}',
            "--max-steps", "20", "--tasks-per-iter", "4", "--group-size", "4", "--minibatches", "1", "--update-epochs", "1",
            "--value-epochs", "2", "--eval-every", "2", "--eval-episodes", "4", "--threads", "1", "--no-progress"]
LM_ARGS = ["train", "--model", "tiny", "--tasks-per-iter", "2", "--group-size", "2", "--max-steps", "3",
           "--max-new-tokens", "16", "--minibatch-size", "256", "--micro-batch-size", "4", "--eval-every", "2",
           "--eval-episodes", "2", "--device", "cpu", "--threads", "1", "--no-progress"]
#: behaviour cloning of the tiny model: 6 pairs per step (3 per process, micro-batches of 2), no clipping, so
#: that the gradients compared below are the raw ones
SFT_ARGS = ["sft", "--model", "tiny", "--env-kwargs", '{"level": 1}', "--batch-size", "6", "--micro-batch-size", "2",
            "--n-train-tasks", "6", "--max-steps", "3", "--max-new-tokens", "8", "--eval-every", "2", "--eval-episodes",
            "2", "--history", "0", "--lr", "1e-4", "--max-grad-norm", "0", "--device", "cpu",
            "--no-gradient-checkpointing", "--threads", "1", "--no-progress"]


# ---------------------------------------------------------------------- launching
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], dump: str | None = None, processes: int = 2, launcher: str = "accelerate",
           timeout: int = 150, config: str = dist.ACCELERATE_CONFIG, env_extra: dict | None = None
           ) -> subprocess.CompletedProcess:
    """``python -m gagpo <args>`` on ``processes`` CPU processes (1: plain python), run from the repository root;
    ``config``: accelerate's configuration file; ``env_extra``: more environment variables."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for var in [v for v in env if v.startswith(("ACCELERATE_", "FSDP_"))]:
        env.pop(var)
    env.update(env_extra or {})
    env.pop(dist.TIMEOUT_ENV, None)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if dump:
        env["GAGPO_DUMP_ITERATIONS"] = dump
    if processes == 1:
        cmd = [sys.executable, "-m", "gagpo", *args]
    elif launcher == "accelerate":
        if ACCELERATE is None:
            pytest.skip("accelerate is not installed (pip install accelerate)")
        cmd = [ACCELERATE, "launch", "--config_file", config, "--num_processes", str(processes),
               "--main_process_port", str(free_port()), "-m", "gagpo", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "gagpo", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_dumps(folder: str, iteration: int, processes: int = 2) -> list[dict]:
    return [torch.load(os.path.join(folder, f"rank{r}-iteration{iteration}.pt"), weights_only=False) for r in range(processes)]


def union_rollout(dumps: list[dict]):
    """One rollout holding every process's rows, with the ids of a one-process run (each process's shard
    offsets): what a single process would have collected, had it drawn the same samples."""
    parts = [d["rollout"] for d in dumps]
    batches = []
    for d, r in zip(dumps, parts):
        cols = {c: getattr(r.batch, c) for c in COLUMNS}
        cols["group_id"] = cols["group_id"] + d["shard"].first_group
        cols["traj_id"] = cols["traj_id"] + d["shard"].first_traj
        batches.append(StepBatch(**cols))
    fields = {"batch": StepBatch.concat(batches)}
    for f in dataclasses.fields(type(parts[0])):
        if f.name == "batch":
            continue
        values = [getattr(p, f.name) for p in parts]
        if isinstance(values[0], (int, float)):
            fields[f.name] = sum(values)
        elif isinstance(values[0], np.ndarray):
            fields[f.name] = np.concatenate(values)
        else:  # per-row or per-trajectory lists, in rank order (trajectories: local ids + the shard's offset)
            fields[f.name] = [v for part in values for v in part]
    return type(parts[0])(**fields)


def assert_same_weights_on_every_process(dumps: list[dict]) -> None:
    first = dumps[0]["weights"]
    assert first
    for d in dumps[1:]:
        assert d["weights"].keys() == first.keys()
        for name, w in first.items():
            assert torch.equal(d["weights"][name], w), f"{name} differs between process 0 and process {d['rank']}"


def assert_close_tensors(got: dict, expected: dict, rtol: float, atol: float, what: str) -> None:
    assert got.keys() == expected.keys(), what
    for name, e in expected.items():
        torch.testing.assert_close(got[name], e, rtol=rtol, atol=atol, msg=lambda m: f"{what} {name}: {m}")


def replay_lm_update(run_dir: str, out_dir: str, dumps: list, keys, adv_tol=(1e-6, 1e-9)):
    """One LM trainer process, built from the run's saved configuration, takes the first update on the union of
    the processes' dumped groups (:func:`single_process_update`); checks that its advantages (``adv_tol`` =
    rtol, atol) and its update diagnostics ``keys`` equal the processes' (which agree with each other), that
    the update counted the same tokens and that it moved the weights; returns ``(targets, before, after, grads)``
    of the one-process step."""
    from gagpo.llm.train import LMTrainConfig, LMTrainer

    with open(os.path.join(run_dir, "config.json")) as fh:
        saved = json.load(fh)
    trainer = LMTrainer(LMTrainConfig(**{**saved, "out_dir": out_dir}))
    try:
        before = {n: p.detach().clone() for n, p in trainer.named_trainable()}
        targets, upd = single_process_update(trainer, dumps)
        adv = np.concatenate([d["targets"]["advantages"] for d in dumps])
        np.testing.assert_allclose(adv, targets["advantages"], rtol=adv_tol[0], atol=adv_tol[1])
        assert np.std(adv) > 0  # something to learn from
        for key in keys:
            assert dumps[0]["update"][key] == dumps[1]["update"][key]
            assert dumps[0]["update"][key] == pytest.approx(upd[key], rel=1e-4, abs=1e-6), key
        assert dumps[0]["update"]["update_tokens"] == upd["update_tokens"]
        after = {n: p.detach().clone() for n, p in trainer.named_trainable()}
        grads = {n: p.grad.detach().clone() for n, p in trainer.named_trainable() if p.grad is not None}
    finally:
        trainer.close()
    assert max(float((after[n] - before[n]).abs().max()) for n in before) > 5e-5  # AdamW moved the weights (lr 1e-4)
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3
    return targets, before, after, grads


def single_process_update(trainer, dumps: list[dict]) -> tuple[dict, dict]:
    """The first iteration of a one-process ``trainer`` (built with the run's configuration: the same initial
    weights) on the union of the processes' rollouts: its targets and update diagnostics."""
    union = union_rollout(dumps)
    trainer.iteration = 1
    targets = trainer.advantages(union)
    if trainer.SCORES_REFERENCE:
        targets = {**targets, "ref_logp": trainer.reference_logp(union)}
    return targets, trainer.update(union, targets)


def check_one_run(proc: subprocess.CompletedProcess, run_dir: str, iterations: int, world_size: int = 2) -> list[dict]:
    """One run's files, written once: metrics with one row per iteration and the world size, a checkpoint,
    one summary line on standard output."""
    rows = read_metrics(run_dir)
    assert [r["iteration"] for r in rows] == list(range(1, iterations + 1))
    assert all(r["world_size"] == world_size for r in rows)
    assert "eval_success" in rows[-1]  # the main process evaluated
    assert proc.stdout.count(f"checkpoint in {run_dir}") == 1, proc.stdout
    assert not os.path.exists(os.path.join(run_dir, "run.lock"))  # released by the main process
    return rows


# ---------------------------------------------------------------------- two processes
@pytest.mark.slow
@pytest.mark.parametrize("algo,extra", [("gagpo", []), ("reinforce", ["--reinforce-baseline", "mean"]), ("ppo", []),
                                        ("grpo", ["--kl-coef", "0.5"])],
                         ids=["gagpo-group-local", "reinforce-batch-mean", "ppo-critic-batch-norm", "grpo-kl-penalty"])
def test_toy_keydoor_on_two_processes_is_the_one_process_update_on_the_union(tmp_path, algo, extra):
    run_dir, dump = str(tmp_path / "run"), str(tmp_path / "dump")
    proc = launch([*TOY_ARGS, "--algo", algo, *extra, "--iterations", "2", "--out-dir", run_dir], dump=dump)
    rows = check_one_run(proc, run_dir, 2)
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert state["iteration"] == 2 and [r["world_size"] for r in state["history"]] == [2, 2]

    for iteration in (1, 2):
        assert_same_weights_on_every_process(load_dumps(dump, iteration))
    dumps = load_dumps(dump, 1)
    assert [d["shard"].first_group for d in dumps] == [0, 2]  # whole groups: 4 tasks, 2 per process
    assert rows[0]["env_steps"] == sum(d["rollout"].n_steps for d in dumps)
    # the checkpoint holds the weights every process had after the last update
    for name, w in load_dumps(dump, 2)[0]["weights"].items():
        owner, key = name.split(".", 1)
        assert torch.equal(state[owner][key], w), name

    from gagpo.trainer import Trainer

    with open(os.path.join(run_dir, "config.json")) as fh:
        saved = json.load(fh)
    cfg = TrainConfig(**{**saved, "out_dir": str(tmp_path / "single")})
    trainer = Trainer(cfg)
    try:
        before = {n: p.detach().clone() for n, p in trainer.named_trainable()}
        targets, upd = single_process_update(trainer, dumps)
        adv = np.concatenate([d["targets"]["advantages"] for d in dumps])
        # float64 estimators; a critic's values are float32 forward passes over batches of another size
        tol = dict(rtol=1e-5, atol=1e-6) if algo == "ppo" else dict(rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(adv, targets["advantages"], **tol)
        if algo == "ppo":
            np.testing.assert_allclose(np.concatenate([d["targets"]["returns"] for d in dumps]), targets["returns"], **tol)
        assert np.std(adv) > 0  # something to learn from: the comparison below is not of zeros
        assert ("kl_ref" in upd) == ("--kl-coef" in extra)  # a reference policy, scored on every process's rows
        pooled = ("policy_loss", "entropy", "clip_fraction", "approx_kl", "ratio_mean", "ratio_max")
        for key in pooled + (("kl_ref",) if "kl_ref" in upd else ()):
            assert dumps[0]["update"][key] == dumps[1]["update"][key]  # pooled: the same on both
            assert dumps[0]["update"][key] == pytest.approx(upd[key], rel=1e-5, abs=1e-7), key
        if algo == "ppo":
            assert dumps[0]["update"]["value_loss"] == pytest.approx(upd["value_loss"], rel=1e-5)
        assert rows[0]["policy_loss"] == dumps[0]["update"]["policy_loss"]
        assert rows[0]["adv_std"] == pytest.approx(float(np.std(targets["advantages"])), rel=1e-9)
        after = {n: p.detach().clone() for n, p in trainer.named_trainable()}
        grads = {n: p.grad.detach().clone() for n, p in trainer.named_trainable() if p.grad is not None}
    finally:
        trainer.close()
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the update changed the weights
    assert_close_tensors(dumps[0]["grads"], grads, rtol=1e-4, atol=1e-7, what="gradient")
    # Adam's first step is about lr·sign(g): where a gradient is ~0 by cancellation, the order of the sums shows;
    # 1% of the learning rate (1e-3) bounds that, far below the step itself
    assert_close_tensors(dumps[0]["weights"], after, rtol=1e-5, atol=1e-5, what="weight after the update")


@pytest.mark.slow
def test_lm_tiny_on_two_processes_is_the_one_process_update_on_the_union(tmp_path):
    """``accelerate launch`` of the language-model trainer (PPO: a value head, GAE normalised over the whole
    batch, the KL penalty to the reference) on two CPU processes."""
    pytest.importorskip("transformers")
    run_dir, dump = str(tmp_path / "run"), str(tmp_path / "dump")
    proc = launch([*LM_ARGS, "--algo", "ppo", "--lr", "1e-4", "--iterations", "2", "--out-dir", run_dir], dump=dump)
    rows = check_one_run(proc, run_dir, 2)
    with open(os.path.join(run_dir, "checkpoint", "trainer_state.json")) as fh:
        assert json.load(fh)["iteration"] == 2
    assert os.path.exists(os.path.join(run_dir, "curves.png"))
    for iteration in (1, 2):
        assert_same_weights_on_every_process(load_dumps(dump, iteration))
    dumps = load_dumps(dump, 1)
    assert [d["shard"].first_group for d in dumps] == [0, 1]
    assert rows[0]["env_steps"] == sum(d["rollout"].n_steps for d in dumps)
    assert rows[0]["update_tokens"] == sum(int(sum(len(p) + len(r) for p, r in zip(d["rollout"].prompt_ids, d["rollout"].response_ids)))
                                           for d in dumps)

    targets, before, after, grads = replay_lm_update(run_dir, str(tmp_path / "single"), dumps,
                                                     ("loss", "policy_loss", "kl_ref", "value_loss", "ratio_mean", "grad_norm"),
                                                     adv_tol=(1e-6, 1e-9))
    np.testing.assert_allclose(np.concatenate([d["targets"]["returns"] for d in dumps]), targets["returns"], rtol=1e-6, atol=1e-9)
    assert_close_tensors(dumps[0]["grads"], grads, rtol=1e-3, atol=1e-6, what="gradient")
    # 1% of the learning rate: AdamW's first step is about lr·sign(g) (see the toy test)
    assert_close_tensors(dumps[0]["weights"], after, rtol=1e-4, atol=1e-6, what="weight after the update")


@pytest.mark.slow
def test_resume_on_another_number_of_processes(tmp_path):
    """A run of two processes (torchrun) resumed on one, then on two again: one metrics file, the world size
    of each iteration, the processes starting every resumed iteration from the checkpoint's weights."""
    run_dir, dump = str(tmp_path / "run"), str(tmp_path / "dump")
    args = [*TOY_ARGS, "--algo", "grpo", "--out-dir", run_dir]
    launch([*args, "--iterations", "1"], launcher="torchrun")
    state1 = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    launch([*args, "--iterations", "2", "--resume"], processes=1)
    proc = launch([*args, "--iterations", "3", "--resume"], dump=dump, launcher="torchrun")
    rows = read_metrics(run_dir)
    assert [r["world_size"] for r in rows] == [2, 1, 2]
    assert rows[0] == json.loads(json.dumps(state1["history"][0]))  # iteration 1 kept as written
    assert proc.stdout.count("checkpoint in") == 1
    dumps = load_dumps(dump, 3)
    assert_same_weights_on_every_process(dumps)
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert state["iteration"] == 3
    assert all(torch.equal(state["policy"][n.split(".", 1)[1]], w) for n, w in dumps[0]["weights"].items())


@pytest.mark.slow
def test_sft_on_two_processes_is_the_one_process_step_on_the_whole_batch(tmp_path, monkeypatch):
    """``torchrun`` of ``python -m gagpo sft`` on two CPU processes: one run (its files written once by the main
    process), each process a disjoint half of every batch, the first step equal to one process's on the whole
    batch; then resumed on one process."""
    pytest.importorskip("transformers")
    run_dir, dump = str(tmp_path / "run"), str(tmp_path / "dump")
    proc = launch([*SFT_ARGS, "--iterations", "2", "--out-dir", run_dir], dump=dump, launcher="torchrun")
    rows = read_metrics(run_dir)
    assert [r["iteration"] for r in rows] == [0, 1, 2] and all(r["world_size"] == 2 for r in rows)
    assert "eval_success" in rows[0] and "eval_success" in rows[2]  # the main process evaluated
    assert proc.stdout.count("checkpoint in") == 1 and proc.stdout.count('"eval_success_before"') == 1, proc.stdout
    assert sorted(os.listdir(run_dir)) == ["checkpoint", "config.json", "curves.png", "metrics.csv", "metrics.jsonl",
                                           "model"]  # no lock, no leftover .tmp folder
    assert os.path.exists(os.path.join(run_dir, "model", "config.json"))
    with open(os.path.join(run_dir, "checkpoint", "trainer_state.json")) as fh:
        assert json.load(fh)["iteration"] == 2
    for iteration in (1, 2):
        assert_same_weights_on_every_process(load_dumps(dump, iteration))
    dumps = load_dumps(dump, 1)
    shares = [d["targets"]["pairs"] for d in dumps]

    from gagpo.llm.sft import SFTConfig, SFTTrainer, sft

    with open(os.path.join(run_dir, "config.json")) as fh:
        saved = json.load(fh)
    single_dump = str(tmp_path / "single-dump")
    monkeypatch.setenv("GAGPO_DUMP_ITERATIONS", single_dump)
    trainer = SFTTrainer(SFTConfig(**{**saved, "out_dir": str(tmp_path / "single")}))
    try:
        batch = trainer.batch_indices(0).tolist()
        assert len(shares[0]) == len(shares[1]) == 3 and not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == sorted(batch)  # disjoint halves of the one-process batch
        before = {n: p.detach().clone() for n, p in trainer.named_trainable()}
        row = trainer.step()
    finally:
        trainer.close()
    monkeypatch.delenv("GAGPO_DUMP_ITERATIONS")
    single = torch.load(os.path.join(single_dump, "rank0-iteration1.pt"), weights_only=False)
    assert shares == [single["targets"]["pairs"][0::2], single["targets"]["pairs"][1::2]]  # dealt round-robin
    assert rows[1]["response_tokens"] == row["response_tokens"]  # the global token count, on both
    assert rows[1]["loss"] == pytest.approx(row["loss"], rel=1e-5)
    assert rows[1]["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-4)
    assert dumps[0]["update"]["loss_sum"] + dumps[1]["update"]["loss_sum"] == pytest.approx(row["loss"] * row["response_tokens"], rel=1e-5)
    assert max(float(g.abs().max()) for g in single["grads"].values()) > 1e-3
    assert_close_tensors(dumps[0]["grads"], single["grads"], rtol=1e-3, atol=1e-6, what="gradient")
    assert max(float((single["weights"][n] - before[n]).abs().max()) for n in before) > 5e-5  # the step moved them
    # 1% of the learning rate: AdamW's first step is about lr·sign(g) (see the toy test)
    assert_close_tensors(dumps[0]["weights"], single["weights"], rtol=1e-4, atol=1e-6, what="weight after the step")

    # resumed on one process (this one): the checkpoint of the two processes, one metrics file
    history = sft(SFTConfig(**{**saved, "iterations": 3, "resume": True}))
    assert [r["iteration"] for r in history] == [0, 1, 2, 3]
    assert [r["world_size"] for r in read_metrics(run_dir)] == [2, 2, 2, 1]
    assert read_metrics(run_dir)[:3] == rows and math.isfinite(history[-1]["loss"])


# ---------------------------------------------------------------------- clear errors
def test_tasks_per_iter_must_be_a_multiple_of_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="tasks_per_iter 3 is not divisible by the 2 processes") as err:
        TrainConfig(tasks_per_iter=3)
    assert err.value.field == "tasks_per_iter"
    TrainConfig(tasks_per_iter=4)  # whole groups: fine
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "gagpo", "train", "--tasks-per-iter", "3"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "argument --tasks-per-iter: tasks_per_iter 3 is not divisible" in proc.stderr


def test_fsdp_outside_the_lm_trainer_and_deepspeed_launches_are_refused(monkeypatch):
    """FSDP is refused unless the trainer accepted it (only the LM trainer does: tests/test_fsdp.py);
    DeepSpeed always."""
    monkeypatch.setattr(dist, "_FSDP_ACCEPTED", False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RuntimeError, match="FSDP .*which only the language-model trainer implements"):
        dist.check_launch()
    monkeypatch.setattr(dist, "_FSDP_ACCEPTED", True)
    dist.check_launch()  # the LM trainer accepted it
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "True")
    with pytest.raises(RuntimeError, match="DeepSpeed"):
        dist.check_launch()


def test_behaviour_cloning_refuses_fsdp_and_batches_smaller_than_the_processes(monkeypatch, capsys):
    pytest.importorskip("transformers")
    from gagpo.__main__ import main
    from gagpo.llm.sft import SFTConfig, SFTTrainer, sft

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="batch_size 2 is smaller than the 3 processes") as err:
        SFTConfig(model="tiny", device="cpu", batch_size=2)
    assert err.value.field == "batch_size"
    with pytest.raises(SystemExit) as exc:  # the command line: an argument error
        main(["sft", "--model", "tiny", "--batch-size", "2"])
    assert exc.value.code == 2 and "argument --batch-size: batch_size 2 is smaller" in capsys.readouterr().err
    cfg = SFTConfig(model="tiny", device="cpu", batch_size=7)
    assert cfg.train_config().tasks_per_iter % 3 == 0  # RL's groups (unused by SFT) divide too: no error
    # process 1 of 3 takes pairs 1, 4 of a batch of 7 (ranks 0, 2 take 0, 3, 6 and 2, 5)
    assert SFTTrainer.rank_share(list(range(7))) == [1, 4]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for start in (lambda: sft(cfg), lambda: SFTTrainer(cfg)):  # before any model is loaded
        with pytest.raises(RuntimeError, match="sft was launched with FSDP .*only the RL trainer implements"):
            start()


# ---------------------------------------------------------------------- the seam in one process
def test_in_one_process_the_seam_changes_nothing(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert (dist.world_size(), dist.rank(), dist.is_main(), dist.is_distributed()) == (1, 0, True, False)
    x, arr, d = 3, np.arange(3.0), {"a": 1.5}
    assert dist.all_sum(x) is x and dist.all_max(arr) is arr and dist.all_min(d) is d
    assert dist.gather_rows(arr) is arr and dist.all_gather_object(d) == [d]
    assert dist.weighted_mean(0.25, 0) == 0.25 and dist.agree("loss") == "loss" and dist.agree(None) is None
    assert dist.shard([5, 6, 7]) == [5, 6, 7] and dist.seed_key(1, 2, 3) == [1, 2, 3]
    assert dist.Shard.of(3, 4) == dist.Shard() and dist.process_device("cuda:1") == "cuda:1"
    assert dist.call_on_main(lambda a: a + 1, 1) == 2 and dist.main_first(lambda: "x") == "x"
    batch = StepBatch(group_id=[0, 0, 1], traj_id=[0, 1, 2], step=[0, 0, 0], obs_key=["a", "a", "b"],
                      next_obs_key=["c", "c", "c"], reward=[1.0, 0.0, 1.0], terminated=[True] * 3, truncated=[False] * 3)
    got = dist.on_union(batch, lambda b, values: compute_advantages("reinforce", b, gamma=1.0, reinforce_baseline="mean") + values,
                        dist.Shard(), values=np.ones(3))
    np.testing.assert_allclose(got, [1 + 1 / 3, 1 - 2 / 3, 1 + 1 / 3], rtol=1e-15)


def test_a_process_of_several_takes_its_block_of_groups_and_its_own_streams(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert dist.shard(list(range(8))) == [4, 5] and dist.seed_key(7, 1, 2) == [7, 1, 2, 2]
    assert dist.Shard.of(8, 3) == dist.Shard(rank=2, world_size=4, first_group=4, first_traj=12)
    with pytest.raises(ValueError, match="not divisible by the 4 processes"):
        dist.shard(list(range(6)))
    with pytest.raises(ValueError, match="every process takes its own GPU"):
        dist.process_device("cuda:1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert dist.process_device("auto") == "cpu" and dist.process_device("cpu") == "cpu"
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    if torch.cuda.is_available():
        assert dist.process_device("auto") == dist.process_device("cuda") == "cuda:2"


def test_the_committed_accelerate_config_is_ddp_without_fsdp():
    yaml = pytest.importorskip("yaml")
    with open(dist.ACCELERATE_CONFIG) as fh:
        cfg = yaml.safe_load(fh)
    assert cfg["distributed_type"] == "MULTI_GPU" and cfg["num_machines"] == 1 and cfg["use_cpu"] is False
    assert cfg["mixed_precision"] == "no" and not any("fsdp" in k or "deepspeed" in k for k in cfg)
    assert os.path.dirname(os.path.dirname(dist.ACCELERATE_CONFIG)) == os.path.dirname(dist.__file__)  # package data


# ---------------------------------------------------------------------- group-local estimators
def test_every_estimator_declared_group_local_depends_on_its_group_only():
    """Computed on one group at a time, a group-local estimator gives the advantages it gives on the whole
    batch: what lets each process of a data-parallel run compute it on its own groups."""
    from gagpo.config import TrainConfig as Cfg
    from gagpo.rollout import EnvPool, collect, make_env_fn
    from gagpo.policies import make_policy

    kwargs = {"size": 5, "min_solution_length": 3, "max_solution_length": 6}
    pool = EnvPool(make_env_fn("toy_envs/KeyDoor-v0", 12, **kwargs))
    rollout = collect(pool, make_policy("text", seed=0), [3, 4, 5, 6], 4, torch.Generator().manual_seed(0))
    pool.close()
    batch = rollout.batch
    assert {n for n in estimator_names() if get_estimator(n).group_local} >= {"grpo", "rloo", "gigpo", "gagpo"}
    assert not get_estimator("ppo").group_local and not get_estimator("reinforce").group_local
    for name in estimator_names():
        est = get_estimator(name)
        if not est.group_local:
            continue
        for cfg in (Cfg(algo=name), Cfg(algo=name, anchor_match="near", norm="mean")):
            whole = compute_advantages(name, batch, cfg)
            assert np.std(whole) > 0, name
            for g in np.unique(batch.group_id):
                rows = np.flatnonzero(batch.group_id == g)
                np.testing.assert_allclose(compute_advantages(name, batch.take(rows), cfg), whole[rows], rtol=1e-12,
                                           atol=1e-12, err_msg=f"{name} group {g}")


#: run by torchrun on two CPU processes: joins the group, then uses it as a run does — ``transformers`` imports and builds
#: a model (which imports torch.distributed.nn.functional), ``fsdp`` shards a model with FSDP2, trains one step and
#: gathers the whole weights (which fills DTensor's caches) — then leaves; exits 3 if the group outlived gagpo's shutdown
_RELEASE_SCRIPT = r'''
import gc, sys, weakref
import torch
import torch.distributed as tdist
import gagpo.distributed as dist
dist.init()
group = weakref.ref(tdist.distributed_c10d._get_default_group())
if sys.argv[1] == "transformers":
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2))
    assert "torch.distributed.nn.functional" in sys.modules
else:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (2,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    model(torch.ones(2, 4)).sum().backward()
    whole = [p.full_tensor() for p in model.parameters()]
    del model, mesh, whole
dist._shutdown()
gc.collect()
if group() is not None:
    print("the process group outlived destroy_process_group", flush=True)
    sys.exit(3)
'''


@pytest.mark.slow
@pytest.mark.parametrize("use", ["transformers", "fsdp"])
def test_the_process_group_is_released_at_shutdown(tmp_path, use):
    """A process group that outlives ``destroy_process_group`` is torn down during interpreter finalisation, where
    gloo's threads can abort a finished run's exit. torch.distributed.nn.functional (imported by transformers) would
    hold the group in its functions' default arguments unless imported before the group exists; DTensor's caches
    (filled by FSDP) would hold it through their meshes unless emptied at shutdown."""
    pytest.importorskip("transformers")
    script = tmp_path / "release.py"
    script.write_text(_RELEASE_SCRIPT)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), use]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
