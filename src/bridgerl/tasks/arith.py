"""The embedded testbed task: multi-step integer arithmetic, evaluated left to right.

It plays "math word problems" for the tiny embedded base model (`bridgerl.models.tiny`):

    prompt    "Q:3+4+5+2=\\nA:"
    solution  "3+4=7;7+5=12;12+2=14;#14"     (the expert chain of thought, the SFT target)
    direct    "#14"                           (what the base model was pretrained to answer)

Every chain step "a+b=c" is written exactly like the "bare facts" the base model practised in
pretraining, so SFT teaches the *format* of chaining, not new arithmetic (docs/testbed-notes.md,
pitfall 1). Operators are applied strictly left to right ("3-5*2" is (3-5)*2 = -4), with no
precedence, so every step is one practised fact.

Splits (each drawn from its own `random.Random`, seeded from `ArithConfig.seed`; never a global RNG):
  test       n_test distinct problems with `train_operands` operands
  test_hard  n_test_hard distinct problems with `hard_operands` operands (longer than training)
  val        up to n_val distinct problems like test, in neither test split; for choosing
             hyperparameters without touching test
  rl_train   n_rl_train problems (question + answer + a teacher trace), `train_operands`, no question
             of an evaluation split
  sft_train  n_sft_train problems with the teacher's trace, `sft_operands` (default train_operands),
             no question of an evaluation split
The evaluation splits are drawn first, so the training knobs (sizes, operand counts, trace errors)
change no evaluation problem, and the base model's pretraining corpus holds all three out.
rl_train and sft_train are drawn independently and may share questions (as the paper's RL and
SFT data share MATH problems); a question may repeat inside a training split when the space
of problems is small. A share `trace_error_rate` of the teacher's traces slips once (see
`format_chain`); their examples keep the true answer, so a slipped trace grades 0.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from bridgerl.config import ArithConfig
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, VAL, Example, Task, TaskError

ALLOWED_OPS = "+-*"
ANSWER_MARK = "#"
PROMPT_TEMPLATE = "Q:{question}=\nA:"
# Canonical integers only: no leading zeros, no "+", no "-0".
_CANONICAL_INT = re.compile(r"-?[1-9][0-9]*|0")
# Special tokens a rollout engine may leave in a decoded completion (they are not answer text).
_SPECIAL_TEXT = ("<s>", "</s>", "<pad>", "<unk>")


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise TaskError(f"unknown operator {op!r}; arith supports {ALLOWED_OPS!r}")


def evaluate(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Left-to-right value of operands[0] ops[0] operands[1] ops[1] ..."""
    value = operands[0]
    for op, b in zip(ops, operands[1:], strict=True):
        value = apply_op(value, op, b)
    return value


def format_question(operands: Sequence[int], ops: Sequence[str]) -> str:
    """"3+4+5+2" (the expression, without "=")."""
    parts = [str(operands[0])]
    for op, b in zip(ops, operands[1:], strict=True):
        parts += [op, str(b)]
    return "".join(parts)


def format_fact(a: int, op: str, b: int, result: int | None = None) -> str:
    """One step / bare fact, "a+b=c": the single textual form shared by pretraining and chains.
    result: what the step writes after "=" (default the true value; a slipped teacher trace's own)."""
    return f"{a}{op}{b}={apply_op(a, op, b) if result is None else result}"


def format_answer(value: int) -> str:
    return f"{ANSWER_MARK}{value}"


def format_chain(operands: Sequence[int], ops: Sequence[str], slip: tuple[int, int] | None = None) -> str:
    """The expert solution: "3+4=7;7+5=12;12+2=14;#14".

    slip=(k, delta): the teacher writes step k's result off by `delta` ("7+5=13") and carries on
    correctly from the wrong value ("13+2=15;#15"), as a distilled trace with one mistake would.
    """
    steps, value = [], operands[0]
    for k, (op, b) in enumerate(zip(ops, operands[1:], strict=True)):
        result = apply_op(value, op, b) + (slip[1] if slip is not None and slip[0] == k else 0)
        steps.append(format_fact(value, op, b, result))
        value = result
    return ";".join(steps + [format_answer(value)])


