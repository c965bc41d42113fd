"""Small policies and critics over text observations with a variable list of admissible commands.

The toy chapters need a policy that is cheap, exact and transparent, not a language model. Every
environment step offers an observation ``obs`` (a sentence) and a short list of admissible commands
``admissible`` (e.g. ``["go north", "go east", "pick up key"]``). A policy scores each command,

    pi(a | obs) = softmax_a( f_theta(obs, a) )      over a in admissible(obs),

and a batch of N steps is one ``(N, A_max)`` logits tensor, ``A_max = max_i len(admissible[i])``,
whose padded entries are ``-inf`` so that they receive probability exactly zero.

The protocol the trainer relies on:

- ``policy.logits(observations, admissible) -> (N, A_max)`` (also ``policy(observations, admissible)``),
  differentiable with respect to the parameters;
- the pure functions ``sample_actions``, ``greedy_actions``, ``action_log_probs`` and ``entropy`` below,
  which take those logits and know nothing about text;
- ``value.values(observations) -> (N,)`` (also ``value(observations)``) for the PPO critic.

Two families, chosen with ``make_policy(kind)`` / ``make_value(kind)``:

``"tabular"``
    One free logit per (observation text, command text) pair, stored in a hashed table. Exact
    softmax policy-gradient, but it cannot generalise: an observation it has never seen gets logit 0
    for every command.
``"text"``
    Hashed bag-of-n-grams features of the observation and of each command. The observation goes
    through a two-layer MLP to ``h_obs``; each command through a linear embedding ``e_a`` and a
    linear bias ``b_a``; ``f(obs, a) = <h_obs, e_a> + b_a``. Observations that share words
    ("the key is 2 steps north", "the door is 5 steps north") share features, so what is learned
    on one carries over to the other.

All hashing is stable (BLAKE2b), never Python's per-process salted ``hash``, so a table index or a
feature id is the same in every run and every worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain

import torch
from torch import nn

from .text import tokenize  # re-exported: gagpo.policies.tokenize

__all__ = [
    "POLICY_KINDS",
    "stable_hash",
    "tokenize",
    "HashedNgramFeaturiser",
    "BagOfNgramsEncoder",
    "TabularSoftmaxPolicy",
    "TextPolicy",
    "TextFeatures",
    "text_features",
    "TabularValue",
    "TextValue",
    "make_policy",
    "make_value",
    "sample_actions",
    "greedy_actions",
    "action_log_probs",
    "entropy",
    "kl_divergence",
]

POLICY_KINDS = ("tabular", "text")
"""The valid ``kind`` strings of :func:`make_policy` and :func:`make_value`."""

_CACHE_LIMIT = 1 << 20
"""Entries kept per string cache before it is cleared (bounds memory on open-ended text)."""

_SENTENCE = re.compile(r"[.;:\n]")


# --------------------------------------------------------------------------------------------------
# Functions of logits: (N, A_max) float tensors with -inf on padded entries.
# Every row must hold at least one finite entry (every step has at least one admissible command).
# --------------------------------------------------------------------------------------------------


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.LongTensor:
    """Draw one action per row, ``a_i ~ softmax(logits_i)``.

    Args:
        logits: ``(N, A_max)``, ``-inf`` on padded entries.
        generator: a ``torch.Generator`` on the device of ``logits``; the same seed gives the same
            actions.

    Returns:
        ``(N,)`` int64 column indices into ``admissible[i]``. Padded entries have probability exactly
        zero and are never drawn. No gradient flows through sampling.
    """
    probs = torch.softmax(logits.detach(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def greedy_actions(logits: torch.Tensor) -> torch.LongTensor:
    """``argmax_a logits[i, a]`` per row, ``(N,)``; padded ``-inf`` entries never win."""
    return logits.detach().argmax(dim=-1)


def action_log_probs(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log pi(a_i | obs_i) = log_softmax(logits_i)[a_i]``, shape ``(N,)``.

    Args:
        logits: ``(N, A_max)``, ``-inf`` on padded entries.
        actions: ``(N,)`` integer column indices (must point at valid, non-padded entries, otherwise
            the result is ``-inf``).
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``H_i = -sum_a p_ia log p_ia`` over the valid actions of each row, shape ``(N,)``.

    Padded entries have ``p = 0`` and contribute ``0`` (the limit of ``p log p``), not
    ``0 * -inf = nan``; the gradient is finite too. A row with k equally likely valid actions has
    entropy ``log k``; a row with one valid action has entropy 0.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    # Zero the -inf log-probs *before* multiplying: masking the product afterwards (torch.where)
    # would still send 0 * -inf = nan back through the unselected branch in the backward pass.
    log_probs = log_probs.masked_fill(torch.isneginf(logits), 0.0)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def kl_divergence(logits: torch.Tensor, logits_ref: torch.Tensor) -> torch.Tensor:
    """Exact ``KL_i = sum_a p_ia (log p_ia - log q_ia)``, ``p = softmax(logits_i)``, ``q = softmax(logits_ref_i)``,
    over the valid actions of each row, shape ``(N,)``: ``KL(pi(.|s_i) || pi_ref(.|s_i))`` of two policies
    on the same observations and admissible lists.

    Both tensors are ``(N, A_max)`` with ``-inf`` on the same padded entries, which contribute 0 (as in
    :func:`entropy`, never ``0 * -inf = nan``). ``KL_i >= 0``, and 0 exactly when the two rows give the
    same distribution.
    """
    if logits.shape != logits_ref.shape:
        raise ValueError(f"logits_ref has shape {tuple(logits_ref.shape)}; expected {tuple(logits.shape)} like logits")
    if not bool(torch.equal(torch.isneginf(logits), torch.isneginf(logits_ref))):
        raise ValueError("logits and logits_ref must be padded (-inf) at the same entries")
    pad = torch.isneginf(logits)
    log_p = torch.log_softmax(logits, dim=-1).masked_fill(pad, 0.0)
    log_q = torch.log_softmax(logits_ref, dim=-1).masked_fill(pad, 0.0)
    return (log_p.exp().masked_fill(pad, 0.0) * (log_p - log_q)).sum(dim=-1)


# --------------------------------------------------------------------------------------------------
# Text to integer ids.
# --------------------------------------------------------------------------------------------------


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (BLAKE2b of its UTF-8 bytes)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _cached(cache: dict, key, compute):
    """``cache[key]``, computing and storing it on a miss; clears the cache when it grows too big."""
    value = cache.get(key)
    if value is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        value = cache[key] = compute(key)
    return value


def _unique(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """Distinct strings in first-seen order and, per input, its position among them."""
    position: dict[str, int] = {}
    inverse = [position.setdefault(t, len(position)) for t in texts]
    return list(position), inverse


class HashedNgramFeaturiser:
    """Maps a string to the ids of its hashed word n-grams, ``n = 1 .. ngram``.

    Feature ids are ``stable_hash(f"{n}:{gram}") % n_features``; repeated n-grams repeat their id (the
    bag counts them). ``"go north"`` with ``ngram=2`` has the grams ``go``, ``north``, ``go north``.
    Ids are cached per string, so featurising a string already seen costs one dict lookup.

    ``sentence_pairs=True`` adds every unordered pair of distinct words that occur in the same
    sentence (sentences end at ``.``, ``;``, ``:`` or a newline). A bag of n-grams cannot tell
    "The key is 2 steps north. The door is 3 steps west." from the same text with key and door
    swapped; the pairs (``key``, ``north``) and (``door``, ``west``) can.
    """

    def __init__(self, n_features: int = 2**12, ngram: int = 2, sentence_pairs: bool = False):
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        self.n_features = n_features
        self.ngram = ngram
        self.sentence_pairs = sentence_pairs
        self._ids: dict[str, array] = {}

    def ids(self, text: str) -> array:
        """The feature ids of ``text`` as an int64 ``array`` (cached); empty without letters or digits."""
        return _cached(self._ids, text, self._compute_ids)

    def grams(self, text: str) -> list[str]:
        """The features of ``text`` before hashing, in the order of :meth:`ids` (one per occurrence):
        ``"1:north"`` (a word), ``"2:go north"`` (an n-gram, ``n`` words), ``"p:goal|north"`` (a same-sentence
        pair, with ``sentence_pairs``). Feature ``k`` of the bag is ``stable_hash(grams[k]) % n_features``."""
        tokens = tokenize(text)
        grams = [
            f"{n}:{' '.join(tokens[i : i + n])}"
            for n in range(1, self.ngram + 1)
            for i in range(len(tokens) - n + 1)
        ]
        if self.sentence_pairs:
            for sentence in _SENTENCE.split(text.lower()):
                words = sorted(set(tokenize(sentence)))
                grams += [f"p:{a}|{b}" for i, a in enumerate(words) for b in words[i + 1 :]]
        return grams

    def _compute_ids(self, text: str) -> array:
        return array("q", [stable_hash(g) % self.n_features for g in self.grams(text)])

    def bags(self, texts: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, offsets)`` for ``nn.EmbeddingBag``: the concatenated ids and each bag's start."""
        id_arrays = [self.ids(t) for t in texts]
        starts = [0, *accumulate(len(a) for a in id_arrays)]
        flat = array("q")
        for a in id_arrays:  # extending a typed array is ~100x faster than torch.tensor(list)
            flat.extend(a)
        ids = torch.frombuffer(flat, dtype=torch.long) if flat else torch.zeros(0, dtype=torch.long)
        offsets = torch.tensor(starts[:-1], dtype=torch.long)
        return ids.to(device), offsets.to(device)


