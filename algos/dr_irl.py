# arXiv:2503.18991 | README: #dr-irl
"""DR-IRL: Inverse Reinforcement Learning with Dynamic Reward Scaling for LLM Alignment
(Cheng et al., ICLR 2026, https://arxiv.org/abs/2503.18991; no official code is public).

Idea: one reward model (RM) per category, fitted by one round of IRL (the balanced demonstration must beat the initial
policy's own sample); GRPO routes each prompt to its category's RM and multiplies the group-normalised advantage by
alpha = alpha^D (answer-demonstration distance in a text encoder) x alpha^M (an outlier-trimmed RM gap): GRPO-S.

    IRL (Bradley-Terry):  L_j = -mean log sigmoid(r_j(x, y_demo) - r_j(x, y~)),   y~ ~ pi_0(.|x),  y~ != y_demo
    hardness:  s_kl = cos(Phi(S^k), Phi(S~^l)),  W_ji = 1/K sum_k max_l s_kl,  delta_ji = 1 - W_ji
               alpha^D_ji = sigmoid(delta_ji) / sigmoid(mean_i delta_ji)                  (i: prompts of category j)
    response:  R_ji = r_j(q, o_demo) - r_j(q, o~),  M_ji = 1[(R_ji - Rbar_j)^2 <= tau],  RbarP_j = sum M R / (M - T)
               alpha^M_j = sigmoid(RbarP_j) / sigmoid(Rbar_j)
    GRPO-S:    A_i = alpha^D_ji alpha^M_j (r_i - mean_G r) / (std_G r + 1e-4)        (alpha under no_grad)
    loss:      l_t = -min(rho_t A_i, clip(rho_t, 1-eps, 1+eps) A_i) + beta (e^x_t - x_t - 1),  x_t = log ref/pi

Details ([card] = rewardlab's method notes, reconstructed from the v1/v2/v3/v5 abstracts, the OpenReview reviews and two
notes; [Li] = Li et al. 2024, code JasonJiaxiangLi/Reward_learning_SFT; [DAMA] = Lu et al. ICML 2025; [TRL]):
1. Data [card 3.1]: a balanced demonstration set (<= --num-demos-per-category per category); GRPO prompts are the
   imbalanced training mix. Columns prompt / category / demonstration (tiny `op` / `reference` renamed).
2. IRL [card 3.1, Li]: --irl-samples pi_0 samples per demo prompt at T=1 as the card, identical pairs dropped, BT loss
   (`--irl-loss linear`: -(r_d - r_s)/beta, with weight decay); one round (v5). --irl-rounds > 1 = Li's alternation:
   before each later round one policy takes --irl-policy-steps GRPO steps on the RMs (arm irl<k>) and its samples refit
   them; arms start from pi_0. DIFFERENCE: one sequence score, not Li's per-token rewards from the first divergence.
3. RMs [card 6]: `--rm-arch linear` (toy default, tiny data only): weights per category on 1[y_t = x_s] (t, s from
   either end), length / multiset match, sortedness; `transformer`: fully fine-tuned AutoModelForSequenceClassification.
4. Routing [card 3.3, v1]: each prompt is scored by its category's RM; `--shared-rm` = Table 2's one-RM ablation.
5. GRPO as algos/bleuberi.py [TRL]: groups of G, unbiased std + 1e-4, ratio clip 1 +- eps, k3 KL to frozen pi_0,
   logits / T, position ids from the mask, `--loss-type grpo` [card 3.3], AdamW, grad clip.
6. alpha^D [card 3.2; v3 CLIP, v5 "a text encoder", unverified]: max-mean cosine of sub-sentence embeddings from
   `--similarity`: ngram (card's stand-in: unigram + hashed bigram counts of --chunk-size-token chunks, exact on the toy
   vocabulary), lm_hidden (frozen pi_0 mean hidden state per chunk) or encoder (--encoder-name, mean-pooled, normalised;
   split at . ! ? ; newline, the paper uses an LLM). An answer without sub-sentences has W = 0 (ours).
7. alpha^M [card 3.2]: gap demo minus policy (`--gap-sign`, unverified), mask (R - Rbar)^2 <= --tau (no source value),
   mean over the M - T kept gaps; all masked -> 1. Ours (batch scope): a category's lone prompt -> alpha = 1.
8. Flags [card 3.2]: --alpha-granularity, --stat-scope (ema: DAMA-style running means), --hardness-ref (global: arm
   grpo-s-global), --scaling (none = plain GRPO, exactly). DAMA's resampling unused.
9. Toy [card 6, SCALED]: tiny Qwen2 (~0.11M, not GPT-2 d=96) warm-started 400 x 64 at lr 2e-3 on rule_categories
   (copy 45 / reverse 30 / rotate2 15 / sort 10 %); 200 demos x 4 samples per category; 16 prompts x G=8, 80 steps,
   lr 1e-4, beta 0.04, T=1; greedy exact match on 150 held-out prompts per category, never the RM score.

Logged (suffix /<arm>): TRL's reward, reward_std, rewards/<rm|exact_match>/mean|std, kl, entropy, clip_ratio/*,
completions/*, num_tokens, losses/loss, charts/grad_norm|learning_rate; rewards/true_exact_match,
alpha/mean|std|min|max, alpha_data/mean, alpha_model/mean, alpha/<c>, kept_fraction/<c>, alpha/corr_true_success; once:
losses/irl_loss, irl/pairs/<c>, rewards/accuracies|margins/<c> (held-out); at the end eval/exact_match/<c>.

Commands:
    python algos/dr_irl.py                           # offline toy: 4 arms, 54 s on 2 cores; --seed 2 for a 2nd seed
    python algos/dr_irl.py --scaling data --alpha-granularity response --similarity lm_hidden --rm-arch transformer
    python algos/dr_irl.py --model-name Qwen/Qwen2.5-0.5B-Instruct --dataset-name PATH_WITH_prompt_category_demo \
        --similarity encoder --encoder-name sentence-transformers/all-MiniLM-L6-v2 --max-completion-length 256 \
        --num-generations 8 --batch-size 64 --micro-batch-size 4 --lr 1e-6 --rm-lr 1e-5 --rm-epochs 1 --steps 200
Measured: README.md#dr-irl (2 seeds, wall time on 2 cores).
"""

from __future__ import annotations

import copy
import math
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
import tyro
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModel, AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.data import load_data  # noqa: E402
from shared.lm import encode_prompts, load_causal_lm, position_ids_from_mask, sample, stop_token_ids  # noqa: E402
from shared.runs import RunLogger, fail, format_table, make_run_name, pick_device, pick_dtype, seed_everything  # noqa: E402
from shared.warmstart import warm_start  # noqa: E402

