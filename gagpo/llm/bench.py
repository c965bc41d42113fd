r"""Throughput of a language-model agent of real shape: environment steps per second and peak memory.

On a GPU (the command the benchmark is for; full-parameter AdamW keeps 16 bytes per parameter in float32 —
weights, gradients, two moments — about 25 GB for 1.5B before activations)::

    python -m gagpo bench lm --model-config qwen2.5-1.5b --device cuda --batch 64 --prompt-tokens 1024 \
        --new-tokens 256 --micro-batch 8 --repeats 2 --out figures/lm_throughput_cuda.md

On a CPU, a small workload (what ``figures/lm_throughput.md`` holds, a few minutes on 2 cores)::

    python -m gagpo bench lm --model-config qwen2.5-0.5b --device cpu --batch 4 --prompt-tokens 512 \
        --new-tokens 32 --micro-batch 2 --repeats 1

What is measured. A model with the exact shape of a public checkpoint (:data:`MODEL_CONFIGS`, written
out here: nothing is downloaded) and **random weights** (``AutoModelForCausalLM.from_config``) runs
the three phases of one iteration of :mod:`gagpo.llm.train`, through the same code the trainer runs:

1. **rollout** — :meth:`gagpo.llm.policy.LMPolicy.generate`: one batched ``generate`` call over ``batch``
   left-padded prompts of ``prompt_tokens`` tokens, sampling at temperature 1, exactly ``new_tokens``
   new tokens per prompt. One response is one agent action, i.e. one **environment step**, so
   env steps/s = ``batch / seconds``; generated tokens/s = ``batch × new_tokens / seconds``;
2. **score** — :meth:`LMPolicy.token_logprobs` without gradient, in micro-batches: the old-policy
   log-probs of the rollout (the reference policy's cost the same, and the recipe's KL term needs them too);
3. **update** — the PPO-clip loss of :func:`gagpo.llm.train.action_level_loss` (teacher-forced
   log-probs with gradient) and ``backward`` per micro-batch, then one gradient clip and one AdamW
   step for the whole batch (as one minibatch of :meth:`gagpo.llm.train.LMTrainer.update`).

Workload. Prompts and responses are **random token ids** (uniform over the vocabulary); a random model
never stops early because end-of-sequence is switched off, so every response has exactly
``new_tokens`` tokens (real responses vary; the trainer caps them at ``max_new_tokens`` = 512) and
every prompt has exactly ``prompt_tokens`` tokens (no padding). The default of 512 prompt tokens is an
estimate for the ALFWorld recipe (history 2): on the six ALFWorld fixture games of the test suite,
:func:`gagpo.llm.prompts.build_prompt` with history 2 gives prompts of 940 characters (median; 1,200 at
most) with at most 16 admissible commands — about 250 tokens of a byte-pair tokenizer at ~4 characters
per token — and full ALFWorld rooms list more receptacles and more admissible commands.

Precision (``--dtype auto``, as :meth:`LMPolicy.from_pretrained` chooses): float32 on a CPU; on a GPU,
bfloat16 weights with LoRA, float32 master weights with bfloat16 autocast for full-parameter training.

Peak memory per phase. CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
(tensors only; the caching allocator reserves somewhat more). CPU: the process's peak resident set
(``VmHWM`` of ``/proc/self/status``), reset before each phase by writing 5 to ``/proc/self/clear_refs``
(Linux); where that reset is refused, ``ru_maxrss`` — the peak since the process started (the phases
run in the order rollout, score, update, in which memory grows). Every phase is measured in training's
steady state: a warm-up step on one short row creates AdamW's two moment buffers, which stay resident
during rollouts as they do across the iterations of :class:`gagpo.llm.train.LMTrainer` (gradients are
freed after each step). CPU figures include the weights, the Python interpreter and the libraries.

The policy is an :class:`LMPolicy` wrapping the in-memory model with a stand-in tokenizer that only
knows the pad id (:class:`IdTokenizer`); LoRA adapters and gradient checkpointing are added as
:meth:`LMPolicy.from_pretrained` adds them.

The table ends with an **extrapolation**: the time of one training iteration of the published recipe
(``tasks_per_iter × group_size`` episodes of ``avg_steps`` steps: 16 × 8 × 25 = 3,200 environment steps),
from the measured rates — rollout at the measured generation rate, two scoring passes (old and
reference policy), the update's forward/backward per row plus one AdamW step per ``minibatch_size``
(256) rows. It ignores the environment's own time and prompt building, assumes every batch is as full as
the measured one, and uses the measured batch size's rates (larger batches generate faster per step).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..tables import write_csv
from .devices import DTYPE_CHOICES, resolve_device, resolve_dtypes
from .policy import LMPolicy, LoraSettings, SamplingSettings
from .train import LMTrainConfig, action_level_loss

__all__ = ["MODEL_CONFIGS", "DOCUMENTED_PARAMS", "LMBenchSettings", "IdTokenizer", "model_config", "count_parameters",
           "PeakMemory", "lm_throughput", "format_table", "extrapolate_iteration", "settings_from_args"]

_QWEN2 = dict(model_type="qwen2", hidden_act="silu", max_position_embeddings=32768, rope_theta=1_000_000.0,
              rms_norm_eps=1e-6, tie_word_embeddings=True, vocab_size=151936)

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # hidden 64, 2 layers, 1,024-word vocabulary: the tests' end-to-end run, a second on a CPU
    "tiny": dict(_QWEN2, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096),
    # Qwen/Qwen2.5-0.5B(-Instruct) config.json
    "qwen2.5-0.5b": dict(_QWEN2, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2),
    # Qwen/Qwen2.5-1.5B-Instruct config.json
    "qwen2.5-1.5b": dict(_QWEN2, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2),
}
"""Model shapes, written out (Qwen2 architecture: grouped-query attention, SwiGLU, RMSNorm, rotary
positions, tied input/output embeddings)."""

DOCUMENTED_PARAMS = {"qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_543_714_304}
"""Parameter counts of the real checkpoints (tied embeddings counted once): 0.49B and 1.54B."""


@dataclass
class LMBenchSettings:
    """One benchmark run; the CLI options of ``python -m gagpo bench lm`` (same names, same defaults)."""

    model_config: str = "qwen2.5-0.5b"   #: a key of MODEL_CONFIGS
    device: str = "auto"                 #: auto (CUDA if available), cpu, cuda, cuda:1, ...
    dtype: str = "auto"                  #: auto, float32 or bfloat16 (see the module docstring)
    batch: int = 64                      #: prompts per generate call = rows per update
    prompt_tokens: int = 512             #: tokens per prompt
    new_tokens: int = 256                #: tokens per response (exactly)
    micro_batch: int = 8                 #: rows per forward pass when scoring and per forward/backward in the update
    lora_r: int = 0                      #: LoRA rank (peft, alpha 32, all linear layers); 0 = full-parameter training
    gradient_checkpointing: bool = True  #: recompute activations in the backward pass
    reference: bool = True               #: hold a frozen reference copy, as full-parameter training with kl_coef > 0 does
    engine: str = "hf"                   #: rollout engine (gagpo.llm.engine.ENGINES)
    repeats: int = 1                     #: timed repeats of each phase; the fastest is reported
    avg_steps: float = 25.0              #: assumed mean episode length for the extrapolation
    seed: int = 0                        #: weights, token ids and sampling

    def __post_init__(self) -> None:
        if self.model_config not in MODEL_CONFIGS:
            raise ValueError(f"unknown model_config {self.model_config!r}; expected one of {list(MODEL_CONFIGS)}")
        if self.dtype not in BENCH_DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {list(BENCH_DTYPES)}")
        for name in ("batch", "prompt_tokens", "new_tokens", "micro_batch", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        from .engine import ENGINES

        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; expected one of {list(ENGINES)}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full-parameter training); got {self.lora_r}")
        if not self.avg_steps > 0:
            raise ValueError(f"avg_steps must be > 0; got {self.avg_steps}")
        try:
            device = resolve_device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {self.device!r}; expected auto, cpu, cuda or cuda:N ({exc})") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"unsupported device {self.device!r}; expected auto, cpu, cuda or cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} was asked for but torch sees no CUDA device; use --device cpu or auto")
        limit = MODEL_CONFIGS[self.model_config]["max_position_embeddings"]
        if self.prompt_tokens + self.new_tokens > limit:
            raise ValueError(f"prompt_tokens + new_tokens = {self.prompt_tokens + self.new_tokens} exceeds the "
                             f"{self.model_config} context of {limit} tokens")


BENCH_DTYPES = tuple(name for name in DTYPE_CHOICES if name != "float16")
"""The ``dtype`` values of the benchmark: those of training but float16 (whose update would need loss scaling)."""


def model_config(name: str):
    """The ``transformers`` config of a named shape (a ``Qwen2Config``)."""
    from transformers import Qwen2Config

    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model_config {name!r}; expected one of {list(MODEL_CONFIGS)}")
    kw = {k: v for k, v in MODEL_CONFIGS[name].items() if k != "model_type"}
    return Qwen2Config(**kw, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def count_parameters(name: str) -> int:
    """Parameters of a named shape, counted on the ``meta`` device (no memory allocated, no init)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(name))
    return sum(p.numel() for p in model.parameters())


