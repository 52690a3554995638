# arXiv:2503.11240 (B²-DiffuRL) | docs: docs/b2_diffurl.md (details, deviations, metrics, results, paper reproduction)
"""B²-DiffuRL: Towards Better Alignment: Training Diffusion Models with Reinforcement Learning Against Sparse Rewards
(Hu et al., CVPR 2025, https://arxiv.org/abs/2503.11240; code https://github.com/hu-zijing/B2-DiffuRL). RL of a
text-to-image diffusion model against a reward that arrives only after the last denoising step: train the last steps
first and widen the trained interval towards x_T stage by stage, and train only on the best and worst of several
continuations that share a prefix. The offline toy (B², DDPO and three ablations on a 2-D class-conditional mixture,
3 seeds, about a minute on 2 CPU cores): python algos/b2_diffurl.py

Idea: DDPO hands every one of the N denoising steps the same trajectory advantage, so the noisy early steps get a
signal that is hard to attribute. B² trains only the last s_k steps at stage k (backward progressive training). Inside
a stage, trajectories share one prefix up to the branch index b_k = N - s_k and split into S continuations, so comparing
them isolates what the trained interval did; only the best and worst continuation of a branch group is trained on,
and only when its per-prompt z-score is extreme enough.

    eta=1 DDIM step:  x0 = (x_t - sqrt(1-a_t) eps)/sqrt(a_t),  sigma = eta sqrt((1-a_t')/(1-a_t)) sqrt(1 - a_t/a_t')
                  mu = sqrt(a_t') x0 + sqrt(1-a_t'-sigma^2) eps,  x_t' = mu + sigma z,  eps = eps_u + w (eps_c-eps_u)
                      log pi(x_t'|x_t) = mean_D [-(x_t'-mu)^2/(2 sigma^2) - log sigma - log(2 pi)/2]   (x_t' detached)
    schedule:         s_k = s_min + floor(k (s_max - s_min + 1)/K),  b_k = N - s_k,  trained steps {b_k, ..., N-1}
    advantage:        z = (r - m_p)/(s_p + 1e-8), m_p, s_p over prompt p's rewards of this stage + H previous stages
    selection:        per branch group keep (argmax z) if z >= tau+, (argmin z) if z < tau-
    loss:             L = mean max(-A rho, -A clip(rho, 1-eps, 1+eps)),  A = clip(z, -5, 5) beta+-,  rho = pi/pi_old

Source tags on the lines that implement a detail: [code <file>] = hu-zijing/B2-DiffuRL@e3a9129 <file> (the reference:
the paper states few of these details); [ddpo <file>] = kvablack/ddpo-pytorch <file> (the DDPO baseline and the DDIM
log-prob it builds on); [paper] = the paper's abstract; "reconstruction" where neither says. Arms (every arm from the
same pretrained weights and seeds, with the same reward calls): main (B², the flags as given), ddpo, no-branch (S = 1,
thresholds only), fixed-split (branching without the curriculum), select-all (every branch sample, A = z).

Commands:
    python algos/b2_diffurl.py                                   # toy: B², DDPO and the ablations, 3 seeds
    python algos/b2_diffurl.py --reward-fn mode --arms main ddpo # the honesty variant: a reward set by early steps
    python algos/b2_diffurl.py --model-name CompVis/stable-diffusion-v1-4 --reward-fn clip --num-stages 100 \
        --s-min 14 --s-max 20 --prefixes-per-stage 256 --train-batch-size 128 --train-micro-batch 2 \
        --learning-rate 1e-4 --sample-batch-size 8
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal, Optional

import torch
import torch.nn as nn

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

CACHE_DIR = Path(os.environ.get("REWARDLAB_CACHE", Path(__file__).resolve().parents[1] / "runs" / "cache"))
ARMS = ("main", "ddpo", "no-branch", "fixed-split", "select-all")
DTYPE_NAMES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")  # shared.runs.pick_dtype's names
SHOWN_METRICS = ("reward", "eval/reward", "charts/selected", "kl")  # the progress line; the rest: TensorBoard


@dataclass
class Args:
    exp_name: str = "toy"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of pretraining and of the first RL seed"""
    num_seeds: int = 3
    """toy: RL seeds seed, seed+1, ... for every arm"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """real path: dtype of the frozen weights (auto = bf16 on GPU, fp32 on CPU); LoRA and the log-probs stay fp32"""
    num_threads: int = 1
    """torch CPU threads"""
    track: bool = False
    """also log to Weights & Biases"""
    arms: tuple[Literal["main", "ddpo", "no-branch", "fixed-split", "select-all"], ...] = ARMS
    """toy arms; main = the flags as given (--method, --no-branch, --fixed-split, --select); the real path runs main"""
    method: Literal["b2", "ddpo"] = "b2"
    """b2 (branches, curriculum, selection) or plain DDPO"""
    branch: bool = True
    """branch sampling, S continuations per prefix; --no-branch is the ablation: keep the span schedule but S = 1,
    samples selected by the thresholds alone"""
    fixed_split: Optional[int] = None
    """ablation: branch at N - s at every stage (no curriculum); the fixed-split arm uses --s-max when unset"""
    select: Literal["best-worst", "all"] = "best-worst"
    """best-worst (the code) or all (every branch sample, advantage = z)"""
    model_name: Optional[str] = None
    """diffusers StableDiffusionPipeline (hub id or save_pretrained folder); None = the 2-D toy"""
    prompt_file: Optional[str] = None
    """real path: training prompts, .txt one per line or a .json list (default: animal-activity template)"""
    reward_fn: Optional[str] = None
    """toy: precision | mode; real: clip | jpeg | module:function (default precision / clip)"""
    resolution: Optional[int] = None
    """real path: image side in pixels (default: the UNet's sample_size x the VAE factor)"""
    lora_rank: int = 4
    """real path: LoRA rank on the UNet attention projections"""
    num_steps: int = 20
    """N denoising steps"""
    eta: float = 1.0
    """DDIM eta (> 0: the log-prob needs noise)"""
    guidance_scale: Optional[float] = None
    """classifier-free guidance w (default 1 on the toy, 5 on the real path)"""
    num_stages: int = 19
    """K stages (each: sample, reward, select, train)"""
    s_min: int = 2
    """trained span at stage 0"""
    s_max: int = 20
    """trained span at the last stage"""
    num_branches: int = 5
    """S continuations per prefix"""
    prefixes_per_stage: int = 64
    """branch groups per stage (reward calls = prefixes x S; S = 1 arms use prefixes x S trajectories)"""
    tau_pos: float = 0.5
    """keep the best continuation if its z >= tau_pos"""
    tau_neg: float = -0.5
    """keep the worst continuation if its z < tau_neg"""
    history: int = 8
    """H previous stages in the per-prompt statistics"""
    epochs: int = 2
    """epochs over the selected set per stage"""
    train_batch_size: int = 64
    """samples per optimiser step (gradients accumulated over all their trained transitions)"""
    train_micro_batch: Optional[int] = None
    """transitions per forward/backward pass, x2 rows with CFG (default: 2 on the real path [code run_train.py],
    4096 on the toy)"""
    sample_batch_size: Optional[int] = None
    """rows per UNet call while sampling (x2 with CFG) and images per VAE decode and reward call (default: 8 on the
    real path [code run_sample.py, run_select.py], every row at once on the toy)"""
    ppo_clip: float = 0.1
    """PPO ratio clip eps for B²"""
    adv_clip: float = 5.0
    """advantage clip"""
    beta_pos: float = 1.0
    """weight of positive advantages"""
    beta_neg: float = 1.0
    """weight of negative advantages"""
    learning_rate: float = 3e-4
    """AdamW learning rate of B² (the code: 1e-4 with LoRA)"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient-norm clip"""
    ddpo_clip: float = 1e-4
    """DDPO's PPO clip eps"""
    ddpo_learning_rate: float = 3e-4
    """DDPO's AdamW learning rate"""
    ddpo_epochs: int = 1
    """DDPO's inner epochs"""
    ddpo_buffer: int = 32
    """DDPO per-prompt reward buffer"""
    ddpo_min_count: int = 16
    """DDPO: batch statistics while a prompt's buffer holds fewer rewards"""
    pretrain_steps: int = 3000
    """toy: DDPM pretraining steps"""
    pretrain_batch: int = 512
    """toy: pretraining batch"""
    pretrain_learning_rate: float = 2e-3
    """toy: pretraining Adam learning rate"""
    eval_samples: int = 1024
    """toy: eval samples per class (fixed noise across stages)"""


# ALGO LOGIC: the eta > 0 DDIM step and its log-prob [ddpo ddim_with_logprob.py, code run_train.py] --------------------
def ddim_step_with_logprob(scheduler, model_output, timestep, sample, eta=1.0, prev_sample=None, generator=None):
    """One DDIM step x_t -> x_t' with eta > 0 and log pi(x_t'|x_t), a mean over all non-batch entries.

    `timestep` is an int / 0-d tensor or one per row ([B]); `prev_sample` given = score that transition."""
    if eta <= 0:
        fail(f"eta = {eta}: the eta=0 DDIM step is deterministic and has no log-prob; use eta > 0 (the paper: 1)")
    if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon":
        fail("only epsilon-prediction schedulers are supported")
    eps = model_output.float()  # [B, ...]
    x = sample.float()  # [B, ...]
    t = torch.as_tensor(timestep, device=x.device).long().reshape(-1)  # [B] or [1]
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps  # "leading": t' = t - 50
    alphas = scheduler.alphas_cumprod.to(x.device, torch.float32)
    shape = (-1,) + (1,) * (x.dim() - 1)
    a_t = alphas[t].reshape(shape)  # [B, 1, ...]
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32, device=x.device)  # a_0 below t' = 0
    a_prev = torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)], final).reshape(shape)  # [B, 1, ...]
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()  # [B, ...]
    if getattr(scheduler.config, "clip_sample", False):
        clip_range = scheduler.config.clip_sample_range
        x0 = x0.clamp(-clip_range, clip_range)
    std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()  # [B, 1, ...]
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps  # [B, ...]
    if prev_sample is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        prev_sample = mean + std * noise
    prev = prev_sample.detach().float()  # [B, ...]
    log_prob = -((prev - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)  # [B, ...]
    return prev.to(sample.dtype), log_prob.mean(dim=tuple(range(1, x.dim())))  # [B, ...], [B]


def guided_eps(eps_fn, x, t, cond, null_cond, w):
    """eps_u + w (eps_c - eps_u); one batched pass over [null; cond] (w = 1: the conditional pass alone) [code
    run_sample.py, run_train.py]."""
    if w == 1.0:
        return eps_fn(x, t, cond)
    null = null_cond.expand(len(x), *null_cond.shape[1:])  # [B, ...]
    eps_u, eps_c = eps_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([null, cond])).chunk(2)  # [B, ...] x2
    return eps_u + w * (eps_c - eps_u)


