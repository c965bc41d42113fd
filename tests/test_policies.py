"""Tests for gagpo.policies: the logits protocol, the pure helpers, and that each policy can learn."""

import math

import pytest
import torch

from gagpo.policies import (
    POLICY_KINDS,
    HashedNgramFeaturiser,
    TabularSoftmaxPolicy,
    TabularValue,
    TextPolicy,
    TextValue,
    action_log_probs,
    text_features,
    entropy,
    greedy_actions,
    kl_divergence,
    make_policy,
    make_value,
    sample_actions,
    stable_hash,
    tokenize,
)

NEG_INF = float("-inf")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: extra intra-op threads only add synchronisation, and on a busy machine
    their spin-waits made the learning tests ~100x slower. Restored after the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


OBSERVATIONS = [
    "You are in a grid. The key is 2 steps north.",
    "You are in the kitchen. You see a fridge 1.",
    "The door is 1 step west. Walls: north.",
]
ADMISSIBLE = [
    ["go north", "go south", "go east"],
    ["open fridge 1"],
    ["go north", "go west", "pick up key", "look", "wait"],
]


def make(kind, **kwargs):
    """A policy whose initial logits are not all equal, so that comparing two of them means something."""
    if kind == "tabular":
        kwargs.setdefault("init_scale", 1.0)
    return make_policy(kind, **kwargs)


# --------------------------------------------------------------------------------------------------
# The logits protocol, for both kinds.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_logits_shape_padding_and_normalisation(kind):
    logits = make(kind, seed=0).logits(OBSERVATIONS, ADMISSIBLE)
    assert logits.shape == (3, 5)
    valid = torch.tensor([[len(a) > j for j in range(5)] for a in ADMISSIBLE])
    assert torch.isfinite(logits[valid]).all()
    assert torch.isneginf(logits[~valid]).all()
    probs = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert (probs[~valid] == 0).all()


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_logits_are_differentiable(kind):
    policy = make(kind, seed=0)
    logits = policy.logits(OBSERVATIONS, ADMISSIBLE)
    action_log_probs(logits, torch.tensor([2, 0, 4])).sum().backward()
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_logits_of_a_row_do_not_depend_on_the_other_rows(kind):
    policy = make(kind, seed=0)
    alone = policy.logits(OBSERVATIONS[2:], ADMISSIBLE[2:])[0]
    reordered = policy.logits(OBSERVATIONS[::-1] * 2, ADMISSIBLE[::-1] * 2)
    for row in (0, 3):
        torch.testing.assert_close(reordered[row], alone)
    # A row's padding depends on the batch, never its valid logits.
    torch.testing.assert_close(reordered[1, :1], policy.logits(OBSERVATIONS[1:2], ADMISSIBLE[1:2])[0])


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_seeded_construction_is_deterministic_and_leaves_global_rng_alone(kind):
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = make(kind, seed=0), make(kind, seed=0), make(kind, seed=1)
    assert torch.rand(1) == expected_draw  # seeded construction did not consume the global RNG
    la, lb, lc = (p.logits(OBSERVATIONS, ADMISSIBLE) for p in (a, b, c))
    assert torch.equal(la, lb)
    assert not torch.equal(la, lc)
    torch.manual_seed(7)
    d = make(kind)
    torch.manual_seed(7)
    e = make(kind)
    assert torch.equal(d.logits(OBSERVATIONS, ADMISSIBLE), e.logits(OBSERVATIONS, ADMISSIBLE))


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_bad_inputs_raise(kind):
    policy = make(kind, seed=0)
    with pytest.raises(ValueError, match="2 observations but 1"):
        policy.logits(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="admissible\\[1\\] is empty"):
        policy.logits(["a", "b"], [["x"], []])
    with pytest.raises(TypeError, match="single string"):
        policy.logits(["a"], ["go north"])
    with pytest.raises(TypeError, match="single string"):
        policy.logits("a", [["x"]])


