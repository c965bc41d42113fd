"""Adapters that put this library's estimators inside other trainers.

* :mod:`gagpo.integrations.verl` — GAGPO and GiGPO with verl-agent's calling convention (per-row arrays
  in, token-level advantages out), and the recipe that registers GAGPO as an advantage estimator in a
  verl-agent checkout.

Importing this package (or any adapter in it) loads numpy only; torch tensors are accepted when the
caller already uses torch.
"""
