"""Training a language-model agent: rollout → advantages → PPO-clip update, for every estimator.

The loop is the toy trainer's (:class:`gagpo.runloop.RunLoop`, whose hooks :class:`LMTrainer` fills
in) with a language model in place of the small policy network:

1. :func:`gagpo.llm.rollout.collect_lm` plays ``tasks_per_iter × group_size`` episodes; every step's
   response is scored under the sampling policy (``logp_old``) — the metric ``time_rollout`` — and,
   when ``kl_coef > 0``, under the reference policy (``time_reference``);
2. :func:`gagpo.registry.compute_advantages` — the toy trainer's dispatch to the registered pure
   estimators, reading this run's :class:`LMTrainConfig` — gives one advantage per row (per action);
   for ``ppo`` (an estimator registered with ``needs_critic=True``),
   :func:`gagpo.advantages.gae_advantages` over a learned critic (below) (``time_advantage``);
3. each token of a response inherits its row's advantage through ``action_index`` and
   :func:`gagpo.losses.ppo_clip_loss` computes the clipped surrogate with an *action-level* ratio
   (GAGPO; ``ratio_level="token"`` for the usual per-token ratio), the k3 KL penalty to the reference
   and an optional entropy bonus. A minibatch of rows is processed in micro-batches whose losses are
   weighted so that their gradients add up to the gradient of the minibatch's loss (``time_update``).

Published single-GPU recipes for ALFWorld-style agents (GiGPO's among them) set the defaults: groups
of 8, 16 tasks per iteration, γ = λ = 0.95, 2 history pairs, 50 steps, KL 0.01, invalid-action penalty
0.1, learning rate 1e-6 for full-parameter training (1e-5 with LoRA r 16, α 32).

Estimators: the critic-free ``reinforce``, ``grpo``, ``rloo``, ``gigpo`` and ``gagpo``, and ``ppo``
with a learned critic — a linear value head on the final hidden state of each prompt's last token
(:class:`gagpo.llm.value.ValueHead`), sharing the language model with the policy. Its values
:math:`V(s_t)` and :math:`V(s'_t)` (the next decision's prompt; 0 after termination; after a cut by
the step limit, the prompt at the cut) give GAE advantages, normalised over the whole batch as the
toy trainer's PPO does; its regression targets are ``advantages + values`` (before normalisation),
and the value loss, weighted by ``value_coef``, is added to the policy loss of the same forward pass.

Evaluation (every ``eval_every`` iterations and at the end) plays greedy episodes on held-out tasks.
With ``eval_splits`` (by default the splits of the environment's adapter, :mod:`gagpo.envs.adapter`:
``valid_seen,valid_unseen`` for ALFWorld) every split gets its own environments, built with
``split=<name>``, and its own metrics — ``eval_<split>_success``,
``eval_<split>_invalid_rate``, ``eval_<split>_<task_type>_success`` — while ``eval_success`` is the
success over every evaluated episode; otherwise the held-out tasks are the environment's
``EVAL_SEEDS``. Environments run in this process, or in ``num_workers`` worker processes
(:class:`gagpo.envs.ProcessEnvPool`), closed when training ends. ``<run_dir>/curves.png`` shows the
training success, the invalid-action rate and the evaluation curves against environment steps.

Resumption: the task seeds and the sampling seed of iteration k derive from ``(seed, k)``; a
checkpoint holds the trainable weights (the LoRA adapter or the whole model, and the value head for
``ppo``), the optimizer state and the iteration, so a resumed run continues the same sequence of
tasks (and, on a CPU, of samples).

Several GPUs (data parallelism, :mod:`gagpo.distributed`): launched on N processes, each process
holds a full copy of the model on its own GPU (``cuda:<LOCAL_RANK>``), plays ``tasks_per_iter / N``
whole rollout groups (``tasks_per_iter`` stays the number of groups of an iteration and must be a
multiple of N) with its own sampling seed, and gets exactly the advantages of a one-process run on the
union of the groups (a ``group_local`` estimator on its own groups, PPO's batch-wide normalisation and
REINFORCE's batch baselines on the gathered batch). The update splits every process's rows into the
same number of minibatches, ``ceil(rows of all processes / minibatch_size)``; a micro-batch's loss is
weighted by its tokens over the minibatch's tokens of *every* process (``token_mean``; its rows for
``action_mean``), and the gradients are summed over the processes once per minibatch, before clipping
— DDP's all-reduce, done by hand so that processes with different numbers of micro-batches (episodes
differ in length) never wait on each other. Every process thus takes the same optimizer step, that of
one process on the union of the groups (up to the order of floating-point additions). The main process
evaluates, draws the curves and writes the metrics and the checkpoint, which holds the whole state: a
run may resume on another number of processes. Commands (accelerate's documented DDP configuration is
``gagpo/configs/accelerate_multi_gpu.yaml``; ``accelerate launch`` and ``torchrun`` both work)::

    accelerate launch --config_file gagpo/configs/accelerate_multi_gpu.yaml --num_processes 4 -m gagpo train \
        --model Qwen/Qwen2.5-1.5B-Instruct --env alfworld --lora-r 16 --num-workers 4 --tasks-per-iter 16
    accelerate launch --multi_gpu --num_processes 4 -m gagpo train --model ... --tasks-per-iter 16
    # CPUs, two processes with gloo (what tests/test_distributed.py runs; accelerate's --cpu starts one
    # process unless MPI is configured, --multi_gpu launches through torchrun):
    accelerate launch --multi_gpu --num_processes 2 -m gagpo train --model tiny --device cpu --threads 1 \
        --tasks-per-iter 2 --group-size 2 --max-new-tokens 16 --iterations 2
    torchrun --nproc_per_node 2 -m gagpo train --model tiny --device cpu --threads 1 --tasks-per-iter 2 ...

FSDP (full-parameter training; :mod:`gagpo.llm.fsdp`): launched with ``gagpo/configs/accelerate_fsdp.yaml``
(or ``ACCELERATE_USE_FSDP=true torchrun ...``), the same run with the weights, gradients and optimizer state
sharded over the processes (FSDP2); the processes run their forward and backward passes in lockstep, generate
with a whole serving copy gathered after every update, and the checkpoint is gathered whole::

    accelerate launch --config_file gagpo/configs/accelerate_fsdp.yaml --num_processes 4 -m gagpo train \
        --model Qwen/Qwen2.5-7B-Instruct --env alfworld --tasks-per-iter 16 --algo gagpo

Not supported: DeepSpeed (refused at start), FSDP with LoRA, ``ppo`` or ``--engine hf-shared`` (refused at
start), accelerate's ``--mixed_precision`` (``--dtype`` decides), and evaluation spread over the processes (the
main one plays every held-out episode).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch

from .. import distributed as dist
from ..config import BaseConfig, ConfigError, EstimatorSettings, check_eval_episodes, env_keywords, setting, shared
from ..envs.factory import EnvFactory
from ..guard import NonFiniteError, NonFiniteGuard, all_finite, check_finite_weights, nonfinite_names
from ..losses import AGGREGATIONS, ppo_clip_loss, value_loss
from ..rollout import EnvPool, make_env_fn
from ..rundir import RunDirError, atomic_write, check_start, damaged, replace_dir, write_error
from ..registry import estimator_names, get_estimator
from ..runloop import TRAIN_SEED_RANGE, RunLoop
from ..trainer import critic_targets, estimator_advantages
from .devices import DTYPE_CHOICES, check_device, resolve_device
from .encoding import pad_right, unpad_rows
from .engine import ENGINES
from .policy import LMPolicy, LoraSettings, SamplingSettings
from .rollout import LMRollout, collect_lm
from .value import VALUE_HEAD_FILE, ValueHead, explained_variance, next_state_values

__all__ = ["LM_ALGOS", "ESTIMATOR_FIELDS", "LMTrainConfig", "LMTrainer", "EvalSet", "action_level_loss",
           "evaluation_metrics", "train_lm"]

LM_ALGOS = estimator_names()
"""The built-in estimators (a snapshot of the registry at import; ``algo`` takes any registered one, see
:mod:`gagpo.registry`); one registered with ``needs_critic=True`` (``ppo``) adds a value head (:mod:`gagpo.llm.value`)."""

ESTIMATOR_FIELDS = tuple(f.name for f in dataclasses.fields(EstimatorSettings))
"""The estimator's fields (:class:`gagpo.config.EstimatorSettings`, shared with :class:`gagpo.config.TrainConfig`),
which :func:`gagpo.registry.compute_advantages` reads from an :class:`LMTrainConfig`."""


def check_eval_splits(eval_splits: str) -> None:
    """``ValueError`` unless ``eval_splits`` is 'auto', '' or distinct comma-separated names."""
    if eval_splits == "auto" or not eval_splits.strip():
        return
    names = [name.strip() for name in eval_splits.split(",")]
    if not all(names) or len(set(names)) < len(names):
        raise ValueError(f"must be 'auto', '' or distinct comma-separated split names, e.g. 'valid_seen,valid_unseen'; "
                         f"got {eval_splits!r}")


@dataclass
class LMTrainConfig(BaseConfig):
    """Configuration of one language-model training run. Field docs are the CLI's help.

    The settings shared with :class:`gagpo.config.TrainConfig` (``shared(...)``: those of
    :class:`gagpo.config.EstimatorSettings` and :class:`gagpo.config.RunSettings`) keep their
    constraints; where this configuration's default or help differs from the toy trainer's, ``shared``
    says so (``iterations`` 150, ``lr`` 1e-6, ``threads`` 0, ...). It carries every estimator field,
    so it is what :func:`gagpo.registry.compute_advantages` reads: no toy configuration is built."""

    #: fields that may change between a checkpoint and the run that resumes it
    RESUMABLE: ClassVar[tuple[str, ...]] = ("iterations", "resume", "progress", "out_dir", "checkpoint_every", "eval_every",
                                            "eval_episodes", "eval_splits", "threads", "device", "gen_batch_size",
                                            "micro_batch_size", "num_workers", "max_nonfinite_steps", "engine",
                                            "overwrite")

    # --- model
    model: str = setting("tiny", "Hugging Face model name or local folder; 'tiny' = the offline tiny Llama with format warm-up, 'tiny-random' without")
    lora_r: int = setting(0, "LoRA rank; 0 trains every parameter (the usual LoRA preset: 16)", ge=0)
    lora_alpha: int = setting(32, "LoRA α (the update is scaled by α / r)", gt=0)
    lora_dropout: float = setting(0.0, "dropout on the LoRA adapters' input", ge=0, lt=1)
    dtype: str = setting("auto", "weight dtype: auto (GPU: bf16 base for LoRA, fp32 + bf16 autocast for full training; CPU: fp32), float32, bfloat16, float16",
                        choices=DTYPE_CHOICES)
    device: str = setting("auto", "torch device: auto (CUDA if available), cpu, cuda, cuda:1, ...", check=check_device)
    gradient_checkpointing: bool = setting(True, "recompute activations in the backward pass to save GPU memory")
    engine: str = setting("hf", "rollout engine (gagpo.llm.engine): hf = Hugging Face generate on a serving copy of the weights in the serving dtype (bf16 on a GPU; LoRA adapters merged), refreshed after every update; hf-compiled = the same with a static KV cache and torch.compile (GPU; compiles on first use); hf-continuous = the same with transformers' continuous batching (a finished response frees its slot; for GPUs, slow on a CPU); hf-shared = generate with the training model itself under autocast (slower; for comparison)",
                          choices=ENGINES)

    # --- what to train on
    env: str = shared("env", "toy_envs/MiniHousehold-v0", "gymnasium id of a text environment with admissible actions (toy_envs/MiniHousehold-v0, gagpo/ALFWorld-v0) or an alias (household, alfworld)")
    env_kwargs: dict = shared("env_kwargs", help="extra keyword arguments for gymnasium.make, as JSON")
    max_steps: int = shared("max_steps", 50)
    algo: str = shared("algo", help="advantage estimator: a name of the estimator registry (gagpo.registry); ppo = GAE over a learned value head on the language model (see --value-coef, --value-lr)")
    seed: int = shared("seed", help="seed of the run: task sampling, response sampling, minibatch order")

    # --- rollouts
    iterations: int = shared("iterations", 150, "training iterations (rollout -> advantages -> update)")
    tasks_per_iter: int = shared("tasks_per_iter", 16)
    group_size: int = shared("group_size", help="episodes per group, all from the same task seed (G)")
    n_train_tasks: int = shared("n_train_tasks", help="size of a fixed pool of training task seeds 0..n-1; 0 = every task of the environment when it has a finite number (ALFWorld: the n_games games of the split, each equally likely), else fresh task seeds (< 10000) every iteration")
    history: int = setting(2, "past (observation, action) pairs shown in each prompt", ge=0)
    invalid_penalty: float = setting(0.1, "subtracted from the reward of an action with missing tags or not admissible", ge=0)
    strict_format: bool = setting(False, "strict format: an action is valid only if its response holds exactly one <action>…</action> block, nothing after it, and ended by itself (not cut by max_new_tokens); the default reads the last block, which a policy can exploit by repeating safe blocks up to the token limit")
    temperature: float = setting(1.0, "sampling temperature (the log-probs use the same temperature)", gt=0)
    top_p: float = setting(1.0, "nucleus sampling mass (1 = no truncation)", gt=0, le=1)
    max_new_tokens: int = setting(512, "response length limit in tokens (think + action)", ge=1)
    max_prompt_tokens: int = setting(2048, "drop history pairs from prompts longer than this; 0 = no limit", ge=0)
    num_workers: int = setting(0, "environment worker processes: 0 steps the environments in this process; N > 0 runs the training environments in N processes (gagpo.envs.ProcessEnvPool), and those of each evaluation split in N more (worth it for ALFWorld)", ge=0)

    # --- estimator (gagpo.config.EstimatorSettings: the same names, defaults and help as TrainConfig)
    gamma: float = shared("gamma")
    lam: float = shared("lam")
    norm: str = shared("norm")
    step_weight: float = shared("step_weight")
    reinforce_baseline: str = shared("reinforce_baseline")
    adv_eps: float = shared("adv_eps")
    anchor_match: str = shared("anchor_match")
    anchor_threshold: float = shared("anchor_threshold")
    value_coef: float = setting(0.1, "ppo: weight of the value loss ½(V(s) − R)² added to the policy loss; its gradient also trains the shared language model (or its LoRA adapters)", ge=0)
    value_lr: float = shared("value_lr", 1e-4, "ppo: AdamW learning rate of the value head (a linear layer on the final hidden state of the prompt's last token)")

    # --- update
    lr: float = shared("lr", 1e-6, "AdamW learning rate for full-parameter training")
    lora_lr: float = setting(1e-5, "AdamW learning rate when lora_r > 0", gt=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0)
    update_epochs: int = shared("update_epochs", 1, "passes over each iteration's rows")
    minibatch_size: int = setting(256, "rows (actions) per optimizer step", ge=1)
    micro_batch_size: int = setting(8, "rows per forward/backward pass (gradient accumulation inside a minibatch)", ge=1)
    gen_batch_size: int = setting(128, "prompts per generate() call", ge=1)
    clip_eps: float = shared("clip_eps", help="PPO clip range ε (lower side)")
    clip_eps_high: float = setting(0.2, "PPO clip range on the upper side (clip-higher when larger than clip_eps)", ge=0)
    kl_coef: float = shared("kl_coef", 0.01, "weight of the k3 KL penalty to the reference policy (0 skips the reference)")
    entropy_coef: float = shared("entropy_coef", 0.0, "entropy bonus coefficient (> 0 computes full-vocabulary entropies)")
    ratio_level: str = shared("ratio_level", help="importance ratio per 'action' (one per response, GAGPO) or per 'token'")
    aggregation: str = setting("token_mean", "loss aggregation: mean over tokens, or over actions (each action's token mean)", choices=AGGREGATIONS)
    max_grad_norm: float = shared("max_grad_norm")
    max_nonfinite_steps: int = shared("max_nonfinite_steps")

    # --- evaluation, logging, checkpoints
    eval_every: int = shared("eval_every", 10)
    eval_episodes: int = shared("eval_episodes", 32, "held-out episodes per evaluation and split: the first n of the evaluation environment's EVAL_SEEDS (ALFWorld: the split's first min(n, games in the split) games, each once)")
    eval_splits: str = setting("auto", "comma-separated held-out splits, each evaluated with its own environments built with split=<name> (metrics eval_<split>_success, eval_<split>_invalid_rate, eval_<split>_<task_type>_success; eval_success over all of them); 'auto' = the splits the environment's adapter names (gagpo.envs.adapter; ALFWorld: 'valid_seen,valid_unseen') when the environment takes a split keyword, else ''; '' = the environment's own held-out EVAL_SEEDS", check=check_eval_splits)
    eval_greedy: bool = shared("eval_greedy", help="evaluate with greedy decoding instead of sampling")
    out_dir: str = shared("out_dir", help="run directory for metrics.jsonl/csv and checkpoints; '' = runs/<env>-<model>-<algo>-seed<seed>")
    checkpoint_every: int = shared("checkpoint_every")
    resume: bool = shared("resume")
    overwrite: bool = shared("overwrite", help="replace the run in out_dir (its metrics and checkpoint are deleted); without it, and without --resume, a directory that holds a run is refused")
    progress: bool = shared("progress")
    threads: int = shared("threads", 0, "torch CPU threads; 0 keeps torch's default")

    def check(self) -> None:
        """The cross-field checks of a language-model run, after the shared ones (:class:`BaseConfig`):
        the evaluation splits, ``eval_episodes`` (without splits), ``dtype`` against the device."""
        if not self.eval_split_names():  # with splits, eval_episodes caps at each split's number of games
            check_eval_episodes(self)
        if self.dtype == "float16" and resolve_device(self.device).type == "cpu":
            raise ConfigError("dtype", "dtype float16 on a CPU: sampling from half-precision logits on a CPU fails "
                                       "('probability tensor contains inf/nan'); use float32 (or bfloat16), or a GPU")

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

    def eval_split_names(self) -> list[str]:
        """The evaluation splits: ``eval_splits`` parsed, with ``"auto"`` resolved from the environment.

        Raises ``ValueError`` when splits are named but the environment's constructor takes no
        ``split`` keyword.
        """
        if self.eval_splits == "auto":  # the environment's adapter says which (ALFWorld: valid_seen, valid_unseen)
            from ..envs.adapter import adapter_for

            return list(adapter_for(self.env).eval_splits) if _env_takes(self.env, "split") else []
        names = [name.strip() for name in self.eval_splits.split(",") if name.strip()]
        if names and not _env_takes(self.env, "split"):
            raise ConfigError("eval_splits", f"eval_splits {self.eval_splits!r} needs an environment that takes a 'split' "
                                             f"keyword (e.g. gagpo/ALFWorld-v0); {self.env} does not: pass eval_splits ''")
        return names

    def run_name(self) -> str:
        """``<env>-<model>``: the environment id without its namespace and version, the model's folder name."""
        env = self.env.split("/")[-1].replace("-v0", "")
        model = os.path.basename(self.model.rstrip("/")) or "model"
        return f"{env}-{model}"

    def run_dir(self) -> str:
        return self.out_dir or f"runs/{self.run_name()}-{self.algo}-seed{self.seed}"


