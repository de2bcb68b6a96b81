"""Stage 1: text -> Lark parse tree, or a syntax diagnostic.

The grammar ships inside the package (``seqdsl/grammar/seq.lark`` in a wheel);
in a source checkout it is read from the top-level ``grammar/`` folder.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import ContextualLexer, LexerState

from .diagnostics import Diagnostic
from .ir import Span

__all__ = [
    "MAX_INT_DIGITS",
    "MAX_NESTING",
    "MAX_SYNTAX_ERRORS",
    "grammar_text",
    "make_parser",
    "normalize_source",
    "parse_tree",
    "ParseFailure",
    "unquote",
]

#: the deepest parse tree accepted: brackets, nested layers and operator chains
#: each add a level (the stages after the parser recurse on the tree)
MAX_NESTING = 100
#: the longest integer literal accepted, in digits
MAX_INT_DIGITS = 100
#: syntax errors reported per file before giving up
MAX_SYNTAX_ERRORS = 20


def normalize_source(text: str) -> str:
    """The text as an editor shows it: a leading byte-order mark dropped, and
    every line ending (``\\r\\n``, ``\\r``, ``\\n``) read as ``\\n``. Lines and
    columns of diagnostics count in this text, as editors count them."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def grammar_text() -> str:
    try:
        res = resources.files("seqdsl").joinpath("grammar/seq.lark")
        if res.is_file():
            return res.read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):  # pragma: no cover
        pass
    here = Path(__file__).resolve().parent.parent / "grammar" / "seq.lark"
    return here.read_text(encoding="utf-8")


#: after a keyword: more names, then `=` or `<-` (the keyword starts an assignment)
_ASSIGNS_AFTER = re.compile(
    r"(?:[ \t\n]|#[^\n]*)*(?:,(?:[ \t\n]|#[^\n]*)*[A-Za-z_]\w*(?:[ \t\n]|#[^\n]*)*)*(?:=(?!=)|<-)"
)


class _KeywordLexer(ContextualLexer):
    """The contextual lexer, except that a keyword that starts an assignment is a name.

    ``masked = frames -> Masking()`` after ``input frames: f32[B, T, 3]``: the parser
    could take `masked` as the input's modifier, so the contextual lexer reads a
    keyword. Where a statement may start (a name and `}` are both acceptable) and
    the keyword is followed by ``=``, ``<-`` or ``, name ... =``, it is a name: no
    keyword is ever followed by those."""

    keywords: frozenset[str] = frozenset()

    def lex(self, lexer_state: LexerState, parser_state: Any) -> Iterator[Token]:
        # the whole text: a TextSlice's (lark >= 1.2), or the str itself (lark 1.1)
        src: Any = lexer_state.text
        text: str = src if isinstance(src, str) else src.text
        for tok in super().lex(lexer_state, parser_state):
            if tok.type in self.keywords and tok.end_pos is not None:
                acts = parser_state.parse_conf.states[parser_state.position]
                if "NAME" in acts and "RBRACE" in acts and _ASSIGNS_AFTER.match(text, tok.end_pos):
                    tok = Token.new_borrow_pos("NAME", str(tok), tok)
            yield tok


def make_parser(**options: Any) -> Lark:
    """A Lark parser of the language as seqdsl reads it: LALR with the contextual lexer
    and keywords that start an assignment read as names. ``options`` go to Lark
    (``keep_all_tokens=True``, ``lexer_callbacks=...``: tools that need every token)."""
    lark = Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        **options,
    )
    lexer = lark.parser.lexer
    assert isinstance(lexer, ContextualLexer)
    lexer.__class__ = _KeywordLexer  # the same lexer, with `lex` wrapped
    assert isinstance(lexer, _KeywordLexer)
    word = re.compile(r"[A-Za-z_]\w*")
    lexer.keywords = frozenset(
        t.name
        for t in lark.terminals
        if t.pattern.type == "str" and word.fullmatch(t.pattern.value) and t.name != "NAME"
    )
    return lark


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return make_parser()


_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)", re.S)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}


def _escape(m: re.Match[str]) -> str:
    e = m.group(1)
    if len(e) > 1:  # \uXXXX, \xXX
        return chr(int(e[1:], 16))
    return _SIMPLE_ESCAPES.get(e, "\\" + e)  # an unknown escape stays as written


def unquote(s: str) -> str:
    """The value of a STRING token (quotes removed, escapes decoded; non-ASCII text kept
    as it is, an unknown escape such as ``\\e`` kept as written)."""
    body = s[1:-1]
    return _ESCAPE.sub(_escape, body) if "\\" in body else body


