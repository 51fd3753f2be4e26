"""Pull the final answer out of a completion.

Completions are adversarial: a megabyte of garbage, thousands of unclosed tags or
braces. Every function here is linear in the input (str.find / rfind and single
bounded scans, no backtracking regular expressions), so a hostile completion costs
milliseconds, not minutes.
"""
from __future__ import annotations

from typing import Optional

# A boxed answer longer than this is garbage, not an answer; capping the brace
# scan also keeps "\boxed{" repeated a million times linear.
MAX_BOXED_CHARS = 10_000
# How many malformed \boxed occurrences we step over before giving up.
_MAX_BOXED_ATTEMPTS = 20
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_tag(text: str, tag: str) -> Optional[str]:
    """Content of the last complete `<tag>...</tag>` in `text`, or None.

    "Last complete" means: the last closing tag, paired with the nearest opening
    tag before it. An opening tag without a closing one yields None.
    """
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    open_tag = f"<{tag}>"
    start = text.rfind(open_tag, 0, close)
    if start < 0:
        return None
    return text[start + len(open_tag):close]


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last well-formed `\\boxed{...}` (or `\\fbox{...}`), or None.

    Braces nest: `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`. For nested boxes,
    `\\boxed{\\boxed{5}}`, the innermost (last-starting) box wins. `\\boxed 5` (no
    braces, as some models write) gives `5`.
    """
    end = len(text)
    for _ in range(_MAX_BOXED_ATTEMPTS):
        start, command = max((text.rfind(c, 0, end), c) for c in _BOX_COMMANDS)
        if start < 0:
            return None
        content = _box_argument(text, start + len(command))
        if content is not None:
            return content
        end = start
    return None


def _box_argument(text: str, position: int) -> Optional[str]:
    """The braced (or space-separated) argument of a box command at `position`."""
    if text.startswith("{", position):
        depth = 0
        stop = min(len(text), position + MAX_BOXED_CHARS + 2)
        for index in range(position, stop):
            char = text[index]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[position + 1:index]
        return None
    if text.startswith(" ", position):
        token = text[position:position + 200].split(maxsplit=1)
        if token:
            return token[0].rstrip("$.,")
    return None


def extract_answer_phrase(text: str) -> Optional[str]:
    """What follows the last "the answer is" (any case), up to the end of the sentence."""
    lowered = text.lower()
    marker = "the answer is"
    start = lowered.rfind(marker)
    if start < 0:
        return None
    rest = text[start + len(marker):start + len(marker) + 300]
    rest = rest.split("\n", 1)[0].strip().lstrip(":").strip()
    # A period ends the sentence unless it sits inside a number ("3.5").
    for index, char in enumerate(rest):
        if char == "." and (index + 1 == len(rest) or not rest[index + 1].isdigit()):
            rest = rest[:index]
            break
    rest = rest.strip().strip("*").strip()
    return rest or None


def extract_final_answer(text: str, answer_tag: str = "answer") -> Optional[str]:
    """The model's final answer, or None if it gave none.

    Order of preference, following the R1-Zero template:
      1. the last `<answer>...</answer>`; inside it a `\\boxed{}` if there is one,
         else the whole (stripped) content;
      2. the last `\\boxed{...}` anywhere;
      3. the phrase after the last "the answer is".
    Surrounding `$` signs and a trailing period are removed.
    """
    answer = extract_tag(text, answer_tag)
    if answer is not None:
        answer = extract_boxed(answer) or answer
    else:
        answer = extract_boxed(text)
        if answer is None:
            answer = extract_answer_phrase(text)
    if answer is None:
        return None
    answer = answer.strip().removesuffix(".").strip().strip("$").strip()
    return answer or None
