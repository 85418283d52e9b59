"""Verifiable tasks: a prompt builder, an answer extractor and a verifier, reproducible from a seed.

Registry (``get_task(name)``):

* ``arithmetic`` — built-in integer arithmetic with adjustable difficulty (digits, operators, terms);
  options are given as ``arithmetic:digits=2,terms=2,ops=+-``.
* ``arithmetic-cot`` — chain-of-thought arithmetic (3-5 terms): the reply writes every partial sum, then
  ``answer: N``; only the final answer is verified (long replies, final-answer credit).
* ``rg:<dataset>`` — any ``reasoning-gym`` dataset, scored with its ``score_answer``.
* a path to a ``.jsonl`` / ``.parquet`` file with ``problem`` and ``answer`` fields (AIME style),
  graded with ``math-verify`` on the ``\\boxed{}`` answer.

Splits never share a problem: train, validation and test are drawn from disjoint hash buckets of the
problem text (generators) or disjoint slices of the file (user benchmarks).

Reward functions follow TRL's signature: ``reward(prompts, completions, **columns) -> list[float]``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RlvrLinearError

SPLITS = ("train", "validation", "test")
#: share of the problem space given to each split (by a stable hash of the problem text)
_SPLIT_BUCKETS = {"train": (0, 80), "validation": (80, 90), "test": (90, 100)}


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # the bare question; Task.render() adds chat templates / instructions
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def _bucket(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 100


def _in_split(text: str, split: str) -> bool:
    lo, hi = _SPLIT_BUCKETS[split]
    return lo <= _bucket(text) < hi


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise RlvrLinearError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


_INT_RE = re.compile(r"-?\d+")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (brace-matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    j = i
    while j < len(text) and depth:
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
        j += 1
    return text[i : j - 1] if depth == 0 else None


class Task:
    """Base class. Subclasses implement :meth:`problems` and :meth:`score`."""

    name: str = "task"
    #: instruction appended for chat models
    instruction: str = ""
    #: chat models' system message: None keeps the chat template's default (SmolLM2's names the assistant), "" sends an
    #: empty one (shorter prompts); a task option of the arithmetic tasks (``arithmetic:system=``)
    system: str | None = None

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        raise NotImplementedError

    def extract(self, completion: str) -> str | None:
        return completion.strip()

    def max_new_tokens(self, chat: bool) -> int:
        """Default generation length: short for bare prompts, longer for chat models that answer in prose."""
        return 256 if chat else 32

    def score(self, completion: str, problem: Problem) -> float:
        raise NotImplementedError

    def reference(self, problem: Problem) -> str:
        """The reference reply (the SFT target of the tiny base warm-up): the bare answer unless a task shows work."""
        return problem.answer

    def messages(self, problem: Problem) -> list[dict]:
        """The chat conversation of a problem (training rows and :meth:`render` both use it): the question plus the
        instruction as the user's turn, after the system message when :attr:`system` is set."""
        content = problem.prompt + (" " + self.instruction if self.instruction else "")
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return [*system, {"role": "user", "content": content}]

    def render(self, problem: Problem, tokenizer=None) -> str:
        """The text fed to the model: the bare prompt, or the chat template for chat models."""
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(self.messages(problem), tokenize=False, add_generation_prompt=True)
        return problem.prompt

    # TRL reward-function signature -----------------------------------------------------------------
    def reward_function(self) -> Callable[..., list[float]]:
        task = self

        def correctness(prompts, completions, answer, problem_id=None, **kw):
            out = []
            for i, (c, a) in enumerate(zip(completions, answer)):
                text = c[-1]["content"] if isinstance(c, list) else c
                pid = problem_id[i] if problem_id is not None else ""
                out.append(float(task.score(text, Problem(pid, "", str(a)))))
            return out

        correctness.__name__ = f"{self.name}_correct"
        return correctness


