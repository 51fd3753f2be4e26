"""Small Python function problems, generated locally: a training family for code RL.

Each problem is one behaviour of `BEHAVIOURS` ("the running maximum of a list", "count the
vowels", "rotate a list left by k"...) with its parameters drawn (k, a letter, a bound), a
function name, a docstring with two worked examples, a reference body, and hidden tests:
`check(candidate)` asserting the reference's value on further generated inputs. The examples
have HumanEval's fields, so they are scored as it is (`code_function`, or
`code_function_fraction` for the fraction of asserts passed).

The split is by behaviour: the test split's problems come from `HELD_OUT` behaviours, which
no training problem uses, so held-out problems are new functions, not new inputs.

    task = get_task("python_functions", train_size=1000, test_size=100)
    task.load("train[:10]")
"""
from __future__ import annotations

import dataclasses
import functools
import math
import random
import string
import textwrap
from typing import Callable, Sequence

from r1jax.tasks.base import check_positive, register_task
from r1jax.tasks.code import FunctionTask, select_split


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """One function to write. `{name}` and the parameters' `{p}` slots are filled in `doc` and `body`."""

    key: str
    names: tuple[str, ...]  # function names to choose from
    signature: str  # "(numbers: list[int]) -> list[int]"
    doc: str
    body: str  # the reference body, indented by 4
    inputs: Callable[[random.Random], tuple]  # the arguments of one call
    params: Callable[[random.Random], dict] = lambda rng: {}


def _ints(rng, low=-20, high=20, longest=8, shortest=0):
    return [rng.randint(low, high) for _ in range(rng.randint(shortest, longest))]


WORDS = ("apple", "Bob", "level", "sky", "queue", "rhythm", "Echo", "data", "noon", "zebra", "io", "Python",
         "racecar", "tree", "AEIOU", "xyz", "Moon", "a")


def _text(rng, most=6):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, most)))


def _chars(rng, alphabet=string.ascii_letters + string.digits + " .,!-", longest=14):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))


def _matrix(rng):
    width = rng.randint(1, 4)
    return [[rng.randint(0, 9) for _ in range(width)] for _ in range(rng.randint(1, 4))]


