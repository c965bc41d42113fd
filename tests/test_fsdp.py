"""FSDP for the language-model trainer (gagpo.llm.fsdp) on CPUs: two processes, gloo, PyTorch's FSDP2.

Launched as a user launches it — ``accelerate launch --config_file gagpo/configs/accelerate_fsdp.yaml`` and
``ACCELERATE_USE_FSDP=true torchrun`` — the run must be one run (one metrics file, one checkpoint) whose first
update is the one-process update on the union of both processes' groups (the same advantages, loss,
gradients and weights after the update, within float tolerance), whose checkpoint has the format of an
unsharded run (it loads as a model and resumes on one process), and which resumes under FSDP with the
optimizer state it saved. Plus the clear refusals of what FSDP does not implement here.
"""
from __future__ import annotations

import os

import pytest
import torch

import gagpo.distributed as dist

from .test_distributed import LM_ARGS, assert_close_tensors, check_one_run, launch, load_dumps, read_metrics, replay_lm_update

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true"}  # what accelerate's FSDP config sets; by hand before torchrun
#: gagpo with a KL penalty: a reference copy scored on every process; lr 1e-4 so that the update shows
FSDP_ARGS = [*LM_ARGS, "--algo", "gagpo", "--kl-coef", "0.05", "--lr", "1e-4"]


def checkpoint_weights(run_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, "checkpoint", "model.safetensors"))


@pytest.mark.slow
def test_lm_fsdp_on_two_processes_is_the_one_process_update_on_the_union(tmp_path):
    pytest.importorskip("transformers")
    run_dir, dump = str(tmp_path / "run"), str(tmp_path / "dump")
    proc = launch([*FSDP_ARGS, "--iterations", "2", "--out-dir", run_dir], dump=dump, config=dist.ACCELERATE_FSDP_CONFIG)
    rows = check_one_run(proc, run_dir, 2)
    dumps = load_dumps(dump, 1)
    assert [d["shard"].first_group for d in dumps] == [0, 1]
    assert rows[0]["env_steps"] == sum(d["rollout"].n_steps for d in dumps)
    # the processes played different episodes (own seeds), so they ran different numbers of micro-batches
    assert [len(d["rollout"].response_ids) for d in dumps] != [0, 0]

    # the checkpoint: the whole weights after the last update, in the format of an unsharded run
    saved = checkpoint_weights(run_dir)
    last = load_dumps(dump, 2)[0]["weights"]
    assert set(last) <= set(saved)
    for name, w in last.items():
        assert torch.equal(saved[name], w), name
    optimizer = torch.load(os.path.join(run_dir, "checkpoint", "optimizer.pt"), weights_only=False)
    assert sorted(optimizer["state"]) == list(range(len(last)))  # indexed by parameter, as optimizer.state_dict()
    first = optimizer["state"][0]
    assert type(first["exp_avg"]) is torch.Tensor and first["exp_avg"].shape == next(iter(last.values())).shape
    assert int(first["step"]) == 2  # one optimizer step per iteration (one minibatch)

    from gagpo.llm.policy import LMPolicy

    loaded = LMPolicy.from_pretrained(os.path.join(run_dir, "checkpoint"), device="cpu")  # train --model <checkpoint>
    for name, p in loaded.model.named_parameters():
        assert torch.equal(p.detach(), last[name]), name

    _, _, after, grads = replay_lm_update(run_dir, str(tmp_path / "single"), dumps,
                                          ("loss", "policy_loss", "kl_ref", "ratio_mean", "grad_norm"), adv_tol=(1e-9, 1e-12))
    for d in dumps:  # every process gathered the same whole gradients and weights
        assert_close_tensors(d["grads"], grads, rtol=1e-3, atol=1e-6, what=f"gradient (process {d['rank']})")
        # AdamW's first step is about lr·g/(|g| + eps): where a gradient is ~0 by cancellation (|g| ~ eps), the
        # order of the sums shows in the step; 20% of the learning rate bounds that (seen: 7% on one element of
        # 4096), below the step of 1e-4 itself — the gradients above are the sharp check
        assert_close_tensors(d["weights"], after, rtol=1e-4, atol=2e-5, what=f"weight after the update (process {d['rank']})")