# --------------------------------------------------------------------------------------------------
# Built-in integer arithmetic


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass
class ArithmeticTask(Task):
    """Integer arithmetic: ``terms`` operands of ``digits`` digits joined by operators from ``ops``.

    The prompt is ``"12+34="``; the reply must be the integer on its first line (for chat models:
    the last integer, or the ``\\boxed{}`` content). Difficulty grows with ``digits``, ``terms`` and ``ops``.
    """

    digits: int = 2
    terms: int = 2
    ops: str = "+"
    min_digits: int = 1
    name: str = "arithmetic"
    instruction: str = "Reply with only the number."
    system: str | None = None

    def __post_init__(self):
        if self.digits < 1 or self.terms < 2 or not self.ops or any(o not in _OPS for o in self.ops):
            raise RlvrLinearError(f"bad arithmetic options: digits={self.digits} terms={self.terms} ops={self.ops!r}")

    def _sample(self, rng: random.Random) -> tuple[str, int]:
        lo = 0 if self.min_digits <= 1 else 10 ** (self.min_digits - 1)
        nums = [rng.randint(lo, 10**self.digits - 1) for _ in range(self.terms)]
        ops = [rng.choice(self.ops) for _ in range(self.terms - 1)]
        expr = str(nums[0]) + "".join(o + str(n) for o, n in zip(ops, nums[1:]))
        return expr, int(eval(expr, {"__builtins__": {}}))  # noqa: S307 - digits and + - * only

    def max_new_tokens(self, chat: bool) -> int:
        return 48 if chat else self.digits * self.terms + 3

    def space_size(self) -> int:
        lo = 0 if self.min_digits <= 1 else 10 ** (self.min_digits - 1)
        return (10**self.digits - lo) ** self.terms * len(self.ops) ** (self.terms - 1)

    def _enumerate(self) -> list[str]:
        import itertools

        lo = 0 if self.min_digits <= 1 else 10 ** (self.min_digits - 1)
        nums = range(lo, 10**self.digits)
        exprs = []
        for ns in itertools.product(nums, repeat=self.terms):
            for ops in itertools.product(self.ops, repeat=self.terms - 1):
                exprs.append(str(ns[0]) + "".join(o + str(x) for o, x in zip(ops, ns[1:])))
        return exprs

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """``n`` distinct problems of ``split`` (``None``: all of them, for enumerable spaces), seeded order."""
        _check_split(split)
        rng = random.Random(f"{self.name}-{split}-{seed}")
        if self.space_size() <= 300_000:
            pool = [e for e in self._enumerate() if _in_split(e, split)]
            rng.shuffle(pool)
            if n is not None and n > len(pool):
                raise RlvrLinearError(f"asked for {n} {split} problems but this arithmetic space holds {len(pool)}")
            exprs = pool if n is None else pool[:n]
        else:
            if n is None:
                raise RlvrLinearError("this arithmetic space is too large to enumerate; give a number of problems")
            seen: set[str] = set()
            exprs = []
            while len(exprs) < n:
                expr, _ = self._sample(rng)
                if expr not in seen and _in_split(expr, split):
                    seen.add(expr)
                    exprs.append(expr)
        return [Problem(id=e, prompt=f"{e}=", answer=str(eval(e, {"__builtins__": {}}))) for e in exprs]  # noqa: S307

    def extract(self, completion: str) -> str | None:
        boxed = extract_boxed(completion)
        if boxed is not None:
            m = _INT_RE.findall(boxed)
            return m[-1] if m else None
        first = completion.strip().split("\n", 1)[0].strip() if completion.strip() else ""
        if re.fullmatch(r"-?\d+", first):
            return first
        ints = _INT_RE.findall(completion)  # chat models answer in a sentence ("23 + 45 = 68")
        return ints[-1] if ints else None

    def score(self, completion: str, problem: Problem) -> float:
        got = self.extract(completion)
        return 1.0 if got is not None and int(got) == int(problem.answer) else 0.0


# --------------------------------------------------------------------------------------------------
# Chain-of-thought arithmetic: long replies, credit from the final answer only

#: the final-answer marker of ``arithmetic-cot`` replies
COT_MARKER = "answer:"
_COT_ANSWER_RE = re.compile(r"answer:[ \t]*(-?\d+)(?!\w)", re.IGNORECASE)
_COT_TOKEN_RE = re.compile(r"\d+|[+-]")


