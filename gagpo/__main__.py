"""Command line: ``python -m gagpo {train,headline,bench} ...`` — see ``--help`` of each."""
from __future__ import annotations

import argparse
import json
import sys

from .config import ENV_ALIASES, TrainConfig, add_dataclass_arguments, dataclass_from_args
from .llm.devices import DTYPE_CHOICES
from .llm.learning import PROFILES as LEARNING_PROFILES
from .registry import estimator_names, get_estimator


def _common_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=2, help="parallel training processes (default: %(default)s)")
    p.add_argument("--root", default="runs/credit", help="where the runs live; reruns skip finished runs (default: %(default)s)")
    p.add_argument("--figures-dir", default=None,
                   help="where to write figures and tables (default: figures/; with --quick <root>/<profile>/figures)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gagpo",
        description="Train and benchmark advantage estimators (REINFORCE, GRPO, RLOO, PPO, GiGPO, GAGPO) on text environments.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sft,headline,bench,check-gpu}")

    p_train = sub.add_parser("train", help="train one algorithm with one seed",
                             description="Train one run of a toy-chapter policy. Metrics go to <out-dir>/metrics.{csv,jsonl}; checkpoints to "
                                         "<out-dir>/checkpoint.pt; a directory that holds a run needs --resume (continue it) or --overwrite (replace it). With --model NAME the run trains a language-model policy instead: "
                                         "see `python -m gagpo train --model tiny --help`.",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(p_train, TrainConfig)  # a bad value ends the parse: "error: argument --flag: ...", exit 2
    parser.train_parser = p_train  # for the cross-field checks of TrainConfig (main)
    sub.add_parser("sft", add_help=False, help="behaviour cloning of a language model on expert trajectories, the warm "
                   "start before RL (see python -m gagpo sft --help)")  # main() hands `sft` to sft_main

    p_head = sub.add_parser("headline", help="the README's main job: GAGPO vs GiGPO vs GRPO on KeyDoor",
                            description="Train GRPO, GiGPO and GAGPO on KeyDoor with the same budget for several seeds (2 processes; "
                                        "runs under runs/headline, finished ones are reused); writes headline_keydoor.{png,csv,md} and "
                                        "prints the table, compared with the committed one when written elsewhere than figures/. "
                                        "--quick runs under runs/headline-quick and writes headline_keydoor_quick.* there.")
    p_head.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: %(default)s)")
    p_head.add_argument("--quick", action="store_true", help="a budget of 80,000 instead of 400,000 environment steps per run (a smoke run)")
    p_head.add_argument("--workers", type=int, default=2, help="parallel processes (default: %(default)s)")
    p_head.add_argument("--figures-dir", default=None,
                        help="where to write the figure and tables (default: figures/; with --quick runs/headline-quick/figures)")

    p_gpu = sub.add_parser("check-gpu", help="does language-model training work on this GPU? NaN diagnosis, 3 iterations "
                           "per training mode, a resume, throughput; writes figures/gpu_check.md",
                           description="Build real-shape models locally (random weights, no download), diagnose attention on "
                                       "padded rows, train 3 iterations each of full-parameter GAGPO, LoRA GAGPO and PPO with a "
                                       "value head on MiniHousehold, resume one of them, and run `bench lm` for Qwen2.5-0.5B and "
                                       "-1.5B shapes (full and LoRA). Exits with 1 if a step fails or a training metric is not "
                                       "finite. Sized to finish within 6 minutes on one H100 (each step has its own time limit); --device cpu --quick runs tiny shapes on a CPU.")
    from .llm.gpucheck import build_parser as _gpu_parser  # imports no torch

    _gpu_parser(p_gpu)

    p_bench = sub.add_parser("bench", help="benchmarks", description="Benchmarks that print tables.")
    bsub = p_bench.add_subparsers(dest="bench", required=True, metavar="{throughput,credit,ablations,proxy,iteration,lm,lm-learning}")
    p_tp = bsub.add_parser("throughput", help="rows/s of the GRPO, GiGPO and GAGPO estimators at four batch sizes",
                           description="Time the estimators on synthetic batches (groups × 8 trajectories × 50 steps, ~60 distinct observations per group).")
    p_tp.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512], help="numbers of rollout groups (default: %(default)s)")
    p_tp.add_argument("--repeats", type=int, default=5, help="timing repeats; the best is reported (default: %(default)s)")
    p_tp.add_argument("--out", default="figures/throughput.md", help="also write the table here; '' to skip (default: %(default)s)")

    # chapter 7: the credit-assignment benchmark (gagpo.credit, gagpo.proxy_study)
    p_cr = bsub.add_parser("credit", help="head-to-head: REINFORCE, GRPO, RLOO, PPO, GiGPO, GAGPO with the same env-step budget",
                           description="Train every algorithm of a profile for every seed (resumable: finished runs under "
                                       "<root>/<profile>/ are skipped, interrupted ones resume from their checkpoint); writes "
                                       "figures/credit_<env>[_quick].{csv,md} and the curves, steps-to-80% and smoothness figures.")
    p_cr.add_argument("--env", choices=["keydoor", "household", "all"], default="keydoor", help="environment (default: %(default)s)")
    p_cr.add_argument("--quick", action="store_true", help="the quick profile (smaller task and budget, fewer seeds; a few minutes)")
    p_cr.add_argument("--seeds", type=int, nargs="+", default=None, help="override the profile's seeds")
    p_cr.add_argument("--algos", nargs="+", default=None, choices=estimator_names(), help="override the profile's algorithms")
    p_cr.add_argument("--report-only", action="store_true", help="train nothing; report the runs finished so far")
    p_cr.add_argument("--group-size", type=int, default=None,
                      help="replace the profile's group size G, keeping the episodes per iteration (tasks = episodes / G)")
    from .credit import VARIANTS  # numpy only: no torch, no matplotlib

    p_cr.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS), metavar="VARIANT",
                      help="run these named rows instead of the algorithms, on the same profile, seeds and budget, and write "
                           "figures/credit_<env>[_quick]_variants.{csv,md} and its figures (the report says what each changes "
                           "against its estimator's row). The variants: " + "; ".join(
                               f"{name} = {algo} with " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in over.items())
                               for name, (algo, over) in VARIANTS.items())
                           + ". reinforce-vanilla is chapter 2's vanilla REINFORCE (one plain gradient step per batch: the PPO "
                             "clip never acts; the reinforce row's step_mean baseline), reinforce-vanilla-no-baseline the same "
                             "without a baseline. The committed rows (figures/credit_keydoor_variants.*): python -m gagpo bench "
                             "credit --variants " + " ".join(VARIANTS) + " --workers 1")
    _common_bench_args(p_cr)
    p_ab = bsub.add_parser("ablations", help="GAGPO ablations: lambda, gamma, group size, normalisation, anchor matching",
                           description="GAGPO on the KeyDoor profile with one setting changed at a time (5 seeds; --quick: 2 seeds, "
                                       "small KeyDoor); writes figures/ablation_<name>[_quick].png and ablation_keydoor[_quick].{csv,md}.")
    p_ab.add_argument("--quick", action="store_true", help="the quick profile")
    p_ab.add_argument("--only", nargs="+", default=None, help="run only these ablations (lam gamma group_size norm anchors)")
    p_ab.add_argument("--seeds", type=int, nargs="+", default=None, help="override the profile's seeds")
    p_ab.add_argument("--report-only", action="store_true", help="train nothing; report the runs finished so far")
    _common_bench_args(p_ab)
    p_px = bsub.add_parser("proxy", help="the grouped value proxy against exact dynamic programming",
                           description="Train GAGPO on a small KeyDoor, then compare the grouped value proxy and the GRPO/GiGPO/GAGPO "
                                       "advantages with the exact values of the current policy at several points of training; writes "
                                       "figures/proxy_*.{png,csv,md}.")
    p_px.add_argument("--quick", action="store_true", help="fewer snapshots, tasks and repeats")
    p_px.add_argument("--figures-dir", default=None, help="where to write figures and tables (default: figures/)")
    p_it = bsub.add_parser("iteration", help="wall time of one training iteration: rollout vs advantage vs update, per algorithm",
                           description="Train each algorithm a few iterations on KeyDoor and report the median time of each phase; "
                                       "writes figures/iteration_time.{png,md,csv}.")
    p_it.add_argument("--iterations", type=int, default=30, help="iterations per algorithm (default: %(default)s)")
    p_it.add_argument("--figures-dir", default=None, help="where to write figures and tables (default: figures/)")

    # an LM agent that learns: SFT warm start, then RL (gagpo.llm.learning)
    p_ll = bsub.add_parser("lm-learning", help="an LM agent under RL from one SFT warm start: GRPO, GiGPO, GAGPO, PPO",
                           description="Fine-tune the book's word-level model on MiniHousehold (level 1) expert episodes (one SFT "
                                       "warm start, shared), then train it with each algorithm for every seed with the same env-step "
                                       "budget; held-out greedy success over training, medians with bootstrap intervals. Resumable: "
                                       "finished runs under <root>/<profile>/ are reused, interrupted ones resume. Writes "
                                       "figures/lm_learning.{csv,md,png} (full), figures/lm_learning_full_sft400.* (full-sft400), "
                                       "<root>/quick/figures/lm_learning_quick.* (quick). On 2 CPU cores: --quick a few minutes, "
                                       "the full profile (5 seeds) about 40 minutes.")
    which = p_ll.add_mutually_exclusive_group()
    which.add_argument("--quick", dest="profile", action="store_const", const="quick",
                       help="the quick profile (3 seeds, a short RL budget; a smoke run); the same as --profile quick")
    which.add_argument("--profile", default=None, choices=list(LEARNING_PROFILES),
                      help="the profile: full (the default; reports in figures/), quick, or full-sft400 (the first full "
                           "profile: 400 SFT steps, 50 iterations; reports in figures/lm_learning_full_sft400.*)")
    p_ll.add_argument("--seeds", type=int, nargs="+", default=None, help="override the profile's RL seeds")
    p_ll.add_argument("--algos", nargs="+", default=None, choices=estimator_names(), help="override the profile's algorithms")
    p_ll.add_argument("--report-only", action="store_true", help="train nothing; report the runs finished so far")
    p_ll.add_argument("--workers", type=int, default=2, help="parallel training processes (default: %(default)s)")
    p_ll.add_argument("--root", default="runs/lm_learning", help="where the runs live; reruns skip finished runs (default: %(default)s)")
    p_ll.add_argument("--figures-dir", default=None,
                      help="where to write the CSV, report and figure (default: figures/ for the full and full-sft400 "
                           "profiles, <root>/quick/figures for quick)")
    p_ll.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    # a language model of real shape with random weights (gagpo.llm.bench; defaults = LMBenchSettings')
    p_lm = bsub.add_parser("lm", help="env steps/s and peak memory of rollout, scoring and update for a Qwen2.5-shaped LM",
                           description="Build a model with the shape of Qwen2.5-0.5B or -1.5B (written out, random weights, nothing "
                                       "downloaded), then time one rollout (generate), one scoring pass (log-probs, no grad) and one "
                                       "update (PPO-clip loss, backward, AdamW) on random token ids; prints a Markdown table with an "
                                       "extrapolation to one iteration of the ALFWorld recipe and writes it to --out and a .csv beside it.")
    p_lm.add_argument("--model-config", choices=LM_BENCH_MODELS, default="qwen2.5-0.5b",
                      help="model shape; tiny is a 2-layer model for smoke tests (default: %(default)s)")
    p_lm.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ... (default: %(default)s)")
    p_lm.add_argument("--dtype", choices=BENCH_DTYPES, default="auto",
                      help="auto: float32 on a CPU; on a GPU bf16 weights with LoRA, fp32 weights + bf16 autocast without (default: %(default)s)")
    p_lm.add_argument("--batch", type=int, default=64, help="prompts per generate call = rows per update (default: %(default)s)")
    p_lm.add_argument("--prompt-tokens", type=int, default=512,
                      help="tokens per prompt (random ids); ~ an ALFWorld step prompt with history 2 (default: %(default)s)")
    p_lm.add_argument("--new-tokens", type=int, default=256, help="tokens per response, exactly (EOS is off) (default: %(default)s)")
    p_lm.add_argument("--micro-batch", type=int, default=8, help="rows per forward (scoring) and per forward/backward (update) (default: %(default)s)")
    p_lm.add_argument("--lora-r", type=int, default=0, help="LoRA rank (peft, alpha 32, all linear layers); 0 = full-parameter training (default: %(default)s)")
    p_lm.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                      help="recompute activations in the backward pass (default: %(default)s)")
    p_lm.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                      help="hold a frozen reference copy of the model, as full-parameter training with kl_coef > 0 does "
                           "(ignored with --lora-r: LoRA's reference is the adapter-free model) (default: %(default)s)")
    p_lm.add_argument("--engine", choices=("hf", "hf-compiled", "hf-continuous", "hf-shared"), default="hf",
                      help="rollout engine: hf = generate on a serving copy in the serving dtype (LoRA merged); hf-compiled = "
                           "the same with a static KV cache and torch.compile (GPU; the compilation is timed apart); "
                           "hf-continuous = the same with transformers' continuous batching; hf-shared "
                           "= generate with the training model under autocast (default: %(default)s)")
    p_lm.add_argument("--repeats", type=int, default=1, help="timed repeats of each phase; the fastest is reported (default: %(default)s)")
    p_lm.add_argument("--avg-steps", type=float, default=25.0,
                      help="assumed mean episode length for the extrapolation to one recipe iteration (default: %(default)s)")
    p_lm.add_argument("--seed", type=int, default=0, help="seed of the weights, token ids and sampling (default: %(default)s)")
    p_lm.add_argument("--out", default="figures/lm_throughput.md",
                      help="write the table here and a .csv beside it; '' to skip (default: %(default)s)")
    return parser


