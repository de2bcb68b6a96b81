"""docs/errors.md documents every diagnostic code, and its examples are true.

Each ``## SEQnnn — title`` section holds a "Bad" ```seq block that must produce
that code and a "Fixed" ```seq block that must check clean (no diagnostics at
all, warnings included). A block labelled "File `lib.seq`:" is a file the
examples ``use``: it is written to a temporary folder on their search path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import seqdsl
from seqdsl import CODES

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"

_HEADING = re.compile(r"^## (SEQ\d{3}) — (.+?)\s*$")
_FENCE = re.compile(r"^```seq\s*\n(.*?)^```\s*$", re.S | re.M)


@dataclass
class Section:
    code: str
    title: str
    body: str
    bad: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _sections() -> list[Section]:
    text = DOC.read_text(encoding="utf-8")
    out: list[Section] = []
    cur: Section | None = None
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        m = _HEADING.match(line)
        if m or line.startswith("## "):
            if cur is not None:
                cur.body = "".join(lines)
                out.append(cur)
            cur = Section(m.group(1), m.group(2), "") if m else None
            lines = []
            continue
        lines.append(line)
    if cur is not None:
        cur.body = "".join(lines)
        out.append(cur)
    for s in out:
        # a block belongs to the nearest "Bad:" / "Fixed:" / "File `x.seq`:" label before it
        for fm in _FENCE.finditer(s.body):
            before = s.body[: fm.start()]
            labels = re.findall(r"^(Bad|Fixed|File `[\w./-]+`):\s*$", before, re.M)
            assert labels, f"{s.code}: a ```seq block without a Bad:/Fixed: label"
            if labels[-1].startswith("File"):
                s.files[labels[-1][6:-1]] = fm.group(1)
            else:
                (s.bad if labels[-1] == "Bad" else s.fixed).append(fm.group(1))
    return out


SECTIONS = _sections()
BY_CODE = {s.code: s for s in SECTIONS}


def _analyze(s: Section, text: str, name: str, tmp: Path) -> seqdsl.Analysis:
    for rel, body in s.files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(body, encoding="utf-8")
    # as `seqdsl compile` reads a file: the examples declare a model (SEQ016 otherwise)
    return seqdsl.analyze_sources(
        text, name, search_path=[tmp] if s.files else None, need_model=True
    )


def test_every_code_is_documented_in_order() -> None:
    documented = [s.code for s in SECTIONS]
    assert documented == list(CODES), "docs/errors.md must list every code in CODES, in order"


def test_no_unknown_codes_documented() -> None:
    unknown = sorted({s.code for s in SECTIONS} - set(CODES))
    assert not unknown, f"docs/errors.md documents codes not in CODES: {unknown}"
    assert len(SECTIONS) == len(BY_CODE), "a code is documented twice"


def test_titles_match_codes_table() -> None:
    # The heading's title is the CODES title (backticks and all).
    for s in SECTIONS:
        assert s.title == CODES[s.code].title, (
            f"{s.code}: heading title {s.title!r} != {CODES[s.code].title!r}"
        )


def test_intro_lists_exit_codes_and_formats() -> None:
    intro = DOC.read_text(encoding="utf-8").split("\n## SEQ", 1)[0]
    for code in ("`0`", "`1`", "`2`", "`70`"):
        assert code in intro
    for fmt in ("`full`", "`concise`", "`json`", "--output-format"):
        assert fmt in intro


@pytest.mark.parametrize("code", list(CODES))
def test_section_has_explanation_and_examples(code: str) -> None:
    s = BY_CODE.get(code)
    assert s is not None, f"{code} is not documented"
    prose = _FENCE.sub("", s.body).replace("Bad:", "").replace("Fixed:", "").strip()
    assert len(prose) > 40, f"{code}: explain what the code means and how to fix it"
    assert len(s.bad) == 1 and len(s.fixed) == 1, f"{code}: one Bad and one Fixed block"


@pytest.mark.parametrize("code", list(CODES))
def test_bad_example_produces_its_code(code: str, tmp_path: Path) -> None:
    s = BY_CODE[code]
    for i, text in enumerate(s.bad):
        codes = [
            d.code for d in _analyze(s, text, f"errors.md:{code}:bad{i}", tmp_path).diagnostics
        ]
        assert code in codes, f"{code}: the Bad example gives {codes}"


@pytest.mark.parametrize("code", list(CODES))
def test_fixed_example_checks_clean(code: str, tmp_path: Path) -> None:
    s = BY_CODE[code]
    for i, text in enumerate(s.fixed):
        a = _analyze(s, text, f"errors.md:{code}:fixed{i}", tmp_path)
        assert a.program is not None
        assert not a.diagnostics, f"{code}: the Fixed example gives " + ", ".join(
            f"{d.code} {d.message}" for d in a.diagnostics
        )
