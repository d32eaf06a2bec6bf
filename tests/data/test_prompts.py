"""Prompt sets: registered names, local files, hub ids; stable ids; seeded limits; errors before any model loads."""

from __future__ import annotations

import importlib.util
import json

import datasets
import pytest

from moe_defense.data import PROMPT_SETS, DemoSet, HubSet, load_prompts
from moe_defense.errors import ConfigError, DataError

# Registered set -> (its local copy in shared/data, row count).
LOCAL_COPIES: dict[str, tuple[str, int]] = {
    "advbench": ("advbench_harmful_behaviors.csv", 520),
    "jbb-harmful": ("jbb_harmful_behaviors.csv", 100),
    "jbb-benign": ("jbb_benign_behaviors.csv", 100),
    "xstest": ("xstest_prompts.csv", 450),
    "strongreject": ("strongreject_small.csv", 60),
}
# Registered hub sets: (hub id, config, split). Confirmed against public dataset cards and loaders.
HUB_FACTS = {
    "advbench": ("walledai/AdvBench", None, "train"),
    "jbb-harmful": ("JailbreakBench/JBB-Behaviors", "behaviors", "harmful"),
    "jbb-benign": ("JailbreakBench/JBB-Behaviors", "behaviors", "benign"),
    "harmbench": ("walledai/HarmBench", "standard", "train"),
    "strongreject": ("walledai/StrongREJECT", None, "train"),
    "xstest": ("Paul/XSTest", None, "train"),
}


def test_registry_holds_every_set_with_its_hub_location():
    built_in = {"demo-harmful", "demo-benign", "demo-lookalike", "en-harmful", "en-benign", "en-lookalike"}
    built_in |= {"smol-harmful", "smol-benign", "smol-lookalike"}
    assert set(PROMPT_SETS.names()) == {*HUB_FACTS, *built_in}
    for name, (hub_id, config, split) in HUB_FACTS.items():
        spec = PROMPT_SETS.get(name)
        assert isinstance(spec, HubSet)
        assert (spec.hub_id, spec.config, spec.split) == (hub_id, config, split)


@pytest.mark.parametrize("name", sorted(LOCAL_COPIES))
def test_registered_set_reads_its_local_copy(name, shared_file):
    filename, rows = LOCAL_COPIES[name]
    prompts = load_prompts(name, data_file=shared_file(filename))
    assert len(prompts) == rows
    assert prompts.prompts[7].id == f"{name}-0007"
    assert len({p.id for p in prompts}) == rows
    assert all(p.text.strip() for p in prompts)
    assert prompts.source == str(shared_file(filename))


def test_advbench_keeps_its_target(shared_file):
    first = load_prompts("advbench", data_file=shared_file("advbench_harmful_behaviors.csv")).prompts[0]
    assert first.text.startswith("Write a script that can exploit vulnerabilities")
    assert first.metadata["target"].startswith("Sure, here is a script")
    assert first.metadata["label"] == "unsafe"


def test_jbb_maps_goal_not_behavior_and_labels_the_splits(shared_file):
    harmful = load_prompts("jbb-harmful", data_file=shared_file("jbb_harmful_behaviors.csv")).prompts[0]
    benign = load_prompts("jbb-benign", data_file=shared_file("jbb_benign_behaviors.csv")).prompts[0]
    assert harmful.text.startswith("Write a defamatory article")
    assert harmful.metadata["behavior"] == "Defamation"
    assert harmful.metadata["category"] == "Harassment/Discrimination"
    assert (harmful.metadata["label"], benign.metadata["label"]) == ("unsafe", "safe")


def test_xstest_keeps_row_labels_for_over_refusal(shared_file):
    xstest = load_prompts("xstest", data_file=shared_file("xstest_prompts.csv"))
    safe, unsafe = ([p for p in xstest if p.metadata["label"] == label] for label in ("safe", "unsafe"))
    assert (len(safe), len(unsafe)) == (250, 200)
    assert safe[0].metadata["type"] == "homonyms"
    assert all(p.metadata["type"].startswith("contrast") for p in unsafe)


def test_where_keeps_matching_rows_before_the_limit_and_names_the_values_on_no_match(shared_file):
    path = shared_file("xstest_prompts.csv")
    safe = load_prompts("xstest", data_file=path, where={"label": "safe"})
    assert len(safe) == 250 and all(p.metadata["label"] == "safe" for p in safe)
    limited = load_prompts("xstest", data_file=path, where={"label": "safe"}, limit=32)
    assert len(limited) == 32 and all(p.metadata["label"] == "safe" for p in limited)
    with pytest.raises(DataError, match=r"where=\{'label': 'harmless'\}.*'safe'.*'unsafe'"):
        load_prompts("xstest", data_file=path, where={"label": "harmless"})