Arm = Literal["grpo", "grpo-s", "grpo-s-global", "grpo-true"]
ARM_SETUP = {  # arm -> (reward, applies --scaling, hardness reference or None = --hardness-ref)
    "grpo": ("rm", False, None),
    "grpo-s": ("rm", True, None),
    "grpo-s-global": ("rm", True, "global"),
    "grpo-true": ("exact_match", False, None),  # the ceiling: the true reward instead of the learned RMs
}
WARM_START_LR = 2e-3  # learning rate of the tiny warm start [card 6]
RM_BATCH_SIZE = 512  # IRL pairs per RM step
EVAL_BATCH_SIZE = 600  # prompts per batched generate call outside GRPO
NGRAM_BUCKETS = 4096  # hashed bigram buckets of the ngram encoder


@dataclass
class Args:
    exp_name: str = "toy"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of sampling, IRL and training (the same for every arm)"""
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
    model_name: str = "tiny:rule_categories"
    """policy start pi_0: tiny:<task> (warm-started tiny LM), a save_pretrained folder, or a hub id (a chat model)"""
    warm_start_steps: int = 400
    """SFT steps of the tiny warm start [card 6: 400 x 64]"""
    warm_start_seed: int = 0
    """seed of the tiny warm start (fixed, so seeds share one cached start)"""
    dataset_name: str = "tiny:rule_categories"
    """tiny:<task> (columns op/reference renamed) or a dataset with prompt, category, demonstration columns"""
    dataset_split: str = "train"
    """split to read (a real dataset's first --num-eval rows per category after shuffling are held out)"""
    categories: tuple[str, ...] = ()
    """categories that get a reward model (empty = every category in the data; a prompt outside them fails)"""
    chat: bool = True
    """wrap each prompt as one user turn of the tokenizer's chat template"""
    arms: tuple[Arm, ...] = ("grpo", "grpo-s", "grpo-s-global", "grpo-true")
    """arms to run, each from the same start, RMs and seed"""
    pool_size: int = 3000
    """training prompts read (tiny: drawn from the train split)"""
    num_eval: int = 150
    """held-out prompts per category for greedy exact match and RM accuracy [card 6: 150]"""
    num_demos_per_category: int = 200
    """balanced demonstration set: prompts per category for IRL [card 6: 200]"""
    irl_samples: int = 4
    """pi_0 samples per demonstration prompt (the non-preferred side) [card 6: 4]"""
    irl_rounds: int = 1
    """IRL rounds: 1 = the paper; > 1 = Li et al.'s alternation with a policy updated in between"""
    irl_policy_steps: int = 20
    """plain GRPO steps on the current RMs before each later IRL round"""
    irl_loss: Literal["bt", "linear"] = "bt"
    """RM loss: Bradley-Terry, or linear -(r_d - r_s)/beta (unbounded: needs --rm-weight-decay)"""
    irl_beta: float = 1.0
    """beta of the linear IRL loss"""
    rm_arch: Optional[Literal["linear", "transformer"]] = None
    """RM: linear rule features (None = this on tiny data) or a sequence-classification transformer (real data)"""
    rm_model_name: Optional[str] = None
    """start of transformer RMs (None: tiny = a fresh tiny model, else --model-name)"""
    shared_rm: bool = False
    """one RM for all categories (Table 2 ablation) instead of one per category"""
    rm_lr: float = 3e-2
    """AdamW learning rate of the RMs (transformer RMs need less, e.g. 1e-3 tiny, 1e-5 real)"""
    rm_epochs: int = 30
    """passes over the IRL pairs"""
    rm_weight_decay: float = 1e-3
    """AdamW weight decay of the RMs"""
    steps: int = 80
    """GRPO steps per arm [card 6: 80]"""
    batch_size: int = 128
    """completions per step (= prompts per step x --num-generations) [card 6: 16 x 8]"""
    num_generations: int = 8
    """G, completions per prompt [card 6: 8]"""
    micro_batch_size: int = 8
    """completions per loss micro-batch (bnpo normalises within it)"""
    lr: float = 1e-4
    """AdamW learning rate of the policy [card 6: 1e-4]"""
    warmup_ratio: float = 0.05
    """linear warmup share of the steps, then constant"""
    max_grad_norm: float = 1.0
    """gradient-norm clip"""
    beta: float = 0.04
    """k3 KL coefficient to the frozen pi_0 [card 3.3]"""
    epsilon: float = 0.2
    """ratio clip range [card 3.3]"""
    num_iterations: int = 1
    """policy updates per sampled batch (1 = on-policy, the ratio clip never binds)"""
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] = "grpo"
    """token-loss aggregation as TRL defines it [card 3.3: grpo]"""
    scale_rewards: bool = True
    """divide advantages by the group std (off = Dr. GRPO)"""
    temperature: float = 1.0
    """sampling temperature of GRPO; log-probs use logits / temperature [card 6: 1]"""
    max_prompt_length: int = 512
    """prompt tokens kept (left-truncated)"""
    max_completion_length: int = 10
    """new tokens per completion (demonstrations are truncated to it)"""
    scaling: Literal["none", "data", "model", "both"] = "both"
    """alpha of the GRPO-S arms: alpha^D x alpha^M (both), one of them, or none (= plain GRPO) [Figure 4]"""
    similarity: Literal["ngram", "lm_hidden", "encoder"] = "ngram"
    """Phi of alpha^D: n-gram counts of chunks, frozen-LM mean hidden state, or the --encoder-name text encoder"""
    encoder_name: Optional[str] = None
    """text encoder for --similarity encoder: a from_pretrained folder or hub id (mean-pooled, normalised)"""
    encoder_dim: Optional[int] = None
    """expected embedding width; checked at start-up (None = no check)"""
    chunk_size: int = 3
    """tokens per sub-sentence for the ngram / lm_hidden encoders [card 6: 3]"""
    alpha_granularity: Literal["prompt", "response"] = "prompt"
    """alpha per prompt (means over its G samples) or per response [card 3.2]"""
    stat_scope: Literal["batch", "ema"] = "batch"
    """means over the category's prompts in the batch, or running means [card 3.2]"""
    ema_gamma: float = 0.9
    """decay of the running means of --stat-scope ema [DAMA]"""
    hardness_ref: Literal["category", "global"] = "category"
    """means per category (as written) or over all prompts in scope"""
    tau: float = 1.0
    """gap mask threshold on (R - Rbar)^2, RM-logit scale (unverified)"""
    gap_sign: Literal["demo_minus_policy", "policy_minus_demo"] = "demo_minus_policy"
    """sign of the RM gap R (unverified; DAMA: chosen minus rejected)"""


