# arXiv:2309.06256 (AMA / HMA) | docs: docs/ama.md (details, deviations, metrics, results, reproducing the paper)
"""AMA: adaptive (heterogeneous) layer-wise model averaging against the alignment tax of RLHF (Lin et al.,
"Mitigating the Alignment Tax of RLHF", EMNLP 2024, https://arxiv.org/abs/2309.06256; code
https://github.com/avalonstrel/Mitigating-the-Alignment-Tax-of-RLHF). Averaging the weights of the pre-RLHF model
theta0 and the post-RLHF model theta trades reward against the abilities RLHF erodes; AMA gives each of K layer
groups its own ratio at a fixed mean and tunes the K ratios on the likelihood of theta's high-reward samples. The
offline toy (theta0, RSF, plain and partwise averaging, AMA; a tiny Qwen2 on 2 CPU cores): python algos/ama.py

Idea: RLHF raises the reward but erodes earlier abilities (the alignment tax). Plain interpolation of theta0 and
theta traces a good reward-tax front, and layer groups trade off differently, so AMA fixes the mean ratio (a proxy
for a fixed tax) and moves the K group ratios to raise a reward proxy; it uses no data of the protected abilities.
Ratio convention (the official code's; the paper writes alpha = 1 - gamma on theta): gamma is the weight on the
PRE-RLHF model theta0, so gamma = 1 is theta0, gamma = 0 is theta, and the recommended 0.2 is 80 % RLHF weights.

    W_m(gamma) = gamma_k(m) W0_m + (1 - gamma_k(m)) W1_m                 every nn.Linear m of layer group k(m)
    gamma_k = gbar K (sigmoid(s_k) + eps) / sum_j (sigmoid(s_j) + eps)    mean_k gamma_k = gbar; init s = logit(gbar)
    max_s  1/|D| sum_(x,a) in D log pi_theta(gamma(s))(a | x) - lambda sum_m w(l_m) |gamma_k(m) - gbar|
    w(l) = 25 / (|l - c| + 1),  c = L // 2                                 (code: c = 13 hard-coded for 26 layers)

Source tags on the lines that implement a detail: [paper <where>] = arXiv:2309.06256, the EMNLP 2024 text;
[code <file>] = avalonstrel/Mitigating-the-Alignment-Tax-of-RLHF@40165e6 <file>; "reconstruction" where neither
says (our choice). Arms: ma (every tensor at one gamma, the --pre-weights grid), partwise (one third of the layers at
r, the rest theta), ama (K ratios trained at each --mean-pre-weights gbar; ama_init = their start, every Linear at
gbar). On the toy theta = RSF(theta0) (best-of-n, SFT on the best); on real models --pre-model and --post-model.

Commands:
    python algos/ama.py                                            # offline toy: theta0, RSF, D, MA, partwise, AMA
    python algos/ama.py --seed 2 --groups layerwise
    python algos/ama.py --pre-model HuggingFaceH4/mistral-7b-sft-beta --post-model HuggingFaceH4/zephyr-7b-beta \\
        --dataset-name prompts_folder --reward-model RM_folder --tax-dataset-name qa_folder --mean-pre-weights 0.2 \\
        --num-d-samples 4000 --num-d-keep 2000 --max-new-tokens 256 --batch-size 4 --micro-batch-size 1 \\
        --gradient-checkpointing --generation-batch-size 32 --num-eval 200 --arms ma ama --groups block3
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import shared.warmstart
from shared.data import load_data
from shared.lm import build_tokenizer, check_hub_id, load_causal_lm, sample, tiny_config
from shared.runs import (
    Progress,
    RunLogger,
    fail,
    format_table,
    make_run_name,
    parse_args,
    pick_device,
    pick_dtype,
    seed_everything,
)
from shared.tasks import Preferences, StringOps
from shared.warmstart import sft_batch, sft_loss

ABILITY = dict(ops=("copy", "reverse"), min_len=3, max_len=5)  # the toy's protected ability (string_ops)
NUM_TOPICS = 4  # preference prompts `topic t0` .. `topic t3`
RECIPE_VERSION = 2  # part of theta0's cache key: raise it when the toy's theta0 recipe changes
RSF_EVAL_PROMPTS = 128  # prompts of the reward and tax evaluation after each RSF iteration (a cheap curve)
MAX_GRAD_NORM = 1.0  # gradient-norm clip of theta0's SFT and of RSF's SFT (reconstruction)
THETA0_WARMUP_STEPS = 50  # linear warm-up of theta0's mixture SFT, then linear decay to 0 (reconstruction)
MAX_ABILITY_ROWS = 20000  # the ability rows theta0's SFT draws its batches from
REWARD_MODEL_BATCH = 16  # rows per reward-model forward on the real path
D_PROMPT_SEED_OFFSET = 1  # seed + 1 draws D's prompts, seed + 2 its samples: apart from RSF's own draws
D_SAMPLE_SEED_OFFSET = 2
EVAL_SEED_OFFSET = 777  # common random numbers: every evaluated arm draws the same uniforms
FULL_NLL_ORDER_SEED = 0  # the (irrelevant) order of D in the full-D NLL
COLUMNS = ("gamma (pre weight)", "MA reward", "MA tax acc", "AMA@init reward", "AMA@init acc", "AMA reward")
COLUMNS += ("AMA tax acc", "AMA gamma_k", "D NLL init -> AMA")
SHOWN = ("reward", "eval/reward", "eval/tax_accuracy", "losses/proxy_nll")  # the progress line's metrics


@dataclass
class Args:
    exp_name: str = "ama"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of theta0, RSF, D, AMA and the evaluation samples"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest for the tiny model)"""
    track: bool = False
    """also log to Weights & Biases"""
    save_model: bool = False
    """save theta (toy) and the AMA merge at each mean pre weight to the run folder"""

    pre_model: Optional[str] = None
    """theta0, the pre-RLHF model (hub id or save_pretrained folder); with --post-model skips the toy's SFT and RSF"""
    post_model: Optional[str] = None
    """theta, the post-RLHF model (same architecture and shapes as --pre-model)"""
    dataset_name: str = "tiny:preferences"
    """RLHF prompts (a `prompt` column) for RSF and D; tiny:preferences has the known true reward"""
    reward_model: Optional[str] = None
    """sequence-classification reward model that scores D and the reward (needed unless tiny:preferences)"""
    tax_dataset_name: str = "tiny:string_ops"
    """held-out ability data (prompt/reference), greedy exact match = the tax metric; never seen by AMA"""
    chat: bool = True
    """wrap prompts in the tokenizer's chat template"""
    cache_dir: Optional[str] = None
    """where theta0 of the toy is cached (default: shared.warmstart.CACHE_DIR)"""

    num_layers: int = 6
    """toy: decoder layers of the tiny Qwen2"""
    hidden_size: int = 64
    """toy: hidden size of the tiny Qwen2"""
    sft_steps: int = 800
    """toy: mixture SFT steps of theta0 (ability + alignment prompts)"""
    sft_batch_size: int = 64
    """toy: mixture SFT batch size"""
    sft_learning_rate: float = 3e-3
    """toy: mixture SFT learning rate of theta0 (AdamW, warm-up then linear decay; > 0)"""
    ability_share: float = 0.5
    """toy: share of ability (string_ops) rows in each mixture SFT batch, in (0, 1)"""

    rsf_iterations: int = 6
    """RSF iterations (toy only)"""
    rsf_prompts: int = 256
    """prompts per RSF iteration"""
    rsf_samples: int = 8
    """n of best-of-n"""
    rsf_learning_rate: float = 5e-4
    """RSF SFT learning rate (Adam; > 0)"""
    rsf_batch_size: int = 32
    """RSF SFT batch size"""
    temperature: float = 1.0
    """sampling temperature of RSF, D and the reward evaluation"""
    max_new_tokens: int = 4
    """response length cap for RLHF prompts (4: the toy's responses are 4 words, so longer ones cannot add reward)"""
    tax_max_new_tokens: int = 10
    """response length cap for the tax task"""

    num_d_samples: int = 2500
    """policy samples drawn for D"""
    num_d_keep: int = 1000
    """the highest-reward samples kept in D"""
    pre_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    """plain MA grid of gamma (weight on theta0: 0 = theta, 1 = theta0)"""
    partwise_pre_weights: tuple[float, ...] = (0.25, 0.5, 1.0)
    """partwise MA: pre weight r of the averaged third (input, middle or output)"""
    partwise_head_pre_weight: float = 0.0
    """partwise MA: pre weight of the final norm and head, a ratio of their own in the code (merge_split takes its
    --weight_ensamble_ratios value; not reported for the paper's Fig. 4); 0 = theta's, like the rest"""
    mean_pre_weights: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    """AMA mean pre weights gbar, each in (0, 1) [paper: the grid 0.1 ... 0.6]"""
    groups: str = "block3"
    """layer groups: block3 (official splits), block<N>, layerwise"""
    eps: float = 0.2
    """boundary constant eps of the ratio parameterisation [code scripts/mask_post: 0.2]"""
    reg_coef: float = 1e-4
    """lambda of the weighted L1 regulariser (0 turns it off) [code scripts/mask_post: 1e-4]"""
    learning_rate: float = 3e-2
    """Adam learning rate of the K logits (reconstruction: the code's nominal 2e-5 does not move K scalars; > 0)"""
    batch_size: int = 8
    """AMA batch size over D (one Adam step per batch)"""
    micro_batch_size: int = 8
    """rows per forward and backward of an AMA step (gradients accumulated; peak memory set by this, not the batch)"""
    generation_batch_size: int = 512
    """sequences per generate call (D, reward and tax evaluation)"""
    gradient_checkpointing: bool = False
    """recompute each decoder layer (and its merge) in the backward: one layer's merged weights alive at a time"""
    lr_schedule: Literal["linear", "constant"] = "linear"
    """AMA learning rate: linear decay to 0 over the steps, no warm-up (the code's HF Trainer default), or constant"""
    epochs: int = 1
    """AMA epochs over D"""
    loss_on: Literal["response", "all"] = "response"
    """proxy NLL on response tokens (paper Eq. 9) or prompt + response (the code's text_only data)"""
    nonlinear: Literal["pre", "interp"] = "pre"
    """AMA's non-Linear tensors: copied from theta0 (code) or interpolated at gbar"""
    arms: tuple[str, ...] = ("ma", "partwise", "ama")
    """arms to evaluate: ma, partwise, ama (ama also reports AMA at initialisation)"""
    num_eval: int = 512
    """evaluation prompts for the reward and for the tax"""


