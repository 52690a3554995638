# arXiv:2503.18991 (DR-IRL) | docs: docs/dr_irl.md (details, deviations, metrics, results, reproducing the paper)
"""DR-IRL: Inverse Reinforcement Learning with Dynamic Reward Scaling for LLM Alignment (Cheng et al., ICLR 2026,
https://arxiv.org/abs/2503.18991; no official code is public). One reward model (RM) per category, fitted by one
round of inverse RL on balanced demonstrations, then GRPO-S: GRPO with each prompt scored by its own category's RM
and its group-normalised advantage scaled by how hard the prompt is, for the data and for the model. The offline
toy (GRPO against GRPO-S on an imbalanced four-rule task, a few minutes on 2 CPU cores): python algos/dr_irl.py

Idea: safety data over-represents common harms, and a static RM pushes easy and hard prompts alike. IRL makes the
demonstration outscore the initial policy's own sample; GRPO-S multiplies the advantage by alpha = alpha^D (the
answer's distance from the demonstration in a text encoder) x alpha^M (an outlier-trimmed RM gap between the
demonstration and the sample), each relative to its category's mean.

    IRL (Bradley-Terry):  L_j = -mean log sigmoid(r_j(x, y_demo) - r_j(x, y~)),   y~ ~ pi_0(.|x),  y~ != y_demo
    hardness:  s_kl = cos(Phi(S^k), Phi(S~^l)),  W_ji = 1/K sum_k max_l s_kl,  delta_ji = 1 - W_ji
               alpha^D_ji = sigmoid(delta_ji) / sigmoid(mean_i delta_ji)                  (i: prompts of category j)
    response:  R_ji = r_j(q, o_demo) - r_j(q, o~),  M_ji = 1[(R_ji - Rbar_j)^2 <= tau],  RbarP_j = sum M R / (M - T)
               alpha^M_j = sigmoid(RbarP_j) / sigmoid(Rbar_j)
    GRPO-S:    A_i = alpha^D_ji alpha^M_j (r_i - mean_G r) / (std_G r + 1e-4)        (alpha under no_grad)
    loss:      l_t = -min(rho_t A_i, clip(rho_t, 1-eps, 1+eps) A_i) + beta (e^x_t - x_t - 1),  x_t = log ref/pi

Source tags on the lines that implement a detail: [paper] = the paper's equations, tables and figures, as the
OpenReview reviews and two third-party notes give them (the paper body was not retrievable); [Li] = Li et al. 2024,
"Getting More Juice Out of the SFT Data" (code JasonJiaxiangLi/Reward_learning_SFT); [DAMA] = Lu et al., ICML 2025
(code injadlu/DAMA); [TRL] = trl v0.17.0 trl/trainer/grpo_trainer.py; "reconstruction" where none of them says
(each such reading is a flag). Arms: grpo (learned RMs), grpo-s, grpo-s-global (alpha's means over all categories)
and grpo-true (the success measure itself as the reward: the positive control).

Commands:
    python algos/dr_irl.py                           # offline toy: the start and 4 arms, seed 1 (--seed 2, 3)
    python algos/dr_irl.py --scaling data --alpha-granularity response --similarity lm_hidden --rm-arch transformer
    python algos/dr_irl.py --model-name Qwen/Qwen2.5-0.5B-Instruct --dataset-name PATH_WITH_prompt_category_demo \
        --judge-model-name Skywork/Skywork-Reward-V2-Llama-3.1-8B --similarity encoder \
        --encoder-name sentence-transformers/all-MiniLM-L6-v2 --max-completion-length 256 --num-generations 8 \
        --batch-size 64 --micro-batch-size 4 --generation-batch-size 64 --learning-rate 1e-6 \
        --rm-learning-rate 1e-5 --rm-epochs 1 --rm-batch-size 64 --rm-micro-batch-size 4 --rm-offload disk \
        --gradient-checkpointing --steps 200
    # reuse those RMs: the same command with --categories A B --rm-model-paths runs/<run>/reward_models/A ...B
    accelerate launch --multi_gpu --num_processes 4 algos/dr_irl.py ...   # data-parallel: README "Past one GPU"
"""

from __future__ import annotations

import gc
import math
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModel, AutoModelForSequenceClassification

from shared.data import load_data
from shared.distributed import ONE_PROCESS, Processes
from shared.lm import (
    completion_logprobs,
    encode_prompts,
    load_causal_lm,
    load_policy,
    load_tokenizer,
    position_ids_from_mask,
    sample,
    stop_token_ids,
    trained_parameters,
)
from shared.precision import Precision, setup_precision
from shared.runs import RunLogger, fail, format_table, make_run_name, parse_args, seed_everything
from shared.warmstart import warm_start

Arm = Literal["grpo", "grpo-s", "grpo-s-global", "grpo-true"]
ARM_SETUP = {  # arm -> (reward, applies --scaling, hardness reference or None = --hardness-ref)
    "grpo": ("rm", False, None),
    "grpo-s": ("rm", True, None),
    "grpo-s-global": ("rm", True, "global"),
    "grpo-true": ("true", False, None),  # the positive control: the success measure itself as the reward
}
WARM_START_LR = 2e-3  # learning rate of the tiny warm start (the toy's value, reconstruction)
NGRAM_BUCKETS = 4096  # hashed bigram buckets of the ngram encoder
ENCODER_BATCH_SIZE = 256  # sentences per forward of the --similarity encoder text encoder


