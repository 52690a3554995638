# arXiv:2410.12735 (CREAM) | docs: docs/cream.md (details, deviations, metrics, results, reproducing the paper)
"""CREAM: Consistency Regularized Self-Rewarding Language Models (Wang et al., ICLR 2025,
https://arxiv.org/abs/2410.12735; code https://github.com/Raibows/CREAM). A self-rewarding LM ranks its own samples
with its DPO implicit reward and trains on the best-vs-worst pair; CREAM turns the agreement of that ranking with the
previous model's (a Kendall tau per prompt) into a soft label C of the DPO loss. The offline toy (SRLM, CREAM and an
oracle-ranked control from one M1 per seed, seeds 1-3, a few minutes on 2 CPU cores): python algos/cream.py

Idea: a self-rewarding LM (SRLM) samples N responses per prompt, ranks them itself and trains on the top and bottom
one with DPO, iteration after iteration, so its ranking errors compound. CREAM measures how far the current model's
ranking of the same N responses agrees with the previous model's and uses that agreement C as a soft label: weight
C on "chosen > rejected", 1 - C on the reverse; rankings that flip between iterations get labels near 1/2.

    s_M(x, y) = sum_t log pi_M(y_t | x, y_<t)                    summed over the response tokens only
    r_M(x, y) = s_M(x, y) - s_M0(x, y)                            self-reward (no beta: it does not change a ranking)
    C_j = (tau(rank_ord(r_Mt), rank_ord(r_Mt-1)) + 1) / 2          per prompt; C = mean_j C_j (avg) or C_j (dyn)
    h = [s_theta(y+) - s_ref(y+)] - [s_theta(y-) - s_ref(y-)],   ref = M_t (the model at the start of iteration t)
    L = C softplus(-beta h) + (1 - C) softplus(beta h)            C = 1: plain DPO (the SRLM arm)
    (at t = 1 the previous model is M0 itself, ranked by its mean token log-likelihood s_M0 / |y|)

Source tags on the lines that implement a detail: [code <file>] = Raibows/CREAM@de1d04b <file>; [paper Alg. 1] =
the paper's Algorithm 1 as summaries of the paper give it (not checked against its text); "reconstruction" where
neither says. Arms, all from the same M1, prompt subsets and sampling seeds: srlm (C = 1), cream (C from
--consistency), oracle (pairs ranked by the true quality, C = 1: the positive control) and, optionally, fixed (the
paper's "w/o RC": C = --fixed-c).

Commands:
    python algos/cream.py                                        # offline toy: seeds 1-3, srlm / cream / oracle
    python algos/cream.py --seed 4 --arms srlm cream oracle fixed --rank-ref prev --consistency dyn
    python algos/cream.py --model-name Qwen/Qwen2.5-0.5B-Instruct --dataset-name prompts_folder \\
        --sft-dataset-name seed_sft_folder --num-seeds 1 --arms srlm cream --prompts-per-iter 2000 --num-eval 0 \\
        --max-new-tokens 512 --learning-rate 1e-6 --sft-learning-rate 5e-6 --sft-steps 0 --sft-epochs 5 \\
        --dpo-batch-size 32 --sft-batch-size 32 --micro-batch-size 4 --generation-batch-size 160 \\
        --score-batch-size 16 --gradient-checkpointing   # add --lora-r 32 when full fine-tuning does not fit
"""

from __future__ import annotations

import copy
import gc
import json
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from shared.data import load_data
from shared.lm import completion_logprobs, load_causal_lm, sample, trained_parameters
from shared.precision import Precision, setup_precision
from shared.runs import Progress, RunLogger, fail, format_table, make_run_name, parse_args, seed_everything
from shared.tasks import levenshtein
from shared.warmstart import sft_parts, warm_start

Arm = Literal["srlm", "cream", "oracle", "fixed"]
# the TensorBoard tags (the same in every arm's run, arms/<arm>-seed<seed>/) of the row keys logged per DPO step ...
STEP_METRICS = {"loss": "losses/loss", "margins": "rewards/margins", "accuracies": "rewards/accuracies"}
# ... and per iteration (at step t)
ITERATION_METRICS = {
    "C": "charts/consistency",
    "C_std": "charts/consistency_std",
    "self_tau": "charts/self_tau",
    "pair_acc": "charts/pair_accuracy",
    "len_gap": "charts/length_gap",
    "kept_pairs": "charts/kept_pairs",
    "first_loss": "charts/first_loss",
    "greedy_quality": "eval/quality",
    "greedy_exact_match": "eval/exact_match",
    "greedy_length": "eval/length",
}
# the row keys (and their short names) on the console line of an iteration; every key is in TensorBoard and rows.json
ITERATION_SHOWN = {
    "C": "C",
    "self_tau": "self_tau",
    "pair_acc": "pair_acc",
    "len_gap": "len_gap",
    "greedy_quality": "quality",
    "greedy_exact_match": "EM",
}
PAIRS_SHOWN_PER_ITERATION = 3  # samples.txt: the first few trained pairs of every iteration, with their C_j
PROGRESS_MIN_CALLS = 10  # a phase of more model calls than this gets a Progress bar (the toy's take about a second)


