"""Tests of the foundation: runs and logging, the tiny LM world, tasks, warm start and data loading."""

import json
import time
from pathlib import Path

import pytest
import torch

from shared.data import load_data
from shared.lm import (
    build_tiny_lm,
    build_tokenizer,
    completion_mask,
    encode_prompts,
    load_causal_lm,
    position_ids_from_mask,
    sample,
)
from shared.runs import RunLogger, format_table, make_run_name, seed_everything
from shared.tasks import ChainAddition, Preferences, StringOps, in_split
from shared.warmstart import sft_batch, sft_loss, warm_start

ROOT = Path(__file__).resolve().parents[1]


# --- tokenizer and model --------------------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_chat_template(tmp_path):
    tokenizer = build_tokenizer()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "reverse : a b c"}], tokenize=False, add_generation_prompt=True
    )
    assert text.split() == [
        "<|im_start|>",
        "user",
        "reverse",
        ":",
        "a",
        "b",
        "c",
        "<|im_end|>",
        "<|im_start|>",
        "assistant",
    ]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user reverse : a b c assistant"
    tokenizer.save_pretrained(tmp_path)
    _, loaded = load_causal_lm(str(_saved_tiny(tmp_path)))
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.padding_side == "left" and loaded.eos_token == "<|im_end|>" and loaded.pad_token == "<pad>"
    # the word-level decoder survives the round trip (AutoTokenizer alone would swap in a byte-level one)
    assert loaded.decode(ids, skip_special_tokens=True) == "user reverse : a b c assistant"
    assert loaded.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False
    ) == tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)


def _saved_tiny(folder, arch="qwen2"):
    model, tokenizer = build_tiny_lm(seed=3, arch=arch)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_model_save_load_identical_logits(tmp_path, arch):
    model, tokenizer = build_tiny_lm(seed=3, arch=arch)
    _saved_tiny(tmp_path, arch)
    loaded, _ = load_causal_lm(str(tmp_path))
    assert type(loaded).__name__ == type(model).__name__
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 1_000_000


def test_tiny_seed_fixes_weights():
    a, _ = build_tiny_lm(seed=1)
    b, _ = build_tiny_lm(seed=1)
    c, _ = build_tiny_lm(seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_unknown_model_id_fails_fast_with_message():
    start = time.time()
    with pytest.raises(SystemExit, match="cannot load 'nobody/no-such-model'.*save_pretrained"):
        load_causal_lm("nobody/no-such-model")
    assert time.time() - start < 10


def test_sequence_classification_head_through_the_same_loader(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = str(_saved_tiny(tmp_path))
    model, _ = load_causal_lm(folder, model_class=AutoModelForSequenceClassification, num_labels=1, new_head=True)
    assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 1)


# --- masks, positions, sampling -------------------------------------------------------------------------------------
def test_completion_mask_keeps_first_eos_and_zeroes_after():
    eos = 4
    ids = torch.tensor([[7, 8, eos, 0, 0], [7, eos, 9, eos, 1], [7, 8, 9, 10, 11], [eos, 0, 0, 0, 0]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(completion_mask(ids, [eos]), expected)
    # several stop ids (end-of-turn and end-of-text): the first of either ends the completion
    assert torch.equal(completion_mask(torch.tensor([[7, 3, 4, 8]]), [4, 3]), torch.tensor([[1, 1, 0, 0]]))


def test_left_padding_is_invisible_with_mask_positions():
    # Rotary models are shift-invariant, so this checks the mask more than the positions; the positions
    # themselves are checked by value below (they matter for absolute-position models).
    model, tokenizer = build_tiny_lm(seed=0)
    ids, mask = encode_prompts(tokenizer, ["copy : a", "reverse : a b c d e f"])
    assert mask[0, 0] == 0 and mask[1].all()  # left padded
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    alone_ids, _ = encode_prompts(tokenizer, ["copy : a"])
    alone = model(input_ids=alone_ids).logits
    assert torch.allclose(logits[0, -1], alone[0, -1], atol=1e-5)
    assert torch.equal(position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])), torch.tensor([[0, 0, 0, 1, 2]]))


