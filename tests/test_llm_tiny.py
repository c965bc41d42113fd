"""The offline tiny model: word-level tokenizer with stable ids, Llama model, save/load round trip, no hub."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from gagpo.llm import tiny  # noqa: E402
from gagpo.llm.prompts import build_prompt, render_prompt  # noqa: E402

_VOCAB_HASH = ("import hashlib, json; from gagpo.llm.tiny import build_tiny_tokenizer; "
               "print(hashlib.sha256(json.dumps(sorted(build_tiny_tokenizer().get_vocab().items())).encode()).hexdigest())")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.build_tiny_tokenizer()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return tiny.build_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), seed=0)


def test_special_and_tag_tokens(tokenizer):
    assert tokenizer.convert_tokens_to_ids(list(tiny.SPECIAL_TOKENS)) == list(range(len(tiny.SPECIAL_TOKENS)))
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 6)
    assert tokenizer.padding_side == "left"
    for tag in tiny.TAG_TOKENS:  # one token each, even glued to words, and kept by decode
        ids = tokenizer(f"x{tag}y", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_tokens_to_ids(tag) in ids and len(ids) == 3
    text = "<think> i will go to fridge 1 </think> <action> take apple 1 from countertop 2 </action>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_environment_text_has_no_unknown_words(tokenizer):
    from toy_envs.household import MiniHouseholdEnv

    env = MiniHouseholdEnv()
    alfworld = ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, you see a cabinet 4, a coffeemachine 1, "
                "a countertop 3, a drawer 12, a fridge 1, a garbagecan 1, a sinkbasin 1, and a toaster 1. "
                "Your task is to: put a clean mug in coffeemachine. On the countertop 3, you see a butterknife 2, "
                "a peppershaker 1, and a soapbottle 3. Nothing happens. You pick up the mug 1 from the countertop 3.")
    texts = [alfworld, "Action 3: <no action>"]  # what the history shows after a response without an action
    for seed in (10_000, 10_001, 10_002):  # held-out tasks, not in the tokenizer's corpus
        obs, info = env.reset(seed=seed)
        texts.append(render_prompt(tokenizer, build_prompt(info["task"], obs, info["admissible_actions"],
                                                           [(obs, "look")], 1)))
    for text in texts:
        tokens = tokenizer.tokenize(text)
        assert tiny.UNK not in tokens, [t for t in tokens if t == tiny.UNK]


def test_chat_template(tokenizer):
    text = render_prompt(tokenizer, "go to desk 1")
    assert text == "<s><|user|> go to desk 1 <|end|> <|assistant|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [1, 4] and ids[-1] == 5  # <s> <|user|> ... <|assistant|>


def test_tokenizer_ids_are_stable_across_processes(tokenizer):
    """Word ids depend only on the corpus (count, then alphabetical order), not on hashing or process state."""
    here = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    there = subprocess.run([sys.executable, "-c", _VOCAB_HASH], capture_output=True, text=True, check=True, env=env)
    assert there.stdout.strip() == here
    assert tiny.build_tiny_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_save_load_round_trip_offline(built, tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(built)
    loaded = PreTrainedTokenizerFast.from_pretrained(built)
    assert isinstance(model, LlamaForCausalLM) and model.config.hidden_size == tiny.TINY_MODEL_SIZES["hidden_size"]
    sample = render_prompt(loaded, "take mug 1 from desk 2 <action> look </action>")
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert loaded(sample, add_special_tokens=False)["input_ids"] == ids
    assert AutoTokenizer.from_pretrained(built)(sample, add_special_tokens=False)["input_ids"] == ids
    assert loaded.padding_side == "left" and loaded.chat_template == tokenizer.chat_template
    # same seed, same weights; the saved weights are the built ones
    torch.manual_seed(0)
    again = LlamaForCausalLM(tiny.tiny_config(tokenizer))
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, again(input_ids=x).logits)
        other = AutoModelForCausalLM.from_pretrained(tiny.build_tiny_model(os.path.join(os.path.dirname(built), "s1"), seed=1))
        assert not torch.allclose(model(input_ids=x).logits, other(input_ids=x).logits)
    info = json.load(open(os.path.join(built, "tiny_info.json")))
    assert info["seed"] == 0 and info["format_steps"] == 0


def test_cached_path_is_reused_and_keyed_by_settings(tmp_path):
    a = tiny.tiny_model_path(seed=0, format_steps=0, cache_dir=str(tmp_path))
    stamp = os.path.getmtime(os.path.join(a, "model.safetensors"))
    assert tiny.tiny_model_path(seed=0, format_steps=0, cache_dir=str(tmp_path)) == a
    assert os.path.getmtime(os.path.join(a, "model.safetensors")) == stamp  # not rebuilt
    b = tiny.tiny_model_path(seed=1, format_steps=0, cache_dir=str(tmp_path))
    assert a != b and sorted(os.listdir(tmp_path)) == sorted([os.path.basename(a), os.path.basename(b)])
