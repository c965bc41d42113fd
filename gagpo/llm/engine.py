r"""Rollout engines: what turns prompts into sampled responses, apart from what trains.

A trainer for LLM agents has two jobs that want different things from the same weights. The
**update** wants float32 master weights (or float32 LoRA adapters on a frozen base), gradients and
activations it can backpropagate through. **Generation** wants none of that: it reads every weight
once per decoded token, so it wants the weights in the dtype that serves (bfloat16 on a GPU), a KV
cache, and as little per-token overhead as possible. Dedicated RL trainers therefore keep a separate
*rollout engine* and copy the weights into it after every optimizer update (TRL's and verl's vLLM
engines, colocated on the same GPU). This module is that seam::

    engine.generate(prompt_ids, sampling, seed) -> Generation    # sample one response per prompt
    engine.refresh()                                             # copy the policy's current weights in

:class:`RolloutEngine` is the protocol; :class:`HFEngine` implements it with Hugging Face
``generate()`` on a **serving copy** of the policy:

* full-parameter training with float32 master weights and bfloat16 autocast (the GPU default): the
  serving copy holds the same weights in bfloat16, so generation runs natively in bfloat16 instead of
  re-casting float32 weights under autocast;
* LoRA: the serving copy is the base model with the adapters **merged**,
  :math:`W + \tfrac{\alpha}{r} BA`, so a decode step costs what the plain model costs (no adapter
  matmuls, no peft wrappers);
* when the training weights already are the serving dtype and there are no adapters (float32 on a
  CPU), the policy's own model serves and nothing is copied.

The copy is refreshed automatically: before generating, the engine compares the version counters of
the policy's trainable tensors (``tensor._version``, bumped by every in-place change: optimizer
steps, ``load_state_dict``) with those of its last refresh, and copies the weights only if they
changed. A refresh costs one read of the trainable weights (milliseconds on a GPU).

Sampling from the serving copy instead of the training weights is the usual *rollout/training
mismatch* of RL trainers with a separate engine (bfloat16 rounding, merged adapters): the losses
always re-score the sampled tokens with the training weights (``logp_old``), so the importance ratio
is exact for the policy being trained; only the sampling distribution differs in the last bits.

``compile=True`` (GPU only) generates with a static KV cache, which ``transformers`` compiles with
``torch.compile`` (CUDA graphs for the decode step); the batch is padded to a fixed number of rows so
that the compiled graph is reused. The first call pays the compilation (tens of seconds).

**Adding an engine** (e.g. vLLM, as TRL does in colocate mode): write a class with the two methods
above — ``generate`` takes token-id lists (no chat template, no tokenisation: the policy has done
that) and returns a :class:`~gagpo.llm.policy.Generation` whose ``response_ids`` stop at and include
the first end-of-sequence token; ``refresh`` loads the policy's weights into the engine (for vLLM:
``llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(state_dict.items())``
with merged LoRA weights, as TRL's ``_move_model_to_vllm`` does) — then install it with
``policy.engine = MyEngine(policy)``. Nothing else changes: rollouts call ``policy.generate``, which
calls the engine.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

__all__ = ["RolloutEngine", "HFEngine", "ENGINES", "make_engine"]

ENGINES = ("hf", "hf-compiled", "hf-continuous", "hf-shared")
"""Engine names of ``--engine``: ``hf`` (serving copy, eager), ``hf-compiled`` (serving copy, static
cache + torch.compile; GPU), ``hf-continuous`` (serving copy, ``transformers``' continuous batching:
a finished response frees its slot at once; GPU-oriented, slow on a CPU), ``hf-shared`` (generate
with the training model itself, under autocast — what this project did before the engine seam; kept
for comparison)."""


@runtime_checkable
class RolloutEngine(Protocol):
    """What samples responses for an :class:`~gagpo.llm.policy.LMPolicy`."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: Any, seed: int | None = None) -> Any:
        """One response per prompt (token-id lists) as a :class:`~gagpo.llm.policy.Generation`."""

    def refresh(self) -> None:
        """Load the policy's current weights into the engine."""


def make_engine(name: str, policy: Any) -> "HFEngine":
    """The engine called ``name`` (one of :data:`ENGINES`) for ``policy``."""
    if name == "hf":
        return HFEngine(policy)
    if name == "hf-compiled":
        return HFEngine(policy, compile=True)
    if name == "hf-continuous":
        return HFEngine(policy, continuous=True)
    if name == "hf-shared":
        return HFEngine(policy, serving_copy=False)
    raise ValueError(f"unknown engine {name!r}; expected one of {list(ENGINES)}")


