"""``seqdsl lsp`` driven as an editor drives it: pygls' LanguageClient starts
``python -m seqdsl lsp`` as a subprocess and talks JSON-RPC over its stdio.

One session opens a file with errors (diagnostics at the right lines, with
codes, hints and related locations), edits it (the diagnostics follow), hovers
a masked value (its mask kind), asks the definition of a block call (the block,
in the used file), completes after ``LSTM(`` (Keras' argument names) and asks
the quick fixes. Another feeds the server the fuzz corpus of
``tests/test_fuzz.py`` and asks at many positions: every request gets an
answer, the server logs no internal error and is still running at the end.
Skipped without pygls, except under CI (``SEQDSL_CI=1``), where that fails.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

try:
    import pygls  # noqa: F401
except ImportError:  # pragma: no cover - the `lsp` extra is in requirements-dev.txt
    if os.environ.get("SEQDSL_CI"):
        raise  # CI installs it: a missing pygls is a failure there, not a skip
    pytest.skip("pygls is not installed (pip install 'seqdsl[lsp]')", allow_module_level=True)
from lsprotocol import types as lsp  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

from tests.refuse import refusing  # noqa: E402
from tests.test_fuzz import make_mutants  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 30.0

LIB = """\
layer Encoder(units: int) {
    input x
    h = x -> LSTM(units, return_sequences=true)
    output h
}
"""

MAIN = """\
use "lib.seq"

