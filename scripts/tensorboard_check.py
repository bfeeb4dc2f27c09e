#!/usr/bin/env python3
"""Check a run's TensorBoard dashboards as a user sees them: in a real (headless) browser.

    python scripts/tensorboard_check.py RUN_DIR [--out outputs/tensorboard_check] [--tag APO/log_p_fevae]

Starts ``tensorboard --logdir RUN_DIR`` on a free port, then

1. asks TensorBoard's HTTP API what it serves: the ``eval`` run has every evaluation set as a step
   of ``--tag`` (one chart), each ``eval/<set>`` run has the same tag with the same bins, the
   ``summary`` run has the figures as images (``--figure``), the text summary and the HParams
   session (the run's overrides and its validation and test AUROCs; ``--sessions N``: a sweep folder's
   N jobs, one row each), no scalar chart but the training curves and the HParams metrics
   (which sort after them), and, when the trainings logged them, one ``<model>/separation/<set>`` run
   per evaluation set with the same histogram tag and the ``val/separation/auroc/<set>`` curves;
2. opens the Histograms, Images, Text, Scalars and HParams pages in headless Chromium (Debian's
   ``chromium``, driven over the DevTools protocol with the standard library only) and asserts
   what is drawn: the ``--tag`` chart of the ``eval`` run with one histogram per set and its title
   naming the sets, the figure's image, the text summary's tables, the training curves first on
   the Scalars page;
3. saves a screenshot of each page under ``--out`` (``histograms.png``, ``images.png``,
   ``text.png``, ``scalars.png``, ``hparams.png``) and ``check.json`` (what was found), and stops TensorBoard and
   the browser.

``--sweep-board JOBS`` checks a sweep's own view instead (``RUN_DIR`` = ``<sweep>/tensorboard``,
:func:`check_sweep_board`): runs are the OOD sets, one step per job, and on the Custom Scalars page one colour
per set in every chart and job, the separation curves named by the jobs' labels (``custom_scalars.png``).

Exit status 0 when every check passes, 1 otherwise (each failed check is printed), 2 when
chromium or TensorBoard cannot be started.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

#: the pages checked: (name, URL fragment)
PAGES = (("histograms", "#histograms"), ("images", "#images"), ("text", "#text"), ("scalars", "#scalars"), ("hparams", "#hparams"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data: dict | None = None, timeout: float = 30):
    body = None if data is None else json.dumps(data).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if data is not None:
        headers["X-TensorBoard-Feature-Flags"] = "{}"
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def wait_for(predicate, timeout: float, every: float = 0.5, what: str = ""):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # not up yet
            last_error = e
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


@contextmanager
def process(cmd: list[str], log: Path):
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------ a minimal DevTools-protocol client
class DevTools:
    """Just enough of a WebSocket client (RFC 6455, text frames) to drive one Chromium page."""

    def __init__(self, ws_url: str, timeout: float = 60):
        u = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self.next_id = 0

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            buf += chunk
        return buf

    def _send(self, text: str) -> None:
        payload = text.encode()
        header = bytes([0x81])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            mask = self._recv_exact(4) if b1 & 0x80 else None
            data = self._recv_exact(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 8:
                raise ConnectionError("DevTools closed the connection")
            if opcode in (9, 10):  # ping / pong: not part of a message
                continue
            message += data
            if b0 & 0x80:
                return message.decode()

    def call(self, method: str, **params):
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.sock.close()


#: JavaScript: every element of the page, shadow roots included (TensorBoard's dashboards are web components)
DEEP = """
const deep = (root = document, out = []) => {
  for (const el of root.querySelectorAll('*')) { out.push(el); if (el.shadowRoot) deep(el.shadowRoot, out); }
  return out;
};
const text = (el) => { let t = el.textContent || ''; if (el.shadowRoot) for (const c of el.shadowRoot.children) t += ' ' + text(c); return t; };
"""

JS_HISTOGRAMS = "(() => {" + DEEP + """
return deep().filter(e => e.tagName === 'TF-HISTOGRAM-LOADER').map(e => {
  const vz = deep(e.shadowRoot || e).find(x => x.tagName === 'VZ-HISTOGRAM-TIMESERIES');
  const series = vz ? deep(vz.shadowRoot || vz).filter(x => x.tagName.toLowerCase() === 'path' && (x.getAttribute('d') || '').length > 20 &&
                                                          (x.closest('g.histogram') || /histogram/.test(x.parentNode.getAttribute('class') || ''))).length : 0;
  return {run: e.run, tag: e.tag, title: (e.tagMetadata || {}).displayName || '', text: text(e).replace(/\\s+/g, ' ').trim().slice(0, 400),
          series: series, vz: !!vz};
});
})()
"""

JS_IMAGES = "(() => {" + DEEP + """
return deep().filter(e => e.tagName === 'TF-IMAGE-LOADER').map(e => {
  const img = deep(e.shadowRoot || e).find(x => x.tagName === 'IMG');
  return {run: e.run, tag: e.tag, loaded: !!(img && img.complete && img.naturalWidth > 0), width: img ? img.naturalWidth : 0};
});
})()
"""

JS_TEXT = "(() => {" + DEEP + """
return deep().filter(e => e.tagName === 'TF-TEXT-LOADER').map(e => ({run: e.run, tag: e.tag,
  tables: deep(e.shadowRoot || e).filter(x => x.tagName === 'TABLE').length,
  headings: deep(e.shadowRoot || e).filter(x => /^H[1-4]$/.test(x.tagName)).map(x => x.textContent.trim())}));
})()
"""

JS_SCALARS = "(() => {" + DEEP + """
const dash = deep().find(e => e.tagName === 'TF-SCALAR-DASHBOARD');  // other dashboards stay in the page, hidden
if (!dash) return null;
const inside = deep(dash.shadowRoot || dash);
return {groups: inside.filter(e => e.tagName === 'TF-CATEGORY-PAGINATED-VIEW')
                      .map(e => (e.category && e.category.name) || '').filter(n => n),
        cards: inside.filter(e => e.tagName === 'TF-SCALAR-CARD').map(e => e.tag)};
})()
"""


class Checks:
    """``expect(ok, message)``: prints each check as it is made and keeps the failed ones in :attr:`failures`."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, ok: bool, message: str) -> None:
        print(("ok    " if ok else "FAIL  ") + message, flush=True)
        if not ok:
            self.failures.append(message)


