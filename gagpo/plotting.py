"""Shared figure helpers: one size, one style, figures written to ``figures/``."""
from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence

import numpy as np

from .registry import estimator_names, get_estimator

FIGURES_DIR = os.environ.get("GAGPO_FIGURES_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "figures"))
FIGSIZE = (6.4, 4.0)
#: colours for registered estimators that name none (matplotlib's default cycle, in registration order)
DEFAULT_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


class EstimatorColors(Mapping):
    """The line colour of every registered estimator, read from the registry (:mod:`gagpo.registry`) at
    each lookup: its ``color=`` when registered with one, else a colour of :data:`DEFAULT_CYCLE` by
    registration order. ``ALGO_COLORS["gagpo"]``; ``ALGO_COLORS.get(name)`` is ``None`` for a name
    that is not a registered estimator."""

    def __getitem__(self, name: str) -> str:
        if name not in estimator_names():
            raise KeyError(name)
        color = get_estimator(name).color
        return color if color else DEFAULT_CYCLE[estimator_names().index(name) % len(DEFAULT_CYCLE)]

    def __iter__(self) -> Iterator[str]:
        return iter(estimator_names())

    def __len__(self) -> int:
        return len(estimator_names())


ALGO_COLORS = EstimatorColors()


def use_style():
    """Apply the book's matplotlib style and return ``pyplot``."""
    import matplotlib

    if os.environ.get("MPLBACKEND") is None and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.figsize": FIGSIZE, "figure.dpi": 100, "savefig.dpi": 120, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "font.size": 10, "legend.frameon": False,
    })
    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


SAVE_DIR_ENV = "GAGPO_SAVE_DIR"
"""Environment variable: when set, :func:`save` and :func:`output_dir` write there instead of ``figures/``
(``make test`` sets it to a temporary folder, so executing the chapters under nbval leaves the committed
figures untouched; reading committed figures and tables still uses :data:`FIGURES_DIR`)."""


def output_dir(directory: str | None = None) -> str:
    """Where a chapter or benchmark writes its outputs: ``directory`` if given, else ``$GAGPO_SAVE_DIR``
    if set, else :data:`FIGURES_DIR`."""
    return directory or os.environ.get(SAVE_DIR_ENV) or FIGURES_DIR


