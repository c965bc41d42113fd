r"""`LMPolicy`: any Hugging Face causal language model as an agent policy — sample, then score.

An LLM agent's action is a *sequence* of tokens :math:`y = (y_1, \dots, y_n)` sampled after a prompt
:math:`x`, so everything the losses need comes from per-token log-probabilities

.. math::  \log \pi(y_t \mid x, y_{<t}), \qquad t = 1, \dots, n,

computed by *teacher forcing*: one forward pass over the concatenation ``prompt + response`` gives
them all at once. Three policies are scored this way:

* the **old** policy :math:`\pi_{\mathrm{old}}` — the weights that sampled the rollout, scored once
  right after it (no gradient);
* the **current** policy :math:`\pi_\theta` — the same weights while they are being updated (with
  gradient), inside the PPO epochs;
* the **reference** policy :math:`\pi_{\mathrm{ref}}` — the starting weights, for the KL penalty
  (no gradient). With LoRA the reference is the same network with its adapters switched off
  (``with model.disable_adapter():``), so it costs no memory; without LoRA it is a frozen copy.

Batch layout. Prompts are aligned on their last token at a common width :math:`P`, with their
padding right after their first token (:func:`pad_after_first`: plain left padding would give the
leading pads fully masked attention rows, which CUDA kernels turn into NaN), and responses are
*right*-padded to :math:`T`::

    [x1 pad pad x2 x3 | y1 y2 y3 pad]      attention mask 0 on every pad
    [x1 x2 x3 x4 x5   | y1 pad pad pad]

Position ids count only real tokens (``cumsum(mask) - 1``), so a padded row gets the
log-probabilities it would get alone (for rotary embeddings, as in Llama and Qwen, a constant shift
of positions would not matter anyway; for learned absolute positions it would). Logits are needed only at the :math:`T` positions that
predict response tokens (``logits_to_keep``); log-probabilities are ``logit - logsumexp(logits)``
in float32, divided first by the sampling temperature so that they are those of the distribution
that was actually sampled (top-p truncation is not modelled, as in most RL trainers for LLMs).
Rows are sorted by length and processed in micro-batches, so memory is bounded by the
micro-batch, not by the rollout.

Memory and precision on a GPU (``dtype="auto"``): with LoRA the frozen base weights are bfloat16
and the adapters float32; full-parameter training keeps float32 master weights (a 1e-6 step vanishes
in bfloat16's 8-bit mantissa) and runs the forward passes under bfloat16 autocast; the frozen
reference copy has the policy's dtype. Gradient checkpointing trades a second forward pass for not
storing activations. On a CPU everything is float32.
"""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .prompts import render_prompt

__all__ = ["SamplingSettings", "LoraSettings", "Generation", "LMPolicy", "pad_right", "pad_after_first"]

TokenRows = Sequence[Sequence[int]]


@dataclass
class SamplingSettings:
    """How responses are sampled.

    Attributes:
        temperature: softmax temperature :math:`\\tau > 0` (log-probs for the losses use the same τ).
        top_p: nucleus sampling mass in (0, 1]; 1 samples from the whole distribution.
        top_k: keep the k most likely tokens; 0 disables.
        max_new_tokens: response length limit (a response cut here has no closing tag → invalid).
        greedy: arg-max decoding (evaluation); ignores temperature, top_p and top_k.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1]; got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"top_k must be >= 0 and max_new_tokens >= 1; got {self.top_k}, {self.max_new_tokens}")


@dataclass
class LoraSettings:
    """LoRA adapters (peft): :math:`W + \\frac{\\alpha}{r} BA` on every linear layer but the output head.

    Attributes:
        r: adapter rank.
        alpha: scale numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input (0 keeps teacher forcing deterministic).
        target_modules: module names to adapt, or ``"all-linear"``.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class Generation:
    """Sampled responses, one per prompt (row order of the prompts).

    Attributes:
        texts: decoded responses (special tokens such as EOS removed; ``<think>``/``<action>`` kept).
        response_ids: generated token ids up to and including the first EOS (none if cut by
            ``max_new_tokens``) — exactly the tokens whose log-probs the losses use.
        prompt_ids: the prompt token ids, unpadded.
        finished: the response ended with EOS (False: cut by ``max_new_tokens``).
    """

    texts: list[str]
    response_ids: list[list[int]]
    prompt_ids: list[list[int]]
    finished: list[bool] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)