@pytest.mark.slow
def test_lm_fsdp_resumes_on_one_process_and_under_fsdp_again(tmp_path):
    """torchrun with FSDP (1 iteration) → one process resumes (2) → FSDP resumes (3): one metrics file, and the
    optimizer state travels through every checkpoint (AdamW's step count is 3 at the end)."""
    pytest.importorskip("transformers")
    run_dir, dump = str(tmp_path / "run"), str(tmp_path / "dump")
    args = [*FSDP_ARGS, "--out-dir", run_dir, "--eval-every", "0"]
    launch([*args, "--iterations", "1"], launcher="torchrun", env_extra=FSDP_ENV)
    launch([*args, "--iterations", "2", "--resume"], processes=1)
    at_two = checkpoint_weights(run_dir)
    proc = launch([*args, "--iterations", "3", "--resume"], dump=dump, launcher="torchrun", env_extra=FSDP_ENV)
    assert proc.stdout.count(f"checkpoint in {run_dir}") == 1
    assert [r["world_size"] for r in read_metrics(run_dir)] == [2, 1, 2]
    optimizer = torch.load(os.path.join(run_dir, "checkpoint", "optimizer.pt"), weights_only=False)
    assert int(optimizer["state"][0]["step"]) == 3
    final = checkpoint_weights(run_dir)
    last = load_dumps(dump, 3)[0]["weights"]
    assert all(torch.equal(final[n], w) for n, w in last.items())
    # the FSDP run started from the resumed checkpoint: one AdamW step (about lr = 1e-4 per weight) away from it
    moved = max(float((final[n] - at_two[n]).abs().max()) for n in last)
    assert 1e-5 < moved < 1e-3, moved


# ---------------------------------------------------------------------- clear refusals
@pytest.mark.parametrize("overrides,match", [({"lora_r": 16}, "--lora-r 16"), ({"algo": "ppo"}, "--algo ppo"),
                                             ({"engine": "hf-shared"}, "--engine hf-shared")])
def test_fsdp_refuses_what_it_does_not_implement(monkeypatch, tmp_path, overrides, match):
    pytest.importorskip("transformers")
    from gagpo.llm.train import LMTrainConfig, train_lm

    cfg = LMTrainConfig(model="tiny", device="cpu", out_dir=str(tmp_path / "run"), **overrides)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=f"FSDP .*not for .*{match}"):
        train_lm(cfg)  # refused before any model is loaded or process group joined
    assert not os.path.exists(cfg.run_dir())


def test_fsdp_settings_refuse_fsdp1_and_offloading(monkeypatch):
    from gagpo.llm.fsdp import FSDPSettings, fsdp_settings

    for var in ("FSDP_VERSION", "FSDP_OFFLOAD_PARAMS", "FSDP_RESHARD_AFTER_FORWARD"):
        monkeypatch.delenv(var, raising=False)
    assert fsdp_settings() == FSDPSettings(reshard_after_forward=True)
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert fsdp_settings() == FSDPSettings(reshard_after_forward=False)
    monkeypatch.setenv("FSDP_VERSION", "1")  # accelerate's default when a config omits fsdp_version
    with pytest.raises(ValueError, match="FSDP_VERSION=1: .*fsdp_version: 2"):
        fsdp_settings()
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(ValueError, match="CPU offloading is not implemented"):
        fsdp_settings()


def test_the_committed_fsdp_config_is_fsdp2_and_packaged():
    yaml = pytest.importorskip("yaml")
    with open(dist.ACCELERATE_FSDP_CONFIG) as fh:
        cfg = yaml.safe_load(fh)
    assert cfg["distributed_type"] == "FSDP" and cfg["use_cpu"] is False and cfg["mixed_precision"] == "no"
    fsdp = cfg["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_offload_params"] is False
    assert os.path.dirname(dist.ACCELERATE_FSDP_CONFIG) == os.path.dirname(dist.ACCELERATE_CONFIG)  # package data
