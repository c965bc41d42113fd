r"""Near-duplicate anchor grouping: treat almost-identical observations of a rollout group as one state.

GiGPO and GAGPO group the visits of a rollout group by *exact* observation text (the anchor key).
With long or noisy observations (a step counter, a timestamp, a re-ordered list) two visits to what
is morally the same situation get different keys, every anchor group becomes a singleton, and the
step-level signal disappears. This module offers the simplest remedy: merge keys whose texts are
similar enough, then hand the estimators a batch whose keys are the merged ones.

Similarity. Each text becomes the set of its word n-grams (*shingles*; :func:`shingles`, tokens
from :func:`gagpo.text.tokenize`), optionally with every number replaced by a coarse bucket
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
from .text import tokenize

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
    """The set of word ``n``-grams of ``text`` (tokens from :func:`gagpo.text.tokenize`).

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


class JaccardIndex:
    r"""Exact Jaccard similarities of a list of sets, computed a block of rows at a time.

    :func:`jaccard_matrix` builds all :math:`U^2` similarities at once — 800 MB for 10,000 distinct
    observations, and a dense :math:`U \times V` incidence matrix over the whole shingle vocabulary on top.
    This index holds only the sparse incidence and answers :meth:`rows`: the similarities of some
    items with all :math:`U`, so the memory of a clustering is one block of rows, not the matrix.

    Intersections :math:`|S_u \cap S_w|` are counted in two parts that add up exactly (integer
    counts in floating point): shingles shared by many sets ("the key", "steps north") form a small
    dense 0/1 matrix whose products a BLAS matrix multiply counts; every other shingle contributes
    the pairs of sets of its (short) posting list, counted with ``np.bincount``. The similarities
    are then :math:`|S_u \cap S_w| / (|S_u| + |S_w| - |S_u \cap S_w|)`, the same floating-point
    operations as :func:`jaccard_matrix`, so the two agree bit for bit.
    """

    def __init__(self, sets: Sequence[frozenset], dense_fraction: float = 1 / 32):
        self.n = u = len(sets)
        lengths = np.asarray([len(x) for x in sets], dtype=np.int64)
        codes, vocabulary = factorize([x for s in sets for x in s])
        owner = np.repeat(np.arange(u), lengths)
        self.sizes = lengths.astype(np.float64)
        df = np.bincount(codes, minlength=len(vocabulary))
        frequent = df > max(1.0, dense_fraction * u)  # shared by more than 1/32 of the sets: counted by BLAS
        dense_col = np.cumsum(frequent) - 1
        self.dense = np.zeros((u, int(frequent.sum())), dtype=np.float32)  # exact for counts < 2**24
        is_dense = frequent[codes]
        self.dense[owner[is_dense], dense_col[codes[is_dense]]] = 1.0
        # the other shingles: per set, its shingle codes; per shingle, the sets holding it (posting list)
        r_owner, r_code = owner[~is_dense], codes[~is_dense]  # sorted by owner
        self.set_start = np.searchsorted(r_owner, np.arange(u + 1))
        self.set_codes = r_code
        by_code = np.argsort(r_code, kind="stable")
        self.posting = r_owner[by_code]
        self.post_start = np.searchsorted(r_code[by_code], np.arange(len(vocabulary) + 1))

    def intersections(self, items: np.ndarray) -> np.ndarray:
        r""":math:`|S_i \cap S_w|` for every ``i`` in ``items`` and every set ``w``, shape ``(len(items), U)``."""
        items = np.asarray(items, dtype=np.int64)
        inter = (self.dense[items] @ self.dense.T).astype(np.float64)
        # sparse part: each (item k, shingle c) incidence meets every set of c's posting list
        first, count = self.set_start[items], self.set_start[items + 1] - self.set_start[items]
        k = np.repeat(np.arange(len(items)), count)
        c = self.set_codes[_ragged_arange(first, count)]
        post_first, post_count = self.post_start[c], self.post_start[c + 1] - self.post_start[c]
        partner = self.posting[_ragged_arange(post_first, post_count)]
        flat = np.repeat(k, post_count) * self.n + partner
        inter += np.bincount(flat, minlength=inter.size).reshape(inter.shape)
        return inter

    def rows(self, items: np.ndarray) -> np.ndarray:
        """Jaccard similarities of each of ``items`` with every set, shape ``(len(items), U)``."""
        items = np.asarray(items, dtype=np.int64)
        inter = self.intersections(items)
        union = self.sizes[items][:, None] + self.sizes[None, :] - inter
        return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)


def _ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without a Python loop."""
    ends = np.cumsum(counts)
    return np.repeat(starts - ends + counts, counts) + np.arange(int(ends[-1]) if len(ends) else 0)


def jaccard_matrix(sets: Sequence[frozenset]) -> np.ndarray:
    r"""All pairwise Jaccard similarities of ``sets``, shape ``(U, U)``, symmetric with ones on the diagonal.

    With the incidence matrix :math:`M_{uv} = [v \in S_u]`, the intersections are :math:`M M^\top`
    and the unions :math:`|S_u| + |S_w| - |S_u \cap S_w|`. Two empty sets have similarity 1; an
    empty set and a non-empty one 0. Memory grows as :math:`U^2`: for many sets use
    :class:`JaccardIndex`, which computes the same numbers a block of rows at a time.
    """
    u = len(sets)
    if u == 0:
        return np.zeros((0, 0))
    return JaccardIndex(sets).rows(np.arange(u))


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
    return _leader_clusters(lambda items: similarity[items], u, order, threshold, block=max(u, 1))


def _leader_clusters(similarity_rows, u: int, order: Sequence[int], threshold: float, block: int) -> np.ndarray:
    """:func:`leader_clusters` with the similarity rows asked for ``block`` visited items at a time
    (``similarity_rows(items)`` has shape ``(len(items), U)``); rows of items already claimed when
    their block comes up are never computed — they cannot lead."""
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(u)):
        raise ValueError("order must be a permutation of 0..U-1")
    labels = np.full(u, -1, dtype=np.int64)
    for start in range(0, u, block):
        candidates = order[start : start + block]
        candidates = candidates[labels[candidates] < 0]
        if not len(candidates):
            continue
        similarity = similarity_rows(candidates)
        for row, i in zip(similarity, candidates):
            if labels[i] >= 0:
                continue
            claim = (labels < 0) & (row >= threshold)
            claim[i] = True
            labels[claim] = i
    return labels


def jaccard_leader_clusters(sets: Sequence[frozenset], order: Sequence[int], threshold: float,
                            block_bytes: int = 16 * 2**20) -> np.ndarray:
    """``leader_clusters(jaccard_matrix(sets), order, threshold)`` — the same labels — in memory
    linear in the number of sets: the similarities come from a :class:`JaccardIndex`, a block of
    rows (at most ``block_bytes`` of float64) at a time."""
    u = len(sets)
    block = max(1, min(u, block_bytes // (8 * max(u, 1))))
    index = JaccardIndex(sets)
    return _leader_clusters(index.rows, u, order, threshold, block)


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
        for k in uniques:
            if k not in shingle_cache:
                shingle_cache[k] = shingles(k, n, bucket_numbers)
        labels = jaccard_leader_clusters([shingle_cache[k] for k in uniques], order, threshold)
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


__all__ = ["bucket_number", "shingles", "JaccardIndex", "jaccard_matrix", "leader_clusters", "jaccard_leader_clusters",
           "near_duplicate_keys", "near_duplicate_batch"]
