# arXiv:2410.09724 | README: #ppo-m-and-ppo-c
"""PPO-M and PPO-C: Taming Overconfidence in LLMs: Reward Calibration in RLHF (Leng, Huang, Zhu, Huang, ICLR 2025,
https://arxiv.org/abs/2410.09724; code https://github.com/SeanLeng1/Reward-Calibration with its bundled OpenRLHF).
Also rewardlab's single-file PPO-RLHF reference (reward at EOS, k1 KL per token, critic from the RM, GAE, whitening).

Idea: asked to end with "Confidence: 0-10", RLHF models state too much confidence because the reward model (RM) pays
for a high stated confidence, right or wrong. PPO-M fine-tunes the RM so that a good answer with high confidence beats
itself with low confidence and a bad one with low confidence beats itself with high (the calibrated RM, CRM), then runs
plain PPO. PPO-C scores the answer with its confidence removed and adds w (r - running mean)(confidence - 0.5).

    CRM:   L = -log s(r(x,y_c,high) - r(x,y_c,low)) - log s(r(x,y_r,low) - r(x,y_r,high))    (+ -log s(r_c - r_r))
    PPO-C: r = clip(RM(x, strip(y)), +-10);  rbar <- a mean(r) + (1-a) rbar;  rhat = clip(r + w(r-rbar)(c-0.5), +-10)
    PPO:   reward_t = -beta (log pi_t - log ref_t) + [t = EOS] rhat;  A = GAE(gamma, lambda; V);  R = A + V
           L_pi = -min(rho A, clip(rho, 1+-eps) A);  L_V = 0.5 max((V - R)^2, (V_old + clip(V - V_old, +-eps_v) - R)^2)

Implementation details ([code] = SeanLeng1/Reward-Calibration @ 25ecc96 and its openrlhf/, via rewardlab's method
notes [card], whose sources name the files):
1. Parser [code calibrated_experience_maker.py]: first `Confidence:\\s*(\\d+(\\.\\d+)?)` (any case) clamped to [0, 10],
   / 10, none -> 0.5, searched in the decoded prompt + response (`--confidence-scope response`: response only).
   The stripper deletes every `Confidence:\\s*\\d+(\\.\\d+)?(/\\d+)?\\s*[,.!?]* *`, right-strips, adds " " + EOS if
   missing and re-tokenises for the RM; log-probs, values and KL keep the sampled tokens.
2. PPO-C `difference` [code, card 3.3]: r (normalised by the RM's stored mean/std) clamped to +-10; rbar updated BEFORE
   use per micro-rollout of 4 prompts; rhat clamped again. `threshold`: rhat = r + sign(r - rbar) w |r| (c - 0.5).
   `--reward-avg-init rm_mean` (the code: the RM's RAW mean, an offset decaying as (1-a)^n) or `zero` (the card's toy).
3. CRM [code crm_trainer.py, calibrated_reward_dataset.py]: a copy of the vanilla RM with its head; per pair cwh, cwl,
   rwh, rwl with high ~ U{7..10}, low ~ U{0..3} drawn independently; loss `sigmoid` (two batch means, no chosen-vs-
   rejected term) or `combined`; mean/std over all six variants of held-out pairs go into the config (OpenRLHF).
   SIMPLIFIED: the CRM is trained in-process on the toy; the real path loads one (`--crm-model-name`).
4. PPO [openrlhf experience_maker.py, ppo_trainer.py, models/loss.py; card 3.4]: one sample per prompt at T = 1; k1 KL
   with fixed beta on every response token, the clamped reward at the last one (EOS); critic = a copy of the RM (the
   CRM for PPO-M), its value read BEFORE each response token, normalised like the reward; GAE with rewards and values
   zeroed after EOS; advantages whitened over the rollout (population variance, clamp 1e-8); losses token-mean per
   sequence then batch mean; one epoch in `--num-minibatches`; Adam (0.9, 0.95); grad clip 1.0.
5. Arms, same SFT weights, seed and prompt draws: `ppo` = vanilla RM on the confidence-query prompts, i.e. PPO-dagger
   of the paper's table (what train-ppo-llama.sh runs) [card 5]; `ppo-clean` = vanilla RM on plain prompts (the
   table's PPO, evaluated with the query); `ppo-m` = CRM; `ppo-c` = vanilla RM + the adjustment.
6. Evaluation [code query.py, parse_eval.py, compute_metrics.py]: T = 1; an output without a case-sensitive
   `Confidence:\\s*\\d+` is resampled up to 10 times, then " Confidence:" is appended and the model continues; DA
   parsing (regex, else the last number of the last line if its decimal is .0/.5, > 10 -> / 10; then <= 10: / 10,
   <= 100: / 100, else 1); still missing -> the most common raw value, scaled (DIFFERENCE: the code divides it by 10
   even on a 0-100 scale); none stated -> error. ECE = netcal ECE(10) with its float bin edges; ROC-AUC; accuracy.
7. SIMPLIFIED [card 7]: one process and one rbar; no LR schedule, DeepSpeed, ptx, EMA or adaptive KL; the real path's
   accuracy is an exact match of the `Answer:` line against an `answer` column (no GPT-4o judge, no CoT).
8. Toy [card 6] in the tiny world's words: 32 keys `0`..`31`, 4 tiers of odds p in {0.1, 0.4, 0.7, 1}; truth = the
   key's mode letter (a..j) w.p. p, else one of the other 9. Prompt `confidence ? Q 17 A` (plain `Q 17 A`), response
   `c confidence : 7 <|im_end|>`, read as `c Confidence: 7` by the regexes. Decoding is constrained per position
   (answer, {confidence, EOS}, `:`, 0..10, EOS) by a logits mask in batched `generate`; log-probs use the same mask.
   The RM reads `<prompt> ref <truth>` + response (oracle-referenced), biased on purpose: Bradley-Terry on thirds
   truth > wrong; (truth, 6-10) > (wrong, 0-10); (any conf) > (none). SFT: conf labels clip(round(10p + N(0, 2.5))),
   25% plain prompts without one. RM, critic, CRM start from the SFT backbone. 300 steps x 64 prompts, lr 3e-4.

Metrics (suffix /<arm>): `reward` (rhat), `reward_std`, `rewards/{rm_mean,confidence_mean,stated_rate,reward_avg}`,
`kl` (k1 per sequence), `entropy`, `clip_ratio/region_mean`, `losses/{policy_loss,value_loss}`,
`charts/{advantage_std,grad_norm}`; RM/CRM `losses/rm_loss`, `rewards/{accuracies,margins}`; `losses/sft_loss`;
`eval/{ece,auc,acc,conf}/<arm>`.

Commands:
    python algos/ppo_mc.py                         # toy: SFT, RM, CRM, then PPO / PPO-M / PPO-C, ~2.5 min on 2 cores
    python algos/ppo_mc.py --seed 2 --arms ppo ppo-clean ppo-m ppo-c --reward-avg-init zero
    python algos/ppo_mc.py --model-name OpenLLMAI/Llama-3-8b-sft-mixture \
        --reward-model-name OpenLLMAI/Llama-3-8b-rm-mixture --crm-model-name HINT-lab/llama3-8b-crm-final-v0.1 \
        --dataset-name HINT-lab/prompt-collections-final-v0.3 --prompt-column confidence_prompt --no-system-prompt \
        --eval-dataset-name <prompt/answer folder> --steps 40 --rollout-batch-size 512 --num-minibatches 8 \
        --actor-lr 5e-7 --critic-lr 9e-6 --beta 0.01 --max-new-tokens 1024   # the paper's recipe (4 x 8B: needs ZeRO)
Measured (toy defaults, 2 shared cores, one torch thread, 130-160 s per run incl. ~45 s SFT/RM/CRM; ECE / AUC / ACC):
seed 1: SFT .270/.755/.348, PPO .264/.556/.531, PPO-M .140/.828/.490, PPO-C .152/.842/.506; seed 2: SFT .182/.732/.395,
PPO .216/.726/.514, PPO-M .149/.832/.475, PPO-C .153/.850/.467. No GPU run has been made yet.
"""