# ALGO LOGIC: IRL reward models -------------------------------------------------------------------------------------
def irl_loss(demo_rewards: torch.Tensor, sample_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss -log sigmoid(r(x, y_demo) - r(x, y~)) ([P]) [Li et al., card 3.1]."""
    return F.softplus(sample_rewards - demo_rewards)  # [P], = -logsigmoid(demo - sample), stable


def content_mask(ids: torch.Tensor, mask: torch.Tensor, stop_ids: torch.Tensor) -> torch.Tensor:
    """1 on answer tokens: inside the mask and not a stop token ([N, T], bool)."""
    return mask.bool() & ~torch.isin(ids, stop_ids)


def rule_features(inputs, ids, mask, stop_ids, max_len: int) -> torch.Tensor:
    """Linear-RM features of answers to `op : x1 .. xn` ([N, F]): 1[y_t = x_s] with t, s from start and end,
    length match, multiset match, sortedness [card 6]. inputs: [N, S] token ids of x, -1 padded."""
    content = content_mask(ids, mask, stop_ids)[:, :max_len]  # [N, <=T]
    y = torch.where(content, ids[:, :max_len], -2)  # [N, <=T] -2 never equals an input
    y = F.pad(y, (0, max_len - y.size(1)), value=-2)  # [N, Tm]
    n, m = (inputs >= 0).sum(1, keepdim=True), (y >= 0).sum(1, keepdim=True)  # [N, 1] input / answer lengths
    s_idx, t_idx = torch.arange(inputs.size(1), device=ids.device), torch.arange(max_len, device=ids.device)
    x_end = torch.where(s_idx < n, inputs.gather(1, (n - 1 - s_idx).clamp(min=0)), -1)  # [N, S] x from the end
    y_end = torch.where(t_idx < m, y.gather(1, (m - 1 - t_idx).clamp(min=0)), -2)  # [N, Tm] y from the end
    matches = [(a[:, :, None] == b[:, None, :]).flatten(1) for a in (y, y_end) for b in (inputs, x_end)]  # 4x[N,Tm*S]
    big = 1 << 40  # above any token id (F.pad casts through float: iinfo.max would overflow)
    width = max(inputs.size(1), max_len)
    sorted_y = F.pad(torch.where(y >= 0, y, big), (0, width - max_len), value=big).sort(1).values  # [N, W]
    sorted_x = F.pad(torch.where(inputs >= 0, inputs, big), (0, width - inputs.size(1)), value=big).sort(1).values
    length_match = (n == m).squeeze(1)  # [N]
    multiset_match = (sorted_y == sorted_x).all(1)  # [N]
    ascending = ((y[:, 1:] >= y[:, :-1]) | (y[:, 1:] < 0)).all(1) & (m.squeeze(1) > 0)  # [N]
    return torch.cat([*matches, torch.stack([length_match, multiset_match, ascending], 1)], 1).float()  # [N, F]


class CategoryRewardModels(torch.nn.Module):
    """One RM per category (index = category id; one RM with --shared-rm). `score` routes each row to its RM."""

    def __init__(self, kind, num_rms, info, models=None):
        super().__init__()
        self.kind, self.num_rms, self.info = kind, num_rms, info
        self.models = torch.nn.ModuleList(models or [])  # transformer RMs (none for linear)
        if kind == "linear":  # one zero-initialised weight vector per category on rule_features
            num_features = 4 * info["max_len"] * info["max_inputs"] + 3  # F, as rule_features
            self.weight = torch.nn.Parameter(torch.zeros(num_rms, num_features))  # [C, F]

    def score(self, table, rows, ids, mask) -> torch.Tensor:
        """r_{c(row)}(prompt, answer) for every row ([N]); rows index `table`, ids/mask [N, T] are the answers."""
        rm_index = table["category"][rows] * (self.num_rms > 1)  # [N] routing (all to RM 0 when shared)
        if self.kind == "linear":
            feats = rule_features(table["inputs"][rows], ids, mask, self.info["stop_ids"], self.info["max_len"])
            return (feats * self.weight[rm_index]).sum(-1)  # [N]
        tokenizer, device = self.info["tokenizer"], next(self.models[0].parameters()).device
        prompts = [table["prompts"][i] for i in rows.tolist()]
        prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, self.info["chat"], device=device)  # [N, P]
        answer = torch.where(mask.bool(), ids, tokenizer.pad_token_id)  # [N, T] pads after the stop token
        input_ids, attention = torch.cat([prompt_ids, answer], 1), torch.cat([prompt_mask, mask.long()], 1)  # [N, P+T]
        scores = torch.zeros(len(rows), device=device)  # [N]
        for j in rm_index.unique().tolist():  # one forward per RM present (categories, not samples)
            sel = rm_index == j
            positions = position_ids_from_mask(attention[sel])
            out = self.models[j](input_ids=input_ids[sel], attention_mask=attention[sel], position_ids=positions)
            scores[sel] = out.logits[:, 0].float()  # pooled at the last non-pad token
        return scores


def fit_reward_models(rm, table, rows, sample_ids, sample_mask, args: Args, generator) -> list[float]:
    """Minimise the IRL loss (demonstration over sample) on the pairs; returns the per-epoch mean loss."""
    optimizer = torch.optim.AdamW(rm.parameters(), lr=args.rm_lr, weight_decay=args.rm_weight_decay)
    rm.train()
    history = []
    for _ in range(args.rm_epochs):
        losses = []
        for batch in torch.randperm(len(rows), generator=generator).split(RM_BATCH_SIZE):
            r_demo = rm.score(table, rows[batch], table["demo_ids"][rows[batch]], table["demo_mask"][rows[batch]])
            r_sample = rm.score(table, rows[batch], sample_ids[batch], sample_mask[batch])  # [b]
            loss = (irl_loss(r_demo, r_sample) if args.irl_loss == "bt" else (r_sample - r_demo) / args.irl_beta).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(sum(losses) / len(losses))
    rm.eval()
    return history


# ALGO LOGIC: dynamic scaling (GRPO-S) --------------------------------------------------------------------------------
def max_mean_cosine(policy_emb, policy_mask, demo_emb, demo_mask) -> torch.Tensor:
    """W = 1/K sum_k max_l cos(Phi(S^k), Phi(S~^l)) per answer ([N]); no sub-sentence on either side -> 0."""
    if policy_emb.size(-1) != demo_emb.size(-1):
        raise ValueError(f"embedding widths differ: policy {policy_emb.size(-1)} vs demonstration {demo_emb.size(-1)}")
    cos = F.normalize(policy_emb.float(), dim=-1) @ F.normalize(demo_emb.float(), dim=-1).transpose(1, 2)  # [N, K, L]
    cos = cos.masked_fill(~demo_mask.bool()[:, None, :], -2.0)  # [N, K, L] padding never the max
    valid = policy_mask.bool() & demo_mask.bool().any(1, keepdim=True)  # [N, K]
    best = torch.where(valid, cos.max(-1).values, 0.0)  # [N, K] each policy sub-sentence's best match
    return best.sum(1) / valid.sum(1).clamp(min=1)  # [N]


def hardness_delta(policy_embeddings: torch.Tensor, demo_embeddings: torch.Tensor) -> float:
    """delta = 1 - W for one answer from its [K, d] and the demonstration's [L, d] sub-sentence embeddings."""
    if policy_embeddings.dim() != 2 or demo_embeddings.dim() != 2:
        raise ValueError("hardness_delta takes [K, d] and [L, d] sub-sentence embeddings")
    ones = lambda e: torch.ones(1, e.size(0), dtype=torch.bool)  # noqa: E731
    w = max_mean_cosine(policy_embeddings[None], ones(policy_embeddings), demo_embeddings[None], ones(demo_embeddings))
    return 1.0 - w.item()


def alpha_data(deltas: torch.Tensor, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """alpha^D_i = sigmoid(delta_i) / sigmoid(mean_i delta) per category ([M]); `reference`: a running/global mean."""
    mean = deltas.mean() if reference is None else reference
    return torch.sigmoid(deltas) / torch.sigmoid(mean)  # [M]


def responsive_mask(gaps: torch.Tensor, tau: float, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """M_i = 1[(R_i - Rbar)^2 <= tau] ([M], bool)."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    mean = gaps.mean() if reference is None else reference
    return (gaps - mean) ** 2 <= tau


def alpha_model(gaps: torch.Tensor, tau: float, reference: Optional[torch.Tensor] = None) -> float:
    """alpha^M = sigmoid(sum_i M_i R_i / (M - T)) / sigmoid(Rbar) for one category; all gaps masked -> 1."""
    mean = gaps.mean() if reference is None else reference
    keep = responsive_mask(gaps, tau, mean)  # [M]
    if not keep.any():
        return 1.0
    kept_mean = (gaps * keep).sum() / keep.sum()  # divide by M - T, not M
    return (torch.sigmoid(kept_mean) / torch.sigmoid(mean)).item()


def scaling_factors(deltas, gaps, categories, args: Args, hardness_ref: str, running: dict):
    """alpha^D and alpha^M per completion ([B] each) and the kept flag, from per-completion deltas and gaps ([B])
    and per-prompt categories ([P]). Loops over categories (at most C), never over samples."""
    group = args.num_generations
    unit_prompt = torch.arange(len(categories), device=categories.device)  # [P]
    if args.alpha_granularity == "prompt":  # a prompt's delta and gap are means over its G samples
        deltas, gaps = deltas.view(-1, group).mean(1), gaps.view(-1, group).mean(1)  # [P]
    else:  # each response is its own unit
        unit_prompt = unit_prompt.repeat_interleave(group)  # [B]
    unit_cat = categories[unit_prompt]  # [U]
    a_data, a_model, kept = torch.ones_like(deltas), torch.ones_like(deltas), torch.ones_like(deltas, dtype=torch.bool)
    scopes = {c: unit_cat == c for c in unit_cat.unique().tolist()} if hardness_ref == "category" else {}
    scopes = scopes or {"all": torch.ones_like(unit_cat, dtype=torch.bool)}  # --hardness-ref global: one scope
    for key, sel in scopes.items():
        ref_d = ref_g = None
        if args.stat_scope == "ema":  # running means, initialised with the first batch mean [DAMA]
            for name, values in (("delta", deltas[sel]), ("gap", gaps[sel])):
                old, mean = running.get((name, key)), values.mean()
                running[name, key] = mean if old is None else args.ema_gamma * old + (1 - args.ema_gamma) * mean
            ref_d, ref_g = running["delta", key], running["gap", key]
        elif unit_prompt[sel].unique().numel() == 1:  # edge rule: one prompt in scope -> alpha = 1
            continue
        a_data[sel] = alpha_data(deltas[sel], ref_d)
        a_model[sel] = alpha_model(gaps[sel], args.tau, ref_g)
        kept[sel] = responsive_mask(gaps[sel], args.tau, ref_g)
    if args.alpha_granularity == "prompt":
        a_data, a_model, kept = (t.repeat_interleave(group) for t in (a_data, a_model, kept))  # [B]
    return a_data, a_model, kept


# ALGO LOGIC: GRPO (as algos/bleuberi.py) ------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: bool = True) -> torch.Tensor:
    """A_i = (r_i - mean_G r) / (std_G r + 1e-4) over contiguous groups of `group_size` (unbiased std)."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} >= 2")
    grouped = rewards.view(-1, group_size)  # [B/G, G]
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # [B/G, G]
    if scale_rewards:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + 1e-4)  # [B/G, G], torch std is unbiased
    return advantages.reshape(-1)  # [B]


def per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float):
    """log pi(token_t | prefix) of every completion token ([B, T]) from logits / temperature, and its entropy."""
    input_ids, mask = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    positions, keep = position_ids_from_mask(mask), completion_ids.size(1) + 1  # [B, P+T] (all 3); logits [B, T+1, V]
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    log_probs = (logits[:, :-1].float() / temperature).log_softmax(dim=-1)  # [B, T, V]: t predicts token t
    logps = log_probs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # [B, T]
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1)  # [B, T]
    return logps, entropy


