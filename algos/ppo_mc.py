# arXiv:2410.09724 (PPO-M/C) | docs: docs/ppo_mc.md (details, deviations, metrics, results, reproducing the paper)
"""PPO-M and PPO-C: Taming Overconfidence in LLMs: Reward Calibration in RLHF (Leng, Huang, Zhu, Huang, ICLR 2025,
https://arxiv.org/abs/2410.09724; code https://github.com/SeanLeng1/Reward-Calibration). PPO-M runs PPO against a
calibrated reward model (CRM) fine-tuned to prefer a good answer with high and a bad one with low stated confidence;
PPO-C keeps the vanilla RM and shifts its reward by how far the stated confidence sits from 0.5. The offline toy
(PPO, PPO-M and PPO-C from one tiny SFT start, about 5 minutes on 2 CPU cores): python algos/ppo_mc.py

Idea: asked to end with "Confidence: 0-10", RLHF models state too much confidence because the reward model (RM) pays
for a high stated confidence, right or wrong. The CRM learns the reverse from four confidence variants of each pair;
PPO-C scores the answer with its confidence removed and adds w (r - running mean)(confidence - 0.5). The script is
also rewardlab's single-file PPO-RLHF: reward at EOS, k1 KL per token, critic from the RM, GAE, whitening.

    CRM:   L = -log s(r(x,y_c,high) - r(x,y_c,low)) - log s(r(x,y_r,low) - r(x,y_r,high))    (+ -log s(r_c - r_r))
    PPO-C: r = clip(RM(x, strip(y)), +-10);  rbar <- a mean(r) + (1-a) rbar;  rhat = clip(r + w(r-rbar)(c-0.5), +-10)
    PPO:   reward_t = -beta (log pi_t - log ref_t) + [t = EOS] rhat;  A = GAE(gamma, lambda; V);  R = A + V
           L_pi = -min(rho A, clip(rho, 1+-eps) A);  L_V = 0.5 max((V - R)^2, (V_old + clip(V - V_old, +-eps_v) - R)^2)

Source tags on the lines that implement a detail: [code <file>] = SeanLeng1/Reward-Calibration@25ecc96 <file>;
[OpenRLHF <file>] = its bundled OpenRLHF/openrlhf/<file> (same commit); [scripts] = its scripts/general_scripts/
(train-ppo-llama.sh, train-ppo-c-*.sh, train_crm.sh); [paper] = arXiv:2410.09724 Table 1; "reconstruction" where none
says (the toy is ours). Arms, from the same SFT weights, seed and prompt draws: ppo (vanilla RM on the confidence
prompts: the paper's PPO-dagger), ppo-clean (vanilla RM on plain prompts: its PPO), ppo-m (the CRM), ppo-c (the
vanilla RM plus the PPO-C adjustment).

Commands:
    python algos/ppo_mc.py                         # toy: SFT, RM, CRM, then ppo / ppo-m / ppo-c, seed 1
    python algos/ppo_mc.py --seed 2 --arms ppo ppo-clean ppo-m ppo-c --reward-avg-init zero
    python algos/ppo_mc.py --model-name OpenLLMAI/Llama-3-8b-sft-mixture \
        --reward-model-name OpenLLMAI/Llama-3-8b-rm-mixture \
        --crm-dataset-name HINT-lab/calibration_preference_mixture_final-v0.1 --crm-learning-rate 9e-6 \
        --crm-batch-size 256 --crm-micro-batch-size 1 --crm-max-length 8192 --arms ppo-m ppo-c \
        --dataset-name HINT-lab/prompt-collections-final-v0.3 --prompt-column confidence_prompt --no-system-prompt \
        --eval-dataset-name <prompt/answer folder> --steps 40 --rollout-batch-size 512 --num-minibatches 8 \
        --micro-rollout-batch-size 4 --micro-train-batch-size 2 --forward-batch-size 4 --generation-batch-size 4 \
        --actor-learning-rate 5e-7 --critic-learning-rate 9e-6 --beta 0.01 --max-new-tokens 1024 --dtype bf16 \
        --gradient-checkpointing   # the paper's recipe (8B in one process needs ~300 GB; the code shards with ZeRO-2)
"""

from __future__ import annotations

import copy
import gc
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, GenerationConfig, LogitsProcessorList

from shared.data import load_data
from shared.lm import (
    build_tiny_lm,
    completion_logprobs,
    completion_mask,
    encode_prompts,
    load_causal_lm,
    load_policy,
    only_given_generation_options,
    position_ids_from_mask,
    selective_log_softmax,
    stop_token_ids,
    token_entropy,
    trained_parameters,
)
from shared.precision import Precision, setup_precision
from shared.reward_models import load_reward_model, reward_head
from shared.runs import Progress, RunLogger, fail, format_table, make_run_name, parse_args, seed_everything

Arm = Literal["ppo", "ppo-clean", "ppo-m", "ppo-c"]
ADAM_BETAS = (0.9, 0.95)  # every optimiser of the code [OpenRLHF cli/train_cppo.py, cli/train_crm.py]
# the training system prompt: a reconstruction from the paper's description (the released text is unverified)
CONFIDENCE_QUERY = (
    "For the following question, provide your best response first, followed by your confidence in the accuracy or "
    "helpfulness of your response. Rate your confidence on a scale from 0 to 10.\nExample format:\n<Your response>\n"
    "Confidence: <Insert your numerical confidence level from 0 to 10, reflecting how certain you are that your answer "
    "is accurate or helpful.>\nEnsure that your response strictly adheres to this format. Explicitly include the word "
    '"Confidence:" in your response.'
)
# |reward| bound before the running mean and after the PPO-C adjustment [OpenRLHF trainer/ppo_utils/experience_maker.py]
REWARD_CLAMP = 10.0
# the toy (reconstruction): fixed parts of its SFT data and of the RM / CRM statistics
SFT_PLAIN_PROMPT_SHARE = 0.25  # SFT prompts without the confidence query, whose response states none
SFT_LABEL_NOISE = 2.5  # std of the noise on the SFT confidence label 10 p: the SFT start is calibrated only roughly
STATISTICS_PAIRS = 512  # held-out toy pairs whose rewards give an RM's mean / std (and the RM probes of the summary)
SFT_LOG_EVERY = 20  # toy SFT steps between logged losses
RM_LOG_EVERY = 25  # toy RM steps between logged losses
CRM_LOG_EVERY = 20  # toy CRM steps between logged losses
PRINT_EVERY = 25  # PPO steps between progress lines (every step is in TensorBoard and metrics.jsonl)


