import pytest

from triptych.io import atomic_write_json, atomic_write_text, atomic_write_with


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
