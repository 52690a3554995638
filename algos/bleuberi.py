# arXiv:2505.11080 (BLEUBERI) | docs: docs/bleuberi.md (details, deviations, metrics, results, reproducing the paper)
"""BLEUBERI: BLEU is a surprisingly effective reward for instruction following (Chang et al., NeurIPS 2025,
https://arxiv.org/abs/2505.11080; code https://github.com/lilakk/BLEUBERI). GRPO with sentence BLEU against
reference answers as the reward instead of a reward model, trained only on the "hard" prompts where the start
model's own answer scores the lowest BLEU. The offline toy (BLEUBERI against three baselines from one tiny warm
start, a few minutes on 2 CPU cores): python algos/bleuberi.py

Idea: instruction datasets come with good reference answers, and sentence BLEU against them agrees with human
preferences almost as well as an 8B reward model. So skip the reward model: score one start-model sample per pool
prompt, keep the lowest-BLEU prompts, and run GRPO (as TRL 0.17 ran it for the paper) with BLEU as the reward.

    BLEU(y, R) = BP * exp(1/4 sum_{n=1..4} log p_n),   p_n = (m_n + 1) / (d_n + 1)        (+1 on EVERY order)
    m_n = sum_g min(cnt_y(g), max_{r in R} cnt_r(g)),   d_n = max(|y| - n + 1, 0),   BP = min(1, exp(1 - r_min / |y|))
    A_i = (r_i - mean_G r) / (std_G r + 1e-4)                          (unbiased std over the G samples of a prompt)
    l_t = -min(rho_t A_i, clip(rho_t, 1-eps, 1+eps) A_i) + beta (e^x_t - x_t - 1),  rho_t = pi/pi_old,  x_t = log ref/pi
    bnpo: sum(mask l) / sum(mask);  grpo: mean_i sum_t(mask l) / sum_t mask;  dr_grpo: sum(mask l) / (B T_max)
    (sums and means over the whole step batch of B completions, accumulated over micro-batches)

Source tags on the lines that implement a detail: [code <file>] = lilakk/BLEUBERI@70a66e4 training/<file>;
[TRL] = trl v0.17.0 trl/trainer/grpo_trainer.py (the version the paper pinned); [evaluate] = Hugging Face evaluate's
metrics/bleu (a copy of tensorflow/nmt bleu.py); "reconstruction" where neither says. Arms: bleuberi (GRPO-BLEU on
the BLEU-hard set), grpo-bleu-random, sft-hard (SFT on the hard set's references) and grpo-em (an exact-match reward,
the stand-in for the paper's reward-model arm).

Commands:
    python algos/bleuberi.py                                   # offline toy: the start and 4 arms, seed 1
    python algos/bleuberi.py --arms bleuberi sft-hard --loss-type dr_grpo --seed 2
    python algos/bleuberi.py --model-name Qwen/Qwen2.5-0.5B-Instruct --dataset-name yapeichang/BLEUBERI-Tulu3-50k \
        --reference-columns ref_output_gold --group-column source --pool-size 2000 --num-examples 500 \
        --num-eval 200 --max-completion-length 512 --temperature 0.9 --learning-rate 1e-6 --steps 250 \
        --arms bleuberi sft-hard --micro-batch-size 8 --generation-batch-size 64 \
        --gradient-checkpointing   # add --lora-r 16 for 7B on one GPU
    accelerate launch --multi_gpu --num_processes 8 algos/bleuberi.py ...   # data-parallel: README "Past one GPU"
"""

from __future__ import annotations

import gc
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence

import numpy as np
import torch
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from shared.data import load_data
from shared.distributed import ONE_PROCESS, Processes
from shared.lm import (
    completion_logprobs,
    load_causal_lm,
    load_policy,
    sample,
    stop_token_ids,
    trained_parameters,
)
from shared.precision import Precision, setup_precision
from shared.runs import RunLogger, fail, format_table, make_run_name, parse_args, seed_everything
from shared.warmstart import sft_parts, warm_start

Arm = Literal["bleuberi", "grpo-bleu-random", "sft-hard", "grpo-em"]
ARM_SETUP = {  # arm -> (trainer, reward, selection mode, reward that ranks the selection)
    "bleuberi": ("grpo", "bleu", "hard", "bleu"),
    "grpo-bleu-random": ("grpo", "bleu", "random", "bleu"),
    "sft-hard": ("sft", "bleu", "hard", "bleu"),
    "grpo-em": ("grpo", "exact_match", "hard", "exact_match"),
}


