r"""`LMPolicy`: any Hugging Face causal language model as an agent policy — sample, then score.

An agent policy built from a language model does four jobs, each in its own module; :class:`LMPolicy`
composes them and is what the rollouts, the trainers and the notebooks hold::

    encoding.py   PromptCodec: tokenizer, chat template, prompt and response encoding, padding
    engine.py     the rollout engine: sampling responses (a serving copy of the weights)
    actor.py      Actor: the network being trained (token log-probs, hidden states, LoRA, dtype)
    reference.py  Reference: pi_ref for the KL penalty (a frozen copy, or the adapters switched off)

:meth:`LMPolicy.token_logprobs` encodes texts (or takes token ids), then asks the actor — or, with
``reference=True``, the reference — for a :class:`~gagpo.llm.actor.TokenLogprobs` (``logp``, ``mask``,
optional ``entropy`` and ``hidden``). :meth:`LMPolicy.generate` asks the engine. The padding helpers
(:func:`pad_right`, :func:`unpad_rows`, :func:`pad_after_first`) and :class:`LoraSettings` are
re-exported here from the parts that define them.

Memory and precision on a GPU (``dtype="auto"``, :func:`gagpo.llm.devices.resolve_dtypes`): with LoRA
the frozen base weights are bfloat16 and the adapters float32; full-parameter training keeps float32
master weights (a 1e-6 step vanishes in bfloat16's 8-bit mantissa) and runs the forward passes under
bfloat16 autocast; the frozen reference copy has the policy's dtype. Gradient checkpointing trades a
second forward pass for not storing activations. On a CPU everything is float32.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .actor import Actor, LoraSettings, TokenLogprobs, prepare_model
from .devices import resolve_device, resolve_dtypes
from .encoding import PromptCodec, TokenRows, eos_token_ids, pad_after_first, pad_right, unpad_rows
from .reference import Reference, frozen_copy

__all__ = ["SamplingSettings", "LoraSettings", "Generation", "LMPolicy", "TokenLogprobs", "pad_right", "unpad_rows",
           "pad_after_first"]


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


class _OnPart:
    """An attribute of :class:`LMPolicy` that lives on one of its parts: read from it and written to it
    (``policy.autocast_dtype`` is ``policy.actor.autocast_dtype``)."""

    def __init__(self, part: str, name: str | None = None):
        self.part, self.name = part, name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(getattr(obj, self.part), self.name, value)


class LMPolicy:
    """A causal LM + tokenizer that generates responses and scores them token by token: the facade of
    :attr:`codec` (a :class:`~gagpo.llm.encoding.PromptCodec`), :attr:`engine`, :attr:`actor` (an
    :class:`~gagpo.llm.actor.Actor`) and :attr:`reference` (a :class:`~gagpo.llm.reference.Reference`).

    Build it with :meth:`from_pretrained`; or wrap an already-loaded ``model`` (a
    ``PreTrainedModel`` or a peft ``PeftModel``) and ``tokenizer`` directly (:meth:`from_model` also
    adds LoRA adapters and a reference copy).

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

    The parts' attributes read (and, for settings, write) through the policy: ``model``,
    ``autocast_dtype``, ``micro_batch_size``, ``is_lora``, ``device``, ``backbone`` and ``hidden_size``
    are the actor's, ``tokenizer``, ``system_prompt`` and ``eos_token_ids`` the codec's,
    ``reference_model`` the reference's frozen copy.
    """

    model = _OnPart("actor")
    autocast_dtype = _OnPart("actor")
    micro_batch_size = _OnPart("actor")
    is_lora = _OnPart("actor")       # read-only: whether the model carries LoRA adapters
    device = _OnPart("actor")        # read-only: the model's device
    backbone = _OnPart("actor")      # read-only: the transformer without its language-model head
    hidden_size = _OnPart("actor")   # read-only: the width H of its hidden states
    tokenizer = _OnPart("codec")
    system_prompt = _OnPart("codec")
    eos_token_ids = _OnPart("codec")
    reference_model = _OnPart("reference", "model")

    def __init__(self, model: Any, tokenizer: Any, *, reference_model: Any | None = None,
                 autocast_dtype: torch.dtype | None = None, micro_batch_size: int = 8, gen_batch_size: int = 64,
                 system_prompt: str | None = None, engine: str = "hf"):
        if micro_batch_size < 1 or gen_batch_size < 1:
            raise ValueError(f"micro_batch_size and gen_batch_size must be >= 1; got {micro_batch_size}, {gen_batch_size}")
        from .engine import ENGINES

        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; expected one of {list(ENGINES)}")
        self.codec = PromptCodec(tokenizer, system_prompt, eos_token_ids(model, tokenizer))
        self.actor = Actor(model, self.codec.pad_token_id, autocast_dtype=autocast_dtype,
                           micro_batch_size=micro_batch_size)
        self.reference = Reference(self.actor, reference_model)
        self.gen_batch_size = gen_batch_size
        self.engine_name = engine
        self._engine: Any = None

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
        dev = resolve_device(device)
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
        a frozen reference copy (``reference`` without LoRA; :func:`gagpo.llm.reference.frozen_copy`), then
        :func:`gagpo.llm.actor.prepare_model` — the LoRA adapters (their random initialisation a function of
        ``seed`` alone), gradient checkpointing, no KV cache outside ``generate()``, eval mode. ``kwargs`` go
        to the constructor (``micro_batch_size``, ``gen_batch_size``, ``system_prompt``, ``engine``)."""
        # the reference copy is taken before the adapters are added: same dtype as the policy, KL exactly 0 at the start
        ref = frozen_copy(model) if reference and lora is None else None
        model = prepare_model(model, lora, gradient_checkpointing, seed)
        return cls(model, tokenizer, reference_model=ref, autocast_dtype=autocast_dtype, **kwargs)

    # ------------------------------------------------------------------ the actor and the reference
    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters (the adapters with LoRA, every weight otherwise)."""
        return self.actor.parameters()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward passes' autocast context (:meth:`gagpo.llm.actor.Actor.autocast`)."""
        return self.actor.autocast()

    def has_reference(self) -> bool:
        """Whether :math:`\\pi_{\\mathrm{ref}}` can be scored (a frozen copy, or LoRA adapters to switch off)."""
        return self.reference.available

    # ------------------------------------------------------------------ text <-> ids
    def render(self, user_text: str) -> str:
        """The prompt string for one user message (chat template applied when there is one)."""
        return self.codec.render(user_text)

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered prompts (a chat template supplies its own BOS)."""
        return self.codec.encode_prompts(prompts)

    def pad_prompts(self, rows: TokenRows) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both ``(B, P)``, on the policy's device: prompts aligned on their
        **last** token, with the padding placed right **after each prompt's first token** (see
        :func:`pad_after_first`), so that no query row of the attention is fully masked."""
        return self.codec.pad_prompts(rows, self.device)

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
        return self.engine.generate(self.codec.prompt_ids(prompts), sampling or SamplingSettings(), seed)

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
    ) -> TokenLogprobs:
        r"""Teacher-forced log-probabilities of each response token, as a
        :class:`~gagpo.llm.actor.TokenLogprobs`: ``logp`` and ``mask``, both ``(B, T)`` (it also unpacks as
        ``logp, mask = ...``).

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
            return_entropy: also fill ``entropy``, the per-token entropy of the (tempered) next-token
                distribution, ``(B, T)`` (with grad when ``grad``); it unpacks third.
            return_hidden: also fill ``hidden``, the final hidden state at each prompt's last token,
                ``(B, H)`` float32 (with grad when ``grad``) — what a value head reads
                (:class:`gagpo.llm.value.ValueHead`); causal attention makes it independent of the
                response, so it equals :meth:`prompt_hidden` of the prompt alone. It unpacks last.
            micro_batch_size: rows per forward pass; default ``self.micro_batch_size``.
        """
        if reference and grad:
            raise ValueError("the reference policy is frozen: reference=True needs grad=False")
        p_ids, r_ids = self.codec.prompt_ids(prompts), self.codec.response_ids(responses)
        options = dict(temperature=temperature, entropy=return_entropy, hidden=return_hidden,
                       micro_batch_size=micro_batch_size)
        if reference:
            return self.reference.token_logprobs(p_ids, r_ids, **options)
        return self.actor.token_logprobs(p_ids, r_ids, grad=grad, **options)

    def prompt_hidden(self, prompts: Sequence[str] | TokenRows, *, grad: bool = False,
                      micro_batch_size: int | None = None) -> torch.Tensor:
        """``(B, H)`` float32: the final hidden state (after the last norm) at each prompt's last token,
        under the current policy (:meth:`gagpo.llm.actor.Actor.prompt_hidden`)."""
        return self.actor.prompt_hidden(self.codec.prompt_ids(prompts), grad=grad, micro_batch_size=micro_batch_size)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str) -> None:
        """Save the trainable weights (the adapter with LoRA, the whole model otherwise) and the tokenizer."""
        self.actor.save(path)
        self.tokenizer.save_pretrained(path)

    def load_trainable(self, path: str) -> None:
        """Load weights written by :meth:`save` into this policy (the reference stays as it is)."""
        self.actor.load_trainable(path)
