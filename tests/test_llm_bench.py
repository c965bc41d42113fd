"""`python -m gagpo bench lm`: the tiny shape end to end on a CPU, the options, the real shapes' sizes."""
from __future__ import annotations

import csv

import pytest

pytest.importorskip("transformers")

from gagpo.__main__ import BENCH_DTYPES, LM_BENCH_MODELS, build_parser, main  # noqa: E402
from gagpo.llm import bench  # noqa: E402

PHASES = ["rollout", "score", "update"]
TINY = ["bench", "lm", "--model-config", "tiny", "--device", "cpu", "--batch", "3", "--prompt-tokens", "24",
        "--new-tokens", "5", "--micro-batch", "2"]


def test_tiny_end_to_end_writes_table_and_csv(tmp_path, capsys):
    out = tmp_path / "lm.md"
    assert main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    text = out.read_text()
    assert text.strip() in printed
    for label in ("rollout: generate", "score: log-probs, no grad", "update: fwd+bwd+AdamW", "Extrapolation, not a measurement",
                  "16 tasks × 8 episodes × 25 steps", "3,200 environment steps", "python -m gagpo bench lm --model-config tiny"):
        assert label in text
    with open(tmp_path / "lm.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["phase"] for r in rows] == PHASES
    for r in rows:
        assert r["model"] == "tiny" and r["device"] == "cpu" and r["dtype"] == "fp32" and int(r["batch"]) == 3
        for key in ("seconds", "rows_per_s", "tokens_per_s", "peak_memory_gb", "params"):
            assert float(r[key]) > 0, (r["phase"], key)
        assert float(r["rows_per_s"]) == pytest.approx(3 / float(r["seconds"]), rel=1e-4)
    assert [int(r["tokens"]) for r in rows] == [3 * 5, 3 * (24 + 5), 3 * (24 + 5)]
    assert float(rows[2]["optimizer_step_s"]) > 0
    assert int(rows[0]["params"]) == bench.count_parameters("tiny") == int(rows[0]["trainable"])


def test_lora_trains_only_the_adapters(tmp_path):
    rows = bench.lm_throughput(bench.LMBenchSettings(model_config="tiny", device="cpu", batch=2, prompt_tokens=8,
                                                     new_tokens=3, micro_batch=1, lora_r=4),
                               out=str(tmp_path / "t.md"), verbose=False)
    assert [r["phase"] for r in rows] == PHASES
    assert 0 < rows[0]["trainable"] < rows[0]["params"]
    assert "LoRA r 4" in (tmp_path / "t.md").read_text()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "lm", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option in ("--model-config", "--device", "--dtype", "--batch", "--prompt-tokens", "--new-tokens", "--micro-batch",
                   "--lora-r", "--gradient-checkpointing", "--reference", "--repeats", "--avg-steps", "--seed", "--out"):
        assert option in text
    assert text.count("(default:") >= 13
    for name in bench.MODEL_CONFIGS:
        assert name in text


def test_cli_names_and_defaults_match_the_library():
    assert tuple(LM_BENCH_MODELS) == tuple(bench.MODEL_CONFIGS)
    assert BENCH_DTYPES == bench.BENCH_DTYPES  # the parser's choices (no torch import) are the settings' own
    args = build_parser().parse_args(["bench", "lm"])
    assert bench.settings_from_args(args) == bench.LMBenchSettings()


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "batch must be >= 1"),
    (["--micro-batch", "-1"], "micro_batch must be >= 1"),
    (["--lora-r", "-2"], "lora_r must be >= 0"),
    (["--prompt-tokens", "4000", "--new-tokens", "200"], "exceeds the tiny context"),
    (["--device", "tpu"], "device"),
])
def test_invalid_values_are_clear_errors(argv, message, capsys):
    assert main(["bench", "lm", "--model-config", "tiny", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unknown_model_config_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "lm", "--model-config", "llama-70b"])
    assert exc.value.code == 2
    assert "invalid choice: 'llama-70b'" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["bench", "lm", "--model-config", "tiny", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("name, expected", [("qwen2.5-0.5b", 494_032_768), ("qwen2.5-1.5b", 1_543_714_304)])
def test_real_shapes_have_the_documented_parameter_counts(name, expected):
    n = bench.count_parameters(name)  # on the meta device: no memory, no initialisation
    assert n == bench.DOCUMENTED_PARAMS[name] == expected
    assert round(n / 1e6) == {"qwen2.5-0.5b": 494, "qwen2.5-1.5b": 1544}[name]


def test_extrapolation_arithmetic():
    # 4 rows: rollout 2 s, score 1 s, update 3 s of which 1 s is the AdamW step
    rows = [dict(phase="rollout", rows_per_s=2.0), dict(phase="score", rows_per_s=4.0),
            dict(phase="update", seconds=3.0, batch=4, optimizer_step_s=1.0)]
    ex = bench.extrapolate_iteration(rows, avg_steps=25)
    n = 16 * 8 * 25
    assert ex["env_steps"] == n
    assert ex["rollout"] == pytest.approx(n / 2.0)
    assert ex["score"] == pytest.approx(2 * n / 4.0)  # old policy + reference (kl_coef 0.01)
    assert ex["update"] == pytest.approx(n * 0.5 + 13 * 1.0)  # ceil(3200 / 256) = 13 AdamW steps
    assert ex["total"] == pytest.approx(ex["rollout"] + ex["score"] + ex["update"])


def test_full_parameter_runs_hold_a_frozen_reference_copy():
    """Full-parameter training with a KL penalty keeps a reference model; the benchmark holds one too
    (so its memory is a real run's), LoRA and --no-reference do not."""
    import torch

    settings = dict(model_config="tiny", device="cpu", batch=2, prompt_tokens=8, new_tokens=3, micro_batch=1)
    policy, _ = bench._build_policy(bench.LMBenchSettings(**settings), torch.device("cpu"))
    ref = policy.reference_model
    assert ref is not None and ref is not policy.model
    assert all(not p.requires_grad for p in ref.parameters())
    for a, b in zip(ref.parameters(), policy.model.parameters()):
        assert torch.equal(a, b)
    assert bench._build_policy(bench.LMBenchSettings(**settings, reference=False), torch.device("cpu"))[0].reference_model is None
    assert bench._build_policy(bench.LMBenchSettings(**settings, lora_r=4), torch.device("cpu"))[0].reference_model is None