def parse_final_answer(completion: object) -> int | None:
    """The integer after the FIRST '#' of the completion, or None when malformed.

    The answer runs from that '#' to the next whitespace or the end of the text, and must be
    a canonical integer ("14", "-3", "0"; not "014", "+3", "14;", "14.0"), so a model is only
    rewarded for a cleanly terminated, correctly formatted final answer. Only the first '#'
    counts, so emitting several answers cannot hedge. Special-token text ("</s>", "<pad>")
    is removed first. Never raises.
    """
    if not isinstance(completion, str):
        return None
    for special in _SPECIAL_TEXT:
        completion = completion.replace(special, " ")
    pos = completion.find(ANSWER_MARK)
    if pos < 0:
        return None
    rest = completion[pos + 1 :]
    token = rest.split(maxsplit=1)[0] if rest[:1] and not rest[:1].isspace() else ""
    if not _CANONICAL_INT.fullmatch(token) or len(token) > 64:
        return None
    return int(token)


def operand_bounds(config: ArithConfig, n_operands: int) -> tuple[int, int]:
    """Smallest and largest value an intermediate can take after n_operands-1 steps (interval arithmetic)."""
    lo, hi = 0, config.max_value
    for _ in range(n_operands - 1):
        cands: list[int] = []
        for op in config.ops:
            for a in (lo, hi):
                for b in (0, config.max_value):
                    cands.append(apply_op(a, op, b))
        lo, hi = min(cands + [lo]), max(cands + [hi])
    return lo, hi


def check_config(config: ArithConfig) -> None:
    if not config.ops or any(op not in ALLOWED_OPS for op in config.ops):
        raise TaskError(f"task.arith.ops={config.ops!r}: use a non-empty string of {ALLOWED_OPS!r}")
    if config.max_value < 1:
        raise TaskError(f"task.arith.max_value={config.max_value}: must be >= 1")
    for key in ("train_operands", "hard_operands"):
        counts = getattr(config, key)
        if not counts or any(n < 2 for n in counts):
            raise TaskError(f"task.arith.{key}={counts}: give one or more operand counts, each >= 2")
    for key in ("n_rl_train", "n_sft_train", "n_test", "n_test_hard", "n_val"):
        if getattr(config, key) < 0:
            raise TaskError(f"task.arith.{key} must be >= 0")


