r"""GAGPO in one file: group rollouts, the grouped value proxy, GAE, group normalisation and the
action-level PPO-clip loss, trained on KeyDoor — everything inline, in the order you meet it.

    python chapters/gagpo_in_one_file.py --help
    python chapters/gagpo_in_one_file.py --total-steps 200000

The library (``gagpo``) splits the same algorithm over ``rollout.py``, ``advantages.py``, ``losses.py``
and ``trainer.py``; this file uses none of it (numpy, torch, gymnasium and ``toy_envs`` only), and
``tests/test_one_file.py`` proves that its advantages and its loss equal the library's on the same batch.
What it leaves out: other estimators, checkpoints, metric files, non-finite guards, language models.

The algorithm, per iteration:
  1. pick ``tasks_per_iter`` task seeds; run ``group_size`` episodes from each (a *rollout group*);
  2. G_t = r_t + γ G_{t+1}                          discounted return-to-go within each episode;
  3. V̂(s) = mean{ G_t : group_t = g, s_t = s }      grouped value proxy: no critic network;
  4. δ_t = r_t + γ V̂(s'_t) − V̂(s_t),  A_t = δ_t + γλ A_{t+1}   GAE over the proxy;
  5. Ã_t = (A_t − mean_g A) / (std_g A + ε)         normalised over all rows of the rollout group;
  6. a few epochs of the PPO-clip loss with one importance ratio per action.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import toy_envs  # registers toy_envs/KeyDoor-v0; EVAL_SEEDS are the held-out tasks


# ------------------------------------------------------------------------------------ 0. settings
def _opt(default, help):  # noqa: A002 - argparse's word
    return field(default=default, metadata={"help": help})


@dataclass
class Args:
    """Every setting of a run; the command line is generated from these fields (defaults = gagpo's)."""

    env_id: str = _opt("toy_envs/KeyDoor-v0", "gymnasium id of a toy_envs text environment")
    seed: int = _opt(0, "seed of the initial weights, the task seeds and the sampled actions")
    total_steps: int = _opt(300_000, "stop after this many environment steps (checked after each iteration)")
    max_steps: int = _opt(0, "step limit per episode; 0 keeps the environment's registered limit (60 for KeyDoor)")
    tasks_per_iter: int = _opt(8, "rollout groups per iteration (distinct task seeds)")
    group_size: int = _opt(8, "episodes per rollout group, all from the same task seed (G)")
    gamma: float = _opt(0.95, "discount factor γ")
    lam: float = _opt(0.95, "GAE λ")
    adv_eps: float = _opt(1e-6, "ε added to the group std in the normalisation")
    hidden: int = _opt(64, "width of the policy's observation encoder")
    lr: float = _opt(1e-3, "Adam learning rate")
    update_epochs: int = _opt(4, "passes over each iteration's rows")
    minibatches: int = _opt(2, "minibatches per pass")
    clip_eps: float = _opt(0.2, "PPO clip range ε: the ratio is clipped to [1 − ε, 1 + ε]")
    entropy_coef: float = _opt(0.01, "weight c_H of the entropy bonus")
    max_grad_norm: float = _opt(1.0, "clip the gradient's global norm to this (0 disables)")
    eval_every: int = _opt(20, "evaluate (and print) every k iterations, and at the end")
    eval_episodes: int = _opt(50, "held-out tasks per evaluation (the first n of toy_envs.EVAL_SEEDS)")


def parse_args(argv=None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Args):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default, help=f.metadata["help"])
    return Args(**vars(parser.parse_args(argv)))


