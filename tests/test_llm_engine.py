"""The padding layout that keeps attention finite, and the rollout-engine seam (gagpo.llm.engine).

Regression for the CUDA NaN of issue 9: with plain left padding the leading pads' attention rows are fully
masked, and a kernel that computes such a row as softmax over nothing (NaN) poisons the real tokens through
0 × NaN in the next layer. CPU kernels return zeros for those rows, so the test registers an attention
implementation that behaves like the faulty kernels (``-inf`` masking, plain softmax) and shows that the old
layout breaks under it while scoring, value-head states and generation with the library's layout stay
finite and equal to PyTorch's SDPA.
"""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from transformers import AttentionInterface, AttentionMaskInterface  # noqa: E402
from transformers.masking_utils import sdpa_mask  # noqa: E402

from gagpo.llm.engine import ENGINES, HFEngine, make_engine  # noqa: E402
from gagpo.llm.policy import Generation, LMPolicy, LoraSettings, SamplingSettings, pad_after_first  # noqa: E402
from gagpo.llm.tiny import tiny_model_path  # noqa: E402

TEXTS = ["You are in the kitchen. Your task is to: put a mug in the fridge.", "go to the fridge", "x",
         "look around the kitchen and open the drawer please"]


def naive_inf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention as some CUDA kernels compute it on masked rows: -inf scores, softmax (NaN for a fully masked row)."""
    rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scores = (query @ key.transpose(-1, -2)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is None:  # no padding: plain causal
        q, k = scores.shape[-2:]
        attention_mask = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(k - q)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    else:
        scores = scores + attention_mask
    weights = scores.softmax(-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


AttentionInterface.register("naive_inf", naive_inf_attention)
AttentionMaskInterface.register("naive_inf", sdpa_mask)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return tiny_model_path(seed=0, format_steps=0, cache_dir=str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture()
def policy(path):
    return LMPolicy.from_pretrained(path, device="cpu", reference=True)


def test_pad_after_first_layout():
    ids, attn = pad_after_first([[5, 6, 7], [8], [1, 2, 3, 4]], pad_id=0)
    assert ids.tolist() == [[5, 0, 6, 7], [8, 0, 0, 0], [1, 2, 3, 4]]
    assert attn.tolist() == [[1, 0, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert attn[:, 0].all()  # every query row sees at least the first token
    with pytest.raises(ValueError, match="at least one token"):
        pad_after_first([[1], []], pad_id=0)


def test_a_kernel_that_nans_on_fully_masked_rows_breaks_left_padding_but_not_the_library(policy):
    prompts = [policy.render(t) for t in TEXTS]
    gen = policy.generate(prompts, SamplingSettings(max_new_tokens=6), seed=0)
    ref_logp, _, ref_hidden = policy.token_logprobs(gen.prompt_ids, gen.response_ids, return_hidden=True)
    ref_ref, _ = policy.token_logprobs(gen.prompt_ids, gen.response_ids, reference=True)
    policy.model.set_attn_implementation("naive_inf")
    policy.reference_model.set_attn_implementation("naive_inf")

    # plain left padding: the leading pads' rows are fully masked -> NaN that reaches the real last token
    width = max(len(p) for p in gen.prompt_ids)
    ids = torch.full((len(prompts), width), policy.tokenizer.pad_token_id)
    attn = torch.zeros_like(ids)
    for b, p in enumerate(gen.prompt_ids):
        ids[b, width - len(p):], attn[b, width - len(p):] = torch.tensor(p), 1
    with torch.no_grad():
        logits = policy.model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
    assert not torch.isfinite(logits[:, -1]).all()

    # the library's layout: finite, and equal to SDPA's results (old policy, reference, value-head states, grads)
    logp, mask, hidden = policy.token_logprobs(gen.prompt_ids, gen.response_ids, return_hidden=True)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, ref_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy.prompt_hidden(gen.prompt_ids), ref_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy.token_logprobs(gen.prompt_ids, gen.response_ids, reference=True)[0], ref_ref,
                               atol=1e-5, rtol=1e-5)
    lp, m = policy.token_logprobs(gen.prompt_ids, gen.response_ids, grad=True)
    (lp * m).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.parameters())
    again = policy.generate(prompts, SamplingSettings(max_new_tokens=6), seed=0)
    assert again.response_ids == gen.response_ids


def test_engine_names_and_the_shared_fast_path(policy):
    assert set(ENGINES) == {"hf", "hf-compiled", "hf-continuous", "hf-shared"}
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("vllm", policy)
    with pytest.raises(ValueError, match="unknown engine"):
        LMPolicy(policy.model, policy.tokenizer, engine="nope")
    # float32 weights without autocast and without adapters already serve: nothing is copied
    assert isinstance(policy.engine, HFEngine) and policy.engine.shares_weights


def test_full_parameter_serving_copy_is_bf16_and_follows_every_update(path):
    pol = LMPolicy.from_pretrained(path, device="cpu")
    pol.autocast_dtype = torch.bfloat16  # as on a GPU: float32 master weights, bfloat16 compute
    engine = pol.engine
    assert not engine.shares_weights and engine.serving_dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in engine.model.parameters())
    prompts = [pol.render(t) for t in TEXTS[:2]]
    pol.generate(prompts, SamplingSettings(max_new_tokens=3), seed=0)
    assert engine.refreshes == 0  # nothing changed since the copy was made
    opt = torch.optim.SGD(pol.parameters(), lr=0.5)
    lp, m = pol.token_logprobs(pol.encode_prompts(prompts), [[20, 21], [22]], grad=True)
    (lp * m).sum().backward()
    opt.step()
    pol.generate(prompts, SamplingSettings(max_new_tokens=3), seed=0)
    assert engine.refreshes == 1
    served = dict(engine.model.named_parameters())
    for name, p in pol.model.named_parameters():
        assert torch.equal(served[name], p.detach().to(torch.bfloat16)), name
    pol.generate(prompts, SamplingSettings(max_new_tokens=3), seed=0)
    assert engine.refreshes == 1  # no change, no copy


def test_lora_serving_copy_merges_the_adapters(path):
    pol = LMPolicy.from_pretrained(path, device="cpu", lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # non-zero adapters (peft starts B at 0)
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    prompts = pol.encode_prompts([pol.render(t) for t in TEXTS])
    greedy = SamplingSettings(max_new_tokens=8, greedy=True)
    served = pol.generate(prompts, greedy)
    engine = pol.engine
    assert not engine.shares_weights and engine.refreshes == 1
    assert not any("lora" in n for n, _ in engine.model.named_parameters())  # a plain model
    shared = HFEngine(pol, serving_copy=False).generate(prompts, greedy)
    assert served.response_ids == shared.response_ids
    ids, attn = pol.pad_prompts(prompts)
    with torch.no_grad():
        a = engine.model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
        b = pol.model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_static_cache_engine_matches_the_dynamic_one_and_pads_batches(path):
    """``hf-compiled`` generates with a static KV cache and a fixed batch (compilation itself only on CUDA)."""
    pol = LMPolicy.from_pretrained(path, device="cpu", gen_batch_size=4)
    prompts = pol.encode_prompts([pol.render(t) for t in TEXTS[:3]])  # 3 rows: padded to 4 in the static engine
    greedy = SamplingSettings(max_new_tokens=6, greedy=True)
    dynamic = HFEngine(pol).generate(prompts, greedy)
    static = HFEngine(pol, compile=True).generate(prompts, greedy)
    assert static.response_ids == dynamic.response_ids and len(static.response_ids) == 3


def test_continuous_batching_engine_matches_the_padded_one(path):
    """``hf-continuous`` (transformers' continuous batching; slow on a CPU, meant for GPUs): same greedy
    responses as padded batches, and seeded sampling is reproducible."""
    pol = LMPolicy.from_pretrained(path, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger random weights: different prompts, different greedy responses
        for p in pol.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    prompts = pol.encode_prompts([pol.render(t) for t in TEXTS])
    greedy = SamplingSettings(max_new_tokens=5, greedy=True)
    engine = make_engine("hf-continuous", pol)
    padded = HFEngine(pol).generate(prompts, greedy).response_ids
    assert len({tuple(r) for r in padded}) > 1  # rows that a mix-up would reveal
    assert engine.generate(prompts, greedy).response_ids == padded
    sampled = SamplingSettings(max_new_tokens=5)
    a, b = engine.generate(prompts, sampled, seed=3), engine.generate(prompts, sampled, seed=3)
    assert a.response_ids == b.response_ids and all(len(r) <= 5 for r in a.response_ids)


def test_generation_does_not_depend_on_training_options(path):
    """Gradient checkpointing and train mode are training options: generation neither sees nor pays for them."""
    prompts = [TEXTS[0], TEXTS[3]]
    greedy = SamplingSettings(max_new_tokens=6, greedy=True)
    outs = []
    for checkpointing in (False, True):
        pol = LMPolicy.from_pretrained(path, device="cpu", gradient_checkpointing=checkpointing)
        pol.model.train()
        outs.append(pol.generate([pol.render(t) for t in prompts], greedy).response_ids)
        assert pol.model.training  # restored
    assert outs[0] == outs[1]


def test_a_custom_engine_plugs_into_rollouts(policy):
    """The seam: anything with generate/refresh replaces the Hugging Face engine, rollouts included."""
    from gagpo.llm.rollout import collect_lm
    from gagpo.rollout import EnvPool, make_env_fn

    class Scripted:
        calls = 0

        def generate(self, prompt_ids, sampling, seed=None):
            Scripted.calls += 1
            ids = policy.tokenizer("<action> look </action>", add_special_tokens=False)["input_ids"]
            return Generation(texts=["<action> look </action>"] * len(prompt_ids), response_ids=[ids] * len(prompt_ids),
                              prompt_ids=[list(p) for p in prompt_ids], finished=[False] * len(prompt_ids))

        def refresh(self):
            pass

    policy.engine = Scripted()
    pool = EnvPool(make_env_fn("toy_envs/MiniHousehold-v0", 2))
    r = collect_lm(pool, policy, [0], 2, compute_logp=True)
    assert Scripted.calls == 2 and set(r.commands) <= {"look", "<no action>"} and len(r.token_logp) == len(r.batch)