def test_sample_shapes_groups_and_greedy_determinism():
    model, tokenizer = build_tiny_lm(seed=0)
    prompts = ["copy : a b", "sort : c b a"]
    out = sample(model, tokenizer, prompts, num_samples=3, max_new_tokens=6, temperature=1.0)
    assert out.completion_ids.shape[0] == 6 and out.completion_ids.shape[1] <= 6
    assert out.completion_mask.shape == out.completion_ids.shape and len(out.texts) == 6
    single, _ = encode_prompts(tokenizer, prompts)
    assert torch.equal(out.prompt_ids[:3], single[0:1].expand(3, -1))  # prompt-major: contiguous groups
    g1 = sample(model, tokenizer, prompts, max_new_tokens=6, greedy=True)
    g2 = sample(model, tokenizer, prompts, max_new_tokens=6, greedy=True)
    assert torch.equal(g1.completion_ids, g2.completion_ids) and g1.texts == g2.texts
    # the mask agrees with the stop token in the ids
    eos = tokenizer.eos_token_id
    for row, mask in zip(out.completion_ids, out.completion_mask):
        stops = (row == eos).nonzero()
        expected = int(stops[0]) + 1 if len(stops) else len(row)
        assert int(mask.sum()) == expected


# --- tasks ------------------------------------------------------------------------------------------------------------
def test_chain_addition_scorer_and_steps():
    task = ChainAddition()
    prompt = "add 3 + 4 + 5"
    assert task.score(prompt, "3 + 4 = 7 ; 7 + 5 = 12 ; # 12") == 1.0
    assert task.score(prompt, "3 + 4 = 7 ; 7 + 5 = 13 ; # 13") == 0.0
    assert task.score(prompt, "3 + 4 = 7 ; 7 + 5 = 12 ;") == 0.0  # no answer
    assert task.step_correctness(prompt, "3 + 4 = 7 ; 7 + 5 = 12 ; # 12") == [True, True]
    assert task.step_correctness(prompt, "3 + 4 = 8 ; 8 + 5 = 13 ; # 13") == [False, False]
    assert task.step_correctness(prompt, "3 + 4 = 7 ; 7 + 6 = 13 ; # 13") == [True, False]
    assert ChainAddition.parse_answer("x # 5 # 12") == 12 and ChainAddition.parse_answer("# x") is None
    row = task.dataset(1, seed=0)[0]
    assert task.score(row["prompt"], row["reference"]) == 1.0 and row["answer"] == str(sum(task.terms(row["prompt"])))


def test_string_ops_scorer():
    task = StringOps(ops=("copy", "reverse", "sort", "dedup", "rotate", "rotate2"))
    cases = {
        "copy": "c a b a",
        "reverse": "a b a c",
        "sort": "a a b c",
        "dedup": "c a b",
        "rotate": "a b a c",
        "rotate2": "b a c a",
    }
    for op, answer in cases.items():
        assert task.score(f"{op} : c a b a", answer) == 1.0, op
        assert task.score(f"{op} : c a b a", answer + " a") == 0.0, op
    data = task.dataset(50, seed=1)
    assert all(task.score(r["prompt"], r["reference"]) == 1.0 for r in data)
    with pytest.raises(SystemExit, match="unknown string ops"):
        StringOps(ops=("shuffle",))


def test_preferences_hidden_reward_and_exact_noise():
    task = Preferences()
    weights = task.weights()
    assert sorted(weights["t0"].values()) == [-1, -1, 0, 0, 0, 0, 1, 1]
    best = " ".join(w for w, v in weights["t0"].items() if v == 1)
    assert task.score("topic t0", best + " " + best) == 4.0
    clean = task.dataset(200, seed=0)
    assert all(r["chosen_score"] > r["rejected_score"] for r in clean)
    assert all(task.score(r["prompt"], r["chosen"]) == r["chosen_score"] for r in clean)
    noisy = task.dataset(200, seed=0, noise_rate=0.3)
    assert sum(noisy["flipped"]) == 60
    assert all((r["chosen_score"] < r["rejected_score"]) == r["flipped"] for r in noisy)
    with pytest.raises(SystemExit, match="noise_rate"):
        task.dataset(10, noise_rate=1.5)


