"""Evaluation data formats: QA, multiple choice, RWKU probes, continuations, texts; their checks and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearn.data.formats import (
    Continuation,
    MCItem,
    Probe,
    QAItem,
    load_continuations,
    load_mc,
    load_probes,
    load_qa,
    load_texts,
)
from unlearn.data.sources import iter_records
from unlearn.errors import UnlearnError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def jsonl(path: Path, *rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fails(fn, *args, **kw) -> str:
    """``fn(*args, **kw)`` raises an UnlearnError with a one-line message, which is returned."""
    with pytest.raises(UnlearnError) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


# ------------------------------------------------------------------------------------------------- good records


def test_qa_tofu_and_plain_records(tmp_path):
    path = jsonl(
        tmp_path / "qa.jsonl",
        {
            "question": "Q1?",
            "answer": "A1",
            "paraphrased_answer": "PA",
            "perturbed_answer": ["W1", "W2"],
            "paraphrased_question": "PQ?",
        },
        {"question": "Q2?", "answer": "A2", "perturbed_answer": "only one"},
        {"question": "Q3?", "answer": "A3", "paraphrased_answer": None, "extra": 1},
    )
    assert load_qa(path) == [
        QAItem("Q1?", "A1", "PA", ("W1", "W2"), "PQ?", id=f"{path}:1"),
        QAItem("Q2?", "A2", perturbed_answers=("only one",), id=f"{path}:2"),
        QAItem("Q3?", "A3", id=f"{path}:3"),
    ]


def test_qa_from_json_and_csv(tmp_path):
    js = tmp_path / "qa.json"
    js.write_text(json.dumps([{"question": "Q?", "answer": "A"}]), encoding="utf-8")
    assert load_qa(js) == [QAItem("Q?", "A", id=f"{js}[0]")]
    csv = tmp_path / "qa.csv"
    csv.write_text('question,answer\n"Why, then?",Because\n', encoding="utf-8")
    assert load_qa(csv) == [QAItem("Why, then?", "Because", id=f"{csv}:2")]


def test_mc_answers_as_int_digits_and_letters(tmp_path):
    path = jsonl(
        tmp_path / "mc.jsonl",
        {"question": "Q0", "choices": ["a", "b", "c", "d"], "answer": 3},
        {"question": "Q1", "choices": ["a", "b", "c"], "answer": "1"},
        {"question": "Q2", "choices": ["a", "b", "c"], "answer": "C"},
        {"question": "Q3", "choices": ["a", "b"], "answer": "a"},
    )
    got = load_mc(path)
    assert got[0] == MCItem("Q0", ("a", "b", "c", "d"), 3, id=f"{path}:1")
    assert [m.answer for m in got] == [3, 1, 2, 0]


def test_mc_from_mmlu_style_csv(tmp_path):
    path = tmp_path / "mmlu.csv"
    path.write_text(
        'question,choice0,choice1,choice2,choice3,answer\n"What is 2+2,\nreally?",3,4,5,6,1\nNext,x,y,z,w,D\n',
        encoding="utf-8",
    )
    assert load_mc(path) == [
        MCItem("What is 2+2,\nreally?", ("3", "4", "5", "6"), 1, id=f"{path}:2"),
        MCItem("Next", ("x", "y", "z", "w"), 3, id=f"{path}:4"),  # the first record spans lines 2-3
    ]


def test_mc_numeric_choice_columns_in_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "mc.parquet"
    pq.write_table(pa.table({"question": ["Q"], "choice0": [0], "choice1": [4], "answer": [1]}), path)
    assert load_mc(path) == [MCItem("Q", ("0", "4"), 1, id=f"{path}[0]")]


def test_probes_level_from_record_or_file_name(tmp_path):
    given = jsonl(
        tmp_path / "probes.jsonl",
        {"query": "X is an American ___", "answer": "author", "level": "1", "type": "cloze", "subject": "X"},
        {"query": "Who?", "answer": "X", "level": 3, "type": "role play"},
    )
    assert load_probes(given) == [
        Probe("X is an American ___", "author", "1", "cloze", "X", id=f"{given}:1"),
        Probe("Who?", "X", "3", "role play", id=f"{given}:2"),
    ]
    level2 = jsonl(tmp_path / "forget_level2.jsonl", {"query": "Who?", "answer": "X"})
    assert load_probes(level2) == [Probe("Who?", "X", "2", "question", id=f"{level2}:1")]
    level1 = jsonl(tmp_path / "neighbor_level1.jsonl", {"query": "Y wrote ___", "answer": "Z", "level": "1"})
    assert load_probes(level1)[0].type == "cloze"


def test_continuations_and_texts(tmp_path):
    path = jsonl(tmp_path / "verbmem.jsonl", {"prompt": "Once upon", "gt": " a time"}, {"prompt": "P", "target": "T"})
    assert load_continuations(path) == [
        Continuation("Once upon", " a time", id=f"{path}:1"),
        Continuation("P", "T", id=f"{path}:2"),
    ]
    texts = jsonl(tmp_path / "t.jsonl", {"text": "one", "body": "b1"}, {"text": "two", "body": "b2"})
    assert load_texts(texts) == ["one", "two"]
    assert load_texts(texts, field="body") == ["b1", "b2"]


def test_limit_reads_and_checks_only_the_first_records(tmp_path):
    path = jsonl(tmp_path / "qa.jsonl", {"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": "A2"})
    with path.open("a", encoding="utf-8") as f:
        f.write('{"question": "Q3"}\nnot json\n')
    assert [q.question for q in load_qa(path, limit=2)] == ["Q1", "Q2"]
    assert load_qa(path, limit=0) == []
    assert "missing field 'answer'" in fails(load_qa, path)
    assert "limit must be" in fails(load_qa, path, limit=-1)


def test_folder_and_glob_keep_sorted_file_order(tmp_path):
    jsonl(tmp_path / "b.jsonl", {"text": "b1"}, {"text": "b2"})
    jsonl(tmp_path / "a.jsonl", {"text": "a1"})
    assert load_texts(tmp_path) == ["a1", "b1", "b2"]
    assert load_texts(str(tmp_path / "*.jsonl")) == load_texts(tmp_path)


def test_iter_records_places_and_refusals(tmp_path):
    path = jsonl(tmp_path / "r.jsonl", {"k": 1}, {"k": 2})
    assert list(iter_records(str(path))) == [(f"{path}:1", {"k": 1}), (f"{path}:2", {"k": 2})]
    text = tmp_path / "notes.txt"
    text.write_text("plain text", encoding="utf-8")
    msg = fails(list, iter_records(str(text)))
    assert msg == f"{text} is not a structured data file (.jsonl, .json, .csv, .parquet)"
    assert "notes.txt is not a structured data file" in fails(list, iter_records(str(tmp_path)))


def test_hf_dataset_split_is_passed_through(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    for name, value in [("HF_HUB_OFFLINE", True), ("HF_DATASETS_OFFLINE", True), ("HF_DATASETS_CACHE", tmp_path)]:
        monkeypatch.setattr(datasets.config, name, value, raising=False)
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.csv").write_text("question,choice0,choice1,answer\nQ,1,2,B\n", encoding="utf-8")
    (folder / "test.csv").write_text("question,choice0,choice1,answer\nT,3,4,A\n", encoding="utf-8")
    assert load_mc(f"hf:{folder}") == [MCItem("Q", ("1", "2"), 1, id=f"hf:{folder}[0]")]  # typed 1, 2 -> text
    assert load_mc(f"hf:{folder}", hf_split="test") == [MCItem("T", ("3", "4"), 0, id=f"hf:{folder}[0]")]


# ---------------------------------------------------------------------------------------------- malformed input

MC_HEAD = "question,choice0,choice1,choice2,choice3,answer\n"


def rec(**fields) -> str:
    return json.dumps(fields)


def mc(choices, answer) -> str:
    return rec(question="Q", choices=choices, answer=answer)


# case: (file name, content, place after the path, problem)
BAD = {
    load_qa: {
        "missing field": (
            "d.jsonl",
            rec(question="Q", answer="A") + "\n" + rec(question="Q", choices=[]),
            ":2",
            "missing field 'answer' (has question, choices)",
        ),
        "answer not a string": ("d.jsonl", rec(question="Q", answer=7), ":1", "'answer' must be a string, got number"),
        "empty question": ("d.json", "[" + rec(question="  ", answer="A") + "]", "[0]", "field 'question' is empty"),
        "perturbed not strings": (
            "d.jsonl",
            rec(question="Q", answer="A", perturbed_answer=[1]),
            ":1",
            "field 'perturbed_answer' must be a string or a list of non-empty strings",
        ),
        "empty file": ("d.jsonl", "", "", ": no records"),
        "not UTF-8": ("d.jsonl", b'{"question": "caf\xe9"}', "", " is not UTF-8 text (byte 17)"),
        "invalid JSON line": (
            "d.jsonl",
            rec(question="Q", answer="A") + '\n{"question": oops}\n',
            ":2",
            ": invalid JSON (Expecting value)",
        ),
    },
    load_mc: {
        "index out of range": ("d.jsonl", mc(list("abcd"), 4), ":1", "answer index 4 out of range for 4 choices"),
        "negative index": ("d.jsonl", mc(list("ab"), -1), ":1", "answer index -1 out of range for 2 choices"),
        "letter out of range": ("d.csv", MC_HEAD + "Q,a,b,c,d,e\n", ":2", "answer 'E' out of range for 4 choices"),
        "digits out of range": ("d.csv", MC_HEAD + "Q,a,b,c,d,9\n", ":2", "answer index 9 out of range for 4"),
        "answer not an index": (
            "d.jsonl",
            mc(list("ab"), "first"),
            ":1",
            "'answer' must be a choice index (0, 1, ...) or letter (A, B, ...), got 'first'",
        ),
        "answer boolean": ("d.jsonl", mc(list("ab"), True), ":1", "got boolean"),
        "no answer": ("d.jsonl", rec(question="Q", choices=list("ab")), ":1", "missing field 'answer'"),
        "too few choices": ("d.jsonl", mc(["a"], 0), ":1", "field 'choices' must be a list of at least 2 strings"),
        "choices not a list": ("d.jsonl", mc("ab", 0), ":1", "field 'choices' must be a list of at least 2 strings"),
        "choice not a string": ("d.jsonl", mc(["a", 2], 0), ":1", "'choices' must be a list of at least 2 strings"),
        "empty choice cell": ("d.csv", MC_HEAD + "Q,a,b,c,d,A\nQ,a,b,,d,A\n", ":3", "field 'choice2' is empty"),
        "choice columns gap": ("d.csv", "question,choice0,choice2,answer\nQ,a,c,0\n", ":2", "choice1 is missing"),
        "one choice column": ("d.csv", "question,choice0,answer\nQ,a,0\n", ":2", "needs at least 2 choices"),
        "no choices": (
            "d.jsonl",
            rec(question="Q", answer=0),
            ":1",
            "missing field 'choices' (or choice0..choiceN) (has question, answer)",
        ),
        "only blank lines": ("d.jsonl", "\n  \n\n", "", ": no records"),
        "header only csv": ("d.csv", MC_HEAD, "", ": no records"),
        "invalid JSON file": ("d.json", '[{"question": ]', "", ": invalid JSON (Expecting value at line 1)"),
    },
    load_probes: {
        "level unknown": (
            "probes.jsonl",
            rec(query="Q", answer="A"),
            ":1",
            "no field 'level' and no level1/level2/level3 in the file name",
        ),
        "level invalid": (
            "forget_level1.jsonl",
            rec(query="Q", answer="A", level="4"),
            ":1",
            "field 'level' must be 1, 2 or 3, got '4'",
        ),
        "answer list": (
            "forget_level2.jsonl",
            rec(query="Q", answer=["A"]),
            ":1",
            "'answer' must be a string, got list",
        ),
        "no query": ("forget_level2.jsonl", rec(question="Q", answer="A"), ":1", "missing field 'query'"),
        "empty json list": ("d.json", "[]", "", ": no records"),
    },
    load_continuations: {
        "no target": ("d.jsonl", rec(prompt="P"), ":1", "missing field 'gt' (or 'target') (has prompt)"),
    },
    load_texts: {
        "missing field": ("d.jsonl", rec(body="B"), ":1", "missing field 'text' (has body)"),
        "not an object": ("d.jsonl", "[1, 2]", ":1", "expected an object with named fields, got list"),
        "plain text file": ("d.txt", "hello", "", " is not a structured data file"),
    },
}
CASES = [
    pytest.param(loader, *spec, id=f"{loader.__name__}-{case}")
    for loader, cases in BAD.items()
    for case, spec in cases.items()
]


@pytest.mark.parametrize(("loader", "name", "content", "place", "problem"), CASES)
def test_malformed_input_names_place_and_problem(tmp_path, loader, name, content, place, problem):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    msg = fails(loader, path)
    assert msg.startswith(f"{path}{place}"), msg
    assert problem in msg, msg


def test_missing_path(tmp_path):
    assert "data not found" in fails(load_qa, tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------------------------- real data


def test_every_shared_evaluation_file_loads():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data folder at {SHARED_DATA}")
    d = SHARED_DATA
    tofu = load_qa(d / "tofu" / "forget01_perturbed.jsonl")
    assert len(tofu) == 40 and all(len(q.perturbed_answers) == 5 and q.paraphrased_answer for q in tofu)
    assert all(q.paraphrased_question for q in tofu)
    real = load_qa(d / "tofu" / "real_authors_perturbed.jsonl")
    assert len(real) == 100 and all(q.perturbed_answers and q.paraphrased_answer is None for q in real)
    assert len(load_qa(d / "muse_news" / "knowmem" / "forget_qa.jsonl")) == 50
    verbmem = load_continuations(d / "muse_news" / "verbmem" / "forget.jsonl")
    assert len(verbmem) == 25 and all(c.prompt and c.target for c in verbmem)
    assert len(load_texts(d / "muse_news" / "privleak" / "forget.jsonl")) == 40
    king = d / "rwku" / "Stephen_King"
    counts = {"forget_level1": 8, "forget_level2": 10, "forget_level3": 29}
    for name, count in {**counts, "neighbor_level1": 30, "neighbor_level2": 30}.items():
        probes = load_probes(king / f"{name}.jsonl")
        assert len(probes) == count and {p.level for p in probes} == {name[-1]}, name
        assert all(p.subject == "Stephen King" for p in probes)
    assert all("___" in p.query for p in load_probes(king / "forget_level1.jsonl"))
    wmdp = load_mc(d / "wmdp" / "cyber.jsonl")
    assert len(wmdp) == 300 and all(len(m.choices) == 4 and 0 <= m.answer < 4 for m in wmdp)
    geo = load_mc(d / "mmlu" / "test" / "high_school_geography.csv")
    assert len(geo) == 198 and all(len(m.choices) == 4 for m in geo)
    assert geo[0].answer == 1 and geo[0].choices[1] == "a well-connected transportation infrastructure."