# ALGO LOGIC: the stage schedule, per-prompt z-scores, selection [code run_process.sh, run_select.py] ------------------
def trained_step_indices(stage: int, num_stages: int, s_min: int, s_max: int, num_steps: int) -> list[int]:
    """Step indices trained at stage k: the last s_k = s_min + floor(k (s_max - s_min + 1) / K) of N."""
    if not 1 <= s_min <= s_max <= num_steps:
        fail(f"need 1 <= s_min ({s_min}) <= s_max ({s_max}) <= the number of steps ({num_steps})")
    if not 0 <= stage < num_stages:
        fail(f"stage {stage} is outside 0..{num_stages - 1}")
    span = s_min + stage * (s_max - s_min + 1) // num_stages
    return list(range(num_steps - span, num_steps))


def select_from_branches(z: torch.Tensor, tau_pos: float, tau_neg: float) -> list[tuple[int, float]]:
    """One branch group's z-scores [S] -> [(argmax, z) if z >= tau_pos] + [(argmin, z) if z < tau_neg]."""
    best = int(z.argmax())
    worst = int(z.argmin())
    picked = [(best, float(z[best]))] if z[best] >= tau_pos else []
    return picked + ([(worst, float(z[worst]))] if z[worst] < tau_neg else [])


class PromptStatTracker:
    """Per-prompt z-scores over this stage's rewards plus those of up to `history` previous stages (a FIFO) [code
    run_select.py score_fn1]: unbiased std + 1e-8; a prompt seen once has z = 0 (reconstruction: the code divides 0
    by NaN there)."""

    def __init__(self, history: int = 8):
        self.history = history
        self.stages: deque[dict] = deque(maxlen=max(history, 0) or None) if history > 0 else deque(maxlen=1)

    def update(self, prompts, rewards: torch.Tensor) -> torch.Tensor:
        rewards = torch.as_tensor(rewards, dtype=torch.float64).flatten()  # [B]
        if len(prompts) != len(rewards):
            fail(f"{len(prompts)} prompts but {len(rewards)} rewards")
        current = {p: rewards[[i for i, q in enumerate(prompts) if q == p]] for p in dict.fromkeys(prompts)}
        past = list(self.stages) if self.history > 0 else []
        z = torch.zeros_like(rewards)  # [B]
        for prompt, values in current.items():
            pooled = torch.cat([stage[prompt] for stage in past if prompt in stage] + [values])
            if len(pooled) < 2:
                continue  # z = 0: no spread to normalise by
            rows = [i for i, q in enumerate(prompts) if q == prompt]
            z[rows] = (values - pooled.mean()) / (pooled.std() + 1e-8)
        if self.history > 0:
            self.stages.append(current)
        return z.float()