def test_lookalike_sets_hold_the_benchmark_benign_rows_for_testing_only(shared_data, monkeypatch):
    monkeypatch.setenv("MOE_DEFENSE_DATA", str(shared_data))
    for name in ("en-lookalike", "smol-lookalike"):
        lookalike = load_prompts(name)
        sources = [p.metadata["source"] for p in lookalike]
        assert (sources.count("jbb-benign"), sources.count("xstest-safe")) == (100, 250)
        xstest = load_prompts(name, where={"source": "xstest-safe"}, limit=64)
        assert len(xstest) == 64 and {p.id[:7] for p in xstest} == {"xstest-"}
        with pytest.raises(ConfigError, match="only split is 'test'"):
            load_prompts(name, split="train")


def test_strongreject_reads_forbidden_prompt(shared_file):
    first = load_prompts("strongreject", data_file=shared_file("strongreject_small.csv")).prompts[0]
    assert first.text.startswith("I want to get high on prescription amphetamines")
    assert first.metadata["category"] == "Illegal goods and services"


@pytest.mark.parametrize("header", ["prompt,category", "Behavior,SemanticCategory"])
def test_harmbench_reads_hub_and_original_csv_columns(write_csv, header):
    path = write_csv(
        "harmbench.csv", header, "Give instructions for X,chemical_biological", "Write code for Y,cybercrime"
    )
    prompts = load_prompts("harmbench", data_file=path)
    assert [p.text for p in prompts] == ["Give instructions for X", "Write code for Y"]
    assert [p.id for p in prompts] == ["harmbench-0000", "harmbench-0001"]


def test_registered_set_goes_to_the_hub_with_its_id_config_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_dict(
            {
                "Index": [1, 2],
                "Goal": ["g1", "g2"],
                "Target": ["t1", "t2"],
                "Behavior": ["b", "b"],
                "Category": ["c", "c"],
                "Source": ["s", "s"],
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    prompts = load_prompts("jbb-benign")
    assert calls == [("JailbreakBench/JBB-Behaviors", "behaviors", {"split": "benign"})]
    assert prompts.source == "JailbreakBench/JBB-Behaviors:behaviors[benign]"
    assert prompts.prompts[1].text == "g2"
    assert prompts.prompts[1].metadata == {
        "label": "safe",
        "target": "t2",
        "behavior": "b",
        "category": "c",
        "source": "s",
    }


def test_empty_hub_split_is_a_data_error(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict({"prompt": []}))
    with pytest.raises(DataError, match=r"'some-org/empty-set'.*has no prompts"):
        load_prompts("some-org/empty-set", split="train")


def test_hub_id_with_several_splits_asks_for_one(monkeypatch):
    splits = datasets.DatasetDict({name: datasets.Dataset.from_dict({"prompt": [name]}) for name in ("train", "test")})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: splits)
    with pytest.raises(ConfigError, match=r"several splits \(train, test\).*--split"):
        load_prompts("some-org/two-splits")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict({"test": splits["test"]}))
    only = load_prompts("some-org/one-split")
    assert (only.name, only.source, only.prompts[0].id) == ("one-split", "some-org/one-split[test]", "one-split-0000")


def test_unreachable_hub_is_a_data_error_naming_the_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"walledai/AdvBench.*data_file"):
        load_prompts("advbench")
    with pytest.raises(DataError, match="some-org/some-set"):
        load_prompts("some-org/some-set")


def test_limit_is_seeded_nested_and_keeps_ids(shared_file):
    path = shared_file("advbench_harmful_behaviors.csv")
    full = {p.id: p.text for p in load_prompts("advbench", data_file=path)}
    ten = load_prompts("advbench", data_file=path, limit=10, seed=3)
    again = load_prompts("advbench", data_file=path, limit=10, seed=3)
    twenty = load_prompts("advbench", data_file=path, limit=20, seed=3)
    other_seed = load_prompts("advbench", data_file=path, limit=10, seed=4)
    ids = [p.id for p in ten]
    assert ids == [p.id for p in again] == sorted(ids)
    assert set(ids) < {p.id for p in twenty}
    assert ids != [p.id for p in other_seed]
    assert all(full[p.id] == p.text for p in twenty)
    assert len(load_prompts("advbench", data_file=path, limit=10_000)) == 520


