"""math-verify grading: a table of real-style answers, plus robustness (never raises, timeouts, threads)."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("math_verify", reason="math-verify is not installed (pip install math-verify)")

from bridgerl.tasks.grading import (  # noqa: E402
    explosive,
    extract_answer,
    extract_boxed,
    gold_problem,
    grade_math,
    math_equal,
    strip_units,
)

# (gold, completion, expected verdict)
CASES = [
    # fractions and decimals
    ("\\frac{1}{2}", "So the answer is \\boxed{0.5}.", True),
    ("0.5", "\\boxed{\\frac{1}{2}}", True),
    ("\\frac{1}{2}", "\\boxed{1/2}", True),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", True),
    ("\\frac{1}{3}", "\\boxed{0.33}", False),
    ("\\frac{1}{2}", "\\boxed{\\frac{2}{1}}", False),
    # LaTeX: roots, pi, intervals, tuples, sets, matrices
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", True),
    ("\\frac{\\pi}{2}", "\\boxed{\\pi/2}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "The polar coordinates are $\\boxed{(3, \\frac{\\pi}{2})}$.", True),
    ("(3,4]", "\\boxed{(3, 4]}", True),
    ("(3,4]", "\\boxed{[3,4]}", False),
    ("(-\\infty, 0]", "\\boxed{(-\\infty,0]}", True),
    ("3, 5, 7", "\\boxed{7, 5, 3}", True),
    ("\\{1,2\\}", "\\boxed{\\{2, 1\\}}", True),
    ("(15,-29)", "\\boxed{(15, -29)}", True),
    ("(15,-29)", "\\boxed{(-29, 15)}", False),
    ("\\begin{pmatrix} -2 \\\\ -14 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}-2\\\\-14\\end{pmatrix}}", True),
    # units, percentages, currency, text answers
    ("5", "The side is \\boxed{5\\text{ cm}}.", True),
    ("5", "\\boxed{5 cm}", True),
    ("\\frac{270}7\\text{ degrees}", "\\boxed{\\frac{270}{7}}", True),
    ("50", "\\boxed{50\\%}", True),
    ("\\$18.90", "\\boxed{18.9}", True),
    ("\\text{(C)}", "\\boxed{C}", True),
    ("\\text{(C)}", "\\boxed{D}", False),
    # word-problem golds with units (ASDiv "9 (apples)", trailing unit words), gold and answer alike
    ("9 (apples)", "\\boxed{9}", True),
    ("9 (apples)", "\\boxed{8}", False),
    ("9", "\\boxed{9 (apples)}", True),
    ("0.5 (meters)", "\\boxed{\\frac{1}{2}}", True),
    ("1,252 (dollars)", "\\boxed{1252}", True),
    ("2 (pounds); 3 (ounces)", "\\boxed{2; 3}", True),
    ("12 dollars", "\\boxed{12}", True),
    ("12 dollars", "\\boxed{13}", False),
    ("12", "The total is \\boxed{12 dollars}.", True),
    ("60 km/h", "\\boxed{60}", True),
    ("5 cm^2", "\\boxed{5}", True),
    ("\\frac{1}{2} cup", "\\boxed{0.5}", True),
    # ... but not where the words are part of the value
    ("2 pi", "\\boxed{2}", False),
    ("3 i", "\\boxed{3}", False),
    ("1 million", "\\boxed{1}", False),
    # float golds (SVAMP writes 145.0) match integer answers, and the reverse
    ("145.0", "\\boxed{145}", True),
    ("145", "\\boxed{145.0}", True),
    ("51.0 (dollars)", "\\boxed{51}", True),
    ("145.0", "\\boxed{146}", False),
    # thousands separators and big numbers
    ("1080", "\\boxed{1,080}", True),
    ("10,\\!080", "\\boxed{10080}", True),
    ("11,\\! 111,\\! 111,\\! 100", "\\boxed{11111111100}", True),
    ("4.5e33", "\\boxed{4.5 \\times 10^{33}}", True),
    ("025", "\\boxed{25}", True),
    # negative numbers
    ("-3", "\\boxed{-3}", True),
    ("-3", "\\boxed{3}", False),
    # OlympiadBench-style multi-answers
    ("69,84", "\\boxed{84, 69}", True),
    ("(1,8,19), (2,7,13), (4,5,7)", "\\boxed{(1,8,19),(2,7,13),(4,5,7)}", True),
    # boxed vs unboxed: the last box counts; without a box, the last line
    ("6", "First \\boxed{5}, then on reflection \\boxed{6}", True),
    ("5", "First \\boxed{5}, then on reflection \\boxed{6}", False),
    ("5", "The answer is \\boxed{5} and \\boxed{6", True),  # a truncated last box is skipped
    ("3", "\\fbox{3}", True),
    ("27", "They meet 27 miles from A.\nThe final answer is 27.", True),
    ("\\frac{1}{2}", "Thus the probability is $\\frac{1}{2}$.", True),
    ("27", "27 is not it.\nThe answer is 30.", False),
    # malformed, empty, garbage
    ("5", "\\boxed{\\frac{5}{}", False),
    ("5", "\\boxed{}", False),
    ("5", "", False),
    ("5", "   \n  ", False),
    ("5", "asdf qwer }{}{ \\\\ $$ $", False),
    ("5", "\\boxed{9^{9^{9^{9}}}}", False),
]


@pytest.mark.parametrize(("gold", "completion", "expected"), CASES)
def test_grading_table(gold: str, completion: str, expected: bool) -> None:
    assert math_equal(gold, completion) is expected
    assert grade_math(gold, completion) == (1.0 if expected else 0.0)


@pytest.mark.parametrize(("text", "expected"), [
    ("9 (apples)", "9"), ("0.5 (meters)", "0.5"), ("3 (cups of flour)", "3"), ("2 (pounds); 3 (ounces)", "2; 3"),
    ("12 dollars", "12"), ("5 square feet", "5"), ("60 km/h", "60"), ("10 m/s", "10"), ("5 cm^2", "5"),
    ("3:30 pm", "3:30"), ("\\frac{1}{2} cup", "\\frac{1}{2}"),
    # kept: value words, a lone letter (a variable), anything but a lone number before the words
    ("2 pi", "2 pi"), ("1 million", "1 million"), ("3 dozen", "3 dozen"), ("50 percent", "50 percent"),
    ("3 i", "3 i"), ("2 x y", "2 x y"), ("x + 1 apples", "x + 1 apples"), ("(3, 4)", "(3, 4)"), ("2 (pi)", "2 (pi)"),
    ("\\text{(C)}", "\\text{(C)}"), ("145.0", "145.0"),
])
def test_strip_units_keeps_the_number_and_the_math(text: str, expected: str) -> None:
    assert strip_units(text) == expected


@pytest.mark.parametrize(("gold", "problem"), [
    ("\\frac{", "braces do not balance"), ("}{", "braces do not balance"), ("\\boxed{3", "braces do not balance"),
    ("\\boxed{}", "nothing is left"), ("\\text{ }", "nothing is left"), ("$$", "nothing is left"), ("\\,", "nothing is left"),
    ("27", None), ("9 (apples)", None), ("\\{1,2\\}", None), ("\\left( 3, \\frac{\\pi}{2} \\right)", None),
    ("np.arcsin(10/13)", None), ("t(0,4]", None),  # read as text by math-verify, and matched as text
])
def test_gold_problem_refuses_only_golds_no_answer_can_match(gold: str, problem: str | None) -> None:
    why = gold_problem(gold)
    assert why == problem if problem is None else problem in why
    if problem is None:
        assert math_equal(gold, f"\\boxed{{{gold}}}", timeout_s=0)  # an accepted gold can be graded right


def test_extract_boxed_takes_the_last_balanced_box() -> None:
    assert extract_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert extract_boxed("\\fbox{7}") == "7"
    assert extract_boxed("\\boxed 5") == "5"
    assert extract_boxed("no box here") is None
    assert extract_boxed("\\boxed{unclosed") is None
    assert extract_boxed("") is None


def test_extract_answer_falls_back_to_the_last_nonempty_line() -> None:
    assert extract_answer("step 1\nThe answer is 4.\n\n") == "The answer is 4."
    assert extract_answer("x \\boxed{3}\nmore text") == "3"
    assert extract_answer("") is None


def test_explosive_numbers_are_caught_before_sympy() -> None:
    assert explosive("9^{9^{9}}") and explosive("(10^{8})!") and explosive("99999999999^{99999999999}")
    assert not explosive("2^{1024}") and not explosive("10^{33}") and not explosive("5!")


@pytest.mark.parametrize("bad", [None, 5, b"5", ["5"], "\x00\\boxed{\x00}", "\\boxed{" * 200, "}" * 500])
def test_grading_never_raises(bad) -> None:
    assert math_equal("5", bad) is False  # type: ignore[arg-type]
    assert math_equal(bad, "\\boxed{5}") is False  # type: ignore[arg-type]


def test_grading_honors_the_timeout(monkeypatch) -> None:
    import bridgerl.tasks.grading as grading

    def slow(gold: str, completion: str) -> bool:
        while True:  # a pure-Python spin stands in for a pathological sympy simplification
            time.sleep(0.01)

    grading._warm()  # the one-time import of math-verify is not part of a timed grade
    monkeypatch.setattr(grading, "_equal_untimed", slow)
    start = time.monotonic()
    assert grading.math_equal("1", "\\boxed{1}", timeout_s=0.3) is False
    assert time.monotonic() - start < 2.0


def test_main_thread_timer_restores_an_outer_alarm() -> None:
    import signal

    fired = []

    def outer(signum, frame) -> None:
        fired.append(signum)

    old = signal.signal(signal.SIGALRM, outer)
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        assert math_equal("\\frac{1}{2}", "\\boxed{0.5}", timeout_s=1.0)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 5.0  # the outer timer is re-armed with what was left
        assert signal.getsignal(signal.SIGALRM) is outer and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_grading_works_off_the_main_thread() -> None:
    import bridgerl.tasks.grading as grading

    grading._warm()  # the one-time import of math-verify is not part of the timed work below
    results: dict[str, object] = {}

    def work() -> None:
        try:
            start = time.monotonic()
            results["right"] = math_equal("\\frac{1}{2}", "\\boxed{0.5}")
            results["wrong"] = math_equal("\\frac{1}{2}", "\\boxed{0.6}")
            results["explosive"] = math_equal("1", "\\boxed{10^{10^{10}}}", timeout_s=1.0)
            results["seconds"] = time.monotonic() - start
        except BaseException as exc:  # the test fails below, naming it
            results["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert "error" not in results, results.get("error")
    assert results["right"] is True and results["wrong"] is False and results["explosive"] is False
    assert results["seconds"] < 30


def test_timeout_off_the_main_thread(monkeypatch) -> None:
    import bridgerl.tasks.grading as grading

    def slow(gold: str, completion: str) -> bool:
        time.sleep(3)
        return True

    grading._warm()  # the one-time import of math-verify is not part of a timed grade
    monkeypatch.setattr(grading, "_equal_untimed", slow)
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append((grading.math_equal("1", "1", timeout_s=0.3), time.monotonic())))
    start = time.monotonic()
    thread.start()
    thread.join(10)
    assert out and out[0][0] is False and out[0][1] - start < 2.0


def test_math_verify_is_imported_before_the_first_grade_of_a_process_starts_its_timer() -> None:
    # A cold import of math-verify takes seconds (18 s on a busy machine): inside the timer it would
    # time out the first grade of every process, a right answer scored 0. A fresh interpreter notes,
    # each time the timer is armed, whether math-verify is already imported.
    import subprocess
    import sys

    code = (
        "import signal, sys\n"
        "from bridgerl.tasks import grading\n"
        "armed, real = [], signal.setitimer\n"
        "def spy(which, seconds, interval=0.0):\n"
        "    if seconds > 0: armed.append('math_verify' in sys.modules)\n"
        "    return real(which, seconds, interval)\n"
        "signal.setitimer = spy\n"
        "print(grading.math_equal('1', '\\\\boxed{1}', 60.0), armed)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "True [True]", proc.stdout + proc.stderr[-2000:]
