"""A tiny causal language model that is built, not downloaded: the book's offline stand-in for an LLM.

Two parts, both saved with ``save_pretrained`` so the usual loaders work with ``HF_HUB_OFFLINE=1``::

    path = build_tiny_model("models/tiny")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)

* **Tokenizer** — a word-level tokenizer trained with the ``tokenizers`` library on the words the
  agent meets: MiniHousehold observations and commands, ALFWorld's receptacles, objects and verbs,
  the numbers 0–99, the prompt template's wording and punctuation. Text is lower-cased and split on
  whitespace and punctuation, so a command such as ``go to fridge 1`` is four tokens and decodes back
  to itself. ``<think>``, ``</think>``, ``<action>``, ``</action>`` are single added tokens (kept by
  ``decode(..., skip_special_tokens=True)``); ``<pad>``, ``<s>``, ``<unk>`` and the chat markers
  ``<|system|>``, ``<|user|>``, ``<|assistant|>``, ``<|end|>`` (the end-of-turn and EOS token) are
  special tokens with fixed ids 0–6. Padding is on the left, as batched generation needs. A short
  chat template wraps messages as ``<s><|user|> … <|end|> <|assistant|>``.
* **Model** — a Llama-architecture causal LM (``LlamaConfig``, hidden size 64, 2 layers, 4 heads)
  with random weights from ``seed``. Llama, not Qwen2: with a ``Qwen2Config`` in the folder,
  ``AutoTokenizer`` silently returns a Qwen2 tokenizer with other ids.

A random model never writes ``<action>…</action>``, so every action it takes is invalid and, all
returns in a group being equal, every advantage is zero: RL has nothing to learn from.
``format_steps > 0`` therefore adds a short *format warm-up* (supervised, a few seconds on a CPU): on
prompts from random MiniHousehold walks, the model learns to answer
``<think> i will CMD </think> <action> CMD </action>`` with CMD a uniformly random admissible command.
The result is a poor but trainable agent: on held-out MiniHousehold tasks (history 2, 32 new tokens)
about a third of its actions are valid, half name a command that is not admissible here, and one in
seven breaks the format — a starting point where RL must improve both validity and success.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Iterator

import numpy as np

__all__ = [
    "TAG_TOKENS", "SPECIAL_TOKENS", "DEFAULT_FORMAT_STEPS", "TINY_MODEL_SIZES", "SMALL_MODEL_SIZES", "CHAT_TEMPLATE", "ALFWORLD_RECEPTACLES", "ALFWORLD_OBJECTS",
    "tiny_corpus", "build_tiny_tokenizer", "tiny_config", "format_examples", "build_tiny_model", "tiny_model_path", "default_cache_dir",
]

TAG_TOKENS = ("<think>", "</think>", "<action>", "</action>")
"""The answer-format tags: one token each."""

PAD, BOS, UNK, SYSTEM, USER, ASSISTANT, END = "<pad>", "<s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (PAD, BOS, UNK, SYSTEM, USER, ASSISTANT, END)
"""Special tokens, with ids 0..6 in this order; ``<|end|>`` ends a turn and is the EOS token."""

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_MODEL_SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=4096)
"""Shape of the tiny Llama (about 97k parameters with its ~360-word vocabulary, embeddings tied)."""

# ALFWorld's vocabulary (ALFRED class names as the game prints them), so that the same tokenizer
# reads ALFWorld observations without unknown words.
ALFWORLD_RECEPTACLES = (
    "armchair", "bathtub", "bathtubbasin", "bed", "cabinet", "cart", "coffeemachine", "coffeetable", "countertop",
    "desk", "diningtable", "drawer", "dresser", "fridge", "garbagecan", "handtowelholder", "laundryhamper",
    "microwave", "ottoman", "safe", "shelf", "sidetable", "sink", "sinkbasin", "sofa", "stoveburner", "toaster",
    "toilet", "toiletpaperhanger", "towelholder", "tvstand",
)
ALFWORLD_OBJECTS = (
    "alarmclock", "apple", "baseballbat", "basketball", "blinds", "book", "boots", "bowl", "box", "bread",
    "butterknife", "candle", "cd", "cellphone", "chair", "cloth", "creditcard", "cup", "curtains", "desklamp",
    "dishsponge", "egg", "floorlamp", "footstool", "fork", "glassbottle", "handtowel", "houseplant", "kettle",
    "keychain", "knife", "ladle", "laptop", "lettuce", "lightswitch", "mirror", "mug", "newspaper", "painting",
    "pan", "papertowel", "papertowelroll", "pen", "pencil", "peppershaker", "pillow", "plate", "plunger",
    "poster", "pot", "potato", "remotecontrol", "saltshaker", "scrubbrush", "showerdoor", "showerglass",
    "showerhead", "soapbar", "soapbottle", "spatula", "spoon", "spraybottle", "statue", "stool", "stoveknob",
    "teddybear", "television", "tennisracket", "tissuebox", "toiletpaper", "toiletpaperroll", "tomato", "towel",
    "vase", "watch", "wateringcan", "window", "winebottle",
)
_ALFWORLD_TEXT = (
    "go to take from put in on move open close toggle clean heat cool slice use examine look inventory help "
    "you are in the middle of a room looking quickly around you see nothing happens arrive at pick up the "
    "is it closed turn some two hot cool clean sliced your task is to find and then with under light "
    "carrying not anything there here this that into onto which what where welcome textworld alfred -= =- "
    "facing using off won lost no"
)
_PUNCTUATION = ". , : ; ! ? ( ) [ ] ' \" - _ / * = + < > | #"
_FORMAT_THOUGHT = "i will"  # the warm-up's thought: "<think> i will CMD </think>"
DEFAULT_FORMAT_STEPS = 150
"""Format warm-up steps of the cached ``"tiny"`` model."""
FORMAT_CONTEXT = 128
"""The warm-up trains on the last this-many prompt tokens only (the admissible list and the
instruction): four times cheaper than whole prompts, and RoPE's relative positions carry the
skill over to full prompts."""


def default_cache_dir() -> str:
    """Where built models are cached: ``$GAGPO_CACHE_DIR``, else ``~/.cache/gagpo``."""
    return os.environ.get("GAGPO_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gagpo")


# ---------------------------------------------------------------------------------------- tokenizer
def _household_walks(n_tasks: int, steps: int, seed: int) -> Iterator[tuple[str, str, list[str]]]:
    """(task, observation, admissible) along uniformly random MiniHousehold walks."""
    from toy_envs.household import MiniHouseholdEnv

    env = MiniHouseholdEnv()
    rng = np.random.default_rng(seed)
    for task_seed in range(n_tasks):
        obs, info = env.reset(seed=task_seed)
        for _ in range(steps):
            yield info["task"], obs, list(info["admissible_actions"])
            obs, _, terminated, _, info = env.step(int(rng.integers(len(info["admissible_actions"]))))
            if terminated:
                break


@functools.lru_cache(maxsize=1)
def tiny_corpus() -> tuple[str, ...]:
    """The texts the tokenizer is trained on (deterministic): word lists, template wording, and the
    observations and commands of a few MiniHousehold walks (for the phrasing of its observations)."""
    from toy_envs import household

    from .prompts import DEFAULT_TEMPLATE

    texts = [" ".join(ALFWORLD_RECEPTACLES), " ".join(ALFWORLD_OBJECTS), _ALFWORLD_TEXT, _PUNCTUATION,
             " ".join(str(i) for i in range(100)), _FORMAT_THOUGHT]
    texts += [" ".join(names) for names in (household.FOODS, household.THINGS, household.SURFACES,
                                            household.STORAGE, (household.FRIDGE, household.MICROWAVE))]
    texts += [getattr(DEFAULT_TEMPLATE, name) for name in DEFAULT_TEMPLATE.__dataclass_fields__]
    for task, obs, admissible in _household_walks(n_tasks=4, steps=10, seed=0):
        texts += [task, obs, *admissible]
    return tuple(texts)


def build_tiny_tokenizer():
    """The word-level tokenizer as a ``PreTrainedTokenizerFast`` (left padding, chat template)."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    # The trainer orders words by count, then alphabetically: the same corpus gives the same ids.
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False)
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, single_word=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=END, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT], padding_side="left", model_max_length=4096,
        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
    )