@contextmanager
def tensorboard(logdir: Path, out: Path, timeout: float):
    """``tensorboard --logdir <logdir>`` on a free port, once it answers: yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tb_cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
              "--load_fast", "false", "--reload_interval", "0"]
    with process(tb_cmd, out / "tensorboard.log") as tb:
        wait_for(lambda: tb.poll() is None and http_json(f"{base}/data/runs") is not None, timeout, what="TensorBoard to answer")
        yield base


@contextmanager
def devtools(out: Path, size: tuple[int, int], timeout: float, chromium: str):
    """Headless Chromium with a fresh profile, driven over its DevTools protocol: yields a :class:`DevTools` on its page."""
    dt_port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        browser_cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                       "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                       f"--remote-debugging-port={dt_port}", "--remote-allow-origins=*", "about:blank"]
        with process(browser_cmd, out / "chromium.log"):
            targets = wait_for(lambda: [t for t in http_json(f"http://127.0.0.1:{dt_port}/json/list") if t.get("type") == "page"],
                               timeout, what="chromium's DevTools")
            dev = DevTools(targets[0]["webSocketDebuggerUrl"], timeout=timeout)
            try:
                dev.call("Page.enable")
                dev.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
                yield dev
            finally:
                dev.close()


def curves_first(groups: list[str], points: dict[str, int]) -> bool:
    """True when every group of training curves (``epoch``, ``train``, ``val``, or any group whose every tag has
    more than one point) comes before every group of one-point charts. ``points``: tag -> most points in a run."""
    def is_curve(group: str) -> bool:
        tags = [t for t in points if t.split("/", 1)[0] == group]
        return group in ("epoch", "train", "val") or bool(tags) and all(points[t] > 1 for t in tags)

    kinds = [is_curve(g) for g in groups]
    return bool(kinds) and kinds[0] and all(kinds[i] or not any(kinds[i:]) for i in range(len(kinds)))


JS_CUSTOM_SCALARS = "(() => {" + DEEP + """
const dash = deep().find(e => e.tagName === 'TF-CUSTOM-SCALAR-DASHBOARD');
if (!dash) return null;
return deep(dash.shadowRoot || dash).filter(e => e.tagName === 'TF-CUSTOM-SCALAR-MULTI-LINE-CHART-CARD').map(card => {
  const chart = deep(card.shadowRoot || card).find(e => e.tagName === 'VZ-LINE-CHART2');
  const scale = chart && chart.colorScale && chart.colorScale.scale ? chart.colorScale : null;
  const drawn = chart ? deep(chart.shadowRoot || chart).filter(x => x.tagName.toLowerCase() === 'path' && (x.getAttribute('d') || '').length > 10
                                                                  && (x.getAttribute('stroke') || 'none') !== 'none').length : 0;
  return {title: card.title, drawn: drawn, series: (card._seriesNames || []).map(n => [n, scale ? scale.scale(n) : null])};
});
})()
"""


def check_sweep_board(board: Path, out: Path, jobs: int, timeout: float, chromium: str,
                      size: tuple[int, int] = (1400, 1000)) -> tuple[list[str], dict]:
    """A sweep's own view (``<sweep>/tensorboard``, :mod:`fevae.outputs.sweep_board`) as a user opens it: runs are the
    OOD sets (plus ``jobs``), every ``test/`` AUROC chart has one step per job, and on the Custom Scalars page each
    set keeps one colour in every chart and across the ``jobs`` jobs' lines, each colour a different set, and the
    separation curves are named by the jobs' labels (``job<k>-...``); screenshot ``custom_scalars.png``."""
    expect = Checks()
    failures, found = expect.failures, {}

    with tensorboard(board, out, timeout) as base:
        runs = http_json(f"{base}/data/runs")
        sets = sorted(r for r in runs if r != "jobs")
        found["runs"] = runs
        expect("jobs" in runs and len(sets) >= 2, f"runs: the jobs table and one run per OOD set ({runs})")
        scalars = http_json(f"{base}/data/plugin/scalars/tags")
        steps = {(r, t): sorted(e[1] for e in http_json(f"{base}/data/plugin/scalars/scalars?" + urllib.parse.urlencode({"run": r, "tag": t})))
                 for r in sets for t in scalars.get(r, {}) if t.startswith("test/auroc/")}
        expect(bool(steps) and all(v == list(range(jobs)) for v in steps.values()),
               f"every test/auroc chart of every set: one step per job 0..{jobs - 1} ({len(steps)} charts)")
        layout = http_json(f"{base}/data/plugin/custom_scalars/layout")
        charts = [c["title"] for cat in layout.get("category", []) for c in cat.get("chart", [])]
        expect(len(charts) >= 2, f"a Custom Scalars layout ({len(charts)} charts)")
        with devtools(out, size, timeout, chromium) as dev:
            dev.call("Page.navigate", url=f"{base}/#custom_scalars")

            def coloured():
                cards = dev.evaluate(JS_CUSTOM_SCALARS) or []
                ready = len(cards) >= len(charts) and all(c["drawn"] and c["series"] and all(col for _, col in c["series"]) for c in cards)
                return cards if ready else None
            try:
                cards = wait_for(coloured, timeout, every=1.0, what="the Custom Scalars charts")
            except TimeoutError:
                cards = dev.evaluate(JS_CUSTOM_SCALARS) or []
            found["custom_scalar_cards"] = cards
            expect(len(cards) == len(charts) and all(c["drawn"] for c in cards),
                   f"Custom Scalars page: every chart of the layout drawn ({sum(bool(c['drawn']) for c in cards)} of {len(charts)})")
            colours: dict[str, set[str]] = {}
            for card in cards:
                for name, colour in card["series"]:
                    colours.setdefault(name.rsplit(" (", 1)[-1].rstrip(")"), set()).add(colour)
            found["colours"] = {k: sorted(v) for k, v in colours.items()}
            expect(sorted(colours) == sets, f"Custom Scalars page: the lines belong to the sets {sorted(colours)}")
            expect(all(len(v) == 1 for v in colours.values()) and len({next(iter(v)) for v in colours.values()}) == len(colours),
                   f"Custom Scalars page: one colour per set in every chart and job, a different one per set ({found['colours']})")
            labels = {name.split("/")[2].rsplit(" (", 1)[0] for c in cards for name, _ in c["series"] if name.startswith("separation/")}
            found["job_labels"] = sorted(labels)
            expect(len(labels) == jobs and all(any(lb.startswith(f"job{k}") for lb in labels) for k in range(jobs)),
                   f"Custom Scalars page: the separation curves are named by the jobs' labels ({sorted(labels)})")
            time.sleep(1)
            dev.screenshot(out / "custom_scalars.png")
            print(f"      screenshot {out / 'custom_scalars.png'}", flush=True)
    return failures, found