LM_BENCH_MODELS = ("tiny", "qwen2.5-0.5b", "qwen2.5-1.5b")
BENCH_DTYPES = tuple(name for name in DTYPE_CHOICES if name != "float16")
"""``bench lm``'s weight dtypes (``gagpo.llm.bench.BENCH_DTYPES``; float16 is not offered)."""
"""``gagpo.llm.bench.MODEL_CONFIGS``' names, repeated here so that building the parser imports no torch."""


def _check_env_kwargs(parser: argparse.ArgumentParser, cfg) -> None:
    """Build the environment once when ``--env-kwargs`` is given, so that a value it refuses (a size
    too small, ...) is a parse error (``error: argument --env-kwargs: ...``, exit 2), not a traceback."""
    if not cfg.env_kwargs:
        return
    from .envs.factory import EnvFactory

    try:
        EnvFactory(cfg.env, cfg.max_steps, cfg.env_kwargs)().close()
    except (TypeError, ValueError, OSError) as exc:  # a bad value, a data folder that is not there, ...
        parser.error(f"argument --env-kwargs: {cfg.env} refuses {json.dumps(cfg.env_kwargs)}: {exc}")


def _run(train_fn, cfg) -> list | None:
    """``train_fn(cfg)``; a :class:`gagpo.rundir.RunDirError` (directory in use, holding another run,
    read-only, full) is printed as ``error: ...`` (by the main process of a data-parallel run, where
    every process raises it) and gives ``None``."""
    from .distributed import is_main
    from .rundir import RunDirError

    try:
        return train_fn(cfg)
    except RunDirError as exc:
        if is_main():
            print(f"error: {exc}", file=sys.stderr)
        return None


