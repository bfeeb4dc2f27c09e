"""The benchmark of `make bench` (benchmarks/run.py) in --quick mode: untrained models, synthetic data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fevae.errors import FevaeError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the checkout, not of the installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.common import stage_times  # noqa: E402

NEW_TIMINGS = {"train_vae": 300.0, "train_jigsaw": 200.0, "fit_mixture": 90.0, "score": 80.0, "write_outputs": 3.0}
OLD_TIMINGS = {"train_vae": 1045.2, "train_jigsaw_and_fit_mixture": 123.3, "score": 88.4, "write_outputs": 2.8}


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_quick_bench_measures_every_section(synthetic_data_dir, tmp_path):
    timings = tmp_path / "timings.json"
    timings.write_text(json.dumps(NEW_TIMINGS))
    out = tmp_path / "bench" / "bench.json"
    env = {**os.environ, "FEVAE_DATA_DIR": str(synthetic_data_dir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--untrained", "--device", "cpu",
           "--override", "data.val_size=16", "--timings", str(timings), "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "p_FEVAE" in result.stdout and "predict agreement" in result.stdout  # the table
    bench = json.loads(out.read_text())

    assert bench["machine"]["device"] == "cpu" and bench["machine"]["torch_threads"] == 1
    assert bench["models"]["source"] == "untrained"

    t = bench["throughput"]
    assert positive(t["vae"]["images_per_s"]) and positive(t["fevae"]["images_per_s"])
    assert positive(t["ratio_fevae_to_vae"])
    r = t["ratio_spread"]  # per-round ratios of the interleaved repeats: median and min-max
    assert r["n"] == 2 and r["min"] <= t["ratio_fevae_to_vae"] == r["median"] <= r["max"]
    assert r["values"] == pytest.approx([f / v for f, v in zip(t["fevae"]["seconds_spread"]["values"], t["vae"]["seconds_spread"]["values"])])
    assert t["impossible"] == (r["max"] < 1) and (t["verdict"] == "IMPOSSIBLE (noise)") == t["impossible"]

    m = bench["mixture"]
    assert all(positive(m[k]) for k in ("torch_seconds", "sklearn_seconds", "ratio_torch_to_sklearn"))
    assert m["n_features"] == 2000 and m["max_abs_diff"] < 1e-6
    assert m["predict_agreement"] >= 0.99

    f = bench["fits"]  # every layer's mixture: sklearn as it comes, one BLAS thread each, side by side
    assert set(f["layers"]) == {"1", "2", "3", "4"} and f["n"] == 300 and f["repeats"] == 2
    assert f["identical_parallel_sequential"] is True  # the parallel fits are the same bits
    for name in ("sklearn", "sequential", "parallel"):
        assert positive(f[name]["seconds"]) and f[name]["seconds_spread"]["n"] == 2, name
    assert f["speedup_parallel"]["values"] == pytest.approx([a / b for a, b in zip(
        f["sklearn"]["seconds_spread"]["values"], f["parallel"]["seconds_spread"]["values"])])

    scores = bench["baselines"]["scores"]
    expected = {"fevae", "iwae", "iwae_alongside", "input_complexity", "png_over_iwae", "png_code_length", "jigsaw_loss", "likelihood_regret",
                "fevae_l2", "fevae_l3", "fevae_l4", "layers_alongside"}
    assert expected <= set(scores)
    assert scores["fevae"]["ratio_to_fevae"] == pytest.approx(1.0)
    for name, entry in scores.items():
        if "seconds_per_image" in entry:
            assert positive(entry["seconds_per_image"]) and positive(entry["ratio_to_fevae"]), name
        else:  # marginal cost of a superset of work: may come out negative by noise, and is then flagged
            assert math.isfinite(entry["marginal_seconds_per_image"]) and math.isfinite(entry["ratio_to_fevae"]), name
            assert entry["impossible"] == (entry["superset_ratio"]["max"] < 1), name
            assert {"whole_pass_difference", "whole_pass_ratio"} <= set(entry), name
    log_w = scores["iwae_alongside"]  # timed by its own stopwatch section inside the pass: a positive cost
    assert log_w["marginal_spread"]["min"] > 0 and log_w["superset_ratio"]["min"] > 1 and not log_w["impossible"]

    d = bench["detectors"]  # every configured detector, by the run's own cost mechanism
    names = {"PR/vae", "PR/fevae", "APO/fevae", "other/iwae", "other/input_complexity", "other/likelihood_regret",
             "other/likelihood_ratio", "APO/standardised_fevae", "PR/standardised_fevae", "other/dose"}
    assert names <= set(d["detectors"]) and d["repeats"] == 2 and d["extra_models"] == "untrained"
    for name, entry in d["detectors"].items():
        assert 0 < entry["min"] <= entry["median_s_per_image"] <= entry["max"], name
    assert d["detectors"]["other/likelihood_ratio"]["median_s_per_image"] > d["detectors"]["other/iwae"]["median_s_per_image"]

    p = bench["peak_memory"]
    assert len(p["per_S"]) >= 2
    for s, entry in p["per_S"].items():
        assert positive(entry[p["measure"]]) and entry["finite_fraction"] == 1.0, s
    assert positive(p["ratio_peak_max_to_min_S"])

    s = bench["stages"]
    assert s["available"] and s["seconds"] == NEW_TIMINGS
    assert s["total_seconds"] == pytest.approx(sum(NEW_TIMINGS.values()))
    assert sum(s["fraction"].values()) == pytest.approx(1.0)

    tr = bench["training"]  # per-model steps (plain vs channels-last) and the three models one after another vs side by side
    assert tr["rounds"] == 2 and tr["vae_steps"] == 2 and tr["jigsaw_steps"] == 25
    for key in ("vae plain", "vae channels-last", "jigsaw"):
        assert positive(tr["per_model"][key]["images_per_s"]["median"]), key
    assert tr["channels_last_speedup"]["values"] == pytest.approx([a / b for a, b in zip(
        tr["per_model"]["vae plain"]["seconds"]["values"], tr["per_model"]["vae channels-last"]["seconds"]["values"])])
    wall = tr["wall_seconds"]
    assert tr["side_by_side_speedup"]["values"] == pytest.approx([a / b for a, b in zip(
        wall["one after another"]["values"], wall["side by side"]["values"])])
    assert all(positive(v["median"]) for v in tr["peak_memory_mb"].values())

    assert bench["api"] == {"available": False, "reason": "no trained run"}  # --untrained: the API needs a run folder
    assert {r["section"] for r in bench["rows"]} == {"throughput", "mixture", "fits", "baselines", "detectors", "peak_memory", "training",
                                                     "api", "stages"}


def test_stage_times_reads_old_and_new_timings():
    new = stage_times(NEW_TIMINGS)
    assert new["format"] == "new" and list(new["seconds"]) == list(NEW_TIMINGS)
    old = stage_times(OLD_TIMINGS)
    assert old["format"].startswith("old") and "train_jigsaw_and_fit_mixture" in old["seconds"]
    assert old["fraction"]["train_vae"] == pytest.approx(1045.2 / sum(OLD_TIMINGS.values()))
    for bad in ({}, {"train_vae": -1.0}, {"train_vae": float("nan")}, {"other": "x"}):
        with pytest.raises(FevaeError):
            stage_times(bad)
    side = stage_times({"train_side_by_side": 600.0, "train_side_by_side/train_vae": 590.0, "train_side_by_side/train_jigsaw": 400.0,
                        "score": 150.0, "write_outputs": 10.0})
    assert side["total_seconds"] == 760.0  # the models' times ran inside the side-by-side stage: not added again
    assert side["fraction"]["train_side_by_side"] == pytest.approx(600 / 760)


def test_a_superset_faster_than_its_subset_beyond_the_spread_is_flagged_not_reported():
    from benchmarks.run import IMPOSSIBLE, format_table, paired_ratio, row, superset_check

    assert superset_check(paired_ratio([0.8, 0.85, 0.9], [1.0, 1.0, 1.0])) == {"impossible": True, "verdict": IMPOSSIBLE}
    assert superset_check(paired_ratio([0.9, 1.1], [1.0, 1.0]))["verdict"] == "within noise of 1"
    assert superset_check(paired_ratio([1.2, 1.3], [1.0, 1.0])) == {"impossible": False, "verdict": ""}
    r = paired_ratio([2.0, 3.0, 4.0], [1.0, 1.0, 2.0])
    assert (r["median"], r["min"], r["max"], r["n"]) == (2.0, 2.0, 3.0, 3)
    table = format_table([row("s", "x", 1.0, "s", r["median"], "", "", (r["min"], r["max"]))])
    assert "2.000x [2.000-3.000]" in table


def test_compile_section_times_eager_against_compiled_steps(monkeypatch):
    """``--sections compile`` (benchmarks/training.py): interleaved eager and compiled VAE step loops, the ratio per
    round. torch.compile is replaced by the identity here (compiling takes ~20 s): the arithmetic is what is tested."""
    import torch

    from benchmarks.run import row
    from benchmarks.training import compile_section
    from fevae.api import compose_config

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)
    cfg = compose_config("train", ["+experiment=v2_gaussian"])
    result, rows = compile_section(cfg, torch.rand(4, 1, 28, 28), 2, 3, row)
    assert len(compiled) == 1 and result["rounds"] == 3 and result["vae_steps"] == 2 and positive(result["compile_seconds"])
    assert sorted(result["images_per_s"]) == ["compiled", "eager"] and all(positive(v["median"]) for v in result["images_per_s"].values())
    ratio = result["eager_over_compiled"]
    assert len(ratio["values"]) == 3 and ratio["ratio_range"][0] <= ratio["ratio"] <= ratio["ratio_range"][1]
    assert [r["section"] for r in rows] == ["compile"] * 4 and rows[-1]["target"] == "> 1"
