"""Tests of the real-model machinery in shared/: mixed precision with fp32 master weights, memory-bounded
log-probs, chunked generation, refusing a checkpoint without the head a script needs, and the real-format fixtures
(a byte-level BPE with Qwen2.5's chat template, real-architecture configs)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from shared.lm import (
    build_tiny_lm,
    completion_logprobs,
    completion_mask,
    encode_prompts,
    load_causal_lm,
    load_policy,
    sample,
    selective_log_softmax,
    token_entropy,
    trained_parameters,
)
from shared.precision import setup_precision
from shared.real_shapes import REAL_SHAPES, build_bpe_tokenizer, real_shape_config, save_real_shape_model


# --- log-probs without full-vocabulary fp32 copies ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_selective_log_softmax_equals_the_plain_formula_with_gradients(dtype, temperature):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 70, 501)).to(dtype).requires_grad_(True)  # 210 rows: chunks of 64 + a remainder
    index = torch.randint(501, (3, 70))
    plain = (logits.float() / temperature).log_softmax(-1).gather(-1, index[..., None])[..., 0]
    ours = selective_log_softmax(logits, index, temperature, chunk_rows=64)
    assert ours.dtype == torch.float32 and ours.shape == (3, 70)
    assert torch.allclose(ours, plain, atol=1e-5)
    weights = torch.randn(3, 70)
    (plain_grad,) = torch.autograd.grad((plain * weights).sum(), logits)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    assert ours_grad.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # the gradient is rounded to the logits' dtype
    assert torch.allclose(ours_grad.float(), plain_grad.float(), atol=tolerance, rtol=tolerance)


def test_selective_log_softmax_chunk_size_does_not_matter():
    torch.manual_seed(1)
    logits = torch.randn(5, 9, 33, requires_grad=True)
    index = torch.randint(33, (5, 9))
    whole = selective_log_softmax(logits, index, chunk_rows=10**6)
    (whole_grad,) = torch.autograd.grad(whole.sum(), logits)
    for chunk_rows in (1, 7, 45):
        part = selective_log_softmax(logits, index, chunk_rows=chunk_rows)
        (part_grad,) = torch.autograd.grad(part.sum(), logits)
        assert torch.allclose(part, whole, atol=1e-6) and torch.allclose(part_grad, whole_grad, atol=1e-7)


def test_token_entropy_matches_the_definition_and_its_limits():
    torch.manual_seed(2)
    logits = torch.randn(4, 6, 50).to(torch.bfloat16)
    probs = (logits.float() / 0.8).softmax(-1)
    assert torch.allclose(token_entropy(logits, 0.8), -(probs * probs.log()).sum(-1), atol=1e-5)
    assert torch.allclose(token_entropy(torch.zeros(2, 50)), torch.full((2,), torch.log(torch.tensor(50.0))))
    peaked = torch.zeros(1, 50)
    peaked[0, 3] = 1e4
    assert token_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)


MEMORY_PROBE = textwrap.dedent(
    """
    import sys

    import torch
    from shared.lm import selective_log_softmax
    torch.set_num_threads(1)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    logits = torch.randn(2048, 32768).to(torch.bfloat16).requires_grad_(True)  # 128 MiB of bf16 logits
    index = torch.randint(32768, (2048,))
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS
    start = status("VmRSS")
    if sys.argv[1] == "chunked":
        logps = selective_log_softmax(logits, index)
    else:
        logps = logits.float().log_softmax(-1).gather(-1, index[:, None])[:, 0]
    logps.sum().backward()
    print((status("VmHWM") - start) / (logits.numel() * logits.element_size()))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_selective_log_softmax_peak_memory_is_the_gradient_not_fp32_copies():
    """Forward + backward in a process of its own: the chunked version's extra peak is about the bf16 gradient the
    caller gets (1x the logits); the plain formula's is its fp32 copies (about 6x)."""

    def peak(kind):
        code = MEMORY_PROBE
        out = subprocess.run([sys.executable, "-c", code, kind], capture_output=True, text=True, check=True).stdout
        return float(out.strip().splitlines()[-1])

    chunked, plain = peak("chunked"), peak("plain")
    assert chunked < 3.0, chunked  # measured 1.6-2.2: the gradient plus allocator slack
    assert plain > 4.5, plain  # measured 6.0: the probe sees the copies the chunked version avoids


