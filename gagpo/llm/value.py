r"""A learned critic for a language-model agent: a scalar value head on the policy's own network.

PPO with a learned critic (``--algo ppo``) needs :math:`V(s)` for the state in which each action
was taken. For a language model the state is the *prompt* (task, current observation, the last
``history`` pairs, the admissible actions), and its summary is the final hidden state
:math:`h(s) \in \mathbb{R}^H` at the prompt's last token — the vector from which the model predicts
the first token of its response. The head is one linear layer on it,

.. math::  V_\phi(s) = w^\top h(s) + b,

initialised to zero (so :math:`V \equiv 0` at the start and the first advantages are plain
returns-to-go) without drawing a random number, so building it leaves a run's random state as it was. The trunk is shared with the policy: the value loss
:math:`\tfrac12 (V_\phi(s) - R)^2` (:func:`gagpo.losses.value_loss`) is added to the policy loss with
the weight ``value_coef``, so its gradient reaches the trained parameters of the language model
(every weight, or the LoRA adapters) as well as :math:`w, b` — the shared actor-critic of
CleanRL's Atari PPO and of TRL's ``AutoModelForCausalLMWithValueHead``.

Next-state values for GAE (:func:`next_state_values`): :math:`V(s'_t)` of a row is the value of
the *next row's prompt* in the same trajectory (the next decision's state, history included); after
the last row it is 0 when the episode terminated, and for an episode cut by the step limit it is
the value of the prompt the policy would have seen at the observation where it was cut
(:attr:`gagpo.llm.rollout.LMRollout.bootstrap_prompt_ids`), so truncation bootstraps instead of
pretending the episode ended.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from ..batch import StepBatch
from .policy import LMPolicy

__all__ = ["ValueHead", "VALUE_HEAD_FILE", "next_state_values", "explained_variance"]

VALUE_HEAD_FILE = "value_head.safetensors"
"""The head's file inside a checkpoint folder (beside the model or adapter weights)."""


class ValueHead(torch.nn.Module):
    """:math:`V_\\phi(s) = w^\\top h(s) + b` on the final hidden state of the prompt's last token.

    Args:
        hidden_size: H, the width of the language model's hidden states (``policy.hidden_size``).

    The parameters are float32 whatever the model's dtype (hidden states are cast before the head),
    and zero: deterministic, and no random number is drawn (``skip_init`` skips ``Linear``'s random
    initialisation, which would advance torch's global generator).
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1; got {hidden_size}")
        self.linear = torch.nn.utils.skip_init(torch.nn.Linear, hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    @classmethod
    def for_policy(cls, policy: LMPolicy) -> "ValueHead":
        """A zero-initialised head of the policy's hidden size, on the policy's device (deterministic:
        no random number is drawn)."""
        return cls(policy.hidden_size).to(policy.device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, H)`` hidden states → ``(B,)`` values (float32)."""
        return self.linear(hidden.float()).squeeze(-1)

    @torch.no_grad()
    def values(self, policy: LMPolicy, prompt_ids: Sequence[Sequence[int]], micro_batch_size: int | None = None) -> np.ndarray:
        """``(B,)`` float64 values of prompts (token ids) under the current policy network, no gradient."""
        if len(prompt_ids) == 0:
            return np.zeros(0)
        hidden = policy.prompt_hidden(prompt_ids, micro_batch_size=micro_batch_size)
        return self(hidden).double().cpu().numpy()

    def save(self, path: str) -> None:
        """Write the head to ``<path>/value_head.safetensors``."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  os.path.join(path, VALUE_HEAD_FILE))

    def load(self, path: str) -> None:
        """Load a head written by :meth:`save` from the folder ``path``."""
        from safetensors.torch import load_file

        file = os.path.join(path, VALUE_HEAD_FILE)
        if not os.path.exists(file):
            raise ValueError(f"{path} holds no {VALUE_HEAD_FILE}: it was not written by a run with algo 'ppo'")
        state = load_file(file, device=str(self.linear.weight.device))
        if state["linear.weight"].shape != self.linear.weight.shape:
            raise ValueError(f"the value head in {path} has shape {tuple(state['linear.weight'].shape)}; "
                             f"this model needs {tuple(self.linear.weight.shape)} (a different model?)")
        self.load_state_dict(state)


def next_state_values(batch: StepBatch, values: np.ndarray, end_values: np.ndarray) -> np.ndarray:
    r"""``(N,)`` :math:`V(s'_t)` of every row from the ``(N,)`` values :math:`V(s_t)` of the rows.

    For row t of a trajectory, :math:`V(s'_t)` is ``values`` of row t+1 of the same trajectory; for a
    trajectory's last row it is ``end_values`` of that row (pass the bootstrap value of a truncated
    episode there; :func:`gagpo.advantages.gae_advantages` ignores it for a terminated one). Rows may
    come in any order (vectorised: one lexicographic sort by trajectory and step).
    """
    values, end_values = np.asarray(values, dtype=np.float64), np.asarray(end_values, dtype=np.float64)
    if values.shape != (len(batch),) or end_values.shape != (len(batch),):
        raise ValueError(f"values and end_values must have shape ({len(batch)},); got {values.shape}, {end_values.shape}")
    order = np.lexsort((batch.step, batch.traj_index))  # by trajectory, then step
    out = end_values.copy()
    same = batch.traj_index[order[1:]] == batch.traj_index[order[:-1]]  # row order[k+1] follows row order[k]
    out[order[:-1][same]] = values[order[1:][same]]
    return out


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    r""":math:`1 - \operatorname{Var}(R - V) / \operatorname{Var}(R)`: 1 for a perfect critic, 0 for one no
    better than a constant, negative for a worse one; NaN when the returns do not vary."""
    var = float(np.var(returns))
    return float("nan") if var == 0 else 1.0 - float(np.var(np.asarray(returns) - np.asarray(values))) / var
