"""Loop-based reference implementations — slow, obvious, written straight from the equations.

The vectorised estimators in `gagpo.advantages` are tested against these on random batches.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def trajectories(rows):
    """traj_id -> list of (row_index, row) sorted by step."""
    out = defaultdict(list)
    for i, r in enumerate(rows):
        out[r["traj_id"]].append((i, r))
    for k in out:
        out[k].sort(key=lambda p: p[1]["step"])
    return out


def loop_returns(rows, gamma):
    g = np.zeros(len(rows))
    for traj in trajectories(rows).values():
        running = 0.0
        for i, r in reversed(traj):
            running = r["reward"] + gamma * running
            g[i] = running
    return g


def _mean_std(xs):
    xs = np.asarray(xs, dtype=float)
    return xs.mean(), xs.std()


def loop_grpo(rows, norm, eps=1e-6):
    trajs = trajectories(rows)
    ret = {k: sum(r["reward"] for _, r in v) for k, v in trajs.items()}
    group_of = {k: v[0][1]["group_id"] for k, v in trajs.items()}
    members = defaultdict(list)
    for k, g in group_of.items():
        members[g].append(ret[k])
    out = np.zeros(len(rows))
    for k, v in trajs.items():
        m, s = _mean_std(members[group_of[k]])
        a = {"none": ret[k], "mean": ret[k] - m, "mean_std": (ret[k] - m) / (s + eps)}[norm]
        for i, _ in v:
            out[i] = a
    return out


def loop_rloo(rows):
    trajs = trajectories(rows)
    ret = {k: sum(r["reward"] for _, r in v) for k, v in trajs.items()}
    group_of = {k: v[0][1]["group_id"] for k, v in trajs.items()}
    out = np.zeros(len(rows))
    for k, v in trajs.items():
        others = [ret[j] for j in trajs if j != k and group_of[j] == group_of[k]]
        a = ret[k] - np.mean(others) if others else 0.0
        for i, _ in v:
            out[i] = a
    return out


def loop_anchor_groups(rows):
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r["group_id"], r["obs_key"])].append(i)
    return groups


def loop_gigpo_step(rows, gamma, norm, eps=1e-6):
    g = loop_returns(rows, gamma)
    out = np.zeros(len(rows))
    for idx in loop_anchor_groups(rows).values():
        m, s = _mean_std(g[idx])
        for i in idx:
            out[i] = (g[i] - m) / (s + eps) if norm == "mean_std" else g[i] - m
    return out


def loop_value_proxy(rows, gamma):
    g = loop_returns(rows, gamma)
    table = {key: float(np.mean(g[idx])) for key, idx in loop_anchor_groups(rows).items()}
    values = np.array([table[(r["group_id"], r["obs_key"])] for r in rows])
    next_values = np.array(
        [0.0 if r["terminated"] else table.get((r["group_id"], r["next_obs_key"]), 0.0) for r in rows]
    )
    return values, next_values


def loop_gae(rows, values, next_values, gamma, lam):
    out = np.zeros(len(rows))
    for traj in trajectories(rows).values():
        running = 0.0
        for i, r in reversed(traj):
            nv = 0.0 if r["terminated"] else next_values[i]
            delta = r["reward"] + gamma * nv - values[i]
            running = delta + gamma * lam * running
            out[i] = running
    return out


def loop_gagpo(rows, gamma, lam, norm, eps=1e-6):
    v, nv = loop_value_proxy(rows, gamma)
    a = loop_gae(rows, v, nv, gamma, lam)
    if norm == "none":
        return a
    out = np.zeros(len(rows))
    by_group = defaultdict(list)
    for i, r in enumerate(rows):
        by_group[r["group_id"]].append(i)
    for idx in by_group.values():
        m, s = _mean_std(a[idx])
        for i in idx:
            out[i] = (a[i] - m) / (s + eps) if norm == "mean_std" else a[i] - m
    return out
