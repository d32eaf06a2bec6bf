"""report_to: checked at recipe validation, passed to the Trainer, and the verified figures logged to tensorboard."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from moe_defense.defenses.trainer import HardeningConfig, train_routers, training_arguments
from moe_defense.errors import ConfigError
from moe_defense.models import build_tiny
from moe_defense.recipe import load_recipe
from moe_defense.tracking import check_report_to, log_verification, verification_figures, write_figures
from tests.defenses.sequences import INFO, random_sequences
from tests.test_recipe import MINIMAL

SUMMARY = {  # the parts of a harden summary.json the tracker reads
    "asr_vs_budget": {
        "original": {
            "fsour@1": {"budget": 1, "asr": 0.5},
            "fsour@4": {"budget": 4, "asr": 0.9},
            "fsour@inf": {"budget": None, "asr": 1.0},
        },
        "hardened": {"fsour@1": {"budget": 1, "asr": 0.0}, "fsour@4": {"budget": 4, "asr": None}},
    },
    "budget_b80": 4,
    "headline_asr": {"original": {"asr": 0.9}, "hardened": {"asr": 0.1}},
    "utility": {
        "original": {"benign_compliance": 1.0, "over_refusal": 0.25, "benign_nll": 1.5},
        "hardened": {"benign_compliance": 0.75, "over_refusal": None, "benign_nll": 1.625},
    },
}


class RecordingWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int | None]] = []

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        self.scalars.append((tag, scalar_value, global_step))


def test_figures_are_asr_by_budget_b80_headline_and_utility_without_missing_values():
    writer = RecordingWriter()
    assert write_figures(writer, SUMMARY) == 12
    assert writer.scalars[:5] == [
        ("verify/asr_vs_budget/original", 0.5, 1),
        ("verify/asr_vs_budget/original", 0.9, 4),
        ("verify/asr_uncapped/original", 1.0, 0),
        ("verify/asr_vs_budget/hardened", 0.0, 1),  # the unscored hardened point is skipped, not logged as 0
        ("verify/b80", 4.0, 0),
    ]
    assert ("utility/benign_nll/hardened", 1.625, 0) in writer.scalars
    assert not any(tag == "utility/over_refusal/hardened" for tag, _, _ in writer.scalars)


def test_unknown_tracker_is_named_with_the_supported_ones():
    with pytest.raises(ValueError, match="'tensorbored' is not a supported tracker.*tensorboard, wandb"):
        check_report_to(["tensorbored"])


def test_a_tracker_not_installed_fails_recipe_validation_with_its_pip_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "report_to": ["wandb"]}))
    with pytest.raises(ConfigError, match=r"report_to.*'wandb'.*not installed: pip install wandb"):
        load_recipe(path)


def test_report_to_defaults_to_none_and_passes_through_to_the_training_arguments(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert load_recipe(path).report_to == []
    assert training_arguments(HardeningConfig(), tmp_path, None).report_to == []
    assert training_arguments(HardeningConfig(), tmp_path, None, report_to=["tensorboard", "mlflow"]).report_to == [
        "tensorboard",
        "mlflow",
    ]


def test_the_trainer_is_given_the_trackers(tmp_path):
    # transformers checks report_to names when the Trainer is built: an unknown one shows it arrived there
    with pytest.raises(ValueError, match="no-such-tracker"):
        train_routers(
            build_tiny("mixtral", seed=1),
            random_sequences(2, "harm", 0),
            random_sequences(2, "benign", 1),
            HardeningConfig(steps=1, batch_size=2, refresh_every=0, initial_routes="none"),
            tmp_path,
            info=INFO,
            report_to=["no-such-tracker"],
        )


def test_without_tensorboard_nothing_is_written_and_other_trackers_are_warned_about(tmp_path):
    assert log_verification([], SUMMARY, tmp_path) is None
    with pytest.warns(UserWarning, match=r"\['wandb'\]: these trackers receive the training logs only"):
        assert log_verification(["wandb"], SUMMARY, tmp_path) is None
    assert not any(tmp_path.iterdir())


def test_figures_join_the_trainings_tensorboard_run(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    facts = train_routers(
        build_tiny("mixtral", seed=1),
        random_sequences(2, "harm", 0),
        random_sequences(2, "benign", 1),
        HardeningConfig(steps=2, batch_size=2, refresh_every=0, initial_routes="none"),
        tmp_path / "train",
        info=INFO,
        report_to=["tensorboard"],
    )
    directory = log_verification(["tensorboard"], {**SUMMARY, "training": facts}, tmp_path)
    assert str(directory) == facts["tensorboard_dir"]
    events = EventAccumulator(str(directory)).Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "verify/b80" in tags
    points = [(e.step, e.value) for e in events.Scalars("verify/asr_vs_budget/original")]
    assert points == [(1, 0.5), (4, pytest.approx(0.9))]  # tensorboard stores float32
    assert sum(len(events.Scalars(tag)) for tag in tags if tag.split("/")[0] in ("verify", "utility")) == len(
        list(verification_figures(SUMMARY))
    )


def test_the_pipeline_hands_the_trackers_to_the_training_defense(tmp_path, monkeypatch):
    from moe_defense.defenses.hardening import RouterHardening
    from moe_defense.judges import KeywordJudge
    from moe_defense.pipeline import Harden

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: real("yaml") if name == "mlflow" else real(name))
    seen = {}

    def apply(self, loaded, context):
        seen["report_to"] = context.report_to
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(RouterHardening, "apply", apply)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "report_to": ["mlflow"]}))
    harden = Harden(load_recipe(path), tmp_path / "run", info=INFO)
    with pytest.raises(KeyboardInterrupt):
        harden.defend(build_tiny("mixtral"), [KeywordJudge()], budget=2)
    assert seen["report_to"] == ["mlflow"]
