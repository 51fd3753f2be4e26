"""Running a Python program in the sandbox, as the sandbox tests and the hostile-program tests do."""
import os
import sys
import textwrap

from r1jax.rewards import code_execution, run_sandboxed

# isolated mode, no site, no bytecode: the program sees only the interpreter and its standard library
PYTHON = [os.path.realpath(sys.executable), "-I", "-S", "-B", "main.py"]
EXPOSED = (os.path.dirname(os.path.realpath(sys.executable)), os.path.realpath(sys.base_prefix))


def run(program: str, limits, exposed=()):
    """`program` as main.py in the sandbox under `limits`, with the interpreter's paths (and `exposed`) visible."""
    return run_sandboxed(PYTHON, files={"main.py": textwrap.dedent(program)}, limits=limits,
                         exposed_paths=EXPOSED + tuple(exposed))


def score(program: str, expected_output: str, limits) -> float:
    """The code reward of `program` in a fenced completion, against one test with no input."""
    completion = f"Here you go:\n```python\n{textwrap.dedent(program)}\n```"
    return code_execution(completion, [{"input": "", "output": expected_output}], limits=limits)
