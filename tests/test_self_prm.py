"""Tests of algos/self_prm.py: verdict/answer parsing, paragraph formatting, the voting rules (ties, unparsable
answers, fallback) against hand cases and a brute-force loop, ProcessBench F1 and pooled precision by hand, the toy
judge items against the task's step truth, a smoke run (oracle judge == pass@k, one TensorBoard run per selector),
learning of the multitask warm start (through shared.warmstart, whose other callers keep their cache keys), the real
path through saved folders, and the bad inputs."""

import json
import math
import random
import time
from dataclasses import replace

import pytest
import torch
from datasets import Dataset

import shared.warmstart as warmstart
from algos import self_prm
from algos.self_prm import (
    Args,
    format_paragraphs,
    main,
    majority_vote,
    parse_verdict,
    processbench_f1,
    self_prm_select,
)
from shared.lm import build_tiny_lm

WS = dict(
    warmstart_steps=40, warmstart_batch_size=32
)  # a cheap warm start for the plumbing tests (cached after the first)
TINY = dict(num_problems=6, num_samples=4, k_max=4, num_pb_items=8, **WS)


# parsing and prompts ---------------------------------------------------------------------------------------------
def test_parse_verdict():
    assert parse_verdict("the first error is in paragraph 2, so \\boxed{2}") == 2
    assert parse_verdict("\\boxed{-1}") == -1
    assert parse_verdict("first \\boxed{3} then, on reflection, \\boxed{ 1 }") == 1  # the LAST box
    assert parse_verdict("\\boxed{+0}") == 0
    assert parse_verdict("\\boxed{1.5}") is None and parse_verdict("\\boxed{two}") is None
    assert parse_verdict("no box at all: -1") is None and parse_verdict("\\boxed{}") is None
    assert parse_verdict("\\boxed{\\frac{1}{2}}") is None  # a balanced box, but not an integer
    assert parse_verdict("\\boxed{4} and a truncated \\boxed{") == 4  # the last COMPLETE box
    assert parse_verdict("\\boxed{2.}") is None and parse_verdict("\\boxed{\\text{2}}") is None  # strict
    assert parse_verdict("\\boxed{paragraph 2}") is None and parse_verdict("\\boxed{-1 }") == -1


def test_last_boxed_is_brace_balanced_on_math_answers():
    """The MATH-500 answer formats that a `[^{}]*` pattern cannot read, inside solution-like text."""
    for answer in (
        "\\frac{14}{3}",
        "3\\sqrt{13}",
        "\\text{Evelyn}",
        "(3,\\frac{\\pi}{2})",
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
    ):
        text = f"Step one.\n\nSo x = 2 and \\boxed{{1}} is wrong; the answer is $\\boxed{{{answer}}}$."
        assert self_prm.last_boxed(text) == answer
    assert self_prm.last_boxed("\\boxed{\\frac{1}{2}") is None  # unbalanced (truncated): None
    assert self_prm.last_boxed("\\boxed{a}} and \\boxed{\\sqrt{2") == "a"  # the truncated last box is skipped
    assert self_prm.last_boxed("no box") is None and self_prm.last_boxed(None) is None
    assert self_prm.last_boxed("\\boxed{}") == ""