_B = Behaviour
BEHAVIOURS: tuple[Behaviour, ...] = (
    _B("running_max", ("running_max", "prefix_maxima", "cumulative_max"), "(numbers: list[int]) -> list[int]",
      "Return the running maximum of `numbers`: element i of the result is the largest of numbers[0], ..., numbers[i].",
      "    result = []\n    for x in numbers:\n        result.append(x if not result else max(result[-1], x))\n"
      "    return result\n", lambda rng: (_ints(rng),)),
    _B("running_sum", ("running_sum", "prefix_sums", "cumulative_sum"), "(numbers: list[int]) -> list[int]",
      "Return the running sums of `numbers`: element i of the result is numbers[0] + ... + numbers[i].",
      "    total, result = 0, []\n    for x in numbers:\n        total += x\n        result.append(total)\n"
      "    return result\n", lambda rng: (_ints(rng),)),
    _B("count_vowels", ("count_vowels", "vowel_count", "num_vowels"), "(text: str) -> int",
      "Return how many characters of `text` are vowels, counting {vowels} as vowels and ignoring case.",
      "    return sum(1 for c in text.lower() if c in {vowels!r})\n", lambda rng: (_text(rng),),
      lambda rng: {"vowels": rng.choice(("aeiou", "aeiouy"))}),
    _B("rotate_left", ("rotate_left", "rotate", "shift_left"), "(items: list[int]) -> list[int]",
      "Return `items` rotated left by {k} positions: the first element moves to the end, {k} times.",
      "    if not items:\n        return []\n    k = {k} % len(items)\n    return items[k:] + items[:k]\n",
      lambda rng: (_ints(rng),), lambda rng: {"k": rng.randint(1, 5)}),
    _B("keep_multiples", ("keep_multiples", "multiples_only", "filter_divisible"), "(numbers: list[int]) -> list[int]",
      "Return the elements of `numbers` that are divisible by {k}, in their order.",
      "    return [x for x in numbers if x % {k} == 0]\n", lambda rng: (_ints(rng, -30, 30, 10),),
      lambda rng: {"k": rng.randint(2, 7)}),
    _B("second_largest", ("second_largest", "runner_up", "second_max"), "(numbers: list[int]) -> int | None",
      "Return the second largest distinct value of `numbers`, or None if it has fewer than two distinct values.",
      "    values = sorted(set(numbers))\n    return values[-2] if len(values) >= 2 else None\n",
      lambda rng: (_ints(rng, -5, 5),)),
    _B("is_palindrome", ("is_palindrome", "reads_same_backwards", "palindromic"), "(text: str) -> bool",
      "Return True if the letters of `text` read the same backwards as forwards, ignoring case and "
      "every character that is not a letter.",
      "    letters = [c.lower() for c in text if c.isalpha()]\n    return letters == letters[::-1]\n",
      lambda rng: (rng.choice((_text(rng, 2), rng.choice(WORDS) + " " + rng.choice(WORDS)[::-1], "A man, a plan")),)),
    _B("digit_sum", ("digit_sum", "sum_of_digits", "add_digits"), "(n: int) -> int",
      "Return the sum of the decimal digits of `n`, which is >= 0.",
      "    return sum(int(d) for d in str(n))\n", lambda rng: (rng.randint(0, 10 ** rng.randint(1, 9)),)),
    _B("collatz_steps", ("collatz_steps", "steps_to_one", "hailstone_length"), "(n: int) -> int",
      "Return how many steps the Collatz map (n // 2 for even n, 3 * n + 1 for odd n) takes to reach 1 "
      "from `n`, which is >= 1.",
      "    steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        steps += 1\n"
      "    return steps\n", lambda rng: (rng.randint(1, 200),)),
    _B("run_length", ("run_length", "run_length_encode", "compress_runs"), "(text: str) -> list[tuple[str, int]]",
      "Return the run-length encoding of `text`: a (character, count) pair for each run of equal characters.",
      "    runs = []\n    for c in text:\n        if runs and runs[-1][0] == c:\n"
      "            runs[-1] = (c, runs[-1][1] + 1)\n"
      "        else:\n            runs.append((c, 1))\n    return runs\n",
      lambda rng: (_chars(rng, "aab c", 10),)),
    _B("capitalize_words", ("capitalize_words", "title_words", "capitalise"), "(text: str) -> str",
      "Return `text` with the first character of each space-separated word upper-cased and the rest lower-cased.",
      "    return ' '.join(w[:1].upper() + w[1:].lower() for w in text.split(' '))\n",
      lambda rng: (_text(rng),)),
    _B("pairwise_differences", ("pairwise_differences", "deltas", "step_differences"),
      "(numbers: list[int]) -> list[int]",
      "Return the differences of neighbours in `numbers`: numbers[i + 1] - numbers[i] for each i.",
      "    return [b - a for a, b in zip(numbers, numbers[1:])]\n", lambda rng: (_ints(rng),)),
    _B("count_above_mean", ("count_above_mean", "above_average", "num_above_mean"), "(numbers: list[int]) -> int",
      "Return how many elements of `numbers` are strictly greater than their mean (0 for an empty list).",
      "    if not numbers:\n        return 0\n    return sum(1 for x in numbers if x * len(numbers) > sum(numbers))\n",
      lambda rng: (_ints(rng),)),
    _B("chunk", ("chunk", "chunks_of", "split_into_chunks"), "(items: list[int]) -> list[list[int]]",
      "Split `items` into consecutive chunks of {k} elements; the last chunk may be shorter.",
      "    return [items[i:i + {k}] for i in range(0, len(items), {k})]\n", lambda rng: (_ints(rng, longest=10),),
      lambda rng: {"k": rng.randint(2, 4)}),
    _B("interleave", ("interleave", "zip_merge", "alternate"), "(a: list[int], b: list[int]) -> list[int]",
      "Return `a` and `b` interleaved: a[0], b[0], a[1], b[1], ...; what is left of the longer list follows.",
      "    result = []\n    for i in range(max(len(a), len(b))):\n        result += a[i:i + 1] + b[i:i + 1]\n"
      "    return result\n", lambda rng: (_ints(rng, 0, 9, 5), _ints(rng, 0, 9, 5))),
    _B("longest_word", ("longest_word", "longest_token", "widest_word"), "(text: str) -> str",
      "Return the longest space-separated word of `text` (the first of equally long ones; '' if there is none).",
      "    best = ''\n    for word in text.split():\n        if len(word) > len(best):\n            best = word\n"
      "    return best\n", lambda rng: (_text(rng),)),
    _B("caesar", ("caesar", "shift_letters", "rotate_letters"), "(text: str) -> str",
      "Shift each lowercase letter of `text` {k} places forward in the alphabet, wrapping from 'z' to 'a'; "
      "leave every other character as it is.",
      "    return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if 'a' <= c <= 'z' else c for c in text)\n",
      lambda rng: (_text(rng),), lambda rng: {"k": rng.randint(1, 25)}),
    _B("count_ones", ("count_ones", "popcount", "bit_count"), "(n: int) -> int",
      "Return the number of 1 bits in the binary representation of `n`, which is >= 0.",
      "    return bin(n).count('1')\n", lambda rng: (rng.randint(0, 5000),)),
    _B("most_common", ("most_common", "mode", "most_frequent"), "(numbers: list[int]) -> int | None",
      "Return the most frequent element of `numbers`, the smallest of equally frequent ones; None for an empty list.",
      "    if not numbers:\n        return None\n    return min(numbers, key=lambda x: (-numbers.count(x), x))\n",
      lambda rng: (_ints(rng, 0, 5),)),
    _B("dedupe", ("dedupe", "unique_in_order", "remove_repeats"), "(items: list[int]) -> list[int]",
      "Return `items` without repeated elements: the first occurrence of each is kept, in order.",
      "    seen, result = set(), []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n"
      "            result.append(x)\n    return result\n", lambda rng: (_ints(rng, 0, 6, 10),)),
    _B("clamp_all", ("clamp_all", "clip_values", "bound_values"), "(numbers: list[int]) -> list[int]",
      "Return each element of `numbers` clamped to the range [{low}, {high}].",
      "    return [min(max(x, {low}), {high}) for x in numbers]\n", lambda rng: (_ints(rng),),
      lambda rng: {"low": rng.randint(-10, 0), "high": rng.randint(1, 10)}),
    _B("max_subarray", ("max_subarray", "best_slice_sum", "largest_run_sum"), "(numbers: list[int]) -> int",
      "Return the largest sum of a non-empty contiguous slice of `numbers`, which is not empty.",
      "    best = current = numbers[0]\n    for x in numbers[1:]:\n        current = max(x, current + x)\n"
      "        best = max(best, current)\n    return best\n", lambda rng: (_ints(rng, shortest=1),)),
    _B("count_long_words", ("count_long_words", "long_word_count", "words_longer_than"), "(text: str) -> int",
      "Return how many space-separated words of `text` have more than {k} characters.",
      "    return sum(1 for w in text.split() if len(w) > {k})\n", lambda rng: (_text(rng),),
      lambda rng: {"k": rng.randint(2, 5)}),
    _B("reverse_words", ("reverse_words", "words_backwards", "flip_word_order"), "(text: str) -> str",
      "Return the space-separated words of `text` in reverse order, joined by single spaces.",
      "    return ' '.join(reversed(text.split()))\n", lambda rng: (_text(rng),)),
    _B("alternating_sum", ("alternating_sum", "plus_minus_sum", "signed_sum"), "(numbers: list[int]) -> int",
      "Return numbers[0] - numbers[1] + numbers[2] - numbers[3] + ... (0 for an empty list).",
      "    return sum(x if i % 2 == 0 else -x for i, x in enumerate(numbers))\n", lambda rng: (_ints(rng),)),
    _B("fibonacci_mod", ("fibonacci_mod", "fib_mod", "fibonacci_remainder"), "(n: int) -> int",
      "Return the n-th Fibonacci number modulo {m}, where F(0) = 0, F(1) = 1 and F(n) = F(n - 1) + F(n - 2).",
      "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a % {m}\n",
      lambda rng: (rng.randint(0, 80),), lambda rng: {"m": rng.choice((7, 10, 97, 1000))}),
    _B("gcd_of_list", ("gcd_of_list", "common_divisor", "list_gcd"), "(numbers: list[int]) -> int",
      "Return the greatest common divisor of the positive integers in `numbers` (0 for an empty list).",
      "    result = 0\n    for x in numbers:\n        a, b = result, x\n        while b:\n            a, b = b, a % b\n"
      "        result = a\n    return result\n", lambda rng: ([rng.choice((2, 3, 6)) * rng.randint(1, 12)
                                                            for _ in range(rng.randint(0, 5))],)),
    _B("count_pairs_with_sum", ("count_pairs_with_sum", "pairs_summing_to", "two_sum_count"),
      "(numbers: list[int]) -> int",
      "Return the number of index pairs i < j with numbers[i] + numbers[j] == {k}.",
      "    return sum(1 for i in range(len(numbers)) for j in range(i + 1, len(numbers))\n"
      "               if numbers[i] + numbers[j] == {k})\n", lambda rng: (_ints(rng, -5, 10),),
      lambda rng: {"k": rng.randint(0, 10)}),
    _B("uppercase_positions", ("uppercase_positions", "capital_indices", "where_uppercase"), "(text: str) -> list[int]",
      "Return the indices of the uppercase letters of `text`, in increasing order.",
      "    return [i for i, c in enumerate(text) if c.isupper()]\n", lambda rng: (_chars(rng),)),
    _B("flatten_once", ("flatten_once", "flatten", "concat_lists"), "(lists: list[list[int]]) -> list[int]",
      "Flatten a list of lists of integers by one level, keeping the order of the elements.",
      "    return [x for inner in lists for x in inner]\n",
      lambda rng: ([_ints(rng, 0, 9, 3) for _ in range(rng.randint(0, 4))],)),
    _B("is_sorted", ("is_sorted", "non_decreasing", "in_order"), "(numbers: list[int]) -> bool",
      "Return True if `numbers` is in non-decreasing order ({strict}).",
      "    return all(a <{equal} b for a, b in zip(numbers, numbers[1:]))\n",
      lambda rng: (sorted(_ints(rng, 0, 5)) if rng.random() < 0.5 else _ints(rng, 0, 5),),
      lambda rng: rng.choice(({"strict": "equal neighbours allowed", "equal": "="},
                              {"strict": "strictly: no two neighbours equal", "equal": ""}))),
    _B("count_inversions", ("count_inversions", "inversions", "out_of_order_pairs"), "(numbers: list[int]) -> int",
      "Return the number of index pairs i < j with numbers[i] > numbers[j].",
      "    return sum(1 for i in range(len(numbers)) for j in range(i + 1, len(numbers)) if numbers[i] > numbers[j])\n",
      lambda rng: (_ints(rng, 0, 9),)),
    _B("odd_squares_sum", ("odd_squares_sum", "sum_odd_squares", "squares_of_odds"), "(numbers: list[int]) -> int",
      "Return the sum of the squares of the odd elements of `numbers`.",
      "    return sum(x * x for x in numbers if x % 2 == 1)\n", lambda rng: (_ints(rng),)),
    _B("remove_letter", ("remove_letter", "strip_letter", "without_letter"), "(text: str) -> str",
      "Return `text` without any occurrence of the letter {letter!r}, in either case.",
      "    return ''.join(c for c in text if c.lower() != {letter!r})\n", lambda rng: (_text(rng),),
      lambda rng: {"letter": rng.choice("aeorty")}),
    _B("reverse_digits", ("reverse_digits", "digits_backwards", "mirror_number"), "(n: int) -> int",
      "Return the integer whose decimal digits are those of `n` (which is >= 0) in reverse order; "
      "leading zeros vanish.",
      "    return int(str(n)[::-1])\n", lambda rng: (rng.randint(0, 10 ** rng.randint(1, 7)),)),
    _B("triangular_numbers", ("triangular_numbers", "triangle_sequence", "first_triangulars"), "(n: int) -> list[int]",
      "Return the first `n` triangular numbers, 1, 3, 6, 10, ... (the k-th is 1 + 2 + ... + k).",
      "    return [k * (k + 1) // 2 for k in range(1, n + 1)]\n", lambda rng: (rng.randint(0, 12),)),
    _B("transpose", ("transpose", "flip_matrix", "columns_of"), "(matrix: list[list[int]]) -> list[list[int]]",
      "Return the transpose of `matrix`, a non-empty list of rows of equal, non-zero length.",
      "    return [[row[j] for row in matrix] for j in range(len(matrix[0]))]\n",
      lambda rng: (_matrix(rng),)),
    _B("character_classes", ("character_classes", "classify_characters", "count_kinds"),
      "(text: str) -> tuple[int, int, int]",
      "Return (letters, digits, others): how many characters of `text` are letters, decimal digits, and neither.",
      "    letters = sum(c.isalpha() for c in text)\n    digits = sum(c.isdigit() for c in text)\n"
      "    return letters, digits, len(text) - letters - digits\n", lambda rng: (_chars(rng),)),
    _B("mask", ("mask", "mask_all_but_last", "hide_prefix"), "(text: str) -> str",
      "Return `text` with every character but the last {k} replaced by '*'.",
      "    keep = text[-{k}:] if len(text) > {k} else text\n    return '*' * (len(text) - len(keep)) + keep\n",
      lambda rng: (_chars(rng, string.digits, 12),), lambda rng: {"k": rng.randint(1, 4)}),
    _B("dense_rank", ("dense_rank", "ranks", "rank_values"), "(numbers: list[int]) -> list[int]",
      "Return the dense rank of each element of `numbers`: 1 for the smallest value, equal values share a "
      "rank, and ranks have no gaps.",
      "    order = {v: i + 1 for i, v in enumerate(sorted(set(numbers)))}\n    return [order[x] for x in numbers]\n",
      lambda rng: (_ints(rng, 0, 6),)),
    _B("window_max", ("window_max", "sliding_maximum", "max_of_windows"), "(numbers: list[int]) -> list[int]",
      "Return the maximum of each window of {k} consecutive elements of `numbers`, in order "
      "(an empty list if `numbers` is shorter than {k}).",
      "    return [max(numbers[i:i + {k}]) for i in range(len(numbers) - {k} + 1)]\n",
      lambda rng: (_ints(rng, longest=9),), lambda rng: {"k": rng.randint(2, 4)}),
    _B("digital_root", ("digital_root", "repeated_digit_sum", "root_of_digits"), "(n: int) -> int",
      "Sum the decimal digits of `n` (>= 0), then the digits of that sum, and so on until a single digit is "
      "left; return it.",
      "    while n >= 10:\n        n = sum(int(d) for d in str(n))\n    return n\n",
      lambda rng: (rng.randint(0, 10 ** rng.randint(1, 9)),)),
)

