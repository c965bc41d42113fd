r"""Near-duplicate anchor grouping: treat almost-identical observations of a rollout group as one state.

GiGPO and GAGPO group the visits of a rollout group by *exact* observation text (the anchor key).
With long or noisy observations (a step counter, a timestamp, a re-ordered list) two visits to what
is morally the same situation get different keys, every anchor group becomes a singleton, and the
step-level signal disappears. This module offers the simplest remedy: merge keys whose texts are
similar enough, then hand the estimators a batch whose keys are the merged ones.

Similarity. Each text becomes the set of its word n-grams (*shingles*; :func:`shingles`, tokens
from :func:`gagpo.policies.tokenize`), optionally with every number replaced by a coarse bucket
(0, 1, 2–3, 4–7, 8+). Two texts have the Jaccard similarity of their shingle sets,

.. math:: J(x, y) = \frac{|S(x) \cap S(y)|}{|S(x) \cup S(y)|} \in [0, 1]

(1 for equal sets, also for two empty sets). :func:`jaccard_matrix` computes all pairs of a list at
once from a 0/1 incidence matrix: intersections are one matrix product.

Grouping. Within each rollout group (never across groups) the distinct keys are clustered by
*leader clustering* (:func:`leader_clusters`): keys are visited from most to least visited; a key
not yet claimed becomes a leader and claims every unclaimed key whose similarity to it is at least
``threshold``. Unlike connected components (single linkage), this cannot chain: every member is
within ``threshold`` of its leader, so a cluster cannot drift from "key 2 steps north" to "key 9
steps south" through a path of small changes. The leader's text becomes the key of every member
(:func:`near_duplicate_batch`).

Trade-off (measured in chapter 7 and by ``python -m gagpo bench ablations``): merging turns
singletons into groups, which lowers the variance of the grouped value proxy, but it averages
returns of states that may genuinely differ, which biases it. ``threshold=1`` merges only texts
with equal shingle sets; ``threshold=0`` puts all keys of a group into one anchor.
"""
from __future__ import annotations

import re
from typing import Hashable, Sequence

import numpy as np

from .batch import StepBatch, factorize
from .policies import tokenize

_NUMBER = re.compile(r"[0-9]+")


def bucket_number(token: str) -> str:
    """A number token as a coarse bucket: ``"0"``, ``"1"``, ``"2-3"``, ``"4-7"`` or ``"8+"``;
    any other token unchanged."""
    if not _NUMBER.fullmatch(token):
        return token
    value = int(token)
    if value <= 1:
        return str(value)
    if value <= 3:
        return "2-3"
    if value <= 7:
        return "4-7"
    return "8+"


def shingles(text: str, n: int = 2, bucket_numbers: bool = False) -> frozenset[str]:
    """The set of word ``n``-grams of ``text`` (tokens from :func:`gagpo.policies.tokenize`).

    A text with fewer than ``n`` tokens gives the single shingle of all its tokens (an empty text
    gives the empty set). ``bucket_numbers=True`` maps every number token through
    :func:`bucket_number` first, so "3 steps north" and "2 steps north" share their shingles.

    >>> sorted(shingles("The key is 2 steps north."))
    ['2 steps', 'is 2', 'key is', 'steps north', 'the key']
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    tokens = tokenize(str(text))
    if bucket_numbers:
        tokens = [bucket_number(t) for t in tokens]
    if not tokens:
        return frozenset()
    if len(tokens) < n:
        return frozenset([" ".join(tokens)])
    return frozenset(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def jaccard_matrix(sets: Sequence[frozenset]) -> np.ndarray:
    r"""All pairwise Jaccard similarities of ``sets``, shape ``(U, U)``, symmetric with ones on the diagonal.

    With the incidence matrix :math:`M_{uv} = [v \in S_u]`, the intersections are :math:`M M^\top`
    and the unions :math:`|S_u| + |S_w| - |S_u \cap S_w|`. Two empty sets have similarity 1; an
    empty set and a non-empty one 0.
    """
    u = len(sets)
    if u == 0:
        return np.zeros((0, 0))
    codes, vocabulary = factorize([x for s in sets for x in s])
    rows = np.repeat(np.arange(u), [len(s) for s in sets])
    incidence = np.zeros((u, max(len(vocabulary), 1)))
    incidence[rows, codes] = 1.0
    inter = incidence @ incidence.T
    sizes = np.diag(inter)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)


def leader_clusters(similarity: np.ndarray, order: Sequence[int], threshold: float) -> np.ndarray:
    """Leader clustering of ``U`` items from their ``(U, U)`` similarity matrix.

    Items are visited in ``order`` (a permutation of 0..U-1); an item not yet claimed becomes a
    leader and claims every unclaimed item with ``similarity[leader, item] >= threshold``
    (itself included). Returns ``labels`` of shape (U,): the index of each item's leader. One
    vector operation per leader.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    u = similarity.shape[0]
    if similarity.shape != (u, u):
        raise ValueError(f"similarity must be square; got shape {similarity.shape}")
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(u)):
        raise ValueError("order must be a permutation of 0..U-1")
    labels = np.full(u, -1, dtype=np.int64)
    for i in order:
        if labels[i] >= 0:
            continue
        claim = (labels < 0) & (similarity[i] >= threshold)
        claim[i] = True
        labels[claim] = i
    return labels