# --------------------------------------------------------------------------------------------------
# Shared plumbing.
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Run parameter initialisation under ``torch.manual_seed(seed)`` without touching the global RNG.

    With ``seed=None`` the global RNG is used (so ``torch.manual_seed`` before construction also makes
    it deterministic).
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_texts(observations: Sequence[str]) -> None:
    if isinstance(observations, str):
        raise TypeError("observations must be a sequence of strings, not a single string")


def _layout(observations: Sequence[str], admissible: Sequence[Sequence[str]], device):
    """Flatten the ragged ``admissible`` lists.

    Returns ``(flat_actions, rows, cols, a_max)``: the commands of all rows in order, and for each
    the ``(row, column)`` it occupies in the ``(N, A_max)`` logits tensor.
    """
    _check_texts(observations)
    if len(observations) != len(admissible):
        raise ValueError(
            f"got {len(observations)} observations but {len(admissible)} admissible lists"
        )
    counts = []
    for i, actions in enumerate(admissible):
        if isinstance(actions, str):
            raise TypeError(f"admissible[{i}] is a single string; expected a list of commands")
        if len(actions) == 0:
            raise ValueError(f"admissible[{i}] is empty; every step needs at least one command")
        counts.append(len(actions))
    flat_actions = list(chain.from_iterable(admissible))
    counts_t = torch.tensor(counts, dtype=torch.long, device=device)
    rows = torch.repeat_interleave(torch.arange(len(counts), device=device), counts_t)
    starts = torch.cumsum(counts_t, 0) - counts_t
    cols = torch.arange(len(flat_actions), device=device) - starts[rows]
    return flat_actions, rows, cols, max(counts, default=0)