class IdTokenizer:
    """Stands in for a tokenizer when prompts and responses are token ids already.

    :class:`LMPolicy` reads only ``pad_token_id``, ``eos_token_id``, ``bos_token_id`` and
    ``padding_side`` from it, and ``batch_decode`` after generating. ``eos_token_id`` is ``None``:
    generation never stops before ``max_new_tokens``.
    """

    padding_side = "left"
    pad_token_id = 0
    eos_token_id = None
    bos_token_id = None
    chat_template = None

    def batch_decode(self, rows, skip_special_tokens: bool = True) -> list[str]:
        return [""] * len(rows)


class PeakMemory:
    """Peak memory of a phase, in bytes: ``reset()`` before it, ``peak()`` after it.

    ``kind`` says what is measured: ``"cuda allocated"`` (``torch.cuda.max_memory_allocated``),
    ``"RSS"`` (``VmHWM`` after a reset through ``/proc/self/clear_refs``) or ``"RSS since start"``
    (``ru_maxrss``, when the reset is refused or ``/proc`` is missing).
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "cuda allocated"
        else:
            self.kind = "RSS" if self._reset_rss() else "RSS since start"

    @staticmethod
    def _reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # "5": reset the peak resident set size (Linux >= 4.0)
            return PeakMemory._vm_hwm() is not None
        except OSError:
            return False

    @staticmethod
    def _vm_hwm() -> int | None:
        try:
            with open("/proc/self/status") as fh:
                match = re.search(r"^VmHWM:\s+(\d+)\s+kB", fh.read(), re.MULTILINE)
        except OSError:
            return None
        return int(match.group(1)) * 1024 if match else None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "RSS":
            self._reset_rss()

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.kind == "RSS":
            return int(self._vm_hwm())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def memory_bandwidth(device: torch.device, n_bytes: int = 2**30) -> float:
    """Measured memory bandwidth of ``device`` in bytes/s: the best of 5 copies of an ``n_bytes`` buffer
    (a copy reads and writes every byte, so bandwidth = 2 × n_bytes / seconds); on a CPU 256 MB.

    It is what a decode step that reads every weight once can at best achieve: the **weight-read bound**
    of a decode step is weight bytes / bandwidth (the KV cache adds its own reads, small for short
    contexts and small batches)."""
    if device.type != "cuda":
        n_bytes = min(n_bytes, 2**28)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * n_bytes / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build_policy(s: LMBenchSettings, device: torch.device) -> tuple[LMPolicy, str]:
    """A random-weight model of the named shape inside an :class:`LMPolicy`, set up as
    :meth:`LMPolicy.from_pretrained` sets up a loaded one; returns it and a dtype label."""
    from transformers import AutoModelForCausalLM

    lora = LoraSettings(r=s.lora_r) if s.lora_r else None
    weight_dtype, autocast = resolve_dtypes(s.dtype, device, lora is not None)
    torch.manual_seed(s.seed)
    with device:  # initialise on the device itself (much faster on a GPU than on the host, then a copy)
        model = AutoModelForCausalLM.from_config(model_config(s.model_config), dtype=weight_dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = IdTokenizer.pad_token_id
    policy = LMPolicy.from_model(model, IdTokenizer(), lora=lora, gradient_checkpointing=s.gradient_checkpointing,
                                 reference=s.reference, autocast_dtype=autocast, micro_batch_size=s.micro_batch,
                                 gen_batch_size=s.batch, engine=s.engine)
    policy.eos_token_ids = []  # responses of exactly new_tokens tokens
    label = {torch.float32: "fp32", torch.bfloat16: "bf16"}[weight_dtype]
    return policy, label + (" + bf16 autocast" if autocast is not None else "")


def _timed(fn, repeats: int, device: torch.device) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls of ``fn`` and the result of that fastest call."""
    best, out = math.inf, None
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        result = fn()
        _sync(device)
        if time.perf_counter() - t < best:
            best, out = time.perf_counter() - t, result
    return best, out


