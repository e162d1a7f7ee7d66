import pytest

from triptych.io import atomic_path, atomic_write_json, atomic_write_text, atomic_write_with, final_name, remove_stale_temp_files


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_text(path, "{}")
    assert path.read_text() == "{}"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_failed_writer_keeps_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_temporary_names_of_atomic_writes_map_back_to_their_file(tmp_path):
    for name, suffix in (("history.csv", None), ("best.weights.h5", ".weights.h5"), ("model.keras", None)):
        with atomic_path(tmp_path / name, suffix=suffix) as tmp:
            assert final_name(tmp.name) == name
    assert final_name("history.csv") is None and final_name(".write-test") is None


def test_remove_stale_temp_files_deletes_only_temporaries(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".history.csv.k1ll3d0x.csv", tmp_path / "checkpoints" / ".best.weights.h5.ab_12cd3.weights.h5"]
    kept = [tmp_path / "history.csv", tmp_path / ".hidden", tmp_path / "checkpoints" / "best.weights.h5"]
    for path in stale + kept:
        path.write_text("x")
    assert remove_stale_temp_files(tmp_path) == 2
    assert [p.exists() for p in stale] == [False, False] and all(p.exists() for p in kept)