def _scatter_logits(scores: torch.Tensor, rows, cols, n_rows: int, a_max: int) -> torch.Tensor:
    """Place the flat per-command ``scores`` into an ``(n_rows, a_max)`` tensor padded with ``-inf``."""
    padded = scores.new_full((n_rows, a_max), float("-inf"))
    return padded.index_put((rows, cols), scores)


# --------------------------------------------------------------------------------------------------
# Tabular.
# --------------------------------------------------------------------------------------------------


class TabularSoftmaxPolicy(nn.Module):
    """One free logit per (observation, command) pair: ``f(obs, a) = theta[h(obs, a)]``.

    ``h(obs, a) = stable_hash(f"{obs}\\x1f{a}") % n_buckets``. Distinct pairs collide with probability
    about ``1 / n_buckets``; keep ``n_buckets`` well above the number of pairs the task visits.

    Args:
        n_buckets: size of the hashed table.
        init_scale: ``theta`` starts as ``init_scale * N(0, 1)``; the default 0 gives the uniform policy.
        seed: seed for the initial table (only matters when ``init_scale > 0``).
    """

    def __init__(self, n_buckets: int = 2**16, init_scale: float = 0.0, seed: int | None = None):
        super().__init__()
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        self.n_buckets = n_buckets
        with _seeded(seed):
            self.table = nn.Parameter(init_scale * torch.randn(n_buckets))
        self._index: dict[tuple[str, str], int] = {}

    def index(self, observation: str, action: str) -> int:
        """The table slot holding the logit of ``action`` in ``observation``."""
        return _cached(self._index, (observation, action), self._compute_index)

    def _compute_index(self, pair: tuple[str, str]) -> int:
        observation, action = pair
        return stable_hash(f"{observation}\x1f{action}") % self.n_buckets

    def logits(
        self, observations: Sequence[str], admissible: Sequence[Sequence[str]]
    ) -> torch.Tensor:
        """``(N, A_max)`` logits, ``-inf`` where row ``i`` has fewer than ``A_max`` commands."""
        device = self.table.device
        _, rows, cols, a_max = _layout(observations, admissible, device)
        slots = [
            self.index(obs, action)
            for obs, actions in zip(observations, admissible)
            for action in actions
        ]
        scores = self.table[torch.tensor(slots, dtype=torch.long, device=device)]
        return _scatter_logits(scores, rows, cols, len(observations), a_max)

    forward = logits