def test_normalize_answer_on_real_math_formats():
    norm = self_prm.normalize_answer
    same = [  # (what a model writes, the MATH-500 gold answer)
        ("\\dfrac{14}{3}", "\\frac{14}{3}"),
        ("\\tfrac{14}{3}.", "\\frac{14}{3}"),
        ("\\frac14", "\\frac{1}{4}"),
        ("3 \\sqrt{13}", "3\\sqrt{13}"),
        ("\\text{Evelyn}", "Evelyn"),
        ("\\textbf{(C)}", "\\text{(C)}"),
        ("$(3, \\frac{\\pi}{2})$", "(3,\\frac{\\pi}{2})"),
        ("\\left( 3, \\dfrac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("90^\\circ", "90"),
        ("10\\%", "10"),
        ("1,000", "1000"),
        ("0.50", "0.5"),
        ("\\$18.90", "18.9"),
    ]
    for written, gold in same:
        assert norm(written) == norm(gold), (written, norm(written), norm(gold))
    assert norm("\\frac{14}{3}") == "\\frac{14}{3}" and norm("3\\sqrt{13}") == "3\\sqrt{13}"
    assert norm("1,2") == "1,2" != norm("12")  # a pair is not a thousands separator
    assert norm("\\frac{14}{3}") != norm("\\frac{3}{14}") and norm("Evelyn") != norm("Evelin")
    assert norm("\\rightarrow") == "\\rightarrow"  # \\right( is spacing, \\rightarrow is not


def test_official_template_file_fills_as_processbench_does(tmp_path):
    """ProcessBench's template file is a str.format() template: literal braces doubled, `\\boxed{{}}`. Ours reads
    a file of that format as it is (a stand-in with the official file's structure, not its text)."""
    file = tmp_path / "critique_template.txt"
    file.write_text("[Math Problem]\n\n{problem}\n\n[Solution]\n\n{tagged_response}\n\nIndex in \\boxed{{}}.")
    template = self_prm.judge_template_text(Args(judge_template_file=str(file)))
    prompt = self_prm.judge_prompt(template, "Find {x} in $\\frac{1}{2}$.", ["a = {1}", "so \\boxed{2}"])
    assert prompt.endswith("Index in \\boxed{}.") and "{{" not in prompt  # doubled braces become single ones
    assert "Find {x} in $\\frac{1}{2}$." in prompt and "<paragraph_1>\nso \\boxed{2}\n</paragraph_1>" in prompt
    assert self_prm.judge_prompt(self_prm.DEFAULT_JUDGE_TEMPLATE, "q", ["p"]).endswith("inside \\boxed{}.")
    with pytest.raises(SystemExit, match="doubled"):  # a single-brace box would be a format field
        self_prm.check_judge_template("{problem} {tagged_response} \\boxed{}")
    with pytest.raises(SystemExit, match="placeholders"):
        self_prm.check_judge_template("{problem} only")
    with pytest.raises(SystemExit, match="no such file"):
        self_prm.judge_template_text(Args(judge_template_file=str(tmp_path / "missing.txt")))


def test_toy_verdict_and_answers():
    assert self_prm.parse_toy_verdict("7 7 ok 12 12 ok 12 12 ok answer valid") == -1
    assert self_prm.parse_toy_verdict("7 7 ok 12 13 bad 12 13 bad answer 1") == 1
    assert self_prm.parse_toy_verdict("7 ok 12 ok answer") is None
    assert self_prm.parse_toy_verdict("7 ok answer 1 2") is None and self_prm.parse_toy_verdict("7 ok") is None
    norm = self_prm.normalize_answer
    assert norm(" 42 ") == "42" and norm("3.0") == "3" and norm("1,000") == "1000" and norm("$-7$") == "-7"
    assert norm("\\text{12}.") == "12" and norm("\\dfrac{1}{2}") == "\\frac{1}{2}" and norm(None) is None
    assert norm("0.50") == "0.5" and norm("  ") is None
    assert self_prm.last_boxed("so \\boxed{\\frac12} and \\boxed{5}") == "5"


def test_format_paragraphs_and_split():
    assert format_paragraphs(["a = 1", "b = 2"]) == (
        "<paragraph_0>\na = 1\n</paragraph_0>\n\n<paragraph_1>\nb = 2\n</paragraph_1>"
    )
    assert format_paragraphs(["3 + 4 = 7", "# 7"], style="toy") == "step 0 : 3 + 4 = 7 step 1 : # 7"
    text = "<think>scratch\n\nmore</think>First.\n\n\nSecond line\nstill second.\n  \nThird."
    assert self_prm.split_paragraphs(text, "final") == ["First.", "Second line\nstill second.", "Third."]
    assert self_prm.split_paragraphs(text, "full")[0] == "<think>scratch"
    assert self_prm.toy_paragraphs("3 + 4 = 7 ; 7 + 5 = 12 ; # 12") == ["3 + 4 = 7", "7 + 5 = 12", "# 12"]
    assert self_prm.toy_paragraphs("3 + 4 = 7 ; 7 +") == ["3 + 4 = 7", "7 +"]  # no answer paragraph


# selection -------------------------------------------------------------------------------------------------------
def test_majority_vote_rules():
    assert majority_vote(["1", "2", "2"]) == "2"
    assert majority_vote(["2", "1", "1", "2"]) == "2"  # tie -> seen first
    assert majority_vote(["1", "2", "2", "1"]) == "1"
    assert majority_vote([None, None, "3"]) == "3"  # an unparsable answer never votes
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote([None, "b", "a", None, None]) == "b"


def test_self_prm_select_rules():
    # validated: b (pos 1), a (pos 2) -> tie, b seen first AMONG VALIDATED; plain MV would say a (2 votes)
    assert self_prm_select(["a", "b", "a"], [False, True, True]) == "b"
    assert majority_vote(["a", "b", "a"]) == "a"
    assert self_prm_select(["a", "b", "b", "a"], [True, False, False, False]) == "a"  # one validated vote beats 2
    assert self_prm_select(["a", "b", "b"], [False, False, False]) == "b"  # nothing validated -> MV
    assert self_prm_select([None, "b", "b", "c"], [True, False, False, True]) == "c"
    assert self_prm_select([None, "b", "b", "c"], [True, False, False, False]) == "b"  # validated but no answer -> MV
    assert self_prm_select([None, None], [True, True]) is None and self_prm_select([], []) is None
    with pytest.raises(ValueError):
        self_prm_select(["a", "b"], [True])


def brute_force_vote(answers, weights):
    """Independent loop: sum the weights per answer, break ties by the first voting position."""
    score, first = {}, {}
    for i, (a, w) in enumerate(zip(answers, weights)):
        if a is not None and w > 0:
            score[a] = score.get(a, 0.0) + w
            first.setdefault(a, i)
    if not score:
        return None
    return min(score, key=lambda a: (-score[a], first[a]))


def test_vectorised_vote_matches_brute_force():
    rng = random.Random(0)
    answers = [[rng.choice([None, "1", "2", "3", "4"]) for _ in range(9)] for _ in range(300)]
    for soft in (False, True):
        weights = [
            [rng.choice([0.0, 0.25, 0.5, 1.0]) if soft else float(rng.random() < 0.4) for _ in range(9)]
            for _ in range(300)
        ]
        ids, _ = self_prm.answer_ids(answers)
        chosen = self_prm.select_with_fallback(ids, torch.tensor(weights)).tolist()
        for row, w, slot in zip(answers, weights, chosen):
            table = list(dict.fromkeys(a for a in row if a is not None))
            expected = brute_force_vote(row, w) or brute_force_vote(row, [1.0] * len(row))
            assert (table[slot] if slot >= 0 else None) == expected


def test_oracle_judge_equals_pass_at_k_and_k1_agrees():
    rng = random.Random(1)
    answers = [[rng.choice([None, "5", "6", "7"]) for _ in range(8)] for _ in range(200)]
    gold = [rng.choice(["5", "6", "8"]) for _ in range(200)]
    ids, slot_correct = self_prm.answer_ids(answers, gold)
    correct = slot_correct.gather(1, ids.clamp(min=0)) & (ids >= 0)
    assert correct.tolist() == [[a == g for a in row] for row, g in zip(answers, gold)]
    always_valid = torch.ones(200, 8)
    weights = {"oracle_judge": correct.float(), "all_valid": always_valid, "none_valid": torch.zeros(200, 8)}
    for k in (1, 2, 4, 8):
        acc = self_prm.selection_accuracy(ids, slot_correct, weights, k)
        assert acc["oracle_judge"] == acc["oracle"]  # Self-PRM with a perfect judge = pass@k
        assert acc["all_valid"] == acc["none_valid"] == acc["majority"]  # no information -> MV
        expected_oracle = sum(any(a == g for a in row[:k]) for row, g in zip(answers, gold)) / 200
        assert acc["oracle"] == pytest.approx(expected_oracle)
        expected_mv = sum(majority_vote(row[:k]) == g for row, g in zip(answers, gold)) / 200
        assert acc["majority"] == pytest.approx(expected_mv)
        if k == 1:
            assert acc["pass1"] == acc["majority"] == acc["oracle"]
    assert acc["oracle"] > acc["majority"] > 0.2  # not a degenerate case


# judge metrics ---------------------------------------------------------------------------------------------------
def test_processbench_f1_by_hand():
    acc_err, acc_cor, f1 = processbench_f1([0, 1, None, -1, -1, 2], [0, 2, 1, -1, -1, -1])
    assert acc_err == pytest.approx(100 / 3) and acc_cor == pytest.approx(200 / 3)
    assert f1 == pytest.approx(2 * (100 / 3) * (200 / 3) / 100)
    assert processbench_f1([-1, -1], [0, -1]) == (0.0, 100.0, 0.0)
    assert processbench_f1([None, None], [1, -1]) == (0.0, 0.0, 0.0)  # None is always wrong
    acc_err, acc_cor, f1 = processbench_f1([-1], [-1])
    assert math.isnan(acc_err) and acc_cor == 100.0 and math.isnan(f1)
    with pytest.raises(ValueError):
        processbench_f1([0], [0, 1])


def test_precision_recall_pooled_and_undefined():
    # bucket 0: problem A (1 positive, correct), problem B (9 positives, none correct) -> pooled 1/10, not (1 + 0) / 2
    verdicts = torch.tensor([[1] + [0] * 9, [1] * 9 + [0], [0] * 10]).bool()
    correct = torch.tensor([[1] * 3 + [0] * 7, [0] * 10, [1] * 10]).bool()
    buckets = torch.tensor([0, 0, 2])
    precision, recall, positives, num_correct = self_prm.precision_recall_by_bucket(verdicts, correct, buckets)
    assert precision[0].item() == pytest.approx(0.1) and recall[0].item() == pytest.approx(1 / 3)
    assert positives.tolist() == [10.0, 0.0, 0.0] and num_correct.tolist() == [3.0, 0.0, 10.0]
    assert math.isnan(precision[1]) and math.isnan(recall[1])  # empty bucket: undefined, never 0
    assert math.isnan(precision[2]) and recall[2].item() == 0.0  # no positives: precision undefined
    base_rate, lift = self_prm.lift_over_base_rate(precision, correct, buckets)
    assert base_rate[0].item() == pytest.approx(3 / 20) and lift[0].item() == pytest.approx(0.1 / 0.15)  # < 1
    assert math.isnan(base_rate[1]) and math.isnan(lift[1])  # empty bucket
    assert base_rate[2].item() == 1.0 and math.isnan(lift[2])  # no positives: no precision, no lift
    acc = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]).bool()
    assert self_prm.difficulty_buckets(acc, (0.25, 0.75)).tolist() == [0, 2, 1, 0]


