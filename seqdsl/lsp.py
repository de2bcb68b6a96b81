"""``seqdsl lsp``: the Language Server, over stdio, on pygls.

A thin layer over :mod:`seqdsl.ide`, which does the work: this module keeps
the open documents (pygls' workspace applies the edits), re-analyses a
document a moment after the last keystroke and publishes its diagnostics, and
converts between the protocol's types (UTF-16 or negotiated columns, URIs) and
the editor model's. A request on a document whose analysis is not up to date
analyses it first, except a hover on a word the edit did not touch and a
completion: those are answered from the last analysis at once (a hover says
so), see :class:`seqdsl.ide.Document`.

pygls and lsprotocol are imported here only, and only when the server starts
(``pip install 'seqdsl[lsp]'``); the compiler never needs them.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from . import __version__
from .ide import CodeAction, Completion, Document, IdeDiagnostic, Location, Range, Symbol

if TYPE_CHECKING:  # pragma: no cover - types only
    from lsprotocol import types as lsp
    from pygls.lsp.server import LanguageServer
    from pygls.workspace import TextDocument

__all__ = ["DEBOUNCE_S", "create_server", "main"]

#: seconds of quiet after an edit before the document is analysed and diagnostics published
DEBOUNCE_S = 0.15

_T = TypeVar("_T")


class _Docs:
    """The analysed documents, by URI, and the last version of each that checked."""

    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}
        self.pending: dict[str, asyncio.TimerHandle] = {}


def _name(td: TextDocument) -> str:
    """The name the compiler sees: the file's path (``use`` resolves against its folder)."""
    if td.uri.startswith("file:"):
        return str(td.path)
    return f"<{td.uri}>"


