"""The sweep's own TensorBoard view, ``<sweep dir>/tensorboard/``: ``tensorboard --logdir <sweep dir>/tensorboard``.

Each job's folder keeps its full dashboard (:mod:`fevae.outputs.dashboard`); opened together they give one run per
job × set, a colour per run (so a set's colour changes from job to job) and names too long to read. This view
turns it around: **one run per evaluation set** (its name is the set's: one colour per set across every chart) and
the **job as the step or the tag prefix**:

* ``test/auroc/<scheme>/<score>`` and ``val/auroc/<scheme>/<score>`` — a score's AUROC per OOD set (one line each)
  against the job number (the step); the ``jobs`` run's text ``sweep/jobs`` says which overrides each job ran;
* ``separation/<model>/<job label>`` — each job's separation curve during training (the AUROC of the validation
  images against the set, per epoch: ``val/separation/auroc/<set>`` of the job's ``vae``/``jigsaw`` runs), so
  a set's curves of every job share its colour; job labels are ``job<k>-<overrides that vary>``
  (``job3-fe.C=10``);
* a Custom Scalars layout (``jobs`` run): one chart per score with its validation and test AUROC, and one
  per model with every job's separation curves (its tags are anchored regular expressions: ``fe`` is not ``fevae``).

Failed jobs (no ``metrics.json``) are left out and named in ``sweep/jobs``. Nothing here reads a score file:
the numbers are the jobs' ``metrics.json`` and training event files, so the view costs seconds.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fevae.metrics.ood import SCHEMES, order_sets, order_score_ids
from fevae.outputs.dashboard import set_dir

__all__ = ["BOARD_DIR", "JOBS_RUN", "job_labels", "write_sweep_board"]

#: the view's folder in the sweep folder
BOARD_DIR = "tensorboard"
#: the run holding the jobs' text table and the Custom Scalars layout
JOBS_RUN = "jobs"
#: the training runs whose separation curves are copied, and the tag prefix of those curves in them
MODELS = ("vae", "jigsaw")
SEPARATION_TAG = "val/separation/auroc/"


def job_labels(jobs: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """``{job: "job<k>-<key>=<value>-..."}`` naming each job by the overrides whose value differs between jobs
    (``job<k>`` alone when none does); characters TensorBoard tags do not keep are replaced by ``_``."""
    parsed = {int(j["job"]): dict(o.lstrip("+~").partition("=")[::2] for o in str(j.get("overrides") or "").split()) for j in jobs}
    keys = sorted({k for o in parsed.values() for k in o})
    varying = [k for k in keys if len({o.get(k) for o in parsed.values()}) > 1]
    out = {}
    for job, overrides in parsed.items():
        parts = [f"{k}={overrides[k]}" for k in varying if k in overrides]
        out[job] = re.sub(r"[^A-Za-z0-9_.=,-]+", "_", "-".join([f"job{job}", *parts]))
    return out


def _separation_curves(job_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{model: {set: [(epoch step, auroc), ...]}}`` from the job's training event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader's "No path found after <file>" notices
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for model in MODELS:
        run = job_dir / "tensorboard" / model
        if not run.is_dir():
            continue
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith(SEPARATION_TAG):
                curves.setdefault(model, {})[tag[len(SEPARATION_TAG):]] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return curves


def write_sweep_board(sweep_dir: str | Path, jobs: Sequence[Mapping[str, Any]]) -> Path | None:
    """Write the view (module docstring) from ``jobs`` (:func:`fevae.outputs.sweep.collect_jobs`'s rows) into
    ``<sweep_dir>/tensorboard/``, replacing an earlier one; None when no job finished."""
    from torch.utils.tensorboard import SummaryWriter

    sweep_dir = Path(sweep_dir)
    finished = {int(j["job"]): json.loads((sweep_dir / str(j["job"]) / "metrics.json").read_text())
                for j in jobs if (sweep_dir / str(j["job"]) / "metrics.json").is_file()}
    if not finished:
        return None
    labels = job_labels(jobs)
    board = sweep_dir / BOARD_DIR
    if board.is_dir():
        shutil.rmtree(board)
    sets = order_sets({s for m in finished.values() for part in ("ood", "ood_val") for s in m.get(part, {})})
    writers = {s: SummaryWriter(log_dir=str(board / set_dir(s))) for s in sets}
    scores: dict[tuple[str, str], None] = {}
    separation: dict[str, None] = {}
    try:
        for job, metrics in sorted(finished.items()):
            for part, block in (("test", metrics.get("ood", {})), ("val", metrics.get("ood_val", {}))):
                for s, per_scheme in block.items():
                    for scheme in SCHEMES:
                        for sid, values in per_scheme.get(scheme, {}).items():
                            scores[(scheme, sid)] = None
                            writers[s].add_scalar(f"{part}/auroc/{scheme}/{sid}", values["auroc"], global_step=job)
            for model, per_set in _separation_curves(sweep_dir / str(job)).items():
                separation[model] = None
                for s, points in per_set.items():
                    if s in writers:
                        for step, value in points:
                            writers[s].add_scalar(f"separation/{model}/{labels[job]}", value, global_step=step)
        jobs_writer = SummaryWriter(log_dir=str(board / JOBS_RUN))
        try:
            jobs_writer.add_text("sweep/jobs", _jobs_markdown(jobs, labels, finished), global_step=0)
            ids = order_score_ids({sid for _, sid in scores})  # once, not per sort key
            ordered = sorted(scores, key=lambda k: (SCHEMES.index(k[0]), ids.index(k[1])))
            layout = {
                "AUROC per job (step = job; one line per OOD set)": {
                    f"{scheme} {sid}": ["Multiline", [f"^{re.escape(f'{part}/auroc/{scheme}/{sid}')}$" for part in ("val", "test")]]
                    for scheme, sid in ordered},
                "separation during training (one line per job and set)": {
                    model: ["Multiline", [f"^separation/{model}/"]] for model in separation},
            }
            jobs_writer.add_custom_scalars({k: v for k, v in layout.items() if v})
        finally:
            jobs_writer.close()
    finally:
        for writer in writers.values():
            writer.close()
    return board


def _jobs_markdown(jobs: Sequence[Mapping[str, Any]], labels: Mapping[int, str], finished: Mapping[int, Any]) -> str:
    lines = ["Step k of the `test/` and `val/` AUROC charts is job k; the `separation/` curves are named by the job's label.", "",
             "| job | label | overrides | finished |", "|---:|---|---|---|"]
    for j in jobs:
        job = int(j["job"])
        lines.append(f"| {job} | `{labels[job]}` | {' '.join(f'`{o}`' for o in str(j.get('overrides') or '').split()) or '(none)'} | "
                     f"{'yes' if job in finished else 'no: ' + str(j.get('error') or 'no metrics.json')} |")
    return "\n".join(lines) + "\n"
