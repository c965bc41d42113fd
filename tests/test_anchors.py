"""Near-duplicate anchor grouping (gagpo.anchors): similarity, clustering, merged batches, trainer hook."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from gagpo import StepBatch, gagpo_advantages, gigpo_advantages
from gagpo.anchors import (
    bucket_number,
    jaccard_matrix,
    leader_clusters,
    near_duplicate_batch,
    near_duplicate_keys,
    shingles,
)
from gagpo.config import TrainConfig
from gagpo.trainer import Trainer

NORTH2 = "The key is 2 steps north. The door is 3 steps east."
NORTH3 = "The key is 3 steps north. The door is 3 steps east."   # one number differs from NORTH2
SOUTH9 = "The goal is 9 steps south. Walls: none. Traps: west."  # unrelated


def batch_from_trajectories(groups: list[list[list[str]]], reward_last: dict[tuple[int, int], float] | None = None) -> StepBatch:
    """groups[g][i] = the observation texts of trajectory i of group g (next key = the following text,
    a terminal "END" after the last one); reward 1 on the last step where reward_last says so."""
    rows = []
    traj = 0
    for g, trajs in enumerate(groups):
        for i, obs in enumerate(trajs):
            for t, o in enumerate(obs):
                last = t == len(obs) - 1
                rows.append(dict(group_id=g, traj_id=traj, step=t, obs_key=o, next_obs_key="END" if last else obs[t + 1],
                                 reward=(reward_last or {}).get((g, i), 0.0) if last else 0.0, terminated=last, truncated=False))
            traj += 1
    return StepBatch.from_rows(rows)


def naive_jaccard(a: frozenset, b: frozenset) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


# ---------------------------------------------------------------------- similarity
def test_shingles_are_word_bigrams_and_numbers_can_be_bucketed():
    assert shingles("The key is 2 steps north.") == {"the key", "key is", "is 2", "2 steps", "steps north"}
    assert shingles("Look", n=2) == {"look"}
    assert shingles("...") == frozenset()
    assert shingles("key 2", n=1) == {"key", "2"}
    assert shingles(NORTH2, bucket_numbers=True) == shingles(NORTH3, bucket_numbers=True)
    assert shingles(NORTH2) != shingles(NORTH3)
    assert [bucket_number(t) for t in ("0", "1", "2", "3", "4", "7", "8", "120", "north")] == ["0", "1", "2-3", "2-3", "4-7", "4-7", "8+", "8+", "north"]
    with pytest.raises(ValueError, match="n must be"):
        shingles("a b", n=0)


def test_jaccard_matrix_matches_the_definition():
    sets = [frozenset("abc"), frozenset("abd"), frozenset("xyz"), frozenset(), frozenset()]
    J = jaccard_matrix(sets)
    # by hand: |abc ∩ abd| = 2, |abc ∪ abd| = 4
    assert J[0, 1] == pytest.approx(0.5)
    assert J[0, 2] == 0.0 and J[3, 4] == 1.0 and J[0, 3] == 0.0
    for i, j in itertools.product(range(len(sets)), repeat=2):
        assert J[i, j] == pytest.approx(naive_jaccard(sets[i], sets[j]))
    texts = [NORTH2, NORTH3, SOUTH9]
    J = jaccard_matrix([shingles(t) for t in texts])
    assert np.allclose(J, J.T) and np.allclose(np.diag(J), 1.0)
    assert J[0, 1] > 0.6 > J[0, 2]


# ---------------------------------------------------------------------- clustering
def test_leader_clustering_does_not_chain():
    # a~b and b~c are similar, a and c are not: single linkage would merge all three
    S = np.array([[1.0, 0.8, 0.5], [0.8, 1.0, 0.8], [0.5, 0.8, 1.0]])
    assert leader_clusters(S, [0, 1, 2], 0.7).tolist() == [0, 0, 2]
    assert leader_clusters(S, [1, 0, 2], 0.7).tolist() == [1, 1, 1]  # b leads: both are within 0.7 of b
    assert leader_clusters(S, [0, 1, 2], 0.9).tolist() == [0, 1, 2]
    assert leader_clusters(S, [2, 1, 0], 0.0).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="permutation"):
        leader_clusters(S, [0, 0, 1], 0.5)


def test_every_member_is_within_threshold_of_its_leader():
    rng = np.random.default_rng(0)
    sets = [frozenset(rng.choice(12, size=rng.integers(1, 8), replace=False).tolist()) for _ in range(40)]
    J = jaccard_matrix(sets)
    for thr in (0.3, 0.5, 0.8):
        labels = leader_clusters(J, rng.permutation(40), thr)
        assert np.all(J[labels, np.arange(40)] >= thr)
        assert np.all(labels[labels] == labels)  # a leader leads itself


# ---------------------------------------------------------------------- merged batches
def test_near_duplicates_merge_within_a_group_only():
    b = batch_from_trajectories([[[NORTH2, SOUTH9], [NORTH3]], [[NORTH3, NORTH2]]])
    assert b.n_anchors == 5  # exact: group 0 has NORTH2, SOUTH9, NORTH3; group 1 has NORTH3, NORTH2
    m = near_duplicate_batch(b, threshold=0.6)
    assert m.n_anchors == 3  # group 0: {NORTH2, NORTH3}, {SOUTH9}; group 1: {NORTH3, NORTH2}
    g0 = m.group_index == 0
    assert len(set(m.obs_key[g0])) == 2
    # the leader is the most visited key, ties broken by the text ("...is 2..." < "...is 3...")
    assert set(m.obs_key[g0]) == {NORTH2, SOUTH9} and set(m.obs_key[~g0]) == {NORTH2}
    # next keys are mapped with the same clusters: group 1's first row now points at its own anchor
    assert m.next_obs_key[~g0][0] == NORTH2 and m.next_anchor_index[~g0][0] == m.anchor_index[~g0][0]
    # a more visited key leads even when its text sorts later
    b2 = batch_from_trajectories([[[NORTH2], [NORTH3], [NORTH3]]])
    assert set(near_duplicate_batch(b2, 0.6).obs_key) == {NORTH3}
    # threshold 1: nothing distinct merges; threshold 0: one anchor per group
    assert near_duplicate_batch(b, 1.0).n_anchors == b.n_anchors
    assert near_duplicate_batch(b, 0.0).n_anchors == b.n_groups


def test_exact_duplicates_always_stay_together_and_rows_keep_their_order():
    rng = np.random.default_rng(3)
    texts = [NORTH2, NORTH3, SOUTH9, "Walls: east. Traps: none.", "The goal is 1 step west."]
    groups = [[[texts[i] for i in rng.integers(0, 5, size=rng.integers(1, 6))] for _ in range(4)] for _ in range(3)]
    b = batch_from_trajectories(groups)
    perm = rng.permutation(len(b))
    for thr in (0.0, 0.5, 0.8, 1.0):
        m = near_duplicate_batch(b, thr)
        same_exact = b.anchor_index[:, None] == b.anchor_index[None, :]
        same_merged = m.anchor_index[:, None] == m.anchor_index[None, :]
        assert np.all(same_merged[same_exact])  # merging never splits an exact anchor group
        assert not np.any(same_merged & (b.group_index[:, None] != b.group_index[None, :]))
        # the result does not depend on the row order
        mp = near_duplicate_batch(b.take(perm), thr)
        assert np.array_equal(mp.obs_key, m.obs_key[perm]) and np.array_equal(mp.next_obs_key, m.next_obs_key[perm])


def test_merging_changes_the_estimators_only_through_the_anchors():
    # two trajectories: one passes NORTH2 and wins, the other passes NORTH3 and loses
    b = batch_from_trajectories([[[NORTH2, SOUTH9], [NORTH3, SOUTH9]]], reward_last={(0, 0): 1.0})
    exact = gigpo_advantages(b, 0.9, norm="mean")
    merged_batch = near_duplicate_batch(b, 0.6)
    merged = gigpo_advantages(merged_batch, 0.9, norm="mean")
    # exact anchors: NORTH2 and NORTH3 are singletons -> step term 0 at step 0
    assert np.allclose(exact[b.step == 0], [0.5, -0.5])
    # merged: step 0 shares one anchor, so the step term adds ±0.45 (= ±(0.9 - 0)/2)
    assert np.allclose(merged[b.step == 0], [0.5 + 0.45, -0.5 - 0.45])
    # with no near duplicates (threshold 1) GAGPO is unchanged
    assert np.allclose(gagpo_advantages(near_duplicate_batch(b, 1.0), 0.9, 0.95), gagpo_advantages(b, 0.9, 0.95))
    with pytest.raises(ValueError, match="threshold"):
        near_duplicate_keys(b, 1.5)


# ---------------------------------------------------------------------- config and trainer
def test_config_validates_anchor_fields():
    with pytest.raises(ValueError, match="anchor_match"):
        TrainConfig(anchor_match="fuzzy")
    with pytest.raises(ValueError, match="anchor_threshold"):
        TrainConfig(anchor_threshold=1.5)


def test_trainer_uses_near_duplicate_anchors(tmp_path):
    from gagpo.trainer import rollout_advantages

    base = dict(env="toy_envs/OpenGrid-v0", env_kwargs={"size": 4}, algo="gagpo", iterations=1, tasks_per_iter=2,
                group_size=8, eval_every=0, progress=False, out_dir=str(tmp_path / "run"))
    from gagpo.rollout import collect

    trainer = Trainer(TrainConfig(**base))

    rollout = collect(trainer.pool, trainer.policy, [1, 2], 8, trainer.action_generator(5))
    assert 0 < rollout.success_rate < 1
    exact = rollout_advantages(TrainConfig(**base), rollout)["advantages"]
    near = rollout_advantages(TrainConfig(**base, anchor_match="near", anchor_threshold=0.7), rollout)["advantages"]
    expected = gagpo_advantages(near_duplicate_batch(rollout.batch, 0.7), 0.95, 0.95)
    assert np.allclose(near, expected)
    assert not np.allclose(near, exact)  # neighbouring cells share most bigrams: merging changes the advantages
    grpo = rollout_advantages(TrainConfig(**{**base, "algo": "grpo"}, anchor_match="near"), rollout)["advantages"]
    assert np.allclose(grpo, rollout_advantages(TrainConfig(**{**base, "algo": "grpo"}), rollout)["advantages"])
    trainer.pool.close()
    trainer.eval_pool.close()
