# arXiv:2505.10597 (CRM) | docs: docs/crm.md (details, deviations, metrics, results, reproducing the paper)
"""CRM: Two Minds Better Than One: Collaborative Reward Modeling for LLM Alignment (Zhang et al., submitted to ICLR
2026, https://arxiv.org/abs/2505.10597; no official code is public). Two Bradley-Terry reward models train side by
side on noisy preference pairs: in every mini-batch each one keeps the pairs it finds easy (small loss) and its PEER
learns from that pick, with an easy-to-hard curriculum once per epoch. The offline toy (5 arms x 2 data regimes at
40% flipped labels, about 4.5 minutes on 2 CPU cores): python algos/crm.py

Idea: a flipped pair is hard to fit, so its BT loss stays large. Filtering by a model's own loss inherits its mistakes
(the Self-Review ablation); two RMs with different inits make different mistakes, so each filters for the other
(Co-teaching, Han et al. 2018, adapted to BT reward models). The same exchange applies to DPO's implicit reward.

    m_k(i) = r_k(x, y_w) - r_k(x, y_l),   l_k(i) = -log sigmoid(m_k(i)) = softplus(-m_k(i))        k in {1, 2}
    k_keep = max(1, floor(rho * n + 1e-6)),   S_k = the k_keep pairs of the batch with the smallest l_k
    RM1 steps on mean_{i in S_2} l_1(i),   RM2 steps on mean_{i in S_1} l_2(i)                      (peer review)
    rho(t) = 1 - eta * min(t / T_k, 1)  (ramp)  or  1 - eta  (const),   t = epochs done, at each optimizer step
    curriculum, once per epoch: d(i) = (m_1(i) + m_2(i)) / 2, pairs visited easy -> hard (abs: |d| descending)
    CRM-DPO: m_k = beta * [(log pi_k(y_w) - log pi_ref(y_w)) - (log pi_k(y_l) - log pi_ref(y_l))]

Source tags on the lines that implement a detail: [abs] = the paper's arXiv abstract; [rev] = the four ICLR 2026
reviews (OpenReview forum BB1aypUDAF; [rev 1] = the first); [ct <file>] = bhanML/Co-teaching@7c7fbe2 <file>, the
Co-teaching code that CRM adapts; "reconstruction" where none of them says (the paper's body is not public, so each
such choice is a flag). Arms: single (two RMs on all noisy pairs), oracle (clean labels, the positive control),
coteach (peer review, no curriculum), self-review (each RM learns from its own pick), crm (peer review + curriculum)
and crm-<sort|buckets|abs> (crm with that curriculum).

Commands:
    python algos/crm.py                                   # offline toy: 5 arms x 2 regimes, eta 0.4, seed 1
    python algos/crm.py --noise-rate 0.2 --seed 2         # the docs page's tables: seeds 1-3 at eta 0.4 and 0.2
    python algos/crm.py --curriculum sort --arms coteach crm self-review   # see the signed sort collapse
    python algos/crm.py --implicit --no-shared-batch --arms single crm    # CRM-DPO smoke run on the toy
    python algos/crm.py --model-name Qwen/Qwen2.5-0.5B-Instruct --dataset-name trl-lib/ultrafeedback_binarized \
        --eval-split test --num-pairs 20000 --epochs 1 --ramp-epochs 0.5 --batch-size 32 --micro-batch-size 8 \
        --learning-rate 1e-5 --arms single crm
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from shared.data import load_data
from shared.lm import load_causal_lm, selective_log_softmax
from shared.precision import Precision, setup_precision
from shared.runs import Progress, RunLogger, fail, format_table, make_run_name, parse_args, seed_everything
from shared.warmstart import sft_batch

Arm = Literal["single", "oracle", "coteach", "self-review", "crm", "crm-abs", "crm-sort", "crm-buckets"]
Curriculum = Literal["none", "sort", "buckets", "abs"]
TINY_RM = dict(hidden_size=48, intermediate_size=144)  # the toy's width (d = 48): tiny Qwen2, 2 layers, 4 heads
LONG_PASS_CHUNKS = 100  # a no-grad pass over at least this many micro-batches shows a progress bar (the toy's: 16-32)
EVALS_PER_REGIME = 8  # held-out evaluations per regime when --eval-every is 0 (plus the last epoch)
PRINT_EVERY = 40  # steps between two progress lines (about every 3 s on the toy); evaluations print too


@dataclass
class Args:
    # common
    exp_name: str = "crm"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of the training data, the label flips, the batch order and model 1 (model 2 uses seed + 1)"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """compute dtype: auto (bf16 on a GPU, fp32 on the CPU), fp32, bf16 (autocast, also on the CPU) or fp16 (GPU)"""
    fp32_master: bool = True
    """keep fp32 master weights of the trained models under bf16/fp16 autocast (off: weights in --dtype, warned)"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest for the tiny models)"""
    eval_every: int = 0
    """evaluate on the held-out pairs every N epochs and after the last; 0 = about 8 times per regime"""
    track: bool = False
    """also log to Weights & Biases"""
    save_model: bool = False
    """save both models of every arm (save_pretrained, with the tokenizer) as runs/<run>/regime<r>_<arm>_model<k>/"""

    # model and optimizer: the two reward models (or, with --implicit, the two policies)
    model_name: str = "tiny"
    """`tiny` (random tiny Qwen2, d=48), a save_pretrained folder or a hub id, loaded with a 1-label reward head"""
    learning_rate: float = 2e-3
    """AdamW learning rate of each model (toy: 2e-3, reconstruction: the paper's is not public; real RMs: ~1e-5)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    batch_size: int = 64
    """pairs per mini-batch (one optimizer step), the n that the keep rate selects from (>= 2)"""
    micro_batch_size: int = 64
    """pairs per forward (x2 sequences) in training, scoring and evaluation: sets memory, not the gradient"""
    gradient_checkpointing: bool = False
    """recompute activations in backward (less memory, ~1/3 more compute)"""
    max_length: int = 512
    """max tokens per (prompt, response) sequence; longer ones lose their beginning"""
    chat: Literal["auto", "on", "off"] = "auto"
    """chat template around (prompt, response) when the tokenizer has one; auto = on, off for tiny: data (6 tokens)"""

    # data: preference pairs (prompt, chosen, rejected) and the injected label noise
    dataset_name: str = "tiny:preferences"
    """`tiny:preferences` (hidden true reward), a save_to_disk folder, a json/csv/parquet file or a hub id"""
    train_split: str = "train"
    """split of --dataset-name to train on"""
    eval_split: Optional[str] = None
    """split with held-out pairs; None = hold out --num-test-pairs from the training split"""
    num_pairs: tuple[int, ...] = (500, 2000)
    """training pairs, one entry per regime (pairs with --epochs and --ramp-epochs)"""
    epochs: tuple[int, ...] = (40, 10)
    """epochs, one entry per regime (toy: few pairs x many epochs, where one RM memorises, then more pairs x few)"""
    num_test_pairs: int = 1000
    """held-out pairs, true labels, the same for every arm and seed"""
    noise_rate: float = 0.4
    """exact share of TRAINING pairs whose chosen/rejected are swapped, in [0, 0.5) [rev: 0.2 and 0.4]"""
    drop_identical_pairs: bool = False
    """drop pairs whose chosen equals rejected instead of stopping with an error"""

    # CRM: arms, keep rate, curriculum
    arms: tuple[Arm, ...] = ("single", "oracle", "coteach", "self-review", "crm")
    """each trains 2 models from one start: single, oracle (clean labels), coteach, self-review, crm, crm-<mode>"""
    eta_assumed: Optional[float] = None
    """noise rate the keep rate assumes, rho = 1 - eta_assumed; None = --noise-rate [ct main.py]"""
    keep_schedule: Literal["ramp", "const"] = "ramp"
    """keep rate over epochs: ramp 1 -> 1 - eta over --ramp-epochs [ct main.py], or const 1 - eta"""
    ramp_epochs: tuple[float, ...] = (10, 3)
    """T_k of the ramp in epochs (fractions allowed: the rate moves every step), one per regime (reconstruction)"""
    curriculum: Curriculum = "abs"
    """epoch order of the crm arm by d = mean margin: abs (|d| desc), sort (d desc), buckets, none (reconstruction)"""
    n_buckets: int = 4
    """stages of --curriculum buckets (the sort order cut into equal parts, shuffled inside)"""
    shared_batch: bool = True
    """both models see the same mini-batch (reconstruction, as in [ct main.py]); off = each its own batch order"""

    # CRM-DPO: the implicit-reward extension [abs] (its loss and exchange: reconstruction, smoke-tested on the toy)
    implicit: bool = False
    """train two policies with a shared frozen reference; the DPO margin replaces the RM margin"""
    beta: float = 0.1
    """DPO beta of the implicit margin"""


# ALGO LOGIC: the Bradley-Terry loss, the small-loss pick and the keep rate --------------------------------------------
def bt_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry NLL per pair: -log sigmoid(r_w - r_l) = softplus(-(r_w - r_l)), shape [B] [abs, rev]."""
    if chosen_rewards.shape != rejected_rewards.shape:
        fail(f"bt_loss: chosen {tuple(chosen_rewards.shape)} and rejected {tuple(rejected_rewards.shape)} differ")
    return F.softplus(-(chosen_rewards.float() - rejected_rewards.float()))  # [B]


