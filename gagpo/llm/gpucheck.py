r"""``python -m gagpo check-gpu``: one command that says whether language-model training works on this GPU.

It needs no download and no network: every model is built locally with random weights (the shapes of
Qwen2.5-0.5B and -1.5B, :data:`gagpo.llm.bench.MODEL_CONFIGS`), and the training runs use a model
with Qwen2.5-0.5B's body, the book's word-level tokenizer (:mod:`gagpo.llm.tiny`) and a short
supervised format warm-up, on MiniHousehold (``toy_envs``, needs only gymnasium). Steps, each in its
own process with its own time limit (a hung or crashed step is reported, the others still run):

1. ``env`` — device, library versions, measured memory bandwidth;
2. ``attention`` — the NaN diagnosis: PyTorch's attention kernels (math, memory-efficient, flash,
   cuDNN) in bfloat16 on a padded batch, forward and backward, with plain left padding (the leading
   pads' query rows are fully masked) and with the layout this library uses
   (:func:`gagpo.llm.policy.pad_after_first`); then a real-shape model's teacher-forced log-probs and
   gradients with both layouts, in both training precisions (bfloat16 weights as with LoRA, float32
   weights under bfloat16 autocast as in full-parameter training);
3. ``train-full``, ``train-lora``, ``train-ppo`` — 3 iterations each of full-parameter GAGPO, LoRA
   GAGPO and PPO with the value head (``python -m gagpo train``), then ``resume`` — one more iteration
   of the full run from its checkpoint; every metric must be finite and no optimizer step may have
   been skipped by the non-finite guard (``nonfinite_steps`` = 0);
4. ``bench-*`` — ``python -m gagpo bench lm`` (batch 64, 512 prompt + 256 new tokens) for 0.5B and
   1.5B, full-parameter and LoRA, with the decode time per step next to the weight-read bound; with
   ``--compare-engines`` also the 0.5B full-parameter run with the ``hf-shared`` engine (generation
   with the training weights, as before the engine seam), the ``hf-continuous`` engine (continuous
   batching) and the ``hf-compiled`` engine (static cache + ``torch.compile``).

The report (``--out``, default ``figures/gpu_check.md``, and a ``.csv`` of every measured row beside
it) is rewritten after every step, so an interrupted check still leaves what it measured. The
command exits with status 1 when a step failed or a training metric was not finite.

``--device cpu --quick`` runs the same steps with tiny shapes (the test suite does; about two minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

from .devices import resolve_device  # imports no torch

__all__ = ["main", "build_parser", "STEPS", "format_report", "build_check_model"]

#: (step name, time limit in seconds on a GPU)
STEPS: tuple[tuple[str, int], ...] = (
    ("env", 90), ("attention", 120), ("model", 150), ("train-full", 150), ("train-lora", 120), ("train-ppo", 150),
    ("resume", 90), ("bench-0.5b-full", 120), ("bench-0.5b-lora", 120), ("bench-1.5b-full", 150),
    ("bench-1.5b-lora", 150),
)
COMPARE_STEPS: tuple[tuple[str, int], ...] = (("bench-0.5b-full-shared", 120), ("bench-0.5b-full-continuous", 150),
                                              ("bench-0.5b-full-compiled", 240))

GEN_TARGET = 8000.0      #: generated tokens/s the issue asks of the hf engine (0.5B, batch 64, 512 + 256 tokens)
ITERATION_TARGET = 180.0  #: seconds: the recipe-iteration extrapolation target, full-parameter 0.5B

# the training runs' settings (small: 3 iterations must take seconds, not minutes)
TRAIN_ARGS = ["--env", "toy_envs/MiniHousehold-v0", "--tasks-per-iter", "4", "--group-size", "8", "--max-steps", "8",
              "--max-new-tokens", "40", "--micro-batch-size", "32", "--minibatch-size", "128", "--eval-every", "0",
              "--checkpoint-every", "1", "--no-progress", "--seed", "0"]
QUICK_TRAIN_ARGS = ["--env", "toy_envs/MiniHousehold-v0", "--tasks-per-iter", "2", "--group-size", "2", "--max-steps", "2",
                    "--max-new-tokens", "12", "--micro-batch-size", "4", "--minibatch-size", "16", "--eval-every", "0",
                    "--checkpoint-every", "1", "--no-progress", "--seed", "0"]


# ---------------------------------------------------------------------------------------------- steps
def step_env(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    from .bench import memory_bandwidth

    dev = resolve_device(args.device)
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "device": str(dev)}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        out["peft"] = "missing"
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        out.update(gpu=props.name, gpu_memory_gb=props.total_memory / 2**30, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), capability=f"{props.major}.{props.minor}")
    else:
        out.update(gpu="none (CPU)", cpu_cores=os.cpu_count())
    out["bandwidth_gb_s"] = memory_bandwidth(dev) / 1e9
    return out


def _masks(lengths: list[int], width: int, layout: str):
    """(B, W) 0/1 attention masks of prompts of ``lengths`` in ``layout`` 'left' or 'after-first'."""
    import torch

    from .encoding import pad_after_first

    if layout == "after-first":
        return pad_after_first([[1] * n for n in lengths], 0)[1]
    attn = torch.zeros((len(lengths), width), dtype=torch.long)
    for b, n in enumerate(lengths):
        attn[b, width - n:] = 1
    return attn


def step_attention(args: argparse.Namespace) -> dict[str, Any]:
    """Finite forward/backward of each SDPA kernel and of a model's scoring, for both padding layouts."""
    import torch
    import torch.nn.functional as F

    dev = resolve_device(args.device)
    rows: list[dict[str, Any]] = []
    torch.manual_seed(0)
    b, h, width, d = 4, 8, 96, 64
    lengths = [96, 70, 33, 9]
    backends = {}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                    "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    except ImportError:  # very old torch
        sdpa_kernel = None
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    for layout in ("left", "after-first"):
        valid = _masks(lengths, width, layout).bool().to(dev)
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        mask = causal[None, None] & valid[:, None, None, :]
        for name, backend in backends.items():
            q, k, v = (torch.randn(b, h, width, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
            row = {"check": "sdpa kernel", "what": name, "layout": layout, "dtype": str(dtype).removeprefix("torch.")}
            try:
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    real = valid[:, None, :, None].expand_as(out)
                    (out * real).float().sum().backward()
                row.update(forward_finite_real=bool(torch.isfinite(out[real]).all()),
                           forward_finite_pads=bool(torch.isfinite(out[~real]).all()),
                           grad_finite=all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v)), result="ran")
            except RuntimeError as exc:  # the kernel does not take this input (mask, dtype, device)
                row.update(result=f"not available: {str(exc).splitlines()[0][:80]}")
            rows.append(row)
    rows += _model_scoring_rows(args, dev)
    return {"rows": rows}


