"""Probe files: parsing with clear errors, class ids, the shipped toy probe equals the built-in one."""

import json

import numpy as np
import pytest

from rlvr_jax import cli
from rlvr_jax.config import load_config
from rlvr_jax.probe import Probe, ProbeArrays, ProbeError, load_probe_file, probe_arrays
from rlvr_jax.stages import probe_series
from rlvr_jax.tasks import get_task

TOY = get_task("toy_strategy")


def test_shipped_toy_probe_file_equals_the_builtin():
    assert load_probe_file(cli.DEFAULT_CONFIG.parent / "probes" / "toy_strategy.yaml") == TOY.probe()
    assert load_probe_file("toy_strategy") == TOY.probe()  # a packaged probe by name


def test_a_missing_probe_file_lists_the_packaged_ones(tmp_path):
    with pytest.raises(ProbeError, match=r"probe file .*nope.yaml does not exist .*packaged probes: math_answer_start"):
        load_probe_file(tmp_path / "nope.yaml")


def test_items_and_per_item_classes(tmp_path, tiny_tokenizer_dir):
    from rlvr_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    path = tmp_path / "probe.yaml"
    path.write_text(
        "classes: {first: ['a', 'b'], second: ['c']}\n"
        "prompts:\n  - {prompt: 'is 2 even?', response_prefix: 'Answer:', subset: hard}\n"
        "  - {prompt: 'is 3 even?', classes: {second: ['c']}}\n"
        "  - {prompt: 'is 4 even?', subset: easy}\n"
    )
    spec = load_probe_file(path)
    assert [i.subset for i in spec.items] == ["hard", None, "easy"]
    arrays = probe_arrays(spec, load_config(None), TOY, tok)
    prompts, names, member, applies = arrays.prompts, arrays.names, arrays.member, arrays.applies
    assert names == ["first", "second"]
    np.testing.assert_array_equal(np.asarray(applies), [[1, 1], [0, 1], [1, 1]])
    ids = tok.get_vocab()
    assert set(np.flatnonzero(np.asarray(member)[0])) == {ids["a"], ids["b"]}
    assert set(np.flatnonzero(np.asarray(member)[1])) == {ids["c"]}
    assert sorted(arrays.class_ids[0]) == sorted([ids["a"], ids["b"]]) and list(arrays.class_ids[1]) == [ids["c"], -1]
    assert arrays.subsets == ["easy", "hard"]  # the middle item belongs to none: it counts only overall
    np.testing.assert_array_equal(arrays.in_subset, [[0, 0, 1], [1, 0, 0]])
    # the decision position is the last real token: the prompt's generation prompt + response prefix
    text = tok.decode(np.asarray(prompts.tokens[0])[np.asarray(prompts.mask[0]) == 1])
    assert text.endswith("Answer:")


def test_a_probe_without_subsets_logs_overall_keys_only(tmp_path, tiny_tokenizer_dir):
    from rlvr_jax.tokenizer import load_tokenizer

    path = tmp_path / "probe.yaml"
    path.write_text("classes: {x: ['a']}\nprompts: [{prompt: 'p'}, {prompt: 'q'}]\n")
    arrays = probe_arrays(load_probe_file(path), load_config(None), TOY, load_tokenizer(tiny_tokenizer_dir))
    assert arrays.subsets == [] and arrays.in_subset.shape == (0, 2)


def test_jsonl_items(tmp_path, tiny_tokenizer_dir):
    path = tmp_path / "probe.jsonl"
    path.write_text(
        json.dumps({"prompt": "a", "classes": {"x": ["a"]}})
        + "\n\n"
        + json.dumps({"prompt": "b", "response_prefix": "c", "classes": {"y": ["b"]}})
        + "\n"
    )
    spec = load_probe_file(path)
    assert [i.prompt for i in spec.items] == ["a", "b"] and spec.items[1].response_prefix == "c"