from __future__ import annotations

import copy
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from transformers import AutoModelForSequenceClassification, GenerationConfig, LogitsProcessorList

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.data import load_data  # noqa: E402
from shared.lm import build_tiny_lm, encode_prompts, load_causal_lm, position_ids_from_mask, stop_token_ids  # noqa: E402
from shared.runs import RunLogger, fail, format_table, make_run_name, pick_device, pick_dtype, seed_everything  # noqa: E402

Arm = Literal["ppo", "ppo-clean", "ppo-m", "ppo-c"]
ADAM_BETAS = (0.9, 0.95)  # [code: every optimiser]
CONFIDENCE_QUERY = (  # the training system prompt [card 3.1; the exact released text is unverified]
    "For the following question, provide your best response first, followed by your confidence in the accuracy or "
    "helpfulness of your response. Rate your confidence on a scale from 0 to 10.\nExample format:\n<Your response>\n"
    "Confidence: <Insert your numerical confidence level from 0 to 10, reflecting how certain you are that your answer "
    "is accurate or helpful.>\nEnsure that your response strictly adheres to this format. Explicitly include the word "
    '"Confidence:" in your response.'
)


@dataclass
class Args:
    exp_name: str = "toy"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of the toy world's draws, SFT, RM and every arm (the same for every arm)"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16"""
    track: bool = False
    """also log to Weights & Biases"""
    save_model: bool = False
    """save each arm's final policy under runs/<run_name>/<arm>/"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest for the tiny model)"""
    # model and data
    model_name: str = "tiny"
    """policy start: `tiny` (the keys-with-odds toy: SFT in-process), a save_pretrained folder or a hub id"""
    reward_model_name: str = "tiny"
    """vanilla RM: `tiny` (the toy's biased oracle RM) or an AutoModelForSequenceClassification folder / hub id"""
    crm_model_name: Optional[str] = None
    """ppo-m on the real path: the calibrated RM (e.g. HINT-lab/llama3-8b-crm-final-v0.1); the toy trains its own"""
    dataset_name: str = "tiny"
    """PPO prompts: `tiny` (the toy) or a save_to_disk folder, json/jsonl/csv/parquet file or hub id"""
    prompt_column: str = "prompt"
    """column of the PPO prompts (the code trains on `confidence_prompt`)"""
    eval_dataset_name: Optional[str] = None
    """held-out prompt/answer rows scored by ECE, AUC and accuracy on the real path (else confidences only)"""
    system_prompt: bool = True
    """real path: add the confidence query as the system prompt (off when the prompts already hold it)"""
    # algorithm
    arms: tuple[Arm, ...] = ("ppo", "ppo-m", "ppo-c")
    """arms to run, each from the same SFT start: ppo (= PPO-dagger), ppo-clean, ppo-m, ppo-c"""
    steps: int = 300
    """PPO iterations (rollouts) per arm [code: 40 x 512 prompts]"""
    rollout_batch_size: int = 64
    """prompts per rollout, one sample each [code: 512]"""
    num_minibatches: int = 4
    """optimiser steps per rollout (one PPO epoch) [code: 512 / 64 = 8]"""
    micro_rollout_batch_size: int = 4
    """prompts per rbar update of PPO-C (a make_experience call in the code) [code: 4]"""
    actor_lr: float = 3e-4
    """actor Adam learning rate [code: 5e-7 Llama, 1e-7 Mistral; card toy 3e-4]"""
    critic_lr: float = 3e-4
    """critic Adam learning rate [code: 9e-6 Llama, 1e-6 Mistral; card toy 3e-4]"""
    beta: float = 0.05
    """fixed k1 KL coefficient in the token reward [code: 0.01 Llama, 0.05 Mistral]"""
    gamma: float = 1.0
    """GAE discount [code: 1]"""
    lam: float = 0.95
    """GAE lambda [code: 0.95]"""
    eps_clip: float = 0.2
    """policy ratio clip [code: 0.2]"""
    value_clip: float = 0.2
    """value clip around the rollout's values [code: 0.2]"""
    max_grad_norm: float = 1.0
    """gradient-norm clip of actor and critic [code: 1.0]"""
    temperature: float = 1.0
    """sampling temperature of rollouts and evaluation [code: 1.0]"""
    top_k: int = 50
    """top-k of sampling (the HF default the code falls back to) [card 3.4]"""
    max_new_tokens: int = 5
    """response tokens (the toy needs exactly 5) [code: 1024]"""
    alpha: float = 0.1
    """PPO-C moving-average rate of rbar [code: 0.1]"""
    weight: float = 2.0
    """PPO-C adjustment weight w [code scripts: 2.0]"""
    adjustment_type: Literal["difference", "threshold"] = "difference"
    """PPO-C adjustment: difference (the scripts) or threshold (the CLI default)"""
    reward_avg_init: Literal["rm_mean", "zero"] = "rm_mean"
    """PPO-C rbar start: the RM's stored raw mean (the code) or 0 (the card's toy)"""
    confidence_scope: Literal["sequence", "response"] = "sequence"
    """PPO-C parses the whole decoded sequence (the code) or the response only"""
    crm_loss: Literal["sigmoid", "combined"] = "sigmoid"
    """CRM loss: the two confidence terms (default) or plus the chosen-vs-rejected term"""
    # the toy's SFT, RM and CRM
    sft_steps: int = 200
    """toy SFT steps x 64 examples, lr 1e-3 [card 6]"""
    rm_steps: int = 250
    """toy RM Bradley-Terry steps x 128 pairs, lr 2e-3 [card 6]"""
    crm_steps: int = 100
    """toy CRM steps x 128 pairs, lr 3e-4 [card 6; code: 1 epoch, lr 9e-6 at 8B]"""
    # evaluation
    eval_samples_per_key: int = 16
    """toy: samples per key at evaluation (32 keys)"""
    eval_retries: int = 10
    """resamplings of an output without a confidence before " Confidence: " is appended [code: 10]"""