def pad_right(rows: Sequence[Sequence[float]] | Sequence[torch.Tensor], width: int | None = None,
              value: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stack variable-length rows into a ``(B, width)`` tensor, right-padded with ``value``."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.full((len(rows), width), value, dtype=dtype)
    for b, r in enumerate(rows):
        if len(r):
            out[b, :len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


def unpad_rows(values: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    """The inverse of :func:`pad_right`: the masked entries of each row of ``(B, T)`` ``values`` as
    float32 numpy arrays (e.g. per-token log-probs of each response)."""
    values, mask = values.float().cpu().numpy(), mask.cpu().numpy().astype(bool)
    return [values[b, mask[b]].copy() for b in range(len(values))]


def pad_after_first(rows: TokenRows, pad_id: int, device: torch.device | str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prompts into ``(input_ids, attention_mask)`` of shape ``(B, P)``, ``P`` = the longest,
    every prompt ending at column ``P - 1`` and its padding placed right after its first token::

        [x1 pad pad x2 x3]      attention mask [1 0 0 1 1]
        [y1 y2  y3  y4 y5]                     [1 1 1 1 1]

    Why not plain left padding (``[pad pad x1 x2 x3]``)? In a causal model the query at a leading pad
    may attend only to earlier pads, all masked: its attention row is **fully masked**, a softmax over
    nothing. CUDA attention kernels treat such rows inconsistently (zeros, or NaN in the forward or
    backward pass in bfloat16), and a NaN there leaks into real tokens through ``0 × NaN`` in the next
    layer. With the padding after the first token every query sees at least that token, while every
    real token still attends to exactly the real tokens before it, at position ids that count only
    real tokens (``cumsum(mask) - 1``) — so the real tokens' outputs are those of the unpadded prompt.
    Generation appends new tokens on the right as usual. Every prompt needs at least one token.
    """
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token (an empty prompt cannot be scored or continued)")
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, 0] = int(r[0])
        attn[b, 0] = 1
        if len(r) > 1:
            ids[b, width - len(r) + 1:] = torch.as_tensor(list(r[1:]), dtype=torch.long)
            attn[b, width - len(r) + 1:] = 1
    if device is not None:
        ids, attn = ids.to(device), attn.to(device)
    return ids, attn


def resolve_dtypes(dtype: str, device: torch.device, lora: bool) -> tuple[torch.dtype, torch.dtype | None]:
    """``(weight dtype, autocast dtype or None)`` for a ``dtype`` setting: ``"auto"`` = on CUDA, bf16
    weights with LoRA and fp32 weights with bf16 autocast for full training; on a CPU, fp32. Otherwise
    ``"float32"``, ``"bfloat16"`` or ``"float16"`` weights without autocast."""
    if dtype == "auto":
        cuda = device.type == "cuda"
        return (torch.bfloat16 if (cuda and lora) else torch.float32), (torch.bfloat16 if cuda else None)
    if dtype in _DTYPES:
        return _DTYPES[dtype], None
    raise ValueError(f"unknown dtype {dtype!r}; expected 'auto' or one of {list(_DTYPES)}")


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LMPolicy:
    """A causal LM + tokenizer that generates responses and scores them token by token.

    Build it with :meth:`from_pretrained`; or wrap an already-loaded ``model`` (a
    ``PreTrainedModel`` or a peft ``PeftModel``) and ``tokenizer`` directly.

    Args:
        model: the causal LM whose trainable parameters are the policy's.
        tokenizer: its tokenizer; padding is forced to the left.
        reference_model: a frozen copy for :math:`\\pi_{\\mathrm{ref}}` (full-parameter training
            with a KL penalty); ``None`` with LoRA (adapters are switched off instead) or when no
            reference is needed.
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype (``None``: off).
        micro_batch_size: rows per forward pass when scoring.
        gen_batch_size: prompts per ``generate`` call.
        system_prompt: an optional system message for :meth:`render`.
        engine: the rollout engine's name (:data:`gagpo.llm.engine.ENGINES`): ``"hf"`` generates
            with a serving copy of the weights in the serving dtype (adapters merged).
    """

    def __init__(self, model: Any, tokenizer: Any, *, reference_model: Any | None = None,
                 autocast_dtype: torch.dtype | None = None, micro_batch_size: int = 8, gen_batch_size: int = 64,
                 system_prompt: str | None = None, engine: str = "hf"):
        if micro_batch_size < 1 or gen_batch_size < 1:
            raise ValueError(f"micro_batch_size and gen_batch_size must be >= 1; got {micro_batch_size}, {gen_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:  # many base models ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.reference_model = reference_model
        self.autocast_dtype = autocast_dtype
        self.micro_batch_size = micro_batch_size
        from .engine import ENGINES

        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; expected one of {list(ENGINES)}")
        self.gen_batch_size = gen_batch_size
        self.system_prompt = system_prompt
        self.engine_name = engine
        self._engine: Any = None
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids: list[int] = eos

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        lora: LoraSettings | None = None,
        dtype: str = "auto",
        device: str = "auto",
        gradient_checkpointing: bool = False,
        reference: bool = False,
        micro_batch_size: int = 8,
        gen_batch_size: int = 64,
        cache_dir: str | None = None,
        system_prompt: str | None = None,
        engine: str = "hf",
        seed: int = 0,
    ) -> "LMPolicy":
        """Load a model and tokenizer (a hub name, a local folder, or ``"tiny"``).

        Args:
            name_or_path: anything ``AutoModelForCausalLM.from_pretrained`` accepts; ``"tiny"`` builds
                (once, then caches) the offline tiny model of :mod:`gagpo.llm.tiny` with its format
                warm-up; ``"tiny-random"`` the same without warm-up.
            lora: add LoRA adapters (only they train; the reference is the adapter-free model).
            dtype: weight dtype: ``"auto"`` (see the module docstring), ``"float32"``, ``"bfloat16"``
                or ``"float16"``.
            device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
            gradient_checkpointing: recompute activations in the backward pass (saves memory).
            reference: keep a frozen copy of the initial weights as the reference policy (only
                without LoRA; needed when the KL coefficient is non-zero).
            micro_batch_size, gen_batch_size, system_prompt, engine: see the class.
            cache_dir: where ``"tiny"`` is cached (default :func:`gagpo.llm.tiny.default_cache_dir`).
            seed: seed of the LoRA adapters' random initialisation (see :meth:`from_model`).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

        tokenizer_class = AutoTokenizer
        if name_or_path in ("tiny", "tiny-random"):
            from .tiny import DEFAULT_FORMAT_STEPS, tiny_model_path

            steps = 0 if name_or_path == "tiny-random" else DEFAULT_FORMAT_STEPS
            name_or_path = tiny_model_path(seed=0, format_steps=steps, cache_dir=cache_dir)
            tokenizer_class = PreTrainedTokenizerFast  # never a model-specific class (see gagpo.llm.tiny)
        dev = _resolve_device(device)
        weight_dtype, autocast = resolve_dtypes(dtype, dev, lora is not None)
        tokenizer = tokenizer_class.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=weight_dtype).to(dev)
        return cls.from_model(model, tokenizer, lora=lora, gradient_checkpointing=gradient_checkpointing,
                              reference=reference, autocast_dtype=autocast, micro_batch_size=micro_batch_size,
                              gen_batch_size=gen_batch_size, system_prompt=system_prompt, engine=engine, seed=seed)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
        reference: bool = False,
        autocast_dtype: torch.dtype | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> "LMPolicy":
        """Set up an already-built causal LM for training, as :meth:`from_pretrained` does after loading:
        a frozen reference copy (``reference`` without LoRA), the LoRA adapters, gradient checkpointing,
        no KV cache outside ``generate()``, eval mode. The adapters' random initialisation is drawn
        from ``torch.manual_seed(seed)`` inside a forked random state: a function of ``seed`` alone, and
        the caller's random state is left as it was. ``kwargs`` go to the constructor
        (``micro_batch_size``, ``gen_batch_size``, ``system_prompt``, ``engine``)."""
        ref = None
        if reference and lora is None:
            ref = copy.deepcopy(model).eval()  # same dtype as the policy: KL exactly 0 at the start
            ref.requires_grad_(False)
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # the same seed, the same adapters (two runs of one seed are identical)
                model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                         target_modules=lora.target_modules, task_type="CAUSAL_LM"))
        if gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA) without extra hooks
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # generate() turns the cache on for itself
        model.eval()
        return cls(model, tokenizer, reference_model=ref, autocast_dtype=autocast_dtype, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters (the adapters with LoRA, every weight otherwise)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def backbone(self) -> Any:
        """The transformer without its language-model head (LoRA adapters included, when present):
        its ``last_hidden_state`` is the final, normalised hidden state that the head reads."""
        base = self.model.get_base_model() if self.is_lora else self.model
        return base.base_model

    def has_reference(self) -> bool:
        return self.is_lora or self.reference_model is not None

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ text <-> ids
    def render(self, user_text: str) -> str:
        """The prompt string for one user message (chat template applied when there is one)."""
        return render_prompt(self.tokenizer, user_text, self.system_prompt)

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered prompts (a chat template supplies its own BOS)."""
        add_special = not getattr(self.tokenizer, "chat_template", None)
        return [list(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=add_special)["input_ids"]]

    def _as_ids(self, rows: Sequence[str] | TokenRows, prompts: bool) -> list[list[int]]:
        if len(rows) and isinstance(rows[0], str):
            if prompts:
                return self.encode_prompts(rows)  # type: ignore[arg-type]
            return [list(ids) for ids in self.tokenizer(list(rows), add_special_tokens=False)["input_ids"]]
        return [list(map(int, r)) for r in rows]

    # ------------------------------------------------------------------ sampling
    @property
    def engine(self) -> Any:
        """The rollout engine that :meth:`generate` calls (:mod:`gagpo.llm.engine`; default
        :class:`~gagpo.llm.engine.HFEngine` with a serving copy, built on first use). Assign another
        object with ``generate`` and ``refresh`` to replace it."""
        if self._engine is None:
            from .engine import make_engine

            self._engine = make_engine(self.engine_name, self)
        return self._engine

    @engine.setter
    def engine(self, engine: Any) -> None:
        self._engine = engine

    def generate(self, prompts: Sequence[str] | TokenRows, sampling: SamplingSettings | None = None,
                 seed: int | None = None) -> Generation:
        """Sample one response per prompt (rendered strings or token-id lists), in batches of
        ``gen_batch_size``, with :attr:`engine` (which first takes in the current weights if they changed).

        ``seed`` seeds torch's global generator before each batch (generation is then reproducible
        on a CPU; GPU kernels may still differ in the last bits).
        """
        return self.engine.generate(self._as_ids(prompts, prompts=True), sampling or SamplingSettings(), seed)

    def pad_prompts(self, rows: TokenRows) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both ``(B, P)``: prompts aligned on their **last** token, with
        the padding placed right **after each prompt's first token** (see :func:`pad_after_first`), so
        that no query row of the attention is fully masked."""
        return pad_after_first(rows, self.tokenizer.pad_token_id, self.device)

    _left_pad = pad_prompts  # the name used before the layout changed

    # ------------------------------------------------------------------ scoring
    def token_logprobs(
        self,
        prompts: Sequence[str] | TokenRows,
        responses: Sequence[str] | TokenRows,
        *,
        grad: bool = False,
        reference: bool = False,
        temperature: float = 1.0,
        return_entropy: bool = False,
        return_hidden: bool = False,
        micro_batch_size: int | None = None,
    ):
        r"""Teacher-forced log-probabilities of each response token: ``(logp, mask)``, both ``(B, T)``.

        ``logp[b, t]`` = :math:`\log \pi(y_{b,t} \mid x_b, y_{b,<t})` with logits divided by
        ``temperature``; ``mask[b, t]`` is True for the ``len(responses[b])`` real tokens (left-aligned;
        ``T`` = the longest response) and ``logp`` is 0 elsewhere.

        Args:
            prompts: rendered prompt strings or token-id lists.
            responses: response strings or token-id lists (pass the ids from :meth:`generate`: a
                decoded-then-re-encoded text need not give the same tokens).
            grad: keep the graph (current policy). For memory, call this per micro-batch and
                backpropagate each before the next (the trainer does); without ``grad`` the rows are
                processed in micro-batches of ``micro_batch_size``.
            reference: score under the reference policy (adapters off, or the frozen copy); no grad.
            temperature: τ of the sampling distribution.
            return_entropy: also return the per-token entropy of the (tempered) next-token
                distribution, ``(B, T)``, as a third element (with grad when ``grad``).
            return_hidden: also return, last, the final hidden state at each prompt's last token,
                ``(B, H)`` float32 (with grad when ``grad``) — what a value head reads
                (:class:`gagpo.llm.value.ValueHead`); causal attention makes it independent of the
                response, so it equals :meth:`prompt_hidden` of the prompt alone.
            micro_batch_size: rows per forward pass; default ``self.micro_batch_size``.
        """
        if reference and grad:
            raise ValueError("the reference policy is frozen: reference=True needs grad=False")
        if reference and not self.has_reference():
            raise ValueError("this policy has no reference: load it with lora=... or reference=True")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        p_ids = self._as_ids(prompts, prompts=True)
        r_ids = self._as_ids(responses, prompts=False)
        if len(p_ids) != len(r_ids):
            raise ValueError(f"{len(p_ids)} prompts but {len(r_ids)} responses")
        n, width = len(p_ids), max((len(r) for r in r_ids), default=0)
        mb = micro_batch_size or self.micro_batch_size
        order = sorted(range(n), key=lambda i: len(p_ids[i]) + len(r_ids[i]))  # less padding per micro-batch
        if reference and self.reference_model is not None:
            model, ctx = self.reference_model, contextlib.nullcontext()
        elif reference:
            model, ctx = self.model, self.model.disable_adapter()
        else:
            model, ctx = self.model, contextlib.nullcontext()
        logp_parts, ent_parts, hid_parts, rows = [], [], [], []
        with ctx, torch.set_grad_enabled(grad):
            for start in range(0, n, mb):
                idx = order[start:start + mb]
                lp, ent, hid = self._score(model, [p_ids[i] for i in idx], [r_ids[i] for i in idx], temperature,
                                           return_entropy, return_hidden)
                logp_parts.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
                if return_entropy:
                    ent_parts.append(torch.nn.functional.pad(ent, (0, width - ent.shape[1])))
                if return_hidden:
                    hid_parts.append(hid)
                rows += idx
        inverse = torch.empty(n, dtype=torch.long)
        inverse[torch.as_tensor(rows, dtype=torch.long)] = torch.arange(n)
        inverse = inverse.to(self.device)
        device = self.device
        logp = torch.cat(logp_parts)[inverse] if n else torch.zeros((0, width), device=device)
        lengths = torch.as_tensor([len(r) for r in r_ids], dtype=torch.long, device=device)
        mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
        out = [logp, mask]
        if return_entropy:
            out.append(torch.cat(ent_parts)[inverse] if n else torch.zeros((0, width), device=device))
        if return_hidden:
            out.append(torch.cat(hid_parts)[inverse] if n else torch.zeros((0, self.hidden_size), device=device))
        return tuple(out)

    @property
    def hidden_size(self) -> int:
        """Width H of the model's hidden states."""
        return int(self.model.config.hidden_size)

    def prompt_hidden(self, prompts: Sequence[str] | TokenRows, *, grad: bool = False,
                      micro_batch_size: int | None = None) -> torch.Tensor:
        """``(B, H)`` float32: the final hidden state (after the last norm) at each prompt's last token.

        One forward pass of :attr:`backbone` (no language-model head, no logits) per micro-batch of
        prompts padded as :meth:`pad_prompts` pads them, rows sorted by length; the current policy
        (adapters on).
        """
        p_ids = self._as_ids(prompts, prompts=True)
        n, mb = len(p_ids), micro_batch_size or self.micro_batch_size
        order = sorted(range(n), key=lambda i: len(p_ids[i]))
        parts = []
        with torch.set_grad_enabled(grad):
            for start in range(0, n, mb):
                ids, attn = self.pad_prompts([p_ids[i] for i in order[start:start + mb]])
                with self._autocast():
                    out = self.backbone(input_ids=ids, attention_mask=attn,
                                        position_ids=(attn.cumsum(-1) - 1).clamp(min=0), use_cache=False)
                parts.append(out.last_hidden_state[:, -1].float())
        if not n:
            return torch.zeros((0, self.hidden_size), device=self.device)
        inverse = torch.empty(n, dtype=torch.long)
        inverse[torch.as_tensor(order, dtype=torch.long)] = torch.arange(n)
        return torch.cat(parts)[inverse.to(self.device)]

    def _score(self, model: Any, prompts: TokenRows, responses: TokenRows, temperature: float,
               entropy: bool, hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One micro-batch: (B, T_mb) log-probs (0 on padding), optionally entropies and the (B, H)
        final hidden state at each prompt's last token."""
        b = len(prompts)
        p_width = max(len(p) for p in prompts)
        t_width = max(len(r) for r in responses)
        if t_width == 0:
            empty = torch.zeros((b, 0), device=self.device)
            h = self.prompt_hidden(prompts, grad=torch.is_grad_enabled(), micro_batch_size=b) if hidden else None
            return empty, (empty if entropy else None), h
        p_ids, p_attn = pad_after_first(prompts, self.tokenizer.pad_token_id)
        r_ids = torch.full((b, t_width), self.tokenizer.pad_token_id, dtype=torch.long)
        r_attn = torch.zeros_like(r_ids)
        for k, r in enumerate(responses):
            if len(r):
                r_ids[k, :len(r)] = torch.as_tensor(r, dtype=torch.long)
                r_attn[k, :len(r)] = 1
        ids, attn = torch.cat([p_ids, r_ids], 1), torch.cat([p_attn, r_attn], 1)
        ids, attn = ids.to(self.device), attn.to(self.device)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        with self._autocast():
            out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids, use_cache=False,
                        logits_to_keep=t_width + 1, output_hidden_states=hidden)
        # the last entry of hidden_states is the final, normalised one (the LM head's input)
        h = out.hidden_states[-1][:, p_width - 1].float() if hidden else None
        # logits at positions P-1 .. P+T-2 predict the response tokens at P .. P+T-1
        logits = out.logits[:, -(t_width + 1):-1].float() / temperature
        targets = ids[:, p_width:]
        lse = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
        valid = attn[:, p_width:].bool()
        logp = torch.where(valid, logp, torch.zeros_like(logp))
        ent = None
        if entropy:
            probs = torch.softmax(logits, dim=-1)
            ent = lse - (probs * logits).sum(-1)
            ent = torch.where(valid, ent, torch.zeros_like(ent))
        return logp, ent, h

    # ------------------------------------------------------------------ persistence
    def save(self, path: str) -> None:
        """Save the trainable weights (the adapter with LoRA, the whole model otherwise) and the tokenizer."""
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def load_trainable(self, path: str) -> None:
        """Load weights written by :meth:`save` into this policy (the reference stays as it is)."""
        from safetensors.torch import load_file

        if self.is_lora:
            from peft import set_peft_model_state_dict

            state = load_file(os.path.join(path, "adapter_model.safetensors"), device=str(self.device))
            result = set_peft_model_state_dict(self.model, state)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"adapter in {path} does not fit this model: unexpected keys {result.unexpected_keys[:5]}")
            return
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(path, dtype=next(self.model.parameters()).dtype)
        self.model.load_state_dict(saved.state_dict())
