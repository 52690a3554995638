# benchmark of the real path | README: #real-models
"""Each script's real path on a real-architecture model with random weights: seconds per step, peak memory at step
batch B and 4B with the same micro-batch, and how far bf16 autocast moves the weights against fp32.

Nothing is downloaded: the model is `shared.real_shapes` at the chosen shape (random weights, the real vocabulary),
with a byte-level BPE tokenizer filled to the real vocabulary size (every sampled id decodes to text) and Qwen2.5's
chat template, saved to a temporary folder; the data is the tiny world's task rows saved with `save_to_disk`. The
script then runs as a user runs it, `python algos/<script>.py --model-name FOLDER --dataset-name FOLDER ...`, for a
few steps, each measurement in a process of its own:

    1. fp32 at step batch B: seconds per step (from metrics.jsonl) and peak RSS; the saved weights
    2. fp32 at step batch 4B, the same micro-batch and generation chunk: peak RSS
    3. bf16 autocast at step batch B: the saved (fp32 master) weights

and prints one line per script:

    <script>: <s>/step, peak RSS B <x> GB, 4B <y> GB (ratio <r>), bf16/fp32 update ratio <u>: bounded

where bounded = the 4B peak within 1.25x of the B peak and the update ratio ||W_bf16 - W_0|| / ||W_fp32 - W_0||
(lr 1e-6, the papers' scale) within 0.7-1.4; otherwise `NOT bounded (<why>)`. The last line is
`real shape: K/N scripts bounded`.

A script that trains no weights on its real path (Self-PRM's judge and selection pass) and the diffusion scripts
(LoRA adapters, not a saved model folder) get seconds per step and memory only. The diffusion lines build their own
narrowed real-architecture pipelines with random weights (the SD-1.x UNet, the SD3.5-Medium transformer), AMA its
own pre- and post-RLHF pair, PPO-M/C its own reward model; B and 4B are then prompts x samples (or rollouts).
Every line: `--scripts bleuberi dr_irl crm cream self_prm ama ppo_mc b2_diffurl paco_grpo`.

Commands:
    taskset -c 0,1 python benchmarks/real_shape.py                       # Qwen2.5-0.5B shape, CPU (~30 min)
    taskset -c 0,1 python benchmarks/real_shape.py --shape vocab         # Qwen2 vocabulary, small body (minutes)
    python benchmarks/real_shape.py --shape qwen2.5-0.5b --cuda          # on a GPU: peak = max_memory_allocated
"""

from __future__ import annotations

import json
import math
import os
import resource
import runpy
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from shared.real_shapes import REAL_SHAPES, build_bpe_tokenizer, save_real_shape_model  # noqa: E402
from shared.runs import fail  # noqa: E402

UNUSED_VOCABULARY_ROWS = 293  # Qwen2.5: 151,936 embedding rows, 151,643 ordinary tokens


@dataclass
class Args:
    shape: Literal["qwen2.5-0.5b", "llama-3.2-1b", "vocab", "test"] = "qwen2.5-0.5b"
    """model shape (shared/real_shapes.py): full hub shapes, `vocab` (real vocabulary, small body), `test`"""
    scripts: tuple[str, ...] = ("bleuberi",)
    """scripts to measure"""
    batch_size: int = 16
    """step batch B (completions); the memory check also runs 4B"""
    micro_batch_size: int = 8
    """micro-batch of every forward and backward, the same at B and 4B"""
    generation_batch_size: int = 16
    """sequences per generate call, the same at B and 4B"""
    completion_length: int = 32
    """new tokens per completion (a random model rarely stops early)"""
    steps: int = 2
    """optimizer steps per measurement (seconds per step = the time between the first and the last step / (steps-1))"""
    learning_rate: float = 1e-6
    """learning rate of the update-ratio runs (the papers' scale, where bf16 weights without masters stall)"""
    num_threads: int = 2
    """torch CPU threads of each measured process"""
    cuda: bool = False
    """run the measured processes on the GPU (peak memory = torch.cuda.max_memory_allocated)"""
    seed: int = 1
    """seed of every measured run"""