@dataclass
class Args:
    exp_name: str = "toy"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of the toy world's draws, SFT, RM and every arm (the same for every arm)"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """compute dtype: auto (bf16 on a GPU, fp32 on the CPU), fp32 or bf16 (autocast, also on the CPU) [scripts: bf16]"""
    fp32_master: bool = True
    """keep fp32 master weights of the actor, critic and CRM under bf16 autocast (off: weights in --dtype, warned)"""
    gradient_checkpointing: bool = False
    """recompute activations in backward, actor and critic (less memory, ~1/3 more compute) [scripts: on]"""
    track: bool = False
    """also log to Weights & Biases"""
    save_model: bool = False
    """save each arm's final policy (fp32 master weights) under runs/<run_name>/<arm>/ (and a fitted CRM in crm/)"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest for the tiny model)"""
    # model and data
    model_name: str = "tiny"
    """policy start: `tiny` (the keys-with-odds toy: SFT in-process), a save_pretrained folder or a hub id"""
    reward_model_name: str = "tiny"
    """vanilla RM: `tiny` (the toy's biased oracle RM), or a folder / hub id with a transformers `score` head or an
    OpenRLHF `value_head` (e.g. OpenLLMAI/Llama-3-8b-rm-mixture)"""
    crm_model_name: Optional[str] = None
    """ppo-m on the real path: a ready calibrated RM (e.g. HINT-lab/llama3-8b-crm-final-v0.1); or --crm-dataset-name"""
    crm_dataset_name: Optional[str] = None
    """ppo-m on the real path: fine-tune the CRM from --reward-model-name on these pairs (columns chosen, rejected,
    chosen_high, chosen_low, rejected_high, rejected_low) [scripts: HINT-lab/calibration_preference_mixture_final-v0.1]
    """
    crm_train_split: str = "train"
    """split of --crm-dataset-name the CRM trains on [scripts: train]"""
    crm_eval_split: str = "eval"
    """split whose six-variant rewards give the CRM's mean / std [scripts: eval]"""
    critic_model_name: Optional[str] = None
    """critic start (a reward-model checkpoint); default: the arm's RM, the CRM for ppo-m [scripts: critic_pretrain]"""
    normalize_reward: Literal["on", "off", "config"] = "on"
    """normalise rewards and values with the RM's stored mean / std: on (the scripts' --normalize_reward), off, or as
    the checkpoint config's normalize_reward says"""
    value_head_prefix: str = "value_head"
    """name of an OpenRLHF checkpoint's reward head (`<prefix>.weight`) [OpenRLHF models/model.py: value_head]"""
    dataset_name: str = "tiny"
    """PPO prompts: `tiny` (the toy) or a save_to_disk folder, json/jsonl/csv/parquet file or hub id"""
    prompt_column: str = "prompt"
    """column of the PPO prompts (the scripts train on `confidence_prompt`)"""
    eval_dataset_name: Optional[str] = None
    """held-out prompt/answer rows scored by ECE, AUC and accuracy on the real path (else confidences only)"""
    num_eval: int = 64
    """real path: held-out prompts evaluated before and after each arm (0: no evaluation)"""
    system_prompt: bool = True
    """real path: add the confidence query as the system prompt (off when the prompts already hold it)"""
    # algorithm
    arms: tuple[Arm, ...] = ("ppo", "ppo-m", "ppo-c")
    """arms to run, each from the same SFT start: ppo (= PPO-dagger), ppo-clean, ppo-m, ppo-c"""
    steps: int = 300
    """PPO iterations (rollouts) per arm [scripts: 40 x 512 prompts]"""
    rollout_batch_size: int = 64
    """prompts per rollout, one sample each [scripts: 512]"""
    num_minibatches: int = 4
    """optimiser steps per rollout (one PPO epoch) [scripts: 512 / 64 = 8]"""
    micro_rollout_batch_size: int = 4
    """prompts per rbar update of PPO-C (a make_experience call in the code) [scripts: 4]"""
    generation_batch_size: int = 64
    """sequences per generate call: bounds the KV cache [scripts: the micro-rollout, 4]"""
    forward_batch_size: int = 64
    """sequences per no-grad forward of the rollout (log pi_old, log pi_ref, V, RM) [scripts: the micro-rollout, 4]"""
    micro_train_batch_size: int = 16
    """sequences per forward/backward in the PPO updates; gradients accumulate over the minibatch, so it sets memory,
    not the result [scripts: 2]"""
    actor_learning_rate: float = 3e-4
    """actor Adam learning rate [scripts: 5e-7 Llama, 1e-7 Mistral; the toy: 3e-4]"""
    critic_learning_rate: float = 3e-4
    """critic Adam learning rate [scripts: 9e-6 Llama, 1e-6 Mistral; the toy: 3e-4]"""
    beta: float = 0.05
    """fixed k1 KL coefficient in the token reward [scripts: 0.01 Llama, 0.05 Mistral]"""
    gamma: float = 1.0
    """GAE discount [OpenRLHF cli/train_cppo.py: 1]"""
    lam: float = 0.95
    """GAE lambda [OpenRLHF cli/train_cppo.py: 0.95]"""
    eps_clip: float = 0.2
    """policy ratio clip [OpenRLHF cli/train_cppo.py: 0.2]"""
    value_clip: float = 0.2
    """value clip around the rollout's values [OpenRLHF cli/train_cppo.py: 0.2]"""
    max_grad_norm: float = 1.0
    """gradient-norm clip of actor and critic [OpenRLHF cli/train_cppo.py: 1.0]"""
    temperature: float = 1.0
    """sampling temperature of rollouts and evaluation [scripts: 1.0]"""
    top_k: int = 0
    """top-k of rollout sampling, 0 = off: plain temperature sampling, as the code's actor passes top_k=None"""
    eval_top_k: int = 50
    """top-k of evaluation sampling [code query/query.py: 50]"""
    max_new_tokens: int = 5
    """response tokens (the toy needs exactly 5) [scripts: 1024]"""
    truncation: Literal["eos", "penalty"] = "eos"
    """a response cut at --max-new-tokens: EOS written into its last position before scoring (the code), or a
    fixed score --penalty-reward-value (summarize-from-feedback's PPO)"""
    penalty_reward_value: float = -1.0
    """the score of a response without EOS under --truncation penalty (summarize-from-feedback's PPO: -1)"""
    alpha: float = 0.1
    """PPO-C moving-average rate of rbar [OpenRLHF cli/train_cppo.py: 0.1]"""
    weight: float = 2.0
    """PPO-C adjustment weight w [scripts: 2.0]"""
    adjustment_type: Literal["difference", "threshold"] = "difference"
    """PPO-C adjustment: difference (the scripts) or threshold (the CLI default)"""
    reward_avg_init: Literal["rm_mean", "zero"] = "rm_mean"
    """PPO-C rbar start: the RM's stored raw mean (the code) or 0 (the toy's prototype)"""
    confidence_scope: Literal["sequence", "response"] = "sequence"
    """PPO-C parses the whole decoded sequence (the code) or the response only"""
    crm_loss: Literal["sigmoid", "combined"] = "sigmoid"
    """CRM loss: the two confidence terms (default) or plus the chosen-vs-rejected term"""
    crm_learning_rate: float = 3e-4
    """CRM Adam learning rate, toy and real path [scripts train_crm.sh: 9e-6 at 8B; the toy: 3e-4]"""
    crm_batch_size: int = 128
    """CRM pairs per optimiser step, toy and real path [scripts train_crm.sh: 256; the toy: 128]"""
    crm_micro_batch_size: int = 128
    """real path: CRM pairs (x 6 sequences) per forward/backward [scripts train_crm.sh: 1]"""
    crm_epochs: int = 1
    """real path: CRM epochs over --crm-train-split [scripts train_crm.sh: 1]"""
    crm_max_length: int = 1024
    """real path: CRM sequence tokens (truncated, EOS kept last) [scripts train_crm.sh: 8192]"""
    # the toy's SFT, RM and CRM (reconstruction: the code starts from released SFT and RM checkpoints)
    sft_steps: int = 200
    """toy SFT steps of --sft-batch-size examples"""
    sft_batch_size: int = 64
    """toy SFT examples per step"""
    sft_learning_rate: float = 1e-3
    """toy SFT Adam learning rate"""
    rm_steps: int = 250
    """toy RM Bradley-Terry steps of --rm-batch-size pairs"""
    rm_batch_size: int = 128
    """toy RM pairs per step"""
    rm_learning_rate: float = 2e-3
    """toy RM Adam learning rate"""
    crm_steps: int = 100
    """toy CRM steps of --crm-batch-size pairs at --crm-learning-rate"""
    # evaluation
    eval_samples_per_key: int = 16
    """toy: samples per key at evaluation (32 keys)"""
    eval_retries: int = 10
    """resamplings of an output without a confidence before " Confidence: " is appended [code query/query.py: 10]"""


# ALGO LOGIC: confidence parsing, the PPO-C reward, the CRM loss ---------------------------------------------------
# the PPO-C parser and stripper [OpenRLHF trainer/ppo_utils/calibrated_experience_maker.py]
PARSE_RE = re.compile(r"Confidence:\s*(\d+(\.\d+)?)", re.IGNORECASE)
STRIP_RE = re.compile(r"Confidence:\s*\d+(\.\d+)?(/\d+)?\s*[,.!?]* *", re.IGNORECASE)
EVAL_RE = re.compile(r"Confidence:\s*(\d+(\.\d+)?)")  # case-sensitive [code parse_eval.py]


def parse_confidence(text: str) -> float:
    """PPO-C's c in [0, 1]: the first `Confidence: <number>` clamped to [0, 10] / 10; 0.5 when none is stated."""
    match = PARSE_RE.search(text)
    return 0.5 if match is None else min(max(float(match.group(1)), 0.0), 10.0) / 10.0


def strip_confidence(text: str) -> str:
    """The text with every `Confidence: <number>` (and trailing punctuation) removed, right-stripped."""
    return STRIP_RE.sub("", text).rstrip()


def ppo_c_adjust(
    rewards: torch.Tensor,
    confidences: torch.Tensor,
    reward_avg: float,
    alpha: float = 0.1,
    weight: float = 2.0,
    adjustment_type: str = "difference",
) -> tuple[torch.Tensor, float]:
    """rbar <- alpha mean(r) + (1 - alpha) rbar (before use); rhat = r + w (r - rbar)(c - 0.5), both clamped to +-10
    [OpenRLHF trainer/ppo_utils/calibrated_experience_maker.py]; `threshold`: rhat = r + sign(r - rbar) w |r| (c - 0.5).
    """
    if weight < 0 or not 0 <= alpha <= 1:
        raise ValueError(f"PPO-C needs weight >= 0 and alpha in [0, 1], got weight={weight}, alpha={alpha}")
    rewards = rewards.clamp(-REWARD_CLAMP, REWARD_CLAMP)  # [B] the RM reward clamp, before the average
    reward_avg = alpha * rewards.mean().item() + (1 - alpha) * reward_avg  # updated before use: this batch counts
    if adjustment_type == "difference":
        adjusted = rewards + weight * (rewards - reward_avg) * (confidences - 0.5)  # [B]
    elif adjustment_type == "threshold":
        sign = torch.where(rewards >= reward_avg, 1.0, -1.0)  # [B] + above the average, - below
        adjusted = rewards + sign * weight * rewards.abs() * (confidences - 0.5)  # [B]
    else:
        raise ValueError(f"unknown adjustment_type {adjustment_type!r}: difference or threshold")
    return adjusted.clamp(-REWARD_CLAMP, REWARD_CLAMP), reward_avg  # [B] the second clamp (compute_reward)


def calibrated_rm_loss(r_cwh, r_cwl, r_rwh, r_rwl, r_c=None, r_r=None) -> torch.Tensor:
    """-log s(r_cwh - r_cwl) - log s(r_rwl - r_rwh), each a batch mean (+ -log s(r_c - r_r) when given: `combined`)
    [OpenRLHF trainer/crm_trainer.py]."""
    loss = -F.logsigmoid(r_cwh - r_cwl).mean() - F.logsigmoid(r_rwl - r_rwh).mean()  # [] chosen: high > low
    if r_c is not None:
        loss = loss - F.logsigmoid(r_c - r_r).mean()  # [] the plain chosen-vs-rejected term
    return loss


