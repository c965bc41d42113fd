"""Command line: ``python -m gagpo {train,headline,bench} ...`` — see ``--help`` of each."""
from __future__ import annotations

import argparse
import json
import sys

from .config import TrainConfig, add_dataclass_arguments, dataclass_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gagpo",
        description="Train and benchmark advantage estimators (REINFORCE, GRPO, RLOO, PPO, GiGPO, GAGPO) on text environments.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,headline,bench}")

    p_train = sub.add_parser("train", help="train one algorithm with one seed",
                             description="Train one run. Metrics go to <out-dir>/metrics.{csv,jsonl}; checkpoints to <out-dir>/checkpoint.pt.",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(p_train, TrainConfig)

    p_head = sub.add_parser("headline", help="the README's main job: GAGPO vs GiGPO vs GRPO on KeyDoor",
                            description="Train GRPO, GiGPO and GAGPO on KeyDoor with the same budget for several seeds (2 processes); "
                                        "writes figures/headline_keydoor.{png,csv,md} and prints the table.")
    p_head.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: %(default)s)")
    p_head.add_argument("--quick", action="store_true", help="60 instead of 300 iterations per run (a smoke run)")
    p_head.add_argument("--workers", type=int, default=2, help="parallel processes (default: %(default)s)")
    p_head.add_argument("--figures-dir", default=None, help="where to write the figure and tables (default: figures/)")

    p_bench = sub.add_parser("bench", help="benchmarks", description="Benchmarks that print tables.")
    bsub = p_bench.add_subparsers(dest="bench", required=True, metavar="{throughput}")
    p_tp = bsub.add_parser("throughput", help="rows/s of the GRPO, GiGPO and GAGPO estimators at four batch sizes",
                           description="Time the estimators on synthetic batches (groups × 8 trajectories × 50 steps, ~60 distinct observations per group).")
    p_tp.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512], help="numbers of rollout groups (default: %(default)s)")
    p_tp.add_argument("--repeats", type=int, default=5, help="timing repeats; the best is reported (default: %(default)s)")
    p_tp.add_argument("--out", default="figures/throughput.md", help="also write the table here; '' to skip (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        try:
            cfg = dataclass_from_args(TrainConfig, args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from .trainer import train

        history = train(cfg)
        last = history[-1] if history else {}
        print(json.dumps({k: last[k] for k in ("iteration", "env_steps", "success", "eval_success") if k in last}))
        print(f"metrics and checkpoint in {cfg.run_dir()}")
        return 0
    if args.command == "headline":
        from .bench import headline

        headline(seeds=args.seeds, quick=args.quick, workers=args.workers, figures_dir=args.figures_dir)
        return 0
    if args.command == "bench" and args.bench == "throughput":
        from .bench import throughput

        throughput(args.sizes, args.repeats, args.out or None)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
