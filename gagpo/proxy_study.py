r"""The grouped value proxy under the microscope: compare it with the exact values of the policy.

Every toy task is a small deterministic MDP with an exact model (``env.unwrapped.exact_model()``),
so for the *current* policy :math:`\pi` we can compute what the grouped value proxy
:math:`\hat V` (:func:`gagpo.grouped_value_proxy`) and the advantage estimators only estimate.

Conventions — chosen to match how the rollouts compute returns. An episode has a step limit
:math:`H` (the environment's ``max_episode_steps``); the return-to-go of the decision at step
:math:`t` is :math:`G_t = \sum_{k=t}^{L-1} \gamma^{k-t} r_k` with no bootstrap past the last row. Its
exact expectation given the state is the *finite-horizon* value with :math:`H - t` decisions left,

.. math:: \mathbb E[G_t \mid s_t = s] = V^\pi_{H-t}(s), \qquad
          A^\pi_{H-t}(s, a) = r(s, a) + \gamma\,[\text{not terminal}]\, V^\pi_{H-t-1}(s') - V^\pi_{H-t}(s),

computed by :func:`toy_envs.policy_evaluation` with ``horizon=H`` (row ``k`` = ``k`` steps left)
and the same :math:`\gamma` as the estimators. So a singleton anchor group (:math:`\hat V = G_t`)
is an unbiased estimate of its row's :math:`V^\pi_{H-t}(s_t)`; pooling visits of one state made at
different steps, or visits that select on the future of their trajectory, is where bias can come from.

What :func:`analyse_rollout` measures per row: :math:`\hat V` (exact anchors, or near-duplicate
anchors from :mod:`gagpo.anchors`), the truth :math:`V^\pi_{H-t}(s_t)`, the anchor-group size, the
true advantage and the advantages of GRPO, GiGPO and GAGPO. :func:`proxy_study` (``python -m gagpo
bench proxy``) trains GAGPO on KeyDoor, takes snapshots of the policy, and for several group sizes
G reports the bias and spread of :math:`\hat V - V^\pi` by anchor-group size, the fraction of
singleton anchor groups, and the correlation and sign agreement of each estimator's advantages
with :math:`A^\pi`.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import advantages as A
from .anchors import near_duplicate_batch
from .rollout import EnvPool, Rollout, collect, make_env_fn

#: Anchor-group size bins (inclusive upper edges): 1, 2, 3–4, 5–8, 9–16, > 16.
SIZE_BINS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 10**9))
SIZE_LABELS = ("1", "2", "3-4", "5-8", "9-16", ">16")


# ====================================================================== exact quantities
@dataclass
class TaskTruth:
    r"""Exact finite-horizon values of one policy on one task, laid out for row look-ups.

    ``values[k, s]`` = :math:`V^\pi_k(s)` (``k`` decisions left, shape ``(H + 1, n_states)``);
    the flat pair arrays hold, for pair ``starts[s] + a``, the next state, the reward and whether
    the transition continues the episode."""

    state_of: dict[str, int]
    values: np.ndarray
    starts: np.ndarray
    next_state: np.ndarray
    reward: np.ndarray
    cont: np.ndarray
    success_probability: float  #: probability that the policy solves the task within H steps (γ = 1)


@torch.no_grad()
def policy_probs(policy: torch.nn.Module, model) -> list[np.ndarray]:
    """The policy's action probabilities in every state of ``model`` (ragged, aligned with ``model.actions``)."""
    logits = policy.logits(model.obs_text, model.actions)
    probs = torch.softmax(logits, dim=-1).double().numpy()
    return [probs[s, : len(a)] / probs[s, : len(a)].sum() for s, a in enumerate(model.actions)]