@dataclass
class Args:
    exp_name: str = "toy"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of sampling, IRL and training (the same for every arm)"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """compute dtype: auto (bf16 on a GPU, fp32 on the CPU), fp32, bf16 (autocast, also on the CPU) or fp16 (GPU)"""
    fp32_master: bool = True
    """keep fp32 master weights of the trained policy and RMs under bf16/fp16 autocast (off: weights in --dtype)"""
    gradient_checkpointing: bool = False
    """recompute the policy's activations in backward (less memory, ~1/3 more compute)"""
    lora_r: int = 0
    """policy LoRA rank (0 = full fine-tuning); > 0 trains fp32 adapters on every linear layer over a frozen base"""
    lora_alpha: float = 16.0
    """LoRA scaling alpha (the update is alpha / r x B A)"""
    track: bool = False
    """also log to Weights & Biases"""
    save_model: bool = False
    """save each arm's final policy (fp32 master weights, or the LoRA adapter) under runs/<run_name>/<arm>/"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest for the tiny model)"""
    model_name: str = "tiny:rule_categories"
    """policy start pi_0: tiny:<task> (warm-started tiny LM), a save_pretrained folder, or a hub id (a chat model)"""
    warm_start_steps: int = 400
    """SFT steps of the tiny warm start (the toy's value: 400 x 64)"""
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
    """held-out prompts per category for the success measure and RM accuracy (the toy's value: 150)"""
    num_demos_per_category: int = 200
    """balanced demonstration set: prompts per category for IRL [paper: balanced; the toy's count: 200]"""
    irl_samples: int = 4
    """pi_0 samples per demonstration prompt (the non-preferred side) (the toy's value: 4)"""
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
    rm_model_paths: tuple[str, ...] = ()
    """ready reward models instead of IRL: one save_pretrained folder with a score head per --categories entry (in
    that order; one with --shared-rm), sharing the policy's tokenizer (e.g. runs/<run>/reward_models/<c> of a run
    with --rm-offload disk)"""
    rm_offload: Literal["cpu", "disk"] = "cpu"
    """where the transformer RMs not in use wait: CPU memory, or saved folders runs/<run>/reward_models/<c>"""
    shared_rm: bool = False
    """one RM for all categories (the paper's Table 2 ablation) instead of one per category"""
    rm_learning_rate: float = 3e-2
    """AdamW learning rate of the RMs (transformer RMs need less, e.g. 1e-3 tiny, 1e-5 real)"""
    rm_epochs: int = 30
    """passes over the IRL pairs"""
    rm_weight_decay: float = 1e-3
    """AdamW weight decay of the RMs"""
    rm_batch_size: int = 512
    """IRL pairs per RM optimizer step (of one RM: transformer RMs are fitted one at a time)"""
    rm_micro_batch_size: Optional[int] = None
    """IRL pairs per RM forward/backward (gradient accumulation), and rows per RM / judge scoring forward (None =
    --rm-batch-size; set it on a real model, e.g. 4)"""
    steps: int = 80
    """GRPO steps per arm (the toy's value: 80; the paper's Table 6 was not retrieved)"""
    batch_size: int = 128
    """completions per step (= prompts per step x --num-generations) (the toy's value: 16 x 8)"""
    num_generations: int = 8
    """G, completions per prompt (reconstruction: 8; the paper's Table 6 was not retrieved)"""
    micro_batch_size: Optional[int] = None
    """completions per forward/backward (gradient accumulation): sets memory, not the gradient (None = the whole step
    batch, fastest for the tiny model; set it on a real model, e.g. 4)"""
    generation_batch_size: int = 2400
    """sequences per batched generate call (IRL samples, GRPO sampling, evaluation): bounds the KV cache"""
    learning_rate: float = 1e-4
    """AdamW learning rate of the policy (the toy's value: 1e-4)"""
    warmup_ratio: float = 0.05
    """linear warmup share of the steps, then constant"""
    max_grad_norm: float = 1.0
    """gradient-norm clip"""
    beta: float = 0.04
    """k3 KL coefficient to the frozen pi_0 (reconstruction: TRL's default 0.04)"""
    epsilon: float = 0.2
    """ratio clip range (reconstruction: TRL's default 0.2)"""
    num_iterations: int = 1
    """policy updates per sampled batch (1 = on-policy, the ratio clip never binds)"""
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] = "grpo"
    """token-loss aggregation as TRL defines it, over the whole step batch [paper: DeepSeekMath GRPO = grpo]"""
    scale_rewards: bool = True
    """divide advantages by the group std (off = Dr. GRPO)"""
    temperature: float = 1.0
    """sampling temperature of GRPO; log-probs use logits / temperature (reconstruction: 1)"""
    max_prompt_length: int = 512
    """prompt tokens kept (left-truncated)"""
    max_completion_length: int = 10
    """new tokens per completion (demonstrations are truncated to it, for the RMs and the encoder alike)"""
    true_reward: Optional[Literal["exact_match", "judge"]] = None
    """success measure (grpo-true's reward and the evaluation table): exact_match (answer tokens = the truncated
    demonstration's; ~0 on free text) or judge (--judge-model-name's score of the prompt and answer text). None:
    judge when --judge-model-name is given, else exact_match on tiny data (real data then needs one of them)"""
    judge_model_name: Optional[str] = None
    """judge of --true-reward judge: a sequence-classification reward model with its score head (folder or hub id),
    scoring the chat-formatted prompt and answer with its own tokenizer (e.g. Skywork/Skywork-Reward-V2-Llama-3.1-8B)"""
    scaling: Literal["none", "data", "model", "both"] = "both"
    """alpha of the GRPO-S arms: alpha^D x alpha^M (both), one of them, or none (= plain GRPO) [paper Figure 4]"""
    similarity: Optional[Literal["ngram", "lm_hidden", "encoder"]] = None
    """Phi of alpha^D: n-gram counts of chunks (tiny data only; None = this there), frozen-LM mean hidden state
    (None = this on real data) or the --encoder-name text encoder"""
    encoder_name: Optional[str] = None
    """text encoder for --similarity encoder: a from_pretrained folder or hub id (mean-pooled, normalised)"""
    encoder_dim: Optional[int] = None
    """expected embedding width; checked at start-up (None = no check)"""
    chunk_size: int = 3
    """tokens per sub-sentence for the ngram / lm_hidden encoders (reconstruction: 3)"""
    alpha_granularity: Literal["prompt", "response"] = "prompt"
    """alpha per prompt (means over its G samples, as the paper's alpha_j(q)) or per response (reconstruction)"""
    stat_scope: Literal["batch", "ema"] = "batch"
    """means over the category's prompts in the batch, or running means as DAMA's (reconstruction)"""
    ema_gamma: float = 0.9
    """decay of the running means of --stat-scope ema [DAMA]"""
    hardness_ref: Literal["category", "global"] = "category"
    """means per category (as written) or over all prompts in scope"""
    tau: float = 1.0
    """gap mask threshold on (R - Rbar)^2, RM-logit scale (reconstruction: the paper gives no value)"""
    gap_sign: Literal["demo_minus_policy", "policy_minus_demo"] = "demo_minus_policy"
    """sign of the RM gap R (reconstruction; DAMA: chosen minus rejected)"""


def resolved_options(args: Args) -> tuple[str, str, str]:
    """(RM architecture, similarity, success measure) after the defaults that depend on tiny versus real data."""
    tiny = args.dataset_name.startswith("tiny:")
    rm_arch = args.rm_arch or ("linear" if tiny and not args.rm_model_paths else "transformer")
    similarity = args.similarity or ("ngram" if tiny else "lm_hidden")
    success = args.true_reward or ("judge" if args.judge_model_name or not tiny else "exact_match")
    return rm_arch, similarity, success


