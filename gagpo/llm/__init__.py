"""Language-model agents: prompts, action parsing, an HF causal-LM policy, LLM rollouts and training.

The pieces, kept apart as the rest of the library keeps environment, rollout and losses apart::

    prompts.py   task + observation + history + admissible actions  ->  prompt text
    parsing.py   response text  ->  ParsedAction(command, valid, reason)
    tiny.py      an offline tiny Llama + word-level tokenizer (no download)
    policy.py    LMPolicy: the facade of the four parts below, what rollouts and trainers hold
    encoding.py  PromptCodec: tokenizer, chat template, prompt/response encoding, padding
    engine.py    rollout engines: batched sampling on a serving copy of the weights
    actor.py     Actor: teacher-forced token log-probs (TokenLogprobs), hidden states, LoRA, dtype
    reference.py Reference: the reference policy for the KL penalty (frozen copy, or adapters off)
    devices.py   --device and --dtype by name -> torch objects
    rollout.py   collect_lm (LMActor in gagpo.episodes' loop): group rollouts with generated text -> StepBatch + token data
    value.py     ValueHead: a learned critic V(s) on the policy's hidden state (algo "ppo")
    train.py     LMTrainConfig, train_lm: rollout -> gagpo.advantages -> ppo_clip_loss; evaluation per split
    experts.py   expert trajectories (MiniHousehold's exact model, ALFWorld walkthroughs) -> (prompt, response) pairs
    sft.py       SFTConfig, sft: behaviour cloning on expert pairs, the warm start before RL
    learning.py  bench lm-learning: one SFT warm start, then RL with each estimator over seeds
    bench.py     bench lm: speed and memory of a real-shape model;  gpucheck.py: python -m gagpo check-gpu

``prompts``, ``parsing`` and ``devices`` load no torch when imported; ``transformers`` is imported when a model is built.
The names below are imported lazily, on first access: ``import gagpo.llm.prompts`` loads no torch.
"""
import importlib
from typing import Any

#: public name -> the submodule that defines it; imported on first access (PEP 562), so that importing
#: ``gagpo.llm.prompts`` or ``gagpo.llm.parsing`` loads neither torch nor transformers
_LAZY = {
    **dict.fromkeys(("ParsedAction", "normalize_command", "parse_action"), "parsing"),
    **dict.fromkeys(("DEFAULT_TEMPLATE", "PromptTemplate", "build_messages", "build_prompt", "extract_task",
                     "render_prompt"), "prompts"),
    **dict.fromkeys(("build_tiny_model", "build_tiny_tokenizer", "tiny_model_path"), "tiny"),
    **dict.fromkeys(("Generation", "LMPolicy", "LoraSettings", "SamplingSettings", "TokenLogprobs"), "policy"),
    **dict.fromkeys(("NO_ACTION", "LMRollout", "LMActor", "collect_lm"), "rollout"),
    **dict.fromkeys(("ValueHead", "next_state_values"), "value"),
    **dict.fromkeys(("LM_ALGOS", "EvalSet", "LMTrainConfig", "LMTrainer", "evaluation_metrics", "train_lm"), "train"),
}


_SUBMODULES = ("actor", "bench", "devices", "encoding", "engine", "experts", "gpucheck", "learning", "parsing", "policy", "prompts",
               "reference", "rollout", "sft", "tiny", "train", "value")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:  # ``gagpo.llm.train`` as an attribute, as an eager package import would allow
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # cached: later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "ParsedAction", "parse_action", "normalize_command",
    "PromptTemplate", "DEFAULT_TEMPLATE", "build_prompt", "build_messages", "render_prompt", "extract_task",
    "build_tiny_model", "build_tiny_tokenizer", "tiny_model_path",
    "LMPolicy", "LoraSettings", "SamplingSettings", "Generation", "TokenLogprobs",
    "LMRollout", "LMActor", "collect_lm", "NO_ACTION",
    "ValueHead", "next_state_values",
    "LMTrainConfig", "LMTrainer", "train_lm", "LM_ALGOS", "EvalSet", "evaluation_metrics",
]
