"""Reward models from the checkpoint formats that reward-model trainers write, with their heads and statistics.

Two formats hold a scalar reward head on a transformer body:

- transformers' `AutoModelForSequenceClassification` (`num_labels=1`): the head is `score.weight` (TRL's
  RewardTrainer writes this);
- OpenRLHF's `get_llm_for_sequence_regression`: the same body (`model.*`) and a bias-free linear head named
  `value_head.weight` (OpenRLHF's `--value_head_prefix`), plus the reward statistics of `--normalize_reward`:
  `mean` and `std` in config.json (OpenRLHF's own `mean` / `std` buffers are not persistent, so they are filled from
  the config at load time; a checkpoint that does hold them as tensors is read too). The paper checkpoints of
  OpenLLMAI and HINT-lab are of this kind.

transformers loads an OpenRLHF checkpoint as a sequence classifier with a NEW random `score` head and only warns.
`load_reward_model` reads the checkpoint's weight names first (no tensor is loaded), refuses a checkpoint with
neither head, naming the missing weights, and otherwise returns one `AutoModelForSequenceClassification` whose
`score` holds the checkpoint's head, with the statistics resolved in its config:

    rm, tokenizer = load_reward_model("OpenLLMAI/Llama-3-8b-rm-mixture", "cuda", torch.bfloat16, normalize=True)
    rm.config.reward_head        # "value_head.weight" (OpenRLHF) or "score.weight" (transformers)
    rm.config.normalize_reward   # True: rewards are (r - rm.config.mean) / rm.config.std, as OpenRLHF's RewardModel

`save_openrlhf_reward_model` writes a checkpoint in OpenRLHF's layout (for tests and benchmarks, offline).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as transformers_logging

from shared.lm import check_hub_id, load_tokenizer, offline
from shared.runs import fail

TRANSFORMERS_HEAD = "score.weight"
WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def checkpoint_file(name_or_path: str, filename: str) -> Path | None:
    """The local path of one file of a checkpoint folder or (cached / downloadable) hub repository, or None."""
    if Path(name_or_path).is_dir():
        path = Path(name_or_path) / filename
        return path if path.exists() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name_or_path, filename, local_files_only=offline()))
    except Exception:  # not in the repository, or not cached offline
        return None


def weight_map(name_or_path: str) -> dict[str, Path]:
    """Every weight name of a checkpoint -> the file that holds it, read from the index or the file headers only."""
    for filename in WEIGHT_FILES:
        path = checkpoint_file(name_or_path, filename)
        if path is None:
            continue
        if filename.endswith(".index.json"):
            shards = json.loads(path.read_text())["weight_map"]
            files = {shard: checkpoint_file(name_or_path, shard) for shard in set(shards.values())}
            return {key: files[shard] for key, shard in shards.items()}
        if filename.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as weights:
                return {key: path for key in weights.keys()}
        state = torch.load(path, map_location="meta", weights_only=True)
        return {key: path for key in state}
    fail(f"{name_or_path!r} holds no weights: none of {', '.join(WEIGHT_FILES)} was found")


def checkpoint_tensor(path: Path, key: str) -> torch.Tensor:
    """One tensor of a weight file (safetensors or a torch pickle)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as weights:
            return weights.get_tensor(key)
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def reward_head(name_or_path: str, value_head_prefix: str = "value_head") -> str:
    """The name of a checkpoint's reward head (`score.weight` or `<value_head_prefix>.weight`), read from its weight
    index or file headers without loading a tensor; a checkpoint with neither stops the run naming them."""
    if not Path(name_or_path).is_dir():
        check_hub_id(name_or_path)
    weights = weight_map(name_or_path)
    openrlhf_head = f"{value_head_prefix}.weight"
    for head in (TRANSFORMERS_HEAD, openrlhf_head):
        if head in weights:
            return head
    fail(
        f"{name_or_path!r} is not a reward model: it has no reward head, neither {TRANSFORMERS_HEAD} "
        f"(transformers AutoModelForSequenceClassification) nor {openrlhf_head} (OpenRLHF). Pass a reward "
        "model checkpoint, not a plain language model (its head would be random)."
    )


def load_reward_model(
    name_or_path: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize: bool | None = None,
    value_head_prefix: str = "value_head",
):
    """(reward model, tokenizer) from a transformers (`score`) or OpenRLHF (`value_head`) checkpoint.

    `normalize`: None follows the checkpoint config's `normalize_reward`; True / False overrides it, as OpenRLHF's
    `--normalize_reward` does at PPO time. Normalising without stored statistics uses mean 0 and std 1 (OpenRLHF's
    buffer defaults) and says so. The result's config holds `reward_head`, `normalize_reward`, `mean` and `std`."""
    head = reward_head(name_or_path, value_head_prefix)
    weights = weight_map(name_or_path)
    tokenizer = load_tokenizer(name_or_path)
    verbosity = transformers_logging.get_verbosity()
    if head != TRANSFORMERS_HEAD:  # transformers would report score.weight as newly initialised: it is filled below
        transformers_logging.set_verbosity_error()
    try:
        model, loading_info = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=1, dtype=dtype, local_files_only=offline(), output_loading_info=True
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing = sorted(set(loading_info["missing_keys"]) - {TRANSFORMERS_HEAD})
    if missing:
        fail(f"{name_or_path!r} has no weights for {', '.join(missing)}: these would be random")
    if head != TRANSFORMERS_HEAD:  # the checkpoint's value head becomes `score` (both are bias-free Linear(H, 1))
        value_head = checkpoint_tensor(weights[head], head)  # [1, H]
        if tuple(value_head.shape) != tuple(model.score.weight.shape):
            fail(f"{name_or_path!r}: {head} has shape {tuple(value_head.shape)}, not {tuple(model.score.weight.shape)}")
        with torch.no_grad():
            model.score.weight.copy_(value_head)
    config = model.config
    mean, std = getattr(config, "mean", None), getattr(config, "std", None)
    if "mean" in weights and "std" in weights:  # statistics saved as tensors (persistent buffers)
        mean = checkpoint_tensor(weights["mean"], "mean").float().item()
        std = checkpoint_tensor(weights["std"], "std").float().item()
    config.normalize_reward = bool(getattr(config, "normalize_reward", False)) if normalize is None else normalize
    if config.normalize_reward and (mean is None or std is None):
        print(f"{name_or_path}: no stored reward mean / std, normalising with 0 / 1 (OpenRLHF's defaults)", flush=True)
    config.mean, config.std = (0.0, 1.0) if mean is None or std is None else (float(mean), float(std))
    if not config.std > 0:
        fail(f"{name_or_path!r} stores reward std {config.std}: normalisation needs a positive std")
    config.reward_head = head
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def save_openrlhf_reward_model(folder, model, tokenizer, mean: float | None = None, std: float | None = None) -> Path:
    """Save a sequence-classification reward model in OpenRLHF's layout: the body as `model.*`, the head as
    `value_head.weight`, and (when given) the reward statistics as config.json's `mean` / `std` with
    `normalize_reward` true, as OpenRLHF's reward-model trainer writes them."""
    folder = Path(folder)
    state = {}
    for key, value in model.state_dict().items():
        state["value_head.weight" if key == TRANSFORMERS_HEAD else key] = value
    if mean is not None:
        model.config.mean, model.config.std, model.config.normalize_reward = float(mean), float(std), True
    model.save_pretrained(folder, state_dict=state)
    tokenizer.save_pretrained(folder)
    return folder