def test_make_policy_and_make_value_reject_unknown_kinds():
    assert isinstance(make_policy("tabular"), TabularSoftmaxPolicy)
    assert isinstance(make_policy("text", hidden=8), TextPolicy)
    assert isinstance(make_value("tabular"), TabularValue)
    assert isinstance(make_value("text", hidden=8), TextValue)
    message = "unknown policy kind 'lstm'; expected one of ['tabular', 'text']"
    with pytest.raises(ValueError) as info:
        make_policy("lstm")
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        make_value("lstm")
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------------
# The pure helpers on logits.
# --------------------------------------------------------------------------------------------------

LOGITS = torch.tensor(
    [
        [0.0, math.log(2.0), 0.0, NEG_INF],
        [1.5, NEG_INF, NEG_INF, NEG_INF],
        [0.3, -1.2, 2.0, 0.1],
    ]
)


def test_padded_actions_are_never_sampled_or_chosen():
    logits = LOGITS.repeat(2000, 1)
    actions = sample_actions(logits, torch.Generator().manual_seed(0))
    assert actions.shape == (6000,) and actions.dtype == torch.long
    assert torch.isfinite(logits.gather(1, actions[:, None])).all()
    assert (actions[1::3] == 0).all()
    assert greedy_actions(LOGITS).tolist() == [1, 0, 2]


def test_sample_actions_is_deterministic_for_a_seeded_generator():
    logits = LOGITS.repeat(100, 1)
    first = sample_actions(logits, torch.Generator().manual_seed(42))
    again = sample_actions(logits, torch.Generator().manual_seed(42))
    other = sample_actions(logits, torch.Generator().manual_seed(43))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_sample_frequencies_match_softmax():
    n = 20_000
    row = torch.tensor([0.3, -1.2, 2.0, 0.1, NEG_INF])
    actions = sample_actions(row.repeat(n, 1), torch.Generator().manual_seed(0))
    counts = torch.bincount(actions, minlength=5).double()
    expected = n * torch.softmax(row.double(), dim=0)
    assert counts[4] == 0
    chi2 = ((counts[:4] - expected[:4]) ** 2 / expected[:4]).sum().item()
    assert chi2 < 16.3  # chi-square with 3 degrees of freedom: P(chi2 > 16.3) = 0.001


def test_action_log_probs_match_a_loop():
    actions = torch.tensor([1, 0, 3])
    got = action_log_probs(LOGITS, actions)
    for i, a in enumerate(actions.tolist()):
        valid = [x for x in LOGITS[i].tolist() if x != NEG_INF]
        log_z = math.log(sum(math.exp(x) for x in valid))
        assert got[i].item() == pytest.approx(LOGITS[i, a].item() - log_z, abs=1e-6)
    assert got[1].item() == pytest.approx(0.0, abs=1e-7)  # the only valid action


def test_entropy_matches_hand_computation_with_padding():
    got = entropy(LOGITS)
    assert torch.isfinite(got).all()
    # Row 0: probabilities 1/4, 1/2, 1/4.
    assert got[0].item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.5)), abs=1e-6)
    assert got[1].item() == pytest.approx(0.0, abs=1e-7)
    z = sum(math.exp(x) for x in LOGITS[2].tolist())
    p = [math.exp(x) / z for x in LOGITS[2].tolist()]
    assert got[2].item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_entropy_of_uniform_over_k_valid_actions_is_log_k(k):
    logits = torch.full((1, 8), NEG_INF)
    logits[0, :k] = 0.25
    assert entropy(logits).item() == pytest.approx(math.log(k), abs=1e-6)


def test_entropy_gradient_is_finite_with_padding():
    logits = LOGITS.clone().requires_grad_(True)
    entropy(logits).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[torch.isneginf(LOGITS)] == 0).all()
    assert logits.grad[2].abs().sum() > 0