def grpo_loss(logp, old_logp, ref_logp, advantages, completion_mask, beta, epsilon, loss_type, max_completion_length):
    """Clipped-ratio policy loss plus beta * k3 KL per token, aggregated as TRL's grpo / bnpo / dr_grpo."""
    mask, ratio = completion_mask.to(logp.dtype), torch.exp(logp - old_logp)  # [B, T] each, rho = pi / pi_old
    clipped_ratio, adv = torch.clamp(ratio, 1 - epsilon, 1 + epsilon), advantages.unsqueeze(1)  # [B, T], [B, 1]
    per_token_loss = -torch.min(ratio * adv, clipped_ratio * adv)  # [B, T]
    if beta != 0.0:
        log_ref_ratio = ref_logp - logp  # [B, T] x = log(pi_ref / pi)
        per_token_loss = per_token_loss + beta * (torch.exp(log_ref_ratio) - log_ref_ratio - 1)  # [B, T] + k3 KL
    if loss_type == "grpo":  # mean over each sequence's tokens, then over sequences
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":  # mean over all tokens of the (micro-)batch
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":  # sum over tokens divided by batch size x max completion length
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    raise ValueError(f"unknown loss_type {loss_type!r}; choose grpo, bnpo or dr_grpo")


@torch.no_grad()
def ratio_and_kl_metrics(logp, old_logp, ref_logp, advantages, completion_mask, epsilon) -> dict[str, float]:
    """TRL's `kl` and `clip_ratio/*`: token shares with rho < 1-eps and A < 0 (low) or rho > 1+eps and A > 0."""
    mask = completion_mask.float()  # [B, T]
    ratio, adv = torch.exp(logp - old_logp), advantages.unsqueeze(1)  # [B, T], [B, 1]
    low, high = ((ratio < 1 - epsilon) & (adv < 0)).float(), ((ratio > 1 + epsilon) & (adv > 0)).float()  # [B, T]
    shares = {"low": low, "high": high, "region": torch.maximum(low, high)}  # [B, T] each
    out = {f"clip_ratio/{k}_mean": (v * mask).sum() / mask.sum() for k, v in shares.items()}
    if ref_logp is not None:
        x = ref_logp - logp  # [B, T]
        out["kl"] = ((torch.exp(x) - x - 1) * mask).sum() / mask.sum()
    return {k: v.item() for k, v in out.items()}