def _report(*lines: str) -> None:
    """Print the summary of a run: on the main process only, in a data-parallel run."""
    from .distributed import is_main

    if is_main():
        print(*lines, sep="\n")


def build_lm_parser() -> argparse.ArgumentParser:
    """``python -m gagpo train --model NAME ...``: a language-model policy (gagpo.llm.train.LMTrainConfig)."""
    from .llm.train import LMTrainConfig

    critics = ", ".join(a for a in estimator_names() if get_estimator(a).needs_critic)  # needs_critic: ppo

    parser = argparse.ArgumentParser(
        prog="python -m gagpo train --model NAME",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a Hugging Face causal LM (or --model tiny, the offline tiny model) as a text agent:\n"
            "rollout -> advantages -> PPO-clip update with an action-level ratio (gagpo.llm.train).\n"
            f"--algo: {', '.join(estimator_names())} (critic estimators, {critics}, learn a value head on the model;\n"
            "the others need no critic; gagpo.register_estimator adds estimators).\n"
            f"--env accepts a gymnasium id or one of the aliases {sorted(ENV_ALIASES)}.\n"
            "Evaluation: greedy episodes every --eval-every iterations, on ALFWorld per held-out split\n"
            "(--eval-splits, default valid_seen and valid_unseen) and per task type.\n"
            "Writes metrics.jsonl, metrics.csv, curves.png and a checkpoint to --out-dir."),
        epilog=(
            "examples:\n"
            "  python -m gagpo train --model tiny --iterations 2              # MiniHousehold, offline, CPU\n"
            "  python -m gagpo train --model tiny --env alfworld --env-kwargs '{\"data_dir\": \"tests/fixtures/alfworld\"}' \\\n"
            "      --iterations 2 --tasks-per-iter 2 --group-size 2 --max-steps 3 --max-new-tokens 16\n"
            "  python -m gagpo train --model Qwen/Qwen2.5-1.5B-Instruct --env alfworld --lora-r 16 --num-workers 8\n"
            "  python -m gagpo train --model tiny --algo ppo --iterations 2   # PPO with a learned critic\n"
            "  accelerate launch --config_file gagpo/configs/accelerate_multi_gpu.yaml --num_processes 4 -m gagpo train \\\n"
            "      --model Qwen/Qwen2.5-1.5B-Instruct --env alfworld --tasks-per-iter 16   # data-parallel on 4 GPUs\n"
            "      (gagpo.distributed: whole groups per process, --tasks-per-iter a multiple of the processes)\n"
            "  ... add --resume to continue a run from the checkpoint in --out-dir, --overwrite to replace it\n"
            "      (a directory that holds a run is refused without either; one process per directory)"),
    )
    add_dataclass_arguments(parser, LMTrainConfig)
    return parser