def near_duplicate_keys(
    batch: StepBatch, threshold: float = 0.8, n: int = 2, bucket_numbers: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Merged ``(obs_key, next_obs_key)`` arrays (shape (N,), object) for ``batch``.

    Per rollout group, every distinct key that occurs as an ``obs_key`` or a ``next_obs_key`` is
    clustered by :func:`leader_clusters` on the Jaccard similarity of its :func:`shingles`; keys are
    visited by decreasing number of visits as ``obs_key`` (ties broken by the text, so the result
    does not depend on the row order; keys seen only as a next observation come last). Each key is
    replaced by its leader's key. Identical keys always stay together; keys of different groups are
    never merged.
    """
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1]; got {threshold}")
    n_rows = len(batch)
    obs_out = batch.obs_key.copy()
    next_out = batch.next_obs_key.copy()
    if n_rows == 0:
        return obs_out, next_out
    groups = batch.group_index
    order_rows = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order_rows], np.arange(batch.n_groups + 1))
    shingle_cache: dict[Hashable, frozenset] = {}
    for g in range(batch.n_groups):
        rows = order_rows[bounds[g] : bounds[g + 1]]
        keys = np.concatenate([batch.obs_key[rows], batch.next_obs_key[rows]])
        codes, uniques = factorize(keys)
        visits = np.bincount(codes[: len(rows)], minlength=len(uniques))
        text_rank = np.argsort(np.argsort(np.asarray([str(k) for k in uniques], dtype=object)))
        order = np.lexsort((text_rank, -visits))  # most visited first, ties by text: independent of row order
        sets = [shingle_cache.setdefault(k, shingles(k, n, bucket_numbers)) for k in uniques]
        labels = leader_clusters(jaccard_matrix(sets), order, threshold)
        leader_key = np.empty(len(uniques), dtype=object)
        leader_key[:] = [uniques[j] for j in labels]
        merged = leader_key[codes]
        obs_out[rows] = merged[: len(rows)]
        next_out[rows] = merged[len(rows) :]
    return obs_out, next_out


def near_duplicate_batch(
    batch: StepBatch, threshold: float = 0.8, n: int = 2, bucket_numbers: bool = False
) -> StepBatch:
    """A copy of ``batch`` whose ``obs_key``/``next_obs_key`` are merged by :func:`near_duplicate_keys`.

    Everything downstream (``anchor_index``, :func:`gagpo.grouped_value_proxy`,
    :func:`gagpo.gigpo_advantages`, ...) then works on the merged anchor groups unchanged.
    """
    obs_key, next_obs_key = near_duplicate_keys(batch, threshold, n, bucket_numbers)
    return StepBatch(
        group_id=batch.group_id, traj_id=batch.traj_id, step=batch.step, obs_key=obs_key,
        next_obs_key=next_obs_key, reward=batch.reward, terminated=batch.terminated, truncated=batch.truncated,
    )


__all__ = ["bucket_number", "shingles", "jaccard_matrix", "leader_clusters", "near_duplicate_keys", "near_duplicate_batch"]