# Encoders for alpha^D (the pluggable Phi) ----------------------------------------------------------------------------
def make_encoder(args: Args, start_model, tokenizer, stop_ids, device):
    """embed(ids [N, T], mask [N, T], texts) -> (sub-sentence embeddings [N, K, d], sub-sentence mask [N, K])."""
    if args.similarity == "encoder":
        encoder, enc_tokenizer = load_causal_lm(args.encoder_name, device=device, model_class=AutoModel)
        encoder.eval().requires_grad_(False)

    @torch.no_grad()
    def embed(ids, mask, texts):
        if args.similarity == "encoder":  # sub-sentences split at . ! ? ; newline (the paper splits with an LLM)
            pieces = [[s for s in re.split(r"(?<=[.!?;\n])\s+", t.strip()) if s.strip()][:16] for t in texts]
            k, flat = max(1, max(len(p) for p in pieces)), [s for p in pieces for s in p]
            emb = encode_sentences(encoder, enc_tokenizer, flat) if flat else torch.zeros(0, encoder.config.hidden_size)
            sub_mask = torch.tensor([[j < len(p) for j in range(k)] for p in pieces], device=emb.device)  # [N, K]
            out = torch.zeros(len(texts), k, emb.size(-1), device=emb.device)  # [N, K, d]
            out[sub_mask] = emb
            return out, sub_mask
        pad, size = (-ids.size(1)) % args.chunk_size, args.chunk_size  # fixed chunks of c tokens as sub-sentences
        chunks = F.pad(ids, (0, pad)).view(len(ids), -1, size)  # [N, K, c]
        tok = F.pad(content_mask(ids, mask, stop_ids), (0, pad)).view(len(ids), -1, size)  # [N, K, c] answer tokens
        if args.similarity == "ngram":  # unigram counts + bigram counts hashed into NGRAM_BUCKETS
            vocab = len(tokenizer)
            emb = torch.zeros(*chunks.shape[:2], vocab + NGRAM_BUCKETS, device=ids.device)  # [N, K, V+H]
            emb.scatter_add_(-1, chunks, tok.float())  # unigram counts
            bigram = vocab + (chunks[..., :-1] * vocab + chunks[..., 1:]) % NGRAM_BUCKETS  # [N, K, c-1]
            emb.scatter_add_(-1, bigram, (tok[..., :-1] & tok[..., 1:]).float())  # bigram counts
            return emb, tok.any(-1)
        flat, flat_mask = chunks.flatten(0, 1), tok.flatten(0, 1).long()  # [N*K, c] lm_hidden: frozen pi_0
        attention = flat_mask.clone()
        attention[:, 0] = 1  # an empty chunk attends to one token (no NaN); it is masked out below
        hidden = start_model(input_ids=flat, attention_mask=attention, output_hidden_states=True).hidden_states[-1]
        pooled = (hidden.float() * flat_mask[..., None]).sum(1) / flat_mask.sum(1, keepdim=True).clamp(min=1)
        return pooled.view(*chunks.shape[:2], -1), tok.any(-1)  # [N, K, H] mean hidden state per chunk

    return embed


@torch.no_grad()
def encode_sentences(encoder, enc_tokenizer, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings ([S, d]), as sentence-transformers' all-MiniLM-L6-v2."""
    device = next(encoder.parameters()).device
    batch = enc_tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)
    hidden = encoder(**batch).last_hidden_state.float()  # [S, L, d]
    weights = batch["attention_mask"][..., None].float()  # [S, L, 1]
    return F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=-1)  # [S, d]


def exact_match_tensor(ids, mask, demo_ids, demo_mask, stop_ids) -> torch.Tensor:
    """1 where the answer's tokens equal the demonstration's (stop tokens aside) ([N]); the toy's true success."""
    a = torch.where(content_mask(ids, mask, stop_ids), ids, -1)  # [N, T] answer tokens, -1 elsewhere
    b = torch.where(content_mask(demo_ids, demo_mask, stop_ids), demo_ids, -1)  # [N, L]
    width = max(a.size(1), b.size(1))
    return (F.pad(a, (0, width - a.size(1)), value=-1) == F.pad(b, (0, width - b.size(1)), value=-1)).all(1).float()


# Training loop ------------------------------------------------------------------------------------------------------
def prompt_batches(num_rows: int, per_step: int, steps: int, seed: int):
    """Row indices per step: shuffled epochs over the training set (the same order for every arm of a run)."""
    generator, order = torch.Generator().manual_seed(seed), []
    for _ in range(steps):
        while len(order) < per_step:
            order += torch.randperm(num_rows, generator=generator).tolist()
        yield order[:per_step]
        order = order[per_step:]