# ALGO LOGIC: the per-category reward models, fitted by IRL [Li; paper] ------------------------------------------------
def irl_loss(demo_rewards: torch.Tensor, sample_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss -log sigmoid(r(x, y_demo) - r(x, y~)) ([P]) [Li; paper]."""
    return F.softplus(sample_rewards - demo_rewards)  # [P], = -logsigmoid(demo - sample), stable


def content_mask(ids: torch.Tensor, mask: torch.Tensor, stop_ids: torch.Tensor) -> torch.Tensor:
    """1 on answer tokens: inside the mask and not a stop token ([N, T], bool)."""
    return mask.bool() & ~torch.isin(ids, stop_ids)


def rule_features(inputs, ids, mask, stop_ids, max_len: int) -> torch.Tensor:
    """Linear-RM features of answers to `op : x1 .. xn` ([N, F]): 1[y_t = x_s] with t, s from start and end,
    length match, multiset match, sortedness (the toy's RM, reconstruction). inputs: [N, S] ids of x, -1 padded."""
    content = content_mask(ids, mask, stop_ids)[:, :max_len]  # [N, <=T]
    y = torch.where(content, ids[:, :max_len], -2)  # [N, <=T] -2 never equals an input
    y = F.pad(y, (0, max_len - y.size(1)), value=-2)  # [N, Tm]
    n = (inputs >= 0).sum(1, keepdim=True)  # [N, 1] input lengths
    m = (y >= 0).sum(1, keepdim=True)  # [N, 1] answer lengths
    s_idx = torch.arange(inputs.size(1), device=ids.device)  # [S]
    t_idx = torch.arange(max_len, device=ids.device)  # [Tm]
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


def sequence_scores(model, prompt_ids, prompt_mask, answer_ids, answer_mask, pad_token_id: int) -> torch.Tensor:
    """A sequence-classification RM's scalar score of each prompt + answer ([N], fp32), pooled at the last non-pad
    token (the answer's stop token); position ids from the mask, as in generation. One score per sequence: a
    deliberate difference from Li et al.'s per-token rewards from the first diverging token."""
    answer = torch.where(answer_mask.bool(), answer_ids, pad_token_id)  # [N, T] pads after the stop token
    input_ids = torch.cat([prompt_ids, answer], dim=1)  # [N, P+T]
    attention_mask = torch.cat([prompt_mask, answer_mask.long()], dim=1)  # [N, P+T]
    positions = position_ids_from_mask(attention_mask)  # [N, P+T]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits  # [N, 1]
    return logits[:, 0].float()  # [N]


class CategoryRewardModels(torch.nn.Module):
    """One RM per category (index = category id; one RM with --shared-rm). `score` routes each row to its RM.

    linear: one zero-initialised weight vector per category on `rule_features`, all held (and fitted) together.
    transformer: sequence-classification models, at most one of them on the device at a time: `activate(j)` puts
    RM j there and sends the previous one back to the CPU (--rm-offload cpu) or to its saved folder (disk).
    `sources[j]` = (folder or hub id, new_head) that RM j is loaded from when it is in neither place."""

    def __init__(self, kind, num_rms, info, precision: Precision, sources=(), offload="cpu"):
        super().__init__()
        self.kind = kind  # linear or transformer
        self.num_rms = num_rms
        self.info = info  # what scoring needs: tokenizer, stop ids, lengths, micro-batch size, names, seed
        self.precision = precision
        self.sources = list(sources)
        self.offload_mode = offload
        self.offload_dir = None  # disk: the run folder's reward_models/, set once the run exists
        self.cpu_models = {}  # j -> RM waiting on the CPU (--rm-offload cpu)
        self.active = None  # (j, RM) on the device, or None
        self.changed = False  # the active RM was fitted since it was loaded (disk: save it before dropping it)
        if kind == "linear":  # one zero-initialised weight vector per category on rule_features
            num_features = 4 * info["max_len"] * info["max_inputs"] + 3  # F, as rule_features
            self.weight = torch.nn.Parameter(torch.zeros(num_rms, num_features))  # [C, F]

    def route(self, table, rows) -> torch.Tensor:
        """The RM index of each row ([N]): its category's (all 0 when shared) [paper; v1 and Table 2]."""
        return table["category"][rows] * (self.num_rms > 1)

    def activate(self, j: int, dtype: Optional[torch.dtype] = None):
        """RM j on the device (loaded in `dtype`, default the frozen dtype), after the active one is put away."""
        if self.active is not None and self.active[0] == j:
            return self.active[1]
        self.put_away()
        device, dtype = self.precision.device, dtype or self.precision.frozen_dtype
        if j in self.cpu_models:
            model = self.cpu_models.pop(j).to(device=device, dtype=dtype)
        else:
            source, new_head = self.sources[j]
            options = dict(model_class=AutoModelForSequenceClassification, num_labels=1, new_head=new_head)
            model = load_causal_lm(source, device, dtype, seed=self.info["seed"] + j, **options)[0]
            model.config.pad_token_id = self.info["tokenizer"].pad_token_id
        self.active, self.changed = (j, model.eval().requires_grad_(False)), False
        return model

    def put_away(self) -> None:
        """Send the active RM to the CPU, or (disk) drop it, saved first if it was fitted; free the device memory."""
        if self.active is None:
            return
        (j, model), self.active = self.active, None
        if self.offload_mode == "cpu":
            self.cpu_models[j] = model.to("cpu")
        elif self.changed:
            folder = self.offload_dir / self.info["names"][j]
            model.save_pretrained(folder)
            self.info["tokenizer"].save_pretrained(folder)
            self.sources[j] = (str(folder), False)
        del model
        if self.offload_mode == "disk":
            gc.collect()  # a dropped model's reference cycles hold its weights until collected
        if self.precision.device.type == "cuda":
            torch.cuda.empty_cache()

    def begin_fit(self, j: int):
        """RM j on the device in the trained dtype (fp32 master weights), trainable: what its optimizer updates."""
        if self.active is not None and self.active[0] == j:
            self.put_away()  # reloaded below in the trained dtype
        model = self.activate(j, self.precision.trained_dtype)
        return model.train().requires_grad_(True)

    def end_fit(self, j: int) -> None:
        """RM j frozen in the frozen dtype, then put away: the next RM gets the device."""
        _, model = self.active
        model.to(dtype=self.precision.frozen_dtype).eval().requires_grad_(False)
        self.changed = True
        self.put_away()

    def score(self, table, rows, ids, mask) -> torch.Tensor:
        """r_{c(row)}(prompt, answer) for every row ([N]); rows index `table`, ids/mask [N, T] are the answers.
        Transformer RMs: one RM on the device at a time, rows scored in micro-batches of --rm-micro-batch-size."""
        rm_index = self.route(table, rows)  # [N]
        if self.kind == "linear":
            feats = rule_features(table["inputs"][rows], ids, mask, self.info["stop_ids"], self.info["max_len"])
            return (feats * self.weight[rm_index]).sum(-1)  # [N]
        tokenizer, device = self.info["tokenizer"], self.precision.device
        prompts = [table["prompts"][i] for i in rows.tolist()]
        prompt_ids, prompt_mask = encode_prompts(
            tokenizer, prompts, self.info["chat"], self.info["max_prompt_length"], device=device
        )  # [N, P]
        scores = torch.zeros(len(rows), device=device)  # [N]
        for j in rm_index.unique().tolist():  # one RM at a time (categories, not samples)
            model = self.activate(j)
            for mb in (rm_index == j).nonzero()[:, 0].split(self.info["micro_batch_size"]):
                with self.precision.autocast():
                    scores[mb] = sequence_scores(
                        model, prompt_ids[mb], prompt_mask[mb], ids[mb], mask[mb], tokenizer.pad_token_id
                    )  # [M]
        return scores


def accumulate_rm_gradients(rm, table, rows, sample_ids, sample_mask, args: Args, precision: Precision) -> float:
    """Forward and backward of the IRL loss (demonstration over sample) per micro-batch of --rm-micro-batch-size
    pairs; each micro-batch adds its share (its summed pair loss / the step's pairs), so the gradients add up to the
    mean loss of the step batch. Returns that loss."""
    batch_pairs = len(rows)
    total_loss = 0.0
    for mb in micro_batches(batch_pairs, args.rm_micro_batch_size or args.rm_batch_size, rows.device):
        demo_rewards = rm.score(table, rows[mb], table["demo_ids"][rows[mb]], table["demo_mask"][rows[mb]])  # [M]
        sample_rewards = rm.score(table, rows[mb], sample_ids[mb], sample_mask[mb])  # [M]
        if args.irl_loss == "bt":
            pair_losses = irl_loss(demo_rewards, sample_rewards)  # [M]
        else:
            pair_losses = (sample_rewards - demo_rewards) / args.irl_beta  # [M]
        loss = pair_losses.sum() / batch_pairs
        precision.backward(loss)
        total_loss += loss.item()
    return total_loss


def fit_reward_models(rm, table, rows, sample_ids, sample_mask, args: Args, generator, precision) -> list[float]:
    """Minimise the IRL loss on the pairs; returns the per-epoch mean loss (averaged over the RMs).

    Transformer RMs are fitted one at a time, each on its own category's pairs (all pairs when shared), on the
    device alone with its optimizer, then frozen and put away; the linear RMs (one small tensor) are fitted together."""
    if rm.kind == "linear":
        units = [(None, torch.arange(len(rows)))]
    else:
        route = rm.route(table, rows).cpu()  # [P]
        units = [(j, (route == j).nonzero()[:, 0]) for j in range(rm.num_rms)]
    history = [0.0] * args.rm_epochs
    for j, pairs in units:
        parameters = list(rm.parameters()) if j is None else trained_parameters(rm.begin_fit(j))
        optimizer = torch.optim.AdamW(parameters, lr=args.rm_learning_rate, weight_decay=args.rm_weight_decay)
        optimizer = precision.prepare_optimizer(optimizer)
        for epoch in range(args.rm_epochs):
            losses = []
            for batch in pairs[torch.randperm(len(pairs), generator=generator)].split(args.rm_batch_size):
                batch = batch.to(rows.device)
                optimizer.zero_grad(set_to_none=True)
                pair_rows, pair_ids, pair_mask = rows[batch], sample_ids[batch], sample_mask[batch]  # [b], [b, T]
                loss = accumulate_rm_gradients(rm, table, pair_rows, pair_ids, pair_mask, args, precision)
                optimizer.step()
                losses.append(loss)
            history[epoch] += sum(losses) / len(losses) / len(units)
        optimizer.zero_grad(set_to_none=True)
        del optimizer, parameters  # nothing may keep this RM's weights alive once it is put away
        precision.release()  # the RM's optimizer and its state can be freed
        if j is not None:
            rm.end_fit(j)
    rm.eval()
    return history


class Judge:
    """The real path's success measure: a ready sequence-classification reward model (with its score head) that
    scores the prompt and the answer TEXT, formatted by its own tokenizer's chat template, in micro-batches."""

    def __init__(self, name: str, args: Args, precision: Precision):
        options = dict(model_class=AutoModelForSequenceClassification)
        self.model, self.tokenizer = load_causal_lm(name, precision.device, precision.frozen_dtype, **options)
        if self.model.config.num_labels != 1:
            fail(f"--judge-model-name {name!r} has {self.model.config.num_labels} labels: a judge gives one score")
        self.model.eval().requires_grad_(False)
        self.precision, self.max_length = precision, 4096
        self.micro_batch_size = args.rm_micro_batch_size or args.rm_batch_size

    @torch.no_grad()
    def score(self, prompts: list[str], answers: list[str]) -> torch.Tensor:
        """The judge's score of each (prompt, answer) ([N], fp32)."""
        if self.tokenizer.chat_template is not None:
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": a}], tokenize=False
                )
                for p, a in zip(prompts, answers)
            ]
        else:
            texts = [f"{p}\n{a}" for p, a in zip(prompts, answers)]
        scores = []
        for start in range(0, len(texts), self.micro_batch_size):
            batch = self.tokenizer(
                texts[start : start + self.micro_batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=self.tokenizer.chat_template is None,
            ).to(self.precision.device)  # left-padded [n, L]
            positions = position_ids_from_mask(batch["attention_mask"])  # [n, L]
            with self.precision.autocast():
                logits = self.model(**batch, position_ids=positions).logits  # [n, 1]
            scores.append(logits[:, 0].float())
        return torch.cat(scores)  # [N]


# ALGO LOGIC: dynamic scaling, alpha^D x alpha^M (GRPO-S) [paper] ------------------------------------------------------
def max_mean_cosine(policy_emb, policy_mask, demo_emb, demo_mask) -> torch.Tensor:
    """W = 1/K sum_k max_l cos(Phi(S^k), Phi(S~^l)) per answer ([N]) [paper]; no sub-sentence on either side -> 0
    (reconstruction)."""
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
    policy_mask = torch.ones(1, policy_embeddings.size(0), dtype=torch.bool)  # [1, K]
    demo_mask = torch.ones(1, demo_embeddings.size(0), dtype=torch.bool)  # [1, L]
    w = max_mean_cosine(policy_embeddings[None], policy_mask, demo_embeddings[None], demo_mask)  # [1]
    return 1.0 - w.item()


def alpha_data(deltas: torch.Tensor, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """alpha^D_i = sigmoid(delta_i) / sigmoid(mean_i delta) per category ([M]) [paper]; `reference`: a running or
    global mean (reconstruction, --stat-scope / --hardness-ref)."""
    mean = deltas.mean() if reference is None else reference
    return torch.sigmoid(deltas) / torch.sigmoid(mean)  # [M]


def responsive_mask(gaps: torch.Tensor, tau: float, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """M_i = 1[(R_i - Rbar)^2 <= tau] ([M], bool) [paper]."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    mean = gaps.mean() if reference is None else reference
    return (gaps - mean) ** 2 <= tau


def alpha_model(gaps: torch.Tensor, tau: float, reference: Optional[torch.Tensor] = None) -> float:
    """alpha^M = sigmoid(sum_i M_i R_i / (M - T)) / sigmoid(Rbar) for one category [paper]; all gaps masked -> 1
    (reconstruction)."""
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
    a_data = torch.ones_like(deltas)  # [U] alpha^D, 1 where no scope sets it
    a_model = torch.ones_like(deltas)  # [U] alpha^M
    kept = torch.ones_like(deltas, dtype=torch.bool)  # [U] inside the gap mask
    scopes = {c: unit_cat == c for c in unit_cat.unique().tolist()} if hardness_ref == "category" else {}
    scopes = scopes or {"all": torch.ones_like(unit_cat, dtype=torch.bool)}  # --hardness-ref global: one scope
    for key, sel in scopes.items():
        ref_d = ref_g = None
        if args.stat_scope == "ema":  # running means, initialised with the first batch mean [DAMA]
            for name, values in (("delta", deltas[sel]), ("gap", gaps[sel])):
                old, mean = running.get((name, key)), values.mean()
                running[name, key] = mean if old is None else args.ema_gamma * old + (1 - args.ema_gamma) * mean
            ref_d, ref_g = running["delta", key], running["gap", key]
        elif unit_prompt[sel].unique().numel() == 1:  # edge rule (reconstruction): one prompt in scope -> alpha = 1
            continue
        a_data[sel] = alpha_data(deltas[sel], ref_d)
        a_model[sel] = alpha_model(gaps[sel], args.tau, ref_g)
        kept[sel] = responsive_mask(gaps[sel], args.tau, ref_g)
    if args.alpha_granularity == "prompt":
        a_data, a_model, kept = (t.repeat_interleave(group) for t in (a_data, a_model, kept))  # [B]
    return a_data, a_model, kept


# ALGO LOGIC: the GRPO loss [TRL], as in algos/bleuberi.py -------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: bool = True) -> torch.Tensor:
    """A_i = (r_i - mean_G r) / (std_G r + 1e-4) over contiguous groups of `group_size` (unbiased std)."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} >= 2")
    grouped = rewards.view(-1, group_size)  # [B/G, G]
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # [B/G, G]
    if scale_rewards:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + 1e-4)  # [B/G, G], torch std is unbiased
    return advantages.reshape(-1)  # [B]


def grpo_loss(
    logp,
    old_logp,
    ref_logp,
    advantages,
    completion_mask,
    beta,
    epsilon,
    loss_type,
    max_completion_length,
    batch_sequences=None,
    batch_tokens=None,
):
    """Clipped-ratio policy loss plus beta * k3 KL per token, aggregated as TRL's grpo / bnpo / dr_grpo.

    `batch_sequences` and `batch_tokens` are the completions and completion tokens of the whole step batch (default:
    these rows alone): the loss of a micro-batch is then its share of the step batch's loss, and the micro-batch
    losses (and gradients) add up to the full-batch ones."""
    batch_sequences = logp.size(0) if batch_sequences is None else batch_sequences
    batch_tokens = completion_mask.sum() if batch_tokens is None else batch_tokens
    mask = completion_mask.to(logp.dtype)  # [B, T]
    ratio = torch.exp(logp - old_logp)  # [B, T] rho = pi / pi_old (1 when old_logp = logp.detach())
    clipped_ratio = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)  # [B, T]
    adv = advantages.unsqueeze(1)  # [B, 1]
    per_token_loss = -torch.min(ratio * adv, clipped_ratio * adv)  # [B, T]
    if beta != 0.0:
        log_ref_ratio = ref_logp - logp  # [B, T] x = log(pi_ref / pi)
        per_token_kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # [B, T] k3 estimator of KL(pi || pi_ref), >= 0
        per_token_loss = per_token_loss + beta * per_token_kl  # [B, T]
    if loss_type == "grpo":  # mean over each sequence's tokens, then over the batch's sequences
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / batch_sequences
    if loss_type == "bnpo":  # mean over all completion tokens of the batch
        return (per_token_loss * mask).sum() / max(float(batch_tokens), 1.0)
    if loss_type == "dr_grpo":  # sum over tokens divided by a constant: batch size x max completion length
        return (per_token_loss * mask).sum() / (batch_sequences * max_completion_length)
    raise ValueError(f"unknown loss_type {loss_type!r}; choose grpo, bnpo or dr_grpo")


