"""Tests for triptych.data.wikiart, offline: a small parquet file in the huggan/wikiart schema."""

from __future__ import annotations

import csv
import io
import socket
import sys

import numpy as np
import pytest
from PIL import Image

from triptych.data import wikiart
from triptych.data.wikiart import fetch_wikiart
from triptych.errors import InvalidArgumentError, MissingFileError, TriptychError

datasets = pytest.importorskip("datasets")

STYLES = ["Baroque", "Expressionism", "Post_Impressionism", "Romanticism"]
ARTISTS = ["Unknown Artist", "vincent-van-gogh", "ivan-aivazovsky"]
GENRES = ["Unknown Genre", "landscape", "portrait"]


def encoded(seed: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((64, 48)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    """16 rows: styles cycle Baroque, Expressionism, Post_Impressionism, Romanticism; row 5 (an
    Expressionism) is an RGBA PNG, row 9 (Expressionism) is garbage, row 13 repeats row 1."""
    rows = []
    for i in range(16):
        data = encoded(i)
        if i == 5:
            data = encoded(i, "PNG", "RGBA")
        if i == 9:
            data = b"not an image at all"
        if i == 13:
            data = encoded(1)
        rows.append({"image": {"bytes": data, "path": None}, "style": i % 4, "artist": i % 3, "genre": i % 3})
    features = datasets.Features({
        "image": datasets.Image(),
        "artist": datasets.ClassLabel(names=ARTISTS),
        "genre": datasets.ClassLabel(names=GENRES),
        "style": datasets.ClassLabel(names=STYLES),
    })
    table = {key: [row[key] for row in rows] for key in ("image", "artist", "genre", "style")}
    path = tmp_path_factory.mktemp("hub") / "train-00000-of-00001.parquet"
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
    return path


def manifest(out):
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_writes_class_folders_and_resumes(parquet, tmp_path):
    out = tmp_path / "art"
    result = fetch_wikiart(out, ["Romanticism", "Expressionism"], 2, parquet=[parquet], progress=False)
    assert result.counts == {"Romanticism": 2, "Expressionism": 2} and result.complete
    assert (result.written, result.present) == (4, 0)
    assert sorted(p.name for p in out.iterdir()) == ["Expressionism", "Romanticism", "manifest.csv"]
    for folder in ("Expressionism", "Romanticism"):
        files = sorted((out / folder).iterdir())
        assert len(files) == 2
        for f in files:
            with Image.open(f) as image:
                image.load()
                assert image.format == "JPEG" and image.mode == "RGB"
    # Expressionism rows are 1, 5 (RGBA PNG -> converted to RGB JPEG), 9 (broken), 13 (copy of 1)
    rows = manifest(out)
    assert len(rows) == 4 and {r["style"] for r in rows} == {"Romanticism", "Expressionism"}
    assert {r["artist"] for r in rows} <= set(ARTISTS) and {r["genre"] for r in rows} <= set(GENRES)
    assert all((out / r["file"]).is_file() for r in rows)

    again = fetch_wikiart(out, ["Romanticism", "Expressionism"], 2, parquet=[parquet], progress=False)
    assert (again.written, again.present) == (0, 4)  # complete folder: nothing streamed or written

    more = fetch_wikiart(out, ["Romanticism", "Expressionism"], 4, parquet=[parquet], progress=False)
    assert more.counts == {"Romanticism": 4, "Expressionism": 2}
    assert more.short == {"Expressionism": 2} and not more.complete
    assert (more.written, more.present, more.bad) == (2, 4, 1)  # the garbage row is skipped and counted
    assert len(manifest(out)) == 6
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind


def test_style_names_are_checked_and_normalised(parquet, tmp_path):
    with pytest.raises(TriptychError, match=r"unknown style 'Rococo'.*valid styles: Baroque, Expressionism"):
        fetch_wikiart(tmp_path / "x", ["Rococo", "Romanticism"], 1, parquet=[parquet], progress=False)
    result = fetch_wikiart(tmp_path / "y", ["post impressionism", "BAROQUE"], 1, parquet=[parquet], progress=False)
    assert result.counts == {"Post_Impressionism": 1, "Baroque": 1}
    assert sorted(p.name for p in (tmp_path / "y").iterdir()) == ["Baroque", "Post_Impressionism", "manifest.csv"]


def test_plain_string_styles(tmp_path):
    table = {"image": [{"bytes": encoded(i), "path": None} for i in range(4)],
             "style": ["Romanticism", "Cubism", "Romanticism", "Cubism"]}
    features = datasets.Features({"image": datasets.Image(), "style": datasets.Value("string")})
    path = tmp_path / "strings.parquet"
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
    result = fetch_wikiart(tmp_path / "out", ["Romanticism", "Fauvism"], 2, parquet=[path], progress=False)
    assert result.counts == {"Romanticism": 2, "Fauvism": 0} and result.short == {"Fauvism": 0}
    rows = manifest(tmp_path / "out")
    assert [r["style"] for r in rows] == ["Romanticism", "Romanticism"] and rows[0]["artist"] == ""


def test_bad_arguments(parquet, tmp_path):
    with pytest.raises(MissingFileError, match="no such parquet file"):
        fetch_wikiart(tmp_path / "x", ["Romanticism"], 1, parquet=[tmp_path / "missing.parquet"])
    with pytest.raises(InvalidArgumentError, match=r"per_class must be >= 1, got 0"):
        fetch_wikiart(tmp_path / "x", ["Romanticism"], 0, parquet=[parquet])


def test_no_network_fails_fast_with_a_hint(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(TriptychError, match=r"no network.*pass parquet=\[FILE, \.\.\.\]"):
        fetch_wikiart(tmp_path / "x", ["Romanticism"], 1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TriptychError, match=r"offline mode.*pass parquet=\[FILE, \.\.\.\]"):
        fetch_wikiart(tmp_path / "x", ["Romanticism"], 1)


def test_missing_datasets_package_is_one_line(parquet, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(TriptychError, match="pip install datasets"):
        fetch_wikiart(tmp_path / "x", ["Romanticism"], 1, parquet=[parquet])


def test_cli(parquet, tmp_path, capsys):
    from triptych.cli.main import main

    out = tmp_path / "cli"
    code = main(["data", "wikiart", "--styles", "Romanticism", "Baroque", "--per-class", "3",
                 "--out", str(out), "--parquet", str(parquet)])
    assert code == 0
    assert "Romanticism 3, Baroque 3 (6 new" in capsys.readouterr().out
    code = main(["data", "wikiart", "--styles", "Cubism", "--per-class", "3", "--out", str(out),
                 "--parquet", str(parquet)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "valid styles" in err


def test_wikiart_module_does_not_import_datasets_eagerly():
    assert "datasets" not in vars(wikiart)
