"""math-verify grading: a table of real-style answers, plus robustness (never raises, timeouts, threads)."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("math_verify", reason="math-verify is not installed (pip install math-verify)")

from bridgerl.tasks.grading import explosive, extract_answer, extract_boxed, grade_math, math_equal  # noqa: E402

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

    monkeypatch.setattr(grading, "_equal_untimed", slow)
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append((grading.math_equal("1", "1", timeout_s=0.3), time.monotonic())))
    start = time.monotonic()
    thread.start()
    thread.join(10)
    assert out and out[0][0] is False and out[0][1] - start < 2.0