def micro_batches(num_rows: int, micro_batch_size: int, device) -> list[torch.Tensor]:
    """Row indices of consecutive micro-batches of at most `micro_batch_size` rows."""
    return list(torch.arange(num_rows, device=device).split(micro_batch_size))


@torch.no_grad()
def frozen_logprobs(model, inputs, args: Args, precision: Precision) -> torch.Tensor:
    """Per-token log-probs ([B, T]) of a model that is not being updated (the reference, the sampling policy),
    one micro-batch at a time."""
    rows = micro_batches(len(inputs[0]), args.micro_batch_size or len(inputs[0]), inputs[0].device)
    with precision.autocast():
        return torch.cat([completion_logprobs(model, *(x[mb] for x in inputs), args.temperature)[0] for mb in rows])


def accumulate_grpo_gradients(
    model, inputs, old_logp, ref_logp, advantages, args: Args, precision: Precision, processes=ONE_PROCESS
):
    """Forward and backward of the GRPO loss per micro-batch; the gradients add up to the full batch's. With
    several processes these are this process's rows, normalised by the whole step batch's counts.

    Returns the policy's log-probs and token entropies ([B, T] each, detached) and this process's share of the loss."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = inputs
    batch_sequences = len(advantages) * processes.count  # the step batch: every process holds as many rows
    batch_tokens = processes.sum(completion_mask.sum())
    loss_args = (args.beta, args.epsilon, args.loss_type, args.max_completion_length, batch_sequences, batch_tokens)
    logps, entropies, total_loss = [], [], 0.0
    for mb in micro_batches(len(advantages), args.micro_batch_size or len(advantages), advantages.device):
        with precision.autocast():
            logp, entropy = completion_logprobs(
                model, prompt_ids[mb], prompt_mask[mb], completion_ids[mb], completion_mask[mb], args.temperature, True
            )  # [M, T], [M, T]
        old = logp.detach() if old_logp is None else old_logp[mb]  # [M, T]
        ref = None if ref_logp is None else ref_logp[mb]  # [M, T]
        loss = grpo_loss(logp, old, ref, advantages[mb], completion_mask[mb], *loss_args)  # this share of the loss
        precision.backward(loss)
        logps.append(logp.detach())
        entropies.append(entropy)
        total_loss += loss.item()
    return torch.cat(logps), torch.cat(entropies), total_loss


def make_optimizer(parameters, args: Args, precision: Precision, steps: int):
    """AdamW (weight decay 0) over the trained parameters, constant LR after a linear warmup."""
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.0)
    warmup = max(1, round(args.warmup_ratio * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    return precision.prepare_optimizer(optimizer), scheduler


@torch.no_grad()
def ratio_and_kl_metrics(logp, old_logp, ref_logp, advantages, completion_mask, epsilon) -> dict[str, float]:
    """TRL's `kl` and `clip_ratio/*`: token shares with rho < 1-eps and A < 0 (low) or rho > 1+eps and A > 0."""
    mask = completion_mask.float()  # [B, T]
    ratio = torch.exp(logp - old_logp)  # [B, T]
    adv = advantages.unsqueeze(1)  # [B, 1]
    low = ((ratio < 1 - epsilon) & (adv < 0)).float()  # [B, T]
    high = ((ratio > 1 + epsilon) & (adv > 0)).float()  # [B, T]
    out = {
        "clip_ratio/low_mean": (low * mask).sum() / mask.sum(),
        "clip_ratio/high_mean": (high * mask).sum() / mask.sum(),
        "clip_ratio/region_mean": (torch.maximum(low, high) * mask).sum() / mask.sum(),
    }
    if ref_logp is not None:
        x = ref_logp - logp  # [B, T]
        out["kl"] = ((torch.exp(x) - x - 1) * mask).sum() / mask.sum()
    return {k: v.item() for k, v in out.items()}