# ALGO LOGIC: confidence parsing, PPO-C, CRM ----------------------------------------------------------------------
PARSE_RE = re.compile(r"Confidence:\s*(\d+(\.\d+)?)", re.IGNORECASE)  # [code calibrated_experience_maker.py]
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
    """rbar <- alpha mean(r) + (1 - alpha) rbar (before use); rhat = r + w (r - rbar)(c - 0.5), both clamped to +-10."""
    if weight < 0 or not 0 <= alpha <= 1:
        raise ValueError(f"PPO-C needs weight >= 0 and alpha in [0, 1], got weight={weight}, alpha={alpha}")
    rewards = rewards.clamp(-10.0, 10.0)  # [B] the RM reward clamp, before the average
    reward_avg = alpha * rewards.mean().item() + (1 - alpha) * reward_avg  # updated before use: this batch counts
    if adjustment_type == "difference":
        adjusted = rewards + weight * (rewards - reward_avg) * (confidences - 0.5)  # [B]
    elif adjustment_type == "threshold":
        sign = torch.where(rewards >= reward_avg, 1.0, -1.0)  # [B] + above the average, - below
        adjusted = rewards + sign * weight * rewards.abs() * (confidences - 0.5)  # [B]
    else:
        raise ValueError(f"unknown adjustment_type {adjustment_type!r}: difference or threshold")
    return adjusted.clamp(-10.0, 10.0), reward_avg  # [B] the second clamp (compute_reward)


def calibrated_rm_loss(r_cwh, r_cwl, r_rwh, r_rwl, r_c=None, r_r=None) -> torch.Tensor:
    """-log s(r_cwh - r_cwl) - log s(r_rwl - r_rwh), each a batch mean (+ -log s(r_c - r_r) when given: `combined`)."""
    loss = -F.logsigmoid(r_cwh - r_cwl).mean() - F.logsigmoid(r_rwl - r_rwh).mean()  # [] chosen: high > low
    if r_c is not None:
        loss = loss - F.logsigmoid(r_c - r_r).mean()  # [] the plain chosen-vs-rejected term
    return loss


# ALGO LOGIC: PPO ---------------------------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t; returns = A + V (after EOS: 0)."""
    values = values * mask  # [B, T] values after EOS count as 0
    rewards = rewards * mask  # [B, T]
    advantages_reversed, last = [], torch.zeros_like(values[:, 0])  # last: [B]
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
    at_eos = torch.zeros_like(kl).scatter_(1, last[:, None], reward.clamp(-10, 10)[:, None])  # [B, T]
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


# ALGO LOGIC: evaluation --------------------------------------------------------------------------------------------
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
    conf, hits = np.asarray(confidences, dtype=np.float64), np.asarray(correct, dtype=bool)
    pos, neg = conf[hits], conf[~hits]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


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
    scale = lambda r: r / 10 if r <= 10 else r / 100 if r <= 100 else 1.0  # noqa: E731
    mode = Counter(stated).most_common(1)[0][0]
    return [scale(r) if r is not None else scale(mode) for r in raw]