def _model_scoring_rows(args: argparse.Namespace, dev) -> list[dict[str, Any]]:
    """A real-shape model's teacher-forced log-probs with gradient, for both layouts and both precisions."""
    import torch
    from transformers import AutoModelForCausalLM

    from .bench import model_config

    rows = []
    name = "tiny" if args.quick else "qwen2.5-0.5b"
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    with dev:
        model = AutoModelForCausalLM.from_config(model_config(name), dtype=torch.float32)
    vocab = model.config.vocab_size
    lengths = [300, 211, 97, 40, 300, 150, 12, 260]
    p_width, t_width = max(lengths), 24
    gen = torch.Generator().manual_seed(1)
    for precision in (("bf16 weights (LoRA)", torch.bfloat16, None), ("fp32 + bf16 autocast (full)", torch.float32, torch.bfloat16)):
        label, wdtype, autocast = precision
        if not cuda:
            wdtype, autocast = torch.float32, None
        model.to(wdtype)
        for layout in ("left", "after-first"):
            p_attn = _masks(lengths, p_width, layout)
            ids = torch.randint(1, vocab, (len(lengths), p_width + t_width), generator=gen)
            attn = torch.cat([p_attn, torch.ones(len(lengths), t_width, dtype=torch.long)], 1)
            ids, attn = ids.to(dev), attn.to(dev)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            model.zero_grad(set_to_none=True)
            row = {"check": "model scoring", "what": f"{name}, {label if cuda else 'fp32 (CPU)'}", "layout": layout}
            try:
                with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
                    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                                   logits_to_keep=t_width + 1).logits[:, :-1].float()
                logp = logits.log_softmax(-1).gather(-1, ids[:, p_width:, None]).squeeze(-1)
                logp.sum().backward()
                row.update(forward_finite_real=bool(torch.isfinite(logp).all()),
                           grad_finite=all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None),
                           result="ran")
            except RuntimeError as exc:
                row.update(result=f"error: {str(exc).splitlines()[0][:80]}")
            rows.append(row)
        if not cuda:
            break
    return rows


