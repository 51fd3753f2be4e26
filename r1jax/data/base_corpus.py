"""A synthetic pretraining corpus that makes a tiny stand-in for a pretrained base model.

R1-Zero starts from a base model that can already solve some problems, sometimes, in
no fixed format. On CPU we cannot pretrain a real one, so we imitate what matters. Like
text on the web, the corpus answers each arithmetic problem (in the R1-Zero prompt) in
one of two ways:

- a *worked solution* (`worked_rate` of the time): the expression evaluated one
  "a op b = c" step at a time, innermost first, and the answer. A careless step
  (`error_rate`) is off by a little and the error carries to the answer. It uses the
  `<think>/<answer>` format `tagged_rate` of the time, else ends "the answer is N".
  With `check_rate`, a worked solution re-checks each step ("re-check : a op b = c") and
  catches its careless step ("wait , it is c"), so it reaches the right answer at about twice
  the length: the re-checking that R1-Zero learns to do more often (the "aha moment").
- a *quick answer*: "the answer is N" with no working, right only `guess_accuracy` of
  the time (otherwise off by 1 to 6), as a hurried reply would be.

With `narrate`, each worked step is introduced in words ("we get 3 + 4 = 7"), and each
word is Chinese with probability `chinese_rate` ("我们 get 3 + 4 = 7"): the language
mixing that R1-Zero shows and R1's language-consistency reward removes.

A model pretrained on it can compute the answers but mostly replies quickly, so it is
often wrong and rarely formatted: the situation in which GRPO's rule-based rewards
teach it to work the problem out (accuracy) in the R1 format (format), on problems it
was never rewarded on, since the choice to work is the same for every problem.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np


_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
_CARELESS_OFFSETS = (-3, -2, -1, 1, 2, 3)
_GUESS_OFFSETS = (-6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6)
NARRATION = (("we", "我们"), ("get", "得到"))  # (English, Chinese) words before each step


@dataclasses.dataclass(frozen=True)
class CorpusStyle:
    """How the corpus answers: the mixture the base model learns to imitate."""

    worked_rate: float = 0.3  # worked solutions; the rest are quick answers
    error_rate: float = 0.1  # a worked solution has one careless step
    tagged_rate: float = 0.5  # a worked solution uses <think>/<answer>
    guess_accuracy: float = 0.2  # a quick answer is right
    narrate: bool = False  # worked steps are introduced in words
    chinese_rate: float = 0.0  # a narrating word is Chinese
    check_rate: float = 0.0  # a worked solution re-checks every step and corrects a careless one
    restate: bool = False  # a worked step restates what is left of the expression (`render_steps`)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float" and not 0.0 <= value <= 1.0:
                raise ValueError(f"CorpusStyle.{field.name} is a probability, got {value}")
        if self.chinese_rate and not self.narrate:
            raise ValueError("CorpusStyle.chinese_rate needs narrate=True: only narrating words are mixed")


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def worked_steps(expression: str, rng: np.random.Generator, *,
                 error_rate: float, checked: bool = False) -> tuple[list[str], int, int]:
    """(the "a op b = c" steps, the value they reach, the true value) of an expression.

    With probability `error_rate` one step's result is off by 1 to 3 and later steps
    use the wrong value, as a careless solver would. `checked`: see `render_steps`.
    """
    tree = _parse(expression)
    return render_steps(tree, careless_step(tree, rng, error_rate=error_rate), checked=checked)


def _parse(expression: str) -> ast.AST:
    tree = ast.parse(expression, mode="eval").body
    for node in ast.walk(tree):
        if not (isinstance(node, ast.BinOp) and type(node.op) in _OPS or isinstance(node, ast.operator)
                or isinstance(node, ast.Constant) and isinstance(node.value, int)):
            raise ValueError(f"not an integer + - * expression: {expression!r}")
    return tree


def careless_step(tree: ast.AST, rng: np.random.Generator, *, error_rate: float) -> tuple[int, int] | None:
    """(which step, by how much) a careless solver gets wrong, with probability `error_rate`; else None."""
    num_steps = sum(isinstance(node, ast.BinOp) for node in ast.walk(tree))
    if not rng.random() < error_rate:
        return None
    index = int(rng.integers(max(num_steps, 1)))
    return (index, int(rng.choice(_CARELESS_OFFSETS))) if num_steps else None


def render_steps(tree: ast.AST, careless: tuple[int, int] | None, *, checked: bool = False,
                 restate: bool = False) -> tuple[list[str], int, int]:
    """(steps, the value they reach, the true value): the steps innermost first, the `careless` one
    off by its offset. `checked`: each step is followed by "re-check : a op b = c" with the right
    value, and the careless one also by "wait , it is c"; the solution goes on from the corrected
    value, so it reaches the true one (the behaviour R1-Zero's "aha moment" is about).
    `restate`: each step but the last is followed by "now <the expression with it done>", so the next
    step's operands stand just before it (a small model copies them from there far more reliably
    than it finds the k-th operand of a long expression)."""
    steps: list[str] = []
    done: dict[tuple[int, int], int] = {}  # (start, end) column of a step's expression -> its value as written

    def rest() -> str:  # the expression with every step so far replaced by its written value
        class Replace(ast.NodeTransformer):
            def visit_BinOp(self, node):
                key = (node.col_offset, node.end_col_offset)
                return ast.Constant(done[key]) if key in done else self.generic_visit(node)

        return ast.unparse(Replace().visit(copy.deepcopy(tree)))

    def visit(node) -> tuple[int, int]:  # (true value, value as the solver computed it)
        if isinstance(node, ast.Constant):
            return node.value, node.value
        (a, shown_a), (b, shown_b) = visit(node.left), visit(node.right)
        op = _OPS[type(node.op)]
        right = shown = _apply(op, shown_a, shown_b)
        if careless is not None and len(steps) == careless[0]:
            shown += careless[1]
        steps.append(f"{shown_a} {op} {shown_b} = {shown}")
        if checked:
            steps[-1] += f" , re-check : {shown_a} {op} {shown_b} = {right}"
            if shown != right:
                steps[-1] += f" , wait , it is {right}"
            shown = right
        done[node.col_offset, node.end_col_offset] = shown
        if restate and node is not tree:
            steps[-1] += f" , now {rest()}"
        return _apply(op, a, b), shown

    value, reached = visit(tree)
    return steps, reached, value


def sample_completion(expression: str, rng: np.random.Generator,
                      style: CorpusStyle = CorpusStyle()) -> tuple[str, bool]:
    """(completion text, whether its final answer is right) for one expression."""
    tree = _parse(expression)
    careless = careless_step(tree, rng, error_rate=style.error_rate)
    steps, answer, value = render_steps(tree, careless, restate=style.restate)
    if rng.random() < style.worked_rate:
        # drawn only where the corpus checks at all, so that one without checking keeps its draws
        if style.check_rate and rng.random() < style.check_rate:
            steps, answer, value = render_steps(tree, careless, checked=True, restate=style.restate)
        if style.narrate:
            steps = [" ".join([*(chinese if rng.random() < style.chinese_rate else english
                                 for english, chinese in NARRATION), step]) for step in steps]
        reasoning = " , ".join(steps)
        if rng.random() < style.tagged_rate:
            return f" <think> {reasoning} </think> <answer> {answer} </answer>", answer == value
        return f" {reasoning} . the answer is {answer} .", answer == value
    guess = value if rng.random() < style.guess_accuracy else value + int(rng.choice(_GUESS_OFFSETS))
    return f" the answer is {guess} .", guess == value


def base_corpus(examples: Iterable[Mapping[str, Any]], rng: np.random.Generator,
                style: CorpusStyle = CorpusStyle(), *,
                prompt: Callable[[Mapping[str, Any]], str]) -> list[tuple[str, str]]:
    """(prompt, completion) pairs for arithmetic examples ({"expression", ...}), each with a freshly drawn
    completion; `prompt(example)` is the prompt text (e.g. a `PromptRenderer` of the task's question)."""
    return [(prompt(example), sample_completion(example["expression"], rng, style)[0]) for example in examples]