# ALGO LOGIC: the encoders Phi of alpha^D (pluggable) and the toy's exact match ----------------------------------------
def make_encoder(args: Args, similarity: str, start_model, tokenizer, stop_ids, precision: Precision):
    """embed(ids [N, T], mask [N, T], texts) -> (sub-sentence embeddings [N, K, d], sub-sentence mask [N, K])."""
    if similarity == "encoder":
        encoder, enc_tokenizer = load_causal_lm(args.encoder_name, precision.device, model_class=AutoModel)
        encoder.eval().requires_grad_(False)

    @torch.no_grad()
    def embed(ids, mask, texts):
        if similarity == "encoder":  # sub-sentences split at . ! ? ; newline (reconstruction: the paper uses an LLM)
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
        if similarity == "ngram":  # unigram counts + bigram counts hashed into NGRAM_BUCKETS (tiny vocabulary only)
            vocab = len(tokenizer)
            emb = torch.zeros(*chunks.shape[:2], vocab + NGRAM_BUCKETS, device=ids.device)  # [N, K, V+H]
            emb.scatter_add_(-1, chunks, tok.float())  # unigram counts
            bigram = vocab + (chunks[..., :-1] * vocab + chunks[..., 1:]) % NGRAM_BUCKETS  # [N, K, c-1]
            emb.scatter_add_(-1, bigram, (tok[..., :-1] & tok[..., 1:]).float())  # bigram counts
            return emb, tok.any(-1)
        flat, flat_mask = chunks.flatten(0, 1), tok.flatten(0, 1).long()  # [N*K, c] lm_hidden: frozen pi_0
        attention = flat_mask.clone()
        attention[:, 0] = 1  # an empty chunk attends to one token (no NaN); it is masked out below
        pooled = []
        answers_per_piece = args.micro_batch_size or len(ids)
        for piece in micro_batches(len(flat), answers_per_piece * chunks.size(1), ids.device):
            with precision.autocast():  # the body only: no [rows, c, V] logits
                hidden = start_model.base_model(input_ids=flat[piece], attention_mask=attention[piece])[0]  # [m, c, H]
            weights = flat_mask[piece, :, None]  # [m, c, 1]
            pooled.append((hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1))  # [m, H]
        return torch.cat(pooled).view(*chunks.shape[:2], -1), tok.any(-1)  # [N, K, H] mean hidden state per chunk

    return embed


@torch.no_grad()
def encode_sentences(encoder, enc_tokenizer, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings ([S, d]), as sentence-transformers' all-MiniLM-L6-v2."""
    device = next(encoder.parameters()).device
    embeddings = []
    for start in range(0, len(sentences), ENCODER_BATCH_SIZE):
        chunk = sentences[start : start + ENCODER_BATCH_SIZE]
        batch = enc_tokenizer(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)
        hidden = encoder(**batch).last_hidden_state.float()  # [s, L, d]
        weights = batch["attention_mask"][..., None].float()  # [s, L, 1]
        embeddings.append(F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=-1))  # [s, d]
    return torch.cat(embeddings)  # [S, d]


def exact_match_tensor(ids, mask, demo_ids, demo_mask, stop_ids) -> torch.Tensor:
    """1 where the answer's tokens equal the demonstration's (stop tokens aside) ([N]); the toy's true success."""
    a = torch.where(content_mask(ids, mask, stop_ids), ids, -1)  # [N, T] answer tokens, -1 elsewhere
    b = torch.where(content_mask(demo_ids, demo_mask, stop_ids), demo_ids, -1)  # [N, L]
    width = max(a.size(1), b.size(1))
    return (F.pad(a, (0, width - a.size(1)), value=-1) == F.pad(b, (0, width - b.size(1)), value=-1)).all(1).float()


# ALGO LOGIC: the training loop (GRPO and GRPO-S) ----------------------------------------------------------------------
def prompt_batches(num_rows: int, per_step: int, steps: int, seed: int):
    """Row indices per step: shuffled epochs over the training set (the same order for every arm of a run)."""
    generator, order = torch.Generator().manual_seed(seed), []
    for _ in range(steps):
        while len(order) < per_step:
            order += torch.randperm(num_rows, generator=generator).tolist()
        yield order[:per_step]
        order = order[per_step:]