def build_check_model(out_dir: str, device: str = "auto", quick: bool = False, steps: int | None = None,
                      seed: int = 0) -> dict[str, Any]:
    """A causal LM with Qwen2.5-0.5B's body (``quick``: the tiny model's) and the book's word-level
    tokenizer, after ``steps`` supervised format warm-up steps (batch 16; 150 by default, 20 quick),
    saved to ``out_dir`` for ``python -m gagpo train --model out_dir``. On a GPU the warm-up runs
    under bfloat16 autocast with float32 weights."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from .bench import MODEL_CONFIGS
    from .encoding import pad_after_first
    from .tiny import format_examples, build_tiny_tokenizer, tiny_config

    dev = resolve_device(device)
    steps = (20 if quick else 150) if steps is None else steps
    tok = build_tiny_tokenizer()
    cfg = tiny_config(tok)
    if not quick:
        shape = MODEL_CONFIGS["qwen2.5-0.5b"]
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
            setattr(cfg, key, shape[key])
    cfg.max_position_embeddings = 4096
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dev)
    examples = format_examples(tok, steps * 16, seed, 256)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4 if not quick else 3e-3, weight_decay=0.0)
    t0, losses = time.perf_counter(), []
    model.train()
    for k in range(steps):
        batch = examples[k * 16:(k + 1) * 16]
        seqs = [p + r for p, r in batch]
        ids, attn = pad_after_first(seqs, tok.pad_token_id)
        labels = torch.full_like(ids, -100)
        for b, (_, r) in enumerate(batch):
            labels[b, ids.shape[1] - len(r):] = torch.as_tensor(r)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        ids, attn, labels, pos = (t.to(dev) for t in (ids, attn, labels, pos))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = model(input_ids=ids, attention_mask=attn, position_ids=pos, labels=labels, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.to("cpu").save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"params": sum(p.numel() for p in model.parameters()), "warmup_steps": steps,
            "warmup_loss_first": losses[0] if losses else None, "warmup_loss_last": losses[-1] if losses else None,
            "warmup_s": time.perf_counter() - t0}


def step_model(args: argparse.Namespace) -> dict[str, Any]:
    path = os.path.join(args.work_dir, "model")
    shutil.rmtree(path, ignore_errors=True)
    return build_check_model(path, args.device, args.quick)


def _run_metrics(run_dir: str) -> list[dict[str, Any]]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _summarise_run(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Finiteness and timings of a training run's metrics."""
    bad = sorted({k for r in rows for k, v in r.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)})
    mean = lambda k: float(sum(r.get(k, 0.0) for r in rows) / len(rows)) if rows else math.nan  # noqa: E731
    last = rows[-1] if rows else {}
    return {"iterations": len(rows), "nonfinite_metrics": ",".join(bad), "all_finite": not bad,
            "nonfinite_steps": int(sum(r.get("nonfinite_steps", 0) for r in rows)),
            "optimizer_steps": int(sum(r.get("optimizer_steps", 0) for r in rows)),
            "loss": last.get("loss"), "grad_norm": last.get("grad_norm"), "kl_ref": last.get("kl_ref"),
            "time_rollout": mean("time_rollout"), "time_update": mean("time_update"),
            "gen_tokens_per_s": mean("gen_tokens_per_s"), "gpu_peak_gb": max((r.get("gpu_peak_gb", 0.0) for r in rows), default=0.0),
            "success": last.get("success"), "invalid_rate": last.get("invalid_rate")}


