# arXiv:2505.11227 (Self-PRM) | docs: docs/self_prm.md (details, deviations, metrics, results, reproducing the paper)
"""Self-PRM: Is PRM Necessary? Problem-Solving RL Implicitly Induces PRM Capability in LLMs (Feng et al., NeurIPS
2025, https://arxiv.org/abs/2505.11227; no official code; the judge is ProcessBench's,
https://github.com/QwenLM/ProcessBench). A policy trained by outcome-only RL judges its own k samples with the
ProcessBench critique prompt, and the answer is voted only among the samples it validated. The offline toy (one
frozen tiny model, 150 problems x 16 samples, every selector at k = 1..16, under 2 minutes on 2 CPU cores):
python algos/self_prm.py

Idea: outcome-RL policies are already good process judges, so use the policy itself as its PRM: sample k solutions,
let the same model return the index of the earliest wrong paragraph (-1 = none) for each, and vote among the -1s.

    v_i = 1[ judge(q, y_i) == -1 ]                            (a judgment with no parsable verdict is not valid)
    MV_k = argmax_a sum_{i<=k} 1[a_i = a]                     (an unparsable answer a_i = None never votes)
    SelfPRM_k = argmax_a sum_{i<=k} v_i 1[a_i = a],  or MV_k when no validated sample has a parsable answer
    soft: argmax_a sum_{i<=k} s_i 1[a_i = a],  s_i = P(valid)  (reconstruction, --soft-score)
    ties (every selector): the answer seen first in sample order among the samples that vote
    acc_err = % of erroneous items with pred == e*,  acc_cor = % of correct items with pred == -1,
    F1 = 2 acc_err acc_cor / (acc_err + acc_cor);  precision_b = #(v=1, correct) / #(v=1) pooled over bucket b

Source tags on the lines that implement a detail: [paper] = arXiv:2505.11227 (docs/self_prm.md says which of its
settings we could check); [PB <file>] = QwenLM/ProcessBench@e802463 code/<file> (critique prompt, verdict
parse, F1); [toy] = the CPU toy's design, ours; "reconstruction" where neither says (each such choice is a flag).
Arms (selectors, one TensorBoard run each, logged at step k): pass1, majority, self_prm, self_prm_soft,
oracle_judge (v = correct: must equal pass@k), noisy_<q> (oracle verdicts flipped with probability q), oracle
(pass@k); --coevolve adds the coevolve arm (outcome-reward GRPO, the judge's F1 before and after).

Commands:
    python algos/self_prm.py                                  # offline toy: 150 problems x 16 samples, seed 1
    python algos/self_prm.py --seed 2 --coevolve              # a second seed plus the co-evolution arm
    python algos/self_prm.py --model-name Qwen/QwQ-32B --dataset-name HuggingFaceH4/MATH-500 --split test \\
        --num-problems 500 --num-samples 16 --k-max 16 --max-new-tokens 32768 --judge-max-new-tokens 32768 \\
        --temperature 0.6 --top-p 0.95 --judge-template-file critique_template.txt --gen-batch-size 64 \\
        --processbench-name Qwen/ProcessBench --processbench-split math
    (critique_template.txt = ProcessBench's code/templates/critique_template.txt; long-CoT judges need the long
    budgets: ProcessBench gives QwQ-type models 32768 new tokens, 8192 otherwise)
"""

from __future__ import annotations

import functools
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

from shared.data import load_data
from shared.lm import load_causal_lm, position_ids_from_mask, sample
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
from shared.tasks import ChainAddition
from shared.warmstart import sft_batch, warm_start

TOY_MODEL = "tiny:solve+judge"
DEFAULT_JUDGE_TEMPLATE = (  # a paraphrase of the ProcessBench critique prompt (pass the official text via the flag)
    "Here is a math problem and a proposed solution. The solution is split into paragraphs, each wrapped in tags and "
    "numbered from 0.\n\n[Math Problem]\n\n{problem}\n\n[Solution]\n\n{tagged_response}\n\nCheck the solution one "
    "paragraph at a time. If a paragraph contains an error, report the index of the EARLIEST such paragraph; if no "
    "paragraph is wrong, report -1.\n\nGive the index as your final answer inside \\boxed{{}}."
)  # a str.format() template like ProcessBench's file: literal braces doubled
UNPARSED_WARNING = 0.2  # warn at the first judge batch when more verdicts than this do not parse
SOLVE_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
VOTE_TEMPERATURE = 1.0  # sampled judgments of --soft-score votes [PB run_eval.py: the voting variant's T and top_p]
VOTE_TOP_P = 0.9
COEVOLVE_JUDGE_TERMS = 3  # the co-evolution arm's judge sees only 3-term problems in its warm start [toy]
COEVOLVE_TERMS = 5  # ... and GRPO trains (and the judge is tested) on 5-term problems, 5 paragraphs [toy]
GRPO_STD_EPS = 1e-4  # group z-score: (r - mean) / (std + eps), as TRL's GRPO
MAX_GRAD_NORM = 1.0  # gradient-norm clip of the co-evolution GRPO step