# Each script's line: the data it reads and the command that runs its real path ------------------------------------
def common_flags(batch_size: int, dtype: str, args: Args) -> list[str]:
    """The flags every GRPO-style script's measurement shares: steps, batch, micro-batch, generation chunk, lr,
    dtype, seed, threads, and saving the trained policy."""
    return [
        f"--steps={args.steps}",
        f"--batch-size={batch_size}",
        "--num-generations=8",
        f"--micro-batch-size={args.micro_batch_size}",
        f"--generation-batch-size={args.generation_batch_size}",
        f"--max-completion-length={args.completion_length}",
        f"--learning-rate={args.learning_rate}",
        f"--dtype={dtype}",
        f"--seed={args.seed}",
        f"--num-threads={args.num_threads}",
        "--save-model",
        "--cuda" if args.cuda else "--no-cuda",
    ]


def bleuberi_data(folder: Path) -> Path:
    """Prompts and references (the string_ops task's rows), saved as a dataset folder."""
    from shared.tasks import get_task

    data = get_task("string_ops").dataset(512, seed=0).select_columns(["prompt", "reference"])
    data.save_to_disk(str(folder))
    return folder


def bleuberi_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    num_prompts = batch_size // 8
    return [
        "algos/bleuberi.py",
        f"--model-name={model}",
        f"--dataset-name={data}",
        "--group-column=None",
        "--arms=bleuberi",
        f"--pool-size={num_prompts}",
        f"--num-examples={num_prompts}",
        "--num-eval=2",
        *common_flags(batch_size, dtype, args),
    ]


def dr_irl_data(folder: Path) -> Path:
    """Prompts, categories and demonstrations of two categories (the rule_categories task's copy and reverse rows)."""
    from datasets import Dataset

    from shared.tasks import get_task

    data = get_task("rule_categories").dataset(1000, seed=0).filter(lambda row: row["op"] in ("copy", "reverse"))
    columns = {"prompt": data["prompt"], "category": data["op"], "demonstration": data["reference"]}
    Dataset.from_dict(columns).save_to_disk(str(folder))
    return folder


def dr_irl_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    """DR-IRL's real path: two transformer RMs fitted one at a time (the same pairs at B and 4B), then GRPO-S."""
    return [
        "algos/dr_irl.py",
        f"--model-name={model}",
        f"--dataset-name={data}",
        "--categories",
        "copy",
        "reverse",
        "--rm-arch=transformer",
        "--true-reward=exact_match",
        "--arms=grpo-s",
        "--num-eval=1",
        "--num-demos-per-category=4",
        "--irl-samples=1",
        "--rm-epochs=1",
        "--rm-learning-rate=1e-5",
        f"--rm-batch-size={args.micro_batch_size}",
        f"--rm-micro-batch-size={args.micro_batch_size}",
        *common_flags(batch_size, dtype, args),
    ]


def crm_data(folder: Path) -> Path:
    """Preference pairs (prompt, chosen, rejected: the tiny world's preferences task), saved as a dataset folder."""
    from shared.tasks import Preferences

    Preferences().dataset(512, seed=0).save_to_disk(str(folder))
    return folder


def crm_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    """CRM's real path: two reward models (new seeded heads on the real-shape backbone), each step scored without
    gradients, the peer's pick trained in micro-batches; --steps optimizer steps of one epoch at the steady rate."""
    return [
        "algos/crm.py",
        f"--model-name={model}",
        f"--dataset-name={data}",
        "--arms=crm",
        f"--num-pairs={args.steps * batch_size}",
        "--epochs=1",
        "--ramp-epochs=0",
        "--num-test-pairs=2",
        f"--batch-size={batch_size}",
        f"--micro-batch-size={args.micro_batch_size}",
        f"--learning-rate={args.learning_rate}",
        f"--dtype={dtype}",
        f"--seed={args.seed}",
        f"--num-threads={args.num_threads}",
        "--save-model",
        "--cuda" if args.cuda else "--no-cuda",
    ]