def lm_throughput(settings: LMBenchSettings | None = None, out: str | None = None, command: str | None = None,
                  verbose: bool = True) -> list[dict[str, Any]]:
    """Run the benchmark; print the Markdown table (also written to ``out`` and ``out``'s ``.csv``).

    Returns one dict per phase (``rollout``, ``score``, ``update``) with the columns of the table,
    plus ``optimizer_step_s`` (the AdamW step alone, on the update row).
    """
    s = settings or LMBenchSettings()
    device = resolve_device(s.device)
    log = print if verbose else (lambda *a, **k: None)
    memory = PeakMemory(device)
    t0 = time.perf_counter()
    policy, dtype_label = _build_policy(s, device)
    n_params = count_parameters(s.model_config)
    n_train = sum(p.numel() for p in policy.parameters())
    log(f"built {s.model_config} ({n_params / 1e6:,.1f}M parameters, {n_train / 1e6:,.1f}M trainable, {dtype_label}) "
        f"on {device} in {time.perf_counter() - t0:.1f} s")
    bandwidth = memory_bandwidth(device)
    rng = np.random.default_rng(s.seed)
    vocab = MODEL_CONFIGS[s.model_config]["vocab_size"]
    prompts = rng.integers(1, vocab, size=(s.batch, s.prompt_tokens)).tolist()
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=s.new_tokens)
    train_cfg = LMTrainConfig(lora_r=s.lora_r, micro_batch_size=s.micro_batch, max_new_tokens=s.new_tokens,
                              gradient_checkpointing=s.gradient_checkpointing, progress=False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    advantages = torch.as_tensor(rng.standard_normal(s.batch), dtype=torch.float32)

    # warm-up on one short row (lazy initialisation, kernels, allocator) with one AdamW step: its two
    # moment buffers then stay resident in every phase, as they do across the iterations of LMTrainer
    short = [p[:16] for p in prompts[:1]]
    warm = policy.generate(short, SamplingSettings(max_new_tokens=4), seed=s.seed).response_ids
    (warm_logp, warm_mask) = policy.token_logprobs(short, warm)
    warm_logp = [warm_logp[0][warm_mask[0]].float().cpu().numpy()]
    _update(policy, optimizer, short, warm, warm_logp, advantages[:1], 1, train_cfg)

    rows: list[dict[str, Any]] = []
    base = dict(model=s.model_config, device=str(device), dtype=dtype_label, params=n_params, trainable=n_train,
                batch=s.batch, prompt_tokens=s.prompt_tokens, new_tokens=s.new_tokens, micro_batch=s.micro_batch,
                lora_r=s.lora_r, gradient_checkpointing=s.gradient_checkpointing)

    def record(phase: str, seconds: float, tokens: int, peak: int, **extra) -> None:
        rows.append(dict(base, phase=phase, tokens=tokens, seconds=seconds, rows_per_s=s.batch / seconds,
                         tokens_per_s=tokens / seconds, peak_memory_gb=peak / 1e9, memory_kind=memory.kind, **extra))
        log(f"{phase}: {seconds:.2f} s, {s.batch / seconds:,.2f} rows/s, peak {peak / 1e9:.2f} GB")

    # 1. rollout: one generate call over the batch; the prefill alone (one new token) is timed too, so that
    # the decode time per step is (rollout - prefill) / (new_tokens - 1)
    memory.reset()
    if s.engine == "hf-compiled":  # the first full-shape call compiles: not part of the steady state
        t = time.perf_counter()
        policy.generate(prompts, sampling, seed=s.seed)
        log(f"compiled the decode step in {time.perf_counter() - t:.1f} s")
    prefill_s, _ = _timed(lambda: policy.generate(prompts, SamplingSettings(max_new_tokens=1), seed=s.seed),
                          s.repeats, device)
    seconds, gen = _timed(lambda: policy.generate(prompts, sampling, seed=s.seed), s.repeats, device)
    responses = gen.response_ids
    if any(len(r) != s.new_tokens for r in responses):
        raise RuntimeError(f"expected {s.new_tokens} new tokens per response; got {sorted({len(r) for r in responses})}")
    peak = memory.peak()
    engine = policy.engine
    serve_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    decode_ms = 1e3 * max(seconds - prefill_s, 0.0) / max(s.new_tokens - 1, 1)
    record("rollout", seconds, s.batch * s.new_tokens, peak, prefill_s=prefill_s, decode_ms_per_step=decode_ms,
           weight_read_ms=1e3 * serve_bytes / bandwidth, bandwidth_gb_s=bandwidth / 1e9, engine=s.engine,
           serving_dtype=str(engine.serving_dtype).removeprefix("torch."), serving_copy=not engine.shares_weights)

    # 2. score: old-policy log-probs, no gradient (the reference pass costs the same)
    memory.reset()
    seconds, (logp, mask) = _timed(lambda: policy.token_logprobs(prompts, responses), s.repeats, device)
    old_logp = [row[m].float().cpu().numpy() for row, m in zip(logp, mask)]
    record("score", seconds, s.batch * (s.prompt_tokens + s.new_tokens), memory.peak())

    # 3. update: PPO-clip loss + backward per micro-batch, one clipped AdamW step for the batch
    memory.reset()
    seconds, step_s = _timed(lambda: _update(policy, optimizer, prompts, responses, old_logp, advantages,
                                                 s.micro_batch, train_cfg), s.repeats, device)
    record("update", seconds, s.batch * (s.prompt_tokens + s.new_tokens), memory.peak(), optimizer_step_s=step_s)
    text = format_table(rows, s, command)
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as fh:
            fh.write(text + "\n")
        write_csv(rows, os.path.splitext(out)[0] + ".csv", float_format=".6g")
    return rows


def _update(policy: LMPolicy, optimizer: torch.optim.Optimizer, prompts: list[list[int]], responses: list[list[int]],
            old_logp: list[np.ndarray], advantages: torch.Tensor, micro_batch: int, cfg: LMTrainConfig) -> float:
    """One minibatch of :meth:`gagpo.llm.train.LMTrainer.update`: the loss of every micro-batch (the old
    log-probs stand in for the reference ones too) backpropagated with weight rows/batch, then gradient
    clipping and one AdamW step. Returns the seconds of the clip + step alone."""
    n, device = len(prompts), policy.device
    policy.model.train()
    try:
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, n, micro_batch):
            ii = list(range(start, min(start + micro_batch, n)))
            loss, _ = action_level_loss(policy, [prompts[i] for i in ii], [responses[i] for i in ii],
                                        [old_logp[i] for i in ii], advantages[ii], [old_logp[i] for i in ii], cfg)
            (loss * len(ii) / n).backward()
        _sync(device)
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        _sync(device)
        return time.perf_counter() - t
    finally:
        policy.model.eval()


