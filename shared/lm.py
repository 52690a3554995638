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
    check_model_name(name_or_path, needs="tokenizer")
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


HUB_TIMEOUT_SECONDS = 10.0  # every network step of the hub check is bounded by this
MODEL_FILES = "config.json, the weights (model.safetensors, pytorch_model.bin or their shards) and the tokenizer files"


def hub_reachable(timeout: float = HUB_TIMEOUT_SECONDS) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (False at once when offline or without DNS)."""
    from huggingface_hub import constants

    if offline():
        return False
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_hub_id(name: str) -> None:
    """Fail within ~10 s when a hub id is neither in the local cache nor on a reachable hub (no retry back-off): a
    TCP check, then one metadata request with a timeout (a hub that accepts connections and never answers would
    otherwise hang `from_pretrained`)."""
    from huggingface_hub import HfApi

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
            HfApi().model_info(name, timeout=HUB_TIMEOUT_SECONDS)
            return
        except Exception as error:  # no network, a hub that does not answer, or an id the hub does not have
            reason = f"not in the local cache and not loadable from the hub ({type(error).__name__}: {error})"
    fail(
        f"cannot load {name!r}: it is not a local folder, and is {reason}. Pass a folder written by "
        "save_pretrained, download the model first where the hub is reachable, or run the script without "
        "--model-name for its offline toy."
    )


def looks_like_a_path(name: str) -> bool:
    """A name a user meant as a folder: it starts with `.`, `/` or `~`, or has more than one `/` (hub ids have one)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def check_model_name(name: str, needs: str = "model") -> None:
    """Fail with a message when `name` is neither a model folder nor a hub id that can be loaded: a folder without
    config.json (or, for `needs="tokenizer"`, without tokenizer files), a path that does not exist, or a hub id
    that is not cached and not reachable."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        has_config = (folder / "config.json").exists()
        has_tokenizer = (folder / "tokenizer_config.json").exists() or (folder / "tokenizer.json").exists()
        if (needs == "model" and not has_config) or (needs == "tokenizer" and not has_tokenizer):
            fail(
                f"{name!r} is a folder but holds no {needs} ({'config.json' if needs == 'model' else 'tokenizer'}"
                f" missing). A model folder, as save_pretrained writes it, holds {MODEL_FILES}."
            )
        return
    if looks_like_a_path(name):
        fail(
            f"{name!r}: no such folder. Pass a hub id or a folder written by save_pretrained (it holds {MODEL_FILES})."
        )
    check_hub_id(name)


def load_causal_lm(
    name_or_path: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    model_class=AutoModelForCausalLM,
    new_head: bool = False,
    **model_kwargs,
):
    """(model, tokenizer) for `tiny`, a local `save_pretrained` folder, or a hub id.

    `model_class` lets a script load a different head through the same path (e.g.
    `AutoModelForSequenceClassification` with `num_labels=1` for a reward model). A checkpoint that lacks weights
    the model needs (a causal LM loaded as a reward model has no `score` head) stops the run with a message, where
    transformers would only warn and initialise them at random; `new_head=True` is for a script that trains a new
    head on purpose (a reward model fitted from a language model)."""
    if name_or_path == "tiny":  # a freshly initialised tiny model, with the head `model_class` gives it
        tokenizer = build_tokenizer()
        config = tiny_config(tokenizer)
        config.update(model_kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_class.from_config(config)
        return model.to(device=device, dtype=dtype), tokenizer
    if name_or_path.startswith("tiny:"):
        fail(
            f"{name_or_path!r}: a tiny-world warm start is built by the script that uses it "
            "(shared.warmstart.warm_start(task) returns its folder); pass that folder, `tiny`, or a model"
        )
    check_model_name(name_or_path)
    tokenizer = load_tokenizer(name_or_path)
    model, loading_info = model_class.from_pretrained(
        name_or_path, dtype=dtype, local_files_only=offline(), output_loading_info=True, **model_kwargs
    )
    missing = sorted(loading_info["missing_keys"])
    if missing and not new_head:
        fail(
            f"{name_or_path!r} has no weights for {', '.join(missing)}: loaded as {model_class.__name__} these would "
            "be random. Pass a checkpoint that has them (for a reward model: one saved with its scalar head), "
            "not a plain language model."
        )
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
def shared_prompt_cache(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_samples: int):
    """The KV cache of every prompt's first P-1 tokens, computed once per prompt and repeated for its G samples.

    `generate` with `num_return_sequences=G` would prefill G copies of each prompt; here the prompt is run once and
    its cache expanded, and `generate` then feeds only the last prompt token. The computation per row is the same,
    so the sampled distribution is unchanged (tests/test_real_path.py checks the samples against the plain call)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    head_ids = prompt_ids[:, :-1]  # [n, P-1]
    head_mask = prompt_mask[:, :-1]  # [n, P-1]
    model(
        input_ids=head_ids,
        attention_mask=head_mask,
        position_ids=position_ids_from_mask(head_mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # only the cache is wanted: no full-vocabulary logits for the prompt
    )
    cache.batch_repeat_interleave(num_samples)  # [n*G, heads, P-1, d] per layer, prompt-major
    return cache


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
    batch_size: int | None = None,
) -> Completions:
    """Sample `num_samples` completions per prompt with the KV cache, in batched `generate` calls of at most
    `batch_size` sequences each (None: one call), so the KV cache is bounded by `batch_size`, not by the batch.
    The G samples of a prompt share one prefill of the prompt (`shared_prompt_cache`)."""
    device = next(model.parameters()).device
    stop_ids = stop_token_ids(tokenizer, model)
    options = dict(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        **({} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": top_k}),
    )
    config = GenerationConfig(num_return_sequences=num_samples, **options)  # generate prefills G copies itself
    one_per_row = GenerationConfig(num_return_sequences=1, **options)  # rows already repeated G times
    prompts_per_call = len(prompts) if batch_size is None else max(1, batch_size // num_samples)
    was_training = model.training
    model.eval()
    prompt_chunks, completion_chunks = [], []
    with only_given_generation_options(model):
        for start in range(0, len(prompts), prompts_per_call):
            chunk = prompts[start : start + prompts_per_call]
            ids, mask = encode_prompts(tokenizer, chunk, chat, max_prompt_length, system_prompt, device)  # [n, P]
            # left padding puts a real token last in every row: the prefix before it is shared by a prompt's samples
            if num_samples > 1 and ids.shape[1] > 1 and bool(mask[:, -1].all()):
                cache = shared_prompt_cache(model, ids, mask, num_samples)
                sequences = model.generate(
                    input_ids=ids.repeat_interleave(num_samples, dim=0),  # [n*G, P]; only the last token is new
                    attention_mask=mask.repeat_interleave(num_samples, dim=0),
                    past_key_values=cache,
                    generation_config=one_per_row,
                )
            else:
                sequences = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            prompt_chunks.append((ids, mask))
            completion_chunks.append(sequences[:, ids.shape[1] :])  # [n*G, T_chunk]
    model.train(was_training)
    # calls differ in prompt width and completion length: left-pad prompts and right-pad completions to the longest
    widest = max(ids.shape[1] for ids, _ in prompt_chunks)
    pad = torch.nn.functional.pad
    prompt_ids = torch.cat(
        [pad(ids, (widest - ids.shape[1], 0), value=tokenizer.pad_token_id) for ids, _ in prompt_chunks]
    )
    prompt_mask = torch.cat([pad(mask, (widest - mask.shape[1], 0), value=0) for _, mask in prompt_chunks])
    longest = max(chunk.shape[1] for chunk in completion_chunks)
    completion_ids = torch.cat(
        [pad(chunk, (0, longest - chunk.shape[1]), value=tokenizer.pad_token_id) for chunk in completion_chunks]
    )  # [N*G, T]
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


# Log-probabilities without full-vocabulary fp32 copies --------------------------------------------------------------
LOGPROB_CHUNK_ELEMENTS = 2**23  # fp32 numbers per chunk (32 MiB): 55 positions at a 151,936-token vocabulary


def chunk_rows_for(vocab_size: int) -> int:
    """Positions per chunk so that one [rows, V] fp32 chunk holds about LOGPROB_CHUNK_ELEMENTS numbers."""
    return max(1, LOGPROB_CHUNK_ELEMENTS // vocab_size)


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log softmax(logits / T)[index] row by row, in fp32, holding one chunk of fp32 rows at a time.

    The plain `logits.float().log_softmax(-1).gather(...)` makes an fp32 copy of all the logits and keeps the
    fp32 log-softmax for backward: two [N, V] fp32 tensors. Here forward keeps only the logits (in their own
    dtype) and one fp32 log-sum-exp per row; backward recomputes softmax chunk by chunk:
        d logp_n / d logit_{n,v} = (1[v = index_n] - softmax(logits_n / T)_v) / T."""

    @staticmethod
    def forward(ctx, logits, index, temperature, chunk_rows):
        logps = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)  # [N]
        log_normalisers = torch.empty_like(logps)  # [N]
        for start in range(0, logits.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            scaled = logits[rows].float() / temperature  # [c, V] the one fp32 chunk
            log_normalisers[rows] = scaled.logsumexp(dim=-1)  # [c]
            logps[rows] = scaled.gather(-1, index[rows, None]).squeeze(-1) - log_normalisers[rows]  # [c]
        ctx.save_for_backward(logits, index, log_normalisers)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        logits, index, log_normalisers = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)  # [N, V] in the logits' dtype
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            probs = torch.exp(logits[rows].float() / ctx.temperature - log_normalisers[rows, None])  # [c, V]
            grad = -probs * grad_logps[rows, None]  # [c, V]
            grad.scatter_add_(-1, index[rows, None], grad_logps[rows, None].float())  # + 1[v = index] * g
            grad_logits[rows] = grad / ctx.temperature
        return grad_logits, None, None, None


def selective_log_softmax(
    logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0, chunk_rows: int | None = None
) -> torch.Tensor:
    """log softmax(logits / temperature) at `index`: [..., V] logits and [...] ids -> [...] fp32 log-probs.

    Equal to `(logits.float() / temperature).log_softmax(-1).gather(-1, index[..., None])[..., 0]` for fp32, bf16
    or fp16 logits, with gradients, but never holds more than `chunk_rows` rows of a full-vocabulary fp32 tensor
    (default: about 32 MiB of them, see `chunk_rows_for`)."""
    vocab_size = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab_size)  # a view when the logits are contiguous
    chunk_rows = chunk_rows or chunk_rows_for(vocab_size)
    logps = _SelectiveLogSoftmax.apply(flat_logits, index.reshape(-1), float(temperature), chunk_rows)
    return logps.view(index.shape)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float = 1.0, chunk_rows: int | None = None) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position ([..., V] -> [...] fp32), one fp32 chunk at a time."""
    flat_logits = logits.reshape(-1, logits.shape[-1])  # [N, V]
    chunk_rows = chunk_rows or chunk_rows_for(logits.shape[-1])
    entropy = torch.empty(flat_logits.shape[0], dtype=torch.float32, device=logits.device)  # [N]
    for start in range(0, flat_logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        log_probs = (flat_logits[rows].float() / temperature).log_softmax(dim=-1)  # [c, V]
        entropy[rows] = -(log_probs.exp() * log_probs).sum(dim=-1)  # [c]
    return entropy.view(logits.shape[:-1])


def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(completion token t | prompt, tokens < t) of every completion token ([B, T], fp32), from
    logits / temperature, and the token entropy ([B, T], no gradient) when `with_entropy`.

    Position ids come from the attention mask, so left-padded prompts see the positions `generate` gave them.
    Only the T positions that predict completion tokens go through the LM head, and the log-softmax is taken in
    fp32 one chunk of positions at a time: memory is set by the batch passed in, so call it per micro-batch."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    prompt_length, completion_length = prompt_ids.shape[1], completion_ids.shape[1]
    # position P-1+t predicts completion token t: keep exactly those T positions
    predicting = torch.arange(prompt_length - 1, prompt_length + completion_length - 1, device=input_ids.device)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=predicting,
        use_cache=False,
    ).logits  # [B, T, V]
    logps = selective_log_softmax(logits, completion_ids, temperature)  # [B, T]
    entropy = token_entropy(logits.detach(), temperature) if with_entropy else None  # [B, T]
    return logps, entropy


# The model that is trained ----------------------------------------------------------------------------------------
def load_policy(
    name_or_path: str,
    precision,
    seed: int = 0,
    lora_r: int = 0,
    lora_alpha: float = 16.0,
    gradient_checkpointing: bool = False,
    **load_kwargs,
):
    """(model, tokenizer) ready to train: fp32 master weights (`precision.trained_dtype`), or with `lora_r` > 0 a
    frozen base in the compute dtype with fp32 LoRA adapters on every linear layer (peft); optionally with
    gradient checkpointing (activations recomputed in backward: less memory, about a third more compute)."""
    base_dtype = precision.frozen_dtype if lora_r > 0 else precision.trained_dtype
    model, tokenizer = load_causal_lm(name_or_path, precision.device, base_dtype, seed, **load_kwargs)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_r > 0:
        from peft import LoraConfig, get_peft_model  # lazy: only behind --lora-r

        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(model, config, autocast_adapter_dtype=True)  # adapters in fp32
    return model.train(), tokenizer


def trained_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates (all of them, or the LoRA adapters)."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]