# The diffusion scripts' lines: their own real-architecture pipelines, narrowed, random weights ---------------------
SD_WIDTH_DIVISOR = 10  # SD-1.x UNet 320-640-1280-1280 channels -> 32-64-128-128; the VAE /4; depth and blocks as real
SD3_WIDTH_DIVISOR = 12  # SD3.5-Medium transformer 24 heads x 64 -> 2 heads x 64; T5 / CLIP widths narrowed alike


def save_clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over GPT-2's byte alphabet with no merges (every prompt tokenizes), 77 tokens long."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars = [chr(b) for b in byte_chars] + [chr(256 + n) for n in range(256 - len(byte_chars))]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def narrow_clip_text_config(hidden: int, layers: int, projection: int | None = None):
    """A CLIP text encoder of the real vocabulary (49,408), length (77) and depth, `hidden` wide."""
    from transformers import CLIPTextConfig

    sizes = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers, num_attention_heads=2)
    special = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513)
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, projection_dim=projection or hidden, **sizes, **special
    )


def save_narrow_sd1_pipeline(folder: Path, latent_size: int = 16, seed: int = 0) -> Path:
    """Stable Diffusion 1.x's architecture (CompVis/stable-diffusion-v1-4: UNet blocks, 2 layers per block, 8 heads,
    CLIP ViT-L/14 text encoder of 12 layers, 4-block VAE, DDIM schedule) at 1/10 of the UNet width, random weights,
    `latent_size` latents (8x that in pixels), saved with save_pretrained."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    text_hidden = 768 // 12
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        block_out_channels=tuple(c // SD_WIDTH_DIVISOR for c in (320, 640, 1280, 1280)),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=text_hidden,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=8 * latent_size,
        scaling_factor=0.18215,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(narrow_clip_text_config(text_hidden, 12)),
        tokenizer=save_clip_tokenizer(folder / "tokenizer-files"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_narrow_sd3_pipeline(folder: Path, latent_size: int = 16, seed: int = 0, num_layers: int = 24) -> Path:
    """Stable Diffusion 3.5 Medium's architecture (24 MMDiT layers, the first 13 of 24 with dual attention, RMS
    qk-norm, patch 2, 16 latent channels; CLIP-L (12 layers) and CLIP-G (32 layers) text encoders, no T5; the 4-block
    VAE; the flow-matching scheduler with shift 3) at 1/12 of the transformer width, random weights, `latent_size`
    latents (8x that in pixels), saved with save_pretrained; `num_layers` < 24 also narrows the depth (tests)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    clip_l, clip_g = 768 // SD3_WIDTH_DIVISOR, 1280 // SD3_WIDTH_DIVISOR  # 64, 106 -> even widths below
    clip_l, clip_g = clip_l - clip_l % 2, clip_g - clip_g % 2
    transformer = SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=num_layers,
        attention_head_dim=64,
        num_attention_heads=24 // SD3_WIDTH_DIVISOR,
        joint_attention_dim=4096 // SD3_WIDTH_DIVISOR // 2 * 2,
        caption_projection_dim=64 * (24 // SD3_WIDTH_DIVISOR),
        pooled_projection_dim=clip_l + clip_g,
        pos_embed_max_size=max(latent_size // 2, 16),
        dual_attention_layers=tuple(range(num_layers * 13 // 24)),
        qk_norm="rms_norm",
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=8 * latent_size,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    tokenizer = save_clip_tokenizer(folder / "tokenizer-files")
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(narrow_clip_text_config(clip_l, 12)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(narrow_clip_text_config(clip_g, 32)),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(folder)
    return folder


def b2_diffurl_model(work: Path, args: Args) -> Path:
    return save_narrow_sd1_pipeline(work / "b2_diffurl-pipeline", seed=args.seed)


def b2_diffurl_data(folder: Path) -> Path:
    """The animal-activity prompts of the official template 1, one a line."""
    folder.mkdir(parents=True, exist_ok=True)
    animals, activities = ("cat", "dog", "horse", "monkey", "rabbit"), ("washing dishes", "riding a bike")
    (folder / "prompts.txt").write_text("\n".join(f"a {a} {b}" for a in animals for b in activities) + "\n")
    return folder / "prompts.txt"


def b2_diffurl_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    """A stage = B samples (B/4 prefixes x 4 branches), every sample trained (--select all), one optimizer step per
    stage; sampling and decoding in chunks of --generation-batch-size, training in --micro-batch-size transitions."""
    return [
        "algos/b2_diffurl.py",
        f"--model-name={model}",
        f"--prompt-file={data}",
        "--reward-fn=jpeg",
        "--select=all",
        "--num-steps=4",
        "--s-min=2",
        "--s-max=4",
        f"--num-stages={args.steps}",
        "--num-branches=4",
        f"--prefixes-per-stage={batch_size // 4}",
        f"--train-batch-size={batch_size}",
        "--epochs=1",
        f"--sample-batch-size={args.generation_batch_size}",
        f"--train-micro-batch={args.micro_batch_size}",
        f"--learning-rate={args.learning_rate}",
        f"--dtype={dtype}",
        f"--seed={args.seed}",
        f"--num-threads={args.num_threads}",
        "--cuda" if args.cuda else "--no-cuda",
    ]


def paco_grpo_model(work: Path, args: Args) -> Path:
    return save_narrow_sd3_pipeline(work / "paco_grpo-pipeline", seed=args.seed)


def paco_grpo_data(folder: Path) -> Path:
    """PaCo-GRPO's real path takes its prompts as flags (its built-in 2x2-grid prompts): nothing to write."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def paco_grpo_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    """An epoch = 2 prompts x G = B/2 samples, one optimizer step; sampling, decoding and rewards in chunks of
    --generation-batch-size, training in --micro-batch-size samples (CFG: x2 passes)."""
    return [
        "algos/paco_grpo.py",
        f"--model-name={model}",
        "--no-load-t5",
        "--image-size=256",
        "--train-res=half",
        "--num-steps=4",
        "--eval-steps=2",
        "--noise-steps",
        "1",
        f"--epochs={args.steps}",
        "--num-prompts=2",
        f"--num-generations={batch_size // 2}",
        "--updates-per-epoch=1",
        "--guidance-scale=4.5",
        f"--sample-batch-size={args.generation_batch_size}",
        f"--micro-batch-size={args.micro_batch_size}",
        f"--learning-rate={args.learning_rate}",
        f"--dtype={dtype}",
        f"--seed={args.seed}",
        f"--num-threads={args.num_threads}",
        "--cuda" if args.cuda else "--no-cuda",
    ]


def self_prm_data(folder: Path) -> Path:
    """Problems and final answers (the chain_addition task's rows as `problem` / `answer` columns), a dataset folder."""
    from datasets import Dataset

    from shared.tasks import ChainAddition

    rows = ChainAddition().dataset(512, seed=0)
    Dataset.from_dict({"problem": rows["prompt"], "answer": rows["answer"]}).save_to_disk(str(folder))
    return folder


def self_prm_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    """Self-PRM's judge + selection pass (nothing trained): B / 8 problems x 8 samples, each judged once by the same
    model; a `timing/` metrics row per generation chunk of --generation-batch-size sequences."""
    return [
        "algos/self_prm.py",
        f"--model-name={model}",
        f"--dataset-name={data}",
        f"--num-problems={batch_size // 8}",
        "--num-samples=8",
        "--k-max=8",
        f"--max-new-tokens={args.completion_length}",
        f"--judge-max-new-tokens={args.completion_length}",
        f"--gen-batch-size={args.generation_batch_size}",
        "--soft-score=none",
        f"--dtype={dtype}",
        f"--seed={args.seed}",
        f"--num-threads={args.num_threads}",
        "--cuda" if args.cuda else "--no-cuda",
    ]


def ama_model(work: Path, args: Args) -> Path:
    """theta0 = the real-shape LM at --shape; theta = theta0 with every tensor moved by ~1 % of its scale (an RLHF-sized
    delta), saved inside theta0's folder as `theta/` (theta0's own weights stay the folder's only safetensors)."""
    from transformers import AutoModelForCausalLM

    vocab_size = REAL_SHAPES[args.shape]["vocab_size"]
    tokenizer = build_bpe_tokenizer(vocab_size=vocab_size - UNUSED_VOCABULARY_ROWS)
    folder = save_real_shape_model(work / "ama-theta0", args.shape, tokenizer, seed=0)
    theta = AutoModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in theta.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01 * param.abs().mean())
    theta.save_pretrained(folder / "theta")
    tokenizer.save_pretrained(folder / "theta")
    return folder


def ama_data(folder: Path) -> Path:
    """RLHF prompts (the string_ops task's prompts), with 4 prompt / reference rows as the tax set in `tax/`."""
    from datasets import Dataset

    from shared.tasks import get_task

    rows = get_task("string_ops").dataset(512, seed=0)
    Dataset.from_dict({"prompt": rows["prompt"]}).save_to_disk(str(folder / "prompts"))
    Dataset.from_dict({"prompt": rows["prompt"][:4], "reference": rows["reference"][:4]}).save_to_disk(
        str(folder / "tax")
    )
    return folder


def ama_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    """AMA's merge training: D = --steps x B samples of theta (unfiltered: no reward model), layerwise ratios at mean
    pre weight 0.2 trained on it in micro-batches, merged once per evaluation; the trained merge saved."""
    return [
        "algos/ama.py",
        f"--pre-model={model}",
        f"--post-model={model / 'theta'}",
        f"--dataset-name={data / 'prompts'}",
        f"--tax-dataset-name={data / 'tax'}",
        "--arms=ama",
        "--mean-pre-weights=0.2",
        "--groups=layerwise",
        f"--num-d-samples={args.steps * batch_size}",
        f"--num-d-keep={args.steps * batch_size}",
        "--epochs=1",
        f"--batch-size={batch_size}",
        f"--micro-batch-size={args.micro_batch_size}",
        f"--generation-batch-size={args.generation_batch_size}",
        f"--max-new-tokens={args.completion_length}",
        f"--tax-max-new-tokens={args.completion_length}",
        "--num-eval=2",
        f"--dtype={dtype}",
        f"--seed={args.seed}",
        f"--num-threads={args.num_threads}",
        "--save-model",
        "--cuda" if args.cuda else "--no-cuda",
    ]


def ppo_mc_model(work: Path, args: Args) -> Path:
    """The policy = the real-shape LM at --shape; the reward model (also the critic's start) = the same body shape
    with a random value head, saved in OpenRLHF's format (`value_head.weight`, mean / std in config.json) inside
    the policy's folder as `reward_model/` (the policy's own weights stay the folder's only safetensors)."""
    from transformers import AutoModelForSequenceClassification

    from shared.real_shapes import real_shape_config
    from shared.reward_models import save_openrlhf_reward_model

    vocab_size = REAL_SHAPES[args.shape]["vocab_size"]
    tokenizer = build_bpe_tokenizer(vocab_size=vocab_size - UNUSED_VOCABULARY_ROWS)
    folder = save_real_shape_model(work / "ppo_mc-policy", args.shape, tokenizer, seed=0)
    config = real_shape_config(args.shape, tokenizer)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        reward_model = AutoModelForSequenceClassification.from_config(config)
    save_openrlhf_reward_model(folder / "reward_model", reward_model, tokenizer, mean=0.0, std=1.0)
    return folder


def ppo_mc_data(folder: Path) -> Path:
    """PPO prompts (the string_ops task's prompts), saved as a dataset folder."""
    from datasets import Dataset

    from shared.tasks import get_task

    rows = get_task("string_ops").dataset(512, seed=0)
    Dataset.from_dict({"prompt": rows["prompt"]}).save_to_disk(str(folder))
    return folder


def ppo_mc_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    """PPO-C's real path (policy, reference, OpenRLHF-format RM, critic from the RM): B prompts per rollout, two
    minibatches, the micro-batch for every forward and backward, generation in chunks, no evaluation."""
    return [
        "algos/ppo_mc.py",
        f"--model-name={model}",
        f"--reward-model-name={model / 'reward_model'}",
        f"--dataset-name={data}",
        "--arms=ppo-c",
        f"--steps={args.steps}",
        f"--rollout-batch-size={batch_size}",
        "--num-minibatches=2",
        f"--micro-train-batch-size={args.micro_batch_size}",
        f"--forward-batch-size={args.micro_batch_size}",
        f"--generation-batch-size={args.generation_batch_size}",
        f"--max-new-tokens={args.completion_length}",
        f"--actor-learning-rate={args.learning_rate}",
        f"--critic-learning-rate={args.learning_rate}",
        "--num-eval=0",
        f"--dtype={dtype}",
        f"--seed={args.seed}",
        f"--num-threads={args.num_threads}",
        "--save-model",
        "--cuda" if args.cuda else "--no-cuda",
    ]


def cream_data(folder: Path) -> Path:
    """Prompts (the sort_digits task's) and seed SFT data (prompt / completion = the clean answer), two dataset
    folders inside `folder`."""
    from datasets import Dataset

    from shared.tasks import get_task

    data = get_task("sort_digits").dataset(2048, seed=0)
    Dataset.from_dict({"prompt": data["prompt"]}).save_to_disk(str(folder / "prompts"))
    Dataset.from_dict({"prompt": data["prompt"], "completion": data["clean"]}).save_to_disk(str(folder / "sft"))
    return folder


def cream_command(model: Path, data: Path, batch_size: int, dtype: str, args: Args) -> list[str]:
    """CREAM's real path: M1 = one SFT step of B examples, then one iteration: N = 2 samples per prompt, the
    self-rewards and consistency scored without gradients, --steps soft-label DPO steps of B pairs in micro-batches; no
    evaluation. The arm is `fixed` (C = 0.9, the paper's "w/o RC"): the same code as `cream`, but its C does not
    depend on the samples, which differ between the fp32 and bf16 runs (at C = 0.5 the first gradient is 0)."""
    return [
        "algos/cream.py",
        f"--model-name={model}",
        f"--dataset-name={data / 'prompts'}",
        f"--sft-dataset-name={data / 'sft'}",
        "--arms=fixed",
        "--num-seeds=1",
        "--iterations=1",
        f"--prompts-per-iter={args.steps * batch_size}",
        "--num-samples=2",
        "--num-eval=0",
        f"--num-sft-examples={batch_size}",
        "--sft-steps=1",
        f"--sft-batch-size={batch_size}",
        f"--dpo-batch-size={batch_size}",
        f"--micro-batch-size={args.micro_batch_size}",
        f"--generation-batch-size={args.generation_batch_size}",
        f"--score-batch-size={args.micro_batch_size}",
        f"--max-new-tokens={args.completion_length}",
        "--temperature=1.0",
        f"--learning-rate={args.learning_rate}",
        f"--sft-learning-rate={args.learning_rate}",
        f"--dtype={dtype}",
        "--seed=1",  # the saved folder model_fixed_s1 names the seed
        f"--num-threads={args.num_threads}",
        "--save-model",
        "--cuda" if args.cuda else "--no-cuda",
    ]


@dataclass(frozen=True)
class Line:
    """One script's real-shape line: the data it reads, the command that runs its real path, and what to compare."""

    data: Callable[[Path], Path]
    """folder -> the dataset (or prompt file) the command reads, written into that folder"""
    command: Callable[[Path, Path, int, str, Args], list[str]]
    """(model, data, step batch, dtype, args) -> `algos/<script>.py` and its flags"""
    saved: str | None
    """folder of the trained model inside the run folder (--save-model); None: the script trains no weights, and the
    line reports seconds per step and memory only"""
    model: Callable[[Path, Args], Path] | None = None
    """(work folder, args) -> a model folder of the script's own (e.g. a diffusion pipeline); None: the shared
    real-shape causal LM at --shape"""


SCRIPTS: dict[str, Line] = {
    "bleuberi": Line(bleuberi_data, bleuberi_command, saved="bleuberi"),
    "dr_irl": Line(dr_irl_data, dr_irl_command, saved="grpo-s"),
    "b2_diffurl": Line(b2_diffurl_data, b2_diffurl_command, saved=None, model=b2_diffurl_model),
    "paco_grpo": Line(paco_grpo_data, paco_grpo_command, saved=None, model=paco_grpo_model),
    "crm": Line(crm_data, crm_command, saved="regime1_crm_model1"),
    "self_prm": Line(self_prm_data, self_prm_command, saved=None),
    "ama": Line(ama_data, ama_command, saved="ama_g0.2", model=ama_model),
    "ppo_mc": Line(ppo_mc_data, ppo_mc_command, saved="ppo-c", model=ppo_mc_model),
    "cream": Line(cream_data, cream_command, saved="model_fixed_s1"),
}


# Measurement ------------------------------------------------------------------------------------------------------
def child(argv: list[str], report: str) -> None:
    """Run a script as `python <script> <flags>` in this process and write its peak memory to `report`."""
    script = str(ROOT / argv[0])
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, str(ROOT))
    use_cuda = "--cuda" in argv and torch.cuda.is_available()
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        peak_cuda = torch.cuda.max_memory_allocated() if use_cuda else 0
        Path(report).write_text(json.dumps({"peak_rss": peak_rss, "peak_cuda": peak_cuda}))


def measure(argv: list[str], runs_dir: Path, log: Path) -> dict:
    """Run one measurement in a fresh process; its peak memory, run folder and seconds per step."""
    runs_dir.mkdir(parents=True)
    report = runs_dir / "peak.json"
    env = {**os.environ, "REWARDLAB_RUNS": str(runs_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child-report", str(report), "--", *argv]
    started = time.time()
    with open(log, "w") as output:
        finished = subprocess.run(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    if finished.returncode != 0 or not report.exists():
        tail = "".join(open(log).readlines()[-15:])
        fail(f"{' '.join(argv)} failed (exit {finished.returncode}); the end of its output ({log}):\n{tail}")
    (run_folder,) = [path for path in runs_dir.iterdir() if path.is_dir()]
    step_times = {}
    for line in (run_folder / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if any(key.startswith(("losses/", "timing/")) for key in row):  # a training step, or a timed chunk of work
            step_times[row["step"]] = row["time"]
    steps = sorted(step_times)
    per_step = (step_times[steps[-1]] - step_times[steps[0]]) / max(len(steps) - 1, 1)
    peaks = json.loads(report.read_text())
    peak = peaks["peak_cuda"] or peaks["peak_rss"]
    return {"folder": run_folder, "seconds_per_step": per_step, "peak": peak, "wall": time.time() - started}


def weight_distance(folder_a: Path, folder_b: Path) -> float:
    """||W_a - W_b|| over every weight of two saved models (in fp64)."""
    from safetensors.torch import load_file

    def weights(folder):
        tensors = {}
        for file in sorted(folder.glob("*.safetensors")):
            tensors.update(load_file(str(file)))
        return tensors

    a, b = weights(folder_a), weights(folder_b)
    return math.sqrt(sum((a[k].double() - b[k].double()).pow(2).sum().item() for k in a))


def run_script(name: str, language_model: Callable[[], Path], work: Path, args: Args) -> tuple[str, bool]:
    line = SCRIPTS[name]
    model = line.model(work, args) if line.model is not None else language_model()
    data = line.data(work / f"{name}-data")
    measurements = [("B", args.batch_size, "fp32"), ("4B", 4 * args.batch_size, "fp32")]
    if line.saved is not None:
        measurements.append(("bf16", args.batch_size, "bf16"))
    runs = {}
    for label, batch_size, dtype in measurements:
        print(f"{name}: running {label} (step batch {batch_size}, {dtype}) ...", flush=True)
        runs[label] = measure(
            line.command(model, data, batch_size, dtype, args), work / f"{name}-{label}", work / f"{name}-{label}.log"
        )
        print(
            f"{name}: {label} done in {runs[label]['wall']:.0f} s, peak {runs[label]['peak'] / 2**30:.2f} GB",
            flush=True,
        )
    memory_ratio = runs["4B"]["peak"] / runs["B"]["peak"]
    problems = []
    if not memory_ratio <= 1.25:
        problems.append(f"peak at 4B is {memory_ratio:.2f}x the peak at B")
    update = ""
    if line.saved is not None:
        fp32_distance = weight_distance(model, runs["B"]["folder"] / line.saved)
        bf16_distance = weight_distance(model, runs["bf16"]["folder"] / line.saved)
        update_ratio = bf16_distance / fp32_distance if fp32_distance > 0 else float("nan")
        update = f", bf16/fp32 update ratio {update_ratio:.2f}"
        if not 0.7 <= update_ratio <= 1.4:
            problems.append(f"bf16 moved the weights {update_ratio:.2f}x as far as fp32")
    memory = "peak memory" if args.cuda else "peak RSS"
    verdict = "bounded" if not problems else f"NOT bounded ({'; '.join(problems)})"
    text = (
        f"{name}: {runs['B']['seconds_per_step']:.2f} s/step, {memory} B {runs['B']['peak'] / 2**30:.2f} GB, "
        f"4B {runs['4B']['peak'] / 2**30:.2f} GB (ratio {memory_ratio:.2f}){update}: {verdict}"
    )
    return text, not problems


def main(args: Args) -> list[str]:
    unknown = [name for name in args.scripts if name not in SCRIPTS]
    if unknown:
        fail(f"--scripts {' '.join(unknown)}: no real-shape line yet; known: {', '.join(SCRIPTS)}")
    if args.batch_size % 8 or args.batch_size % args.micro_batch_size or args.steps < 2:
        fail("--batch-size must be a multiple of 8 (groups of 8) and of --micro-batch-size, and --steps at least 2")
    lines = []
    with tempfile.TemporaryDirectory(prefix="real-shape-") as tmp:
        work = Path(tmp)
        built = []

        def language_model() -> Path:
            """The shared real-shape causal LM, built once on first use."""
            if not built:
                vocab_size = REAL_SHAPES[args.shape]["vocab_size"]
                print(f"building the {args.shape} model (random weights, vocabulary {vocab_size}) ...", flush=True)
                tokenizer = build_bpe_tokenizer(vocab_size=vocab_size - UNUSED_VOCABULARY_ROWS)
                built.append(save_real_shape_model(work / "model", args.shape, tokenizer, seed=0))
            return built[0]

        for name in args.scripts:
            line, _ = run_script(name, language_model, work, args)
            print(line, flush=True)
            lines.append(line)
    bounded = sum(line.endswith(": bounded") for line in lines)
    lines.append(f"real shape: {bounded}/{len(args.scripts)} scripts bounded")
    print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child-report":
        child(sys.argv[sys.argv.index("--") + 1 :], sys.argv[2])
    else:
        main(tyro.cli(Args))
