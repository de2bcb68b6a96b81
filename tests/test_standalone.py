"""seqdsl/emit/standalone.py: copying run-time definitions into a generated module.

The copier reads runtime source with ``ast`` and never imports it; these tests
give it small fake runtime modules (``_source_path`` redirected to files in a
temporary folder) and check what it copies, in which order, with which imports,
and that the result runs like the importing module. The import blocks it writes
are judged by ruff's own isort rule, not by a copy of its ordering.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from seqdsl.emit import standalone
from seqdsl.emit.standalone import ImportItem, StandaloneError, format_imports, make_standalone

ROOT = Path(__file__).resolve().parent.parent

FAKE_A = '''
"""Fake runtime module A."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .fake_b import scale

__all__ = ["double_all", "unused"]

FACTOR = 2.0


def _register(cls):
    cls.registered = True
    return cls


def double_all(xs: Sequence[float]) -> np.ndarray:
    """Doubles, then scales."""
    return scale(np.asarray(xs) * FACTOR)


@_register
class Holder:
    # a comment inside the class is kept
    def __init__(self, v, unused=None):
        # `unused` here is a parameter, a lambda's and a comprehension's own name:
        # none of them reads the module's function `unused`
        self.v = math.floor(v)
        self.f = lambda unused: unused
        self.seq = [unused for unused in range(2)]


def unused():
    import json

    return json.dumps(1)
'''

FAKE_B = '''
"""Fake runtime module B."""

import numpy as np

SHIFT = 1.0


def scale(x):
    return np.add(x, SHIFT)


def not_needed(x):
    return x
'''


@pytest.fixture
def fake_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "fake_a.py").write_text(FAKE_A)
    (tmp_path / "fake_b.py").write_text(FAKE_B)
    real = standalone._source_path

    def source_path(module: str) -> Path:
        prefix = standalone.RUNTIME + ".fake_"
        if module.startswith(prefix):
            return tmp_path / f"fake_{module.removeprefix(prefix)}.py"
        return real(module)

    monkeypatch.setattr(standalone, "_source_path", source_path)
    standalone._runtime_module.cache_clear()
    yield tmp_path
    standalone._runtime_module.cache_clear()


GENERATED = '''"""A generated module."""

import numpy as np

from seqdsl.runtime.fake_a import Holder, double_all


def run(xs):
    return double_all(xs), Holder(2.7).v, Holder.registered, np.float64(0)
