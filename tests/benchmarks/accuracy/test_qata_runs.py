"""benchmarks.accuracy.qata_runs: a result's key written and read in one place, the committed keys included."""
from __future__ import annotations

import json

import pytest

from benchmarks import RESULTS
from benchmarks.accuracy.qata_runs import DEFAULT_MINUTES, RUNS, SCARCE_RUNS, SCARCE_VARIANTS, RunSpec


def test_a_key_marks_subset_budget_and_seed_and_parses_back():
    assert RunSpec("tgcnet", minutes=30).key == "tgcnet"          # the standard run keeps its plain name
    assert RunSpec("base", minutes=10).key == "base"              # ablations' standard budget is 10 min
    spec = RunSpec("unet", seed=2, minutes=4, train_subset=50)
    assert spec.key == "unet@n50@m4@s2" and RunSpec.from_key(spec.key) == spec
    assert (spec.seed_group, spec.without_budget, spec.budget) == ("unet@n50@m4", "unet@n50@s2", 4.0)
    assert RunSpec.from_key("tgcnet@m0.05").minutes == 0.05 and RunSpec("tgcnet").budget == DEFAULT_MINUTES["main"]
    assert RunSpec.from_key("tgcnet@s1@m4@n75").key == "tgcnet@n75@m4@s1"   # marks in any order, written in one


@pytest.mark.parametrize("key, message", [("unet@x3", "unknown or repeated mark"), ("unet@s1@s2", "repeated"),
                                          ("unet@s1.5", "unknown"), ("nothing@s1", "unknown run")])
def test_a_malformed_key_is_refused(key, message):
    with pytest.raises(ValueError, match=message):
        RunSpec.from_key(key)


def test_a_run_directory_of_any_name_parses_when_asked():
    spec = RunSpec.from_key("myrun@m10@s3", known=False)
    assert (spec.name, spec.seed, spec.minutes, spec.seed_group) == ("myrun", 3, 10.0, "myrun@m10")
    with pytest.raises(ValueError, match="unknown run"):
        spec.run


def test_every_committed_key_is_what_its_spec_writes():
    """The report finds its rows by key: every committed key reads back to itself, to the budget its result
    records and, where it records one (older results do not), to its seed."""
    results = json.loads((RESULTS / "qata_mini.json").read_text())["results"]
    for key, res in results.items():
        spec = RunSpec.from_key(key)
        assert spec.key == key and spec.budget == res["budget_minutes"], key
        assert spec.seed == res.get("seed", spec.seed), key


def test_the_scarce_mask_runs_build_valid_train_configs():
    """Each scarce-mask run's settings are a TrainConfig's (semi-supervised through labelled_fraction), (b)'s
    language-loss row is TrainConfig's default under semi-supervision, and (a) switches every loss off."""
    from tgcnet.engine.train_config import SEMI_DEFAULT_WEIGHTS, TrainConfig

    assert list(SCARCE_RUNS) == ["semi25_alone", "semi25", "semi25_pseudo", "semi25_language", "semi25_count",
                                 "semi50_alone", "semi50"]
    for name, (fraction, variant) in SCARCE_RUNS.items():
        run = RUNS[name]
        cfg = TrainConfig(data="d", **run.train_overrides)
        assert (run.group, cfg.semi_supervised, cfg.labelled_fraction) == ("main", True, fraction), name
        assert {k: getattr(cfg, k) for k in SEMI_DEFAULT_WEIGHTS} == SCARCE_VARIANTS[variant].weights(), name
    language = TrainConfig(data="d", **RUNS["semi25_language"].train_overrides)
    assert {k: getattr(language, k) for k in SEMI_DEFAULT_WEIGHTS} == SEMI_DEFAULT_WEIGHTS
    assert TrainConfig(data="d", labelled_fraction=0.25).to_dict() == language.to_dict()   # the shipped default
    alone = TrainConfig(data="d", **RUNS["semi25_alone"].train_overrides)
    assert (alone.pseudo_label_weight, alone.language_loss_weight, alone.count_loss_weight) == (0.0, 0.0, 0.0)
    # trained with --minutes 10 beside tgcnet's 10-minute seeds: keys as the levers'
    assert RunSpec("semi25", seed=2, minutes=10).key == "semi25@m10@s2"
    assert RunSpec.from_key("semi50_alone@m10@s1") == RunSpec("semi50_alone", 1, 10.0)
