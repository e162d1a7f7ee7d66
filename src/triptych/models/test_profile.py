"""Model card numbers: multiply-adds against hand counts and published figures, parameters,
weights size, speed measurement (tiny inputs), and the qualitative cards."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

keras = pytest.importorskip("keras")

from triptych.errors import TriptychError  # noqa: E402
from triptych.models.profile import (  # noqa: E402
    count_macs,
    layer_costs,
    load_cards,
    profile_keras_model,
    profile_model,
)
from triptych.models.registry import get_spec, list_models  # noqa: E402

# Published figures our counts are checked against (GMACs per image at the native size).
PUBLISHED_GMACS = {"resnet50": 4.1, "xception": 8.4, "densenet121": 2.9}


@pytest.fixture(scope="module")
def native_profiles():
    """The three compared architectures at their native sizes, with the ImageNet head."""
    return {name: profile_model(name) for name in PUBLISHED_GMACS}


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_gmacs_match_published_figures(native_profiles, name):
    # ResNet-50 4.1 (v1.5, torchvision's 4.09), Xception 8.4, DenseNet-121 2.9 GMACs per image.
    gmacs = native_profiles[name]["gmacs"]
    assert gmacs == pytest.approx(PUBLISHED_GMACS[name], rel=0.05)


def test_parameter_counts_match_published_figures(native_profiles):
    resnet50, xception, densenet = (native_profiles[n] for n in ("resnet50", "xception", "densenet121"))
    assert resnet50["trainable_params"] == 25_557_032  # torchvision resnet50
    assert xception["params"] == 22_910_480  # keras.applications Xception with its 1000-class top
    assert densenet["params"] == 8_062_504  # keras.applications DenseNet121 with its 1000-class top
    for profile in native_profiles.values():
        assert profile["params"] == profile["trainable_params"] + profile["non_trainable_params"]
        assert profile["weights_mb"] == pytest.approx(profile["params"] * 4 / 2**20, abs=0.1)  # float32
        assert profile["gflops"] == pytest.approx(2 * profile["gmacs"], abs=0.002)
    assert set(xception["macs_by_layer_type"]) == {"SeparableConv2D", "Conv2D", "Dense"}


def tiny_model():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)  # 8x8x8
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)  # 8x8x16
    x = keras.layers.SeparableConv2D(4, 3, padding="valid", name="sep")(x)  # 6x6x4
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(5, name="dense")(x)
    return keras.Model(inputs, outputs, name="tiny")


EXPECTED_TINY = {
    "conv": 8 * 8 * 8 * (3 * 3 * 3),
    "dw": 8 * 8 * 16 * 9,
    "sep": 6 * 6 * (9 * 16) + 6 * 6 * 16 * 4,
    "dense": 4 * 5,
}


def test_hand_counted_macs_per_layer_type():
    costs = {c.name: c for c in layer_costs(tiny_model())}
    for name, macs in EXPECTED_TINY.items():
        assert costs[name].macs == macs, name
    assert costs["bn"].macs == costs["gap"].macs == 0
    assert count_macs(tiny_model()) == sum(EXPECTED_TINY.values())


def test_nested_models_are_opened_up():
    inner = tiny_model()
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(2, name="head")(inner(inputs))
    outer = keras.Model(inputs, outputs)
    costs = layer_costs(outer)
    assert "tiny/sep" in {c.name for c in costs}
    assert count_macs(outer) == sum(EXPECTED_TINY.values()) + 5 * 2
    profile = profile_keras_model(outer)
    assert profile["params"] == outer.count_params()


def test_macs_follow_the_input_size():
    small = profile_model("resnet18", (32, 32, 3), num_classes=10)
    large = profile_model("resnet18", (64, 64, 3), num_classes=10)
    assert small["input_shape"] == [32, 32, 3] and small["num_classes"] == 10
    conv_small = small["macs_by_layer_type"]["Conv2D"]
    assert large["macs_by_layer_type"]["Conv2D"] == pytest.approx(4 * conv_small, rel=0.01)
    assert large["params"] == small["params"]


def test_measure_speed_on_a_tiny_input():
    profile = profile_model("resnet18", (32, 32, 3), measure=True, num_classes=3,
                            runs=2, warmup=1, batch_size=4, batch_runs=1)
    assert profile["latency_ms"] > 0 and profile["throughput_img_s"] > 0
    assert profile["batch_size"] == 4 and profile["device"].startswith(("CPU", "GPU"))


def test_unknown_model():
    with pytest.raises(TriptychError, match="valid models"):
        profile_model("alexnet")


def test_cards_cover_every_family_with_the_published_reference():
    cards = load_cards()
    families = {spec.family for spec in list_models()}
    assert families <= set(cards["families"])
    for family in families:
        card = cards["families"][family]
        assert isinstance(card["architecture"], str) and "\n" not in card["architecture"]
        assert isinstance(card["key_innovation"], str) and isinstance(card["best_use_case"], str)
        assert card["pros"] and all(isinstance(p, str) for p in card["pros"])
        assert card["cons"] and all(isinstance(c, str) for c in card["cons"])
    assert "qualitative" in cards["label"]
    published = cards["published"]
    assert published["label"] == "published, different data"  # never shown as if measured here
    assert published["test_images"] > 0 and published["task"] and published["source"]
    for model, value in published["results"].items():
        get_spec(model)  # a registry model
        assert 0 < value <= 1


def test_cards_are_the_file_as_written():
    import yaml

    written = yaml.safe_load((Path(__file__).parent / "cards.yaml").read_text(encoding="utf-8"))
    assert load_cards() == written


def test_cli_models_json(capsys):
    from triptych.cli.main import main

    assert main(["models", "resnet18", "--input-size", "32", "--num-classes", "10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (row,) = data["models"]
    assert row["model"] == "resnet18" and row["input_shape"] == [32, 32, 3]
    assert row["card"] == load_cards()["families"]["resnet"]
    assert data["published"] == load_cards()["published"] and "qualitative" in data["card_label"]
    assert math.isclose(row["gflops"], 2 * row["gmacs"], abs_tol=0.002)


def test_cli_models_table_and_errors(capsys):
    from triptych.cli.main import main

    assert main(["models", "resnet18", "--input-size", "32x32", "--measure", "--cards"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "latency ms" in out and "published, different data" in out
    assert main(["models", "resnet5"]) == 2
    assert "valid models" in capsys.readouterr().err
    assert main(["models", "resnet18", "--input-size", "big"]) == 2


def test_cli_models_lists_every_model_without_building_any(capsys, monkeypatch):
    from triptych.cli.main import main
    from triptych.models import profile

    def no_build(*args, **kwargs):
        raise AssertionError("the plain list must not build models")

    monkeypatch.setattr(profile, "profile_model", no_build)
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    assert [row["model"] for row in rows] == [spec.name for spec in list_models()]
    by_name = {row["model"]: row for row in rows}
    assert by_name["resnet50"]["imagenet_preprocessing"] == "caffe" and by_name["resnet18"]["imagenet_weights"] == "no"
    assert by_name["efficientnetb0"]["keras_application"] == "EfficientNetB0"
    assert main(["models"]) == 0
    assert "efficientnetv2b0" in capsys.readouterr().out
