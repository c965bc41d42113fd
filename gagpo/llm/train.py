"""Training a language-model agent: rollout → advantages → PPO-clip update, for every critic-free estimator.

The loop is the toy trainer's (:mod:`gagpo.trainer`) with a language model in place of the small
policy network:

1. :func:`gagpo.llm.rollout.collect_lm` plays ``tasks_per_iter × group_size`` episodes; every step's
   response is scored under the sampling policy (``logp_old``) and, when ``kl_coef > 0``, under the
   reference policy;
2. :func:`gagpo.trainer.compute_advantages` — the same dispatch to the pure estimators of
   :mod:`gagpo.advantages` — gives one advantage per row (per action);
3. each token of a response inherits its row's advantage through ``action_index`` and
   :func:`gagpo.losses.ppo_clip_loss` computes the clipped surrogate with an *action-level* ratio
   (GAGPO; ``ratio_level="token"`` for the usual per-token ratio), the k3 KL penalty to the reference
   and an optional entropy bonus. A minibatch of rows is processed in micro-batches whose losses are
   weighted so that their gradients add up to the gradient of the minibatch's loss.

Published single-GPU recipes for ALFWorld-style agents (GiGPO's among them) set the defaults: groups
of 8, 16 tasks per iteration, γ = λ = 0.95, 2 history pairs, 50 steps, KL 0.01, invalid-action penalty
0.1, learning rate 1e-6 for full-parameter training (1e-5 with LoRA r 16, α 32).

PPO with a learned value head is not offered here (it needs a critic on the language model); the
critic-free estimators ``reinforce``, ``grpo``, ``rloo``, ``gigpo`` and ``gagpo`` are.

Resumption: the task seeds and the sampling seed of iteration k derive from ``(seed, k)``; a
checkpoint holds the trainable weights (the LoRA adapter or the whole model), the optimizer state
and the iteration, so a resumed run continues the same sequence of tasks (and, on a CPU, of samples).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..config import ANCHOR_MATCHES, NORMS, TrainConfig, _f
from ..losses import AGGREGATIONS, RATIO_LEVELS, ppo_clip_loss
from ..rollout import EnvPool, make_env_fn
from ..trainer import RunLoop, anchor_histogram, compute_advantages
from .policy import LMPolicy, LoraSettings, SamplingSettings, pad_right
from .rollout import LMRollout, collect_lm

__all__ = ["LM_ALGOS", "ESTIMATOR_FIELDS", "LMTrainConfig", "LMTrainer", "action_level_loss", "train_lm"]

LM_ALGOS = ("reinforce", "grpo", "rloo", "gigpo", "gagpo")
"""Estimators available to language-model training (no ``ppo``: it would need a value head)."""

ESTIMATOR_FIELDS = ("algo", "gamma", "lam", "norm", "step_weight", "reinforce_baseline", "adv_eps", "anchor_match",
                    "anchor_threshold")
"""Fields shared with :class:`gagpo.config.TrainConfig` that :func:`gagpo.trainer.compute_advantages` reads."""


@dataclass
class LMTrainConfig:
    """Configuration of one language-model training run. Field docs are the CLI's help."""

    #: fields that may change between a checkpoint and the run that resumes it
    RESUMABLE: ClassVar[tuple[str, ...]] = ("iterations", "resume", "progress", "out_dir", "checkpoint_every", "eval_every",
                                            "eval_episodes", "threads", "device", "gen_batch_size", "micro_batch_size")

    # --- model
    model: str = _f("tiny", "Hugging Face model name or local folder; 'tiny' = the offline tiny Llama with format warm-up, 'tiny-random' without")
    lora_r: int = _f(0, "LoRA rank; 0 trains every parameter (the usual LoRA preset: 16)")
    lora_alpha: int = _f(32, "LoRA α (the update is scaled by α / r)")
    lora_dropout: float = _f(0.0, "dropout on the LoRA adapters' input")
    dtype: str = _f("auto", "weight dtype: auto (GPU: bf16 base for LoRA, fp32 + bf16 autocast for full training; CPU: fp32), float32, bfloat16, float16",
                    choices=("auto", "float32", "bfloat16", "float16"))
    device: str = _f("auto", "torch device: auto (CUDA if available), cpu, cuda, cuda:1, ...")
    gradient_checkpointing: bool = _f(True, "recompute activations in the backward pass to save GPU memory")

    # --- what to train on
    env: str = _f("toy_envs/MiniHousehold-v0", "gymnasium id of a text environment with admissible actions (toy_envs/MiniHousehold-v0, gagpo/ALFWorld-v0)")
    env_kwargs: dict = _f({}, "extra keyword arguments for gymnasium.make, as JSON")
    max_steps: int = _f(50, "step limit per episode; 0 keeps the environment's registered limit")
    algo: str = _f("gagpo", "advantage estimator", choices=LM_ALGOS)
    seed: int = _f(0, "seed of the run: task sampling, response sampling, minibatch order")

    # --- rollouts
    iterations: int = _f(150, "training iterations (rollout -> advantages -> update)")
    tasks_per_iter: int = _f(16, "rollout groups per iteration (distinct task seeds)")
    group_size: int = _f(8, "episodes per group, all from the same task seed (G)")
    n_train_tasks: int = _f(0, "size of a fixed pool of training task seeds 0..n-1; 0 draws fresh task seeds (< 10000) every iteration")
    history: int = _f(2, "past (observation, action) pairs shown in each prompt")
    invalid_penalty: float = _f(0.1, "subtracted from the reward of an action with missing tags or not admissible")
    temperature: float = _f(1.0, "sampling temperature (the log-probs use the same temperature)")
    top_p: float = _f(1.0, "nucleus sampling mass (1 = no truncation)")
    max_new_tokens: int = _f(512, "response length limit in tokens (think + action)")
    max_prompt_tokens: int = _f(2048, "drop history pairs from prompts longer than this; 0 = no limit")

    # --- estimator (same names and meaning as TrainConfig)
    gamma: float = _f(0.95, "discount factor γ")
    lam: float = _f(0.95, "GAE λ (gagpo)")
    norm: str = _f("mean_std", "advantage normalisation within each rollout group (grpo, gigpo, gagpo)", choices=NORMS)
    step_weight: float = _f(1.0, "GiGPO: weight ω of the step-level (anchor-state) term")
    reinforce_baseline: str = _f("step_mean", "REINFORCE baseline: none, mean or step_mean", choices=("none", "mean", "step_mean"))
    adv_eps: float = _f(1e-6, "ε added to standard deviations in normalisations")
    anchor_match: str = _f("exact", "anchor states (gigpo, gagpo): 'exact' observation text, or 'near' duplicates merged within a group (gagpo.anchors)", choices=ANCHOR_MATCHES)
    anchor_threshold: float = _f(0.8, "anchor_match 'near': merge observations whose word-bigram Jaccard similarity to a more-visited one is >= this")

    # --- update
    lr: float = _f(1e-6, "AdamW learning rate for full-parameter training")
    lora_lr: float = _f(1e-5, "AdamW learning rate when lora_r > 0")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    update_epochs: int = _f(1, "passes over each iteration's rows")
    minibatch_size: int = _f(256, "rows (actions) per optimizer step")
    micro_batch_size: int = _f(8, "rows per forward/backward pass (gradient accumulation inside a minibatch)")
    gen_batch_size: int = _f(128, "prompts per generate() call")
    clip_eps: float = _f(0.2, "PPO clip range ε (lower side)")
    clip_eps_high: float = _f(0.2, "PPO clip range on the upper side (clip-higher when larger than clip_eps)")
    kl_coef: float = _f(0.01, "weight of the k3 KL penalty to the reference policy (0 skips the reference)")
    entropy_coef: float = _f(0.0, "entropy bonus coefficient (> 0 computes full-vocabulary entropies)")
    ratio_level: str = _f("action", "importance ratio per 'action' (one per response, GAGPO) or per 'token'", choices=RATIO_LEVELS)
    aggregation: str = _f("token_mean", "loss aggregation: mean over tokens, or over actions (each action's token mean)", choices=AGGREGATIONS)
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)")

    # --- evaluation, logging, checkpoints
    eval_every: int = _f(10, "evaluate on held-out task seeds every k iterations (and at the end); 0 disables")
    eval_episodes: int = _f(32, "held-out task seeds per evaluation (the environment's EVAL_SEEDS)")
    eval_greedy: bool = _f(True, "evaluate with greedy decoding instead of sampling")
    out_dir: str = _f("", "run directory for metrics.jsonl/csv and checkpoints; '' = runs/<env>-<model>-<algo>-seed<seed>")
    checkpoint_every: int = _f(10, "save a checkpoint every k iterations (and at the end); 0 only at the end")
    resume: bool = _f(False, "continue from the checkpoint in out_dir if one exists")
    progress: bool = _f(True, "show a progress bar")
    threads: int = _f(0, "torch CPU threads; 0 keeps torch's default")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"unknown {f.name} {getattr(self, f.name)!r}; expected one of {list(choices)}")
        for name in ("iterations", "tasks_per_iter", "group_size", "update_epochs", "minibatch_size",
                     "micro_batch_size", "gen_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {getattr(self, name)}")
        for name in ("max_steps", "n_train_tasks", "history", "lora_r", "eval_every", "eval_episodes", "threads",
                     "max_prompt_tokens", "checkpoint_every", "invalid_penalty", "kl_coef", "entropy_coef",
                     "weight_decay", "max_grad_norm", "clip_eps", "clip_eps_high"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1]; got {self.temperature}, {self.top_p}")
        if isinstance(self.env_kwargs, str):
            self.env_kwargs = json.loads(self.env_kwargs) if self.env_kwargs else {}
        if not isinstance(self.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a dict (JSON object); got {self.env_kwargs!r}")

    @property
    def lora(self) -> LoraSettings | None:
        """The LoRA settings, or ``None`` for full-parameter training."""
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout) if self.lora_r else None

    @property
    def learning_rate(self) -> float:
        """The learning rate in use: ``lora_lr`` with LoRA, ``lr`` otherwise."""
        return self.lora_lr if self.lora_r else self.lr

    def sampling(self, greedy: bool = False) -> SamplingSettings:
        return SamplingSettings(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                greedy=greedy)

    def estimator_config(self) -> TrainConfig:
        """The toy trainer's config with this run's estimator fields (what ``compute_advantages`` reads)."""
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{name: getattr(self, name) for name in ESTIMATOR_FIELDS if name in known})

    def run_dir(self) -> str:
        if self.out_dir:
            return self.out_dir
        env = self.env.split("/")[-1].replace("-v0", "")
        model = os.path.basename(self.model.rstrip("/")) or "model"
        return f"runs/{env}-{model}-{self.algo}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DIAG_MEAN = ("loss", "policy_loss", "kl_ref", "entropy", "clip_fraction", "approx_kl", "ratio_mean", "ratio_std")


