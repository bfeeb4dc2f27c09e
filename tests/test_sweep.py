"""Hydra multirun through the CLI: a 2x2 n x C sweep reuses trained models and writes its summary."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_smoke_sweep_reuses_models_summarises_and_survives_a_failed_job(tmp_path, synthetic_data_dir):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fevae.train", "-m", "+experiment=v2_gaussian", *TINY,
           f"paths.data_dir={synthetic_data_dir}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}",
           "fe.n=16,4000", "fe.C=2,3"]  # fe.n=4000 is larger than the training set: those jobs fail
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert all(log.count(f"{m}: training (hash") == 1 for m in ("vae", "background", "jigsaw"))
    assert log.count("reused trained model") == 3  # every model in the second good job (bad fe.n fails before)
    with (sweep / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    ok = [r for r in rows if not r["error"]]
    failed = [r for r in rows if r["error"]]
    assert {(r["fe.n"], r["fe.C"]) for r in ok} == {("16", "2"), ("16", "3")}
    assert all("fe.n=4000 is larger than the training set" in r["error"] for r in failed) and len(failed) == 2
    assert all(0 <= float(r["ood/mnist/APO/fevae/auroc"]) <= 1 for r in ok)
    assert (sweep / "summary.md").exists() and (sweep / "heatmap_auroc_n_C.png").exists()
    cost = json.loads((sweep / "sweep_cost.json").read_text())  # the sweep's own cost against its first job
    times = {r["job"]: float(r["wall_time_s"]) for r in ok}
    assert cost["first_job"] == 0 and cost["first_job_s"] == times["0"] and cost["jobs"] == 4 and cost["jobs_timed"] == 2
    assert cost["ratio"] == pytest.approx(sum(times.values()) / times["0"], abs=1e-3)
    assert f"{cost['ratio']:.2f}×" in (sweep / "summary.md").read_text()
    # the sweep's TensorBoard view: one run per OOD set (one colour each), the job as the step
    board = scalars_of(sweep / "tensorboard")
    assert set(board) >= {"mnist", "mnist_saltpepper"} and "fashionmnist" not in board
    metrics = {job: json.loads((sweep / str(job) / "metrics.json").read_text()) for job in (0, 1)}
    got = board["mnist"]["test/auroc/APO/fevae"]
    assert [step for step, _ in got] == [0, 1]  # the failed jobs 2 and 3 are left out
    assert [v for _, v in got] == pytest.approx([metrics[j]["ood"]["mnist"]["APO"]["fevae"]["auroc"] for j in (0, 1)], abs=1e-6)
    assert "tensorboard --logdir" in (sweep / "summary.md").read_text()


def synthetic_sweep(sweep, overrides: list[list[str]], failed=frozenset()):
    """Job folders as a sweep leaves them, without training: each job's overrides, a metrics.json with AUROCs on two
    OOD sets (mnist, noise) but for the ``failed`` jobs, and the VAE's separation curves of mnist (3 epochs)."""
    from torch.utils.tensorboard import SummaryWriter

    for job, job_overrides in enumerate(overrides):
        folder = sweep / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in job_overrides))
        if job in failed:
            continue
        block = lambda a: {"APO": {"fevae": {"auroc": a}}, "PR": {"fevae": {"auroc": a - 0.1}}, "other": {"iwae": {"auroc": a - 0.2}}}  # noqa: E731
        (folder / "metrics.json").write_text(json.dumps({"ood": {"mnist": block(0.9 + job / 100), "noise": block(0.5)},
                                                         "ood_val": {"mnist": block(0.8 + job / 100), "noise": block(0.4)}}))
        with SummaryWriter(log_dir=str(folder / "tensorboard" / "vae")) as writer:
            for epoch in range(3):
                writer.add_scalar("val/separation/auroc/mnist", 0.5 + epoch / 10 + job / 100, global_step=epoch)
                writer.add_scalar("val/loss", 1.0, global_step=epoch)
    return sweep


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_a_2x2_sweeps_view_in_a_headless_browser_has_one_colour_per_set_and_named_job_curves(tmp_path):
    """The view of a 2 x 2 sweep (fe.n x fe.C, synthetic job folders) opened in Chromium by scripts/tensorboard_check.py
    --sweep-board: runs are the sets, one step per job, and on the Custom Scalars page one colour per set in every
    chart and job and separation curves named job0-fe.C=5-fe.n=256 ... (what docs/sweeps.md's screenshot shows)."""
    from fevae.outputs.sweep import collect_jobs
    from fevae.outputs.sweep_board import write_sweep_board

    grid = [[f"fe.n={n}", f"fe.C={c}"] for n in (256, 512) for c in (5, 10)]
    sweep = synthetic_sweep(tmp_path / "sweep", grid)
    board = write_sweep_board(sweep, collect_jobs(sweep))
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "tensorboard_check.py"), str(board), "--sweep-board", "4",
                           "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout and (out / "custom_scalars.png").stat().st_size > 10_000
    found = json.loads((out / "check.json").read_text())
    assert sorted(found["colours"]) == ["mnist", "noise"] and found["colours"]["mnist"] != found["colours"]["noise"]
    assert found["job_labels"] == ["job0-fe.C=5-fe.n=256", "job1-fe.C=10-fe.n=256", "job2-fe.C=5-fe.n=512", "job3-fe.C=10-fe.n=512"]