@dataclass
class Args:
    exp_name: str = "cream"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """first seed (of the warm start, the data, sampling and training; arms share it: paired)"""
    num_seeds: int = 3
    """seeds seed, seed + 1, ... run one after the other, each with its own M0 and M1"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """compute dtype: auto (bf16 on a GPU, fp32 on the CPU), fp32, bf16 (autocast, also on the CPU) or fp16 (GPU)"""
    fp32_master: bool = True
    """keep fp32 master weights of the trained models (M1, the policies) under bf16/fp16 autocast (off: --dtype)"""
    gradient_checkpointing: bool = False
    """recompute activations in backward (less memory, ~1/3 more compute)"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest for the tiny model)"""
    track: bool = False
    """also log to Weights & Biases"""
    save_model: bool = False
    """save each arm's final model (trained dtype) to runs/<run_name>/model_<arm>_s<seed>/"""

    model_name: str = "tiny:sort_digits"
    """M0: tiny:<task> (the tiny LM warm-started on the task's corrupted corpus), a folder or a hub chat model"""
    dataset_name: str = "tiny:sort_digits"
    """prompts D_U: tiny:<task>, a save_to_disk folder, a json/csv/parquet file or a hub id with a `prompt` column"""
    sft_dataset_name: Optional[str] = "tiny:sort_digits"
    """seed SFT data D_S (prompt/completion columns; tiny:<task> uses its clean answers); None: M1 = M0"""
    chat: bool = True
    """wrap prompts in the tokenizer's chat template"""
    m0_steps: int = 100
    """toy M0: warm-start steps on the corrupted corpus (reconstruction: the toy's own recipe)"""
    m0_learning_rate: float = 3e-3
    """toy M0: warm-start learning rate"""
    m0_batch_size: int = 32
    """toy M0: examples per warm-start step"""
    m0_corrupt_rate: float = 0.5
    """toy M0: share of corrupted references in the warm-start corpus"""
    num_sft_examples: int = 200
    """seed SFT examples used for M1"""
    sft_steps: int = 50
    """SFT steps for M1 (0: use --sft-epochs)"""
    sft_epochs: int = 5
    """SFT epochs for M1 when --sft-steps is 0 [code README: 5]"""
    sft_batch_size: int = 32
    """SFT batch size"""
    sft_learning_rate: float = 1e-3
    """SFT learning rate [code README: 5e-6 on 7-8B]"""
    lora_r: int = 0
    """LoRA rank for SFT and DPO (needs peft); 0 trains every weight (the paper)"""
    lora_alpha: int = 0
    """LoRA alpha (0: 2 x rank, the code's 64 for r 32)"""

    arms: tuple[Arm, ...] = ("srlm", "cream", "oracle")
    """arms, each from the same M1: srlm (C = 1), cream, oracle (true-quality pairs, C = 1), fixed (C = --fixed-c)"""
    iterations: int = 3
    """self-rewarding iterations (M2..M4), each on its own prompt subset"""
    prompts_per_iter: int = 256
    """prompts per iteration subset (disjoint subsets)"""
    num_eval: int = 300
    """held-out prompts for the greedy evaluation (needs a `reference` column)"""
    num_samples: int = 5
    """N responses sampled per prompt [code config.py: 5]"""
    temperature: float = 0.8
    """sampling temperature [code config.py: 0.8]"""
    top_p: float = 0.95
    """nucleus sampling [code config.py: 0.95]"""
    max_new_tokens: int = 10
    """longest sampled or greedy response [code config.py: 768]"""
    beta: float = 0.1
    """DPO beta [code config.py: 0.1]"""
    consistency: Literal["avg", "dyn"] = "avg"
    """avg: every pair gets the mean C_j (the code README's default); dyn: each pair its own C_j"""
    rank_ref: Literal["m0", "prev"] = "m0"
    """reference of the self-reward: M0 for every t, or the model's own DPO reference M_{t-1} (unverified choice)"""
    fixed_c: float = 0.9
    """C of the `fixed` arm (the paper's hand-tuned "w/o RC" ablation)"""
    learning_rate: float = 3e-5
    """DPO learning rate [code README: 1e-6 on 7-8B]"""
    dpo_epochs: int = 1
    """DPO epochs per iteration [code README: 1]"""
    dpo_batch_size: int = 32
    """pairs per DPO step [code config.py: 4 x 8 GPUs]"""
    weight_decay: float = 0.01
    """AdamW weight decay [code config.py: 0.01]"""
    max_grad_norm: float = 1.0
    """gradient clipping [code config.py: 1.0]"""
    micro_batch_size: int = 32
    """DPO pairs (2 sequences each) or SFT examples per forward + backward (gradient accumulation): sets memory, not
    the gradient"""
    generation_batch_size: int = 1280
    """sequences per generate call (N samples per prompt, greedy evaluation): bounds the KV cache"""
    score_batch_size: int = 512
    """sequences per no-grad scoring forward pass (self-rewards, the DPO reference)"""


# ALGO LOGIC: ordinal ranks, Kendall tau, the consistency C_j and the pairs [code cal_consistency.py] ------------------
def ordinal_ranks(scores: torch.Tensor) -> torch.Tensor:
    """scipy's rankdata(method='ordinal') along the last dim: 1..N, ties broken by position."""
    return torch.argsort(torch.argsort(scores, dim=-1, stable=True), dim=-1) + 1  # [..., N]