class TabularValue(nn.Module):
    """One free value per observation text: ``V(obs) = w[stable_hash(obs) % n_buckets]``.

    Args:
        n_buckets: size of the hashed table.
        init_scale: ``w`` starts as ``init_scale * N(0, 1)``; the default 0 starts every value at 0.
        seed: seed for the initial table (only matters when ``init_scale > 0``).
    """

    def __init__(self, n_buckets: int = 2**16, init_scale: float = 0.0, seed: int | None = None):
        super().__init__()
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        self.n_buckets = n_buckets
        with _seeded(seed):
            self.table = nn.Parameter(init_scale * torch.randn(n_buckets))
        self._index: dict[str, int] = {}

    def index(self, observation: str) -> int:
        """The table slot holding the value of ``observation``."""
        return _cached(self._index, observation, self._compute_index)

    def _compute_index(self, observation: str) -> int:
        return stable_hash(observation) % self.n_buckets

    def values(self, observations: Sequence[str]) -> torch.Tensor:
        """``(N,)`` state values."""
        _check_texts(observations)
        slots = [self.index(obs) for obs in observations]
        return self.table[torch.tensor(slots, dtype=torch.long, device=self.table.device)]

    forward = values


# --------------------------------------------------------------------------------------------------
# Text features.
# --------------------------------------------------------------------------------------------------