def test_kl_divergence_matches_hand_computation_with_padding():
    """Exact KL(p || q) per row over the valid actions; 0 for equal rows and for a one-action row; >= 0; padding
    must agree."""
    other = torch.tensor([[0.0, 0.0, 0.0, NEG_INF], [5.0, NEG_INF, NEG_INF, NEG_INF], [1.0, 0.0, -1.0, 0.5]])
    got = kl_divergence(LOGITS, other)
    for i in range(3):
        valid = [j for j in range(4) if LOGITS[i, j].item() != NEG_INF]
        zp = sum(math.exp(LOGITS[i, j].item()) for j in valid)
        zq = sum(math.exp(other[i, j].item()) for j in valid)
        p = {j: math.exp(LOGITS[i, j].item()) / zp for j in valid}
        q = {j: math.exp(other[i, j].item()) / zq for j in valid}
        assert got[i].item() == pytest.approx(sum(p[j] * math.log(p[j] / q[j]) for j in valid), abs=1e-6)
    assert got[0].item() > 0 and got[1].item() == 0.0
    assert torch.equal(kl_divergence(LOGITS, LOGITS.clone()), torch.zeros(3))
    with pytest.raises(ValueError, match="same entries"):
        kl_divergence(LOGITS, torch.zeros_like(LOGITS))


# --------------------------------------------------------------------------------------------------
# Hashing and features.
# --------------------------------------------------------------------------------------------------


def test_stable_hash_and_tokenize():
    # Fixed value: a salted hash (Python's hash) would change between processes.
    assert stable_hash("go north") == stable_hash("go north") == 6803764030587995088
    assert stable_hash("go north") != stable_hash("go south")
    assert tokenize("The key is 12 steps North. Walls: east") == [
        "the", "key", "is", "12", "steps", "north", "walls", "east",
    ]


def test_featuriser_bags_line_up_with_per_string_ids():
    featuriser = HashedNgramFeaturiser(n_features=64, ngram=2)
    texts = ["go north", "", "go north go", "look"]
    ids, offsets = featuriser.bags(texts)
    assert len(featuriser.ids("go north")) == 3  # go, north, "go north"
    assert len(featuriser.ids("go north go")) == 5  # go, north, go, "go north", "north go"
    assert len(featuriser.ids("")) == 0
    assert offsets.tolist() == [0, 3, 3, 8]
    assert ids.tolist() == [i for t in texts for i in featuriser.ids(t)]
    assert all(0 <= i < 64 for i in ids.tolist())
    empty_ids, empty_offsets = featuriser.bags(["", "?!"])
    assert empty_ids.numel() == 0 and empty_offsets.tolist() == [0, 0]


@pytest.mark.parametrize("sentence_pairs", [False, True])
def test_featuriser_grams_are_the_features_that_ids_hashes(sentence_pairs):
    featuriser = HashedNgramFeaturiser(n_features=64, ngram=2, sentence_pairs=sentence_pairs)
    text = "The goal is 2 steps north. Walls: east"
    grams = featuriser.grams(text)
    assert [stable_hash(g) % 64 for g in grams] == list(featuriser.ids(text))
    assert grams[:3] == ["1:the", "1:goal", "1:is"] and "2:north walls" in grams
    assert ("p:goal|north" in grams) == sentence_pairs
    assert "p:east|walls" not in grams  # a colon ends a sentence: "walls" and "east" are in different ones


def dense_scores(policy: TextPolicy, bag_ids: list[int], commands: list[str]) -> torch.Tensor:
    """f(o, a) from the dense count vectors: h = W2 tanh(W1 x(o) + b1) + b2, f = <h, E x(a)> + w . x(a)."""
    n = policy.featuriser.n_features
    x = torch.zeros(n).index_add(0, torch.tensor(bag_ids, dtype=torch.long), torch.ones(len(bag_ids)))
    enc = policy.encoder
    h = enc.out(torch.tanh(enc.bag.weight.T @ x + enc.bias))
    scores = []
    for command in commands:
        xa = torch.zeros(n).index_add(0, torch.tensor(list(policy.featuriser.ids(command)), dtype=torch.long),
                                      torch.ones(len(policy.featuriser.ids(command))))
        scores.append(h @ (policy.action_embedding.weight.T @ xa) + policy.action_bias.weight[:, 0] @ xa)
    return torch.stack(scores)


