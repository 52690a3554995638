"""Synthetic tasks with known ground truth, as `datasets.Dataset`s with the column names real datasets use.

Every task has `dataset(n, seed, split)` and a ground-truth `score(prompt, completion)`; texts are
space-separated words of the tiny tokenizer's vocabulary (shared/lm.py), so BLEU, exact match and the tiny
LM all see the same units. Train and test prompts never overlap: a prompt belongs to `test` when the CRC32 of its
text is divisible by 5.

- `chain_addition`: `add 3 + 4 + 5` -> `3 + 4 = 7 ; 7 + 5 = 12 ; # 12` (verifiable answer, per-step truth).
- `string_ops`: `reverse : c a b` -> `b a c` for copy / reverse / sort / dedup / rotate (left 1) / rotate2.
- `preferences`: pairs of 4-word responses to `topic t0`, ranked by a hidden per-topic word weight, with an exact
  share of label flips in the data (`noise_rate`); `score` is the hidden true reward.
- `rule_categories`: string_ops restricted to copy / reverse / rotate2 / sort at 45 / 30 / 15 / 10 %, 4-6 letters.
- `sort_digits`: `sort 3 1 2` -> `1 2 3`, graded by edit distance; optionally a corrupted reference corpus.
"""

from __future__ import annotations

import functools
import random
import zlib
from dataclasses import dataclass

from datasets import Dataset

from shared.runs import fail

LETTERS = list("abcdefghijkl")


def in_split(prompt: str, split: str) -> bool:
    if split not in ("train", "test"):
        fail(f"split {split!r} is not one of train, test")
    return (zlib.crc32(prompt.encode()) % 5 == 0) == (split == "test")


def _rows(make, n: int, seed: int, split: str) -> list[dict]:
    """Draw `n` examples from `make(rng)` whose prompt lies in `split` (rejection, bounded)."""
    rng, rows = random.Random(f"{seed}-{split}"), []
    for _ in range(200 * n + 1000):
        row = make(rng)
        if in_split(row["prompt"], split):
            rows.append(row)
            if len(rows) == n:
                return rows
    fail(f"could not draw {n} distinct-split examples; ask for fewer")


@dataclass
class ChainAddition:
    """Add K numbers of 1..9 step by step; each step `a + b = c ;` carries the running sum."""

    min_terms: int = 3
    max_terms: int = 5
    name: str = "chain_addition"

    def make(self, rng: random.Random) -> dict:
        terms = [rng.randint(1, 9) for _ in range(rng.randint(self.min_terms, self.max_terms))]
        steps, total = [], terms[0]
        for x in terms[1:]:
            steps.append(f"{total} + {x} = {total + x} ;")
            total += x
        return {
            "prompt": "add " + " + ".join(map(str, terms)),
            "reference": " ".join(steps) + f" # {total}",
            "answer": str(total),
            "num_terms": len(terms),
        }

    def dataset(self, n: int, seed: int = 0, split: str = "train") -> Dataset:
        return Dataset.from_list(_rows(self.make, n, seed, split))

    @staticmethod
    def terms(prompt: str) -> list[int]:
        return [int(w) for w in prompt.split()[1::2]]

    @staticmethod
    def parse_answer(completion: str) -> int | None:
        """The number after the last `#`, or None."""
        words = completion.split()
        if "#" not in words:
            return None
        after = words[len(words) - 1 - words[::-1].index("#") + 1 :]
        return int(after[0]) if after and after[0].isdigit() else None

    def score(self, prompt: str, completion: str) -> float:
        return float(self.parse_answer(completion) == sum(self.terms(prompt)))

    def step_correctness(self, prompt: str, completion: str) -> list[bool]:
        """Per step `a + b = c ;`: True when a is the true running sum, b the next term and c their sum."""
        terms, out = self.terms(prompt), []
        body = completion.split("#")[0]
        for j, step in enumerate(s for s in body.split(";") if s.strip()):
            words, total = step.split(), sum(terms[: j + 1])
            ok = (
                len(words) == 5
                and words[1] == "+"
                and words[3] == "="
                and j + 1 < len(terms)
                and words[0] == str(total)
                and words[2] == str(terms[j + 1])
                and words[4] == str(total + terms[j + 1])
            )
            out.append(ok)
        return out


STRING_OPS = {
    "copy": lambda xs: xs,
    "reverse": lambda xs: xs[::-1],
    "sort": sorted,
    "dedup": lambda xs: list(dict.fromkeys(xs)),  # keep the first occurrence of each letter
    "rotate": lambda xs: xs[1:] + xs[:1],  # rotate left by 1
    "rotate2": lambda xs: xs[2:] + xs[:2],  # rotate left by 2
}


@dataclass
class StringOps:
    """`<op> : x1 .. xn` -> the letters after the operation; exact references, exact-match score."""

    ops: tuple[str, ...] = ("copy", "reverse", "sort", "dedup", "rotate")
    weights: tuple[float, ...] | None = None  # sampling weight of each op (None: uniform)
    min_len: int = 5
    max_len: int = 10
    name: str = "string_ops"

    def __post_init__(self):
        unknown = [op for op in self.ops if op not in STRING_OPS]
        if unknown:
            fail(f"unknown string ops {unknown}; choose from {list(STRING_OPS)}")

    def make(self, rng: random.Random) -> dict:
        op = rng.choices(self.ops, weights=self.weights)[0]
        letters = [rng.choice(LETTERS) for _ in range(rng.randint(self.min_len, self.max_len))]
        return {"prompt": f"{op} : " + " ".join(letters), "reference": " ".join(STRING_OPS[op](letters)), "op": op}

    def dataset(self, n: int, seed: int = 0, split: str = "train") -> Dataset:
        return Dataset.from_list(_rows(self.make, n, seed, split))

    @staticmethod
    def solve(prompt: str) -> str:
        op, _, letters = prompt.partition(" : ")
        return " ".join(STRING_OPS[op](letters.split()))

    def score(self, prompt: str, completion: str) -> float:
        return float(completion.split() == self.solve(prompt).split())