@dataclass
class ArithmeticCoTTask(Task):
    """Chain-of-thought arithmetic: ``min_terms``..``max_terms`` operands of ``min_digits``..``digits`` digits.

    The prompt is ``"12+7+45="``; the reference reply writes every partial sum (left to right) on its own line, then
    the final answer after the marker ``answer:``::

        12+7=19
        19+45=64
        answer: 64

    Only the integer after the last ``answer:`` is verified, as the paper rewards only the final answer: a right final
    answer after wrong partial sums scores 1; a reply without the marker, or without an integer right after it,
    scores 0. At the defaults (3-5 terms of 1-2 digits, ``+``) the reference replies are 21-54 characters, i.e.
    21-54 tokens of the char tokenizer plus EOS. Options: ``arithmetic-cot:min_terms=4,max_terms=4,ops=+-``.
    """

    min_terms: int = 3
    max_terms: int = 5
    digits: int = 2  #: most digits of an operand
    min_digits: int = 1  #: fewest digits of an operand (each operand draws its digit count uniformly)
    ops: str = "+"  #: ``+`` and/or ``-`` (partial results are left to right, so no ``*``)
    name: str = "arithmetic-cot"
    instruction: str = "Write each partial result on its own line (like 12+7=19), then a last line 'answer: N'."
    system: str | None = None

    def __post_init__(self):
        if (
            self.min_terms < 2
            or self.max_terms < self.min_terms
            or not 1 <= self.min_digits <= self.digits
            or not self.ops
            or any(o not in "+-" for o in self.ops)
        ):
            raise RlvrLinearError(
                f"bad arithmetic-cot options: min_terms={self.min_terms} max_terms={self.max_terms} "
                f"min_digits={self.min_digits} digits={self.digits} ops={self.ops!r} (ops from '+-', terms >= 2)"
            )

    def _operand(self, rng: random.Random) -> int:
        nd = rng.randint(self.min_digits, self.digits)
        return rng.randint(0 if nd == 1 else 10 ** (nd - 1), 10**nd - 1)

    def space_size(self) -> int:
        n_operands = 10**self.digits - (0 if self.min_digits <= 1 else 10 ** (self.min_digits - 1))
        return sum(n_operands**t * len(self.ops) ** (t - 1) for t in range(self.min_terms, self.max_terms + 1))

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """``n`` distinct problems of ``split`` (sampled; the hash buckets keep the splits disjoint), seeded order."""
        _check_split(split)
        if n is None:
            raise RlvrLinearError("arithmetic-cot is sampled, not enumerated; give a number of problems")
        rng = random.Random(f"{self.name}-{split}-{seed}")
        seen: set[str] = set()
        out: list[Problem] = []
        for _ in range(50 * n + 10_000):
            if len(out) == n:
                break
            nums = [self._operand(rng) for _ in range(rng.randint(self.min_terms, self.max_terms))]
            expr = str(nums[0]) + "".join(rng.choice(self.ops) + str(x) for x in nums[1:])
            if expr in seen or not _in_split(expr, split):
                continue
            seen.add(expr)
            out.append(Problem(id=expr, prompt=f"{expr}=", answer=str(self._steps(expr)[-1][3])))
        if len(out) < n:
            raise RlvrLinearError(f"could not draw {n} distinct {split} problems from this arithmetic-cot space")
        return out

    @staticmethod
    def _steps(expr: str) -> list[tuple[int, str, int, int]]:
        """``(left, op, operand, result)`` for every partial result, left to right."""
        toks = _COT_TOKEN_RE.findall(expr)
        acc, steps = int(toks[0]), []
        for op, x in zip(toks[1::2], toks[2::2]):
            new = acc + int(x) if op == "+" else acc - int(x)
            steps.append((acc, op, int(x), new))
            acc = new
        return steps

    def reference(self, problem: Problem) -> str:
        steps = self._steps(problem.prompt.rstrip("="))
        lines = [f"{a}{op}{x}={r}" for a, op, x, r in steps]
        return "\n".join([*lines, f"{COT_MARKER} {steps[-1][3]}"])

    def max_new_tokens(self, chat: bool) -> int:
        """Chat: 256. Bare prompts: the longest possible reference reply (char tokenizer) plus EOS and 4 spare."""
        if chat:
            return 256
        width = len(str(self.max_terms * (10**self.digits - 1))) + ("-" in self.ops)  # widest partial result
        line = 2 * width + 1 + self.digits + 2  # "left op operand = result\n"
        return (self.max_terms - 1) * line + len(COT_MARKER) + 1 + width + 1 + 4

    def extract(self, completion: str) -> str | None:
        found = _COT_ANSWER_RE.findall(completion)
        return found[-1] if found else None

    def score(self, completion: str, problem: Problem) -> float:
        got = self.extract(completion)
        return 1.0 if got is not None and int(got) == int(problem.answer) else 0.0


#: "answer: N", "the answer is N", "final answer is N", "\\boxed{N}": the last of them is the reply's final answer
_CHAT_ANSWER_RE = re.compile(r"(?:answer(?:\s+is)?\s*[:=]?|\\boxed\{)\s*\$?\s*(-?\d+)", re.IGNORECASE)


