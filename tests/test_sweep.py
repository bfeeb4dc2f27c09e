"""Hydra multirun through the CLI: a 2x2 n x C sweep reuses trained models and writes its summary."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from pipeline import TINY

pytestmark = pytest.mark.slow


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
    from torch.utils.tensorboard import SummaryWriter

    from fevae.outputs.sweep import collect_jobs
    from fevae.outputs.sweep_board import job_labels, write_sweep_board

    sweep = tmp_path / "sweep"
    for job, (c, ok) in enumerate([(2, True), (3, True), (4, False)]):
        folder = sweep / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- fe.C={c}\n- seed=1\n")
        if not ok:
            continue
        block = lambda a: {"APO": {"fevae": {"auroc": a}}, "PR": {"fevae": {"auroc": a - 0.1}}, "other": {"iwae": {"auroc": a - 0.2}}}  # noqa: E731
        (folder / "metrics.json").write_text(json.dumps({"ood": {"mnist": block(0.9 + job / 100), "noise": block(0.5)},
                                                         "ood_val": {"mnist": block(0.8 + job / 100), "noise": block(0.4)}}))
        with SummaryWriter(log_dir=str(folder / "tensorboard" / "vae")) as writer:
            for epoch in range(3):
                writer.add_scalar("val/separation/auroc/mnist", 0.5 + epoch / 10 + job / 100, global_step=epoch)
                writer.add_scalar("val/loss", 1.0, global_step=epoch)
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