def check(run_dir: Path, out: Path, tag: str, figure: str, timeout: float, chromium: str,
          tag_filter: str = "", size: tuple[int, int] = (1400, 1000), sessions: int = 1,
          pages: tuple[str, ...] = tuple(name for name, _ in PAGES)) -> tuple[list[str], dict]:
    expect = Checks()
    failures, found = expect.failures, {}

    with tensorboard(run_dir, out, timeout) as base:
        # ---- 1. what TensorBoard serves
        hist_tags = wait_for(lambda: (lambda t: t if any(tag in v for v in t.values()) else None)(
            http_json(f"{base}/data/plugin/histograms/tags")), timeout, what=f"histogram tag {tag}")
        runs = http_json(f"{base}/data/runs")
        found["runs"] = runs
        eval_run = next((r for r in runs if r == "eval" or r.endswith("/eval")), None)
        expect(eval_run is not None, f"an eval run among {runs}")
        if eval_run is None:
            return failures, found
        prefix = eval_run[: -len("eval")]
        set_runs = sorted(r for r in runs if r.startswith(eval_run + "/"))
        sets = [r[len(eval_run) + 1:] for r in set_runs]
        found["sets"] = sets
        expect(len(sets) >= 2, f"one eval/<set> run per evaluation set: {sets}")
        events = http_json(f"{base}/data/plugin/histograms/histograms?" + urllib.parse.urlencode({"run": eval_run, "tag": tag}))
        expect(len(events) == len(sets), f"{eval_run} {tag}: one step per set ({len(events)} steps, {len(sets)} sets)")
        meta = hist_tags[eval_run][tag]
        found["title"] = meta.get("displayName")
        expect(all(s in meta.get("displayName", "") for s in sets), f"the chart's title names every set: {meta.get('displayName')!r}")
        edges = {tuple(tuple(b[:2]) for b in events[0][2])} if events else set()
        for r in set_runs:
            expect(tag in hist_tags.get(r, {}), f"{r} has {tag}")
            ev = http_json(f"{base}/data/plugin/histograms/histograms?" + urllib.parse.urlencode({"run": r, "tag": tag}))
            edges.add(tuple(tuple(b[:2]) for b in ev[0][2]))
        expect(len(edges) == 1, f"{tag}: the same bins in every set's chart ({len(edges)} distinct binnings)")
        # separation during training (fevae/monitor.py): <model>/separation/<set> runs, one per set
        separation = {model: sorted(r for r in runs if r.startswith(f"{prefix}{model}/separation/")) for model in ("vae", "jigsaw")}
        found["separation"] = separation
        if any(separation.values()):
            for model, model_runs in separation.items():
                expect(len(model_runs) == len(sets), f"{model}: one separation/<set> run per evaluation set ({len(model_runs)} runs, {len(sets)} sets)")
                stags = [set(t for t in hist_tags.get(r, {}) if t.startswith("separation/")) for r in model_runs]
                expect(bool(stags) and all(t == stags[0] and len(t) == 1 for t in stags),
                       f"{model}: every separation run has the same separation/ histogram tag ({stags})")
            auroc = [t for r, tags in http_json(f"{base}/data/plugin/scalars/tags").items() for t in tags if t.startswith("val/separation/auroc/")]
            expect(bool(auroc), "the separation AUROC curves (val/separation/auroc/<set>) are scalars of the trainings")
        summary_run = prefix + "summary"
        images = http_json(f"{base}/data/plugin/images/tags")
        expect(f"figures/{figure}" in images.get(summary_run, {}), f"{summary_run} has the image figures/{figure}")
        text = http_json(f"{base}/data/plugin/text/tags")
        expect("summary/overview/text_summary" in text.get(summary_run, []), f"{summary_run} has the text summary")
        scalars = http_json(f"{base}/data/plugin/scalars/tags")
        metric_like = sorted(t for r, tags in scalars.items() for t in tags
                             if not r.endswith(("/vae", "/jigsaw", "/background")) and r not in ("vae", "jigsaw", "background")
                             and not t.startswith("z_final/"))
        expect(not metric_like, f"no scalar chart but the training curves and z_final/ (HParams): {metric_like[:5]}")
        points: dict[str, int] = {}
        for r, tags in scalars.items():
            for t in tags:
                n = len(http_json(f"{base}/data/plugin/scalars/scalars?" + urllib.parse.urlencode({"run": r, "tag": t})))
                points[t] = max(points.get(t, 0), n)
        found["scalar_points"] = points
        experiment = http_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        hparams = {h["name"] for h in experiment.get("hparamInfos", [])}
        metrics = {m["name"]["tag"] for m in experiment.get("metricInfos", [])}
        found["hparams"], found["hparams_metrics"] = sorted(hparams), sorted(metrics)
        expect("overrides" in hparams, f"HParams lists the overrides ({len(hparams)} columns)")
        expect(any("/ood_val/" in m for m in metrics) and any("/ood/" in m for m in metrics),
               f"HParams metrics: validation and test AUROCs ({len(metrics)})")

        groups = http_json(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 1000, "colParams": [],
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]}).get("sessionGroups", [])
        found["hparams_sessions"] = {g["name"]: g["hparams"].get("overrides") for g in groups}
        complete = [g for g in groups if "overrides" in g["hparams"]
                    and any("/ood_val/" in m["name"]["tag"] for m in g.get("metricValues", []))
                    and any("/ood/" in m["name"]["tag"] for m in g.get("metricValues", []))]
        expect(len(complete) == len(groups) >= max(1, sessions),
               f"HParams table: {len(groups)} row(s) (expected {max(1, sessions)}), {len(complete)} with overrides and "
               f"validation and test AUROCs: {found['hparams_sessions']}")

        # ---- 2. what the browser draws
        with devtools(out, size, timeout, chromium) as dev:
            for name, fragment in PAGES:
                if name not in pages:
                    continue
                if name == "histograms" and tag_filter:
                    fragment += "&tagFilter=" + urllib.parse.quote(tag_filter, safe="")
                dev.call("Page.navigate", url=f"{base}/{fragment}")
                if name == "histograms":
                    def drawn():
                        cards = dev.evaluate(JS_HISTOGRAMS) or []
                        card = next((c for c in cards if c["run"] == eval_run and c["tag"] == tag), None)
                        # wait for every eval/<set> chart too: they load after the eval chart (CI saw 2 of 3)
                        shown = {c["run"] for c in cards if c["tag"] == tag and c["series"] >= 1}
                        done = card and card["series"] >= len(sets) and set(set_runs) <= shown
                        return (cards, card) if done else None
                    try:
                        cards, card = wait_for(drawn, timeout, every=1.0, what=f"the {eval_run} {tag} chart")
                    except TimeoutError as e:
                        cards = dev.evaluate(JS_HISTOGRAMS) or []
                        card = next((c for c in cards if c["run"] == eval_run and c["tag"] == tag
                                     and c["series"] >= len(sets)), None)
                        print(f"       {e}")
                    found["histogram_cards"] = cards
                    expect(card is not None, f"Histograms page: the {tag} chart of run {eval_run} shows "
                                             f"{card['series'] if card else 0} histograms, one per set ({len(sets)})")
                    expect(card is not None and all(s in card["title"] for s in sets),
                           f"Histograms page: that chart's title names {sets}")
                    per_set = {c["run"] for c in cards if c["tag"] == tag and c["run"] in set_runs and c["series"] >= 1}
                    expect(per_set == set(set_runs), f"Histograms page: {tag} of every eval/<set> run ({sorted(per_set)})")
                elif name == "images":
                    def shown():
                        imgs = dev.evaluate(JS_IMAGES) or []
                        return imgs if any(i["tag"] == f"figures/{figure}" and i["loaded"] for i in imgs) else None
                    try:
                        imgs = wait_for(shown, timeout, every=1.0, what=f"the image figures/{figure}")
                    except TimeoutError:
                        imgs = dev.evaluate(JS_IMAGES) or []
                    found["image_cards"] = imgs
                    expect(any(i["tag"] == f"figures/{figure}" and i["loaded"] for i in imgs),
                           f"Images page: figures/{figure} is displayed")
                elif name == "text":
                    def rendered():
                        cards = dev.evaluate(JS_TEXT) or []
                        card = next((c for c in cards if c["tag"] == "summary/overview/text_summary" and c["run"] == summary_run), None)
                        return card if card and card["tables"] else None
                    try:
                        card = wait_for(rendered, timeout, every=1.0, what="the text summary")
                    except TimeoutError:
                        card = None
                    found["text_tables"] = card["tables"] if card else 0
                    found["text_headings"] = card["headings"] if card else []
                    expect(card is not None and any("OOD detection metrics" in h for h in card["headings"]),
                           f"Text page: the summary with its tables ({found['text_tables']} tables)")
                elif name == "scalars":
                    try:
                        page = wait_for(lambda: (lambda v: v if v and v["groups"] and v["cards"] else None)(
                            dev.evaluate(JS_SCALARS)), timeout, every=1.0, what="the scalar charts")
                    except TimeoutError:
                        page = {"groups": [], "cards": []}
                    cats = page["groups"]
                    found["scalar_groups"], found["first_scalar_charts"] = cats, page["cards"][:8]
                    if any(g in ("epoch", "train", "val") for g in cats):
                        expect(curves_first(cats, points), f"Scalars page opens on the training curves, one-point "
                                                           f"charts after them: groups {cats}")
                    else:
                        print(f"skip  Scalars page: no training curves in this logdir (groups {cats})")
                    expect(not cats or cats[-1] == "z_final", f"Scalars page: the HParams metrics (z_final) come last: {cats}")
                else:
                    time.sleep(3)
                time.sleep(1)
                dev.screenshot(out / f"{name}.png")
                print(f"      screenshot {out / (name + '.png')}", flush=True)
    return failures, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (or any folder whose tensorboard/ runs to show)")
    parser.add_argument("--out", type=Path, default=Path("outputs/tensorboard_check"), help="where screenshots and check.json go")
    parser.add_argument("--tag", default="APO/log_p_fevae", help="the histogram that must show every set in one chart")
    parser.add_argument("--figure", default="fig1b_log_p_fevae", help="the figure the Images page must show")
    parser.add_argument("--filter", default="", help="a tag regex typed into the Histograms page's filter (screenshots)")
    parser.add_argument("--sessions", type=int, default=1, help="rows the HParams table must list (a sweep: its jobs)")
    parser.add_argument("--sweep-board", type=int, metavar="JOBS", default=0,
                        help="RUN_DIR is a sweep's own view (<sweep>/tensorboard) of JOBS jobs: check it instead (Custom Scalars)")
    parser.add_argument("--pages", default=",".join(name for name, _ in PAGES), help="the pages opened in the browser")
    parser.add_argument("--size", default="1400x1000", help="browser window WIDTHxHEIGHT")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for each thing")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    args = parser.parse_args(argv)
    if not shutil.which(args.chromium):
        print(f"error: {args.chromium} not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    if not args.sweep_board and not (args.run_dir / "tensorboard").is_dir() and not list(args.run_dir.glob("**/tensorboard")):
        print(f"error: no tensorboard/ folder under {args.run_dir}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        size = tuple(int(x) for x in args.size.lower().split("x"))
        if args.sweep_board:
            failures, found = check_sweep_board(args.run_dir, args.out, args.sweep_board, args.timeout, args.chromium, size)
        else:
            failures, found = check(args.run_dir, args.out, args.tag, args.figure, args.timeout, args.chromium, args.filter, size,
                                    args.sessions, tuple(args.pages.split(",")))
    except (TimeoutError, ConnectionError, OSError) as e:
        print(f"error: {e} (logs in {args.out})", file=sys.stderr)
        return 2
    (args.out / "check.json").write_text(json.dumps({"failures": failures, **found}, indent=1, default=str) + "\n")
    print(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}; screenshots in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