def extrapolate_iteration(rows: list[dict[str, Any]], avg_steps: float, cfg: LMTrainConfig | None = None) -> dict[str, float]:
    """Seconds of one training iteration of the recipe in ``cfg`` (default :class:`LMTrainConfig`'s:
    16 tasks × 8 episodes, minibatches of 256 rows, KL to a reference) from the measured rates.

    ``rollout = N / gen_rate``; ``score = passes × N / score_rate`` (old policy, plus the reference
    when ``kl_coef > 0``); ``update = epochs × (N / fwd_bwd_rate + ceil(N / minibatch) × adamw_step)``,
    with ``N = tasks_per_iter × group_size × avg_steps`` environment steps.
    """
    cfg = cfg or LMTrainConfig()
    by = {r["phase"]: r for r in rows}
    n = cfg.tasks_per_iter * cfg.group_size * avg_steps
    upd = by["update"]
    fwd_bwd_per_row = (upd["seconds"] - upd["optimizer_step_s"]) / upd["batch"]
    passes = 2 if cfg.kl_coef > 0 else 1
    out = {
        "env_steps": n,
        "rollout": n / by["rollout"]["rows_per_s"],
        "score": passes * n / by["score"]["rows_per_s"],
        "update": cfg.update_epochs * (n * fwd_bwd_per_row + math.ceil(n / cfg.minibatch_size) * upd["optimizer_step_s"]),
    }
    out["total"] = out["rollout"] + out["score"] + out["update"]
    return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86_400:,.1f} days"


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    load = f", 1-minute load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"CPU, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores{load}"


