"""LMPolicy's parts: the facade returns exactly what its codec, actor and reference compute; TokenLogprobs
unpacks as the tuple token_logprobs used to return; devices and dtypes are named in one place; the
housekeeping names (rollout_advantages, setting, copy_field, the gagpo exports) hold."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

import gagpo  # noqa: E402
from gagpo import config, trainer  # noqa: E402
from gagpo.llm import bench, devices  # noqa: E402
from gagpo.llm.actor import Actor, TokenLogprobs  # noqa: E402
from gagpo.llm.encoding import PromptCodec  # noqa: E402
from gagpo.llm.policy import LMPolicy, LoraSettings, SamplingSettings  # noqa: E402
from gagpo.llm.reference import Reference  # noqa: E402
from gagpo.llm.sft import SFTConfig  # noqa: E402
from gagpo.llm.tiny import tiny_model_path  # noqa: E402
from gagpo.llm.train import LMTrainConfig  # noqa: E402

TEXTS = ["go to fridge 1", "open drawer 1 and look around you", "look"]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return tiny_model_path(seed=0, format_steps=0, cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def policy(path):
    return LMPolicy.from_pretrained(path, device="cpu", reference=True, micro_batch_size=2)


@pytest.fixture(scope="module")
def rows(policy):
    gen = policy.generate([policy.render(t) for t in TEXTS], SamplingSettings(max_new_tokens=6), seed=0)
    return gen.prompt_ids, gen.response_ids


# ---------------------------------------------------------------------------------- the parts
def test_the_policy_is_composed_of_its_parts(policy):
    assert isinstance(policy.codec, PromptCodec) and isinstance(policy.actor, Actor)
    assert isinstance(policy.reference, Reference) and policy.reference.actor is policy.actor
    assert policy.model is policy.actor.model and policy.tokenizer is policy.codec.tokenizer
    assert policy.reference_model is policy.reference.model is not None
    assert policy.actor.pad_token_id == policy.tokenizer.pad_token_id
    assert policy.parameters() == policy.actor.parameters() and policy.device == policy.actor.device


def test_settings_read_and_write_through_the_facade(path):
    pol = LMPolicy.from_pretrained(path, device="cpu")
    pol.autocast_dtype = torch.bfloat16
    pol.micro_batch_size = 3
    pol.eos_token_ids = []
    pol.system_prompt = "be brief"
    assert pol.actor.autocast_dtype is torch.bfloat16 and pol.actor.micro_batch_size == 3
    assert pol.codec.eos_token_ids == [] and pol.codec.system_prompt == "be brief"
    assert pol.render("look") == pol.codec.render("look") and "be brief" in pol.render("look")


def test_token_logprobs_are_the_actors_and_the_references(policy, rows):
    prompts, responses = rows
    out = policy.token_logprobs(prompts, responses, return_entropy=True, return_hidden=True)
    assert isinstance(out, TokenLogprobs)
    direct = policy.actor.token_logprobs(prompts, responses, entropy=True, hidden=True)
    for name in ("logp", "mask", "entropy", "hidden"):
        assert torch.equal(getattr(out, name), getattr(direct, name)), name
    ref = policy.token_logprobs(prompts, responses, reference=True)
    assert torch.equal(ref.logp, policy.reference.token_logprobs(prompts, responses).logp)
    assert ref.entropy is None and ref.hidden is None
    texts = policy.token_logprobs([policy.render(t) for t in TEXTS], ["<action> look </action>"] * 3)
    ids = policy.actor.token_logprobs(policy.codec.prompt_ids([policy.render(t) for t in TEXTS]),
                                      policy.codec.response_ids(["<action> look </action>"] * 3))
    assert torch.equal(texts.logp, ids.logp)


def test_token_logprobs_unpack_as_the_old_tuple(policy, rows):
    prompts, responses = rows
    out = policy.token_logprobs(prompts, responses)
    logp, mask = out
    assert logp is out.logp and mask is out.mask and len(out) == 2 and out[0] is out.logp
    logp, mask, entropy = policy.token_logprobs(prompts, responses, return_entropy=True)
    assert entropy.shape == logp.shape
    logp, mask, hidden = policy.token_logprobs(prompts, responses, return_hidden=True)
    assert hidden.shape == (len(prompts), policy.hidden_size)
    both = policy.token_logprobs(prompts, responses, return_entropy=True, return_hidden=True)
    logp, mask, entropy, hidden = both
    assert entropy is both.entropy and hidden is both.hidden and both[-1] is both.hidden


def test_a_policy_without_reference_says_so(path, rows):
    pol = LMPolicy.from_pretrained(path, device="cpu")
    assert not pol.has_reference() and not pol.reference.available
    with pytest.raises(ValueError, match="no reference"):
        pol.reference.token_logprobs(*rows)
    lora = LMPolicy.from_pretrained(path, device="cpu", lora=LoraSettings(r=2, alpha=4))
    assert lora.reference.available and lora.reference.model is None and "adapters off" in repr(lora.reference)


# ---------------------------------------------------------------------------------- devices and dtypes
def test_devices_and_dtypes_are_named_once():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.resolve_dtypes("auto", torch.device("cpu"), lora=True) == (torch.float32, None)
    assert devices.resolve_dtypes("auto", torch.device("cuda"), lora=True) == (torch.bfloat16, torch.bfloat16)
    assert devices.resolve_dtypes("auto", torch.device("cuda"), lora=False) == (torch.float32, torch.bfloat16)
    assert [devices.torch_dtype(n) for n in devices.DTYPE_NAMES] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        devices.resolve_dtypes("float64", torch.device("cpu"), lora=False)
    dtype_field = {f.name: f for f in dataclasses.fields(LMTrainConfig)}["dtype"]
    assert config.field_choices(dtype_field.metadata) == devices.DTYPE_CHOICES
    assert set(bench.BENCH_DTYPES) == set(devices.DTYPE_CHOICES) - {"float16"}
    with pytest.raises(ValueError, match="unknown device"):
        devices.check_device("toaster")


def test_the_devices_module_loads_no_torch():
    code = "import sys, gagpo.llm.devices as d; print('torch' in sys.modules, d.DTYPE_CHOICES[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "auto"]


# ---------------------------------------------------------------------------------- housekeeping names
def test_one_name_per_advantage_function():
    assert trainer.rollout_advantages is trainer.compute_advantages  # the deprecated name, used by chapters 8 and 9
    assert "compute_advantages" not in trainer.__all__ and "rollout_advantages" in trainer.__all__
    assert gagpo.compute_advantages is gagpo.registry.compute_advantages


def test_the_shared_settings_are_exported():
    assert gagpo.EstimatorSettings is config.EstimatorSettings and gagpo.RunSettings is config.RunSettings
    assert {"EstimatorSettings", "RunSettings"} <= set(gagpo.__all__)


def test_sft_reuses_trains_checks_and_fields(monkeypatch):
    assert SFTConfig.RESUMABLE is LMTrainConfig.RESUMABLE
    # SFTConfig.check runs train's checks (float16 below), then its own (a batch per process, data-parallel)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(config.ConfigError, match="float16 on a CPU"):
        SFTConfig(dtype="float16", device="cpu", batch_size=4)
    with pytest.raises(config.ConfigError, match="batch_size 3 is smaller than the 4 processes"):
        SFTConfig(device="cpu", batch_size=3)
    monkeypatch.delenv("WORLD_SIZE")
    sft_fields = {f.name: f for f in dataclasses.fields(SFTConfig)}
    train_fields = {f.name: f for f in dataclasses.fields(LMTrainConfig)}
    assert sft_fields["dtype"].metadata == train_fields["dtype"].metadata  # copy_field: same constraints and help
    assert sft_fields["lr"].default == 1e-5 != train_fields["lr"].default  # ... with a default of its own
    with pytest.raises(config.ConfigError, match="float16 on a CPU"):
        SFTConfig(dtype="float16", device="cpu")


def test_copy_field_keeps_the_constraints():
    base = {f.name: f for f in dataclasses.fields(config.RunSettings)}["lr"]

    @dataclasses.dataclass
    class Tiny:
        lr: float = config.copy_field(base, 0.5, "my help")
        seed: int = config.shared("seed")
        width: int = config.setting(4, "a width", ge=1)

    fields = {f.name: f for f in dataclasses.fields(Tiny)}
    assert Tiny().lr == 0.5 and fields["lr"].metadata["help"] == "my help" and fields["lr"].metadata["gt"] == 0
    assert config.field_problem("lr", fields["lr"].metadata, -1.0) == "lr must be > 0; got -1.0"
    assert config.field_problem("width", fields["width"].metadata, 0) == "width must be >= 1; got 0"
    assert fields["seed"].metadata == {f.name: f for f in dataclasses.fields(config.RunSettings)}["seed"].metadata