def task_truth(model, probs: Sequence[np.ndarray], gamma: float, horizon: int) -> TaskTruth:
    """Exact :math:`V^\\pi_k` for ``k = 0..horizon`` and the flat transition arrays of ``model``."""
    from toy_envs import policy_evaluation

    counts = np.asarray([len(a) for a in model.actions])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    values = policy_evaluation(model, probs, gamma, horizon=horizon)
    success = policy_evaluation(model, probs, 1.0, horizon=horizon)[horizon, model.initial_state]
    return TaskTruth(
        state_of={t: s for s, t in enumerate(model.obs_text)}, values=values, starts=starts,
        next_state=np.concatenate([np.asarray(x, dtype=np.int64) for x in model.next_state]),
        reward=np.concatenate([np.asarray(x, dtype=np.float64) for x in model.reward]),
        cont=~np.concatenate([np.asarray(x, dtype=bool) for x in model.terminal]),
        success_probability=float(success),
    )


def truths_for(pool: EnvPool, policy: torch.nn.Module, task_seeds: Sequence[int], gamma: float, horizon: int) -> dict[int, TaskTruth]:
    """:class:`TaskTruth` of ``policy`` for each task seed (one env reset per task)."""
    env = pool.get(1)[0]
    out = {}
    for seed in task_seeds:
        env.reset(seed=int(seed))
        model = env.unwrapped.exact_model()
        out[int(seed)] = task_truth(model, policy_probs(policy, model), gamma, horizon)
    return out