'''


def ruff(*args: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--config", str(ROOT / "pyproject.toml"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,  # ruff tells first-party modules (seqdsl) by the project's folders
    )


def exec_module(text: str) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "standalone_under_test"}
    exec(compile(text, "<standalone>", "exec"), namespace)
    return namespace


def test_copies_what_is_used_with_its_dependencies_in_order(fake_runtime: Path) -> None:
    out = make_standalone(GENERATED)
    assert "seqdsl" not in out
    # what the model reads, and what that reads, across modules: B's before A's
    order = [out.index(s) for s in ("SHIFT = 1.0", "def scale(", "FACTOR = 2.0", "def _register(")]
    assert order == sorted(order)
    assert out.index("def double_all(") < out.index("@_register\nclass Holder:")
    assert "# a comment inside the class is kept" in out
    # and nothing else: unrelated definitions, __all__, the docstrings of the modules
    for absent in (
        "def not_needed(",
        "def unused(",
        "__all__",
        "Fake runtime module",
        "import json",
    ):
        assert absent not in out
    # the imports the copies read: math and Sequence (an annotation), not those of unused code
    assert "import math\n" in out and "from collections.abc import Sequence\n" in out
    assert out.startswith('"""A generated module."""\n\nfrom __future__ import annotations\n')
    # the model code follows the copies, unchanged
    assert out.endswith(GENERATED[GENERATED.index("def run(") :])


def test_standalone_runs_like_the_importing_module(fake_runtime: Path) -> None:
    ns = exec_module(make_standalone(GENERATED))
    run = ns["run"]
    assert callable(run)
    doubled, floor, registered, _ = run([1.0, 2.5])
    np.testing.assert_array_equal(doubled, np.array([1.0, 2.5]) * 2.0 + 1.0)
    assert floor == 2 and registered is True


def test_standalone_output_is_ruff_clean(fake_runtime: Path, tmp_path: Path) -> None:
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode:
        pytest.skip("ruff is not installed")
    path = tmp_path / "out" / "generated.py"
    path.parent.mkdir()
    path.write_text(make_standalone(GENERATED))
    for args in (("check", "--output-format", "concise"), ("format", "--check", "--diff")):
        r = ruff(*args, path=path)
        assert r.returncode == 0, r.stdout + r.stderr


def test_text_without_runtime_imports_is_unchanged() -> None:
    text = '"""Doc."""\n\nimport numpy as np\n\nx = np.zeros(1)\n'
    assert make_standalone(text) == text


def test_shared_runtime_module_is_copied_exactly() -> None:
    """The real seqdsl.runtime.common: the copy computes what the import computes."""
    from seqdsl.runtime.common import pad_sequences

    text = (
        '"""Doc."""\n\nimport numpy as np\n\nfrom seqdsl.runtime.common import pad_sequences\n\n\n'
        "def pad(seqs):\n"
        '    return pad_sequences(seqs, "pre", -1, 3, "post", np.float32, np.int64)\n'
    )
    out = make_standalone(text)
    assert "seqdsl" not in out and "def pad_sequences(" in out
    pad = exec_module(out)["pad"]
    assert callable(pad)
    seqs = [[1, 2, 3, 4], [5], []]
    got_batch, got_lengths = pad(seqs)
    want_batch, want_lengths = pad_sequences(seqs, "pre", -1, 3, "post", np.float32, np.int64)
    np.testing.assert_array_equal(got_batch, want_batch)
    np.testing.assert_array_equal(got_lengths, want_lengths)
    # and the values are Keras' pad_sequences(padding="pre", truncating="post", maxlen=3)
    np.testing.assert_array_equal(got_batch, [[1, 2, 3], [-1, -1, 5], [-1, -1, -1]])
    assert got_lengths.dtype == np.int64 and got_lengths.tolist() == [3, 1, 0]


def test_errors_name_the_problem(fake_runtime: Path) -> None:
    with pytest.raises(StandaloneError, match="defines no 'missing'"):
        make_standalone('"""D."""\n\nfrom seqdsl.runtime.fake_a import missing\n')
    with pytest.raises(StandaloneError, match="without `as`"):
        make_standalone('"""D."""\n\nfrom seqdsl.runtime.fake_a import scale as s\n')
    (fake_runtime / "fake_c.py").write_text("import os\n\nif os.sep:\n    X = 1\n")
    with pytest.raises(StandaloneError, match="only functions, classes and constants"):
        make_standalone('"""D."""\n\nfrom seqdsl.runtime.fake_c import X\n')
    (fake_runtime / "fake_d.py").write_text("def scale(x):\n    return x\n")
    (fake_runtime / "fake_e.py").write_text("from .fake_d import scale as s\n")
    with pytest.raises(StandaloneError, match="without `as`"):
        make_standalone('"""D."""\n\nfrom seqdsl.runtime.fake_e import s\n')
    (fake_runtime / "fake_f.py").write_text("def scale(x):\n    return x * 3\n")
    with pytest.raises(StandaloneError, match="'scale' is defined in"):
        make_standalone('"""D."""\n\nfrom seqdsl.runtime.fake_b import scale\n'
                        "from seqdsl.runtime.fake_f import scale\n")  # fmt: skip


def test_every_runtime_module_follows_the_copy_rules() -> None:
    """Each real runtime module parses into definitions the copier accepts, and every
    name it imports from another runtime module is defined there (read by ast only:
    no framework is imported)."""
    standalone._runtime_module.cache_clear()
    for path in sorted((ROOT / "seqdsl" / "runtime").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        module = ".".join(parts)
        if module == standalone.RUNTIME:
            continue
        mod = standalone._runtime_module(module)
        for name, target in mod.runtime.items():
            other = standalone._runtime_module(target)
            assert name in other.where or name in other.runtime, f"{module}: {target}.{name}"


IMPORTS = [
    ImportItem("torch"),
    ImportItem("numpy", alias="np"),
    ImportItem("torch.nn.functional", alias="F"),
    ImportItem("torch.nn.utils.rnn", "pad_packed_sequence"),
    ImportItem("torch.nn.utils.rnn", "PackedSequence"),
    ImportItem("torch.nn.utils.rnn", "pack_padded_sequence"),
    ImportItem("torch", "nn"),
    ImportItem("zlib"),
    ImportItem("typing", "Any"),
    ImportItem("typing", "NamedTuple"),
    ImportItem("__future__", "annotations"),
    ImportItem("seqdsl.runtime.common", "LSTM"),
    ImportItem("seqdsl.runtime.common", "bind_sizes"),
    ImportItem("seqdsl.runtime.common", "ACTIVATIONS"),
    ImportItem("seqdsl.runtime.common", "Recurrent"),
    ImportItem("seqdsl.runtime.common", "lengths_to_mask"),
    ImportItem("seqdsl.runtime.common", "to_right_padding"),
    ImportItem("seqdsl.runtime.common", "global_pool"),
    ImportItem("seqdsl.runtime.common", "check_mask"),
    ImportItem("my_externs", comment="# noqa: F401 (registers extern implementations)"),
]


def test_import_block_is_what_ruffs_isort_wants(tmp_path: Path) -> None:
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode:
        pytest.skip("ruff is not installed")
    lines = format_imports(reversed(IMPORTS))
    assert lines == format_imports(IMPORTS)  # the order given does not matter
    assert any(len(line) > 0 and line.endswith("(") for line in lines)  # a wrapped from-import
    path = tmp_path / "pkg" / "block.py"
    path.parent.mkdir()
    path.write_text('"""Doc."""\n\n' + "\n".join(lines) + "\n")
    r = ruff("check", "--select", "I", "--output-format", "concise", path=path)
    assert r.returncode == 0, "\n".join(lines) + "\n" + r.stdout
    r = ruff("format", "--check", "--diff", path=path)
    assert r.returncode == 0, r.stdout


def test_import_block_merges_and_keeps_comments() -> None:
    lines = format_imports(
        [ImportItem("a_mod", "x"), ImportItem("a_mod", "x"), ImportItem("b_mod", comment="# noqa")]
    )
    assert lines == ["import b_mod  # noqa", "from a_mod import x"]
