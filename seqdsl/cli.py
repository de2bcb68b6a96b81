"""The command line: ``seqdsl check|summary|compile|export|graph|run|lsp``. The only module that prints or exits.

Exit codes (stable):
  0  no errors (warnings allowed)
  1  the input has errors (diagnostics were printed)
  2  usage or I/O error (bad flags, unreadable file)
  70 internal error: a bug in seqdsl (a short report is printed; --traceback shows it all)
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import __version__
from .api import Program, analyze_sources
from .diagnostics import Diagnostic, render

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70

__all__ = ["main", "EXIT_OK", "EXIT_USER", "EXIT_USAGE", "EXIT_INTERNAL"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqdsl",
        description="Check, summarise and compile .seq models of padding, masking and RNN stacks.",
        epilog="exit codes: 0 ok, 1 errors in the input, 2 usage/IO, 70 internal error",
    )
    p.add_argument("--version", action="version", version=f"seqdsl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--output-format",
            choices=("full", "concise", "json"),
            default="full",
            help="how diagnostics are printed (default: full, with source excerpts)",
        )
        sp.add_argument(
            "--traceback", action="store_true", help="show the traceback of an internal error"
        )

    c = sub.add_parser("check", help="parse and type-check .seq files")
    c.add_argument("files", nargs="+", metavar="FILE")
    common(c)
    s = sub.add_parser("summary", help="print the layer table of a .seq model")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--model", help="the model to summarise (default: every model in the file)")
    s.add_argument("--format", choices=("text", "json"), default="text", help="summary format")
    common(s)
    from .emit import BACKENDS

    k = sub.add_parser("compile", help="write a model module for a backend")
    k.add_argument("file", metavar="FILE")
    k.add_argument("--backend", required=True, choices=sorted(BACKENDS))
    k.add_argument("--model", help="the model to compile (default: the first model in the file)")
    k.add_argument("-o", "--output", metavar="OUT.py", help="write here instead of standard output")
    k.add_argument(
        "--standalone",
        action="store_true",
        help="copy the run-time code the model uses into the module (it then needs only "
        "numpy and the framework, not seqdsl)",
    )
    common(k)
    e = sub.add_parser("export", help="write a model file for a runtime (ONNX)")
    e.add_argument("file", metavar="FILE")
    e.add_argument("--format", required=True, choices=("onnx",), help="the model format")
    e.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="the file to write")
    e.add_argument("--model", help="the model to export (default: the first model in the file)")
    e.add_argument(
        "--weights",
        metavar="F.safetensors",
        help="canonical weights (seqdsl's safetensors file; default: the initial weights)",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the initial weights (default 0)")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    common(e)
    r = sub.add_parser(
        "run",
        help="run a model on data (default: the NumPy reference interpreter)",
        description="Build a model with the initial weights of --seed and run it on data: "
        "ragged sequences from a .json/.jsonl/.npz file, padded by the declared pad(...), "
        "or random data of the declared types. Prints each output (with its mask) and the "
        "time taken.",
        epilog="data files: .jsonl, one object per line keyed by input name "
        '({"tokens": [5, 8, 2]}; a bare list for a one-input model); .json, a list of such '
        "objects or one object of columns; .npz, {name} [N, ...] or {name}_values with "
        "{name}_row_lengths. A masked input without pad(...) takes {name}_mask. "
        "exit codes: 0 ok, 1 errors in the model or data, 2 usage/IO (unreadable file, "
        "framework not installed), 70 internal error",
    )
    r.add_argument("file", metavar="FILE")
    r.add_argument(
        "--backend",
        choices=("reference", "torch", "jax", "keras"),
        default="reference",
        help="reference (NumPy float64, base install; the default), torch, jax or keras "
        "(pip install 'seqdsl[torch]' etc.)",
    )
    r.add_argument("--data", metavar="F", help="a .json, .jsonl or .npz file (default: generated)")
    r.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")
    r.add_argument(
        "--weights",
        metavar="F.safetensors",
        help="canonical weights (seqdsl's safetensors file, e.g. after training; "
        "default: the initial weights of --seed)",
    )
    r.add_argument("--rows", type=int, default=4, help="rows of generated data (default 4)")
    r.add_argument("--model", help="the model to run (default: the first model in the file)")
    common(r)
    g = sub.add_parser(
        "graph", help="draw a model: values with their type, time and mask kind (Graphviz)"
    )
    g.add_argument("file", metavar="FILE")
    g.add_argument("--model", help="the model to draw (default: every model in the file)")
    g.add_argument(
        "-o",
        "--output",
        metavar="OUT.svg|OUT.png|OUT.dot",
        help="write here; .svg and .png are rendered by Graphviz' `dot` (default: DOT text "
        "on standard output)",
    )
    common(g)
    sub.add_parser(
        "lsp",
        help="run the language server over stdio (for editors; pip install 'seqdsl[lsp]')",
        description="The seqdsl language server (LSP over stdio): diagnostics, hover, "
        "definitions, completion, symbols and quick fixes. See docs/editors.md.",
    )
    return p


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"seqdsl: cannot read {path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return None


def _emit(diags: Sequence[Diagnostic], sources: Mapping[str, str], fmt: str) -> None:
    if fmt == "json" or diags:
        sys.stdout.write(render(diags, sources, fmt))


def _check(args: argparse.Namespace) -> int:
    all_diags: list[Diagnostic] = []
    sources: dict[str, str] = {}  # every file read, the ones that others use included
    io_error = False
    n_files = 0
    n_models = 0
    for f in args.files:
        text = _read(f)
        if text is None:
            io_error = True
            continue
        n_files += 1
        a = analyze_sources(text, f)
        sources.update(a.sources)
        all_diags += a.diagnostics
        if a.program is not None:
            n_models += len(a.program.models)
    _emit(all_diags, sources, args.output_format)
    errors = sum(1 for d in all_diags if d.is_error)
    if args.output_format == "full" and not errors and not io_error:
        warns = len(all_diags)
        print(f"ok: {n_files} file(s), {n_models} model(s), {warns} warning(s)")
    if errors:
        return EXIT_USER
    return EXIT_USAGE if io_error else EXIT_OK


def _checked_program(args: argparse.Namespace) -> Program | int:
    """Read and check ``args.file`` for a command that needs a clean program
    (summary, compile): the program, or the exit code after printing why not.
    Warnings go to standard error so that standard output stays the result."""
    text = _read(args.file)
    if text is None:
        return EXIT_USAGE
    a = analyze_sources(text, args.file, need_model=True)
    prog, diags, sources = a.program, a.diagnostics, a.sources
    if prog is None or any(d.is_error for d in diags):
        _emit(diags, sources, args.output_format)
        return EXIT_USER
    if args.model is not None and args.model not in {m.name for m in prog.models}:
        names = ", ".join(m.name for m in prog.models)
        print(
            f"seqdsl: no model named {args.model!r} in {args.file} (models: {names})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if diags and args.output_format != "json":
        sys.stderr.write(render(diags, sources, args.output_format))
    return prog


def _summary(args: argparse.Namespace) -> int:
    prog = _checked_program(args)
    if isinstance(prog, int):
        return prog
    sys.stdout.write(prog.summary(args.model, "json" if args.format == "json" else "text"))
    return EXIT_OK


def _compile(args: argparse.Namespace) -> int:
    prog = _checked_program(args)
    if isinstance(prog, int):
        return prog
    code = prog.compile(args.backend, args.model, standalone=args.standalone)
    if args.output:
        try:
            Path(args.output).write_text(code, encoding="utf-8")
        except OSError as e:
            print(f"seqdsl: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
            return EXIT_USAGE
    else:
        sys.stdout.write(code)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    prog = _checked_program(args)
    if isinstance(prog, int):
        return prog
    from .emit import Unsupported
    from .weightsfile import WeightsFileError, load_weights

    try:
        from .emit.onnx_backend import export_onnx, weight_problems
    except ImportError as e:  # pragma: no cover - the module itself imports no framework
        print(f"seqdsl: {e}", file=sys.stderr)
        return EXIT_USAGE
    model = prog.model(args.model)
    weights = None
    if args.weights is not None:
        try:
            weights, _meta = load_weights(args.weights)
        except OSError as e:
            print(f"seqdsl: cannot read {args.weights}: {e.strerror or e}", file=sys.stderr)
            return EXIT_USAGE
        except WeightsFileError as e:
            print(f"seqdsl: {e}", file=sys.stderr)
            return EXIT_USAGE
        problems = weight_problems(model, weights)
        if problems:
            print(f"error: {args.weights} does not fit model {model.name}:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            return EXIT_USER
    try:
        data = export_onnx(model, weights, seed=args.seed, opset=args.opset)
    except Unsupported as e:
        print(
            f"error: cannot export model {model.name} to ONNX: layer `{e.layer}`: {e.reason}",
            file=sys.stderr,
        )
        return EXIT_USER
    except ModuleNotFoundError as e:
        print(
            f"seqdsl: export --format onnx needs the `{e.name}` package "
            "(pip install 'seqdsl[onnx]')",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        Path(args.output).write_bytes(data)
    except OSError as e:
        print(f"seqdsl: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.output} (model {model.name}, ONNX opset {args.opset})", file=sys.stderr)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    prog = _checked_program(args)
    if isinstance(prog, int):
        return prog
    from .run import (
        BackendUnavailable,
        DataError,
        DataFileError,
        format_result,
        generate_data,
        load_data,
        run_batch,
    )

    model = prog.model(args.model)
    try:
        if args.data is not None:
            batch = load_data(args.data, model)
        else:
            if args.rows < 1:
                print("seqdsl: --rows must be at least 1", file=sys.stderr)
                return EXIT_USAGE
            batch = generate_data(model, args.seed, args.rows)
    except DataFileError as e:
        print(f"seqdsl: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER
    if batch.ignored:
        print(f"note: ignored keys that name no input: {', '.join(batch.ignored)}", file=sys.stderr)
    from .weightsfile import WeightsFileError

    try:
        result = run_batch(model, batch, args.backend, args.seed, args.file, args.weights)
    except OSError as e:
        print(f"seqdsl: cannot read {args.weights}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except WeightsFileError as e:
        print(f"seqdsl: {args.weights}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER
    except BackendUnavailable as e:
        print(f"seqdsl: {e}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(format_result(result, model))
    return EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    from .graph import RENDER_FORMATS, GraphvizError, graph_dot, render

    fmt = "dot"
    if args.output is not None:
        fmt = Path(args.output).suffix.lower().lstrip(".")
        if fmt == "gv":
            fmt = "dot"
        if fmt != "dot" and fmt not in RENDER_FORMATS:
            print(
                f"seqdsl: cannot write {args.output}: graph writes .dot, .gv, .svg or .png files",
                file=sys.stderr,
            )
            return EXIT_USAGE
    prog = _checked_program(args)
    if isinstance(prog, int):
        return prog
    models = [prog.model(args.model)] if args.model is not None else list(prog.models)
    text = graph_dot(models)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    data = text.encode("utf-8")
    if fmt != "dot":
        try:
            data = render(text, fmt)
        except GraphvizError as e:
            print(f"seqdsl: cannot write {args.output}: {e}", file=sys.stderr)
            return EXIT_USAGE
    try:
        Path(args.output).write_bytes(data)
    except OSError as e:
        print(f"seqdsl: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "compile":
            return _compile(args)
        if args.command == "export":
            return _export(args)
        if args.command == "run":
            return _run(args)
        if args.command == "graph":
            return _graph(args)
        if args.command == "lsp":
            from .lsp import main as lsp_main

            return lsp_main()
        return _summary(args)
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    except Exception as e:  # noqa: BLE001 - the internal-error boundary
        if getattr(args, "traceback", False):
            traceback.print_exc()
        print(
            f"seqdsl: internal error: {type(e).__name__}: {e}\n"
            "This is a bug in seqdsl, not in your model. Please report it with the .seq file "
            "and the output of the same command with --traceback.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def run() -> None:  # pragma: no cover - console entry point
    sys.exit(main())
