# arXiv:2505.11227 | README: #self-prm
"""Self-PRM (Feng et al., "Is PRM Necessary? Problem-Solving RL Implicitly Induces PRM Capability in LLMs",
NeurIPS 2025, https://arxiv.org/abs/2505.11227). No official code exists; our method notes [card] mark
the reconstructed parts, and every one of them is a flag here, tagged (reconstructed) in --help.

Idea: a policy trained with outcome-only RL is already a good process judge. Self-PRM samples k solutions per problem
from the frozen policy, lets the SAME model judge each of its own solutions with a ProcessBench critique prompt
(indexed paragraphs; "index of the earliest wrong paragraph, or -1" in the last \\boxed{}), and votes only among the
solutions it validated. The paper: gains appear at large k, and self-judgment precision on hard problems is < 10%.

    v_i = 1[ judge(q, y_i) == -1 ]                                    self-verdict (a None verdict is not valid)
    MV_k = argmax_a sum_{i<=k} 1[a_i = a]                             (a_i = None never votes)
    SelfPRM_k = argmax_a sum_{i<=k} v_i 1[a_i = a],  or MV_k when no validated sample has a parsable answer
    soft: argmax_a sum_{i<=k} s_i 1[a_i = a],  s_i = P(valid)          (reconstructed, --soft-score)
    ties (every selector): the answer seen first in sample order among the samples that vote
    ProcessBench: acc_err = % of erroneous items with pred == e*, acc_cor = % of correct items with pred == -1,
                  F1 = 2 acc_err acc_cor / (acc_err + acc_cor)         (0 when both are 0)
    precision_b = #(v=1, correct) / #(v=1),  recall_b = #(v=1, correct) / #correct, pooled over the samples of the
                  problems in difficulty bucket b (own accuracy over the pool); undefined (nan) with no positives

Implementation details ([card] = rewardlab's method notes; [PB] = the ProcessBench code's critique prompt, answer
parsing and F1, as the card describes them):
1. Judge prompt [PB, card 3.1]: the solution split into paragraphs at blank lines, paragraph j wrapped as
   `<paragraph_j>\\n...\\n</paragraph_j>` (j from 0, blank-line joined), inserted into a critique template sent as one
   user turn of the chat template. The template is filled as ProcessBench fills its file, with str.format(problem=,
   tagged_response=) (literal braces doubled: `\\boxed{{}}`), so the official file works as it is through
   --judge-template-file (e.g. ProcessBench's code/templates/critique_template.txt). The default --judge-template
   PARAPHRASES ProcessBench's (we do not copy its text). A template that does not fill fails at start-up.
2. Parsing: the last COMPLETE `\\boxed{...}`, braces balanced (`\\boxed{\\frac{14}{3}}` -> `\\frac{14}{3}`; a box
   cut off by the token limit is skipped; ProcessBench's own `[^}]*` pattern would cut nested answers short, which
   is harmless for its integer verdicts only). Verdicts are strict: an integer or None (`\\boxed{2.}` is None). A
   None verdict is "not valid" for Self-PRM and wrong for F1 [card 5]. Answers (solutions and gold alike) are
   normalised for MATH formats before voting: `\\dfrac` / `\\tfrac` -> `\\frac`, `\\frac12` -> `\\frac{1}{2}`,
   `\\text{..}` unwrapped, `$`, spaces, `\\left` / `\\right`, LaTeX spacing, degrees, `%` and a trailing `.` dropped,
   plain numbers as numbers (`1,000` -> 1000, `3.0` -> 3). No symbolic equivalence (`0.5` != `\\frac{1}{2}`).
   At the first judge batch a warning says when more than 20 % of the verdicts do not parse
   (judge/unparsed_rate_first_batch): Self-PRM then quietly falls back to majority vote, usually because
   --judge-max-new-tokens cut the judgments short.
3. (reconstructed) --judge-target final|full: judge the text after the last `</think>` (final) or the whole sample.
4. Selection [card 3.3]: one pool of --num-samples per problem, nested prefixes k = 1, 2, 4, ..., --k-max. Rules:
   an unparsable answer never votes; Self-PRM falls back to plain MV when no validated sample has a parsable answer;
   ties go to the answer seen first in sample order among the samples that vote (among the validated ones for
   Self-PRM). pass@1 = mean accuracy of the first k samples (so every selector agrees at k = 1); oracle = pass@k.
   Vectorised over problems: answers become per-problem slot ids, votes are one-hot sums [P, k, A].
5. Controls [card 6]: an oracle judge (v_i = answer correct; Self-PRM then equals oracle pass@k, tested) and noisy
   oracles (each oracle verdict flipped with probability --noise-rates, seeded).
6. (reconstructed) Soft variant, --soft-score: `path` = probability of the judge's all-ok judgment of the sample
   (teacher-forced, toy only [card 6]); `votes` = share of --soft-votes judgments at T=1, top_p 0.9 that parse to -1
   [card 3.3, PB voting variant]; score-weighted vote, MV fallback when every score is 0. `votes` costs --soft-votes
   more judgments per sample, 5x the judge compute at 4, so `auto` is `path` on the toy (one teacher-forced pass) and
   `none` on a real dataset: ask for `votes` explicitly.
7. Precision / recall [card 3.4]: pooled within a bucket of problems by the policy's own accuracy over the first
   --k-max samples (hard <= 0.25 < middle < 0.75 <= easy, --bucket-edges); undefined buckets print `nan` with their
   counts and are never averaged as 0. Precision is capped by the bucket's base rate (its share of correct samples,
   the precision of a judge that validates at random): a hard bucket's precision is low whatever the judge does, so
   the table also gives the base rate and the lift = precision / base rate (1 = no better than random).
8. SIMPLIFICATION (toy, card 6): the tiny world's chain addition (`add 3 + 4 + 5` -> `3 + 4 = 7 ; 7 + 5 = 12 ; # 12`),
   paragraphs = the `;`-separated steps plus the `# answer` paragraph, written `step j : ...` (the tiny vocabulary has
   no tags; judge prompt `Q <problem> A step 0 : 3 + 4 = 7 step 1 : ...`). The judgment is a short generated check,
   per paragraph the judge's own running sum, the paragraph's claimed value and `ok`/`bad` (`7 7 ok 12 13 bad ...`),
   then `answer valid` (= -1) or `answer j` (earliest wrong paragraph); toy verdicts parse from that, not \\boxed{}.
   (Writing the own sum BEFORE copying the claimed value matters: the other order let the model copy the claim and
   call it ok; synthetic acc_err 7 -> 24 in our runs.) All words are in shared/lm.py's vocabulary.
   First-error labels of the model's own samples come from `ChainAddition.step_correctness` (a step is wrong unless
   its running sum, term and result are all right) plus the answer paragraph (a missing `#` paragraph = error at the
   index after the last step). Nothing is trained by Self-PRM itself.
9. Multitask warm start (this method's, cached under shared.warmstart.CACHE_DIR by its recipe): SFT on solve and
   judge sequences (--ws-judge-fraction judge); judge items are 50% references and 50% with one corrupted paragraph
   (offset +-1, +-2 or +-10, later steps consistent with the wrong value, so the first error is well defined) [card 6].
   DIFFERENCE: 1000 steps at lr 3e-3 instead of the card's 1200 at 2e-3, to fit the 5-minute budget (measured,
   seed 1: lr 2e-3 gave pass@1 0.53 and synthetic F1 38; 3e-3 gave 0.90 and 57). Solve and judge sequences go in
   two sub-batches (less padding), the loss weighted by sequences; prompts are left-padded per batch (the card pads
   to a fixed length; position ids from the mask make that unnecessary).
10. ProcessBench on the toy: synthetic items (the corruption above) on held-out problems; also the judge's F1 on its
   own samples. Real path: --processbench-name (problem, steps, label columns, e.g. Qwen/ProcessBench).
11. --coevolve (optional, card 3.5, toy only): a second warm start whose judge data has only K = 3 terms (solve data
   keeps K = 3..5), then outcome-reward GRPO (exact-match reward, group z-scored advantages, on-policy, no KL, 8
   prompts x 8 samples, 60 steps) on K = 5 problems; K = 5 greedy solving and judge F1 on K = 5 items, before and
   after. Measured, seed 1: the K = 3 judge does not transfer to 5 paragraphs (acc_cor 7, F1 9.3) and GRPO leaves
   it there (F1 10.4 at lr 5e-5, solving 0.870 -> 0.845; at lr 2e-4 F1 8.6, solving -> 0.78): no co-evolution in
   the toy. No chi-square test, no Self-REF, no external-PRM baseline (the card allows dropping it), and the
   card's `--selector` / `--k` flags are replaced by running every selector at every k in one table.
12. Greedy single judgments (no judgment voting) for the hard verdict [card 7 simplification]; judge and solution
   token counts are logged (Self-PRM costs k extra generations).

Metrics: eval/accuracy/<selector>@<k> (pass1, majority, self_prm, self_prm_soft, oracle_judge, noisy_<q>, oracle),
judge/acc_err, judge/acc_cor, judge/f1 (synthetic or --processbench-name), judge/own_f1 (toy), judge/precision/<b>,
judge/recall/<b>, judge/positives/<b>, judge/base_rate/<b>, judge/lift/<b>, judge/valid_rate,
judge/unparsed_rate_first_batch, charts/solve_tokens, charts/judge_tokens, timing/{solve,judge}_chunk_seconds and
timing/{solve,judge}_sequences (one row per generation chunk), losses/grpo_loss, coevolve/reward, coevolve/solve_acc,
coevolve/judge_f1 (--coevolve). Samples go to runs/<run>/samples.txt.

Commands:
    python algos/self_prm.py                                  # offline toy: 150 problems x 16 samples
    python algos/self_prm.py --seed 2 --coevolve              # second seed plus the co-evolution arm
    python algos/self_prm.py --model-name Qwen/QwQ-32B --dataset-name HuggingFaceH4/MATH-500 --split test \
        --num-problems 500 --num-samples 16 --k-max 16 --max-new-tokens 32768 --judge-max-new-tokens 32768 \
        --temperature 0.6 --top-p 0.95 --judge-template-file critique_template.txt --gen-batch-size 64 \
        --processbench-name Qwen/ProcessBench --processbench-split math
    (long-CoT policies need the long budgets: ProcessBench gives QwQ-type judges 32768 new tokens, 8192 otherwise;
    --soft-score votes adds 4 sampled judgments per sample, 5x the judge compute)
Measured (toy defaults, seeds 1 / 2 / 3, re-measured after the real-answer changes; 2 CPU cores
under heavy load from other jobs, so wall times are long: 1382 s with a fresh warm start (150 s of CPU), 114-121 s
cached (19 s of CPU); quiet, earlier: 93 s fresh, ~15 s cached). pass@1 0.90 / 0.87 / 0.91; at k = 16: MV
0.987 / 0.973 / 0.973, Self-PRM 0.987 / 0.967 / 0.973, soft 0.980 / 0.973 / 0.973, oracle judge = pass@16 = 1.000,
noisy 0.1 1.000, noisy 0.3 0.987 / 0.987 / 0.980; Self-PRM - MV in [-0.7, +2.7] points at every k: null within noise.
Synthetic ProcessBench F1 53.4 / 57.5 / 60.0 (acc_err 37-43, acc_cor 99); own samples F1 28 / 19 / 19. Self-verdict
precision hard 0.19 / 0.17 / 0.24 (3 / 4 / 5 problems) at base rates 0.15 / 0.13 / 0.20, i.e. lift 1.30 / 1.37 / 1.19;
middle 0.71 / 0.70 / 0.59 (lift 1.10 / 1.09 / 1.08); easy 0.96 / 0.95 / 0.95 (lift 1.02-1.03): low precision on hard
problems, as in the paper, but most of it is the bucket's base rate; the judge lifts it by 20-37 %. No GPU run yet.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import shared.warmstart as warmstart  # noqa: E402
from shared.data import load_data  # noqa: E402
from shared.lm import build_tiny_lm, load_causal_lm, sample  # noqa: E402
from shared.runs import RunLogger, fail, format_table, make_run_name, pick_device, pick_dtype, seed_everything  # noqa: E402
from shared.tasks import ChainAddition  # noqa: E402

TOY_MODEL = "tiny:solve+judge"
DEFAULT_JUDGE_TEMPLATE = (  # a paraphrase of the ProcessBench critique prompt (pass the official text via the flag)
    "Here is a math problem and a proposed solution. The solution is split into paragraphs, each wrapped in tags and "
    "numbered from 0.\n\n[Math Problem]\n\n{problem}\n\n[Solution]\n\n{tagged_response}\n\nCheck the solution one "
    "paragraph at a time. If a paragraph contains an error, report the index of the EARLIEST such paragraph; if no "
    "paragraph is wrong, report -1.\n\nGive the index as your final answer inside \\boxed{{}}."
)  # a str.format() template like ProcessBench's file: literal braces doubled
UNPARSED_WARNING = 0.2  # warn at the first judge batch when more verdicts than this do not parse
SOLVE_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


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
    threads: int = 1
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
    """problems evaluated [card toy: 150]"""
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
    """solution sampling temperature (unverified in the paper; R1/QwQ usually 0.6) [card toy: 1.0]"""
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
    """(reconstructed) judge the text after the last </think> (final) or the whole sample (full)"""
    soft_score: Literal["auto", "path", "votes", "none"] = "auto"
    """(reconstructed) soft score: P(all-ok judgment) (path, toy only, one teacher-forced pass) or the share of -1
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
    ws_steps: int = 1000
    """multitask warm-start SFT steps (toy) [card: 1200; fewer to fit 5 minutes]"""
    ws_batch_size: int = 64
    """warm-start sequences per step"""
    ws_lr: float = 3e-3
    """warm-start AdamW learning rate (> 0) [card toy: 2e-3; 3e-3 as shared/warmstart.py, better in 1000 steps]"""
    ws_judge_fraction: float = 0.5
    """share of judge sequences in the warm-start batches"""
    ws_seed: int = 0
    """seed of the warm start (fixed, so run seeds share one cached model)"""
    coevolve: bool = False
    """(optional, toy) judge warmed up on K=3 only, GRPO on K=5 solving; judge F1 on K=5 before and after"""
    coevolve_steps: int = 60
    """GRPO steps of --coevolve"""
    coevolve_lr: float = 5e-5
    """GRPO learning rate of --coevolve"""
    coevolve_group: int = 8
    """GRPO completions per prompt (8 prompts per step)"""