def kendall_tau(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Kendall tau-b along the last dim, (n_c - n_d) / sqrt(untied_x * untied_y); NaN where x or y is constant."""
    n = x.shape[-1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)  # [N, N] pairs i < j
    sign_x = torch.sign(x.unsqueeze(-1) - x.unsqueeze(-2))[..., upper]  # [..., N(N-1)/2]
    sign_y = torch.sign(y.unsqueeze(-1) - y.unsqueeze(-2))[..., upper]  # [..., N(N-1)/2]
    untied = ((sign_x != 0).sum(-1) * (sign_y != 0).sum(-1)).double()  # [...]
    return (sign_x * sign_y).sum(-1).double() / untied.sqrt()  # [...]; 0/0 = NaN when a side is constant


def batched_consistency(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """C_j = (tau(ordinal ranks of current, ordinal ranks of previous) + 1) / 2 for [P, N] scores -> [P]."""
    tau = kendall_tau(ordinal_ranks(current), ordinal_ranks(previous))  # [P]; ordinal ranks never tie: tau-a
    return (tau + 1) / 2


def consistency(current_scores: Sequence[float], previous_scores: Sequence[float]) -> float:
    """C_j of one prompt [code cal_consistency.py]: (kendalltau(rankdata(cur, 'ordinal'), rankdata(prev)) + 1) / 2."""
    current = torch.as_tensor(current_scores, dtype=torch.float64)
    previous = torch.as_tensor(previous_scores, dtype=torch.float64)
    if current.ndim != 1 or current.shape != previous.shape or len(current) < 2:
        fail(f"consistency needs two score lists of one equal length >= 2, got {len(current)} and {len(previous)}")
    if not (torch.isfinite(current).all() and torch.isfinite(previous).all()):
        fail("consistency got a NaN or infinite score")
    return batched_consistency(current[None], previous[None]).item()


def select_pairs(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """chosen = argmax, rejected = argmin per row of [P, N] (first index on ties); keep = they differ. -> 3 x [P]."""
    chosen, rejected = rewards.argmax(dim=-1), rewards.argmin(dim=-1)  # [P], [P]; torch returns the first index
    return chosen, rejected, chosen != rejected  # argmax == argmin only when every reward is equal


def select_pair(rewards: Sequence[float]) -> tuple[int, int] | None:
    """(chosen, rejected) indices of one prompt's rewards, or None when all rewards are equal [code cal_consistency]."""
    values = torch.as_tensor(rewards, dtype=torch.float64)
    if values.ndim != 1 or len(values) < 2 or not torch.isfinite(values).all():
        fail(f"select_pair needs >= 2 finite rewards, got {list(rewards)}")
    chosen, rejected, keep = select_pairs(values[None])
    return (int(chosen), int(rejected)) if bool(keep) else None


# ALGO LOGIC: the soft-label DPO loss on summed response log-probs [code sft_dpo_trainer.py] ---------------------------
def cream_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    consistency: float | torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-pair soft-label DPO loss [B]: C softplus(-beta h) + (1 - C) softplus(beta h) [code sft_dpo_trainer.py].

    All log-probs are summed response log-probs [B]; C = 1 gives plain DPO, and C = 1 - eps is DPO with label
    smoothing eps (cDPO). The optimum of one pair is sigmoid(beta h) = C."""
    if not beta > 0:
        fail(f"beta must be > 0, got {beta}")
    c = torch.as_tensor(consistency, dtype=policy_chosen_logps.dtype, device=policy_chosen_logps.device)  # [] or [B]
    if not bool(((c >= 0) & (c <= 1)).all()):
        fail(f"consistency must lie in [0, 1], got {c.tolist()}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # [B]
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # [B]
    logits = beta * (chosen_logratios - rejected_logratios)  # [B] z = beta h
    return c * F.softplus(-logits) + (1 - c) * F.softplus(logits)  # [B]


def response_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """s(x, y) = sum_t log pi(y_t | x, y_<t) over the response tokens [B]; prompt and padding are masked out.

    The LM head runs on the response positions only and the log-softmax is taken in fp32 one chunk of positions at a
    time (shared.lm.completion_logprobs): no full-vocabulary fp32 copy of the batch's logits."""
    token_logps = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)[0]  # [B, T]
    return (token_logps * completion_mask).sum(-1)  # [B] summed, no length normalisation