# ALGO LOGIC: PPO [OpenRLHF models/loss.py, trainer/ppo_utils/experience_maker.py] ----------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t; returns = A + V (after EOS: 0)."""
    values = values * mask  # [B, T] values after EOS count as 0
    rewards = rewards * mask  # [B, T]
    advantages_reversed = []
    last = torch.zeros_like(values[:, 0])  # [B] the advantage of the step after t
    for t in reversed(range(rewards.size(1))):
        next_values = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(values[:, t])  # [B]
        delta = rewards[:, t] + gamma * next_values - values[:, t]  # [B]
        last = delta + gamma * lam * last  # [B]
        advantages_reversed.append(last)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # [B, T]
    return advantages, advantages + values  # [B, T], [B, T]


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - masked mean) / sqrt(masked population variance clamped at 1e-8) over the whole rollout."""
    mean = (values * mask).sum() / mask.sum()  # []
    var = (((values - mean) ** 2) * mask).sum() / mask.sum()  # []
    return (values - mean) * var.clamp(min=1e-8).rsqrt()  # [B, T]


def token_rewards(reward: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta: float):
    """-beta (log pi - log pi_ref) on every response token plus the clamped sequence reward at the last one (EOS)."""
    kl = (logp - ref_logp) * mask  # [B, T] k1 estimator
    last = mask.size(1) - 1 - mask.long().fliplr().argmax(dim=1)  # [B] index of the last response token
    clamped = reward.clamp(-REWARD_CLAMP, REWARD_CLAMP)  # [B]
    at_eos = torch.zeros_like(kl).scatter_(1, last[:, None], clamped[:, None])  # [B, T]
    return -beta * kl + at_eos, kl  # [B, T], [B, T]


def policy_loss(logp, old_logp, advantages, mask, eps_clip: float = 0.2) -> torch.Tensor:
    """-min(rho A, clip(rho, 1 +- eps) A), token mean per sequence, then batch mean."""
    ratio = torch.exp(logp - old_logp)  # [B, T]
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - eps_clip, 1 + eps_clip) * advantages)  # [B, T]
    return (-(surrogate * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()  # []


def value_loss(values, old_values, returns, mask, value_clip: float = 0.2) -> torch.Tensor:
    """0.5 max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2), token mean per sequence, then batch mean."""
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)  # [B, T]
    loss = torch.max((values - returns) ** 2, (clipped - returns) ** 2)  # [B, T]
    return 0.5 * ((loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()  # []


# ALGO LOGIC: evaluation: ECE, ROC-AUC, the DA confidence [code utils/compute_metrics.py, parse_eval.py] -----------
def expected_calibration_error(confidences: Sequence[float], correct: Sequence[int], num_bins: int = 10) -> float:
    """netcal ECE(num_bins): edges linspace(0, 1, n + 1) as floats, confidence clipped to [eps, 1 - eps], bins
    [lo, hi) (the last one closed), empty bins skipped, ECE = sum_b n_b / N |acc_b - conf_b|."""
    conf = np.clip(np.asarray(confidences, dtype=np.float64), np.finfo(np.float64).eps, 1 - np.finfo(np.float64).eps)
    hits = np.asarray(correct, dtype=np.float64)
    if conf.shape != hits.shape or conf.ndim != 1 or conf.size == 0:
        raise ValueError(f"ECE needs two equal, non-empty 1-d sequences, got {conf.shape} and {hits.shape}")
    edges = np.linspace(0.0, 1.0, num_bins + 1)  # 0.30000000000000004 etc.: 0.3 falls in [0.2, 0.3...04)
    bins = np.digitize(conf, edges[1:-1], right=False)  # [N] index b with edges[b] <= c < edges[b + 1]
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += in_bin.mean() * abs(hits[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def roc_auc(confidences: Sequence[float], correct: Sequence[int]) -> float:
    """P(conf of a correct answer > conf of a wrong one) + 1/2 P(tie), i.e. sklearn's ROC-AUC; nan with one class."""
    conf = np.asarray(confidences, dtype=np.float64)
    hits = np.asarray(correct, dtype=bool)
    positives = conf[hits]  # confidences of the correct answers
    negatives = conf[~hits]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return float(greater / (len(positives) * len(negatives)))


def parse_eval_confidence(text: str) -> Optional[float]:
    """The DA raw confidence [code parse_eval.py]: the case-sensitive regex, else the last number of the last line
    when its decimal is .0 or .5 (> 10 divided by 10); None when nothing is found."""
    match = EVAL_RE.search(text)
    if match:
        return float(match.group(1))
    lines = text.strip().splitlines()
    numbers = re.findall(r"\d+(?:\.\d+)?", lines[-1]) if lines else []
    if not numbers or float(numbers[-1]) % 0.5 != 0:
        return None
    value = float(numbers[-1])
    return value / 10 if value > 10 else value


def scale_confidences(raw: Sequence[Optional[float]]) -> list[float]:
    """Raw DA confidences to [0, 1] (<= 10: / 10, <= 100: / 100, else 1); missing -> the most common raw value / 10."""
    stated = [r for r in raw if r is not None]
    if not stated:
        fail("no evaluation sample states a confidence, even after the retries: check the prompt format")

    def scale(r: float) -> float:
        return r / 10 if r <= 10 else r / 100 if r <= 100 else 1.0

    mode = Counter(stated).most_common(1)[0][0]
    return [scale(r) if r is not None else scale(mode) for r in raw]


# ALGO LOGIC: the models' parts of PPO: rollouts, per-token log-probs, RM rewards, critic values, per micro-batch ---
MASKED_LOGIT = -1e4  # a token the toy's decoding forbids: softmax weight exactly 0, finite in bf16 and after / T


def micro_batches(num_rows: int, size: int, device) -> list[torch.Tensor]:
    """Row indices of consecutive micro-batches of at most `size` rows."""
    return list(torch.arange(num_rows, device=device).split(size))


@torch.no_grad()
def generate(model, prompt_ids, prompt_mask, stop_ids, args: Args, allowed=None, max_new_tokens=None, top_k=None):
    """One sample per row with the KV cache, in `generate` calls of at most --generation-batch-size rows; returns
    response ids [B, T] (pad after the first stop) and mask [B, T] (1 up to and including the first stop).

    Sampling is plain temperature sampling unless `top_k` > 0 (the official actor passes top_k=None) [OpenRLHF
    models/actor.py]; only the options given here apply, never the checkpoint's generation defaults."""
    max_new_tokens = max_new_tokens or args.max_new_tokens
    top_k = args.top_k if top_k is None else top_k
    # top_k 0 = no top-k: transformers 5 fills an unset (None) top_k with 50, where the code's version kept None
    config = GenerationConfig(
        do_sample=True,
        temperature=args.temperature,
        top_k=top_k,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=model.config.pad_token_id,
    )

    def position_mask(input_ids, scores):  # constrained decoding: at response position t only allowed[t]
        t = min(input_ids.shape[1] - prompt_ids.shape[1], len(allowed) - 1)
        return scores.masked_fill(~allowed[t], float("-inf"))  # [b, V]

    processors = LogitsProcessorList([position_mask] if allowed is not None else [])
    was_training = model.training
    chunks = []
    with only_given_generation_options(model.eval()):
        for rows in micro_batches(len(prompt_ids), args.generation_batch_size, prompt_ids.device):
            out = model.generate(prompt_ids[rows], config, processors, attention_mask=prompt_mask[rows])  # [b, P+t]
            response = out[:, prompt_ids.shape[1] :]  # [b, t] t <= max_new_tokens: a chunk stops when all rows did
            chunks.append(F.pad(response, (0, max_new_tokens - response.shape[1]), value=-1))  # [b, T]
    model.train(was_training)
    ids = torch.cat(chunks)  # [B, T] -1 after the end of a chunk
    mask = completion_mask(ids, stop_ids) * (ids >= 0)  # [B, T] up to and including the first stop, not the -1s
    return ids * mask + model.config.pad_token_id * (1 - mask), mask


def end_truncated(ids, mask, stop_ids, eos_token_id: int, truncation: str = "eos"):
    """Responses that reached max_new_tokens without a stop token ([B] bool) and what becomes of them.

    `eos` [OpenRLHF models/actor.py process_sequences]: EOS is written into their last position, so the RM reads its
    reward at an EOS and the last action the policy is trained on is EOS. `penalty`: they stay as sampled; their
    score is replaced by a fixed value (`apply_missing_eos_penalty`), as summarize-from-feedback's PPO does."""
    last_is_stop = torch.isin(ids[:, -1], torch.as_tensor(stop_ids, device=ids.device))  # [B]
    truncated = (mask[:, -1] == 1) & ~last_is_stop  # [B] attended up to the last position, no stop there or before
    if truncation == "eos":
        ids = ids.clone()
        ids[truncated, -1] = eos_token_id  # [B, T]
    elif truncation != "penalty":
        raise ValueError(f"unknown truncation {truncation!r}: eos or penalty")
    return ids, mask, truncated


def apply_missing_eos_penalty(scores: torch.Tensor, truncated: torch.Tensor, penalty: float) -> torch.Tensor:
    """The RM score with a fixed `penalty` for every response without an EOS ([B])."""
    return torch.where(truncated, torch.full_like(scores, penalty), scores)  # [B]


def logprobs(model, prompt_ids, prompt_mask, ids, mask, temperature: float = 1.0, allowed=None, with_entropy=True):
    """log pi(token_t | prefix) of every response token [B, T] (0 after EOS), under the decoding mask when given,
    and the token entropy [B, T] (no gradient). The LM head runs on the response positions only and the fp32
    log-softmax one chunk of positions at a time (shared/lm.py): no fp32 [B, T, V] copy is made."""
    if allowed is None:
        logp, entropy = completion_logprobs(model, prompt_ids, prompt_mask, ids, mask, temperature, with_entropy)
    else:
        input_ids = torch.cat([prompt_ids, ids], 1)  # [B, P+T]
        attention_mask = torch.cat([prompt_mask, mask], 1)  # [B, P+T]
        predicting = torch.arange(prompt_ids.shape[1] - 1, input_ids.shape[1] - 1, device=ids.device)  # [T]
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            logits_to_keep=predicting,
            use_cache=False,
        ).logits  # [B, T, V] position P-1+t predicts response token t
        logits = logits.masked_fill(~allowed[: ids.shape[1]][None], MASKED_LOGIT)  # [B, T, V]
        logp = selective_log_softmax(logits, ids, temperature)  # [B, T]
        entropy = token_entropy(logits.detach(), temperature) if with_entropy else None  # [B, T]
    return logp.masked_fill(mask == 0, 0.0), entropy


def token_scores(rm, input_ids, attention_mask) -> torch.Tensor:
    """The RM head on every position, raw [B, L] fp32 (backbone + bias-free linear head)."""
    backbone = getattr(rm, rm.base_model_prefix)
    positions = position_ids_from_mask(attention_mask)  # [B, L]
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
    ).last_hidden_state  # [B, L, H]
    return rm.score(hidden).squeeze(-1).float()  # [B, L]


def normalisation(model) -> tuple[float, float]:
    """(mean, std) of OpenRLHF's --normalize_reward when the model's config asks for it, else (0, 1)."""
    if not getattr(model.config, "normalize_reward", False):
        return 0.0, 1.0
    return getattr(model.config, "mean", 0.0), getattr(model.config, "std", 1.0)