def train_lm_main(argv: list[str]) -> int:
    from .llm.train import LMTrainConfig, train_lm

    parser = build_lm_parser()
    args = parser.parse_args(argv)  # a bad value ends here: "error: argument --flag: ...", exit status 2
    cfg = dataclass_from_args(LMTrainConfig, args, parser)  # so does a cross-field check (an alias --env resolves here)
    _check_env_kwargs(parser, cfg)
    splits = cfg.eval_split_names()
    history = _run(train_lm, cfg)
    if history is None:
        return 1
    last = history[-1] if history else {}
    keys = ("iteration", "env_steps", "success", "invalid_rate", "eval_success", *(f"eval_{s}_success" for s in splits))
    _report(json.dumps({k: last[k] for k in keys if k in last}), f"metrics, curves.png and checkpoint in {cfg.run_dir()}")
    return 0


def sft_main(argv: list[str]) -> int:
    """``python -m gagpo sft ...``: behaviour cloning on expert trajectories (gagpo.llm.sft)."""
    from .llm.sft import SFTConfig, build_parser as build_sft_parser, sft

    parser = build_sft_parser()
    args = parser.parse_args(argv)  # a bad value ends here: "error: argument --flag: ...", exit status 2
    args.env = ENV_ALIASES.get(args.env, args.env)
    cfg = dataclass_from_args(SFTConfig, args, parser)
    _check_env_kwargs(parser, cfg)
    history = _run(sft, cfg)
    if history is None:
        return 1
    evals = [row for row in history if "eval_success" in row]
    _report(json.dumps({"iteration": history[-1]["iteration"] if history else 0, "loss": history[-1].get("loss"),
                        "eval_success_before": evals[0]["eval_success"] if evals else None,
                        "eval_success_after": evals[-1]["eval_success"] if evals else None}),
            f"metrics, curves.png and checkpoint in {cfg.run_dir()}; the fine-tuned model in {cfg.model_dir()} "
            f"(python -m gagpo train --model {cfg.model_dir()} ...)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and any(a == "--model" or a.startswith("--model=") for a in argv[1:]):
        return train_lm_main(argv[1:])
    if argv[:1] == ["sft"]:
        return sft_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        cfg = dataclass_from_args(TrainConfig, args, parser.train_parser)  # a cross-field check ends here, exit status 2
        _check_env_kwargs(parser.train_parser, cfg)
        from .trainer import train

        history = _run(train, cfg)
        if history is None:
            return 1
        last = history[-1] if history else {}
        _report(json.dumps({k: last[k] for k in ("iteration", "env_steps", "success", "eval_success") if k in last}),
                f"metrics and checkpoint in {cfg.run_dir()}")
        return 0
    if args.command == "check-gpu":
        from .llm.gpucheck import main as check_gpu

        return check_gpu(args, "python -m gagpo " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.command == "headline":
        from .bench import headline

        headline(seeds=args.seeds, quick=args.quick, workers=args.workers, figures_dir=args.figures_dir)
        return 0
    if args.command == "bench" and args.bench == "throughput":
        from .bench import throughput

        throughput(args.sizes, args.repeats, args.out or None)
        return 0
    if args.command == "bench" and args.bench == "credit":
        from .credit import ENVS, credit

        for env in (ENVS if args.env == "all" else (args.env,)):
            credit(env, quick=args.quick, workers=args.workers, seeds=args.seeds, algos=args.algos, root=args.root,
                   figures_dir=args.figures_dir, report_only=args.report_only, group_size=args.group_size, variants=args.variants,
                   command="python -m gagpo " + " ".join(argv if argv is not None else sys.argv[1:]))
        return 0
    if args.command == "bench" and args.bench == "ablations":
        from .credit import ablations

        ablations(quick=args.quick, workers=args.workers, names=args.only, seeds=args.seeds, root=args.root,
                  figures_dir=args.figures_dir, report_only=args.report_only, command="python -m gagpo " + " ".join(argv if argv is not None else sys.argv[1:]))
        return 0
    if args.command == "bench" and args.bench == "proxy":
        from .proxy_study import proxy_study

        proxy_study(quick=args.quick, figures_dir=args.figures_dir)
        return 0
    if args.command == "bench" and args.bench == "iteration":
        from .credit import iteration_time

        iteration_time(args.iterations, figures_dir=args.figures_dir)
        return 0
    if args.command == "bench" and args.bench == "lm-learning":
        from .llm.learning import lm_learning

        lm_learning(profile=args.profile, workers=args.workers, seeds=args.seeds, algos=args.algos, root=args.root,
                    figures_dir=args.figures_dir, progress=args.progress, report_only=args.report_only,
                    command="python -m gagpo " + " ".join(argv if argv is not None else sys.argv[1:]))
        return 0
    if args.command == "bench" and args.bench == "lm":
        from .llm.bench import lm_throughput, settings_from_args

        try:
            settings = settings_from_args(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        lm_throughput(settings, out=args.out or None, command="python -m gagpo " + " ".join(argv))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