def ddpo_advantages(prompts, rewards: torch.Tensor, buffers: dict, buffer_size: int, min_count: int) -> torch.Tensor:
    """DDPO's per-prompt stat tracker [ddpo stat_tracking.py]: z over the last `buffer_size` rewards of the prompt
    (batch stats while it holds fewer than `min_count`), population std + 1e-6."""
    rewards = rewards.double()  # [B]
    z = torch.empty_like(rewards)  # [B]
    for prompt in dict.fromkeys(prompts):
        rows = [i for i, q in enumerate(prompts) if q == prompt]
        buffer = buffers.setdefault(prompt, deque(maxlen=buffer_size))
        buffer.extend(rewards[rows].tolist())
        reference = rewards if len(buffer) < min_count else torch.tensor(list(buffer), dtype=torch.float64)
        z[rows] = (rewards[rows] - reference.mean()) / (reference.std(unbiased=False) + 1e-6)
    return z.float()


# ALGO LOGIC: the PPO-clip loss with advantage clipping and beta+- [code run_train.py] ---------------------------------
def ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range, adv_clip, beta_pos=1.0, beta_neg=1.0):
    """L = mean max(-A rho, -A clip(rho, 1-eps, 1+eps)), A = clip(adv, +-adv_clip) (beta+ if adv > 0 else beta-)."""
    ratio = torch.exp(log_prob - old_log_prob)  # [R]
    adv = advantages.clamp(-adv_clip, adv_clip) * torch.where(advantages > 0, beta_pos, beta_neg)  # [R]
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
    stats = {
        "clip_frac": ((ratio - 1).abs() > clip_range).float().mean().item(),
        "approx_kl": (0.5 * (log_prob - old_log_prob) ** 2).mean().item(),
    }
    return loss, stats


# ALGO LOGIC: branch sampling [code run_sample.py] ---------------------------------------------------------------------
@torch.no_grad()
def ddim_step_in_chunks(eps_fn, scheduler, x, t, cond, null_cond, w, eta, batch_size=None, generator=None, table=None):
    """One guided DDIM step of every row of x, `batch_size` rows per eps_fn call (None: all rows in one call), so the
    live activations are those of one chunk; `table` given: cond holds row ids into it, looked up one chunk at a
    time. Returns x_t' [B, ...] and log pi [B]."""
    size = batch_size or len(x)
    steps = []
    for start in range(0, len(x), size):
        rows = slice(start, start + size)
        t_rows = t.expand(len(x[rows]))  # [b]
        cond_rows = cond[rows] if table is None else table[cond[rows]]  # [b, ...]
        eps = guided_eps(eps_fn, x[rows], t_rows, cond_rows, null_cond, w)  # [b, ...]
        steps.append(ddim_step_with_logprob(scheduler, eps, t_rows, x[rows], eta, None, generator))
    return torch.cat([nxt for nxt, _ in steps]), torch.cat([lp for _, lp in steps])  # [B, ...], [B]