def train_grpo(
    arm,
    model,
    ref_model,
    tokenizer,
    table,
    rm,
    embed,
    success,
    setup,
    args: Args,
    run,
    steps,
    precision,
    processes=ONE_PROCESS,
):
    """GRPO / GRPO-S on `table`; `setup` = (reward, scaled, hardness_ref); `success` = the true success measure
    (name, fn(table, rows, ids, mask, texts) -> [N]). Returns alpha statistics per category. With several
    processes each samples and trains on its share of every step's prompts; alpha's statistics are the whole
    step batch's (gathered)."""
    reward_name, scaled, hardness_ref = setup
    success_name, success_fn = success
    parameters = trained_parameters(model)
    optimizer, scheduler = make_optimizer(parameters, args, precision, steps)
    group = args.num_generations
    names = table["names"]
    num_tokens = 0
    running = {}  # --stat-scope ema: the running means of delta and gap per scope
    alpha_log = defaultdict(list)  # category -> per-step [alpha mean, min, max, kept fraction]
    stop_ids = torch.tensor(stop_token_ids(tokenizer, model), device=precision.device)
    sampling = dict(temperature=args.temperature, max_new_tokens=args.max_completion_length, chat=args.chat)
    sampling.update(max_prompt_length=args.max_prompt_length, batch_size=args.generation_batch_size)
    reward_label = success_name if reward_name == "true" else "rm"
    # 3. each step: the step's prompts, from shuffled epochs over the training mix (the same order for every arm)
    for step, step_batch in enumerate(
        prompt_batches(len(table["prompts"]), args.batch_size // group, steps, args.seed)
    ):
        batch = processes.shard(step_batch)  # this process's prompts (all of them in a one-process run)
        prompt_rows = torch.tensor(batch, device=precision.device)  # [P]
        rows = prompt_rows.repeat_interleave(group)  # [B]
        # 3a. sample G completions per prompt (rows prompt-major: each group of G is contiguous)
        with precision.autocast():
            out = sample(model, tokenizer, [table["prompts"][i] for i in batch], num_samples=group, **sampling)
        ids, mask = out.completion_ids, out.completion_mask  # [B, T]
        demo_ids, demo_mask = table["demo_ids"][prompt_rows], table["demo_mask"][prompt_rows]  # [P, L]
        with torch.no_grad():
            # 3b. reward each completion with its own category's RM [paper] (or the success measure for grpo-true),
            #     and score the prompt's demonstration in the same call (each RM comes to the device once per step)
            true = success_fn(table, rows, ids, mask, out.texts).to(precision.device)  # [B]
            width = max(ids.size(1), demo_ids.size(1))
            both_ids = torch.cat(
                [F.pad(x, (0, width - x.size(1)), value=tokenizer.pad_token_id) for x in (ids, demo_ids)]
            )  # [B+P, W]
            both_mask = torch.cat([F.pad(x, (0, width - x.size(1))) for x in (mask, demo_mask)])  # [B+P, W]
            both_scores = rm.score(table, torch.cat([rows, prompt_rows]), both_ids, both_mask)  # [B+P]
            rm_rewards, demo_rewards = both_scores[: len(rows)], both_scores[len(rows) :]  # [B], [P]
            if rm.num_rms > 1:  # the next step starts with another RM anyway: free the device for the policy now
                rm.put_away()
            rewards = true if reward_name == "true" else rm_rewards  # [B]
            advantages = group_advantages(rewards, group, args.scale_rewards)  # [B] z-scored in each group [TRL]
            # 4a. hardness delta = 1 - W against the prompt's demonstration (truncated as the RMs see it), RM gaps
            policy_emb, policy_sub = embed(ids, mask, out.texts)  # [B, K, d], [B, K]
            demo_texts = [table["demo_texts"][i] for i in batch]
            demo_emb, demo_sub = embed(demo_ids, demo_mask, demo_texts)  # [P, L, d], [P, L]
            demo_emb = demo_emb.repeat_interleave(group, 0)  # [B, L, d]
            demo_sub = demo_sub.repeat_interleave(group, 0)  # [B, L]
            deltas = 1.0 - max_mean_cosine(policy_emb, policy_sub, demo_emb, demo_sub)  # [B]
            gaps = demo_rewards.repeat_interleave(group) - rm_rewards  # [B] R = r(demo) - r(sample) [paper]
            gaps = gaps if args.gap_sign == "demo_minus_policy" else -gaps  # the sign: reconstruction, a flag
            # 4b. alpha^D, alpha^M per category; alpha (their product, one of them, or 1) multiplies the advantage
            categories = table["category"][prompt_rows]  # [P]
            reference = hardness_ref or args.hardness_ref
            # over the whole step batch (every process's rows, gathered), then this process's rows
            all_deltas, all_gaps, all_categories = processes.gather(deltas, gaps, categories)
            a_data, a_model, kept = scaling_factors(all_deltas, all_gaps, all_categories, args, reference, running)
            mine = slice(processes.index * len(deltas), (processes.index + 1) * len(deltas))
            a_data, a_model, kept = a_data[mine], a_model[mine], kept[mine]  # [B] each
            factors = {"both": a_data * a_model, "data": a_data, "model": a_model, "none": torch.ones_like(a_data)}
            alpha = factors[args.scaling].to(advantages.device)  # [B] what GRPO-S applies (logged for every arm)
            if scaled and args.scaling != "none":  # `none` leaves the advantages untouched: exactly plain GRPO
                advantages = alpha * advantages  # [B], the normalised advantage, never the raw reward [paper]
        inputs = (out.prompt_ids, out.prompt_mask, ids, mask)
        # 5a. log-probs of the frozen pi_0 (and of the sampling policy when it is reused), per micro-batch
        ref_logp = frozen_logprobs(ref_model, inputs, args, precision) if args.beta != 0 else None  # [B, T]
        old_logp = frozen_logprobs(model, inputs, args, precision) if args.num_iterations > 1 else None  # [B, T]
        for _ in range(args.num_iterations):
            # 5b. clipped-ratio + k3-KL loss over the step batch [TRL]: forward and backward per micro-batch, AdamW step
            optimizer.zero_grad(set_to_none=True)
            logp, entropy, loss = accumulate_grpo_gradients(
                model, inputs, old_logp, ref_logp, advantages, args, precision, processes
            )  # [B, T], [B, T], float
            processes.sum_gradients(parameters)  # several processes: each held its share of the step's loss
            grad_norm = precision.clip_grad_norm_(parameters, args.max_grad_norm)
            optimizer.step()
        scheduler.step()
        # TRY NOT TO MODIFY: log TRL's metrics, alpha per category, kept fraction, alpha against true success, over
        # the whole step batch (every process's rows)
        old = logp if old_logp is None else old_logp  # [B, T]
        stopped = torch.isin(ids, stop_ids).any(dim=1).float()  # [B] rows that emitted a stop token
        num_tokens += int(processes.sum(out.prompt_mask.sum() + mask.sum()))
        loss = float(processes.sum(loss))
        row_cat = table["category"][rows]  # [B]
        logp, old, entropy, mask, stopped = processes.gather(logp, old, entropy, mask, stopped)
        rewards, true, advantages, alpha, a_data, a_model = processes.gather(
            rewards, true, advantages, alpha, a_data, a_model
        )
        kept, row_cat = processes.gather(kept, row_cat)
        if ref_logp is not None:
            (ref_logp,) = processes.gather(ref_logp)
        lengths = mask.sum(1).float()  # [B]
        terminated = lengths[stopped.bool()]
        centred = torch.stack([alpha - alpha.mean(), true - true.mean()])  # [2, B]
        metrics = {
            "reward": rewards.mean().item(),
            "reward_std": rewards.view(-1, group).std(1).mean().item(),
            f"rewards/{reward_label}/mean": rewards.mean().item(),
            f"rewards/{reward_label}/std": rewards.std().item(),
            f"rewards/true_{success_name}": true.mean().item(),
            **ratio_and_kl_metrics(logp, old, ref_logp, advantages, mask, args.epsilon),
            "entropy": ((entropy * mask).sum() / mask.sum()).item(),
            "completions/mean_length": lengths.mean().item(),
            "completions/min_length": lengths.min().item(),
            "completions/max_length": lengths.max().item(),
            "completions/clipped_ratio": 1 - len(terminated) / len(lengths),
            "completions/mean_terminated_length": terminated.mean().item() if len(terminated) else 0.0,
            "num_tokens": num_tokens,
            "losses/loss": loss,
            "charts/grad_norm": grad_norm.item(),
            "charts/learning_rate": scheduler.get_last_lr()[0],
            "alpha/mean": alpha.mean().item(),
            "alpha/std": alpha.std().item(),
            "alpha/min": alpha.min().item(),
            "alpha/max": alpha.max().item(),
            "alpha_data/mean": a_data.mean().item(),
            "alpha_model/mean": a_model.mean().item(),
            "alpha/corr_true_success": ((centred[0] * centred[1]).sum() / (centred.norm(dim=1).prod() + 1e-12)).item(),
        }
        for c in row_cat.unique().tolist():
            a = alpha[row_cat == c]  # [B_c]
            k = kept[row_cat == c].float()  # [B_c]
            metrics[f"alpha/{names[c]}"] = a.mean().item()
            metrics[f"kept_fraction/{names[c]}"] = k.mean().item()
            alpha_log[c].append(torch.stack([a.mean(), a.min(), a.max(), k.mean()]))
        run.log(step, metrics, arm=arm)
    del optimizer
    precision.release()  # the arm's optimizer (and through it its model) can be freed
    stats = {names[c]: torch.stack(v) for c, v in sorted(alpha_log.items())}  # [steps, 4]: mean, min, max, kept
    keys = ("alpha mean", "alpha min", "alpha max", "kept")
    reduce = (torch.mean, torch.min, torch.max, torch.mean)
    return {n: {k: f(s[:, i]).item() for i, (k, f) in enumerate(zip(keys, reduce))} for n, s in stats.items()}


# TRY NOT TO MODIFY: data, IRL pairs and option checks -----------------------------------------------------------------
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

    def has_demo(row) -> bool:
        return isinstance(row["demonstration"], str) and bool(row["demonstration"].strip())

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
    """Columns as lists and tensors. Demonstrations are truncated to --max-completion-length tokens, ending in EOS,
    and the text encoder embeds the same truncated text: the policy's answers are cut at that length and the RMs
    are fitted on truncated demonstrations against them, so that length never tells a demonstration apart."""
    tokens = tokenizer([r["demonstration"] for r in rows], add_special_tokens=False)["input_ids"]
    kept = [ids[: args.max_completion_length - 1] for ids in tokens]
    demo = [torch.tensor(ids + [tokenizer.eos_token_id]) for ids in kept]
    table = {
        "prompts": [r["prompt"] for r in rows],
        "demos": [r["demonstration"] for r in rows],  # in full, for samples.md only
        "demo_texts": tokenizer.batch_decode(kept, skip_special_tokens=True),  # what the encoder embeds
        "names": categories,
        "category": torch.tensor([categories.index(r["category"]) for r in rows], device=device),  # [N]
        "demo_ids": pad_sequence(demo, True, tokenizer.pad_token_id).to(device),  # [N, L] right-padded
        "demo_mask": pad_sequence([torch.ones_like(d) for d in demo], True).to(device),  # [N, L]
    }
    if args.dataset_name.startswith("tiny:"):  # the rule features' x = the letters after `op :` (toy only)
        x = tokenizer([r["prompt"].rpartition(":")[2] for r in rows], add_special_tokens=False)["input_ids"]
        table["inputs"] = pad_sequence([torch.tensor(t, dtype=torch.long) for t in x], True, -1).to(device)  # [N, S]
    return table


@torch.no_grad()
def sample_rows(model, tokenizer, table, rows: list[int], args: Args, num: int, greedy: bool, precision: Precision):
    """`num` completions per row (prompt-major; T=1 unless greedy), in generate calls of at most
    --generation-batch-size sequences: ids [N*num, T] padded to --max-completion-length, mask, texts."""
    prompts = [table["prompts"][i] for i in rows]
    options = dict(greedy=greedy, chat=args.chat, max_prompt_length=args.max_prompt_length)
    with precision.autocast():
        out = sample(
            model, tokenizer, prompts, num, args.max_completion_length, batch_size=args.generation_batch_size, **options
        )
    pad = (0, args.max_completion_length - out.completion_ids.size(1))
    ids = F.pad(out.completion_ids, pad, value=tokenizer.pad_token_id)  # [N*num, T]
    mask = F.pad(out.completion_mask, pad)  # [N*num, T]
    return ids, mask, out.texts


def irl_pairs(model, tokenizer, table, rows, args, stop_ids, precision):
    """pi_0 samples (T=1) on the demonstration prompts, pairs whose sample equals the demonstration dropped [Li]."""
    ids, mask, _ = sample_rows(model, tokenizer, table, rows, args, args.irl_samples, False, precision)
    pair_rows = torch.tensor(rows, device=ids.device).repeat_interleave(args.irl_samples)  # [N*S]
    same = exact_match_tensor(ids, mask, table["demo_ids"][pair_rows], table["demo_mask"][pair_rows], stop_ids).bool()
    return pair_rows[~same], ids[~same], mask[~same]


def check_args(args: Args) -> None:
    """Every option is checked before any data, model or training work."""
    tiny = args.dataset_name.startswith("tiny:")
    rm_arch, similarity, success = resolved_options(args)
    if args.num_generations < 2:
        fail(f"--num-generations {args.num_generations}: GRPO needs groups of at least 2 (no group std, A = 0)")
    if args.batch_size % args.num_generations:
        fail(f"--batch-size {args.batch_size} must be a multiple of --num-generations {args.num_generations}")
    if args.micro_batch_size is not None and (args.micro_batch_size < 1 or args.batch_size % args.micro_batch_size):
        fail(f"--micro-batch-size {args.micro_batch_size} must divide --batch-size {args.batch_size}")
    rm_micro_batch_size = args.rm_batch_size if args.rm_micro_batch_size is None else args.rm_micro_batch_size
    if rm_micro_batch_size < 1 or args.rm_batch_size < 1 or args.rm_batch_size % rm_micro_batch_size:
        fail(f"--rm-micro-batch-size {args.rm_micro_batch_size} must divide --rm-batch-size {args.rm_batch_size}")
    for name in (
        "tau learning_rate rm_learning_rate irl_beta temperature epsilon max_grad_norm lora_alpha".split()
    ):  # tau: the gap mask
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    counts = "steps pool_size num_eval num_demos_per_category irl_samples irl_rounds irl_policy_steps rm_epochs"
    counts += " num_iterations max_completion_length max_prompt_length chunk_size num_threads generation_batch_size"
    for name in counts.split():
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lora_r < 0:
        fail(f"--lora-r must be >= 0 (0 = full fine-tuning), got {args.lora_r}")
    if args.beta < 0 or not (0 <= args.warmup_ratio < 1 and 0 <= args.ema_gamma < 1):
        fail(f"--beta {args.beta} must be >= 0, --warmup-ratio and --ema-gamma in [0, 1)")
    if similarity == "encoder" and not args.encoder_name:
        fail("--similarity encoder needs --encoder-name (a from_pretrained folder or hub id of a text encoder)")
    if similarity == "ngram" and not tiny:
        fail(
            "--similarity ngram is the toy's stand-in (a vocabulary-wide count vector per chunk): on real data use "
            "--similarity lm_hidden (the default there) or encoder"
        )
    if rm_arch == "linear" and not tiny:
        fail("--rm-arch linear uses the tiny rule task's features; use --rm-arch transformer on a real dataset")
    if success == "judge" and not args.judge_model_name:
        fail(
            "real data needs a success measure for grpo-true and the evaluation (exact match to a free-text "
            "demonstration is ~0): pass --judge-model-name (a sequence-classification reward model with its score "
            "head), or --true-reward exact_match where the answers are short and exact"
        )
    if args.judge_model_name and success != "judge":
        fail(f"--judge-model-name is only used by --true-reward judge (here {success})")
    if args.rm_model_paths:
        if rm_arch != "transformer":
            fail("--rm-model-paths are sequence-classification reward models: they need --rm-arch transformer")
        if not args.shared_rm and not args.categories:
            fail("--rm-model-paths needs --categories: one category per path, in the same order")
        expected = 1 if args.shared_rm else len(args.categories)
        if len(args.rm_model_paths) != expected:
            fail(f"--rm-model-paths gives {len(args.rm_model_paths)} reward models for {expected} (one per category)")
        if missing := [p for p in args.rm_model_paths if not Path(p).is_dir()]:
            fail(f"--rm-model-paths {missing} are not folders written by save_pretrained")
        if args.irl_rounds > 1:
            fail("--rm-model-paths skips IRL: ready reward models are not refitted, so --irl-rounds must be 1")
    if args.rm_offload == "disk" and rm_arch != "transformer":
        fail("--rm-offload disk moves transformer reward models; the linear ones are a few numbers")
    if not args.arms or len(set(args.arms)) != len(args.arms):
        fail(f"--arms must list distinct arms, got {args.arms}")


def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: option checks, seeding, precision
    check_args(args)
    torch.set_num_threads(args.num_threads)
    seed_everything(args.seed)
    precision = setup_precision(args.dtype, args.cuda, args.fp32_master)
    processes = Processes.from_precision(precision)  # one, or the N that `accelerate launch` started
    if (args.batch_size // args.num_generations) % processes.count:
        fail(
            f"--batch-size {args.batch_size} / --num-generations {args.num_generations} prompts per step do not "
            f"split over {processes.count} processes: each process takes whole prompts"
        )
    device = precision.device
    start_time = time.time()
    tiny = args.dataset_name.startswith("tiny:")
    rm_arch, similarity, success_name = resolved_options(args)
    # setup: pi_0 (frozen, in the frozen dtype: the first IRL sampler, every arm's start and KL reference), the data,
    # Phi, the success measure and the RMs
    policy_path = args.model_name
    if policy_path.startswith("tiny:"):  # the tiny LM SFT-warm-started on the task, cached
        policy_path = str(warm_start(policy_path[5:], args.warm_start_seed, args.warm_start_steps, lr=WARM_START_LR))
    start_model, tokenizer = load_causal_lm(policy_path, device, precision.frozen_dtype, seed=args.seed)
    start_model.eval().requires_grad_(False)
    stop_ids = torch.tensor(stop_token_ids(tokenizer, start_model), device=device)
    train, heldout = load_tables(args, tokenizer, device)
    names = train["names"]  # the categories
    everything = list(range(len(heldout["prompts"])))  # every held-out row
    embed = make_encoder(args, similarity, start_model, tokenizer, stop_ids, precision)
    width = embed(train["demo_ids"][:2], train["demo_mask"][:2], train["demo_texts"][:2])[0].size(-1)
    if args.encoder_dim is not None and width != args.encoder_dim:
        fail(f"the {similarity} encoder gives {width}-wide embeddings, --encoder-dim expects {args.encoder_dim}")
    judge = Judge(args.judge_model_name, args, precision) if success_name == "judge" else None

    def true_success(table, rows, ids, mask, texts) -> torch.Tensor:
        """The success measure of each answer ([N]): exact match to the truncated demonstration, or the judge."""
        if judge is None:
            return exact_match_tensor(ids, mask, table["demo_ids"][rows], table["demo_mask"][rows], stop_ids)
        return judge.score([table["prompts"][i] for i in rows.tolist()], texts)

    success = (success_name, true_success)
    num_rms = 1 if args.shared_rm else len(names)
    rm_names = ["shared"] if args.shared_rm else names
    info = dict(max_len=args.max_completion_length, stop_ids=stop_ids, tokenizer=tokenizer, chat=args.chat)
    info.update(seed=args.seed, names=rm_names, micro_batch_size=args.rm_micro_batch_size or args.rm_batch_size)
    info.update(max_prompt_length=args.max_prompt_length, max_inputs=train["inputs"].size(1) if tiny else 0)
    if args.rm_model_paths:  # ready RMs: each loaded once here (a folder without a score head fails), then put away
        for path in args.rm_model_paths:
            if load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
                fail(f"--rm-model-paths {path!r} has another tokenizer than the policy: RMs score the policy's ids")
        sources = [(path, False) for path in args.rm_model_paths]
    else:  # IRL fits each category's reward head from the policy's backbone (or --rm-model-name)
        sources = [(args.rm_model_name or ("tiny" if tiny else policy_path), True)] * num_rms
    rm = CategoryRewardModels(rm_arch, num_rms, info, precision, sources, args.rm_offload).to(device)
    if args.rm_model_paths:
        for j in range(num_rms):
            rm.activate(j)
        rm.put_away()
    task = args.dataset_name.split(":", 1)[1] if tiny else "custom"
    run = RunLogger(
        make_run_name(f"dr_irl-{task}", args.exp_name, args.seed),
        args,
        track=args.track,
        print_every=20,
        show=("reward", "kl", "losses/irl_loss"),
        total_steps=args.steps,
        write=processes.is_main,  # one run folder, whatever the number of processes
    )
    # --rm-offload disk: the fitted RMs, reusable by --rm-model-paths (other processes: a temporary folder each)
    rm.offload_dir = run.dir / "reward_models" if processes.is_main else Path(tempfile.mkdtemp(prefix="dr_irl-rms-"))
    policy_options = dict(
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, gradient_checkpointing=args.gradient_checkpointing
    )
    # 1. D: a balanced demonstration set, up to --num-demos-per-category prompts per category
    first = [(train["category"] == c).nonzero()[: args.num_demos_per_category, 0] for c in range(len(names))]
    demo_rows = torch.cat(first).tolist()
    # 2. IRL [paper; Li]: pi_0 samples are the non-preferred side; fit r_j by the IRL loss, one RM at a time, freeze
    #    (rounds > 1: Li's alternation; ready RMs from --rm-model-paths skip this)
    generator = torch.Generator().manual_seed(args.seed)  # the order of the IRL pairs
    policy = start_model  # the IRL sampler: pi_0, then (rounds > 1) a policy updated between rounds
    notes = []
    counts = ["-"] * len(names)  # IRL pairs per category
    for irl_round in range(0 if args.rm_model_paths else args.irl_rounds):
        if irl_round > 0:  # Li et al.: GRPO steps of the (persistent) policy on the current RMs, then resample y~
            if policy is start_model:
                policy = load_policy(policy_path, precision, seed=args.seed, **policy_options)[0]
            setup, steps = ARM_SETUP["grpo"], args.irl_policy_steps
            train_grpo(
                f"irl{irl_round}",
                policy,
                start_model,
                tokenizer,
                train,
                rm,
                embed,
                success,
                setup,
                args,
                run,
                steps,
                precision,
                processes,
            )
            policy.eval()
        pair_rows, sample_ids, sample_mask = irl_pairs(policy, tokenizer, train, demo_rows, args, stop_ids, precision)
        counts = torch.bincount(train["category"][pair_rows], minlength=len(names)).tolist()
        if empty := [n for n, k in zip(names, counts) if k == 0]:
            fail(f"IRL round {irl_round}: category {empty} has no pair (every sample is its demo): raise --irl-samples")
        history = fit_reward_models(rm, train, pair_rows, sample_ids, sample_mask, args, generator, precision)
        pairs = ", ".join(f"{n} {k}" for n, k in zip(names, counts))
        notes.append(f"IRL round {irl_round}: pairs {pairs}; loss {history[0]:.3f} -> {history[-1]:.3f}")
        processes.print(notes[-1])
        run.log(irl_round, {"losses/irl_loss": history[-1], **{f"irl/pairs/{n}": k for n, k in zip(names, counts)}})
    if args.rm_model_paths:
        notes.append(
            "ready reward models (no IRL): " + ", ".join(f"{n} {p}" for n, p in zip(rm_names, args.rm_model_paths))
        )
    del policy
    rm.requires_grad_(False)
    with torch.no_grad():  # held-out RM pairwise accuracy: demonstration vs a pi_0 sample on held-out prompts
        rows, ids, mask = irl_pairs(start_model, tokenizer, heldout, everything, args, stop_ids, precision)
        demo_scores = rm.score(heldout, rows, heldout["demo_ids"][rows], heldout["demo_mask"][rows])  # [P]
        margin = demo_scores - rm.score(heldout, rows, ids, mask)  # [P]
    rm_rows = []
    for c, name in enumerate(names):
        m = margin[heldout["category"][rows] == c]  # [P_c]
        acc, mean_margin = ((m > 0).float().mean().item(), m.mean().item()) if len(m) else (float("nan"), 0.0)
        rm_rows.append({"category": name, "IRL pairs": counts[c], "held-out pairs": len(m), "RM accuracy": acc})
        run.log(0, {f"rewards/accuracies/{name}": acc, f"rewards/margins/{name}": mean_margin})
    processes.print(format_table(rm_rows))
    processes.print(f"setup (data, start, IRL): {time.time() - start_time:.1f} s")

    # 3-5. each arm: GRPO from pi_0 (the frozen KL reference) on the imbalanced mix, routed RMs, alpha for GRPO-S
    @torch.no_grad()
    def evaluate(model) -> dict:
        """Greedy answers to the held-out prompts: the success measure per category, the learned RMs' mean score."""
        ids, mask, texts = sample_rows(model, tokenizer, heldout, everything, args, 1, True, precision)
        rows = torch.tensor(everything, device=device)  # [N]
        true = true_success(heldout, rows, ids, mask, texts).to(device)  # [N]
        cat = heldout["category"]
        per_category = {n: true[cat == c].mean().item() for c, n in enumerate(names) if (cat == c).any()}
        score = rm.score(heldout, rows, ids, mask).mean().item()
        rm.put_away()  # the device holds the policy (and pi_0) only, until the next arm's first reward
        mean = sum(per_category.values()) / len(per_category)
        return {"success": per_category, "mean_success": mean, "rm": score, "texts": texts}

    results = {"start": {**evaluate(start_model), "seconds": 0.0, "alpha": {}}}
    with torch.no_grad():  # the start's headroom: G samples per held-out prompt (T=1) against its greedy answer
        group = args.num_generations
        ids, mask, texts = sample_rows(start_model, tokenizer, heldout, everything, args, group, False, precision)
        rows = torch.tensor(everything, device=device).repeat_interleave(group)  # [N*G]
        best = true_success(heldout, rows, ids, mask, texts).to(device).view(-1, group).max(1).values  # [N]
    best_per_category = {n: best[heldout["category"] == c].mean().item() for c, n in enumerate(names)}
    notes.append(
        f"start headroom (best of G={group} samples at T={args.temperature} vs greedy, {success_name}): "
        + ", ".join(f"{n} {best_per_category[n]:.3f} vs {results['start']['success'][n]:.3f}" for n in names)
    )
    processes.print(notes[-1])
    for arm in args.arms:
        model, _ = load_policy(policy_path, precision, seed=args.seed, **policy_options)  # fp32 masters (or LoRA)
        seed_everything(processes.seed(args.seed))  # each process samples its own stream (process 0: --seed)
        arm_start = time.time()
        alpha = train_grpo(
            arm,
            model,
            start_model,
            tokenizer,
            train,
            rm,
            embed,
            success,
            ARM_SETUP[arm],
            args,
            run,
            args.steps,
            precision,
            processes,
        )
        seconds = time.time() - arm_start
        results[arm] = {**evaluate(model.eval()), "seconds": seconds, "alpha": alpha}
        run.log(
            args.steps, {f"eval/{success_name}/{n}": v for n, v in results[arm]["success"].items()}, echo=True, arm=arm
        )
        if args.save_model and processes.is_main:
            model.save_pretrained(run.dir / arm)  # fp32 master weights; with --lora-r, the peft adapter
            tokenizer.save_pretrained(run.dir / arm)
        del model  # the next arm's policy takes its place on the device
        gc.collect()
    rm.put_away()
    # TRY NOT TO MODIFY: the tables: the success measure per category (never the learned RMs' score), RM accuracy,
    # alpha
    label = {"exact_match": "EM", "judge": "judge score"}[success_name]
    n_eval = {n: int((heldout["category"] == c).sum()) for c, n in enumerate(names)}
    em_rows = [
        {"arm": arm, **{f"{n} (n={n_eval[n]})": r["success"].get(n) for n in names}, f"mean {label}": r["mean_success"]}
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
    measure = (
        f"Greedy exact match per category on held-out prompts (SE <= {standard_error:.3f})"
        if judge is None
        else f"Mean judge score ({args.judge_model_name}) of the greedy answers per category on held-out prompts"
    )
    run.finish(
        f"## DR-IRL on {task}, seed {args.seed}: {args.steps} steps x {args.batch_size} completions "
        f"(G={args.num_generations}), RM {rm_arch}{' (shared)' if args.shared_rm else ' per category'}, scaling "
        f"{args.scaling}, similarity {similarity}, granularity {args.alpha_granularity}, scope {args.stat_scope}, "
        f"tau {args.tau}, learning rate {args.learning_rate}\n\n"
        + "\n".join(notes)
        + "\n\nHeld-out RM pairwise accuracy (demonstration vs "
        f"pi_0 sample):\n\n{format_table(rm_rows)}\n\n{measure} and the learned RMs' mean reward of those answers:"
        f"\n\n{format_table(em_rows)}\n\n"
        "alpha = alpha^D x alpha^M per category over the training steps (what GRPO-S applies, logged for all arms) "
        f"and the kept fraction of the gap mask:\n\n{format_table(alpha_rows)}"
    )
    return results


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