def row_truth(rollout: Rollout, truths: Mapping[int, TaskTruth], horizon: int, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact :math:`V^\\pi_{H-t}(s_t)` and :math:`A^\\pi_{H-t}(s_t, a_t)` of every row, shape (N,) each."""
    b = rollout.batch
    task = rollout.traj_task[b.traj_index]
    steps_left = horizon - b.step
    v = np.empty(len(b))
    adv = np.empty(len(b))
    for seed in np.unique(task):
        rows = np.flatnonzero(task == seed)
        tt = truths[int(seed)]
        s = np.fromiter((tt.state_of[rollout.observations[i]] for i in rows), dtype=np.int64, count=len(rows))
        k = steps_left[rows]
        pair = tt.starts[s] + rollout.actions[rows]
        q = tt.reward[pair] + gamma * tt.cont[pair] * tt.values[k - 1, tt.next_state[pair]]
        v[rows] = tt.values[k, s]
        adv[rows] = q - v[rows]
    return v, adv


# ====================================================================== one rollout under the microscope
def analyse_rollout(rollout: Rollout, truths: Mapping[int, TaskTruth], horizon: int, gamma: float = 0.95, lam: float = 0.95,
                    thresholds: Sequence[float] = ()) -> dict[str, np.ndarray]:
    """Per-row arrays: ``anchor_size``, ``v_hat``, ``v_true``, ``a_true``, the advantages
    ``adv_grpo``, ``adv_gigpo`` (mean_std, ω = 1), ``adv_gagpo`` (λ, mean_std) and ``adv_gagpo_raw``
    (no normalisation), and for each near-duplicate ``threshold`` the proxy ``v_hat_near<thr>`` and
    anchor size ``anchor_size_near<thr>`` on the merged batch."""
    b = rollout.batch
    v_true, a_true = row_truth(rollout, truths, horizon, gamma)
    v_hat, _ = A.grouped_value_proxy(b, gamma)
    out = {
        "group": b.group_index, "step": b.step, "anchor_size": b.anchor_size.astype(np.int64), "v_hat": v_hat,
        "v_true": v_true, "a_true": a_true, "returns": A.discounted_returns(b, gamma),
        "adv_grpo": A.grpo_advantages(b), "adv_gigpo": A.gigpo_advantages(b, gamma),
        "adv_gagpo": A.gagpo_advantages(b, gamma, lam), "adv_gagpo_raw": A.gagpo_advantages(b, gamma, lam, norm="none"),
    }
    for thr in thresholds:
        merged = near_duplicate_batch(b, thr)
        out[f"v_hat_near{thr}"] = A.grouped_value_proxy(merged, gamma)[0]
        out[f"anchor_size_near{thr}"] = merged.anchor_size.astype(np.int64)
    return out


def size_bin(sizes: np.ndarray) -> np.ndarray:
    """Index into :data:`SIZE_BINS` of each anchor-group size."""
    uppers = np.asarray([hi for _, hi in SIZE_BINS])
    return np.searchsorted(uppers, np.asarray(sizes), side="left")


def error_by_size(v_hat: np.ndarray, v_true: np.ndarray, sizes: np.ndarray) -> list[dict[str, float]]:
    """Bias (mean of :math:`\\hat V - V^\\pi`), standard deviation and RMSE of the proxy's error per
    anchor-size bin, over rows (a group of n visits contributes n rows)."""
    err = np.asarray(v_hat) - np.asarray(v_true)
    bins = size_bin(sizes)
    out = []
    for i, lab in enumerate(SIZE_LABELS):
        e = err[bins == i]
        out.append({"size_bin": lab, "rows": int(len(e)), "bias": float(e.mean()) if len(e) else np.nan,
                    "std": float(e.std()) if len(e) else np.nan, "rmse": float(np.sqrt((e**2).mean())) if len(e) else np.nan})
    return out


def agreement(estimate: np.ndarray, truth: np.ndarray, eps: float = 1e-9) -> dict[str, float]:
    """How well an advantage estimate matches :math:`A^\\pi`, row by row.

    * ``corr`` — Pearson correlation over all rows (NaN when either side is constant);
    * ``sign_agreement`` — fraction of *decisive* rows (:math:`|A^\\pi| >` eps; not a state with one
      admissible action or actions of equal value) where the signs agree; an estimate of exactly 0
      gives no direction and counts as a disagreement;
    * ``zero_frac`` — fraction of decisive rows whose estimate is 0 (e.g. GRPO in a group where every
      rollout failed);
    * ``sign_agreement_nonzero`` — the sign agreement over decisive rows with a non-zero estimate.
    """
    estimate, truth = np.asarray(estimate, float), np.asarray(truth, float)
    ok = np.abs(truth) > eps
    corr = float(np.corrcoef(estimate, truth)[0, 1]) if estimate.std() > 0 and truth.std() > 0 else float("nan")
    same = np.sign(estimate[ok]) == np.sign(truth[ok])
    zero = np.abs(estimate[ok]) < 1e-12
    return {
        "corr": corr,
        "sign_agreement": float(same.mean()) if ok.any() else float("nan"),
        "zero_frac": float(zero.mean()) if ok.any() else float("nan"),
        "sign_agreement_nonzero": float(same[~zero].mean()) if (~zero).any() else float("nan"),
    }


# ====================================================================== the study
@dataclass(frozen=True)
class ProxySetting:
    """One environment of the study and how long to train on it."""

    name: str
    env_kwargs: dict
    max_steps: int
    train_iterations: int
    snapshots: tuple[int, ...]      #: iterations at which the policy is examined (0 = untrained)
    group_sizes: tuple[int, ...] = (2, 4, 8, 16)
    n_tasks: int = 16               #: training-range task seeds examined
    repeats: int = 4                #: independent rollouts per (snapshot, G)
    gamma: float = 0.95
    lam: float = 0.95
    env: str = "toy_envs/KeyDoor-v0"


PROXY_SETTINGS = {
    False: (
        ProxySetting("keydoor5", {"size": 5}, 30, 100, (0, 20, 50, 100)),
        ProxySetting("keydoor7", {"size": 7}, 60, 200, (0, 50, 100, 200)),
    ),
    True: (ProxySetting("keydoor5", {"size": 5}, 30, 40, (0, 40), group_sizes=(2, 8, 16), n_tasks=8, repeats=2),),
}
ESTIMATORS = ("grpo", "gigpo", "gagpo", "gagpo_raw")
NEAR_THRESHOLDS = (0.9, 0.8, 0.7)


def study_setting(setting: ProxySetting, seed: int = 0, near_thresholds: Sequence[float] = NEAR_THRESHOLDS) -> dict[str, list[dict[str, Any]]]:
    """Train GAGPO on ``setting`` and examine the policy at each snapshot for each group size.

    Returns tidy records: ``"errors"`` (bias/std/RMSE of :math:`\\hat V` per anchor-size bin),
    ``"anchors"`` (singleton fractions), ``"advantages"`` (correlation, sign agreement per
    estimator) and ``"near"`` (proxy error with near-duplicate anchors per threshold), each tagged
    with setting, snapshot iteration, exact success probability and G."""
    import tempfile

    from .config import TrainConfig
    from .trainer import Trainer

    cfg = TrainConfig(env=setting.env, env_kwargs=dict(setting.env_kwargs), max_steps=setting.max_steps, algo="gagpo",
                      seed=seed, iterations=setting.train_iterations, gamma=setting.gamma, lam=setting.lam, eval_every=0,
                      progress=False, checkpoint_every=0, out_dir=tempfile.mkdtemp(prefix="gagpo-proxy-"))
    trainer = Trainer(cfg)
    horizon = int(trainer.pool.get(1)[0].spec.max_episode_steps)
    snaps = {}
    for it in range(setting.train_iterations + 1):
        if it in setting.snapshots:
            snaps[it] = copy.deepcopy(trainer.policy)
        if it < setting.train_iterations:
            trainer.step()
    trainer.pool.close()
    trainer.eval_pool.close()
    pool = EnvPool(make_env_fn(cfg.env, cfg.max_steps, **cfg.env_kwargs))
    task_seeds = list(range(5000, 5000 + setting.n_tasks))  # training-range seeds the run did not single out
    rec: dict[str, list[dict[str, Any]]] = {"errors": [], "anchors": [], "advantages": [], "near": []}
    for it, policy in snaps.items():
        truths = truths_for(pool, policy, task_seeds, setting.gamma, horizon)
        p_success = float(np.mean([t.success_probability for t in truths.values()]))
        tag = {"setting": setting.name, "iteration": it, "success_probability": round(p_success, 4)}
        for G in setting.group_sizes:
            parts = []
            for r in range(setting.repeats):
                gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, it, G, r]).integers(2**62)))
                roll = collect(pool, policy, task_seeds, G, gen)
                parts.append(analyse_rollout(roll, truths, horizon, setting.gamma, setting.lam, near_thresholds))
            cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            tag_g = {**tag, "group_size": G}
            for e in error_by_size(cat["v_hat"], cat["v_true"], cat["anchor_size"]):
                rec["errors"].append({**tag_g, **e})
            n_groups = sum(len(np.unique(p["group"])) for p in parts)
            anchors = sum(int(round(float(np.sum(1.0 / p["anchor_size"])))) for p in parts)  # each anchor group's rows sum to 1
            singles = sum(int(np.sum(p["anchor_size"] == 1)) for p in parts)
            rec["anchors"].append({**tag_g, "rows": len(cat["v_hat"]), "anchor_groups": anchors,
                                   "singleton_row_frac": float(np.mean(cat["anchor_size"] == 1)),
                                   "singleton_group_frac": singles / max(anchors, 1), "rows_per_group": len(cat["v_hat"]) / n_groups})
            for est in ESTIMATORS:  # decisive rows: |A^pi| > 0.01
                rec["advantages"].append({**tag_g, "estimator": est, **agreement(cat[f"adv_{est}"], cat["a_true"], eps=0.01)})
            for thr in ("exact", *near_thresholds):
                key, size_key = ("v_hat", "anchor_size") if thr == "exact" else (f"v_hat_near{thr}", f"anchor_size_near{thr}")
                err = cat[key] - cat["v_true"]
                rec["near"].append({**tag_g, "threshold": thr, "bias": float(err.mean()), "std": float(err.std()),
                                    "rmse": float(np.sqrt((err**2).mean())), "singleton_row_frac": float(np.mean(cat[size_key] == 1))})
    pool.close()
    return rec


def _md_table(records: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in records]
    return "\n".join(lines)


def proxy_study(quick: bool = False, figures_dir: str | None = None, seed: int = 0, settings: Sequence[ProxySetting] | None = None) -> dict[str, Any]:
    """Run :func:`study_setting` for every setting; write ``proxy_*.png`` and
    ``proxy_study[_quick].{csv,md}`` and print the tables — into ``figures_dir`` when given, else
    ``figures/`` for the full study and ``runs/proxy-quick/figures`` for ``quick`` (a smoke run never
    writes into the committed figures unless asked: :func:`gagpo.reports.report_dir`)."""
    from .reports import CSV_FLOAT, report_dir
    from .tables import write_csv

    figures_dir = report_dir(figures_dir, quick, os.path.join("runs", "proxy-quick"))
    settings = settings or PROXY_SETTINGS[quick]
    suffix = "_quick" if quick else ""
    t0 = time.time()
    rec: dict[str, list[dict[str, Any]]] = {"errors": [], "anchors": [], "advantages": [], "near": []}
    for st in settings:
        part = study_setting(st, seed)
        for k in rec:
            rec[k] += part[k]
    elapsed = time.time() - t0
    rows = [{"table": k, **r} for k, v in rec.items() for r in v]
    write_csv(rows, os.path.join(figures_dir, f"proxy_study{suffix}.csv"), float_format=CSV_FLOAT)
    paths = plot_proxy(rec, settings, figures_dir, suffix)
    text = proxy_report(rec, settings, elapsed, quick)
    with open(os.path.join(figures_dir, f"proxy_study{suffix}.md"), "w") as fh:
        fh.write(text + "\n")
    print(text)
    print("\nfigures: " + ", ".join(paths))
    return {"records": rec, "paths": paths, "elapsed": elapsed, "table": text}


def plot_proxy(rec: Mapping[str, Sequence[Mapping[str, Any]]], settings: Sequence[ProxySetting], figures_dir: str, suffix: str = "") -> list[str]:
    """The four proxy figures: bias/spread by anchor size, singleton fractions vs G, advantage
    agreement vs G, and near-duplicate anchors."""
    from .plotting import ALGO_COLORS, save, use_style

    plt = use_style()
    paths = []
    n = len(settings)
    # 1. bias and std of V̂ - V by anchor-group size (G = 8, or the largest available ≤ 8)
    fig, axes = plt.subplots(3, n, figsize=(4.8 * n, 8.0), squeeze=False, gridspec_kw={"height_ratios": [3, 3, 2]})
    for j, st in enumerate(settings):
        G = max(g for g in st.group_sizes if g <= 8)
        width = 0.8 / max(len(st.snapshots), 1)
        for i, it in enumerate(st.snapshots):
            rs = [r for r in rec["errors"] if r["setting"] == st.name and r["iteration"] == it and r["group_size"] == G and r["rows"] > 0]
            x = [SIZE_LABELS.index(r["size_bin"]) for r in rs]
            c = plt.cm.viridis(i / max(len(st.snapshots) - 1, 1))
            lab = f"iter {it} (P(success) {rs[0]['success_probability']:.2f})" if rs else f"iter {it}"
            axes[0, j].plot(x, [r["bias"] for r in rs], "o-", color=c, label=lab)
            axes[1, j].plot(x, [r["std"] for r in rs], "o-", color=c)
            total = sum(r["rows"] for r in rs) or 1
            axes[2, j].bar(np.asarray(x) + (i - (len(st.snapshots) - 1) / 2) * width, [r["rows"] / total for r in rs], width, color=c)
        for ax in axes[:, j]:
            ax.set_xticks(range(len(SIZE_LABELS)), SIZE_LABELS)
        axes[0, j].axhline(0, color="k", linewidth=0.8)
        axes[0, j].set_title(rf"{st.name}, G={G}: bias of $\hat V - V^\pi$", fontsize=9)
        axes[1, j].set_title(r"std of $\hat V - V^\pi$", fontsize=9)
        axes[2, j].set_title("share of rows in each bin (few rows = noisy points above)", fontsize=9)
        axes[2, j].set_xlabel("visits in the anchor group (rows)")
        axes[0, j].legend(fontsize=7)
    fig.tight_layout()
    paths.append(save(fig, f"proxy_bias_variance{suffix}", figures_dir))
    plt.close(fig)
    # 2. singleton fraction vs G
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 3.4), squeeze=False)
    for j, st in enumerate(settings):
        for i, it in enumerate(st.snapshots):
            rs = [r for r in rec["anchors"] if r["setting"] == st.name and r["iteration"] == it]
            c = plt.cm.viridis(i / max(len(st.snapshots) - 1, 1))
            axes[0, j].plot([r["group_size"] for r in rs], [r["singleton_row_frac"] for r in rs], "o-", color=c, label=f"iter {it}: rows")
            axes[0, j].plot([r["group_size"] for r in rs], [r["singleton_group_frac"] for r in rs], "s--", color=c, alpha=0.6, label=f"iter {it}: anchor groups")
        axes[0, j].set_xscale("log", base=2)
        axes[0, j].set_xticks(list(st.group_sizes), [str(g) for g in st.group_sizes])
        axes[0, j].set_xlabel("group size G")
        axes[0, j].set_ylabel("fraction that is a singleton")
        axes[0, j].set_ylim(bottom=0)
        axes[0, j].set_title(st.name, fontsize=9)
        axes[0, j].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(save(fig, f"proxy_singletons{suffix}", figures_dir))
    plt.close(fig)
    # 3. advantage agreement with A^pi vs G: one line per estimator and snapshot (later = darker)
    fig, axes = plt.subplots(3, n, figsize=(4.8 * n, 8.4), squeeze=False)
    styles = {"grpo": ALGO_COLORS["grpo"], "gigpo": ALGO_COLORS["gigpo"], "gagpo": ALGO_COLORS["gagpo"], "gagpo_raw": "#8c564b"}
    for j, st in enumerate(settings):
        its = list(st.snapshots)
        for est, color in styles.items():
            for i, it in enumerate(its):
                rs = [r for r in rec["advantages"] if r["setting"] == st.name and r["iteration"] == it and r["estimator"] == est]
                alpha = 0.35 + 0.65 * i / max(len(its) - 1, 1)
                kw = dict(color=color, alpha=alpha, marker="o", label=est if i == len(its) - 1 else None)
                for row, key in enumerate(("corr", "sign_agreement", "sign_agreement_nonzero")):
                    axes[row, j].plot([r["group_size"] for r in rs], [r[key] for r in rs], **kw)
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(st.group_sizes), [str(g) for g in st.group_sizes])
        axes[0, j].set_title(rf"{st.name}: corr($\hat A$, $A^\pi$) (darker = later snapshot)", fontsize=9)
        axes[1, j].set_title(r"sign agreement with $A^\pi$ (rows with $|A^\pi| > 0.01$; $\hat A = 0$ is a miss)", fontsize=9)
        axes[2, j].set_title(r"sign agreement where $\hat A \neq 0$", fontsize=9)
        for ax in axes[1:, j]:
            ax.axhline(0.5, color="k", linestyle=":", linewidth=0.8)
        axes[2, j].set_xlabel("group size G")
        axes[0, j].legend(fontsize=7)
    fig.tight_layout()
    paths.append(save(fig, f"proxy_advantages{suffix}", figures_dir))
    plt.close(fig)
    # 4. near-duplicate anchors: RMSE of V̂ and singleton fraction by threshold (G = 8 or nearest)
    fig, axes = plt.subplots(2, n, figsize=(4.8 * n, 5.6), squeeze=False)
    for j, st in enumerate(settings):
        G = max(g for g in st.group_sizes if g <= 8)
        for i, it in enumerate(st.snapshots):
            rs = [r for r in rec["near"] if r["setting"] == st.name and r["iteration"] == it and r["group_size"] == G]
            c = plt.cm.viridis(i / max(len(st.snapshots) - 1, 1))
            xs = list(range(len(rs)))
            axes[0, j].plot(xs, [r["rmse"] for r in rs], "o-", color=c, label=f"iter {it}")
            axes[1, j].plot(xs, [r["singleton_row_frac"] for r in rs], "s-", color=c)
            for ax in axes[:, j]:
                ax.set_xticks(xs, [str(r["threshold"]) for r in rs])
        axes[0, j].set_title(rf"{st.name}, G={G}: RMSE of $\hat V - V^\pi$ over rows", fontsize=9)
        axes[1, j].set_title("fraction of rows in singleton anchor groups", fontsize=9)
        axes[1, j].set_xlabel("anchor matching (exact, or Jaccard threshold of near duplicates)")
        axes[0, j].legend(fontsize=7)
    fig.tight_layout()
    paths.append(save(fig, f"proxy_near_duplicates{suffix}", figures_dir))
    plt.close(fig)
    return paths


def proxy_report(rec: Mapping[str, Sequence[Mapping[str, Any]]], settings: Sequence[ProxySetting], elapsed: float, quick: bool) -> str:
    """The Markdown report of :func:`proxy_study`."""
    parts = [f"# The grouped value proxy against exact dynamic programming{' (quick)' if quick else ''}", "",
             "Truth: finite-horizon values of the current policy with H − t steps left (H = step limit), the same γ as the "
             "returns; errors are over rows (an anchor group of n visits contributes n rows). "
             "P(success) = exact probability that the policy solves a task within H steps, averaged over the examined tasks.", ""]
    for st in settings:
        G = max(g for g in st.group_sizes if g <= 8)
        parts += [f"## {st.name}: {st.env.split('/')[-1]} {st.env_kwargs}, step limit {st.max_steps}, {st.n_tasks} tasks × {st.repeats} rollouts per "
                  f"(snapshot, G); GAGPO trained {st.train_iterations} iterations", "",
                  f"### Proxy error by anchor-group size (G = {G})", "",
                  _md_table([r for r in rec["errors"] if r["setting"] == st.name and r["group_size"] == G and r["rows"] > 0],
                            ["iteration", "success_probability", "size_bin", "rows", "bias", "std", "rmse"]), "",
                  "### Singleton anchor groups by G", "",
                  _md_table([r for r in rec["anchors"] if r["setting"] == st.name],
                            ["iteration", "success_probability", "group_size", "rows_per_group", "singleton_row_frac", "singleton_group_frac"]), "",
                  "### Advantages against the true A^π (Pearson correlation; sign agreement on decisive rows, a zero estimate "
                  "counting as a miss; fraction of zero estimates; sign agreement where the estimate is non-zero)", "",
                  _md_table([r for r in rec["advantages"] if r["setting"] == st.name],
                            ["iteration", "group_size", "estimator", "corr", "sign_agreement", "zero_frac", "sign_agreement_nonzero"]), "",
                  f"### Near-duplicate anchors (G = {G}): error of V̂ − V^π over all rows", "",
                  _md_table([r for r in rec["near"] if r["setting"] == st.name and r["group_size"] == G],
                            ["iteration", "threshold", "bias", "std", "rmse", "singleton_row_frac"]), ""]
    parts.append(f"Produced by `python -m gagpo bench proxy{' --quick' if quick else ''}` on {time.strftime('%Y-%m-%d')}, "
                 f"{os.cpu_count()} CPU cores; wall time {elapsed / 60:.1f} min.")
    return "\n".join(parts)


__all__ = [
    "TaskTruth", "policy_probs", "task_truth", "truths_for", "row_truth", "analyse_rollout", "size_bin", "error_by_size",
    "agreement", "ProxySetting", "PROXY_SETTINGS", "study_setting", "proxy_study", "plot_proxy", "proxy_report",
]