def _env_takes(env_id: str, keyword: str) -> bool:
    """Whether the registered environment's constructor names ``keyword`` (read from its signature)."""
    keywords = env_keywords(env_id)
    return keywords is not None and keyword in keywords


_DIAG_MEAN = ("loss", "policy_loss", "kl_ref", "entropy", "clip_fraction", "approx_kl", "ratio_mean", "ratio_std")


def action_level_loss(policy: LMPolicy, prompt_ids: list[list[int]], response_ids: list[list[int]],
                      old_logp: list[np.ndarray], advantages: torch.Tensor, ref_logp: list[np.ndarray] | None,
                      cfg: LMTrainConfig, value_head: ValueHead | None = None):
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
        value_head: with a value head (``ppo``), a third element is returned: the (B,) values
            :math:`V_\\phi(s)` of the rows' prompts, with gradient, from the same forward pass.

    Returns:
        ``(loss, diagnostics)``, or ``(loss, diagnostics, values)`` with ``value_head``; the
        diagnostics include ``logp_finite`` (whether every current log-prob is finite, for the guard).
    """
    out = policy.token_logprobs(prompt_ids, response_ids, grad=True, temperature=cfg.temperature,
                                return_entropy=cfg.entropy_coef > 0, return_hidden=value_head is not None,
                                micro_batch_size=len(prompt_ids))
    logp_new, mask = out.logp, out.mask
    width, device = logp_new.shape[1], logp_new.device
    logp_old = pad_right(old_logp, width).to(device)
    logp_ref = pad_right(ref_logp, width).to(device) if ref_logp is not None else None
    action_index = torch.arange(len(prompt_ids), device=device)[:, None].expand(-1, width)
    loss, diag = ppo_clip_loss(
        logp_new, logp_old, advantages.to(device), action_index, mask, ratio_level=cfg.ratio_level,
        clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high, logp_ref=logp_ref, kl_coef=cfg.kl_coef,
        entropy=out.entropy, entropy_coef=cfg.entropy_coef, aggregation=cfg.aggregation)
    diag["logp_finite"] = all_finite([logp_new.detach()[mask]])  # for the guard: which phase broke
    if value_head is None:
        return loss, diag
    return loss, diag, value_head(out.hidden)


def evaluation_metrics(rollouts: Sequence[LMRollout], prefix: str = "eval_", by_task_type: bool = True) -> dict[str, float]:
    """Summary of evaluation episodes pooled over ``rollouts``, every key starting with ``prefix``.

    ``<prefix>success`` (fraction of episodes won), ``<prefix>return`` and ``<prefix>length`` (means
    per episode), ``<prefix>invalid_rate`` (fraction of all decisions that were invalid),
    ``<prefix>episodes`` (the counted ones: an episode whose environment was lost counts neither way;
    ``<prefix>lost_episodes`` says how many when there were any), and with ``by_task_type``
    ``<prefix><task_type>_success`` for every task
    type the environment reported (``LMRollout.traj_task_type``, e.g. ALFWorld's
    ``pick_and_place_simple``).
    """
    kept = np.concatenate([getattr(r, "kept", np.ones(len(r.traj_won), dtype=bool)) for r in rollouts])  # lost: not counted
    won = np.concatenate([np.asarray(r.traj_won, dtype=bool) for r in rollouts])[kept]
    invalid = np.concatenate([np.asarray(r.invalid, dtype=bool) for r in rollouts])
    types = np.asarray([t for r in rollouts for t in (r.traj_task_type or [""] * len(r.traj_won))], dtype=object)[kept]
    n = len(won)
    out = {
        f"{prefix}success": float(won.mean()) if n else 0.0,
        f"{prefix}return": float(np.concatenate([r.traj_return for r in rollouts])[kept].mean()) if n else 0.0,
        f"{prefix}length": float(np.concatenate([r.traj_length for r in rollouts])[kept].mean()) if n else 0.0,
        f"{prefix}invalid_rate": float(invalid.mean()) if len(invalid) else 0.0,
        f"{prefix}episodes": n,
    }
    if not kept.all():
        out[f"{prefix}lost_episodes"] = int((~kept).sum())
    if by_task_type:
        for task_type in sorted(set(types.tolist()) - {""}):
            out[f"{prefix}{task_type}_success"] = float(won[types == task_type].mean())
    return out


@dataclass
class EvalSet:
    """One held-out evaluation: its split (``""``: the environment's own held-out seeds), the
    environments it plays in, and the task seeds it plays (one greedy episode each)."""

    split: str
    pool: Any
    seeds: list[int]

    @property
    def prefix(self) -> str:
        """Prefix of this set's metric names: ``eval_<split>_``, or ``eval_`` without a split."""
        return f"eval_{self.split}_" if self.split else "eval_"


class LMTrainer(RunLoop):
    """Holds the LM policy, its optimizer, the environments and the logs of one run; the hooks of
    :class:`~gagpo.runloop.RunLoop` with a language model, and a reference phase (:meth:`reference_logp`,
    timed as ``time_reference``) for the KL penalty.

    Args:
        cfg: the configuration.
        policy: an already-built :class:`LMPolicy` (else one is loaded from ``cfg.model``).
        eval_hook: called as ``eval_hook(trainer)`` at every evaluation; the dict it returns is added to
            that iteration's metrics.
        pool, eval_pool: environment pools for training and evaluation (anything with ``reset_many``
            and ``step_many``); default: built from ``cfg.env`` — in this process
            (:class:`~gagpo.rollout.EnvPool`), or in ``cfg.num_workers`` worker processes
            (:class:`~gagpo.envs.ProcessEnvPool`) — one evaluation pool per split of
            ``cfg.eval_split_names()`` (built with ``split=<name>``), or one without a split. The
            held-out seeds are the first ``cfg.eval_episodes`` of the evaluation environment's
            ``EVAL_SEEDS`` (10000, 10001, … when it has none). A given ``eval_pool`` replaces the
            splits (its seeds: its ``EVAL_SEEDS`` when it is an ``EnvPool``, else 10000, 10001, …).

    Every pool is closed when :meth:`train` returns or raises (or call :meth:`close`). The prompts, the
    projection of responses onto commands and the anchor keys come from the environment's adapter,
    ``self.adapter = gagpo.envs.adapter.adapter_for(cfg.env)``.
    """

    #: every rollout is scored under the reference policy (``None`` when ``kl_coef`` is 0): ``time_reference``
    SCORES_REFERENCE = True

    def __init__(self, cfg: LMTrainConfig, policy: LMPolicy | None = None,
                 eval_hook: Callable[["LMTrainer"], dict[str, float]] | None = None,
                 pool: Any | None = None, eval_pool: Any | None = None):
        super().__init__(cfg)  # cfg, run_dir, torch threads (0 keeps torch's default), iteration, env_steps, history
        self.policy = policy or LMPolicy.from_pretrained(
            cfg.model, lora=cfg.lora, dtype=cfg.dtype, device=dist.process_device(cfg.device),
            gradient_checkpointing=cfg.gradient_checkpointing, reference=cfg.kl_coef > 0,
            micro_batch_size=cfg.micro_batch_size, gen_batch_size=cfg.gen_batch_size, engine=cfg.engine, seed=cfg.seed)
        if cfg.kl_coef > 0 and not self.policy.has_reference():
            raise ValueError("kl_coef > 0 needs a reference policy: build the LMPolicy with lora=... or reference=True")
        #: FSDP (gagpo.llm.fsdp): the weights, gradients and optimizer state sharded over the processes
        self.fsdp = dist.fsdp_launched()
        if self.fsdp:
            from . import fsdp

            settings = fsdp.accept(cfg, get_estimator(cfg.algo).needs_critic)
            dist.broadcast_parameters(self.policy.parameters())  # the main process's weights, then sharded
            fsdp.shard_policy(self.policy, settings)
        self.value_head = ValueHead.for_policy(self.policy) if get_estimator(cfg.algo).needs_critic else None
        groups = [{"params": self.policy.parameters(), "lr": cfg.learning_rate}]
        if self.value_head is not None:  # its own learning rate, no weight decay
            groups.append({"params": list(self.value_head.parameters()), "lr": cfg.value_lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.factory = make_env_fn(cfg.env, cfg.max_steps, **cfg.env_kwargs)
        from ..envs.adapter import adapter_for  # (gagpo.envs.adapter imports gagpo.llm's string modules)

        self.adapter = adapter_for(cfg.env)  # prompt, text -> command, anchor key (gagpo.envs.adapter)
        self.pool = pool or self.make_pool(self.factory)
        n_games = self.env_attribute(self.pool, self.factory, "n_games")
        self.n_env_tasks = int(n_games) if n_games else None  # RunLoop.task_seeds draws from 0..n-1 when set
        self.eval_sets = self.build_eval_sets(eval_pool)
        self.eval_pool, self.eval_seeds = self.eval_sets[0].pool, self.eval_sets[0].seeds  # RunLoop's names
        self.eval_hook = eval_hook
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps)
        self._restarts_seen = 0  # ProcessEnvPool.n_restarts at the last iteration (worker_restarts metric)
        if not self.fsdp:  # data-parallel: the main process's weights (FSDP: broadcast before sharding)
            dist.broadcast_parameters([p for _, p in self.named_trainable()])

    @property
    def estimator_cfg(self) -> LMTrainConfig:
        """The configuration that the estimators read: this run's own (:class:`LMTrainConfig` carries every
        field of :class:`gagpo.config.EstimatorSettings`), e.g. ``gagpo.trainer.rollout_advantages(
        trainer.estimator_cfg, rollout)`` (chapter 8 calls it by its old name, ``compute_advantages``). Kept for that use; ``trainer.cfg`` is the same object."""
        return self.cfg

    # ------------------------------------------------------------------ environments
    def make_pool(self, factory: EnvFactory) -> Any:
        """Environments of ``factory``: in this process, or in ``cfg.num_workers`` worker processes."""
        if not self.cfg.num_workers:
            return EnvPool(factory)
        from ..envs import ProcessEnvPool

        return ProcessEnvPool(factory, n_workers=self.cfg.num_workers)

    def build_eval_sets(self, eval_pool: Any | None = None) -> list[EvalSet]:
        """One :class:`EvalSet` per evaluation split (or one without a split; or one for ``eval_pool``)."""
        cfg = self.cfg
        if eval_pool is not None:
            self.eval_pool = eval_pool
            return [EvalSet("", eval_pool, self.held_out_seeds())]
        sets = []
        for split in cfg.eval_split_names() or [""]:
            factory = make_env_fn(cfg.env, cfg.max_steps, **{**cfg.env_kwargs, "split": split}) if split else self.factory
            pool = self.make_pool(factory)
            sets.append(EvalSet(split, pool, self.env_eval_seeds(pool, factory)))
        return sets

    @staticmethod
    def env_attribute(pool: Any, factory: EnvFactory, name: str) -> Any:
        """Attribute ``name`` of the pool's environments (``None`` when they lack it): the pool's own
        ``attribute(name)`` (:class:`~gagpo.envs.pool.EnvPoolProtocol`: the first environment of an
        in-process pool, a probe for a process pool), else a probe built by ``factory`` (then closed)."""
        attribute = getattr(pool, "attribute", None)
        if callable(attribute):
            return attribute(name)
        env = factory()
        try:
            return getattr(env.unwrapped, name, None)
        finally:
            env.close()

    def env_eval_seeds(self, pool: Any, factory: EnvFactory) -> list[int]:
        """The first ``cfg.eval_episodes`` of the environment's ``EVAL_SEEDS`` (10000, 10001, … when it has
        none); see :meth:`env_attribute`."""
        seeds = self.env_attribute(pool, factory, "EVAL_SEEDS")
        if seeds is None:
            seeds = range(TRAIN_SEED_RANGE, TRAIN_SEED_RANGE + self.cfg.eval_episodes)
        return [int(s) for s in list(seeds)[: self.cfg.eval_episodes]]

    def close(self) -> None:
        """Close the training environments and those of every evaluation split (stops the worker processes
        of process pools)."""
        for pool in [self.pool] + [s.pool for s in self.eval_sets]:
            pool.close()

    # ------------------------------------------------------------------ seeds
    def sampling_seed(self, iteration: int) -> int:
        """The response-sampling seed of ``iteration``: from ``(seed, iteration)`` (and the rank, in a
        data-parallel run: :func:`gagpo.distributed.seed_key`)."""
        return int(np.random.default_rng(dist.seed_key(self.cfg.seed, iteration, 2)).integers(2**31 - 2**20))

    # ------------------------------------------------------------------ rollout
    def rollout(self) -> LMRollout:
        """``cfg.group_size`` episodes of each of this iteration's task seeds (this process's share of them,
        :meth:`~gagpo.runloop.RunLoop.rank_task_seeds`)."""
        cfg = self.cfg
        return collect_lm(self.pool, self.policy, self.rank_task_seeds(self.iteration), cfg.group_size, cfg.history,
                          cfg.sampling(), cfg.invalid_penalty, seed=self.sampling_seed(self.iteration), strict=cfg.strict_format,
                          max_prompt_tokens=cfg.max_prompt_tokens, adapter=self.adapter)

    def reference_logp(self, rollout: LMRollout) -> list[np.ndarray] | None:
        """Per-token log-probs of every response under the reference policy (``None`` when kl_coef = 0);
        :meth:`RunLoop.step` passes them to :meth:`update` as ``targets["ref_logp"]``."""
        if self.cfg.kl_coef == 0:
            return None
        with torch.no_grad():
            lp, mask = self.policy.token_logprobs(rollout.prompt_ids, rollout.response_ids, reference=True,
                                                  temperature=self.cfg.temperature)
        return unpad_rows(lp, mask)

    # ------------------------------------------------------------------ advantages
    def advantages(self, rollout: LMRollout) -> dict[str, np.ndarray]:
        r"""Per-row advantages of ``cfg.algo`` (``advantages``, (N,)); for ``ppo`` also the critic's
        ``values`` :math:`V(s_t)` and regression targets ``returns``.

        Critic-free estimators: :func:`gagpo.registry.compute_advantages` with this run's settings.
        Critic estimators (``needs_critic``: ``ppo``): the value head scores every row's prompt, and the
        prompt at the cut of every truncated episode; :math:`V(s'_t)` is the next row's value
        (:func:`gagpo.llm.value.next_state_values`); :func:`gagpo.trainer.critic_targets`, shared with
        the toy trainer, turns them into the estimator's advantages (for ``ppo``, GAE normalised over
        the whole batch, not per rollout group) and the regression targets, the λ-returns.
        """
        if self.value_head is None:
            return {"advantages": estimator_advantages(self.cfg, rollout.batch, self.shard)}
        b = rollout.batch
        values = self.value_head.values(self.policy, rollout.prompt_ids)
        end_values = np.zeros(len(b))
        cut = np.flatnonzero(b.truncated)
        if len(cut):
            boot = [rollout.bootstrap_prompt_ids[t] if t < len(rollout.bootstrap_prompt_ids) else []
                    for t in b.traj_id[cut].tolist()]
            if any(len(ids) == 0 for ids in boot):
                raise ValueError("a truncated episode has no bootstrap prompt (LMRollout.bootstrap_prompt_ids): "
                                 "collect the rollout with gagpo.llm.rollout.collect_lm")
            end_values[cut] = self.value_head.values(self.policy, boot)
        return critic_targets(self.cfg, b, values, next_state_values(b, values, end_values), self.shard)

    # ------------------------------------------------------------------ update
    def update(self, rollout: LMRollout, targets: Mapping[str, Any] | np.ndarray,
               ref_logp: list[np.ndarray] | None = None, returns: np.ndarray | None = None) -> dict[str, float]:
        """PPO epochs over the rollout's rows; returns averaged loss diagnostics.

        ``targets``: what :meth:`advantages` returns — ``advantages`` (one per row) and, for a critic,
        ``returns`` — with the reference log-probs of :meth:`reference_logp` as ``ref_logp`` (``None``
        or absent without a KL penalty), as :meth:`RunLoop.step` passes them. The older form
        ``update(rollout, advantages, ref_logp, returns)`` — an array of advantages, then the reference
        log-probs and the critic's targets — is still accepted (chapter 8's solutions use it).

        With a value head (``ppo``), ``returns`` are its regression targets and every micro-batch adds
        ``value_coef × value_loss`` (weighted by its share of the minibatch's rows) to the policy loss
        before the one backward pass; gradient clipping covers the head too.

        Data-parallel (:mod:`gagpo.distributed`): the number of minibatches is that of every process's
        rows; the weights of the micro-batches (tokens, actions or rows) are shares of the minibatch's
        totals over every process; the gradients are summed over the processes before clipping
        (:func:`gagpo.distributed.sum_gradients`), a step that is bad on one process is skipped on all
        (:func:`gagpo.distributed.agree`), and the diagnostics are those of the whole minibatch.
        """
        if isinstance(targets, Mapping):
            if ref_logp is not None or returns is not None:
                raise TypeError("update(rollout, targets): pass ref_logp and returns inside targets")
            advantages, ref_logp, returns = targets["advantages"], targets.get("ref_logp"), targets.get("returns")
        else:  # update(rollout, advantages, ref_logp, returns)
            advantages = targets
        cfg = self.cfg
        n = len(rollout.batch)
        n_all = dist.all_sum(n)  # every process's rows (a process whose episodes were all lost still takes part)
        if n_all == 0:  # every episode was lost with its environment: nothing to learn from
            return {"optimizer_steps": 0, "nonfinite_steps": 0, "update_tokens": 0}
        if len(rollout.token_logp) != n:
            raise ValueError("the rollout carries no old log-probs: collect it with compute_logp=True")
        device = self.policy.device
        adv = torch.as_tensor(advantages, dtype=torch.float32, device=device)
        head = self.value_head
        if head is not None:
            if returns is None:
                raise ValueError(f"algo {cfg.algo!r} trains a value head: pass its targets, the returns "
                                 f"(targets['returns'], or update(rollout, advantages, ref_logp, returns))")
            targets = torch.as_tensor(returns, dtype=torch.float32, device=device)
        resp_len = np.asarray([len(r) for r in rollout.response_ids], dtype=np.int64)
        total_len = resp_len + np.asarray([len(p) for p in rollout.prompt_ids], dtype=np.int64)
        rng = np.random.default_rng(dist.seed_key(cfg.seed, self.iteration, 3))
        diag_keys = _DIAG_MEAN + (() if head is None else ("value_loss",))
        params = self.policy.parameters() + ([] if head is None else list(head.parameters()))
        old_ok = np.asarray([np.isfinite(x).all() for x in rollout.token_logp], dtype=bool)
        ref_ok = (np.ones(n, dtype=bool) if ref_logp is None
                  else np.asarray([np.isfinite(x).all() for x in ref_logp], dtype=bool))
        adv_ok = np.isfinite(np.asarray(advantages, dtype=np.float64))
        sums: dict[str, float] = {}
        ratio_min, ratio_max, grad_norms, steps, skipped, tokens = math.inf, -math.inf, [], 0, 0, 0
        lockstep = self.fsdp  # FSDP: every process runs as many forward/backward passes as the busiest one
        self.policy.model.train()
        try:
            for _ in range(cfg.update_epochs):
                perm = rng.permutation(n)
                for mb in np.array_split(perm, max(1, math.ceil(n_all / cfg.minibatch_size))):
                    rows = dist.all_sum(len(mb))  # the minibatch's rows and units over every process
                    units = dist.all_sum(resp_len[mb].sum() if cfg.aggregation == "token_mean" else len(mb))
                    if rows == 0:
                        continue
                    mb = mb[np.argsort(total_len[mb], kind="stable")]  # similar lengths share a micro-batch
                    self.optimizer.zero_grad(set_to_none=True)
                    # the guard (gagpo.guard): inputs first, then every micro-batch's log-probs and loss, then the gradients
                    bad = next((phase for phase, ok in (("old log-probs", old_ok), ("reference log-probs", ref_ok),
                                                        ("advantages", adv_ok)) if not ok[mb].all()), None)
                    mb_sums: dict[str, float] = {}
                    mb_ratio = (math.inf, -math.inf)
                    starts = list(range(0, len(mb), cfg.micro_batch_size))
                    for k in range(dist.all_max(len(starts)) if lockstep else len(starts)):
                        if bad or k >= len(starts):
                            if not lockstep:
                                break
                            self.policy.actor.idle_pass().backward()  # zero gradients, the collectives taken part in
                            continue
                        ii = mb[starts[k]:starts[k] + cfg.micro_batch_size].tolist()
                        out = action_level_loss(
                            self.policy, [rollout.prompt_ids[i] for i in ii], [rollout.response_ids[i] for i in ii],
                            [rollout.token_logp[i] for i in ii], adv[ii],
                            None if ref_logp is None else [ref_logp[i] for i in ii], cfg, value_head=head)
                        loss, diag = out[0], out[1]
                        weight = (resp_len[ii].sum() if cfg.aggregation == "token_mean" else len(ii)) / units
                        total = loss * weight
                        if not diag["logp_finite"]:
                            bad = "log-probs"
                        elif not math.isfinite(float(diag["loss"])):
                            bad = "loss"
                        if head is not None:  # the critic's loss is a mean over rows
                            share = len(ii) / rows
                            v_loss = value_loss(out[2], targets[ii])
                            total = total + cfg.value_coef * share * v_loss
                            v = float(v_loss.detach())
                            bad = bad or (None if math.isfinite(v) else "value loss")
                            mb_sums["value_loss"] = mb_sums.get("value_loss", 0.0) + share * v
                        if bad:
                            if lockstep:  # the others run this backward pass: take part (the step is skipped)
                                (total * 0.0).backward()
                            continue
                        total.backward()
                        for k in _DIAG_MEAN:
                            mb_sums[k] = mb_sums.get(k, 0.0) + weight * float(diag[k])
                        mb_ratio = (min(mb_ratio[0], diag["ratio_min"]), max(mb_ratio[1], diag["ratio_max"]))
                        tokens += int(total_len[ii].sum())
                    bad = dist.agree(bad)  # one bad process skips the step everywhere
                    norm = math.nan
                    if not bad:  # the norm before clipping rescales anything; a NaN/inf anywhere makes it non-finite
                        if not self.fsdp:  # (FSDP's backward passes already summed the gradients' shards)
                            dist.sum_gradients(params)
                        norm = float(dist.full_tensor(torch.nn.utils.clip_grad_norm_(
                            params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)))
                        bad = None if math.isfinite(norm) else "gradients"
                    if bad:  # skip the step: no weight or optimizer-state change
                        self.optimizer.zero_grad(set_to_none=True)
                        skipped += 1
                        self.guard.bad(self.iteration, bad, f"minibatch of {len(mb)} rows")
                        continue
                    self.guard.good()
                    self.optimizer.step()
                    mb_sums = dist.all_sum(mb_sums, keys=diag_keys)  # the weights are global shares: sums are the means
                    mb_ratio = (dist.all_min(mb_ratio[0]), dist.all_max(mb_ratio[1]))
                    for k, v in mb_sums.items():
                        sums[k] = sums.get(k, 0.0) + v
                    ratio_min, ratio_max = min(ratio_min, mb_ratio[0]), max(ratio_max, mb_ratio[1])
                    grad_norms.append(norm)
                    steps += 1
        finally:
            self.policy.model.eval()
        if self.fsdp and steps:  # every process gathers the new weights into its serving copy, together
            self.policy.engine.refresh()
        out: dict[str, Any] = {"optimizer_steps": steps, "nonfinite_steps": skipped, "update_tokens": dist.all_sum(tokens)}
        if steps:  # averages over the steps taken (value_loss: mean over minibatches)
            out.update({k: v / steps for k, v in sums.items()})
            out.update(ratio_min=ratio_min, ratio_max=ratio_max, grad_norm=float(np.mean(grad_norms)))
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """One episode per held-out seed of every :class:`EvalSet` (greedy by default), plus whatever
        ``eval_hook`` returns.

        Per split: :func:`evaluation_metrics` with the prefix ``eval_<split>_`` (success, invalid
        rate, success per task type, ...); with splits, ``eval_success``, ``eval_return``,
        ``eval_length`` and ``eval_invalid_rate`` pool every evaluated episode of every split. Without
        a split the metrics are ``eval_success``, ``eval_invalid_rate``, ... (and per task type).
        """
        cfg = self.cfg
        out: dict[str, float] = {}
        played: list[LMRollout] = []
        for s in self.eval_sets:
            if not s.seeds:
                continue
            r = collect_lm(s.pool, self.policy, s.seeds, 1, cfg.history, cfg.sampling(cfg.eval_greedy),
                           cfg.invalid_penalty, seed=cfg.seed + 12345, compute_logp=False, strict=cfg.strict_format,
                           max_prompt_tokens=cfg.max_prompt_tokens, adapter=self.adapter)
            played.append(r)
            out.update(evaluation_metrics([r], s.prefix))
        if played and any(s.split for s in self.eval_sets):  # the pooled summary over the splits
            out = {**evaluation_metrics(played, "eval_", by_task_type=False), **out}
        if self.eval_hook is not None:
            out.update(self.eval_hook(self))
        return out

    # ------------------------------------------------------------------ one iteration (RunLoop.step)
    def step_metrics(self, rollout: LMRollout, targets: dict[str, Any], update: dict[str, Any],
                     seconds: dict[str, float]) -> dict[str, Any]:
        """A language-model iteration's own metrics: episodes lost with their environment and worker
        restarts of a process pool (this iteration), format errors, response and prompt lengths,
        generation and update throughput, the critic at collection time (``ppo``), the GPU's peak memory.

        Data-parallel: counts are summed over the processes, rates and means weighted by each process's
        rows, the throughputs are every process's tokens over the slowest process's seconds, the memory
        peak is the largest."""
        restarts = int(getattr(self.pool, "n_restarts", 0))
        n = len(rollout.response_ids)
        generation_time, update_time = rollout.generation_time, seconds["time_update"]
        if dist.is_distributed():  # the slowest process's seconds
            generation_time, update_time = (float(t) for t in dist.all_max(np.asarray([generation_time, update_time])))
        row: dict[str, Any] = {
            "lost_episodes": dist.all_sum(rollout.lost_episodes),
            "worker_restarts": dist.all_sum(restarts - self._restarts_seen),
            "format_error_rate": dist.weighted_mean(rollout.format_error_rate, len(rollout.parse_reason)),
            "truncated_response_rate": dist.weighted_mean(float(1.0 - rollout.finished.mean()), len(rollout.finished)),
            "response_tokens": dist.weighted_mean(float(np.mean([len(r) for r in rollout.response_ids])), n),
            "prompt_tokens": dist.weighted_mean(float(np.mean([len(p) for p in rollout.prompt_ids])), n),
            "gen_tokens_per_s": dist.all_sum(rollout.generated_tokens) / max(generation_time, 1e-9),
            "update_tokens_per_s": update["update_tokens"] / max(update_time, 1e-9),
        }
        if "values" in targets:  # the critic at collection time
            values, returns = dist.gather_rows(targets["values"]), dist.gather_rows(targets["returns"])
            row.update(value_mean=float(values.mean()), explained_variance=explained_variance(values, returns))
        self._restarts_seen = restarts
        if torch.cuda.is_available() and self.policy.device.type == "cuda":
            row["gpu_peak_gb"] = dist.all_max(torch.cuda.max_memory_allocated(self.policy.device) / 2**30)
        return row

    # ------------------------------------------------------------------ persistence
    def checkpoint_path(self) -> str:
        return os.path.join(self.run_dir, "checkpoint")

    def named_trainable(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of every trainable weight: the policy's and the value head's."""
        named = [(n, p) for n, p in self.policy.model.named_parameters() if p.requires_grad]
        if self.value_head is not None:
            named += [(f"value_head.{n}", p) for n, p in self.value_head.named_parameters()]
        return named

    def check_weights_finite(self, what: str) -> None:
        """Raise :class:`~gagpo.guard.NonFiniteError` when a trainable weight holds a NaN or an infinity
        (under FSDP: on every process, when a shard of any process does; call it on every process)."""
        if self.fsdp:
            ok = all_finite(dist.local_tensor(p) for _, p in self.named_trainable())
            if dist.all_min(int(ok)):
                return
            raise NonFiniteError(f"{what} hold non-finite values (NaN or inf) at iteration {self.iteration} (a shard "
                                 f"of one of the processes); the last checkpoint in {self.run_dir} is kept as it was.")
        if not all_finite(p for _, p in self.named_trainable()):
            bad = [n for n, p in self.named_trainable() if not bool(torch.isfinite(p).all())][:5]
            raise NonFiniteError(f"{what} hold non-finite values (NaN or inf) in {', '.join(bad)} at iteration "
                                 f"{self.iteration}; the last checkpoint in {self.run_dir} is kept as it was.")

    def checkpoint(self) -> None:
        """:meth:`RunLoop.checkpoint`; under FSDP every process first gathers the whole weights and optimizer
        state (:mod:`gagpo.llm.fsdp`), which the main process writes (an error there is raised on every process)."""
        if not self.fsdp:
            return super().checkpoint()
        from . import fsdp

        whole = (fsdp.full_model_state(self.policy.model), fsdp.full_optimizer_state(self.optimizer))

        def write() -> None:
            self.save_checkpoint(whole)
            self.write_metrics()

        dist.call_on_main(write)

    def resume(self) -> None:
        """:meth:`RunLoop.resume`; under FSDP the main process repairs an interrupted save, then every process
        loads the checkpoint at once (loading into sharded weights is a collective)."""
        if not self.fsdp:
            return super().resume()
        dist.call_on_main(self.repair_checkpoint)
        self.load_checkpoint()

    def save_checkpoint(self, whole: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> None:
        """Trainable weights (adapter or model; the value head for ``ppo``) + tokenizer + optimizer +
        iteration, replaced atomically. Refuses (:class:`~gagpo.guard.NonFiniteError`) to write
        non-finite weights. Under FSDP, ``whole`` is the gathered ``(model state, optimizer state)`` of
        :meth:`checkpoint` (the files are those of an unsharded run)."""
        if self.fsdp and whole is None:
            raise RuntimeError("under FSDP the weights are sharded: call checkpoint() on every process, which gathers "
                               "them and has the main process write them")
        if whole is None:
            self.check_weights_finite("refusing to write the checkpoint: the weights")
        else:
            bad = nonfinite_names((n, t) for n, t in whole[0].items() if t.is_floating_point())
            if bad:
                raise NonFiniteError(f"refusing to write the checkpoint: the weights hold non-finite values (NaN or "
                                     f"inf) in {', '.join(bad)} at iteration {self.iteration}; the last checkpoint in "
                                     f"{self.run_dir} is kept as it was.")
        path = self.checkpoint_path()
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:  # everything into checkpoint.tmp, trainer_state.json last (its presence marks a complete folder)
            if whole is None:
                self.policy.save(tmp)
            else:  # the whole weights, in the format of Actor.save (save_pretrained)
                os.makedirs(tmp, exist_ok=True)
                self.policy.model.save_pretrained(tmp, state_dict=whole[0])
                self.policy.tokenizer.save_pretrained(tmp)
            if self.value_head is not None:
                self.value_head.save(tmp)
            with atomic_write(os.path.join(tmp, "optimizer.pt"), "wb") as fh:
                torch.save(self.optimizer.state_dict() if whole is None else whole[1], fh)
            with atomic_write(os.path.join(tmp, "trainer_state.json")) as fh:
                json.dump({"config": self.cfg.to_dict(), "iteration": self.iteration, "env_steps": self.env_steps,
                           "history": self.history}, fh)
        except BaseException as exc:  # a full disk, ...: no checkpoint.tmp left, the last checkpoint kept
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, RunDirError):
                raise write_error(exc.filename or tmp, exc) from exc
            raise
        replace_dir(tmp, path)  # a crash between its two renames leaves only checkpoint.old, which load_checkpoint restores

    def load_checkpoint(self) -> bool:
        """Restore a checkpoint written by :meth:`save_checkpoint`; False when there is none.

        A save interrupted between its two renames left only ``checkpoint.old`` (the previous complete
        checkpoint): it is moved back and restored, with a warning. A file that cannot be read raises
        :class:`~gagpo.rundir.RunDirError` naming it (:func:`gagpo.rundir.damaged`)."""
        path = self.checkpoint_path()
        state_file = os.path.join(path, "trainer_state.json")
        self.repair_checkpoint()
        if not os.path.exists(state_file):
            return False
        try:
            with open(state_file) as fh:
                state = json.load(fh)
            missing = [k for k in ("config", "iteration", "env_steps", "history") if k not in state]
            if missing:
                raise ValueError(f"no {missing}")
        except (OSError, ValueError, TypeError) as exc:
            raise damaged(state_file, exc) from exc
        self.check_resumable(state["config"], path)
        weights = os.path.join(path, "adapter_model.safetensors" if self.policy.is_lora else "model.safetensors")
        if self.fsdp:
            return self._load_sharded(path, weights, state)
        try:
            self.policy.load_trainable(path)
        except Exception as exc:  # noqa: BLE001 - truncated or foreign weights: name the file
            raise damaged(weights, exc) from exc
        if self.value_head is not None:
            try:
                self.value_head.load(path)
            except ValueError:  # no head, or one of another shape: its own message
                raise
            except Exception as exc:  # noqa: BLE001
                raise damaged(os.path.join(path, VALUE_HEAD_FILE), exc) from exc
        check_finite_weights(self.named_trainable(), f"the checkpoint {path}")
        optimizer_file = os.path.join(path, "optimizer.pt")
        try:
            optimizer_state = torch.load(optimizer_file, map_location=self.policy.device)
        except Exception as exc:  # noqa: BLE001
            raise damaged(optimizer_file, exc) from exc
        self.optimizer.load_state_dict(optimizer_state)
        self.iteration, self.env_steps, self.history = state["iteration"], state["env_steps"], state["history"]
        return True

    def repair_checkpoint(self) -> None:
        """Undo an interrupted save: a lone ``checkpoint.old`` (the previous complete checkpoint) is moved back,
        with a warning; an unfinished ``checkpoint.tmp`` is deleted."""
        path = self.checkpoint_path()
        state_file, old = os.path.join(path, "trainer_state.json"), path + ".old"
        if not os.path.exists(state_file) and os.path.exists(os.path.join(old, "trainer_state.json")):
            warnings.warn(f"{path} is missing (a save was interrupted): resuming from the previous checkpoint, {old}",
                          stacklevel=2)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(old, path)
        shutil.rmtree(path + ".tmp", ignore_errors=True)  # an interrupted save's unfinished folder

    def _load_sharded(self, path: str, weights: str, state: dict[str, Any]) -> bool:
        """:meth:`load_checkpoint` under FSDP, on every process at once: the whole tensors are read and checked
        on every process (the same files, the same verdict), each keeps its shard, the serving copies are
        refreshed."""
        from transformers import AutoModelForCausalLM

        from . import fsdp

        try:
            dtype = dist.local_tensor(next(self.policy.model.parameters())).dtype
            whole = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).state_dict()
        except Exception as exc:  # noqa: BLE001 - truncated or foreign weights: name the file
            raise damaged(weights, exc) from exc
        check_finite_weights(list(whole.items()), f"the checkpoint {path}")
        optimizer_file = os.path.join(path, "optimizer.pt")
        try:
            optimizer_state = torch.load(optimizer_file, map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise damaged(optimizer_file, exc) from exc
        try:
            fsdp.load_full_model_state(self.policy.model, whole)
        except ValueError as exc:
            raise damaged(weights, exc) from exc
        fsdp.load_full_optimizer_state(self.optimizer, optimizer_state)
        self.policy.engine.refresh()
        self.iteration, self.env_steps, self.history = state["iteration"], state["env_steps"], state["history"]
        return True

    # ------------------------------------------------------------------ the loop (RunLoop.train)
    def train(self) -> list[dict[str, Any]]:
        """Run (or, with ``cfg.resume``, continue) until done (:meth:`RunLoop.train`, which closes every
        environment pool), then draw ``curves.png`` unless the last evaluation just did. Returns the
        metrics history."""
        history = super().train()
        if dist.is_main() and not (history and any(k.startswith("eval_") for k in history[-1])):
            self.write_curves()
        return history

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        """:meth:`RunLoop.record`, then redraw ``curves.png`` when the row holds an evaluation."""
        row = super().record(row)
        if any(k.startswith("eval_") for k in row):
            self.write_curves()
        return row

    def save_curves(self, ncols: int, draw: Callable[[Any, Any], None]) -> str | None:
        """Draw ``<run_dir>/curves.png`` on one row of ``ncols`` axes with ``draw(plotting, axes)``; returns its
        path, or ``None`` with a warning when it cannot be drawn (matplotlib missing, ...): plotting never
        stops a run."""
        try:
            from .. import plotting

            plt = plotting.use_style()
        except ImportError as exc:
            warnings.warn(f"no curves.png: matplotlib is missing (pip install matplotlib) ({exc})", stacklevel=2)
            return None
        fig, axes = plt.subplots(1, ncols, figsize=(plotting.FIGSIZE[0] * ncols, plotting.FIGSIZE[1]), squeeze=False)
        try:
            draw(plotting, axes[0])
            return plotting.save(fig, "curves", self.run_dir)
        except Exception as exc:  # noqa: BLE001 - a figure is not worth a run
            warnings.warn(f"could not draw {os.path.join(self.run_dir, 'curves.png')}: {exc!r}", stacklevel=2)
            return None
        finally:
            plt.close(fig)

    def write_curves(self) -> str | None:
        """Draw ``<run_dir>/curves.png``: training success and invalid-action rate (left), and every
        ``eval_*_success`` (right: the pooled and per-split ones solid, per task type dashed) against
        environment steps (:meth:`save_curves`)."""
        keys = {k for row in self.history for k in row}
        eval_keys = sorted(k for k in keys if k.startswith("eval_") and k.endswith("_success"))
        main = [k for k in ["eval_success"] + [f"{s.prefix}success" for s in self.eval_sets if s.split] if k in keys]
        pooled = "all splits" if any(s.split for s in self.eval_sets) else "held-out"
        label = {k: pooled if k == "eval_success" else k[len("eval_"):-len("_success")] for k in eval_keys}

        def draw(plotting, axes) -> None:
            plotting.metric_curves(self.history, ["success", "invalid_rate"], ax=axes[0], ylabel="fraction",
                                   labels={"invalid_rate": "invalid-action rate"}, title=f"training ({self.cfg.algo})")
            if eval_keys:
                plotting.metric_curves(self.history, main, ax=axes[1], labels=label, ylabel="success",
                                       title="greedy evaluation")
                plotting.metric_curves(self.history, [k for k in eval_keys if k not in main], ax=axes[1],
                                       labels=label, linestyle="--", linewidth=1)
            for ax in axes:
                ax.set_ylim(-0.03, 1.03)

        return self.save_curves(2 if eval_keys else 1, draw)

    def progress_desc(self) -> str:
        return f"{self.cfg.algo} {self.cfg.model}"

    def progress_postfix(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"succ": f"{row['success']:.2f}", "invalid": f"{row['invalid_rate']:.2f}"}


def train_lm(cfg: LMTrainConfig, policy: LMPolicy | None = None,
             eval_hook: Callable[[LMTrainer], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Train one language-model run; returns its per-iteration metrics (also in ``cfg.run_dir()``:
    ``metrics.jsonl``, ``metrics.csv``, ``curves.png`` and the checkpoint). Checks the run directory
    (:func:`gagpo.rundir.check_start`; on the main process of a data-parallel run, whose error every
    process raises) before the model is loaded."""
    if dist.fsdp_launched():  # this trainer implements FSDP (gagpo.llm.fsdp): refuse what it does not, before loading
        from .fsdp import accept

        accept(cfg, get_estimator(cfg.algo).needs_critic)
    dist.call_on_main(check_start, cfg.run_dir(), resume=cfg.resume, overwrite=cfg.overwrite)
    return LMTrainer(cfg, policy=policy, eval_hook=eval_hook).train()