class ArithTask(Task):
    name = "arith"
    use_chat_template = False

    def __init__(self, config: ArithConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else ArithConfig()
        check_config(config)
        self._rng = random.Random(config.seed)
        # The test splits come first from the main RNG in both draw orders.
        self.splits[TEST] = self._unique(TEST, config.n_test, config.train_operands, exclude=set())
        self.splits[TEST_HARD] = self._unique(
            TEST_HARD, config.n_test_hard, config.hard_operands, exclude={e.question for e in self.splits[TEST]}
        )
        held_out = {e.question for e in self.splits[TEST]} | {e.question for e in self.splits[TEST_HARD]}
        if config.v1_draws:
            self._draw_v1(config, held_out)
            return
        # val next, so no training knob changes an evaluation problem.
        # At most n_val: small problem spaces (few operands) may have fewer unused problems left.
        n_val = max(0, min(config.n_val, self._space(config.train_operands) - len(held_out)))
        self.splits[VAL] = self._unique(VAL, n_val, config.train_operands, exclude=held_out)
        held_out |= {e.question for e in self.splits[VAL]}
        # Training splits, each from an RNG of its own. RL problems carry a teacher trace too (never
        # used as a reward): LUFFY injects it into the group, as the paper's D_RL and D_SFT are the
        # same problems with expert traces.
        sft_operands = config.sft_operands or config.train_operands
        self.splits[RL_TRAIN] = self._draw(RL_TRAIN, config.n_rl_train, config.train_operands, held_out,
                                           random.Random(config.seed * 1000 + 1))
        self.splits[SFT_TRAIN] = self._draw(SFT_TRAIN, config.n_sft_train, sft_operands, held_out,
                                            random.Random(config.seed * 1000 + 2))

    def _draw_v1(self, config: ArithConfig, held_out: set[str]) -> None:
        """The first testbed's draws after the test splits (the `testbed-v1` preset): rl_train, sft_train,
        then val, all from the main RNG, so its problems are exactly the ones its base model
        (assets/tiny-arith-v1) held out, and val depends on the training sizes."""
        self.splits[RL_TRAIN] = self._draw(RL_TRAIN, config.n_rl_train, config.train_operands, held_out, self._rng)
        self.splits[SFT_TRAIN] = self._draw(SFT_TRAIN, config.n_sft_train, config.sft_operands or config.train_operands,
                                            held_out, self._rng)
        used = held_out | {e.question for s in (RL_TRAIN, SFT_TRAIN) for e in self.splits[s]}
        n_val = max(0, min(config.n_val, self._space(config.train_operands) - len(used)))
        self.splits[VAL] = self._unique(VAL, n_val, config.train_operands, exclude=used)

    # -- generation -------------------------------------------------------------------------

    def sample_problem(self, rng: random.Random, n_operands: int) -> tuple[list[int], list[str]]:
        operands = [rng.randint(0, self.config.max_value) for _ in range(n_operands)]
        ops = [rng.choice(self.config.ops) for _ in range(n_operands - 1)]
        return operands, ops

    def make_example(self, split: str, i: int, operands: list[int], ops: list[str],
                     slip: tuple[int, int] | None = None) -> Example:
        return Example(
            id=f"{split}-{i}",
            question=format_question(operands, ops),
            answer=str(evaluate(operands, ops)),
            solution=format_chain(operands, ops, slip),
            meta={"operands": len(operands), **({"trace_slip": list(slip)} if slip else {})},
        )

    def _space(self, counts: list[int]) -> int:
        return sum((self.config.max_value + 1) ** n * len(set(self.config.ops)) ** (n - 1) for n in set(counts))

    def _unique(self, split: str, n: int, counts: list[int], exclude: set[str]) -> list[Example]:
        if n > self._space(counts) - len(exclude):
            raise TaskError(
                f"task.arith: {n} distinct {split} problems with {counts} operands do not exist; "
                "lower the split size or raise max_value / the operand counts"
            )
        seen, out = set(exclude), []
        while len(out) < n:
            operands, ops = self.sample_problem(self._rng, self._rng.choice(counts))
            q = format_question(operands, ops)
            if q not in seen:
                seen.add(q)
                out.append(self.make_example(split, len(out), operands, ops))
        return out

    def _draw(self, split: str, n: int, counts: list[int], exclude: set[str], rng: random.Random) -> list[Example]:
        """n training problems (repeats allowed) with teacher traces, drawn from `rng`."""
        if n and self._space(counts) <= self._n_with(exclude, counts):
            raise TaskError(f"task.arith: the evaluation splits use up every {counts}-operand problem; lower n_test")
        # Slips come from an RNG of their own, so trace_error_rate changes no problem.
        slips = random.Random(f"{self.config.seed}-{split}-slips")
        out: list[Example] = []
        while len(out) < n:
            operands, ops = self.sample_problem(rng, rng.choice(counts))
            if format_question(operands, ops) in exclude:
                continue
            slip = None
            if self.config.trace_error_rate and slips.random() < self.config.trace_error_rate:
                slip = (slips.randrange(len(ops)), slips.choice((-2, -1, 1, 2)))
            out.append(self.make_example(split, len(out), operands, ops, slip))
        return out

    @staticmethod
    def _n_with(questions: set[str], counts: list[int]) -> int:
        """How many of `questions` have one of the operand counts (operands are non-negative)."""
        return sum(1 for q in questions if sum(q.count(op) for op in ALLOWED_OPS) + 1 in counts)

    # -- the contract -----------------------------------------------------------------------

    def prompt(self, example: Example) -> str:
        return PROMPT_TEMPLATE.format(question=example.question)

    def grade(self, example: Example, completion: str) -> float:
        """1.0 iff the first '#' answer (see `parse_final_answer`) equals the gold answer."""
        got = parse_final_answer(completion)
        if got is None:
            return 0.0
        gold = parse_final_answer(ANSWER_MARK + str(getattr(example, "answer", "")))
        return 1.0 if gold is not None and got == gold else 0.0
