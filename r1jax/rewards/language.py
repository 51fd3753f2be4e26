"""Language consistency of the chain of thought (DeepSeek-R1, stage 2).

R1 adds "the proportion of target language words in the CoT" to the reward to
stop the model switching languages mid-thought. Words are told apart by script,
so languages that share one (English, French, German) are not distinguished.

Letters: the text is NFKC-normalised first (full-width `ｗｅ` is `we`, `ﾃ` is `テ`),
then every letter (Unicode category L) belongs to the script that its Unicode name
starts with ("TAMIL LETTER KA", "GEORGIAN LETTER AN", "CJK UNIFIED IDEOGRAPH-4E00"),
so every script is counted, not a list of ranges. Combining marks (Indic vowel signs)
belong to the letter before them.

Words: every Han or kana character is one word, since those scripts do not separate
words by spaces; a run of letters of any other script is one word. A lone Greek letter
(π, θ, Δ) is a math symbol, not a word. Digits, punctuation and LaTeX commands are not
words in any language.

Math (`$…$`, `$$…$$`, `\\(…\\)`, `\\[…\\]`) and code (```…``` fences, `…` inline)
hold notation, whose script is Latin whatever the prose around it: there Latin letters
(variables, identifiers, keywords, LaTeX commands) are words of no language, so a
Chinese derivation that writes $x^2$ is not penalised for it. Letters of any other
script inside math or code are prose and count as what they are, and so does the
argument of `\\text{…}` (or `\\mbox`, `\\textrm`, `\\textbf`, `\\textit`): a span is
never a place to hide a chain of thought in another language. Known limit: Latin-script
prose inside code or bare math cannot be told from identifiers by its script, so for
a non-Latin target it goes uncounted (R1's rejection sampling drops code blocks anyway).

A chain of thought with no words at all (only math, or empty) mixes no languages:
`language_consistency` returns None there (the proportion is 0/0), and the reward
scores it 1.0, see `language_reward`.
"""
from __future__ import annotations

import itertools
import re
import unicodedata
from collections import Counter
from typing import Iterator, Optional

from r1jax.rewards.r1_format import split_r1_output
from r1jax.rewards.registry import register_reward

# Scripts whose characters are each one word.
_CHARACTER_WORD_SCRIPTS = frozenset({"han", "kana"})
# The script of identifiers, keywords and LaTeX: in math and code, no language's.
_NOTATION_SCRIPT = "latin"
# Unicode names whose first word is not the script's name. None: a letter of no
# script in particular (modifier letters such as ʼ or ˈ), like punctuation.
_NAME_PREFIX_SCRIPTS = {
    "CJK": "han", "IDEOGRAPHIC": "han", "HIRAGANA": "kana", "KATAKANA": "kana",
    "KATAKANA-HIRAGANA": "kana", "HENTAIGANA": "kana", "MASU": "kana", "VERTICAL": None,
    "MODIFIER": None, "CARON": None, "TURNED": "latin", "ROMAN": "latin", "VEDIC": "devanagari",
}
_MARK = "mark"  # a combining mark: part of the word of the letter before it