def stack_steps(per_step: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """[N-b] tensors of [P*S, ...] -> [P*S, N-b, ...] (None when no step follows the branch)."""
    return torch.stack(per_step, 1) if per_step else None


@torch.no_grad()
def sample_with_branches(
    eps_fn,
    scheduler,
    x_T,
    cond,
    null_cond,
    w,
    eta,
    branch_index,
    num_branches,
    generator=None,
    batch_size=None,
    storage=None,
    table=None,
    progress: Optional[Progress] = None,
):
    """Shared prefix 0..b-1, then S continuations per prefix (rows p*S + j), `batch_size` rows per eps_fn call (None:
    every row at once; `table` given: cond holds prompt ids into it). Returns x_0 and the post-branch transitions,
    kept on `storage` (default: x_T's device), so that the device holds the activations of one chunk: x_0 [P*S, ...],
    latents / next latents [P*S, N-b, ...], old log-probs [P*S, N-b]. `progress` advances once per denoising step."""
    x = x_T  # [P, ...]
    timesteps = scheduler.timesteps
    storage = storage or x_T.device
    for i in range(branch_index):
        x, _ = ddim_step_in_chunks(
            eps_fn, scheduler, x, timesteps[i], cond, null_cond, w, eta, batch_size, generator, table
        )
        if progress is not None:
            progress.update()
    x = x.repeat_interleave(num_branches, 0)  # [P*S, ...]: S copies of each prefix, rows p*S + j
    cond = cond.repeat_interleave(num_branches, 0)  # [P*S, ...]
    latents, next_latents, log_probs = [], [], []
    for i in range(branch_index, len(timesteps)):
        nxt, lp = ddim_step_in_chunks(
            eps_fn, scheduler, x, timesteps[i], cond, null_cond, w, eta, batch_size, generator, table
        )
        latents.append(x.to(storage))
        next_latents.append(nxt.to(storage))
        log_probs.append(lp.to(storage))
        x = nxt
        if progress is not None:
            progress.update()
    return x.to(storage), stack_steps(latents), stack_steps(next_latents), stack_steps(log_probs)


# TRY NOT TO MODIFY: the toy world (reconstruction: a 2-D stand-in for text-to-image) ----------------------------------
TOY_CLASSES = 4  # the toy's "prompts"; class index TOY_CLASSES is the null class of CFG
TOY_MODES = 4  # Gaussians per class, on one circle
TOY_RADIUS = 2.0  # the circle the modes sit on
TOY_ROTATION_DEGREES = 22.5  # class c's modes are rotated by c x 22.5 degrees, so classes do not share modes
TOY_MODE_STD = 0.15  # std of each mode: wide against the reward's 0.05, so the pretrained precision reward is ~0.1
TOY_REWARD_SIGMA = 0.05  # width of the precision reward exp(-d^2 / (2 sigma^2))
TOY_NULL_DROPOUT = 0.1  # share of pretraining rows with the null class, so --guidance-scale works on the toy
TOY_EVAL_SEED = 12345  # the eval noise, the same at every evaluation, so the curves compare like with like
TOY_TRAIN_MICRO_BATCH = 4096  # transitions per forward/backward on the toy: a whole stage's batch in a few passes
SD_GUIDANCE_SCALE = 5.0  # real path CFG w [code run_sample.py]
SD_SAMPLE_BATCH_SIZE = 8  # real path rows per UNet call, VAE decode and CLIP call [code run_sample.py: 8 prompts]
SD_TRAIN_MICRO_BATCH = 2  # real path transitions per forward/backward [code run_train.py: train batch size 2]


class ToyDDIM:
    """The SD DDIM schedule (scaled-linear betas 0.00085..0.012, 1000 steps, leading spacing, offset 1) without
    diffusers; the attributes `ddim_step_with_logprob` reads have DDIMScheduler's names."""

    def __init__(self, num_train_timesteps=1000):
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.final_alpha_cumprod = self.alphas_cumprod[0]  # SD's set_alpha_to_one=False
        self.config = SimpleNamespace(num_train_timesteps=num_train_timesteps, prediction_type="epsilon")

    def set_timesteps(self, n):
        self.num_inference_steps = n
        self.timesteps = torch.arange(n - 1, -1, -1) * (self.config.num_train_timesteps // n) + 1  # 951, ..., 1


class ToyEps(nn.Module):
    """eps(x, t, c): [x, 32-d sinusoidal t, 16-d class embedding (index C = null)] -> 3 x 128 SiLU -> 2."""

    def __init__(self, num_classes=TOY_CLASSES, hidden=128):
        super().__init__()
        self.class_emb = nn.Embedding(num_classes + 1, 16)
        layers = [nn.Linear(2 + 32 + 16, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x, t, c):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(16, device=x.device) / 16)  # [16]
        angles = t.float()[:, None] * freqs  # [B, 16]
        return self.net(torch.cat([x, angles.sin(), angles.cos(), self.class_emb(c)], -1))  # [B, 2]


def toy_centres(num_classes=TOY_CLASSES, radius=TOY_RADIUS):
    """[C, 4, 2]: class c's 4 modes at angles c 22.5 + 90 j degrees; mode 0 is the designated one."""
    degrees = torch.arange(num_classes)[:, None] * TOY_ROTATION_DEGREES + torch.arange(TOY_MODES)[None] * 90.0
    angles = torch.deg2rad(degrees)  # [C, 4]
    return radius * torch.stack([angles.cos(), angles.sin()], -1)


def toy_reward(x0, classes, centres, kind="precision", sigma=TOY_REWARD_SIGMA):
    """Sparse terminal reward; also returns the nearest mode index and distance for the metrics."""
    distances = (x0[:, None, :] - centres[classes]).norm(dim=-1)  # [B, 4]
    dist, mode = distances.min(-1)  # [B], [B]
    reward = torch.exp(-(dist**2) / (2 * sigma**2)) if kind == "precision" else (mode == 0).float()  # [B]
    return reward, mode, dist


def pretrain_toy(args, device):
    """DDPM eps-loss pretraining (10% null-class dropout for CFG), cached by recipe under runs/cache/."""
    recipe = dict(
        v=1, steps=args.pretrain_steps, batch=args.pretrain_batch, lr=args.pretrain_learning_rate, seed=args.seed
    )  # the keys are the cache's name: keep them, or every cached model is trained again
    path = CACHE_DIR / f"b2_toy_eps_{hashlib.md5(json.dumps(recipe).encode()).hexdigest()[:10]}.pt"
    model = ToyEps().to(device)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location=device))
        print(f"pretraining: cached ({path})", flush=True)
        return model
    generator = torch.Generator().manual_seed(args.seed)
    centres = toy_centres()
    alphas_cumprod = ToyDDIM().alphas_cumprod.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.pretrain_learning_rate)
    batch = args.pretrain_batch
    progress = Progress("pretraining", total=args.pretrain_steps)
    for _ in range(args.pretrain_steps):
        classes = torch.randint(0, TOY_CLASSES, (batch,), generator=generator)
        modes = torch.randint(0, TOY_MODES, (batch,), generator=generator)
        noise_free = centres[classes, modes] + TOY_MODE_STD * torch.randn(batch, 2, generator=generator)
        x0 = noise_free.to(device)  # [B, 2]
        t = torch.randint(0, 1000, (batch,), generator=generator).to(device)  # [B]
        noise = torch.randn(batch, 2, generator=generator).to(device)  # [B, 2]
        alpha_bar = alphas_cumprod[t][:, None]  # [B, 1]
        dropped = torch.rand(batch, generator=generator) < TOY_NULL_DROPOUT
        cond = torch.where(dropped, TOY_CLASSES, classes).to(device)  # [B]
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise  # [B, 2]
        loss = ((model(x_t, t, cond) - noise) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.update(loss=loss.item())
    progress.done()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


class ToyWorld:
    """The 2-D toy behind the interface `run_arm` uses (eps_fn, scheduler, cond_table, null_cond, draw_prompts,
    noise, reward, evaluate)."""

    def __init__(self, args, model, device):
        self.args = args
        self.model = model
        self.device = device
        self.scheduler = ToyDDIM()
        self.scheduler.set_timesteps(args.num_steps)
        self.eps_fn = model
        self.guidance = args.guidance_scale if args.guidance_scale is not None else 1.0
        self.cond_table = torch.arange(TOY_CLASSES, device=device)  # a prompt id is its class
        self.null_cond = torch.tensor([TOY_CLASSES], device=device)
        self.centres = toy_centres().to(device)
        self.kind = args.reward_fn or "precision"
        self.sample_batch_size = args.sample_batch_size  # None: every row in one call
        self.storage = device
        self.train_micro_batch = args.train_micro_batch or TOY_TRAIN_MICRO_BATCH

    def draw_prompts(self, n):  # stratified over the 4 classes, then shuffled
        return (torch.arange(n) % TOY_CLASSES)[torch.randperm(n)].to(self.device)

    def noise(self, n, generator=None):
        return torch.randn(n, 2, generator=generator).to(self.device)

    def reward(self, x0, prompt_ids):
        return toy_reward(x0, prompt_ids, self.centres, self.kind)[0]

    @torch.no_grad()
    def evaluate(self, progress_name: Optional[str] = None):
        """Eval reward, mode entropy (1 = uniform over the 4 modes) and spread of `eval_samples` samples per class
        from fixed noise; with `progress_name`, a progress bar over the denoising steps."""
        generator = torch.Generator().manual_seed(TOY_EVAL_SEED)
        classes = torch.arange(TOY_CLASSES, device=self.device).repeat_interleave(self.args.eval_samples)  # [E]
        x_T = self.noise(len(classes), generator)  # [E, 2]
        progress = Progress(progress_name, total=self.args.num_steps) if progress_name else None
        x0, *_ = sample_with_branches(
            self.eps_fn,
            self.scheduler,
            x_T,
            classes,
            self.null_cond,
            self.guidance,
            self.args.eta,
            self.args.num_steps,
            1,
            generator,
            progress=progress,
        )
        if progress is not None:
            progress.done()
        reward, mode, dist = toy_reward(x0, classes, self.centres, self.kind)  # [E] each
        counts = [torch.bincount(mode[classes == c], minlength=TOY_MODES) for c in range(TOY_CLASSES)]
        occupancy = torch.stack(counts).float()  # [4, 4]
        shares = occupancy / occupancy.sum(-1, keepdim=True)  # [4, 4]
        entropy = -(shares * shares.clamp(min=1e-12).log()).sum(-1) / math.log(TOY_MODES)  # [4]
        self.last_samples = (x0.cpu(), classes.cpu())
        return dict(reward=reward.mean().item(), entropy=entropy.mean().item(), spread=dist.mean().item())


# ALGO LOGIC: one arm's K stages of sample -> reward -> normalise -> select -> train [code run_process.sh] -------------
def arm_config(args, arm):
    """The flags an arm runs with: main = as given; the others override one thing."""
    config = dict(method=args.method, branch=args.branch, fixed_split=args.fixed_split, select=args.select)
    if arm == "ddpo":
        config.update(method="ddpo")
    elif arm == "no-branch":
        config.update(method="b2", branch=False)
    elif arm == "fixed-split":
        config.update(method="b2", fixed_split=args.fixed_split or args.s_max)
    elif arm == "select-all":
        config.update(method="b2", select="all")
    return SimpleNamespace(**config)


def run_arm(args, cfg, world, params, arm, run, seed):
    """K stages of sample -> reward -> normalise -> select -> train for one arm, optimiser carried across stages;
    `arm` names the arm's TensorBoard run."""
    torch.manual_seed(seed)
    ddpo = cfg.method == "ddpo"
    S = 1 if ddpo or not cfg.branch else args.num_branches
    calls_per_stage = args.prefixes_per_stage * args.num_branches  # equal reward calls for every arm
    num_prefixes = calls_per_stage // S
    learning_rate = args.ddpo_learning_rate if ddpo else args.learning_rate
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=args.weight_decay)
    optimizer.zero_grad(set_to_none=True)  # no gradient left over from pretraining (a cold cache) joins the first step
    tracker = PromptStatTracker(args.history)
    ddpo_buffers = {}
    N = args.num_steps
    clip_range = args.ddpo_clip if ddpo else args.ppo_clip
    curve = [dict(calls=0, **world.evaluate())]
    run.log(0, {f"eval/{k}": v for k, v in curve[0].items() if k != "calls"}, arm=arm)
    for stage in range(args.num_stages):
        # 1. the trained span: the last s_k steps (DDPO: all N), branch index b_k = N - s_k
        if ddpo:
            steps = list(range(N))
        elif cfg.fixed_split is not None:
            steps = trained_step_indices(0, 1, cfg.fixed_split, cfg.fixed_split, N)
        else:
            steps = trained_step_indices(stage, args.num_stages, args.s_min, args.s_max, N)
        branch = steps[0]
        # 2. sample with the current weights (= pi_old): shared prefix, S continuations each [code run_sample.py]
        prompt_ids = world.draw_prompts(num_prefixes)  # [P]
        x_T = world.noise(num_prefixes)  # [P, ...]
        x0, latents, next_latents, old_log_probs = sample_with_branches(
            world.eps_fn,
            world.scheduler,
            x_T,
            prompt_ids,
            world.null_cond,
            world.guidance,
            args.eta,
            branch,
            S,
            None,
            world.sample_batch_size,
            world.storage,
            world.cond_table,
        )  # [P*S, ...], [P*S, N-b, ...] x2, [P*S, N-b]
        prompt_ids = prompt_ids.repeat_interleave(S)  # [P*S]
        # 3. reward (sparse, terminal) and per-prompt z-scores [code run_select.py; ddpo stat_tracking.py]
        rewards = world.reward(x0, prompt_ids).float().cpu()  # [P*S]
        prompts = prompt_ids.tolist()
        if ddpo:
            z = ddpo_advantages(prompts, rewards, ddpo_buffers, args.ddpo_buffer, args.ddpo_min_count)  # [P*S]
        else:
            z = tracker.update(prompts, rewards)  # [P*S]
        # 4. select per branch group (best >= tau+, worst < tau-) or keep all [code run_select.py]; the groups are
        #    explicit row ranges g*S .. g*S+S-1 (the code recovers them by a reshape)
        if ddpo or cfg.select == "all":
            rows = torch.arange(len(z))
            adv = z
        else:
            picked = [
                (g * S + j, a)
                for g in range(num_prefixes)
                for j, a in select_from_branches(z[g * S : (g + 1) * S], args.tau_pos, args.tau_neg)
            ]
            rows = torch.tensor([r for r, _ in picked], dtype=torch.long)  # [n]
            adv = torch.tensor([a for _, a in picked], dtype=torch.float32)  # [n]
        # 5. PPO-clip on the post-branch transitions of the selected samples [code run_train.py]
        prompt_ids = prompt_ids.to(latents.device)
        data = dict(
            prompt=prompt_ids[rows],
            lat=latents[rows],
            nxt=next_latents[rows],
            old_lp=old_log_probs[rows],
            adv=adv.to(latents.device),
        )
        timesteps = world.scheduler.timesteps[steps]
        stats = train_on_transitions(args, world, params, optimizer, clip_range, ddpo, data, timesteps)
        # 6. log against cumulative reward calls; the weights and optimiser state go on to stage k+1
        calls = (stage + 1) * calls_per_stage
        evals = world.evaluate()
        curve.append(dict(calls=calls, train_reward=rewards.mean().item(), **evals))
        metrics = {"reward": rewards.mean().item(), "reward_std": rewards.std().item(), "charts/span": len(steps)}
        metrics.update({"charts/selected": len(rows), **stats, **{f"eval/{k}": v for k, v in evals.items()}})
        run.log(calls, metrics, arm=arm)
    return curve