def keep_count(keep_rate: float, batch_size: int) -> int:
    """k = max(1, floor(rho * n + 1e-6)): the 1e-6 saves e.g. 0.64 * 50 = 31.999999999999996 from becoming 31
    ([ct loss.py] takes int(rho * n), which falls into that trap)."""
    if not 0.0 < keep_rate <= 1.0:
        fail(f"keep rate {keep_rate} is outside (0, 1]: lower --eta-assumed (keep rate = 1 - eta_assumed)")
    if batch_size < 1:
        fail(f"batch of {batch_size} pairs: nothing to select from")
    return max(1, math.floor(keep_rate * batch_size + 1e-6))


def select_small_loss(losses: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """Indices of the k pairs with the smallest loss, smallest first [ct loss.py]; a stable sort keeps batch order on
    ties. The BT loss falls as the SIGNED margin grows, so this keeps the largest signed margins, never the largest
    |m| (which would keep a confidently flipped pair)."""
    order = torch.argsort(losses.detach(), stable=True)  # [n]
    return order[: keep_count(keep_rate, losses.numel())]  # [k]


def keep_rate_schedule(progress: float, noise_rate: float, ramp_epochs: float, schedule: str = "ramp") -> float:
    """rho(t) = 1 - eta * min(t / T_k, 1) (ramp) or 1 - eta (const); ramp_epochs 0 = const [ct main.py].

    t = `progress`, the epochs done before this optimizer step (epoch + batch / batches per epoch: the ramp moves at
    every step, reconstruction; an integer t gives Co-teaching's per-epoch ramp)."""
    if not 0.0 <= noise_rate < 1.0:
        fail(f"assumed noise rate {noise_rate} gives a keep rate outside (0, 1]: use a value in [0, 1)")
    if schedule == "const" or ramp_epochs <= 0:
        return 1.0 - noise_rate
    if schedule != "ramp":
        fail(f"keep schedule {schedule!r} is not one of ramp, const")
    return 1.0 - noise_rate * min(progress / ramp_epochs, 1.0)


# ALGO LOGIC: the epoch curriculum [rev 1: "Curriculum Sort"; how it is done: reconstruction] --------------------------
def curriculum_order(margins_1: torch.Tensor, margins_2: torch.Tensor, mode: str) -> list[int]:
    """Easy-to-hard pair order by d = (m_1 + m_2) / 2: `sort` = descending d, `abs` = descending |d| (stable)."""
    difficulty = (margins_1.float() + margins_2.float()) / 2  # [N]
    if mode == "sort":
        key = -difficulty  # [N] largest signed margin (smallest loss) first
    elif mode == "abs":
        key = -difficulty.abs()  # [N] most confident first, either sign
    else:
        fail(f"curriculum_order mode {mode!r} is not one of sort, abs")
    return torch.argsort(key, stable=True).tolist()


def bucket_order(order: list[int], n_buckets: int, generator: torch.Generator) -> list[int]:
    """`buckets`: cut an easy-to-hard order into n_buckets equal stages, shuffle inside each, keep stage order."""
    stages = torch.tensor_split(torch.tensor(order), n_buckets)
    return torch.cat([s[torch.randperm(len(s), generator=generator)] for s in stages]).tolist()


def epoch_order(
    margins_1: torch.Tensor, margins_2: torch.Tensor, curriculum: str, n_buckets: int, generator: torch.Generator
) -> torch.Tensor:
    """One model's visiting order of the N training pairs for an epoch: a shuffle first (so ties, e.g. every DPO
    margin at init, go in this model's own random order), then the curriculum over it; [N] dataset indices."""
    shuffled = torch.randperm(len(margins_1), generator=generator)  # [N]
    sort_mode = "sort" if curriculum == "buckets" else curriculum
    order = shuffled[curriculum_order(margins_1[shuffled], margins_2[shuffled], sort_mode)]  # [N]
    if curriculum == "buckets":
        return torch.tensor(bucket_order(order.tolist(), n_buckets, generator))  # [N]
    return order


# ALGO LOGIC: CRM-DPO's implicit rewards [abs; the loss and exchange: reconstruction] ----------------------------------
def dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float):
    """Implicit reward margin beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))], shape [B]."""
    chosen_rewards, rejected_rewards = implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )  # [B], [B]
    return chosen_rewards - rejected_rewards  # [B]


