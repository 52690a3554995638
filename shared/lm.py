"""Language models: the tiny world's tokenizer and model, one loader for every model, and batched sampling.

The tiny world is a real Hugging Face stack made small: a word-level `PreTrainedTokenizerFast` with pad / bos /
eos tokens, left padding and a ChatML-style chat template, and a 2-layer Qwen2 (or Llama) causal LM of about
0.15M parameters. Scripts therefore run one code path for the toy and for `Qwen/Qwen2.5-0.5B-Instruct`:

    model, tokenizer = load_causal_lm("tiny:string_ops")        # the tiny LM warm-started on a task (cached)
    model, tokenizer = load_causal_lm("Qwen/Qwen2.5-0.5B-Instruct", device="cuda", dtype=torch.bfloat16)
    out = sample(model, tokenizer, prompts, num_samples=8, max_new_tokens=32, temperature=0.9)
    out.completion_ids, out.completion_mask                    # [N*8, T]; mask keeps the first EOS, zeroes after

Names `load_causal_lm` understands: `tiny` (random init), `tiny:<task>` (warm-started on a tiny-world task,
see shared/warmstart.py), a local folder written by `save_pretrained`, or a hub id (needs the network or the
local HF cache; offline it fails at once with a message).
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from shared.runs import fail

# ChatML without newlines, so that the word-level tokenizer splits it on whitespace like any other text.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    ["system", "user", "assistant"]
    + [str(i) for i in range(100)]  # numbers are single tokens
    + list("abcdefghijkl")  # the letters of the string tasks and the content words of the preference task
    + ["copy", "reverse", "sort", "dedup", "rotate", "rotate2", "add", "topic", "t0", "t1", "t2", "t3"]
    + list("+-=;:#,.()?!")
    + ["yes", "no", "ok", "bad", "valid", "step", "answer", "confidence", "ref", "Q", "A"]
    + [f"<extra_{i}>" for i in range(16)]  # spare tokens a method can give a meaning without a new vocabulary
)
TINY_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
END_OF_TURN_TOKENS = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"]


def build_tokenizer(extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """The tiny world's word-level tokenizer (whitespace split; an unknown word becomes `<unk>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(dict.fromkeys(SPECIAL_TOKENS + WORDS + list(extra_words)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<|im_end|>",
        padding_side="left",
        truncation_side="left",
        model_max_length=512,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})  # skipped when decoding
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(
    tokenizer,
    arch: str = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 256,
):
    """A real-architecture config, tiny: hidden 64, 2 layers, 4 heads (2 KV heads), MLP 3x, tied embeddings."""
    if arch not in ("qwen2", "llama"):
        fail(f"tiny arch {arch!r} is not one of qwen2, llama")
    return AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_lm(tokenizer=None, seed: int = 0, **config_kwargs):
    """A freshly initialised tiny causal LM (and its tokenizer); the seed fixes its weights."""
    tokenizer = tokenizer or build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(tokenizer, **config_kwargs))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def offline() -> bool:
    """Whether HF_HUB_OFFLINE is set: then only local folders and the local cache are used."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def load_tokenizer(name_or_path: str):
    """The tokenizer of `name_or_path`, set up for batched generation: left padding, a pad token."""
    config_file = Path(name_or_path) / "tokenizer_config.json"
    plain = (
        config_file.exists() and json.loads(config_file.read_text()).get("tokenizer_class") in TINY_TOKENIZER_CLASSES
    )
    # A plain tokenizers-backed tokenizer (the tiny world's) loads as saved; AutoTokenizer would pick the
    # model type's class (Qwen2Tokenizer) and replace the word-level decoder with a byte-level one.
    tokenizer_class = PreTrainedTokenizerFast if plain else AutoTokenizer
    tokenizer = tokenizer_class.from_pretrained(name_or_path, local_files_only=offline())
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (False at once when offline or without DNS)."""
    from huggingface_hub import constants

    if offline():
        return False
    try:
        socket.create_connection((urlparse(constants.ENDPOINT).hostname, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_hub_id(name: str) -> None:
    """Fail within seconds when a hub id is neither in the local cache nor reachable (no retry back-off)."""
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return
    except Exception:
        pass
    reason = "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    if not offline():
        try:
            if not hub_reachable():
                raise OSError("the hub is unreachable")
            AutoConfig.from_pretrained(name)
            return
        except OSError as error:  # no network, or the hub answered that the id does not exist
            reason = f"not in the local cache and not loadable from the hub ({error})"
    fail(
        f"cannot load {name!r}: it is not a local folder, and is {reason}. Pass a folder written by "
        "save_pretrained, download the model first where the hub is reachable, or use the offline default "
        "(e.g. --model-name tiny:string_ops)."
    )


def load_causal_lm(
    name_or_path: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    model_class=AutoModelForCausalLM,
    **model_kwargs,
):
    """(model, tokenizer) for `tiny`, `tiny:<task>`, a local `save_pretrained` folder, or a hub id.

    `model_class` lets a script load a different head through the same path (e.g.
    `AutoModelForSequenceClassification` with `num_labels=1` for a reward model)."""
    if name_or_path == "tiny":  # a freshly initialised tiny model, with the head `model_class` gives it
        tokenizer = build_tokenizer()
        config = tiny_config(tokenizer)
        config.update(model_kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_class.from_config(config)
        return model.to(device=device, dtype=dtype), tokenizer
    if name_or_path.startswith("tiny:"):  # the tiny LM warm-started on a tiny-world task, cached on disk
        from shared.warmstart import warm_start

        name_or_path = str(warm_start(name_or_path.split(":", 1)[1], seed=seed))
    if not Path(name_or_path).is_dir():
        check_hub_id(name_or_path)
    tokenizer = load_tokenizer(name_or_path)
    model = model_class.from_pretrained(name_or_path, dtype=dtype, local_files_only=offline(), **model_kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a completion: the tokenizer's EOS, the model's generation EOS and end-of-turn tokens."""
    ids = {tokenizer.eos_token_id}
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    return sorted(i for i in ids if i is not None)


def completion_mask(completion_ids: torch.Tensor, stop_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """1 on every token up to and including the first stop token, 0 after it; no stop token keeps all tokens."""
    is_stop = torch.isin(completion_ids, torch.as_tensor(stop_ids, device=completion_ids.device)).long()  # [N, T]
    stops_before = is_stop.cumsum(dim=1) - is_stop  # [N, T] stop tokens strictly before position t
    return (stops_before == 0).long()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` computes them: use them in every training forward pass."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def encode_prompts(
    tokenizer,
    prompts: list[str],
    chat: bool = True,
    max_prompt_length: int | None = None,
    system_prompt: str | None = None,
    device: str | torch.device = "cpu",
):
    """Left-padded prompt ids and mask; with `chat`, each prompt becomes one user turn of the chat template."""
    if chat:
        if tokenizer.chat_template is None:
            fail("the tokenizer has no chat template: pass --no-chat to feed prompts as plain text")
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompts = [
            tokenizer.apply_chat_template(
                head + [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    batch = tokenizer(
        prompts,
        return_tensors="pt",
        padding=True,
        add_special_tokens=not chat,
        truncation=max_prompt_length is not None,
        max_length=max_prompt_length,
    )
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


@contextmanager
def only_given_generation_options(model):
    """Inside, `generate` uses only the options passed to it. Outside, it fills every option left at its default from
    the checkpoint's generation_config (Qwen ships repetition_penalty 1.05, top_k 20, ...), so samples would not
    follow the distribution that the policy's log-probs assume."""
    saved, model.generation_config = model.generation_config, GenerationConfig()
    try:
        yield model
    finally:
        model.generation_config = saved


@dataclass
class Completions:
    """A batch of sampled completions; rows are prompt-major (the samples of prompt i are contiguous)."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T] right-padded with pad tokens after the stop token
    completion_mask: torch.Tensor  # [N, T] 1 up to and including the first stop token
    texts: list[str]  # decoded completions, special tokens removed, stripped


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    num_samples: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    chat: bool = True,
    max_prompt_length: int | None = None,
    system_prompt: str | None = None,
) -> Completions:
    """Sample `num_samples` completions per prompt in one batched `generate` call with the KV cache."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, chat, max_prompt_length, system_prompt, device)
    stop_ids = stop_token_ids(tokenizer, model)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        num_return_sequences=num_samples,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        **({} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": top_k}),
    )
    was_training = model.training
    model.eval()
    with only_given_generation_options(model):
        sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    model.train(was_training)
    completion_ids = sequences[:, prompt_ids.shape[1] :]  # [N*G, T]
    mask = completion_mask(completion_ids, stop_ids)
    texts = tokenizer.batch_decode(
        completion_ids * mask + tokenizer.pad_token_id * (1 - mask), skip_special_tokens=True
    )
    return Completions(
        prompt_ids=prompt_ids.repeat_interleave(num_samples, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(num_samples, dim=0),
        completion_ids=completion_ids,
        completion_mask=mask,
        texts=[t.strip() for t in texts],
    )