@dataclass
class Args:
    exp_name: str = "toy"
    """name of this experiment (part of the run folder name)"""
    seed: int = 1
    """seed of the problems, the sampling and the noisy oracles"""
    cuda: bool = True
    """use the GPU when one is visible"""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16"""
    num_threads: int = 1
    """torch CPU threads (1 is fastest for the tiny model)"""
    track: bool = False
    """also log to Weights & Biases"""
    model_name: str = TOY_MODEL
    """policy = judge: tiny:solve+judge (this script's cached multitask warm start), a save_pretrained folder, hub id"""
    dataset_name: str = "tiny:chain_addition"
    """problems: tiny:chain_addition (toy formats), or a save_to_disk folder / data file / hub id (boxed formats)"""
    split: str = "test"
    """split of --dataset-name"""
    problem_column: str = "problem"
    """column with the problem text (real datasets; the toy uses `prompt`)"""
    answer_column: str = "answer"
    """column with the gold final answer (real datasets), compared after normalisation"""
    num_problems: int = 150
    """problems evaluated (the toy: 150 held-out chain-addition problems)"""
    num_samples: int = 16
    """pool of sampled solutions per problem (nested prefixes are taken from it)"""
    k_max: int = 16
    """largest k, a power of two <= --num-samples; k runs over 1, 2, 4, ..., k_max"""
    max_new_tokens: int = 32
    """new tokens per solution (toy: 32; a real model needs thousands, see the real command)"""
    judge_max_new_tokens: int = 20
    """new tokens per judgment (toy: 20; ProcessBench uses 8192, 32768 for QwQ-type models: a judgment cut short
    has no \\boxed verdict, and Self-PRM silently becomes majority vote; a warning says so at the first batch)"""
    temperature: float = 1.0
    """solution sampling temperature (reconstruction: the paper's is not known; R1/QwQ usually 0.6; the toy: 1.0)"""
    top_p: float = 1.0
    """solution sampling top-p (R1/QwQ usually 0.95)"""
    gen_batch_size: int = 1200
    """sequences per batched generate call"""
    chat: bool = True
    """wrap solve and judge prompts as one user turn of the chat template"""
    judge_template: str = DEFAULT_JUDGE_TEMPLATE
    """critique prompt, a str.format() template with {problem} and {tagged_response} and literal braces doubled
    (real path; the default paraphrases ProcessBench's)"""
    judge_template_file: Optional[str] = None
    """a template file read as it is, e.g. ProcessBench's code/templates/critique_template.txt (overrides
    --judge-template)"""
    judge_target: Literal["final", "full"] = "final"
    """(reconstruction) judge the text after the last </think> (final) or the whole sample (full)"""
    soft_score: Literal["auto", "path", "votes", "none"] = "auto"
    """(reconstruction) soft score: P(all-ok judgment) (path, toy only, one teacher-forced pass) or the share of -1
    among --soft-votes sampled judgments (votes: (1 + soft-votes)x the judge compute, 5x at 4 votes); auto = path
    on the toy, none on a real dataset (ask for votes explicitly)"""
    soft_votes: int = 4
    """judgments per sample (T=1, top_p 0.9) for --soft-score votes"""
    noise_rates: tuple[float, ...] = (0.1, 0.3)
    """flip probabilities of the noisy-oracle judge controls"""
    bucket_edges: tuple[float, float] = (0.25, 0.75)
    """difficulty buckets by own accuracy: hard <= lo < middle < hi <= easy"""
    num_pb_items: int = 400
    """synthetic ProcessBench items on the toy (half correct, half one corrupted paragraph)"""
    processbench_name: Optional[str] = None
    """real path: a ProcessBench-style dataset (problem, steps, label columns) to measure judge F1 on"""
    processbench_split: str = "gsm8k"
    """split of --processbench-name"""
    warmstart_steps: int = 1000
    """multitask (solve + judge) warm-start SFT steps of the toy model [toy: 1000, see docs/self_prm.md]"""
    warmstart_batch_size: int = 64
    """warm-start sequences per step"""
    warmstart_learning_rate: float = 3e-3
    """warm-start AdamW learning rate (> 0) [toy: 3e-3, as shared/warmstart.py; see docs/self_prm.md]"""
    warmstart_judge_fraction: float = 0.5
    """share of judge sequences in the warm-start batches"""
    warmstart_seed: int = 0
    """seed of the warm start (fixed, so run seeds share one cached model)"""
    coevolve: bool = False
    """(optional, toy) judge warmed up on K=3 only, GRPO on K=5 solving; judge F1 on K=5 before and after"""
    coevolve_steps: int = 60
    """GRPO steps of --coevolve"""
    coevolve_learning_rate: float = 5e-5
    """GRPO learning rate of --coevolve"""
    coevolve_prompts: int = 8
    """GRPO prompts per step of --coevolve"""
    coevolve_group: int = 8
    """GRPO completions per prompt of --coevolve"""


# ALGO LOGIC: parsing and prompts --------------------------------------------------------------------------------------
BOXED = "\\boxed{"


def last_boxed(text: str | None) -> str | None:
    """Content of the last complete `\\boxed{...}`, braces balanced (`\\boxed{\\frac{14}{3}}` -> `\\frac{14}{3}`);
    a box whose braces never close (a truncated generation) is skipped; None when no box is complete. [PB run_eval.py
    extract_answer takes the last box too, but with `[^}]*`, which cuts nested answers short: a deliberate
    difference, harmless for its integer verdicts]"""
    if text is None:
        return None
    start = text.rfind(BOXED)
    while start >= 0:
        depth, begin = 1, start + len(BOXED)
        for position in range(begin, len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                return text[begin:position]
        start = text.rfind(BOXED, 0, start)  # unbalanced: look at the box before it
    return None


def parse_verdict(text: str) -> int | None:
    """Earliest-error index from the last \\boxed{} of a judgment: an integer (-1 = no error), else None (strict:
    `\\boxed{2.}`, `\\boxed{paragraph 2}` or `\\boxed{\\text{2}}` are None) [PB run_eval.py: int(), else None]."""
    content = last_boxed(text)
    if content is None or not re.fullmatch(r"\s*[-+]?\d+\s*", content):
        return None
    return int(content)


def parse_toy_verdict(text: str) -> int | None:
    """Toy judgments end with `answer valid` (-1) or `answer j`; anything else is None [toy]."""
    words = text.split()
    if "answer" not in words:
        return None
    after = words[len(words) - words[::-1].index("answer") :]
    if after == ["valid"]:
        return -1
    return int(after[0]) if len(after) == 1 and after[0].isdigit() else None


TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}")
SPACING = re.compile(r"\\[,;:! ]|\\q?quad|\\(?:left|right)(?![a-zA-Z])|\^\{?\\circ\}?|\\%|%")
SHORT_FRAC = re.compile(r"\\frac(\d)(\d)")


def normalize_answer(answer: str | None) -> str | None:
    """Normalise a final answer (MATH formats) before voting and comparison with the gold answer:
    `\\dfrac` / `\\tfrac` -> `\\frac`, `\\frac12` -> `\\frac{1}{2}`, `\\text{..}` (and `\\mathrm`, `\\mbox`) unwrapped,
    `$`, spaces, LaTeX spacing, `\\left` / `\\right`, degrees and `%` dropped, a trailing `.` dropped; plain numbers
    as numbers (`1,000` -> `1000`, `3.0` -> `3`). None or an empty answer -> None. (reconstruction: no symbolic
    equivalence, `0.5` != `\\frac{1}{2}`)"""
    if answer is None:
        return None
    text = answer.replace("\\$", "").replace("$", "")  # a dollar sign (\\$) or math delimiters
    while TEXT_COMMANDS.search(text):  # innermost first, so nested commands unwrap too
        text = TEXT_COMMANDS.sub(r"\1", text)
    text = SPACING.sub("", text).replace(" ", "").strip().rstrip(".")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = SHORT_FRAC.sub(r"\\frac{\1}{\2}", text)
    if re.fullmatch(
        r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+", text
    ):  # a plain number, maybe with thousands commas
        value = float(text.replace(",", ""))
        text = str(int(value)) if value.is_integer() else repr(value)
    return text or None


def format_paragraphs(paragraphs: list[str], style: str = "processbench") -> str:
    """ProcessBench tags `<paragraph_j>\\n...\\n</paragraph_j>`, blank-line joined, j from 0 [PB run_eval.py
    prepare_input_boxed]; toy: `step j : ...` [toy: the tiny vocabulary has no tags]."""
    if style == "toy":
        return " ".join(f"step {j} : {p}" for j, p in enumerate(paragraphs))
    return "\n\n".join(f"<paragraph_{j}>\n{p}\n</paragraph_{j}>" for j, p in enumerate(paragraphs))


def judge_prompt(template: str, problem: str, paragraphs: list[str]) -> str:
    """The critique prompt, filled as ProcessBench fills its template file: `template.format(problem=...,
    tagged_response=...)`, so literal braces are written doubled (`\\boxed{{}}`) [PB run_eval.py
    prepare_input_boxed]."""
    return template.format(problem=problem, tagged_response=format_paragraphs(paragraphs))


def split_paragraphs(solution: str, target: str = "final") -> list[str]:
    """Blank-line paragraphs of the judged text [PB: ProcessBench's steps are paragraphs]; `final` judges the text
    after the last </think> only (reconstruction, --judge-target)."""
    if target == "final" and "</think>" in solution:
        solution = solution.rsplit("</think>", 1)[1]
    return [p.strip() for p in re.split(r"\n\s*\n", solution) if p.strip()] or [solution.strip()]


# ALGO LOGIC: selection, vectorised over problems ------------------------------------------------------------------
def answer_ids(answers: list[list[str | None]], gold: list[str | None] | None = None):
    """Per-problem slot ids of the answers (-1 = no answer) [P, N], and whether each slot is the gold answer [P, N]."""
    n = max(len(a) for a in answers)
    ids = torch.full((len(answers), n), -1, dtype=torch.long)  # [P, N]
    slot_correct = torch.zeros(len(answers), n, dtype=torch.bool)  # [P, N]
    for p, row in enumerate(answers):  # string -> id encoding: the only per-sample Python loop
        slots: dict[str, int] = {}
        for i, a in enumerate(row):
            if a is not None:
                ids[p, i] = slots.setdefault(a, len(slots))
        if gold is not None and gold[p] in slots:
            slot_correct[p, slots[gold[p]]] = True
    return ids, slot_correct


def weighted_vote(ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """argmax_a sum_i w_i 1[a_i = a] per problem [paper: majority vote]; ties -> the answer first seen among the
    voters (reconstruction: deterministic ties); -1 when nobody votes."""
    num_problems, n = ids.shape
    voting = (ids >= 0) & (weights > 0)  # [P, N] parsable answers with a positive weight vote
    onehot = F.one_hot(ids.clamp(min=0), n).bool() & voting[:, :, None]  # [P, N, A]
    score = (onehot * weights[:, :, None].float()).sum(1)  # [P, A]
    position = torch.arange(n).view(1, n, 1).expand_as(onehot)  # [P, N, A]
    first_seen = torch.where(onehot, position, n).amin(1)  # [P, A] first voting sample of each answer (n: none)
    order = first_seen.argsort(dim=1, stable=True)  # [P, A] answers in first-seen order
    best = score.gather(1, order).argmax(1)  # [P] argmax returns the FIRST maximum: the tie rule
    chosen = order.gather(1, best[:, None]).squeeze(1)  # [P]
    return torch.where(voting.any(1), chosen, torch.full_like(chosen, -1))  # [P]


def select_with_fallback(ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Self-PRM: the vote among samples with weight > 0; plain MV where none of them has a parsable answer. [P]
    (reconstruction of the paper's rule: filter by the self-verdict, then vote)"""
    judged = weighted_vote(ids, weights)  # [P]
    return torch.where(judged >= 0, judged, weighted_vote(ids, torch.ones_like(weights)))  # [P]


def _one_problem(answers, weights):
    ids, _ = answer_ids([answers])
    table = list(dict.fromkeys(a for a in answers if a is not None))  # slot id -> answer (first-seen order)
    return ids, table, torch.as_tensor(weights, dtype=torch.float32)[None]


def majority_vote(answers: list[str | None]) -> str | None:
    """Most frequent parsable answer; ties -> the one seen first; None when no answer parses."""
    if not answers:
        return None
    ids, table, weights = _one_problem(answers, [1.0] * len(answers))
    slot = weighted_vote(ids, weights).item()
    return table[slot] if slot >= 0 else None


def self_prm_select(answers: list[str | None], verdicts: list[bool]) -> str | None:
    """MV among self-validated samples (ties -> first seen among them); plain MV when none has a parsable answer."""
    if len(answers) != len(verdicts):
        raise ValueError(f"{len(answers)} answers but {len(verdicts)} verdicts")
    if not answers:
        return None
    ids, table, weights = _one_problem(answers, [float(bool(v)) for v in verdicts])
    slot = select_with_fallback(ids, weights).item()
    return table[slot] if slot >= 0 else None


def selection_accuracy(ids, slot_correct, weights: dict[str, torch.Tensor], k: int) -> dict[str, float]:
    """Accuracy at prefix k of every selector: pass1, majority, oracle (pass@k) and each judge's Self-PRM."""
    ids_k = ids[:, :k]  # [P, k]
    correct = slot_correct.gather(1, ids_k.clamp(min=0)) & (ids_k >= 0)  # [P, k] per-sample correctness

    def accuracy(chosen):  # [P] slot ids -> mean correctness
        return (slot_correct.gather(1, chosen.clamp(min=0)[:, None]).squeeze(1) & (chosen >= 0)).float().mean().item()

    out = {
        "pass1": correct.float().mean().item(),
        "majority": accuracy(weighted_vote(ids_k, torch.ones_like(ids_k, dtype=torch.float32))),
    }
    out.update({name: accuracy(select_with_fallback(ids_k, w[:, :k])) for name, w in weights.items()})
    out["oracle"] = correct.any(1).float().mean().item()
    return out


# ALGO LOGIC: judge metrics ----------------------------------------------------------------------------------------
def processbench_f1(predictions: list[int | None], labels: list[int]) -> tuple[float, float, float]:
    """(acc_err, acc_cor, F1) in percent [PB run_eval.py]; None predictions are wrong; an empty subset gives nan
    (ProcessBench's np.mean of an empty subset is nan too); F1 = 0 at 0/0 (reconstruction)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    pred = np.array([-2 if p is None else p for p in predictions], dtype=np.int64)  # -2 never matches a label
    label = np.asarray(labels, dtype=np.int64)
    err, cor = label >= 0, label == -1
    acc_err = 100.0 * (pred[err] == label[err]).mean() if err.any() else math.nan
    acc_cor = 100.0 * (pred[cor] == -1).mean() if cor.any() else math.nan
    f1 = (
        2 * acc_err * acc_cor / (acc_err + acc_cor)
        if acc_err + acc_cor > 0
        else (math.nan if math.isnan(acc_err + acc_cor) else 0.0)
    )
    return float(acc_err), float(acc_cor), float(f1)


def difficulty_buckets(correct: torch.Tensor, edges: tuple[float, float]) -> torch.Tensor:
    """Bucket per problem from its own accuracy over the pool: 0 hard (<= lo), 1 middle, 2 easy (>= hi). [P]
    (reconstruction: the paper's bucketing is not known)"""
    accuracy = correct.float().mean(1)  # [P]
    return torch.where(accuracy <= edges[0], 0, torch.where(accuracy >= edges[1], 2, 1))  # [P]


def precision_recall_by_bucket(verdicts: torch.Tensor, correct: torch.Tensor, buckets: torch.Tensor, num_buckets=3):
    """Pooled per bucket: precision = TP / #(v=1), recall = TP / #correct (nan when undefined), with the counts
    [paper abstract: the self-verdict's precision on hard problems]."""
    b = buckets[:, None].expand_as(verdicts).reshape(-1)  # [P*N]
    v, c = verdicts.reshape(-1).float(), correct.reshape(-1).float()  # [P*N]
    positives = torch.zeros(num_buckets).index_add_(0, b, v)  # [B]
    true_pos = torch.zeros(num_buckets).index_add_(0, b, v * c)  # [B]
    num_correct = torch.zeros(num_buckets).index_add_(0, b, c)  # [B]
    nan = torch.full((num_buckets,), math.nan)
    precision = torch.where(positives > 0, true_pos / positives.clamp(min=1), nan)  # [B]
    recall = torch.where(num_correct > 0, true_pos / num_correct.clamp(min=1), nan)  # [B]
    return precision, recall, positives, num_correct


def lift_over_base_rate(precision: torch.Tensor, correct: torch.Tensor, buckets: torch.Tensor, num_buckets=3):
    """Base rate = pooled share of correct samples in each bucket; lift = precision / base rate (1 = a judge that
    validates at random; precision alone is capped by the base rate in a hard bucket). nan when undefined. [B], [B]
    (reconstruction: ours, to read a hard bucket's precision)"""
    counts = torch.zeros(num_buckets).index_add_(0, buckets, torch.full((len(buckets),), float(correct.shape[1])))
    num_correct = torch.zeros(num_buckets).index_add_(0, buckets, correct.float().sum(1))  # [B]
    nan = torch.full((num_buckets,), math.nan)
    base_rate = torch.where(counts > 0, num_correct / counts.clamp(min=1), nan)  # [B]
    lift = torch.where(base_rate > 0, precision / base_rate.clamp(min=1e-12), nan)  # [B]
    return base_rate, lift


# ALGO LOGIC: the toy: chain addition, paragraphs, first-error labels, judge items [toy] -----------------------------
TASK = ChainAddition()
CORRUPTION_OFFSETS = (-10, -2, -1, 1, 2, 10)  # how far a corrupted paragraph's value is off (kept within 0..99)


def toy_paragraphs(solution: str) -> list[str]:
    """The `;`-separated steps before the first `#`, then the `# answer` paragraph (when there is one)."""
    body, hash_, rest = solution.partition("#")
    return [s.strip() for s in body.split(";") if s.strip()] + ([f"# {rest.strip()}".strip()] if hash_ else [])


def toy_first_error(problem: str, solution: str) -> int:
    """Earliest wrong paragraph of a toy solution (-1 if none); a missing `#` paragraph is wrong at len(steps)."""
    steps = TASK.step_correctness(problem, solution)
    answer_ok = "#" in solution and TASK.score(problem, solution) == 1.0
    ok = steps + [answer_ok]
    return ok.index(False) if False in ok else -1


def toy_judge_prompt(problem: str, paragraphs: list[str]) -> str:
    """`Q <problem> A step 0 : ... step 1 : ...`: the critique prompt in the tiny vocabulary."""
    return f"Q {problem} A {format_paragraphs(paragraphs, style='toy')}"


def toy_solution(terms: list[int], error_at: int = -1, offset: int = 0) -> tuple[str, list[int]]:
    """A solution whose paragraph `error_at` is off by `offset`, later steps consistent; also its claimed values."""
    claimed = []
    total = terms[0]
    for j, x in enumerate(terms[1:]):
        result = total + x + (offset if j == error_at else 0)
        claimed.append(result)
        total = result
    answer = total + (offset if error_at == len(terms) - 1 else 0)
    steps = [f"{a} + {x} = {c} ;" for a, x, c in zip([terms[0]] + claimed[:-1], terms[1:], claimed)]
    return " ".join(steps) + f" # {answer}", claimed + [answer]


def toy_judgment(terms: list[int], claimed: list[int]) -> str:
    """Target check per paragraph: the judge's own running sum, the claimed value, ok/bad; then `answer valid|j`."""
    truth = list(np.cumsum(terms)[1:]) + [sum(terms)]
    marks = ["ok" if c == t else "bad" for c, t in zip(claimed, truth)]
    verdict = "valid" if "bad" not in marks else str(marks.index("bad"))
    return " ".join(f"{t} {c} {m}" for c, t, m in zip(claimed, truth, marks)) + f" answer {verdict}"


def toy_judge_item(problem: str, rng: random.Random, corrupt: bool) -> tuple[str, str, int]:
    """(judge prompt, target judgment, first-error label) for a reference or a one-paragraph corruption."""
    terms = TASK.terms(problem)
    error_at = -1  # no error
    offset = 0
    if corrupt:
        error_at = rng.randrange(len(terms))  # len(terms) - 1 steps + the answer paragraph
        true_value = sum(terms[: error_at + 2]) if error_at < len(terms) - 1 else sum(terms)
        offset = rng.choice([o for o in CORRUPTION_OFFSETS if 0 <= true_value + o <= 99])
    solution, claimed = toy_solution(terms, error_at, offset)
    return toy_judge_prompt(problem, toy_paragraphs(solution)), toy_judgment(terms, claimed), error_at


def all_ok_judgment(problem: str, solution: str) -> str:
    """The judgment that endorses the solution: per paragraph its claimed value twice and ok, then `answer valid`."""
    claimed = [p.split()[-1] for p in toy_paragraphs(solution)] or ["?"]
    return " ".join(f"{c} {c} ok" for c in claimed) + " answer valid"


# ALGO LOGIC: the toy's multitask warm start (solve + judge sequences) [toy] -------------------------------------------
SOLVE_JUDGE_VERSION = 2  # bump when the solve / judge sequences below change: the cache key holds it
WARMSTART_PROBLEMS = 20000  # training problems the warm start draws its solve and judge items from


@functools.cache
def warm_start_problems(seed: int, judge_max_terms: int) -> tuple[list[str], list[str]]:
    """The warm start's training problems (solve items) and those with at most `judge_max_terms` terms (judge items)."""
    problems = TASK.dataset(WARMSTART_PROBLEMS, seed=seed, split="train")["prompt"]
    return problems, [p for p in problems if len(TASK.terms(p)) <= judge_max_terms]


def solve_judge_rows(batch_size: int, judge_fraction: float, judge_max_terms: int, seed: int):
    """`sft_rows(step)` for shared.warmstart.warm_start: each step a judge sub-batch and a solve sub-batch (judge
    sequences are ~1.6x longer, so two sub-batches pad less; warm_start weights their losses by sequences)."""
    rng = random.Random(seed)

    def rows(step: int) -> list[tuple[list[str], list[str]]]:
        problems, judge_problems = warm_start_problems(seed, judge_max_terms)
        num_judge = sum(rng.random() < judge_fraction for _ in range(batch_size))
        # judge items: 50% references, 50% one corrupted paragraph; solve items: the reference solution
        judge = [toy_judge_item(rng.choice(judge_problems), rng, rng.random() < 0.5) for _ in range(num_judge)]
        solve = [rng.choice(problems) for _ in range(batch_size - num_judge)]
        judge_rows = ([item[0] for item in judge], [item[1] for item in judge])
        solve_rows = (solve, [toy_solution(TASK.terms(problem))[0] for problem in solve])
        return [judge_rows, solve_rows]

    return rows


def multitask_warm_start(args: Args, judge_max_terms: int = TASK.max_terms) -> Path:
    """The toy model: the tiny LM after SFT on solve + judge sequences, shared.warmstart.warm_start's folder (cached
    by its recipe, which names the mix)."""
    mix = {
        "mix": "self_prm solve + judge",
        "judge_fraction": args.warmstart_judge_fraction,
        "judge_max_terms": judge_max_terms,
        "version": SOLVE_JUDGE_VERSION,
    }
    rows = solve_judge_rows(
        args.warmstart_batch_size, args.warmstart_judge_fraction, judge_max_terms, args.warmstart_seed
    )
    return warm_start(
        TASK.name,
        seed=args.warmstart_seed,
        steps=args.warmstart_steps,
        batch_size=args.warmstart_batch_size,
        lr=args.warmstart_learning_rate,
        sft_rows=rows,
        sft_rows_recipe=mix,
    )


# TRY NOT TO MODIFY: generation and teacher-forced log-probs -----------------------------------------------------------
def generate(
    model,
    tokenizer,
    prompts,
    args,
    num_samples=1,
    greedy=False,
    max_new_tokens=None,
    on_chunk=None,
    on_first_chunk=None,
    name=None,
    **sampling,
):
    """Batched `shared.lm.sample` in chunks of --gen-batch-size sequences; texts prompt-major, and token counts.
    `on_chunk(seconds, sequences)` runs after every chunk, `on_first_chunk(texts)` once after the first; with `name`
    a progress bar counts the chunks."""
    texts = []
    tokens = 0
    per_call = max(1, args.gen_batch_size // num_samples)
    progress = Progress(name, total=math.ceil(len(prompts) / per_call)) if name else None
    for lo in range(0, len(prompts), per_call):
        chunk_start = time.time()
        out = sample(
            model,
            tokenizer,
            prompts[lo : lo + per_call],
            num_samples=num_samples,
            greedy=greedy,
            max_new_tokens=max_new_tokens or args.max_new_tokens,
            chat=args.chat,
            **sampling,
        )
        texts += out.texts
        tokens += int(out.completion_mask.sum())
        if on_chunk is not None:
            on_chunk(time.time() - chunk_start, len(out.texts))
        if on_first_chunk is not None and lo == 0:
            on_first_chunk(out.texts)
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.done(f"{len(texts)} sequences, {tokens} tokens")
    return texts, tokens


@torch.no_grad()
def sequence_logprob(model, tokenizer, prompts, targets, batch_size=512, name=None) -> torch.Tensor:
    """Sum of log-probs of `targets` given `prompts` (teacher-forced, completion tokens + EOS). [N]"""
    out = []
    progress = Progress(name, total=math.ceil(len(prompts) / batch_size)) if name else None
    for lo in range(0, len(prompts), batch_size):
        chunk = slice(lo, lo + batch_size)
        ids, mask, pos, labels = sft_batch(tokenizer, prompts[chunk], targets[chunk], device=model.device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].float()  # [B, T-1, V]
        target = labels[:, 1:]  # [B, T-1]
        logp = logits.log_softmax(-1).gather(2, target.clamp(min=0)[:, :, None]).squeeze(2)  # [B, T-1]
        out.append((logp * (target != -100)).sum(1).cpu())  # [B]
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.done()
    return torch.cat(out)


def completion_logprob(model, out) -> torch.Tensor:
    """Mean per-token log-prob of each sampled completion (with grad), from one forward over prompt + completion. [N]"""
    ids = torch.cat([out.prompt_ids, out.completion_ids], 1)  # [N, P+T]
    mask = torch.cat([out.prompt_mask, out.completion_mask], 1)  # [N, P+T]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    width = out.completion_ids.shape[1]
    logits = logits[:, -width - 1 : -1].float()  # [N, T] positions that predict the completion tokens
    logp = logits.log_softmax(-1).gather(2, out.completion_ids[:, :, None]).squeeze(2)  # [N, T]
    return (logp * out.completion_mask).sum(1) / out.completion_mask.sum(1).clamp(min=1)  # [N]


# TRY NOT TO MODIFY: option checks and data ----------------------------------------------------------------------------
def check_args(args: Args) -> None:
    """Every bad option fails here, before data or models are loaded."""
    if args.k_max < 1 or args.k_max & (args.k_max - 1):
        fail(f"--k-max {args.k_max} is not a power of two: k runs over 1, 2, 4, ..., k_max (e.g. --k-max 16)")
    if args.k_max > args.num_samples:
        fail(f"--k-max {args.k_max} is larger than the pool --num-samples {args.num_samples}: raise the pool")
    if args.num_problems < 1:
        fail(f"--num-problems {args.num_problems}: the problem list is empty; ask for at least 1 problem")
    if not all(0.0 <= q <= 1.0 for q in args.noise_rates):
        fail(f"--noise-rates {args.noise_rates}: flip probabilities must lie in [0, 1]")
    lo, hi = args.bucket_edges
    if not 0.0 <= lo < hi <= 1.0:
        fail(f"--bucket-edges {args.bucket_edges}: need 0 <= lo < hi <= 1")
    if args.temperature <= 0 or not 0 < args.top_p <= 1:
        fail("--temperature must be > 0 and --top-p in (0, 1]")
    if min(args.max_new_tokens, args.judge_max_new_tokens, args.gen_batch_size, args.num_pb_items) < 1:
        fail("--max-new-tokens, --judge-max-new-tokens, --gen-batch-size and --num-pb-items must be >= 1")
    toy = args.dataset_name.startswith("tiny:")
    if toy and args.dataset_name != "tiny:chain_addition":
        fail(f"--dataset-name {args.dataset_name!r}: the toy formats exist for tiny:chain_addition only")
    check_judge_template(judge_template_text(args))
    if args.soft_score == "path" and not toy:
        fail("--soft-score path needs the toy's known judgment format: use votes (or none) on a real dataset")
    if args.soft_score == "votes" and args.soft_votes < 1:
        fail(f"--soft-votes {args.soft_votes}: --soft-score votes needs at least 1 judgment per sample")
    if args.coevolve and not (toy and args.model_name == TOY_MODEL):
        fail("--coevolve is the toy's experiment: keep the default --model-name and --dataset-name")
    if args.coevolve and (args.coevolve_prompts < 1 or args.coevolve_group < 2):
        fail("--coevolve-prompts must be >= 1 and --coevolve-group >= 2 (GRPO z-scores rewards within a group)")
    if args.model_name.startswith("tiny") and args.model_name != TOY_MODEL:
        fail(f"--model-name {args.model_name!r}: the toy model is {TOY_MODEL}; else pass a folder or a hub id")
    rates = (
        ("--warmstart-learning-rate", args.warmstart_learning_rate),
        ("--coevolve-learning-rate", args.coevolve_learning_rate),
    )
    for flag, rate in rates:
        if not (rate > 0 and math.isfinite(rate)):
            fail(f"{flag} {rate}: a learning rate must be a positive finite number (e.g. {flag} 3e-3)")
    if args.warmstart_steps < 1 or not 0.0 < args.warmstart_judge_fraction < 1.0:
        fail("--warmstart-steps must be >= 1 and --warmstart-judge-fraction in (0, 1): the warm start needs both tasks")


def judge_template_text(args: Args) -> str:
    """The critique template: --judge-template-file read as it is (e.g. ProcessBench's), else --judge-template."""
    if args.judge_template_file is None:
        return args.judge_template
    path = Path(args.judge_template_file)
    if not path.is_file():
        fail(f"--judge-template-file {path}: no such file (e.g. ProcessBench's code/templates/critique_template.txt)")
    return path.read_text()


def check_judge_template(template: str) -> None:
    """The template must fill with str.format(problem=..., tagged_response=...) and contain both placeholders."""
    try:
        filled = template.format(problem="\0P", tagged_response="\0T")
    except (KeyError, IndexError, ValueError) as error:
        fail(
            f"the judge template does not fill with str.format() ({type(error).__name__}: {error}): it is filled as "
            "ProcessBench fills its file, so write literal braces doubled (\\boxed{{}}) and use only the "
            "placeholders {problem} and {tagged_response}"
        )
    if "\0P" not in filled or "\0T" not in filled:
        fail("the judge template needs the placeholders {problem} and {tagged_response}")


def load_problems(args: Args, toy: bool) -> tuple[list[str], list[str]]:
    """Problems and normalised gold answers; a missing column or an empty list fails here."""
    columns = ["prompt", "answer"] if toy else [args.problem_column, args.answer_column]
    # real data: read it whole, check it is not empty, then pick (load_data's own shuffle breaks on 0 rows)
    data = load_data(
        args.dataset_name,
        split=args.split,
        required_columns=columns,
        seed=args.seed,
        num_examples=args.num_problems if toy else None,
    )
    if len(data) == 0:
        fail(f"{args.dataset_name!r} ({args.split}) has no problems: the problem list is empty")
    if not toy:
        data = data.shuffle(seed=args.seed).select(range(min(args.num_problems, len(data))))
    gold = [str(a) if toy else normalize_answer(str(a)) for a in data[columns[1]]]
    return list(data[columns[0]]), gold


# ALGO LOGIC: the judge on labelled items, and the co-evolution arm ----------------------------------------------------
def judge_f1(model, tokenizer, args, prompts, labels, parse, name=None) -> tuple[float, float, float]:
    """Greedy judgments of labelled items [PB run_eval.py: temperature 0], then (acc_err, acc_cor, F1)."""
    texts, _ = generate(
        model, tokenizer, prompts, args, greedy=True, max_new_tokens=args.judge_max_new_tokens, name=name
    )
    return processbench_f1([parse(t) for t in texts], labels)


def f1_row(items: str, f1: tuple[float, float, float]) -> dict:
    """A row of the judge table: the items judged and their (acc_err, acc_cor, F1)."""
    return {"judge items": items, "acc_err": f1[0], "acc_cor": f1[1], "F1": f1[2]}


def synthetic_processbench(args: Args, seed: int, n: int, task: ChainAddition = TASK):
    """Toy ProcessBench items on held-out problems: alternately a reference and a one-paragraph corruption [toy]."""
    rng = random.Random(seed)
    items = [toy_judge_item(p, rng, corrupt=i % 2 == 1) for i, p in enumerate(task.dataset(n, seed, "test")["prompt"])]
    return [item[0] for item in items], [item[2] for item in items]


def coevolve(args: Args, device, dtype, run: RunLogger) -> list[dict]:
    """The co-evolution analysis on the toy [paper: outcome-only RL makes solving and judging rise
    together]: a judge warmed up on 3-term problems only, outcome-reward GRPO on 5-term problems, its 5-term solving
    and judge F1 before and after (the arm `coevolve`)."""
    model, tokenizer = load_causal_lm(
        str(multitask_warm_start(args, judge_max_terms=COEVOLVE_JUDGE_TERMS)), device=device, dtype=dtype
    )
    hard = ChainAddition(min_terms=COEVOLVE_TERMS, max_terms=COEVOLVE_TERMS)
    train = hard.dataset(2000, seed=args.seed, split="train")["prompt"]
    test = hard.dataset(200, seed=args.seed, split="test")
    pb_prompts, pb_labels = synthetic_processbench(args, args.seed + 7, 200, hard)

    def measure(step: int) -> dict:
        model.eval()
        texts, _ = generate(model, tokenizer, test["prompt"], args, greedy=True)
        solve = float(np.mean([hard.score(p, t) for p, t in zip(test["prompt"], texts)]))
        f1 = judge_f1(model, tokenizer, args, pb_prompts, pb_labels, parse_toy_verdict)
        run.log(step, {"eval/solve_accuracy": solve, "judge/f1": f1[2]}, echo=True, arm="coevolve")
        return {"solve acc K=5": solve, "judge acc_err": f1[0], "judge acc_cor": f1[1], "judge F1": f1[2]}

    rows = [{"checkpoint": "before GRPO", **measure(0)}]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.coevolve_learning_rate, weight_decay=0.0)
    rng = random.Random(args.seed)
    group = args.coevolve_group
    for step in range(1, args.coevolve_steps + 1):
        # sample G completions for each of the step's prompts, on-policy
        prompts = rng.sample(train, args.coevolve_prompts)
        model.eval()
        out = sample(model, tokenizer, prompts, num_samples=group, max_new_tokens=args.max_new_tokens, temperature=1.0)
        # exact-match reward, advantages z-scored within each group of G
        rewards = torch.tensor([hard.score(p, t) for p, t in zip(np.repeat(prompts, group), out.texts)])  # [B*G]
        grouped = rewards.view(-1, group)  # [B, G]
        centred = grouped - grouped.mean(1, keepdim=True)  # [B, G]
        advantages = (centred / (grouped.std(1, keepdim=True) + GRPO_STD_EPS)).view(-1)  # [B*G]
        # policy gradient on the mean token log-prob, no KL, no clipping (one update per sample)
        model.train()
        loss = -(advantages.to(device) * completion_logprob(model, out)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        run.log(step, {"charts/reward": rewards.mean().item(), "losses/grpo_loss": loss.item()}, arm="coevolve")
    rows.append({"checkpoint": f"after {args.coevolve_steps} GRPO steps", **measure(args.coevolve_steps)})
    return rows


def main(args: Args) -> dict:
    # TRY NOT TO MODIFY: option checks, seeding, data, the run folder
    start_time = time.time()
    check_args(args)
    torch.set_num_threads(args.num_threads)
    seed_everything(args.seed)
    device = pick_device(args.cuda)
    dtype = pick_dtype(args.dtype, device)
    toy = args.dataset_name.startswith("tiny:")
    problems, gold = load_problems(args, toy)
    P, N, K = len(problems), args.num_samples, args.k_max
    # 0. the frozen policy, which is also the judge (the toy: the multitask warm start)
    if args.model_name == TOY_MODEL:
        model, tokenizer = load_causal_lm(str(multitask_warm_start(args)), device=device, dtype=dtype)
    else:
        model, tokenizer = load_causal_lm(args.model_name, device=device, dtype=dtype, seed=args.seed)
    model.eval().requires_grad_(False)
    seed_everything(args.seed)  # the pool does not depend on whether the warm start was cached
    name = args.dataset_name.replace(":", "-").replace("/", "-")
    run = RunLogger(
        make_run_name(f"self_prm-{name}", args.exp_name, args.seed),
        args,
        track=args.track,
        show=("judge/valid_rate", "eval/solve_accuracy", "judge/f1", "charts/reward"),
        total_steps=args.coevolve_steps if args.coevolve else None,
    )
    timer = time.time()
    chunk_counter = iter(range(1, 2**62))

    def timed(stage: str):  # one metrics row per generation chunk: the pass has no loss to time steps by
        def log(seconds: float, sequences: int) -> None:
            row = {f"timing/{stage}_chunk_seconds": seconds, f"timing/{stage}_sequences": sequences}
            run.log(next(chunk_counter), row, echo=False)

        return log

    # ALGO LOGIC: Self-PRM, inference only [paper]
    # 1. sample a pool of N solutions per problem from the frozen policy (one pool; nested prefixes for each k)
    solve_prompts = problems if toy else [p + SOLVE_SUFFIX for p in problems]
    sampling = dict(temperature=args.temperature, top_p=args.top_p, on_chunk=timed("solve"), name="sampling")
    texts, solve_tokens = generate(model, tokenizer, solve_prompts, args, num_samples=N, **sampling)
    texts = [texts[p * N : (p + 1) * N] for p in range(P)]  # [P][N] prompt-major
    if toy:
        answers = [[None if (a := TASK.parse_answer(t)) is None else str(a) for t in row] for row in texts]
    else:
        answers = [[normalize_answer(last_boxed(t)) for t in row] for row in texts]
    ids, slot_correct = answer_ids(answers, gold)  # [P, N], [P, N]
    correct = slot_correct.gather(1, ids.clamp(min=0)) & (ids >= 0)  # [P, N] sample answer is right
    print(
        f"1. sampled {P} x {N} solutions in {time.time() - timer:.1f} s ({solve_tokens} tokens); pass@1 "
        f"{correct.float().mean():.3f}",
        flush=True,
    )

    # 2. the same model judges each of its first K samples [PB run_eval.py: greedy, one judgment], verdict parsed
    timer = time.time()
    judged = [(problems[p], texts[p][i]) for p in range(P) for i in range(K)]  # [P*K] problem-major
    if toy:
        judge_prompts = [toy_judge_prompt(q, toy_paragraphs(y)) for q, y in judged]
        parse = parse_toy_verdict
    else:
        template = judge_template_text(args)
        judge_prompts = [judge_prompt(template, q, split_paragraphs(y, args.judge_target)) for q, y in judged]
        parse = parse_verdict

    def warn_if_unparsed(first_judgments: list[str]) -> None:
        unparsed = float(np.mean([parse(j) is None for j in first_judgments]))
        run.log(1, {"judge/unparsed_rate_first_batch": unparsed}, echo=False)
        if unparsed > UNPARSED_WARNING:
            print(
                f"warning: {100 * unparsed:.0f}% of the first {len(first_judgments)} judgments have no parsable "
                f"verdict (> {100 * UNPARSED_WARNING:.0f}%). An unparsed verdict counts as not valid, so Self-PRM is "
                f"falling back to majority vote. Raise --judge-max-new-tokens (now {args.judge_max_new_tokens}; "
                "ProcessBench uses 8192, 32768 for QwQ-type models) or check --judge-template and the samples.",
                flush=True,
            )

    sampling = dict(greedy=True, max_new_tokens=args.judge_max_new_tokens, on_chunk=timed("judge"), name="judging")
    judgments, judge_tokens = generate(
        model, tokenizer, judge_prompts, args, on_first_chunk=warn_if_unparsed, **sampling
    )
    verdicts = [parse(j) for j in judgments]
    valid = torch.tensor([v == -1 for v in verdicts]).view(P, K)  # [P, K] self-verdict v_i
    print(
        f"2. judged {P * K} samples in {time.time() - timer:.1f} s ({judge_tokens} tokens); valid rate "
        f"{valid.float().mean():.3f}, unparsed {np.mean([v is None for v in verdicts]):.3f}",
        flush=True,
    )

    # 3. soft self-score (reconstruction): P(all-ok judgment) on the toy, or the share of -1 among sampled judgments
    soft_mode = ("path" if toy else "none") if args.soft_score == "auto" else args.soft_score
    weights = {"self_prm": valid.float()}  # [P, K] per selector: who votes, with which weight
    if soft_mode == "path":
        endorse = [all_ok_judgment(q, y) for q, y in judged]
        logprob = sequence_logprob(model, tokenizer, judge_prompts, endorse, name="soft score")  # [P*K]
        weights["self_prm_soft"] = logprob.exp().view(P, K)
    elif soft_mode == "votes":
        sampling = dict(temperature=VOTE_TEMPERATURE, top_p=VOTE_TOP_P, max_new_tokens=args.judge_max_new_tokens)
        votes, _ = generate(
            model, tokenizer, judge_prompts, args, num_samples=args.soft_votes, name="soft votes", **sampling
        )
        weights["self_prm_soft"] = torch.tensor([parse(v) == -1 for v in votes]).float().view(P, K, -1).mean(2)
    # 4. controls: an oracle judge (v = correct) and noisy oracles (each verdict flipped with probability q) [toy]
    correct_k = correct[:, :K]  # [P, K]
    weights["oracle_judge"] = correct_k.float()
    generator = torch.Generator().manual_seed(args.seed)
    noisy = {q: correct_k ^ (torch.rand(P, K, generator=generator) < q) for q in args.noise_rates}
    weights.update({f"noisy_{q:g}": v.float() for q, v in noisy.items()})

    # 5. selection over nested k = 1, 2, 4, ..., K (prefixes of the one pool); each selector is an arm
    names = {
        "pass1": "pass@1",
        "majority": "MV",
        "self_prm": "Self-PRM",
        "self_prm_soft": "Self-PRM soft",
        "oracle_judge": "oracle judge",
        "oracle": "pass@k",
        **{f"noisy_{q:g}": f"noisy {q:g}" for q in args.noise_rates},
    }
    selection_rows = []
    for k in [2**e for e in range(int(math.log2(K)) + 1)]:
        accuracy = selection_accuracy(ids[:, :K], slot_correct, weights, k)
        for selector, value in accuracy.items():
            run.log(k, {"eval/accuracy": value}, echo=False, arm=selector)
        selection_rows.append({"k": k, "problems": P, **{names[s]: v for s, v in accuracy.items()}})

    # 6. the judging side: ProcessBench acc_err / acc_cor / F1, own-sample F1, precision / recall by difficulty
    judge_rows = []
    if toy:
        pb_prompts, pb_labels = synthetic_processbench(args, args.seed + 1, args.num_pb_items)
        f1 = judge_f1(model, tokenizer, args, pb_prompts, pb_labels, parse_toy_verdict, name="ProcessBench items")
        judge_rows.append(f1_row(f"synthetic ProcessBench ({len(pb_labels)})", f1))
        labels = [toy_first_error(q, y) for q, y in judged]
        share = 100 * np.mean(np.array(labels) >= 0)
        own = processbench_f1(verdicts, labels)
        judge_rows.append(f1_row(f"own samples ({len(labels)}, {share:.0f}% with an error)", own))
        run.log(K, {"judge/own_f1": own[2]}, echo=False)
    elif args.processbench_name:
        pb = load_data(
            args.processbench_name,
            split=args.processbench_split,
            num_examples=args.num_pb_items,
            required_columns=["problem", "steps", "label"],
            seed=args.seed,
        )
        template = judge_template_text(args)
        prompts = [judge_prompt(template, q, list(s)) for q, s in zip(pb["problem"], pb["steps"])]
        f1 = judge_f1(model, tokenizer, args, prompts, list(pb["label"]), parse_verdict, name="ProcessBench items")
        judge_rows.append(f1_row(f"{args.processbench_name}:{args.processbench_split} ({len(pb)})", f1))
    if judge_rows:
        run.log(K, {f"judge/{k.lower()}": judge_rows[0][k] for k in ("acc_err", "acc_cor", "F1")}, echo=False)
    buckets = difficulty_buckets(correct_k, args.bucket_edges)  # [P]
    judges = {"self": valid, **{f"noisy {q:g}": v for q, v in noisy.items()}}
    stats = {j: precision_recall_by_bucket(v, correct_k, buckets) for j, v in judges.items()}
    base_rates, lifts = lift_over_base_rate(stats["self"][0], correct_k, buckets)  # [3], [3]
    bucket_rows = []
    for b, key in enumerate(["hard", "middle", "easy"]):
        precision, recall, positives, num_correct = (s[b].item() for s in stats["self"])
        base_rate = base_rates[b].item()
        lift = lifts[b].item()
        bucket = {0: f"hard (acc <= {args.bucket_edges[0]:g})", 2: f"easy (acc >= {args.bucket_edges[1]:g})"}
        row = {
            "bucket": bucket.get(b, "middle"),
            "problems": int((buckets == b).sum()),
            "correct": int(num_correct),
            "self positives": int(positives),
            "base rate": base_rate,
            "self precision": precision,
            "lift": lift,
            "self recall": recall,
        }
        bucket_rows.append({**row, **{f"{j} precision": s[0][b].item() for j, s in stats.items() if j != "self"}})
        metrics = {"precision": precision, "recall": recall, "positives": positives, "base_rate": base_rate}
        metrics["lift"] = lift
        run.log(K, {f"judge/{m}/{key}": v for m, v in metrics.items()}, echo=False)
    metrics = {
        "judge/valid_rate": valid.float().mean().item(),
        "charts/solve_tokens": solve_tokens,
        "charts/judge_tokens": judge_tokens,
    }
    run.log(K, metrics, echo=True)

    # 7. optional co-evolution arm [paper: co-evolution]: outcome RL on harder problems, the judge's F1 around it
    coevolve_rows = coevolve(args, device, dtype, run) if args.coevolve else []

    # TRY NOT TO MODIFY: samples and the tables
    lines = []
    for p in range(min(P, 8)):
        lines.append(f"### {problems[p]}   (gold {gold[p]})")
        for i in range(min(K, 4)):
            lines.append(f"sample: {texts[p][i]}\n  answer {answers[p][i]} | judgment: {judgments[p * K + i]}")
    run.save_text("samples.txt", "\n".join(lines) + "\n")
    summary = (
        f"Self-PRM on {args.dataset_name} with {args.model_name}, seed {args.seed}: accuracy of the selected answer "
        f"over {P} problems (nested prefixes of one pool of {N}; SE of a difference ~ {100 / math.sqrt(P) / 2:.0f} "
        f"points or more). Self-PRM soft = {soft_mode}.\n\n{format_table(selection_rows)}\n\n"
        f"The model as a judge (greedy, verdict = earliest wrong paragraph or -1):\n\n"
        f"{format_table(judge_rows, floatfmt='.1f') if judge_rows else '(no judge items on this path)'}\n\n"
        f"Self-verdict precision / recall by difficulty (own accuracy over the first {K} samples; pooled; base rate = "
        f"share of correct samples in the bucket, the precision of a judge that validates at random; lift = "
        f"precision / base rate; nan = undefined):\n\n{format_table(bucket_rows)}\n\n"
        f"valid rate {valid.float().mean():.3f}; tokens: solutions {solve_tokens}, judgments {judge_tokens}; total "
        f"time incl. model load / warm start "
        f"{time.time() - start_time:.0f} s"
    )
    if coevolve_rows:
        summary += f"\n\nCo-evolution (judge warmed up on K=3 only; GRPO on K=5):\n\n{format_table(coevolve_rows)}"
    run.finish(summary)
    return {
        "run_dir": run.dir,
        "selection": selection_rows,
        "judge": judge_rows,
        "buckets": bucket_rows,
        "coevolve": coevolve_rows,
        "model": model,
        "weights": weights,
        "ids": ids,
        "slot_correct": slot_correct,
    }


if __name__ == "__main__":
    main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph
