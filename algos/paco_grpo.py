# arXiv:2512.04784 (PaCo-RL) | docs: docs/paco_grpo.md (details, deviations, metrics, results, reproducing the paper)
"""PaCo-GRPO, from "PaCo-RL: Advancing Reinforcement Learning for Consistent Image Generation with Pairwise Reward
Modeling" (Ping, Jia, Luo, Xia, Shen, Dang, Qian, arXiv 2025, https://arxiv.org/abs/2512.04784; code
https://github.com/X-GenGroup/PaCo-RL, folder PaCo-GRPO/). Flow-GRPO on a flow-matching image model rewarded by a
pairwise consistency judge plus a text-alignment reward, made cheap by sampling and training at half the resolution
per side, and stable by "log-taming" a high-variance reward before the group-normalised advantages. The offline toy
(two-panel shape sets; 4 arms x 3 seeds from one pretrained 15k-parameter velocity net; a few minutes on 2 CPU
cores): python algos/paco_grpo.py

Idea: a reward whose coefficient of variation over the epoch is above delta (the consistency judge) dominates the
advantages and drives the sets to near-duplicates; log(1 + R), an order-preserving squash, tames it. The velocity
net runs at any resolution, so rollouts and updates at half resolution cost about a quarter and the same weights
deploy at full resolution.

    SDE step (t=1 noise, dt = t' - t < 0):  sigma_t = a sqrt(t / (1 - t))
        mu = x + [v + sigma_t^2 / (2t) (x + (1 - t) v)] dt,   x' = mu + sigma_t sqrt(-dt) z,   a = 0: x' = x + v dt
        log pi = MEAN over latent entries of log N(x'; mu, sigma_t^2 (-dt))
    log-tame: h_k = std(R_k) / (mean(R_k) + 1e-6) over the whole epoch;  R~_k = log(1 + R_k) if h_k > delta else R_k
              r = sum_k w_k R~_k;   A = (r - mean_group r) / max(std r, 1e-6)   [paper Eq. 2]
              (std over the epoch [code paco_grpo/stat_tracking.py], or per group [paper Eq. 2])
    loss = mean max(-A rho, -A clip(rho, 1 - eps, 1 + eps)),  rho = exp(log pi - log pi_old),  A clipped to +-5

Source tags on the lines that implement a detail: [paper <where>] = arXiv:2512.04784 v2; [code <file>] =
X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/<file>; [flow_grpo <file>] = yifan123/flow_grpo, the Flow-GRPO code PaCo builds
on; "reconstruction" where neither says (the toy world is ours). Arms, from the same weights and seeds: paco (trained
at 8 px per panel, log-tame), sum (8 px, plain weighted sum), full-res (16 px) and quarter-res (4 px), all evaluated
at 16 px.

Commands:
    python algos/paco_grpo.py                                  # offline toy: 4 arms x 3 seeds
    python algos/paco_grpo.py --arms paco sum --num-seeds 1 --std group
    python algos/paco_grpo.py --model-name stabilityai/stable-diffusion-3.5-medium --image-size 1024 \
        --train-res half --epochs 50 --num-prompts 4 --num-generations 16 --guidance-scale 4.5 \
        --learning-rate 3e-4 --sample-batch-size 8 --micro-batch-size 9 --gradient-checkpointing
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

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

Arm = Literal["paco", "sum", "full-res", "quarter-res"]
# arm -> (train resolution, aggregation); None = take --train-res / --agg
ARM_SETUP = {"paco": (None, None), "sum": (None, "sum"), "full-res": ("full", None), "quarter-res": ("quarter", None)}
RES_FACTOR = {"full": 1, "half": 2, "quarter": 4}  # panel side at evaluation / panel side in training
DTYPE_NAMES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")  # shared.runs.pick_dtype's names
SHAPES = ("disk", "square", "cross", "ring")
REAL_PROMPTS = tuple(
    f"a 2x2 grid: the same {x}"
    for x in (
        "red fox in four seasons",
        "robot in four rooms",
        "paper boat on four waters",
        "lighthouse at dawn, noon, dusk and night",
    )
)
PROMPTS = ((0, 1), (1, 2), (2, 3), (3, 0))  # the RL / eval prompts (shape A, shape B); pretraining sees all 12 pairs
CV_EPSILON = 1e-6  # h_k = std / (mean + 1e-6) [code config/grpo.py log_tame_aggregate_fn]
STD_FLOOR = 1e-6  # floor of the advantage's std: equal rewards give A = 0 [code paco_grpo/stat_tracking.py]
REWARD_PANEL_SIDE = 16  # rewards see panels resized to 16 x 16 whatever the sampling resolution (reconstruction)
CONSISTENCY_KAPPA = 8.0  # sharpness of the toy's consistency sigmoid (reconstruction)
EVAL_NOISE_SEED = 10_000  # evaluation noise: the same for every arm, seed and evaluation point
SHOWN_METRICS = (
    "reward",
    "rewards/cons/mean",
    "charts/duplicate_rate",
)  # the toy's progress line; all go to TensorBoard
TOY_MICRO_BATCH = 32  # the toy's default micro-batch: one forward and backward per optimizer step
REAL_MICRO_BATCH = 9  # the real path's default micro-batch: flow_grpo's SD3 train batch
REAL_SAMPLE_BATCH = 8  # the real path's default sampling / decoding / reward chunk
# The toy's pretraining recipe; changing any of these (or --pretrain-steps / --pretrain-learning-rate) is a new cache
PRETRAIN_CACHE_VERSION = 1
PRETRAIN_SEED = 0  # pretraining's data and noise; every seed and arm of a run starts from the same pretrained weights
PRETRAIN_BATCH = 64  # sets per rectified-flow step
SHARED_STYLE_SHARE = 0.3  # share of pretraining sets whose two panels share one style (so consistency has headroom)
CLASSIFIER_STEPS = 300  # the frozen shape classifier: about 5 s of training on single panels
CLASSIFIER_BATCH = 128
CLASSIFIER_LEARNING_RATE = 3e-3
PROTOTYPE_PANELS = 256  # panels per shape averaged into its prototype embedding (R_align)
TAU_SETS = 2048  # pretraining-like sets whose median panel distance is tau (R_cons)


@dataclass
class Args:
    exp_name: str = "toy"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """first seed of sampling and training (the same for every arm)"""
    num_seeds: int = 3
    """toy: seeds per arm (seed, seed + 1, ...); the table shows their mean and sd"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16 (real path; the toy runs in fp32)"""
    track: bool = False
    """also log to Weights & Biases"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest for the tiny net)"""
    model_name: str = "toy"
    """toy (the two-panel toy) or a diffusers StableDiffusion3Pipeline folder / hub id"""
    arms: tuple[Arm, ...] = ("paco", "sum", "full-res", "quarter-res")
    """arms to run, each from the same pretrained weights (toy only)"""
    pretrain_steps: int = 1500
    """rectified-flow pretraining steps of the toy velocity net (cached by recipe)"""
    pretrain_learning_rate: float = 3e-3
    """AdamW learning rate of the toy's rectified-flow pretraining (cosine to 0; part of the cache recipe)"""
    eval_res: int = 16
    """toy panel side at evaluation (high resolution)"""
    image_size: int = 64
    """real path: image side at evaluation (high resolution) [code config/grpo.py t2is: 1024]"""
    prompts: tuple[str, ...] = REAL_PROMPTS
    """real path: training prompts, 2x2 image sets (the toy uses its 4 shape pairs)"""
    load_t5: bool = True
    """real path: load the T5 text encoder (--no-load-t5: diffusers' memory saving for SD3, zero T5 embeddings)"""
    max_sequence_length: int = 256
    """real path: T5 prompt tokens (the SD3 pipeline's default 256)"""
    guidance_scale: float = 1.0
    """real path: classifier-free guidance (1 = none)"""
    lora_rank: int = 8
    """real path: LoRA rank on the transformer attention [code scripts/train_flux.py, FLUX: 64]"""
    rewards: tuple[str, ...] = ("cons", "align")
    """rewards to aggregate (toy: cons, align; real: keys of REAL_REWARDS)"""
    reward_weights: tuple[float, ...] = (1.0, 1.0)
    """w_k per reward (the paper gives none for its log-tame run: 1 each, reconstruction)"""
    agg: Literal["logtame", "sum"] = "logtame"
    """reward aggregation of the method arm: log-tame or a plain weighted sum"""
    delta: str = "0.2"
    """log-tame threshold on the coefficient of variation: a number, mean or median [paper, T2IS: 0.2]"""
    std: Literal["global", "group"] = "global"
    """advantage normaliser: std over the epoch [code paco_grpo/stat_tracking.py] or per group [paper Eq. 2]"""
    train_res: Literal["half", "full", "quarter"] = "half"
    """training resolution of the method arm, per side, relative to the evaluation resolution"""
    num_steps: int = 10
    """denoising steps while sampling for training [code config/grpo.py: 10]"""
    eval_steps: int = 20
    """ODE steps at evaluation [code config/grpo.py: 20]"""
    noise_steps: tuple[int, ...] = (1,)
    """step indices with SDE noise, the only ones trained [code config/grpo.py, the Fast variant: 1]"""
    noise_level: float = 0.7
    """a, the SDE noise scale at the noise steps [code config/grpo.py: 0.7]"""
    shift: float = 1.0
    """constant time shift t -> s t / (1 + (s - 1) t) of the toy schedule (the real path uses the scheduler's)"""
    epochs: int = 40
    """RL epochs per arm"""
    num_prompts: int = 4
    """prompts per epoch (toy: at most 4)"""
    num_generations: int = 16
    """G, samples per prompt [paper; code config/grpo.py: 16]"""
    micro_batch_size: Optional[int] = None
    """samples per training forward and backward, x2 with CFG; gradients accumulate over an optimizer step's samples
    (default: 32 on the toy; 9 on the real path, flow_grpo's SD3 train batch)"""
    sample_batch_size: Optional[int] = None
    """real path: samples per transformer call while sampling, and per VAE decode and reward call (default 8)"""
    gradient_checkpointing: bool = False
    """real path: recompute the transformer's activations in backward (less memory, about a third more compute)"""
    uncond_grad: bool = False
    """real path, CFG: let the gradient flow through the unconditional branch of the training pass too (default: it is
    detached, as in flow_grpo's SD3 trainer, so training moves only the conditional velocity)"""
    updates_per_epoch: int = 2
    """optimizer steps per epoch, each over epoch samples / updates [code config/grpo.py: 2]"""
    learning_rate: float = 3e-4
    """AdamW learning rate of the RL updates [paper; code config/grpo.py]"""
    weight_decay: float = 1e-4
    """AdamW weight decay [code config/base.py]"""
    epsilon: float = 1e-4
    """PPO ratio clip [paper; code config/base.py]"""
    adv_clip: float = 5.0
    """advantage clip [code config/base.py]"""
    max_grad_norm: float = 1.0
    """grad-norm clip [code config/base.py]"""
    eval_sets: int = 32
    """final evaluation sets per prompt (the curve uses a quarter of them)"""