def test_splits_are_disjoint_and_seeded():
    task = StringOps(min_len=2, max_len=3)
    train, test = task.dataset(300, seed=0)["prompt"], task.dataset(300, seed=0, split="test")["prompt"]
    assert not set(train) & set(test)
    assert all(in_split(p, "test") for p in test)
    assert task.dataset(20, seed=5)["prompt"] == task.dataset(20, seed=5)["prompt"]


def test_every_task_text_is_in_vocabulary():
    tokenizer = build_tokenizer()
    texts = []
    from shared.tasks import SortDigits

    datasets = (
        ChainAddition().dataset(100),
        StringOps(ops=("copy", "rotate2")).dataset(100),
        Preferences().dataset(100),
        SortDigits(corrupt_rate=0.5).dataset(100),
    )
    for data in datasets:
        for row in data:
            texts += [v for v in row.values() if isinstance(v, str)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)


# --- warm start -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def warm_folder(tmp_path_factory):
    return warm_start("chain_addition", seed=0, steps=300, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def test_warm_start_beats_chance_and_hits_cache(warm_folder):
    info = json.loads((warm_folder / "warm_start.json").read_text())
    assert info["test_exact_match"] > 0.15  # chance: guessing the sum of 3-5 digits is right < 0.1 of the time
    start = time.time()
    assert warm_start("chain_addition", seed=0, steps=300, cache_dir=warm_folder.parent, verbose=False) == warm_folder
    assert time.time() - start < 2
    model, tokenizer = load_causal_lm(str(warm_folder))  # the folder works as --model-name
    out = sample(model, tokenizer, ["add 1 + 2 + 3"], max_new_tokens=20, greedy=True)
    assert "#" in out.texts[0]


def test_sft_loss_masks_prompt_and_padding():
    model, tokenizer = build_tiny_lm(seed=0)
    input_ids, attention_mask, position_ids, labels = sft_batch(tokenizer, ["copy : a", "copy : a b c"], ["a", "a b c"])
    assert (labels[0] != -100).sum() == 2 and (labels[1] != -100).sum() == 4  # target + end-of-turn
    loss = sft_loss(model, input_ids, attention_mask, position_ids, labels)
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(float(len(tokenizer)))).item()) < 1.0