def rm_reward(rm, prompt_ids, prompt_mask, ids, mask, normalise: bool = True) -> torch.Tensor:
    """Sequence reward [B], read at the last attended token (the EOS) [OpenRLHF models/model.py RewardModel]."""
    attention_mask = torch.cat([prompt_mask, mask], 1)  # [B, P+T]
    scores = token_scores(rm, torch.cat([prompt_ids, ids], 1), attention_mask)  # [B, P+T]
    last = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(1)  # [B]
    reward = scores.gather(1, last[:, None]).squeeze(1)  # [B]
    mean, std = normalisation(rm) if normalise else (0.0, 1.0)
    return (reward - mean) / std  # [B] normalised by the stored statistics (OpenRLHF --normalize_reward)


def critic_values(critic, prompt_ids, prompt_mask, ids, mask) -> torch.Tensor:
    """V before each response token [B, T], normalised like the reward [OpenRLHF models/model.py CriticModel]."""
    scores = token_scores(critic, torch.cat([prompt_ids, ids], 1), torch.cat([prompt_mask, mask], 1))  # [B, P+T]
    values = scores[:, prompt_ids.shape[1] - 1 : -1]  # [B, T] the state before token t
    mean, std = normalisation(critic)
    return (values - mean) / std  # [B, T]


@torch.no_grad()
def score_rollout(policy, ref_policy, critic, inputs, args: Args, precision: Precision, allowed):
    """log pi_old, log pi_ref and V_old of the sampled tokens ([B, T] each), --forward-batch-size rows at a time."""
    old_logp = []
    ref_logp = []
    old_values = []
    for mb in micro_batches(len(inputs[0]), args.forward_batch_size, inputs[0].device):
        chunk = [x[mb] for x in inputs]
        with precision.autocast():
            old_logp.append(logprobs(policy, *chunk, args.temperature, allowed, with_entropy=False)[0])  # [m, T]
            ref_logp.append(logprobs(ref_policy, *chunk, args.temperature, allowed, with_entropy=False)[0])  # [m, T]
            old_values.append(critic_values(critic, *chunk))  # [m, T]
    return torch.cat(old_logp), torch.cat(ref_logp), torch.cat(old_values)


@torch.no_grad()
def score_sequences(rm, prompt_ids, prompt_mask, ids, mask, batch_size: int, precision: Precision) -> torch.Tensor:
    """rm_reward of every row ([B]), `batch_size` rows per forward."""
    rewards = []
    for mb in micro_batches(len(ids), batch_size, ids.device):
        with precision.autocast():
            rewards.append(rm_reward(rm, prompt_ids[mb], prompt_mask[mb], ids[mb], mask[mb]))  # [m]
    return torch.cat(rewards)


def accumulate_policy_gradients(policy, inputs, old_logp, advantages, args: Args, precision: Precision, allowed):
    """Forward and backward of policy_loss per micro-batch of --micro-train-batch-size rows, each scaled by its share
    of the minibatch (the loss is a mean over sequences), so the gradients add up to the whole minibatch's.
    Returns the minibatch loss and its log-probs and entropies ([M, T] each, detached)."""
    mask = inputs[3].float()  # [M, T]
    num_rows = len(advantages)
    total = 0.0
    logps = []
    entropies = []
    for mb in micro_batches(num_rows, args.micro_train_batch_size, advantages.device):
        with precision.autocast():
            logp, entropy = logprobs(policy, *(x[mb] for x in inputs), args.temperature, allowed)  # [m, T]
        loss = policy_loss(logp, old_logp[mb], advantages[mb], mask[mb], args.eps_clip) * len(mb) / num_rows
        precision.backward(loss)
        total += loss.item()
        logps.append(logp.detach())
        entropies.append(entropy)
    return total, torch.cat(logps), torch.cat(entropies)


def accumulate_value_gradients(critic, inputs, old_values, returns, args: Args, precision: Precision) -> float:
    """Forward and backward of value_loss per micro-batch, scaled as in accumulate_policy_gradients."""
    mask = inputs[3].float()  # [M, T]
    num_rows = len(returns)
    total = 0.0
    for mb in micro_batches(num_rows, args.micro_train_batch_size, returns.device):
        with precision.autocast():
            values = critic_values(critic, *(x[mb] for x in inputs))  # [m, T]
        loss = value_loss(values, old_values[mb], returns[mb], mask[mb], args.value_clip) * len(mb) / num_rows
        precision.backward(loss)
        total += loss.item()
    return total


def accumulate_crm_gradients(crm, variants, combined: bool, micro_batch_size: int, precision: Precision):
    """Forward and backward of calibrated_rm_loss per micro-batch of pairs; `variants` = six (ids, mask) pairs of
    [n, L] tensors in the order c, r, cwh, cwl, rwh, rwl. Returns the batch loss and the six raw rewards [n] each."""
    num_pairs = len(variants[0][0])
    total = 0.0
    rewards = [[] for _ in variants]
    for mb in micro_batches(num_pairs, micro_batch_size, variants[0][0].device):
        with precision.autocast():
            r_c, r_r, r_cwh, r_cwl, r_rwh, r_rwl = [sequence_rewards(crm, ids[mb], mask[mb]) for ids, mask in variants]
        extra = (r_c, r_r) if combined else ()
        loss = calibrated_rm_loss(r_cwh, r_cwl, r_rwh, r_rwl, *extra) * len(mb) / num_pairs  # each term a batch mean
        precision.backward(loss)
        total += loss.item()
        for kept, r in zip(rewards, (r_c, r_r, r_cwh, r_cwl, r_rwh, r_rwl)):
            kept.append(r.detach())
    return total, [torch.cat(r) for r in rewards]


def sequence_rewards(rm, ids, mask) -> torch.Tensor:
    """Raw reward ([B]) at the last attended token of whole sequences."""
    return rm_reward(rm, ids[:, :0], mask[:, :0], ids, mask, normalise=False)


