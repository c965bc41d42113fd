r"""The actor: the network that is scored and trained — teacher-forced token log-probs, hidden states, LoRA, dtypes.

An LLM agent's action is a *sequence* of tokens :math:`y = (y_1, \dots, y_n)` sampled after a prompt
:math:`x`, so everything the losses need comes from per-token log-probabilities

.. math::  \log \pi(y_t \mid x, y_{<t}), \qquad t = 1, \dots, n,

computed by *teacher forcing*: one forward pass over the concatenation ``prompt + response`` gives
them all at once (:meth:`Actor.token_logprobs`, returning a :class:`TokenLogprobs`).

Batch layout (:mod:`gagpo.llm.encoding`): prompts aligned on their last token at a common width
:math:`P`, padding right after their first token; responses right-padded to :math:`T`. Position ids
count only real tokens (``cumsum(mask) - 1``), so a padded row gets the log-probabilities it would get
alone. Logits are needed only at the :math:`T` positions that predict response tokens
(``logits_to_keep``); log-probabilities are ``logit - logsumexp(logits)`` in float32, divided first by
the sampling temperature so that they are those of the distribution that was actually sampled (top-p
truncation is not modelled, as in most RL trainers for LLMs). Rows are sorted by length and processed
in micro-batches, so memory is bounded by the micro-batch, not by the rollout.

Memory and precision (:func:`gagpo.llm.devices.resolve_dtypes`): with LoRA (:func:`prepare_model`)
only the adapters train; full-parameter training on a GPU keeps float32 master weights and runs the
forward passes under the actor's autocast dtype (bfloat16). Gradient checkpointing trades a second
forward pass for not storing activations.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .encoding import TokenRows, pad_after_first

__all__ = ["TokenLogprobs", "LoraSettings", "Actor", "prepare_model"]


@dataclass
class TokenLogprobs:
    """Teacher-forced scores of B responses, each ``(B, T)`` with ``T`` = the longest response.

    Attributes:
        logp: :math:`\\log \\pi(y_{b,t} \\mid x_b, y_{b,<t})` at the real tokens, 0 on padding.
        mask: True at the ``len(responses[b])`` real tokens of row b (left-aligned).
        entropy: the per-token entropy of the (tempered) next-token distribution, 0 on padding, when
            asked for (else ``None``).
        hidden: ``(B, H)`` float32, the final hidden state at each prompt's last token, when asked
            for (else ``None``) — what a value head reads (:class:`gagpo.llm.value.ValueHead`).

    It unpacks as the tuple ``token_logprobs`` used to return — ``logp, mask``, then ``entropy`` and
    ``hidden`` when present — so ``logp, mask = policy.token_logprobs(...)`` keeps working.
    """

    logp: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None

    def _present(self) -> tuple[torch.Tensor, ...]:
        return tuple(x for x in (self.logp, self.mask, self.entropy, self.hidden) if x is not None)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._present())

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._present()[index]

    def __len__(self) -> int:
        return len(self._present())


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


def prepare_model(model: Any, lora: LoraSettings | None = None, gradient_checkpointing: bool = False,
                  seed: int = 0) -> Any:
    """Set up an already-built causal LM for training: LoRA adapters (``lora``), gradient checkpointing,
    no KV cache outside ``generate()``, eval mode; returns the model (a peft ``PeftModel`` with LoRA).
    The adapters' random initialisation is drawn from ``torch.manual_seed(seed)`` inside a forked
    random state: a function of ``seed`` alone, and the caller's random state is left as it was."""
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
    return model