# --- runs -------------------------------------------------------------------------------------------------------------
def _tiny_job(seed: int, name: str):
    seed_everything(seed)
    model, tokenizer = build_tiny_lm(seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run = RunLogger(make_run_name("test", name, seed), {"seed": seed}, print_every=2)
    data = StringOps().dataset(8, seed=seed)
    for step in range(3):
        loss = sft_loss(model, *sft_batch(tokenizer, data["prompt"], data["reference"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log(step, {"losses/loss": loss.item(), "reward": torch.rand(()).item()})
    run.finish(format_table([{"arm": "a", "score": 0.5}]))
    return run.dir


def _metrics(folder):
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in open(folder / "metrics.jsonl")]


def test_seeded_runs_write_identical_metrics_and_full_run_folder():
    first, second = _tiny_job(0, "a"), _tiny_job(0, "b")
    assert _metrics(first) == _metrics(second) and len(_metrics(first)) == 3
    assert _metrics(first) != _metrics(_tiny_job(1, "c"))
    names = {p.name for p in first.iterdir()}
    assert {"args.json", "metrics.jsonl", "summary.md"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert "| arm | score |" in (first / "summary.md").read_text()


def test_nan_loss_stops_with_message():
    run = RunLogger("nan-run", {})
    with pytest.raises(SystemExit, match="losses/loss is nan at step 3"):
        run.log(3, {"losses/loss": float("nan")})


def test_format_table():
    table = format_table([{"arm": "base", "em": 0.5}, {"arm": "method", "em": 0.6123, "bleu": None}])
    lines = table.splitlines()
    assert lines[0].split("|")[1:-1] == [" arm    ", " em    ", " bleu "]
    assert "0.612" in lines[3] and lines[2].rstrip().endswith("|") and " - " in lines[3]


# --- data -------------------------------------------------------------------------------------------------------------
def test_load_data_paths(tmp_path):
    tiny = load_data("tiny:string_ops", required_columns=["prompt", "reference"], num_examples=10)
    assert len(tiny) == 10
    tiny.save_to_disk(str(tmp_path / "saved"))
    assert load_data(str(tmp_path / "saved"), required_columns=["prompt"])["prompt"] == tiny["prompt"]
    tiny.to_json(str(tmp_path / "data.jsonl"))
    assert len(load_data(str(tmp_path / "data.jsonl"), num_examples=4)) == 4
    with pytest.raises(SystemExit, match=r"lacks the column\(s\) \['chosen'\]; it has \['prompt', 'reference', 'op'\]"):
        load_data(str(tmp_path / "saved"), required_columns=["prompt", "chosen"])
    with pytest.raises(SystemExit, match="cannot load dataset 'nobody/nothing'"):
        load_data("nobody/nothing")


def test_sort_digits_graded_score_and_corruption():
    from shared.tasks import SortDigits, levenshtein

    assert levenshtein(list("kitten"), list("sitting")) == 3 and levenshtein([], list("ab")) == 2
    task = SortDigits()
    assert task.score("sort 3 1 2", "1 2 3") == 1.0 and task.exact("sort 3 1 2", "1 2 3") == 1.0
    assert task.score("sort 3 1 2", "1 2") == pytest.approx(1 - 1 / 3)  # one deletion, max length 3
    assert task.score("sort 3 1 2", "1 3 2 2") == pytest.approx(1 - 2 / 4)
    noisy = SortDigits(corrupt_rate=1.0).dataset(50, seed=0)
    assert all(r["reference"] != r["clean"] for r in noisy)
    assert all(task.score(r["prompt"], r["clean"]) == 1.0 for r in noisy)


def test_steps_per_second_printed_and_never_negative_when_steps_restart(capsys):
    run = RunLogger("sps-run", {}, print_every=2)
    for arm in range(2):  # a second arm restarts its step count at 0
        for step in range(4):
            run.log(step, {"reward": float(step)})
    run.close()
    rates = [float(line.split("|")[1].split()[0]) for line in capsys.readouterr().out.splitlines() if "steps/s" in line]
    assert len(rates) == 4 and all(r > 0 for r in rates)


def test_slow_steps_print_progress_between_print_every_calls(capsys, monkeypatch):
    import shared.runs

    run = RunLogger("slow-run", {}, print_every=100)
    run.log(0, {"reward": 0.0})
    assert "steps/s" not in capsys.readouterr().out  # fast steps: only every 100 calls
    monkeypatch.setattr(shared.runs, "PRINT_AT_LEAST_EVERY_SECONDS", 0.0)  # as if each step took longer than that
    run.log(1, {"reward": 1.0})
    run.log(2, {"reward": 2.0})
    run.close()
    assert capsys.readouterr().out.count("steps/s") == 2


def test_rule_categories_is_imbalanced_string_ops():
    from collections import Counter

    from shared.tasks import get_task

    task = get_task("rule_categories")
    counts = Counter(task.dataset(2000, seed=0)["op"])
    assert set(counts) == {"copy", "reverse", "rotate2", "sort"}
    assert counts["copy"] > counts["reverse"] > counts["rotate2"] > counts["sort"] > 100
    assert task.score("rotate2 : a b c d", "c d a b") == 1.0


def test_warm_start_leaves_the_callers_random_stream_alone(tmp_path):
    # a script seeds, then loads its start: a cold cache (training) and a warm one must give the same samples after
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    warm_start("string_ops", seed=0, steps=3, num_eval=2, cache_dir=tmp_path, verbose=False)
    assert torch.equal(torch.rand(3), expected)


def test_sample_ignores_the_models_own_generation_defaults():
    # real checkpoints ship sampling defaults (Qwen: repetition_penalty 1.05, top_k 20); the policy's log-probs
    # assume exactly the distribution sample() was asked for, so those defaults must not leak in
    model, tokenizer = build_tiny_lm(seed=0)
    prompts = ["copy : a b", "sort : c b a"]
    plain = sample(model, tokenizer, prompts, max_new_tokens=12, greedy=True).texts
    model.generation_config.repetition_penalty = 50.0
    assert sample(model, tokenizer, prompts, max_new_tokens=12, greedy=True).texts == plain
    assert model.generation_config.repetition_penalty == 50.0  # the model's own config is left as it was


def test_load_data_shuffles_whole_datasets_on_request(tmp_path):
    rows = load_data("tiny:string_ops", num_examples=50)
    rows.save_to_disk(str(tmp_path / "d"))
    whole = load_data(str(tmp_path / "d"))
    assert whole["prompt"] == rows["prompt"]  # no subset asked for: order kept
    mixed = load_data(str(tmp_path / "d"), shuffle=True, seed=1)
    assert sorted(mixed["prompt"]) == sorted(rows["prompt"]) and mixed["prompt"] != rows["prompt"]
    assert load_data(str(tmp_path / "d"), num_examples=10, seed=1)["prompt"] == mixed["prompt"][:10]


# --- reliability: run folders, stopped runs, folders that are not models, a hub that never answers -------------------
def test_runs_with_one_name_in_one_second_get_folders_of_their_own():
    first = RunLogger("sweep__lr__1__1700000000", {"lr": 1})
    second = RunLogger("sweep__lr__1__1700000000", {"lr": 2})
    assert first.dir != second.dir and second.dir.name == "sweep__lr__1__1700000000-2"
    first.log(0, {"losses/loss": 1.0})
    second.log(0, {"losses/loss": 2.0})
    first.finish("a")
    second.finish("b")
    for run, lr, loss in ((first, 1, 1.0), (second, 2, 2.0)):
        assert json.loads((run.dir / "args.json").read_text()) == {"lr": lr}
        assert [json.loads(line)["losses/loss"] for line in open(run.dir / "metrics.jsonl")] == [loss]


def test_a_run_is_marked_incomplete_until_its_summary_is_written():
    run = RunLogger("marked", {})
    assert (run.dir / "INCOMPLETE").exists()
    run.log(0, {"losses/loss": 1.0})
    run.finish("done")
    assert not (run.dir / "INCOMPLETE").exists() and (run.dir / "summary.md").exists()


def test_fail_before_any_step_leaves_no_folder_and_after_steps_says_where_the_partial_run_is():
    from shared.runs import fail

    early = RunLogger("early", {})
    with pytest.raises(SystemExit, match="bad option$"):
        fail("bad option")
    assert not early.dir.exists()
    late = RunLogger("late", {})
    late.log(0, {"losses/loss": 1.0})
    with pytest.raises(SystemExit, match=f"the partial run, marked INCOMPLETE, is in {late.dir}"):
        fail("a reward model is missing")
    assert (late.dir / "INCOMPLETE").exists() and (late.dir / "metrics.jsonl").exists()


def test_ctrl_c_prints_one_line_with_the_partial_run_and_exits_130(tmp_path):
    import os
    import subprocess
    import sys

    script = (
        "import os, signal, time\n"
        "from shared.runs import RunLogger\n"
        "run = RunLogger('interrupted-run', {})\n"
        "run.log(0, {'losses/loss': 1.0})\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(30)  # the main thread runs on, as a training loop would, until the interrupt arrives\n"
    )
    env = {**os.environ, "REWARDLAB_RUNS": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"interrupted: the partial run, marked INCOMPLETE, is in {tmp_path / 'interrupted-run'}"
    ]
    assert (tmp_path / "interrupted-run" / "INCOMPLETE").exists()


@pytest.mark.parametrize(
    "name, message",
    [
        ("{tmp}/not_a_model", "is a folder but holds no model \\(config.json missing\\).*config.json, the weights"),
        ("./no/such/folder", "no such folder.*config.json, the weights"),
    ],
)
def test_a_folder_that_is_not_a_model_fails_with_what_a_model_folder_holds(name, message, tmp_path):
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "notes.txt").write_text("not a model")
    start = time.time()
    with pytest.raises(SystemExit, match=message):
        load_causal_lm(name.format(tmp=tmp_path))
    assert time.time() - start < 5


def test_the_hint_for_an_unknown_model_names_no_other_scripts_task():
    with pytest.raises(SystemExit) as stopped:
        load_causal_lm("nobody/no-such-model")
    assert "without --model-name for its offline toy" in str(stopped.value)
    assert "tiny:string_ops" not in str(stopped.value)


def test_a_hub_that_accepts_connections_and_never_answers_fails_within_the_timeout(tmp_path):
    """A TCP server that accepts and never replies, as HF_ENDPOINT: the model and the dataset checks both fail
    with a message after the (here shortened) timeout instead of hanging."""
    import os
    import socket
    import subprocess
    import sys

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    script = (
        "import time\n"
        "import shared.lm, shared.data\n"
        "shared.lm.HUB_TIMEOUT_SECONDS = shared.data.HUB_TIMEOUT_SECONDS = 1.0\n"
        "for load in (shared.lm.load_causal_lm, shared.data.load_data):\n"
        "    start = time.time()\n"
        "    try:\n"
        "        load('nobody/silent-model')\n"
        "    except SystemExit as stop:\n"
        "        print(round(time.time() - start, 1), str(stop)[:60])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
        )
    finally:
        server.close()
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    for line in lines:
        seconds, message = line.split(" ", 1)
        assert float(seconds) < 10 and message.startswith("error: cannot load"), line


def test_arms_are_tensorboard_runs_of_their_own_with_the_same_tags_and_progress_fits_a_line(capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunLogger("arms-run", {}, print_every=1, show=("reward", "kl"), total_steps=10)
    metrics = {f"metric/with/a/long/name/{i}": float(i) for i in range(30)}
    for arm in ("grpo", "control"):
        for step in range(2):
            run.log(step, {"reward": 0.5, "kl": 0.01, "losses/loss": 1.0, **metrics}, arm=arm)
    run.finish("done")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 4 and all(len(line) <= 120 for line in lines), lines
    assert lines[-1].startswith("step 1 | control | ") and "ETA" in lines[-1] and "reward=0.5 kl=0.01" in lines[-1]
    rows = [json.loads(line) for line in open(run.dir / "metrics.jsonl")]
    assert [row["arm"] for row in rows] == ["grpo", "grpo", "control", "control"]
    for arm in ("grpo", "control"):
        events = EventAccumulator(str(run.dir / "arms" / arm)).Reload()
        assert {"reward", "kl", "losses/loss"} <= set(events.Tags()["scalars"])


def test_the_tests_cache_their_warm_starts_outside_the_repository_runs_folder():
    import shared.warmstart

    assert ROOT / "runs" not in Path(shared.warmstart.CACHE_DIR).resolve().parents


def test_a_long_phase_prints_a_short_bar_at_each_tenth_in_a_log():
    import io

    from shared.runs import PROGRESS_LINE_WIDTH, Progress

    log = io.StringIO()  # not a terminal: whole lines, one per tenth of the phase
    progress = Progress("pretraining", total=50, stream=log)
    for step in range(50):
        progress.update(loss=1.0 / (step + 1))
    progress.done("final loss 0.02")
    lines = log.getvalue().splitlines()
    assert len(lines) == 11  # ten tenths and the closing line, not 50 lines
    assert lines[0].startswith("pretraining [##") and " 5/50 " in lines[0] and "loss=0.2" in lines[0]
    assert " 50/50 100%" in lines[9]
    assert lines[10].startswith("pretraining: done in ") and lines[10].endswith("(final loss 0.02)")
    assert all(len(line) <= PROGRESS_LINE_WIDTH for line in lines)


def test_a_new_arm_starts_its_speed_and_eta_afresh(capsys, monkeypatch):
    """The first printed line of an arm whose step count restarts must not turn log calls into steps (an ETA of
    hours for a run of minutes): the speed counts the arm's own steps, from its first row."""
    import shared.runs

    clock = [0.0]
    monkeypatch.setattr(shared.runs.time, "time", lambda: clock[0])
    run = RunLogger("eta-run", {}, print_every=3, total_steps=60)
    for arm in ("first", "second"):
        for step in range(0, 60, 10):  # one row per 10 steps (one per stage, say)
            clock[0] += 10.0  # 10 steps take 10 s: 1 step/s in both arms
            run.log(step, {"reward": 1.0}, arm=arm)
    run.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    rates = [float(line.split(" | ")[2].split()[0]) for line in lines]
    assert rates == [1.0] * 4 and len(lines) == 4, lines
    assert [line.split(" | ")[3] for line in lines] == ["ETA 40s", "ETA 10s"] * 2