model Tagger {
    input tokens: i32[B, T] pad(post, value=0)
    e = tokens -> Embedding(1000, 16, mask_zero=true)
    h = Encoder(32)(e)
    y = h -> Flatten()
    z = h -> Lstm(8)
    output y, z
}
"""

#: Keras 3's keras.layers.LSTM arguments that seqdsl supports (from Keras' documentation)
KERAS_LSTM_ARGS = {
    "units", "activation", "recurrent_activation", "use_bias", "kernel_initializer",
    "recurrent_initializer", "bias_initializer", "unit_forget_bias", "dropout",
    "recurrent_dropout", "return_sequences", "return_state", "go_backwards", "stateful",
    "unroll",
}  # fmt: skip


class Editor:
    """A language client that records what the server publishes."""

    def __init__(self) -> None:
        self.client = LanguageClient("seqdsl-tests", "1")
        self.diagnostics: dict[tuple[str, int | None], list[lsp.Diagnostic]] = {}
        self.errors: list[str] = []
        self.versions: dict[str, int] = {}

        self.published: list[lsp.PublishDiagnosticsParams] = []

        @self.client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def _diags(params: lsp.PublishDiagnosticsParams) -> None:
            self.diagnostics[(params.uri, params.version)] = list(params.diagnostics)
            self.published.append(params)

        @self.client.feature(lsp.WINDOW_LOG_MESSAGE)
        def _log(params: lsp.LogMessageParams) -> None:
            if params.type == lsp.MessageType.Error:
                self.errors.append(params.message)

    async def wait_diagnostics(self, uri: str, version: int) -> list[lsp.Diagnostic]:
        deadline = time.monotonic() + TIMEOUT_S
        while (uri, version) not in self.diagnostics:
            assert time.monotonic() < deadline, f"no diagnostics for {uri} version {version}"
            await asyncio.sleep(0.01)
        return self.diagnostics[(uri, version)]

    def open(self, uri: str, text: str) -> int:
        self.versions[uri] = 1
        self.client.text_document_did_open(
            lsp.DidOpenTextDocumentParams(
                lsp.TextDocumentItem(uri=uri, language_id="seqdsl", version=1, text=text)
            )
        )
        return 1

    def change(self, uri: str, start: tuple[int, int], end: tuple[int, int], text: str) -> int:
        v = self.versions[uri] = self.versions[uri] + 1
        rng = lsp.Range(lsp.Position(*start), lsp.Position(*end))
        self.client.text_document_did_change(
            lsp.DidChangeTextDocumentParams(
                lsp.VersionedTextDocumentIdentifier(uri=uri, version=v),
                [lsp.TextDocumentContentChangePartial(range=rng, text=text)],
            )
        )
        return v

    def replace_all(self, uri: str, text: str) -> int:
        v = self.versions[uri] = self.versions[uri] + 1
        self.client.text_document_did_change(
            lsp.DidChangeTextDocumentParams(
                lsp.VersionedTextDocumentIdentifier(uri=uri, version=v),
                [lsp.TextDocumentContentChangeWholeDocument(text=text)],
            )
        )
        return v

    @staticmethod
    def at(uri: str, line: int, col: int) -> dict[str, object]:
        return {
            "text_document": lsp.TextDocumentIdentifier(uri),
            "position": lsp.Position(line, col),
        }

    async def hover(self, uri: str, line: int, col: int) -> lsp.Hover | None:
        return await self.client.text_document_hover_async(
            lsp.HoverParams(**self.at(uri, line, col))
        )  # type: ignore[arg-type]

    async def definition(self, uri: str, line: int, col: int) -> object:
        return await self.client.text_document_definition_async(
            lsp.DefinitionParams(**self.at(uri, line, col))  # type: ignore[arg-type]
        )

    async def completion(self, uri: str, line: int, col: int) -> object:
        return await self.client.text_document_completion_async(
            lsp.CompletionParams(**self.at(uri, line, col))  # type: ignore[arg-type]
        )


@asynccontextmanager
async def editor(cwd: Path) -> AsyncIterator[Editor]:
    ed = Editor()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    await ed.client.start_io(sys.executable, "-m", "seqdsl", "lsp", env=env, cwd=str(cwd))
    try:
        result = await asyncio.wait_for(
            ed.client.initialize_async(
                lsp.InitializeParams(
                    capabilities=lsp.ClientCapabilities(), root_uri=cwd.as_uri(), process_id=None
                )
            ),
            TIMEOUT_S,
        )
        caps = result.capabilities
        assert caps.hover_provider and caps.definition_provider and caps.completion_provider
        assert caps.document_symbol_provider and caps.code_action_provider
        ed.client.initialized(lsp.InitializedParams())
        yield ed
        await asyncio.wait_for(ed.client.shutdown_async(None), TIMEOUT_S)
        ed.client.exit(None)
    finally:
        server = ed.client._server
        if server is not None and server.returncode is None:
            try:  # after `exit` it stops by itself; after a failed assertion it is stopped
                await asyncio.wait_for(server.wait(), 5.0)
            except asyncio.TimeoutError:
                server.kill()
        await ed.client.stop()


def run(coro: Callable[[], object]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def _by_line(diags: list[lsp.Diagnostic]) -> dict[int, str]:
    return {d.range.start.line: str(d.code) for d in diags}


def test_editor_session(tmp_path: Path) -> None:
    (tmp_path / "lib.seq").write_text(LIB, encoding="utf-8")
    main = tmp_path / "main.seq"
    main.write_text(MAIN, encoding="utf-8")
    uri = main.as_uri()

    async def session() -> None:
        async with editor(tmp_path) as ed:
            # open a file with errors: each diagnostic on its line, with its code and hint
            v = ed.open(uri, MAIN)
            diags = await ed.wait_diagnostics(uri, v)
            assert _by_line(diags) == {6: "SEQ501", 7: "SEQ103"}, diags
            flatten = next(d for d in diags if d.code == "SEQ501")
            # the range is `h`, the value that brings the mask to Flatten (line 7, col 9)
            assert (flatten.range.start.character, flatten.range.end.character) == (8, 9)
            assert "help: " in flatten.message and "drop_mask" in flatten.message
            typo = next(d for d in diags if d.code == "SEQ103")
            assert (typo.range.start.character, typo.range.end.character) == (13, 17)
            assert flatten.severity == lsp.DiagnosticSeverity.Error

            # a quick fix for each: the did-you-mean and `-> drop_mask`
            actions = await ed.client.text_document_code_action_async(
                lsp.CodeActionParams(
                    lsp.TextDocumentIdentifier(uri),
                    lsp.Range(lsp.Position(0, 0), lsp.Position(9, 0)),
                    lsp.CodeActionContext(diagnostics=diags),
                )
            )
            assert actions is not None
            edits = {
                a.title: [(e.range.start.line, e.range.start.character, e.new_text)
                          for e in (a.edit.changes or {})[uri]]  # type: ignore[union-attr]
                for a in actions if isinstance(a, lsp.CodeAction)
            }  # fmt: skip
            assert edits["Change `Lstm` to `LSTM`"] == [(7, 13, "LSTM")]
            assert edits["Drop the mask on purpose: insert `-> drop_mask`"] == [
                (6, 9, " -> drop_mask")
            ]

            # edit: fix the typo; the SEQ103 goes, the SEQ501 stays on its line
            v = ed.change(uri, (7, 13), (7, 17), "LSTM")
            assert _by_line(await ed.wait_diagnostics(uri, v)) == {6: "SEQ501"}
            # and insert a line above: the SEQ501 moves down one line
            v = ed.change(uri, (3, 0), (3, 0), "    # a comment\n")
            assert _by_line(await ed.wait_diagnostics(uri, v)) == {7: "SEQ501"}
            v = ed.change(uri, (7, 9), (7, 9), " -> drop_mask")
            assert await ed.wait_diagnostics(uri, v) == []

            # hover on a masked value: `e` (line 6 now) is masked post, from the pad declaration
            h = await ed.hover(uri, 5, 5)
            assert h is not None and isinstance(h.contents, lsp.MarkupContent)
            assert "mask: `post, maybe-empty (declared)`" in h.contents.value
            assert "e: f32[B, T, 16]" in h.contents.value
            assert (h.range.start.line, h.range.start.character) == (5, 4)  # type: ignore[union-attr]
            # hover on the unmasked LSTM result: no mask, and the kernel per target
            h = await ed.hover(uri, 8, 5)
            assert h is not None and isinstance(h.contents, lsp.MarkupContent)
            assert "mask: `-`" in h.contents.value and "- torch: `" in h.contents.value

            # definition of a block call: the block, in the used file
            locs = await ed.definition(uri, 6, 10)
            assert isinstance(locs, list) and len(locs) == 1
            assert locs[0].uri == (tmp_path / "lib.seq").as_uri()
            assert locs[0].range.start.line == 0 and locs[0].range.start.character == 6
            # definition of a value: where it is assigned
            locs = await ed.definition(uri, 6, 20)
            assert isinstance(locs, list) and [(x.uri, x.range.start.line) for x in locs] == [
                (uri, 5)
            ]
            # definition of the `use`d file
            locs = await ed.definition(uri, 0, 8)
            assert isinstance(locs, list) and locs[0].uri == (tmp_path / "lib.seq").as_uri()

            # completion after `LSTM(`: Keras' argument names, with their defaults
            v = ed.change(uri, (9, 0), (9, 0), "    w = h -> LSTM(\n")
            comp = await ed.completion(uri, 9, 18)
            assert isinstance(comp, lsp.CompletionList)
            labels = {i.label: i for i in comp.items}
            assert set(labels) >= KERAS_LSTM_ARGS, KERAS_LSTM_ARGS - set(labels)
            assert labels["return_sequences"].insert_text == "return_sequences="
            assert labels["return_sequences"].detail == "return_sequences: bool = false"
            assert labels["activation"].detail == "activation: activation = tanh"
            # the broken text is reported, and the server still answers
            assert "SEQ001" in _by_line(await ed.wait_diagnostics(uri, v)).values()

            syms = await ed.client.text_document_document_symbol_async(
                lsp.DocumentSymbolParams(lsp.TextDocumentIdentifier(uri))
            )
            assert syms is not None
            assert [(s.name, s.kind) for s in syms if isinstance(s, lsp.DocumentSymbol)][1:] == [
                ("Tagger", lsp.SymbolKind.Class)
            ]
            assert ed.errors == []

    run(session)


def test_block_diagnostic_has_related_call_sites(tmp_path: Path) -> None:
    """An error inside a used file's block is shown at the call here, with the block's
    line and the call site as related locations."""
    lib = tmp_path / "lib.seq"
    lib.write_text(LIB.replace("x -> LSTM", "x -> Flatten() -> LSTM"), encoding="utf-8")
    main = tmp_path / "main.seq"
    text = MAIN.replace(
        "    y = h -> Flatten()\n    z = h -> Lstm(8)\n    output y, z", "    output h"
    )
    main.write_text(text, encoding="utf-8")

    async def session() -> None:
        async with editor(tmp_path) as ed:
            diags = await ed.wait_diagnostics(main.as_uri(), ed.open(main.as_uri(), text))
            (d,) = [x for x in diags if x.code == "SEQ501"]
            assert d.range.start.line == 5  # the call `Encoder(32)(e)`
            assert d.message.startswith(f"{lib}:3:")
            rel = [
                (r.location.uri, r.location.range.start.line) for r in d.related_information or []
            ]
            assert (lib.as_uri(), 2) in rel and (main.as_uri(), 5) in rel
            # the used file is fixed and saved: the open file is checked again
            lib.write_text(LIB, encoding="utf-8")
            seen = len(ed.published)
            ed.client.text_document_did_save(
                lsp.DidSaveTextDocumentParams(lsp.TextDocumentIdentifier(lib.as_uri()))
            )
            deadline = time.monotonic() + TIMEOUT_S
            while not [p for p in ed.published[seen:] if p.uri == main.as_uri()]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            again = [p for p in ed.published[seen:] if p.uri == main.as_uri()][-1]
            assert list(again.diagnostics) == []
            assert ed.errors == []

    run(session)


def _positions(text: str, rng: random.Random, n: int) -> list[tuple[int, int]]:
    lines = text.split("\n")
    out = []
    for _ in range(n):
        line = rng.randrange(len(lines))
        out.append((line, rng.randrange(len(lines[line]) + 1)))
    return out


def _fuzz(tmp_path: Path, count: int | None) -> None:
    mutants = make_mutants()
    rng = random.Random(7)
    if count is not None:
        mutants = rng.sample(mutants, count)
    uri = (tmp_path / "fuzz.seq").as_uri()

    async def session() -> None:
        async with editor(tmp_path) as ed:
            ed.open(uri, "")
            for m in mutants:
                v = ed.replace_all(uri, m.text)
                for line, col in _positions(m.text, rng, 4):
                    await asyncio.wait_for(ed.hover(uri, line, col), TIMEOUT_S)
                    await asyncio.wait_for(ed.definition(uri, line, col), TIMEOUT_S)
                    await asyncio.wait_for(ed.completion(uri, line, col), TIMEOUT_S)
                end = lsp.Position(len(m.text.split("\n")), 0)
                await asyncio.wait_for(
                    ed.client.text_document_code_action_async(
                        lsp.CodeActionParams(
                            lsp.TextDocumentIdentifier(uri),
                            lsp.Range(lsp.Position(0, 0), end),
                            lsp.CodeActionContext(diagnostics=[]),
                        )
                    ),
                    TIMEOUT_S,
                )
                await asyncio.wait_for(
                    ed.client.text_document_document_symbol_async(
                        lsp.DocumentSymbolParams(lsp.TextDocumentIdentifier(uri))
                    ),
                    TIMEOUT_S,
                )
                assert ed.errors == [], f"{m.seed}: {m.desc}\n{ed.errors[0]}"
            await ed.wait_diagnostics(uri, v)  # still alive and publishing
            assert ed.client._server is not None and ed.client._server.returncode is None

    run(session)


def test_server_survives_fuzz_corpus(tmp_path: Path) -> None:
    _fuzz(tmp_path, 40)


@pytest.mark.full
def test_server_survives_whole_fuzz_corpus(tmp_path: Path) -> None:
    _fuzz(tmp_path, None)


def test_lsp_without_pygls_exits_2() -> None:
    """Without pygls, `seqdsl lsp` says what to install and exits 2 (no traceback)."""
    script = refusing("pygls", "lsprotocol") + (
        "from seqdsl.cli import main\nsys.exit(main(['lsp']))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2, r.stderr
    assert "seqdsl lsp needs the `pygls` package: pip install 'seqdsl[lsp]'" in r.stderr
    assert "Traceback" not in r.stderr