@pytest.mark.parametrize("n_features", [16, 2**12])  # 16 buckets: many collisions
def test_text_features_scores_and_leave_one_out_effects_match_a_dense_computation(n_features):
    policy = TextPolicy(hidden=16, n_features=n_features, seed=0)
    with torch.no_grad():  # give the commands' embeddings and biases weight, so that every part is non-trivial
        generator = torch.Generator().manual_seed(1)
        policy.action_embedding.weight.copy_(torch.randn(policy.action_embedding.weight.shape, generator=generator))
        policy.action_bias.weight.copy_(torch.randn(policy.action_bias.weight.shape, generator=generator))
    obs, commands = OBSERVATIONS[2], ADMISSIBLE[2]
    view = text_features(policy, obs, commands)
    occurrences = policy.featuriser.grams(obs)
    ids = list(policy.featuriser.ids(obs))
    assert view.grams == list(dict.fromkeys(occurrences)) and sum(view.counts) == len(ids)
    assert view.counts == [occurrences.count(g) for g in view.grams]
    assert view.buckets == [stable_hash(g) % n_features for g in view.grams] and view.n_features == n_features
    with torch.no_grad():
        assert torch.allclose(view.scores, policy.logits([obs], [commands])[0])
        assert torch.allclose(view.interaction + view.bias, view.scores)
        assert torch.allclose(view.probs, torch.softmax(view.scores, -1)) and view.commands == commands
        full = dense_scores(policy, ids, commands)
        assert torch.allclose(full, view.scores, atol=1e-5)
        for g, gram in enumerate(view.grams):
            without = dense_scores(policy, [i for i, o in zip(ids, occurrences) if o != gram], commands)
            assert torch.allclose(view.effects[g], full - without, atol=1e-5), gram
    assert view.effects.shape == (len(view.grams), len(commands)) and view.effects.abs().max() > 0.01
    if n_features == 16:
        assert len(set(view.buckets)) < len(view.grams)  # collisions: a removed feature leaves its bucket-mates
    with pytest.raises(TypeError, match="TextPolicy"):
        text_features(TabularSoftmaxPolicy(), obs, commands)


# --------------------------------------------------------------------------------------------------
# Tabular policy and value.
# --------------------------------------------------------------------------------------------------


def test_tabular_index_is_the_stable_hash_of_the_pair():
    policy = TabularSoftmaxPolicy(n_buckets=2**16)
    obs = "The key is 2 steps north."
    assert policy.index(obs, "go north") == stable_hash(f"{obs}\x1fgo north") % 2**16
    assert TabularValue(n_buckets=2**10).index(obs) == stable_hash(obs) % 2**10


def test_tabular_pairs_share_one_parameter_across_batches():
    policy = TabularSoftmaxPolicy(n_buckets=2**16)
    obs = "The key is 2 steps north."
    first = policy.logits([obs, "other"], [["go north", "go east"], ["go north"]])
    first[0, 0].backward()  # d logit / d theta is one-hot on the pair's slot
    slot = policy.index(obs, "go north")
    assert policy.table.grad.nonzero().flatten().tolist() == [slot]
    with torch.no_grad():
        policy.table[slot] += 3.0
    # Same pair, different batch, row and column: same parameter.
    second = policy.logits(["x", obs], [["look"], ["wait", "look", "go north"]])
    assert second[1, 2].item() == pytest.approx(3.0)
    assert second[1, :2].tolist() == [0.0, 0.0]
    # The same action text in another observation is another parameter.
    assert first[1, 0].item() == 0.0 and policy.logits(["other"], [["go north"]])[0, 0].item() == 0.0