@dataclass
class ArithmeticCoTChatTask(ArithmeticCoTTask):
    """Chain-of-thought addition for instruct models: ``What is 47+85?`` with the chat template, worked replies.

    Why a separate task: ``arithmetic-cot``'s bare ``"12+7+45="`` prompt and strict format suit the char-level tiny
    base, which was warmed up on them. SmolLM2-135M-Instruct answers a question in its own words; asked for partial
    sums and an answer line it writes a few tens of tokens of working (and often rambles on past the answer), and its
    greedy accuracy on two 2-digit operands is in the 10-60% band where RL has headroom (measured on 200 validation
    problems: 0.20, docs/smollm2.md; three terms fall to 0-5%, and spaces around ``+`` lower it to 0.135).
    Only the final answer is verified: the integer after the last answer phrase (``answer: N``, ``the answer is N``,
    ``\\boxed{N}``), else the last integer of the reply. Problem ids are the bare expressions, in the same
    hash-bucket splits as ``arithmetic-cot``; options as ``arithmetic-cot``'s
    (``arithmetic-cot-chat:max_terms=3,min_digits=1``).
    """

    min_terms: int = 2
    max_terms: int = 2
    min_digits: int = 2
    name: str = "arithmetic-cot-chat"
    instruction: str = (
        "Add the numbers one at a time, writing each partial sum, "
        "then give the final answer on a last line as 'answer: N'."
    )

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """``n`` problems of ``split``; ``n=None``: the whole split (spaces up to 300,000 expressions), seeded order."""
        if n is None:
            exprs = [e for e in self._enumerate() if _in_split(e, split)]
            random.Random(f"{self.name}-{split}-{seed}").shuffle(exprs)
        else:
            exprs = [p.id for p in super().problems(split, n, seed)]
        return [Problem(id=e, prompt=f"What is {e}?",
                        answer=str(self._steps(e)[-1][3])) for e in exprs]  # fmt: skip

    def _enumerate(self) -> list[str]:
        import itertools

        if self.space_size() > 300_000:
            raise RlvrLinearError("this arithmetic-cot-chat space is too large to enumerate; give a number of problems")
        lo = 0 if self.min_digits <= 1 else 10 ** (self.min_digits - 1)
        nums = range(lo, 10**self.digits)
        out = []
        for t in range(self.min_terms, self.max_terms + 1):
            for ns in itertools.product(nums, repeat=t):
                for ops in itertools.product(self.ops, repeat=t - 1):
                    out.append(str(ns[0]) + "".join(o + str(x) for o, x in zip(ops, ns[1:])))
        return out

    def reference(self, problem: Problem) -> str:
        return super().reference(Problem(problem.id, problem.id + "=", problem.answer))

    def max_new_tokens(self, chat: bool) -> int:
        """48: the working and the answer line fit in 10-40 tokens; longer replies ramble on past the answer."""
        return 48

    def extract(self, completion: str) -> str | None:
        found = _CHAT_ANSWER_RE.findall(completion)
        if found:
            return found[-1]
        ints = _INT_RE.findall(completion)
        return ints[-1] if ints else None


# --------------------------------------------------------------------------------------------------
# reasoning-gym adapter


@dataclass
class ReasoningGymTask(Task):
    """Any ``reasoning-gym`` dataset by name, scored with its own ``score_answer``."""

    dataset: str = "basic_arithmetic"
    config: dict = field(default_factory=dict)
    name: str = "rg"
    instruction: str = "Give only the final answer."

    def __post_init__(self):
        import reasoning_gym

        try:
            reasoning_gym.create_dataset(self.dataset, size=1, seed=0, **self.config)
        except Exception as e:  # noqa: BLE001
            raise RlvrLinearError(f"reasoning-gym dataset {self.dataset!r}: {e}") from None
        self.name = f"rg:{self.dataset}"
        self._scorers: dict = {}

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        import reasoning_gym

        _check_split(split)
        out: list[Problem] = []
        size = max(4 * n, 64)
        base_seed = seed * 1000
        seen: set[str] = set()
        for attempt in range(20):
            ds = reasoning_gym.create_dataset(self.dataset, size=size, seed=base_seed + attempt, **self.config)
            for i, item in enumerate(ds):
                q = item["question"]
                if q in seen or not _in_split(q, split):
                    continue
                seen.add(q)
                pid = hashlib.sha256(q.encode()).hexdigest()[:12]
                self._scorers[pid] = (ds, item)
                out.append(Problem(id=pid, prompt=q, answer=str(item["answer"]), meta={"index": i}))
                if len(out) == n:
                    return out
        raise RlvrLinearError(f"reasoning-gym {self.dataset!r}: could not draw {n} {split} problems")

    def extract(self, completion: str) -> str | None:
        boxed = extract_boxed(completion)
        if boxed is not None:
            return boxed.strip()
        lines = [x.strip() for x in completion.strip().splitlines() if x.strip()]
        return lines[-1] if lines else None

    def score(self, completion: str, problem: Problem) -> float:
        got = self.extract(completion)
        if got is None:
            return 0.0
        entry = self._scorers.get(problem.id)
        if entry is None:  # problem built elsewhere: exact match on the answer
            return 1.0 if got == problem.answer.strip() else 0.0
        ds, item = entry
        return float(ds.score_answer(got, item))


