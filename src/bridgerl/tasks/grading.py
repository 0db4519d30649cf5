"""Math answer grading with math-verify: one deterministic function used as reward and for evaluation.

How a completion's final answer is taken (the convention of the Qwen2.5-Math / DeepSeek-R1 /
open-r1 evaluations, which the BRIDGE paper's prompt asks for):

1. the content of the LAST `\\boxed{...}` (or `\\fbox{...}` / `\\framebox{...}`), braces balanced;
2. when the completion has no box, whatever math-verify can parse from the last non-empty line
   (it finds "the final answer is ...", a `$...$` expression, or a bare number there).
   A truncated completion whose last line happens to hold the right number is therefore
   rewarded; boxed answers are still what the prompt asks for and what evaluation expects.

The gold answer is wrapped in `\\boxed{}` before parsing so bare LaTeX (`\\frac{1}{2}`, `\\text{(C)}`)
is read the same way as a boxed completion. `verify(gold, answer)` is called gold first: the
comparison is not symmetric (assignments like `x = 3`, intervals vs inequalities).

A little normalisation happens before math-verify (gold and boxed answers): `\\!` thin spaces,
`\\$` signs and `$` delimiters are dropped, thousands separators of a lone number (`1,000`,
`10,\\!080`) are removed, and plain scientific notation (`4.5e33`, Minerva) becomes
`4.5\\times 10^{33}` (math-verify reads `e` as Euler's number).

Units on a number (`strip_units`, gold and boxed answer alike). Word-problem sets annotate numeric
golds with units: ASDiv writes `9 (apples)`, others `12 dollars`; math-verify would read those
letters as symbols (9*a*p*p*l*e*s) and grade a right `\\boxed{9}` wrong. As the common harnesses
do (lm-eval's ASDiv target keeps what precedes ` (`; Qwen2.5-Math's parser drops parenthesised
notes and trailing unit words), a number followed by a parenthesised note of words, or by one to
five unit words (`dollars`, `km/h`, `square feet`, `cm^2`), keeps only the number. The unit stays
where it is part of the math: a word of the value (`2 pi`, `1 million`, `3 dozen`, `50 percent`),
a single trailing letter (`3 i`, `2 x`: a variable, left to math-verify, which drops its own list of
one-letter units), or anything but a lone number before it (`x + 1 apples` is left alone).
Numbers written as floats (`145.0`) need nothing: math-verify compares values.

Timeouts. `timeout_s` bounds the whole grading of one answer (parsing gold and answer plus the
comparison); a timeout grades False. math-verify's own timeouts use `signal.alarm`, which only
works in the main thread, so its timeouts are always disabled and this module times out itself:
- main thread (POSIX): `signal.setitimer` with a float delay, restoring any timer and SIGALRM
  handler that were there before (an outer alarm keeps its remaining time);
- any other thread (or no `setitimer`): the grading runs in a daemon helper thread joined with
  `timeout_s`. On a timeout the caller gets False at once, but Python cannot kill the helper:
  it finishes (or spins) in the background. That only happens for pathological answers.
  A join cannot return while the helper sits in one C call that holds the GIL (sympy
  evaluating 9^{9^{9}} as a big integer), so answers holding numbers of more than
  MAX_NUMBER_DIGITS digits (numeric power towers, huge factorials) grade False before
  sympy sees them (`explosive`), on every thread.
Any exception inside math-verify grades False; `math_equal` never raises.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import signal
import threading
import time
from typing import Any

_BOX_RE = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SCI_RE = re.compile(r"^(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)$")
# A number as word problems write it (9, -3, 12.50, .5, 1,000, 3/4, 2:1, \frac{1}{2}), and unit words after it.
_NUM = r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+|\\[dt]?frac\{\d+\}\{\d+\})(?:\s*[/:]\s*\d+(?:\.\d+)?)?"
_WORD = r"[A-Za-z]+(?:[-'/.][A-Za-z]+)*\.?(?:\^\{?[23]\}?)?"
_WORDS = rf"{_WORD}(?:\s+{_WORD}){{0,4}}"
# "9 (apples)", also inside a list: "2 (pounds); 3 (ounces)"
_PAREN_UNIT_RE = re.compile(rf"(^|[;,]\s*)({_NUM})\s*\(\s*({_WORDS})\s*\)(?=\s*(?:[;,]|$))")
_TRAILING_UNIT_RE = re.compile(rf"^({_NUM})\s+({_WORDS})$")  # "12 dollars", "60 km/h"
# Words that are part of a value, never a unit: constants, scale words, percent (math-verify reads it).
_VALUE_WORDS = frozenset({
    "pi", "e", "i", "inf", "infty", "infinity", "and", "or", "mod", "choose",
    "hundred", "hundreds", "thousand", "thousands", "million", "millions", "billion", "billions",
    "trillion", "trillions", "dozen", "dozens", "half", "halves", "third", "thirds", "quarter", "quarters",
    "percent", "percentage", "pct",
})
_PLAIN_NUMBER_RE = re.compile(r"^-?\d+(?:\.\d+)?$")
# Markup that holds no value: empty text boxes and spacing commands.
_EMPTY_LATEX_RE = re.compile(r"\\(?:text|mbox|mathrm|textbf|mathbf)\s*\{\s*\}|\\[,;: !]|\\q?quad\b|~")
# Longer answers are not plausible final answers and can make sympy crawl.
MAX_ANSWER_CHARS = 1000
# An answer holding a number with more digits than this (9^{9^{9}}, (10^8)!) grades False without
# calling sympy: evaluating it is a C-level big-int loop that holds the GIL, which no timeout can
# interrupt off the main thread (and that can exhaust memory on it).
MAX_NUMBER_DIGITS = 5000
_NUM_POW_RE = re.compile(r"(\d+(?:\.\d+)?)\s*\^\s*(?:\{\s*(\d+(?:\.\d+)?)\s*\}|(\d))")
_FACTORIAL_RE = re.compile(r"(\d+)\s*\)?\s*!")


class _GradeTimeout(BaseException):
    """Raised by our SIGALRM handler; a BaseException so math-verify's `except Exception` lets it through."""


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its timeout is off; we time out ourselves (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` / `\\framebox{...}` (balanced braces), else None.

    `\\boxed 5` (no braces: the next token) is also accepted. A last box left unclosed (a
    truncated completion) is skipped in favour of an earlier, complete one.
    """
    if not text:
        return None
    for m in reversed(list(_BOX_RE.finditer(text))):
        rest = text[m.end():]
        if rest.lstrip(" ").startswith("{"):
            start = m.end() + (len(rest) - len(rest.lstrip(" ")))
            content = _balanced(text, start)
            if content is not None:
                return content.strip()
        elif rest.startswith(" "):
            token = re.match(r" +([^\s$]+)", rest)
            if token:
                return token.group(1)
    return None


def _balanced(text: str, open_at: int) -> str | None:
    """The text inside the brace group opening at `open_at`, or None when it never closes."""
    depth = 0
    for j in range(open_at, len(text)):
        ch = text[j]
        if ch in "{}" and j > 0 and text[j - 1] == "\\":
            continue  # \{ and \} are set braces, not grouping
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : j]
    return None


def extract_answer(completion: str) -> str | None:
    """The text taken as the completion's final answer: the last box, else the last non-empty line."""
    if not completion or not completion.strip():
        return None
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed
    for line in reversed(completion.strip().splitlines()):
        if line.strip():
            return line.strip()
    return None


def _is_unit(words: str) -> bool:
    return not any(w.lower().rstrip(".") in _VALUE_WORDS for w in words.split())


def strip_units(text: str) -> str:
    """A number's unit note or trailing unit words removed: "9 (apples)" -> "9", "12 dollars" -> "12".

    Only a lone number (or a list of them) loses its unit; see the module docstring for what is kept.
    """
    s = _PAREN_UNIT_RE.sub(lambda m: m.group(0) if not _is_unit(m.group(3)) else m.group(1) + m.group(2), text)
    m = _TRAILING_UNIT_RE.match(s.strip())
    if m and _is_unit(m.group(2)) and not all(len(w) == 1 for w in m.group(2).split()):  # "3 i" is math
        return m.group(1)
    return s


def normalize_answer(text: str) -> str:
    """Clean-up before math-verify: delimiters, currency, thin spaces, units, separators, 1e5."""
    s = text.strip()
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"(?<=\d)(?:,\\!|\{,\})\s*(?=\d)", "", s).replace("\\!", "").strip()
    s = strip_units(s).strip()
    if _THOUSANDS_RE.match(s):  # only a lone number: "(1,500)" stays a tuple
        s = s.replace(",", "")
    sci = _SCI_RE.match(s)
    if sci:
        s = f"{sci.group(1)}\\times 10^{{{int(sci.group(2))}}}"
    return s


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    from math_verify import parse

    inner = extract_boxed(gold) if _BOX_RE.search(gold) else gold
    return tuple(parse(f"\\boxed{{{normalize_answer(inner or '')}}}", parsing_timeout=None))


def _parse_answer(completion: str) -> list[Any]:
    from math_verify import parse

    boxed = extract_boxed(completion)
    if boxed is not None:
        return parse(f"\\boxed{{{normalize_answer(boxed)}}}", parsing_timeout=None)
    line = extract_answer(completion)
    if line is None:
        return []
    return parse(line, parsing_timeout=None)  # raw: its `$...$` delimiters guide math-verify


def explosive(text: str) -> bool:
    """True when `text` holds a numeric power tower or factorial too big to evaluate safely."""
    s = text
    for _ in range(50):  # innermost numeric power first: 9^{9^{9}} -> 9^{387420489} -> too big
        m = _NUM_POW_RE.search(s)
        if m is None:
            break
        base, exp = float(m.group(1)), float(m.group(2) or m.group(3))
        digits = exp * math.log10(base) if base > 1 else 0.0
        if digits > MAX_NUMBER_DIGITS:
            return True
        # Its value matters only as a later exponent; 10^digits has the same size there.
        value = str(round(base**exp)) if digits < 15 else "9" * (int(digits) + 1)
        s = s[: m.start()] + value + s[m.end() :]
    for n in _FACTORIAL_RE.findall(s):
        k = int(n) if len(n) < 12 else 10**12
        if k > 20 and k * math.log10(k / math.e) > MAX_NUMBER_DIGITS:  # n! has ~n log10(n/e) digits
            return True
    return False


def _equal_untimed(gold: str, completion: str) -> bool:
    from math_verify import verify

    answer = extract_answer(completion) or ""
    if len(answer) > MAX_ANSWER_CHARS or explosive(answer):
        return False
    gold_parsed = list(_parse_gold(gold))
    if not gold_parsed:
        return False
    answer_parsed = _parse_answer(completion)
    if not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))


def _safe_equal(gold: str, completion: str) -> bool:
    try:
        return _equal_untimed(gold, completion)
    except Exception:  # math-verify and sympy raise many types on odd input; any of them grades 0
        return False


@functools.cache
def _warm() -> bool:
    """Import math-verify and build its LaTeX parser once, outside any timeout: a cold start takes
    seconds (18 s measured on a loaded 2-core machine), which would otherwise time out the first
    grade of a process. False when math-verify is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    one = parse("\\boxed{1}", parsing_timeout=None)
    verify(one, one, timeout_seconds=None)
    return True


def _equal_with_alarm(gold: str, completion: str, timeout_s: float) -> bool:
    def on_alarm(signum: int, frame: Any) -> None:
        raise _GradeTimeout

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    started = time.monotonic()
    try:
        try:
            return _safe_equal(gold, completion)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _GradeTimeout:  # also when it fires between the return and the disarm above
        return False
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # give an outer timer back what is left of its time (at least a tick)
            remaining = max(old_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)


def _equal_in_helper_thread(gold: str, completion: str, timeout_s: float) -> bool:
    result: list[bool] = []
    helper = threading.Thread(
        target=lambda: result.append(_safe_equal(gold, completion)), name="bridgerl-grade", daemon=True
    )
    helper.start()
    helper.join(timeout_s)
    return bool(result and result[0])


def math_equal(gold: str, answer_text: str, timeout_s: float = 5.0) -> bool:
    """True if the final answer of `answer_text` (a completion or a bare answer) equals `gold`.

    The final answer is taken as described in the module docstring (last box, else last line).
    Never raises: malformed input, a math-verify error or a timeout (`timeout_s`, whole call)
    all give False. Safe to call from any thread.
    """
    if not isinstance(gold, str) or not isinstance(answer_text, str) or not gold.strip():
        return False
    if not answer_text.strip():
        return False
    _warm()
    if timeout_s is None or timeout_s <= 0:
        return _safe_equal(gold, answer_text)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _equal_with_alarm(gold, answer_text, float(timeout_s))
    return _equal_in_helper_thread(gold, answer_text, float(timeout_s))


def _braces_balance(text: str) -> bool:
    depth = 0
    for j, ch in enumerate(text):
        if ch in "{}" and j > 0 and text[j - 1] == "\\":
            continue  # \{ and \} are set braces
        depth += 1 if ch == "{" else -1 if ch == "}" else 0
        if depth < 0:
            return False
    return depth == 0


def gold_problem(gold: str) -> str | None:
    """Why no completion can ever be graded right against `gold` (None when one can).

    Two cases, both cheap to see (no math-verify call, so loading a file costs nothing):
    - its braces do not balance (`\\frac{`): the gold cannot be boxed for parsing, and no
      boxed answer can hold it;
    - nothing is left of it once box, `$`, units, empty `\\text{}` and spacing are removed.
    Everything else can be matched: math-verify reads malformed LaTeX it cannot turn into math
    (`\\frac{1}`, `np.arcsin(10/13)`) as text, and text equal to the gold grades right. The
    shipped Minerva and OlympiadBench files hold seven golds read only as text, all graded right
    against themselves; refusing text-only golds would refuse them too.
    """
    text = gold.strip() if isinstance(gold, str) else ""
    if _PLAIN_NUMBER_RE.match(text):
        return None
    if not _braces_balance(text):
        return "its braces do not balance"
    inner = extract_boxed(text) if _BOX_RE.search(text) else text
    if inner is None:
        return "its \\boxed{} never closes"
    content = _EMPTY_LATEX_RE.sub("", normalize_answer(inner))
    if not content.strip():
        return "nothing is left of it once its LaTeX markup is read"
    return None


def grade_math(gold: str, completion: str, timeout_s: float = 5.0) -> float:
    """1.0 if correct else 0.0 (the reward and the evaluation score)."""
    return 1.0 if math_equal(gold, completion, timeout_s) else 0.0