class Actor:
    """The network being trained: scores responses token by token, reads hidden states, saves and loads
    its trainable weights.

    Args:
        model: the causal LM (a ``PreTrainedModel``, or a peft ``PeftModel`` with LoRA adapters).
        pad_token_id: the id that pads prompts and responses (masked out everywhere).
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype (``None``: off).
        micro_batch_size: rows per forward pass when scoring.
    """

    def __init__(self, model: Any, pad_token_id: int, *, autocast_dtype: torch.dtype | None = None,
                 micro_batch_size: int = 8):
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1; got {micro_batch_size}")
        self.model = model
        self.pad_token_id = pad_token_id
        self.autocast_dtype = autocast_dtype
        self.micro_batch_size = micro_batch_size
        #: FSDP (:mod:`gagpo.llm.fsdp`): a forward pass of the sharded model is a collective, so every process
        #: runs as many of them as the process with the most micro-batches (idle passes: :meth:`idle_pass`)
        self.lockstep = False

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

    @property
    def hidden_size(self) -> int:
        """Width H of the model's hidden states."""
        return int(self.model.config.hidden_size)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` with :attr:`autocast_dtype` on this device, or a null context when it is ``None``."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ scoring
    def token_logprobs(self, prompt_ids: TokenRows, response_ids: TokenRows, *, grad: bool = False,
                       temperature: float = 1.0, entropy: bool = False, hidden: bool = False,
                       micro_batch_size: int | None = None, model: Any | None = None) -> TokenLogprobs:
        """Teacher-forced log-probabilities of each response token (see :class:`TokenLogprobs`).

        Args:
            prompt_ids, response_ids: token ids of the B rows.
            grad: keep the graph (for memory, call this per micro-batch and backpropagate each before
                the next, as the trainer does); without ``grad`` the rows are processed in micro-batches.
            temperature: τ of the sampling distribution (the logits are divided by it).
            entropy, hidden: also compute :attr:`TokenLogprobs.entropy` / :attr:`TokenLogprobs.hidden`
                (with grad when ``grad``); causal attention makes ``hidden`` independent of the response,
                so it equals :meth:`prompt_hidden` of the prompt alone.
            micro_batch_size: rows per forward pass; default :attr:`micro_batch_size`.
            model: the network to run; default :attr:`model` (:class:`gagpo.llm.reference.Reference` passes
                its own).
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        if len(prompt_ids) != len(response_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
        model = self.model if model is None else model
        p_ids, r_ids = prompt_ids, response_ids  # short names for the loop below
        n, width = len(p_ids), max((len(r) for r in r_ids), default=0)
        mb = micro_batch_size or self.micro_batch_size
        order = sorted(range(n), key=lambda i: len(p_ids[i]) + len(r_ids[i]))  # less padding per micro-batch
        logp_parts, ent_parts, hid_parts, rows = [], [], [], []
        with torch.set_grad_enabled(grad):
            for start in range(0, n, mb):
                idx = order[start:start + mb]
                lp, ent, hid = self._score(model, [p_ids[i] for i in idx], [r_ids[i] for i in idx], temperature,
                                           entropy, hidden)
                logp_parts.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
                if entropy:
                    ent_parts.append(torch.nn.functional.pad(ent, (0, width - ent.shape[1])))
                if hidden:
                    hid_parts.append(hid)
                rows += idx
            if self.lockstep and model is self.model:  # FSDP: as many forward passes as the busiest process
                from .. import distributed as dist

                for _ in range(dist.all_max(-(-n // mb)) - (-(-n // mb))):
                    self.idle_pass()
        inverse = torch.empty(n, dtype=torch.long)
        inverse[torch.as_tensor(rows, dtype=torch.long)] = torch.arange(n)
        inverse = inverse.to(self.device)
        device = self.device
        logp = torch.cat(logp_parts)[inverse] if n else torch.zeros((0, width), device=device)
        lengths = torch.as_tensor([len(r) for r in r_ids], dtype=torch.long, device=device)
        mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
        out = TokenLogprobs(logp, mask)
        if entropy:
            out.entropy = torch.cat(ent_parts)[inverse] if n else torch.zeros((0, width), device=device)
        if hidden:
            out.hidden = torch.cat(hid_parts)[inverse] if n else torch.zeros((0, self.hidden_size), device=device)
        return out

    def prompt_hidden(self, prompt_ids: TokenRows, *, grad: bool = False,
                      micro_batch_size: int | None = None) -> torch.Tensor:
        """``(B, H)`` float32: the final hidden state (after the last norm) at each prompt's last token.

        One forward pass of :attr:`backbone` (no language-model head, no logits) per micro-batch of
        prompts padded by :func:`~gagpo.llm.encoding.pad_after_first`, rows sorted by length; the
        current policy (adapters on).
        """
        n, mb = len(prompt_ids), micro_batch_size or self.micro_batch_size
        order = sorted(range(n), key=lambda i: len(prompt_ids[i]))
        parts = []
        with torch.set_grad_enabled(grad):
            for start in range(0, n, mb):
                ids, attn = pad_after_first([prompt_ids[i] for i in order[start:start + mb]], self.pad_token_id,
                                            self.device)
                with self.autocast():
                    out = self.backbone(input_ids=ids, attention_mask=attn,
                                        position_ids=(attn.cumsum(-1) - 1).clamp(min=0), use_cache=False)
                parts.append(out.last_hidden_state[:, -1].float())
        if not n:
            return torch.zeros((0, self.hidden_size), device=self.device)
        inverse = torch.empty(n, dtype=torch.long)
        inverse[torch.as_tensor(order, dtype=torch.long)] = torch.arange(n)
        return torch.cat(parts)[inverse.to(self.device)]

    def idle_pass(self) -> torch.Tensor:
        """A forward pass of one token after a one-token prompt, returned as a zero scalar that depends on the
        network (with gradient when grad is enabled): what a process with no row left runs while the others
        score theirs, so that every process takes part in every collective of a sharded (FSDP) model; its
        backward adds zero to every gradient."""
        token = [self.pad_token_id]
        logp, _, _ = self._score(self.model, [token], [token], 1.0, False)
        return logp.sum() * 0.0

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
        p_ids, p_attn = pad_after_first(prompts, self.pad_token_id)
        r_ids = torch.full((b, t_width), self.pad_token_id, dtype=torch.long)
        r_attn = torch.zeros_like(r_ids)
        for k, r in enumerate(responses):
            if len(r):
                r_ids[k, :len(r)] = torch.as_tensor(r, dtype=torch.long)
                r_attn[k, :len(r)] = 1
        ids, attn = torch.cat([p_ids, r_ids], 1), torch.cat([p_attn, r_attn], 1)
        ids, attn = ids.to(self.device), attn.to(self.device)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        with self.autocast():
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
        """Save the trainable weights: the adapter with LoRA, the whole model otherwise."""
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path)

    def load_trainable(self, path: str) -> None:
        """Load weights written by :meth:`save` into this actor."""
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