def format_table(rows: list[dict[str, Any]], settings: LMBenchSettings, command: str | None = None) -> str:
    """The Markdown report: the measured table, the extrapolation to one recipe iteration, a footer."""
    s = settings
    r0 = rows[0]
    params = f"{r0['params'] / 1e9:.2f}B" if r0["params"] >= 1e9 else f"{r0['params'] / 1e6:,.1f}M"
    what = {"rollout": "rollout: generate", "score": "score: log-probs, no grad", "update": "update: fwd+bwd+AdamW"}
    mem_label = {"cuda allocated": "peak GPU memory allocated (GB)", "RSS": "peak RSS of the process (GB)",
                 "RSS since start": "peak RSS since start (GB)"}[r0["memory_kind"]]
    lines = [
        f"# Language-model throughput — {s.model_config}, random weights, {r0['device']}",
        "",
        f"Workload: {s.batch} prompts of {s.prompt_tokens} random token ids, responses of exactly {s.new_tokens} tokens "
        f"(sampled, temperature 1); micro-batch {s.micro_batch}; "
        f"{f'LoRA r {s.lora_r}' if s.lora_r else 'full-parameter training'}; gradient checkpointing "
        f"{'on' if s.gradient_checkpointing else 'off'}; "
        f"{'a frozen reference copy held (full-parameter training with a KL penalty); ' if s.reference and not s.lora_r else ''}"
        f"best of {s.repeats}. One row = one response = one environment step. "
        "Tokens: generated tokens for the rollout, prompt + response tokens for the other phases.",
        "",
        f"| model | device | dtype | params | phase | batch | tokens | seconds | env steps/s (rows/s) | tokens/s | {mem_label} |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['device']} | {r['dtype']} | {params} | {what[r['phase']]} | {r['batch']} | "
                     f"{r['tokens']:,} | {r['seconds']:,.2f} | {r['rows_per_s']:,.2f} | {r['tokens_per_s']:,.1f} | "
                     f"{r['peak_memory_gb']:,.2f} |")
    upd = next(r for r in rows if r["phase"] == "update")
    gen = next(r for r in rows if r["phase"] == "rollout")
    if "decode_ms_per_step" in gen:
        lines += ["", decode_line(gen)]
    lines.append("")
    lines.append(f"Trainable parameters: {r0['trainable']:,}; the AdamW step alone took {upd['optimizer_step_s']:.2f} s.")
    cfg = LMTrainConfig()
    ex = extrapolate_iteration(rows, s.avg_steps, cfg)
    lines += [
        "",
        f"**Extrapolation, not a measurement**: one training iteration of the recipe — {cfg.tasks_per_iter} tasks × "
        f"{cfg.group_size} episodes × {s.avg_steps:g} steps on average (assumed) = {ex['env_steps']:,.0f} environment steps, "
        f"at the rates above (same batch, prompt and response lengths):",
        "",
        "| part | how | time per iteration |",
        "|---|---|---:|",
        f"| rollout | {ex['env_steps']:,.0f} responses at the measured env steps/s | {_duration(ex['rollout'])} |",
        f"| score | {'2 passes (old and reference policy)' if cfg.kl_coef > 0 else '1 pass (old policy)'} | {_duration(ex['score'])} |",
        f"| update | fwd+bwd per row, one AdamW step per {cfg.minibatch_size} rows, {cfg.update_epochs} epoch(s) | {_duration(ex['update'])} |",
        f"| **total** | environment time and prompt building excluded | **{_duration(ex['total'])}** |",
        "",
        f"{cfg.iterations} iterations (the recipe's default) would take about {_duration(cfg.iterations * ex['total'])}.",
        "",
        f"Produced by `{command or 'python -m gagpo bench lm'}` on {time.strftime('%Y-%m-%d')}, {_hardware(r0['device'])}.",
        "",
        "Notes:",
        "",
        "- Timings on a shared CPU move with the machine's load (the load average is in the line above); the benchmark "
        "is meant for a GPU (the command is at the top of `gagpo/llm/bench.py`).",
        f"- Peak memory includes the weights ({r0['params'] * _bytes_per_param(r0['dtype']) / 2**30:.1f} GB in {r0['dtype'].split()[0]}"
        f"{', twice with the reference copy' if s.reference and not s.lora_r else ''}) "
        "and AdamW's two moment buffers, created by a warm-up step and resident in every phase as across training "
        "iterations" + (", plus the interpreter, libraries and freed memory the allocator keeps." if r0["memory_kind"] != "cuda allocated" else "."),
        "- Prompts are random token ids; every response has exactly the requested length (end-of-sequence is off). "
        "The default of 512 prompt tokens rounds up the prompts `gagpo.llm.prompts.build_prompt` makes with history 2 "
        "on the ALFWorld fixture games (about 250 subword tokens); full ALFWorld rooms list more receptacles and commands.",
    ]
    return "\n".join(lines)


