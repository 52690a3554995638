# arXiv:2505.10597 | README: #crm
"""CRM: Collaborative Reward Modeling (Zhang et al., "Two Minds Better Than One", https://arxiv.org/abs/2505.10597).
Two Bradley-Terry reward models train side by side on noisy preference pairs: in every mini-batch each one picks
the pairs it finds easy (small loss) and its PEER learns from that pick, with an easy-to-hard curriculum per epoch.
No official code is public: every choice marked (reconstructed) in this help is a flag, not the paper's value.

Idea: a noisy (flipped) pair is hard to fit, so its BT loss stays large. Filtering by a model's own loss inherits its
mistakes (the Self-Review ablation); two RMs with different inits make different mistakes, so each filters for the
other (Co-teaching, Han et al. 2018, adapted to BT reward models). The same exchange applies to DPO's implicit reward.

    m_k(i) = r_k(x, y_w) - r_k(x, y_l),   l_k(i) = -log sigmoid(m_k(i)) = softplus(-m_k(i))        k in {1, 2}
    k_keep = max(1, floor(rho * n + 1e-6)),   S_k = the k_keep pairs of the batch with the smallest l_k
    RM1 steps on mean_{i in S_2} l_1(i),   RM2 steps on mean_{i in S_1} l_2(i)                      (peer review)
    rho(t) = 1 - eta * min(t / T_k, 1)  (ramp)  or  1 - eta  (const),   t = epochs done, at each optimizer step
    curriculum, once per epoch: d(i) = (m_1(i) + m_2(i)) / 2, pairs visited easy -> hard
    CRM-DPO: m_k = beta * [(log pi_k(y_w) - log pi_ref(y_w)) - (log pi_k(y_l) - log pi_ref(y_l))]

Implementation details (sources: [abs] arXiv abstract, [rev] the four ICLR 2026 reviews, [ct] Co-teaching,
bhanML/Co-teaching; [card] = rewardlab's method notes, whose unverified items are flags here):
1. BT loss softplus(-m), per pair [abs, rev]. Small loss == large SIGNED margin; never |m| [card 3.1].
2. Peer review per mini-batch, online [rev]: each RM scores the batch WITHOUT gradients, keeps k_keep pairs (stable
   sort: ties keep batch order), and the other RM steps on them; separate AdamW optimizers. Both RMs see the same
   batch (--shared-batch, reconstructed [ct]). The training forward and backward run only on the picked pairs, one
   --micro-batch-size at a time with gradient accumulation (tested: 1 x 8 = 4 x 2); [ct] reuses one forward of the
   whole batch, whose gradient is the same. The loss is a plain mean over the k_keep pairs ([ct]'s code divides by k
   twice; we do not). Arms without selection (single, oracle) train on the whole batch and skip the scoring.
3. Two RMs = same recipe, seeds `seed` and `seed+1` [card 3.2]. Real models: one pretrained backbone, different
   (seeded) heads; a checkpoint that already has a head gets RM2's head redrawn (identical twins would make peer
   review = self review [card 5]); the tiny world: two random tiny Qwen2 RMs.
4. Keep rate rho = 1 - eta_assumed with --keep-schedule ramp (T_k = --ramp-epochs) or const (reconstructed [ct]).
   The paper takes eta as given [rev]; --eta-assumed defaults to the injected --noise-rate. The ramp moves at every
   optimizer step, t = epoch + batch / batches per epoch (the card's "or a step fraction"), so a 1-2 epoch real run
   can ramp over part of an epoch (--ramp-epochs 0.5); [ct] steps it once per epoch and reaches eta one epoch
   earlier (linspace); we follow the card's min(t / T_k, 1).
5. Curriculum [rev 1: "Curriculum Sort", how unspecified]: at each epoch start both RMs score every training pair
   (no grad); `sort` = descending d, `buckets` = that order cut into --n-buckets stages shuffled inside, `abs` =
   descending |d|, `none` = a random shuffle; ties go in random order (reconstructed, all four). DEFAULT `abs`: the
   only curriculum that does not collapse (measured below, 3 seeds). The signed `sort`/`buckets` put the flipped
   pairs (negative d) together in the last batches of every epoch, where a fixed keep rate must keep 60% of a
   mostly-flipped batch: they fall to chance in 2000x10 at eta 0.4. `abs` vs no curriculum is mixed (below).
6. Self-Review ablation [rev]: each RM steps on its OWN pick (same curriculum as CRM). Also run: single (two
   independent RMs on all noisy pairs; their ensemble is the control the reviewers asked for), oracle (clean
   labels), coteach (peer review, no curriculum).
7. RM = AutoModelForSequenceClassification, num_labels=1 (the scalar head reads the last non-pad token for decoder
   models, [CLS] for BERT-like encoders). Inputs are right-padded; chosen and rejected go through ONE forward pass.
   Text: the chat template (user prompt, assistant response) when the tokenizer has one (--chat auto: not on tiny:
   data, 6 tokens "topic t0 a b c d" like the card's toy), else the (prompt, response) text pair. Also supported:
   prompt-less data (HH-RLHF: the dialogue is inside chosen/rejected, scored as plain text) and message lists
   (UltraFeedback-style chosen/rejected = [{role, content}, ...], rendered with the chat template).
8. SIMPLIFICATION: the card's toy RM is a GPT-2 config, 2 layers, d=48; we use the tiny world's Qwen2 (shared/lm.py)
   at the card's width, 2 layers, d=48, 4 heads (64k parameters), AdamW lr 2e-3, wd 0, batch 64 [card 6].
9. Noise: an exact share round(eta*N) of TRAINING pairs gets chosen/rejected swapped (seeded); test pairs keep the
   true labels [rev: symmetric flips, 20% and 40%]. Purity of a pick = share of picked pairs that are not flipped.
10. Metric: held-out accuracy against TRUE labels (RewardBench-style; a tie m = 0 counts as wrong) for RM1, RM2,
   their mean and their ensemble (mean margin), at the final epoch and at the best evaluated epoch.
11. CRM-DPO (--implicit, reconstructed, smoke-tested on the toy only): two copies of the same policy share one frozen
   reference (whose log-probs are computed once per data set; it visits the device only then); sequence log-probs
   are summed over response tokens + EOS (a chunked fp32 log-softmax, shared/lm.py). The implicit rewards
   beta (log pi - log ref) of chosen and rejected go into the same bt_loss. At init
   every margin is 0 and every loss ties, so with a shared batch the twins would stay identical: --implicit needs
   --no-shared-batch (each policy its own batch order; with a curriculum, its own order of tied pairs) [card 5].
   Toy, 500 pairs x 10 epochs, eta 0.4, seed 1: single 0.736, coteach 0.757, self-review 0.661, crm 0.661.
12. Data regimes [card 6]: few pairs / many epochs (500 x 40, T_k = 10: the single RM memorises the flips) and more
   pairs / few epochs (2000 x 10, T_k = 3). No downstream RLHF / win-rate evaluation.
13. Real models (shared/precision.py): the trained models keep fp32 master weights under --dtype bf16 autocast (auto =
   bf16 on a GPU), the frozen reference is held in bf16; scoring, curriculum and evaluation passes run in chunks of
   --micro-batch-size pairs without gradients; --gradient-checkpointing recomputes activations. Only the arm being
   trained is on the device: the start models wait on the CPU, each finished arm goes back there.

Metrics, at every optimizer step (<tag> = <pairs>x<epochs>_<arm>): losses/bt_rm1/<tag>, losses/bt_rm2/<tag> (mean
loss on the pairs each RM stepped on), charts/keep_rate/<tag>, charts/purity_pick1/<tag>, charts/purity_pick2/<tag>,
charts/pick_overlap/<tag> (|S_1 n S_2| / k_keep), rewards/accuracies/<tag> (training pairs, observed labels),
rewards/margins/<tag>; at each evaluation eval/accuracy_rm1|rm2|mean|ensemble/<tag> (true labels). runs/<run>/summary.md
holds the final table; --save-model writes runs/<run>/regime<r>_<arm>_model<1|2>/ (model and tokenizer).

Commands:
    python algos/crm.py                                   # offline toy: 5 arms x 2 regimes, eta 0.4, 2-3 min on CPU
    python algos/crm.py --noise-rate 0.2 --seed 2         # the README table: seeds 1-3 at eta 0.4 and 0.2
    python algos/crm.py --curriculum sort --arms coteach crm self-review   # see the signed sort collapse
    python algos/crm.py --implicit --no-shared-batch --arms single crm    # CRM-DPO smoke run on the toy
    python algos/crm.py --model-name Qwen/Qwen2.5-0.5B-Instruct --dataset-name trl-lib/ultrafeedback_binarized \
        --eval-split test --num-pairs 20000 --epochs 1 --ramp-epochs 0.5 --batch-size 32 --micro-batch-size 8 \
        --lr 1e-5 --arms single crm
    python algos/crm.py --model-name Qwen/Qwen2.5-0.5B-Instruct --dataset-name Anthropic/hh-rlhf --eval-split test \
        --num-pairs 20000 --epochs 2 --ramp-epochs 0.5 --batch-size 32 --micro-batch-size 8 --lr 1e-5 \
        --gradient-checkpointing --drop-identical-pairs

Measured on the toy (seeds 1-3, one seed per invocation; mean over seeds of the final-epoch accuracy, mean of RM1 and
RM2, against true labels; in brackets the best evaluated epoch), with the keep rate ramped per step. CPU, 2 cores
shared with other jobs (load up to 20): 277-294 s of CPU per default run; 270 s wall at load ~1. No GPU run yet.
    eta  regime    single        oracle  coteach  self-review  crm (abs)  crm-sort*  crm-buckets*
    0.4  500x40    0.630 (0.754) 0.974   0.725    0.640        0.698      0.591      0.635
    0.4  2000x10   0.770 (0.826) 1.000   0.785    0.519        0.709      0.534      0.524
    0.2  500x40    0.761 (0.851) 0.974   0.900    0.877        0.906      -          -
    0.2  2000x10   0.932 (0.943) 1.000   0.947    0.870        0.955      -          -
(* measured with the earlier per-epoch ramp.) Peer review beats the single RM's final epoch where it memorises
(500x40: +7 to +15 points), but not its best epoch at eta 0.4; without memorisation (2000x10) coteach gains 1-2 points
and crm at eta 0.4 loses 6. Self-review (own pick, same curriculum) is 3-19 points below CRM in all four settings. The
`abs` curriculum vs none (crm vs coteach): -3 / +1 in 500x40, -8 / +1 in 2000x10 (eta 0.4 / 0.2). Seed sd is 0.5-5
points (sd).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
import tyro
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.data import load_data  # noqa: E402
from shared.lm import load_causal_lm, selective_log_softmax  # noqa: E402
from shared.precision import Precision, setup_precision  # noqa: E402
from shared.runs import RunLogger, fail, format_table, make_run_name, seed_everything  # noqa: E402
from shared.warmstart import sft_batch  # noqa: E402

Arm = Literal["single", "oracle", "coteach", "self-review", "crm", "crm-abs", "crm-sort", "crm-buckets"]
Curriculum = Literal["none", "sort", "buckets", "abs"]
TINY_RM = dict(hidden_size=48, intermediate_size=144)  # the card's toy width (d = 48), tiny Qwen2, 2 layers


@dataclass
class ModelArgs:
    """model and optimizer: the two reward models (or, with --implicit, the two policies)"""

    model_name: str = "tiny"
    """`tiny` (random tiny Qwen2, d=48), a save_pretrained folder or a hub id, loaded with a 1-label reward head"""
    lr: float = 2e-3
    """AdamW learning rate of each model (toy: 2e-3 [card 6]; real RMs: ~1e-5)"""
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


@dataclass
class DataArgs:
    """data: preference pairs (prompt, chosen, rejected) and the injected label noise"""

    dataset_name: str = "tiny:preferences"
    """`tiny:preferences` (hidden true reward), a save_to_disk folder, a json/csv/parquet file or a hub id"""
    train_split: str = "train"
    """split of --dataset-name to train on"""
    eval_split: Optional[str] = None
    """split with held-out pairs; None = hold out --num-test-pairs from the training split"""
    num_pairs: tuple[int, ...] = (500, 2000)
    """training pairs, one entry per regime (pairs with --epochs and --ramp-epochs)"""
    epochs: tuple[int, ...] = (40, 10)
    """epochs, one entry per regime (toy: few pairs x many epochs, then more pairs x few epochs [card 6])"""
    num_test_pairs: int = 1000
    """held-out pairs, true labels, the same for every arm and seed"""
    noise_rate: float = 0.4
    """exact share of TRAINING pairs whose chosen/rejected are swapped, in [0, 0.5) [paper: 0.2 and 0.4]"""
    drop_identical_pairs: bool = False
    """drop pairs whose chosen equals rejected instead of stopping with an error"""


@dataclass
class CrmArgs:
    """CRM: arms (coteach = peer review without curriculum; self-review = each model learns from its own pick), keep
    rate, curriculum"""

    arms: tuple[Arm, ...] = ("single", "oracle", "coteach", "self-review", "crm")
    """each trains 2 models from one start: single, oracle (clean labels), coteach, self-review, crm, crm-<mode>"""
    eta_assumed: Optional[float] = None
    """noise rate the keep rate assumes, rho = 1 - eta_assumed; None = --noise-rate (reconstructed)"""
    keep_schedule: Literal["ramp", "const"] = "ramp"
    """keep rate over epochs: ramp 1 -> 1 - eta over --ramp-epochs, or const 1 - eta (reconstructed)"""
    ramp_epochs: tuple[float, ...] = (10, 3)
    """T_k of the ramp in epochs (fractions allowed; the rate moves every step), one entry per regime (reconstructed)"""
    curriculum: Curriculum = "abs"
    """epoch order of the crm arm by d = mean margin: abs (|d| desc), sort (d desc), buckets, none (reconstructed)"""
    n_buckets: int = 4
    """stages of --curriculum buckets (the sort order cut into equal parts, shuffled inside)"""
    shared_batch: bool = True
    """both models see the same mini-batch (reconstructed, Co-teaching); off = each its own batch order"""


@dataclass
class DpoArgs:
    """CRM-DPO: the implicit-reward extension (reconstructed; a smoke-tested path on the toy)"""

    implicit: bool = False
    """train two policies with a shared frozen reference; the DPO margin replaces the RM margin"""
    beta: float = 0.1
    """DPO beta of the implicit margin"""


@dataclass
class Args:
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
    threads: int = 1
    """torch CPU threads (1 is fastest for the tiny models)"""
    eval_every: int = 0
    """evaluate on the held-out pairs every N epochs and after the last; 0 = about 8 times per regime"""
    track: bool = False
    """also log to Weights & Biases"""
    save_model: bool = False
    """save both models of every arm (save_pretrained, with the tokenizer) as runs/<run>/regime<r>_<arm>_model<k>/"""
    model: tyro.conf.OmitArgPrefixes[ModelArgs] = field(default_factory=ModelArgs)
    data: tyro.conf.OmitArgPrefixes[DataArgs] = field(default_factory=DataArgs)
    crm: tyro.conf.OmitArgPrefixes[CrmArgs] = field(default_factory=CrmArgs)
    dpo: tyro.conf.OmitArgPrefixes[DpoArgs] = field(default_factory=DpoArgs)


# ALGO LOGIC: the maths, pure functions
def bt_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry NLL per pair: -log sigmoid(r_w - r_l) = softplus(-(r_w - r_l)), shape [B]."""
    if chosen_rewards.shape != rejected_rewards.shape:
        fail(f"bt_loss: chosen {tuple(chosen_rewards.shape)} and rejected {tuple(rejected_rewards.shape)} differ")
    return F.softplus(-(chosen_rewards.float() - rejected_rewards.float()))  # [B]