def test_tabular_reinforce_learns_a_bandit():
    policy = TabularSoftmaxPolicy(n_buckets=1024)
    optimiser = torch.optim.SGD(policy.parameters(), lr=1.0)
    generator = torch.Generator().manual_seed(0)
    observations, admissible = ["bandit"] * 64, [["pull 0", "pull 1", "pull 2"]] * 64
    for _ in range(30):
        logits = policy.logits(observations, admissible)
        actions = sample_actions(logits, generator)
        rewards = (actions == 2).float()
        advantages = rewards - rewards.mean()
        loss = -(advantages * action_log_probs(logits, actions)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    probs = torch.softmax(policy.logits(["bandit"], admissible[:1]), dim=-1)[0]
    assert probs[2].item() > 0.9


def test_tabular_value_lookup_and_fit():
    value = TabularValue(n_buckets=256)
    observations = ["a", "b", "a", "c"]
    targets = torch.tensor([1.0, -2.0, 1.0, 0.5])
    assert value.values(observations).shape == (4,)
    optimiser = torch.optim.SGD(value.parameters(), lr=0.5)
    for _ in range(50):
        loss = (value(observations) - targets).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.testing.assert_close(value.values(["c", "a", "b"]), torch.tensor([0.5, 1.0, -2.0]))


# --------------------------------------------------------------------------------------------------
# Text policy and value: learning that generalises through shared words.
# --------------------------------------------------------------------------------------------------

DIRECTIONS = ["north", "south", "east", "west"]


def direction_task(distances, objects=("key", "door")):
    """Observations that name the way to an object and a wall; the right command goes to the object.

    Both the object's direction and the wall's direction appear as words, so the policy has to use
    the n-gram context ("steps north" vs "walls: north"), not the mere presence of a direction word.
    """
    observations, admissible, targets = [], [], []
    for d in distances:
        for obj in objects:
            for k, direction in enumerate(DIRECTIONS):
                wall = DIRECTIONS[(k + 1 + d % 3) % 4]  # never the object's direction
                unit = "step" if d == 1 else "steps"
                observations.append(f"The {obj} is {d} {unit} {direction}. Walls: {wall}.")
                # Rotate the command list so the column of the right command varies.
                commands = [f"go {x}" for x in DIRECTIONS[k:] + DIRECTIONS[:k]][::-1]
                if d % 2:
                    commands.append("wait")
                admissible.append(commands)
                targets.append(commands.index(f"go {direction}"))
    return observations, admissible, torch.tensor(targets)


def test_text_policy_learns_directions_and_generalises_to_unseen_distances():
    policy = TextPolicy(hidden=32, seed=0)
    optimiser = torch.optim.Adam(policy.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    observations, admissible, targets = direction_task(distances=[1, 2, 3])
    before = direction_accuracy(policy, *direction_task(distances=[5, 7, 9], objects=("goal",)))
    for _ in range(100):  # REINFORCE on a contextual bandit, reward 1 for the right direction
        logits = policy.logits(observations, admissible)
        actions = sample_actions(logits, generator)
        rewards = (actions == targets).float()
        loss = -((rewards - rewards.mean()) * action_log_probs(logits, actions)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    held_out = direction_task(distances=[5, 7, 9], objects=("goal",))
    assert not set(held_out[0]) & set(observations)
    assert before < 0.5
    assert direction_accuracy(policy, observations, admissible, targets) > 0.9
    assert direction_accuracy(policy, *held_out) > 0.8


def direction_accuracy(policy, observations, admissible, targets):
    """Mean probability of the right command."""
    with torch.no_grad():
        probs = torch.softmax(policy.logits(observations, admissible), dim=-1)
    return probs.gather(1, targets[:, None]).mean().item()


def test_text_value_regression_reduces_mse():
    # Toy values: discounted distance to the key, a constant for the door.
    observations, targets = [], []
    for obj in ("key", "door"):
        for d in range(1, 6):
            for direction in DIRECTIONS:
                observations.append(f"The {obj} is {d} steps {direction}.")
                targets.append(0.9**d if obj == "key" else -0.5)
    targets = torch.tensor(targets)
    value = TextValue(hidden=32, seed=0)
    optimiser = torch.optim.Adam(value.parameters(), lr=1e-2)
    mse = []
    for _ in range(150):
        loss = (value.values(observations) - targets).pow(2).mean()
        mse.append(loss.item())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert value(observations).shape == (len(observations),)
    assert mse[-1] < 0.05 * mse[0]
    assert mse[-1] < 0.01