@dataclass
class Args:
    exp_name: str = "toy"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of selection, sampling and training (the same for every arm)"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """compute dtype: auto (bf16 on a GPU, fp32 on the CPU), fp32, bf16 (autocast, also on the CPU) or fp16 (GPU)"""
    fp32_master: bool = True
    """keep fp32 master weights of the trained policy under bf16/fp16 autocast (off: weights in --dtype, warned)"""
    gradient_checkpointing: bool = False
    """recompute activations in backward (less memory, ~1/3 more compute)"""
    lora_r: int = 0
    """LoRA rank (0 = full fine-tuning); > 0 trains fp32 adapters on every linear layer over a frozen --dtype base"""
    lora_alpha: float = 16.0
    """LoRA scaling alpha (the update is alpha / r x B A)"""
    track: bool = False
    """also log to Weights & Biases"""
    save_model: bool = False
    """save each arm's final policy (fp32 master weights, or the LoRA adapter) under runs/<run_name>/<arm>/"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest for the tiny model)"""
    model_name: str = "tiny:string_ops"
    """policy start: tiny:<task> (warm-started tiny LM), a save_pretrained folder, or a hub id (a chat model)"""
    warm_start_steps: int = 450
    """SFT steps of the tiny:<task> warm start (fewer = weaker; 450 gives greedy EM ~0.6-0.67)"""
    warm_start_seed: int = 0
    """seed of the tiny warm start (fixed, so seeds share one cached start)"""
    dataset_name: str = "tiny:string_ops"
    """prompts + references: tiny:<task>, a save_to_disk folder, a json/jsonl/csv/parquet file or a hub id"""
    dataset_split: str = "train"
    """split to read (a real dataset's last --num-eval rows after shuffling are held out)"""
    reference_columns: tuple[str, ...] = ("reference",)
    """columns holding references (1 or more; a row is eligible only if all are non-empty)"""
    group_column: Optional[str] = "op"
    """column for the per-group evaluation breakdown (skipped when the dataset has no such column)"""
    chat: bool = True
    """wrap each prompt as one user turn of the tokenizer's chat template"""
    arms: tuple[Arm, ...] = ("bleuberi", "grpo-bleu-random", "sft-hard", "grpo-em")
    """arms to run, each from the same start"""
    pool_size: int = 2000
    """pool prompts scored for selection [code grpo.sh: the 50K prompts of BLEUBERI-Tulu3-50k]"""
    num_examples: int = 500
    """prompts kept by selection [code grpo.sh: 5000]"""
    selection_temperature: float = 0.7
    """sampling temperature of the selection sample [code create_training_data.py: 0.7]"""
    selection_top_p: float = 0.9
    """top-p of the selection sample [code create_training_data.py: 0.9]"""
    num_eval: int = 500
    """held-out prompts for greedy evaluation"""
    steps: int = 150
    """optimizer steps per arm [code grpo.sh: 1 epoch of 5000 prompts = 1250 steps]"""
    batch_size: int = 64
    """completions per optimizer step (= prompts per step x --num-generations)"""
    num_generations: int = 8
    """G, completions per prompt [code grpo.sh: 8]"""
    micro_batch_size: int = 8
    """completions per forward/backward (gradient accumulation): sets memory, not the gradient [code grpo.sh: 8]"""
    learning_rate: float = 3e-5
    """AdamW learning rate of every arm [code grpo.sh: 1e-6 for 7B]"""
    warmup_ratio: float = 0.05
    """linear warmup share of the steps, then constant [code grpo.sh]"""
    max_grad_norm: float = 0.2
    """gradient-norm clip [code grpo.sh]"""
    beta: float = 0.04
    """k3 KL coefficient to the frozen start [TRL: default 0.04]"""
    epsilon: float = 0.2
    """ratio clip range [TRL: default 0.2]"""
    num_iterations: int = 1
    """policy updates per sampled batch (1 = on-policy, the ratio clip never binds) [code grpo.sh: 1]"""
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] = "bnpo"
    """token-loss aggregation, as TRL defines it [TRL: default bnpo]"""
    scale_rewards: bool = True
    """divide advantages by the group std (off = Dr. GRPO)"""
    temperature: float = 1.0
    """sampling temperature of GRPO; log-probs use logits / temperature [code grpo.sh: 0.9; the toy: 1.0]"""
    top_k: int = 50
    """top-k of GRPO sampling [TRL: default 50]"""
    max_prompt_length: int = 512
    """prompt tokens kept (left-truncated) [code grpo.sh: 512]"""
    max_completion_length: int = 16
    """new tokens per completion [code grpo.sh: 512]"""
    generation_batch_size: int = 500
    """sequences per batched generate call (selection, GRPO sampling, evaluation): bounds the KV cache"""


# ALGO LOGIC: the reward, smoothed NMT-BLEU [evaluate] -----------------------------------------------------------------
TOKENIZE_13A = Tokenizer13a()  # sacrebleu's 13a tokeniser; evaluate's tokenizer_13a.py is a copy of it
MAX_ORDER = 4