def test_completion_logprobs_match_generate_scores():
    """logits / T on the completion tokens, position ids from the mask, equal generate's own scores."""
    from transformers import GenerationConfig

    model, tokenizer = build_tiny_lm(seed=3)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["copy : a b", "sort : c a b d e f g"])  # left-padded
    config = GenerationConfig(
        do_sample=True, temperature=0.7, top_k=0, max_new_tokens=6, pad_token_id=0, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(0)
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        generation_config=config,
        output_scores=True,
        return_dict_in_generate=True,
    )
    completion_ids = out.sequences[:, prompt_ids.size(1) :]
    mask = completion_mask(completion_ids, [tokenizer.eos_token_id])
    expected = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, completion_ids[..., None])[..., 0]
    logps, entropy = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, 0.7, with_entropy=True)
    assert torch.allclose(logps[mask.bool()], expected[mask.bool()], atol=1e-5)
    assert (entropy >= 0).all()
    assert completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, 0.7)[1] is None


# --- chunked generation ---------------------------------------------------------------------------------------------
def test_chunked_greedy_generation_equals_one_call():
    model, tokenizer = build_tiny_lm(seed=4)
    prompts = ["copy : a b", "sort : c a b d e f g", "reverse : a", "dedup : a a b b c"]
    whole = sample(model, tokenizer, prompts * 2, max_new_tokens=8, greedy=True)
    chunked = sample(model, tokenizer, prompts * 2, max_new_tokens=8, greedy=True, batch_size=3)
    assert chunked.texts == whole.texts
    assert chunked.completion_ids.shape[0] == chunked.prompt_ids.shape[0] == 8
    # the same prompt tokens, each row's own: left padding may differ, the unpadded prompt does not
    for row in range(8):
        ours = chunked.prompt_ids[row][chunked.prompt_mask[row].bool()]
        assert torch.equal(ours, whole.prompt_ids[row][whole.prompt_mask[row].bool()])
    lengths = chunked.completion_mask.sum(1)
    assert torch.equal(lengths, whole.completion_mask.sum(1))


