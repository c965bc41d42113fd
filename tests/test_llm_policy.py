"""LMPolicy: teacher-forced log-probs equal a by-hand computation, padding included; they are those of the
sampling distribution; the reference policy is frozen (LoRA: adapters off); weights round-trip."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from gagpo.llm.policy import LMPolicy, LoraSettings, SamplingSettings, pad_right  # noqa: E402
from gagpo.llm.tiny import tiny_model_path  # noqa: E402

TEXTS = ["go to fridge 1", "you are in the middle of a room . take apple 1 from countertop 2 and look around you",
         "open drawer 1", "your task is to : put a hot egg in diningtable 1 .", "look"]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return tiny_model_path(seed=0, format_steps=0, cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def policy(path):
    return LMPolicy.from_pretrained(path, device="cpu")


def _by_hand(model, prompt, response, temperature=1.0):
    """One unpadded sequence: full forward, log_softmax, gather the response tokens."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    p = len(prompt)
    return torch.log_softmax(logits, -1)[p - 1:-1].gather(-1, ids[0, p:, None]).squeeze(-1)


def _rows(policy, seed=0):
    prompts = [policy.render(t) for t in TEXTS]
    gen = policy.generate(prompts, SamplingSettings(max_new_tokens=10), seed=seed)
    return gen


@pytest.mark.parametrize("temperature, micro", [(1.0, 2), (0.7, 8)])
def test_token_logprobs_equal_a_by_hand_computation(policy, temperature, micro):
    gen = _rows(policy)
    responses = [r[:n] for r, n in zip(gen.response_ids, (10, 3, 7, 1, 5))]  # any tokens can be scored
    lengths = [len(r) for r in responses]
    assert len(set(len(p) for p in gen.prompt_ids)) > 1 and len(set(lengths)) > 1  # padding on both sides
    logp, mask = policy.token_logprobs(gen.prompt_ids, responses, temperature=temperature, micro_batch_size=micro)
    assert logp.shape == mask.shape == (len(TEXTS), max(lengths))
    for b, n in enumerate(lengths):
        assert mask[b].tolist() == [True] * n + [False] * (logp.shape[1] - n)
        ref = _by_hand(policy.model, gen.prompt_ids[b], responses[b], temperature)
        torch.testing.assert_close(logp[b, :n], ref, atol=1e-5, rtol=1e-5)
        assert torch.all(logp[b, n:] == 0)
    # strings are accepted too (responses re-encoded without special tokens)
    lp2, _ = policy.token_logprobs([policy.render(TEXTS[0])], ["<action> look </action>"])
    ids = policy.tokenizer("<action> look </action>", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(lp2[0], _by_hand(policy.model, gen.prompt_ids[0], ids), atol=1e-5, rtol=1e-5)


def test_scores_are_those_of_the_sampling_distribution(policy):
    """The old-policy log-probs recomputed by teacher forcing equal generate()'s own, token for token."""
    from transformers import GenerationConfig

    gen = _rows(policy, seed=3)
    ids, attn = policy.pad_prompts(gen.prompt_ids)
    torch.manual_seed(3)
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, top_k=0, top_p=1.0, temperature=1.0, repetition_penalty=1.0,
                           pad_token_id=policy.tokenizer.pad_token_id, eos_token_id=policy.eos_token_ids,
                           output_logits=True, return_dict_in_generate=True)
    out = policy.model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg)
    new = out.sequences[:, ids.shape[1]:]
    step_logp = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, new[..., None]).squeeze(-1)
    logp, mask = policy.token_logprobs(gen.prompt_ids, gen.response_ids)
    for b, r in enumerate(gen.response_ids):
        assert new[b, :len(r)].tolist() == r  # same seed, same samples
        torch.testing.assert_close(logp[b, :len(r)], step_logp[b, :len(r)], atol=1e-5, rtol=1e-5)
        eos = set(policy.eos_token_ids)
        assert gen.finished[b] == (r[-1] in eos) and not (set(r[:-1]) & eos)  # cut after the first EOS


def test_greedy_generation_is_deterministic_and_text_matches_ids(policy):
    prompts = [policy.render(t) for t in TEXTS[:3]]
    a = policy.generate(prompts, SamplingSettings(max_new_tokens=8, greedy=True))
    b = policy.generate(prompts, SamplingSettings(max_new_tokens=8, greedy=True))
    assert a.response_ids == b.response_ids
    assert a.texts == policy.tokenizer.batch_decode(a.response_ids, skip_special_tokens=True)


def test_grad_flows_and_reference_needs_a_reference(policy):
    gen = _rows(policy)
    logp, mask = policy.token_logprobs(gen.prompt_ids, gen.response_ids, grad=True)
    (logp * mask).sum().backward()
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    policy.model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="no reference"):
        policy.token_logprobs(gen.prompt_ids, gen.response_ids, reference=True)
    with pytest.raises(ValueError, match="grad=False"):
        policy.token_logprobs(gen.prompt_ids, gen.response_ids, reference=True, grad=True)


def test_full_parameter_reference_is_a_frozen_copy(path, tmp_path):
    pol = LMPolicy.from_pretrained(path, device="cpu", reference=True)
    gen = _rows(pol)
    before, _ = pol.token_logprobs(gen.prompt_ids, gen.response_ids)
    opt = torch.optim.SGD(pol.parameters(), lr=1.0)
    logp, mask = pol.token_logprobs(gen.prompt_ids, gen.response_ids, grad=True)
    (-(logp * mask).sum()).backward()
    opt.step()
    after, _ = pol.token_logprobs(gen.prompt_ids, gen.response_ids)
    ref, mask = pol.token_logprobs(gen.prompt_ids, gen.response_ids, reference=True)
    assert not torch.allclose(after[mask], before[mask])
    torch.testing.assert_close(ref[mask], before[mask], atol=1e-5, rtol=1e-5)
    # save / load the trained weights into a fresh policy
    pol.save(str(tmp_path / "ckpt"))
    fresh = LMPolicy.from_pretrained(path, device="cpu")
    fresh.load_trainable(str(tmp_path / "ckpt"))
    torch.testing.assert_close(fresh.token_logprobs(gen.prompt_ids, gen.response_ids)[0], after)


def test_lora_reference_is_the_adapter_free_model(path, policy, tmp_path):
    pol = LMPolicy.from_pretrained(path, device="cpu", lora=LoraSettings(r=4, alpha=8))
    assert pol.is_lora and pol.has_reference()
    trainable = {n for n, p in pol.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    gen = _rows(policy)
    base, mask = policy.token_logprobs(gen.prompt_ids, gen.response_ids)
    torch.testing.assert_close(pol.token_logprobs(gen.prompt_ids, gen.response_ids)[0], base)  # B = 0 at init
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved, _ = pol.token_logprobs(gen.prompt_ids, gen.response_ids)
    ref, _ = pol.token_logprobs(gen.prompt_ids, gen.response_ids, reference=True)
    assert not torch.allclose(moved[mask], base[mask])
    torch.testing.assert_close(ref, base, atol=1e-5, rtol=1e-5)
    # the adapter round-trips; the base weights are untouched
    pol.save(str(tmp_path / "adapter"))
    fresh = LMPolicy.from_pretrained(path, device="cpu", lora=LoraSettings(r=4, alpha=8))
    fresh.load_trainable(str(tmp_path / "adapter"))
    torch.testing.assert_close(fresh.token_logprobs(gen.prompt_ids, gen.response_ids)[0], moved)


def test_pad_right():
    out = pad_right([[1.0, 2.0], [], [3.0]], width=3)
    assert out.tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]
