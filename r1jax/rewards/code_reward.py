"""Code accuracy: run the completion's program against test cases, sandboxed.

Tests are dicts, one of:
  {"input": "1 2\\n", "output": "3\\n"}  stdin/stdout: the program's output must
      equal the expected one, up to trailing whitespace on each line and
      leading/trailing blank lines;
  {"assert": "assert add(1, 2) == 3"}  the program is executed as a module, then
      the statement; the test passes if it completes without an exception.

Each test is its own sandboxed process (see `r1jax.rewards.sandbox`) with its own wall and
CPU limits, so one test cannot tamper with another's verdict, and outputs are
compared here, in the trusted process.

Known limit of assert-style tests: program and assertion share one interpreter,
so a program written to defeat the harness can (an object whose __eq__ is always
True, or one that digs the harness's completion token out of its stack frames).
The token does stop the common hack of exiting early with status 0.
"""
from __future__ import annotations

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
import os, sys
_token = sys.stdin.readline().strip()
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the token's memfd is gone from reach
sys.stdin = open(0, closefd=False)
_namespace = {"__name__": "solution"}
with open("main.py") as _source:
    exec(compile(_source.read(), "main.py", "exec"), _namespace)
with open("test.py") as _test:
    exec(compile(_test.read(), "test.py", "exec"), _namespace)
sys.stdout.flush()
os.write(1, ("\n" + _token + "\n").encode())
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
    if program is None or not program.strip() or len(program) > MAX_PROGRAM_CHARS:
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