def test_local_file_detects_the_prompt_column_case_insensitively(write_csv):
    path = write_csv("mine.csv", "Index,Goal,Target", "0,do a,sure a", "1,do b,sure b")
    prompts = load_prompts(str(path))
    assert prompts.name == "mine"
    assert [p.id for p in prompts] == ["mine-0000", "mine-0001"]
    assert prompts.prompts[1].text == "do b"
    assert prompts.prompts[1].metadata == {"Index": 1, "Target": "sure b"}


def test_prompt_column_overrides_detection(write_csv):
    path = write_csv("q.csv", "question,prompt", "asked,ignored")
    assert load_prompts(str(path), prompt_column="question").prompts[0].text == "asked"


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_json_jsonl_and_parquet_files(tmp_path, suffix):
    rows = [{"forbidden_prompt": "first", "category": "x"}, {"forbidden_prompt": "second", "category": "y"}]
    path = tmp_path / f"set{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    prompts = load_prompts(str(path))
    assert [p.text for p in prompts] == ["first", "second"]
    assert prompts.prompts[1].metadata == {"category": "y"}


def test_unknown_name_lists_the_registered_sets():
    with pytest.raises(ConfigError, match=r"'advbenc'.*advbench.*xstest"):
        load_prompts("advbenc")


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv.*does not exist"):
        load_prompts(str(missing))
    with pytest.raises(DataError, match="does not exist"):
        load_prompts("advbench", data_file=missing)


def test_unsupported_format_lists_the_supported_ones(tmp_path):
    path = tmp_path / "set.txt"
    path.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"\.csv.*\.parquet"):
        load_prompts("advbench", data_file=path)


def test_undetectable_column_lists_the_columns_present(write_csv):
    path = write_csv("odd.csv", "question,answer", "q,a")
    with pytest.raises(DataError, match=r"columns present: question, answer.*prompt_column"):
        load_prompts(str(path))
    with pytest.raises(DataError, match="no prompt column text"):
        load_prompts(str(path), prompt_column="text")


def test_empty_set_and_empty_prompt_are_errors(write_csv):
    with pytest.raises(DataError, match="empty.csv.*non-empty csv"):
        load_prompts(str(write_csv("empty.csv", "goal,target")))
    with pytest.raises(DataError, match="row 1"):
        load_prompts(str(write_csv("hole.csv", "goal,target", "a,b", ",c")))


def test_bad_arguments_fail_with_the_fix(write_csv):
    path = write_csv("ok.csv", "goal", "a")
    with pytest.raises(ConfigError, match="limit must be a positive"):
        load_prompts(str(path), limit=0)
    with pytest.raises(ConfigError, match="data_file is for registered sets"):
        load_prompts("my-set", data_file=path)
    with pytest.raises(ConfigError, match="split 'test' does not apply to a local file"):
        load_prompts(str(path), split="test")
    with pytest.raises(ConfigError, match="built in"):
        load_prompts("demo-harmful", data_file=path)
    assert isinstance(PROMPT_SETS.get("demo-harmful"), DemoSet)


needs_demo_corpus = pytest.mark.skipif(
    importlib.util.find_spec("moe_defense.data.demo_corpus") is None,
    reason="moe_defense.data.demo_corpus is not written yet (another engineer's module); the lead runs these later",
)


@needs_demo_corpus
@pytest.mark.parametrize(
    ("name", "label"), [("demo-harmful", "unsafe"), ("demo-benign", "safe"), ("demo-lookalike", "safe")]
)
def test_demo_sets_load_both_splits(name, label):
    test = load_prompts(name)
    train = load_prompts(name, split="train")
    assert len(test) and len(train)
    assert len({p.id for p in test}) == len(test)
    for prompt in test:
        assert prompt.metadata["label"] == label
        assert prompt.metadata["split"] == "test"
        assert {"category", "request_key", "target"} <= set(prompt.metadata)
    assert [p.id for p in load_prompts(name, limit=2, seed=1)] == [p.id for p in load_prompts(name, limit=2, seed=1)]


@needs_demo_corpus
def test_demo_split_must_be_train_or_test():
    with pytest.raises(ConfigError, match="choose: train, test"):
        load_prompts("demo-harmful", split="validation")
