r"""Supervised fine-tuning on expert trajectories (behaviour cloning): the warm start before RL.

A language model that never succeeds gives reinforcement learning nothing to learn from: every
return of a rollout group is the same, every advantage zero. Agent-RL work therefore starts from a
model that can already act, and the cheapest way to get one is to imitate an expert. With the
expert's (prompt, response) pairs of :mod:`gagpo.llm.experts` — the prompts rendered exactly as the
RL rollouts will render them — behaviour cloning minimises the cross-entropy of the expert's
response tokens, and of nothing else:

.. math::  \mathcal{L}(\theta) = -\frac{1}{\sum_i |y_i|} \sum_i \sum_{t=1}^{|y_i|}
           \log \pi_\theta(y_{i,t} \mid x_i, y_{i,<t}),

summed over the pairs of a batch (the prompt tokens :math:`x_i` are context, not targets; the
response :math:`y_i` ends with the end-of-sequence token, so the model also learns to stop). The
log-probabilities come from :meth:`gagpo.llm.policy.LMPolicy.token_logprobs` with ``grad=True`` —
the very forward pass, padding layout and dtype handling of the RL update.

:class:`SFTTrainer` is the RL trainer (:class:`gagpo.llm.train.LMTrainer`) with another step: one
optimizer step on a batch of pairs instead of rollout → advantages → PPO. Everything else is
inherited: model loading (LoRA or full, ``dtype``/``device`` as in ``train``), the held-out greedy
evaluation (:func:`gagpo.llm.rollout.collect_lm` on held-out task seeds or ALFWorld's validation
splits: success, invalid-action rate, per task type), ``metrics.jsonl``/``metrics.csv``, the atomic
checkpoint and ``--resume``, the non-finite guard (a step whose log-probs or gradients hold a NaN is
skipped). Iteration 0 is the evaluation of the model before any step — the "before" of the
fine-tuning. The batch of step ``k`` is a function of ``(seed, k)`` alone (a fresh permutation of the
pairs every epoch), so a resumed run continues exactly (identical results on a CPU).

At the end the fine-tuned model is written to ``<out_dir>/model`` — the whole model, or the base
model with the LoRA adapters merged in, plus the tokenizer — which is what
``python -m gagpo train --model <out_dir>/model`` loads to start RL.

On a CPU, the tiny model on MiniHousehold level 1 (1,000 expert episodes, 4,000 pairs, 1,000 steps of
16 pairs, history 2 as in ``train``)::

    python -m gagpo sft --model tiny --env-kwargs '{"level": 1}' --lr 1e-2 --iterations 1000 \
        --max-new-tokens 32 --no-gradient-checkpointing --out-dir runs/sft-tiny
    python -m gagpo train --model runs/sft-tiny/model --env-kwargs '{"level": 1}' --max-new-tokens 32

took minutes on 2 shared CPU cores and raised the held-out greedy success above the untrained start's
0 in development runs: the tiny model learns to copy the right object and receptacle names suddenly,
after a seed-dependent number of steps. The committed measurement is ``bench lm-learning``'s warm start
(:mod:`gagpo.llm.learning`: 350 steps with history 0, held-out greedy success 0.00 → 0.56,
``figures/lm_learning.md``; the first profile's 400 steps reached 0.67, ``figures/lm_learning_full_sft400.md``).

Data parallel (:mod:`gagpo.distributed`): launched on N processes (``accelerate launch`` with
``gagpo/configs/accelerate_multi_gpu.yaml``, or ``torchrun``), one run takes the steps that one
process would take (no speed-up is measured here: no GPU). Every process plays the expert episodes itself (they are deterministic) and draws the
same global batch of ``batch_size`` pairs for step ``k``; the batch, sorted by length, is dealt out
round-robin (pair ``j`` to process ``j mod N``: disjoint shares of near-equal token counts, every
process at least one pair — ``batch_size`` must be at least N), each process adds up the gradients of
its share's negative log-likelihood divided by the *global* number of response tokens of the batch,
and :func:`gagpo.distributed.sum_gradients` adds them up over the processes before clipping and the
AdamW step — the step of one process on the whole batch, up to the order of floating-point additions.
A step whose log-probs or gradients hold a NaN on any process is skipped on every process. The main
process alone evaluates (iteration 0 and every ``eval_every`` steps; the others wait for it), writes
the metrics (with a ``world_size`` column), curves, checkpoint and ``<out_dir>/model``, and shows the
progress bar. The checkpoint holds the whole state (every process holds the same weights and optimizer
state), and the batch of step ``k`` does not depend on N: ``--resume`` works with the same or another
number of processes. FSDP is the RL trainer's only (``sft`` refuses an FSDP launch)::

    accelerate launch --config_file gagpo/configs/accelerate_multi_gpu.yaml --num_processes 4 \
        -m gagpo sft --model Qwen/Qwen2.5-1.5B-Instruct --env alfworld --lora-r 16 --batch-size 32 ...
    torchrun --nproc_per_node 2 -m gagpo sft --model tiny --device cpu ...   # CPUs: two processes over gloo

With a GPU and the ALFWorld data (``alfworld-download``), the warm start for the README's RL recipe
(not run here: no GPU was available; the games must carry a stored walkthrough, which this
repository's fixture games do)::

    python -m gagpo sft --model Qwen/Qwen2.5-1.5B-Instruct --env alfworld --lora-r 16 \
        --iterations 1000 --batch-size 32 --out-dir runs/sft-qwen1.5b
    python -m gagpo train --model runs/sft-qwen1.5b/model --env alfworld --algo gagpo --lora-r 16
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import numpy as np
import torch

from .. import distributed as dist
from ..config import BaseConfig, ConfigError, copy_field, setting
from ..guard import all_finite
from ..rollout import make_env_fn
from ..rundir import check_start, replace_dir
from ..runloop import DUMP_ENV, TRAIN_SEED_RANGE
from .experts import DEFAULT_THOUGHT, ExpertEpisode, SFTExample, expert_episodes, expert_examples
from .policy import LMPolicy
from .train import LMTrainConfig, LMTrainer

__all__ = ["SFTConfig", "SFTTrainer", "sft", "as_in_train", "refuse_fsdp", "MODEL_DIR", "EXPERT_STEP_LIMIT",
           "build_parser"]

T = TypeVar("T")

EXPERT_STEP_LIMIT = 1000
"""Step limit of the expert's episodes (an expert finishes long before)."""
MODEL_DIR = "model"
"""Subfolder of the run directory that receives the fine-tuned model (what ``train --model`` loads)."""