# the toy ---------------------------------------------------------------------------------------------------------
def test_toy_judge_items_match_step_truth():
    rng = random.Random(0)
    problems = self_prm.TASK.dataset(200, seed=0, split="train")["prompt"]
    kinds = set()
    for i, problem in enumerate(problems):
        prompt, target, label = self_prm.toy_judge_item(problem, rng, corrupt=i % 4 != 0)
        solution = prompt.split(" A ", 1)[1]
        paragraphs = [p.split(" : ", 1)[1] for p in solution.split("step ")[1:]]
        text = " ; ".join(paragraphs[:-1]) + " ; " + paragraphs[-1]
        assert self_prm.toy_first_error(problem, text) == label  # the label = the task's own step truth
        assert self_prm.parse_toy_verdict(target) == label
        assert len(target.split()) == 3 * len(paragraphs) + 2
        kinds.add("answer" if label == len(paragraphs) - 1 else "step" if label >= 0 else "none")
        if label == -1:  # for a correct solution the endorsing judgment IS the target check
            assert self_prm.all_ok_judgment(problem, text) == target
    assert kinds == {"answer", "step", "none"}
    reference = "3 + 4 = 7 ; 7 + 5 = 12 ; # 12"
    assert self_prm.toy_first_error("add 3 + 4 + 5", reference) == -1
    assert self_prm.toy_first_error("add 3 + 4 + 5", "3 + 4 = 7 ; 7 + 5 = 12 ; # 13") == 2
    assert self_prm.toy_first_error("add 3 + 4 + 5", "3 + 4 = 8 ; 8 + 5 = 12 ; # 12") == 0  # right answer, bad step
    assert self_prm.toy_first_error("add 3 + 4 + 5", "3 + 4 = 7 ; 7 + 5 = 12 ;") == 2  # no answer paragraph
    assert self_prm.toy_judgment([3, 4, 5], [7, 13, 13]) == "7 7 ok 12 13 bad 12 13 bad answer 1"


