"""The gsm8k and math environments: shipped samples, local files, column mapping, bad data, splits."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grpopp.config_tools import ConfigError
from grpopp.envs.check import check_env
from grpopp.envs.data_files import DataFileError
from grpopp.envs.registry import make_env

FAST = {"verifier": {"timeout_seconds": 5.0, "workers": 2}}


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_shipped_samples_load_and_split():
    gsm8k, math = make_env("gsm8k", **FAST), make_env("math", **FAST)
    for env in (gsm8k, math):
        train, test = env.num_tasks("train"), env.num_tasks("test")
        assert train + test == 40 and train > 0 and test > 0  # 40 problems ship with each
        train_questions = {env.task(i).prompt for i in range(train)}
        test_questions = {env.task(i, "test").prompt for i in range(test)}
        assert not train_questions & test_questions
    assert "\\boxed{}" in gsm8k.task(0).prompt  # the default prompt asks for a boxed answer
    assert gsm8k.task(0).answer.lstrip("-").isdigit()  # "#### 72" -> "72"


@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_contract_check_passes_on_the_samples(name):
    report = check_env(make_env(name, **FAST), num_tasks=8)
    assert report.ok, [r for r in report.results if not r.passed]


def test_gsm8k_verification_through_the_pool():
    env = make_env("gsm8k", **FAST)
    task = env.task(0)
    results = env.verify_batch(
        [task] * 4,
        [
            f"Step by step... so the total is \\boxed{{{task.answer}}}.",
            f"The answer is {task.answer}",
            "The answer is \\boxed{-987654321}",
            "I am not sure.",
        ],
    )
    assert [r.status for r in results] == ["correct", "correct", "incorrect", "unparseable"]
    assert all(r.decided_by == "math_verify" for r in results)


def test_local_jsonl_with_column_mapping(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [{"q": f"What is {i} + {i}?", "a": f"It is {2 * i}.\n#### {2 * i}"} for i in range(30)],
    )
    env = make_env("gsm8k", path=str(path), question_column="q", answer_column="a", test_fraction=0.2, **FAST)
    assert env.num_tasks("train") + env.num_tasks("test") == 30
    task = env.task(0)
    i = int(task.prompt.split()[2])
    assert task.answer == str(2 * i)
    assert env.task(0).metadata["source"].startswith(f"{path}:")


def test_separate_test_file_and_raw_answers(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": "1+1?", "answer": "2"}])
    test = write_jsonl(
        tmp_path / "test.jsonl", [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}]
    )
    env = make_env("gsm8k", path=str(train), test_path=str(test), answer_parser="raw", **FAST)
    assert env.num_tasks("train") == 1 and env.num_tasks("test") == 2
    assert env.task(1, "test").answer == "6"


def test_parquet_file(tmp_path):
    path = tmp_path / "math.parquet"
    table = pa.table({"problem": ["Compute $1+2$.", "Compute $2^3$."], "solution": ["$\\boxed{3}$", "$\\boxed{8}$"]})
    pq.write_table(table, path)
    env = make_env("math", path=str(path), test_fraction=0.0, **FAST)
    assert [env.task(i).answer for i in range(2)] == ["3", "8"]
    assert env.task(1).metadata["source"] == f"{path}:row 2"


def test_malformed_row_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "1+1?", "answer": "#### 2"}, "{oops", "[]"])
    with pytest.raises(DataFileError, match=r"bad.jsonl:2: not valid JSON"):
        make_env("gsm8k", path=str(path), **FAST)
    path = write_jsonl(tmp_path / "list.jsonl", [{"question": "1+1?", "answer": "#### 2"}, "[1, 2]"])
    with pytest.raises(DataFileError, match=r"list.jsonl:2: expected a JSON object per line, got list"):
        make_env("gsm8k", path=str(path), **FAST)


def test_missing_column_names_it_and_the_columns_found(tmp_path):
    path = write_jsonl(tmp_path / "cols.jsonl", [{"prompt": "1+1?", "answer": "#### 2"}])
    with pytest.raises(
        DataFileError, match=r"cols.jsonl:1: missing column 'question'; the row has columns \['answer', 'prompt'\]"
    ):
        make_env("gsm8k", path=str(path), **FAST)


def test_rows_without_a_gold_answer_are_skipped_and_reported(tmp_path):
    path = write_jsonl(
        tmp_path / "gold.jsonl",
        [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "four, no hash line"}],
    )
    with pytest.warns(UserWarning, match=r"gsm8k: skipped 1 rows .*gold.jsonl:2"):
        env = make_env("gsm8k", path=str(path), test_fraction=0.0, **FAST)
    assert env.num_tasks("train") == 1 and env.skipped == [f"{path}:2: no gold answer found by parser 'gsm8k_hash'"]


def test_bad_paths_and_options_fail_at_construction(tmp_path):
    with pytest.raises(ConfigError, match="path: no such file"):
        make_env("gsm8k", path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="set either path or hf_dataset"):
        make_env("gsm8k", path=str(write_jsonl(tmp_path / "x.jsonl", [])), hf_dataset="openai/gsm8k")
    with pytest.raises(ConfigError, match="answer_parser"):
        make_env("math", answer_parser="last_line")


def test_hugging_face_without_datasets_says_how_to_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ConfigError, match=r"pip install 'grpopp\[datasets\]'"):
        make_env("gsm8k", hf_dataset="openai/gsm8k", hf_config="main")