def step_train(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    model = os.path.join(args.work_dir, "model")
    run = os.path.join(args.work_dir, "run-full" if mode == "resume" else f"run-{mode.removeprefix('train-')}")
    extra = {"train-full": [], "train-lora": ["--lora-r", "16"], "train-ppo": ["--algo", "ppo"],
             "resume": ["--resume"]}[mode]
    n = 2 if args.quick else 3
    iterations = str(n + 1 if mode == "resume" else n)
    if mode != "resume":
        shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "gagpo", "train", "--model", model, "--device", args.device, "--out-dir", run,
           "--iterations", iterations, *(QUICK_TRAIN_ARGS if args.quick else TRAIN_ARGS), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    out = _summarise_run(_run_metrics(run))
    out.update(wall_s=wall, command="python -m gagpo " + " ".join(cmd[3:]))
    if mode == "resume":
        out["resumed"] = out["iterations"] == n + 1
    return out


def step_bench(args: argparse.Namespace, name: str) -> dict[str, Any]:
    from .bench import LMBenchSettings, extrapolate_iteration, lm_throughput

    parts = name.split("-")  # bench-0.5b-full[-shared|-compiled]
    model = "tiny" if args.quick else f"qwen2.5-{parts[1]}"
    engine = {"shared": "hf-shared", "compiled": "hf-compiled", "continuous": "hf-continuous"}.get(
        parts[3] if len(parts) > 3 else "", "hf")
    workload = dict(batch=4, prompt_tokens=32, new_tokens=8, micro_batch=2) if args.quick else \
        dict(batch=64, prompt_tokens=512, new_tokens=256, micro_batch=8)
    s = LMBenchSettings(model_config=model, device=args.device, lora_r=16 if parts[2] == "lora" else 0, engine=engine,
                        **workload)
    rows = lm_throughput(s, out=None, verbose=True)
    ex = extrapolate_iteration(rows, s.avg_steps)
    by = {r["phase"]: r for r in rows}
    gen = by["rollout"]
    return {"model": model, "mode": "LoRA r16" if s.lora_r else "full", "engine": engine, "dtype": gen["dtype"],
            "gen_tokens_per_s": gen["tokens_per_s"], "rollout_s": gen["seconds"], "prefill_s": gen["prefill_s"],
            "decode_ms_per_step": gen["decode_ms_per_step"], "weight_read_ms": gen["weight_read_ms"],
            "score_rows_per_s": by["score"]["rows_per_s"], "update_rows_per_s": by["update"]["rows_per_s"],
            "peak_gb": max(r["peak_memory_gb"] for r in rows), "iteration_extrapolated_s": ex["total"],
            **{k: v for k, v in workload.items()}}


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    name = args.step
    if name == "env":
        return step_env(args)
    if name == "attention":
        return step_attention(args)
    if name == "model":
        return step_model(args)
    if name.startswith("train-") or name == "resume":
        return step_train(args, name)
    if name.startswith("bench-"):
        return step_bench(args, name)
    raise ValueError(f"unknown step {name!r}")


# --------------------------------------------------------------------------------------------- report
def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "**NO**"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if math.isfinite(v) else f"**{v}**"
    return str(v)


def format_report(results: dict[str, dict[str, Any]], command: str, quick: bool = False) -> str:
    """The Markdown report of the steps run so far (``quick``: the tiny-shape settings were used)."""
    train_args, n_iter = (QUICK_TRAIN_ARGS, 2) if quick else (TRAIN_ARGS, 3)
    env = results.get("env", {}).get("result", {})
    lines = ["# GPU check — language-model training on one device", ""]
    failed = [n for n, r in results.items() if r["status"] != "ok"]
    train_bad = [n for n, r in results.items() if r["status"] == "ok" and (n.startswith("train-") or n == "resume")
                 and (not r["result"]["all_finite"] or r["result"]["nonfinite_steps"] > 0)]
    verdict = "PASS" if not failed and not train_bad else "FAIL"
    lines += [f"**{verdict}** — {len(results)} steps run; failed: {', '.join(failed) or 'none'}; training runs with a "
              f"non-finite metric or a skipped step: {', '.join(train_bad) or 'none'}.", ""]
    if env:
        lines += [f"Device: {env.get('gpu')} ({env.get('device')}"
                  + (f", {env['gpu_memory_gb']:.0f} GiB, compute capability {env['capability']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}"
                     if "cuda" in env else f", {env.get('cpu_cores')} cores") + f"); measured copy bandwidth "
                  f"{env['bandwidth_gb_s']:,.0f} GB/s. Python {env['python']}, torch {env['torch']}, transformers "
                  f"{env['transformers']}, peft {env['peft']}.", ""]
    att = results.get("attention")
    if att and att["status"] == "ok":
        lines += ["## 1. Attention on padded rows (the NaN diagnosis)", "",
                  "`left`: plain left padding, whose leading pads have fully masked query rows; `after-first`: the "
                  "padding placed after each prompt's first token (`gagpo.llm.policy.pad_after_first`, what the "
                  "library now uses), where every query sees at least one token.", "",
                  "| check | what | layout | forward finite (real tokens) | forward finite (pads) | gradients finite | result |",
                  "|---|---|---|---|---|---|---|"]
        for r in att["result"]["rows"]:
            lines.append(f"| {r['check']} | {r['what']}{' ' + r['dtype'] if 'dtype' in r else ''} | {r['layout']} | "
                         f"{_fmt(r.get('forward_finite_real'))} | {_fmt(r.get('forward_finite_pads'))} | "
                         f"{_fmt(r.get('grad_finite'))} | {r['result']} |")
        lines.append("")
    runs = [(n, r) for n, r in results.items() if n.startswith("train-") or n == "resume"]
    if runs or "model" in results:
        lines += [f"## 2. Training: {n_iter} iterations per mode, then a resume", ""]
        m = results.get("model")
        if m and m["status"] == "ok":
            mr = m["result"]
            lines += [f"Model: Llama body ({mr['params'] / 1e6:,.1f}M parameters) with the book's word-level tokenizer, "
                      f"{mr['warmup_steps']} format warm-up steps (loss {_fmt(mr['warmup_loss_first'])} → "
                      f"{_fmt(mr['warmup_loss_last'])}, {mr['warmup_s']:.1f} s). Runs: `{' '.join(train_args)}`.", ""]
        lines += ["| run | status | iterations | all metrics finite | skipped steps (nonfinite_steps) | optimizer steps | "
                  "last loss | last grad_norm | last kl_ref | rollout s/iter | update s/iter | generated tokens/s | "
                  "peak GPU GB | wall s |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, r in runs:
            if r["status"] != "ok":
                lines.append(f"| {n} | {r['status']} | | | | | | | | | | | | {r['wall_s']:.0f} |")
                continue
            x = r["result"]
            lines.append(f"| {n} | ok | {x['iterations']} | {_fmt(x['all_finite'])}{' (' + x['nonfinite_metrics'] + ')' if x['nonfinite_metrics'] else ''} | "
                         f"{x['nonfinite_steps']} | {x['optimizer_steps']} | {_fmt(x['loss'], 4)} | {_fmt(x['grad_norm'], 3)} | "
                         f"{_fmt(x['kl_ref'], 5)} | {_fmt(x['time_rollout'], 1)} | {_fmt(x['time_update'], 1)} | "
                         f"{_fmt(x['gen_tokens_per_s'], 0)} | {_fmt(x['gpu_peak_gb'], 1)} | {r['wall_s']:.0f} |")
        lines.append("")
    benches = [(n, r) for n, r in results.items() if n.startswith("bench-")]
    if benches:
        lines += ["## 3. Throughput (`bench lm`, random weights)", "",
                  "| run | model | training | engine | dtype | workload | generated tokens/s | decode ms/step | "
                  "weight-read bound ms/step | × bound | prefill s | score rows/s | update rows/s | peak GB | "
                  "recipe iteration (extrapolated) | wall s |",
                  "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, r in benches:
            if r["status"] != "ok":
                lines.append(f"| {n} | {r['status']} | | | | | | | | | | | | | | {r['wall_s']:.0f} |")
                continue
            x = r["result"]
            lines.append(f"| {n} | {x['model']} | {x['mode']} | {x['engine']} | {x['dtype']} | {x['batch']} × "
                         f"({x['prompt_tokens']} + {x['new_tokens']}) | {x['gen_tokens_per_s']:,.0f} | "
                         f"{x['decode_ms_per_step']:.2f} | {x['weight_read_ms']:.3f} | "
                         f"{x['decode_ms_per_step'] / x['weight_read_ms']:,.0f} | {x['prefill_s']:.2f} | "
                         f"{x['score_rows_per_s']:,.0f} | {x['update_rows_per_s']:,.1f} | {x['peak_gb']:.1f} | "
                         f"{x['iteration_extrapolated_s'] / 60:,.1f} min | {r['wall_s']:.0f} |")
        main = results.get("bench-0.5b-full")
        if main and main["status"] == "ok" and not quick:
            x = main["result"]
            ok_gen, ok_it = x["gen_tokens_per_s"] >= GEN_TARGET, x["iteration_extrapolated_s"] <= ITERATION_TARGET
            lines += ["", f"Targets (0.5B full-parameter, engine `hf`): ≥ {GEN_TARGET:,.0f} generated tokens/s — "
                      f"{'met' if ok_gen else 'NOT met'} ({x['gen_tokens_per_s']:,.0f}); recipe iteration ≤ "
                      f"{ITERATION_TARGET / 60:.0f} min — {'met' if ok_it else 'NOT met'} "
                      f"({x['iteration_extrapolated_s'] / 60:,.1f} min, an extrapolation: 16 tasks × 8 episodes × 25 steps)."]
        lines.append("")
    for n, r in results.items():
        if r["status"] != "ok":
            lines += [f"Step `{n}` {r['status']} after {r['wall_s']:.0f} s:", "", "```", r.get("error", "")[-1500:], "```", ""]
    lines += [f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}."]
    return "\n".join(lines)


def _csv_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for n, r in results.items():
        res = r.get("result") or {}
        if n == "attention" and "rows" in res:
            rows += [{"step": n, "status": r["status"], **x} for x in res["rows"]]
        else:
            rows.append({"step": n, "status": r["status"], "wall_s": r["wall_s"],
                         **{k: v for k, v in res.items() if not isinstance(v, (list, dict))}})
    return rows


def _write(results: dict[str, dict[str, Any]], out: str, command: str, quick: bool = False) -> None:
    import csv

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(format_report(results, command, quick) + "\n")
    os.replace(tmp, out)
    rows = _csv_rows(results)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    path = os.path.splitext(out)[0] + ".csv"
    with open(path + ".tmp", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------------------------------------------ CLI
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m gagpo check-gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:N or cpu (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and budgets (a smoke test, also on a CPU)")
    p.add_argument("--compare-engines", action="store_true",
                   help="also bench the 0.5B full-parameter run with the hf-shared engine (generation with the training "
                        "weights, as before the engine seam), the hf-continuous engine (continuous batching) and the "
                        "hf-compiled engine (static cache + torch.compile)")
    p.add_argument("--out", default="figures/gpu_check.md", help="the Markdown report; a .csv beside it (default: %(default)s)")
    p.add_argument("--work-dir", default="runs/gpu-check", help="models, runs and step logs (default: %(default)s)")
    p.add_argument("--only", nargs="+", default=None, metavar="STEP",
                   help="run only these steps (train steps need 'model' first; resume needs train-full)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's time limit (default: %(default)s)")
    return p


def main(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the check; returns the exit status (0 = every step ran and every training metric is finite)."""
    command = command or "python -m gagpo " + " ".join(sys.argv[1:])
    steps = list(STEPS) + (list(COMPARE_STEPS) if args.compare_engines else [])
    if args.quick:  # tiny shapes: the 1.5B benches would repeat the 0.5B ones
        steps = [(n, t) for n, t in steps if not n.startswith("bench-1.5b")]
    names = [n for n, _ in steps]
    if args.only:
        unknown = sorted(set(args.only) - set(names) - {n for n, _ in COMPARE_STEPS})
        if unknown:
            raise SystemExit(f"error: --only: unknown steps {unknown}; expected some of {names}")
        steps = [(n, t) for n, t in list(STEPS) + list(COMPARE_STEPS) if n in args.only]
    os.makedirs(args.work_dir, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name, limit in steps:
        limit = limit * args.timeout_scale * ((2 if args.quick else 3) if args.device == "cpu" else 1)
        js = os.path.join(args.work_dir, f"{name}.json")
        if os.path.exists(js):
            os.remove(js)
        cmd = [sys.executable, "-m", "gagpo.llm.gpucheck", "--step", name, "--json", js, "--device", args.device,
               "--work-dir", args.work_dir] + (["--quick"] if args.quick else [])
        print(f"[check-gpu] {name} (limit {limit:.0f} s) ...", flush=True)
        t0 = time.perf_counter()
        log_path = os.path.join(args.work_dir, f"{name}.log")
        with open(log_path, "w") as log:
            try:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit).returncode
                status = "ok" if code == 0 and os.path.exists(js) else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                status = f"timed out ({limit:.0f} s)"
        wall = time.perf_counter() - t0
        entry: dict[str, Any] = {"status": status, "wall_s": wall}
        if status == "ok":
            with open(js) as fh:
                entry["result"] = json.load(fh)
        else:
            with open(log_path) as fh:
                entry["error"] = fh.read()[-4000:]
        results[name] = entry
        print(f"[check-gpu] {name}: {status} in {wall:.1f} s", flush=True)
        _write(results, args.out, command, args.quick)
    report = format_report(results, command, args.quick)
    print(report)
    ok = report.startswith("# GPU check") and "**PASS**" in report
    return 0 if ok else 1


def _step_main(argv: list[str] | None = None) -> int:
    """``python -m gagpo.llm.gpucheck --step NAME --json FILE ...``: one step, its result as JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--step", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    result = run_step(args)
    with open(args.json + ".tmp", "w") as fh:
        json.dump(result, fh, default=str)
    os.replace(args.json + ".tmp", args.json)
    print(json.dumps(result, default=str)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(_step_main())
