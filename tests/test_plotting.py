"""Shared plotting helpers."""
from __future__ import annotations

import os

import numpy as np
from matplotlib.colors import to_rgba

from gagpo.plotting import ALGO_COLORS, learning_curves, save, use_style


def test_band_has_the_colour_of_its_line(tmp_path):
    plt = use_style()
    fig, ax = plt.subplots()
    runs = [(np.array([0, 1, 2]), np.array([0, 0.5, 1])), (np.array([0, 1, 2]), np.array([0, 0.2, 0.8]))]
    learning_curves({"custom-a": runs, "custom-b": runs, "gagpo": runs}, ax=ax)
    lines, bands = ax.get_lines(), ax.collections
    assert len(lines) == len(bands) == 3
    for line, band in zip(lines, bands):
        assert np.allclose(to_rgba(line.get_color())[:3], band.get_facecolor()[0][:3])
    assert to_rgba(lines[2].get_color()) == to_rgba(ALGO_COLORS["gagpo"])
    path = save(fig, "curves", str(tmp_path))
    assert path.endswith("curves.png")
    plt.close(fig)


def test_curves_cover_only_the_common_range():
    plt = use_style()
    fig, ax = plt.subplots()
    runs = [(np.array([100.0, 200, 300]), np.array([0.1, 0.5, 0.9])), (np.array([150.0, 250, 400]), np.array([0.2, 0.4, 0.6]))]
    learning_curves({"gagpo": runs}, ax=ax)
    x = ax.get_lines()[0].get_xdata()
    assert x[0] == 150 and x[-1] == 300
    plt.close(fig)


def test_save_writes_to_gagpo_save_dir_when_set(tmp_path, monkeypatch):
    """`make test` sets GAGPO_SAVE_DIR so that executing the chapters does not rewrite the committed figures;
    an explicit directory still wins."""
    import matplotlib.pyplot as plt

    from gagpo import plotting

    monkeypatch.setenv(plotting.SAVE_DIR_ENV, str(tmp_path / "out"))
    fig, _ = plt.subplots()
    path = plotting.save(fig, "probe")
    assert path == str(tmp_path / "out" / "probe.png") and (tmp_path / "out" / "probe.png").exists()
    assert not os.path.exists(os.path.join(plotting.FIGURES_DIR, "probe.png"))
    assert plotting.save(fig, "probe2", str(tmp_path / "explicit")) == str(tmp_path / "explicit" / "probe2.png")
    monkeypatch.delenv(plotting.SAVE_DIR_ENV)
    assert plotting.output_dir() == plotting.FIGURES_DIR
    plt.close(fig)


def test_save_replaces_a_figure_atomically(tmp_path, monkeypatch):
    """A figure that fails half-way (full disk, a bad artist) leaves the previous file intact and no temporary file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gagpo import plotting

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = plotting.save(fig, "curve", str(tmp_path))
    before = open(path, "rb").read()

    def broken(*args, **kwargs):
        with open(args[0], "wb") as fh:
            fh.write(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fig, "savefig", broken)
    try:
        plotting.save(fig, "curve", str(tmp_path))
    except OSError:
        pass
    else:  # pragma: no cover - the stub always raises
        raise AssertionError("expected the stubbed savefig to fail")
    assert open(path, "rb").read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]
    plt.close(fig)


def test_text_features_figure_shows_the_bag_the_largest_effects_and_the_scores(tmp_path):
    """The helper draws what gagpo.policies.text_features computed: the bag's occurrences per bucket, the
    ``top`` features with the largest effect (their values, in that order, labelled with their buckets), and
    every command's score split into its two parts."""
    import torch

    from gagpo import plotting
    from gagpo.policies import TextPolicy, text_features

    policy = TextPolicy(hidden=8, seed=0)
    with torch.no_grad():
        policy.action_embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    obs = "The goal is 2 steps north. Walls: east, east."
    view = text_features(policy, obs, ["go north", "go west", "look"])
    fig = plotting.text_features(view, top=5)
    ax_bag, ax_eff, ax_score = fig.axes[:3]
    effects = view.effects.double().numpy()
    order = np.argsort(-np.abs(effects).max(axis=1), kind="stable")[:5]
    assert np.allclose(ax_eff.images[0].get_array(), effects[order])
    labels = [t.get_text() for t in ax_eff.get_yticklabels()]
    assert labels == [f"{plotting._gram_label(view.grams[g])} → {view.buckets[g]}" for g in order]
    heights = {}
    for b, c in zip(view.buckets, view.counts):
        heights[b] = heights.get(b, 0) + c
    segments = ax_bag.collections[0].get_segments()  # every occupied bucket, one line of its occurrences
    assert sorted((s[0][0], s[1][1]) for s in segments) == sorted((float(b), float(h)) for b, h in heights.items())
    assert max(heights.values()) == 2  # "east" twice
    widths = [p.get_width() for p in ax_score.patches]
    assert np.allclose(widths, np.concatenate([view.interaction.numpy(), view.bias.numpy()]))
    assert os.path.exists(save(fig, "text_features", str(tmp_path)))
    import matplotlib.pyplot as plt

    plt.close(fig)