SMALL_MODEL_SIZES = dict(TINY_MODEL_SIZES, hidden_size=128, intermediate_size=256, num_hidden_layers=4)
"""A somewhat larger word-level Llama (637,440 parameters with the book's vocabulary): twice as wide and deep as the tiny one."""


def tiny_config(tokenizer, sizes: dict | None = None):
    """The ``LlamaConfig`` of the tiny model for ``tokenizer``: the shape ``sizes`` (default
    :data:`TINY_MODEL_SIZES`; :data:`SMALL_MODEL_SIZES` is a larger one), the vocabulary and the special
    tokens of the tokenizer, embeddings tied."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **(sizes or TINY_MODEL_SIZES),
    )


def _fingerprint(tokenizer, seed: int, format_steps: int, sizes: dict | None = None) -> str:
    """Hash of everything the built model depends on: vocabulary, sizes, settings and the source of
    this module and of the prompt templates (the warm-up trains on rendered prompts)."""
    from . import prompts

    sources = [open(mod.__file__, encoding="utf-8").read() for mod in (sys.modules[__name__], prompts)]
    blob = json.dumps({"vocab": sorted(tokenizer.get_vocab().items()), "sizes": sizes or TINY_MODEL_SIZES, "seed": seed,
                       "format_steps": format_steps, "sources": sources}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------- model
def format_examples(tokenizer, n: int, seed: int, context: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) for the format warm-up: the last ``context`` tokens of prompts with
    up to 2 history pairs from random MiniHousehold walks, and a random admissible answer."""
    from .prompts import build_prompt, render_prompt

    rng = np.random.default_rng([seed, 7])
    walks = list(_household_walks(n_tasks=16, steps=12, seed=seed + 1))
    examples, history, last_task = [], [], None
    for task, obs, admissible in walks:
        if task != last_task:
            history, last_task = [], task
        command = admissible[int(rng.integers(len(admissible)))]
        prompt = render_prompt(tokenizer, build_prompt(task, obs, admissible, history[-2:], len(history)))
        response = f"<think> {_FORMAT_THOUGHT} {command} </think> <action> {command} </action>"
        examples.append((tokenizer(prompt, add_special_tokens=False)["input_ids"][-context:],
                         tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]))
        history.append((obs, command))
    return [examples[i] for i in rng.integers(len(examples), size=n)]