def action_level_loss(policy: LMPolicy, prompt_ids: list[list[int]], response_ids: list[list[int]],
                      old_logp: list[np.ndarray], advantages: torch.Tensor, ref_logp: list[np.ndarray] | None,
                      cfg: LMTrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO-clip loss of one micro-batch of rows (one row = one action = one response).

    Scores the responses under the current policy (with gradient), pads the stored old and reference
    log-probs to the same ``(B, T)`` layout, and maps every token of row ``b`` to action ``b``
    (``action_index[b, t] = b``), so that with ``cfg.ratio_level == "action"`` all the tokens of one
    response share one importance ratio in :func:`gagpo.losses.ppo_clip_loss`.

    Args:
        policy: the policy being trained.
        prompt_ids, response_ids: token ids of the B rows.
        old_logp: per-row arrays of log π_old per response token (from the rollout).
        advantages: (B,) one advantage per row.
        ref_logp: per-row reference log-probs, or ``None`` (then ``cfg.kl_coef`` must be 0).
        cfg: clip widths, ratio level, KL and entropy coefficients, aggregation, temperature.
    """
    out = policy.token_logprobs(prompt_ids, response_ids, grad=True, temperature=cfg.temperature,
                                return_entropy=cfg.entropy_coef > 0, micro_batch_size=len(prompt_ids))
    logp_new, mask = out[0], out[1]
    width, device = logp_new.shape[1], logp_new.device
    logp_old = pad_right(old_logp, width).to(device)
    logp_ref = pad_right(ref_logp, width).to(device) if ref_logp is not None else None
    action_index = torch.arange(len(prompt_ids), device=device)[:, None].expand(-1, width)
    return ppo_clip_loss(
        logp_new, logp_old, advantages.to(device), action_index, mask, ratio_level=cfg.ratio_level,
        clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high, logp_ref=logp_ref, kl_coef=cfg.kl_coef,
        entropy=out[2] if cfg.entropy_coef > 0 else None, entropy_coef=cfg.entropy_coef, aggregation=cfg.aggregation)


class LMTrainer(RunLoop):
    """Holds the LM policy, its optimizer, the environments and the logs of one run.

    Args:
        cfg: the configuration.
        policy: an already-built :class:`LMPolicy` (else one is loaded from ``cfg.model``).
        eval_hook: called as ``eval_hook(trainer)`` at every evaluation; the dict it returns is added to
            that iteration's metrics (e.g. ALFWorld success per task type).
        pool, eval_pool: environment pools for training and evaluation (anything with ``reset_many``
            and ``step_many``, e.g. a process pool for ALFWorld); default: in-process
            :class:`~gagpo.rollout.EnvPool` of ``cfg.env``. The held-out seeds are the evaluation
            environment's ``EVAL_SEEDS`` when the pool is an ``EnvPool``, else 10000, 10001, …
    """

    def __init__(self, cfg: LMTrainConfig, policy: LMPolicy | None = None,
                 eval_hook: Callable[["LMTrainer"], dict[str, float]] | None = None,
                 pool: Any | None = None, eval_pool: Any | None = None):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.run_dir = cfg.run_dir()
        self.policy = policy or LMPolicy.from_pretrained(
            cfg.model, lora=cfg.lora, dtype=cfg.dtype, device=cfg.device,
            gradient_checkpointing=cfg.gradient_checkpointing, reference=cfg.kl_coef > 0,
            micro_batch_size=cfg.micro_batch_size, gen_batch_size=cfg.gen_batch_size)
        if cfg.kl_coef > 0 and not self.policy.has_reference():
            raise ValueError("kl_coef > 0 needs a reference policy: build the LMPolicy with lora=... or reference=True")
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.pool = pool or EnvPool(make_env_fn(cfg.env, cfg.max_steps, **cfg.env_kwargs))
        self.eval_pool = eval_pool or EnvPool(make_env_fn(cfg.env, cfg.max_steps, **cfg.env_kwargs))
        self.eval_seeds = self.held_out_seeds()
        self.eval_hook = eval_hook
        self.estimator_cfg = cfg.estimator_config()
        self.iteration = 0
        self.env_steps = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ seeds
    def sampling_seed(self, iteration: int) -> int:
        return int(np.random.default_rng([self.cfg.seed, iteration, 2]).integers(2**31 - 2**20))

    # ------------------------------------------------------------------ rollout
    def rollout(self) -> LMRollout:
        cfg = self.cfg
        return collect_lm(self.pool, self.policy, self.task_seeds(self.iteration), cfg.group_size, cfg.history,
                          cfg.sampling(), cfg.invalid_penalty, seed=self.sampling_seed(self.iteration),
                          max_prompt_tokens=cfg.max_prompt_tokens)

    def reference_logp(self, rollout: LMRollout) -> list[np.ndarray] | None:
        """Per-token log-probs of every response under the reference policy (``None`` when kl_coef = 0)."""
        if self.cfg.kl_coef == 0:
            return None
        with torch.no_grad():
            lp, mask = self.policy.token_logprobs(rollout.prompt_ids, rollout.response_ids, reference=True,
                                                  temperature=self.cfg.temperature)
        lp, mask = lp.float().cpu().numpy(), mask.cpu().numpy()
        return [lp[r, mask[r]].copy() for r in range(len(lp))]

    # ------------------------------------------------------------------ update
    def update(self, rollout: LMRollout, advantages: np.ndarray, ref_logp: list[np.ndarray] | None) -> dict[str, float]:
        """PPO epochs over the rollout's rows; returns averaged loss diagnostics."""
        cfg = self.cfg
        n = len(rollout.batch)
        if len(rollout.token_logp) != n:
            raise ValueError("the rollout carries no old log-probs: collect it with compute_logp=True")
        device = self.policy.device
        adv = torch.as_tensor(advantages, dtype=torch.float32, device=device)
        resp_len = np.asarray([len(r) for r in rollout.response_ids])
        total_len = resp_len + np.asarray([len(p) for p in rollout.prompt_ids])
        rng = np.random.default_rng([cfg.seed, self.iteration, 3])
        params = self.policy.parameters()
        sums: dict[str, float] = {}
        ratio_min, ratio_max, grad_norms, steps, tokens = math.inf, -math.inf, [], 0, 0
        self.policy.model.train()
        try:
            for _ in range(cfg.update_epochs):
                perm = rng.permutation(n)
                for mb in np.array_split(perm, max(1, math.ceil(n / cfg.minibatch_size))):
                    units = resp_len[mb].sum() if cfg.aggregation == "token_mean" else len(mb)
                    mb = mb[np.argsort(total_len[mb], kind="stable")]  # similar lengths share a micro-batch
                    self.optimizer.zero_grad(set_to_none=True)
                    for start in range(0, len(mb), cfg.micro_batch_size):
                        ii = mb[start:start + cfg.micro_batch_size].tolist()
                        loss, diag = action_level_loss(
                            self.policy, [rollout.prompt_ids[i] for i in ii], [rollout.response_ids[i] for i in ii],
                            [rollout.token_logp[i] for i in ii], adv[ii],
                            None if ref_logp is None else [ref_logp[i] for i in ii], cfg)
                        weight = (resp_len[ii].sum() if cfg.aggregation == "token_mean" else len(ii)) / units
                        (loss * weight).backward()
                        for k in _DIAG_MEAN:
                            sums[k] = sums.get(k, 0.0) + weight * float(diag[k])
                        ratio_min, ratio_max = min(ratio_min, diag["ratio_min"]), max(ratio_max, diag["ratio_max"])
                        tokens += int(total_len[ii].sum())
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
                    grad_norms.append(float(norm))
                    self.optimizer.step()
                    steps += 1
        finally:
            self.policy.model.eval()
        out = {k: v / steps for k, v in sums.items()}
        out.update(ratio_min=ratio_min, ratio_max=ratio_max, grad_norm=float(np.mean(grad_norms)),
                   optimizer_steps=steps, update_tokens=tokens)
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Held-out episodes (greedy by default) plus whatever ``eval_hook`` returns."""
        out: dict[str, float] = {}
        if self.eval_seeds:
            cfg = self.cfg
            r = collect_lm(self.eval_pool, self.policy, self.eval_seeds, 1, cfg.history, cfg.sampling(cfg.eval_greedy),
                           cfg.invalid_penalty, seed=cfg.seed + 12345, compute_logp=False,
                           max_prompt_tokens=cfg.max_prompt_tokens)
            out = {"eval_success": r.success_rate, "eval_return": float(r.traj_return.mean()),
                   "eval_length": float(r.traj_length.mean()), "eval_invalid_rate": r.invalid_rate}
        if self.eval_hook is not None:
            out.update(self.eval_hook(self))
        return out

    # ------------------------------------------------------------------ one iteration
    def step(self) -> dict[str, Any]:
        self.iteration += 1
        t0 = time.perf_counter()
        rollout = self.rollout()
        t1 = time.perf_counter()
        ref_logp = self.reference_logp(rollout)
        targets = compute_advantages(self.estimator_cfg, rollout)  # the toy trainer's dispatch to gagpo.advantages
        t2 = time.perf_counter()
        upd = self.update(rollout, targets["advantages"], ref_logp)
        t3 = time.perf_counter()
        self.env_steps += rollout.n_steps
        row: dict[str, Any] = {
            **self.iteration_metrics(rollout, targets["advantages"]), "format_error_rate": rollout.format_error_rate,
            "truncated_response_rate": float(1.0 - rollout.finished.mean()),
            "response_tokens": float(np.mean([len(r) for r in rollout.response_ids])),
            "prompt_tokens": float(np.mean([len(p) for p in rollout.prompt_ids])),
            **upd, **anchor_histogram(rollout),
            "gen_tokens_per_s": rollout.generated_tokens / max(rollout.generation_time, 1e-9),
            "update_tokens_per_s": upd["update_tokens"] / max(t3 - t2, 1e-9),
            "time_rollout": t1 - t0, "time_reference": t2 - t1, "time_update": t3 - t2,
        }
        if torch.cuda.is_available() and self.policy.device.type == "cuda":
            row["gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.policy.device) / 2**30
        return self.record(row)

    # ------------------------------------------------------------------ persistence
    def checkpoint_path(self) -> str:
        return os.path.join(self.run_dir, "checkpoint")

    def save_checkpoint(self) -> None:
        """Trainable weights (adapter or model) + tokenizer + optimizer + iteration, replaced atomically."""
        path = self.checkpoint_path()
        tmp, old = path + ".tmp", path + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        self.policy.save(tmp)
        torch.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        with open(os.path.join(tmp, "trainer_state.json"), "w") as fh:
            json.dump({"config": self.cfg.to_dict(), "iteration": self.iteration, "env_steps": self.env_steps,
                       "history": self.history}, fh)
        if os.path.exists(path):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> bool:
        """Restore a checkpoint written by :meth:`save_checkpoint`; False when there is none."""
        path = self.checkpoint_path()
        state_file = os.path.join(path, "trainer_state.json")
        if not os.path.exists(state_file):
            return False
        with open(state_file) as fh:
            state = json.load(fh)
        self.check_resumable(state["config"], path)
        self.policy.load_trainable(path)
        self.optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), map_location=self.policy.device))
        self.iteration, self.env_steps, self.history = state["iteration"], state["env_steps"], state["history"]
        return True

    # ------------------------------------------------------------------ the loop (RunLoop.train)
    def progress_desc(self) -> str:
        return f"{self.cfg.algo} {self.cfg.model}"

    def progress_postfix(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"succ": f"{row['success']:.2f}", "invalid": f"{row['invalid_rate']:.2f}"}


def train_lm(cfg: LMTrainConfig, policy: LMPolicy | None = None,
             eval_hook: Callable[[LMTrainer], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Train one language-model run; returns its per-iteration metrics (also in ``cfg.run_dir()``)."""
    return LMTrainer(cfg, policy=policy, eval_hook=eval_hook).train()