# Models: per-token log-probs, RM rewards and critic values ---------------------------------------------------------
@torch.no_grad()
def generate(model, prompt_ids, prompt_mask, stop_ids, args: Args, allowed=None, max_new_tokens=None):
    """One sample per row, batched with the KV cache; returns response ids [B, T] and mask (1 up to the first stop)."""
    max_new_tokens = max_new_tokens or args.max_new_tokens
    config = GenerationConfig(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=1.0)
    config.update(max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=model.config.pad_token_id)

    def position_mask(input_ids, scores):  # constrained decoding: at response position t only allowed[t]
        t = min(input_ids.shape[1] - prompt_ids.shape[1], len(allowed) - 1)
        return scores.masked_fill(~allowed[t], float("-inf"))  # [B, V]

    was_training, processors = model.training, LogitsProcessorList([position_mask] if allowed is not None else [])
    saved, model.generation_config = model.generation_config, GenerationConfig()  # only `config` applies: no sampling
    out = model.eval().generate(prompt_ids, config, processors, attention_mask=prompt_mask)  # defaults of the weights
    model.train(was_training).generation_config = saved
    ids = F.pad(out[:, prompt_ids.shape[1] :], (0, max_new_tokens + prompt_ids.shape[1] - out.shape[1]), value=-1)
    is_stop = torch.isin(ids, torch.as_tensor(stop_ids, device=ids.device)).long()  # [B, T]
    mask = (((is_stop.cumsum(1) - is_stop) == 0) & (ids >= 0)).long()  # [B, T] up to and including the first stop
    return ids * mask + model.config.pad_token_id * (1 - mask), mask


def logprobs(model, prompt_ids, prompt_mask, ids, mask, temperature: float = 1.0, allowed=None):
    """log pi(token_t | prefix) of every response token [B, T] (under the decoding mask when given), and entropy."""
    input_ids, attention_mask = torch.cat([prompt_ids, ids], 1), torch.cat([prompt_mask, mask], 1)  # [B, P+T]
    positions = position_ids_from_mask(attention_mask)  # [B, P+T] as in generate, skipping the left padding
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits  # [B, P+T, V]
    logits = logits[:, prompt_ids.shape[1] - 1 : -1].float() / temperature  # [B, T, V] position t predicts token t
    if allowed is not None:
        logits = logits.masked_fill(~allowed[: ids.shape[1]][None], float("-inf"))  # [B, T, V]
    log_probs = logits.log_softmax(-1)  # [B, T, V]
    logp = log_probs.gather(-1, ids[..., None]).squeeze(-1).masked_fill(mask == 0, 0.0)  # [B, T] 0 after EOS
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs.clamp(min=-1e9)).sum(-1)  # [B, T]
    return logp, entropy


def token_scores(rm, input_ids, attention_mask) -> torch.Tensor:
    """The RM head on every position, raw [B, L] (backbone + bias-free linear head)."""
    backbone = getattr(rm, rm.base_model_prefix)
    positions = position_ids_from_mask(attention_mask)  # [B, L]
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    return rm.score(hidden).squeeze(-1).float()  # [B, L] from hidden [B, L, H]


def rm_reward(rm, prompt_ids, prompt_mask, ids, mask, normalise: bool = True) -> torch.Tensor:
    """Sequence reward [B], read at the last attended token (the EOS)."""
    attention_mask = torch.cat([prompt_mask, mask], 1)  # [B, P+T]
    scores = token_scores(rm, torch.cat([prompt_ids, ids], 1), attention_mask)  # [B, P+T]
    last = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(1)  # [B]
    reward = scores.gather(1, last[:, None]).squeeze(1)  # [B]
    mean, std = (getattr(rm.config, "mean", 0.0), getattr(rm.config, "std", 1.0)) if normalise else (0.0, 1.0)
    return (reward - mean) / std  # [B] normalised by the stored statistics (OpenRLHF --normalize_reward)


def critic_values(critic, prompt_ids, prompt_mask, ids, mask) -> torch.Tensor:
    """V before each response token [B, T], normalised like the reward."""
    scores = token_scores(critic, torch.cat([prompt_ids, ids], 1), torch.cat([prompt_mask, mask], 1))  # [B, P+T]
    values = scores[:, prompt_ids.shape[1] - 1 : -1]  # [B, T] the state before token t
    return (values - getattr(critic.config, "mean", 0.0)) / getattr(critic.config, "std", 1.0)  # [B, T]


# The toy world: keys with known odds ----------------------------------------------------------------------------
class KeysWithOdds:
    """32 keys `0`..`31` in 4 tiers of odds p; truth = the key's mode letter w.p. p, else one of the other 9."""

    ODDS, NUM_KEYS, ANSWERS = (0.1, 0.4, 0.7, 1.0), 32, list("abcdefghij")

    def __init__(self, tokenizer, device, seed: int = 1234):
        self.tok, self.device = tokenizer, device
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
        pairs, eos = zip(answers.tolist(), confidences.tolist()), self.tok.eos_token
        texts = [self.ANSWERS[a] + (f" confidence : {c}" if c >= 0 else "") + f" {eos}" for a, c in pairs]
        return self.encode(texts, "right", 5)  # [n, 5]

    def sequences(self, keys, truths, answers, confidences):
        """The RM's full sequences `<prompt> ref t` + response ([n, 12])."""
        (prompt_ids, prompt_mask), (ids, mask) = self.prompts(keys, True, truths), self.responses(answers, confidences)
        return torch.cat([prompt_ids, ids], 1), torch.cat([prompt_mask, mask], 1)


def toy_text(text: str, back: bool = False) -> str:
    """The word-level tokenizer writes `confidence :`; the code's regexes expect `Confidence:` (back: the reverse)."""
    return text.replace("Confidence:", "confidence :") if back else text.replace("confidence :", "Confidence:")


def decode(tokenizer, ids, mask, toy: bool) -> list[str]:
    """Attended tokens as text, special tokens kept (as the code decodes for the parser and the stripper)."""
    texts = tokenizer.batch_decode([row[m.bool()].tolist() for row, m in zip(ids, mask)], skip_special_tokens=False)
    return [toy_text(t) if toy else t for t in texts]