def train_on_transitions(args, world, params, optimizer, clip_range, ddpo, data, timesteps):
    """E epochs; an optimiser step per `train_batch_size` samples over all their (shuffled) transitions [code
    run_train.py: accumulation over every trained step of a sample; reconstruction: the last partial batch of a
    stage is stepped, where the code drops it]."""
    num_samples, num_trained_steps = data["lat"].shape[:2]
    totals = {"losses/policy_loss": 0.0, "clip_ratio/region_mean": 0.0, "kl": 0.0}
    micro_batches = 0
    for _ in range(args.ddpo_epochs if ddpo else args.epochs):
        perm = torch.randperm(num_samples)
        for start in range(0, num_samples, args.train_batch_size):
            batch = perm[start : start + args.train_batch_size]  # [b]
            sample_index = batch.repeat_interleave(num_trained_steps)  # [b*s]
            step_index = torch.arange(num_trained_steps).repeat(len(batch))  # [b*s]
            order = torch.randperm(len(sample_index))  # the transitions of the batch, shuffled jointly
            sample_index = sample_index[order]
            step_index = step_index[order]
            for rows in torch.arange(len(sample_index)).split(world.train_micro_batch):
                sample_rows = sample_index[rows]  # [r]
                step_rows = step_index[rows]  # [r]
                x = data["lat"][sample_rows, step_rows].to(world.device)  # [r, ...]
                t = timesteps[step_rows].to(world.device)  # [r]
                cond = world.cond_table[data["prompt"][sample_rows].to(world.device)]  # [r, ...]
                eps = guided_eps(world.eps_fn, x, t, cond, world.null_cond, world.guidance)  # [r, ...]
                next_x = data["nxt"][sample_rows, step_rows].to(world.device)  # [r, ...]
                _, log_prob = ddim_step_with_logprob(world.scheduler, eps, t, x, args.eta, next_x)  # [r]
                old_log_prob = data["old_lp"][sample_rows, step_rows].to(world.device)  # [r]
                adv = data["adv"][sample_rows].to(world.device)  # [r]
                loss, loss_stats = ppo_clip_loss(
                    log_prob, old_log_prob, adv, clip_range, args.adv_clip, args.beta_pos, args.beta_neg
                )
                (loss * len(rows) / len(sample_index)).backward()  # the mean over the batch's transitions
                totals["losses/policy_loss"] += loss.item()
                totals["clip_ratio/region_mean"] += loss_stats["clip_frac"]
                totals["kl"] += loss_stats["approx_kl"]
                micro_batches += 1
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {k: v / max(micro_batches, 1) for k, v in totals.items()}