@pytest.mark.parametrize(
    "text, message",
    [
        ("prompts: [{prompt: a}]", "no classes"),
        ("classes: {x: [a]}\nprompts: [{prompt: a, position: 3}]", r"unknown keys \['position'\]"),
        ("classes: {x: [a]}\nprompts: [{prompt: a, subset: a/b}]", "subset must be a non-empty name without '/'"),
        ("classes: {rest: [a]}\nprompts: [{prompt: a}]", "`rest` is reserved"),
        ("classes: {x: a}\nprompts: [{prompt: a}]", r"expected \{class name: \[token strings\]\}"),
        ("classes: {yes: [a]}\nprompts: [{prompt: a}]", "class name True is not a string"),
        ("classes: {x: [a]}", "expected a mapping with `prompts`"),
        ("classes: {x: [a]}\nprompts: {split: test}", "from_split"),
    ],
)
def test_bad_probe_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ProbeError, match=message):
        load_probe_file(path)


def test_multi_token_class_entry_is_an_error(tmp_path, tiny_tokenizer_dir):
    from rlvr_jax.tokenizer import load_tokenizer

    path = tmp_path / "p.yaml"
    path.write_text("classes: {x: ['a very long multi token string']}\nprompts: [{prompt: a}]")
    with pytest.raises(ProbeError, match="probe class x: 'a very long multi token string' is [0-9]+ tokens"):
        probe_arrays(load_probe_file(path), load_config(None), TOY, load_tokenizer(tiny_tokenizer_dir))


def test_every_shipped_probe_file_parses():
    files = sorted((cli.DEFAULT_CONFIG.parent / "probes").glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        assert load_probe_file(path).classes


def test_a_missing_probe_file_is_a_clear_cli_error(tmp_path):
    with pytest.raises(SystemExit, match=r"probe file .*nope.yaml does not exist \(logging.probe_file"):
        cli.main(
            [
                "train",
                "--run-dir",
                str(tmp_path / "run"),
                f"logging.probe_file={tmp_path / 'nope.yaml'}",
                "warmstart.steps=2",
                "warmstart.traces=64",
                "run.steps=1",
            ]
        )


def test_probe_metrics_are_named_per_class_and_subset():
    """The keys the probe logs from one reading (values as the jitted function returns them)."""
    arrays = ProbeArrays(
        prompts=None,
        names=["S1", "S2"],
        member=np.zeros((2, 4), np.float32),
        applies=np.array([[1, 1], [1, 0], [1, 1]], np.float32),  # S2 is not defined on item 1
        class_ids=np.zeros((2, 1), np.int32),
        subsets=["easy", "hard"],
        in_subset=np.array([[1, 1, 0], [0, 1, 0]], np.float32),  # hard = {item 1}: S2 is undefined there
    )
    reading = {
        "pi": np.array([0.6, 0.3, 0.1]),
        "pi_subset": np.array([[0.5, 0.4, 0.1], [0.7, 0.0, 0.3]]),
        "logit": np.array([2.0, 1.0]),
        "zc": np.array([3.0, 2.0]),
        "entropy": np.array(0.9),
        "entropy_subset": np.array([0.8, 1.1]),
    }
    got = Probe(lambda params: reading, arrays)(None)
    assert got == {
        "probe/pi_S1": 0.6,
        "probe/pi_S2": 0.3,
        "probe/pi_rest": 0.1,
        "probe/pi_S1/easy": 0.5,
        "probe/pi_S2/easy": 0.4,
        "probe/pi_rest/easy": 0.1,
        "probe/pi_S1/hard": 0.7,
        "probe/pi_rest/hard": 0.3,
        "probe/logit_S1": 2.0,
        "probe/logit_S2": 1.0,
        "probe/zc_S1": 3.0,
        "probe/zc_S2": 2.0,
        "probe/entropy": 0.9,
        "probe/entropy/easy": 0.8,
        "probe/entropy/hard": 1.1,
    }
    # The stage detectors read probe/pi_<class> only, never the per-subset keys.
    assert probe_series([{"step": 0, **got}]) == ([0], {"S1": [0.6], "S2": [0.3]})