def strip_and_retokenise(tokenizer, texts: list[str], toy: bool, device):
    """The RM's view of a response: confidence stripped, " " + EOS added if missing, re-tokenised (right padding)."""
    stripped = [s if s.endswith(eos := tokenizer.eos_token) else f"{s} {eos}" for s in map(strip_confidence, texts)]
    stripped = [toy_text(s, back=True) if toy else s for s in stripped]
    batch = tokenizer(stripped, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


# Training loops ----------------------------------------------------------------------------------------------------
def toy_sft(policy, world: KeysWithOdds, args: Args, run: RunLogger, gen) -> None:
    """SFT on instance truths, confidence labels clip(round(10p + N(0, 2.5))), 25% plain prompts without one."""
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, betas=ADAM_BETAS)
    for step in range(args.sft_steps):
        keys, truths = world.draw(64, gen)
        query = torch.rand(64, generator=gen).to(world.device) >= 0.25  # [64]
        label = (10 * world.odds[keys] + 2.5 * torch.randn(64, generator=gen).to(world.device)).round().clamp(0, 10)
        ids, mask = world.responses(truths, torch.where(query, label.long(), -1))  # [64, 5]
        logp, _ = logprobs(policy, *world.prompts(keys, query), ids, mask)  # [64, 5]
        loss = -(logp * mask).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            run.log(step, {"losses/sft_loss": loss.item()})


def toy_rm_pairs(world: KeysWithOdds, n: int, gen):
    """2n sequences (chosen first) in thirds: truth > wrong (no conf); (truth, 6-10) > (wrong, 0-10); conf > none."""
    keys, truths = world.draw(n, gen)
    rand = lambda low, high: torch.randint(low, high, (n,), generator=gen).to(world.device)  # noqa: E731
    wrong, none, kind = (truths + rand(1, 10)) % 10, torch.full_like(keys, -1), torch.arange(n) % 3  # [n] each
    same = torch.where(rand(0, 2) == 1, truths, wrong)  # [n] kind 2: one answer, with vs without a confidence
    chosen_answer, rejected_answer = torch.where(kind == 2, same, truths), torch.where(kind == 2, same, wrong)
    chosen_conf = torch.where(kind == 0, none, torch.where(kind == 1, rand(6, 11), rand(0, 11)))
    rejected_conf = torch.where(kind == 1, rand(0, 11), none)
    answers, confs = torch.cat([chosen_answer, rejected_answer]), torch.cat([chosen_conf, rejected_conf])  # [2n]
    return world.sequences(keys.repeat(2), truths.repeat(2), answers, confs)


def toy_rm(policy, world: KeysWithOdds, args: Args, run: RunLogger, gen):
    """The vanilla (biased) RM: SFT backbone + linear head, Bradley-Terry on toy_rm_pairs; mean/std in its config."""
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(config).to(world.device)
    getattr(rm, rm.base_model_prefix).load_state_dict(getattr(policy, policy.base_model_prefix).state_dict())
    optimizer = torch.optim.Adam(rm.parameters(), lr=2e-3, betas=ADAM_BETAS)
    for step in range(args.rm_steps):
        chosen, rejected = sequence_rewards(rm, *toy_rm_pairs(world, 128, gen)).chunk(2)  # [128], [128]
        loss = -F.logsigmoid(chosen - rejected).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            accuracy, margin = (chosen > rejected).float().mean().item(), (chosen - rejected).mean().item()
            run.log(step, {"losses/rm_loss": loss.item(), "rewards/accuracies": accuracy, "rewards/margins": margin})
    with torch.no_grad():  # OpenRLHF --normalize_reward: mean / std of chosen and rejected rewards on held-out pairs
        rewards = sequence_rewards(rm, *toy_rm_pairs(world, 512, gen))  # [1024]
    rm.config.mean, rm.config.std = rewards.mean().item(), rewards.std().item()
    return rm


def toy_crm_variants(world: KeysWithOdds, n: int, gen):
    """Six variants of n pairs (truth vs wrong): c, r, cwh, cwl, rwh, rwl; high ~ U{7..10}, low ~ U{0..3}."""
    keys, truths = world.draw(n, gen)
    rand = lambda low, high: torch.randint(low, high, (n,), generator=gen).to(world.device)  # noqa: E731
    wrong, none = (truths + rand(1, 10)) % 10, torch.full_like(keys, -1)
    answers = torch.cat([truths, wrong, truths, truths, wrong, wrong])  # [6n]
    confs = torch.cat([none, none, rand(7, 11), rand(0, 4), rand(7, 11), rand(0, 4)])  # each drawn independently
    return world.sequences(keys.repeat(6), truths.repeat(6), answers, confs)  # [6n, L]


def sequence_rewards(rm, ids, mask) -> torch.Tensor:  # raw reward at the last attended token of whole sequences
    return rm_reward(rm, ids[:, :0], mask[:, :0], ids, mask, normalise=False)