# ALGO LOGIC: the flow SDE step and its log-prob --------------------------------------------------------------------
def sde_step_with_logprob(model_output, sigma, sigma_next, sample, noise_level, prev_sample=None, generator=None):
    """Flow-GRPO SDE step from t = sigma to t' = sigma_next; returns (x', mean log N(x'; mu, sigma_t^2 (-dt))).

    [code paco_grpo/diffusers_patch/sde_denoising_step.py], itself Flow-GRPO's SD3 step: fp32, the target detached
    inside the log-prob, the mean over the non-batch dims. At t = 1 the denominator uses sigma_next (= t_1 at step 0);
    so does PaCo: [code paco_grpo/diffusers_patch/flux_pipeline.py] passes sigma_max = t_1, its step's default 0.98
    is never used. noise_level 0 returns the Euler step and a zero log-prob (the Gaussian is degenerate there)."""
    model_output = (
        model_output.float()
    )  # [B, ...] fp32: bf16 overflows here [code paco_grpo/diffusers_patch/sde_denoising_step.py]
    sample = sample.float()  # [B, ...]
    per_sample = (-1, *([1] * (sample.dim() - 1)))  # scalars or [B] broadcast as [B or 1, 1, ...]
    sigma = torch.as_tensor(sigma, device=sample.device).float().reshape(per_sample)  # [B or 1, 1, ...] t
    sigma_next = torch.as_tensor(sigma_next, device=sample.device).float().reshape(per_sample)  # [B or 1, 1, ...] t'
    dt = sigma_next - sigma  # [B, 1, ...] < 0
    if noise_level == 0:  # the Euler ODE step; the Gaussian is degenerate, log-prob 0 by convention
        mean = sample + model_output * dt  # [B, ...]
        out = mean if prev_sample is None else prev_sample.float()
        return out, torch.zeros(sample.shape[0], device=sample.device)
    denominator = torch.where(
        sigma >= 1, sigma_next, sigma
    )  # t = 1: t_1 replaces t in 1 - t [flow_grpo diffusers_patch/sd3_sde_with_logprob.py]
    std_dev_t = noise_level * torch.sqrt(sigma / (1 - denominator))  # [B, 1, ...] sigma_t = a sqrt(t / (1 - t))
    drift = model_output + std_dev_t**2 / (2 * sigma) * (sample + (1 - sigma) * model_output)  # [B, ...]
    mean = sample + drift * dt  # [B, ...] mu_theta
    step_std = std_dev_t * torch.sqrt(-dt)  # [B, 1, ...]
    if prev_sample is None:
        noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev_sample = mean + step_std * noise  # [B, ...]
    target = prev_sample.detach().float()  # [B, ...]
    log_prob = -((target - mean) ** 2) / (2 * step_std**2) - torch.log(step_std) - 0.5 * math.log(2 * math.pi)
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.dim())))  # [B, ...], [B]