@pytest.mark.parametrize("tokenizer_kind", ["tiny", "bpe"])
def test_shared_prompt_prefill_samples_what_plain_generate_samples(tokenizer_kind, tmp_path):
    """`sample` prefills each prompt once for its G samples; under one seed it draws the very tokens that
    `generate(num_return_sequences=G)` draws, with left-padded prompts of different lengths, and the log-probs of
    the sampled tokens equal a plain forward's."""
    from transformers import GenerationConfig

    from shared.lm import stop_token_ids

    if tokenizer_kind == "tiny":
        model, tokenizer = build_tiny_lm(seed=5)
        prompts = ["copy : a b", "sort : c a b d e f g", "reverse : a"]
    else:
        tokenizer = build_bpe_tokenizer()
        folder = save_real_shape_model(tmp_path / "m", "test", tokenizer, seed=2, num_hidden_layers=2, vocab_size=640)
        model, tokenizer = load_causal_lm(str(folder))
        prompts = ["Reverse the words: one two three.", "Hi", "Sort these: b, a, c, e, d."]
    model.eval()
    num_samples, max_new_tokens = 4, 8
    stop_ids = stop_token_ids(tokenizer, model)
    torch.manual_seed(0)
    ours = sample(model, tokenizer, prompts, num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=0.8)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    config = GenerationConfig(
        do_sample=True,
        temperature=0.8,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_samples,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.no_grad():
        plain = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    plain_completions = plain[:, prompt_ids.shape[1] :]
    plain_mask = completion_mask(plain_completions, stop_ids)
    width = plain_completions.shape[1]
    assert torch.equal(ours.completion_mask[:, :width], plain_mask)
    assert torch.equal(ours.completion_ids[:, :width] * plain_mask, plain_completions * plain_mask)
    with torch.no_grad():
        logps, _ = completion_logprobs(
            model, ours.prompt_ids, ours.prompt_mask, ours.completion_ids, ours.completion_mask, 0.8
        )
        sequences = torch.cat([ours.prompt_ids, ours.completion_ids], 1)
        attention = torch.cat([ours.prompt_mask, ours.completion_mask], 1)
        positions = (attention.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=sequences, attention_mask=attention, position_ids=positions).logits
        predicting = logits[:, ours.prompt_ids.shape[1] - 1 : -1] / 0.8
        reference = predicting.log_softmax(-1).gather(-1, ours.completion_ids[..., None])[..., 0]
    valid = ours.completion_mask.bool()
    assert torch.allclose(logps[valid], reference[valid], atol=1e-5)


# --- precision ------------------------------------------------------------------------------------------------------
def test_precision_choices_on_the_cpu():
    fp32 = setup_precision("auto", cuda=False)
    assert (fp32.compute_dtype, fp32.trained_dtype, fp32.frozen_dtype, fp32.mixed) == (torch.float32,) * 3 + (False,)
    bf16 = setup_precision("bf16", cuda=False)
    assert (bf16.compute_dtype, bf16.trained_dtype, bf16.frozen_dtype) == (
        torch.bfloat16,
        torch.float32,
        torch.bfloat16,
    )
    layer = torch.nn.Linear(8, 8)
    with bf16.autocast():
        out = layer(torch.randn(2, 8))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32  # bf16 arithmetic, fp32 weights
    optimizer = bf16.prepare_optimizer(torch.optim.AdamW(layer.parameters()))
    assert len(bf16.accelerator._optimizers) == 1  # accelerate holds on to it (and so to its state) ...
    bf16.release()
    assert not bf16.accelerator._optimizers  # ... until the training that used it ends
    del optimizer
    with pytest.raises(SystemExit, match="fp16 needs a GPU"):
        setup_precision("fp16", cuda=False)
    with pytest.raises(SystemExit, match="--dtype"):
        setup_precision("fp8", cuda=False)


def test_pure_low_precision_training_warns(capsys):
    pure = setup_precision("bf16", cuda=False, fp32_master=False)
    assert pure.trained_dtype == torch.bfloat16 and not pure.mixed
    assert "without fp32 master weights" in capsys.readouterr().out


def test_fp32_master_weights_move_where_bf16_weights_do_not():
    """Through the run's own precision set-up: three AdamW steps at lr 1e-6 under bf16 autocast move nearly every
    fp32 master weight, while weights trained in bf16 itself (--no-fp32-master) mostly round back to the start."""
    torch.manual_seed(5)
    start = torch.randn(256, 256) * 0.05
    inputs = torch.randn(32, 256)
    moved = {}
    for fp32_master in (True, False):
        precision = setup_precision("bf16", cuda=False, fp32_master=fp32_master)
        layer = torch.nn.Linear(256, 256, bias=False)
        layer.weight.data = start.to(precision.trained_dtype, copy=True)
        optimizer = precision.prepare_optimizer(torch.optim.AdamW(layer.parameters(), lr=1e-6, weight_decay=0.0))
        for _ in range(3):
            with precision.autocast():
                loss = layer(inputs.to(precision.trained_dtype)).float().pow(2).mean()
            precision.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        precision.release()
        start_in_dtype = start.to(precision.trained_dtype)
        moved[fp32_master] = (layer.weight.detach() != start_in_dtype).float().mean().item()
    assert moved[True] > 0.99
    assert moved[False] < 0.2


def test_load_policy_lora_and_gradient_checkpointing(tmp_path):
    model, tokenizer = build_tiny_lm(seed=6)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    precision = setup_precision("bf16", cuda=False)
    full, _ = load_policy(str(tmp_path / "m"), precision)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in full.parameters())
    lora, _ = load_policy(str(tmp_path / "m"), precision, lora_r=4, lora_alpha=8, gradient_checkpointing=True)
    trained = trained_parameters(lora)
    assert trained and all("lora_" in name for name, p in lora.named_parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in trained)  # fp32 adapters ...
    frozen = [p for name, p in lora.named_parameters() if "lora_" not in name and p.dim() == 2]
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in frozen)  # ... over a frozen bf16 base
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["copy : a b", "sort : b a"])
    completion_ids = torch.tensor([[20, 21, 4], [22, 4, 0]])
    with precision.autocast():
        logps, _ = completion_logprobs(lora, prompt_ids, prompt_mask, completion_ids, torch.ones_like(completion_ids))
    logps.sum().backward()
    lora_b = [p for name, p in lora.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)  # B starts at 0, A gets 0
    assert all(p.grad is None for p in frozen)