def scalars_of(board):
    """``{run: {tag: [(step, value)]}}`` of a TensorBoard folder whose runs are its subfolders."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for run in sorted(p for p in board.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        out[run.name] = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return out


def test_sweep_board_runs_are_sets_steps_are_jobs_and_separation_curves_keep_the_set(tmp_path):
    """Synthetic job folders (no training): AUROCs by job, the jobs' separation curves, the Custom Scalars layout."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fevae.outputs.sweep import collect_jobs
    from fevae.outputs.sweep_board import job_labels, write_sweep_board

    sweep = synthetic_sweep(tmp_path / "sweep", [["fe.C=2", "seed=1"], ["fe.C=3", "seed=1"], ["fe.C=4", "seed=1"]], failed={2})
    jobs = collect_jobs(sweep)
    assert job_labels(jobs) == {0: "job0-fe.C=2", 1: "job1-fe.C=3", 2: "job2-fe.C=4"}  # seed does not vary: not in the label
    board = write_sweep_board(sweep, jobs)
    runs = scalars_of(board)
    assert sorted(runs) == ["jobs", "mnist", "noise"]
    assert runs["mnist"]["test/auroc/APO/fevae"] == [(0, pytest.approx(0.9)), (1, pytest.approx(0.91))]
    assert runs["noise"]["val/auroc/other/iwae"] == [(0, pytest.approx(0.2)), (1, pytest.approx(0.2))]
    assert runs["mnist"]["separation/vae/job1-fe.C=3"] == [(e, pytest.approx(0.51 + e / 10)) for e in range(3)]
    assert not any(tag.startswith("separation/") for tag in runs["noise"])  # no curve of that set was logged
    acc = EventAccumulator(str(board / "jobs"))
    acc.Reload()
    text = acc.Tensors("sweep/jobs/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| 2 | `job2-fe.C=4` |" in text and "no: no metrics.json" in text
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata as cs_metadata

    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors(cs_metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["APO fevae"] == ["^val/auroc/APO/fevae$", "^test/auroc/APO/fevae$"] and charts["vae"] == ["^separation/vae/"]
    assert list(charts)[:3] == ["PR fevae", "APO fevae", "other iwae"]
    assert write_sweep_board(sweep, jobs) == board  # rewritten, not appended to
    assert scalars_of(board)["mnist"]["test/auroc/APO/fevae"] == runs["mnist"]["test/auroc/APO/fevae"]