def save(fig, name: str, directory: str | None = None) -> str:
    """Save ``fig`` as ``<output_dir(directory)>/<name>.png`` (``figures/`` by default) and return the path.

    The file is replaced atomically (written beside it, then renamed): a crash or a full disk leaves the
    old figure or the new one, never half of one."""
    directory = output_dir(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name if name.endswith(".png") else name + ".png")
    tmp = path + ".tmp"
    try:
        fig.savefig(tmp, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def learning_curves(
    curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    xlabel: str = "environment steps",
    ylabel: str = "held-out success",
    title: str | None = None,
    ax=None,
    random_baseline: float | None = None,
):
    """Median across seeds with the min–max band, one line per algorithm.

    ``curves[algo]`` is a list of ``(x, y)`` per seed; seeds are interpolated onto a grid over the x
    range every seed covers (a curve starts at its first measurement, not at 0).
    """
    plt = use_style()
    if ax is None:
        _, ax = plt.subplots()
    for algo, runs in curves.items():
        # the common x range of every run: no extrapolation before a run's first point or after its last
        x_min, x_max = max(float(np.min(x)) for x, _ in runs), min(float(np.max(x)) for x, _ in runs)
        grid = np.linspace(x_min, x_max, 100)
        ys = np.stack([np.interp(grid, x, y) for x, y in runs])
        (line,) = ax.plot(grid, np.median(ys, axis=0), color=ALGO_COLORS.get(algo), label=f"{algo} (median of {len(runs)})")
        ax.fill_between(grid, ys.min(axis=0), ys.max(axis=0), color=line.get_color(), alpha=0.15, linewidth=0)
    if random_baseline is not None:
        ax.axhline(random_baseline, color="k", linestyle=":", linewidth=1, label="uniform random policy")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def metric_curves(
    history: Sequence[Mapping[str, float]],
    keys: Sequence[str],
    x: str = "env_steps",
    ax=None,
    labels: Mapping[str, str] | None = None,
    xlabel: str = "environment steps",
    ylabel: str = "",
    title: str | None = None,
    **line_kwargs,
):
    """One run's metrics against ``x``: one line per key, from the rows of ``history`` that hold it.

    ``history`` is a run's list of per-iteration metric rows (``metrics.jsonl``); a key logged only
    at some iterations (evaluations) is drawn through those rows, with markers. ``labels`` renames
    keys in the legend; ``line_kwargs`` go to every ``ax.plot`` (e.g. ``linestyle="--"``).
    """
    plt = use_style()
    if ax is None:
        _, ax = plt.subplots()
    for key in keys:
        pts = [(float(row[x]), float(row[key])) for row in history if key in row and x in row and row[key] is not None]
        if not pts:
            continue
        xs, ys = np.asarray(pts).T
        sparse = len(pts) < len(history) or len(pts) == 1  # evaluations only, or a lone point
        style = {"marker": "o" if sparse else None, "markersize": 3, **line_kwargs}
        ax.plot(xs, ys, label=(labels or {}).get(key, key), **style)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if ax.get_lines():
        ax.legend(fontsize="small")
    return ax


def text_features(view, top: int = 12, axes=None):
    """Three panels of what a text policy sees of one observation (``view``: a
    :class:`gagpo.policies.TextFeatures`, from :func:`gagpo.policies.text_features`): the hashed bag of
    n-grams (occurrences per bucket, the ``top`` features with the largest effect on any command's score
    marked), those features' effects on each command's score (leave-one-out, a heat map with the values), and
    each command's score split into its observation-dependent part and its bias, with the probability it gets.
    ``axes``: three axes to draw on (a new figure otherwise). Returns the figure."""
    plt = use_style()
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1.2, 1.0, 0.8]})
    ax_bag, ax_eff, ax_score = axes
    fig = ax_bag.figure
    effects = view.effects.double().numpy()
    top = min(top, len(view.grams))
    order = np.argsort(-np.abs(effects).max(axis=1), kind="stable")[:top]
    labels = [f"{_gram_label(view.grams[g])} → {view.buckets[g]}" for g in order]

    # the bag: occurrences per bucket (a bucket's count sums its features)
    per_bucket: dict[int, int] = {}
    for b, c in zip(view.buckets, view.counts):
        per_bucket[b] = per_bucket.get(b, 0) + c
    xs = sorted(per_bucket)
    ax_bag.vlines(xs, 0, [per_bucket[b] for b in xs], color="0.6", linewidth=1)
    marked = [view.buckets[g] for g in order]
    ax_bag.vlines(marked, 0, [per_bucket[b] for b in marked], color="C3", linewidth=2, label=f"the {top} features on the right")
    ax_bag.set_xlim(0, view.n_features)
    ax_bag.set_ylim(0, max(per_bucket.values()) + 0.8)
    ax_bag.set_xlabel(f"bucket (stable hash mod {view.n_features})")
    ax_bag.set_ylabel("occurrences in the bag x(o)")
    ax_bag.set_title(f"{sum(view.counts)} feature occurrences, {len(view.grams)} distinct features,\n"
                     f"in {len(per_bucket)} of {view.n_features} buckets", fontsize=10)
    ax_bag.legend(loc="upper right", fontsize="small")

    # the effects of the top features on each command's score
    shown = effects[order]
    limit = float(np.abs(shown).max()) or 1.0
    ax_eff.imshow(shown, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax_eff.set_xticks(range(len(view.commands)), view.commands)
    ax_eff.set_yticks(range(top), labels, fontsize=8)
    ax_eff.grid(False)
    for (i, j), value in np.ndenumerate(shown):
        ax_eff.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=7)
    ax_eff.set_title("change of each score when the feature is left out\nf(o, a) − f(o without it, a)", fontsize=10)

    # the scores: interaction + bias, and the probabilities
    inter, bias = view.interaction.double().numpy(), view.bias.double().numpy()
    y = np.arange(len(view.commands))
    ax_score.barh(y, inter, color="C0", label="⟨h(o), E x(a)⟩ (depends on o)")
    ax_score.barh(y, bias, left=inter, color="C1", label="w · x(a) (bias)")
    ax_score.axvline(0, color="k", linewidth=0.8)
    for i, (s, p) in enumerate(zip(view.scores.double().numpy(), view.probs.double().numpy())):
        ax_score.text(max(s, 0.0), i, f"  f = {s:+.2f}\n  π = {p:.2f}", va="center", fontsize=8)
    ax_score.set_yticks(y, view.commands)
    ax_score.invert_yaxis()
    ax_score.set_xlabel("score f(o, a)")
    ax_score.set_xlim(right=max(float(np.max(view.scores.double().numpy())), 0.0) * 1.5 + 0.5)
    ax_score.set_title("scores of the admissible commands, f = ⟨h(o), E x(a)⟩ + w · x(a)", fontsize=10)
    ax_score.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    return fig


def _gram_label(gram: str) -> str:
    """``"1:north"`` -> ``north``; ``"2:go north"`` -> ``"go north"``; ``"p:goal|north"`` -> ``goal|north``."""
    kind, text = gram.split(":", 1)
    return f'"{text}"' if kind.isdigit() and int(kind) > 1 else text