# the test split's behaviours: functions no training problem asks for
HELD_OUT = ("second_largest", "collatz_steps", "interleave", "caesar", "max_subarray", "count_inversions",
            "transpose", "window_max")


def behaviours(split: str) -> tuple[Behaviour, ...]:
    """The behaviours of the "train" or the "test" split."""
    held_out = split == "test"
    return tuple(b for b in BEHAVIOURS if (b.key in HELD_OUT) == held_out)


def _fill(template: str, params: dict) -> str:
    for name, value in params.items():
        template = template.replace("{" + name + "!r}", repr(value)).replace("{" + name + "}", str(value))
    return template


def make_problem(behaviour: Behaviour, rng: random.Random, *, num_tests: int, task_id: str) -> dict:
    """One problem of `behaviour`: parameters and name drawn from `rng`, tests from its reference body."""
    params = behaviour.params(rng)
    name = rng.choice(behaviour.names)
    body = _fill(behaviour.body, params)
    reference = _reference(name, behaviour.signature, body)
    calls, seen = [], set()
    for _ in range(20 * (num_tests + 2)):  # distinct inputs; a few behaviours have few of them
        args = behaviour.inputs(rng)
        if repr(args) not in seen:
            seen.add(repr(args))
            calls.append((args, reference(*args)))
        if len(calls) == num_tests + 2:
            break
    examples, hidden = calls[:2], calls[2:]
    shown = "".join(f"    >>> {name}({_arguments(args)})\n    {value!r}\n" for args, value in examples)
    doc = textwrap.fill(_fill(behaviour.doc, params), 92, initial_indent="    ", subsequent_indent="    ")
    prompt = f'def {name}{behaviour.signature}:\n    """{doc.strip()}\n\n{shown}    """\n'
    test = "def check(candidate):\n" + "".join(
        f"    assert candidate({_arguments(args)}) == {value!r}\n" for args, value in hidden)
    return {"task_id": task_id, "code_prompt": prompt, "entry_point": name, "test": test, "canonical_solution": body,
            "behaviour": behaviour.key}