# TRY NOT TO MODIFY: the real path (Stable Diffusion, LoRA, CLIP / JPEG / user rewards) --------------------------------
TEMPLATE_ANIMALS = "cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion tiger bear".split()
TEMPLATE_ACTIVITIES = ("washing dishes", "riding a bike", "playing chess")


def load_prompts(path):
    """A .txt (one prompt a line) or .json list; None = a 45-prompt animal-activity template [code template1]."""
    if path is None:
        return [f"a {animal} {activity}" for animal in TEMPLATE_ANIMALS for activity in TEMPLATE_ACTIVITIES]
    if not Path(path).is_file():
        fail(f"--prompt-file {path} does not exist")
    text = Path(path).read_text()
    prompts = json.loads(text) if path.endswith(".json") else text.splitlines()
    prompts = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
    if not prompts:
        fail(f"--prompt-file {path} holds no prompts: give one prompt per line (or a JSON list of strings)")
    return prompts


def to_8bit_images(images):
    """Images [B, 3, H, W] in [0, 1] -> PIL RGB images as the code saves its PNGs: (x * 255) cast to uint8, which
    truncates [code run_sample.py]."""
    from PIL import Image

    pixels = (images.float().clamp(0, 1) * 255).permute(0, 2, 3, 1).cpu().numpy().astype("uint8")  # [B, H, W, 3]
    return [Image.fromarray(p) for p in pixels]


def clip_pixels(images, preprocess):
    """CLIP inputs [B, 3, 224, 224] the way the code makes them: the 8-bit images through open_clip's own
    `preprocess` (for ViT-H-14: resize the short side to 224, bicubic with PIL's antialiasing, centre crop 224,
    normalise with the OpenAI mean / std; transformers' CLIPImageProcessor does the same)."""
    return torch.stack([torch.as_tensor(preprocess(image)) for image in to_8bit_images(images)])


def build_reward_fn(name, device):
    """(images [B, 3, H, W] in [0, 1], prompts) -> rewards [B]. Fails at start-up when weights are missing."""
    if name == "jpeg":  # DDPO's jpeg compressibility [ddpo rewards.py]: minus the JPEG size in kB (weight-free)
        import io

        from PIL import Image

        def jpeg(images, prompts):
            arrays = (images.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            sizes = []
            for array in arrays:
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="JPEG", quality=95)
                sizes.append(buffer.tell() / 1000)
            return -torch.tensor(sizes)

        return jpeg
    if name == "clip":  # [code run_select.py score_fn1]: cosine of open_clip ViT-H-14 image and prompt embeddings
        try:
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms("ViT-H-14", pretrained="laion2b_s32b_b79k")
        except Exception as e:  # no package, no weights offline
            why = f"{type(e).__name__}: {e}"
            fail(f"--reward-fn clip needs open_clip + ViT-H-14 laion2b weights ({why}); or use jpeg / module:function")
        model = model.to(device).eval()
        tokenizer = open_clip.get_tokenizer("ViT-H-14")

        @torch.no_grad()
        def clip_score(images, prompts):
            pixels = clip_pixels(images, preprocess).to(device)  # [B, 3, 224, 224]
            image_emb = nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)  # [B, D]
            text_emb = nn.functional.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)
            return (image_emb * text_emb).sum(-1)  # [B]

        return clip_score
    if ":" in name:
        module, _, attr = name.rpartition(":")
        try:
            if module.endswith(".py"):
                spec = importlib.util.spec_from_file_location("user_reward", module)
                user_module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(user_module)
            else:
                user_module = importlib.import_module(module)
            return getattr(user_module, attr)
        except Exception as e:
            fail(f"could not load --reward-fn {name} ({type(e).__name__}: {e})")
    fail(f"--reward-fn {name!r} is not clip, jpeg or module:function (precision / mode are for the toy)")