class ParseFailure(Exception):
    """A file that does not parse: every syntax error found (``diagnostic`` is the first)."""

    def __init__(self, diagnostics: Diagnostic | Sequence[Diagnostic]):
        diags = (diagnostics,) if isinstance(diagnostics, Diagnostic) else tuple(diagnostics)
        assert diags
        super().__init__(diags[0].message)
        self.diagnostic = diags[0]
        self.diagnostics = diags


# Friendly messages for common mistakes, matched on the parser state (Lark's
# match_examples). Each label maps to (message, hint) and example snippets.
_EXAMPLES: dict[str, tuple[str, str, list[str]]] = {
    "colon-kwarg": (
        "keyword arguments use `=`, not `:`",
        "write `units=32`, not `units: 32`",
        [
            "model M { x = a -> Dense(units: 3) }",
            "model M { x = Dense(units: 3)(a) }",
            "model M { x = a -> Dense(3, use_bias: true) }",
            "model M { x = a -> Dense(3, use_bias=true, name: 3) }",
        ],
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
    """Parse ``text`` (already :func:`normalize_source`-d); raise :class:`ParseFailure`
    carrying every syntax error.

    After a syntax error the parser recovers at statement boundaries: the statement
    in error is blanked out (positions kept) and the text parsed again, so that each
    later syntax error is reported with its own location, up to
    :data:`MAX_SYNTAX_ERRORS`."""
    parser = _parser()
    diags: list[Diagnostic] = []
    seen: set[tuple[int, int]] = set()
    work = text
    for _attempt in range(2 * MAX_SYNTAX_ERRORS):  # each attempt blanks some text: bounded
        try:
            tree = parser.parse(work)
        except UnexpectedInput as err:
            d = _syntax_diagnostic(err, work, file, parser)
            assert d.span is not None
            if (d.span.line, d.span.col) not in seen:
                seen.add((d.span.line, d.span.col))
                diags.append(d)
            region = None if len(diags) >= MAX_SYNTAX_ERRORS else _recovery_region(work, err, d)
            if region is None:
                raise ParseFailure(diags) from None
            a, b = region
            work = work[:a] + re.sub(r"[^\n]", " ", work[a:b]) + work[b:]
            continue
        if diags:
            raise ParseFailure(diags)
        limit = _check_limits(tree, text, file)
        if limit is not None:
            raise ParseFailure(limit)
        return tree
    raise ParseFailure(diags)


# ---------------------------------------------------------------- limits


def _check_limits(tree: Tree[Token], text: str, file: str) -> Diagnostic | None:
    """Nesting deeper than :data:`MAX_NESTING` or an integer literal longer than
    :data:`MAX_INT_DIGITS`: the later stages recurse on the tree and convert literals."""
    stack: list[tuple[Tree[Token] | Token, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Token):
            if node.type == "INT" and len(node) > MAX_INT_DIGITS:
                return Diagnostic.make(
                    "SEQ015",
                    f"integer literal of {len(node)} digits; the limit is {MAX_INT_DIGITS}",
                    _token_span(file, node),
                    "no size or count needs that many digits; write a float such as `1e30` "
                    "where a large number is meant",
                )
            continue
        if depth > MAX_NESTING:
            start = _first_token(node)
            span = (
                _token_span(file, start)
                if start is not None
                else Span(
                    file, node.meta.line, node.meta.column, node.meta.line, node.meta.column + 1
                )
            )
            return Diagnostic.make(
                "SEQ015",
                f"nested too deeply: more than {MAX_NESTING} levels of brackets, layers and operators",
                span,
                "flatten the expression: name intermediate values in their own statements",
            )
        for child in node.children:
            if child is not None:
                stack.append((child, depth + 1))
    return None


def _first_token(node: Tree[Token]) -> Token | None:
    while True:
        kids = [c for c in node.children if c is not None]
        if not kids:
            return None
        first = kids[0]
        if isinstance(first, Token):
            return first
        node = first


def _token_span(file: str, tok: Token) -> Span:
    line = tok.line or 1
    col = tok.column or 1
    return Span(file, line, col, line, col + max(1, min(len(tok), 80)))


# ---------------------------------------------------------------- recovery

_STMT_KEYWORDS = ("input", "output", "state", "weight")
_TOP_KEYWORDS = ("model", "layer", "cell", "extern", "use")
_ASSIGN_START = re.compile(r"[A-Za-z_]\w*(?:[ \t]*,[ \t]*[A-Za-z_]\w*)*[ \t]*(?:=|<-)")
#: a line ending like this leaves its statement open
_OPEN_END = re.compile(r"(?:->|=|,|\(|\[|@|<-|:)[ \t]*(?:#[^\n]*)?$")
_KEYWORD_START = re.compile(r"([A-Za-z_]\w*)\b")


def _line_kind(line: str) -> str | None:
    """``top`` (a block keyword), ``stmt`` (a statement start), ``close`` (`}`) or None."""
    s = line.lstrip(" \t")
    if s.startswith("}"):
        return "close"
    m = _KEYWORD_START.match(s)
    if m is None:
        return None
    if _ASSIGN_START.match(s):
        return "stmt"
    if m.group(1) in _TOP_KEYWORDS:
        return "top"
    if m.group(1) in _STMT_KEYWORDS:
        return "stmt"
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _recovery_region(text: str, err: UnexpectedInput, diag: Diagnostic) -> tuple[int, int] | None:
    """The part of ``text`` to blank out to get past ``err`` (None: stop recovering)."""
    if isinstance(err, UnexpectedEOF):
        return None
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream
        if pos is None or not 0 <= pos < len(text):
            return None
        if text[pos] not in "\"'":  # one bad character: skip it
            return pos, pos + 1
        # an unterminated string: its statement
    elif isinstance(err, UnexpectedToken) and err.token.type != "$END":
        if err.token.start_pos is None:
            return None
        pos = err.token.start_pos
    else:
        return None
    return _statement_region(text, pos)


def _statement_region(text: str, pos: int) -> tuple[int, int] | None:
    """The statement around the syntax error at ``pos``, by lines: from the line that
    starts it to the line that starts the next statement, block or `}`."""
    lines = text.split("\n")
    starts = [0]
    for ln in lines[:-1]:
        starts.append(starts[-1] + len(ln) + 1)

    def line_of(offset: int) -> int:
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo

    opened = _open_delimiters(text, pos)
    braces = [o for o in opened if o[0] == "{"]
    # the anchor: the outermost `(`/`[` still open inside the innermost block, else the error
    inner = braces[-1][1] if braces else -1
    anchor = next((o[1] for o in opened if o[0] in "([" and o[1] > inner), pos)
    e_line = line_of(pos)
    at_line_start = text[starts[e_line] : pos].strip() == ""
    prev = e_line - 1
    while prev >= 0 and not lines[prev].strip():
        prev -= 1
    prev_open = (
        prev >= 0
        and bool(_OPEN_END.search(lines[prev]))
        and not lines[prev].lstrip().startswith("#")
    )
    starts_stmt = _line_kind(lines[e_line]) is not None
    if starts_stmt and anchor == pos and e_line > 0 and (at_line_start or prev_open):
        # the token starts a statement: the one before it is incomplete; blank that one
        anchor = starts[e_line] - 1
        end = starts[e_line]
    else:
        end = -1
    floor = line_of(inner) + 1 if inner >= 0 else 0
    a_line = line_of(anchor)
    s_line = a_line
    for i in range(a_line, floor - 1, -1):
        if _line_kind(lines[i]) in ("stmt", "top"):
            s_line = i
            break
    start = starts[s_line]
    if end < 0:
        base = len(_open_delimiters(text, start))
        ind = _indent(lines[s_line])
        end = len(text)
        depth = len(_open_delimiters(text, starts[e_line + 1])) if e_line + 1 < len(lines) else 0
        for i in range(e_line + 1, len(lines)):
            if i > e_line + 1:
                depth = _depth_after(text, starts[i - 1], starts[i], depth)
            kind = _line_kind(lines[i])
            if kind == "top":
                end = starts[i]
                break
            if kind == "stmt" and (depth <= base or _indent(lines[i]) <= ind):
                end = starts[i]
                break
            if kind == "close" and (depth <= base or _indent(lines[i]) < ind):
                end = starts[i]
                break
    if not text[start:end].strip():
        return None
    return start, end


def _depth_after(text: str, start: int, end: int, depth: int) -> int:
    """The delimiter depth at ``end``, given ``depth`` at ``start`` (a line start):
    strings and comments skipped, within one line."""
    for ch, _ in _delimiters(text, start, end):
        depth += 1 if ch in _CLOSERS else -1
    return depth


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


def _delimiters(text: str, start: int, end: int) -> Iterator[tuple[str, int]]:
    """Each bracket between ``start`` and ``end`` with its offset, strings and comments
    skipped (a string or a comment ends at its line's end)."""
    i = start
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
        if ch in "([{)]}":
            yield ch, i
        i += 1


def _open_delimiters(text: str, end: int) -> list[tuple[str, int]]:
    """Delimiters still open at offset ``end`` (innermost last); strings and comments skipped."""
    stack: list[tuple[str, int]] = []
    for ch, i in _delimiters(text, 0, end):
        if ch in _CLOSERS:
            stack.append((ch, i))
        elif stack and _CLOSERS[stack[-1][0]] == ch:
            stack.pop()
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


def _bad_character(ch: str, span: Span) -> Diagnostic:
    code = f"U+{ord(ch):04X}"
    if ch == "\0":
        return Diagnostic.make(
            "SEQ002",
            f"NUL character ({code}) in the source",
            span,
            "a .seq file is UTF-8 text: this one holds binary data or was saved in "
            "another encoding (UTF-16?); save it as UTF-8",
        )
    if ch == "\ufeff":
        return Diagnostic.make(
            "SEQ002",
            f"byte-order mark ({code}) inside the text",
            span,
            "a byte-order mark is accepted only at the start of a file: remove this one "
            "(files joined together?)",
        )
    if not ch.isprintable() or ch.isspace():
        return Diagnostic.make(
            "SEQ002",
            f"invisible character {code} in the source",
            span,
            "remove it: only spaces, tabs and line breaks separate tokens",
        )
    if ord(ch) > 127:
        return Diagnostic.make(
            "SEQ002",
            f"unexpected character `{ch}` ({code})",
            span,
            "names and operators are ASCII: replace it (pasted from a word processor?)",
        )
    return Diagnostic.make(
        "SEQ002",
        f"unexpected character `{ch}`",
        span,
        "remove it; `#` starts a comment" if ch in "/;$?%&|!^~`\\" else "remove it",
    )


_TRAILING = re.compile(r"(->|=|,|@|<-)[ \t]*(?:#[^\n]*)?$")


def _unfinished_line(text: str, pos: int, file: str) -> Diagnostic | None:
    """A statement left open at the end of its line (``b = a ->``) when the next line
    starts a statement: the parser only notices on that line; report the open end."""
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    line = text[line_start : len(text) if line_end < 0 else line_end]
    if _line_kind(line) not in ("stmt", "top", "close") or line_start == 0:
        return None
    # the error is within the first two tokens of the line (the next statement's start)
    if len(text[line_start:pos].split()) > 1:
        return None
    prev_end = line_start - 1
    while prev_end > 0:
        prev_start = text.rfind("\n", 0, prev_end) + 1
        prev = text[prev_start:prev_end]
        if prev.strip() and not prev.lstrip().startswith("#"):
            break
        prev_end = prev_start - 1
    else:
        return None
    m = _TRAILING.search(prev)
    opened = _open_delimiters(text, prev_end) if m is not None else []
    if m is None or opened and opened[-1][0] in "([":
        return None
    tok = m.group(1)
    start = prev_start + m.start(1)
    what = {
        "->": "a stage",
        "=": "a value",
        ",": "another item",
        "@": "a decorator",
        "<-": "a value",
    }
    return Diagnostic.make(
        "SEQ001",
        f"the statement ends with `{tok}`: it expects {what[tok]} after it",
        _offset_span(file, text, start, start + len(tok)),
        f"finish the statement on this line, or remove the trailing `{tok}`; the next line "
        "starts a new statement",
    )


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

    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        unfinished = _unfinished_line(text, err.token.start_pos or 0, file)
        if unfinished is not None:
            return unfinished

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
        return _bad_character(ch, span)

    if label is not None:
        message, hint, _ = _EXAMPLES[str(label)]
        if label == "colon-kwarg" and isinstance(err, UnexpectedToken) and str(err.token) == ":":
            name = _prev_word(text, err.token.start_pos or 0)
            if name:
                hint = f"write `{name}=...`, not `{name}: ...`"
        if label == "unclosed-call" and isinstance(err, UnexpectedToken):
            at = err.token.start_pos or 0
            opened = [o for o in _open_delimiters(text, at) if o[0] == "("]
            eol = text.find("\n", at)
            eol = len(text) if eol < 0 else eol
            if opened and opened[-1] not in _open_delimiters(text, eol):
                # the `(` closes later on the line: a separator is missing
                return Diagnostic.make(
                    "SEQ001",
                    f"expected `,` or `)` before {_token_text(err.token)}",
                    span,
                    "separate arguments with `,`, e.g. `Dense(16, activation=relu)`",
                )
            if opened:
                opos = opened[-1][1]
                span = _offset_span(file, text, opos, opos + 1)
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