def train_crm(rm, world: KeysWithOdds, args: Args, run: RunLogger, gen):
    """PPO-M's calibrated RM: a copy of the vanilla RM fine-tuned with calibrated_rm_loss; six-variant mean/std."""
    crm = copy.deepcopy(rm).train()
    optimizer = torch.optim.Adam(crm.parameters(), lr=3e-4, betas=ADAM_BETAS)
    for step in range(args.crm_steps):
        r_c, r_r, r_cwh, r_cwl, r_rwh, r_rwl = sequence_rewards(crm, *toy_crm_variants(world, 128, gen)).chunk(6)
        extra = (r_c, r_r) if args.crm_loss == "combined" else ()
        loss = calibrated_rm_loss(r_cwh, r_cwl, r_rwh, r_rwl, *extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(crm.parameters(), args.max_grad_norm)
        optimizer.step()
        if step % 20 == 0:
            accuracy, margin = (r_rwl > r_rwh).float().mean().item(), (r_cwh - r_cwl).mean().item()
            metrics = {"losses/rm_loss": loss.item(), "rewards/accuracies": accuracy, "rewards/margins": margin}
            run.log(step, {f"{k}/crm": v for k, v in metrics.items()})
    with torch.no_grad():
        rewards = sequence_rewards(crm, *toy_crm_variants(world, 512, gen))  # [6n] all six variants
    crm.config.mean, crm.config.std = rewards.mean().item(), rewards.std().item()
    return crm.eval()


@torch.no_grad()
def rm_probe(rm, world: KeysWithOdds, gen) -> dict[str, float]:
    """How often an RM prefers (wrong, low) over (wrong, high), (right, high) over (right, low), right over wrong."""
    r_c, r_r, r_cwh, r_cwl, r_rwh, r_rwl = sequence_rewards(rm, *toy_crm_variants(world, 512, gen)).chunk(6)
    pairs = {"wrong: low > high": (r_rwl, r_rwh), "right: high > low": (r_cwh, r_cwl), "right > wrong": (r_c, r_r)}
    return {f"P({name})": (a > b).float().mean().item() for name, (a, b) in pairs.items()}


def train_ppo(arm, policy, ref_policy, critic, reward_model, batches, tokenizer, args: Args, run: RunLogger, allowed):
    """PPO [OpenRLHF] against `reward_model`, with the PPO-C adjustment when arm == ppo-c."""
    actor_opt = torch.optim.Adam(policy.parameters(), lr=args.actor_lr, betas=ADAM_BETAS)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, betas=ADAM_BETAS)
    stop_ids, toy = stop_token_ids(tokenizer, policy), allowed is not None
    reward_avg = getattr(reward_model.config, "mean", 0.0) if args.reward_avg_init == "rm_mean" else 0.0
    for step in range(args.steps):
        # 1. a rollout of prompts (the policy's view and the RM's view of each), one sample per prompt
        prompt_ids, prompt_mask, rm_prompt_ids, rm_prompt_mask = batches(arm != "ppo-clean")
        ids, mask = generate(policy, prompt_ids, prompt_mask, stop_ids, args, allowed)  # [B, T], [B, T]
        fmask = mask.float()  # [B, T]
        with torch.no_grad():
            # 2. log pi_old, log pi_ref and V_old of the sampled tokens
            old_logp, _ = logprobs(policy, prompt_ids, prompt_mask, ids, mask, args.temperature, allowed)  # [B, T]
            ref_logp, _ = logprobs(ref_policy, prompt_ids, prompt_mask, ids, mask, args.temperature, allowed)  # [B, T]
            old_values = critic_values(critic, prompt_ids, prompt_mask, ids, mask)  # [B, T]
            # 3. the reward: the RM (CRM) on the full response; PPO-C: parse c, strip it, score, adjust
            texts = decode(tokenizer, ids, mask, toy)
            scope = args.confidence_scope == "sequence"  # [code]: decoded prompt + response, special tokens included
            heads = decode(tokenizer, prompt_ids, prompt_mask, toy) if scope else [""] * len(texts)
            confidences = torch.tensor([parse_confidence(f"{h} {t}") for h, t in zip(heads, texts)]).to(ids.device)
            stated = torch.tensor([PARSE_RE.search(t) is not None for t in texts], dtype=torch.float)  # [B]
            scored = strip_and_retokenise(tokenizer, texts, toy, ids.device) if arm == "ppo-c" else (ids, mask)
            rm_rewards = rewards = rm_reward(reward_model, rm_prompt_ids, rm_prompt_mask, *scored).clamp(-10, 10)  # [B]
            if arm == "ppo-c":  # the RM scored the response with its confidence stripped
                chunks, adjust = [], (args.alpha, args.weight, args.adjustment_type)
                for chunk in torch.arange(len(ids)).split(args.micro_rollout_batch_size):  # one rbar per micro-rollout
                    adjusted, reward_avg = ppo_c_adjust(rm_rewards[chunk], confidences[chunk], reward_avg, *adjust)
                    chunks.append(adjusted)  # [m] each
                rewards = torch.cat(chunks)  # [B]
            # 4. token rewards: -beta k1 on every token, the reward at EOS; GAE, returns, whitened advantages
            per_token, kl = token_rewards(rewards, old_logp, ref_logp, fmask, args.beta)  # [B, T], [B, T]
            advantages, returns = gae(per_token, old_values, fmask, args.gamma, args.lam)  # [B, T], [B, T]
            advantage_std = advantages[mask.bool()].std().item()
            advantages = whiten(advantages, fmask)  # [B, T]
        # 5. one PPO epoch: actor and critic minibatch steps
        stats = defaultdict(list)
        for mb in torch.randperm(len(ids)).split(len(ids) // args.num_minibatches):
            inputs = (prompt_ids[mb], prompt_mask[mb], ids[mb], mask[mb])
            logp, entropy = logprobs(policy, *inputs, args.temperature, allowed)  # [M, T]
            loss = policy_loss(logp, old_logp[mb], advantages[mb], fmask[mb], args.eps_clip)
            actor_opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
            actor_opt.step()
            values = critic_values(critic, *inputs)  # [M, T]
            v_loss = value_loss(values, old_values[mb], returns[mb], fmask[mb], args.value_clip)
            critic_opt.zero_grad(set_to_none=True)
            v_loss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
            critic_opt.step()
            out_of_range = ((logp.detach() - old_logp[mb]).exp() - 1).abs() > args.eps_clip  # [M, T]
            stats["clip_ratio/region_mean"].append(((out_of_range * fmask[mb]).sum() / fmask[mb].sum()).item())
            stats["entropy"].append(((entropy * fmask[mb]).sum() / fmask[mb].sum()).item())
            stats["losses/policy_loss"].append(loss.item())
            stats["losses/value_loss"].append(v_loss.item())
            stats["charts/grad_norm"].append(grad_norm.item())
        # 6. log
        metrics = {k: float(np.mean(v)) for k, v in stats.items()}
        metrics.update(reward=rewards.mean().item(), reward_std=rewards.std().item(), kl=kl.sum(1).mean().item())
        metrics["rewards/rm_mean"], metrics["charts/advantage_std"] = rm_rewards.mean().item(), advantage_std
        metrics["rewards/confidence_mean"] = confidences.mean().item()  # c, 0.5 where none is stated
        metrics["rewards/stated_rate"] = stated.mean().item()
        metrics.update({"rewards/reward_avg": reward_avg} if arm == "ppo-c" else {})
        run.log(step, {f"{k}/{arm}": v for k, v in metrics.items()})


# Evaluation and the run ------------------------------------------------------------------------------------------
def answer_matches(text: str, gold: str, eos: str = "") -> bool:
    """Exact match ignoring case and punctuation of the `Answer:` line (else the first line) [code parse_eval.py]."""
    text = text.replace(eos, "") if eos else text
    match = re.search(r"Answer:\s*(.*)", text)
    answer = match.group(1) if match else (text.strip().splitlines() or [""])[0]
    norm = lambda s: re.sub(r"[^\w]", "", strip_confidence(s).lower())  # noqa: E731
    return norm(answer) == norm(gold)


@torch.no_grad()
def evaluate(policy, tokenizer, prompt_ids, prompt_mask, args: Args, allowed, gold) -> dict:
    """Sample at T = 1, resample outputs without a confidence, then append " Confidence: "; ECE, AUC, ACC against
    `gold`: the toy's answer token ids [N], the real path's answer strings, or None (confidences only)."""
    toy, stop_ids = allowed is not None, stop_token_ids(tokenizer, policy)
    ids, mask = generate(policy, prompt_ids, prompt_mask, stop_ids, args, allowed)  # [N, T]
    texts = decode(tokenizer, ids, mask, toy)
    stated_rate = float(np.mean([EVAL_RE.search(t) is not None for t in texts]))
    for retry in range(args.eval_retries + 1):  # [code query.py]: up to 10 resamplings, then " Confidence: " appended
        missing = torch.tensor([i for i, t in enumerate(texts) if not EVAL_RE.search(t)], dtype=torch.long)
        if len(missing) == 0:
            break
        if retry < args.eval_retries:
            prompt = (prompt_ids[missing], prompt_mask[missing])
            ids[missing], mask[missing] = generate(policy, *prompt, stop_ids, args, allowed)
            for i, text in zip(missing.tolist(), decode(tokenizer, ids[missing], mask[missing], toy)):
                texts[i] = text
            continue
        heads = decode(tokenizer, prompt_ids[missing], prompt_mask[missing], toy)
        bodies = [texts[i].removesuffix(tokenizer.eos_token).rstrip() + " Confidence:" for i in missing.tolist()]
        full = [toy_text(f"{h} {b}", back=True) if toy else f"{h} {b}" for h, b in zip(heads, bodies)]
        batch = tokenizer(full, add_special_tokens=False, padding=True, return_tensors="pt").to(ids.device)
        more = generate(policy, batch.input_ids, batch.attention_mask, stop_ids, args, allowed[3:] if toy else None, 8)
        for i, body, tail in zip(missing.tolist(), bodies, decode(tokenizer, *more, toy)):  # the toy: 0..10, EOS
            texts[i] = f"{body} {tail}"
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


def check_args(args: Args) -> None:
    """Every option is checked before any model, data or training work."""
    if args.weight < 0 or not 0 <= args.alpha <= 1:
        fail(f"PPO-C needs --weight >= 0 and --alpha in [0, 1], got --weight {args.weight} --alpha {args.alpha}")
    if not args.arms or len(set(args.arms)) != len(args.arms):
        fail(f"--arms must list distinct arms, got {args.arms}")
    if args.num_minibatches < 1 or args.rollout_batch_size % args.num_minibatches:
        fail(f"--num-minibatches {args.num_minibatches} must divide --rollout-batch-size {args.rollout_batch_size}")
    counts = "steps rollout_batch_size micro_rollout_batch_size max_new_tokens num_threads eval_samples_per_key"
    for name in counts.split():
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if min(args.actor_lr, args.critic_lr, args.temperature, args.max_grad_norm, args.eps_clip, args.value_clip) <= 0:
        fail("--actor-lr, --critic-lr, --temperature, --max-grad-norm and --eps-clip must be positive")
    if min(args.beta, args.sft_steps, args.rm_steps, args.crm_steps, args.eval_retries) < 0:
        fail("--beta, --sft-steps, --rm-steps, --crm-steps and --eval-retries must be >= 0")
    if not (0 <= args.lam <= 1 and 0 < args.gamma <= 1):
        fail(f"--lam {args.lam} must be in [0, 1] and --gamma {args.gamma} in (0, 1]")
    toy = [args.model_name == "tiny", args.reward_model_name == "tiny", args.dataset_name == "tiny"]
    if any(toy) and not all(toy) or all(toy) and args.max_new_tokens != 5:
        fail("the toy needs --model-name, --reward-model-name, --dataset-name `tiny` (all or none), --max-new-tokens 5")
    if "ppo-m" in args.arms and not all(toy) and not args.crm_model_name:
        fail("ppo-m on the real path needs --crm-model-name (a calibrated RM); only the toy trains its own CRM")


def load_rm(name: str, tokenizer, device, dtype, seed: int):
    """A reward model (AutoModelForSequenceClassification, one label) whose tokenizer must equal the policy's."""
    rm, rm_tokenizer = load_causal_lm(name, device, dtype, seed, AutoModelForSequenceClassification, num_labels=1)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        fail(
            f"the tokenizer of {name!r} differs from the policy's: the critic starts from the RM and reads the "
            "policy's token ids, so pick an RM trained with the policy's tokenizer"
        )
    return rm.eval()


def main(args: Args) -> dict:
    check_args(args)
    torch.set_num_threads(args.num_threads)
    seed_everything(args.seed)
    device = pick_device(args.cuda)
    dtype = pick_dtype(args.dtype, device)
    toy, gen, arm_gen = args.model_name == "tiny", torch.Generator().manual_seed(args.seed), torch.Generator()
    # 0. load everything that can fail before any training: models, tokenizers, data
    policy, tokenizer = build_tiny_lm(seed=args.seed) if toy else load_causal_lm(args.model_name, device, dtype)
    policy, crm, allowed = policy.to(device), None, None
    if not toy:
        rm = load_rm(args.reward_model_name, tokenizer, device, dtype, args.seed)
        crm = load_rm(args.crm_model_name, tokenizer, device, dtype, args.seed) if args.crm_model_name else None
        prompts = load_data(args.dataset_name, "train", [args.prompt_column], None, args.seed)
        prompts, eval_name = list(prompts[args.prompt_column]), args.eval_dataset_name
        eval_rows = load_data(eval_name, "train", ["prompt", "answer"], seed=args.seed) if eval_name else None
    run_name = make_run_name(f"ppo_mc-{'keys' if toy else 'custom'}", args.exp_name, args.seed)
    run = RunLogger(run_name, args, track=args.track)
    start_time = time.time()
    if toy:
        world = KeysWithOdds(tokenizer, device)
        # 1. pi_0 = SFT on the toy (the real path starts from --model-name as it is)
        toy_sft(policy, world, args, run, gen)
        # 2. the vanilla (biased, oracle-referenced) RM
        rm, allowed = toy_rm(policy, world, args, run, gen).eval(), world.allowed

        def batches(query: bool):  # the policy's prompts and the RM's (with `ref <truth>`)
            keys, truths = world.draw(args.rollout_batch_size, arm_gen)
            return (*world.prompts(keys, query), *world.prompts(keys, query, truths))

        eval_keys = torch.arange(world.NUM_KEYS, device=device).repeat_interleave(args.eval_samples_per_key)
        _, eval_truths = world.draw(len(eval_keys), torch.Generator().manual_seed(args.seed + 2), eval_keys)
        eval_prompt, tiers = world.prompts(eval_keys, True), world.odds[eval_keys].cpu().numpy()
        gold = world.answer_ids[eval_truths]  # [N] token ids of the instance truths
    else:
        system = CONFIDENCE_QUERY if args.system_prompt else None

        def batches(query: bool):  # the RM reads the same tokens
            rows = torch.randint(len(prompts), (args.rollout_batch_size,), generator=arm_gen).tolist()
            chosen = [prompts[i] for i in rows]
            return 2 * encode_prompts(tokenizer, chosen, system_prompt=system if query else None, device=device)

        eval_texts = list(eval_rows["prompt"]) if eval_rows else prompts[:64]
        eval_prompt = encode_prompts(tokenizer, eval_texts, system_prompt=CONFIDENCE_QUERY, device=device)
        gold = list(eval_rows["answer"]) if eval_rows else None

    # 3. PPO-M only: fine-tune the vanilla RM into the calibrated RM (toy; the real path loads --crm-model-name)
    if "ppo-m" in args.arms and crm is None:
        crm = train_crm(rm, world, args, run, gen)
    probes = {name: rm_probe(m, world, gen) for name, m in (("RM", rm), ("CRM", crm)) if m is not None} if toy else {}
    policy.eval().requires_grad_(False)
    if args.save_model:
        policy.save_pretrained(run.dir / "sft")
    results = {"sft": evaluate(policy, tokenizer, *eval_prompt, args, allowed, gold)}
    results["sft"]["seconds"] = time.time() - start_time
    print(f"setup (SFT, RM, CRM): {results['sft']['seconds']:.1f} s", flush=True)
    # 4. each arm: PPO from the same SFT weights and the same prompt draws, against its reward
    for arm in args.arms:
        seed_everything(args.seed)
        arm_gen.manual_seed(args.seed + 1)
        model = copy.deepcopy(policy).train().requires_grad_(True)
        reward_model = crm if arm == "ppo-m" else rm
        critic = copy.deepcopy(reward_model).train().requires_grad_(True)  # critic initialised from the RM (CRM)
        arm_start = time.time()
        train_ppo(arm, model, policy, critic, reward_model, batches, tokenizer, args, run, allowed)
        results[arm] = evaluate(model.eval(), tokenizer, *eval_prompt, args, allowed, gold)
        results[arm]["seconds"] = time.time() - arm_start
        shown = {f"eval/{k}/{arm}": v for k, v in results[arm].items() if k in ("ece", "auc", "acc", "conf")}
        run.log(args.steps, shown, echo=True)
        if args.save_model:
            model.save_pretrained(run.dir / arm)
    # 5. the table: ECE, AUC, accuracy, confidence (per odds tier on the toy), stated rate, wall time
    rows = []
    for arm, r in results.items():
        row = {"arm": arm, "ECE": r.get("ece"), "AUC": r.get("auc"), "ACC": r.get("acc"), "conf": r["conf"]}
        if toy:
            row["conf by p=.1/.4/.7/1"] = " / ".join(f"{r['confidences'][tiers == p].mean():.2f}" for p in world.ODDS)
        rows.append({**row, "stated": r["stated"], "seconds": r["seconds"]})
    run.save_text("samples.md", "".join(f"- {arm}: {' | '.join(r['texts'][::16])}\n" for arm, r in results.items()))
    probe_text = "".join(f"- {n}: " + ", ".join(f"{k} {v:.3f}" for k, v in p.items()) + "\n" for n, p in probes.items())
    run.finish(
        f"## PPO-M / PPO-C on {'keys with known odds' if toy else args.dataset_name}, seed {args.seed}, {args.steps} "
        f"PPO steps x {args.rollout_batch_size} prompts, beta {args.beta}, w {args.weight}, alpha {args.alpha}, rbar "
        f"init {args.reward_avg_init}\n\n{probe_text}\nEvaluation on {len(eval_prompt[0])} samples (ppo = PPO-dagger: "
        f"vanilla RM on the confidence prompts):\n\n{format_table(rows)}"
    )
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