# runs ------------------------------------------------------------------------------------------------------------
def event_tags(folder) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return set(EventAccumulator(str(folder)).Reload().Tags()["scalars"])


def test_smoke_run(runs_in_tmp, capsys):
    out = main(Args(**TINY))
    run_dir = out["run_dir"]
    assert (run_dir / "summary.md").exists() and (run_dir / "samples.txt").exists()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    selectors = ["pass1", "majority", "self_prm", "self_prm_soft", "oracle_judge", "noisy_0.1", "noisy_0.3", "oracle"]
    at_k = [(m["step"], m["arm"]) for m in metrics if "eval/accuracy" in m]  # one row per selector and k
    assert at_k == [(k, arm) for k in (1, 2, 4) for arm in selectors]
    assert any("judge/f1" in m and "arm" not in m for m in metrics)
    for arm in selectors:  # each selector is a TensorBoard run of its own, under the same tag name
        assert list((run_dir / "arms" / arm).glob("events.out.tfevents.*"))
        assert event_tags(run_dir / "arms" / arm) == {"eval/accuracy"}
    shown = capsys.readouterr().out
    assert "sampling [" in shown and "judging: done in" in shown  # the long phases show progress bars
    assert all(len(line) <= 120 for line in shown.splitlines() if line.startswith("step "))
    start, _ = build_tiny_lm(seed=0)  # the warm start (the only training) moved the weights off the init
    assert any(not torch.equal(p, q) for p, q in zip(start.parameters(), out["model"].parameters()))
    for row in out["selection"]:
        assert row["oracle judge"] == row["pass@k"] and row["problems"] == 6
    first = out["selection"][0]
    assert first["k"] == 1 and len({first[c] for c in ("pass@1", "MV", "Self-PRM", "Self-PRM soft", "pass@k")}) == 1
    assert "Self-PRM" in (run_dir / "summary.md").read_text()