def implicit_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float):
    """DPO's implicit rewards beta * (log pi(y) - log ref(y)) of chosen and rejected, shapes [B], [B]."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)  # [B]
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)  # [B]
    return chosen_rewards, rejected_rewards


# ALGO LOGIC: scoring without gradients, and the gradient of the mean loss over the picked pairs -----------------------
def score_margins(
    pairs, model, pair_ids: torch.Tensor, clean: bool, micro_batch_size: int, phase: str = ""
) -> torch.Tensor:
    """m(i) = r(y_w) - r(y_l) of the pairs `pair_ids` under `model`, WITHOUT gradients (the small-loss selection
    only reads them), one micro-batch of pairs at a time; [n] fp32 on the CPU. A pass of LONG_PASS_CHUNKS micro-batches
    or more shows a progress bar named `phase` (when one is given)."""
    parts = pair_ids.split(micro_batch_size)
    progress = Progress(phase, total=len(parts)) if phase and len(parts) >= LONG_PASS_CHUNKS else None
    margins = []
    with torch.no_grad():
        for part in parts:
            chosen_rewards, rejected_rewards = pairs(model, part, clean)  # [m], [m]
            margins.append((chosen_rewards - rejected_rewards).float().cpu())  # [m]
            if progress is not None:
                progress.update()
    if progress is not None:
        progress.done()
    return torch.cat(margins)  # [n]


def accumulate_bt_gradients(pairs, model, pair_ids: torch.Tensor, clean: bool, micro_batch_size: int, precision):
    """Forward and backward of mean_{i in pair_ids} bt_loss(i), one micro-batch of pairs at a time: each micro-batch
    adds its summed loss / n, so the accumulated gradient is the gradient of the mean over all n pairs ([ct loss.py]
    divides by k twice, a mean and then / k; this is the plain mean).

    Returns the mean loss (a float) and the margins of the training forward ([n], detached, on the CPU)."""
    total_loss = 0.0
    margins = []
    for part in pair_ids.split(micro_batch_size):
        chosen_rewards, rejected_rewards = pairs(model, part, clean)  # [m], [m]
        loss = bt_loss(chosen_rewards, rejected_rewards).sum() / len(pair_ids)  # this micro-batch's share
        precision.backward(loss)
        total_loss += loss.item()
        margins.append((chosen_rewards - rejected_rewards).detach().float().cpu())  # [m]
    return total_loss, torch.cat(margins)  # float, [n]


# TRY NOT TO MODIFY: data: pairs -> tensors [N, 2, T] (dim 1: 0 = observed chosen, 1 = observed rejected) --------------
def load_pairs(args: Args, split: str, n: int | None, seed: int):
    """Rows of (prompt or None, chosen, rejected) from the tiny world or a real dataset, shuffled, checked."""
    name = args.dataset_name
    data = load_data(name, split, ["chosen", "rejected"], num_examples=n, seed=seed, shuffle=True)
    prompts = data["prompt"] if "prompt" in data.column_names else None
    chosen = list(data["chosen"])
    rejected = list(data["rejected"])
    same = [i for i in range(len(chosen)) if chosen[i] == rejected[i]]
    if same and not args.drop_identical_pairs:
        fail(
            f"{len(same)} pair(s) of {name!r} ({split}) have chosen == rejected (first: row {same[0]}): they carry "
            f"no preference. Clean the data or pass --drop-identical-pairs."
        )
    keep = sorted(set(range(len(chosen))) - set(same))
    if len(keep) < 2:
        fail(f"{name!r} ({split}) has {len(keep)} usable pair(s); need at least 2")
    kept_prompts = None if prompts is None else [prompts[i] for i in keep]
    return kept_prompts, [chosen[i] for i in keep], [rejected[i] for i in keep]


def slice_rows(rows: tuple, start: int, stop: int | None) -> tuple:
    """rows[start:stop] of each column of (prompts or None, chosen, rejected)."""
    return tuple(None if column is None else column[start:stop] for column in rows)


def encode_rm(tokenizer, prompts, chosen, rejected, max_length: int, chat: bool = True) -> dict:
    """Right-padded ids / mask (and token types) [N, 2, T] for a sequence-classification RM."""
    responses = chosen + rejected
    second_texts = None
    chat = chat and tokenizer.chat_template is not None
    render = functools.partial(tokenizer.apply_chat_template, tokenize=False)
    if isinstance(responses[0], list):  # message lists: the conversation already holds the prompt
        texts = [render(messages) for messages in responses]
        chat = True
    elif prompts is not None and chat:
        turns = zip(prompts + prompts, responses)
        texts = [render([{"role": "user", "content": p}, {"role": "assistant", "content": r}]) for p, r in turns]
    elif prompts is not None:  # (prompt, response) text pairs: [CLS] p [SEP] r [SEP] for encoders
        texts = prompts + prompts
        second_texts = responses
    else:  # full dialogues (HH-RLHF): the prompt is inside chosen / rejected
        texts = responses
    enc = tokenizer(
        texts,
        second_texts,
        padding=True,
        padding_side="right",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        add_special_tokens=not chat,
    )
    n = len(chosen)
    return {
        key: torch.stack([value[:n], value[n:]], dim=1)  # [N, 2, T]
        for key, value in enc.items()
        if key in ("input_ids", "attention_mask", "token_type_ids")
    }


def encode_policy(tokenizer, prompts, chosen, rejected) -> dict:
    """Prompt (chat template, left-padded) + response + EOS (right-padded), labels -100 off the response [N, 2, T]."""
    if prompts is None or isinstance(chosen[0], list):
        fail("--implicit needs a `prompt` column and plain-text chosen/rejected responses")
    chosen_parts = sft_batch(tokenizer, prompts, chosen)  # (ids, mask, positions, labels), each [N, T_w]
    rejected_parts = sft_batch(tokenizer, prompts, rejected)  # each [N, T_l]
    width = max(chosen_parts[0].shape[1], rejected_parts[0].shape[1])
    names = ("input_ids", "attention_mask", "position_ids", "labels")
    pad_values = (tokenizer.pad_token_id, 0, 0, -100)
    enc = {}
    for j, (name, pad_value) in enumerate(zip(names, pad_values)):
        pair = [
            F.pad(part[j], (0, width - part[j].shape[1]), value=pad_value) for part in (chosen_parts, rejected_parts)
        ]
        enc[name] = torch.stack(pair, dim=1)  # [N, 2, T]
    return enc


def gather_batch(enc: dict, idx: torch.Tensor, swap: torch.Tensor, device) -> dict:
    """Chosen rows then rejected rows [2n, T'] for the pairs `idx` (swap = use the other label), empty columns cut."""
    out = {}
    for key, value in enc.items():
        pair = value[idx]  # [n, 2, T]
        pair = torch.where(swap[idx, None, None], pair.flip(1), pair)  # [n, 2, T]
        out[key] = torch.cat([pair[:, 0], pair[:, 1]])  # [2n, T]
    used = out["attention_mask"].bool().any(0)  # [T] drop columns that are padding in every row
    return {key: value[:, used].to(device) for key, value in out.items()}


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Summed log-prob of the response tokens (labels != -100) per row, [2n]; the log-softmax is taken in fp32 one
    chunk of positions at a time (shared/lm.py), never as a full-vocabulary fp32 copy of the logits."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
    ).logits[:, :-1]  # [2n, T-1, V] in the compute dtype
    labels = batch["labels"][:, 1:]  # [2n, T-1]
    logps = selective_log_softmax(logits, labels.clamp(min=0))  # [2n, T-1] fp32
    return (logps * (labels != -100)).sum(-1)  # [2n]