# Openers of spans that are not prose, with their closers. Longer openers come first.
_SPANS = {"```": "```", "`": "`", "$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}
_SINGLE_LINE_SPANS = frozenset({"`", "$"})
_CODE_SPANS = frozenset({"```", "`"})
_SPAN_OPENER = re.compile("|".join(re.escape(opener) for opener in _SPANS))
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_LATEX_TEXT = re.compile(r"\\(?:text|mbox|textrm|textbf|textit)\s*\{([^{}]*)\}")

LANGUAGE_SCRIPTS = {
    **{code: {"latin"} for code in ("en", "fr", "de", "es", "it", "pt", "nl", "pl", "tr", "vi", "id")},
    "zh": {"han", "bopomofo"}, "ja": {"han", "kana"}, "ko": {"hangul"},
    "ru": {"cyrillic"}, "uk": {"cyrillic"}, "el": {"greek"}, "ar": {"arabic"}, "fa": {"arabic"},
    "ur": {"arabic"}, "he": {"hebrew"}, "hi": {"devanagari"}, "mr": {"devanagari"},
    "ne": {"devanagari"}, "bn": {"bengali"}, "pa": {"gurmukhi"}, "gu": {"gujarati"},
    "ta": {"tamil"}, "te": {"telugu"}, "kn": {"kannada"}, "ml": {"malayalam"}, "si": {"sinhala"},
    "th": {"thai"}, "lo": {"lao"}, "km": {"khmer"}, "my": {"myanmar"}, "ka": {"georgian"},
    "hy": {"armenian"}, "am": {"ethiopic"},
}
_ALIASES = {"english": "en", "chinese": "zh", "zh-cn": "zh", "zh-hans": "zh", "zh-tw": "zh",
            "zh-hant": "zh", "japanese": "ja", "korean": "ko", "russian": "ru", "ukrainian": "uk",
            "french": "fr", "german": "de", "spanish": "es", "italian": "it", "portuguese": "pt",
            "dutch": "nl", "polish": "pl", "turkish": "tr", "vietnamese": "vi", "indonesian": "id",
            "greek": "el", "arabic": "ar", "persian": "fa", "urdu": "ur", "hebrew": "he",
            "hindi": "hi", "marathi": "mr", "nepali": "ne", "bengali": "bn", "punjabi": "pa",
            "gujarati": "gu", "tamil": "ta", "telugu": "te", "kannada": "kn", "malayalam": "ml",
            "sinhala": "si", "thai": "th", "lao": "lo", "khmer": "km", "burmese": "my",
            "georgian": "ka", "armenian": "hy", "amharic": "am"}
# The language a script's words are taken to be in: the first listed that writes it
# (Latin: en, Han: zh, Cyrillic: ru, ...; kana: ja, see dominant_language).
_SCRIPT_LANGUAGE = {script: code for code, scripts in reversed(LANGUAGE_SCRIPTS.items()) for script in scripts}


def _script(character: str) -> Optional[str]:
    """The script of a letter (lower-case first word of its Unicode name), `_MARK` for a
    combining mark, None for anything else. Unnamed letters (e.g. Tangut) are "unnamed"."""
    category = unicodedata.category(character)
    if category[0] == "M":
        return _MARK
    if category[0] != "L":
        return None
    prefix = unicodedata.name(character, "UNNAMED").split(" ", 1)[0]
    return _NAME_PREFIX_SCRIPTS.get(prefix, prefix.lower())


def _words(text: str, counts: Counter, *, notation: bool) -> None:
    """Add the words of `text` to `counts` by script; with `notation`, as math or code."""
    script_of = {character: _script(character) for character in set(text)}  # linear, whatever the text
    if notation:
        script_of = {character: None if script == _NOTATION_SCRIPT else script
                     for character, script in script_of.items()}
    current, length = None, 0  # the script of the word being read, and its letters so far

    def close() -> None:
        if current is None or (current == "greek" and length == 1):
            return  # a lone Greek letter is a math symbol
        counts[current] += length if current in _CHARACTER_WORD_SCRIPTS else 1

    for script, run in itertools.groupby(text, script_of.__getitem__):
        if script == _MARK:
            continue  # belongs to the word before it, if any
        if script != current:
            close()
            current, length = script, 0
        if script is not None:
            length += len(list(run))
    close()


def _spans(text: str) -> Iterator[tuple[str, str]]:
    """(kind, piece) for the pieces of `text` in order: kind "prose", "math" or "code";
    a span's piece is its inside, without delimiters. Linear time.

    A regex like `\\(.*?\\)` rescans to the end for every unclosed opener
    (quadratic on hostile input); here an opener with no closer marks its kind
    as exhausted, since no later opener of that kind can have one either.
    """
    position, exhausted = 0, set()
    for match in _SPAN_OPENER.finditer(text):
        opener = match.group()
        if match.start() < position or opener in exhausted:
            continue
        close = text.find(_SPANS[opener], match.end())
        if close < 0:
            exhausted.add(opener)
            continue
        if opener in _SINGLE_LINE_SPANS and "\n" in text[match.end():close]:
            continue  # inline math and code do not span lines: these are prices or strays
        yield "prose", text[position:match.start()]
        yield "code" if opener in _CODE_SPANS else "math", text[match.end():close]
        position = close + len(_SPANS[opener])
    yield "prose", text[position:]


def count_words_by_script(text: str) -> Counter:
    """Number of words per script in `text` (see the module docstring for what a word is).

    Example: "We add $设 x$ and ```தமிழ் code```" has 3 Latin words (We, add, and; x and
    code are notation), 1 Han word and 1 Tamil word.
    """
    prose, notation = [], []  # pieces of each kind; a space between two keeps their words apart
    for kind, piece in _spans(unicodedata.normalize("NFKC", text)):
        if kind == "math":
            prose.extend(_LATEX_TEXT.findall(piece))
            piece = _LATEX_TEXT.sub(" ", piece)
        (prose if kind == "prose" else notation).append(piece)
    counts: Counter = Counter()
    _words(_LATEX_COMMAND.sub(" ", " ".join(prose)), counts, notation=False)
    _words(" ".join(notation), counts, notation=True)
    return counts


def _target_scripts(language: str) -> set[str]:
    scripts = LANGUAGE_SCRIPTS.get(_ALIASES.get(language.lower(), language.lower()))
    if scripts is None:
        raise ValueError(f"unsupported language {language!r}; supported: "
                         f"{', '.join(sorted(LANGUAGE_SCRIPTS))} (or English names)")
    return scripts


def language_consistency(text: str, language: str) -> Optional[float]:
    """Share of the words in `text` that are written in `language`'s script(s).

    language: an ISO code ("en", "zh", "ja", "ko", "ru", "ta", …) or English name.
    Returns None when `text` has no words at all (the proportion is 0/0).
    Example: "我们 compute 和" has 3 Han words and 1 Latin word → 3/4 for "zh".
    """
    scripts = _target_scripts(language)
    counts = count_words_by_script(text)
    total = sum(counts.values())
    if total == 0:
        return None
    return sum(counts[script] for script in scripts) / total


def dominant_language(text: str) -> Optional[str]:
    """The language of the script with the most words in `text` ("en" for Latin,
    "ja" if any kana, "zh" for Han without kana, "ta" for Tamil, …), or None if
    no words are in a supported language's script."""
    counts = Counter({script: count for script, count in count_words_by_script(text).items()
                      if script in _SCRIPT_LANGUAGE})
    if not counts:
        return None
    if counts["kana"]:
        counts["han"] += counts.pop("kana")
        if counts.most_common(1)[0][0] == "han":
            return "ja"
    return _SCRIPT_LANGUAGE[counts.most_common(1)[0][0]]


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
                    prompt: Optional[str] = None, **_) -> float:
    """Language consistency of the completion's chain of thought, in [0, 1].

    The target language is the example's `language` field if present, else the
    dominant language of its `question` (or `prompt`), else English.

    A chain of thought with no words (only math, or empty) scores 1.0: R1's reward is
    there to stop language mixing, and such a chain mixes none (0 of its 0 words are in
    another language). None would mark the whole row invalid in the evaluator and drop
    it, accuracy included, from the advantage: a wordless chain would escape every reward.
    """
    if language is None:
        language = dominant_language(question or prompt or "") or "en"
    share = language_consistency(chain_of_thought(completion), language)
    return 1.0 if share is None else share