def decode_line(row: dict[str, Any]) -> str:
    """The sentence that puts a rollout row's decode time per step next to its weight-read bound."""
    ratio = row["decode_ms_per_step"] / row["weight_read_ms"] if row["weight_read_ms"] > 0 else math.inf
    copy = "a serving copy" if row.get("serving_copy") else "the training weights"
    return (f"Decode: {row['decode_ms_per_step']:.2f} ms per step for {row['batch']} sequences (engine "
            f"`{row.get('engine', 'hf')}`, {copy} in {row.get('serving_dtype', '?')}; prefill {row['prefill_s']:.2f} s); "
            f"weight-read bound {row['weight_read_ms']:.2f} ms per step (the serving weights read once at the measured "
            f"copy bandwidth of {row['bandwidth_gb_s']:,.0f} GB/s): {ratio:,.1f}× the bound.")


def _bytes_per_param(dtype: str) -> int:
    """Bytes per weight of a dtype label such as ``"fp32"`` or ``"fp32 + bf16 autocast"`` (the weights' dtype)."""
    return 2 if dtype.split()[0] in ("bf16", "fp16") else 4


def settings_from_args(args: Any) -> LMBenchSettings:
    """:class:`LMBenchSettings` from an argparse namespace with the same field names."""
    return LMBenchSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LMBenchSettings)})

