"""Checks before training: every freeze_base / fine_tune combination runs or is refused up front."""

import itertools

import pytest

from triptych.config import parse_config
from triptych.errors import InvalidArgumentError
from triptych.preflight import prepare_output_dir, validate_experiments

FINE_TUNE = {"epochs": 1, "unfreeze_blocks": ["block14"]}
# (model, freeze_base, fine_tune) -> the start of the refusal, or None: it runs
REFUSED = {
    ("resnet18", "auto", True): "training.fine_tune needs a pretrained backbone",
    ("resnet18", True, True): "training.fine_tune needs a pretrained backbone",
    ("resnet18", False, True): "training.fine_tune needs a pretrained backbone",
    ("resnet18", True, False): "training.freeze_base: true needs a separate backbone",
    ("xception", False, True): "training.fine_tune follows a frozen-backbone phase",
}


def config(model: str, freeze_base, fine_tune: bool):
    training = {"freeze_base": freeze_base, "fine_tune": FINE_TUNE if fine_tune else None}
    return parse_config({"experiments": [{"name": "x", "model": {"name": model}, "training": training}]})


@pytest.mark.parametrize("case", list(itertools.product(("resnet18", "xception"), ("auto", True, False), (False, True))))
def test_every_freeze_base_and_fine_tune_combination_runs_or_is_refused(case):
    expected = REFUSED.get(case)
    if expected is None:
        validate_experiments(config(*case))
        return
    with pytest.raises(InvalidArgumentError) as err:
        validate_experiments(config(*case))
    message = str(err.value)
    assert message.startswith(f"experiment x: {expected}") and "\n" not in message


@pytest.mark.parametrize(
    ("views", "trunk_cache", "augment", "refused"),
    [
        (2, None, {"flip": True}, None),
        (1, None, {}, None),
        (None, None, {}, None),  # default: 1 clean view without augmentation
        (2, None, {}, "data.augment augments nothing"),
        (2, False, {"flip": True}, "fine_tune.trunk_cache is false"),
    ],
)
def test_augmented_trunk_views_need_the_cache_and_an_augmentation(views, trunk_cache, augment, refused):
    fine_tune = {**FINE_TUNE, "cache_views": views, "trunk_cache": trunk_cache}
    experiment = {"name": "x", "model": {"name": "xception"}, "data": {"augment": augment},
                  "training": {"fine_tune": fine_tune}}
    cfg = parse_config({"experiments": [experiment]})
    if refused is None:
        validate_experiments(cfg)
        return
    with pytest.raises(InvalidArgumentError, match=rf"^experiment x: training.fine_tune.cache_views: 2 .*{refused}"):
        validate_experiments(cfg)


def test_output_dir_errors_name_the_python_arguments(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"^resume=True and overwrite=True contradict"):
        prepare_output_dir(tmp_path / "out", resume=True, overwrite=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(InvalidArgumentError, match="pass resume=True to continue it or overwrite=True to replace it"):
        prepare_output_dir(tmp_path / "out", resume=False, overwrite=False)
    with pytest.raises(InvalidArgumentError, match="not a triptych run directory; refusing to delete it with overwrite=True"):
        prepare_output_dir(tmp_path / "out", resume=False, overwrite=True)


@pytest.mark.parametrize("mix", [{"mixup": 0.2}, {"cutmix": 1.0}, {}])
def test_balanced_class_weight_with_mixed_labels_is_refused(mix):
    raw = {"experiments": [{"name": "x", "model": {"name": "resnet18"}, "data": {"augment": mix},
                            "training": {"class_weight": "balanced"}}]}
    if not mix:
        validate_experiments(parse_config(raw))
        return
    with pytest.raises(InvalidArgumentError, match=r"^experiment x: training.class_weight weights each image by its class"):
        validate_experiments(parse_config(raw))