class Margins:
    """The rewards of chosen and rejected for a batch of pair indices: a reward model's scalar outputs, or (with a
    frozen `reference`, --implicit) DPO's implicit rewards beta (log pi - log ref). Every forward runs under the
    precision's autocast; `chunk` pairs at a time in the no-grad passes."""

    def __init__(self, enc: dict, flipped: torch.Tensor, precision: Precision, reference=None, beta=0.1, chunk=64):
        self.enc = enc
        self.flipped = flipped  # [N] bool: the injected label flips (all False on held-out pairs)
        self.precision = precision
        self.beta = beta
        self.chunk = chunk
        self.device = precision.device
        self.ref_logps = None
        if reference is not None:  # frozen reference: its log-probs once, [N, 2] in observed label order
            reference.to(self.device)  # on the device only for this pass
            no_swap = torch.zeros_like(flipped)
            parts = torch.arange(len(flipped)).split(chunk)
            progress = Progress("reference log-probs", total=len(parts)) if len(parts) >= LONG_PASS_CHUNKS else None
            chunks = []
            with torch.no_grad(), precision.autocast():
                for part in parts:
                    chunks.append(self._logps(reference, part, no_swap))  # [m, 2]
                    if progress is not None:
                        progress.update()
            if progress is not None:
                progress.done()
            reference.to("cpu")
            self.ref_logps = torch.cat(chunks)  # [N, 2]

    def _logps(self, model, idx, swap):
        out = sequence_logps(model, gather_batch(self.enc, idx, swap, self.device)).float()  # [2n]
        return torch.stack(out.chunk(2), dim=1).cpu()  # [n, 2]

    def __call__(self, model, idx: torch.Tensor, clean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        swap = self.flipped if clean else torch.zeros_like(self.flipped)  # clean: undo the injected flips
        batch = gather_batch(self.enc, idx, swap, self.device)
        if self.ref_logps is None:
            with self.precision.autocast():
                rewards = model(**batch).logits[:, 0].float()  # [2n] one forward for chosen and rejected
            chosen_rewards, rejected_rewards = rewards.chunk(2)  # [n], [n]
            return chosen_rewards, rejected_rewards
        with self.precision.autocast():
            policy = sequence_logps(model, batch).float()  # [2n]
        ref = torch.where(swap[idx, None], self.ref_logps[idx].flip(1), self.ref_logps[idx]).to(policy.device)  # [n, 2]
        return implicit_rewards(*policy.chunk(2), ref[:, 0], ref[:, 1], self.beta)  # [n], [n]

    def all(self, model, clean: bool = False, phase: str = "") -> torch.Tensor:
        """m(i) of every pair, no gradients, in eval mode, `chunk` pairs at a time; [N] on the CPU."""
        model.eval()
        margins = score_margins(self, model, torch.arange(len(self.flipped)), clean, self.chunk, phase)  # [N]
        model.train()
        return margins


def evaluate(models, test: Margins) -> dict:
    """True-label accuracy (a tie counts as wrong) of RM1, RM2, their mean and their ensemble (mean margin)."""
    margins_1 = test.all(models[0], phase="evaluation, model 1")  # [N]
    margins_2 = test.all(models[1], phase="evaluation, model 2")  # [N]
    accuracy_1 = (margins_1 > 0).float().mean().item()
    accuracy_2 = (margins_2 > 0).float().mean().item()
    return {
        "rm1": accuracy_1,
        "rm2": accuracy_2,
        "mean": (accuracy_1 + accuracy_2) / 2,
        "ensemble": ((margins_1 + margins_2) > 0).float().mean().item(),
    }


def pick_purity(flipped: torch.Tensor, picked: set[int], clean: bool) -> float:
    """Share of the picked pairs whose label was not flipped (1 for the oracle, which trains on clean labels)."""
    if clean:
        return 1.0
    return 1.0 - flipped[list(picked)].float().mean().item()


def arm_setup(arm: str, curriculum: str) -> tuple[str, str]:
    """(whose pick each model learns from, the arm's curriculum): `all` = every pair of the batch, no selection."""
    exchange = {"single": "all", "oracle": "all", "self-review": "self"}.get(arm, "peer")
    if arm in ("single", "oracle", "coteach"):
        return exchange, "none"
    if arm in ("crm", "self-review"):  # Self-Review: CRM's curriculum, its own pick [rev]
        return exchange, curriculum
    return exchange, arm.split("-", 1)[1]  # crm-<mode>


# ALGO LOGIC: one arm: two models trained side by side, the loop of the paper's method ---------------------------------
def run_arm(
    arm: str,
    start_models,
    train: Margins,
    test: Margins,
    epochs: int,
    ramp_epochs: float,
    args: Args,
    run: RunLogger,
    log_name: str,
    step: int,
    precision: Precision,
):
    """Train two models from `start_models` under one arm; returns (table row, last step, trained models).

    Steps count from `step`; every row is logged as arm `log_name` (its TensorBoard run, arms/<log_name>/). The two
    copies are on `precision.device` while the arm trains and go back to the CPU at its end."""
    exchange, curriculum = arm_setup(arm, args.curriculum)
    clean = arm == "oracle"
    eta = args.eta_assumed if args.eta_assumed is not None else args.noise_rate
    models = [copy.deepcopy(m).to(precision.device).train() for m in start_models]
    optimizers = [
        precision.prepare_optimizer(
            torch.optim.AdamW(m.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
        )
        for m in models
    ]  # two RMs, two optimizers [rev]
    generators = [torch.Generator().manual_seed(args.seed + 1000 * k) for k in (0, 1)]  # each model's batch order
    num_pairs = len(train.flipped)
    batch_size = args.batch_size
    batch_starts = range(0, num_pairs - 1, batch_size)  # a trailing batch of one pair is dropped
    eval_every = args.eval_every or max(1, epochs // EVALS_PER_REGIME)
    history = []
    start_time = time.time()
    for epoch in range(epochs):
        # 2. the epoch order: the curriculum by the mean margin of both models (scored without gradients), or a shuffle
        if curriculum == "none":
            orders = [torch.randperm(num_pairs, generator=g) for g in generators]  # 2 x [N]
        else:
            margins_1 = train.all(models[0], phase=f"curriculum scoring, epoch {epoch + 1}, model 1")  # [N]
            margins_2 = train.all(models[1], phase=f"curriculum scoring, epoch {epoch + 1}, model 2")  # [N]
            orders = [epoch_order(margins_1, margins_2, curriculum, args.n_buckets, g) for g in generators]
        if args.shared_batch:  # both models see the same mini-batches (reconstruction, as in [ct main.py])
            orders[1] = orders[0]
        epoch_totals = torch.zeros(6)  # purity of pick 1, of pick 2, overlap, loss 1, loss 2, batches
        for batch_number, batch_start in enumerate(batch_starts):
            batch_ids = [order[batch_start : batch_start + batch_size] for order in orders]  # 2 x [n_b] dataset ids
            # 3. the keep rate of this step (the ramp moves every optimizer step), then each model scores its own
            #    batch without gradients and picks its k_keep small-loss pairs [rev: online, per batch]
            epochs_done = epoch + batch_number / len(batch_starts)  # t of the ramp
            if exchange == "all":
                keep_rate = 1.0
                picks = [torch.arange(len(ids)) for ids in batch_ids]  # every pair: no selection, no scoring
            else:
                keep_rate = keep_rate_schedule(epochs_done, eta, ramp_epochs, args.keep_schedule)
                margins = [
                    score_margins(train, model, ids, clean, args.micro_batch_size)
                    for model, ids in zip(models, batch_ids)
                ]  # 2 x [n_b], no graph
                losses = [bt_loss(m, torch.zeros_like(m)) for m in margins]  # 2 x [n_b]
                picks = [select_small_loss(loss, keep_rate) for loss in losses]  # 2 x [k] positions in the own batch
            # 4. the exchange [rev; ct loss.py]: model 1 <- S_2, model 2 <- S_1 (peer); own pick (self); every pair
            #    (all). Forward and backward only on those pairs, per micro-batch, then one AdamW step each
            step_losses = []
            step_margins = []
            for k, (model, optimizer) in enumerate(zip(models, optimizers)):
                source = {"peer": 1 - k, "self": k, "all": k}[exchange]
                learn_ids = batch_ids[source][picks[source]]  # [k] dataset indices to learn from
                optimizer.zero_grad(set_to_none=True)
                loss, trained_margins = accumulate_bt_gradients(
                    train, model, learn_ids, clean, args.micro_batch_size, precision
                )
                optimizer.step()
                step_losses.append(loss)
                step_margins.append(trained_margins)

            # TRY NOT TO MODIFY: 5. log the step: losses, keep rate, purity and overlap of the picks, model 1's
            #    training accuracy on its batch (observed labels, before the step)
            seen = margins[0] if exchange != "all" else step_margins[0]  # [n_b]
            picked = [set(ids[p].tolist()) for ids, p in zip(batch_ids, picks)]
            purity = [pick_purity(train.flipped, picked[0], clean), pick_purity(train.flipped, picked[1], clean)]
            overlap = len(picked[0] & picked[1]) / max(len(picked[0]), 1)
            step_metrics = {
                "losses/bt_rm1": step_losses[0],
                "losses/bt_rm2": step_losses[1],
                "charts/keep_rate": keep_rate,
                "charts/purity_pick1": purity[0],
                "charts/purity_pick2": purity[1],
                "charts/pick_overlap": overlap,
                "rewards/accuracies": (seen > 0).float().mean().item(),
                "rewards/margins": seen.mean().item(),
            }
            epoch_totals += torch.tensor([*purity, overlap, *step_losses, 1.0])
            step += 1
            last_of_epoch = batch_number + 1 == len(batch_starts)
            evaluate_now = last_of_epoch and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)
            if evaluate_now:
                # 6. after each (--eval-every) epoch: held-out accuracy against the true labels [rev]
                accuracy = evaluate(models, test)
                history.append((epoch + 1, accuracy))
                step_metrics.update({f"eval/accuracy_{name}": value for name, value in accuracy.items()})
                step_metrics["charts/epoch"] = epoch + 1
            run.log(step, step_metrics, echo=True if evaluate_now else None, arm=log_name)
        epoch_means = (epoch_totals / epoch_totals[5]).tolist()

    # TRY NOT TO MODIFY: the arm's models off the device (the next arm takes its place), its table row
    precision.release()  # the optimizers' state goes with the arm
    del optimizers
    models = [model.to("cpu") for model in models]
    if precision.device.type == "cuda":
        torch.cuda.empty_cache()
    best_epoch, best = max(history, key=lambda entry: entry[1]["mean"])
    final = history[-1][1]
    row = {
        "arm": arm,
        "curriculum": curriculum,
        "acc RM1": final["rm1"],
        "acc RM2": final["rm2"],
        "acc mean": final["mean"],
        "ensemble": final["ensemble"],
        "best mean (epoch)": f"{best['mean']:.3f} ({best_epoch})",
        "purity": (epoch_means[0] + epoch_means[1]) / 2,  # over the last epoch
        "overlap": epoch_means[2] if exchange != "all" else None,
        "time s": f"{time.time() - start_time:.0f}",
    }
    return row, step, models


# TRY NOT TO MODIFY: option checks, model loading ----------------------------------------------------------------------
def check_args(args: Args) -> None:
    """Every bad option fails here, before any data or model is loaded."""
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        fail(f"--learning-rate {args.learning_rate} must be a positive number (toy: 2e-3; real reward models: ~1e-5)")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        fail(f"--weight-decay {args.weight_decay} must be a number >= 0")
    if args.micro_batch_size < 1:
        fail(f"--micro-batch-size {args.micro_batch_size} must be at least 1 (pairs per forward)")
    if args.implicit and not (math.isfinite(args.beta) and args.beta > 0):
        fail(
            f"--beta {args.beta} with --implicit: the implicit reward is beta (log pi - log ref), so beta <= 0 "
            "flips or erases every margin; use a positive beta (e.g. 0.1)"
        )
    if not 0.0 <= args.noise_rate < 0.5:
        fail(f"--noise-rate {args.noise_rate} must be in [0, 0.5): at 0.5 and above flipped pairs are the majority")
    eta = args.eta_assumed if args.eta_assumed is not None else args.noise_rate
    if not 0.0 <= eta < 1.0:
        fail(f"--eta-assumed {eta} gives a keep rate 1 - eta = {1 - eta:g} outside (0, 1]; use a value in [0, 1)")
    if args.batch_size < 2:
        fail(f"--batch-size {args.batch_size}: peer review selects inside a batch, so it needs >= 2 pairs")
    if not (len(args.num_pairs) == len(args.epochs) == len(args.ramp_epochs)) or not args.num_pairs:
        fail(
            f"--num-pairs {args.num_pairs}, --epochs {args.epochs} and --ramp-epochs {args.ramp_epochs} need one "
            f"entry per regime each (e.g. --num-pairs 500 --epochs 40 --ramp-epochs 10)"
        )
    ramps_ok = all(math.isfinite(t) and t >= 0 for t in args.ramp_epochs)
    if min(args.num_pairs) < 2 or min(args.epochs) < 1 or not ramps_ok or args.num_test_pairs < 1:
        fail(
            "--num-pairs needs >= 2, --epochs >= 1, --ramp-epochs >= 0 (in epochs, may be fractional), "
            "--num-test-pairs >= 1"
        )
    if args.n_buckets < 1:
        fail(f"--n-buckets {args.n_buckets} must be >= 1")
    if not args.arms:
        fail("--arms is empty: pick some of single oracle coteach self-review crm crm-abs crm-sort crm-buckets")
    if args.implicit and args.shared_batch and any(a not in ("single", "oracle") for a in args.arms):
        fail(
            "--implicit starts both policies as identical copies (every DPO margin is 0), so with --shared-batch "
            "they would stay identical twins and peer review would equal self review: add --no-shared-batch"
        )


def load_model(args: Args, precision: Precision, seed: int, model_class=AutoModelForSequenceClassification):
    """One model (an RM with a new seeded scalar head, or a policy) and its tokenizer, on the CPU in the trained
    dtype (fp32 master weights): each arm copies it to the device. Fails fast on an unreachable model id."""
    torch.manual_seed(seed)  # a pretrained backbone gets its new head from the global RNG
    # a reward model gets a new scalar head on purpose: CRM fits it from a language model
    head = {"num_labels": 1, "new_head": True} if model_class is AutoModelForSequenceClassification else {}
    tiny = TINY_RM if args.model_name == "tiny" else {}
    model, tokenizer = load_causal_lm(
        args.model_name, "cpu", precision.trained_dtype, seed, model_class, **head, **tiny
    )
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: option checks, seeding, precision
    check_args(args)
    torch.set_num_threads(args.num_threads)
    seed_everything(args.seed)
    precision = setup_precision(args.dtype, args.cuda, args.fp32_master)
    setup = Progress("setup: two models and the held-out pairs", total=3)

    # 1. the two models, seeds seed and seed + 1 (reconstruction: the paper says only "two RMs" [abs]): RMs with
    #    different seeded heads, or (--implicit) two identical policies and one frozen reference, held in the frozen
    #    dtype (the twins part through their own batch orders, --no-shared-batch)
    if args.implicit:
        policy, tokenizer = load_model(args, precision, args.seed, AutoModelForCausalLM)
        setup.update()
        start_models = [policy, copy.deepcopy(policy)]
        reference = copy.deepcopy(policy).to(precision.frozen_dtype).eval().requires_grad_(False)
        setup.update()
    else:
        rm1, tokenizer = load_model(args, precision, args.seed)
        setup.update()
        rm2, _ = load_model(args, precision, args.seed + 1)
        setup.update()
        start_models = [rm1, rm2]
        reference = None
        if all(torch.equal(p, q) for p, q in zip(rm1.parameters(), rm2.parameters())):  # a saved RM, head included
            # identical twins would make peer review = self review: redraw RM2's head (reconstruction)
            head = [m for m in rm2.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1][-1]
            torch.manual_seed(args.seed + 1)
            torch.nn.init.normal_(head.weight, std=getattr(rm2.config, "initializer_range", 0.02))
            print("both RMs loaded identical (the checkpoint has its head): RM2's head redrawn with seed + 1")

    tiny_world = args.dataset_name.startswith("tiny:")
    chat = args.chat == "on" or (args.chat == "auto" and not tiny_world)

    def encode(prompts, chosen, rejected) -> dict:
        if args.implicit:
            return encode_policy(tokenizer, prompts, chosen, rejected)
        return encode_rm(tokenizer, prompts, chosen, rejected, args.max_length, chat)

    # TRY NOT TO MODIFY: held-out pairs with the true labels: the eval split, or a slice held out of the training split
    if tiny_world or args.eval_split:
        test_rows = load_pairs(args, "test" if tiny_world else args.eval_split, args.num_test_pairs, seed=0)
    else:
        rows = load_pairs(args, args.train_split, None, seed=0)  # all pairs, shuffled once
        if len(rows[1]) < args.num_test_pairs + 2:
            fail(
                f"{args.dataset_name!r} has {len(rows[1])} pairs: too few to hold out --num-test-pairs "
                f"{args.num_test_pairs}; lower it or pass --eval-split"
            )
        test_rows = slice_rows(rows, 0, args.num_test_pairs)
        pool = slice_rows(rows, args.num_test_pairs, None)
    chunk = args.micro_batch_size  # pairs per no-grad scoring pass
    no_flips = torch.zeros(len(test_rows[1]), dtype=torch.bool)
    test = Margins(encode(*test_rows), no_flips, precision, reference, args.beta, chunk)
    setup.update()
    setup.done()

    run = RunLogger(
        make_run_name(args.dataset_name.replace(":", "-").replace("/", "-"), args.exp_name, args.seed),
        args,
        track=args.track,
        print_every=PRINT_EVERY,
        show=("eval/accuracy_mean", "losses/bt_rm1", "charts/keep_rate", "charts/purity_pick1"),
    )
    table = []
    trained = {}
    regimes = zip(args.num_pairs, args.epochs, args.ramp_epochs)
    for regime, (num_pairs, epochs, ramp_epochs) in enumerate(regimes, start=1):
        if tiny_world:
            prompts, chosen, rejected = load_pairs(args, args.train_split, num_pairs, seed=args.seed)
        else:
            if len(pool[1]) < num_pairs:
                fail(f"--num-pairs {num_pairs} but {args.dataset_name!r} has {len(pool[1])} training pairs left")
            prompts, chosen, rejected = slice_rows(pool, 0, num_pairs)
        # 1. inject the label noise into the training pairs only: an exact, seeded share is flipped [rev: symmetric
        #    flips at 20% and 40%]; held-out pairs keep their true labels
        generator = torch.Generator().manual_seed(args.seed)
        flipped = torch.zeros(len(chosen), dtype=torch.bool)  # [N]
        flipped[torch.randperm(len(chosen), generator=generator)[: round(args.noise_rate * len(chosen))]] = True
        enc = encode(prompts, chosen, rejected)
        enc = {key: torch.where(flipped[:, None, None], value.flip(1), value) for key, value in enc.items()}  # observed
        train = Margins(enc, flipped, precision, reference, args.beta, chunk)
        regime_name = f"{num_pairs}x{epochs}"
        print(f"regime {num_pairs} pairs x {epochs} epochs: {int(flipped.sum())} flipped", flush=True)
        run.total_steps = epochs * len(range(0, num_pairs - 1, args.batch_size))  # steps of an arm, for the ETA
        # 2-6. each arm trains the two start models afresh; its steps count from 0, logged as arm <regime>/<arm>
        for arm in args.arms:
            log_name = f"{regime_name}/{arm}"
            row, _, models = run_arm(
                arm, start_models, train, test, epochs, ramp_epochs, args, run, log_name, 0, precision
            )
            table.append({"regime": regime_name, **row})
            trained[(num_pairs, arm)] = models  # on the CPU
            if args.save_model:
                for k, model in enumerate(models):
                    model.save_pretrained(run.dir / f"regime{regime}_{arm}_model{k + 1}")
                    tokenizer.save_pretrained(run.dir / f"regime{regime}_{arm}_model{k + 1}")

    # TRY NOT TO MODIFY: the table: held-out true-label accuracy per regime and arm, at the final epoch
    eta = args.eta_assumed if args.eta_assumed is not None else args.noise_rate
    run.finish(
        f"CRM on {args.dataset_name}, noise rate {args.noise_rate} (keep rate 1 - {eta}, {args.keep_schedule}), "
        f"seed {args.seed}, {'CRM-DPO (implicit), ' if args.implicit else ''}held-out accuracy against "
        f"true labels (tie = wrong), final epoch unless marked best:\n\n{format_table(table)}"
    )
    return {"table": table, "run_dir": run.dir, "models": trained, "start_models": start_models}


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