# --------------------------------------------------------------------------------------------------
# User benchmark files (AIME style)


@dataclass
class FileTask(Task):
    """Problems from a JSONL or parquet file with ``problem`` and ``answer`` fields, graded by math-verify."""

    path: str = ""
    name: str = "file"
    instruction: str = "Let's think step by step and output the final answer within \\boxed{}."

    def __post_init__(self):
        p = Path(self.path)
        if not p.exists():
            raise RlvrLinearError(f"{p}: benchmark file not found")
        numbered = _read_rows(p)
        if not numbered:
            raise RlvrLinearError(f"{p}: the benchmark file holds no problems")
        for where, r in numbered:
            if not isinstance(r, dict):
                raise RlvrLinearError(f"{p}: {where} is not a JSON object with 'problem' and 'answer' fields")
            if "problem" not in r or "answer" not in r:
                raise RlvrLinearError(f"{p}: {where} lacks a 'problem' or 'answer' field (has {sorted(r)})")
        self.rows = [r for _, r in numbered]
        self.name = p.stem

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """User benchmarks are used whole for ``test``; train/validation take disjoint hash buckets."""
        _check_split(split)
        rows = self.rows if split == "test" else [r for r in self.rows if _in_split(str(r["problem"]), split)]
        probs = [
            Problem(id=str(r.get("id", i)), prompt=str(r["problem"]), answer=str(r["answer"]))
            for i, r in enumerate(rows)
        ]
        return probs if n is None else probs[:n]

    def extract(self, completion: str) -> str | None:
        return extract_boxed(completion)

    def score(self, completion: str, problem: Problem) -> float:
        from math_verify import parse, verify

        got = self.extract(completion)
        if got is None:
            return 0.0
        try:
            gold = parse(f"${problem.answer}$")
            pred = parse(f"${got}$")
            return 1.0 if verify(gold, pred) else 0.0
        except Exception:  # noqa: BLE001 - a malformed answer is a wrong answer
            return 0.0


def _read_rows(p: Path) -> list[tuple[str, dict]]:
    """``(where, row)`` pairs: ``where`` is ``line N`` (1-based, blank lines counted) or ``row N`` (parquet)."""
    if p.suffix == ".jsonl":
        rows = []
        with p.open() as f:
            for ln, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((f"line {ln}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise RlvrLinearError(f"{p}:{ln}: not valid JSON ({e.msg})") from None
        return rows
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"row {i + 1}", r) for i, r in enumerate(pq.read_table(p).to_pylist())]
    raise RlvrLinearError(f"{p}: benchmark files must be .jsonl or .parquet")


# --------------------------------------------------------------------------------------------------
# Registry


def _parse_opts(spec: str) -> dict:
    out: dict = {}
    for part in filter(None, spec.split(",")):
        if "=" not in part:
            raise RlvrLinearError(f"bad task option {part!r} (expected key=value)")
        k, v = part.split("=", 1)
        out[k.strip()] = int(v) if v.strip().lstrip("-").isdigit() else v.strip()
    return out


TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": ArithmeticTask,
    "arithmetic-cot": ArithmeticCoTTask,
    "arithmetic-cot-chat": ArithmeticCoTChatTask,
}


def get_task(name: str | Task, **kw) -> Task:
    """Build a task from a name: ``arithmetic[:k=v,...]``, ``rg:<dataset>[:k=v,...]``, or a file path."""
    if isinstance(name, Task):
        return name
    if name.endswith((".jsonl", ".parquet")) or Path(name).is_file():
        return FileTask(path=name)
    if name.startswith("rg:"):
        parts = name.split(":", 2)
        cfg = _parse_opts(parts[2]) if len(parts) > 2 else {}
        return ReasoningGymTask(dataset=parts[1], config={**cfg, **kw})
    base, _, opts = name.partition(":")
    if base not in TASKS:
        raise RlvrLinearError(
            f"unknown task {name!r}; built in: {', '.join(TASKS)}, rg:<dataset>, or a .jsonl/.parquet file"
        )
    try:
        return TASKS[base](**{**_parse_opts(opts), **kw})
    except TypeError as e:
        raise RlvrLinearError(f"task {name!r}: {e}") from None
