"""Hostile inputs, second probe (issue #29, items 5-10): nothing hangs, nothing explodes, nothing is silent.

Each test is one finding of the probe, numbered as in the issue:
5. hangs (a YAML alias bomb as a run config, a named pipe as the input);
6. resource bombs (headers declaring far more than they hold: .npy, PNG, gzip IDX) -> ``limits.*``;
7. tampered artifacts (``detectors.npz``, mixtures, NaN weights) -> one error naming the file;
8. outputs (the input itself, a name too long, an uncreatable file) -> refused before scoring;
9. one ``error:`` line, exit status 2, for Hydra's own errors and device mismatches;
10. API inputs (tensor kinds, masked arrays, one string as an override, palette PNGs).
Clean = one ``error: <what> — <fix>`` line (a :class:`FevaeError`; exit status 2 on the command line).
The tiny finished run is ``tests/test_hostile.py``'s fixture (trained once for this module).
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fevae.errors import FevaeError
from fevae.inputs import read_images
from fevae.pipeline.runs import load_run
from test_hostile import cli, one_line_error, planted, trained_run  # noqa: F401  (trained_run: the shared fixture)

pytestmark = pytest.mark.slow

ARTIFACT_WORDS = ("retrain", "re-evaluate")


def _in_thread(fn, timeout: float = 20.0, unblock=None):
    """``fn()`` in a daemon thread; its exception or result, or a failure if it runs past ``timeout``
    (then ``unblock()`` is called so the thread can end)."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if unblock is not None:
            unblock()
        thread.join(5)
        pytest.fail(f"still running after {timeout} s (it hangs)")
    return box


def _feed_fifo(path: Path) -> None:
    """Open the FIFO read-write (never blocks on Linux) and close it: a reader blocked on it sees the end of file."""
    os.close(os.open(path, os.O_RDWR))


