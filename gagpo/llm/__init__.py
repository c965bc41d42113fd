"""Language-model agents: prompts, action parsing, an HF causal-LM policy, LLM rollouts and training.

The pieces, kept apart as the rest of the library keeps environment, rollout and losses apart::

    prompts.py   task + observation + history + admissible actions  ->  prompt text
    parsing.py   response text  ->  ParsedAction(command, valid, reason)
    tiny.py      an offline tiny Llama + word-level tokenizer (no download)
    policy.py    LMPolicy: batched sampling, teacher-forced token log-probs (current/old/reference)
    rollout.py   collect_lm: group rollouts with generated text -> StepBatch + token data
    value.py     ValueHead: a learned critic V(s) on the policy's hidden state (algo "ppo")
    train.py     LMTrainConfig, train_lm: rollout -> gagpo.advantages -> ppo_clip_loss; evaluation per split

Only ``policy``, ``rollout``, ``value`` and ``train`` need torch; ``transformers`` is imported when a model is built.
"""
from .parsing import ParsedAction, normalize_command, parse_action
from .prompts import DEFAULT_TEMPLATE, PromptTemplate, build_messages, build_prompt, extract_task, render_prompt
from .tiny import build_tiny_model, build_tiny_tokenizer, tiny_model_path
from .policy import Generation, LMPolicy, LoraSettings, SamplingSettings
from .rollout import NO_ACTION, LMRollout, collect_lm
from .value import ValueHead, next_state_values
from .train import LM_ALGOS, EvalSet, LMTrainConfig, LMTrainer, evaluation_metrics, train_lm

__all__ = [
    "ParsedAction", "parse_action", "normalize_command",
    "PromptTemplate", "DEFAULT_TEMPLATE", "build_prompt", "build_messages", "render_prompt", "extract_task",
    "build_tiny_model", "build_tiny_tokenizer", "tiny_model_path",
    "LMPolicy", "LoraSettings", "SamplingSettings", "Generation",
    "LMRollout", "collect_lm", "NO_ACTION",
    "ValueHead", "next_state_values",
    "LMTrainConfig", "LMTrainer", "train_lm", "LM_ALGOS", "EvalSet", "evaluation_metrics",
]
