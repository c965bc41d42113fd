r"""The reference policy :math:`\pi_{\mathrm{ref}}`: the starting weights, scored for the KL penalty.

Three policies are scored by teacher forcing during training (:mod:`gagpo.llm.actor`):

* the **old** policy :math:`\pi_{\mathrm{old}}` — the weights that sampled the rollout, scored once
  right after it (no gradient);
* the **current** policy :math:`\pi_\theta` — the same weights while they are being updated (with
  gradient), inside the PPO epochs;
* the **reference** policy :math:`\pi_{\mathrm{ref}}` — the starting weights, for the KL penalty
  (no gradient): this module.

With LoRA the reference is the actor's own network with its adapters switched off
(``with model.disable_adapter():``), so it costs no memory; without LoRA it is a frozen copy of the
initial weights (:func:`frozen_copy`), in the policy's dtype so that the KL is exactly 0 at the start.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

from .actor import Actor, TokenLogprobs
from .encoding import TokenRows

__all__ = ["Reference", "frozen_copy"]


def frozen_copy(model: Any) -> Any:
    """A copy of ``model`` in eval mode with no trainable parameter (same dtype and device)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


class Reference:
    """:math:`\\pi_{\\mathrm{ref}}` of an :class:`~gagpo.llm.actor.Actor`.

    Args:
        actor: the actor whose starting weights are the reference.
        model: a frozen copy of those weights (:func:`frozen_copy`; full-parameter training with a KL
            penalty), or ``None``: then the reference is the actor's network with its LoRA adapters
            switched off, and there is none without LoRA.
    """

    def __init__(self, actor: Actor, model: Any | None = None):
        self.actor = actor
        self.model = model

    @property
    def available(self) -> bool:
        """Whether there is a reference: a frozen copy, or LoRA adapters to switch off."""
        return self.model is not None or self.actor.is_lora

    @contextlib.contextmanager
    def network(self) -> Iterator[Any]:
        """The network that computes :math:`\\pi_{\\mathrm{ref}}`, for the duration of the ``with`` block:
        the frozen copy, else the actor's network with its adapters off."""
        if self.model is not None:
            yield self.model
        elif self.actor.is_lora:
            with self.actor.model.disable_adapter():
                yield self.actor.model
        else:
            raise ValueError("this policy has no reference: load it with lora=... or reference=True")

    def token_logprobs(self, prompt_ids: TokenRows, response_ids: TokenRows, *, temperature: float = 1.0,
                       entropy: bool = False, hidden: bool = False,
                       micro_batch_size: int | None = None) -> TokenLogprobs:
        """:meth:`Actor.token_logprobs <gagpo.llm.actor.Actor.token_logprobs>` under the reference, without gradient."""
        with self.network() as model:
            return self.actor.token_logprobs(prompt_ids, response_ids, grad=False, temperature=temperature,
                                             entropy=entropy, hidden=hidden, micro_batch_size=micro_batch_size,
                                             model=model)

    def __repr__(self) -> str:
        kind = "frozen copy" if self.model is not None else "adapters off" if self.actor.is_lora else "none"
        return f"Reference({kind})"

