"""Language consistency of the chain of thought (DeepSeek-R1, stage 2).

R1 adds "the proportion of target language words in the CoT" to the reward to
stop the model switching languages mid-thought. Words are told apart by script,
so languages that share one (English, French, German) are not distinguished.

Counting: every Han (Chinese) or kana (Japanese) character is one word, since
those scripts do not separate words by spaces; a run of letters of any other
script (Latin, Cyrillic, Hangul, Greek, Arabic, Devanagari, Thai) is one word.
Digits, punctuation, math between `$…$` / `\\(…\\)` / `\\[…\\]`, LaTeX commands
and fenced code blocks are not words in any language and are skipped, so a Chinese
derivation that writes $x^2$ or \\frac is not penalised for it.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from r1jax.rewards.r1_format import split_r1_output
from r1jax.rewards.registry import register_reward

_SCRIPT_CHARACTERS = {
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef",
    "kana": "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f",
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "cyrillic": "\u0400-\u04ff",
    "hangul": "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f",
    "greek": "\u0370-\u03ff",
    "arabic": "\u0600-\u06ff",
    "devanagari": "\u0900-\u097f",
    "thai": "\u0e00-\u0e7f",
}
_CHARACTER_WORD_SCRIPTS = ("han", "kana")
_WORD = re.compile("|".join(
    f"(?P<{script}>[{characters}]{'' if script in _CHARACTER_WORD_SCRIPTS else '+'})"
    for script, characters in _SCRIPT_CHARACTERS.items()))
# Openers of spans that are not prose, with their closers. "$" must come after "$$".
_SPANS = {"```": "```", "$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}
_SPAN_OPENER = re.compile("|".join(re.escape(opener) for opener in _SPANS))
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")

LANGUAGE_SCRIPTS = {
    "en": {"latin"}, "fr": {"latin"}, "de": {"latin"}, "es": {"latin"},
    "zh": {"han"}, "ja": {"han", "kana"}, "ko": {"hangul"},
    "ru": {"cyrillic"}, "el": {"greek"}, "ar": {"arabic"}, "hi": {"devanagari"},
    "th": {"thai"},
}
_ALIASES = {"english": "en", "chinese": "zh", "zh-cn": "zh", "zh-hans": "zh", "zh-tw": "zh",
            "japanese": "ja", "korean": "ko", "russian": "ru", "french": "fr",
            "german": "de", "spanish": "es", "greek": "el", "arabic": "ar",
            "hindi": "hi", "thai": "th"}


def count_words_by_script(text: str) -> Counter:
    """Number of words per script in `text`, skipping math, LaTeX commands and code."""
    prose = _LATEX_COMMAND.sub(" ", _remove_spans(text))
    return Counter(match.lastgroup for match in _WORD.finditer(prose))


def _remove_spans(text: str) -> str:
    """`text` without code blocks and math spans, in linear time.

    A regex like `\\(.*?\\)` rescans to the end for every unclosed opener
    (quadratic on hostile input); here an opener with no closer marks its kind
    as exhausted, since no later opener of that kind can have one either.
    """
    pieces, position, exhausted = [], 0, set()
    for match in _SPAN_OPENER.finditer(text):
        opener = match.group()
        if match.start() < position or opener in exhausted:
            continue
        close = text.find(_SPANS[opener], match.end())
        if close < 0:
            exhausted.add(opener)
            continue
        if opener == "$" and "\n" in text[match.end():close]:
            continue  # inline math does not span lines: these are prices or strays
        pieces.append(text[position:match.start()])
        position = close + len(_SPANS[opener])
    pieces.append(text[position:])
    return " ".join(pieces)


def language_consistency(text: str, language: str) -> Optional[float]:
    """Share of the words in `text` that are written in `language`'s script(s).

    language: an ISO code ("en", "zh", "ja", "ko", "ru", …) or English name.
    Returns None when `text` has no words at all (nothing to judge).
    Example: "我们 compute 和" has 3 Han words and 1 Latin word → 3/4 for "zh".
    """
    scripts = LANGUAGE_SCRIPTS.get(_ALIASES.get(language.lower(), language.lower()))
    if scripts is None:
        raise ValueError(f"unsupported language {language!r}; supported: "
                         f"{', '.join(sorted(LANGUAGE_SCRIPTS))} (or English names)")
    counts = count_words_by_script(text)
    total = sum(counts.values())
    if total == 0:
        return None
    return sum(counts[script] for script in scripts) / total


def dominant_language(text: str) -> Optional[str]:
    """The supported language whose script has the most words in `text`
    ("en" for Latin, "ja" if any kana, "zh" for Han without kana), or None."""
    counts = count_words_by_script(text)
    if not counts:
        return None
    if counts["kana"]:
        counts["han"] += counts.pop("kana")
        return "ja" if counts.most_common(1)[0][0] == "han" else _script_language(counts)
    return _script_language(counts)


def _script_language(counts: Counter) -> str:
    script = counts.most_common(1)[0][0]
    return next(code for code, scripts in LANGUAGE_SCRIPTS.items() if scripts == {script})


def chain_of_thought(completion: str, think_tag: str = "think") -> str:
    """The reasoning part of a completion: the reasoning block of R1's output format
    (`|special_token|reasoning|special_token|summary`); else the text before the first
    closing think tag (after an opening one, if present); the whole completion if it
    has no think tags; everything after an unclosed opening tag."""
    r1_output = split_r1_output(completion)
    if r1_output is not None:
        return r1_output[0]
    open_tag, close_tag = f"<{think_tag}>", f"</{think_tag}>"
    close = completion.find(close_tag)
    if close >= 0:
        start = completion.rfind(open_tag, 0, close)
        return completion[start + len(open_tag) if start >= 0 else 0:close]
    start = completion.find(open_tag)
    return completion[start + len(open_tag):] if start >= 0 else completion


@register_reward("language")
def language_reward(completion: str, language: Optional[str] = None, question: Optional[str] = None,
                    prompt: Optional[str] = None, **_) -> Optional[float]:
    """Language consistency of the completion's chain of thought.

    The target language is the example's `language` field if present, else the
    dominant language of its `question` (or `prompt`), else English.
    """
    if language is None:
        language = dominant_language(question or prompt or "") or "en"
    return language_consistency(chain_of_thought(completion), language)