def _lora_layers(model: Any) -> dict[str, Any]:
    """``{module name: peft LoRA layer}`` of a peft model (names without peft's ``base_model.model.`` prefix)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft, no adapters
        return {}
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            out[name.removeprefix("base_model.model.")] = module
    return out


class HFEngine:
    """Hugging Face ``generate()`` on a serving copy of the policy's weights (see the module docstring).

    Args:
        policy: the :class:`~gagpo.llm.policy.LMPolicy` whose weights are served.
        serving_copy: keep a copy of the weights in the serving dtype (merged adapters with LoRA);
            ``False`` generates with the training model itself (under the policy's autocast).
        dtype: the serving dtype; default: the policy's autocast dtype, else its weight dtype.
        compile: generate with a static KV cache, which ``transformers`` compiles with
            ``torch.compile`` on CUDA (on a CPU: the static cache without compilation).
        continuous: ``transformers``' continuous batching (``model.generate_batch``: paged KV cache,
            requests scheduled token by token, so a response that ends frees its slot for the next
            prompt instead of padding until the longest one ends). All prompts of a call form one
            request queue; ``seed`` seeds torch once before it.
    """

    def __init__(self, policy: Any, *, serving_copy: bool = True, dtype: torch.dtype | None = None,
                 compile: bool = False, continuous: bool = False):
        if compile and continuous:
            raise ValueError("compile and continuous are two different engines: choose one")
        self.policy = policy
        self.serving_copy = serving_copy
        self.dtype = dtype
        self.compile = compile
        self.continuous = continuous
        self._model: Any = None
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []     # (serving weight, trainable weight)
        self._lora: list[tuple[torch.Tensor, Any]] = []               # (serving weight, peft LoRA layer)
        self._synced: tuple[int, ...] | None = None
        self.refreshes = 0
        #: always keep a serving copy, even when the training weights already are the serving dtype (FSDP:
        #: the training weights are sharded, generation needs whole ones; :mod:`gagpo.llm.fsdp` sets it)
        self.always_copy = False
        #: refreshing gathers sharded weights (a collective): it happens only when every process calls
        #: :meth:`refresh`, never lazily inside :meth:`generate` (:mod:`gagpo.llm.fsdp` sets it)
        self.collective_refresh = False

    # ------------------------------------------------------------------ the serving model
    @property
    def serving_dtype(self) -> torch.dtype:
        weight = next(self.policy.model.parameters()).dtype
        return self.dtype or self.policy.autocast_dtype or weight

    @property
    def shares_weights(self) -> bool:
        """True when the policy's own model serves (no copy, nothing to refresh)."""
        return self.model is self.policy.model

    @property
    def model(self) -> Any:
        """The model that generates (built on first use)."""
        if self._model is None:
            self._model = self._build()
        return self._model

    def _build(self) -> Any:
        policy = self.policy
        weight = next(policy.model.parameters()).dtype
        if not self.serving_copy or (not policy.is_lora and weight == self.serving_dtype and not self.always_copy):
            return policy.model
        if policy.is_lora:
            layers = _lora_layers(policy.model)
            if any(any(getattr(m, "use_dora", {}).values()) for m in layers.values()):
                return policy.model  # DoRA's magnitude vectors are not a plain W + BA: serve the peft model
            serve = copy.deepcopy(policy.model).merge_and_unload()
            params = dict(serve.named_parameters())
            self._lora = [(params[f"{name}.weight"], layer) for name, layer in layers.items()]
        else:
            serve = copy.deepcopy(policy.model)
            self._pairs = self._pair_with(serve)
        serve.to(self.serving_dtype)
        serve.requires_grad_(False)
        serve.eval()
        serve.config.use_cache = True
        # a full copy holds the current weights; merged adapters are recomputed by the first refresh in float32
        self._synced = None if self._lora else self._versions()
        return serve

    def _pair_with(self, serve: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(serving weight, trainable weight)`` of every trainable weight, matched by name."""
        params = dict(serve.named_parameters())
        return [(params[name], p) for name, p in self.policy.model.named_parameters() if p.requires_grad]

    def rebind(self) -> None:
        """Pair the serving copy with the policy's current parameter objects, after something replaced them
        (FSDP's ``fully_shard`` swaps every parameter for a sharded one of the same name)."""
        if self._model is None or self._model is self.policy.model or self._lora:
            raise RuntimeError("rebind() needs a built full serving copy (not LoRA, not the policy's own model)")
        self._pairs = self._pair_with(self._model)
        self._synced = self._versions()

    def _versions(self) -> tuple[int, ...]:
        """Version counters of the trainable tensors (every in-place change bumps them)."""
        return tuple(p._version for p in self.policy.parameters())

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the policy's current trainable weights into the serving copy (merging LoRA adapters)."""
        model = self.model
        if model is self.policy.model:
            return
        from ..distributed import full_tensor

        for dst, src in self._pairs:  # a sharded (FSDP) weight is gathered whole first: a collective
            dst.copy_(full_tensor(src))
        for dst, layer in self._lora:
            w = layer.get_base_layer().weight
            delta = sum(layer.get_delta_weight(name) for name in layer.active_adapters if name in layer.lora_A)
            dst.copy_(w.float() + delta.float() if torch.is_tensor(delta) else w)
        self._synced = self._versions()
        self.refreshes += 1

    def _refresh_if_stale(self) -> None:
        if self.model is not self.policy.model and self._versions() != self._synced:
            if self.collective_refresh:  # gathering here, on one process, would wait forever for the others
                raise RuntimeError("the serving copy is older than the sharded (FSDP) training weights: every "
                                   "process must call policy.engine.refresh() after changing the weights")
            self.refresh()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: Any, seed: int | None = None) -> Any:
        """Sample one response per prompt (see :meth:`gagpo.llm.policy.LMPolicy.generate`); responses
        stop at, and include, the first end-of-sequence token."""
        from transformers import GenerationConfig

        from .policy import Generation

        policy = self.policy
        self._refresh_if_stale()
        model = self.model
        tok = policy.tokenizer
        static = self.compile and not self.continuous
        gen_cfg = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, do_sample=not sampling.greedy,
            temperature=None if sampling.greedy else sampling.temperature,
            top_p=None if sampling.greedy else sampling.top_p,
            top_k=None if sampling.greedy else sampling.top_k,
            repetition_penalty=1.0, pad_token_id=tok.pad_token_id,
            eos_token_id=policy.eos_token_ids or None, bos_token_id=tok.bos_token_id, use_cache=True,
            **({"cache_implementation": "static"} if static else {}),
        )
        rows = [list(r) for r in prompt_ids]
        autocast = policy.autocast() if model is policy.model else contextlib.nullcontext()
        was_training = model.training
        model.eval()
        try:
            with autocast:
                raw = (self._continuous(model, rows, gen_cfg, seed) if self.continuous
                       else self._batched(model, rows, gen_cfg, seed, pad_batches=static))
        finally:
            model.train(was_training)
        eos = set(policy.eos_token_ids)
        responses, finished = [], []
        for row in raw:
            cut = next((t + 1 for t, token in enumerate(row) if token in eos), None)
            responses.append(row if cut is None else row[:cut])
            finished.append(cut is not None)
        texts = tok.batch_decode(responses, skip_special_tokens=True)
        return Generation(texts=texts, response_ids=responses, prompt_ids=rows, finished=finished)

    def _batched(self, model: Any, rows: list[list[int]], gen_cfg: Any, seed: int | None,
                 pad_batches: bool) -> list[list[int]]:
        """``generate()`` on batches of ``gen_batch_size`` padded prompts; ``seed + k`` seeds batch k.
        ``pad_batches`` fills the last batch with copies of its last prompt (one shape for a static cache)."""
        policy, out_rows = self.policy, []
        for k, start in enumerate(range(0, len(rows), policy.gen_batch_size)):
            chunk = rows[start:start + policy.gen_batch_size]
            n_real = len(chunk)
            if pad_batches and n_real < policy.gen_batch_size:
                chunk = chunk + [chunk[-1]] * (policy.gen_batch_size - n_real)
            ids, attn = policy.pad_prompts(chunk)
            if seed is not None:
                torch.manual_seed(seed + k)
            out = model.generate(input_ids=ids, attention_mask=attn, generation_config=gen_cfg)
            out_rows += out[:n_real, ids.shape[1]:].tolist()
        return out_rows

    def _continuous(self, model: Any, rows: list[list[int]], gen_cfg: Any, seed: int | None) -> list[list[int]]:
        """``generate_batch()``: every prompt is one request of a continuously batched queue."""
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate_batch(rows, generation_config=gen_cfg, progress_bar=False,
                                   warmup=self.policy.device.type == "cuda")
        missing = [i for i in range(len(rows)) if f"req_{i}" not in out]
        if missing:
            raise RuntimeError(f"continuous batching returned no result for prompts {missing[:5]} (request ids "
                               f"{sorted(out)[:5]}): this transformers version names its requests differently")
        return [list(out[f"req_{i}"].generated_tokens) for i in range(len(rows))]