# TRY NOT TO MODIFY: batching, model copies, no-grad scoring, evaluation, LoRA, the optimizer --------------------------
def rows_of(samples, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """prompt ids/mask, completion ids/mask of the given sample rows, with all-padding columns trimmed."""
    prompt_ids, prompt_mask = samples.prompt_ids[rows], samples.prompt_mask[rows]  # [b, P], [b, P]
    completion_ids, completion_mask = samples.completion_ids[rows], samples.completion_mask[rows]  # [b, T], [b, T]
    first = int(prompt_mask.any(0).long().argmax())  # first prompt column that is not padding in every row
    last = int(completion_mask.any(0).long().cumsum(0).argmax()) + 1  # one past the last used response column
    return prompt_ids[:, first:], prompt_mask[:, first:], completion_ids[:, :last], completion_mask[:, :last]


def micro_batches(num_rows: int, micro_batch_size: int) -> list[torch.Tensor]:
    """Row indices of consecutive micro-batches of at most `micro_batch_size` rows."""
    return list(torch.arange(num_rows).split(micro_batch_size))


@contextmanager
def on_device(model, device):
    """`model` on `device` inside the block, back on the CPU after it: frozen models wait off the device."""
    model.to(device)
    try:
        yield model
    finally:
        model.to("cpu")


def frozen_copy(model, dtype: torch.dtype):
    """A frozen copy of `model` on the CPU in `dtype` (the compute dtype): M0's reference copy, the snapshots M_t.
    It is copied where the model is, at a moment with no gradients or optimizer state on the device."""
    return copy.deepcopy(model).to(device="cpu", dtype=dtype).eval().requires_grad_(False)


def trainable_copy(model, args, precision: Precision):
    """A copy of `model` to train: on the device in the trained dtype (fp32 master weights), optionally with
    gradient checkpointing (activations recomputed in backward)."""
    copied = copy.deepcopy(model).to(device=precision.device, dtype=precision.trained_dtype).requires_grad_(True)
    if args.gradient_checkpointing:
        copied.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return copied


def phase_progress(name: str, calls: int) -> Progress | None:
    """A Progress bar for a phase of more than PROGRESS_MIN_CALLS model calls (a real run's scoring and evaluation);
    None for the toy's phases of a few calls, which are over in about a second each."""
    return Progress(name, total=calls) if calls > PROGRESS_MIN_CALLS else None


def num_calls(num_rows: int, batch_size: int) -> int:
    """Calls of at most `batch_size` rows that `num_rows` rows take."""
    return math.ceil(num_rows / batch_size)


@torch.no_grad()
def score_all(
    model,
    samples,
    rows: torch.Tensor,
    batch_size: int,
    precision: Precision | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Summed response log-probs of `rows` under a model that is not being updated, `batch_size` sequences per
    forward pass, without gradients -> [len(rows)] (fp64 on the CPU). `progress` advances by one per forward."""
    was_training = model.training
    model.eval()
    scores = []
    with precision.autocast() if precision is not None else nullcontext():
        for chunk in rows.split(batch_size):
            scores.append(response_logps(model, *rows_of(samples, chunk)).double().cpu())  # [c]
            if progress is not None:
                progress.update()
    model.train(was_training)
    return torch.cat(scores)


def quality(completion: str, reference: str) -> float:
    """True quality of the toy (reconstruction): 1 - word Levenshtein / max length (1 = exact)."""
    answer, truth = completion.split(), reference.split()
    return 1.0 - levenshtein(answer, truth) / max(len(answer), len(truth), 1)


def mean_of(values: Sequence[float]) -> float:
    return sum(values) / len(values)


@torch.no_grad()
def evaluate(model, tokenizer, prompts, references, args, precision: Precision, name: str) -> dict[str, float]:
    """Greedy true quality, exact match and length (words) on the held-out prompts ({} without references), in
    generate calls of --generation-batch-size prompts (the calls `sample` itself would make)."""
    if not references:
        return {}
    progress = phase_progress(f"evaluating {name}", num_calls(len(prompts), args.generation_batch_size))
    texts = []
    for start in range(0, len(prompts), args.generation_batch_size):
        chunk = prompts[start : start + args.generation_batch_size]
        with precision.autocast():
            completions = sample(
                model,
                tokenizer,
                chunk,
                max_new_tokens=args.max_new_tokens,
                greedy=True,
                chat=args.chat,
                batch_size=args.generation_batch_size,
            )
        texts += completions.texts
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.done()
    return {
        "quality": mean_of([quality(text, ref) for text, ref in zip(texts, references)]),
        "exact_match": mean_of([float(text.split() == ref.split()) for text, ref in zip(texts, references)]),
        "length": mean_of([len(text.split()) for text in texts]),
    }


def add_lora(model, args):
    """A fresh LoRA adapter on every linear layer (B = 0: the outputs are unchanged), or the model as it is."""
    if args.lora_r == 0:
        return model
    import peft  # lazy: only behind --lora-r

    alpha = args.lora_alpha or 2 * args.lora_r
    config = peft.LoraConfig(r=args.lora_r, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def merge_lora(model, args):
    """The adapter merged into the (fp32 master) weights: M_t stays a plain model."""
    return model.merge_and_unload() if args.lora_r > 0 else model


def make_optimizer(model, lr: float, args, precision: Precision | None = None) -> torch.optim.Optimizer:
    """AdamW (--weight-decay) over the trained parameters (every weight, or the LoRA adapters)."""
    optimizer = torch.optim.AdamW(trained_parameters(model), lr=lr, weight_decay=args.weight_decay)
    return precision.prepare_optimizer(optimizer) if precision is not None else optimizer


# ALGO LOGIC: the training loops: SFT for M1, one DPO iteration M_t -> M_{t+1} -----------------------------------------
def accumulate_sft_gradients(model, inputs, args, precision: Precision) -> float:
    """Forward and backward of the completion-only cross-entropy per micro-batch of --micro-batch-size examples;
    each adds its summed token NLL over the step batch's target tokens, so the gradients add up to those of the
    step's mean token cross-entropy. Returns the step loss."""
    prompt_ids, prompt_mask, target_ids, target_mask = inputs  # [B, P], [B, P], [B, T], [B, T]
    batch_tokens = target_mask.sum()
    total_loss = 0.0
    for mb in micro_batches(len(target_ids), args.micro_batch_size):
        with precision.autocast():
            micro_inputs = (prompt_ids[mb], prompt_mask[mb], target_ids[mb], target_mask[mb])
            token_logps = completion_logprobs(model, *micro_inputs)[0]  # [M, T]
        loss = -(token_logps * target_mask[mb]).sum() / batch_tokens  # this micro-batch's share of the step loss
        precision.backward(loss)
        total_loss += loss.item()
    return total_loss


def supervised_fine_tune(model, tokenizer, prompts, completions, args, seed: int, precision: Precision, log):
    """M1 = M0 + completion-only SFT on the seed data, micro-batched -> (M1, last loss). The prompt tokens are masked
    (reconstruction: the official SFT labels them with the pad id, so it also trains M1 to predict pad there)."""
    model = add_lora(model, args)
    parameters = trained_parameters(model)
    optimizer = make_optimizer(model, args.sft_learning_rate, args, precision)
    generator = torch.Generator().manual_seed(seed)
    steps = args.sft_steps or args.sft_epochs * math.ceil(len(prompts) / args.sft_batch_size)
    progress = Progress(f"M1 = SFT of M0 (seed {seed})", total=steps)
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(len(prompts), (args.sft_batch_size,), generator=generator).tolist()
        inputs = sft_parts(
            tokenizer,
            [prompts[i] for i in idx],
            [completions[i] for i in idx],
            device=precision.device,
            chat=args.chat,
        )  # prompt ids and mask [B, P], target ids (completion + end of turn) and mask [B, T]
        optimizer.zero_grad(set_to_none=True)
        loss = accumulate_sft_gradients(model, inputs, args, precision)
        precision.clip_grad_norm_(parameters, args.max_grad_norm)
        optimizer.step()
        log(step, loss)
        progress.update(loss=loss)
    progress.done(f"last loss {loss:.4f}")
    optimizer.zero_grad(set_to_none=True)  # no gradients left on the device
    precision.release()  # the optimizer state can be freed
    return merge_lora(model, args), loss


def accumulate_dpo_gradients(
    policy, samples, chosen_rows, rejected_rows, ref_chosen_logps, ref_rejected_logps, pair_c, args, precision
) -> tuple[float, torch.Tensor]:
    """Forward and backward of the soft-label loss per micro-batch of --micro-batch-size pairs (chosen and rejected
    in one forward); each micro-batch adds sum(losses) / step pairs, so the gradients add up to those of the step
    batch's mean loss. Returns the step loss and the margins beta h ([B], detached)."""
    num_pairs = len(chosen_rows)
    device = precision.device
    total_loss = 0.0
    margins = []
    for mb in micro_batches(num_pairs, args.micro_batch_size):
        batch = rows_of(samples, torch.cat([chosen_rows[mb], rejected_rows[mb]]))  # [2M, ...] chosen, then rejected
        with precision.autocast():
            policy_chosen_logps, policy_rejected_logps = response_logps(policy, *batch).chunk(2)  # [M], [M]
        ref_chosen, ref_rejected = ref_chosen_logps[mb].to(device), ref_rejected_logps[mb].to(device)  # [M], [M]
        losses = cream_loss(
            policy_chosen_logps, policy_rejected_logps, ref_chosen, ref_rejected, pair_c[mb].to(device), args.beta
        )  # [M]
        loss = losses.sum() / num_pairs  # this micro-batch's share of the step batch's mean
        precision.backward(loss)
        total_loss += loss.item()
        margin = args.beta * ((policy_chosen_logps - ref_chosen) - (policy_rejected_logps - ref_rejected))  # [M]
        margins.append(margin.detach())
    return total_loss, torch.cat(margins)


def dpo_iteration(
    policy, samples, chosen_rows, rejected_rows, pair_c, args, seed, log, precision: Precision | None = None
) -> tuple[object, float, float]:
    """Steps 6-7: M_{t+1} = M_t + one epoch of the soft-label loss, ref = M_t -> (M_{t+1}, first loss, steps/s)."""
    precision = precision or setup_precision(args.dtype, args.cuda, args.fp32_master)
    policy = add_lora(policy, args)  # with --lora-r: a fresh adapter (B = 0), merged again at the end

    # 6. the reference is M_t, the weights at the start of the iteration: its log-probs, once, before any update
    progress = phase_progress("reference log-probs", 2 * num_calls(len(chosen_rows), args.score_batch_size))
    ref_chosen_logps = score_all(policy, samples, chosen_rows, args.score_batch_size, precision, progress)  # [B]
    ref_rejected_logps = score_all(policy, samples, rejected_rows, args.score_batch_size, precision, progress)  # [B]
    ref_chosen_logps = ref_chosen_logps.float()  # [B]
    ref_rejected_logps = ref_rejected_logps.float()  # [B]
    if progress is not None:
        progress.done()

    # 7. one epoch of the soft-label DPO loss on the pairs, forward and backward per micro-batch
    parameters = trained_parameters(policy)
    optimizer = make_optimizer(policy, args.learning_rate, args, precision)
    generator = torch.Generator().manual_seed(seed)
    losses_seen = []
    start = time.time()
    policy.train()
    for _ in range(args.dpo_epochs):
        for idx in torch.randperm(len(chosen_rows), generator=generator).split(args.dpo_batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss, margins = accumulate_dpo_gradients(
                policy,
                samples,
                chosen_rows[idx],
                rejected_rows[idx],
                ref_chosen_logps[idx],
                ref_rejected_logps[idx],
                pair_c[idx],
                args,
                precision,
            )
            precision.clip_grad_norm_(parameters, args.max_grad_norm)
            optimizer.step()
            losses_seen.append(loss)
            log(loss=loss, margins=margins.mean().item(), accuracies=(margins > 0).float().mean().item())
    optimizer.zero_grad(set_to_none=True)  # no gradients left on the device while the next iteration samples
    precision.release()  # the optimizer state can be freed
    return merge_lora(policy, args).eval(), losses_seen[0], len(losses_seen) / max(time.time() - start, 1e-9)


# TRY NOT TO MODIFY: option checks and data ----------------------------------------------------------------------------
def check_args(args: Args) -> None:
    """Fail early, before any data, model or training, on every option the run cannot use."""
    if args.num_samples < 2:
        fail(f"--num-samples {args.num_samples}: a ranking needs at least 2 responses per prompt")
    if not args.beta > 0:
        fail(f"--beta {args.beta} must be > 0")
    if not 0 <= args.fixed_c <= 1:
        fail(f"--fixed-c {args.fixed_c} must lie in [0, 1] (it is the probability that chosen beats rejected)")
    positive = "iterations prompts_per_iter dpo_epochs dpo_batch_size sft_batch_size score_batch_size max_new_tokens"
    sizes = "micro_batch_size generation_batch_size num_threads num_seeds m0_batch_size"
    for name in positive.split() + sizes.split():
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.num_eval, args.lora_r, args.lora_alpha, args.sft_steps, args.sft_epochs) < 0:
        fail("--num-eval, --lora-r, --lora-alpha, --sft-steps and --sft-epochs must be >= 0")
    for name in ("learning_rate", "sft_learning_rate", "m0_learning_rate"):
        rate = getattr(args, name)
        if not (math.isfinite(rate) and rate > 0):
            fail(f"--{name.replace('_', '-')} {rate}: a learning rate must be a positive finite number")
    if not (args.max_grad_norm > 0 and args.weight_decay >= 0):
        fail(f"--max-grad-norm {args.max_grad_norm} must be > 0 and --weight-decay {args.weight_decay} >= 0")
    if not 0 <= args.m0_corrupt_rate <= 1:
        fail(f"--m0-corrupt-rate {args.m0_corrupt_rate} must lie in [0, 1] (the share of corrupted M0 references)")
    if args.sft_dataset_name is None or args.num_sft_examples < 1 or args.sft_steps == args.sft_epochs == 0:
        fail(
            "without SFT (--sft-dataset-name None, --num-sft-examples 0, or --sft-steps 0 with --sft-epochs 0) "
            "M1 = M0, so every t = 1 self-reward s_M1 - s_M0 is 0 (with --rank-ref m0 and prev alike: at t = 1 both "
            "subtract M0), no prompt keeps a pair and the run stops. Pass --sft-dataset-name with prompt/completion "
            "columns and --sft-steps or --sft-epochs > 0"
        )
    if not args.temperature > 0 or not 0 < args.top_p <= 1:
        fail(f"--temperature {args.temperature} must be > 0 and --top-p {args.top_p} in (0, 1]")
    if not args.arms or len(set(args.arms)) != len(args.arms):
        fail(f"--arms {args.arms}: give each arm once, at least one")
    if args.lora_r > 0:
        try:
            import peft  # noqa: F401
        except ImportError:
            fail("--lora-r needs peft: pip install -e '.[lora]' (or --lora-r 0 for full fine-tuning)")


def load_prompt_data(args: Args, seed: int):
    """Disjoint prompt subsets for the iterations and held-out evaluation prompts (with references when present)."""
    need = args.iterations * args.prompts_per_iter
    if args.dataset_name.startswith("tiny:"):  # the task's train and test splits are disjoint by construction
        train = load_data(args.dataset_name, "train", ["prompt"], num_examples=need, seed=seed)
        test = load_data(args.dataset_name, "test", ["prompt"], num_examples=args.num_eval, seed=seed)
    else:
        data = load_data(args.dataset_name, "train", ["prompt"]).shuffle(seed=seed)
        num_eval = max(0, min(args.num_eval, len(data) - need))  # held out: the rows after the iteration subsets
        train = data.select(range(min(need, len(data))))
        test = data.select(list(range(need, need + num_eval)))
    if len(train) < need:
        fail(
            f"dataset {args.dataset_name!r} has {len(train)} prompts, fewer than --iterations x --prompts-per-iter "
            f"= {args.iterations} x {args.prompts_per_iter} = {need}"
        )
    if "oracle" in args.arms and "reference" not in train.column_names:
        fail(
            f"the oracle arm ranks by true quality: dataset {args.dataset_name!r} needs a `reference` column "
            f"(it has {train.column_names}); drop oracle from --arms"
        )
    references = train["reference"] if "reference" in train.column_names else None
    eval_references = test["reference"] if "reference" in test.column_names and len(test) else None
    return train["prompt"], references, (test["prompt"] if eval_references else []), eval_references


def load_sft_data(args: Args, seed: int):
    """Seed SFT data D_S as (prompts, completions); the tiny task's clean answers play the human answers."""
    column = "clean" if args.sft_dataset_name.startswith("tiny:") else "completion"
    data = load_data(args.sft_dataset_name, "train", ["prompt", column], args.num_sft_examples, seed=seed + 1)
    if len(data) == 0:
        fail(f"--sft-dataset-name {args.sft_dataset_name!r} has no rows: M1 needs seed SFT data")
    return data["prompt"], data[column]


def load_m0(args: Args, seed: int, precision: Precision):
    """M0 on the CPU in the trained dtype (M1 starts from these weights, not from a rounded copy): the toy's tiny LM
    warm-started on a corrupted corpus (cached, one per seed), or any causal LM by name."""
    if not args.model_name.startswith("tiny:"):
        return load_causal_lm(args.model_name, device="cpu", dtype=precision.trained_dtype, seed=seed)
    task = args.model_name.split(":", 1)[1]
    kwargs = {"corrupt_rate": args.m0_corrupt_rate} if task == "sort_digits" else {}
    folder = warm_start(
        task,
        seed,
        steps=args.m0_steps,
        batch_size=args.m0_batch_size,
        lr=args.m0_learning_rate,
        task_kwargs=kwargs,
    )
    return load_causal_lm(str(folder), device="cpu", dtype=precision.trained_dtype)


# ALGO LOGIC: the self-rewarding loop of one seed [paper Alg. 1] -------------------------------------------------------
def run_seed(args: Args, seed: int, run: RunLogger, precision: Precision, named_m0=None) -> tuple[list[dict], dict]:
    """The self-rewarding loop for one seed: M0, M1, then every arm from M1 over the same prompt subsets. Each arm
    (and M0, M1) logs to a TensorBoard run of its own, `<arm>-seed<seed>`, under the same tag names."""
    # TRY NOT TO MODIFY: seeding and data
    seed_everything(seed)
    prompts, references, eval_prompts, eval_references = load_prompt_data(args, seed)
    sft_prompts, sft_completions = load_sft_data(args, seed)
    seed_start = time.time()
    device = precision.device

    # 1. M0: the start model on the CPU in the trained dtype; frozen in the compute dtype it is the self-reward's
    #    reference and the t = 1 "previous model"
    m0_start, tokenizer = named_m0 or load_m0(args, seed, precision)
    same_dtype = precision.frozen_dtype == precision.trained_dtype
    m0 = m0_start.eval().requires_grad_(False) if same_dtype else frozen_copy(m0_start, precision.frozen_dtype)

    # 2. M1 = SFT of M0 on the seed data D_S [paper Alg. 1], trained on the device, then kept on the CPU: every arm
    #    starts from it
    def log_sft(sft_step: int, loss: float) -> None:
        run.log(sft_step, {"losses/sft_loss": loss}, echo=False, arm=f"m1-seed{seed}")

    m1 = trainable_copy(m0_start, args, precision)
    m1, _ = supervised_fine_tune(m1, tokenizer, sft_prompts, sft_completions, args, seed, precision, log_sft)
    m1.eval().requires_grad_(False)
    rows = []
    for name, model in (("m0", m0), ("m1", m1)):
        with on_device(model, device):  # afterwards both wait on the CPU
            evaluation = evaluate(model, tokenizer, eval_prompts, eval_references, args, precision, name)
        run.log(0, {f"eval/{k}": v for k, v in evaluation.items()}, echo=False, arm=f"{name}-seed{seed}")
        rows.append({"seed": seed, "arm": name, "t": 0, **{f"greedy_{k}": v for k, v in evaluation.items()}})
    shown = " ".join(f"{r['arm']} quality {r.get('greedy_quality', math.nan):.3f}" for r in rows)
    print(f"seed {seed}: M0 and M1 ready in {time.time() - seed_start:.1f} s: {shown}", flush=True)

    def reward_ref(k: int) -> int:  # the model whose log-probs are subtracted in M_k's self-reward
        return 0 if args.rank_ref == "m0" else k - 1  # m0 [paper Alg. 1]; prev: the other reading (reconstruction)

    num_samples = args.num_samples  # N responses per prompt
    policies = {}
    samples_text = []
    for arm in args.arms:
        arm_start = time.time()
        arm_run = f"{arm}-seed{seed}"  # this arm's TensorBoard run, arms/<arm>-seed<seed>/
        dpo_step = 0
        policy = trainable_copy(m1, args, precision)  # on the device, fp32 master weights

        def log_step(**values: float) -> None:  # one DPO step, on this arm's own step axis
            nonlocal dpo_step
            dpo_step += 1
            run.log(dpo_step, {tag: values[key] for key, tag in STEP_METRICS.items()}, arm=arm_run)

        frozen = {0: m0}  # frozen snapshots M_k (on the CPU, compute dtype) that the self-rewards still need
        for t in range(1, args.iterations + 1):
            iteration_start = time.time()
            offset = (t - 1) * args.prompts_per_iter
            subset = prompts[offset : offset + args.prompts_per_iter]
            num_prompts = len(subset)

            # 3. sample N responses per prompt from M_t [code config.py: N 5, T 0.8, top-p 0.95] (the same seed in
            #    every arm: the same responses at t = 1), in generate calls of at most --generation-batch-size
            torch.manual_seed(seed * 1000 + t)
            sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
            sampling.update(chat=args.chat, batch_size=args.generation_batch_size)
            with precision.autocast():
                samples = sample(policy, tokenizer, subset, num_samples=num_samples, **sampling)
            lengths = samples.completion_mask.sum(1).double().cpu()  # [P*N] response tokens incl. end of turn

            # 4. self-reward them [code rewarding.py]: summed log-probs under every model that the two self-rewards
            #    need, without gradients, one frozen model on the device at a time (rewarding.py loads one at a time)
            frozen[t] = frozen_copy(policy, precision.frozen_dtype)  # M_t, next iteration's M_{t-1}
            needed = {t, reward_ref(t), t - 1} | ({reward_ref(t - 1)} if t >= 2 else set())
            all_rows = torch.arange(num_prompts * num_samples)
            calls = len(needed) * num_calls(len(all_rows), args.score_batch_size)
            progress = phase_progress(f"self-rewards {arm} t={t}", calls)
            logps = {}
            for k in sorted(needed):
                with on_device(frozen[k], device):
                    logps[k] = score_all(frozen[k], samples, all_rows, args.score_batch_size, precision, progress)
            if progress is not None:
                progress.done()
            current = (logps[t] - logps[reward_ref(t)]).view(num_prompts, num_samples)  # [P, N] r_{M_t}
            if t == 1:
                # [P, N] M0: its mean token log-likelihood [code rewarding.py normalized_by_length]
                previous = (logps[0] / lengths).view(num_prompts, num_samples)
            else:
                # [P, N] r_{M_{t-1}}, the previous model's DPO reward
                previous = (logps[t - 1] - logps[reward_ref(t - 1)]).view(num_prompts, num_samples)
            for k in [k for k in frozen if k not in (0, t, t - 1)]:
                del frozen[k]

            # 5. pairs from the current self-reward; per-prompt consistency C_j with the previous ranking
            #    [code cal_consistency.py]
            chosen, rejected, keep = select_pairs(current)  # [P] x 3
            c_j = batched_consistency(current, previous)  # [P]
            c_avg = c_j[keep].mean().item()  # over the prompts kept for DPO, as the code averages its DPO file
            row = {"seed": seed, "arm": arm, "t": t, "C": c_avg, "C_std": c_j[keep].std().item()}
            if references is not None:
                sample_references = [references[offset + i // num_samples] for i in range(len(samples.texts))]
                q = torch.tensor([quality(y, ref) for y, ref in zip(samples.texts, sample_references)])
                q = q.double().view(num_prompts, num_samples)  # [P, N] true quality
                q_chosen = q.gather(1, chosen[:, None])[:, 0]  # [P]
                q_rejected = q.gather(1, rejected[:, None])[:, 0]  # [P]
                decided = keep & (q_chosen != q_rejected)  # [P] pairs the true quality can judge
                row["self_tau"] = kendall_tau(current, q).nanmean().item()
                row["pair_acc"] = (q_chosen > q_rejected)[decided].double().mean().item()
                if arm == "oracle":
                    chosen, rejected, keep = select_pairs(q)  # the oracle arm: pairs ranked by the true quality
            c_of_arm = {"srlm": 1.0, "oracle": 1.0, "fixed": args.fixed_c, "cream": c_avg}[arm]
            per_pair = arm == "cream" and args.consistency == "dyn"
            pair_c = (c_j if per_pair else torch.full_like(c_j, c_of_arm))[keep]  # [B]
            kept = keep.nonzero().squeeze(1)  # [B] prompts with a pair
            if len(kept) == 0:
                fail(f"{arm} t={t}: every prompt's responses got equal rewards, no pair to train on")
            chosen_rows = kept * num_samples + chosen[kept]  # [B] sample rows
            rejected_rows = kept * num_samples + rejected[kept]  # [B] sample rows
            row["len_gap"] = (lengths[chosen_rows] - lengths[rejected_rows]).mean().item()
            row["kept_pairs"] = len(kept)

            # 6-7. M_{t+1} = M_t + one DPO epoch on the soft-label loss, ref = M_t with precomputed log-probs
            #      [code sft_dpo_trainer.py]
            policy, row["first_loss"], _ = dpo_iteration(
                policy, samples, chosen_rows, rejected_rows, pair_c, args, seed * 1000 + t, log_step, precision
            )

            # 8. evaluate M_{t+1} greedily on the held-out prompts
            evaluation = evaluate(policy, tokenizer, eval_prompts, eval_references, args, precision, f"{arm} t={t}")
            row.update({f"greedy_{k}": v for k, v in evaluation.items()})

            # TRY NOT TO MODIFY: log the iteration (at step t) and show its main numbers
            run.log(t, {tag: row[key] for key, tag in ITERATION_METRICS.items() if key in row}, echo=False, arm=arm_run)
            rows.append(row)
            shown = " ".join(f"{label}={row[key]:.3f}" for key, label in ITERATION_SHOWN.items() if key in row)
            print(f"seed {seed} | {arm} | t={t} | {shown} | {time.time() - iteration_start:.1f} s", flush=True)
            samples_text += [
                f"[seed {seed} {arm} t={t}] {subset[i]} | chosen: {samples.texts[i * num_samples + chosen[i]]} | "
                f"rejected: {samples.texts[i * num_samples + rejected[i]]} | C_j={c_j[i]:.2f}"
                for i in kept[:PAIRS_SHOWN_PER_ITERATION].tolist()
            ]
        rows[-1]["arm_seconds"] = time.time() - arm_start
        if args.save_model:  # the trained dtype: fp32 master weights
            policy.save_pretrained(run.dir / f"model_{arm}_s{seed}")
            tokenizer.save_pretrained(run.dir / f"model_{arm}_s{seed}")
        policies[arm] = policy.to(device="cpu", dtype=precision.frozen_dtype)  # the next arm's policy takes its place
        del policy, frozen
        gc.collect()  # a dropped model's reference cycles hold its weights until collected
    with open(run.dir / "samples.txt", "a") as f:
        f.write("\n".join(samples_text) + "\n")
    return rows, {"m1": m1, **policies}


# TRY NOT TO MODIFY: the table and main --------------------------------------------------------------------------------
def summarise(rows: list[dict], args: Args) -> str:
    """Means over seeds per (arm, t), then the paired per-seed comparison after the last iteration."""
    columns = "C self_tau pair_acc len_gap first_loss greedy_quality greedy_exact_match greedy_length arm_seconds"
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["arm"], row["t"]), []).append(row)
    mean_rows = []
    for (arm, t), group in groups.items():
        mean_rows.append({"arm": arm, "t": t, "seeds": len(group)})
        for column in columns.split():
            values = [r[column] for r in group if r.get(column) is not None]
            mean_rows[-1][column] = sum(values) / len(values) if values else None
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    text = [
        f"Means over seeds {seeds}. t = 0: M0 and M1; t: after iteration t (greedy, {args.num_eval} held-out "
        f"prompts). C = mean consistency; self_tau = Kendall tau(self-reward, true quality); pair_acc = self-reward "
        f"pair accuracy; len_gap = chosen - rejected tokens of the trained pairs; first_loss must be ln 2 = "
        f"{math.log(2):.4f}; arm_seconds = wall time of an arm per seed.",
        "",
        format_table(mean_rows),
    ]
    if "greedy_quality" not in rows[0]:
        return "\n".join(text)
    final = {(r["seed"], r["arm"]): r for r in rows if r["t"] in (0, args.iterations)}
    paired = []
    for seed in seeds:
        paired.append({"seed": seed})
        for arm in ["m1", *args.arms]:
            paired[-1][f"q_{arm}"] = final[(seed, arm)]["greedy_quality"]
            paired[-1][f"em_{arm}"] = final[(seed, arm)]["greedy_exact_match"]
    text += [
        "",
        f"Paired by seed, after iteration {args.iterations} (q = greedy true quality, em = exact match):",
        "",
        format_table(paired),
    ]
    if {"srlm", "cream"} <= set(args.arms):
        dq = [r["q_cream"] - r["q_srlm"] for r in paired]
        dem = [r["em_cream"] - r["em_srlm"] for r in paired]
        text.append(
            f"\nCREAM - SRLM over {len(dq)} seeds: quality {sum(dq) / len(dq):+.3f} (per seed "
            f"{', '.join(f'{d:+.3f}' for d in dq)}), exact match {sum(dem) / len(dem):+.3f}"
        )
    return "\n".join(text)


def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: option checks, precision, data and the run folder
    check_args(args)
    torch.set_num_threads(args.num_threads)
    precision = setup_precision(args.dtype, args.cuda, args.fp32_master)
    load_prompt_data(args, args.seed)  # fail on the data before any model is built
    load_sft_data(args, args.seed)
    # a named model is the same M0 for every seed: load it (or fail on it) before the run folder exists
    named_m0 = None if args.model_name.startswith("tiny:") else load_m0(args, args.seed, precision)
    task = args.dataset_name.split(":", 1)[1] if args.dataset_name.startswith("tiny:") else "custom"
    # the DPO steps of an arm (at most: a prompt whose rewards all tie is dropped), for the progress line's ETA
    steps_per_arm = args.iterations * args.dpo_epochs * math.ceil(args.prompts_per_iter / args.dpo_batch_size)
    run = RunLogger(
        make_run_name(task, args.exp_name, args.seed),
        args,
        track=args.track,
        show=("losses/loss", "rewards/accuracies", "rewards/margins"),
        total_steps=steps_per_arm,
    )
    # 1-8 for every seed (each with its own M0 and M1), the arms paired within a seed
    rows = []
    models = {}
    for seed in range(args.seed, args.seed + args.num_seeds):
        seed_rows, models = run_seed(args, seed, run, precision, named_m0)
        rows += seed_rows
    (run.dir / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    run.finish(summarise(rows, args))
    return {"rows": rows, "run_dir": run.dir, "models": models}


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