# ------------------------------------------------------------------------------ 5. hangs
def _alias_bomb(levels: int) -> str:
    """A "billion laughs" YAML mapping: level k holds 9 aliases of level k-1 (9**levels strings, < 1 KB)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels + 1):
        lines.append(f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_5_a_yaml_alias_bomb_as_run_config_is_refused_at_once(trained_run, tmp_path):
    run_dir = planted(trained_run, tmp_path, lambda cfg: None)
    bomb = _alias_bomb(9)
    assert len(bomb) < 1024
    (run_dir / ".hydra" / "config.yaml").write_text(bomb)
    start = time.perf_counter()
    box = _in_thread(lambda: load_run(run_dir), timeout=30)
    assert isinstance(box.get("error"), FevaeError), box
    assert "aliases" in str(box["error"]) and "config.yaml" in str(box["error"])
    assert time.perf_counter() - start < 5


def test_5_a_yaml_alias_bomb_as_the_resume_config_is_refused_at_once(tmp_path):
    from omegaconf import OmegaConf

    from fevae.pipeline.folders import own_run_folder

    run_dir = tmp_path / "run"
    (run_dir / ".fevae").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / ".fevae" / "config.yaml").write_text(_alias_bomb(9))

    def resume():
        with own_run_folder(run_dir, OmegaConf.create({"seed": 1, "resume": True})):
            pass

    box = _in_thread(resume, timeout=30)
    assert isinstance(box.get("error"), FevaeError) and "aliases" in str(box["error"]), box


def test_5_a_recursive_yaml_alias_is_refused(trained_run, tmp_path):
    run_dir = planted(trained_run, tmp_path, lambda cfg: None)
    (run_dir / ".hydra" / "config.yaml").write_text("a: &a [1, *a]\n")
    box = _in_thread(lambda: load_run(run_dir), timeout=30)
    assert isinstance(box.get("error"), FevaeError) and "contains it" in str(box["error"]), box


def test_5_a_named_pipe_as_the_input_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "images.npy"
    os.mkfifo(fifo)
    box = _in_thread(lambda: read_images(fifo), unblock=lambda: _feed_fifo(fifo))
    assert isinstance(box.get("error"), FevaeError) and "named pipe" in str(box["error"]), box


def test_5_a_named_pipe_in_a_png_folder_is_refused_without_reading_it(tmp_path):
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "a.png")
    os.mkfifo(folder / "b.png")
    box = _in_thread(lambda: read_images(folder), unblock=lambda: _feed_fifo(folder / "b.png"))
    assert isinstance(box.get("error"), FevaeError) and "named pipe" in str(box["error"]), box


def test_5_a_named_pipe_as_the_run_config_is_refused(trained_run, tmp_path):
    run_dir = planted(trained_run, tmp_path, lambda cfg: None)
    config = run_dir / ".hydra" / "config.yaml"
    config.unlink()
    os.mkfifo(config)
    box = _in_thread(lambda: load_run(run_dir), unblock=lambda: _feed_fifo(config))
    assert isinstance(box.get("error"), FevaeError) and "named pipe" in str(box["error"]), box


# ---------------------------------------------------------------------- 6. resource bombs
def _npy_header_only(path: Path, shape: tuple[int, ...], descr: str = "|u1") -> Path:
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": False, "shape": shape})
        handle.write(b"\0" * 4096)
    return path


def test_6_an_npy_header_claiming_a_billion_images_is_refused_before_allocation(tmp_path):
    path = _npy_header_only(tmp_path / "bomb.npy", (10**9, 28, 28))
    assert path.stat().st_size < 5000
    with pytest.raises(FevaeError, match=r"declares 1000000000 images, more than limits\.max_images=1000000"):
        read_images(path)


def test_6_an_npz_member_claiming_730_gib_is_refused_before_allocation(tmp_path):
    import zipfile

    member = _npy_header_only(tmp_path / "images.npy", (10**9, 28, 28))
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as archive:
        archive.write(member, "images.npy")
    with pytest.raises(FevaeError, match=r"limits\.max_images"):
        read_images(tmp_path / "bomb.npz")


def test_6_an_npy_header_longer_than_the_file_is_truncated_not_allocated(tmp_path):
    path = _npy_header_only(tmp_path / "short.npy", (100_000, 28, 28))  # 78 MB declared, 4 KB held
    with pytest.raises(FevaeError, match="truncated"):
        read_images(path)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height 8-bit grayscale pixels, with no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [30000, 5000])
def test_6_a_png_header_claiming_huge_pixels_is_refused_before_decoding(tmp_path, size):
    path = _png_header_only(tmp_path / "bomb.png", size, size)
    with pytest.raises(FevaeError) as info:
        read_images(path)
    message = str(info.value)
    assert "bomb.png" in message and ("limits.max_pixels_per_image" in message or "more pixels than Pillow decodes" in message)


def _gzip_idx_bomb(path: Path, n: int, size: int = 28) -> Path:
    """A gzip IDX file whose header declares n images of size x size and whose stream really expands to them."""
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(bytes([0, 0, 8, 3]) + struct.pack(">III", n, size, size))
        block = b"\0" * (size * size * 1000)
        for _ in range(n // 1000):
            handle.write(block)
    return path


def _peak_while_refused(call, match: str) -> int:
    """The peak of Python allocations (bytes) while ``call()`` raises the :class:`FevaeError` ``match`` names."""
    tracemalloc.start()
    try:
        with pytest.raises(FevaeError, match=match):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_6_a_gzip_idx_bomb_is_refused_without_decompressing_it(tmp_path):
    from fevae.data.idx import read_idx
    from fevae.limits import Limits, using

    bomb = _gzip_idx_bomb(tmp_path / "bomb-images-idx3-ubyte.gz", 100_000)  # 78 MB once expanded
    assert bomb.stat().st_size < 1_000_000
    with using(Limits(max_bytes=1 << 20)):
        peak = _peak_while_refused(lambda: read_idx(bomb), r"limits\.max_bytes=1048576")
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB allocated while refusing a 78 MB stream"


def test_6_a_gzip_idx_stream_longer_than_its_header_is_not_read_to_its_end(tmp_path):
    from fevae.data.idx import read_idx

    path = tmp_path / "long.gz"
    with gzip.open(path, "wb", compresslevel=1) as handle:  # declares 10 images, holds 100000
        handle.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 10, 28, 28) + b"\0" * (28 * 28 * 100_000))
    peak = _peak_while_refused(lambda: read_idx(path), "too long")
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB allocated for a 10-image file"


def test_6_training_data_with_a_gzip_bomb_is_refused_by_the_limits(tmp_path):
    from fevae.data.idx import read_images_and_labels, write_idx
    from fevae.limits import Limits, using

    images = _gzip_idx_bomb(tmp_path / "train-images-idx3-ubyte.gz", 20_000)
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(20_000, np.uint8))
    with using(Limits(max_images=10_000)), pytest.raises(FevaeError, match=r"declares 20000 images, more than limits\.max_images=10000"):
        read_images_and_labels(images, labels)


def test_6_own_training_data_claiming_a_billion_images_is_refused_before_allocation(tmp_path):
    import zipfile

    from fevae.data.own import load_own

    member = _npy_header_only(tmp_path / "train.npy", (10**9, 28, 28))
    with zipfile.ZipFile(tmp_path / "mine.npz", "w") as archive:
        archive.write(member, "train.npy")
    with pytest.raises(FevaeError, match=r"data\.path=.*'train'.*limits\.max_images"):
        load_own("npz", str(tmp_path / "mine.npz"), (1, 28, 28))


def test_6_the_limits_are_settings_of_the_score_cli(trained_run, tmp_path):
    bomb = _gzip_idx_bomb(tmp_path / "bomb.gz", 10_000)  # 7.8 MB expanded
    line = one_line_error(cli("fevae.score", f"run_dir={trained_run[0]}", f"input={bomb}", f"output={tmp_path / 'o.csv'}",
                              "limits.max_bytes=1048576"))
    assert "limits.max_bytes=1048576" in line and "raise limits.max_bytes" in line
    assert not (tmp_path / "o.csv").exists()


def test_6_the_shipped_limits_are_the_code_defaults_and_bad_ones_are_refused():
    from omegaconf import OmegaConf

    from fevae.limits import DEFAULTS, from_config
    from fevae.utils.cli import CONFIG_DIR

    for name in ("train.yaml", "score.yaml"):
        assert from_config(OmegaConf.load(Path(CONFIG_DIR) / name).limits) == DEFAULTS
    for bad in ({"max_images": 0}, {"max_bytes": "1GB"}, {"max_pixel": 3}):
        with pytest.raises(FevaeError, match="limits"):
            from_config(OmegaConf.create(bad))


# ------------------------------------------------------------------- 7. tampered artifacts
def _fitted(tmp_path: Path):
    """A detectors.npz of standardised_fevae and dose fitted on synthetic scores; (path, fresh detectors)."""
    from fevae.detectors.base import save_fitted
    from fevae.detectors.dose import Dose
    from fevae.detectors.fisher import StandardisedFevae

    rng = np.random.default_rng(0)
    columns = {f"log_p_{t}_{s}": rng.normal(size=40) for s in ("pr", "apo") for t in ("vae", "fe")}

    def fresh():
        return [StandardisedFevae(["PR", "APO"]), Dose.for_run(["PR", "APO"], [])]

    fitted = fresh()
    for det in fitted:
        det.fit(columns)
    path = tmp_path / "detectors.npz"
    save_fitted(path, fitted)
    return path, fresh, columns


def _rewrite(path: Path, edit) -> None:
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    edit(arrays)
    np.savez(path, **arrays)


TAMPER = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "random_bytes": lambda p: p.write_bytes(np.random.default_rng(1).bytes(2048)),
    "pickled_array": lambda p: _rewrite(p, lambda a: a.update({"dose/points": np.array([{"a": 1}], dtype=object)})),
    "missing_bandwidth": lambda p: _rewrite(p, lambda a: a.pop("dose/bandwidth")),
    "nan_bandwidth": lambda p: _rewrite(p, lambda a: a.update({"dose/bandwidth": np.array(np.nan)})),
    "nan_points": lambda p: _rewrite(p, lambda a: a["dose/points"].__setitem__((0, 0), np.nan)),
    "nan_reference": lambda p: _rewrite(p, lambda a: a["standardised_fevae/log_p_vae_pr"].__setitem__(3, np.nan)),
    "unsorted_reference": lambda p: _rewrite(p, lambda a: a.update({"standardised_fevae/log_p_fe_apo": a["standardised_fevae/log_p_fe_apo"][::-1]})),
    "string_sd": lambda p: _rewrite(p, lambda a: a.update({"dose/sd": np.array(["x", "y", "z", "w"])})),
    "wrong_shape_mean": lambda p: _rewrite(p, lambda a: a.update({"dose/mean": np.zeros(3)})),
}


@pytest.mark.parametrize("tamper", sorted(TAMPER))
def test_7_a_tampered_detectors_npz_is_one_error_naming_it(tmp_path, tamper):
    from fevae.detectors.base import load_fitted

    path, fresh, columns = _fitted(tmp_path)
    load_fitted(path, fresh())  # the untouched file loads
    TAMPER[tamper](path)
    with pytest.raises(FevaeError) as info:
        load_fitted(path, fresh())
    message = str(info.value)
    assert str(path) in message and all(word in message for word in ARTIFACT_WORDS), message
    assert "allow_pickle" not in message and "\n" not in message


def test_7_the_score_cli_refuses_a_nan_standardised_fevae_reference(trained_run, tmp_path):
    """It was silent: exit 0 and every image scored -6.99."""
    run_dir = planted(trained_run, tmp_path, lambda cfg: cfg["eval"].update(detectors=["standardised_fevae"]))
    path, _, _ = _fitted(tmp_path)
    TAMPER["nan_reference"](path)
    with np.load(path) as archive:
        np.savez(run_dir / "detectors.npz", **{k: archive[k] for k in archive.files if k.startswith("standardised_fevae/")})
    np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), np.uint8))
    line = one_line_error(cli("fevae.score", f"run_dir={run_dir}", f"input={tmp_path / 'x.npy'}", f"output={tmp_path / 'o.csv'}"))
    assert "detectors.npz" in line and "NaN" in line and "re-evaluate" in line
    assert not (tmp_path / "o.csv").exists()


def test_7_nan_weights_in_a_checkpoint_are_refused_on_load(trained_run, tmp_path):
    run_dir = planted(trained_run, tmp_path, lambda cfg: None)
    best = run_dir / "checkpoints" / "vae" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(checkpoint, best)
    with pytest.raises(FevaeError, match="non-finite") as info:
        load_run(run_dir)
    assert str(best) in str(info.value) and "retrain" in str(info.value)


def test_7_a_nan_mixture_names_the_file_and_the_remedy(trained_run, tmp_path):
    run_dir = planted(trained_run, tmp_path, lambda cfg: None)
    _rewrite(run_dir / "mixture.npz", lambda a: a["means"].__setitem__((0, 0), np.nan))
    with pytest.raises(FevaeError) as info:
        load_run(run_dir)
    message = str(info.value)
    assert "mixture.npz" in message and "non-finite" in message and all(word in message for word in ARTIFACT_WORDS), message


# ---------------------------------------------------------------------------- 8. outputs
def test_8_the_input_as_output_is_refused_before_scoring_and_left_intact(trained_run, tmp_path):
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((2, 28, 28), np.uint8))
    before = images.read_bytes()
    line = one_line_error(cli("fevae.score", f"run_dir={trained_run[0]}", f"input={images}", f"output={images}"))
    assert "is the input file" in line and images.read_bytes() == before


def test_8_the_input_is_recognised_through_links_and_dots(tmp_path):
    from fevae.pipeline.score import check_output_path

    images = tmp_path / "x.npy"
    np.save(images, np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "link.npy").symlink_to(images)
    for output, given in ((tmp_path / "link.npy", images), (tmp_path / "." / "x.npy", images), (images, tmp_path / "link.npy")):
        with pytest.raises(FevaeError, match="is the input file"):
            check_output_path(output, given)
    assert check_output_path(tmp_path / "o.csv", images) == tmp_path / "o.csv"


def test_8_an_output_name_too_long_for_the_atomic_write_is_refused_first(tmp_path):
    from fevae.pipeline.score import check_output_path

    name = "a" * 245 + ".csv"  # 249 bytes: a legal name, but its temp file's is not
    with pytest.raises(FevaeError, match="too long"):
        check_output_path(tmp_path / name)
    assert check_output_path(tmp_path / ("a" * 200 + ".csv")) and not list(tmp_path.iterdir())


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_8_an_output_in_a_virtual_file_system_is_refused_first():
    from fevae.pipeline.score import check_output_path

    with pytest.raises(FevaeError, match="cannot be created"):
        check_output_path("/proc/x.csv")


# -------------------------------------------------------------- 9. one line, exit status 2
HYDRA_ERRORS = {
    "unknown_key": ("fevae.score", ["foo=1"], "foo"),
    "unknown_group_option": ("fevae.train", ["data=imagenet"], "imagenet"),
    "unknown_likelihood": ("fevae.train", ["likelihood=poisson"], "poisson"),
    "unknown_nested_key": ("fevae.evaluate", ["run_dir=x", "fe.Cc=3"], "fe.Cc"),
    "non_ascii_unquoted": ("fevae.score", ["run_dir=x", "input=/tmp/é.npy", "output=o.csv"], "quote"),
}


@pytest.mark.parametrize("case", sorted(HYDRA_ERRORS))
def test_9_hydras_own_errors_are_one_line_and_exit_2(tmp_path, case):
    module, args, word = HYDRA_ERRORS[case]
    line = one_line_error(cli(module, *args, cwd=tmp_path))
    assert word in line and " — " in line
    assert not (tmp_path / "outputs").exists()


def test_9_an_interpolation_in_a_path_is_one_line(tmp_path):
    line = one_line_error(cli("fevae.score", "run_dir=x", "input=/tmp/x${y}.npy", "output=o.csv", cwd=tmp_path))
    assert "input" in line and "'y'" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_9_a_gpu_trained_run_on_a_cpu_machine_suggests_trainer_cpu(trained_run, tmp_path):
    run_dir = planted(trained_run, tmp_path, lambda cfg: cfg["trainer"].update(accelerator="gpu", devices=1))
    folder = tmp_path / "données"  # the suggested quoting works for non-ASCII paths
    folder.mkdir()
    np.save(folder / "é.npy", np.zeros((2, 28, 28), np.uint8))
    args = [f"run_dir={run_dir}", f"input='{folder / 'é.npy'}'", f"output='{folder / 'o.csv'}'"]
    line = one_line_error(cli("fevae.score", *args))
    assert "trainer=cpu" in line and "Misconfiguration" not in line
    done = cli("fevae.score", *args, "trainer=cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((folder / "o.csv").read_text().splitlines()) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_9_map_location_cuda_on_a_cpu_machine_says_so(trained_run):
    import fevae

    with pytest.raises(FevaeError, match="no cuda device") as info:
        fevae.load_run(trained_run[0], map_location="cuda")
    assert "corrupt" not in str(info.value) and "map_location='cpu'" in str(info.value)
    with pytest.raises(FevaeError, match="not a device"):
        fevae.load_run(trained_run[0], map_location="gpu9")


# --------------------------------------------------------------------------- 10. API inputs
@pytest.fixture(scope="module")
def api_run(trained_run):
    import fevae

    return fevae.load_run(trained_run[0])


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (3, 28, 28), dtype=np.uint8)


def test_10_half_precision_tensors_are_scored_as_float32(api_run, pixels):
    x = torch.from_numpy(pixels).float() / 255
    want = api_run.score(x)
    for dtype in (torch.float16, torch.bfloat16):
        half = x.to(dtype)
        got = api_run.score(half)
        np.testing.assert_allclose(got.to_numpy(), api_run.score(half.float()).to_numpy())
        assert got.shape == want.shape


@pytest.mark.parametrize("kind", ["sparse", "meta", "complex", "masked", "complex_numpy"])
def test_10_unsupported_kinds_of_input_are_one_clear_error(api_run, pixels, kind):
    x = torch.from_numpy(pixels).float() / 255
    images = {"sparse": lambda: x.to_sparse(), "meta": lambda: x.to("meta"), "complex": lambda: x.to(torch.complex64),
              "masked": lambda: np.ma.masked_array(pixels, mask=pixels > 100), "complex_numpy": lambda: pixels.astype(np.complex64)}[kind]()
    with pytest.raises(FevaeError) as info:
        api_run.score(images)
    assert kind.split("_")[0] in str(info.value) and " — " in str(info.value)


def test_10_one_string_is_one_override(api_run, pixels):
    as_list = api_run.score(pixels, overrides=["eval.n_samples=5"])
    as_string = api_run.score(pixels, overrides="eval.n_samples=5")
    np.testing.assert_array_equal(as_string.to_numpy(), as_list.to_numpy())
    assert not np.array_equal(as_string.to_numpy(), api_run.score(pixels).to_numpy())


def test_10_palette_pngs_grey_is_grayscale_coloured_is_refused_like_rgb(tmp_path, pixels):
    from PIL import Image

    grey = Image.fromarray(pixels[0] // 16 * 16).convert("P")  # a palette of greys
    grey.save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_images(tmp_path / "grey.png")[0], pixels[0] // 16 * 16)
    colour = Image.fromarray(np.stack([pixels[0], pixels[1], pixels[2]], axis=-1), "RGB").convert("P")
    colour.save(tmp_path / "colour.png")
    Image.fromarray(np.stack([pixels[0]] * 3, axis=-1), "RGB").save(tmp_path / "rgb.png")
    for name in ("colour.png", "rgb.png"):
        with pytest.raises(FevaeError, match="grayscale"):
            read_images(tmp_path / name)
    assert read_images(tmp_path / "colour.png", image_shape=(3, 28, 28)).shape == (1, 28, 28, 3)