@dataclass
class Preferences:
    """Pairs of 4-word responses (`a`..`h`, with repetition) to `topic tK`, ranked by a hidden reward.

    Each topic hides a weight per word: two words +1, two words -1, four words 0; the true reward of a
    response is the sum of its words' weights, so |r*(chosen) - r*(rejected)| runs from 1 (hard) to 8 (easy)."""

    num_topics: int = 2
    response_len: int = 4
    world_seed: int = 1234  # fixes the hidden weights
    name: str = "preferences"

    @property
    def words(self) -> list[str]:
        return LETTERS[:8]

    def weights(self) -> dict[str, dict[str, int]]:
        rng = random.Random(self.world_seed)
        return {
            f"t{k}": dict(zip(self.words, rng.sample([1, 1, -1, -1, 0, 0, 0, 0], 8))) for k in range(self.num_topics)
        }

    def score(self, prompt: str, completion: str) -> float:
        weights = self.weights()[prompt.split()[-1]]
        return float(sum(weights.get(w, 0) for w in completion.split()))

    def make(self, rng: random.Random) -> dict:
        prompt = f"topic t{rng.randrange(self.num_topics)}"
        while True:  # two responses with different true rewards (ties carry no preference)
            a, b = (" ".join(rng.choices(self.words, k=self.response_len)) for _ in range(2))
            score_a, score_b = self.score(prompt, a), self.score(prompt, b)
            if score_a != score_b:
                break
        chosen, rejected = (a, b) if score_a > score_b else (b, a)
        return {
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "chosen_score": max(score_a, score_b),
            "rejected_score": min(score_a, score_b),
            "flipped": False,
        }

    def dataset(self, n: int, seed: int = 0, split: str = "train", noise_rate: float = 0.0) -> Dataset:
        """`n` pairs; exactly round(noise_rate * n) of them, chosen at random, have chosen and rejected swapped."""
        if not 0.0 <= noise_rate < 1.0:
            fail(f"noise_rate {noise_rate} must be in [0, 1)")
        rng = random.Random(f"{seed}-{split}")
        rows = [self.make(rng) for _ in range(n)]  # prompts repeat by design: the split acts on responses' seeds
        for i in rng.sample(range(n), round(noise_rate * n)):
            row = rows[i]
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            row["chosen_score"], row["rejected_score"] = row["rejected_score"], row["chosen_score"]
            row["flipped"] = True
        return Dataset.from_list(rows)


def levenshtein(a: list[str], b: list[str]) -> int:
    """Edit distance between two token lists (insertions, deletions and substitutions cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@dataclass
class SortDigits:
    """`sort 3 1 2` -> `1 2 3`; graded quality q = 1 - Levenshtein(y, sorted(x)) / max(|y|, |sorted(x)|).

    With `corrupt_rate` > 0 the `reference` of that share of rows has one element dropped, duplicated or two
    neighbours swapped (a noisy "pretraining" corpus); `clean` always holds the exact answer."""

    min_len: int = 4
    max_len: int = 7
    corrupt_rate: float = 0.0
    name: str = "sort_digits"

    def make(self, rng: random.Random) -> dict:
        digits = [str(rng.randrange(10)) for _ in range(rng.randint(self.min_len, self.max_len))]
        clean = sorted(digits)
        target = list(clean)
        if rng.random() < self.corrupt_rate:
            i, kind = rng.randrange(len(target) - 1), rng.choice(["drop", "duplicate", "swap"])
            unequal = [j for j in range(len(target) - 1) if target[j] != target[j + 1]]
            if kind == "swap" and not unequal:
                kind = "duplicate"  # a swap of equal neighbours would change nothing
            if kind == "swap":
                i = rng.choice(unequal)
            if kind == "drop":
                del target[i]
            elif kind == "duplicate":
                target.insert(i, target[i])
            else:
                target[i], target[i + 1] = target[i + 1], target[i]
        return {"prompt": "sort " + " ".join(digits), "reference": " ".join(target), "clean": " ".join(clean)}

    def dataset(self, n: int, seed: int = 0, split: str = "train") -> Dataset:
        return Dataset.from_list(_rows(self.make, n, seed, split))

    def score(self, prompt: str, completion: str) -> float:
        truth, answer = sorted(prompt.split()[1:]), completion.split()
        return 1.0 - levenshtein(answer, truth) / max(len(answer), len(truth))

    def exact(self, prompt: str, completion: str) -> float:
        return float(completion.split() == sorted(prompt.split()[1:]))


TASKS = {
    "chain_addition": ChainAddition,
    "string_ops": StringOps,
    "preferences": Preferences,
    "sort_digits": SortDigits,
    # four rules with a rare hard one: copy 45%, reverse 30%, rotate-left-2 15%, sort 10% (the `op` is the category)
    "rule_categories": functools.partial(
        StringOps,
        ops=("copy", "reverse", "rotate2", "sort"),
        weights=(0.45, 0.3, 0.15, 0.1),
        min_len=4,
        max_len=6,
        name="rule_categories",
    ),
}


def get_task(name: str, **kwargs):
    if name not in TASKS:
        fail(f"unknown tiny-world task {name!r}; choose from {list(TASKS)}")
    return TASKS[name](**kwargs)