class BagOfNgramsEncoder(nn.Module):
    """Observation encoder ``h(obs) = W2 tanh(W1 x(obs) + b1) + b2``, shape ``(N, hidden)``.

    ``x(obs)`` is the hashed bag-of-n-grams count vector of ``obs`` (length ``n_features``), never
    built densely: ``W1 x`` is an ``nn.EmbeddingBag`` sum of the columns of its n-gram ids. Repeated
    observations in a batch are encoded once. Shared by :class:`TextPolicy` and :class:`TextValue`.

    ``W1`` starts as ``N(0, 0.1^2)``, so a sentence of a few dozen n-grams gives pre-activations of
    order 1 rather than saturating the tanh.
    """

    def __init__(self, hidden: int = 64, n_features: int = 2**12, ngram: int = 2, sentence_pairs: bool = True):
        super().__init__()
        self.featuriser = HashedNgramFeaturiser(n_features, ngram, sentence_pairs)
        self.bag = nn.EmbeddingBag(n_features, hidden, mode="sum")
        nn.init.normal_(self.bag.weight, std=0.1)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, hidden)

    def forward(self, observations: Sequence[str]) -> torch.Tensor:
        _check_texts(observations)
        distinct, inverse = _unique(observations)
        device = self.bias.device
        h = self.encode(*self.featuriser.bags(distinct, device))
        return h[torch.tensor(inverse, dtype=torch.long, device=device)]

    def encode(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``h = W2 tanh(W1 x + b1) + b2`` of bags given as feature ids (``nn.EmbeddingBag``'s ``ids, offsets``:
        :meth:`HashedNgramFeaturiser.bags`, or any bags of ids, e.g. an observation's with some features left out)."""
        return self.out(torch.tanh(self.bag(ids, offsets) + self.bias))


class TextPolicy(nn.Module):
    """Bilinear policy over hashed n-gram features: ``f(obs, a) = <h(obs), E x(a)> + w . x(a)``.

    ``h`` is a :class:`BagOfNgramsEncoder` of the observation; ``E x(a)`` (a ``hidden``-vector) and
    ``w . x(a)`` (a scalar) are linear in the command's own bag of n-grams ``x(a)``. The command
    bias ``w . x(a)`` lets the policy prefer a command regardless of the observation. ``E`` starts
    small and ``w`` at zero, so the initial policy is close to uniform.

    Args:
        hidden: width of ``h`` and of the command embeddings.
        n_features: number of hashed feature buckets (shared by observations and commands).
        ngram: largest word n-gram used as a feature (2: words and adjacent word pairs).
        sentence_pairs: also use pairs of words that share a sentence (see HashedNgramFeaturiser).
        seed: seed for the initial parameters; ``None`` uses torch's global RNG.
    """

    def __init__(
        self,
        hidden: int = 64,
        n_features: int = 2**12,
        ngram: int = 2,
        sentence_pairs: bool = True,
        seed: int | None = None,
    ):
        super().__init__()
        with _seeded(seed):
            self.encoder = BagOfNgramsEncoder(hidden, n_features, ngram, sentence_pairs)
            self.action_embedding = nn.EmbeddingBag(n_features, hidden, mode="sum")
            nn.init.normal_(self.action_embedding.weight, std=0.01)
            self.action_bias = nn.EmbeddingBag(n_features, 1, mode="sum")
            nn.init.zeros_(self.action_bias.weight)

    @property
    def featuriser(self) -> HashedNgramFeaturiser:
        return self.encoder.featuriser

    def logits(
        self, observations: Sequence[str], admissible: Sequence[Sequence[str]]
    ) -> torch.Tensor:
        """``(N, A_max)`` logits, ``-inf`` where row ``i`` has fewer than ``A_max`` commands."""
        device = self.encoder.bias.device
        flat_actions, rows, cols, a_max = _layout(observations, admissible, device)
        h_obs = self.encoder(observations)  # (N, hidden)
        distinct, inverse = _unique(flat_actions)  # a batch repeats few distinct commands
        ids, offsets = self.featuriser.bags(distinct, device)
        inverse_t = torch.tensor(inverse, dtype=torch.long, device=device)
        e_action = self.action_embedding(ids, offsets)[inverse_t]  # (n_flat, hidden)
        b_action = self.action_bias(ids, offsets).squeeze(-1)[inverse_t]  # (n_flat,)
        scores = (h_obs[rows] * e_action).sum(-1) + b_action
        return _scatter_logits(scores, rows, cols, len(observations), a_max)

    forward = logits


@dataclass(frozen=True)
class TextFeatures:
    """What a :class:`TextPolicy` sees of one observation and how it scores the commands
    (:func:`text_features`). ``G`` distinct features, ``A`` commands."""

    observation: str
    commands: list[str]
    grams: list[str]  #: the distinct features, first-seen order: "1:word", "2:two words", "p:word|word"
    counts: list[int]  #: (G,) occurrences of each in the observation's bag
    buckets: list[int]  #: (G,) each one's bucket, stable_hash(gram) % n_features
    n_features: int  #: the number of buckets
    interaction: torch.Tensor  #: (A,) <h(obs), E x(a)>
    bias: torch.Tensor  #: (A,) w . x(a)
    scores: torch.Tensor  #: (A,) f(obs, a) = interaction + bias: the logits
    probs: torch.Tensor  #: (A,) softmax of the scores: pi(a | obs)
    effects: torch.Tensor  #: (G, A) f(obs, a) - f(obs without feature g, a)


def text_features(policy: TextPolicy, observation: str, commands: Sequence[str]) -> TextFeatures:
    r"""The features of ``observation`` as ``policy`` sees them, and what each does to the scores of ``commands``.

    The observation's bag holds one id per feature occurrence, :math:`x(o) = \sum_k e_{b(g_k)}` with
    the bucket :math:`b(g) = \text{stable\_hash}(g) \bmod n` (:meth:`HashedNgramFeaturiser.grams`); the commands are scored
    as in :meth:`TextPolicy.logits`,

    .. math::
        f(o, a) = \underbrace{\langle h(o), E\, x(a) \rangle}_{\text{interaction}} + \underbrace{w \cdot x(a)}_{\text{bias}},
        \qquad \pi(a \mid o) = \operatorname{softmax}_a f(o, a).

    Since :math:`h` is not linear in :math:`x(o)` (a tanh layer), a feature's share of a score is measured by
    leaving it out: ``effects[g, a]`` :math:`= f(o, a) - f(o_{-g}, a)`, where :math:`o_{-g}` is the bag without every
    occurrence of the feature :math:`g` (features that share its bucket stay). The bias does not depend on the
    observation, so it cancels in the effects. Computed without gradient.
    """
    if not isinstance(policy, TextPolicy):
        raise TypeError(f"text_features needs a TextPolicy; got {type(policy).__name__}")
    commands = list(commands)
    featuriser = policy.featuriser
    occurrences = featuriser.grams(observation)
    grams, inverse = _unique(occurrences)
    ids = list(featuriser.ids(observation))
    device = policy.encoder.bias.device
    with torch.no_grad():
        logits = policy.logits([observation], [commands])[0]
        a_ids, a_offsets = featuriser.bags(commands, device)
        e_action = policy.action_embedding(a_ids, a_offsets)  # (A, hidden)
        bias = policy.action_bias(a_ids, a_offsets).squeeze(-1)  # (A,)
        # bag 0: the whole observation; bag 1 + g: without feature g
        bags = [ids] + [[i for i, j in zip(ids, inverse) if j != g] for g in range(len(grams))]
        flat = torch.tensor([i for bag in bags for i in bag], dtype=torch.long, device=device)
        offsets = torch.tensor([0, *accumulate(len(b) for b in bags[:-1])], dtype=torch.long, device=device)
        h = policy.encoder.encode(flat, offsets)  # (1 + G, hidden)
        interaction_all = h @ e_action.T  # (1 + G, A)
    interaction = interaction_all[0]
    return TextFeatures(
        observation=observation, commands=commands, grams=grams,
        counts=[inverse.count(g) for g in range(len(grams))],
        buckets=[stable_hash(g) % featuriser.n_features for g in grams], n_features=featuriser.n_features,
        interaction=interaction, bias=bias, scores=logits, probs=torch.softmax(logits, -1),
        effects=interaction - interaction_all[1:],
    )


class TextValue(nn.Module):
    """Critic over hashed n-gram features: ``V(obs) = v . tanh(h(obs)) + c``.

    ``h`` is a :class:`BagOfNgramsEncoder` (its own parameters, same featurisation as
    :class:`TextPolicy`).

    Args:
        hidden: width of the encoder.
        n_features: number of hashed feature buckets.
        ngram: largest word n-gram used as a feature.
        sentence_pairs: also use pairs of words that share a sentence (see HashedNgramFeaturiser).
        seed: seed for the initial parameters; ``None`` uses torch's global RNG.
    """

    def __init__(
        self,
        hidden: int = 64,
        n_features: int = 2**12,
        ngram: int = 2,
        sentence_pairs: bool = True,
        seed: int | None = None,
    ):
        super().__init__()
        with _seeded(seed):
            self.encoder = BagOfNgramsEncoder(hidden, n_features, ngram, sentence_pairs)
            self.head = nn.Linear(hidden, 1)

    def values(self, observations: Sequence[str]) -> torch.Tensor:
        """``(N,)`` state values."""
        return self.head(torch.tanh(self.encoder(observations))).squeeze(-1)

    forward = values


# --------------------------------------------------------------------------------------------------
# Factories.
# --------------------------------------------------------------------------------------------------

_POLICIES = {"tabular": TabularSoftmaxPolicy, "text": TextPolicy}
_VALUES = {"tabular": TabularValue, "text": TextValue}


def _check_kind(kind: str) -> None:
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy kind {kind!r}; expected one of {list(POLICY_KINDS)}")


def make_policy(kind: str, **kwargs) -> nn.Module:
    """Build a policy: ``"tabular"`` -> :class:`TabularSoftmaxPolicy`, ``"text"`` -> :class:`TextPolicy`.

    ``kwargs`` go to the constructor unchanged.
    """
    _check_kind(kind)
    return _POLICIES[kind](**kwargs)


def make_value(kind: str, **kwargs) -> nn.Module:
    """Build a critic: ``"tabular"`` -> :class:`TabularValue`, ``"text"`` -> :class:`TextValue`.

    ``kwargs`` go to the constructor unchanged.
    """
    _check_kind(kind)
    return _VALUES[kind](**kwargs)