class SDWorld:
    """Stable Diffusion behind `run_arm`'s interface: frozen VAE / text encoder / UNet, LoRA on the UNet attention."""

    def __init__(self, args, device):
        try:
            from diffusers import DDIMScheduler, StableDiffusionPipeline
            from peft import LoraConfig
        except ImportError as e:
            fail(f"the real path needs diffusers and peft ({e}): pip install 'rewardlab[diffusion,lora]'")
        self.device = device
        self.dtype = pick_dtype(args.dtype, device)
        self.reward_fn = build_reward_fn(args.reward_fn or "clip", device)
        self.prompts = load_prompts(args.prompt_file)
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                args.model_name, torch_dtype=self.dtype, safety_checker=None, requires_safety_checker=False
            )
        except Exception as e:
            why = f"{type(e).__name__}: {str(e)[:300]}"
            fail(f"could not load --model-name {args.model_name!r} ({why}); offline, pass a save_pretrained folder")
        self.vae = pipe.vae.to(device)
        self.unet = pipe.unet.to(device)
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        resolution = args.resolution or self.unet.config.sample_size * vae_factor
        multiple = vae_factor * 2 ** (len(self.unet.config.down_block_types) - 1)
        if resolution <= 0 or resolution % multiple:
            fail(f"--resolution {resolution} is not a positive multiple of {multiple} (VAE factor x UNet downsampling)")
        self.latent_shape = (self.unet.config.in_channels, resolution // vae_factor, resolution // vae_factor)
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(args.num_steps, device=device)
        self.scheduler.timesteps = self.scheduler.timesteps.cpu()
        for module in (self.vae, pipe.text_encoder, self.unet):
            module.requires_grad_(False)
        lora = dict(r=args.lora_rank, lora_alpha=args.lora_rank, init_lora_weights="gaussian")
        self.unet.add_adapter(LoraConfig(**lora, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        for p in self.unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # LoRA weights in fp32, frozen weights in --dtype
        with torch.no_grad():
            tokenizer = pipe.tokenizer
            ids = tokenizer(
                self.prompts + [""],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            embeds = pipe.text_encoder.to(device)(ids.input_ids.to(device))[0]  # [P+1, L, H]
        self.cond_table = embeds[:-1]  # [P, L, H]
        self.null_cond = embeds[-1:]  # [1, L, H]: the empty prompt
        self.guidance = args.guidance_scale if args.guidance_scale is not None else SD_GUIDANCE_SCALE
        self.sample_batch_size = args.sample_batch_size or SD_SAMPLE_BATCH_SIZE
        self.train_micro_batch = args.train_micro_batch or SD_TRAIN_MICRO_BATCH
        self.storage = torch.device("cpu")  # the stage's trajectories wait on the CPU [code: .cpu() before pickling]

    def eps_fn(self, x, t, cond):
        return self.unet(x.to(self.dtype), t.to(self.device), encoder_hidden_states=cond).sample.float()

    def draw_prompts(self, n):  # uniform with replacement [code run_sample.py]
        return torch.randint(0, len(self.prompts), (n,)).to(self.device)

    def noise(self, n, generator=None):
        return torch.randn(n, *self.latent_shape, generator=generator, device=self.device)

    @torch.no_grad()
    def reward(self, latents, prompt_ids):
        """Decode and score `sample_batch_size` latents at a time [code run_select.py: 8 images per CLIP call]: only
        one chunk of images is ever held."""
        rewards = []
        for start in range(0, len(latents), self.sample_batch_size):
            chunk = latents[start : start + self.sample_batch_size].to(self.device, self.dtype)
            images = self.vae.decode(chunk / self.vae.config.scaling_factor).sample.float()
            images = (images / 2 + 0.5).clamp(0, 1)  # [b, 3, H, W]
            prompts = [self.prompts[i] for i in prompt_ids[start : start + self.sample_batch_size].tolist()]
            rewards.append(torch.as_tensor(self.reward_fn(images, prompts)).float().cpu())
        return torch.cat(rewards)

    def evaluate(self, progress_name: Optional[str] = None):
        return {}


# TRY NOT TO MODIFY: option checks, the table, the plot ----------------------------------------------------------------
def check_args(args):
    """Every bad option fails here, before any model is built."""
    N = args.num_steps
    if N < 1 or args.num_stages < 1:
        fail("--num-steps and --num-stages must be >= 1")
    if args.eta <= 0:
        fail(f"--eta {args.eta}: eta = 0 is deterministic DDIM and its log-prob is undefined; use eta > 0 (paper: 1)")
    trained_step_indices(0, args.num_stages, args.s_min, args.s_max, N)
    if args.fixed_split is not None and not 1 <= args.fixed_split <= N:
        fail(f"--fixed-split {args.fixed_split} must be in 1..--num-steps ({N})")
    toy_branch_arms = args.model_name is None and bool({"fixed-split", "select-all"} & set(args.arms))
    branching = (args.method == "b2" and args.branch) or toy_branch_arms
    if args.num_branches < 1:
        fail(f"--num-branches {args.num_branches}: a stage makes prefixes x S reward calls, so S must be >= 1")
    if branching and args.num_branches < 2:
        fail(f"--num-branches {args.num_branches}: branch sampling needs S >= 2 (or use --no-branch / --method ddpo)")
    if min(args.prefixes_per_stage, args.train_batch_size, args.num_seeds, args.epochs) < 1:
        fail("--prefixes-per-stage, --train-batch-size, --num-seeds, --epochs must be >= 1")
    for name in ("train_micro_batch", "sample_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1 (or left unset for the default)")
    for name in ("learning_rate", "ddpo_learning_rate", "pretrain_learning_rate"):
        rate = getattr(args, name)
        if not rate > 0 or not math.isfinite(rate):
            fail(f"--{name.replace('_', '-')} {rate}: a learning rate must be a positive number")
    if args.dtype not in DTYPE_NAMES:
        fail(f"--dtype {args.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    if args.prompt_file is not None and not Path(args.prompt_file).is_file():
        fail(f"--prompt-file {args.prompt_file} does not exist")
    if args.prompt_file is not None and args.model_name is None:
        fail("--prompt-file is for the real path (--model-name): the toy's prompts are its 4 classes")
    if args.tau_neg > args.tau_pos:
        fail(f"--tau-neg {args.tau_neg} > --tau-pos {args.tau_pos}")
    toy_rewards = ("precision", "mode")
    if args.model_name is None and args.reward_fn not in (None, *toy_rewards):
        fail(f"the toy's --reward-fn is precision or mode, not {args.reward_fn!r}")
    if args.model_name is not None and args.reward_fn in toy_rewards:
        fail(f"--reward-fn {args.reward_fn} is a toy reward; use clip, jpeg or module:function with --model-name")
    if args.model_name is None and not args.arms:
        fail("--arms is empty")


def describe(cfg):
    if cfg.method == "ddpo":
        return "DDPO (S=1, all steps)"
    split = [f"fixed-split {cfg.fixed_split}"] if cfg.fixed_split else []
    return " ".join(["B²"] + ["no-branch"] * (not cfg.branch) + split + ["select all"] * (cfg.select == "all"))


def mean_sd(values):
    t = torch.tensor(values, dtype=torch.float64)
    return f"{t.mean():.3f} ± {t.std():.3f}" if len(t) > 1 else f"{t.mean():.3f}"


def curve_cell(curves, index, key):
    """mean ± sd over seeds of `key` at curve point `index` (clamped to each curve's last point)."""
    return mean_sd([curve[min(index, len(curve) - 1)][key] for curve in curves])


def plot_toy(path, curves, samples, centres):
    """Eval reward and mode entropy against reward calls (mean +- sd), and the samples of each arm's first seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k in ("pretrained", "main", "ddpo") if k in samples]
    fig, axes = plt.subplots(1, 2 + len(shown), figsize=(4.2 * (2 + len(shown)), 3.8))
    for ax, key in zip(axes[:2], ("reward", "entropy")):
        for arm, arm_curves in curves.items():
            calls = torch.tensor([point["calls"] for point in arm_curves[0]])
            values = torch.tensor([[point[key] for point in curve] for curve in arm_curves])  # [seeds, stages+1]
            sd = values.std(0) if len(arm_curves) > 1 else torch.zeros(values.shape[1])
            ax.plot(calls, values.mean(0), label=arm)
            ax.fill_between(calls, values.mean(0) - sd, values.mean(0) + sd, alpha=0.2)
        ax.set_xlabel("reward calls")
        ax.set_title(f"eval {key}")
        ax.legend(fontsize=7)
    for ax, key in zip(axes[2:], shown):
        points, classes = samples[key]
        ax.scatter(points[:, 0], points[:, 1], c=classes, s=1, cmap="tab10", vmin=0, vmax=9, alpha=0.4)
        ax.scatter(centres[..., 0].flatten(), centres[..., 1].flatten(), marker="x", c="k", s=12)
        ax.set_title(f"samples: {key}")
        ax.set_aspect("equal")
        ax.set_xlim(-2.7, 2.7)
        ax.set_ylim(-2.7, 2.7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def make_run(task, args, total_steps):
    """The run folder. The progress line shows the step (cumulative reward calls), the arm and SHOWN_METRICS: on the
    toy once per arm and seed, at its last stage (an arm logs K + 1 rows); on a real model also every 30 s, with the
    ETA of the arm. (RunLogger counts log calls, not steps, for the first line after the step restarts, so a line
    in the middle of a toy arm would show a wrong ETA: a step here is 320 reward calls.)"""
    run_name = make_run_name(task, args.exp_name, args.seed)
    print_every = args.num_stages + 1
    return RunLogger(
        run_name, args, track=args.track, print_every=print_every, show=SHOWN_METRICS, total_steps=total_steps
    )


def main(args: Args):
    # TRY NOT TO MODIFY: option checks, seeding, device
    check_args(args)
    torch.set_num_threads(args.num_threads)
    seed_everything(args.seed)
    device = pick_device(args.cuda)
    calls_per_arm = args.num_stages * args.prefixes_per_stage * args.num_branches  # an arm's last step
    if args.model_name is not None:  # the real path: one arm (the flags as given), steps 1-6 as below
        world = SDWorld(args, device)
        run = make_run("sd", args, calls_per_arm)
        params = [p for p in world.unet.parameters() if p.requires_grad]
        start = time.time()
        cfg = arm_config(args, "main")
        curve = run_arm(args, cfg, world, params, "main", run, args.seed)
        from peft.utils import get_peft_model_state_dict

        torch.save(get_peft_model_state_dict(world.unet), run.dir / "lora.pt")
        rows = [
            dict(arm=describe(cfg), stage=k, calls=point["calls"], reward=point["train_reward"])
            for k, point in enumerate(curve[1:])
        ]
        run.finish(format_table(rows[:1] + rows[-1:]) + f"\n\ntrain wall {time.time() - start:.1f} s on {device}")
        return curve

    # 0. the toy: pretrain the eps-MLP once (cached); every arm and seed starts from these weights
    pretrain_start = time.time()
    model = pretrain_toy(args, device)
    pretrain_s = time.time() - pretrain_start
    base = {k: v.clone() for k, v in model.state_dict().items()}
    run = make_run("toy2d", args, calls_per_arm)
    world = ToyWorld(args, model, device)
    pretrained_eval = world.evaluate(progress_name="evaluation (pretrained)")
    samples = {"pretrained": world.last_samples}
    curves = {}
    walls = {}
    # 1-6. every arm and seed: K stages of sample -> reward -> normalise -> select -> train (run_arm), from the same
    #      pretrained weights; each (arm, seed) is a TensorBoard run of its own, arms/<arm>-seed<seed>/
    for arm in args.arms:
        cfg = arm_config(args, arm)
        for k in range(args.num_seeds):
            seed = args.seed + k
            model.load_state_dict(base)
            start = time.time()
            curve = run_arm(args, cfg, world, list(model.parameters()), f"{arm}-seed{seed}", run, seed)
            curves.setdefault(arm, []).append(curve)
            walls.setdefault(arm, []).append(time.time() - start)
            samples.setdefault(arm, world.last_samples)
    changed = any((base[k] != v).any() for k, v in model.state_dict().items())

    # TRY NOT TO MODIFY: the table: eval reward at the end and at half the budget (equal reward calls), entropy, spread
    half = args.num_stages // 2 + 1
    rows = []
    for arm, arm_curves in {"pretrained": [[dict(calls=0, **pretrained_eval)]], **curves}.items():
        name = arm if arm == "pretrained" else f"{arm}: {describe(arm_config(args, arm))}"
        row = dict(
            arm=name,
            seeds=len(arm_curves),
            calls=arm_curves[0][-1]["calls"],
            reward_final=curve_cell(arm_curves, -1, "reward"),
            reward_half=curve_cell(arm_curves, half, "reward"),
            entropy=curve_cell(arm_curves, -1, "entropy"),
            spread=curve_cell(arm_curves, -1, "spread"),
            wall_s_per_seed=sum(walls[arm]) / len(walls[arm]) if arm in walls else None,
        )
        rows.append(row)
    plot_toy(run.dir / "b2_toy.png", curves, samples, world.centres.cpu())
    run.save_text("curves.json", json.dumps(curves))
    note = f"reward = mean {world.kind} reward of {args.eval_samples} eval samples per class (fixed noise); "
    note += f"reward_half at {half * args.prefixes_per_stage * args.num_branches} calls; mean ± sd over seeds; "
    note += f"pretraining {pretrain_s:.1f} s (~0 = cached); {args.num_threads} torch thread(s) on {device}"
    run.finish(format_table(rows) + "\n\n" + note)
    return dict(curves=curves, pretrained=pretrained_eval, params_changed=changed, dir=run.dir, args=asdict(args))


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
