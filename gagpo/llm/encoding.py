r"""Text ↔ token ids for a language-model policy: chat rendering, prompt and response encoding, padding.

The tokenizer side of :class:`gagpo.llm.policy.LMPolicy`, apart from the network:

* :class:`PromptCodec` renders a user message with the tokenizer's chat template
  (:func:`gagpo.llm.prompts.render_prompt`), encodes rendered prompts (a chat template supplies its
  own BOS) and responses (no special tokens), and knows the padding and end-of-sequence ids;
* :func:`pad_after_first` stacks prompts aligned on their **last** token, padding placed right after
  each prompt's first token (why: its docstring); :func:`pad_right` stacks responses (or per-token
  values) left-aligned; :func:`unpad_rows` is its inverse.

Batch layout of a scored batch (prompts at a common width :math:`P`, responses right-padded to :math:`T`)::

    [x1 pad pad x2 x3 | y1 y2 y3 pad]      attention mask 0 on every pad
    [x1 x2 x3 x4 x5   | y1 pad pad pad]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .prompts import render_prompt

__all__ = ["PromptCodec", "TokenRows", "pad_right", "unpad_rows", "pad_after_first", "eos_token_ids"]

TokenRows = Sequence[Sequence[int]]


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


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end a response: the model's ``generation_config.eos_token_id`` (one or a list)
    and the tokenizer's EOS, each once."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    return eos


class PromptCodec:
    """A tokenizer set up for a policy: chat rendering, prompt and response encoding, prompt padding.

    Args:
        tokenizer: a Hugging Face tokenizer; its padding side is forced to the left and, when it has
            no padding token, its EOS token pads.
        system_prompt: an optional system message for :meth:`render`.
        eos_token_ids: the ids that end a response (:func:`eos_token_ids`); generation stops at them.
    """

    def __init__(self, tokenizer: Any, system_prompt: str | None = None, eos_token_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:  # many base models ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.system_prompt = system_prompt
        self.eos_token_ids: list[int] = list(eos_token_ids)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def render(self, user_text: str) -> str:
        """The prompt string for one user message (chat template applied when there is one)."""
        return render_prompt(self.tokenizer, user_text, self.system_prompt)

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered prompts (a chat template supplies its own BOS)."""
        add_special = not getattr(self.tokenizer, "chat_template", None)
        return [list(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=add_special)["input_ids"]]

    def encode_responses(self, responses: Sequence[str]) -> list[list[int]]:
        """Token ids of response texts, without special tokens."""
        return [list(ids) for ids in self.tokenizer(list(responses), add_special_tokens=False)["input_ids"]]

    def prompt_ids(self, rows: Sequence[str] | TokenRows) -> list[list[int]]:
        """Rendered prompt strings encoded (:meth:`encode_prompts`), or token-id lists as lists of ints."""
        return self.encode_prompts(rows) if _are_texts(rows) else _int_rows(rows)  # type: ignore[arg-type]

    def response_ids(self, rows: Sequence[str] | TokenRows) -> list[list[int]]:
        """Response strings encoded (:meth:`encode_responses`), or token-id lists as lists of ints."""
        return self.encode_responses(rows) if _are_texts(rows) else _int_rows(rows)  # type: ignore[arg-type]

    def pad_prompts(self, rows: TokenRows, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both ``(B, P)``: :func:`pad_after_first` with this tokenizer's padding id."""
        return pad_after_first(rows, self.pad_token_id, device)


def _are_texts(rows: Sequence[Any]) -> bool:
    return bool(len(rows)) and isinstance(rows[0], str)


def _int_rows(rows: TokenRows) -> list[list[int]]:
    return [list(map(int, r)) for r in rows]