# ALGO LOGIC: the ratios, the merge and the regulariser ----------------------------------------------------------------


def group_ratios(logits: torch.Tensor, mean_ratio: float, eps: float) -> torch.Tensor:
    """gamma_k = gbar K (sigmoid(s_k) + eps) / sum_j (sigmoid(s_j) + eps): weights on theta0 with mean exactly gbar
    [code mask_trainer.py mask_norm_sigmoid_linear; paper Eq. 11 omits the factor K]. Not clamped (as the code):
    gamma_k may exceed 1 for a large gbar."""
    lifted = torch.sigmoid(logits) + eps  # [K]
    return mean_ratio * logits.numel() * lifted / lifted.sum()  # [K]


def layer_groups(num_layers: int, scheme: str) -> list[int]:
    """The group index of each layer for `block3` (official splits: 8/16 for L <= 30, 11/21 above, when every group
    stays non-empty; equal thirds otherwise), `block<N>` (floor(L/N) layers per block, the remainder to the last) or
    `layerwise` (K = L)."""
    if num_layers < 1:
        fail(f"the model has {num_layers} layers")
    if scheme == "layerwise":
        return list(range(num_layers))
    match = re.fullmatch(r"block(\d+)", scheme)
    if not match or int(match.group(1)) < 1:
        fail(f"--groups {scheme!r} is not one of block3, block<N> (N >= 1), layerwise")
    num_groups = int(match.group(1))
    if num_groups > num_layers:
        fail(f"--groups {scheme}: K = {num_groups} groups exceed the model's {num_layers} layers")
    if num_groups == 3:  # the official splits where every group stays non-empty [code scripts/mask_post]
        cuts = (8, 16) if num_layers <= 30 else (11, 21)
        if cuts[1] < num_layers:
            return [sum(layer >= c for c in cuts) for layer in range(num_layers)]
    size = num_layers // num_groups
    return [min(layer // size, num_groups - 1) for layer in range(num_layers)]


def regulariser_weights(num_layers: int, centre: int | None = None) -> torch.Tensor:
    """w(l) = 25 / (|l - c| + 1) per 0-based layer l [code mask_trainer.py sum_reg_type]; c = L // 2 by default
    (reconstruction: the code hard-codes 13 for L = 26)."""
    centre = num_layers // 2 if centre is None else centre
    layers = torch.arange(num_layers, dtype=torch.float32)  # [L]
    return 25.0 / ((layers - centre).abs() + 1.0)  # [L]


class _Interpolate(torch.autograd.Function):
    """W1 + gamma (W0 - W1) in at least fp32 (torch.lerp: exact at gamma = 0 and 1); it saves the inputs themselves,
    not fp32 copies, and forms the fp32 difference W0 - W1 again in the backward (reconstruction: the code merges in
    the weights' dtype, and in bf16 a 1 % RLHF delta gives a d/d(gamma) that is mostly rounding)."""

    @staticmethod
    def forward(ctx, w_pre, w_post, ratio):
        dtype = torch.promote_types(torch.promote_types(w_pre.dtype, w_post.dtype), torch.float32)
        ctx.save_for_backward(w_pre, w_post, ratio)
        return torch.lerp(w_post.to(dtype), w_pre.to(dtype), ratio.to(dtype))  # [*w.shape] fp32 (fp64 stays)

    @staticmethod
    def backward(ctx, grad):
        w_pre, w_post, ratio = ctx.saved_tensors
        grad_pre = grad_post = grad_ratio = None
        if ctx.needs_input_grad[2]:  # d/d(gamma) = sum(grad * (W0 - W1)), the difference exact in fp32 for bf16 W
            delta = w_pre.to(grad.dtype) - w_post.to(grad.dtype)  # [*w.shape]
            grad_ratio = (grad * delta).sum().reshape(ratio.shape).to(ratio.dtype)
        if ctx.needs_input_grad[0]:
            grad_pre = (grad * ratio.to(grad.dtype)).to(w_pre.dtype)
        if ctx.needs_input_grad[1]:
            grad_post = (grad * (1 - ratio.to(grad.dtype))).to(w_post.dtype)
        return grad_pre, grad_post, grad_ratio


def merge_linear(w_pre: torch.Tensor, w_post: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """gamma W0 + (1 - gamma) W1 for a scalar gamma, computed in fp32 whatever the weights' dtype (bf16 weights with a
    1 % RLHF delta would otherwise give a d/d(gamma) that is mostly rounding); gamma = 1 gives exactly W0, gamma = 0
    exactly W1. Returns fp32 (fp64 for fp64 inputs); differentiable in gamma (and in the weights)."""
    if ratio.numel() != 1:
        raise ValueError(f"merge_linear takes one ratio per tensor, got shape {tuple(ratio.shape)}")
    return _Interpolate.apply(w_pre, w_post, ratio.reshape(()))  # [*w.shape]


def l1_regulariser(
    ratios: torch.Tensor, mean_ratio: float, groups: list[int], layer_weights: torch.Tensor
) -> torch.Tensor:
    """sum_l layer_weights[l] |gamma_g(l) - gbar|; layer_weights = w(l) x (Linear modules in layer l): summed per
    Linear module, 7 per Qwen2 / LLaMA layer [code mask_trainer.py]."""
    per_layer = ratios[torch.as_tensor(groups)]  # [L]
    return (layer_weights * (per_layer - mean_ratio).abs()).sum()


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` (both coordinates maximised) above the reference point `ref` (reconstruction: the
    paper compares fronts by eye)."""
    kept = sorted((x, y) for x, y in points if x > ref[0] and y > ref[1])
    area = 0.0
    best_y = ref[1]
    for i in range(len(kept) - 1, -1, -1):  # sweep from the largest x: each strip adds its new height
        x, y = kept[i]
        next_x = kept[i - 1][0] if i > 0 else ref[0]
        best_y = max(best_y, y)
        area += (x - next_x) * (best_y - ref[1])
    return area


# ALGO LOGIC: the merged model (theta parametrized in place) -----------------------------------------------------------


class Interpolation(torch.nn.Module):
    """The parametrization of one tensor of theta: W = merge_linear(W0, W1, ratio of its slot), back in W1's dtype."""

    def __init__(self, merger: "Merger", slot: int, w_pre: torch.Tensor):
        super().__init__()
        self.slot = slot
        self.merger = merger  # a plain reference (Merger is no nn.Module): the ratios it holds right now
        self.register_buffer("w_pre", w_pre, persistent=False)  # theta0's tensor itself, not a copy

    def forward(self, w_post: torch.Tensor) -> torch.Tensor:
        return merge_linear(self.w_pre, w_post, self.merger.ratio(self.slot)).to(w_post.dtype)


class Merger:
    """theta (`post`) parametrized in place: each of its tensors is merged with theta0's on the fly, in fp32, at the
    ratio of its slot. Only theta0 and theta are held (no scratch or merged copy): a training forward forms each
    Linear weight inside its own module (with --gradient-checkpointing, again in the backward, so one layer's merge
    is alive at a time), and `evaluation(slots)` merges every tensor once for a whole evaluation. Only the Linear
    slots of the decoder layers carry gradients; every other tensor is merged out of the graph.

    Slots: [0, L) Linear tensors of layer l, [L, 2L) other tensors of layer l, 2L embedding, 2L + 1 head,
    2L + 2 everything else (final norm). Only nn.Linear weights and biases of the decoder layers get the group ratios
    [paper App. D.4, code mask_trainer.py]; a tied embedding is one tensor with the head and follows the head."""

    def __init__(self, pre, post):
        self.model = post
        self.device = next(post.parameters()).device
        self.num_layers = num_layers_of(post)
        pre_params = dict(pre.named_parameters(remove_duplicate=False))
        linear = {
            f"{m}.{k}"
            for m, mod in post.named_modules()
            if isinstance(mod, torch.nn.Linear)
            for k in ("weight", "bias")
        }
        embed = {id(p) for p in post.get_input_embeddings().parameters()}
        head_module = post.get_output_embeddings()
        head = {id(p) for p in head_module.parameters()} if head_module is not None else set()
        L = self.num_layers
        self.slot = {}  # parameter name -> slot
        self.linears_per_layer = [0] * L  # Linear weights per decoder layer (the regulariser sums over them)
        for name, param in post.named_parameters(remove_duplicate=False):  # a tied head is listed under both names
            layer = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", name)
            if id(param) in head:  # a tied embedding is the head too: it follows the head (gbar)
                self.slot[name] = 2 * L + 1
            elif layer is not None and int(layer.group(1)) < L:
                index = int(layer.group(1))
                self.slot[name] = index if name in linear else L + index
                self.linears_per_layer[index] += name.endswith("weight") and name in linear
            else:
                self.slot[name] = 2 * L if id(param) in embed else 2 * L + 2
        if sum(self.linears_per_layer) == 0:
            fail("AMA averages nn.Linear weights of the decoder layers, and this model has none there")
        self.slot_ratios = torch.zeros(2 * L + 3)  # theta until set_ratios
        self.parametrized = []
        for name in self.slot:
            module_name, _, attr = name.rpartition(".")
            module = post.get_submodule(module_name)
            parametrize.register_parametrization(module, attr, Interpolation(self, self.slot[name], pre_params[name]))
            self.parametrized.append((module, attr))

    def ratio(self, slot: int) -> torch.Tensor:
        """The current ratio of a slot; only the decoder's Linear slots [0, L) stay in the graph."""
        value = self.slot_ratios[slot]
        return value if slot < self.num_layers else value.detach()

    def set_ratios(self, slot_ratios: torch.Tensor) -> None:
        """Merge at these slot ratios from the next forward on (differentiable in slot_ratios)."""
        self.slot_ratios = slot_ratios.to(self.device)

    @contextmanager
    def evaluation(self, slot_ratios: torch.Tensor):
        """No gradients, and every tensor merged once for everything run inside (generation, NLL over D)."""
        self.set_ratios(slot_ratios.detach())
        with torch.no_grad(), parametrize.cached():
            yield self.model

    @torch.no_grad()
    def merged(self, slot_ratios: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: merged tensor} in theta's dtype (tied tensors share one); for saving and tests (a full copy)."""
        self.set_ratios(slot_ratios.detach())
        out = {}
        by_original = {}  # id of theta's own tensor -> its merge (a tied head is merged once)
        for name in self.slot:
            module_name, _, attr = name.rpartition(".")
            original = self.model.get_submodule(module_name).parametrizations[attr].original
            if id(original) not in by_original:
                by_original[id(original)] = getattr(self.model.get_submodule(module_name), attr)
            out[name] = by_original[id(original)]
        return out

    def save(self, folder: Path, slot_ratios: torch.Tensor, tokenizer) -> None:
        """save_pretrained of the merge at slot_ratios (theta's config and dtype; a tied head stays one tensor)."""
        self.model.save_pretrained(folder, state_dict=self.merged(slot_ratios))
        tokenizer.save_pretrained(folder)

    def ma_slots(self, gamma: float) -> torch.Tensor:
        """Plain MA: every tensor at gamma, the non-Linear ones too [code weight_interpolation.py]."""
        return torch.full((2 * self.num_layers + 3,), float(gamma))

    def partwise_slots(self, part: int, ratio: float, head_ratio: float = 0.0) -> torch.Tensor:
        """One third (block3) at `ratio` with its layers' every tensor, the embedding with the input third, final
        norm and head at `head_ratio` [code weight_interpolation.py merge_split; paper Fig. 4], the rest theta."""
        in_part = torch.tensor([g == part for g in layer_groups(self.num_layers, "block3")], dtype=torch.float32)
        head = torch.full((1,), float(head_ratio))
        return torch.cat([ratio * in_part, ratio * in_part, ratio * in_part[:1], head, head])  # [2L + 3]

    def ama_slots(self, ratios: torch.Tensor, groups: list[int], mean: float, nonlinear: str) -> torch.Tensor:
        """AMA: each layer's Linear tensors at its group's ratio, the head at gbar [paper, code mask_trainer.py]; the
        non-Linear tensors (embedding, norms) from theta0 as the code's merge (`pre`) or at gbar (`interp`)."""
        other = torch.full((self.num_layers,), 1.0 if nonlinear == "pre" else mean)  # [L]
        rest = torch.tensor([1.0 if nonlinear == "pre" else mean, mean, 1.0 if nonlinear == "pre" else mean])
        return torch.cat([ratios[torch.as_tensor(groups)], other, rest])  # [2L + 3]

    def close(self) -> None:
        """Remove the parametrizations: `post` is theta again, with its own tensors."""
        for module, attr in self.parametrized:
            if parametrize.is_parametrized(module, attr):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)


def num_layers_of(model) -> int:
    layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    return layers if isinstance(layers, int) else fail(f"cannot tell the layer count of {type(model).__name__}")


# TRY NOT TO MODIFY: data, rewards, evaluation, theta0 of the toy and option checks ------------------------------------


def make_reward_fn(args: Args, device, dtype):
    """(prompts, completions) -> rewards [N]: the hidden true reward of tiny:preferences, or a reward model."""
    if args.dataset_name.startswith("tiny:preferences"):
        task = Preferences(num_topics=NUM_TOPICS)
        return lambda prompts, texts: torch.tensor([task.score(p, c) for p, c in zip(prompts, texts)])
    if args.reward_model is None:
        return None
    from transformers import AutoModelForSequenceClassification

    rm, rm_tok = load_causal_lm(
        args.reward_model, device, dtype, model_class=AutoModelForSequenceClassification, num_labels=1
    )
    rm.eval()

    @torch.no_grad()
    def score(prompts, texts, batch: int = REWARD_MODEL_BATCH):
        out = []
        for i in range(0, len(prompts), batch):
            pairs = zip(prompts[i : i + batch], texts[i : i + batch])
            if rm_tok.chat_template:
                chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c in pairs]
                strings = [rm_tok.apply_chat_template(c, tokenize=False) for c in chats]
            else:
                strings = [f"{p} {c}" for p, c in pairs]
            enc = rm_tok(strings, return_tensors="pt", padding=True, truncation=True).to(device)
            out.append(rm(**enc).logits[:, 0].float().cpu())
        return torch.cat(out)

    return score


@torch.no_grad()
def evaluate(model, tokenizer, reward_fn, eval_prompts, tax_prompts, tax_refs, args: Args) -> dict:
    """reward: mean over one T = 1 sample per prompt (fixed sampling seed) [paper: the test setting]; tax_accuracy:
    greedy exact match on the held-out ability prompts (reconstruction of the paper's tax benchmarks on the toy)."""
    result = {}
    batch = args.generation_batch_size
    if reward_fn is not None and eval_prompts:
        torch.manual_seed(args.seed + EVAL_SEED_OFFSET)  # common random numbers: every arm draws the same uniforms
        texts = []
        for i in range(0, len(eval_prompts), batch):
            out = sample(
                model, tokenizer, eval_prompts[i : i + batch], 1, args.max_new_tokens, args.temperature, chat=args.chat
            )
            texts += out.texts
        result["reward"] = reward_fn(eval_prompts, texts).float().mean().item()
    if tax_prompts:
        hits = 0
        for i in range(0, len(tax_prompts), batch):
            out = sample(
                model, tokenizer, tax_prompts[i : i + batch], 1, args.tax_max_new_tokens, greedy=True, chat=args.chat
            )
            hits += sum(t.split() == r.split() for t, r in zip(out.texts, tax_refs[i : i + batch]))
        result["tax_accuracy"] = hits / len(tax_prompts)
    return result


def toy_theta0(args: Args, device):
    """theta0 of the toy (reconstruction, the roles of the paper's SFT model): mixture SFT on string_ops copy/reverse
    (the ability to protect) + preferences prompts with 4 uniformly random words (the alignment task, start reward
    ~0), cached by its recipe."""
    from transformers import AutoModelForCausalLM

    recipe = {k: getattr(args, k) for k in "seed num_layers hidden_size sft_steps sft_batch_size ability_share".split()}
    recipe["sft_lr"] = args.sft_learning_rate  # the cache key keeps the old name, so cached theta0s stay valid
    recipe.update(ability=ABILITY, num_topics=NUM_TOPICS, version=RECIPE_VERSION)
    key = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(args.cache_dir or shared.warmstart.CACHE_DIR) / f"ama-theta0-{key}"
    if (folder / "recipe.json").exists():
        return load_causal_lm(str(folder), device=device)
    start = time.time()
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer, num_layers=args.num_layers, hidden_size=args.hidden_size)
    config.tie_word_embeddings = False  # an untied Linear head, as OpenLLaMA / Mistral (the head is merged at gbar)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config).to(device)
    n_ability = round(args.ability_share * args.sft_batch_size)
    n_pref = args.sft_batch_size - n_ability
    num_rows = min(MAX_ABILITY_ROWS, max(1, args.sft_steps * n_ability))
    ability = StringOps(**ABILITY).dataset(num_rows, seed=args.seed)
    rng = random.Random(args.seed)  # the preference prompts and their random responses
    words = Preferences().words
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.sft_learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / THETA0_WARMUP_STEPS) * (1 - s / max(1, args.sft_steps))
    )
    generator = torch.Generator().manual_seed(args.seed)
    progress = Progress("theta0 mixture SFT", total=args.sft_steps)
    for step in range(args.sft_steps):
        rows = ability[torch.randint(len(ability), (n_ability,), generator=generator).tolist()]
        prompts = rows["prompt"] + [f"topic t{rng.randrange(NUM_TOPICS)}" for _ in range(n_pref)]
        targets = rows["reference"] + [" ".join(rng.choices(words, k=4)) for _ in range(n_pref)]
        loss = sft_loss(model, *sft_batch(tokenizer, prompts, targets, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        progress.update(loss=loss.item())
    progress.done(f"cached in {folder}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")  # write aside, then rename
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "recipe.json").write_text(json.dumps({**recipe, "seconds": round(time.time() - start, 1)}, indent=2))
    if folder.exists():  # another run cached the same recipe meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return load_causal_lm(str(folder), device=device)


def check_args(args: Args) -> None:
    """Fail early, before any model or training, on every option the run cannot use."""
    if not args.mean_pre_weights or any(not 0 < g < 1 for g in args.mean_pre_weights):
        fail(f"--mean-pre-weights {list(args.mean_pre_weights)}: each mean pre weight must lie in (0, 1)")
    if any(not 0 <= g <= 1 for g in args.pre_weights + args.partwise_pre_weights):
        fail("--pre-weights and --partwise-pre-weights must lie in [0, 1] (weight on theta0)")
    if args.num_d_keep < 1 or args.num_d_samples < args.num_d_keep:
        fail(
            f"D would be empty or over-asked: need 1 <= --num-d-keep ({args.num_d_keep}) <= --num-d-samples "
            f"({args.num_d_samples})"
        )
    if (args.pre_model is None) != (args.post_model is None):
        fail("give both --pre-model and --post-model (the real path), or neither (the toy)")
    if args.pre_model is None:
        layer_groups(args.num_layers, args.groups)  # K > L fails here, before the SFT
        if not args.dataset_name.startswith("tiny:preferences"):
            fail(
                "the toy's RSF needs the known reward: keep --dataset-name tiny:preferences or pass --pre/--post-model"
            )
    else:
        layer_groups(10**6, args.groups)  # the scheme's spelling; K vs L is checked once the config is read
    unknown = set(args.arms) - {"ma", "partwise", "ama"}
    if unknown or not args.arms:
        fail(f"--arms {list(args.arms)}: choose from ma, partwise, ama")
    names = "rsf_prompts rsf_samples rsf_batch_size batch_size micro_batch_size generation_batch_size epochs"
    for name in f"{names} num_threads max_new_tokens sft_steps sft_batch_size".split():
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("learning_rate", "rsf_learning_rate", "sft_learning_rate"):  # before any model is built or trained
        rate = getattr(args, name)
        if not (rate > 0 and math.isfinite(rate)):
            fail(f"--{name.replace('_', '-')} {rate}: a learning rate must be a positive finite number")
    if not 0 < args.ability_share < 1:
        fail(f"--ability-share {args.ability_share}: the share of ability rows in theta0's SFT must lie in (0, 1)")
    if not 0 <= args.partwise_head_pre_weight <= 1:
        fail(f"--partwise-head-pre-weight {args.partwise_head_pre_weight} must lie in [0, 1]")
    if args.eps < 0 or args.reg_coef < 0 or not args.temperature > 0:
        fail("--eps and --reg-coef must be >= 0, --temperature > 0")


def load_pair(args: Args, device, dtype):
    """theta0 and theta by name; fail clearly unless they share the architecture and every tensor shape."""
    from transformers import AutoConfig

    configs = []
    for flag, name in (("--pre-model", args.pre_model), ("--post-model", args.post_model)):
        if Path(name).is_dir() and not (Path(name) / "config.json").exists():
            fail(f"{flag} {name}: the folder has no config.json (save it with save_pretrained)")
        if not Path(name).is_dir():
            check_hub_id(name)  # fails within seconds offline, with the loader's message
        configs.append(AutoConfig.from_pretrained(name))
    kinds = [(c.model_type, getattr(c, "num_hidden_layers", None), getattr(c, "hidden_size", None)) for c in configs]
    if kinds[0] != kinds[1]:
        fail(f"--pre-model and --post-model differ in architecture (type, layers, hidden): {kinds[0]} vs {kinds[1]}")
    layer_groups(kinds[0][1] or 0, args.groups)  # K > L fails here, before the weights load
    pre, tokenizer = load_causal_lm(args.pre_model, device, dtype)
    post, _ = load_causal_lm(args.post_model, device, dtype)
    shapes = [{n: tuple(p.shape) for n, p in m.named_parameters()} for m in (pre, post)]
    if shapes[0] != shapes[1]:
        diff = sorted(n for n in shapes[0].keys() | shapes[1].keys() if shapes[0].get(n) != shapes[1].get(n))
        fail(f"--pre-model and --post-model have different tensors or shapes, e.g. {diff[:3]}")
    return pre, post, tokenizer


# ALGO LOGIC: the proxy objective on D and the AMA loop ----------------------------------------------------------------


def proxy_batches(tokenizer, prompts, texts, args: Args, device, generator, batch_size: int | None = None):
    """Tokenised batches of D in a fresh random order: (ids, mask, positions, labels) with the loss tokens."""
    batch_size = batch_size or args.batch_size
    order = torch.randperm(len(prompts), generator=generator).tolist()
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        ids, mask, positions, labels = sft_batch(
            tokenizer, [prompts[j] for j in rows], [texts[j] for j in rows], device
        )
        if args.loss_on == "all":  # the code's text_only data: prompt tokens count too [code mask_trainer.py]
            labels = ids.masked_fill(mask == 0, -100)  # [B, T]
        yield ids, mask, positions, labels


def micro_batches(batch, size: int):
    """Slices of at most `size` rows of a (ids, mask, positions, labels) batch."""
    for i in range(0, batch[0].shape[0], size):
        yield tuple(t[i : i + size] for t in batch)


def loss_tokens(batch) -> int:
    """Number of tokens the NLL is taken over (labels shifted by one)."""
    return int((batch[3][:, 1:] != -100).sum())


def proxy_nll_sum(model, batch) -> torch.Tensor:
    """Summed NLL of the loss tokens of one (micro-)batch of D under the model's current merge [paper Eq. 9]: the
    response tokens and the end-of-turn token, or every token with --loss-on all (without the code's packing)."""
    ids, mask, positions, labels = batch
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    logits = out.logits[:, :-1].flatten(0, 1).float()  # [B * (T - 1), V]
    return F.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")


def accumulate_proxy_gradient(merger: Merger, slots: torch.Tensor, batch, micro_batch_size: int):
    """Token-mean proxy NLL of one step batch at `slots`, its gradient w.r.t. the slot ratios accumulated over
    micro-batches (each normalised by the whole batch's tokens, so 1 x 8 = 4 x 2). Returns (nll, d nll / d slots)."""
    leaf = slots.detach().requires_grad_(True)  # [2L + 3] the graph to the logits is applied once, afterwards
    merger.set_ratios(leaf)
    tokens = max(loss_tokens(batch), 1)
    total = 0.0
    for micro in micro_batches(batch, micro_batch_size):
        loss = proxy_nll_sum(merger.model, micro) / tokens
        loss.backward()  # gradients reach the Linear slot ratios only
        total += loss.item()
    grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
    return total, grad.to(slots.device)


@torch.no_grad()
def full_nll(merger: Merger, slots, tokenizer, d_prompts, d_texts, args, device) -> float:
    """The proxy NLL over all of D (token mean), merged once, in micro-batches."""
    generator = torch.Generator().manual_seed(FULL_NLL_ORDER_SEED)
    total = 0.0
    tokens = 0
    with merger.evaluation(slots) as model:
        for batch in proxy_batches(tokenizer, d_prompts, d_texts, args, device, generator, args.micro_batch_size):
            total += proxy_nll_sum(model, batch).item()
            tokens += loss_tokens(batch)
    return total / max(tokens, 1)


def ama_steps(num_d: int, args: Args) -> int:
    """Adam steps of AMA at one mean pre weight: --epochs passes over D in batches of --batch-size."""
    return args.epochs * math.ceil(num_d / args.batch_size)


def train_ama(merger: Merger, tokenizer, d_prompts, d_texts, mean, groups, layer_weights, args, run) -> torch.Tensor:
    """Adam on the K logits only (theta0 and theta frozen): proxy NLL of D under the merged model + lambda x weighted
    L1. The live logits form the ratios at every step, and each group logit is one Adam parameter at an explicit
    learning rate (reconstruction of the paper's intent: the code caches a stale copy of the numerator and lists a
    group logit once per Linear module [code mask_trainer.py set_wise_model]). The learning rate decays linearly to
    0 with no warm-up (the code's HF Trainer default; the paper's text says cosine with 3 % warm-up) or stays
    constant. Returns the final K ratios; logs arm `ama_g<gbar>`."""
    logits = torch.full((max(groups) + 1,), math.log(mean / (1 - mean)), requires_grad=True)  # [K] s = logit(gbar)
    optimizer = torch.optim.Adam([logits], lr=args.learning_rate)
    total_steps = ama_steps(len(d_prompts), args)
    decay = (lambda s: 1.0 - s / total_steps) if args.lr_schedule == "linear" else (lambda s: 1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    generator = torch.Generator().manual_seed(args.seed)  # the same order of D at every mean pre weight
    arm = f"ama_g{mean:g}"
    step = 0
    merger.model.train(args.gradient_checkpointing)  # HF checkpoints decoder layers only in train mode
    for _ in range(args.epochs):
        for batch in proxy_batches(tokenizer, d_prompts, d_texts, args, merger.device, generator):
            ratios = group_ratios(logits, mean, args.eps)  # [K], mean exactly gbar
            slots = merger.ama_slots(ratios, groups, mean, args.nonlinear)  # [2L + 3]
            nll, slot_grad = accumulate_proxy_gradient(merger, slots, batch, args.micro_batch_size)
            reg = l1_regulariser(ratios, mean, groups, layer_weights)
            optimizer.zero_grad(set_to_none=True)
            ((slots * slot_grad).sum() + args.reg_coef * reg).backward()  # chain rule from the slots to the logits
            optimizer.step()
            schedule.step()
            step += 1
            gammas = {f"charts/gamma_{k}": r for k, r in enumerate(ratios.tolist())}
            run.log(step, {"losses/proxy_nll": nll, "losses/reg": reg.item(), **gammas}, arm=arm)
    merger.model.eval()
    return group_ratios(logits.detach(), mean, args.eps)


# ALGO LOGIC: RLHF by RSF, the toy's theta -----------------------------------------------------------------------------


def rsf(pre, tokenizer, reward_fn, pool, evaluate_small, args: Args, run, device):
    """RLHF by RSF [paper: its main experiments]: best-of-n samples at T = 1, one SFT epoch on the best per
    prompt, no ability data; reward and tax after every iteration (the early-stopping baseline). Logs arm `rsf`."""
    post = copy.deepcopy(pre).requires_grad_(True)
    optimizer = torch.optim.Adam(post.parameters(), lr=args.rsf_learning_rate)
    generator = torch.Generator().manual_seed(args.seed)
    for iteration in range(1, args.rsf_iterations + 1):
        prompts = [pool[i] for i in torch.randint(len(pool), (args.rsf_prompts,), generator=generator).tolist()]
        out = sample(post, tokenizer, prompts, args.rsf_samples, args.max_new_tokens, args.temperature, chat=args.chat)
        rewards = reward_fn([p for p in prompts for _ in range(args.rsf_samples)], out.texts)  # [P * n]
        best_reward, best = rewards.view(len(prompts), args.rsf_samples).max(dim=1)  # [P] first best on ties
        texts = [out.texts[i * args.rsf_samples + b] for i, b in enumerate(best.tolist())]
        losses = []
        order = torch.randperm(len(prompts), generator=generator).tolist()
        for i in range(0, len(order), args.rsf_batch_size):  # one SFT epoch on the best responses
            rows = order[i : i + args.rsf_batch_size]
            batch = sft_batch(tokenizer, [prompts[j] for j in rows], [texts[j] for j in rows], device)
            loss = sft_loss(post, *batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(post.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            losses.append(loss.item())
        evaluation = evaluate_small(post.eval())
        metrics = {
            "reward": rewards.mean().item(),
            "rewards/best_of_n": best_reward.mean().item(),
            "losses/sft_loss": sum(losses) / len(losses),
        }
        run.log(iteration, {**metrics, **{f"eval/{k}": v for k, v in evaluation.items()}}, echo=True, arm="rsf")
    return post


def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: option checks, seeding, device, the reward, data
    check_args(args)
    torch.set_num_threads(args.num_threads)
    seed_everything(args.seed)
    device = pick_device(args.cuda)
    dtype = pick_dtype(args.dtype, device)
    toy = args.pre_model is None
    reward_fn = make_reward_fn(args, device, dtype)
    task_kwargs = {"num_topics": NUM_TOPICS} if args.dataset_name.startswith("tiny:preferences") else None
    tiny_prompts = args.dataset_name.startswith("tiny:")
    need = max(args.rsf_prompts, args.num_d_samples)
    data = load_data(
        args.dataset_name,
        "train",
        ["prompt"],
        num_examples=need if tiny_prompts else None,
        seed=args.seed,
        task_kwargs=task_kwargs,
    )
    if tiny_prompts:
        pool = data["prompt"]
        eval_prompts = load_data(args.dataset_name, "test", ["prompt"], args.num_eval, args.seed, task_kwargs)["prompt"]
    else:  # hold out the last num_eval prompts of the shuffled data for the reward evaluation
        data = data.shuffle(seed=args.seed)
        num_eval = min(args.num_eval, len(data) // 2) if reward_fn is not None else 0
        pool, eval_prompts = data["prompt"][: len(data) - num_eval], data["prompt"][len(data) - num_eval :]
    if not pool:
        fail(f"dataset {args.dataset_name!r} has no prompts: D would be empty")
    tax_prompts = []
    tax_refs = []
    if args.tax_dataset_name:
        kwargs = ABILITY if args.tax_dataset_name == "tiny:string_ops" else None
        tax = load_data(args.tax_dataset_name, "test", ["prompt", "reference"], args.num_eval, args.seed, kwargs)
        tax_prompts, tax_refs = tax["prompt"], tax["reference"]
    start = time.time()

    def evaluate_at(model, n=None):
        n = n or args.num_eval
        return evaluate(model, tokenizer, reward_fn, eval_prompts[:n], tax_prompts[:n], tax_refs[:n], args)

    # ALGO LOGIC: the paper's Algorithm 1
    # 1. theta0 (toy: mixture SFT of ability + alignment prompts, cached) and theta = RLHF(theta0) by RSF, as the
    #    paper's main experiments; or both by name
    if toy:
        pre, tokenizer = toy_theta0(args, device)
        pre.eval().requires_grad_(False)
    else:
        pre, post, tokenizer = load_pair(args, device, dtype)
    run = RunLogger(  # after the models load, so the first progress line's steps/s and ETA are RSF's own
        make_run_name("preferences" if toy else "real", args.exp_name, args.seed),
        args,
        track=args.track,
        print_every=25,
        show=SHOWN,
        total_steps=args.rsf_iterations,  # the RSF arm's; set to an AMA arm's steps once D is known
    )
    if toy:
        start_evaluation = evaluate_at(pre, RSF_EVAL_PROMPTS)
        run.log(0, {f"eval/{k}": v for k, v in start_evaluation.items()}, echo=False, arm="rsf")
        print(f"theta0: {start_evaluation}", flush=True)
        post = rsf(pre, tokenizer, reward_fn, pool, lambda m: evaluate_at(m, RSF_EVAL_PROMPTS), args, run, device)
    pre.eval().requires_grad_(False)
    post.eval().requires_grad_(False)
    rsf_seconds = time.time() - start

    # 2. D: sample theta on the RLHF prompts, keep the highest-reward samples (the paper: ~2000 of the top 5000)
    generator = torch.Generator().manual_seed(args.seed + D_PROMPT_SEED_OFFSET)
    d_prompts = [pool[i] for i in torch.randint(len(pool), (args.num_d_samples,), generator=generator).tolist()]
    torch.manual_seed(args.seed + D_SAMPLE_SEED_OFFSET)
    d_texts = []
    progress = Progress("D sampling", total=math.ceil(len(d_prompts) / args.generation_batch_size))
    for i in range(0, len(d_prompts), args.generation_batch_size):
        chunk = d_prompts[i : i + args.generation_batch_size]
        d_texts += sample(post, tokenizer, chunk, 1, args.max_new_tokens, args.temperature, chat=args.chat).texts
        progress.update()
    progress.done()
    if reward_fn is not None:
        d_rewards = reward_fn(d_prompts, d_texts).float()  # [N]
        keep = torch.argsort(d_rewards, descending=True, stable=True)[: args.num_d_keep].tolist()
        print(
            f"D: the top {len(keep)} of {len(d_prompts)} samples, reward {d_rewards[keep].mean():.3f} "
            f"(all: {d_rewards.mean():.3f})"
        )
    else:
        keep = list(range(args.num_d_keep))
        print("D: no reward model, so D keeps the first samples unfiltered (pass --reward-model)", flush=True)
    d_prompts = [d_prompts[i] for i in keep]
    d_texts = [d_texts[i] for i in keep]
    pairs = [(p, t) for p, t in zip(d_prompts, d_texts) if t]
    if not pairs:
        fail("D is empty: theta produced no non-empty response; raise --max-new-tokens or check the prompts")
    d_prompts = [p for p, _ in pairs]
    d_texts = [t for _, t in pairs]
    run.save_text("samples.txt", "".join(f"{p} ||| {t}\n" for p, t in pairs[:50]))

    # the baselines and AMA, all from the same theta0 / theta, evaluated the same way
    merger = Merger(pre, post)  # post becomes the merged model; theta0 and theta are the only copies held
    if args.gradient_checkpointing:
        post.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    num_layers = merger.num_layers
    groups = layer_groups(num_layers, args.groups)
    layer_weights = regulariser_weights(num_layers) * torch.tensor(merger.linears_per_layer, dtype=torch.float32)
    results = []

    def point(arm: str, gamma: float, slots: torch.Tensor, **extra) -> dict:
        """Evaluate one merge; logged on the arm's own run at step = 100 x its pre weight (the x axis it shares)."""
        with merger.evaluation(slots) as merged:  # every tensor merged once for the whole evaluation
            evaluation = evaluate_at(merged)
        run.log(round(100 * gamma), {f"eval/{k}": v for k, v in evaluation.items()}, echo=False, arm=arm)
        results.append({"arm": arm, "pre_weight": gamma, **evaluation, **extra})
        return results[-1]

    # 3. the baselines [paper Fig. 4]: plain MA, every tensor at gamma (0 = theta, 1 = theta0), and partwise
    #    MA, one third at r with the rest at theta
    ma_grid = sorted(set(args.pre_weights) | {0.0, 1.0} if "ma" in args.arms else {0.0, 1.0})
    parts = ("input", "middle", "output") if "partwise" in args.arms else ()
    progress = Progress("MA and partwise evaluation", total=len(ma_grid) + len(parts) * len(args.partwise_pre_weights))
    for gamma in ma_grid:
        row = point("ma", gamma, merger.ma_slots(gamma))
        progress.update(reward=row.get("reward", math.nan), tax_accuracy=row.get("tax_accuracy", math.nan))
    for part, name in enumerate(parts):
        for r in args.partwise_pre_weights:
            row = point(f"partwise_{name}", r, merger.partwise_slots(part, r, args.partwise_head_pre_weight))
            progress.update(reward=row.get("reward", math.nan), tax_accuracy=row.get("tax_accuracy", math.nan))
    progress.done()
    if "ama" in args.arms:
        run.total_steps = ama_steps(len(d_prompts), args)  # the ETA of each AMA arm's progress line
        for mean in args.mean_pre_weights:
            # 4. initialise s = logit(gbar): every group at gbar, plain averaging of the Linear weights
            init = group_ratios(torch.full((max(groups) + 1,), math.log(mean / (1 - mean))), mean, args.eps)
            init_slots = merger.ama_slots(init, groups, mean, args.nonlinear)
            nll0 = full_nll(merger, init_slots, tokenizer, d_prompts, d_texts, args, device)
            point("ama_init", mean, init_slots, d_nll=nll0)
            # 5. --epochs over D: merge at the live ratios, proxy NLL + lambda x L1, an Adam step on s only
            arm_start = time.time()
            ratios = train_ama(merger, tokenizer, d_prompts, d_texts, mean, groups, layer_weights, args, run)
            # 6. merge once at the final ratios; evaluate reward and tax like every other arm
            slots = merger.ama_slots(ratios, groups, mean, args.nonlinear)
            nll = full_nll(merger, slots, tokenizer, d_prompts, d_texts, args, device)
            row = point("ama", mean, slots, d_nll=nll, gammas=[round(g, 4) for g in ratios.tolist()])
            print(
                f"AMA gbar {mean:g}: gamma_k {row['gammas']}, D NLL {nll0:.4f} -> {nll:.4f}, reward "
                f"{row.get('reward')}, tax accuracy {row.get('tax_accuracy')} ({time.time() - arm_start:.1f} s)",
                flush=True,
            )
            if args.save_model:
                merger.save(run.dir / f"ama_g{mean:g}", slots, tokenizer)
    merger.close()  # post is theta again
    if args.save_model and toy:
        post.save_pretrained(run.dir / "theta")

    # 7. the fronts: hypervolumes, plot and table
    summary = summarise(results, args, run, groups)
    summary["rsf_seconds"] = round(rsf_seconds, 1)
    summary["wall_seconds"] = round(time.time() - start, 1)
    (run.dir / "results.json").write_text(json.dumps({"rows": results, **summary}, indent=2) + "\n")
    return {"rows": results, "run_dir": run.dir, "post": post, "pre": pre, **summary}


# TRY NOT TO MODIFY: the table, the hypervolumes and the plot ----------------------------------------------------------


def summarise(results: list[dict], args: Args, run: RunLogger, groups: list[int]) -> dict:
    """The MA vs AMA table at each mean pre weight, partwise rows, hypervolumes, and fronts.png."""
    by = {(r["arm"], round(r["pre_weight"], 6)): r for r in results}
    have_both = all("reward" in r and "tax_accuracy" in r for r in results)
    out = {}
    if have_both:
        theta, theta0 = by[("ma", 0.0)], by[("ma", 1.0)]
        ref = (theta0["reward"], theta["tax_accuracy"])
        box = (theta["reward"] - ref[0]) * (theta0["tax_accuracy"] - ref[1])
        ends = [(theta["reward"], theta["tax_accuracy"]), (theta0["reward"], theta0["tax_accuracy"])]

        def hv(arm: str, means=None) -> float:
            chosen = [r for r in results if r["arm"] == arm and (means is None or r["pre_weight"] in means)]
            pts = [(r["reward"], r["tax_accuracy"]) for r in chosen]
            return hypervolume(pts + ends, ref) / box if box > 0 else float("nan")

        means = set(args.mean_pre_weights)
        out = {"hv_ma": hv("ma", means), "hv_ma_all": hv("ma"), "box": box}
        if "ama" in args.arms:
            out.update(hv_ama=hv("ama"), hv_ama_init=hv("ama_init"))
        if "partwise" in args.arms:
            out["hv_partwise"] = {p: hv(f"partwise_{p}") for p in ("input", "middle", "output")}
    rows = []
    for gamma in sorted({r["pre_weight"] for r in results if r["arm"] in ("ma", "ama")}):
        ma, init, ama = (by.get((arm, round(gamma, 6)), {}) for arm in ("ma", "ama_init", "ama"))
        gammas = " ".join(f"{g:.2f}" for g in ama["gammas"]) if ama else None
        nll = f"{init['d_nll']:.3f} -> {ama['d_nll']:.3f}" if ama else None
        cells = (gamma, ma.get("reward"), ma.get("tax_accuracy"), init.get("reward"), init.get("tax_accuracy"))
        rows.append(dict(zip(COLUMNS, cells + (ama.get("reward"), ama.get("tax_accuracy"), gammas, nll))))
    parts = [
        {"arm": r["arm"], "r": r["pre_weight"], "reward": r.get("reward"), "tax acc": r.get("tax_accuracy")}
        for r in results
        if r["arm"].startswith("partwise")
    ]
    text = (
        f"groups {args.groups} {groups}, eps {args.eps}, lambda {args.reg_coef}, nonlinear={args.nonlinear}; "
        "gamma = weight on theta0 (0 = theta after RSF, 1 = theta0)\n\n" + format_table(rows)
    )
    if parts:
        text += "\n\npartwise MA (one third at pre weight r, rest theta):\n\n" + format_table(parts)
    if out:
        hv_line = ", ".join(f"{k} {v:.3f}" for k, v in out.items() if isinstance(v, float) and k != "box")
        if "hv_partwise" in out:
            hv_line += ", partwise " + " ".join(f"{k} {v:.3f}" for k, v in out["hv_partwise"].items())
        text += f"\n\nhypervolume / box (ref = theta0's reward x theta's accuracy; same mean grid): {hv_line}"
        plot_fronts(results, run.dir / "fronts.png")
    run.finish(text)
    return out


def plot_fronts(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    styles = {"ma": ("o-", "plain MA"), "ama": ("s-", "AMA"), "ama_init": ("x:", "AMA at init")}
    for arm, (style, label) in styles.items():
        pts = sorted((r["pre_weight"], r["reward"], r["tax_accuracy"]) for r in results if r["arm"] == arm)
        if pts:
            ax.plot([p[1] for p in pts], [p[2] for p in pts], style, label=label, ms=5)
            for g, x, y in pts if arm != "ama_init" else []:
                ax.annotate(f"{g:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for marker, part in zip("^v>", ("input", "middle", "output")):
        pts = [(r["reward"], r["tax_accuracy"]) for r in results if r["arm"] == f"partwise_{part}"]
        if pts:
            ax.plot(*zip(*pts), marker, ls="none", label=f"partwise {part}", alpha=0.7)
    ax.set_xlabel("reward (alignment, higher is better)")
    ax.set_ylabel("held-out ability accuracy (tax, higher is better)")
    ax.set_title("reward vs alignment tax; labels = pre weight gamma")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