def test_coevolve_arm_smoke(runs_in_tmp):
    out = main(Args(**TINY, coevolve=True, coevolve_steps=2))
    assert [r["checkpoint"] for r in out["coevolve"]] == ["before GRPO", "after 2 GRPO steps"]
    metrics = [json.loads(line) for line in (out["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    arm = [m for m in metrics if m.get("arm") == "coevolve"]
    assert [m["step"] for m in arm if "charts/reward" in m] == [1, 2]  # two GRPO steps
    assert all(math.isfinite(m["losses/grpo_loss"]) for m in arm if "losses/grpo_loss" in m)
    assert [m["step"] for m in arm if "judge/f1" in m] == [0, 2]  # before and after
    tags = event_tags(out["run_dir"] / "arms" / "coevolve")
    assert {"charts/reward", "losses/grpo_loss", "eval/solve_accuracy", "judge/f1"} <= tags
    assert not any("coevolve" in tag for tag in tags)  # the arm is the run, not part of the tag names
    assert "Co-evolution" in (out["run_dir"] / "summary.md").read_text()


def test_warm_start_learns_to_solve_and_judge():
    """The multitask warm start (the toy's only training) learns both tasks: solving moves off 0, the judge's
    verdicts parse and endorse correct solutions, and the right critiques of corrupted ones gain probability.
    (Locating errors, acc_err > 0, needs the default ~1000 steps: too slow for a test; see the README table.)"""
    args = Args(warmstart_steps=200, warmstart_batch_size=64)
    model, tokenizer = self_prm.load_causal_lm(str(self_prm.multitask_warm_start(args)))
    untrained, _ = build_tiny_lm(seed=0)
    prompts, labels = self_prm.synthetic_processbench(args, seed=5, n=120)
    trained_f1 = self_prm.judge_f1(model, tokenizer, args, prompts, labels, self_prm.parse_toy_verdict)
    untrained_f1 = self_prm.judge_f1(untrained, tokenizer, args, prompts, labels, self_prm.parse_toy_verdict)
    assert untrained_f1[:2] == (0.0, 0.0) and trained_f1[1] > 80.0  # format learned, correct items endorsed
    rng = random.Random(5)
    items = [self_prm.toy_judge_item(p, rng, corrupt=True) for p in self_prm.TASK.dataset(60, 5, "test")["prompt"]]
    critique = [
        self_prm.sequence_logprob(m, tokenizer, [i[0] for i in items], [i[1] for i in items]).mean()
        for m in (model, untrained)
    ]
    assert critique[0] > critique[1] + 30.0  # nats per judgment
    problems = self_prm.TASK.dataset(100, seed=3, split="test")
    solved = [
        warmstart.exact_match(m, tokenizer, self_prm.TASK, problems, max_new_tokens=32) for m in (model, untrained)
    ]
    assert solved[1] == 0.0 and solved[0] > 0.03


def test_shared_warm_start_keeps_its_other_callers_cache_keys(tmp_path, monkeypatch):
    """The solve + judge warm start goes through shared.warmstart.warm_start(sft_rows=..., sft_rows_recipe=...), an
    addition made for this script: a warm start without them must keep the folder (cache key) that the code before
    the addition gave it (the keys below were computed by that code, for BLEUBERI's, CREAM's and DR-IRL-like calls),
    and the mix's recipe must enter this script's key."""

    def no_training(*args, **kwargs):
        raise AssertionError("a cache miss: the cache key changed")

    monkeypatch.setattr(warmstart, "build_tiny_lm", no_training)
    calls = {
        "warmstart-string_ops-f588a24df8": dict(task_name="string_ops", seed=0, steps=450),
        "warmstart-sort_digits-5a9e673b6a": dict(
            task_name="sort_digits", seed=1, steps=100, batch_size=32, lr=3e-3, task_kwargs={"corrupt_rate": 0.5}
        ),
        "warmstart-rule_categories-00353a51b2": dict(task_name="rule_categories", seed=0, steps=350, lr=2e-3),
    }
    for folder, call in calls.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "warm_start.json").write_text("{}")
        assert warmstart.warm_start(**call, cache_dir=tmp_path) == tmp_path / folder
    rows = self_prm.solve_judge_rows(batch_size=8, judge_fraction=0.5, judge_max_terms=5, seed=0)
    with pytest.raises(SystemExit, match="sft_rows_recipe"):  # a mix without its recipe would share a key
        warmstart.warm_start("chain_addition", sft_rows=rows, cache_dir=tmp_path)
    monkeypatch.undo()
    step_rows = rows(0)  # one step: judge sequences, then solve sequences (the references)
    judge_prompts, judge_targets = step_rows[0]
    solve_prompts, solve_targets = step_rows[1]
    assert len(judge_prompts) + len(solve_prompts) == 8 and judge_prompts[0].startswith("Q add ")
    assert solve_targets[0].endswith(f"# {sum(self_prm.TASK.terms(solve_prompts[0]))}")
    tiny = dict(steps=2, batch_size=4, num_eval=1, verbose=False, cache_dir=tmp_path)
    plain = warmstart.warm_start("chain_addition", **tiny)
    folders = set()
    for judge_fraction in (0.5, 0.25):  # (the same problems as above: drawn once, cached)
        rng_before = torch.random.get_rng_state()
        mix = {"mix": "self_prm solve + judge", "judge_fraction": judge_fraction}
        rows = self_prm.solve_judge_rows(batch_size=4, judge_fraction=judge_fraction, judge_max_terms=5, seed=0)
        folder = warmstart.warm_start("chain_addition", sft_rows=rows, sft_rows_recipe=mix, **tiny)
        assert torch.equal(torch.random.get_rng_state(), rng_before)  # a cache miss leaves the caller's samples alone
        assert json.loads((folder / "warm_start.json").read_text())["sft_rows"] == mix
        folders.add(folder)
    assert len(folders | {plain}) == 3  # the mix and its options are in the key


def test_real_path_through_saved_folders(tmp_path, runs_in_tmp, capsys):
    """--model-name a save_pretrained folder, --dataset-name a save_to_disk folder (problem/answer), ProcessBench."""
    model, tokenizer = self_prm.load_causal_lm(str(self_prm.multitask_warm_start(Args(**WS))))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = main(Args(model_name=str(tmp_path / "model"), **{k: v for k, v in TINY.items() if k not in WS}))
    assert out["selection"][-1]["oracle judge"] == out["selection"][-1]["pass@k"]  # the toy through a folder
    Dataset.from_dict({"problem": ["add 1 + 2", "add 3 + 4"], "answer": ["3", "7.0"]}).save_to_disk(tmp_path / "math")
    Dataset.from_dict(
        {"problem": ["add 1 + 2"] * 2, "steps": [["1 + 2 = 3", "# 3"], ["1 + 2 = 4", "# 4"]], "label": [-1, 0]}
    ).save_to_disk(tmp_path / "pb")
    real = Args(
        model_name=str(tmp_path / "model"),
        dataset_name=str(tmp_path / "math"),
        num_problems=2,
        num_samples=2,
        k_max=2,
        soft_votes=2,
        processbench_name=str(tmp_path / "pb"),
        processbench_split="train",
        max_new_tokens=8,
        judge_max_new_tokens=8,
        soft_score="votes",
    )
    out = main(real)
    assert out["selection"][-1]["problems"] == 2 and out["weights"]["self_prm_soft"].shape == (2, 2)
    summary = (out["run_dir"] / "summary.md").read_text()
    assert "pb:train (2)" in summary and "lift" in summary
    # the toy model writes no \\boxed verdicts: at 8 tokens every real-format verdict is None -> the warning
    assert "warning: 100% of the first 4 judgments have no parsable verdict" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (out["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["judge/unparsed_rate_first_batch"] for m in metrics if "judge/unparsed_rate_first_batch" in m] == [1.0]
    chunks = [m for m in metrics if any(k.startswith("timing/") for k in m)]  # a row per generation chunk
    assert [m["step"] for m in chunks] == list(range(1, len(chunks) + 1)) and len(chunks) >= 2
    assert not any(k.startswith("losses/") for m in metrics for k in m)  # nothing is trained on this path
    out = main(replace(real, soft_score="auto", processbench_name=None))  # auto = no soft score on real data
    assert (
        "self_prm_soft" not in out["weights"] and "Self-PRM soft = none" in (out["run_dir"] / "summary.md").read_text()
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(k_max=3), "not a power of two"),
        (dict(k_max=32, num_samples=16), "larger than the pool"),
        (dict(num_problems=0), "empty"),
        (dict(model_name="nobody/no-such-model-xyz"), "cannot load"),
        (dict(dataset_name="tiny:string_ops"), "chain_addition only"),
        (dict(noise_rates=(1.5,)), "[0, 1]"),
        (dict(bucket_edges=(0.8, 0.2)), "lo < hi"),
        (dict(model_name="tiny:string_ops"), "toy model"),
        (dict(warmstart_learning_rate=0.0), "--warmstart-learning-rate 0.0: a learning rate"),
        (dict(warmstart_learning_rate=-1e-3), "--warmstart-learning-rate -0.001"),
        (dict(warmstart_learning_rate=float("nan")), "--warmstart-learning-rate nan"),
        (dict(coevolve_learning_rate=0.0), "--coevolve-learning-rate 0.0"),
        (dict(coevolve_learning_rate=-1.0), "--coevolve-learning-rate -1.0"),
        (dict(coevolve_learning_rate=float("nan")), "--coevolve-learning-rate nan"),
        (dict(warmstart_judge_fraction=1.0), "--warmstart-judge-fraction in (0, 1)"),
        (dict(coevolve=True, coevolve_group=1), "--coevolve-group >= 2"),
        (dict(judge_template="{problem} {tagged_response} \\boxed{}"), "doubled"),
    ],
)
def test_bad_inputs_fail_fast(change, message, runs_in_tmp):
    start = time.time()
    with pytest.raises(SystemExit, match="error:") as error:
        main(replace(Args(**TINY), **change))
    assert message in str(error.value) and time.time() - start < 15
    assert not runs_in_tmp.exists() or not any(runs_in_tmp.iterdir())  # nothing half-written


def test_bad_datasets_fail_fast(tmp_path, runs_in_tmp, monkeypatch):
    Dataset.from_dict({"problem": ["add 1 + 2"], "solution": ["3"]}).save_to_disk(tmp_path / "no_answer")
    (tmp_path / "empty.csv").write_text("problem,answer\n")  # columns, no rows
    base = Args(num_problems=4, num_samples=2, k_max=2, soft_score="votes")
    with pytest.raises(SystemExit, match="lacks the column"):
        main(replace(base, dataset_name=str(tmp_path / "no_answer")))
    with pytest.raises(SystemExit, match="no data"):  # an empty file: datasets cannot even read it
        main(replace(base, dataset_name=str(tmp_path / "empty.csv")))
    empty = Dataset.from_dict({"problem": [], "answer": []})
    monkeypatch.setattr(self_prm, "load_data", lambda *a, **k: empty)  # an empty table that did load
    with pytest.raises(SystemExit, match="problem list is empty"):
        main(replace(base, dataset_name=str(tmp_path / "empty.csv")))
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="placeholders"):
        main(replace(base, dataset_name=str(tmp_path / "empty.csv"), judge_template="judge {problem}"))
    with pytest.raises(SystemExit, match="toy's known judgment"):
        main(replace(base, dataset_name=str(tmp_path / "empty.csv"), soft_score="path"))
    assert not runs_in_tmp.exists() or not any(runs_in_tmp.iterdir())