# ALGO LOGIC: parsing and prompts --------------------------------------------------------------------------------------
BOXED = "\\boxed{"


def last_boxed(text: str | None) -> str | None:
    """Content of the last complete `\\boxed{...}`, braces balanced (`\\boxed{\\frac{14}{3}}` -> `\\frac{14}{3}`);
    a box whose braces never close (a truncated generation) is skipped; None when no box is complete."""
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
    `\\boxed{2.}`, `\\boxed{paragraph 2}` or `\\boxed{\\text{2}}` are None, as in ProcessBench's int() parse)."""
    content = last_boxed(text)
    if content is None or not re.fullmatch(r"\s*[-+]?\d+\s*", content):
        return None
    return int(content)


def parse_toy_verdict(text: str) -> int | None:
    """Toy judgments end with `answer valid` (-1) or `answer j`; anything else is None."""
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
    as numbers (`1,000` -> `1000`, `3.0` -> `3`). None or an empty answer -> None."""
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
    """ProcessBench tags `<paragraph_j>\\n...\\n</paragraph_j>`, blank-line joined, j from 0; toy: `step j : ...`."""
    if style == "toy":
        return " ".join(f"step {j} : {p}" for j, p in enumerate(paragraphs))
    return "\n\n".join(f"<paragraph_{j}>\n{p}\n</paragraph_{j}>" for j, p in enumerate(paragraphs))


def judge_prompt(template: str, problem: str, paragraphs: list[str]) -> str:
    """The critique prompt, filled as ProcessBench fills its template file: `template.format(problem=...,
    tagged_response=...)`, so literal braces are written doubled (`\\boxed{{}}`) [PB code/run_eval.py]."""
    return template.format(problem=problem, tagged_response=format_paragraphs(paragraphs))


def split_paragraphs(solution: str, target: str = "final") -> list[str]:
    """Blank-line paragraphs of the judged text (after the last </think> for `final`)."""
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
    """argmax_a sum_i w_i 1[a_i = a] per problem; ties -> answer first seen among voters; -1 when nobody votes."""
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
    """Self-PRM: the vote among samples with weight > 0; plain MV where none of them has a parsable answer. [P]"""
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
    """(acc_err, acc_cor, F1) in percent; None predictions are wrong; an empty subset gives nan; F1 = 0 at 0/0."""
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
    """Bucket per problem from its own accuracy over the pool: 0 hard (<= lo), 1 middle, 2 easy (>= hi). [P]"""
    accuracy = correct.float().mean(1)  # [P]
    return torch.where(accuracy <= edges[0], 0, torch.where(accuracy >= edges[1], 2, 1))  # [P]


def precision_recall_by_bucket(verdicts: torch.Tensor, correct: torch.Tensor, buckets: torch.Tensor, num_buckets=3):
    """Pooled per bucket: precision = TP / #(v=1), recall = TP / #correct (nan when undefined), with the counts."""
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
    validates at random; precision alone is capped by the base rate in a hard bucket). nan when undefined. [B], [B]"""
    counts = torch.zeros(num_buckets).index_add_(0, buckets, torch.full((len(buckets),), float(correct.shape[1])))
    num_correct = torch.zeros(num_buckets).index_add_(0, buckets, correct.float().sum(1))  # [B]
    nan = torch.full((num_buckets,), math.nan)
    base_rate = torch.where(counts > 0, num_correct / counts.clamp(min=1), nan)  # [B]
    lift = torch.where(base_rate > 0, precision / base_rate.clamp(min=1e-12), nan)  # [B]
    return base_rate, lift


# The toy: chain addition, paragraphs, first-error labels, judge items ----------------------------------------------
TASK = ChainAddition()


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
    return f"Q {problem} A {format_paragraphs(paragraphs, style='toy')}"


def toy_solution(terms: list[int], error_at: int = -1, offset: int = 0) -> tuple[str, list[int]]:
    """A solution whose paragraph `error_at` is off by `offset`, later steps consistent; also its claimed values."""
    claimed, total = [], terms[0]
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
    error_at, offset = -1, 0
    if corrupt:
        error_at = rng.randrange(len(terms))  # len(terms) - 1 steps + the answer paragraph
        true_value = sum(terms[: error_at + 2]) if error_at < len(terms) - 1 else sum(terms)
        offset = rng.choice([o for o in (-10, -2, -1, 1, 2, 10) if 0 <= true_value + o <= 99])
    solution, claimed = toy_solution(terms, error_at, offset)
    return toy_judge_prompt(problem, toy_paragraphs(solution)), toy_judgment(terms, claimed), error_at


def all_ok_judgment(problem: str, solution: str) -> str:
    """The judgment that endorses the solution: per paragraph its claimed value twice and ok, then `answer valid`."""
    claimed = [p.split()[-1] for p in toy_paragraphs(solution)] or ["?"]
    return " ".join(f"{c} {c} ok" for c in claimed) + " answer valid"


def multitask_warm_start(args: Args, judge_max_terms: int = 5) -> Path:
    """The tiny LM after SFT on solve + judge sequences (card 6), cached by its recipe in save_pretrained form."""
    recipe = dict(
        method="self_prm",
        steps=args.ws_steps,
        batch_size=args.ws_batch_size,
        lr=args.ws_lr,
        judge_fraction=args.ws_judge_fraction,
        judge_max_terms=judge_max_terms,
        seed=args.ws_seed,
        version=2,
    )
    key = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(warmstart.CACHE_DIR) / f"self_prm-solve_judge-{key}"
    if (folder / "recipe.json").exists():
        return folder
    start = time.time()
    torch.manual_seed(args.ws_seed)
    model, tokenizer = build_tiny_lm(seed=args.ws_seed)
    problems = TASK.dataset(20000, seed=args.ws_seed, split="train")["prompt"]
    judge_problems = [p for p in problems if len(TASK.terms(p)) <= judge_max_terms]
    rng = random.Random(args.ws_seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.ws_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * (1 - s / args.ws_steps))
    model.train()
    for step in range(args.ws_steps):
        num_judge = sum(rng.random() < args.ws_judge_fraction for _ in range(args.ws_batch_size))
        # judge items: 50% references, 50% one corrupted paragraph; solve items: the reference solution
        judge = [toy_judge_item(rng.choice(judge_problems), rng, rng.random() < 0.5) for _ in range(num_judge)]
        solve = [rng.choice(problems) for _ in range(args.ws_batch_size - num_judge)]
        # two sub-batches (judge sequences are ~1.6x longer): less padding; the loss is weighted by sequences
        parts = [
            ([j[0] for j in judge], [j[1] for j in judge]),
            (solve, [toy_solution(TASK.terms(p))[0] for p in solve]),
        ]
        losses = [len(x) * warmstart.sft_loss(model, *warmstart.sft_batch(tokenizer, x, y)) for x, y in parts if x]
        loss = sum(losses) / args.ws_batch_size
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % max(1, args.ws_steps // 5) == 0:
            print(
                f"warm start (solve + judge): step {step + 1}/{args.ws_steps} losses/sft_loss {loss.item():.4f} "
                f"({(step + 1) / (time.time() - start):.1f} steps/s)",
                flush=True,
            )
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")  # write aside, then rename: no half-written cache
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "recipe.json").write_text(json.dumps({**recipe, "seconds": round(time.time() - start, 1)}, indent=2))
    if folder.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return folder


# Generation helpers ----------------------------------------------------------------------------------------------
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
    **sampling,
):
    """Batched `shared.lm.sample` in chunks of --gen-batch-size sequences; texts prompt-major, and token counts.
    `on_chunk(seconds, sequences)` runs after every chunk, `on_first_chunk(texts)` once after the first."""
    texts, tokens, per_call = [], 0, max(1, args.gen_batch_size // num_samples)
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
    return texts, tokens


@torch.no_grad()
def sequence_logprob(model, tokenizer, prompts, targets, batch_size=512) -> torch.Tensor:
    """Sum of log-probs of `targets` given `prompts` (teacher-forced, completion tokens + EOS). [N]"""
    out = []
    for lo in range(0, len(prompts), batch_size):
        chunk = slice(lo, lo + batch_size)
        ids, mask, pos, labels = warmstart.sft_batch(tokenizer, prompts[chunk], targets[chunk], device=model.device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].float()  # [B, T-1, V]
        target = labels[:, 1:]  # [B, T-1]
        logp = logits.log_softmax(-1).gather(2, target.clamp(min=0)[:, :, None]).squeeze(2)  # [B, T-1]
        out.append((logp * (target != -100)).sum(1).cpu())  # [B]
    return torch.cat(out)


def completion_logprob(model, out) -> torch.Tensor:
    """Mean per-token log-prob of each sampled completion (with grad), from one forward over prompt + completion. [N]"""
    from shared.lm import position_ids_from_mask

    ids = torch.cat([out.prompt_ids, out.completion_ids], 1)  # [N, P+T]
    mask = torch.cat([out.prompt_mask, out.completion_mask], 1)  # [N, P+T]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    width = out.completion_ids.shape[1]
    logits = logits[:, -width - 1 : -1].float()  # [N, T] positions that predict the completion tokens
    logp = logits.log_softmax(-1).gather(2, out.completion_ids[:, :, None]).squeeze(2)  # [N, T]
    return (logp * out.completion_mask).sum(1) / out.completion_mask.sum(1).clamp(min=1)  # [N]


# Setup ------------------------------------------------------------------------------------------------------------
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
    if args.model_name.startswith("tiny") and args.model_name != TOY_MODEL:
        fail(f"--model-name {args.model_name!r}: the toy model is {TOY_MODEL}; else pass a folder or a hub id")
    for flag, rate in (("--ws-lr", args.ws_lr), ("--coevolve-lr", args.coevolve_lr)):
        if not (rate > 0 and math.isfinite(rate)):
            fail(f"{flag} {rate}: a learning rate must be a positive finite number (e.g. {flag} 3e-3)")
    if args.ws_steps < 1 or not 0.0 < args.ws_judge_fraction < 1.0:
        fail("--ws-steps must be >= 1 and --ws-judge-fraction in (0, 1): the warm start needs both tasks")


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


def judge_f1(model, tokenizer, args, prompts, labels, parse) -> tuple[float, float, float]:
    texts, _ = generate(model, tokenizer, prompts, args, greedy=True, max_new_tokens=args.judge_max_new_tokens)
    return processbench_f1([parse(t) for t in texts], labels)


def synthetic_processbench(args: Args, seed: int, n: int, task: ChainAddition = TASK):
    """Toy ProcessBench items on held-out problems: alternately a reference and a one-paragraph corruption."""
    rng = random.Random(seed)
    items = [toy_judge_item(p, rng, corrupt=i % 2 == 1) for i, p in enumerate(task.dataset(n, seed, "test")["prompt"])]
    return [i[0] for i in items], [i[2] for i in items]


def coevolve(args: Args, device, dtype, run: RunLogger) -> list[dict]:
    """Card 3.5, toy: judge warmed up on K=3 only; GRPO (EM reward) on K=5; K=5 solving and judge F1 before/after."""
    model, tokenizer = load_causal_lm(str(multitask_warm_start(args, judge_max_terms=3)), device=device, dtype=dtype)
    hard = ChainAddition(min_terms=5, max_terms=5)
    train = hard.dataset(2000, seed=args.seed, split="train")["prompt"]
    test = hard.dataset(200, seed=args.seed, split="test")
    pb_prompts, pb_labels = synthetic_processbench(args, args.seed + 7, 200, hard)

    def measure(step):
        model.eval()
        texts, _ = generate(model, tokenizer, test["prompt"], args, greedy=True)
        solve = float(np.mean([hard.score(p, t) for p, t in zip(test["prompt"], texts)]))
        f1 = judge_f1(model, tokenizer, args, pb_prompts, pb_labels, parse_toy_verdict)
        run.log(step, {"coevolve/solve_acc": solve, "coevolve/judge_f1": f1[2]}, echo=True)
        return {"solve acc K=5": solve, "judge acc_err": f1[0], "judge acc_cor": f1[1], "judge F1": f1[2]}

    rows = [{"checkpoint": "before GRPO", **measure(0)}]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.coevolve_lr, weight_decay=0.0)
    rng, group = random.Random(args.seed), args.coevolve_group
    for step in range(1, args.coevolve_steps + 1):
        prompts = rng.sample(train, 8)
        model.eval()
        out = sample(model, tokenizer, prompts, num_samples=group, max_new_tokens=args.max_new_tokens, temperature=1.0)
        rewards = torch.tensor([hard.score(p, t) for p, t in zip(np.repeat(prompts, group), out.texts)])  # [8G]
        grouped = rewards.view(-1, group)  # [8, G]
        advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
        model.train()
        loss = -(advantages.to(device) * completion_logprob(model, out)).mean()  # on-policy policy gradient, no KL
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        run.log(step, {"coevolve/reward": rewards.mean().item(), "losses/grpo_loss": loss.item()})
    rows.append({"checkpoint": f"after {args.coevolve_steps} GRPO steps", **measure(args.coevolve_steps)})
    return rows


def main(args: Args) -> dict:
    start_time = time.time()
    check_args(args)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = pick_device(args.cuda)
    dtype = pick_dtype(args.dtype, device)
    toy = args.dataset_name.startswith("tiny:")
    problems, gold = load_problems(args, toy)
    P, N, K = len(problems), args.num_samples, args.k_max
    # 0. the frozen policy, which is also the judge
    if args.model_name == TOY_MODEL:
        model, tokenizer = load_causal_lm(str(multitask_warm_start(args)), device=device, dtype=dtype)
    else:
        model, tokenizer = load_causal_lm(args.model_name, device=device, dtype=dtype, seed=args.seed)
    model.eval().requires_grad_(False)
    seed_everything(args.seed)  # the pool does not depend on whether the warm start was cached
    name = args.dataset_name.replace(":", "-").replace("/", "-")
    run = RunLogger(make_run_name(f"self_prm-{name}", args.exp_name, args.seed), args, track=args.track)
    timer = time.time()

    chunk_counter = iter(range(1, 2**62))

    def timed(stage: str):  # one metrics row per generation chunk: the pass has no loss to time steps by
        def log(seconds: float, sequences: int) -> None:
            row = {f"timing/{stage}_chunk_seconds": seconds, f"timing/{stage}_sequences": sequences}
            run.log(next(chunk_counter), row, echo=False)

        return log

    # 1. sample a pool of N solutions per problem from the frozen policy (one pool; nested prefixes for each k)
    solve_prompts = problems if toy else [p + SOLVE_SUFFIX for p in problems]
    sampling = dict(temperature=args.temperature, top_p=args.top_p, on_chunk=timed("solve"))
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

    # 2. the same model judges each of its first K samples (ProcessBench-style prompt, greedy), verdict parsed
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

    sampling = dict(greedy=True, max_new_tokens=args.judge_max_new_tokens, on_chunk=timed("judge"))
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

    # 3. soft self-score (reconstructed): P(all-ok judgment) on the toy, or the share of -1 among sampled judgments
    soft_mode = ("path" if toy else "none") if args.soft_score == "auto" else args.soft_score
    weights = {"self_prm": valid.float()}  # [P, K] per selector: who votes, with which weight
    if soft_mode == "path":
        endorse = [all_ok_judgment(q, y) for q, y in judged]
        weights["self_prm_soft"] = sequence_logprob(model, tokenizer, judge_prompts, endorse).exp().view(P, K)
    elif soft_mode == "votes":
        sampling = dict(temperature=1.0, top_p=0.9, max_new_tokens=args.judge_max_new_tokens)
        votes, _ = generate(model, tokenizer, judge_prompts, args, num_samples=args.soft_votes, **sampling)
        weights["self_prm_soft"] = torch.tensor([parse(v) == -1 for v in votes]).float().view(P, K, -1).mean(2)
    # 4. controls: an oracle judge (v = correct) and noisy oracles (each verdict flipped with probability q)
    correct_k = correct[:, :K]  # [P, K]
    weights["oracle_judge"] = correct_k.float()
    generator = torch.Generator().manual_seed(args.seed)
    noisy = {q: correct_k ^ (torch.rand(P, K, generator=generator) < q) for q in args.noise_rates}
    weights.update({f"noisy_{q:g}": v.float() for q, v in noisy.items()})

    # 5. selection over nested k = 1, 2, 4, ..., K (prefixes of the one pool)
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
        run.log(k, {f"eval/accuracy/{s}@{k}": v for s, v in accuracy.items()}, echo=False)
        selection_rows.append({"k": k, "problems": P, **{names[s]: v for s, v in accuracy.items()}})

    # 6. the judging side: ProcessBench acc_err / acc_cor / F1, own-sample F1, precision / recall by difficulty
    judge_rows = []
    f1_row = lambda name, f1: {"judge items": name, **dict(zip(("acc_err", "acc_cor", "F1"), f1))}  # noqa: E731
    if toy:
        pb_prompts, pb_labels = synthetic_processbench(args, args.seed + 1, args.num_pb_items)
        f1 = judge_f1(model, tokenizer, args, pb_prompts, pb_labels, parse_toy_verdict)
        judge_rows.append(f1_row(f"synthetic ProcessBench ({len(pb_labels)})", f1))
        labels = [toy_first_error(q, y) for q, y in judged]
        share = 100 * np.mean(np.array(labels) >= 0)
        judge_rows.append(
            f1_row(f"own samples ({len(labels)}, {share:.0f}% with an error)", own := processbench_f1(verdicts, labels))
        )
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
        f1 = judge_f1(model, tokenizer, args, prompts, list(pb["label"]), parse_verdict)
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
        base_rate, lift = base_rates[b].item(), lifts[b].item()
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

    # 7. optional co-evolution arm (card 3.5): outcome RL on harder problems, judge F1 before and after
    coevolve_rows = coevolve(args, device, dtype, run) if args.coevolve else []

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
    keys = ("selection", "judge", "buckets", "coevolve", "model", "weights", "ids", "slot_correct")
    values = (selection_rows, judge_rows, bucket_rows, coevolve_rows, model, weights, ids, slot_correct)
    return {"run_dir": run.dir, **dict(zip(keys, values))}


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n\n")[0]))