def keep_count(keep_rate: float, batch_size: int) -> int:
    """k = max(1, floor(rho * n + 1e-6)): the 1e-6 saves e.g. 0.64 * 50 = 31.999999999999996 from becoming 31."""
    if not 0.0 < keep_rate <= 1.0:
        fail(f"keep rate {keep_rate} is outside (0, 1]: lower --eta-assumed (keep rate = 1 - eta_assumed)")
    if batch_size < 1:
        fail(f"batch of {batch_size} pairs: nothing to select from")
    return max(1, math.floor(keep_rate * batch_size + 1e-6))


def select_small_loss(losses: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """Indices of the k pairs with the smallest loss, smallest first; a stable sort keeps batch order on ties."""
    order = torch.argsort(losses.detach(), stable=True)  # [n]
    return order[: keep_count(keep_rate, losses.numel())]  # [k]


def keep_rate_schedule(progress: float, noise_rate: float, ramp_epochs: float, schedule: str = "ramp") -> float:
    """rho(t) = 1 - eta * min(t / T_k, 1) (ramp) or 1 - eta (const); ramp_epochs 0 = const.

    t = `progress`, the epochs done before this optimizer step (epoch + batch / batches per epoch: the ramp moves at
    every step; an integer t gives the per-epoch ramp of Co-teaching)."""
    if not 0.0 <= noise_rate < 1.0:
        fail(f"assumed noise rate {noise_rate} gives a keep rate outside (0, 1]: use a value in [0, 1)")
    if schedule == "const" or ramp_epochs <= 0:
        return 1.0 - noise_rate
    if schedule != "ramp":
        fail(f"keep schedule {schedule!r} is not one of ramp, const")
    return 1.0 - noise_rate * min(progress / ramp_epochs, 1.0)


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


def score_margins(pairs, model, pair_ids: torch.Tensor, clean: bool, micro_batch_size: int) -> torch.Tensor:
    """m(i) = r(y_w) - r(y_l) of the pairs `pair_ids` under `model`, WITHOUT gradients (the small-loss selection
    only reads them), one micro-batch of pairs at a time; [n] fp32 on the CPU."""
    margins = []
    with torch.no_grad():
        for part in pair_ids.split(micro_batch_size):
            chosen_rewards, rejected_rewards = pairs(model, part, clean)  # [m], [m]
            margins.append((chosen_rewards - rejected_rewards).float().cpu())  # [m]
    return torch.cat(margins)  # [n]


def accumulate_bt_gradients(pairs, model, pair_ids: torch.Tensor, clean: bool, micro_batch_size: int, precision):
    """Forward and backward of mean_{i in pair_ids} bt_loss(i), one micro-batch of pairs at a time: each micro-batch
    adds its summed loss / n, so the accumulated gradient is the gradient of the mean over all n pairs.

    Returns the mean loss (a float) and the margins of the training forward ([n], detached, on the CPU)."""
    total_loss, margins = 0.0, []
    for part in pair_ids.split(micro_batch_size):
        chosen_rewards, rejected_rewards = pairs(model, part, clean)  # [m], [m]
        loss = bt_loss(chosen_rewards, rejected_rewards).sum() / len(pair_ids)  # this micro-batch's share
        precision.backward(loss)
        total_loss += loss.item()
        margins.append((chosen_rewards - rejected_rewards).detach().float().cpu())  # [m]
    return total_loss, torch.cat(margins)  # float, [n]


# Data: pairs -> tensors [N, 2, T] (index 1 of dim 1: 0 = observed chosen, 1 = observed rejected)
def load_pairs(args: Args, split: str, n: int | None, seed: int):
    """Rows of (prompt or None, chosen, rejected) from the tiny world or a real dataset, shuffled, checked."""
    name = args.data.dataset_name
    data = load_data(name, split, ["chosen", "rejected"], num_examples=n, seed=seed, shuffle=True)
    prompts = data["prompt"] if "prompt" in data.column_names else None
    chosen, rejected = list(data["chosen"]), list(data["rejected"])
    same = [i for i in range(len(chosen)) if chosen[i] == rejected[i]]
    if same and not args.data.drop_identical_pairs:
        fail(
            f"{len(same)} pair(s) of {name!r} ({split}) have chosen == rejected (first: row {same[0]}): they carry "
            f"no preference. Clean the data or pass --drop-identical-pairs."
        )
    keep = sorted(set(range(len(chosen))) - set(same))
    if len(keep) < 2:
        fail(f"{name!r} ({split}) has {len(keep)} usable pair(s); need at least 2")
    pick = lambda xs: None if xs is None else [xs[i] for i in keep]  # noqa: E731
    return pick(prompts), pick(chosen), pick(rejected)


def encode_rm(tokenizer, prompts, chosen, rejected, max_length: int, chat: bool = True) -> dict:
    """Right-padded ids / mask (and token types) [N, 2, T] for a sequence-classification RM."""
    responses, pairs, chat = chosen + rejected, None, chat and tokenizer.chat_template is not None
    template = lambda messages: tokenizer.apply_chat_template(messages, tokenize=False)  # noqa: E731
    if isinstance(responses[0], list):  # message lists: the conversation already holds the prompt
        texts, chat = [template(m) for m in responses], True
    elif prompts is not None and chat:
        turns = zip(prompts + prompts, responses)
        texts = [template([{"role": "user", "content": p}, {"role": "assistant", "content": r}]) for p, r in turns]
    else:  # (prompt, response) text pairs for encoders ([CLS] p [SEP] r [SEP]), or full dialogues (HH-RLHF)
        texts, pairs = (prompts + prompts, responses) if prompts is not None else (responses, None)
    enc = tokenizer(
        texts,
        pairs,
        padding=True,
        padding_side="right",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        add_special_tokens=not chat,
    )
    n = len(chosen)
    return {
        k: torch.stack([v[:n], v[n:]], dim=1)
        for k, v in enc.items()
        if k in ("input_ids", "attention_mask", "token_type_ids")
    }


def encode_policy(tokenizer, prompts, chosen, rejected) -> dict:
    """Prompt (chat template, left-padded) + response + EOS (right-padded), labels -100 off the response [N, 2, T]."""
    if prompts is None or isinstance(chosen[0], list):
        fail("--implicit needs a `prompt` column and plain-text chosen/rejected responses")
    parts = [sft_batch(tokenizer, prompts, responses) for responses in (chosen, rejected)]
    width = max(p[0].shape[1] for p in parts)
    pad = lambda t, value: F.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
    names, values = ("input_ids", "attention_mask", "position_ids", "labels"), (tokenizer.pad_token_id, 0, 0, -100)
    return {
        k: torch.stack([pad(parts[0][j], v), pad(parts[1][j], v)], dim=1) for j, (k, v) in enumerate(zip(names, values))
    }


def gather_batch(enc: dict, idx: torch.Tensor, swap: torch.Tensor, device) -> dict:
    """Chosen rows then rejected rows [2n, T'] for the pairs `idx` (swap = use the other label), empty columns cut."""
    out = {}
    for key, value in enc.items():
        pair = value[idx]  # [n, 2, T]
        pair = torch.where(swap[idx, None, None], pair.flip(1), pair)  # [n, 2, T]
        out[key] = torch.cat([pair[:, 0], pair[:, 1]])  # [2n, T]
    used = out["attention_mask"].bool().any(0)  # [T] drop columns that are padding in every row
    return {k: v[:, used].to(device) for k, v in out.items()}


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
        self.enc, self.flipped, self.precision, self.beta, self.chunk = enc, flipped, precision, beta, chunk
        self.device = precision.device
        self.ref_logps = None
        if reference is not None:  # frozen reference: its log-probs once, [N, 2] in observed label order
            reference.to(self.device)  # on the device only for this pass
            no_swap = torch.zeros_like(flipped)
            with torch.no_grad(), precision.autocast():
                chunks = [self._logps(reference, part, no_swap) for part in torch.arange(len(flipped)).split(chunk)]
            reference.to("cpu")
            self.ref_logps = torch.cat(chunks)

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
        ref = torch.where(swap[idx, None], self.ref_logps[idx].flip(1), self.ref_logps[idx]).to(policy.device)
        return implicit_rewards(*policy.chunk(2), ref[:, 0], ref[:, 1], self.beta)  # [n], [n]

    def all(self, model, clean: bool = False) -> torch.Tensor:
        """m(i) of every pair, no gradients, in eval mode, `chunk` pairs at a time; [N] on the CPU."""
        model.eval()
        margins = score_margins(self, model, torch.arange(len(self.flipped)), clean, self.chunk)  # [N]
        model.train()
        return margins


def evaluate(models, test: Margins) -> dict:
    """True-label accuracy (a tie counts as wrong) of RM1, RM2, their mean and their ensemble."""
    m1, m2 = (test.all(model) for model in models)  # [N], [N]
    acc1, acc2 = (m1 > 0).float().mean().item(), (m2 > 0).float().mean().item()
    return {"rm1": acc1, "rm2": acc2, "mean": (acc1 + acc2) / 2, "ensemble": ((m1 + m2) > 0).float().mean().item()}


def run_arm(
    arm: str,
    start_models,
    train: Margins,
    test: Margins,
    epochs: int,
    ramp_epochs: float,
    args: Args,
    run: RunLogger,
    tag: str,
    step: int,
    precision: Precision,
):
    """Train two models from `start_models` under one arm; returns (table row, last global step, trained models).

    The two copies are on `precision.device` while the arm trains and go back to the CPU at its end."""
    c = args.crm
    micro_batch_size = args.model.micro_batch_size
    exchange = {"single": "all", "oracle": "all", "self-review": "self"}.get(arm, "peer")
    curriculum = (
        "none"
        if arm in ("single", "oracle", "coteach")
        else c.curriculum
        if arm in ("crm", "self-review")
        else arm.split("-", 1)[1]
    )
    clean = arm == "oracle"
    eta = c.eta_assumed if c.eta_assumed is not None else args.data.noise_rate
    models = [copy.deepcopy(m).to(precision.device).train() for m in start_models]
    optimizers = [
        precision.prepare_optimizer(
            torch.optim.AdamW(m.parameters(), lr=args.model.lr, weight_decay=args.model.weight_decay)
        )
        for m in models
    ]
    generators = [torch.Generator().manual_seed(args.seed + 1000 * k) for k in (0, 1)]
    n, bs = len(train.flipped), args.model.batch_size
    batch_starts = range(0, n - 1, bs)  # a trailing batch of one pair is dropped
    eval_every = args.eval_every or max(1, epochs // 8)
    history, start = [], time.time()
    for epoch in range(epochs):
        # 2. epoch order: curriculum by the mean margin of both models, or a shuffle
        if curriculum == "none":
            orders = [torch.randperm(n, generator=g) for g in generators]
        else:  # ties (e.g. every DPO margin is 0 at init) are broken by each model's own shuffle
            epoch_margins = [train.all(m) for m in models]  # 2 x [N]
            orders = []
            for g in generators:
                perm = torch.randperm(n, generator=g)  # [N]
                order = perm[
                    curriculum_order(
                        epoch_margins[0][perm], epoch_margins[1][perm], curriculum.replace("buckets", "sort")
                    )
                ]
                orders.append(
                    torch.tensor(bucket_order(order.tolist(), c.n_buckets, g)) if curriculum == "buckets" else order
                )
        if c.shared_batch:
            orders[1] = orders[0]
        epoch_sums = torch.zeros(6)  # purity1, purity2, overlap, loss1, loss2, batches
        for batch_number, lo in enumerate(batch_starts):
            batch_ids = [order[lo : lo + bs] for order in orders]  # 2 x [n_b] dataset indices
            # 3. the keep rate of this step (the ramp moves every optimizer step), then each model scores its own
            #    batch without gradients and picks its k_keep small-loss pairs
            progress = epoch + batch_number / len(batch_starts)  # epochs done, t of the ramp
            rho = 1.0 if exchange == "all" else keep_rate_schedule(progress, eta, ramp_epochs, c.keep_schedule)
            if exchange == "all":
                picks = [torch.arange(len(ids)) for ids in batch_ids]  # every pair: no selection, no scoring
            else:
                margins = [
                    score_margins(train, model, ids, clean, micro_batch_size) for model, ids in zip(models, batch_ids)
                ]  # 2 x [n_b], no graph
                losses = [bt_loss(m, torch.zeros_like(m)) for m in margins]  # 2 x [n_b]
                picks = [select_small_loss(loss, rho) for loss in losses]  # 2 x [k] positions in the own batch
            # 4. exchange: model 1 <- S_2, model 2 <- S_1 (peer); own pick (self); every pair (all). Forward and
            #    backward only on those pairs, per micro-batch, then one AdamW step
            step_losses, step_margins = [], []
            for k, (model, optimizer) in enumerate(zip(models, optimizers)):
                source = {"peer": 1 - k, "self": k, "all": k}[exchange]
                learn_ids = batch_ids[source][picks[source]]  # [k] dataset indices to learn from
                optimizer.zero_grad(set_to_none=True)
                loss, trained_margins = accumulate_bt_gradients(
                    train, model, learn_ids, clean, micro_batch_size, precision
                )
                optimizer.step()
                step_losses.append(loss)
                step_margins.append(trained_margins)
            # 5. log the step: losses, keep rate, purity and overlap of the picks, training accuracy of model 1
            seen = margins[0] if exchange != "all" else step_margins[0]  # [n_b] model 1 on its batch, pre-step
            picked = [set(ids[p].tolist()) for ids, p in zip(batch_ids, picks)]
            clean_of = lambda s: 1.0 - train.flipped[list(s)].float().mean().item() if not clean else 1.0  # noqa
            purity = [clean_of(picked[0]), clean_of(picked[1])]
            overlap = len(picked[0] & picked[1]) / max(len(picked[0]), 1)
            step_metrics = {
                f"losses/bt_rm1/{tag}": step_losses[0],
                f"losses/bt_rm2/{tag}": step_losses[1],
                f"charts/keep_rate/{tag}": rho,
                f"charts/purity_pick1/{tag}": purity[0],
                f"charts/purity_pick2/{tag}": purity[1],
                f"charts/pick_overlap/{tag}": overlap,
                f"rewards/accuracies/{tag}": (seen > 0).float().mean().item(),
                f"rewards/margins/{tag}": seen.mean().item(),
            }
            epoch_sums += torch.tensor([*purity, overlap, *step_losses, 1.0])
            step += 1
            last_of_epoch = batch_number + 1 == len(batch_starts)
            evaluate_now = last_of_epoch and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)
            if evaluate_now:
                # 6. after each (--eval-every) epoch: held-out accuracy against the true labels
                acc = evaluate(models, test)
                history.append((epoch + 1, acc))
                step_metrics.update({f"eval/accuracy_{k}/{tag}": v for k, v in acc.items()})
                step_metrics["charts/epoch"] = epoch + 1
            run.log(step, step_metrics, echo=True if evaluate_now else None)
        epoch_mean = (epoch_sums / epoch_sums[5]).tolist()
    precision.release()  # the optimizers' state goes with the arm
    del optimizers
    models = [model.to("cpu") for model in models]  # off the device: the next arm takes its place
    if precision.device.type == "cuda":
        torch.cuda.empty_cache()
    best_epoch, best = max(history, key=lambda h: h[1]["mean"])
    final = history[-1][1]
    row = {
        "regime": tag.rsplit("_", 1)[0],
        "arm": arm,
        "curriculum": curriculum,
        "acc RM1": final["rm1"],
        "acc RM2": final["rm2"],
        "acc mean": final["mean"],
        "ensemble": final["ensemble"],
        "best mean (epoch)": f"{best['mean']:.3f} ({best_epoch})",
        "purity": (epoch_mean[0] + epoch_mean[1]) / 2,
        "overlap": epoch_mean[2] if exchange != "all" else None,
        "time s": f"{time.time() - start:.0f}",
    }
    return row, step, models


def check_args(args: Args) -> None:
    """Every bad option fails here, before any data or model is loaded."""
    d, c, m = args.data, args.crm, args.model
    if not (math.isfinite(m.lr) and m.lr > 0):
        fail(f"--lr {m.lr} must be a positive number (toy: 2e-3; real reward models: ~1e-5)")
    if not (math.isfinite(m.weight_decay) and m.weight_decay >= 0):
        fail(f"--weight-decay {m.weight_decay} must be a number >= 0")
    if m.micro_batch_size < 1:
        fail(f"--micro-batch-size {m.micro_batch_size} must be at least 1 (pairs per forward)")
    if args.dpo.implicit and not (math.isfinite(args.dpo.beta) and args.dpo.beta > 0):
        fail(
            f"--beta {args.dpo.beta} with --implicit: the implicit reward is beta (log pi - log ref), so beta <= 0 "
            "flips or erases every margin; use a positive beta (e.g. 0.1)"
        )
    if not 0.0 <= d.noise_rate < 0.5:
        fail(f"--noise-rate {d.noise_rate} must be in [0, 0.5): at 0.5 and above flipped pairs are the majority")
    eta = c.eta_assumed if c.eta_assumed is not None else d.noise_rate
    if not 0.0 <= eta < 1.0:
        fail(f"--eta-assumed {eta} gives a keep rate 1 - eta = {1 - eta:g} outside (0, 1]; use a value in [0, 1)")
    if args.model.batch_size < 2:
        fail(f"--batch-size {args.model.batch_size}: peer review selects inside a batch, so it needs >= 2 pairs")
    if not (len(d.num_pairs) == len(d.epochs) == len(c.ramp_epochs)) or not d.num_pairs:
        fail(
            f"--num-pairs {d.num_pairs}, --epochs {d.epochs} and --ramp-epochs {c.ramp_epochs} need one entry per "
            f"regime each (e.g. --num-pairs 500 --epochs 40 --ramp-epochs 10)"
        )
    ramps_ok = all(math.isfinite(t) and t >= 0 for t in c.ramp_epochs)
    if min(d.num_pairs) < 2 or min(d.epochs) < 1 or not ramps_ok or d.num_test_pairs < 1:
        fail(
            "--num-pairs needs >= 2, --epochs >= 1, --ramp-epochs >= 0 (in epochs, may be fractional), "
            "--num-test-pairs >= 1"
        )
    if c.n_buckets < 1:
        fail(f"--n-buckets {c.n_buckets} must be >= 1")
    if not args.crm.arms:
        fail("--arms is empty: pick some of single oracle coteach self-review crm crm-abs crm-sort crm-buckets")
    if args.dpo.implicit and c.shared_batch and any(a not in ("single", "oracle") for a in c.arms):
        fail(
            "--implicit starts both policies as identical copies (every DPO margin is 0), so with --shared-batch "
            "they would stay identical twins and peer review would equal self review: add --no-shared-batch"
        )


def main(args: Args) -> dict:
    check_args(args)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    precision = setup_precision(args.dtype, args.cuda, args.fp32_master)
    d = args.data

    # 1. the two models (RM heads or policies), seeds seed and seed + 1; fails fast on an unreachable model id. They
    #    wait on the CPU in fp32 (the master weights); each arm copies them to the device
    def load(seed: int, model_class=AutoModelForSequenceClassification):
        torch.manual_seed(seed)  # a pretrained backbone gets its new head from the global RNG
        # a reward model gets a new scalar head on purpose: CRM fits it from a language model
        kwargs = {"num_labels": 1, "new_head": True} if model_class is AutoModelForSequenceClassification else {}
        tiny = TINY_RM if args.model.model_name == "tiny" else {}
        model, tokenizer = load_causal_lm(
            args.model.model_name, "cpu", precision.trained_dtype, seed, model_class, **kwargs, **tiny
        )
        if args.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model, tokenizer

    if args.dpo.implicit:  # two identical policies and one frozen reference (card 3.5), held in the frozen dtype
        (policy, tokenizer), reference = load(args.seed, AutoModelForCausalLM), None
        start_models = [policy, copy.deepcopy(policy)]
        reference = copy.deepcopy(policy).to(precision.frozen_dtype).eval().requires_grad_(False)
    else:
        (rm1, tokenizer), (rm2, _) = load(args.seed), load(args.seed + 1)
        start_models, reference = [rm1, rm2], None
        if all(torch.equal(p, q) for p, q in zip(rm1.parameters(), rm2.parameters())):  # a saved RM, head included
            head = [m for m in rm2.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1][-1]
            torch.manual_seed(args.seed + 1)
            torch.nn.init.normal_(head.weight, std=getattr(rm2.config, "initializer_range", 0.02))
            print("both RMs loaded identical (the checkpoint has its head): RM2's head redrawn with seed + 1")

    def encode(prompts, chosen, rejected):
        return (
            encode_policy(tokenizer, prompts, chosen, rejected)
            if args.dpo.implicit
            else encode_rm(tokenizer, prompts, chosen, rejected, args.model.max_length, chat)
        )

    # held-out pairs with the true labels: the eval split, or a slice held out of the training split
    tiny_world = d.dataset_name.startswith("tiny:")
    chat = args.model.chat == "on" or (args.model.chat == "auto" and not tiny_world)
    if tiny_world or d.eval_split:
        test_rows = load_pairs(args, "test" if tiny_world else d.eval_split, d.num_test_pairs, seed=0)
    else:
        rows = load_pairs(args, d.train_split, None, seed=0)  # all pairs, shuffled once
        if len(rows[1]) < d.num_test_pairs + 2:
            fail(
                f"{d.dataset_name!r} has {len(rows[1])} pairs: too few to hold out --num-test-pairs "
                f"{d.num_test_pairs}; lower it or pass --eval-split"
            )
        cut = lambda xs, sl: None if xs is None else xs[sl]  # noqa: E731
        test_rows = tuple(cut(xs, slice(0, d.num_test_pairs)) for xs in rows)
        pool = tuple(cut(xs, slice(d.num_test_pairs, None)) for xs in rows)
    chunk = args.model.micro_batch_size  # pairs per no-grad scoring pass
    no_flips = torch.zeros(len(test_rows[1]), dtype=torch.bool)
    test = Margins(encode(*test_rows), no_flips, precision, reference, args.dpo.beta, chunk)

    run = RunLogger(
        make_run_name(d.dataset_name.replace(":", "-").replace("/", "-"), args.exp_name, args.seed),
        args,
        track=args.track,
        print_every=1000,  # a line at each evaluation (and every 30 s on slow real models)
    )
    table, step, trained = [], 0, {}
    for regime, (n_pairs, epochs, ramp) in enumerate(zip(d.num_pairs, d.epochs, args.crm.ramp_epochs), start=1):
        if tiny_world:
            prompts, chosen, rejected = load_pairs(args, d.train_split, n_pairs, seed=args.seed)
        else:
            if len(pool[1]) < n_pairs:
                fail(f"--num-pairs {n_pairs} but {d.dataset_name!r} has {len(pool[1])} training pairs left")
            prompts, chosen, rejected = (None if xs is None else xs[:n_pairs] for xs in pool)
        # inject the label noise: an exact, seeded share of the training pairs is flipped
        g = torch.Generator().manual_seed(args.seed)
        flipped = torch.zeros(len(chosen), dtype=torch.bool)
        flipped[torch.randperm(len(chosen), generator=g)[: round(d.noise_rate * len(chosen))]] = True
        enc = encode(prompts, chosen, rejected)
        enc = {k: torch.where(flipped[:, None, None], v.flip(1), v) for k, v in enc.items()}  # observed labels
        train = Margins(enc, flipped, precision, reference, args.dpo.beta, chunk)
        print(f"regime {n_pairs} pairs x {epochs} epochs: {int(flipped.sum())} flipped", flush=True)
        for arm in args.crm.arms:
            tag = f"{n_pairs}x{epochs}_{arm}"
            row, step, models = run_arm(arm, start_models, train, test, epochs, ramp, args, run, tag, step, precision)
            table.append(row)
            trained[(n_pairs, arm)] = models  # on the CPU
            if args.save_model:
                for k, model in enumerate(models):
                    model.save_pretrained(run.dir / f"regime{regime}_{arm}_model{k + 1}")
                    tokenizer.save_pretrained(run.dir / f"regime{regime}_{arm}_model{k + 1}")
    eta = args.crm.eta_assumed if args.crm.eta_assumed is not None else d.noise_rate
    run.finish(
        f"CRM on {d.dataset_name}, noise rate {d.noise_rate} (keep rate 1 - {eta}, {args.crm.keep_schedule}), "
        f"seed {args.seed}, {'CRM-DPO (implicit), ' if args.dpo.implicit else ''}held-out accuracy against "
        f"true labels (tie = wrong), final epoch unless marked best:\n\n{format_table(table)}"
    )
    return {"table": table, "run_dir": run.dir, "models": trained, "start_models": start_models}


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n\n")[0]))