# TRY NOT TO MODIFY: the toy world, keys with known odds (reconstruction) -----------------------------------------
class KeysWithOdds:
    """32 keys `0`..`31` in 4 tiers of odds p; truth = the key's mode letter w.p. p, else one of the other 9."""

    ODDS = (0.1, 0.4, 0.7, 1.0)  # the four tiers: the best accuracy on a key of tier p is p, its calibrated conf 10p
    NUM_KEYS = 32
    ANSWERS = list("abcdefghij")

    def __init__(self, tokenizer, device, seed: int = 1234):
        self.tok = tokenizer
        self.device = device
        self.modes = torch.as_tensor(np.random.RandomState(seed).randint(10, size=self.NUM_KEYS), device=device)
        self.odds = torch.tensor([self.ODDS[k * 4 // self.NUM_KEYS] for k in range(self.NUM_KEYS)], device=device)
        self.answer_ids = torch.tensor(tokenizer.convert_tokens_to_ids(self.ANSWERS), device=device)  # [10]
        allowed = torch.zeros(5, len(tokenizer), dtype=torch.bool, device=device)  # [T, V] constrained decoding
        per_position = [self.ANSWERS, ["confidence", tokenizer.eos_token], [":"], list(map(str, range(11)))]
        for t, words in enumerate(per_position + [[tokenizer.eos_token]]):  # answer, {confidence, EOS}, :, 0..10, EOS
            allowed[t, tokenizer.convert_tokens_to_ids(words)] = True
        self.allowed = allowed

    def draw(self, n: int, gen: torch.Generator, keys=None):
        """n instances: keys [n] (uniform unless given) and truths [n] (answer indices)."""
        keys = torch.randint(self.NUM_KEYS, (n,), generator=gen).to(self.device) if keys is None else keys
        other = (self.modes[keys] + torch.randint(1, 10, (n,), generator=gen).to(self.device)) % 10  # [n] != mode
        hit = torch.rand(n, generator=gen).to(self.device) < self.odds[keys]  # [n]
        return keys, torch.where(hit, self.modes[keys], other)

    def encode(self, texts: list[str], side: str, length: int | None = None):
        batch = self.tok(
            texts,
            add_special_tokens=False,
            return_tensors="pt",
            padding_side=side,
            padding="max_length" if length else True,
            max_length=length,
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def prompts(self, keys, query=True, truths=None):
        """Policy prompt `confidence ? Q k A` (plain `Q k A`), left-padded; with truths, the RM's `... ref t`."""
        query = torch.as_tensor(query).expand(len(keys)).tolist()
        refs = [""] * len(keys) if truths is None else [f" ref {self.ANSWERS[t]}" for t in truths.tolist()]
        texts = [("confidence ? " if q else "") + f"Q {k} A{r}" for q, k, r in zip(query, keys.tolist(), refs)]
        return self.encode(texts, "left", 7 if truths is not None else 5)  # [n, 5] or [n, 7]

    def responses(self, answers, confidences):
        """`a confidence : 7 <eos>`; a confidence of -1 gives `a <eos>` (right-padded to 5 tokens)."""
        pairs = zip(answers.tolist(), confidences.tolist())
        eos = self.tok.eos_token
        texts = [self.ANSWERS[a] + (f" confidence : {c}" if c >= 0 else "") + f" {eos}" for a, c in pairs]
        return self.encode(texts, "right", 5)  # [n, 5]

    def sequences(self, keys, truths, answers, confidences):
        """The RM's full sequences `<prompt> ref t` + response ([n, 12])."""
        prompt_ids, prompt_mask = self.prompts(keys, True, truths)  # [n, 7]
        ids, mask = self.responses(answers, confidences)  # [n, 5]
        return torch.cat([prompt_ids, ids], 1), torch.cat([prompt_mask, mask], 1)  # [n, 12]


def toy_text(text: str, back: bool = False) -> str:
    """The word-level tokenizer writes `confidence :`; the code's regexes expect `Confidence:` (back: the reverse)."""
    return text.replace("Confidence:", "confidence :") if back else text.replace("confidence :", "Confidence:")


def decode(tokenizer, ids, mask, toy: bool) -> list[str]:
    """Attended tokens as text, special tokens kept (as the code decodes for the parser and the stripper)."""
    texts = tokenizer.batch_decode([row[m.bool()].tolist() for row, m in zip(ids, mask)], skip_special_tokens=False)
    return [toy_text(t) if toy else t for t in texts]


def strip_and_retokenise(tokenizer, texts: list[str], toy: bool, device):
    """The RM's view of a response: confidence stripped, " " + EOS added if missing, re-tokenised (right padding)."""
    eos = tokenizer.eos_token
    stripped = [strip_confidence(text) for text in texts]
    stripped = [text if text.endswith(eos) else f"{text} {eos}" for text in stripped]
    stripped = [toy_text(text, back=True) if toy else text for text in stripped]
    batch = tokenizer(stripped, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


# ALGO LOGIC: the toy's SFT start, vanilla RM and CRM (reconstruction: the code starts from released checkpoints) ---
def toy_sft(policy, world: KeysWithOdds, args: Args, run: RunLogger, gen) -> None:
    """SFT on instance truths with confidence labels clip(round(10p + N(0, 2.5^2))); a quarter of the prompts are
    plain (no confidence query) and their responses state no confidence."""
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.sft_learning_rate, betas=ADAM_BETAS)
    batch_size = args.sft_batch_size
    progress = Progress("toy SFT", total=args.sft_steps)
    for step in range(args.sft_steps):
        keys, truths = world.draw(batch_size, gen)  # [n], [n]
        query = torch.rand(batch_size, generator=gen).to(world.device) >= SFT_PLAIN_PROMPT_SHARE  # [n]
        noise = SFT_LABEL_NOISE * torch.randn(batch_size, generator=gen).to(world.device)  # [n]
        label = (10 * world.odds[keys] + noise).round().clamp(0, 10)  # [n] a rough calibrated confidence 10p
        ids, mask = world.responses(truths, torch.where(query, label.long(), -1))  # [n, 5]
        logp, _ = logprobs(policy, *world.prompts(keys, query), ids, mask)  # [n, 5]
        loss = -(logp * mask).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % SFT_LOG_EVERY == 0:
            run.log(step, {"losses/sft_loss": loss.item()}, echo=False, arm="sft")
        progress.update(loss=loss.item())
    progress.done()


def toy_rm_pairs(world: KeysWithOdds, n: int, gen):
    """2n sequences (chosen first) in thirds: truth > wrong (no conf); (truth, 6-10) > (wrong, 0-10); conf > none."""
    keys, truths = world.draw(n, gen)  # [n], [n]

    def draw_ints(low: int, high: int) -> torch.Tensor:  # [n] uniform on low..high-1
        return torch.randint(low, high, (n,), generator=gen).to(world.device)

    wrong = (truths + draw_ints(1, 10)) % 10  # [n] a wrong answer
    no_confidence = torch.full_like(keys, -1)  # [n]
    kind = torch.arange(n) % 3  # [n] which third
    same = torch.where(draw_ints(0, 2) == 1, truths, wrong)  # [n] kind 2: one answer, with vs without a confidence
    chosen_answer = torch.where(kind == 2, same, truths)  # [n]
    rejected_answer = torch.where(kind == 2, same, wrong)  # [n]
    chosen_conf = torch.where(kind == 0, no_confidence, torch.where(kind == 1, draw_ints(6, 11), draw_ints(0, 11)))
    rejected_conf = torch.where(kind == 1, draw_ints(0, 11), no_confidence)  # [n]
    answers = torch.cat([chosen_answer, rejected_answer])  # [2n]
    confidences = torch.cat([chosen_conf, rejected_conf])  # [2n]
    return world.sequences(keys.repeat(2), truths.repeat(2), answers, confidences)  # [2n, 12] each


def toy_rm(policy, world: KeysWithOdds, args: Args, run: RunLogger, gen):
    """The vanilla (biased) RM: SFT backbone + linear head, Bradley-Terry on toy_rm_pairs; mean/std in its config."""
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(config).to(world.device)
    getattr(rm, rm.base_model_prefix).load_state_dict(getattr(policy, policy.base_model_prefix).state_dict())
    optimizer = torch.optim.Adam(rm.parameters(), lr=args.rm_learning_rate, betas=ADAM_BETAS)
    progress = Progress("toy RM", total=args.rm_steps)
    for step in range(args.rm_steps):
        chosen, rejected = sequence_rewards(rm, *toy_rm_pairs(world, args.rm_batch_size, gen)).chunk(2)  # [n], [n]
        loss = -F.logsigmoid(chosen - rejected).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % RM_LOG_EVERY == 0:
            accuracy = (chosen > rejected).float().mean().item()
            margin = (chosen - rejected).mean().item()
            metrics = {"losses/rm_loss": loss.item(), "rewards/accuracies": accuracy, "rewards/margins": margin}
            run.log(step, metrics, echo=False, arm="rm")
        progress.update(loss=loss.item())
    progress.done()
    with torch.no_grad():  # OpenRLHF --normalize_reward: mean / std of chosen and rejected rewards on held-out pairs
        rewards = sequence_rewards(rm, *toy_rm_pairs(world, STATISTICS_PAIRS, gen))  # [2 STATISTICS_PAIRS]
    rm.config.mean = rewards.mean().item()
    rm.config.std = rewards.std().item()
    rm.config.normalize_reward = True  # the toy's RM is used as the code uses its RMs: with --normalize_reward
    return rm


def toy_crm_variants(world: KeysWithOdds, n: int, gen):
    """Six variants of n pairs (truth vs wrong): c, r, cwh, cwl, rwh, rwl; high ~ U{7..10}, low ~ U{0..3}
    [OpenRLHF datasets/calibrated_reward_dataset.py]."""
    keys, truths = world.draw(n, gen)  # [n], [n]

    def draw_ints(low: int, high: int) -> torch.Tensor:  # [n] uniform on low..high-1
        return torch.randint(low, high, (n,), generator=gen).to(world.device)

    wrong = (truths + draw_ints(1, 10)) % 10  # [n]
    no_confidence = torch.full_like(keys, -1)  # [n]
    answers = torch.cat([truths, wrong, truths, truths, wrong, wrong])  # [6n]
    high_low = [draw_ints(7, 11), draw_ints(0, 4), draw_ints(7, 11), draw_ints(0, 4)]  # each drawn independently
    confidences = torch.cat([no_confidence, no_confidence, *high_low])  # [6n]
    return world.sequences(keys.repeat(6), truths.repeat(6), answers, confidences)  # [6n, 12] each


def train_crm(rm, world: KeysWithOdds, args: Args, run: RunLogger, gen):
    """PPO-M's calibrated RM on the toy: a copy of the vanilla RM fine-tuned with calibrated_rm_loss; its mean / std
    over all six variants go into its config [OpenRLHF trainer/crm_trainer.py]."""
    crm = copy.deepcopy(rm).train()
    optimizer = torch.optim.Adam(crm.parameters(), lr=args.crm_learning_rate, betas=ADAM_BETAS)
    progress = Progress("toy CRM", total=args.crm_steps)
    for step in range(args.crm_steps):
        variants = toy_crm_variants(world, args.crm_batch_size, gen)  # [6n, 12] each
        r_c, r_r, r_cwh, r_cwl, r_rwh, r_rwl = sequence_rewards(crm, *variants).chunk(6)  # [n] each
        extra = (r_c, r_r) if args.crm_loss == "combined" else ()
        loss = calibrated_rm_loss(r_cwh, r_cwl, r_rwh, r_rwl, *extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(crm.parameters(), args.max_grad_norm)
        optimizer.step()
        if step % CRM_LOG_EVERY == 0:
            accuracy = (r_rwl > r_rwh).float().mean().item()
            margin = (r_cwh - r_cwl).mean().item()
            metrics = {"losses/rm_loss": loss.item(), "rewards/accuracies": accuracy, "rewards/margins": margin}
            run.log(step, metrics, echo=False, arm="crm")
        progress.update(loss=loss.item())
    progress.done()
    with torch.no_grad():
        rewards = sequence_rewards(crm, *toy_crm_variants(world, STATISTICS_PAIRS, gen))  # [6n] all six variants
    crm.config.mean = rewards.mean().item()
    crm.config.std = rewards.std().item()
    return crm.eval()


# ALGO LOGIC: the CRM on a real preference data set [OpenRLHF cli/train_crm.py, trainer/crm_trainer.py] -----------
# the six columns of the code's CRM data (HINT-lab/calibration_preference_mixture_final-v0.1)
# [OpenRLHF datasets/calibrated_reward_dataset.py]
CRM_COLUMNS = ("chosen", "rejected", "chosen_high", "chosen_low", "rejected_high", "rejected_low")  # c r cwh cwl rwh


def crm_text(tokenizer, sample) -> str:
    """One CRM sequence as the code builds it: a conversation (a list of role/content turns) through the chat
    template, or a plain string; trailing newlines stripped and " " + EOS added unless it ends with EOS."""
    text = tokenizer.apply_chat_template(sample, tokenize=False) if isinstance(sample, list) else str(sample)
    text = text.rstrip("\n")
    return text if text.endswith(tokenizer.eos_token) else f"{text} {tokenizer.eos_token}"


def encode_crm_rows(tokenizer, rows: dict, max_length: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The six variants of a batch of rows (a dict of CRM_COLUMNS lists) as right-padded (ids, mask) [n, L] each,
    truncated to max_length with EOS forced into the last token (the code's "avoid EOS truncation")."""
    template = tokenizer.chat_template or ""
    add_special = not (tokenizer.bos_token and tokenizer.bos_token in template)  # the template may write the BOS
    variants = []
    for column in CRM_COLUMNS:
        texts = [crm_text(tokenizer, sample) for sample in rows[column]]
        batch = tokenizer(
            texts,
            add_special_tokens=add_special,
            truncation=True,
            max_length=max_length,
            padding=True,
            padding_side="right",
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(device)  # [n, L]
        mask = batch["attention_mask"].to(device)  # [n, L]
        last = mask.sum(1) - 1  # [n] the last attended token
        ids[torch.arange(len(ids), device=device), last] = tokenizer.eos_token_id
        variants.append((ids, mask))
    return variants


def fit_crm(crm, train_rows, eval_rows, tokenizer, args: Args, run: RunLogger, precision: Precision):
    """PPO-M's calibrated RM from the vanilla RM (with its head): --crm-epochs over `train_rows` with
    calibrated_rm_loss, --crm-batch-size pairs per Adam step, then the mean / std of all six variants' raw rewards
    on `eval_rows` into the config (OpenRLHF's statistics for --normalize_reward)."""
    crm.train().requires_grad_(True)
    parameters = trained_parameters(crm)
    optimizer = precision.prepare_optimizer(torch.optim.Adam(parameters, lr=args.crm_learning_rate, betas=ADAM_BETAS))
    order = torch.Generator().manual_seed(args.seed)  # the shuffle of each epoch
    step = 0
    batches_per_epoch = math.ceil(len(train_rows) / args.crm_batch_size)
    progress = Progress("CRM fitting", total=args.crm_epochs * batches_per_epoch)
    for _ in range(args.crm_epochs):
        for batch in torch.randperm(len(train_rows), generator=order).split(args.crm_batch_size):
            variants = encode_crm_rows(tokenizer, train_rows[batch.tolist()], args.crm_max_length, precision.device)
            optimizer.zero_grad(set_to_none=True)
            loss, (r_c, r_r, r_cwh, r_cwl, r_rwh, r_rwl) = accumulate_crm_gradients(
                crm, variants, args.crm_loss == "combined", args.crm_micro_batch_size, precision
            )
            grad_norm = precision.clip_grad_norm_(parameters, args.max_grad_norm)
            optimizer.step()
            accuracy = ((r_cwh > r_cwl).float().mean() + (r_rwl > r_rwh).float().mean()).item() / 2
            metrics = {"losses/rm_loss": loss, "rewards/accuracies": accuracy, "charts/grad_norm": grad_norm.item()}
            metrics["rewards/margins"] = (r_cwh - r_cwl).mean().item()
            metrics["rewards/chosen_over_rejected"] = (r_c > r_r).float().mean().item()
            run.log(step, metrics, echo=False, arm="crm")
            progress.update(loss=loss)
            step += 1
    progress.done()
    precision.release()
    crm.eval().requires_grad_(False)
    rewards = []
    eval_batches = torch.arange(len(eval_rows)).split(args.crm_batch_size)
    progress = Progress("CRM statistics", total=len(eval_batches))
    with torch.no_grad():
        for batch in eval_batches:
            variants = encode_crm_rows(tokenizer, eval_rows[batch.tolist()], args.crm_max_length, precision.device)
            for ids, mask in variants:
                for mb in micro_batches(len(ids), args.crm_micro_batch_size, ids.device):
                    with precision.autocast():
                        rewards.append(sequence_rewards(crm, ids[mb], mask[mb]))  # [m]
            progress.update()
    progress.done()
    rewards = torch.cat(rewards)  # [6 n_eval] all six variants
    crm.config.mean = rewards.mean().item()
    crm.config.std = rewards.std().clamp(min=1e-8).item()
    return crm


@torch.no_grad()
def rm_probe(rm, world: KeysWithOdds, gen) -> dict[str, float]:
    """How often an RM prefers (wrong, low) over (wrong, high), (right, high) over (right, low), right over wrong."""
    variants = toy_crm_variants(world, STATISTICS_PAIRS, gen)  # [6n, 12] each
    r_c, r_r, r_cwh, r_cwl, r_rwh, r_rwl = sequence_rewards(rm, *variants).chunk(6)  # [n] each
    pairs = {"wrong: low > high": (r_rwl, r_rwh), "right: high > low": (r_cwh, r_cwl), "right > wrong": (r_c, r_r)}
    return {f"P({name})": (a > b).float().mean().item() for name, (a, b) in pairs.items()}


# ALGO LOGIC: the PPO loop of one arm [OpenRLHF trainer/cppo_trainer.py] ----------------------------------------------
def train_ppo(
    arm, policy, ref_policy, critic, reward_model, batches, tokenizer, args: Args, run: RunLogger, allowed, precision
):
    """PPO against `reward_model`, with the PPO-C adjustment when arm == ppo-c."""
    actor_parameters = trained_parameters(policy)
    critic_parameters = trained_parameters(critic)
    actor_adam = torch.optim.Adam(actor_parameters, lr=args.actor_learning_rate, betas=ADAM_BETAS)
    critic_adam = torch.optim.Adam(critic_parameters, lr=args.critic_learning_rate, betas=ADAM_BETAS)
    actor_optimizer = precision.prepare_optimizer(actor_adam)
    critic_optimizer = precision.prepare_optimizer(critic_adam)
    stop_ids = stop_token_ids(tokenizer, policy)
    toy = allowed is not None
    parse_whole_sequence = args.confidence_scope == "sequence"  # the code parses the decoded prompt + response
    reward_avg = getattr(reward_model.config, "mean", 0.0) if args.reward_avg_init == "rm_mean" else 0.0  # rbar
    for step in range(args.steps):
        # 1. a rollout of prompts (the policy's view and the RM's view of each), one sample per prompt, generated in
        #    chunks; a response cut at --max-new-tokens gets EOS in its last position (or keeps its tokens: penalty)
        prompt_ids, prompt_mask, rm_prompt_ids, rm_prompt_mask = batches(arm != "ppo-clean")
        with precision.autocast():
            ids, mask = generate(policy, prompt_ids, prompt_mask, stop_ids, args, allowed)  # [B, T], [B, T]
        ids, mask, truncated = end_truncated(ids, mask, stop_ids, tokenizer.eos_token_id, args.truncation)  # [B]
        float_mask = mask.float()  # [B, T]
        inputs = (prompt_ids, prompt_mask, ids, mask)
        # 2. log pi_old, log pi_ref and V_old of the sampled tokens, --forward-batch-size rows per forward
        old_logp, ref_logp, old_values = score_rollout(policy, ref_policy, critic, inputs, args, precision, allowed)
        # 3. the reward: the RM (CRM) on the full response; PPO-C: parse c, strip it, score, adjust
        texts = decode(tokenizer, ids, mask, toy)
        heads = decode(tokenizer, prompt_ids, prompt_mask, toy) if parse_whole_sequence else [""] * len(texts)
        confidences = torch.tensor([parse_confidence(f"{h} {t}") for h, t in zip(heads, texts)]).to(ids.device)  # [B]
        stated = torch.tensor([PARSE_RE.search(t) is not None for t in texts], dtype=torch.float)  # [B]
        scored = strip_and_retokenise(tokenizer, texts, toy, ids.device) if arm == "ppo-c" else (ids, mask)
        rm_inputs = (rm_prompt_ids, rm_prompt_mask, *scored)
        rm_rewards = score_sequences(reward_model, *rm_inputs, args.forward_batch_size, precision)  # [B]
        rm_rewards = rm_rewards.clamp(-REWARD_CLAMP, REWARD_CLAMP)  # [B]
        if args.truncation == "penalty":  # summarize-from-feedback: a fixed score for a response without EOS
            rm_rewards = apply_missing_eos_penalty(rm_rewards, truncated, args.penalty_reward_value)  # [B]
        rewards = rm_rewards
        if arm == "ppo-c":  # the RM scored the response with its confidence stripped
            adjusted_chunks = []
            for chunk in torch.arange(len(ids)).split(args.micro_rollout_batch_size):  # one rbar per micro-rollout
                adjusted, reward_avg = ppo_c_adjust(
                    rm_rewards[chunk], confidences[chunk], reward_avg, args.alpha, args.weight, args.adjustment_type
                )
                adjusted_chunks.append(adjusted)  # [m] each
            rewards = torch.cat(adjusted_chunks)  # [B]
        # 4. token rewards: -beta k1 on every token, the reward at EOS; GAE, returns, whitened advantages
        with torch.no_grad():
            per_token, kl = token_rewards(rewards, old_logp, ref_logp, float_mask, args.beta)  # [B, T], [B, T]
            advantages, returns = gae(per_token, old_values, float_mask, args.gamma, args.lam)  # [B, T], [B, T]
            advantage_std = advantages[mask.bool()].std().item()
            advantages = whiten(advantages, float_mask)  # [B, T]
        # 5. one PPO epoch: actor and critic minibatch steps, forward and backward per --micro-train-batch-size rows
        stats = defaultdict(list)
        for minibatch_rows in torch.randperm(len(ids)).split(len(ids) // args.num_minibatches):
            rows = minibatch_rows.to(ids.device)
            minibatch = [x[rows] for x in inputs]
            actor_optimizer.zero_grad(set_to_none=True)
            loss, logp, entropy = accumulate_policy_gradients(
                policy, minibatch, old_logp[rows], advantages[rows], args, precision, allowed
            )  # [M, T] each
            grad_norm = precision.clip_grad_norm_(actor_parameters, args.max_grad_norm)
            actor_optimizer.step()
            critic_optimizer.zero_grad(set_to_none=True)
            v_loss = accumulate_value_gradients(critic, minibatch, old_values[rows], returns[rows], args, precision)
            precision.clip_grad_norm_(critic_parameters, args.max_grad_norm)
            critic_optimizer.step()
            # TRY NOT TO MODIFY: the minibatch's statistics
            row_mask = float_mask[rows]  # [M, T]
            out_of_range = ((logp - old_logp[rows]).exp() - 1).abs() > args.eps_clip  # [M, T]
            stats["clip_ratio/region_mean"].append(((out_of_range * row_mask).sum() / row_mask.sum()).item())
            stats["entropy"].append(((entropy * row_mask).sum() / row_mask.sum()).item())
            stats["losses/policy_loss"].append(loss)
            stats["losses/value_loss"].append(v_loss)
            stats["charts/grad_norm"].append(grad_norm.item())
        # 6. TRY NOT TO MODIFY: log TRL's / OpenRLHF's names, the same for every arm (a TensorBoard run per arm)
        metrics = {k: float(np.mean(v)) for k, v in stats.items()}
        metrics["reward"] = rewards.mean().item()
        metrics["reward_std"] = rewards.std().item()
        metrics["kl"] = kl.sum(1).mean().item()  # k1 per sequence
        metrics["rewards/rm_mean"] = rm_rewards.mean().item()
        metrics["charts/advantage_std"] = advantage_std
        metrics["rewards/confidence_mean"] = confidences.mean().item()  # c, 0.5 where none is stated
        metrics["rewards/stated_rate"] = stated.mean().item()
        metrics["completions/clipped_ratio"] = truncated.float().mean().item()  # cut at --max-new-tokens
        if arm == "ppo-c":
            metrics["rewards/reward_avg"] = reward_avg
        run.log(step, metrics, arm=arm)
    precision.release()  # the arm's optimizer states go with its policy and critic


# ALGO LOGIC: evaluation of a policy [code query/query.py, parse_eval.py] -----------------------------------------
def answer_matches(text: str, gold: str, eos: str = "") -> bool:
    """Exact match ignoring case and punctuation of the `Answer:` line (else the first line) [code parse_eval.py]."""
    text = text.replace(eos, "") if eos else text
    match = re.search(r"Answer:\s*(.*)", text)
    answer = match.group(1) if match else (text.strip().splitlines() or [""])[0]

    def normalise(answer_text: str) -> str:
        return re.sub(r"[^\w]", "", strip_confidence(answer_text).lower())

    return normalise(answer) == normalise(gold)


@torch.no_grad()
def evaluate(policy, tokenizer, prompt_ids, prompt_mask, args: Args, allowed, gold, precision: Precision) -> dict:
    """Sample at T = 1 with top-k --eval-top-k, resample outputs without a confidence, then append " Confidence: ";
    ECE, AUC, ACC against `gold`: the toy's answer token ids [N], the real path's answer strings, or None
    (confidences only)."""
    toy = allowed is not None
    stop_ids = stop_token_ids(tokenizer, policy)
    sampling = dict(top_k=args.eval_top_k)  # [code query/query.py]: top_k 50 at evaluation
    progress = Progress("evaluation", total=args.eval_retries + 2)  # a sampling, the resamplings, the continuation
    with precision.autocast():
        ids, mask = generate(policy, prompt_ids, prompt_mask, stop_ids, args, allowed, **sampling)  # [N, T]
    texts = decode(tokenizer, ids, mask, toy)
    stated_rate = float(np.mean([EVAL_RE.search(t) is not None for t in texts]))
    progress.update()
    # [code query/query.py]: up to 10 resamplings, then " Confidence: " appended
    for retry in range(args.eval_retries + 1):
        missing = torch.tensor([i for i, t in enumerate(texts) if not EVAL_RE.search(t)], dtype=torch.long)
        if len(missing) == 0:
            break
        progress.update(missing=len(missing))
        missing = missing.to(ids.device)
        if retry < args.eval_retries:
            prompt = (prompt_ids[missing], prompt_mask[missing])
            with precision.autocast():
                ids[missing], mask[missing] = generate(policy, *prompt, stop_ids, args, allowed, **sampling)
            for i, text in zip(missing.tolist(), decode(tokenizer, ids[missing], mask[missing], toy)):
                texts[i] = text
            continue
        heads = decode(tokenizer, prompt_ids[missing], prompt_mask[missing], toy)
        bodies = [texts[i].removesuffix(tokenizer.eos_token).rstrip() + " Confidence:" for i in missing.tolist()]
        full = [toy_text(f"{h} {b}", back=True) if toy else f"{h} {b}" for h, b in zip(heads, bodies)]
        batch = tokenizer(full, add_special_tokens=False, padding=True, return_tensors="pt").to(ids.device)
        continuation = (batch.input_ids, batch.attention_mask, stop_ids, args, allowed[3:] if toy else None, 8)
        with precision.autocast():
            more = generate(policy, *continuation, **sampling)
        for i, body, tail in zip(missing.tolist(), bodies, decode(tokenizer, *more, toy)):  # the toy: 0..10, EOS
            texts[i] = f"{body} {tail}"
    progress.done(f"{stated_rate:.0%} stated a confidence in the first sample")
    confidences = np.array(scale_confidences([parse_eval_confidence(t) for t in texts]))  # [N]
    if isinstance(gold, torch.Tensor):  # the toy: the answer is response token 0
        correct = (ids[:, 0] == gold).long().cpu().numpy()  # [N]
    else:
        correct = gold and np.array([answer_matches(t, g, tokenizer.eos_token) for t, g in zip(texts, gold)])
    result = {"confidences": confidences, "stated": stated_rate, "texts": texts, "conf": float(confidences.mean())}
    if correct is not None:
        result.update(ece=expected_calibration_error(confidences, correct), auc=roc_auc(confidences, correct))
        result.update(acc=float(np.mean(correct)), correct=correct)
    return result


# TRY NOT TO MODIFY: option checks, reward-model loading, the run ------------------------------------------------
def check_args(args: Args) -> None:
    """Every option is checked before any model, data or training work."""
    rates = (
        "actor_learning_rate",
        "critic_learning_rate",
        "crm_learning_rate",
        "sft_learning_rate",
        "rm_learning_rate",
    )
    for name in rates:  # every learning rate: > 0 and finite (NaN fails too)
        if not 0 < getattr(args, name) < math.inf:
            fail(f"--{name.replace('_', '-')} must be a positive, finite learning rate, got {getattr(args, name)}")
    if args.weight < 0 or not 0 <= args.alpha <= 1:
        fail(f"PPO-C needs --weight >= 0 and --alpha in [0, 1], got --weight {args.weight} --alpha {args.alpha}")
    if not args.arms or len(set(args.arms)) != len(args.arms):
        fail(f"--arms must list distinct arms, got {args.arms}")
    if args.num_minibatches < 1 or args.rollout_batch_size % args.num_minibatches:
        fail(f"--num-minibatches {args.num_minibatches} must divide --rollout-batch-size {args.rollout_batch_size}")
    counts = "steps rollout_batch_size micro_rollout_batch_size micro_train_batch_size forward_batch_size"
    counts += " generation_batch_size max_new_tokens num_threads eval_samples_per_key crm_epochs crm_batch_size"
    for name in (counts + " crm_micro_batch_size crm_max_length sft_batch_size rm_batch_size").split():
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if min(args.temperature, args.max_grad_norm, args.eps_clip, args.value_clip) <= 0:
        fail("--temperature, --max-grad-norm, --eps-clip and --value-clip must be positive")
    if min(args.beta, args.sft_steps, args.rm_steps, args.crm_steps, args.eval_retries, args.num_eval) < 0:
        fail("--beta, --sft-steps, --rm-steps, --crm-steps, --eval-retries and --num-eval must be >= 0")
    if min(args.top_k, args.eval_top_k) < 0 or not math.isfinite(args.penalty_reward_value):
        fail("--top-k and --eval-top-k must be >= 0 (0 = off) and --penalty-reward-value finite")
    if not (0 <= args.lam <= 1 and 0 < args.gamma <= 1):
        fail(f"--lam {args.lam} must be in [0, 1] and --gamma {args.gamma} in (0, 1]")
    if args.dtype == "fp16":
        fail("--dtype fp16: PPO-M/C steps two models (actor, critic) and runs bf16 (the code's) or fp32; use those")
    tiny_parts = [args.model_name == "tiny", args.reward_model_name == "tiny", args.dataset_name == "tiny"]
    toy = all(tiny_parts)
    if any(tiny_parts) and not toy or toy and args.max_new_tokens != 5:
        fail("the toy needs --model-name, --reward-model-name, --dataset-name `tiny` (all or none), --max-new-tokens 5")
    if toy and (args.crm_dataset_name or args.crm_model_name or args.critic_model_name):
        fail("the toy trains its own RM, CRM and critic: --crm-dataset-name, --crm-model-name, --critic-model-name")
    if args.crm_dataset_name and args.crm_model_name:
        fail("pass one of --crm-model-name (a ready calibrated RM) or --crm-dataset-name (fine-tune one), not both")
    if "ppo-m" in args.arms and not toy and not (args.crm_model_name or args.crm_dataset_name):
        fail(
            "ppo-m on the real path needs a calibrated RM: --crm-dataset-name (pairs with the columns "
            f"{', '.join(CRM_COLUMNS)}, fine-tuned from --reward-model-name) or --crm-model-name (a ready one)"
        )


def load_rm(name: str, tokenizer, args: Args, device, dtype):
    """A reward (or critic) model from a transformers (`score`) or OpenRLHF (`value_head`) checkpoint, normalised as
    --normalize-reward says; its tokenizer must equal the policy's."""
    normalize = {"on": True, "off": False, "config": None}[args.normalize_reward]
    rm, rm_tokenizer = load_reward_model(name, device, dtype, normalize, args.value_head_prefix)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        fail(
            f"the tokenizer of {name!r} differs from the policy's: the critic starts from the RM and reads the "
            "policy's token ids, so pick an RM trained with the policy's tokenizer"
        )
    statistics = f", mean {rm.config.mean:.4g}, std {rm.config.std:.4g}" if rm.config.normalize_reward else ""
    print(
        f"{name}: reward head {rm.config.reward_head}, normalise {rm.config.normalize_reward}{statistics}", flush=True
    )
    return rm.eval()


def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: option checks, seeding, precision
    check_args(args)
    torch.set_num_threads(args.num_threads)
    seed_everything(args.seed)
    precision = setup_precision(args.dtype, args.cuda, args.fp32_master)
    device = precision.device
    toy = args.model_name == "tiny"
    gen = torch.Generator().manual_seed(args.seed)  # the toy's SFT, RM and CRM draws and the RM probes
    arm_gen = torch.Generator()  # each arm's prompt draws, re-seeded per arm: every arm sees the same prompts
    # 0. load everything that can fail before any training: models, tokenizers, data
    crm = None  # the calibrated RM of ppo-m, frozen
    crm_master = None  # the fitted CRM in the trained dtype (the critic start of ppo-m on the real path)
    allowed = None  # the toy's constrained decoding: allowed tokens per response position
    if toy:
        policy, tokenizer = build_tiny_lm(seed=args.seed)
        policy = policy.to(device)
    else:  # pi_ref: the start, frozen in the compute dtype; each arm loads its own fp32 copy to train
        policy, tokenizer = load_causal_lm(args.model_name, device, precision.frozen_dtype, args.seed)
        rm = load_rm(args.reward_model_name, tokenizer, args, device, precision.frozen_dtype)
        if args.crm_model_name:
            crm = load_rm(args.crm_model_name, tokenizer, args, device, precision.frozen_dtype)
        if args.critic_model_name:  # its head is checked now, the weights are loaded per arm
            reward_head(args.critic_model_name, args.value_head_prefix)
        prompt_rows = load_data(args.dataset_name, "train", [args.prompt_column], None, args.seed)
        prompts = list(prompt_rows[args.prompt_column])
        eval_rows = None
        if args.eval_dataset_name:
            eval_rows = load_data(args.eval_dataset_name, "train", ["prompt", "answer"], seed=args.seed)
        if args.crm_dataset_name and "ppo-m" in args.arms:
            crm_train = load_data(args.crm_dataset_name, args.crm_train_split, CRM_COLUMNS, shuffle=False)
            crm_eval = load_data(args.crm_dataset_name, args.crm_eval_split, CRM_COLUMNS, shuffle=False)
            if len(crm_train) == 0 or len(crm_eval) == 0:
                fail(f"{args.crm_dataset_name!r}: the CRM needs rows in --crm-train-split and --crm-eval-split")
    run = RunLogger(
        make_run_name(f"ppo_mc-{'keys' if toy else 'custom'}", args.exp_name, args.seed),
        args,
        track=args.track,
        print_every=PRINT_EVERY,
        show=("reward", "rewards/confidence_mean", "kl", "rewards/stated_rate"),
        total_steps=args.steps,
    )
    start_time = time.time()
    if toy:
        world = KeysWithOdds(tokenizer, device)
        allowed = world.allowed
        # 1. pi_0 = SFT on the toy (the real path starts from --model-name as it is)
        toy_sft(policy, world, args, run, gen)
        # 2. the vanilla (biased, oracle-referenced) RM
        rm = toy_rm(policy, world, args, run, gen).eval()

        def batches(query: bool):  # the policy's prompts and the RM's (with `ref <truth>`)
            keys, truths = world.draw(args.rollout_batch_size, arm_gen)
            return (*world.prompts(keys, query), *world.prompts(keys, query, truths))

        eval_keys = torch.arange(world.NUM_KEYS, device=device).repeat_interleave(args.eval_samples_per_key)  # [N]
        _, eval_truths = world.draw(len(eval_keys), torch.Generator().manual_seed(args.seed + 2), eval_keys)  # [N]
        eval_prompt = world.prompts(eval_keys, True)  # [N, 5] ids and mask
        tiers = world.odds[eval_keys].cpu().numpy()  # [N] the odds p of each evaluation key
        gold = world.answer_ids[eval_truths]  # [N] token ids of the instance truths
    else:
        system = CONFIDENCE_QUERY if args.system_prompt else None

        def batches(query: bool):  # the RM reads the same tokens
            rows = torch.randint(len(prompts), (args.rollout_batch_size,), generator=arm_gen).tolist()
            chosen = [prompts[i] for i in rows]
            return 2 * encode_rollout_prompts(tokenizer, chosen, system if query else None, device)

        eval_texts = list(eval_rows["prompt"])[: args.num_eval] if eval_rows else prompts[: args.num_eval]
        eval_prompt = (torch.zeros(0, 1, dtype=torch.long, device=device),) * 2  # --num-eval 0: no evaluation
        if eval_texts:
            eval_prompt = encode_rollout_prompts(tokenizer, eval_texts, CONFIDENCE_QUERY, device)
        gold = list(eval_rows["answer"])[: args.num_eval] if eval_rows else None

    # 3. PPO-M only: fine-tune the vanilla RM into the calibrated RM (the toy on its pairs, the real path on
    #    --crm-dataset-name, from an fp32 copy of --reward-model-name; or load --crm-model-name)
    if "ppo-m" in args.arms and crm is None:
        if toy:
            crm = train_crm(rm, world, args, run, gen)
        else:
            crm_master = load_rm(args.reward_model_name, tokenizer, args, device, precision.trained_dtype)
            crm_master = fit_crm(crm_master, crm_train, crm_eval, tokenizer, args, run, precision)
            crm = copy.deepcopy(crm_master).to(precision.frozen_dtype)  # frozen: the reward of ppo-m
            print(f"CRM fitted: six-variant reward mean {crm.config.mean:.4g}, std {crm.config.std:.4g}", flush=True)
            if args.save_model:
                crm_master.save_pretrained(run.dir / "crm")
                tokenizer.save_pretrained(run.dir / "crm")
    probes = {}  # the toy: how often each RM prefers the calibrated side of a pair
    if toy:
        for name, model in (("RM", rm), ("CRM", crm)):
            if model is not None:
                probes[name] = rm_probe(model, world, gen)
    policy.eval().requires_grad_(False)
    if args.save_model and toy:
        policy.save_pretrained(run.dir / "sft")
    results = {"sft": evaluate_or_skip(policy, tokenizer, eval_prompt, args, allowed, gold, precision)}
    results["sft"]["seconds"] = time.time() - start_time
    print(f"setup (SFT, RM, CRM, start evaluation): {results['sft']['seconds']:.1f} s", flush=True)

    # 4. each arm: PPO from the same start and the same prompt draws, against its reward; the critic starts from the
    #    RM (the CRM for ppo-m) or --critic-model-name, in fp32 master weights
    for arm in args.arms:
        seed_everything(args.seed)
        arm_gen.manual_seed(args.seed + 1)
        reward_model = crm if arm == "ppo-m" else rm
        if toy:
            model = copy.deepcopy(policy).train().requires_grad_(True)
            critic = copy.deepcopy(reward_model)
        else:
            model, _ = load_policy(
                args.model_name, precision, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing
            )
            if args.critic_model_name or crm_master is None or arm != "ppo-m":
                default = args.crm_model_name if arm == "ppo-m" else args.reward_model_name
                critic = load_rm(args.critic_model_name or default, tokenizer, args, device, precision.trained_dtype)
            else:
                critic = copy.deepcopy(crm_master)
            if args.gradient_checkpointing:
                critic.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        critic.train().requires_grad_(True)
        arm_start = time.time()
        train_ppo(arm, model, policy, critic, reward_model, batches, tokenizer, args, run, allowed, precision)
        model.eval()
        # 5. the arm's evaluation: ECE, ROC-AUC and accuracy of the stated confidence [code query/query.py]
        results[arm] = evaluate_or_skip(model, tokenizer, eval_prompt, args, allowed, gold, precision)
        results[arm]["seconds"] = time.time() - arm_start
        shown = {f"eval/{k}": v for k, v in results[arm].items() if k in ("ece", "auc", "acc", "conf")}
        run.log(args.steps, shown, echo=True, arm=arm)
        if args.save_model:
            model.save_pretrained(run.dir / arm)  # fp32 master weights
            tokenizer.save_pretrained(run.dir / arm)
        del model, critic
        gc.collect()

    # TRY NOT TO MODIFY: the table: ECE, AUC, accuracy, confidence (per odds tier on the toy), stated rate, wall time
    rows = []
    for arm, result in results.items():
        row = {"arm": arm, "ECE": result.get("ece"), "AUC": result.get("auc"), "ACC": result.get("acc")}
        row["conf"] = result["conf"]
        if toy:
            by_tier = [f"{result['confidences'][tiers == p].mean():.2f}" for p in world.ODDS]
            row["conf by p=.1/.4/.7/1"] = " / ".join(by_tier)
        row["stated"] = result["stated"]
        row["seconds"] = result["seconds"]
        rows.append(row)
    samples = "".join(f"- {arm}: {' | '.join(result['texts'][::16])}\n" for arm, result in results.items())
    run.save_text("samples.md", samples)
    probe_lines = [
        f"- {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in probe.items()) for name, probe in probes.items()
    ]
    probe_text = "".join(line + "\n" for line in probe_lines)
    task = "keys with known odds" if toy else args.dataset_name
    run.finish(
        f"## PPO-M / PPO-C on {task}, seed {args.seed}, {args.steps} PPO steps x {args.rollout_batch_size} prompts, "
        f"beta {args.beta}, w {args.weight}, alpha {args.alpha}, rbar init {args.reward_avg_init}\n\n{probe_text}\n"
        f"Evaluation on {len(eval_prompt[0])} samples (ppo = PPO-dagger: vanilla RM on the confidence prompts):\n\n"
        + format_table(rows)
    )
    return results


def encode_rollout_prompts(tokenizer, prompts: list, system_prompt: Optional[str], device):
    """Left-padded prompt ids and mask: a string becomes one user turn of the chat template; a conversation (a list of
    role/content turns, as chat-format prompt columns hold) goes through the template as it is. `system_prompt`
    becomes the first turn unless the conversation has a system turn of its own."""
    if all(isinstance(p, str) for p in prompts):
        return encode_prompts(tokenizer, prompts, system_prompt=system_prompt, device=device)
    texts = []
    for prompt in prompts:
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        has_system = turns and turns[0].get("role") == "system"
        head = [{"role": "system", "content": system_prompt}] if system_prompt and not has_system else []
        texts.append(tokenizer.apply_chat_template(head + turns, tokenize=False, add_generation_prompt=True))
    batch = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def evaluate_or_skip(policy, tokenizer, eval_prompt, args: Args, allowed, gold, precision: Precision) -> dict:
    """evaluate() on the held-out prompts; with none (--num-eval 0 on the real path), an empty result."""
    if len(eval_prompt[0]) == 0:
        return {"confidences": np.array([]), "stated": float("nan"), "texts": [], "conf": float("nan")}
    return evaluate(policy, tokenizer, *eval_prompt, args, allowed, gold, precision)


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
