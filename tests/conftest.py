"""Shared test settings: one torch thread (these models are tiny; threads only contend under xdist)."""
import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