def time_grid(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """t_i = shift(linspace(1, 1/N, N)) then t_N = 0 ([N + 1]); shift is SD3's constant one (reconstruction for the
    toy: FLUX's shift depends on the resolution)."""
    t = torch.linspace(1.0, 1.0 / num_steps, num_steps)  # [N]
    return torch.cat([shift * t / (1 + (shift - 1) * t), torch.zeros(1)])  # [N + 1]


# ALGO LOGIC: log-tame aggregation, group advantages and the clipped loss ------------------------------------------
def coefficients_of_variation(rewards: dict[str, torch.Tensor]) -> dict[str, float]:
    """h_k = std(R_k) / (mean(R_k) + 1e-6) over all the epoch's samples, population std (as np.std)
    [code config/grpo.py log_tame_aggregate_fn]."""
    return {
        name: (values.std(unbiased=False) / (values.mean() + CV_EPSILON)).item() for name, values in rewards.items()
    }


def cv_threshold(cvs: dict[str, float], delta: float | str) -> float:
    """delta as a number [paper: 0.2], or the mean / median of the h_k [code config/grpo.py log_tame_aggregate_fn]."""
    if delta in ("mean", "median"):
        return getattr(torch.tensor(list(cvs.values())), delta)().item()
    return float(delta)


def log_tame(rewards: dict[str, torch.Tensor], weights: dict[str, float], delta: float | str) -> torch.Tensor:
    """r = sum_k w_k R~_k with R~_k = log(1 + R_k) where h_k = std/(mean + 1e-6) over the epoch exceeds delta
    [paper Eq. 2]. A tamed reward with a value <= -1 or a negative mean is refused (log(1 + R) or h would be NaN or
    meaningless), never a silent NaN."""
    for name, values in rewards.items():
        if not torch.isfinite(values).all():
            raise ValueError(f"reward {name!r} has non-finite values")
    cvs = coefficients_of_variation(rewards)
    threshold = cv_threshold(cvs, delta)
    total = 0.0
    for name, values in rewards.items():
        tame = cvs[name] > threshold
        if tame and (values.min() <= -1 or values.mean() < 0):
            message = "its coefficient of variation need R in [0, inf); shift the reward or use --agg sum"
            raise ValueError(f"reward {name!r} has values <= -1 or a negative mean: log(1 + R) and {message}")
        total = total + weights[name] * (torch.log1p(values) if tame else values)  # [B]
    return total


def aggregate(rewards: dict[str, torch.Tensor], weights: dict[str, float], agg: str, delta) -> torch.Tensor:
    """The method's log-tame, or the plain weighted sum (Flow-GRPO; the shipped T2IS config [code config/grpo.py])."""
    if agg == "logtame":
        return log_tame(rewards, weights, delta)  # [B]
    return sum(weight * rewards[name] for name, weight in weights.items())  # [B]


def group_advantages(rewards: torch.Tensor, group_size: int, std: str = "global") -> torch.Tensor:
    """A_i = (r_i - mean_G r) / max(std r, 1e-6), population std over the epoch (global, the code's default) or the
    group (group, [paper Eq. 2]) [code paco_grpo/stat_tracking.py]. Applied AFTER taming, as Eq. 2 says: the shipped
    log-tame factory returns the tamed sum as the advantage itself [code config/grpo.py]."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} >= 2")
    grouped = rewards.view(-1, group_size)  # [B/G, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B/G, G]
    if std not in ("global", "group"):
        raise ValueError(f"std {std!r} is not global or group")
    if std == "global":
        scale = rewards.std(unbiased=False)  # scalar
    else:
        scale = grouped.std(dim=1, unbiased=False, keepdim=True)  # [B/G, 1]
    scale = scale.clamp(min=STD_FLOOR)  # scalar (global) or [B/G, 1] (group)
    return (centred / scale).reshape(-1)  # [B]


def ppo_clip_loss(log_prob, old_log_prob, advantages, epsilon: float, adv_clip: float):
    """mean max(-A rho, -A clip(rho, 1 - eps, 1 + eps)), A clipped to +-adv_clip [paper Eq. 1; code config/base.py
    clip_range, adv_clip_max]; also the shares of clipped ratios."""
    adv = advantages.clamp(-adv_clip, adv_clip)  # [B]
    ratio = torch.exp(log_prob - old_log_prob)  # [B]
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - epsilon, 1 + epsilon)).mean()
    with torch.no_grad():
        low = (ratio < 1 - epsilon) & (adv < 0)  # [B]
        high = (ratio > 1 + epsilon) & (adv > 0)  # [B]
        shares = {"clip_ratio/low_mean": low, "clip_ratio/high_mean": high, "clip_ratio/region_mean": low | high}
    return loss, {k: v.float().mean().item() for k, v in shares.items()}


def reward_metrics(rewards: dict[str, torch.Tensor], total: torch.Tensor, group_size: int, delta) -> dict:
    """TRL-style reward logs plus each reward's coefficient of variation and whether it was tamed."""
    cvs = coefficients_of_variation(rewards)
    threshold = cv_threshold(cvs, delta)
    out = {"reward": total.mean().item(), "reward_std": total.view(-1, group_size).std(1).mean().item()}
    for k, v in rewards.items():
        out |= {f"rewards/{k}/mean": v.mean().item(), f"rewards/{k}/std": v.std().item(), f"rewards/{k}/cv": cvs[k]}
        out[f"rewards/{k}/tamed"] = float(cvs[k] > threshold)
    return out


# TRY NOT TO MODIFY: the toy world (reconstruction): two-panel shape sets, a velocity net, two frozen rewards -------
def render_panels(shapes: torch.Tensor, styles: torch.Tensor, res: int) -> torch.Tensor:
    """Panels [B, P, res, res] in [0, 1]: shape ids [B, P], styles [B, P, 4] = (intensity, scale, dx, dy), 4x SSAA."""
    fine = 4 * res
    grid = (torch.arange(fine) + 0.5) / fine * 2 - 1  # [4r]
    y, x = grid.view(1, 1, -1, 1), grid.view(1, 1, 1, -1)
    intensity, scale, dx, dy = (styles[..., i, None, None] for i in range(4))  # [B, P, 1, 1]
    u, v = x - dx, y - dy  # [B, P, 4r, 4r]
    radius = torch.sqrt(u**2 + v**2)  # [B, P, 4r, 4r] for the disk and the ring
    box = torch.maximum(u.abs(), v.abs())  # [B, P, 4r, 4r] for the square
    bar = 0.3 * scale
    cross = ((u.abs() < bar) & (v.abs() < scale)) | ((v.abs() < bar) & (u.abs() < scale))
    ring = (radius < scale) & (radius > 0.6 * scale)
    masks = torch.stack([radius < scale, box < 0.8 * scale, cross, ring]).float()  # [4, B, P, 4r, 4r] as SHAPES
    mask = masks.gather(0, shapes[None, :, :, None, None].expand(1, -1, -1, fine, fine))[0]  # [B, P, 4r, 4r]
    return F.avg_pool2d(mask * intensity, 4)  # [B, P, r, r]


def random_styles(batch: int, panels: int, shared_share: float, generator) -> torch.Tensor:
    """Per-panel styles [B, P, 4]; a `shared_share` of sets use one style for all panels."""
    low, high = torch.tensor([0.3, 0.4, -0.15, -0.15]), torch.tensor([1.0, 0.9, 0.15, 0.15])
    styles = low + (high - low) * torch.rand(batch, panels, 4, generator=generator)  # [B, P, 4]
    shared = torch.rand(batch, generator=generator) < shared_share  # [B]
    return torch.where(shared[:, None, None], styles[:, :1].expand_as(styles), styles)


def to_sets(panels: torch.Tensor) -> torch.Tensor:
    """[B, P, r, r] panels in [0, 1] -> images [B, 1, r, P r] in [-1, 1] (panels side by side)."""
    return torch.cat(panels.unbind(1), dim=-1).unsqueeze(1) * 2 - 1


def to_panels(images: torch.Tensor, num_panels: int = 2, size: int = REWARD_PANEL_SIDE) -> torch.Tensor:
    """Images [B, 1, r, P r] in [-1, 1] -> panels [B, P, size, size] in [0, 1] (bilinear resize)."""
    panels = torch.stack(images[:, 0].chunk(num_panels, dim=-1), dim=1)  # [B, P, r, r]
    panels = ((panels + 1) / 2).clamp(0, 1)
    return F.interpolate(panels, size=(size, size), mode="bilinear", align_corners=False)  # identity at r = size


class VelocityNet(nn.Module):
    """Fully convolutional v(x_t, t, prompt) for 2-panel sets: FiLM on (t, prompt), a pooled vector broadcast back."""

    def __init__(self, channels: int = 16, layers: int = 4, embed: int = 32):
        super().__init__()
        self.conv_in = nn.Conv2d(1 + len(SHAPES) + 2, channels, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(layers - 1))
        self.pools = nn.ModuleList(nn.Linear(channels, channels) for _ in range(layers))
        self.time_mlp = nn.Sequential(nn.Linear(16, embed), nn.SiLU(), nn.Linear(embed, embed))
        self.prompt_embed = nn.Linear(2 * len(SHAPES), embed)
        self.film = nn.Linear(embed, 2 * channels * layers)
        self.conv_out = nn.Conv2d(channels, 1, 3, padding=1)
        self.layers = layers
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        batch, _, res, width = x.shape  # [B, 1, r, 2r]
        panel_of_column = torch.arange(width, device=x.device) * 2 // width  # [2r] 0 = left, 1 = right
        shape_map = F.one_hot(prompts[:, panel_of_column], len(SHAPES)).float()  # [B, 2r, S]
        shape_map = shape_map.permute(0, 2, 1)[:, :, None, :].expand(-1, -1, res, -1)  # [B, S, r, 2r]
        coords = (torch.arange(res, device=x.device) + 0.5) / res * 2 - 1  # [r] in-panel coordinate
        coord_y = coords.view(1, 1, res, 1).expand(batch, 1, res, width)  # [B, 1, r, 2r]
        coord_x = coords.repeat(2).view(1, 1, 1, width).expand(batch, 1, res, width)  # [B, 1, r, 2r] per panel
        h = torch.cat([x, shape_map, coord_y, coord_x], dim=1)  # [B, 7, r, 2r]
        freqs = torch.exp(torch.linspace(0, math.log(100), 8, device=x.device))  # [8]
        t_feat = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)  # [B, 16]
        prompt_feat = F.one_hot(prompts, len(SHAPES)).float().flatten(1)  # [B, 2S]
        film = self.film(F.silu(self.time_mlp(t_feat) + self.prompt_embed(prompt_feat)))  # [B, 2 C L]
        film = film.view(batch, self.layers, 2, self.channels, 1, 1)
        for i, conv in enumerate([self.conv_in, *self.convs]):
            h = conv(h)  # [B, C, r, 2r]
            h = h * (1 + film[:, i, 0]) + film[:, i, 1] + self.pools[i](h.mean(dim=(2, 3)))[:, :, None, None]
            h = F.silu(h)
        return self.conv_out(h)  # [B, 1, r, 2r]