def _arguments(args: tuple) -> str:
    return ", ".join(repr(a) for a in args)


def _reference(name: str, signature: str, body: str) -> Callable:
    namespace: dict = {"math": math}
    exec(f"def {name}{signature}:\n{body}", namespace)  # noqa: S102  (our own reference code)
    return namespace[name]


@functools.lru_cache(maxsize=8)
def generate(split: str, size: int, seed: int, num_tests: int) -> tuple[dict, ...]:
    """`size` problems of `split`, cycling through its behaviours in a seeded order."""
    pool = behaviours(split)
    problems = []
    for index in range(size):
        rng = random.Random(f"python_functions/{seed}/{split}/{index}")
        behaviour = pool[index % len(pool)] if index < len(pool) else rng.choice(pool)
        problems.append(make_problem(behaviour, rng, num_tests=num_tests, task_id=f"python_functions/{split}/{index}"))
    return tuple(problems)


@register_task("python_functions")
@dataclasses.dataclass(frozen=True)
class PythonFunctionsTask(FunctionTask):
    train_size: int = 5000
    test_size: int = 200
    num_tests: int = 8  # hidden asserts per problem (fewer where a behaviour has fewer distinct inputs)
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "train_size", "test_size", "num_tests")

    def load(self, split: str, *, data_dir=None, manual_dir=None) -> Sequence[dict]:
        del data_dir, manual_dir
        sizes = {"train": self.train_size, "test": self.test_size}
        name = split.partition("[")[0].strip()
        if name not in sizes:
            raise ValueError(f"no split {name!r}; the splits are ['test', 'train']")
        problems = generate(name, sizes[name], self.seed, self.num_tests)  # cached: hand out copies
        return select_split(split, {name: [dict(problem) for problem in problems]})