def _format_warmup(model, tokenizer, steps: int, seed: int, batch_size: int = 16, lr: float = 3e-3,
                   context: int = FORMAT_CONTEXT) -> list[float]:
    """Supervised steps on format examples (loss on the response tokens only, learning rate decaying
    linearly to 0); returns the losses."""
    import torch

    examples = format_examples(tokenizer, steps * batch_size, seed, context)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / steps)
    model.train()
    losses = []
    for k in range(steps):
        batch = examples[k * batch_size:(k + 1) * batch_size]
        width = max(len(p) + len(r) for p, r in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        attn = torch.zeros_like(ids)
        for b, (p, r) in enumerate(batch):
            seq = p + r
            ids[b, width - len(seq):] = torch.tensor(seq)
            labels[b, width - len(r):] = torch.tensor(r)
            attn[b, width - len(seq):] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        loss = model(input_ids=ids, attention_mask=attn, position_ids=pos, labels=labels, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def build_tiny_model(out_dir: str, seed: int = 0, format_steps: int = 0, sizes: dict | None = None) -> str:
    """Build the tiny model and its tokenizer and save both to ``out_dir``; returns ``out_dir``.

    Args:
        out_dir: folder to write (created; existing files of the same names are overwritten).
        seed: seed of the random initial weights (and of the warm-up data).
        format_steps: supervised format warm-up steps (batch 16; about 0.05 s each on a CPU); 0 keeps
            the random weights.
        sizes: the model's shape (:func:`tiny_config`; default :data:`TINY_MODEL_SIZES`).

    The folder holds ``config.json``, ``model.safetensors``, ``generation_config.json`` and the
    tokenizer files; ``tiny_info.json`` records the seed, the warm-up and its losses.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tokenizer, sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        losses = _format_warmup(model, tokenizer, format_steps, seed) if format_steps > 0 else []
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "tiny_info.json"), "w") as fh:
        json.dump({"seed": seed, "format_steps": format_steps, "format_losses": losses,
                   "fingerprint": _fingerprint(tokenizer, seed, format_steps, sizes),
                   "sizes": sizes or TINY_MODEL_SIZES}, fh, indent=1)
    return out_dir


def tiny_model_path(seed: int = 0, format_steps: int = DEFAULT_FORMAT_STEPS, cache_dir: str | None = None,
                    sizes: dict | None = None) -> str:
    """The cached tiny model for ``(seed, format_steps, sizes)`` (``sizes``: see :func:`tiny_config`),
    built on first use.

    The folder name carries a fingerprint of the vocabulary, sizes and settings, so a change to any of
    them builds a new model instead of reusing a stale one. Building goes to a temporary folder that
    is renamed into place, so parallel test workers never see a half-written model.
    """
    cache_dir = cache_dir or default_cache_dir()
    tokenizer = build_tiny_tokenizer()
    name = "tiny" if sizes in (None, TINY_MODEL_SIZES) else f"tiny-h{sizes['hidden_size']}x{sizes['num_hidden_layers']}"
    path = os.path.join(cache_dir, f"{name}-seed{seed}-fmt{format_steps}-{_fingerprint(tokenizer, seed, format_steps, sizes)}")
    if os.path.exists(os.path.join(path, "tiny_info.json")):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=cache_dir)
    try:
        build_tiny_model(tmp, seed=seed, format_steps=format_steps, sizes=sizes)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first
            if not os.path.exists(os.path.join(path, "tiny_info.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
