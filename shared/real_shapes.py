"""Real formats, offline: a byte-level BPE tokenizer with a Qwen2.5-style chat template, and real-architecture
models with random weights, saved as folders that `--model-name PATH` loads like a downloaded checkpoint.

The tiny world's word-level tokenizer hides what real tokenizers do (merges across spaces, newlines in the chat
template, end-of-text versus end-of-turn tokens), and its 171-token vocabulary hides what a 151,936-row LM head
costs. These fixtures bring both back without a download:

    tokenizer = build_bpe_tokenizer()                           # trained in-process in about a second
    tokenizer = build_bpe_tokenizer(vocab_size=151_643)         # the same, filled to Qwen2.5's vocabulary size
    folder = save_real_shape_model(tmp / "qwen", "qwen2.5-0.5b", tokenizer)          # full shape, random weights
    folder = save_real_shape_model(tmp / "narrow", "qwen2.5-0.5b", tokenizer, hidden_size=256, num_hidden_layers=4)

Shapes: `qwen2.5-0.5b` and `llama-3.2-1b` as their hub configs give them; `vocab` (Qwen2 with the real 151,936
vocabulary, hidden 256, 4 layers: the LM head dominates, as it does for small real models); `test` (the real
vocabulary on a 1-layer, 64-wide body: the tiniest model whose logits are real-sized).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from shared.runs import fail

# The Qwen2.5 instruct template without tool calls: ChatML with a newline after the role and after each turn, and
# the default system turn when the conversation has none.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
BPE_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

QWEN25_05B = dict(  # Qwen/Qwen2.5-0.5B-Instruct config.json
    model_type="qwen2",
    vocab_size=151_936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
)
LLAMA32_1B = dict(  # meta-llama/Llama-3.2-1B-Instruct config.json
    model_type="llama",
    vocab_size=128_256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500_000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    tie_word_embeddings=True,
)
REAL_SHAPES = {
    "qwen2.5-0.5b": QWEN25_05B,
    "llama-3.2-1b": LLAMA32_1B,
    # Qwen2.5's vocabulary on a small body: the LM head dominates, as it does for small real models
    "vocab": {
        **QWEN25_05B,
        **dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
        "max_position_embeddings": 4096,
    },
    # the tiniest model whose logits are real-sized
    "test": {
        **QWEN25_05B,
        **dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
        ),
        "max_position_embeddings": 4096,
    },
}


def training_text() -> list[str]:
    """Text to train the BPE on: the tiny world's prompts and answers, chat-template pieces and plain English."""
    from shared.tasks import get_task

    lines = []
    for task_name in ("string_ops", "chain_addition", "preferences"):
        data = get_task(task_name).dataset(300, seed=0)
        for column in ("prompt", "reference", "chosen", "rejected"):
            if column in data.column_names:
                lines += data[column]
    lines += [
        "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "user\nWhat is the answer? Please reason step by step, and put your final answer within \\boxed{}.",
        "assistant\nThe answer is \\boxed{\\frac{14}{3}}. <answer> 42 </answer> <think> first, then </think>",
        "The quick brown fox jumps over the lazy dog. A reference answer is a good answer to an instruction.",
        "Write a short poem about the sea, then explain the meaning of each line in plain words.",
    ] * 20
    return lines


def build_bpe_tokenizer(vocab_size: int | None = None, merges_vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in-process with `tokenizers` (Qwen2.5's special tokens and chat template).

    With `vocab_size`, the vocabulary is filled up to that many ordinary tokens (word starts and word pieces that no
    merge produces, as a real vocabulary's rare tokens are), so that every id a model with a real-sized LM head
    samples decodes to text, in words of varying length."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=merges_vocab_size,
        special_tokens=BPE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(training_text(), trainer)
    if vocab_size is not None:
        trained = json.loads(backend.to_str())["model"]  # the learned vocabulary and merges
        vocab = {token: i for token, i in sorted(trained["vocab"].items(), key=lambda item: item[1])}
        vocab = {token: i for i, token in enumerate(t for t in vocab if t not in BPE_SPECIAL_TOKENS)}
        merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in trained["merges"]]
        letters = "abcdefghijklmnopqrstuvwxyz"
        filler = 0
        while len(vocab) < vocab_size:
            word, n = "", filler
            while True:  # base-26 spelling of the filler index: 'Ġa', 'Ġb', ..., 'Ġba', ...
                word = letters[n % 26] + word
                n //= 26
                if n == 0:
                    break
            # word starts (' zz<word>', 'Ġ' being the byte-level space) and word pieces ('zz<word>')
            token = ("Ġzz" if filler % 2 == 0 else "zz") + word
            filler += 1
            if token not in vocab:
                vocab[token] = len(vocab)
        model = models.BPE(vocab=vocab, merges=merges)
        backend = Tokenizer(model)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens(BPE_SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        truncation_side="left",
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    return tokenizer


def real_shape_config(shape: str, tokenizer, **overrides):
    """The config of a real-architecture shape (see REAL_SHAPES), with the tokenizer's special ids and overrides
    (e.g. `hidden_size=256, num_hidden_layers=4` to narrow the body and keep the real vocabulary)."""
    if shape not in REAL_SHAPES:
        fail(f"shape {shape!r} is not one of {', '.join(REAL_SHAPES)}")
    settings = {**REAL_SHAPES[shape], **overrides}
    if settings["vocab_size"] < len(tokenizer):
        fail(f"vocab_size {settings['vocab_size']} is smaller than the tokenizer's {len(tokenizer)} tokens")
    model_type = settings.pop("model_type")
    return AutoConfig.for_model(
        model_type,
        **settings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def save_real_shape_model(folder, shape: str, tokenizer=None, seed: int = 0, **overrides) -> Path:
    """A real-architecture causal LM with random weights (and its tokenizer) saved by `save_pretrained`."""
    folder = Path(folder)
    tokenizer = tokenizer or build_bpe_tokenizer()
    config = real_shape_config(shape, tokenizer, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