def tokenize_13a(text: str) -> list[str]:
    """mteval-v13a tokens: punctuation and symbols split off, `.` `,` kept between digits, case kept."""
    return TOKENIZE_13A(text).split()


def ngram_counts(tokens: list[str], max_order: int = MAX_ORDER) -> Counter:
    """Counts of every n-gram of order 1..max_order."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def bleu_reward(completion: str, references: list[str]) -> float:
    """Smoothed sentence NMT-BLEU in [0, 1] (`evaluate` BLEU with smooth=True); empty completion -> 0
    [code utils.py bleu_reward; evaluate]. sacrebleu agrees only in special cases: see docs/bleuberi.md."""
    if not references or any(not isinstance(r, str) or not tokenize_13a(r) for r in references):
        raise ValueError(f"bleu_reward needs at least one reference and no empty ones, got {references!r}")
    hypothesis = tokenize_13a(completion) if isinstance(completion, str) else []
    if not hypothesis:  # [code utils.py bleu_reward]: empty or whitespace-only prediction scores 0
        return 0.0
    refs = [tokenize_13a(r) for r in references]
    max_ref_counts = Counter()
    for ref in refs:
        max_ref_counts |= ngram_counts(ref)  # union = max count of each n-gram over the references
    matches = [0] * MAX_ORDER
    for gram, count in (ngram_counts(hypothesis) & max_ref_counts).items():  # & = min(count_y, max_r count_r)
        matches[len(gram) - 1] += count
    log_precision = 0.0
    for n in range(1, MAX_ORDER + 1):
        candidates = max(len(hypothesis) - n + 1, 0)
        log_precision += math.log((matches[n - 1] + 1) / (candidates + 1)) / MAX_ORDER  # +1 smoothing, all orders
    shortest = min(len(r) for r in refs)  # NMT-BLEU: shortest reference, not the closest one
    brevity_penalty = 1.0 if len(hypothesis) > shortest else math.exp(1 - shortest / len(hypothesis))
    return brevity_penalty * math.exp(log_precision)


def answer_text(completion: str) -> str:
    """The scored text [code dataset.py extract_answer]: after the first `<answer>`, up to `</answer>`
    when the completion has one (a lone `<answer>` scores all that follows it); no tag: the whole completion."""
    if "<answer>" not in completion:
        return completion.strip()
    after_tag = completion.split("<answer>")[1]  # up to a second <answer>, as the official split does
    if "</answer>" in completion:
        after_tag = after_tag.split("</answer>")[0]
    return after_tag.strip()


def exact_match_reward(completion: str, references: list[str]) -> float:
    """1 if the completion's 13a tokens equal those of some reference (the stand-in for the reward-model arm)."""
    return float(tokenize_13a(completion) in [tokenize_13a(r) for r in references])


REWARDS: dict[str, Callable[[str, list[str]], float]] = {"bleu": bleu_reward, "exact_match": exact_match_reward}


def compute_rewards(name: str, texts: list[str], references: list[list[str]], extract: bool = True) -> torch.Tensor:
    """One reward per completion ([B]); with `extract`, the <answer> text is scored (GRPO, evaluation)."""
    reward = REWARDS[name]
    return torch.tensor([reward(answer_text(t) if extract else t, refs) for t, refs in zip(texts, references)])


# ALGO LOGIC: selection and the GRPO loss ------------------------------------------------------------------------------
def select_prompts(scores: Sequence[float], num_examples: int, mode: str, seed: int = 42) -> list[int]:
    """Indices of the kept pool prompts: hard (lowest score), easy (highest), medium (middle slice) or random
    [code create_training_data.py make_grpo_data]."""
    n = len(scores)
    if mode not in ("hard", "easy", "medium", "random"):
        raise ValueError(f"selection mode {mode!r} is not one of hard, easy, medium, random")
    if num_examples >= n:  # [code create_training_data.py]: keep everything
        return list(range(n))
    if mode == "random":  # [code create_training_data.py]: np.random.seed(seed), then choice(N, num, replace=False)
        return np.random.RandomState(seed).choice(n, num_examples, replace=False).tolist()
    ascending = sorted(range(n), key=lambda i: scores[i])  # stable: ties keep pool order
    if mode == "hard":
        return ascending[:num_examples]
    if mode == "easy":
        return sorted(range(n), key=lambda i: scores[i], reverse=True)[:num_examples]  # reverse keeps stability
    start = (n - num_examples) // 2
    return ascending[start : start + num_examples]


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: bool = True) -> torch.Tensor:
    """A_i = (r_i - mean_G r) / (std_G r + 1e-4) over contiguous groups of `group_size` (unbiased std) [TRL]."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} >= 2")
    grouped = rewards.view(-1, group_size)  # [B/G, G]
    mean = grouped.mean(dim=1, keepdim=True)  # [B/G, 1]
    advantages = grouped - mean  # [B/G, G]
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
    """Clipped-ratio policy loss plus beta * k3 KL per token, aggregated as grpo / bnpo / dr_grpo [TRL _compute_loss].

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