class ShapeClassifier(nn.Module):
    """Frozen tiny CNN on 16x16 panels; its 32-d embedding gives R_align, its argmax the duplicate rate."""

    def __init__(self):
        super().__init__()
        conv = [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*conv, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 32), nn.ReLU())
        self.head = nn.Linear(32, len(SHAPES))
        self.register_buffer("prototypes", torch.zeros(len(SHAPES), 32))

    def forward(self, panels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.features(panels.reshape(-1, 1, REWARD_PANEL_SIDE, REWARD_PANEL_SIDE))  # [N, 32]
        return embedding, self.head(embedding)  # [N, 32], [N, S]


def consistency_reward(panels: torch.Tensor, tau: float, kappa: float = CONSISTENCY_KAPPA) -> torch.Tensor:
    """R_cons = mean over panel pairs of sigmoid(kappa (tau - ||phi(i) - phi(j)||)), phi = 4x4 average pool ([B])."""
    features = F.adaptive_avg_pool2d(panels, 4).flatten(2)  # [B, P, 16]
    distances = torch.cdist(features, features)  # [B, P, P]
    i, j = torch.triu_indices(panels.shape[1], panels.shape[1], offset=1)
    return torch.sigmoid(kappa * (tau - distances[:, i, j])).mean(dim=1)  # [B]


@torch.no_grad()
def toy_rewards(images: torch.Tensor, prompts: torch.Tensor, classifier: ShapeClassifier, tau: float) -> dict:
    """{cons, align} ([B] each), plus the duplicate flag: both panels classified as the same shape."""
    panels = to_panels(images)  # [B, 2, 16, 16]
    embedding, logits = classifier(panels)  # [2B, 32], [2B, S]
    cosine = F.cosine_similarity(embedding, classifier.prototypes[prompts.reshape(-1)], dim=-1)  # [2B]
    predicted = logits.argmax(-1).view(-1, 2)  # [B, 2]
    align = cosine.view(-1, 2).mean(dim=1)  # [B]
    return {"cons": consistency_reward(panels, tau), "align": align, "duplicate": (predicted[:, 0] == predicted[:, 1])}


def pretrain_toy(args: Args):
    """The pretrained velocity net, the frozen classifier and tau, cached under runs/cache/paco_grpo/ by recipe."""
    recipe = {
        "v": PRETRAIN_CACHE_VERSION,
        "steps": args.pretrain_steps,
        "seed": PRETRAIN_SEED,
        "batch": PRETRAIN_BATCH,
        "lr": args.pretrain_learning_rate,
    }
    key = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    cache_root = Path(os.environ.get("REWARDLAB_CACHE", Path(__file__).resolve().parents[1] / "runs" / "cache"))
    path = cache_root / "paco_grpo" / f"toy-{key}.pt"
    net = VelocityNet()  # initialised from the global RNG (main seeds it with --seed), then net, then classifier
    classifier = ShapeClassifier()
    if path.exists():
        state = torch.load(path)
        net.load_state_dict(state["net"])
        classifier.load_state_dict(state["classifier"])
        return net, classifier.requires_grad_(False).eval(), state["tau"]
    generator = torch.Generator().manual_seed(PRETRAIN_SEED)
    torch.manual_seed(PRETRAIN_SEED)
    pairs = torch.tensor([(a, b) for a in range(len(SHAPES)) for b in range(len(SHAPES)) if a != b])  # [12, 2]
    # 1. the classifier: single panels of random styles at r = 8 or 16, resized to 16
    optimizer = torch.optim.Adam(classifier.parameters(), lr=CLASSIFIER_LEARNING_RATE)
    progress = Progress("shape classifier", total=CLASSIFIER_STEPS)
    for step in range(CLASSIFIER_STEPS):
        shapes = torch.randint(len(SHAPES), (CLASSIFIER_BATCH, 1), generator=generator)  # [N, 1]
        styles = random_styles(CLASSIFIER_BATCH, 1, 0.0, generator)  # [N, 1, 4]
        panels = render_panels(shapes, styles, 8 if step % 2 else 16)  # [N, 1, r, r]
        panels = F.interpolate(
            panels, size=(REWARD_PANEL_SIDE, REWARD_PANEL_SIDE), mode="bilinear", align_corners=False
        )
        loss = F.cross_entropy(classifier(panels)[1], shapes[:, 0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.update(loss=loss.item())
    progress.done(f"loss {loss.item():.3f}")
    # 2. prototypes = mean embedding per shape; tau = median panel distance of pretraining-like sets
    with torch.no_grad():
        shapes = torch.arange(len(SHAPES)).repeat_interleave(PROTOTYPE_PANELS)[:, None]  # [S * 256, 1]
        styles = random_styles(len(shapes), 1, 0.0, generator)
        embedding = classifier(render_panels(shapes, styles, REWARD_PANEL_SIDE))[0]  # [S * 256, 32]
        classifier.prototypes.copy_(embedding.view(len(SHAPES), PROTOTYPE_PANELS, -1).mean(1))
        set_shapes = pairs[torch.randint(len(pairs), (TAU_SETS,), generator=generator)]  # [N, 2]
        sets = render_panels(set_shapes, random_styles(TAU_SETS, 2, SHARED_STYLE_SHARE, generator), REWARD_PANEL_SIDE)
        features = F.adaptive_avg_pool2d(sets, 4).flatten(2)  # [N, 2, 16]
        tau = (features[:, 0] - features[:, 1]).norm(dim=-1).median().item()
    # 3. rectified flow: x_t = (1 - t) x_0 + t eps, target v = eps - x_0, on r = 8 and r = 16 batches
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.pretrain_steps)
    progress = Progress("pretraining", total=args.pretrain_steps)
    for step in range(args.pretrain_steps):
        prompts = pairs[torch.randint(len(pairs), (PRETRAIN_BATCH,), generator=generator)]  # [64, 2]
        styles = random_styles(PRETRAIN_BATCH, 2, SHARED_STYLE_SHARE, generator)  # [64, 2, 4]
        x0 = to_sets(render_panels(prompts, styles, 16 if step % 2 else 8))  # [64, 1, r, 2r]
        t = torch.rand(PRETRAIN_BATCH, generator=generator)  # [64]
        eps = torch.randn(x0.shape, generator=generator)  # [64, 1, r, 2r]
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps  # [64, 1, r, 2r]
        loss = F.mse_loss(net(xt, t, prompts), eps - x0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.update(loss=loss.item())
    progress.done(f"loss {loss.item():.3f}, tau = {tau:.3f}; cached at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"net": net.state_dict(), "classifier": classifier.state_dict(), "tau": tau, "recipe": recipe}, path)
    return net, classifier.requires_grad_(False).eval(), tau


# ALGO LOGIC: the GRPO loop: rollout with the SDE at the noise steps, then PPO-clip at those steps -----------------
class OldPolicy:
    """pi_old: a snapshot of the trainable parameters, swapped in for no-grad forward passes; refreshed every epoch
    (an exact copy: old <- new [code scripts/train_flux.py])."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.refresh()

    def refresh(self) -> None:
        self.snapshot = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def log_prob(self, velocity, x, sigma, sigma_next, cond, noise_level, x_next) -> torch.Tensor:
        current = [p.detach().clone() for p in self.params]
        torch._foreach_copy_(self.params, self.snapshot)
        log_prob = sde_step_with_logprob(velocity(x, sigma, cond), sigma, sigma_next, x, noise_level, x_next)[1]
        torch._foreach_copy_(self.params, current)
        return log_prob  # [B]


@torch.no_grad()
def rollout(velocity, x, cond, sigmas, noise_steps, noise_level: float, generator=None, progress=None):
    """Denoise x_T = x over `sigmas`; SDE noise only at `noise_steps` (the "Fast" variant: noise and training at
    index 1 [paper; code config/grpo.py]); keeps (x_t, x_next, log pi) at those steps. `progress` (a
    shared.runs.Progress) counts the steps."""
    trajectory = {}
    for i in range(len(sigmas) - 1):
        level = noise_level if i in noise_steps else 0.0
        sigma = sigmas[i].expand(len(x))  # [B]
        v = velocity(x, sigma, cond)  # [B, ...]
        x_next, log_prob = sde_step_with_logprob(v, sigma, sigmas[i + 1], x, level, None, generator)
        if i in noise_steps:
            trajectory[i] = (x, x_next.to(x.dtype), log_prob)
        x = x_next.to(x.dtype)
        if progress is not None:
            progress.update()
    return x, trajectory


def training_micro_batch(args: Args) -> int:
    """--micro-batch-size, or its default: 32 on the toy (one pass per optimizer step), 9 on the real path."""
    if args.micro_batch_size:
        return args.micro_batch_size
    return TOY_MICRO_BATCH if args.model_name == "toy" else REAL_MICRO_BATCH


def grpo_update(velocity, params, old: OldPolicy, optimizer, trajectory, cond, advantages, sigmas, args, ref=None):
    """`--updates-per-epoch` AdamW steps, each over an equal shuffled share of the epoch's samples, gradients
    accumulated over micro-batches (2 steps per epoch over half the samples each, grad clip 1.0 [code config/grpo.py,
    config/base.py]). The old log-probs are recomputed with pi_old per micro-batch, not stored, so rho = 1 on the
    first update of an epoch [code scripts/train_flux.py]."""
    num_samples = len(advantages)
    logs = []
    device = params[0].device
    per_update = num_samples // args.updates_per_epoch
    order = torch.randperm(num_samples, device=advantages.device)
    for update in range(args.updates_per_epoch):
        optimizer.zero_grad(set_to_none=True)
        for mb in order[update * per_update : (update + 1) * per_update].split(training_micro_batch(args)):
            for i, (x_t, x_next, _) in trajectory.items():
                x_mb = x_t[mb].to(device)  # [M, ...] (the trajectory may wait on the CPU)
                x_next_mb = x_next[mb].to(device)  # [M, ...]
                cond_mb = cond[mb].to(device)  # [M, ...]
                advantages_mb = advantages[mb].to(device)  # [M]
                sigma = sigmas[i].expand(len(mb))  # [M]
                sigma_next = sigmas[i + 1]  # scalar
                step = (sigma, sigma_next, cond_mb, args.noise_level, x_next_mb)
                old_log_prob = old.log_prob(velocity, x_mb, *step)  # [M] recomputed, not stored
                v = velocity(x_mb, sigma, cond_mb)  # [M, ...]
                log_prob = sde_step_with_logprob(v, sigma, sigma_next, x_mb, args.noise_level, x_next_mb)[1]  # [M]
                loss, clip = ppo_clip_loss(log_prob, old_log_prob, advantages_mb, args.epsilon, args.adv_clip)
                (loss * len(mb) / per_update / len(trajectory)).backward()
                logs.append({"losses/loss": loss.item(), **clip})
                if ref is not None:  # KL to the start, logged only (beta = 0): mean((mu - mu_ref)^2) / (2 sigma_t^2)
                    t = sigmas[i].item()
                    t_next = sigma_next.item()
                    sigma_t2 = args.noise_level**2 * t / (1 - (t_next if t >= 1 else t))
                    with torch.no_grad():  # mu - mu_ref = (v - v_ref) (1 + sigma_t^2 (1 - t) / (2t)) dt
                        difference = (v - ref(x_mb, sigma, cond_mb)) * (1 + sigma_t2 * (1 - t) / (2 * t))  # [M, ...]
                    difference = difference * (t_next - t)  # [M, ...]
                    logs[-1]["kl"] = (difference**2).mean().item() / (2 * sigma_t2)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
    out = {k: sum(d[k] for d in logs) / len(logs) for k in logs[0]}
    return {**out, "charts/grad_norm": grad_norm.item()}


def train_toy_arm(arm: str, base_net, classifier, tau, args: Args, run: RunLogger, delta, seed: int):
    """One arm and seed from the pretrained weights, logged as the TensorBoard run `<arm>-seed<seed>`: returns the
    trained net, its eval curve, seconds per epoch, the training panel side and the aggregation."""
    train_name = ARM_SETUP[arm][0] or args.train_res
    agg = ARM_SETUP[arm][1] or args.agg
    res = args.eval_res // RES_FACTOR[train_name]  # panel side in training
    group = args.num_generations
    run_arm = arm_run_name(arm, seed)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(base_net).train()
    ref = copy.deepcopy(base_net).requires_grad_(False)  # the start, for the logged KL only
    params = list(net.parameters())
    old = OldPolicy(params)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    sigmas = time_grid(args.num_steps, args.shift)  # [N + 1]
    weights = dict(zip(args.rewards, args.reward_weights))
    prompts = torch.tensor(PROMPTS[: args.num_prompts]).repeat_interleave(group, 0)  # [B, 2] contiguous groups
    curve = []
    train_seconds = 0.0
    for epoch in range(args.epochs + 1):
        if epoch % max(1, args.epochs // 4) == 0 or epoch == args.epochs:
            # TRY NOT TO MODIFY: the curve, evaluated at the high resolution on a quarter of the evaluation sets
            point = evaluate_toy(net, classifier, tau, args, max(1, args.eval_sets // 4))[0]
            curve.append((epoch, train_seconds, point))
            eval_metrics = {f"eval/{k}": v for k, v in point.items()}
            run.log(epoch, eval_metrics | {"charts/train_seconds": train_seconds}, arm=run_arm)
        if epoch == args.epochs:
            break
        epoch_start = time.time()
        # 1. pi_old <- pi_theta (an exact copy, refreshed every epoch)
        old.refresh()
        # 2. sample G sets per prompt at the TRAINING resolution, SDE noise only at the noise steps
        x = torch.randn(len(prompts), 1, res, 2 * res, generator=generator)  # [B, 1, r, 2r]
        images, trajectory = rollout(net, x, prompts, sigmas, args.noise_steps, args.noise_level, generator)
        # 3. score at the training resolution, aggregate (log-tame or sum) over the epoch, THEN group-normalise
        scores = toy_rewards(images, prompts, classifier, tau)
        rewards = {k: scores[k] for k in args.rewards}  # each [B]
        total = aggregate(rewards, weights, agg, delta)  # [B]
        advantages = group_advantages(total, group, args.std)  # [B]
        # 4. PPO-clip (eps = 1e-4) at the noise steps, the old log-probs recomputed with pi_old
        metrics = grpo_update(net, params, old, optimizer, trajectory, prompts, advantages, sigmas, args, ref)
        seconds = time.time() - epoch_start
        train_seconds += seconds
        # TRY NOT TO MODIFY: log the epoch (every arm and seed under the same tag names)
        metrics |= reward_metrics(rewards, total, group, delta) | {"charts/epoch_seconds": seconds}
        metrics["charts/duplicate_rate"] = scores["duplicate"].float().mean().item()
        run.log(epoch, metrics, arm=run_arm)
    return net.eval(), curve, train_seconds / max(args.epochs, 1), res, agg


# TRY NOT TO MODIFY: evaluation, pictures and option checks ---------------------------------------------------------
def arm_run_name(arm: str, seed: int) -> str:
    """The TensorBoard run (runs/<run>/arms/<name>/) of one arm and seed."""
    return f"{arm}-seed{seed}"


@torch.no_grad()
def evaluate_toy(net, classifier, tau, args: Args, sets_per_prompt: int, progress=None):
    """ODE sampling at the evaluation resolution with fixed noise: R_cons, R_align, ratio, duplicate rate (and the
    images). `progress` (a shared.runs.Progress over --eval-steps) counts the ODE steps."""
    generator = torch.Generator().manual_seed(EVAL_NOISE_SEED)  # the same noise for every arm and eval point
    prompts = torch.tensor(PROMPTS[: args.num_prompts]).repeat_interleave(sets_per_prompt, 0)  # [E, 2]
    x = torch.randn(len(prompts), 1, args.eval_res, 2 * args.eval_res, generator=generator)  # [E, 1, R, 2R]
    images, _ = rollout(net, x, prompts, time_grid(args.eval_steps, args.shift), (), 0.0, progress=progress)
    scores = toy_rewards(images, prompts, classifier, tau)
    cons = scores["cons"].mean().item()
    align = scores["align"].mean().item()
    duplicate_rate = scores["duplicate"].float().mean().item()
    metrics = {"reward": cons + align, "r_cons": cons, "r_align": align, "ratio": cons / align}
    metrics["duplicate_rate"] = duplicate_rate
    return metrics, images


def save_grid(path: Path, rows: dict[str, torch.Tensor], per_prompt: int, num_prompts: int) -> None:
    """A PNG: one row per arm of 2 sets per prompt at the evaluation resolution."""
    import matplotlib.pyplot as plt

    columns = [p * per_prompt + k for p in range(num_prompts) for k in range(2)]
    figure, axes = plt.subplots(len(rows), len(columns), figsize=(1.6 * len(columns), len(rows)), squeeze=False)
    for r, (arm, images) in enumerate(rows.items()):
        for c, index in enumerate(columns):
            axes[r, c].imshow(((images[index, 0] + 1) / 2).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, c].set(xticks=[], yticks=[], ylabel=arm if c == 0 else "")
            a, b = PROMPTS[index // per_prompt]
            axes[r, c].set_title(f"{SHAPES[a]}|{SHAPES[b]}" if r == 0 else "", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_delta(delta: str):
    """--delta as a number, or "mean" / "median" (of the h_k)."""
    if delta in ("mean", "median"):
        return delta
    try:
        return float(delta)
    except ValueError:
        fail(f"--delta {delta!r} must be a number (the paper's T2IS value: 0.2), mean or median")


def check_args(args: Args) -> None:
    """Every option is checked before any model or training work."""
    if args.num_generations < 2:
        fail(f"--num-generations {args.num_generations}: GRPO needs groups of at least 2")
    num_samples = args.num_prompts * args.num_generations
    if args.updates_per_epoch < 1 or num_samples % args.updates_per_epoch:
        fail(f"--updates-per-epoch {args.updates_per_epoch} must divide the {num_samples} samples per epoch")
    for name in ("micro_batch_size", "sample_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1 (or left unset for the default)")
    if args.dtype not in DTYPE_NAMES:
        fail(f"--dtype {args.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    steps = set(args.noise_steps)
    if not steps or len(steps) < len(args.noise_steps) or not steps <= set(range(args.num_steps)):
        fail(f"--noise-steps {args.noise_steps} must be distinct indices in 0..{args.num_steps - 1} of the schedule")
    positive = (
        "noise_level",
        "epsilon",
        "adv_clip",
        "learning_rate",
        "pretrain_learning_rate",
        "shift",
        "max_grad_norm",
    )
    for name in positive:
        value = getattr(args, name)
        if not value > 0 or not math.isfinite(value):  # `not > 0` also catches NaN
            fail(f"--{name.replace('_', '-')} {value} must be a positive number")
    if len(args.rewards) != len(args.reward_weights) or len(set(args.rewards)) != len(args.rewards):
        fail(f"--rewards {args.rewards} and --reward-weights {args.reward_weights} must have one weight per reward")
    counts = (
        "epochs num_seeds num_steps eval_steps eval_sets num_threads pretrain_steps num_prompts max_sequence_length"
    )
    for name in counts.split():
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    parse_delta(args.delta)
    if args.model_name != "toy":
        return
    if args.num_prompts > len(PROMPTS):
        fail(f"--num-prompts {args.num_prompts}: the toy has {len(PROMPTS)} prompts")
    if set(args.rewards) - {"cons", "align"}:
        fail(f"--rewards {args.rewards}: the toy has cons and align")
    if not args.arms or len(set(args.arms)) != len(args.arms):
        fail(f"--arms must list distinct arms, got {args.arms}")
    for arm in args.arms:
        factor = RES_FACTOR[ARM_SETUP[arm][0] or args.train_res]
        if args.eval_res % factor or args.eval_res // factor < 4:
            fail(f"arm {arm}: --eval-res {args.eval_res} / {factor} is not a whole panel side >= 4 the net can take")


def mean_of(values: list[float]) -> float:
    return sum(values) / len(values)


def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: option checks, threads, seeding, the run folder
    check_args(args)
    torch.set_num_threads(args.num_threads)
    if args.model_name != "toy":
        return main_real(args)
    seed_everything(args.seed)
    delta = parse_delta(args.delta)
    # 0. the pretrained start (shared by every arm and seed) and the frozen rewards; the run's clock starts after it
    base, classifier, tau = pretrain_toy(args)
    run = RunLogger(
        make_run_name("paco_grpo-toy", args.exp_name, args.seed),
        args,
        track=args.track,
        print_every=20,
        show=SHOWN_METRICS,
        total_steps=args.epochs,
    )
    progress = Progress("evaluating the start", total=args.eval_steps)
    start_eval, start_images = evaluate_toy(base, classifier, tau, args, args.eval_sets, progress)
    progress.done(" ".join(f"{k}={v:.3f}" for k, v in start_eval.items()))
    results = {"start": {**start_eval, "train res": "-", "agg": "-", "s/epoch": 0.0}}
    grids = {"start": start_images}
    curves = {}
    for arm in args.arms:
        finals = []
        arm_curves = []
        seconds = []
        for seed in range(args.seed, args.seed + args.num_seeds):
            # 1-4. GRPO epochs at the arm's training resolution (train_toy_arm)
            net, curve, seconds_per_epoch, res, agg = train_toy_arm(arm, base, classifier, tau, args, run, delta, seed)
            # 5. evaluate at the HIGH resolution with ODE sampling and fixed noise
            progress = Progress(f"evaluating {arm_run_name(arm, seed)}", total=args.eval_steps)
            final, images = evaluate_toy(net, classifier, tau, args, args.eval_sets, progress)
            shown = " ".join(f"{k}={v:.3f}" for k, v in final.items())
            progress.done(f"{shown}; {seconds_per_epoch:.2f} s/epoch")
            finals.append(final)
            arm_curves.append(curve)
            seconds.append(seconds_per_epoch)
            if seed == args.seed:
                grids[arm] = images
        # TRY NOT TO MODIFY: the arm's row (mean and sd over seeds) and its mean curve
        stats = {k: torch.tensor([f[k] for f in finals]) for k in finals[0]}
        sd = {k: v.std().item() if args.num_seeds > 1 else 0.0 for k, v in stats.items()}
        results[arm] = {k: v.mean().item() for k, v in stats.items()} | {"train res": f"{res}x{2 * res}", "agg": agg}
        results[arm] |= {
            "ratio sd": sd["ratio"],
            "dup sd": sd["duplicate_rate"],
            "s/epoch": sum(seconds) / len(seconds),
        }
        curves[arm] = []
        for points in zip(*arm_curves):  # one evaluation point of every seed: (epoch, train seconds, metrics)
            epoch = points[0][0]
            point_seconds = mean_of([point[1] for point in points])
            point_reward = mean_of([point[2]["reward"] for point in points])
            curves[arm].append((epoch, point_seconds, point_reward))
    save_grid(run.dir / "samples.png", grids, args.eval_sets, args.num_prompts)
    # TRY NOT TO MODIFY: the table: every arm evaluated at the HIGH resolution with ODE sampling, fixed noise
    columns = "arm,train res,agg,reward,r_cons,r_align,ratio,ratio sd,duplicate_rate,dup sd,s/epoch".split(",")
    rows = [{"arm": arm, **r} for arm, r in results.items()]
    curve_rows = [{"arm": a, **{f"ep {e}": f"{r:.3f} @ {s:.1f}s" for e, s, r in c}} for a, c in curves.items()]
    seeds = f"{args.seed}..{args.seed + args.num_seeds - 1}"
    eval_size = f"{args.eval_res}x{2 * args.eval_res}"
    setup = f"{args.epochs} epochs x {args.num_prompts} prompts x G={args.num_generations}, noise steps "
    setup += f"{list(args.noise_steps)} of {args.num_steps} (a={args.noise_level}), delta {args.delta}, std {args.std}"
    evaluation = f"at {eval_size} (ODE, {args.eval_steps} steps, {args.num_prompts} prompts x {args.eval_sets} sets)"
    run.finish(
        f"## PaCo-GRPO toy, seeds {seeds} (mean and sd over seeds): {setup}\n\nEvaluated {evaluation}; reward = "
        "r_cons + r_align; ratio = r_cons / r_align; duplicate = both panels classified as one shape:\n\n"
        + format_table(rows, columns)
        + f"\n\nReward against training wall-clock (evaluated at {eval_size}, {max(1, args.eval_sets // 4)} sets per "
        f"prompt):\n\n{format_table(curve_rows)}\n\nsamples: {run.dir / 'samples.png'}"
    )
    return results


# TRY NOT TO MODIFY: the real path's rewards (pluggable), the guided velocity and the text encoding ------------------
def grid_consistency(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Pairwise consistency over the 4 panels of a 2x2 grid, mean over the 6 pairs of exp(-||phi_i - phi_j||) ([B])."""
    top, bottom = images.chunk(2, dim=2)  # [B, 3, H/2, W] each
    panels = torch.stack([*top.chunk(2, dim=3), *bottom.chunk(2, dim=3)], dim=1)  # [B, 4, 3, H/2, W/2]
    features = F.adaptive_avg_pool2d(panels.flatten(1, 2), 4).reshape(len(images), 4, -1)  # [B, 4, 48]
    i, j = torch.triu_indices(4, 4, offset=1)
    return torch.exp(-torch.cdist(features, features)[:, i, j]).mean(dim=1)  # [B] in (0, 1]


def colourfulness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Hasler-Suesstrunk colourfulness of images in [0, 1] ([B]), a reward on another scale (~0-0.5)."""
    red, green, blue = images.unbind(1)  # [B, H, W] each
    rg = red - green  # [B, H, W]
    yb = 0.5 * (red + green) - blue  # [B, H, W]
    spread = (rg.flatten(1).std(1) ** 2 + yb.flatten(1).std(1) ** 2).sqrt()
    return spread + 0.3 * (rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2).sqrt()  # [B]


REAL_REWARDS = {"consistency": grid_consistency, "colourfulness": colourfulness}  # plug PaCo-Reward / CLIP-T in here


def guided_velocity(transformer, hidden, timestep, conditional, unconditional, guidance_scale, uncond_grad=False):
    """v = v_u + w (v_c - v_u) in fp32 from two transformer passes ((prompt embeds, pooled) each; unconditional None:
    v_c alone). In training the unconditional pass runs without gradient: the gradient of a detached v_u, as in
    flow_grpo's SD3 trainer [flow_grpo scripts/train_sd3.py], without holding that pass's activations; uncond_grad:
    the gradient flows through both, adding (1 - w) grad v_u."""
    v_c = transformer(hidden, *conditional, timestep, return_dict=False)[0].float()  # [B, ...]
    if unconditional is None:
        return v_c
    with torch.set_grad_enabled(torch.is_grad_enabled() and uncond_grad):
        v_u = transformer(hidden, *unconditional, timestep, return_dict=False)[0].float()  # [B, ...]
    return v_u + guidance_scale * (v_c - v_u)


def encode_prompts_and_free_encoders(pipe, prompts, device, cfg: bool, max_length: int = 256):
    """The prompts' (embeds, negative embeds, pooled, negative pooled), encoded once; the text encoders (T5-XXL and two
    CLIPs on SD3) are then dropped from the pipeline and the device, since nothing encodes again."""
    with torch.no_grad():
        encoded = pipe.encode_prompt(
            prompts, None, None, device=device, do_classifier_free_guidance=cfg, max_sequence_length=max_length
        )
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        setattr(pipe, name, None)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return encoded


# ALGO LOGIC: the real path: PaCo-GRPO on a diffusers flow-matching pipeline with LoRA --------------------------------
def main_real(args: Args) -> dict:
    """PaCo-GRPO on a StableDiffusion3Pipeline: train at --train-res, evaluate at --image-size."""
    rewards = args.rewards if args.rewards != ("cons", "align") else tuple(REAL_REWARDS)
    if set(rewards) - set(REAL_REWARDS):
        fail(f"--rewards {rewards}: the real path has {list(REAL_REWARDS)} (add yours to REAL_REWARDS)")
    if args.num_prompts > len(args.prompts):
        fail(f"--num-prompts {args.num_prompts} but only {len(args.prompts)} --prompts")
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline  # heavy: only on this path
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift
    from peft import LoraConfig

    seed_everything(args.seed)
    device = pick_device(args.cuda)
    dtype = pick_dtype(args.dtype, device)
    delta = parse_delta(args.delta)
    try:
        without_t5 = {} if args.load_t5 else dict(text_encoder_3=None, tokenizer_3=None)
        pipe = StableDiffusion3Pipeline.from_pretrained(args.model_name, torch_dtype=dtype, **without_t5)
    except Exception as error:  # offline hub ids, missing folders, wrong pipeline types
        fail(f"could not load --model-name {args.model_name!r} as a StableDiffusion3Pipeline: {error}")
    if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
        fail(f"{args.model_name!r} has a {type(pipe.scheduler).__name__}, not a FlowMatchEulerDiscreteScheduler")
    pipe.to(device).set_progress_bar_config(disable=True)
    if args.gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    transformer = pipe.transformer
    vae = pipe.vae
    multiple = pipe.vae_scale_factor * transformer.config.patch_size  # image pixels per latent token
    factor = RES_FACTOR[args.train_res]
    for side in (args.image_size, args.image_size // factor):
        if side % multiple or side < multiple:
            fail(
                f"resolution {side}x{side} (--image-size {args.image_size}, --train-res {args.train_res}) is not a "
                f"positive multiple of {multiple}, the VAE factor x patch size this model can take"
            )
    for module in filter(None, (transformer, vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3)):
        module.requires_grad_(False)
    # LoRA on the attention projections [code scripts/train_flux.py also adapts the ff layers]
    targets = "to_q to_k to_v to_out.0 add_q_proj add_k_proj add_v_proj to_add_out".split()
    lora = dict(r=args.lora_rank, lora_alpha=2 * args.lora_rank, init_lora_weights="gaussian", target_modules=targets)
    transformer.add_adapter(LoraConfig(**lora))
    lora_b = [p for name, p in transformer.named_parameters() if "lora_B" in name]  # 0 at init [peft]
    params = [p for p in transformer.parameters() if p.requires_grad]
    for param in params:
        param.data = param.data.float()  # fp32 LoRA weights and optimizer state
    old = OldPolicy(params)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    prompts = list(args.prompts[: args.num_prompts])
    cfg = args.guidance_scale > 1
    embeds, negative, pooled, negative_pooled = encode_prompts_and_free_encoders(
        pipe, prompts, device, cfg, args.max_sequence_length
    )
    rows = torch.arange(len(prompts)).repeat_interleave(args.num_generations)  # [B] contiguous groups
    chunk = args.sample_batch_size or REAL_SAMPLE_BATCH
    storage = torch.device("cpu")  # an epoch's trajectory waits on the CPU; micro-batches go to the device

    def velocity(x, sigma, cond):
        """v_theta(x_t, t, prompt) in fp32 (the transformer takes t in [0, 1000])."""
        conditional = (embeds[cond], pooled[cond])
        unconditional = (negative[cond], negative_pooled[cond]) if cfg else None
        hidden = x.to(dtype)
        timestep = sigma.to(dtype) * 1000
        return guided_velocity(
            transformer, hidden, timestep, conditional, unconditional, args.guidance_scale, args.uncond_grad
        )

    def schedule(side, steps):
        """The scheduler's sigmas (+ the final 0) at this resolution (dynamic shifting depends on the token count)."""
        config = pipe.scheduler.config
        kwargs = {}
        if config.get("use_dynamic_shifting", False):
            shift = (config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift)
            kwargs["mu"] = calculate_shift((side // multiple) ** 2, *shift)
        pipe.scheduler.set_timesteps(steps, device=device, **kwargs)
        return pipe.scheduler.sigmas.float().to(device)  # [steps + 1]

    def generate(cond, side, steps, noise_steps, generator, progress=None):
        """Sample, decode and score `chunk` samples at a time, so the device holds one chunk's activations and images;
        returns each reward [B] and the noise steps' (x_t, x_next, log pi) on the CPU. `progress` counts chunks."""
        latent = (transformer.config.in_channels, side // pipe.vae_scale_factor, side // pipe.vae_scale_factor)
        sigmas = schedule(side, steps)
        scores = {k: [] for k in rewards}
        parts = []
        for start in range(0, len(cond), chunk):
            cond_chunk = cond[start : start + chunk].to(device)
            x = torch.randn(len(cond_chunk), *latent, generator=generator, device=device)
            latents, trajectory = rollout(velocity, x, cond_chunk, sigmas, noise_steps, args.noise_level, generator)
            parts.append({i: tuple(t.to(storage) for t in step) for i, step in trajectory.items()})
            with torch.no_grad():
                latents = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
                images = ((vae.decode(latents.to(vae.dtype), return_dict=False)[0].float() + 1) / 2).clamp(0, 1)
            for k in rewards:  # [b, 3, H, W] in [0, 1] -> [b]
                chunk_prompts = [prompts[i] for i in cond[start : start + chunk].tolist()]
                scores[k].append(REAL_REWARDS[k](images, chunk_prompts).float().cpu())
            if progress is not None:
                progress.update()
        trajectory = {i: tuple(torch.cat(ts) for ts in zip(*(part[i] for part in parts))) for i in parts[0]}
        return {k: torch.cat(v) for k, v in scores.items()}, trajectory, sigmas

    def evaluate(name: str) -> dict:
        """ODE sampling at --image-size with fixed noise, 2 images per prompt: each reward's mean."""
        generator = torch.Generator(device).manual_seed(EVAL_NOISE_SEED)
        cond = torch.arange(len(prompts)).repeat_interleave(2)
        progress = Progress(name, total=math.ceil(len(cond) / chunk))
        scores = generate(cond, args.image_size, args.eval_steps, (), generator, progress)[0]
        means = {k: v.mean().item() for k, v in scores.items()}
        progress.done(" ".join(f"{k}={v:.3f}" for k, v in means.items()))
        return means

    run = RunLogger(
        make_run_name("paco_grpo-real", args.exp_name, args.seed),
        args,
        track=args.track,
        print_every=1,
        show=("reward", "losses/loss", "charts/epoch_seconds"),
        total_steps=args.epochs,
    )
    weights = dict(zip(rewards, args.reward_weights))
    generator = torch.Generator(device).manual_seed(args.seed)
    start_eval = evaluate("evaluating the start")
    seconds = 0.0
    for epoch in range(args.epochs):
        epoch_start = time.time()
        old.refresh()  # 1. pi_old <- pi_theta
        # 2. G samples per prompt at the training resolution, SDE noise only at the noise steps
        low = args.image_size // factor
        scores, trajectory, sigmas = generate(rows, low, args.num_steps, args.noise_steps, generator)
        # 3. rewards at the training resolution (each [B]), aggregation over the epoch, then group normalisation
        total = aggregate(scores, weights, args.agg, delta)  # [B]
        advantages = group_advantages(total, args.num_generations, args.std)  # [B]
        # 4. PPO-clip at the noise steps with recomputed old log-probs
        metrics = grpo_update(velocity, params, old, optimizer, trajectory, rows, advantages, sigmas, args)
        seconds += time.time() - epoch_start
        metrics |= reward_metrics(scores, total, args.num_generations, delta) | {"charts/train_seconds": seconds}
        run.log(epoch, metrics | {"charts/epoch_seconds": time.time() - epoch_start})
    final_eval = evaluate("evaluating the trained policy")
    table = [{"policy": "start", **start_eval}, {"policy": f"PaCo-GRPO ({args.epochs} epochs)", **final_eval}]
    peak = f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
    sizes = f"train {args.image_size // factor} px, eval {args.image_size} px (ODE, {args.eval_steps} steps)"
    run.finish(
        f"## PaCo-GRPO on {args.model_name}: {sizes}\n\n{format_table(table)}\n\n"
        f"{seconds / args.epochs:.2f} s/epoch{peak}"
    )
    return {"start": start_eval, "final": final_eval, "lora_b_norm": sum(p.norm().item() for p in lora_b)}


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
