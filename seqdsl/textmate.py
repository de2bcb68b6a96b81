"""The TextMate grammar of ``.seq`` files (editor highlighting), built from the sources of truth.

The keywords are read from the Lark grammar (every quoted word of
``grammar/seq.lark``), the layer names from the catalogue, the merge functions
from the IR, the dtypes from ``types`` and the parameter types of ``layer``
blocks from ``lower``: a keyword or layer added there reaches the editor when
the grammar is regenerated. The generated file is committed at
``editors/vscode/syntaxes/seq.tmLanguage.json``; ``tests/test_textmate.py``
checks that it is current and tokenizes every example with ``vscode-textmate``.

    python -m seqdsl.textmate > editors/vscode/syntaxes/seq.tmLanguage.json

The Lark lexer is contextual: a keyword is a keyword only where the grammar
expects it (``mask`` after ``with``; ``mask=m`` is an argument name,
``mask(post)`` a type). Regular expressions approximate that: a word followed
by ``=``, ``:`` or ``,`` is a name, and ``mask`` is a keyword only after ``with``.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from .catalogue import CATALOGUE
from .ir import MERGE_FUNCTIONS
from .lower import PARAM_TYPES
from .parser import grammar_text
from .types import DTYPES

__all__ = ["SCOPE_NAME", "grammar_keywords", "textmate_grammar", "keyword_scope"]

SCOPE_NAME = "source.seq"

# the words of the grammar that start a declaration, an import, or steer control
_DECLARATIONS = ("model", "layer", "cell", "extern")
_IMPORT = ("use",)
_CONTROL = ("repeat", "if")
_BOOLEANS = ("true", "false")
#: keywords only in one place, handled by their own rule (``with mask``)
_CONTEXTUAL = ("mask",)

_WORD = r"[A-Za-z_][A-Za-z0-9_]*"
# a word used as a name: followed by `=` (not `==`) or `:`; a keyword other than a
# boolean is never followed by `,` either (`a, state = ...`), a boolean often is
_NOT_A_NAME = r"(?!\s*(?:=(?!=)|:|,))"
_NOT_A_NAME_VALUE = r"(?!\s*(?:=(?!=)|:))"


def grammar_keywords(grammar: str | None = None) -> tuple[str, ...]:
    """Every keyword of the Lark grammar: its quoted words (comments left out), sorted."""
    text = re.sub(r"//[^\n]*", "", grammar_text() if grammar is None else grammar)
    return tuple(sorted(set(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', text))))


def keyword_scope(word: str) -> str:
    """The scope a keyword gets."""
    if word in _DECLARATIONS:
        return "keyword.declaration.seq"
    if word in _IMPORT:
        return "keyword.control.import.seq"
    if word in _CONTROL:
        return "keyword.control.seq"
    if word in _BOOLEANS:
        return "constant.language.boolean.seq"
    return "keyword.other.seq"


def _alt(words: tuple[str, ...] | list[str]) -> str:
    # longest first, so that a word is never cut short by a prefix of it
    return "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))


def textmate_grammar(grammar: str | None = None) -> dict[str, Any]:
    """The TextMate grammar (a JSON object) of the ``.seq`` language."""
    keywords = grammar_keywords(grammar)
    by_scope: dict[str, list[str]] = {}
    for w in keywords:
        if w not in _CONTEXTUAL:
            by_scope.setdefault(keyword_scope(w), []).append(w)
    keyword_rules: list[dict[str, Any]] = [
        {
            "comment": "`extern layer Name`, `model Name`, `layer Name`, `cell Name`",
            "match": rf"\b(extern)\s+(layer)\s+({_WORD})",
            "captures": {
                "1": {"name": keyword_scope("extern")},
                "2": {"name": keyword_scope("layer")},
                "3": {"name": "entity.name.type.block.seq"},
            },
        },
        {
            "match": rf"\b(model)\s+({_WORD})",
            "captures": {
                "1": {"name": keyword_scope("model")},
                "2": {"name": "entity.name.type.model.seq"},
            },
        },
        {
            "match": rf"\b(layer|cell)\s+({_WORD})",
            "captures": {
                "1": {"name": keyword_scope("layer")},
                "2": {"name": "entity.name.type.block.seq"},
            },
        },
        {
            "comment": "`output x with mask`: `mask` is a keyword only here",
            "match": r"\b(with)\s+(mask)\b",
            "captures": {
                "1": {"name": keyword_scope("with")},
                "2": {"name": keyword_scope("mask")},
            },
        },
    ]
    for scope in sorted(by_scope):
        words = by_scope[scope]
        after = _NOT_A_NAME_VALUE if scope == keyword_scope("true") else _NOT_A_NAME
        keyword_rules.append({"match": rf"\b(?:{_alt(words)})\b{after}", "name": scope})
    base: list[dict[str, Any]] = [
        {"include": "#comment"},
        {"include": "#string"},
        {"include": "#keyword"},
        {"include": "#type"},
        {"include": "#number"},
        {"include": "#layer"},
        {"include": "#decorator"},
        {"include": "#operator"},
    ]
    layers = sorted(CATALOGUE)
    return {
        "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
        "name": "seq",
        "scopeName": SCOPE_NAME,
        "fileTypes": ["seq"],
        "comment": "Generated by `python -m seqdsl.textmate` from grammar/seq.lark and the "
        "catalogue; do not edit by hand.",
        "patterns": [*base, {"include": "#parens"}, {"include": "#brackets"}],
        "repository": {
            "comment": {
                "match": r"(#).*$",
                "name": "comment.line.number-sign.seq",
                "captures": {"1": {"name": "punctuation.definition.comment.seq"}},
            },
            "string": {
                "patterns": [
                    {
                        "begin": '"',
                        "end": r'"|$',
                        "name": "string.quoted.double.seq",
                        "patterns": [{"match": r"\\.", "name": "constant.character.escape.seq"}],
                    },
                    {
                        "begin": "'",
                        "end": r"'|$",
                        "name": "string.quoted.single.seq",
                        "patterns": [{"match": r"\\.", "name": "constant.character.escape.seq"}],
                    },
                ]
            },
            "keyword": {"patterns": keyword_rules},
            "type": {
                "patterns": [
                    {
                        "comment": "dtypes: `i32[B, T]`, `f32[units]`",
                        "match": rf"\b(?:{_alt(list(DTYPES))})\b(?=\s*\[)",
                        "name": "storage.type.dtype.seq",
                    },
                    {
                        "comment": "mask inputs: `mask(post)[B, T]`",
                        "match": r"\bmask\b(?=\s*(?:\(|\[))",
                        "name": "storage.type.dtype.seq",
                    },
                ]
            },
            "number": {
                "patterns": [
                    {
                        "match": r"(?<![A-Za-z0-9_.])(?:[0-9]+\.[0-9]*(?:[eE][+-]?[0-9]+)?"
                        r"|\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)(?![A-Za-z0-9_])",
                        "name": "constant.numeric.float.seq",
                    },
                    {
                        "match": r"(?<![A-Za-z0-9_.])[0-9]+(?![A-Za-z0-9_.])",
                        "name": "constant.numeric.integer.seq",
                    },
                ]
            },
            "layer": {
                "patterns": [
                    {
                        "comment": "the catalogue's layers",
                        "match": rf"\b(?:{_alt(layers)})\b(?=\s*\()",
                        "name": "support.class.layer.seq",
                    },
                    {
                        "comment": "merge functions: `concat(a, b, axis=time)`",
                        "match": rf"\b(?:{_alt(list(MERGE_FUNCTIONS))})\b(?=\s*\()",
                        "name": "support.function.merge.seq",
                    },
                    {
                        "comment": "calls of layer blocks, cells and extern layers",
                        "match": r"\b[A-Z][A-Za-z0-9_]*\b(?=\s*\()",
                        "name": "entity.name.function.seq",
                    },
                ]
            },
            "decorator": {
                "match": rf"(@)({_WORD})\b(?=\s*\()",
                "captures": {
                    "1": {"name": "punctuation.definition.decorator.seq"},
                    "2": {"name": "entity.name.function.decorator.seq"},
                },
            },
            "operator": {
                "patterns": [
                    {"match": "->", "name": "keyword.operator.pipe.seq"},
                    {"match": "<-", "name": "keyword.operator.update.seq"},
                    {"match": r"//|[-+*/@]", "name": "keyword.operator.arithmetic.seq"},
                    {"match": "!=", "name": "keyword.operator.comparison.seq"},
                    {"match": "=", "name": "keyword.operator.assignment.seq"},
                ]
            },
            "parens": {
                "begin": r"\(",
                "end": r"\)",
                "beginCaptures": {"0": {"name": "punctuation.section.parens.begin.seq"}},
                "endCaptures": {"0": {"name": "punctuation.section.parens.end.seq"}},
                "patterns": [
                    {
                        "comment": "a parameter of a block: `units: int = 32`",
                        "match": rf"(?:(?<=\()|(?<=,))\s*({_WORD})\s*(:)\s*"
                        rf"({_alt(list(PARAM_TYPES))})\b",
                        "captures": {
                            "1": {"name": "variable.parameter.seq"},
                            "2": {"name": "punctuation.separator.seq"},
                            "3": {"name": "storage.type.param.seq"},
                        },
                    },
                    {
                        "comment": "a keyword argument: `return_sequences=true`, `mask=m`",
                        "match": rf"\b({_WORD})\s*(?==(?!=))",
                        "captures": {"1": {"name": "variable.parameter.seq"}},
                    },
                    *base,
                    {"include": "#parens"},
                    {"include": "#brackets"},
                ],
            },
            "brackets": {
                "begin": r"\[",
                "end": r"\]",
                "beginCaptures": {"0": {"name": "punctuation.section.brackets.begin.seq"}},
                "endCaptures": {"0": {"name": "punctuation.section.brackets.end.seq"}},
                "patterns": [*base, {"include": "#parens"}, {"include": "#brackets"}],
            },
        },
    }


def main() -> None:  # pragma: no cover - exercised through tests/test_textmate.py's freshness check
    sys.stdout.write(json.dumps(textmate_grammar(), indent=2) + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