def _check_thought(thought: str) -> None:
    try:
        thought.format(command="go to fridge 1")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"must be a text whose only placeholder is {{command}}; got {thought!r} ({exc!r})") from None


def as_in_train(name: str, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:  # noqa: A002
    """:class:`~gagpo.llm.train.LMTrainConfig`'s field ``name`` as a field of :class:`SFTConfig`: the same
    constraints, default and help (``default`` and ``help``, when given, replace them here), so the
    settings that SFT and RL share are written once."""
    base = {f.name: f for f in dataclasses.fields(LMTrainConfig)}[name]
    return copy_field(base, default, help)


@dataclass
class SFTConfig(BaseConfig):
    """Configuration of one behaviour-cloning run. Field docs are the CLI's help.

    The model, prompt and evaluation settings are :class:`gagpo.llm.train.LMTrainConfig`'s
    (:func:`as_in_train`: same names, constraints and meanings): use the same ``history``,
    ``max_prompt_tokens``, ``env`` and ``env_kwargs`` in the RL run that follows, so that it shows the
    model the prompts it was trained on.
    """

    #: fields that may change between a checkpoint and the run that resumes it: train's
    RESUMABLE: ClassVar[tuple[str, ...]] = LMTrainConfig.RESUMABLE

    # --- model (as in train)
    model: str = as_in_train("model")
    lora_r: int = as_in_train("lora_r", help="LoRA rank; 0 trains every parameter (the usual LoRA preset: 16); the adapters are merged into the exported model")
    lora_alpha: int = as_in_train("lora_alpha")
    lora_dropout: float = as_in_train("lora_dropout")
    dtype: str = as_in_train("dtype")
    device: str = as_in_train("device")
    gradient_checkpointing: bool = as_in_train("gradient_checkpointing")
    engine: str = as_in_train("engine", help="generation engine of the evaluation episodes (see train --help)")

    # --- the expert data
    env: str = as_in_train("env", help="gymnasium id of a text environment with an expert: exact_model() (toy_envs/MiniHousehold-v0) or stored walkthroughs (gagpo/ALFWorld-v0), or an alias (household, alfworld)")
    env_kwargs: dict = as_in_train("env_kwargs", help="extra keyword arguments for gymnasium.make, as JSON (e.g. '{\"level\": 1}' for MiniHousehold)")
    max_steps: int = as_in_train("max_steps", help="step limit of the evaluation episodes (the expert's are not cut); 0 keeps the environment's registered limit")
    n_train_tasks: int = setting(1000, "expert episodes, one per task seed 0..n-1 (ALFWorld: at most every game of the training split, each once)", ge=1, le=TRAIN_SEED_RANGE)
    history: int = as_in_train("history", help="past (observation, action) pairs shown in each prompt (use the RL run's value)")
    max_prompt_tokens: int = as_in_train("max_prompt_tokens", help="drop history pairs from prompts longer than this; 0 = no limit (use the RL run's value)")
    thought: str = setting(DEFAULT_THOUGHT, "the expert's text inside <think> </think>; {command} is replaced by its command", check=_check_thought)
    seed: int = as_in_train("seed", help="seed of the run: order of the pairs, LoRA initialisation, evaluation sampling")

    # --- optimisation
    iterations: int = as_in_train("iterations", 300, "optimizer steps (batches of --batch-size pairs; the pairs are reshuffled every epoch)")
    batch_size: int = setting(16, "expert (prompt, response) pairs per optimizer step", ge=1)
    micro_batch_size: int = as_in_train("micro_batch_size", help="pairs per forward/backward pass (gradient accumulation inside a batch)")
    lr: float = as_in_train("lr", 1e-5, "AdamW learning rate for full-parameter training (the tiny model wants about 1e-2)")
    lora_lr: float = as_in_train("lora_lr", 1e-4)
    lr_schedule: str = setting("linear", "learning rate over the run: linear decay to 0, or constant", choices=("linear", "constant"))
    weight_decay: float = as_in_train("weight_decay")
    max_grad_norm: float = as_in_train("max_grad_norm")
    max_nonfinite_steps: int = as_in_train("max_nonfinite_steps", help="skip an optimizer step whose log-probs or gradients hold a NaN/inf (no weight change, counted in the nonfinite_steps metric); stop the run after this many skipped steps in a row")

    # --- evaluation (as in train)
    eval_every: int = as_in_train("eval_every", 50, "evaluate on held-out tasks before the first step, every k steps and at the end; 0 disables")
    eval_episodes: int = as_in_train("eval_episodes")
    eval_splits: str = as_in_train("eval_splits")
    eval_greedy: bool = as_in_train("eval_greedy")
    invalid_penalty: float = as_in_train("invalid_penalty", help="evaluation: subtracted from the return for an action with missing tags or not admissible")
    strict_format: bool = as_in_train("strict_format", help="evaluation: the strict format of train (exactly one action block, nothing after it, a response not cut by the length limit)")
    temperature: float = as_in_train("temperature", help="evaluation without --eval-greedy: sampling temperature")
    top_p: float = as_in_train("top_p", help="evaluation without --eval-greedy: nucleus sampling mass")
    max_new_tokens: int = as_in_train("max_new_tokens", help="evaluation: response length limit in tokens")
    gen_batch_size: int = as_in_train("gen_batch_size")
    num_workers: int = as_in_train("num_workers", help="evaluation environment worker processes (see train --help)")

    # --- the run
    out_dir: str = as_in_train("out_dir", help="run directory (metrics, checkpoint, the fine-tuned model in <out_dir>/model); '' = runs/sft-<env>-<model>-seed<seed>")
    checkpoint_every: int = as_in_train("checkpoint_every", 50, "save a checkpoint every k steps (and at the end); 0 only at the end")
    resume: bool = as_in_train("resume")
    overwrite: bool = as_in_train("overwrite")
    progress: bool = as_in_train("progress")
    threads: int = as_in_train("threads")

    lora = LMTrainConfig.lora  # LoraSettings or None
    learning_rate = LMTrainConfig.learning_rate  # lora_lr with LoRA, else lr
    eval_split_names = LMTrainConfig.eval_split_names  # eval_splits, with 'auto' resolved from the environment
    run_name = LMTrainConfig.run_name  # <env>-<model>

    def check(self) -> None:
        """Train's cross-field checks (eval_episodes without splits, dtype against the device), and, in a
        data-parallel run, at least one pair of each batch per process (``batch_size`` ≥ the processes)."""
        LMTrainConfig.check(self)
        if self.batch_size < dist.world_size():
            raise ConfigError("batch_size", f"batch_size {self.batch_size} is smaller than the {dist.world_size()} "
                                            f"processes of this data-parallel run: every process takes at least one "
                                            f"pair of each batch; use a batch size of at least {dist.world_size()}")

    @property
    def algo(self) -> str:
        """What the run does (the RL trainer's progress bar and figures name the algorithm)."""
        return "sft"

    def run_dir(self) -> str:
        return self.out_dir or f"runs/sft-{self.run_name()}-seed{self.seed}"

    def model_dir(self) -> str:
        """Where the fine-tuned model is written: ``<run_dir>/model``."""
        return os.path.join(self.run_dir(), MODEL_DIR)

    def train_config(self) -> LMTrainConfig:
        """The RL trainer's configuration with this run's model, environment, prompt and evaluation
        settings (no KL penalty: behaviour cloning needs no reference model)."""
        shared = ({f.name for f in dataclasses.fields(LMTrainConfig)} & {f.name for f in dataclasses.fields(self)}
                  - {"out_dir", "n_train_tasks"})
        # tasks_per_iter (RL's rollout groups; SFT plays none) only has to divide over the processes
        groups = {"tasks_per_iter": dist.world_size()} if dist.is_distributed() else {}
        return LMTrainConfig(**{name: getattr(self, name) for name in shared}, kl_coef=0.0, out_dir=self.run_dir(),
                             **groups)


def refuse_fsdp() -> None:
    """``RuntimeError`` when this run was launched for FSDP on several processes: ``sft`` is data-parallel
    (a whole copy of the model per process, gradients summed), FSDP is the RL trainer's only."""
    if dist.fsdp_launched():
        raise RuntimeError("python -m gagpo sft was launched with FSDP (ACCELERATE_USE_FSDP), which only the RL "
                           "trainer implements (python -m gagpo train --model ...); sft runs data-parallel, a whole "
                           "copy of the model per process: launch it with gagpo/configs/accelerate_multi_gpu.yaml, "
                           "`accelerate launch --multi_gpu` or torchrun, without ACCELERATE_USE_FSDP")


class SFTTrainer(LMTrainer):
    """Behaviour cloning with the RL trainer's model, evaluation, metric files and checkpoints.

    Args:
        cfg: the configuration.
        policy: an already-built :class:`LMPolicy` (else one is loaded from ``cfg.model``).
        examples: the (prompt, response) pairs to train on; default: the expert episodes of task seeds
            ``0 .. n_train_tasks - 1`` (:meth:`expert_data`), rendered for the policy.
        eval_hook, eval_pool: as in :class:`~gagpo.llm.train.LMTrainer`.

    Data-parallel on several processes (:mod:`gagpo.distributed`; the module docstring): every process
    builds the same trainer, takes its share of each batch (:meth:`rank_share`), and the gradients are
    summed over the processes; an FSDP launch is refused (:func:`refuse_fsdp`).
    """

    def __init__(self, cfg: SFTConfig, policy: LMPolicy | None = None, examples: Sequence[SFTExample] | None = None,
                 eval_hook: Callable[[LMTrainer], dict[str, float]] | None = None, eval_pool: Any | None = None):
        refuse_fsdp()  # before the RL trainer's __init__, which would accept it
        self.rl_cfg = cfg.train_config()
        super().__init__(self.rl_cfg, policy=policy, eval_hook=eval_hook, eval_pool=eval_pool)
        self.cfg = cfg  # the RL configuration built the model, the environments and the optimizer; SFT's from here on
        self.episodes: list[ExpertEpisode] = []
        self.examples = list(examples) if examples is not None else self.expert_data()
        if not self.examples:
            raise ValueError("no expert pairs to train on (no expert episode ended in success)")
        self._perms: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ data
    def expert_task_seeds(self) -> list[int]:
        """``0 .. n_train_tasks - 1``, capped at the environment's number of tasks when it has one (ALFWorld)."""
        n = self.cfg.n_train_tasks
        return list(range(min(n, self.n_env_tasks) if self.n_env_tasks else n))

    def expert_data(self) -> list[SFTExample]:
        """Play the expert on :meth:`expert_task_seeds` and render every step for the policy. The expert's
        episodes are not cut by ``max_steps`` (the step limit of evaluation and RL episodes)."""
        cfg = self.cfg
        adapter = getattr(self, "adapter", None)  # the environment's adapter, as the RL rollouts use it
        self.episodes = expert_episodes(make_env_fn(cfg.env, EXPERT_STEP_LIMIT, **cfg.env_kwargs), self.expert_task_seeds(),
                                        adapter=adapter)
        lost = sum(not ep.won for ep in self.episodes)
        if lost:
            warnings.warn(f"{lost} of {len(self.episodes)} expert episodes did not succeed; they are left out", stacklevel=2)
        return expert_examples(self.episodes, self.policy, cfg.history, max_prompt_tokens=cfg.max_prompt_tokens,
                               thought=cfg.thought, adapter=adapter)

    def batch_indices(self, step: int) -> np.ndarray:
        """Indices into :attr:`examples` of the batch of optimizer step ``step`` (0-based): positions
        ``step × B … step × B + B − 1`` of the sequence of epochs, each a permutation drawn from
        ``(seed, epoch)``."""
        n, b = len(self.examples), self.cfg.batch_size
        out = []
        for pos in range(step * b, (step + 1) * b):
            epoch = pos // n
            if epoch not in self._perms:
                self._perms[epoch] = np.random.default_rng([self.cfg.seed, epoch, 4]).permutation(n)
            out.append(self._perms[epoch][pos % n])
        return np.asarray(out, dtype=np.int64)

    @staticmethod
    def rank_share(batch: Sequence[T]) -> list[T]:
        """This process's pairs (or indices) of a global ``batch`` (sorted by length): every N-th, from its rank on
        (all of them, in their order, in one process). The shares of the processes are disjoint and
        cover the batch; dealt round-robin, they hold similar numbers of tokens."""
        return list(batch[dist.rank()::dist.world_size()])

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        base = self.cfg.learning_rate
        if self.cfg.lr_schedule == "constant":
            return base
        return base * (1.0 - step / self.cfg.iterations)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, Any]:
        """One optimizer step of cross-entropy on the response tokens of one batch of pairs.

        Data-parallel: this process's share of the batch (:meth:`rank_share`), its loss divided by the
        whole batch's number of response tokens, the gradients summed over the processes before
        clipping (:func:`gagpo.distributed.sum_gradients`); a step that is bad on one process is skipped
        on all (:func:`gagpo.distributed.agree`); the loss is the whole batch's."""
        cfg = self.cfg
        k = self.iteration
        self.iteration += 1
        t0 = time.perf_counter()
        examples = self.examples
        order = sorted(self.batch_indices(k).tolist(),  # similar lengths share a micro-batch (a stable sort)
                       key=lambda i: len(examples[i].prompt_ids) + len(examples[i].response_ids))
        batch = [examples[i] for i in order]
        n_tokens = sum(len(ex.response_ids) for ex in batch)  # the whole batch's, on every process
        share = [examples[i] for i in self.rank_share(order)]
        lr = self.lr_at(k)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        params = self.policy.parameters()
        nll, bad, norm = 0.0, None, math.nan
        dev = self.policy.device
        devices = [torch.cuda.current_device() if dev.index is None else dev.index] if dev.type == "cuda" else []
        self.policy.model.train()
        try:
            with torch.random.fork_rng(devices=devices):
                # dropout, if any (each process its own stream: dist.seed_key)
                torch.manual_seed(int(np.random.default_rng(dist.seed_key(cfg.seed, k, 5)).integers(2**62)))
                for start in range(0, len(share), cfg.micro_batch_size):
                    part = share[start:start + cfg.micro_batch_size]
                    logp, mask = self.policy.token_logprobs([ex.prompt_ids for ex in part], [ex.response_ids for ex in part],
                                                            grad=True, micro_batch_size=len(part))
                    if not all_finite([logp.detach()[mask]]):
                        bad = "log-probs"
                        break
                    part_nll = -logp[mask].sum()  # the response tokens only (EOS included)
                    (part_nll / n_tokens).backward()
                    nll += float(part_nll.detach())
            bad = dist.agree(bad)  # one bad process skips the step everywhere
            if not bad:
                dist.sum_gradients(params)  # every process's share: the whole batch's gradient
                norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf))
                bad = None if math.isfinite(norm) else "gradients"
            if bad:  # skip the step: no weight or optimizer-state change
                self.guard.bad(self.iteration, bad, f"batch of {len(batch)} pairs")
            else:
                self.guard.good()
                self.optimizer.step()
                if os.environ.get(DUMP_ENV):  # test hook: weights and (summed, clipped) gradients after the step
                    self.dump_iteration(os.environ[DUMP_ENV], None, {"pairs": self.rank_share(order)},
                                        {"loss_sum": nll, "grad_norm": norm})
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.policy.model.eval()
        row: dict[str, Any] = {
            "iteration": self.iteration, "epoch": self.iteration * cfg.batch_size / len(self.examples), "env_steps": 0,
            "lr": lr, "nonfinite_steps": int(bad is not None), "response_tokens": n_tokens,
            "time_step": dist.all_max(time.perf_counter() - t0),  # the slowest process's
            "world_size": dist.world_size(),
        }
        if not bad:
            row.update(loss=dist.all_sum(nll) / n_tokens, grad_norm=norm)  # the whole batch's
        return self.record(row)

    # ------------------------------------------------------------------ evaluation, the loop
    def evaluate(self) -> dict[str, float]:
        """The RL trainer's evaluation (:meth:`LMTrainer.evaluate`), reading the RL configuration built
        from this one: the same held-out tasks, prompts, decoding and metrics as ``train``."""
        cfg, self.cfg = self.cfg, self.rl_cfg
        try:
            return super().evaluate()
        finally:
            self.cfg = cfg

    def run_iterations(self) -> None:
        """Evaluate the starting model (iteration 0, on a fresh run), run the steps
        (:meth:`gagpo.trainer.RunLoop.run_iterations`: progress bar, checkpoints), then :meth:`export`.
        Data-parallel: the main process evaluates and exports (its errors are raised on every process)."""
        if not self.history and self.cfg.eval_every and dist.is_main():
            self.history.append({"iteration": 0, "epoch": 0.0, "env_steps": 0, **self.evaluate(),
                                 "world_size": dist.world_size()})
        super().run_iterations()
        dist.call_on_main(self.export)

    def export(self, path: str | None = None) -> str:
        """Write the fine-tuned model and its tokenizer to ``path`` (default ``<run_dir>/model``), replacing
        it atomically: the whole model, or the base with the LoRA adapters merged in — a folder that
        :meth:`LMPolicy.from_pretrained` (``train --model``) loads. Returns ``path``."""
        path = path or os.path.join(self.run_dir, MODEL_DIR)
        self.check_weights_finite("refusing to export the model: the weights")
        model = self.policy.model
        if self.policy.is_lora:
            model = copy.deepcopy(model).merge_and_unload()  # W + (α/r) BA; the policy keeps its adapters
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            model.save_pretrained(tmp)
            self.policy.tokenizer.save_pretrained(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_dir(tmp, path)
        return path

    # ------------------------------------------------------------------ display
    def write_curves(self) -> str | None:
        """Draw ``<run_dir>/curves.png``: the loss (left) and the held-out success and invalid-action rate
        (right) against optimizer steps; ``None`` with a warning when it cannot be drawn (:meth:`save_curves`)."""
        def draw(plotting, axes) -> None:
            plotting.metric_curves(self.history, ["loss"], x="iteration", ax=axes[0], xlabel="optimizer step",
                                   ylabel="cross-entropy per response token", title=f"behaviour cloning ({self.cfg.model})")
            keys = sorted({k for row in self.history for k in row if k.startswith("eval_")
                           and (k.endswith("_success") or k.endswith("_invalid_rate"))})
            plotting.metric_curves(self.history, keys, x="iteration", ax=axes[1], xlabel="optimizer step",
                                   ylabel="fraction", title="greedy evaluation (held out)")
            axes[1].set_ylim(-0.03, 1.03)

        return self.save_curves(2, draw)

    def progress_desc(self) -> str:
        return f"sft {self.cfg.model}"

    def progress_postfix(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"loss": f"{row['loss']:.3f}" if "loss" in row else "skipped", "epoch": f"{row['epoch']:.2f}"}


def sft(cfg: SFTConfig, policy: LMPolicy | None = None, examples: Sequence[SFTExample] | None = None,
        eval_hook: Callable[[LMTrainer], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Run (or, with ``cfg.resume``, continue) behaviour cloning; returns the metrics history (also in
    ``cfg.run_dir()``), the fine-tuned model in ``cfg.model_dir()``. Checks the run directory
    (:func:`gagpo.rundir.check_start`; on the main process of a data-parallel run, whose error every
    process raises) before the model is loaded. An FSDP launch is a ``RuntimeError`` (:func:`refuse_fsdp`)."""
    refuse_fsdp()
    dist.call_on_main(check_start, cfg.run_dir(), resume=cfg.resume, overwrite=cfg.overwrite)
    return SFTTrainer(cfg, policy=policy, examples=examples, eval_hook=eval_hook).train()


def build_parser():
    """``python -m gagpo sft ...``: the options are :class:`SFTConfig`'s fields."""
    import argparse

    from ..config import add_dataclass_arguments

    parser = argparse.ArgumentParser(
        prog="python -m gagpo sft",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Behaviour cloning (supervised fine-tuning) of a Hugging Face causal LM on expert trajectories\n"
            "(gagpo.llm.sft): MiniHousehold's optimal actions or ALFWorld's stored walkthroughs, rendered as the\n"
            "RL rollouts render them; cross-entropy on the response tokens only. Held-out greedy evaluation\n"
            "before the first step and every --eval-every steps. Writes metrics.jsonl, metrics.csv, curves.png,\n"
            "a checkpoint (--resume) and the fine-tuned model to <out-dir>/model, which\n"
            "`python -m gagpo train --model <out-dir>/model` loads."),
        epilog=(
            "examples:\n"
            "  python -m gagpo sft --model tiny --env-kwargs '{\"level\": 1}' --lr 1e-2 --iterations 1000 \\\n"
            "      --max-new-tokens 32 --no-gradient-checkpointing --out-dir runs/sft-tiny   # MiniHousehold level 1, CPU, minutes\n"
            "  python -m gagpo train --model runs/sft-tiny/model --env-kwargs '{\"level\": 1}' --max-new-tokens 32\n"
            "  python -m gagpo sft --model Qwen/Qwen2.5-1.5B-Instruct --env alfworld --lora-r 16 --iterations 1000 \\\n"
            "      --batch-size 32 --out-dir runs/sft-qwen1.5b          # then: train --model runs/sft-qwen1.5b/model\n"
            "  accelerate launch --config_file gagpo/configs/accelerate_multi_gpu.yaml --num_processes 4 -m gagpo sft \\\n"
            "      --model Qwen/Qwen2.5-1.5B-Instruct --env alfworld --lora-r 16 --batch-size 32   # data-parallel on 4 GPUs\n"
            "      (gagpo.distributed: each process takes its share of every batch; torchrun works too)"),
    )
    add_dataclass_arguments(parser, SFTConfig)
    return parser