# ------------------------------------------------------------------------------------ 1. the policy
def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` of a str is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class TextPolicy(nn.Module):
    r"""π(a | obs) = softmax_a f(obs, a) over the admissible commands, with
        x(text) = hashed bag of words, adjacent word pairs and same-sentence word pairs,
        h(obs)  = W2 tanh(W1 x(obs) + b1) + b2,
        f(obs, a) = ⟨h(obs), E x(a)⟩ + w · x(a).
    The same words mean the same thing on every KeyDoor layout ("the key is 2 steps north"), so what is
    learned on the training tasks carries over to held-out ones. The sentence pairs (key, north) tell
    "The key is 2 steps north. The door is 3 steps west." from the same text with key and door swapped."""

    def __init__(self, hidden: int = 64, n_features: int = 4096):
        super().__init__()
        self.n_features = n_features
        self.obs_bag = nn.EmbeddingBag(n_features, hidden, mode="sum")  # W1 x(obs), without building x
        nn.init.normal_(self.obs_bag.weight, std=0.1)
        self.obs_bias = nn.Parameter(torch.zeros(hidden))               # b1
        self.obs_out = nn.Linear(hidden, hidden)                         # W2, b2
        self.act_emb = nn.EmbeddingBag(n_features, hidden, mode="sum")  # E x(a)
        nn.init.normal_(self.act_emb.weight, std=0.01)
        self.act_bias = nn.EmbeddingBag(n_features, 1, mode="sum")      # w · x(a), starts at 0: near-uniform policy
        nn.init.zeros_(self.act_bias.weight)
        self._ids: dict[str, list[int]] = {}

    def feature_ids(self, text: str) -> list[int]:
        """The hashed ids of the features of ``text`` (cached: observations repeat a lot)."""
        if text not in self._ids:
            words = re.findall(r"[a-z0-9]+", text.lower())
            grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
            for sentence in re.split(r"[.;:\n]", text.lower()):
                ws = sorted(set(re.findall(r"[a-z0-9]+", sentence)))
                grams += [f"{a}|{b}" for i, a in enumerate(ws) for b in ws[i + 1:]]
            self._ids[text] = [stable_hash(g) % self.n_features for g in grams]
        return self._ids[text]

    def bags(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, offsets)`` as ``nn.EmbeddingBag`` wants them: all feature ids and where each text starts."""
        ids = [self.feature_ids(t) for t in texts]
        offsets = np.cumsum([0] + [len(i) for i in ids[:-1]])
        return torch.tensor([j for i in ids for j in i], dtype=torch.long), torch.as_tensor(offsets, dtype=torch.long)

    def logits(self, obs: list[str], admissible: list[list[str]]) -> torch.Tensor:
        """(N, A_max) logits; -inf pads rows with fewer commands, so those get probability 0."""
        h = self.obs_out(torch.tanh(self.obs_bag(*self.bags(obs)) + self.obs_bias))      # (N, hidden)
        commands = [a for acts in admissible for a in acts]
        rows = torch.tensor([i for i, acts in enumerate(admissible) for _ in acts])
        cols = torch.tensor([j for acts in admissible for j in range(len(acts))])
        cmd_bags = self.bags(commands)
        scores = (h[rows] * self.act_emb(*cmd_bags)).sum(-1) + self.act_bias(*cmd_bags).squeeze(-1)
        out = torch.full((len(obs), max(len(a) for a in admissible)), float("-inf"))
        return out.index_put((rows, cols), scores)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = −Σ_a p_a log p_a per row; padded entries (p = 0) contribute 0, not 0 · (−inf) = nan."""
    logp = torch.log_softmax(logits, dim=-1).masked_fill(torch.isneginf(logits), 0.0)
    return -(logp.exp() * logp).sum(-1)


# ------------------------------------------------------------------------------------ 2. group rollouts
@dataclass
class Rollout:
    """One row per decision (arrays of shape (N,)), in the order they were taken, plus ``won`` per episode."""

    group_id: np.ndarray    # rollout group: every episode of a group starts from the same task seed
    traj_id: np.ndarray     # episode of the row
    step: np.ndarray        # 0-based position of the decision in its episode
    obs: list[str]          # observation text, also the anchor key (gagpo's obs_key): same situation, same text
    next_obs: list[str]
    admissible: list[list[str]]
    action: np.ndarray      # index into admissible[i]
    logp: np.ndarray        # log π_old(a | s) at collection time
    reward: np.ndarray
    terminated: np.ndarray  # the episode ended (goal or trap): no bootstrap after this row
    truncated: np.ndarray   # the step limit cut the episode after this row: bootstrap from V̂(s')
    won: np.ndarray         # (n_episodes,) reached the goal


@torch.no_grad()
def collect(envs: list[gym.Env], policy: TextPolicy, task_seeds: list[int], group_size: int,
            generator: torch.Generator, greedy: bool = False) -> Rollout:
    """``group_size`` episodes from each task seed, stepped in lockstep: one forward pass per time step
    for every episode still running. ``envs`` needs at least ``len(task_seeds) * group_size`` entries."""
    n = len(task_seeds) * group_size
    obs, admissible = [""] * n, [[] for _ in range(n)]
    for i in range(n):  # episode i belongs to group i // group_size; its whole group shares the task seed
        obs[i], info = envs[i].reset(seed=int(task_seeds[i // group_size]))
        admissible[i] = info["admissible_actions"]
    rows = []
    won, steps, running = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64), list(range(n))
    while running:
        logits = policy.logits([obs[i] for i in running], [admissible[i] for i in running])
        if greedy:
            actions = logits.argmax(-1)
        else:
            actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
        logps = torch.log_softmax(logits, -1).gather(-1, actions[:, None]).squeeze(-1)
        still = []
        for j, i in enumerate(running):
            next_obs, reward, terminated, truncated, info = envs[i].step(int(actions[j]))
            rows.append((i, steps[i], obs[i], next_obs, admissible[i], int(actions[j]), float(logps[j]), float(reward),
                         terminated, truncated and not terminated))  # a row that is both counts as terminated
            steps[i] += 1
            if terminated or truncated:
                won[i] = info["won"]
            else:
                obs[i], admissible[i] = next_obs, info["admissible_actions"]
                still.append(i)
        running = still
    traj_id, step, obs, next_obs, admissible, action, logp, reward, terminated, truncated = map(list, zip(*rows))
    traj_id = np.asarray(traj_id)
    return Rollout(group_id=traj_id // group_size, traj_id=traj_id, step=np.asarray(step), obs=obs, next_obs=next_obs,
                   admissible=admissible, action=np.asarray(action), logp=np.asarray(logp), reward=np.asarray(reward),
                   terminated=np.asarray(terminated, dtype=bool), truncated=np.asarray(truncated, dtype=bool), won=won)


# ------------------------------------------------------------------------------------ 3. advantages
def episodes(ro: Rollout) -> list[np.ndarray]:
    """Row indices of each episode in step order (rows may come in any order)."""
    order = np.lexsort((ro.step, ro.traj_id))
    traj = ro.traj_id[order]
    return np.split(order, np.flatnonzero(traj[1:] != traj[:-1]) + 1)


def discounted_returns(ro: Rollout, gamma: float) -> np.ndarray:
    """G_t = r_t + γ G_{t+1}, with G = 0 after an episode's last row (no bootstrap)."""
    returns = np.zeros(len(ro.reward))
    for rows in episodes(ro):
        g = 0.0
        for i in rows[::-1]:
            g = ro.reward[i] + gamma * g
            returns[i] = g
    return returns


def grouped_value_proxy(ro: Rollout, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """V̂(s) = mean{G_t : group_t = g, s_t = s}: the mean return-to-go of every visit to s within its
    rollout group, at this row (``values``) and at the next observation (``next_values``). The next
    value is 0 after a terminated row, and 0 when s' was never acted in by the group (e.g. where a
    truncated episode was cut and no other episode of the group went)."""
    returns = discounted_returns(ro, gamma)
    total, count = {}, {}
    for key, g in zip(zip(ro.group_id, ro.obs), returns):
        total[key] = total.get(key, 0.0) + g
        count[key] = count.get(key, 0) + 1
    v_hat = {key: total[key] / count[key] for key in total}
    values = np.array([v_hat[key] for key in zip(ro.group_id, ro.obs)])
    next_values = np.array([0.0 if term else v_hat.get(key, 0.0)
                            for key, term in zip(zip(ro.group_id, ro.next_obs), ro.terminated)])
    return values, next_values


def gae(ro: Rollout, values: np.ndarray, next_values: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """δ_t = r_t + γ (1 − terminated_t) V(s'_t) − V(s_t);  A_t = δ_t + γλ A_{t+1}, A = 0 after the last row.
    λ = 0: the one-step TD error; λ = 1: G_t − V(s_t) (+ the discounted bootstrap after a truncation)."""
    delta = ro.reward + gamma * np.where(ro.terminated, 0.0, next_values) - values
    advantages = np.zeros(len(delta))
    for rows in episodes(ro):
        a = 0.0
        for i in rows[::-1]:
            a = delta[i] + gamma * lam * a
            advantages[i] = a
    return advantages


def normalize_per_group(x: np.ndarray, group_id: np.ndarray, eps: float) -> np.ndarray:
    """(x − mean_g x) / (std_g x + ε) over all rows of each rollout group, population std (ddof = 0):
    a group whose rows all have the same advantage gets 0 everywhere."""
    _, g = np.unique(group_id, return_inverse=True)
    count = np.bincount(g)
    mean = np.bincount(g, weights=x) / count
    std = np.sqrt(np.bincount(g, weights=(x - mean[g]) ** 2) / count)
    return (x - mean[g]) / (std[g] + eps)


def gagpo_advantages(ro: Rollout, gamma: float, lam: float, eps: float) -> np.ndarray:
    """GAGPO: GAE over the grouped value proxy, normalised per rollout group. Shape (N,)."""
    values, next_values = grouped_value_proxy(ro, gamma)
    return normalize_per_group(gae(ro, values, next_values, gamma, lam), ro.group_id, eps)


# ------------------------------------------------------------------------------------ 4. the loss
def ppo_clip_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                  action_index: torch.Tensor, clip_eps: float, entropy: torch.Tensor | None = None,
                  entropy_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    r"""PPO clip with one importance ratio per *action* (an action may span several tokens; in KeyDoor
    each command is one choice, ``action_index = arange(N)``). Per token t of action a = a(t):

        ρ_t = log π_θ(y_t) − log π_old(y_t)
        r_a = exp( mean_{s ∈ a} ρ_s )                         (geometric mean of the token ratios)
        ℓ_t = −min( r_a A_a,  clip(r_a, 1 − ε, 1 + ε) A_a )
        L   = mean_t ℓ_t − c_H mean_t H_t                      (every token counts equally)

    Diagnostics: ``clip_fraction`` (tokens whose gradient the clip zeroes) and ``approx_kl`` = mean of
    (r_t − 1) − log r_t with the token ratio, a k3 estimate of KL(π_old ‖ π_θ)."""
    rho = logp_new - logp_old.detach()
    n_actions = advantages.shape[0]
    n_tokens = rho.new_zeros(n_actions).index_add(0, action_index, torch.ones_like(rho))
    log_ratio = rho.new_zeros(n_actions).index_add(0, action_index, rho) / n_tokens.clamp(min=1)
    ratio = torch.exp(log_ratio)[action_index]
    adv = advantages.detach().to(rho.dtype)[action_index]
    policy_loss = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv).mean()
    loss = policy_loss if entropy is None else policy_loss - entropy_coef * entropy.mean()
    with torch.no_grad():
        clipped = ((adv > 0) & (ratio > 1 + clip_eps)) | ((adv < 0) & (ratio < 1 - clip_eps))
        diagnostics = {"loss": float(loss), "policy_loss": float(policy_loss), "clip_fraction": float(clipped.double().mean()),
                       "approx_kl": float((torch.expm1(rho) - rho).mean())}
    return loss, diagnostics


# ------------------------------------------------------------------------------------ 5. training
def update(policy: TextPolicy, optimizer: torch.optim.Optimizer, ro: Rollout, advantages: np.ndarray,
           args: Args, generator: torch.Generator) -> dict[str, float]:
    """``update_epochs`` passes over the rows in ``minibatches`` random minibatches, one Adam step each."""
    actions, logp_old = torch.as_tensor(ro.action), torch.as_tensor(ro.logp, dtype=torch.float32)
    adv = torch.as_tensor(advantages, dtype=torch.float32)
    diags = []
    for _ in range(args.update_epochs):
        for idx in torch.tensor_split(torch.randperm(len(adv), generator=generator), min(args.minibatches, len(adv))):
            rows = idx.tolist()
            logits = policy.logits([ro.obs[i] for i in rows], [ro.admissible[i] for i in rows])
            logp_new = torch.log_softmax(logits, -1).gather(-1, actions[idx, None]).squeeze(-1)
            loss, diag = ppo_clip_loss(logp_new, logp_old[idx], adv[idx], torch.arange(len(rows)), args.clip_eps,
                                       entropy(logits), args.entropy_coef)
            optimizer.zero_grad()
            loss.backward()
            if args.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
            optimizer.step()
            diags.append(diag)
    return {k: float(np.mean([d[k] for d in diags])) for k in diags[0]}


def evaluate(envs: list[gym.Env], policy: TextPolicy, n_tasks: int) -> float:
    """Greedy (arg-max) success rate on the first ``n_tasks`` held-out task seeds, one episode each."""
    seeds = list(toy_envs.EVAL_SEEDS)[:n_tasks]
    return float(collect(envs, policy, seeds, 1, torch.Generator(), greedy=True).won.mean())


def make_envs(args: Args, n: int) -> list[gym.Env]:
    kwargs = {"max_episode_steps": args.max_steps} if args.max_steps > 0 else {}
    return [gym.make(args.env_id, **kwargs) for _ in range(n)]


def train(args: Args, policy: TextPolicy | None = None, verbose: bool = True) -> tuple[TextPolicy, list[dict]]:
    """The loop: rollouts → advantages → PPO-clip update, until ``total_steps`` environment steps.
    Returns the trained policy and one log row per iteration."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)                   # task seeds
    generator = torch.Generator().manual_seed(args.seed)     # sampled actions and minibatches
    policy = policy if policy is not None else TextPolicy(args.hidden)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    envs = make_envs(args, args.tasks_per_iter * args.group_size)
    eval_envs = make_envs(args, args.eval_episodes)
    history, env_steps, iteration, start = [], 0, 0, time.perf_counter()
    while env_steps < args.total_steps:
        iteration += 1
        task_seeds = rng.choice(len(toy_envs.TRAIN_SEEDS), size=args.tasks_per_iter, replace=False).tolist()
        ro = collect(envs, policy, task_seeds, args.group_size, generator)
        advantages = gagpo_advantages(ro, args.gamma, args.lam, args.adv_eps)
        env_steps += len(ro.reward)
        row = {"iteration": iteration, "env_steps": env_steps, "success": float(ro.won.mean()),
               **update(policy, optimizer, ro, advantages, args, generator)}
        if args.eval_every and (iteration % args.eval_every == 0 or env_steps >= args.total_steps):
            row["held_out_greedy"] = evaluate(eval_envs, policy, args.eval_episodes)
            if verbose:
                print(f"iter {iteration:4d}  env steps {env_steps:8,d}  train success (sampled) {row['success']:.2f}  "
                      f"held-out success (greedy) {row['held_out_greedy']:.2f}  approx_kl {row['approx_kl']:.4f}  "
                      f"clip_fraction {row['clip_fraction']:.3f}  {time.perf_counter() - start:6.1f}s", flush=True)
        history.append(row)
    return policy, history


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # tiny model: one thread is fastest and deterministic
    policy, history = train(args)
    final = history[-1].get("held_out_greedy")
    if final is None:  # --eval-every 0: evaluate once at the end
        final = evaluate(make_envs(args, args.eval_episodes), policy, args.eval_episodes)
    print(f"final greedy held-out success on {args.eval_episodes} tasks: {final:.2f} after {history[-1]['env_steps']:,} env steps")


if __name__ == "__main__":
    main()