# --- heads ----------------------------------------------------------------------------------------------------------
def test_a_causal_lm_folder_loaded_as_a_reward_model_fails_with_the_missing_head(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, tokenizer = build_tiny_lm(seed=7)
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    with pytest.raises(SystemExit, match=r"has no weights for score\.weight.*reward model"):
        load_causal_lm(str(tmp_path / "lm"), model_class=AutoModelForSequenceClassification, num_labels=1)
    # a script that fits a new head says so, and gets one
    rm, _ = load_causal_lm(
        str(tmp_path / "lm"), model_class=AutoModelForSequenceClassification, num_labels=1, new_head=True
    )
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    reloaded, _ = load_causal_lm(str(tmp_path / "rm"), model_class=AutoModelForSequenceClassification, num_labels=1)
    assert torch.equal(reloaded.score.weight, rm.score.weight)  # a reward model with its head loads as it is


# --- real formats ---------------------------------------------------------------------------------------------------
def test_bpe_tokenizer_is_byte_level_with_qwen_chat_template(tmp_path):
    from shared.lm import load_tokenizer, stop_token_ids

    tokenizer = build_bpe_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "sort : c a b"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nsort : c a b<|im_end|>\n<|im_start|>assistant\n"
    )
    for sample_text in ["\\boxed{\\frac{14}{3}}", "naïve café ✓", "  two  spaces\n\nand newlines"]:
        assert tokenizer.decode(tokenizer(sample_text)["input_ids"]) == sample_text  # byte-level: lossless
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") in stop_token_ids(tokenizer)


def test_real_vocabulary_tokenizer_decodes_every_id():
    tokenizer = build_bpe_tokenizer(vocab_size=151_643)
    assert len(tokenizer) == 151_646  # Qwen2.5's 151,643 ordinary tokens + <|endoftext|>, <|im_start|>, <|im_end|>
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 151_643
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151_645
    assert all(tokenizer.decode([i]) for i in (1000, 50_000, 151_642))


def test_real_shape_configs_are_the_hub_shapes(tmp_path):
    tokenizer = build_bpe_tokenizer()
    qwen = real_shape_config("qwen2.5-0.5b", tokenizer)
    assert (qwen.hidden_size, qwen.num_hidden_layers, qwen.vocab_size, qwen.num_key_value_heads) == (896, 24, 151936, 2)
    llama = real_shape_config("llama-3.2-1b", tokenizer)
    assert (llama.hidden_size, llama.num_hidden_layers, llama.vocab_size, llama.head_dim) == (2048, 16, 128256, 64)
    with pytest.raises(SystemExit, match="shape"):
        real_shape_config("gpt-5", tokenizer)
    folder = save_real_shape_model(tmp_path / "m", "test", tokenizer, seed=1, num_hidden_layers=2)
    model, loaded_tokenizer = load_causal_lm(str(folder))
    assert model.config.vocab_size == REAL_SHAPES["test"]["vocab_size"] and model.config.num_hidden_layers == 2
    out = sample(model, loaded_tokenizer, ["sort : c a b"], num_samples=3, max_new_tokens=5)
    assert out.completion_ids.shape[0] == 3 and len(out.texts) == 3


# --- the real-shape benchmark ---------------------------------------------------------------------------------------
def test_real_shape_benchmark_on_the_tiniest_config(capsys):
    """benchmarks/real_shape.py end to end on the `test` shape (the real 151,936 vocabulary, a 1-layer body):
    BLEUBERI's real path from saved folders, in processes of their own, is bounded and bf16 moves like fp32."""
    import re

    from benchmarks import real_shape

    args = real_shape.Args(
        shape="test", batch_size=8, micro_batch_size=4, generation_batch_size=8, completion_length=16, num_threads=1
    )
    lines = real_shape.main(args)
    line = re.compile(
        r"^bleuberi: (\d+\.\d+) s/step, peak RSS B (\d+\.\d+) GB, 4B (\d+\.\d+) GB \(ratio (\d+\.\d+)\), "
        r"bf16/fp32 update ratio (\d+\.\d+): bounded$"
    )
    match = line.match(lines[0])
    assert match, lines[0]
    seconds, peak_b, peak_4b, memory_ratio, update_ratio = map(float, match.groups())
    assert seconds > 0 and peak_b > 0.1 and peak_4b > 0.1
    assert memory_ratio == pytest.approx(peak_4b / peak_b, abs=0.02) and memory_ratio <= 1.25
    assert 0.7 <= update_ratio <= 1.4
    assert lines[-1] == "real shape: 1/1 scripts bounded"
    with pytest.raises(SystemExit, match="no real-shape line"):
        real_shape.main(real_shape.Args(shape="test", scripts=("nonexistent",)))
