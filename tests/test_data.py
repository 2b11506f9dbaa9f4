"""Data sources (files, folders, globs, records, HF datasets, built-ins) and chunking into token splits."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unlearn.data import chunking, sources
from unlearn.data.chunking import Corpus, TokenSplit, build_corpus, segments, separator_id, special_ids
from unlearn.data.sources import DataSpec, iter_documents, prose_only, stdlib_files
from unlearn.errors import UnlearnError


def docs(source, **kw) -> list[tuple[str, str]]:
    return list(iter_documents(DataSpec(str(source), **kw)))


def texts(source, **kw) -> list[str]:
    return [t for _, t in docs(source, **kw)]


def fails(match: str, fn, *args, **kw) -> str:
    """``fn(*args)`` raises an UnlearnError (not just any ValueError) with a one-line message matching ``match``."""
    with pytest.raises(UnlearnError, match=match) as info:
        fn(*args, **kw)
    assert type(info.value) is UnlearnError
    message = str(info.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


class CharTokenizer:
    """A character-level stand-in tokenizer: id = code point + 10; ids 1 and 2 are reserved for BOS/EOS."""

    def __init__(self, bos=1, eos=2, add_bos=False):
        self.bos_token_id, self.eos_token_id, self.pad_token_id, self.add_bos = bos, eos, None, add_bos

    @property
    def all_special_ids(self):
        return [i for i in (self.bos_token_id, self.eos_token_id) if i is not None]

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) + 10 for c in text]
        if add_special_tokens and self.add_bos:
            ids = [self.bos_token_id] + ids
        return SimpleNamespace(input_ids=ids)

    def decode(self, ids):
        return "".join(chr(i - 10) for i in ids)


# --------------------------------------------------------------------------------------------------- plain files


def test_single_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\nsecond paragraph — ünïcode\n", encoding="utf-8")
    assert docs(path) == [(str(path), "first line\n\nsecond paragraph — ünïcode\n")]


def test_text_file_fixture_reads_whole_file(text_files):
    code, prose = text_files
    assert texts(code) == [code.read_text(encoding="utf-8")]
    assert "def " in texts(code)[0] and len(texts(prose)[0]) > 1000


def test_folder_is_recursive_sorted_and_skips_hidden_and_binary(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "sub" / ".cache").mkdir()
    (root / "b.txt").write_text("bee", encoding="utf-8")
    (root / "a.md").write_text("ay", encoding="utf-8")
    (root / "sub" / "c.py").write_text("sea = 1", encoding="utf-8")
    (root / "sub" / "deeper" / "d").write_text("dee", encoding="utf-8")
    (root / ".hidden.txt").write_text("HIDDEN", encoding="utf-8")
    (root / ".git" / "config").write_text("HIDDEN", encoding="utf-8")
    (root / "sub" / ".cache" / "x.txt").write_text("HIDDEN", encoding="utf-8")
    (root / "sub" / "blob.bin").write_bytes(b"\x89PNG\x00\x00\xff\xfe")
    got = docs(root)
    assert [t for _, t in got] == ["ay", "bee", "sea = 1", "dee"]
    assert [Path(d).relative_to(root).as_posix() for d, _ in got] == ["a.md", "b.txt", "sub/c.py", "sub/deeper/d"]


def test_folder_under_hidden_parent_is_still_read(tmp_path):
    # only parts *below* the folder count as hidden
    root = tmp_path / ".config" / "data"
    root.mkdir(parents=True)
    (root / "x.txt").write_text("visible", encoding="utf-8")
    assert texts(root) == ["visible"]


def test_folder_mixes_structured_and_plain_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "from jsonl"}\n', encoding="utf-8")
    (tmp_path / "b.txt").write_text("from txt", encoding="utf-8")
    assert texts(tmp_path) == ["from jsonl", "from txt"]


def test_glob_matches_files_sorted_recursively(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "z.txt").write_text("zed", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay", encoding="utf-8")
    (tmp_path / "sub" / "m.txt").write_text("em", encoding="utf-8")
    (tmp_path / "skip.md").write_text("NO", encoding="utf-8")
    (tmp_path / "dir.txt").mkdir()  # a folder that matches the pattern is not a file
    assert texts(tmp_path / "*.txt") == ["ay", "zed"]
    assert texts(tmp_path / "**" / "*.txt") == ["ay", "em", "zed"]
    assert texts(tmp_path / "[a-m]*.txt") == ["ay"]


def test_describe():
    assert DataSpec("x.jsonl").describe() == "x.jsonl"
    assert DataSpec("x.jsonl", fields=("q", "a")).describe() == "x.jsonl [q,a]"


# ------------------------------------------------------------------------------------------------ record files


def test_jsonl_default_field_skips_blank_lines_and_numbers_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one", "x": 1}\n\n   \n{"text": "two\\nlines"}\n', encoding="utf-8")
    assert docs(path) == [(f"{path}:1", "one"), (f"{path}:4", "two\nlines")]


def test_jsonl_custom_fields_are_joined_and_non_strings_refused_with_the_line(tmp_path):
    path = tmp_path / "d.JSONL"  # suffix is case-insensitive
    rows = [{"q": "Why?", "a": "Because.", "n": 3}, {"q": "List", "a": ["x", "ü"], "n": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert texts(path, fields=("q",)) == ["Why?", "List"]
    # not silently turned into text and unlearned: the record's line and the field are named
    for fields, line, field, kind in ((("q", "a"), 2, "a", "list"), (("n",), 1, "n", "int"), (("a",), 2, "a", "list")):
        with pytest.raises(UnlearnError, match=rf"d.JSONL:{line}: field '{field}' is {kind}, not text"):
            texts(path, fields=fields)
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": {"nested": "x"}}), encoding="utf-8")
    with pytest.raises(UnlearnError, match=r"d.JSONL:2: field 'text' is dict, not text"):
        texts(path)


def test_jsonl_string_may_hold_raw_unicode_line_separators(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028, U+0085 and form feeds raw: they are not line ends in JSONL
    path = tmp_path / "d.jsonl"
    values = ["para\u2028sep", "form\x0cfeed", "next\x85line"]
    path.write_text("\n".join(json.dumps({"text": v}, ensure_ascii=False) for v in values) + "\n", encoding="utf-8")
    assert docs(path) == [(f"{path}:{i}", v) for i, v in enumerate(values, 1)]


def test_json_list_of_records_and_single_record(tmp_path):
    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"text": "a", "t": "T1"}, {"text": "b", "t": "T2"}]), encoding="utf-8")
    assert docs(many) == [(f"{many}[0]", "a"), (f"{many}[1]", "b")]
    assert texts(many, fields=("t", "text")) == ["T1\na", "T2\nb"]
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"text": "solo"}), encoding="utf-8")
    assert texts(one) == ["solo"]


def test_csv_default_and_custom_fields(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('id,title,text\n1,First,"hello, world"\n2,Second,plain\n', encoding="utf-8")
    assert docs(path) == [(f"{path}:2", "hello, world"), (f"{path}:3", "plain")]
    assert texts(path, fields=("title", "text")) == ["First\nhello, world", "Second\nplain"]
    assert texts(path, fields=("id",)) == ["1", "2"]


def test_csv_quoted_field_keeps_its_line_breaks(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,n\n"line one\nline two\n\nline four",1\n"page\x0cbreak",2\n', encoding="utf-8")
    assert texts(path) == ["line one\nline two\n\nline four", "page\x0cbreak"]


def test_parquet_default_and_custom_fields(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta"], "title": ["A", "B"], "n": [1, 2]}), path)
    assert docs(path) == [(f"{path}[0]", "alpha"), (f"{path}[1]", "beta")]
    assert texts(path, fields=("title", "text")) == ["A\nalpha", "B\nbeta"]
    with pytest.raises(UnlearnError, match=r"d.parquet\[0\]: field 'n' is int, not text"):
        texts(path, fields=("title", "text", "n"))


# -------------------------------------------------------------------------------------------- HF datasets (local)


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """Run ``datasets`` offline with its cache in ``tmp_path`` (works whether or not it is imported already)."""
    datasets = pytest.importorskip("datasets")
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False, raising=False)
    return cache


def test_hf_dataset_from_local_jsonl_folder(tmp_path, hf_offline):
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"text": "first doc", "title": "One"}, {"text": "second doc", "title": "Two"}]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    name = str(folder)
    assert docs(f"hf:{name}") == [(f"hf:{name}[0]", "first doc"), (f"hf:{name}[1]", "second doc")]
    assert texts(f"hf:{name}", fields=("title", "text")) == ["One\nfirst doc", "Two\nsecond doc"]
    assert hf_offline.exists()  # the real datasets builder ran and cached into our folder


def test_hf_dataset_split_and_csv(tmp_path, hf_offline):
    folder = tmp_path / "csvds"
    folder.mkdir()
    (folder / "train.csv").write_text("text\ntrain row\n", encoding="utf-8")
    (folder / "test.csv").write_text("text\ntest row a\ntest row b\n", encoding="utf-8")
    assert texts(f"hf:{folder}") == ["train row"]
    assert texts(f"hf:{folder}", hf_split="test") == ["test row a", "test row b"]
    msg = fails(r"could not load dataset .*validation", texts, f"hf:{folder}", hf_split="validation")
    assert str(folder) in msg


def test_hf_dataset_errors(tmp_path, hf_offline):
    fails(r"could not load dataset .*nowhere", texts, f"hf:{tmp_path / 'nowhere'}")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    fails(r"hf:.*\[0\]: missing field 'text' \(has body\)", texts, f"hf:{folder}")


# --------------------------------------------------------------------------------------------------- built-ins


def test_python_stdlib_yields_real_stdlib_code():
    first = list(itertools.islice(iter_documents(DataSpec("python-stdlib")), 40))
    assert len(first) == 40
    for doc_id, text in first:
        assert doc_id.startswith("stdlib:") and doc_id.endswith(".py")
        assert text.strip()
    files = stdlib_files()
    assert len(files) > 300
    names = {f.relative_to(sources.stdlib_dir()).as_posix() for f in files}
    assert {"os.py", "json/__init__.py", "textwrap.py"} <= names
    for f in files:
        rel = f.relative_to(sources.stdlib_dir())
        assert f.suffix == ".py"
        assert not {"test", "tests", "site-packages", "dist-packages", "pydoc_data", "idle_test"} & set(rel.parts)
        assert not rel.name.startswith("test_")
    assert files == sorted(files)
    # a sample of the files is valid Python (compiling all of them would be slow)
    for doc_id, text in first[::8] + [("stdlib:textwrap.py", (sources.stdlib_dir() / "textwrap.py").read_text())]:
        compile(text, doc_id, "exec")


def test_python_stdlib_exclusions_on_a_fake_tree(tmp_path, monkeypatch):
    for rel, text in {
        "os.py": "import sys\n",
        "pkg/mod.py": "x = 1\n",
        "pkg/test_mod.py": "EXCLUDED",
        "pkg/notes.txt": "EXCLUDED",
        "pkg/blank.py": "  \n\n",
        "test/support.py": "EXCLUDED",
        "tests/helper.py": "EXCLUDED",
        "testing/x.py": "EXCLUDED",
        "site-packages/torch/x.py": "EXCLUDED",
        "dist-packages/y.py": "EXCLUDED",
        "pydoc_data/topics.py": "EXCLUDED",
        "idlelib/idle_test/t.py": "EXCLUDED",
        "idlelib/run.py": "run = 1\n",
        "__pycache__/os.py": "EXCLUDED",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    (tmp_path / "latin1.py").write_bytes(b"# caf\xe9\n")  # unreadable files are skipped, not fatal
    monkeypatch.setattr(sources, "stdlib_dir", lambda: tmp_path)
    assert docs("python-stdlib") == [
        ("stdlib:idlelib/run.py", "run = 1\n"),
        ("stdlib:os.py", "import sys\n"),
        ("stdlib:pkg/mod.py", "x = 1\n"),
    ]


def test_english_prose_is_prose_without_code():
    got = docs("english-prose")
    assert len(got) >= 50
    assert all(doc_id.startswith("pydoc:") for doc_id, _ in got)
    assert [d for d, _ in got] == sorted(d for d, _ in got)
    assert "pydoc:if" in dict(got)
    total = sum(len(t) for _, t in got)
    assert 50_000 < total < 5_000_000
    text = "\n".join(t for _, t in got)
    lines = text.splitlines()
    assert not [ln for ln in lines if ln.startswith(">>>")]
    assert not [ln for ln in lines if ln.startswith("   ") or ln.startswith("\t")]
    assert not [ln for ln in lines if ln.startswith(("+-", "+=", "|"))]  # reST grid tables
    assert ">>> " not in text and "::=" not in text
    paragraphs = [p for _, t in got for p in t.split("\n\n")]
    assert all(len(p.split()) >= 8 and not p.endswith("::") for p in paragraphs)
    assert sum(p.rstrip().endswith(".") for p in paragraphs) > 0.5 * len(paragraphs)


def test_english_prose_is_deterministic():
    assert docs("english-prose") == docs("english-prose")


def test_prose_only_on_hand_written_rest():
    rest = (
        "Heading\n"
        "*******\n"
        "\n"
        "This first paragraph is real prose and it has more than eight words.\n"
        "It continues on a second line of the very same paragraph.\n"
        "\n"
        "Short label\n"
        "\n"
        "An example follows here, shown as a literal block in the text::\n"
        "\n"
        "   for i in range(10):\n"
        "       print(i)\n"
        "\n"
        ">>> x = [1, 2, 3]\n"
        ">>> x\n"
        "one two three four five six seven eight nine ten words of output\n"
        "\n"
        "+------+-------+\n"
        "| a    | b     |\n"
        "+======+=======+\n"
        "\n"
        '   if_stmt ::= "if" assignment_expression ":" suite\n'
        "\n"
        "The last paragraph is also prose with quite enough words in it.\n"
    )
    assert prose_only(rest) == (
        "This first paragraph is real prose and it has more than eight words. "
        "It continues on a second line of the very same paragraph.\n\n"
        "The last paragraph is also prose with quite enough words in it."
    )


# ------------------------------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    msg = fails("data not found", texts, tmp_path / "nope.txt")
    assert str(tmp_path / "nope.txt") in msg and "python-stdlib" in msg


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    fails(r"data folder .*empty has no files", texts, tmp_path / "empty")
    (tmp_path / "only-hidden").mkdir()
    (tmp_path / "only-hidden" / ".secret").write_text("x", encoding="utf-8")
    fails("has no files", texts, tmp_path / "only-hidden")


def test_glob_without_match(tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    fails(r"no files match .*\*\.nothing", texts, tmp_path / "*.nothing")


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.jsonl", "latin1.csv", "latin1.json"])
def test_non_utf8_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"caf\xe9 au lait")
    msg = fails("not UTF-8", texts, path)
    assert str(path) in msg and "byte 3" in msg


def test_non_utf8_file_inside_folder(tmp_path):
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "zbad.txt").write_bytes(b"\xff\xfebad")
    fails(r"zbad\.txt is not UTF-8", texts, tmp_path)


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": oops}\n{"text": "never"}\n', encoding="utf-8")
    gen = iter_documents(DataSpec(str(path)))
    assert next(gen) == (f"{path}:1", "ok")  # lazily: the good line comes out before the bad one is read
    msg = fails("invalid JSON", next, gen)
    assert f"{path}:3:" in msg


def test_malformed_json_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"text": "a"},\n {"text": ]', encoding="utf-8")
    msg = fails("invalid JSON", texts, path)
    assert str(path) in msg and "line 2" in msg


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_missing_field_in_records(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    rows = [{"text": "fine", "body": "B"}, {"text": "fine too", "title": "T"}]
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        where = f"{path}:1"
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
        where = f"{path}[0]"
    elif fmt == "csv":
        path.write_text("text,body\nfine,B\n", encoding="utf-8")
        rows = [{"text": "fine", "body": "B"}]
        where = f"{path}:2"
    else:
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({"text": ["fine", "fine too"], "body": ["B", "C"]}), path)
        rows = [{"text": "fine", "body": "B"}]
        where = f"{path}[0]"
    assert texts(path)[0] == "fine"  # the default field is there ...
    msg = fails("missing field 'title'", texts, path, fields=("text", "title"))  # ... a custom one is not
    assert msg.startswith(where + ": missing field 'title' (has ")
    assert all(k in msg for k in rows[0])
    if fmt in ("jsonl", "json"):  # the second record lacks 'body' where the first has it: it is named
        second = f"{path}:2" if fmt == "jsonl" else f"{path}[1]"
        assert fails("missing field 'body'", texts, path, fields=("body",)).startswith(second + ": ")


def test_record_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('["just a string"]', encoding="utf-8")
    fails(r"d\.json\[0\]: expected an object with field 'text', got str", texts, path)
    jl = tmp_path / "d.jsonl"
    jl.write_text("[1, 2]\n", encoding="utf-8")
    fails(r"d\.jsonl:1: expected an object .* got list", texts, jl)


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"this is not parquet at all")
    fails("not a readable parquet file", texts, path)


# ---------------------------------------------------------------------------------------------------- segments


def _paragraphs(n: int, size: int) -> list[str]:
    return [f"paragraph {i} " + "word " * ((size - 14) // 5) for i in range(n)]


def test_short_text_is_one_segment():
    assert segments("short\n\ntext", max_chars=100) == ["short\n\ntext"]
    assert segments("x" * 100, max_chars=100) == ["x" * 100]


def test_segments_split_at_blank_lines_and_lose_nothing():
    paras = _paragraphs(40, 300)
    text = "\n\n".join(paras)
    pieces = segments(text, max_chars=1000)
    assert len(pieces) > 10
    assert all(len(p) <= 1000 for p in pieces)
    assert "\n\n".join(pieces) == text  # exact: cuts are at blank lines, nothing dropped or reordered
    for p in pieces:  # every piece is whole paragraphs
        assert all(q in paras for q in p.split("\n\n"))
    # greedy packing: no piece could have taken the next paragraph
    for a, b in zip(pieces, pieces[1:]):
        assert len(a) + 2 + len(b.split("\n\n")[0]) > 1000


def test_segments_default_size_on_real_code(text_files):
    code = text_files[0].read_text(encoding="utf-8")
    pieces = segments(code)
    assert len(pieces) > 5
    assert all(len(p) <= chunking.SEGMENT_CHARS for p in pieces)
    assert "".join(code.split()) == "".join("".join(pieces).split())


def test_over_long_paragraph_is_split_at_line_breaks():
    lines = [f"    'entity{i}': 0x{i:04x}," for i in range(400)]  # one 10k-char block, no blank line
    text = "intro paragraph\n\nTABLE = {\n" + "\n".join(lines) + "\n}\n\nafter paragraph"
    pieces = segments(text, max_chars=1000)
    assert all(len(p) <= 1000 for p in pieces)
    assert len(pieces) >= 10
    # nothing lost, nothing reordered: the pieces are consecutive slices of the text
    pos = 0
    for p in pieces:
        at = text.index(p, pos)
        assert text[pos:at].strip() == ""
        pos = at + len(p)
    assert text[pos:].strip() == ""
    assert "".join(pieces).replace("\n", "") == text.replace("\n", "")


def test_single_huge_line_is_kept_whole():
    text = "a" * 5000 + "\n\nshort"
    assert segments(text, max_chars=1000) == ["a" * 5000, "short"]


def test_whitespace_only_pieces_are_dropped():
    text = "x" * 50 + "\n\n" + " " * 60 + "\n\n" + "y" * 50
    assert segments(text, max_chars=55) == ["x" * 50, "y" * 50]


# ------------------------------------------------------------------------------------------------- separators


def test_separator_id_real_tokenizer(tokenizer):
    assert tokenizer("a").input_ids[0] != tokenizer.bos_token_id  # this tokenizer adds no BOS ...
    assert separator_id(tokenizer) == tokenizer.eos_token_id == 0  # ... so EOS separates documents


def test_separator_id_prefers_bos_when_the_tokenizer_adds_it(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, bos_token="<|pad|>", add_bos_token=True)
    assert tok("a").input_ids[0] == tok.bos_token_id == 1 and tok.eos_token_id == 0
    assert separator_id(tok) == 1


def test_separator_id_fake_tokenizers():
    assert separator_id(CharTokenizer(bos=1, eos=2, add_bos=True)) == 1
    assert separator_id(CharTokenizer(bos=1, eos=2, add_bos=False)) == 2
    assert separator_id(CharTokenizer(bos=None, eos=2)) == 2
    assert separator_id(CharTokenizer(bos=None, eos=None)) is None


def test_special_ids(tokenizer):
    assert special_ids(tokenizer).tolist() == [0, 1]
    assert special_ids(CharTokenizer(bos=1, eos=2)).tolist() == [1, 2]


# ------------------------------------------------------------------------------------------------ build_corpus


SEQ, EVAL, STATS = 32, 200, 300  # 7 evaluation + 10 statistics chunks


def _build(source, tokenizer, seed=0, eval_tokens=EVAL, stats_tokens=STATS, seq_len=SEQ, name="forget"):
    return build_corpus(
        name,
        DataSpec(str(source)),
        tokenizer,
        seq_len=seq_len,
        eval_tokens=eval_tokens,
        stats_tokens=stats_tokens,
        seed=seed,
    )


def test_build_corpus_shapes(text_files, tokenizer):
    c = _build(text_files[0], tokenizer)
    assert isinstance(c, Corpus) and c.name == "forget" and c.spec == DataSpec(str(text_files[0]))
    assert isinstance(c.eval, TokenSplit) and isinstance(c.stats, TokenSplit)
    assert c.eval.input_ids.shape == (math.ceil(EVAL / SEQ), SEQ) == (7, 32)
    assert c.stats.input_ids.shape == (math.ceil(STATS / SEQ), SEQ) == (10, 32)
    assert c.eval.special.shape == c.eval.input_ids.shape and c.stats.special.shape == c.stats.input_ids.shape
    assert c.eval.input_ids.dtype == torch.long and c.eval.special.dtype == torch.bool
    assert c.eval.n_tokens == 7 * 32
    assert 1 <= c.n_segments <= len(segments(text_files[0].read_text(encoding="utf-8")))
    assert c.eval.input_ids[0, 0] == separator_id(tokenizer) and c.eval.special[0, 0]


def test_token_split_batches():
    ids = torch.arange(5 * 8).view(5, 8)
    split = TokenSplit(ids, ids % 3 == 0)
    got = list(split.batches(2))
    assert [b[0].shape[0] for b in got] == [2, 2, 1]
    assert torch.equal(torch.cat([b[0] for b in got]), ids)
    assert torch.equal(torch.cat([b[1] for b in got]), ids % 3 == 0)


def test_splits_are_disjoint_slices_of_one_stream(text_files, tokenizer):
    c = _build(text_files[0], tokenizer, seed=3)
    n_eval, n_stats = len(c.eval.input_ids), len(c.stats.input_ids)
    both = torch.cat([c.eval.input_ids, c.stats.input_ids])
    # the same seed with one evaluation split as big as both gives exactly the same stream
    whole = _build(text_files[0], tokenizer, seed=3, eval_tokens=(n_eval + n_stats) * SEQ, stats_tokens=0)
    assert torch.equal(whole.eval.input_ids, both)
    assert torch.equal(whole.eval.special, torch.cat([c.eval.special, c.stats.special]))
    # and the sha256 covers exactly these ids (both splits)
    assert c.sha256 == hashlib.sha256(both.numpy().tobytes()).hexdigest() == whole.sha256
    assert n_eval * SEQ >= EVAL and n_stats * SEQ >= STATS and c.eval.n_tokens + c.stats.n_tokens == len(both) * SEQ


def test_stream_is_separator_plus_segments_in_order(tmp_path):
    # a character tokenizer makes the stream readable: SEP seg SEP seg ..., every piece a real segment
    paras = [f"Document {i}: " + chr(ord("a") + i % 26) * 40 for i in range(30)]
    (tmp_path / "docs").mkdir()
    for i, p in enumerate(paras):
        (tmp_path / "docs" / f"{i:02d}.txt").write_text(p, encoding="utf-8")
    tok = CharTokenizer(bos=1, eos=2)
    c = _build(tmp_path / "docs", tok, eval_tokens=300, stats_tokens=200, seq_len=50)
    stream = torch.cat([c.eval.input_ids, c.stats.input_ids]).flatten().tolist()
    special = torch.cat([c.eval.special, c.stats.special]).flatten().tolist()
    assert special == [t == 2 for t in stream]  # EOS separators, and only they, are marked special
    assert stream[0] == 2
    decoded = tok.decode([t if t != 2 else ord("|") + 10 for t in stream]).split("|")[1:]
    assert all(d in paras for d in decoded[:-1]) and any(p.startswith(decoded[-1]) for p in paras)
    assert len(set(decoded[:-1])) == len(decoded) - 1  # each segment is used once
    assert c.n_segments == len(decoded)
    assert decoded[:-1] != [p for p in paras if p in decoded[:-1]]  # shuffled, not file order


def test_bos_adding_tokenizer_separates_with_bos(tmp_path):
    for i in range(20):
        (tmp_path / f"{i:02d}.txt").write_text(f"doc {i} " + "x" * 30, encoding="utf-8")
    tok = CharTokenizer(bos=1, eos=2, add_bos=True)
    c = _build(tmp_path, tok, eval_tokens=64, stats_tokens=64, seq_len=16)
    ids = torch.cat([c.eval.input_ids, c.stats.input_ids])
    assert ids[0, 0] == 1 and (ids == 1).sum() >= 2 and not (ids == 2).any()
    assert torch.equal(torch.cat([c.eval.special, c.stats.special]), ids == 1)


def test_no_separator_when_tokenizer_has_none(tmp_path):
    (tmp_path / "t.txt").write_text("abcdefgh" * 20, encoding="utf-8")
    c = _build(tmp_path / "t.txt", CharTokenizer(bos=None, eos=None), eval_tokens=16, stats_tokens=8, seq_len=8)
    assert not c.eval.special.any() and not c.stats.special.any()
    assert CharTokenizer().decode(c.eval.input_ids.flatten().tolist()) == "abcdefgh" * 2


def test_special_tokens_in_the_text_are_marked(tmp_path, tokenizer):
    (tmp_path / "t.txt").write_text("hello <|pad|> world <|endoftext|> bye " * 20, encoding="utf-8")
    c = _build(tmp_path / "t.txt", tokenizer, eval_tokens=64, stats_tokens=0, seq_len=16)
    ids = c.eval.input_ids
    assert (ids == 1).any()
    assert torch.equal(c.eval.special, (ids == 0) | (ids == 1))


def test_same_seed_same_corpus_different_seed_different_order(text_files, tokenizer):
    a = _build(text_files[1], tokenizer, seed=7)
    b = _build(text_files[1], tokenizer, seed=7)
    assert torch.equal(a.eval.input_ids, b.eval.input_ids) and torch.equal(a.stats.input_ids, b.stats.input_ids)
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    c = _build(text_files[1], tokenizer, seed=8)
    assert not torch.equal(a.eval.input_ids, c.eval.input_ids)
    assert a.sha256 != c.sha256


def test_stats_tokens_zero_gives_empty_stats_split(text_files, tokenizer):
    c = _build(text_files[0], tokenizer, stats_tokens=0)
    assert c.stats.input_ids.shape == (0, SEQ) and c.stats.special.shape == (0, SEQ)
    assert c.stats.n_tokens == 0 and list(c.stats.batches(4)) == []
    assert c.eval.input_ids.shape == (7, SEQ)
    with_stats = _build(text_files[0], tokenizer)
    assert torch.equal(c.eval.input_ids, with_stats.eval.input_ids)  # eval does not depend on the stats budget


def test_only_needed_segments_are_tokenised(text_files, tokenizer):
    small = _build(text_files[0], tokenizer, eval_tokens=32, stats_tokens=0)
    large = _build(text_files[0], tokenizer, eval_tokens=2000, stats_tokens=0)
    assert small.n_segments < large.n_segments


def test_empty_corpus(tmp_path, tokenizer):
    (tmp_path / "blank.txt").write_text("  \n\n \t\n", encoding="utf-8")
    msg = fails(r"forget corpus .*blank\.txt is empty", _build, tmp_path / "blank.txt", tokenizer)
    assert "no text" in msg
    rec = tmp_path / "r.jsonl"
    rec.write_text('{"text": ""}\n{"text": "   "}\n', encoding="utf-8")
    fails(r"retain corpus .*r\.jsonl is empty", _build, rec, tokenizer, name="retain")


def test_corpus_too_short_for_budgets(tmp_path, tokenizer):
    (tmp_path / "tiny.txt").write_text("just a few words of text", encoding="utf-8")
    msg = fails(r"retain corpus .*tiny\.txt is too short", _build, tmp_path / "tiny.txt", tokenizer, name="retain")
    assert f"{(7 + 10) * SEQ} are needed" in msg and "7 evaluation + 10 statistics chunks of 32" in msg
    # the budget counts both splits: enough for eval alone, not for eval + stats
    n = len(tokenizer("just a few words of text", add_special_tokens=False).input_ids) + 1  # + separator
    assert n >= 8
    ok = _build(tmp_path / "tiny.txt", tokenizer, eval_tokens=8, stats_tokens=0, seq_len=8)
    assert ok.eval.input_ids.shape == (1, 8)
    fails("too short", _build, tmp_path / "tiny.txt", tokenizer, eval_tokens=8, stats_tokens=n, seq_len=8)


def test_seq_len_too_small(text_files, tokenizer):
    fails("seq_len must be at least 8, got 4", _build, text_files[0], tokenizer, seq_len=4)


def test_build_corpus_propagates_source_errors(tmp_path, tokenizer):
    fails("data not found", _build, tmp_path / "missing", tokenizer)