def train_grpo(arm, model, ref_model, tokenizer, table, rm, embed, setup, args: Args, run, steps: int) -> dict:
    """GRPO / GRPO-S on `table`; `setup` = (reward, scaled, hardness_ref). Returns alpha statistics per category."""
    reward_name, scaled, hardness_ref = setup
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, round(args.warmup_ratio * steps))  # linear warmup, then constant
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    group, num_tokens, names, running, alpha_log = args.num_generations, 0, table["names"], {}, defaultdict(list)
    stop_ids = torch.tensor(stop_token_ids(tokenizer, model), device=next(model.parameters()).device)
    micro_batches = torch.arange(args.batch_size, device=stop_ids.device).split(args.micro_batch_size)  # [M] each
    sampling = dict(temperature=args.temperature, max_new_tokens=args.max_completion_length, chat=args.chat)
    sampling.update(max_prompt_length=args.max_prompt_length)
    loss_args = (args.beta, args.epsilon, args.loss_type, args.max_completion_length)
    for step, batch in enumerate(prompt_batches(len(table["prompts"]), args.batch_size // group, steps, args.seed)):
        prompt_rows = torch.tensor(batch, device=stop_ids.device)  # [P]
        rows = prompt_rows.repeat_interleave(group)  # [B]
        # 1. sample G completions per prompt (rows prompt-major: each group of G is contiguous)
        out = sample(model, tokenizer, [table["prompts"][i] for i in batch], num_samples=group, **sampling)
        ids, mask = out.completion_ids, out.completion_mask  # [B, T]
        demo_ids, demo_mask = table["demo_ids"][prompt_rows], table["demo_mask"][prompt_rows]  # [P, L]
        with torch.no_grad():
            # 2. reward each completion with its own category's RM (or the truth for grpo-true); z-score the groups
            true = exact_match_tensor(ids, mask, table["demo_ids"][rows], table["demo_mask"][rows], stop_ids)  # [B]
            rm_rewards = rm.score(table, rows, ids, mask)  # [B]
            rewards = true if reward_name == "exact_match" else rm_rewards  # [B]
            advantages = group_advantages(rewards, group, args.scale_rewards)  # [B]
            # 3. hardness delta = 1 - W against the prompt's demonstration, and the RM gaps demo vs sample
            policy_emb, policy_sub = embed(ids, mask, out.texts)  # [B, K, d], [B, K]
            demo_emb, demo_sub = embed(demo_ids, demo_mask, [table["demos"][i] for i in batch])  # [P, L, d], [P, L]
            demo_emb, demo_sub = demo_emb.repeat_interleave(group, 0), demo_sub.repeat_interleave(group, 0)  # [B, ..]
            deltas = 1.0 - max_mean_cosine(policy_emb, policy_sub, demo_emb, demo_sub)  # [B]
            gaps = rm.score(table, prompt_rows, demo_ids, demo_mask).repeat_interleave(group) - rm_rewards  # [B]
            gaps = gaps if args.gap_sign == "demo_minus_policy" else -gaps
            # 4. alpha^D, alpha^M per category; alpha (their product, one of them, or 1) multiplies the advantage
            categories, reference = table["category"][prompt_rows], hardness_ref or args.hardness_ref  # [P]
            a_data, a_model, kept = scaling_factors(deltas, gaps, categories, args, reference, running)  # [B] each
            factors = {"both": a_data * a_model, "data": a_data, "model": a_model, "none": torch.ones_like(a_data)}
            alpha = factors[args.scaling].to(advantages.device)  # [B] what GRPO-S applies (logged for every arm)
            if scaled and args.scaling != "none":  # `none` leaves the advantages untouched: exactly plain GRPO
                advantages = alpha * advantages  # [B], the normalised advantage, never the raw reward
            inputs = (out.prompt_ids, out.prompt_mask, ids, mask)
            ref_logp = per_token_logps(ref_model, *inputs, args.temperature)[0] if args.beta != 0 else None  # [B, T]
            old_logp = per_token_logps(model, *inputs, args.temperature)[0] if args.num_iterations > 1 else None
        for _ in range(args.num_iterations):
            # 5. clipped-ratio + k3-KL loss, averaged over micro-batches as gradient accumulation does; AdamW step
            logp, entropy = per_token_logps(model, *inputs, args.temperature)  # [B, T], [B, T]
            old = logp.detach() if old_logp is None else old_logp  # [B, T]
            ref = old if ref_logp is None else ref_logp  # [B, T] (grpo_loss ignores it when beta = 0)
            parts = [grpo_loss(logp[b], old[b], ref[b], advantages[b], mask[b], *loss_args) for b in micro_batches]
            loss = torch.stack(parts).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
        scheduler.step()
        # 6. log TRL's metrics, alpha per category, kept fraction, alpha against true success
        lengths = mask.sum(1).float()  # [B]
        terminated = lengths[torch.isin(ids, stop_ids).any(dim=1)]  # rows that emitted a stop token
        num_tokens += int(out.prompt_mask.sum() + mask.sum())
        centred = torch.stack([alpha - alpha.mean(), true - true.mean()])  # [2, B]
        metrics = {
            "reward": rewards.mean().item(),
            "reward_std": rewards.view(-1, group).std(1).mean().item(),
            **{f"rewards/{reward_name}/{k}": getattr(rewards, k)().item() for k in ("mean", "std")},
            "rewards/true_exact_match": true.mean().item(),
            **ratio_and_kl_metrics(logp, old, ref_logp, advantages, mask, args.epsilon),
            "entropy": ((entropy * mask).sum() / mask.sum()).item(),
            **{f"completions/{k}_length": getattr(lengths, k)().item() for k in ("mean", "min", "max")},
            "completions/clipped_ratio": 1 - len(terminated) / len(lengths),
            "completions/mean_terminated_length": terminated.mean().item() if len(terminated) else 0.0,
            "num_tokens": num_tokens,
            "losses/loss": loss.item(),
            "charts/grad_norm": grad_norm.item(),
            "charts/learning_rate": scheduler.get_last_lr()[0],
            **{f"alpha/{k}": getattr(alpha, k)().item() for k in ("mean", "std", "min", "max")},
            **{f"alpha_{k}/mean": v.mean().item() for k, v in (("data", a_data), ("model", a_model))},
            "alpha/corr_true_success": ((centred[0] * centred[1]).sum() / (centred.norm(dim=1).prod() + 1e-12)).item(),
        }
        row_cat = table["category"][rows]  # [B]
        for c in row_cat.unique().tolist():
            a, k = alpha[row_cat == c], kept[row_cat == c].float()  # [B_c]
            metrics[f"alpha/{names[c]}"], metrics[f"kept_fraction/{names[c]}"] = a.mean().item(), k.mean().item()
            alpha_log[c].append(torch.stack([a.mean(), a.min(), a.max(), k.mean()]))
        run.log(step, {f"{k}/{arm}": v for k, v in metrics.items()})
    stats = {names[c]: torch.stack(v) for c, v in sorted(alpha_log.items())}  # [steps, 4]: mean, min, max, kept
    keys, reduce = ("alpha mean", "alpha min", "alpha max", "kept"), (torch.mean, torch.min, torch.max, torch.mean)
    return {n: {k: f(s[:, i]).item() for i, (k, f) in enumerate(zip(keys, reduce))} for n, s in stats.items()}


# Data, IRL, evaluation and the run ------------------------------------------------------------------------------------
def load_tables(args: Args, tokenizer, device):
    """Training and held-out tables: prompts, category ids, demonstrations as tokens (+ x tokens on tiny data)."""
    tiny = args.dataset_name.startswith("tiny:")
    if tiny:  # train and test prompts are disjoint by construction; the toy's op / reference are renamed
        columns, rename = ["prompt", "op", "reference"], {"op": "category", "reference": "demonstration"}
        train, test = (
            load_data(args.dataset_name, split, columns, n, seed=args.seed).rename_columns(rename).to_list()
            for split, n in (("train", args.pool_size), ("test", 12 * args.num_eval))
        )
    else:
        columns = ["prompt", "category", "demonstration"]
        data = load_data(args.dataset_name, args.dataset_split, columns, None, seed=args.seed).shuffle(seed=args.seed)
        train, test = data.to_list(), []
    train, test = ([dict(r, category=str(r["category"])) for r in rows] for rows in (train, test))
    present = {r["category"] for r in train + test}
    categories = list(args.categories) or sorted(present)
    if missing := sorted(present - set(categories)):
        fail(f"prompts of category {missing} have no reward model (--categories {categories}): add or drop them")
    has_demo = lambda r: isinstance(r["demonstration"], str) and bool(r["demonstration"].strip())  # noqa: E731
    if empty := [c for c in categories if not any(has_demo(r) for r in train + test if r["category"] == c)]:
        fail(f"category {empty} has no demonstrations (every demonstration is empty): write some or drop its rows")
    train, test = [r for r in train if has_demo(r)], [r for r in test if has_demo(r)]
    # held out: the first --num-eval rows per category (tiny: of the test split, real: of the shuffled data)
    source, seen, held = test if tiny else train, defaultdict(int), []
    for r in source:
        held.append(seen[r["category"]] < args.num_eval)
        seen[r["category"]] += 1
    test = [r for r, h in zip(source, held) if h]
    train = train if tiny else [r for r, h in zip(source, held) if not h]
    if len(train) < args.batch_size // args.num_generations or not test:
        fail(f"{len(train)} training and {len(test)} held-out rows: need one batch of prompts and a held-out row")
    return [make_table(rows, categories, tokenizer, args, device) for rows in (train, test)]


def make_table(rows, categories, tokenizer, args: Args, device) -> dict:
    """Columns as lists and tensors; demonstrations truncated to --max-completion-length, ending in EOS."""
    tokens = tokenizer([r["demonstration"] for r in rows], add_special_tokens=False)["input_ids"]
    demo = [torch.tensor(ids[: args.max_completion_length - 1] + [tokenizer.eos_token_id]) for ids in tokens]
    x = tokenizer([r["prompt"].rpartition(":")[2] for r in rows], add_special_tokens=False)["input_ids"]
    return {
        "prompts": [r["prompt"] for r in rows],
        "demos": [r["demonstration"] for r in rows],
        "names": categories,
        "category": torch.tensor([categories.index(r["category"]) for r in rows], device=device),  # [N]
        "demo_ids": pad_sequence(demo, True, tokenizer.pad_token_id).to(device),  # [N, L] right-padded
        "demo_mask": pad_sequence([torch.ones_like(d) for d in demo], True).to(device),  # [N, L]
        "inputs": pad_sequence([torch.tensor(t, dtype=torch.long) for t in x], True, -1).to(device),  # [N, S] x (toy)
    }


@torch.no_grad()
def sample_rows(model, tokenizer, table, rows: list[int], args: Args, num: int, greedy: bool):
    """`num` completions per row (prompt-major; T=1 unless greedy), batched: padded ids [N*num, T], mask, texts."""
    ids, masks, texts = [], [], []
    options = dict(greedy=greedy, chat=args.chat, max_prompt_length=args.max_prompt_length)
    for start in range(0, len(rows), EVAL_BATCH_SIZE):
        prompts = [table["prompts"][i] for i in rows[start : start + EVAL_BATCH_SIZE]]
        out = sample(model, tokenizer, prompts, num, args.max_completion_length, **options)
        pad = (0, args.max_completion_length - out.completion_ids.size(1))
        ids.append(F.pad(out.completion_ids, pad, value=tokenizer.pad_token_id))  # [n, T]
        masks.append(F.pad(out.completion_mask, pad))  # [n, T]
        texts += out.texts
    return torch.cat(ids), torch.cat(masks), texts


def irl_pairs(model, tokenizer, table, rows, args, stop_ids):
    """pi_0 samples (T=1) on the demonstration prompts, pairs whose sample equals the demonstration dropped."""
    ids, mask, _ = sample_rows(model, tokenizer, table, rows, args, args.irl_samples, False)
    pair_rows = torch.tensor(rows, device=ids.device).repeat_interleave(args.irl_samples)  # [N*S]
    same = exact_match_tensor(ids, mask, table["demo_ids"][pair_rows], table["demo_mask"][pair_rows], stop_ids).bool()
    return pair_rows[~same], ids[~same], mask[~same]


def check_args(args: Args) -> None:
    """Every option is checked before any data, model or training work."""
    if args.num_generations < 2:
        fail(f"--num-generations {args.num_generations}: GRPO needs groups of at least 2 (no group std, A = 0)")
    if args.batch_size % args.num_generations:
        fail(f"--batch-size {args.batch_size} must be a multiple of --num-generations {args.num_generations}")
    if args.micro_batch_size < 1 or args.batch_size % args.micro_batch_size:
        fail(f"--micro-batch-size {args.micro_batch_size} must divide --batch-size {args.batch_size}")
    for name in "tau lr rm_lr irl_beta temperature epsilon max_grad_norm".split():  # tau: the gap mask threshold
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    counts = "steps pool_size num_eval num_demos_per_category irl_samples irl_rounds irl_policy_steps rm_epochs"
    for name in (counts + " num_iterations max_completion_length max_prompt_length chunk_size num_threads").split():
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.beta < 0 or not (0 <= args.warmup_ratio < 1 and 0 <= args.ema_gamma < 1):
        fail(f"--beta {args.beta} must be >= 0, --warmup-ratio and --ema-gamma in [0, 1)")
    if args.similarity == "encoder" and not args.encoder_name:
        fail("--similarity encoder needs --encoder-name (a from_pretrained folder or hub id of a text encoder)")
    if args.rm_arch == "linear" and not args.dataset_name.startswith("tiny:"):
        fail("--rm-arch linear uses the tiny rule task's features; use --rm-arch transformer on a real dataset")
    if not args.arms or len(set(args.arms)) != len(args.arms):
        fail(f"--arms must list distinct arms, got {args.arms}")


def main(args: Args) -> dict:
    check_args(args)
    torch.set_num_threads(args.num_threads)
    seed_everything(args.seed)
    device = pick_device(args.cuda)
    dtype = pick_dtype(args.dtype, device)
    start_time, tiny = time.time(), args.dataset_name.startswith("tiny:")
    rm_arch = args.rm_arch or ("linear" if tiny else "transformer")
    # 0. pi_0 (frozen: the first IRL sampler, every arm's start and KL reference), the data, Phi and the RMs
    policy_path = args.model_name
    if policy_path.startswith("tiny:"):  # the tiny LM SFT-warm-started on the task [card 6], cached
        policy_path = str(warm_start(policy_path[5:], args.warm_start_seed, args.warm_start_steps, lr=WARM_START_LR))
    start_model, tokenizer = load_causal_lm(policy_path, device=device, dtype=dtype, seed=args.seed)
    start_model.eval().requires_grad_(False)
    stop_ids = torch.tensor(stop_token_ids(tokenizer, start_model), device=device)
    train, heldout = load_tables(args, tokenizer, device)
    names, everything = train["names"], list(range(len(heldout["prompts"])))
    embed = make_encoder(args, start_model, tokenizer, stop_ids, device)
    width = embed(train["demo_ids"][:2], train["demo_mask"][:2], train["demos"][:2])[0].size(-1)
    if args.encoder_dim is not None and width != args.encoder_dim:
        fail(f"the {args.similarity} encoder gives {width}-wide embeddings, --encoder-dim expects {args.encoder_dim}")
    num_rms, models = 1 if args.shared_rm else len(names), None
    if rm_arch == "transformer":
        rm_name = args.rm_model_name or ("tiny" if tiny else policy_path)
        kwargs = dict(device=device, dtype=dtype, model_class=AutoModelForSequenceClassification, num_labels=1)
        kwargs["new_head"] = True  # IRL fits each category's reward head from the policy's backbone
        models = [load_causal_lm(rm_name, seed=args.seed + j, **kwargs)[0] for j in range(num_rms)]
        for m in models:
            m.config.pad_token_id = tokenizer.pad_token_id
    info = dict(max_len=args.max_completion_length, max_inputs=train["inputs"].size(1), stop_ids=stop_ids)
    rm = CategoryRewardModels(rm_arch, num_rms, dict(info, tokenizer=tokenizer, chat=args.chat), models).to(device)
    task = args.dataset_name.split(":", 1)[1] if tiny else "custom"
    run = RunLogger(make_run_name(f"dr_irl-{task}", args.exp_name, args.seed), args, track=args.track, print_every=20)
    # 1. D: a balanced demonstration set, up to --num-demos-per-category prompts per category
    first = [(train["category"] == c).nonzero()[: args.num_demos_per_category, 0] for c in range(len(names))]
    demo_rows = torch.cat(first).tolist()
    # 2. IRL: pi_0 samples are the non-preferred side; fit r_j by the IRL loss, freeze (rounds > 1: Li's alternation)
    generator, policy, notes = torch.Generator().manual_seed(args.seed), start_model, []
    for irl_round in range(args.irl_rounds):
        if irl_round > 0:  # Li et al.: GRPO steps of the (persistent) policy on the current RMs, then resample y~
            policy = copy.deepcopy(policy).train().requires_grad_(True)
            setup, steps = ARM_SETUP["grpo"], args.irl_policy_steps
            train_grpo(f"irl{irl_round}", policy, start_model, tokenizer, train, rm, embed, setup, args, run, steps)
            policy.eval()
        pair_rows, sample_ids, sample_mask = irl_pairs(policy, tokenizer, train, demo_rows, args, stop_ids)
        counts = torch.bincount(train["category"][pair_rows], minlength=len(names)).tolist()
        if empty := [n for n, k in zip(names, counts) if k == 0]:
            fail(f"IRL round {irl_round}: category {empty} has no pair (every sample is its demo): raise --irl-samples")
        history = fit_reward_models(rm, train, pair_rows, sample_ids, sample_mask, args, generator)
        pairs = ", ".join(f"{n} {k}" for n, k in zip(names, counts))
        notes.append(f"IRL round {irl_round}: pairs {pairs}; loss {history[0]:.3f} -> {history[-1]:.3f}")
        print(notes[-1], flush=True)
        run.log(irl_round, {"losses/irl_loss": history[-1], **{f"irl/pairs/{n}": k for n, k in zip(names, counts)}})
    rm.requires_grad_(False)
    with torch.no_grad():  # held-out RM pairwise accuracy: demonstration vs a pi_0 sample on held-out prompts
        rows, ids, mask = irl_pairs(start_model, tokenizer, heldout, everything, args, stop_ids)
        demo_scores = rm.score(heldout, rows, heldout["demo_ids"][rows], heldout["demo_mask"][rows])  # [P]
        margin = demo_scores - rm.score(heldout, rows, ids, mask)  # [P]
    rm_rows = []
    for c, name in enumerate(names):
        m = margin[heldout["category"][rows] == c]  # [P_c]
        acc, mean_margin = ((m > 0).float().mean().item(), m.mean().item()) if len(m) else (float("nan"), 0.0)
        rm_rows.append({"category": name, "IRL pairs": counts[c], "held-out pairs": len(m), "RM accuracy": acc})
        run.log(0, {f"rewards/accuracies/{name}": acc, f"rewards/margins/{name}": mean_margin})
    print(format_table(rm_rows), flush=True)
    print(f"setup (data, start, IRL): {time.time() - start_time:.1f} s", flush=True)

    # 3-5. each arm: GRPO from pi_0 (the frozen KL reference) on the imbalanced mix, routed RMs, alpha for GRPO-S
    def evaluate(model) -> dict:
        """Greedy answers to the held-out prompts: true exact match per category, the learned RMs' mean score."""
        ids, mask, texts = sample_rows(model, tokenizer, heldout, everything, args, 1, True)
        true = exact_match_tensor(ids, mask, heldout["demo_ids"], heldout["demo_mask"], stop_ids)  # [N]
        cat = heldout["category"]
        em = {n: true[cat == c].mean().item() for c, n in enumerate(names) if (cat == c).any()}
        score = rm.score(heldout, torch.tensor(everything, device=device), ids, mask).mean().item()
        return {"em": em, "mean_em": sum(em.values()) / len(em), "rm": score, "texts": texts}

    results = {"start": {**evaluate(start_model), "seconds": 0.0, "alpha": {}}}
    for arm in args.arms:
        seed_everything(args.seed)
        model, arm_start = copy.deepcopy(start_model).train().requires_grad_(True), time.time()
        alpha = train_grpo(arm, model, start_model, tokenizer, train, rm, embed, ARM_SETUP[arm], args, run, args.steps)
        seconds = time.time() - arm_start
        results[arm] = {**evaluate(model.eval()), "seconds": seconds, "alpha": alpha}
        run.log(args.steps, {f"eval/exact_match/{n}/{arm}": v for n, v in results[arm]["em"].items()}, echo=True)
        if args.save_model:
            model.save_pretrained(run.dir / arm)
            tokenizer.save_pretrained(run.dir / arm)
    # 6. the tables: true exact match per category (never the RM score), RM accuracy, alpha per category
    n_eval = {n: int((heldout["category"] == c).sum()) for c, n in enumerate(names)}
    em_rows = [
        {"arm": arm, **{f"{n} (n={n_eval[n]})": r["em"].get(n) for n in names}, "mean EM": r["mean_em"]}
        | {"RM reward": r["rm"], "train s": r["seconds"]}
        for arm, r in results.items()
    ]
    alpha_rows = [{"arm": arm, "category": c, **s} for arm, r in results.items() for c, s in r["alpha"].items()]
    samples = [
        f"- [{names[heldout['category'][i]]}] `{heldout['prompts'][i]}` -> demo `{heldout['demos'][i]}` | "
        + " | ".join(f"{arm}: `{r['texts'][i]}`" for arm, r in results.items())
        for i in everything[:: max(1, len(everything) // 12)]
    ]
    run.save_text("samples.md", "\n".join(samples) + "\n")
    standard_error = 0.5 / math.sqrt(max(min(n_eval.values()), 1))
    run.finish(
        f"## DR-IRL on {task}, seed {args.seed}: {args.steps} steps x {args.batch_size} completions "
        f"(G={args.num_generations}), RM {rm_arch}{' (shared)' if args.shared_rm else ' per category'}, scaling "
        f"{args.scaling}, similarity {args.similarity}, granularity {args.alpha_granularity}, scope {args.stat_scope}, "
        f"tau {args.tau}, lr {args.lr}\n\n" + "\n".join(notes) + "\n\nHeld-out RM pairwise accuracy (demonstration vs "
        f"pi_0 sample):\n\n{format_table(rm_rows)}\n\nGreedy exact match per category on held-out prompts (SE <= "
        f"{standard_error:.3f}) and the learned RMs' mean reward of those answers:\n\n{format_table(em_rows)}\n\n"
        "alpha = alpha^D x alpha^M per category over the training steps (what GRPO-S applies, logged for all arms) "
        f"and the kept fraction of the gap mask:\n\n{format_table(alpha_rows)}"
    )
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