# ALGO LOGIC: the training loops (GRPO, SFT on references) -------------------------------------------------------------
def make_optimizer(parameters, args: Args, precision: Precision):
    """AdamW (weight decay 0) over the trained parameters, constant LR after a linear warmup [code grpo.sh]."""
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.0)
    warmup = max(1, round(args.warmup_ratio * args.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    return precision.prepare_optimizer(optimizer), scheduler


def prompt_batches(num_rows: int, per_step: int, steps: int, seed: int):
    """Row indices per step: shuffled epochs over the training set (the same order for every arm of a run)."""
    generator, order = torch.Generator().manual_seed(seed), []
    for _ in range(steps):
        while len(order) < per_step:
            order += torch.randperm(num_rows, generator=generator).tolist()
        yield order[:per_step]
        order = order[per_step:]


def micro_batches(num_rows: int, micro_batch_size: int, device) -> list[torch.Tensor]:
    """Row indices of consecutive micro-batches of at most `micro_batch_size` rows."""
    return list(torch.arange(num_rows, device=device).split(micro_batch_size))


@torch.no_grad()
def frozen_logprobs(model, inputs, args: Args, precision: Precision) -> torch.Tensor:
    """Per-token log-probs ([B, T]) of a model that is not being updated (the reference, the sampling policy),
    one micro-batch at a time."""
    rows = micro_batches(len(inputs[0]), args.micro_batch_size, inputs[0].device)
    with precision.autocast():
        return torch.cat([completion_logprobs(model, *(x[mb] for x in inputs), args.temperature)[0] for mb in rows])


def accumulate_grpo_gradients(
    model, inputs, old_logp, ref_logp, advantages, args: Args, precision: Precision, processes=ONE_PROCESS
):
    """Forward and backward of the GRPO loss per micro-batch; the gradients add up to the full batch's (a deliberate
    difference: TRL normalises bnpo per micro-batch; ours is TRL's `dapo` normalisation, see docs/bleuberi.md).
    With several processes these are this process's rows, normalised by the whole step batch's counts, so the
    gradients summed over processes are the whole batch's.

    Returns the policy's log-probs and token entropies ([B, T] each, detached) and this process's share of the loss."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = inputs
    batch_sequences = len(advantages) * processes.count  # the step batch: every process holds as many rows
    batch_tokens = processes.sum(completion_mask.sum())
    loss_args = (args.beta, args.epsilon, args.loss_type, args.max_completion_length, batch_sequences, batch_tokens)
    logps, entropies, total_loss = [], [], 0.0
    for mb in micro_batches(len(advantages), args.micro_batch_size, advantages.device):
        # position ids come from the attention mask (shared/lm.py), as in generate: a deliberate difference from
        # TRL 0.17, which passes none, so left-padded prompts shift (docs/bleuberi.md)
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


def train_grpo(
    arm, model, ref_model, tokenizer, rows, reward_name, args: Args, run: RunLogger, precision, processes=ONE_PROCESS
) -> None:
    """GRPO [TRL GRPOTrainer] on `rows` (dicts with prompt and references) with `reward_name`; with several
    processes, each samples and trains on its share of every step's prompts (whole groups)."""
    parameters = trained_parameters(model)
    optimizer, scheduler = make_optimizer(parameters, args, precision)
    num_prompts, num_tokens = args.batch_size // args.num_generations, 0
    stop_ids = torch.tensor(stop_token_ids(tokenizer, model), device=precision.device)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, max_new_tokens=args.max_completion_length)
    sampling.update(chat=args.chat, max_prompt_length=args.max_prompt_length, batch_size=args.generation_batch_size)
    # 3. each step: the step's prompts, from shuffled epochs over the training set (the same order for every arm)
    for step, step_batch in enumerate(prompt_batches(len(rows), num_prompts, args.steps, args.seed)):
        batch = processes.shard(step_batch)  # this process's prompts (all of them in a one-process run)
        prompts = [rows[i]["prompt"] for i in batch]
        # 4. sample G completions per prompt (rows prompt-major: each group of G is contiguous); sampling stops on
        #    end-of-turn tokens as well as EOS, a deliberate difference from TRL 0.17 (docs/bleuberi.md)
        with precision.autocast():
            out = sample(model, tokenizer, prompts, num_samples=args.num_generations, **sampling)
        references = [rows[i]["references"] for i in batch for _ in range(args.num_generations)]
        # 5. reward each completion against its prompt's references (the <answer> text when tagged)
        rewards = compute_rewards(reward_name, out.texts, references).to(precision.device)  # [B]
        # 6. the GRPO update [TRL]: advantages z-scored within each group, then the clipped-ratio + k3-KL loss
        advantages = group_advantages(rewards, args.num_generations, args.scale_rewards)  # [B]
        mask = out.completion_mask  # [B, T] 1 up to and including the first stop token [TRL]
        inputs = (out.prompt_ids, out.prompt_mask, out.completion_ids, mask)
        # log-probs of the frozen reference (and of the sampling policy when it is reused for several updates)
        ref_logp = frozen_logprobs(ref_model, inputs, args, precision) if args.beta != 0 else None  # [B, T]
        old_logp = frozen_logprobs(model, inputs, args, precision) if args.num_iterations > 1 else None  # [B, T]
        for _ in range(args.num_iterations):
            # forward and backward per micro-batch, gradients accumulated over the step batch
            optimizer.zero_grad(set_to_none=True)
            logp, entropy, loss = accumulate_grpo_gradients(
                model, inputs, old_logp, ref_logp, advantages, args, precision, processes
            )
            processes.sum_gradients(parameters)  # several processes: each held its share of the step's loss
            # AdamW step on the trained parameters (fp32 master weights)
            grad_norm = precision.clip_grad_norm_(parameters, args.max_grad_norm)
            optimizer.step()
        scheduler.step()
        # TRY NOT TO MODIFY: log TRL's metrics, over the whole step batch (every process's rows)
        old = logp if old_logp is None else old_logp  # [B, T]
        stopped = torch.isin(out.completion_ids, stop_ids).any(dim=1).float()  # [B] rows that emitted a stop token
        num_tokens += int(processes.sum(out.prompt_mask.sum() + mask.sum()))
        loss = float(processes.sum(loss))
        if ref_logp is None:
            logp, old, entropy, mask, rewards, advantages, stopped = processes.gather(
                logp, old, entropy, mask, rewards, advantages, stopped
            )
        else:
            logp, old, ref_logp, entropy, mask, rewards, advantages, stopped = processes.gather(
                logp, old, ref_logp, entropy, mask, rewards, advantages, stopped
            )
        lengths = mask.sum(1).float()  # [B]
        terminated = lengths[stopped.bool()]
        grouped = rewards.view(-1, args.num_generations)  # [B/G, G]
        metrics = {
            "reward": rewards.mean().item(),
            "reward_std": grouped.std(1).mean().item(),
            f"rewards/{reward_name}/mean": rewards.mean().item(),
            f"rewards/{reward_name}/std": rewards.std().item(),
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
        }
        run.log(step, metrics, arm=arm)


def accumulate_sft_gradients(model, inputs, args: Args, precision: Precision, processes=ONE_PROCESS) -> float:
    """Forward and backward of the mean token cross-entropy of the references, per micro-batch; each micro-batch
    adds its share (its summed NLL over the step batch's target tokens), so the gradients add up to the full
    batch's. Returns the step batch's loss."""
    target_mask = inputs[3]  # [N, T] 1 on reference tokens and the EOS
    batch_tokens = processes.sum(target_mask.sum())  # the step batch's target tokens, over every process
    total_loss = 0.0
    for mb in micro_batches(len(target_mask), args.micro_batch_size, target_mask.device):
        with precision.autocast():
            logp = completion_logprobs(model, *(x[mb] for x in inputs))[0]  # [M, T]
        loss = -(logp * target_mask[mb]).sum() / batch_tokens
        precision.backward(loss)
        total_loss += loss.item()
    return total_loss


def train_sft(
    arm, model, tokenizer, rows, args: Args, run: RunLogger, precision: Precision, processes=ONE_PROCESS
) -> None:
    """Completion-only SFT on the references (one example per reference), as many steps as GRPO [code sft.py]."""
    parameters = trained_parameters(model)
    optimizer, scheduler = make_optimizer(parameters, args, precision)
    per_step = args.batch_size // args.num_generations
    for step, step_batch in enumerate(prompt_batches(len(rows), per_step, args.steps, args.seed)):
        batch = processes.shard(step_batch)  # this process's prompts (all of them in a one-process run)
        pairs = [(rows[i]["prompt"], ref) for i in batch for ref in rows[i]["references"]]
        inputs = sft_parts(
            tokenizer,
            [prompt for prompt, _ in pairs],
            [reference for _, reference in pairs],
            device=precision.device,
            chat=args.chat,
            max_prompt_length=args.max_prompt_length,
            max_target_length=args.max_completion_length,
        )  # prompt ids and mask [N, P], target ids (reference + EOS) and mask [N, T]
        optimizer.zero_grad(set_to_none=True)
        loss = accumulate_sft_gradients(model, inputs, args, precision, processes)
        processes.sum_gradients(parameters)
        loss = float(processes.sum(loss))
        grad_norm = precision.clip_grad_norm_(parameters, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        run.log(step, {"losses/sft_loss": loss, "charts/grad_norm": grad_norm.item()}, arm=arm)


# TRY NOT TO MODIFY: data, evaluation and option checks ----------------------------------------------------------------
def to_rows(data, args: Args) -> tuple[list[dict], int]:
    """Rows {prompt, references, group}; a row with a missing or empty reference is excluded
    [code create_training_data.py has_all_references]."""
    has_group = args.group_column is not None and args.group_column in data.column_names
    rows, excluded = [], 0
    for example in data:
        references = [example[c] for c in args.reference_columns]
        if any(not isinstance(r, str) or not tokenize_13a(r) for r in references):
            excluded += 1
            continue
        group = str(example[args.group_column]) if has_group else "all"
        rows.append({"prompt": example["prompt"], "references": references, "group": group})
    return rows, excluded


def load_rows(args: Args) -> tuple[list[dict], list[dict]]:
    """The selection pool and the held-out prompts, each as rows; fails when too few rows have references."""
    columns = ["prompt", *args.reference_columns]
    if args.dataset_name.startswith("tiny:"):  # train and test prompts of a tiny task are disjoint by construction
        pool = load_data(args.dataset_name, "train", columns, args.pool_size, seed=args.seed)
        heldout = load_data(args.dataset_name, "test", columns, args.num_eval, seed=args.seed)
    else:  # shuffle once, hold out the last --num-eval rows
        data = load_data(args.dataset_name, args.dataset_split, columns, args.pool_size + args.num_eval, args.seed)
        if len(data) <= args.num_eval:
            fail(f"{args.dataset_name!r} has {len(data)} rows: fewer than --num-eval {args.num_eval} + 1 pool prompt")
        pool, heldout = (
            data.select(range(len(data) - args.num_eval)),
            data.select(range(len(data) - args.num_eval, len(data))),
        )
    (pool_rows, pool_excluded), (eval_rows, eval_excluded) = to_rows(pool, args), to_rows(heldout, args)
    if pool_excluded or eval_excluded:
        print(f"excluded {pool_excluded} pool and {eval_excluded} held-out rows with an empty reference", flush=True)
    if len(pool_rows) < args.batch_size // args.num_generations or not eval_rows:
        fail(
            f"only {len(pool_rows)} pool and {len(eval_rows)} held-out rows of {args.dataset_name!r} have non-empty "
            f"references in {list(args.reference_columns)}: fill the references or pick other --reference-columns"
        )
    return pool_rows, eval_rows


@torch.no_grad()
def generate(model, tokenizer, rows, args: Args, precision: Precision, greedy: bool, **sampling) -> list[str]:
    """One completion per row, in generate calls of at most --generation-batch-size sequences."""
    prompts = [row["prompt"] for row in rows]
    lengths = dict(max_new_tokens=args.max_completion_length, max_prompt_length=args.max_prompt_length)
    with precision.autocast():
        out = sample(
            model,
            tokenizer,
            prompts,
            greedy=greedy,
            chat=args.chat,
            batch_size=args.generation_batch_size,
            **lengths,
            **sampling,
        )
    return out.texts


def evaluate(model, tokenizer, rows, args: Args, precision: Precision, processes=ONE_PROCESS) -> dict:
    """Greedy exact match and BLEU on held-out rows, overall and per group (the rows split over the processes)."""
    texts = processes.gather_rows(lambda shard: generate(model, tokenizer, shard, args, precision, greedy=True), rows)
    references = [r["references"] for r in rows]
    em, bleu = compute_rewards("exact_match", texts, references), compute_rewards("bleu", texts, references)  # [N]
    groups = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row["group"]].append(i)
    per_group = {g: (em[idx].mean().item(), bleu[idx].mean().item()) for g, idx in sorted(groups.items())}
    return {"exact_match": em.mean().item(), "bleu": bleu.mean().item(), "groups": per_group, "texts": texts}


@torch.no_grad()
def headroom(model, tokenizer, rows, args: Args, precision: Precision, processes=ONE_PROCESS) -> tuple[float, float]:
    """pass@1 and pass@G of the exact match over G samples per row at the GRPO sampling settings: where pass@G is
    well above pass@1, GRPO's groups find right answers to reinforce."""
    correct = torch.tensor(
        processes.gather_rows(lambda shard: sample_correct(model, tokenizer, shard, args, precision), rows)
    )
    return correct.mean().item(), correct.amax(dim=1).mean().item()


@torch.no_grad()
def sample_correct(model, tokenizer, rows, args: Args, precision: Precision) -> list[list[float]]:
    """The exact match of G samples per row ([N][G])."""
    prompts = [row["prompt"] for row in rows]
    with precision.autocast():
        out = sample(
            model,
            tokenizer,
            prompts,
            num_samples=args.num_generations,
            temperature=args.temperature,
            top_k=args.top_k,
            max_new_tokens=args.max_completion_length,
            chat=args.chat,
            max_prompt_length=args.max_prompt_length,
            batch_size=args.generation_batch_size,
        )
    references = [row["references"] for row in rows for _ in range(args.num_generations)]
    return compute_rewards("exact_match", out.texts, references).view(len(rows), args.num_generations).tolist()


def check_args(args: Args) -> None:
    """Every option is checked before any data, model or training work."""
    if args.num_generations < 2:
        fail(f"--num-generations {args.num_generations}: GRPO needs groups of at least 2 (no group std, A = 0)")
    if args.batch_size % args.num_generations:
        fail(f"--batch-size {args.batch_size} must be a multiple of --num-generations {args.num_generations}")
    if args.micro_batch_size < 1 or args.batch_size % args.micro_batch_size:
        fail(f"--micro-batch-size {args.micro_batch_size} must divide --batch-size {args.batch_size}")
    if not args.learning_rate > 0:
        fail(f"--learning-rate {args.learning_rate} must be positive")
    counts = "steps pool_size num_examples num_eval num_iterations max_completion_length max_prompt_length"
    for name in (counts + " generation_batch_size warm_start_steps num_threads").split():
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not (args.temperature > 0 and args.selection_temperature > 0 and 0 < args.selection_top_p <= 1):
        fail("--temperature and --selection-temperature must be > 0 and --selection-top-p in (0, 1]")
    if args.beta < 0 or args.epsilon <= 0 or args.max_grad_norm <= 0 or not 0 <= args.warmup_ratio < 1:
        fail("--beta must be >= 0, --epsilon and --max-grad-norm > 0, --warmup-ratio in [0, 1)")
    if not args.reference_columns or "prompt" in args.reference_columns:
        fail(f"--reference-columns {args.reference_columns} must name one or more reference columns (not prompt)")
    if not args.arms or len(set(args.arms)) != len(args.arms):
        fail(f"--arms must list distinct arms, got {args.arms}")
    if args.lora_r < 0 or not args.lora_alpha > 0:
        fail(f"--lora-r must be >= 0 (0 = full fine-tuning) and --lora-alpha > 0, got {args.lora_r}, {args.lora_alpha}")


def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: option checks, seeding, precision, data
    check_args(args)
    torch.set_num_threads(args.num_threads)
    precision = setup_precision(args.dtype, args.cuda, args.fp32_master)
    processes = Processes.from_precision(precision)  # one, or the N that `accelerate launch` started
    if (args.batch_size // args.num_generations) % processes.count:
        fail(
            f"--batch-size {args.batch_size} / --num-generations {args.num_generations} prompts per step do not "
            f"split over {processes.count} processes: each process takes whole prompts"
        )
    seed_everything(processes.seed(args.seed))
    start_time = time.time()
    pool, heldout = load_rows(args)
    # 1. pi_0 = the start policy; ref = pi_0 frozen (the KL reference of every GRPO arm), held in the frozen dtype
    model_path = args.model_name
    if args.model_name.startswith("tiny:"):
        task_name = args.model_name.split(":", 1)[1]
        model_path = str(warm_start(task_name, seed=args.warm_start_seed, steps=args.warm_start_steps))
    start_model, tokenizer = load_causal_lm(model_path, precision.device, precision.frozen_dtype, seed=args.seed)
    start_model.eval().requires_grad_(False)
    task = args.dataset_name.split(":", 1)[1] if args.dataset_name.startswith("tiny:") else "custom"
    run = RunLogger(
        make_run_name(f"bleuberi-{task}", args.exp_name, args.seed),
        args,
        track=args.track,
        print_every=25,
        show=("reward", "losses/sft_loss", "kl"),
        total_steps=args.steps,
        write=processes.is_main,  # one run folder, whatever the number of processes
    )

    # 2. selection [code create_training_data.py]: one pi_0 sample per pool prompt, scored on its raw text; keep the
    #    lowest-scoring prompts
    sampling = dict(temperature=args.selection_temperature, top_p=args.selection_top_p)
    texts = processes.gather_rows(
        lambda shard: generate(start_model, tokenizer, shard, args, precision, greedy=False, **sampling), pool
    )
    pool_refs = [r["references"] for r in pool]
    scores = {name: compute_rewards(name, texts, pool_refs, extract=False).tolist() for name in REWARDS}
    train_sets, notes = {}, []
    for mode, rank in sorted({ARM_SETUP[arm][2:] for arm in args.arms}):
        kept = select_prompts(scores[rank], args.num_examples, mode, seed=args.seed)
        train_sets[mode, rank] = [pool[i] for i in kept]
        composition = Counter(pool[i]["group"] for i in kept)
        notes.append(
            f"{mode} set by {rank} ({len(kept)}/{len(pool)} prompts): selection-sample {rank} "
            f"{np.mean([scores[rank][i] for i in kept]):.3f} (pool {np.mean(scores[rank]):.3f}); groups "
            + ", ".join(f"{g} {c}" for g, c in sorted(composition.items()))
        )
        processes.print(notes[-1])
    processes.print(f"setup (data, start, selection): {time.time() - start_time:.1f} s")

    # 3-6. each arm trains pi_0, loaded afresh in fp32 master weights (or with LoRA adapters), on its set from the
    #      same seed (train_grpo runs steps 3-6, train_sft its SFT counterpart); 7. greedy evaluation of the last
    #      policy on held-out prompts (the paper evaluates its last checkpoint on MT-Bench, ArenaHard, WildBench)
    start_eval = evaluate(start_model, tokenizer, heldout, args, precision, processes)
    pass_at_1, pass_at_g = headroom(start_model, tokenizer, heldout, args, precision, processes)
    headroom_note = (
        f"start headroom on the held-out prompts: pass@1 {pass_at_1:.3f}, pass@{args.num_generations} "
        f"{pass_at_g:.3f} (exact match of {args.num_generations} samples each at temperature {args.temperature})"
    )
    processes.print(headroom_note)
    results = {"start": {**start_eval, "set": "-", "reward": "-", "seconds": 0.0}}
    policy_options = dict(
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, gradient_checkpointing=args.gradient_checkpointing
    )
    for arm in args.arms:
        trainer, reward_name, mode, rank = ARM_SETUP[arm]
        seed_everything(processes.seed(args.seed))
        model, _ = load_policy(model_path, precision, seed=args.seed, **policy_options)
        arm_start = time.time()
        if trainer == "grpo":
            train_set = train_sets[mode, rank]
            train_grpo(arm, model, start_model, tokenizer, train_set, reward_name, args, run, precision, processes)
        else:
            train_sft(arm, model, tokenizer, train_sets[mode, rank], args, run, precision, processes)
        seconds = time.time() - arm_start
        model.eval()
        results[arm] = {
            **evaluate(model, tokenizer, heldout, args, precision, processes),
            "set": f"{mode} ({rank})",
            "reward": reward_name if trainer == "grpo" else "SFT",
            "seconds": seconds,
        }
        run.log(
            args.steps,
            {"eval/exact_match": results[arm]["exact_match"], "eval/bleu": results[arm]["bleu"]},
            echo=True,
            arm=arm,
        )
        if args.save_model and processes.is_main:
            model.save_pretrained(run.dir / arm)  # fp32 master weights; with --lora-r, the peft adapter
            tokenizer.save_pretrained(run.dir / arm)
        precision.release()  # the arm's optimizer state goes with its policy
        del model  # the next arm's policy takes its place on the device
        gc.collect()

    # TRY NOT TO MODIFY: the table: greedy exact match and BLEU on held-out prompts, per arm and per group
    rows = [
        {
            "arm": arm,
            "train set": r["set"],
            "reward": r["reward"],
            "EM": r["exact_match"],
            "dEM": r["exact_match"] - start_eval["exact_match"],
            "BLEU": r["bleu"],
            "dBLEU": r["bleu"] - start_eval["bleu"],
            "train s": r["seconds"],
        }
        for arm, r in results.items()
    ]
    groups = list(start_eval["groups"])
    group_rows = [
        {"arm": arm, **{g: "{:.3f} / {:.3f}".format(*r["groups"][g]) for g in groups}} for arm, r in results.items()
    ]
    em = start_eval["exact_match"]
    standard_error = math.sqrt(max(em * (1 - em), 1e-12) / len(heldout))
    samples = "\n".join(
        f"- `{row['prompt']}` -> ref `{row['references'][0]}` | "
        + " | ".join(f"{arm}: `{r['texts'][i]}`" for arm, r in results.items())
        for i, row in enumerate(heldout[:12])
    )
    run.save_text("samples.md", samples + "\n")
    summary = (
        f"## BLEUBERI on {task}, seed {args.seed}, {args.steps} steps x {args.batch_size} completions "
        f"(G={args.num_generations}), loss {args.loss_type}, learning rate {args.learning_rate}\n\n"
        + "\n".join(notes + [headroom_note])
        + f"\n\nGreedy exact match (EM) and BLEU on {len(heldout)} held-out prompts "
        f"(SE of EM ~ {standard_error:.3f}):\n\n"
        + format_table(rows)
        + "\n\nPer group, EM / BLEU:\n\n"
        + format_table(group_rows)
    )
    run.finish(summary)
    return results


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