def create_server() -> LanguageServer:
    """The seqdsl language server (not started). Raises ImportError without pygls."""
    from lsprotocol import types as lsp
    from pygls.lsp.server import LanguageServer

    server = LanguageServer("seqdsl", __version__)
    state = _Docs()

    def log_error(what: str) -> None:
        server.window_log_message(
            lsp.LogMessageParams(
                lsp.MessageType.Error,
                f"seqdsl lsp: internal error in {what}:\n{traceback.format_exc()}",
            )
        )

    def guarded(what: str, fallback: _T, fn: Callable[[], _T]) -> _T:
        """Run a handler's body; a bug in seqdsl is logged, never fatal to the server."""
        try:
            return fn()
        except Exception:  # noqa: BLE001 - the server's internal-error boundary
            log_error(what)
            return fallback

    def analysed(uri: str) -> tuple[TextDocument, Document]:
        """The document of the text as it is now (analysed when first asked)."""
        td = server.workspace.get_text_document(uri)
        doc = state.docs.get(uri)
        if doc is None or doc.text != td.source:
            doc = Document(td.source, _name(td), previous=doc)
            state.docs[uri] = doc
        return td, doc

    def to_range(lines: Sequence[str], r: Range, td: TextDocument) -> lsp.Range:
        rng = lsp.Range(
            lsp.Position(r.start_line, r.start_col), lsp.Position(r.end_line, r.end_col)
        )
        return td.position_codec.range_to_client_units(list(lines), rng)

    def uri_of(name: str, td: TextDocument, doc: Document) -> str:
        if name == doc.name:
            return td.uri
        return Path(name).resolve().as_uri()

    def to_location(loc: Location, td: TextDocument, doc: Document) -> lsp.Location:
        text = doc.text if loc.file == doc.name else doc.analysis.sources.get(loc.file)
        if text is None:
            try:
                text = Path(loc.file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                text = ""
        lines = text.splitlines(keepends=True)
        return lsp.Location(uri_of(loc.file, td, doc), to_range(lines, loc.range, td))

    def to_diagnostic(d: IdeDiagnostic, td: TextDocument, doc: Document) -> lsp.Diagnostic:
        message = d.message + (f"\nhelp: {d.hint}" if d.hint else "")
        return lsp.Diagnostic(
            range=to_range(td.lines, d.range, td),
            message=message,
            severity=lsp.DiagnosticSeverity.Error
            if d.severity == "error"
            else lsp.DiagnosticSeverity.Warning,
            code=d.code,
            source="seqdsl",
            related_information=[
                lsp.DiagnosticRelatedInformation(to_location(loc, td, doc), msg)
                for loc, msg in d.related
            ]
            or None,
        )

    def publish(uri: str) -> None:
        state.pending.pop(uri, None)

        def run() -> None:
            if uri not in state.docs:
                return  # closed meanwhile
            td, doc = analysed(uri)
            server.text_document_publish_diagnostics(
                lsp.PublishDiagnosticsParams(
                    uri=uri,
                    version=td.version,
                    diagnostics=[to_diagnostic(d, td, doc) for d in doc.diagnostics()],
                )
            )

        guarded("diagnostics", None, run)

    def schedule(uri: str, delay: float) -> None:
        old = state.pending.pop(uri, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        state.pending[uri] = loop.call_later(delay, publish, uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: LanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
        state.docs.pop(params.text_document.uri, None)
        guarded("didOpen", None, lambda: analysed(params.text_document.uri))
        publish(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: LanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
        schedule(params.text_document.uri, DEBOUNCE_S)

    @server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: LanguageServer, params: lsp.DidSaveTextDocumentParams) -> None:
        # the saved file may be `use`d by the others: check every open document again
        for uri, doc in list(state.docs.items()):
            state.docs[uri] = Document(doc.text, doc.name, previous=doc)
            schedule(uri, 0.0)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: LanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        state.docs.pop(uri, None)
        pending = state.pending.pop(uri, None)
        if pending is not None:
            pending.cancel()
        server.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=uri, diagnostics=[])
        )

    def position(td: TextDocument, pos: lsp.Position) -> tuple[int, int]:
        p = td.position_codec.position_from_client_units(list(td.lines), pos)
        return p.line, p.character

    @server.feature(lsp.TEXT_DOCUMENT_HOVER)
    def hover(ls: LanguageServer, params: lsp.HoverParams) -> lsp.Hover | None:
        def run() -> lsp.Hover | None:
            td, doc = analysed(params.text_document.uri)
            h = doc.hover(*position(td, params.position))
            if h is None:
                return None
            return lsp.Hover(
                contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=h.markdown),
                range=to_range(td.lines, h.range, td),
            )

        return guarded("hover", None, run)

    @server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
    def definition(ls: LanguageServer, params: lsp.DefinitionParams) -> list[lsp.Location]:
        def run() -> list[lsp.Location]:
            td, doc = analysed(params.text_document.uri)
            return [
                to_location(loc, td, doc) for loc in doc.definition(*position(td, params.position))
            ]

        return guarded("definition", [], run)

    completion_kinds = {
        "layer": lsp.CompletionItemKind.Class,
        "block": lsp.CompletionItemKind.Module,
        "argument": lsp.CompletionItemKind.Property,
        "choice": lsp.CompletionItemKind.EnumMember,
        "value": lsp.CompletionItemKind.Variable,
        "keyword": lsp.CompletionItemKind.Keyword,
    }

    def to_item(c: Completion, order: int) -> lsp.CompletionItem:
        return lsp.CompletionItem(
            label=c.label,
            kind=completion_kinds[c.kind],
            detail=c.detail or None,
            documentation=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=c.documentation)
            if c.documentation
            else None,
            insert_text=c.insert_text,
            sort_text=f"{order:04d}",
        )

    @server.feature(
        lsp.TEXT_DOCUMENT_COMPLETION,
        lsp.CompletionOptions(trigger_characters=["(", ",", "=", ">", "@"]),
    )
    def completion(ls: LanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList:
        def run() -> lsp.CompletionList:
            td, doc = analysed(params.text_document.uri)
            items = doc.completion(*position(td, params.position))
            return lsp.CompletionList(
                is_incomplete=False, items=[to_item(c, i) for i, c in enumerate(items)]
            )

        return guarded("completion", lsp.CompletionList(is_incomplete=False, items=[]), run)

    symbol_kinds = {
        "model": lsp.SymbolKind.Class,
        "block": lsp.SymbolKind.Function,
        "cell": lsp.SymbolKind.Struct,
        "extern": lsp.SymbolKind.Interface,
        "input": lsp.SymbolKind.Field,
        "value": lsp.SymbolKind.Variable,
        "use": lsp.SymbolKind.File,
    }

    def to_symbol(s: Symbol, td: TextDocument) -> lsp.DocumentSymbol:
        return lsp.DocumentSymbol(
            name=s.name,
            kind=symbol_kinds[s.kind],
            range=to_range(td.lines, s.range, td),
            selection_range=to_range(td.lines, s.selection_range, td),
            detail=s.detail or None,
            children=[to_symbol(c, td) for c in s.children] or None,
        )

    @server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    def symbols(ls: LanguageServer, params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol]:
        def run() -> list[lsp.DocumentSymbol]:
            td, doc = analysed(params.text_document.uri)
            return [to_symbol(s, td) for s in doc.symbols()]

        return guarded("documentSymbol", [], run)

    def to_action(a: CodeAction, td: TextDocument, doc: Document) -> lsp.CodeAction:
        return lsp.CodeAction(
            title=a.title,
            kind=lsp.CodeActionKind.QuickFix,
            diagnostics=[to_diagnostic(a.diagnostic, td, doc)],
            edit=lsp.WorkspaceEdit(
                changes={
                    td.uri: [
                        lsp.TextEdit(to_range(td.lines, e.range, td), e.new_text) for e in a.edits
                    ]
                }
            ),
            is_preferred=len(a.edits) == 1,
        )

    @server.feature(
        lsp.TEXT_DOCUMENT_CODE_ACTION,
        lsp.CodeActionOptions(code_action_kinds=[lsp.CodeActionKind.QuickFix]),
    )
    def code_action(ls: LanguageServer, params: lsp.CodeActionParams) -> list[lsp.CodeAction]:
        def run() -> list[lsp.CodeAction]:
            td, doc = analysed(params.text_document.uri)
            r = td.position_codec.range_from_client_units(list(td.lines), params.range)
            rng = Range(r.start.line, r.start.character, r.end.line, r.end.character)
            return [to_action(a, td, doc) for a in doc.code_actions(rng)]

        return guarded("codeAction", [], run)

    return server


def main() -> int:
    """Serve over stdio until the client exits; 2 when pygls is missing."""
    import sys

    try:
        server = create_server()
    except ImportError as e:
        print(
            f"seqdsl lsp needs the `{getattr(e, 'name', None) or 'pygls'}` package: "
            "pip install 'seqdsl[lsp]'",
            file=sys.stderr,
        )
        return 2
    server.start_io()
    return 0
