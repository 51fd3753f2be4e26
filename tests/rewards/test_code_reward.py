"""Code execution reward: program extraction, stdin/stdout and assert tests."""
import pytest

from r1jax.rewards import SandboxLimits, code_execution, extract_program, get_reward, sandbox_capabilities
from r1jax.rewards.code_reward import check_tests, function_program

needs_sandbox = pytest.mark.skipif(not sandbox_capabilities().isolated,
                                   reason="sandboxed runs need root (namespaces and a user switch)")

LIMITS = SandboxLimits(wall_seconds=3.0, cpu_seconds=2.0)
ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
IO_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4", "output": "6"},
            {"input": "2 2\n", "output": "5\n"}]  # the last one is wrong on purpose


@pytest.mark.parametrize("completion, program", [
    ("```python\nprint(1)\n```", "print(1)\n"),
    ("```py\nx = 1\n```", "x = 1\n"),
    ("```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```", "print(2)\n"),  # the last one
    ("```python\nprint(1)\n```\n```bash\nls\n```", "print(1)\n"),                # python preferred
    ("```\nprint(3)\n```", "print(3)\n"),                                        # no language tag
    ("```python\nprint(1)\n```\n```python\nunclosed", "print(1)\n"),              # unclosed fence ignored
    ("print(1)", None),
    ("", None),
])
def test_extract_program(completion, program):
    assert extract_program(completion) == program


@needs_sandbox
def test_stdin_stdout_fraction_and_all_or_nothing():
    assert code_execution(ADD, IO_TESTS, limits=LIMITS) == pytest.approx(2 / 3)
    assert code_execution(ADD, IO_TESTS[:2], limits=LIMITS) == 1.0
    assert code_execution(ADD, IO_TESTS, all_or_nothing=True, limits=LIMITS) == 0.0
    assert get_reward("code_all_or_nothing")(ADD, tests=IO_TESTS[:2], question="add") == 1.0


@needs_sandbox
def test_output_comparison_ignores_trailing_whitespace_only():
    program = "```python\nprint('a  ')\nprint('b')\nprint()\n```"
    assert code_execution(program, [{"input": "", "output": "a\nb"}], limits=LIMITS) == 1.0
    assert code_execution(program, [{"input": "", "output": "a b"}], limits=LIMITS) == 0.0


@needs_sandbox
def test_assert_style_tests():
    program = "```python\ndef add(a, b):\n    return a + b\n```"
    tests = [{"assert": "assert add(1, 2) == 3"}, {"assert": "assert add(-1, 1) == 0"},
             {"assert": "assert add(2, 2) == 5"}]
    assert code_execution(program, tests, limits=LIMITS) == pytest.approx(2 / 3)
    mixed = [{"assert": "assert add(1, 2) == 3"}, {"input": "", "output": ""}]
    assert code_execution(program, mixed, limits=LIMITS) == 1.0


@needs_sandbox
def test_exiting_early_does_not_pass_assert_tests():
    tests = [{"assert": "assert solve() == 42"}]
    for trick in ("import sys\nsys.exit(0)", "import os\nos._exit(0)",
                  # replay the harness's token from stdin, then leave before the test
                  "import os\nos.write(1, b'\\n' + os.pread(0, 100, 0))\nos._exit(0)"):
        assert code_execution(f"```python\n{trick}\n```", tests, limits=LIMITS) == 0.0


@needs_sandbox
def test_crashing_program_scores_zero():
    assert code_execution("```python\nraise SystemExit(3)\n```", IO_TESTS, limits=LIMITS) == 0.0
    assert code_execution("```python\nimport numpy\n```", [{"assert": "pass"}], limits=LIMITS) == 0.0  # stdlib only


def test_unjudgeable_and_missing_programs():
    assert code_execution(ADD, []) is None
    assert code_execution("no code here", IO_TESTS) == 0.0
    assert code_execution("```python\n\n```", IO_TESTS) == 0.0
    assert code_execution("```python\n" + "x = 1\n" * 30_000 + "```", IO_TESTS) == 0.0


@pytest.mark.parametrize("tests, message", [
    ("print(1)", "tests must be a list"),
    ([{"input": "1"}], r"tests\[0\] .* must have an 'assert' key"),
    ([["1", "2"]], r"tests\[0\]"),
])
def test_malformed_tests_are_explained(tests, message):
    with pytest.raises((TypeError, ValueError), match=message):
        code_execution(ADD, tests)


def test_unknown_language_is_explained():
    with pytest.raises(ValueError, match="unsupported language 'cobol'"):
        code_execution(ADD, IO_TESTS, language="cobol")


# ---- function problems (HumanEval's form) ----------------------------------------------------

SQUARE = {"code_prompt": 'from typing import List\n\n\ndef squares(xs: List[int]) -> List[int]:\n    """Square each."""\n',
          "entry_point": "squares",
          "test": "def check(candidate):\n    n = 3\n    assert candidate([]) == []\n"
                  "    assert candidate([n]) == [9]\n    assert candidate([1, -2]) == [1, 4]\n"}


def test_function_program_continues_the_prompt_or_runs_a_fenced_program_after_it():
    prompt, name = SQUARE["code_prompt"], "squares"
    body = "    return [x * x for x in xs]\n"
    assert function_program(body, prompt, name) == prompt + body  # OpenAI's form: the body continues the prompt
    whole = "def squares(xs):\n    return [x * x for x in xs]\n"
    assert function_program(f"Sure:\n```python\n{whole}```\n", prompt, name) == prompt + "\n" + whole
    # fenced code that does not define the function is a body; a __future__ import runs alone
    assert function_program(f"```python\n{body}```", prompt, name) == prompt + body
    future = "from __future__ import annotations\n" + whole
    assert function_program(f"```python\n{future}```", prompt, name) == future


def test_check_tests_split_per_top_level_assert():
    whole, = check_tests(SQUARE["test"], "squares")
    assert whole == {"assert": SQUARE["test"] + "\ncheck(squares)\n"}
    split = check_tests(SQUARE["test"], "squares", per_assert=True)
    assert len(split) == 3
    assert all("n = 3" in t["assert"] and t["assert"].count("assert candidate") == 1 for t in split)
    assert "candidate([n]) == [9]" in split[1]["assert"]
    loop = "def check(candidate):\n    for x in range(3):\n        assert candidate([x]) == [x * x]\n"
    assert len(check_tests(loop, "squares", per_assert=True)) == 1  # no top-level assert: one test
    with pytest.raises(ValueError, match="no top-level check"):
        check_tests("assert True\n", "squares", per_assert=True)


@needs_sandbox
def test_function_rewards_by_hand():
    all_or_nothing, fraction = get_reward("code_function"), get_reward("code_function_fraction")
    right = "    return [x * x for x in xs]\n"
    wrong_on_negatives = "    return [x * abs(x) for x in xs]\n"  # passes 2 of 3 asserts
    assert all_or_nothing(right, **SQUARE) == fraction(right, **SQUARE) == 1.0
    assert all_or_nothing(wrong_on_negatives, **SQUARE) == 0.0
    assert fraction(wrong_on_negatives, **SQUARE) == pytest.approx(2 / 3)
    chat = "```python\ndef squares(xs):\n    return [x ** 2 for x in xs]\n```"
    assert all_or_nothing(chat, **SQUARE) == 1.0
    assert all_or_nothing("I cannot do that.", **SQUARE) == fraction("", **SQUARE) == 0.0
