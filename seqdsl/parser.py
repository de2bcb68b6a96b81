"""Stage 1: text -> Lark parse tree, or a syntax diagnostic.

The grammar ships inside the package (``seqdsl/grammar/seq.lark`` in a wheel);
in a source checkout it is read from the top-level ``grammar/`` folder.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .diagnostics import Diagnostic
from .ir import Span

__all__ = ["grammar_text", "parse_tree", "ParseFailure", "unquote"]


def grammar_text() -> str:
    try:
        res = resources.files("seqdsl").joinpath("grammar/seq.lark")
        if res.is_file():
            return res.read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):  # pragma: no cover
        pass
    here = Path(__file__).resolve().parent.parent / "grammar" / "seq.lark"
    return here.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
    )


def unquote(s: str) -> str:
    """The value of a STRING token (quotes removed, escapes decoded)."""
    body = s[1:-1]
    return body.encode("utf-8").decode("unicode_escape") if "\\" in body else body


class ParseFailure(Exception):
    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


# Friendly messages for common mistakes, matched on the parser state (Lark's
# match_examples). Each label maps to (message, hint) and example snippets.
_EXAMPLES: dict[str, tuple[str, str, list[str]]] = {
    "colon-kwarg": (
        "keyword arguments use `=`, not `:`",
        "write `units=32`, not `units: 32`",
        ["model M { x = a -> Dense(units: 3) }", "model M { x = Dense(units: 3)(a) }"],
    ),
    "missing-arrow": (
        "two stages follow each other without `->`",
        "join pipe stages with `->`, e.g. `x -> Embedding(100, 8) -> LSTM(16)`",
        [
            "model M { x = a Dense(3) }",
            "model M { x = a -> Dense(3) LSTM(4) }",
            "model M { x = a -> Dense(3) Dense(4) -> LSTM(2) }",
        ],
    ),
    "call-in-pipe": (
        "a pipe stage takes configuration only; data arguments need the call form",
        "write `y = LSTM(32)(x, mask=m)` instead of `x -> LSTM(32)(mask=m)`",
        ["model M { x = a -> LSTM(3)(m) }", "model M { x = a -> LSTM(3)(mask=m) }"],
    ),
    "statement-outside-model": (
        "statements must be inside a `model Name { ... }` or `layer Name(...) { ... }` block",
        "wrap the statements in `model MyModel { ... }`",
        ["x = a", "input x: f32[B, T, 3]", "output x"],
    ),
    "missing-model-name": (
        "a model needs a name",
        "write `model MyModel { ... }`",
        ["model { }"],
    ),
    "unclosed-call": (
        "unclosed `(`",
        "close the argument list with `)`",
        ["model M { x = a -> Dense(3 }", "model M { x = Dense(3(a) }"],
    ),
    "double-equals": (
        "`==` is not an assignment",
        "assign a value with a single `=`",
        ["model M { x == a }"],
    ),
}

_TOKEN_NAMES = {
    "LPAR": "`(`",
    "RPAR": "`)`",
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "LSQB": "`[`",
    "RSQB": "`]`",
    "COMMA": "`,`",
    "EQUAL": "`=`",
    "COLON": "`:`",
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "__ANON_0": "`->`",
    "MINUS": "`-`",
    "AT": "`@`",
    "$END": "end of file",
}


def _describe_expected(expected: set[str], parser: Lark) -> str:
    names = []
    for e in sorted(expected):
        if e in _TOKEN_NAMES:
            names.append(_TOKEN_NAMES[e])
            continue
        try:
            term = parser.get_terminal(e)
            pattern = term.pattern
            if pattern.type == "str":
                names.append(f"`{pattern.value}`")
                continue
        except KeyError:
            pass
        names.append(e.lower())
    names = sorted(set(names))
    if len(names) > 6:
        names = names[:6] + ["..."]
    return ", ".join(names)


def _token_text(tok: Token | None) -> str:
    if tok is None or tok.type == "$END":
        return "end of file"
    return f"`{tok}`"


def parse_tree(text: str, file: str) -> Tree[Token]:
    """Parse ``text``; raise :class:`ParseFailure` carrying one diagnostic."""
    parser = _parser()
    try:
        return parser.parse(text)
    except UnexpectedInput as err:
        raise ParseFailure(_syntax_diagnostic(err, text, file, parser)) from None


def _variants(examples: list[str]) -> list[str]:
    """Each example, also after a first statement and inside a layer block: the
    parser states differ there."""
    out = list(examples)
    head = "model M { "
    for e in examples:
        if e.startswith(head):
            out.append(head + "input a: f32[B, T, 3] " + e[len(head) :])
            out.append("layer L(p: int) { input a " + e[len(head) :])
    return out


_CLOSERS = {"(": ")", "[": "]", "{": "}"}


def _open_delimiters(text: str, end: int) -> list[tuple[str, int]]:
    """Delimiters still open at offset ``end`` (innermost last); strings and comments skipped."""
    stack: list[tuple[str, int]] = []
    i = 0
    while i < end:
        ch = text[i]
        if ch == "#":
            j = text.find("\n", i)
            i = end if j < 0 else j
            continue
        if ch in "\"'":
            j = i + 1
            while j < end and text[j] not in (ch, "\n"):
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if ch in _CLOSERS:
            stack.append((ch, i))
        elif ch in ")]}" and stack and _CLOSERS[stack[-1][0]] == ch:
            stack.pop()
        i += 1
    return stack


def _prev_word(text: str, end: int) -> str:
    j = end
    while j > 0 and text[j - 1] in " \t\r\n":
        j -= 1
    k = j
    while k > 0 and (text[k - 1].isalnum() or text[k - 1] == "_"):
        k -= 1
    return text[k:j]


def _offset_span(file: str, text: str, start: int, end: int) -> Span:
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    return Span(file, line, col, line, col + max(1, end - start))


def _syntax_diagnostic(err: UnexpectedInput, text: str, file: str, parser: Lark) -> Diagnostic:
    line = max(getattr(err, "line", 1) or 1, 1)
    col = max(getattr(err, "column", 1) or 1, 1)
    if isinstance(err, UnexpectedEOF) or (
        isinstance(err, UnexpectedToken) and err.token.type == "$END"
    ):
        lines = text.splitlines() or [""]
        line = len(lines)
        col = len(lines[-1]) + 1
    length = 1
    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        length = max(1, len(str(err.token)))
    span = Span(file, line, col, line, col + length)

    # An unclosed delimiter is reported where it opens, not where the parser gives up:
    # at the end of the file, or at a token that cannot occur inside `(...)`/`[...]`.
    at_eof = isinstance(err, UnexpectedEOF) or (
        isinstance(err, UnexpectedToken) and err.token.type == "$END"
    )
    stop: int | None = len(text) if at_eof else None
    if isinstance(err, UnexpectedToken) and str(err.token) in ("input", "output", "model", "}"):
        stop = err.token.start_pos or 0
    if stop is not None:
        opened = _open_delimiters(text, stop)
        if opened and (at_eof or opened[-1][0] in "(["):
            opener, opos = opened[-1]
            return Diagnostic.make(
                "SEQ001",
                f"unclosed `{opener}`",
                _offset_span(file, text, opos, opos + 1),
                f"close it with `{_CLOSERS[opener]}`",
            )

    label = None
    try:
        label = err.match_examples(
            parser.parse, {k: _variants(v[2]) for k, v in _EXAMPLES.items()}, use_accepts=True
        )
    except Exception:  # match_examples is best effort  # pragma: no cover
        label = None

    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream
        ch = text[pos] if pos is not None and 0 <= pos < len(text) else "?"
        if ch in "\"'":
            return Diagnostic.make(
                "SEQ002",
                "unterminated string",
                span,
                "close the string on the same line",
            )
        return Diagnostic.make(
            "SEQ002",
            f"unexpected character `{ch}`",
            span,
            "remove it; `#` starts a comment",
        )

    if label is not None:
        message, hint, _ = _EXAMPLES[str(label)]
        if label == "missing-arrow" and isinstance(err, UnexpectedToken) and str(err.token) != "(":
            # the same parser state: a statement's name followed by anything but `=` or `,`
            return Diagnostic.make(
                "SEQ001",
                f"expected `=` after `{_prev_word(text, err.token.start_pos or 0)}`, got {_token_text(err.token)}",
                span,
                "a statement assigns a value to a name: `x = tokens -> Embedding(100, 8)`",
            )
        if label == "missing-arrow" and isinstance(err, UnexpectedToken) and str(err.token) == "(":
            # the parser stops at the `(` after the stage's name: point at the name
            end = err.token.start_pos or 0
            j = end
            while j > 0 and text[j - 1] in " \t\r\n":
                j -= 1
            k = j
            while k > 0 and (text[k - 1].isalnum() or text[k - 1] == "_"):
                k -= 1
            if k < j:
                span = _offset_span(file, text, k, j)
        return Diagnostic.make("SEQ001", message, span, hint)

    if isinstance(err, UnexpectedToken) and str(err.token) == ";":
        return Diagnostic.make(
            "SEQ001",
            "unexpected `;`",
            span,
            "statements end at the end of the line: remove it (`;` only separates the clauses "
            "of an `extern layer`)",
        )
    if isinstance(err, UnexpectedToken):
        got = _token_text(err.token)
        expected = _describe_expected(set(err.expected), parser)
        return Diagnostic.make(
            "SEQ001",
            f"unexpected {got}",
            span,
            f"expected {expected}" if expected else None,
        )
    return Diagnostic.make(
        "SEQ001", "unexpected end of file", span, "a block or a `)` is not closed"
    )
