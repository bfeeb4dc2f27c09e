"""scripts/holdout_sets.py (the held-out OOD sets) and scripts/detector_table.py's --sets/--skip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _module(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_held_out_set_is_the_same_bytes_for_the_same_seed_and_differs_between_sets_and_seeds():
    mod = _module("holdout_sets")
    sets = {name: mod.build(name, 24, 0) for names in mod.BATCHES.values() for name in names}
    for name, images in sets.items():
        assert images.dtype == np.uint8 and images.shape == (24, 28, 28), name
        assert np.array_equal(images, mod.build(name, 24, 0)), name
        assert images.max() > 0 and images.std() > 0, name  # not blank
        assert len({im.tobytes() for im in images}) == 24, name  # no duplicate images
    assert not np.array_equal(sets["glyphs"], mod.build("glyphs", 24, 1))
    assert len({images.mean().round(3) for images in sets.values()}) == len(sets)
    digits = mod.build("sklearn_digits", 5000, 0)
    assert len(digits) == 1797 and not digits[:, :4].any() and not digits[:, 24:].any()  # centred in 20x20 like MNIST


def test_holdout_sets_writes_every_set_of_a_batch_and_no_temporary_file(tmp_path):
    mod = _module("holdout_sets")
    for batch, names in mod.BATCHES.items():
        out = tmp_path / str(batch)
        subprocess.run([sys.executable, str(SCRIPTS / "holdout_sets.py"), str(out), "--batch", str(batch), "--n", "12"], check=True, capture_output=True)
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.npy" for n in names)
        assert np.load(out / f"{names[2]}.npy").shape == (12, 28, 28)
    names = [name for batch in mod.BATCHES.values() for name in batch]
    assert len(names) == len(set(names))  # no set in two batches


#: sha256 (first 16 hex digits) of build(name, 24, 0), recorded when each batch was registered (batch 1 at 966a7b2,
#: re-checked against that commit's script when batches 2 and 3 were added), with the library versions that drew them
REGISTERED = {"sklearn_digits": "f1494ff6ce7a9d6c", "glyphs": "d01c16a3916d68b7", "shapes": "516ffb504daf9a8a",
              "photo_patches": "0bfd6e589a3c5fd9", "font_digits": "eaae1a41c1625311", "scribbles": "3a795fd0dd3f7ad6",
              "gratings": "f7d98e976e316c83", "julia": "841f92761e8e1987", "symbols": "67f98bbf844f6ca1",
              "pictograms": "07aef552c7d7ab2e", "voronoi": "30fc2e5c71ecbeb8", "automata": "85a7fa0f73bd61fe"}
DRAWN_WITH = {"PIL": "13.0.0", "matplotlib": "3.11.2", "numpy": "2.4.6", "sklearn": "1.9.1"}


def test_the_registered_sets_keep_their_bytes():
    import hashlib
    import importlib

    versions = {m: importlib.import_module(m).__version__ for m in DRAWN_WITH}
    if versions != DRAWN_WITH:
        pytest.skip(f"the registered bytes were drawn with {DRAWN_WITH}; this machine has {versions} (font rendering and resampling may differ)")
    mod = _module("holdout_sets")
    for name, digest in REGISTERED.items():
        assert hashlib.sha256(mod.build(name, 24, 0).tobytes()).hexdigest()[:16] == digest, name


def test_the_detector_table_keeps_or_skips_sets_and_refuses_an_unknown_one(tmp_path):
    for i, (a, b) in enumerate(((0.9, 0.6), (0.8, 0.7))):
        run = tmp_path / str(i)
        run.mkdir()
        m = {"a": {"other": {"iwae": {"auroc": a, "conformal_fpr": 0.05}}}, "b": {"other": {"iwae": {"auroc": b, "conformal_fpr": 0.05}}}}
        (run / "metrics.json").write_text(json.dumps({"ood": m}))

    def rows(*extra):
        out = subprocess.run([sys.executable, str(SCRIPTS / "detector_table.py"), str(tmp_path / "0"), str(tmp_path / "1"), *extra],
                             capture_output=True, text=True)
        return out.returncode, out.stdout + out.stderr

    assert "| IWAE | 0.6500 ± 0.0707 (b) |" in rows()[1]
    assert "| IWAE | 0.8500 ± 0.0707 (a) |" in rows("--sets", "a")[1]
    assert "| IWAE | 0.8500 ± 0.0707 (a) |" in rows("--skip", "b")[1]
    code, text = rows("--sets", "a,c")
    assert code == 2 and "--sets c: not in" in text
