"""Load on one server: N concurrent browser sessions with different interventions (not a test).

Starts ``streamlit run app.py`` (the offline default model unless ``--model tiny``), opens one
headless Chromium per session, and reruns the prompt lab by typing a new query each time:

1. one session alone: ``--solo`` reruns (latency baseline);
2. ``--sessions`` sessions at once, each with its own intervention (none, all in-context heads,
   random heads, ...), until the server has done ``--reruns`` reruns in all.

Reports latency percentiles (query typed -> new prediction shown), the server's resident memory
after 20 reruns and after all of them, and checks that every session saw its own numbers: a
sample of each session's shown predictions is recomputed with the library in this process.

    python benchmarks/bench_serve.py                       # default model, 3 sessions, 200 reruns
    python benchmarks/bench_serve.py --model tiny --reruns 60
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
MODES = ["none", "all in-context heads", "random heads (control)"]
KIND = "knockout"  # the Prompt lab's default intervention (its "How" select)
ADJ = ["wonderful", "dull", "moving", "boring", "funny", "slow", "superb", "tedious", "charming", "awful"]


def rss_mb(pid: int) -> float:
    """Resident memory of the server process and its children (MB)."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in out]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    from streamlit_server import start_server as start

    return start(ROOT, "tiny-llama" if model == "tiny" else None, tries=200)


class Session(threading.Thread):
    """One visitor: its own browser, its own intervention, a stream of new queries."""

    def __init__(self, url: str, index: int, mode: str, counter, stop_at: int, log: list):
        super().__init__(daemon=True)
        self.url, self.index, self.mode, self.counter, self.stop_at, self.log = url, index, mode, counter, stop_at, log
        self.ready = threading.Event()
        self.go = threading.Event()
        self.error = None

    def _texts(self, page):
        return tuple(page.locator("code", has_text="Prediction:").all_inner_texts())

    def _settle(self, page, old, want: int, timeout=300.0):
        """Wait for the rerun's new prediction; a new query whose rounded numbers equal the old ones is
        accepted after the app has been idle for 5 s (on an overloaded machine a run can take long)."""
        deadline = time.time() + timeout
        idle_since = None
        while time.time() < deadline:
            running = page.locator("[data-testid='stStatusWidgetRunningIcon']").count() > 0
            now = self._texts(page)
            if not running and len(now) == want and now != old:
                return now
            if running or len(now) != want:
                idle_since = None
            elif idle_since is None:
                idle_since = time.time()
            elif time.time() - idle_since > 5.0:
                return now
            page.wait_for_timeout(30)
        raise TimeoutError(f"session {self.index}: no new prediction after {timeout:.0f} s")

    def run(self):
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(self.url)
                page.locator("code", has_text="Prediction:").first.wait_for(timeout=300_000)
                want = 1
                if self.mode != "none":
                    old = self._texts(page)
                    page.get_by_text(self.mode, exact=True).click()
                    want = 2
                    self._settle(page, old, want)
                self.ready.set()
                self.go.wait()
                rng = random.Random(self.index)
                i = 0
                while True:
                    with self.counter["lock"]:
                        if self.counter["n"] >= self.stop_at:
                            break
                        self.counter["n"] += 1
                        n = self.counter["n"]
                    query = f"film {self.index}-{i}: {rng.choice(ADJ)} and {rng.choice(ADJ)}"
                    old = self._texts(page)
                    box = page.get_by_label("Query")
                    t0 = time.perf_counter()
                    box.fill(query)
                    box.press("Enter")
                    shown = self._settle(page, old, want)
                    dt = time.perf_counter() - t0
                    self.log.append({"session": self.index, "mode": self.mode, "n": n, "query": query,
                                     "seconds": dt, "shown": list(shown)})
                    self.counter["on_rerun"](n)
                    i += 1
                browser.close()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.ready.set()


def percentiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else xs * 99
    return {"n": len(xs), "p50": round(q[49], 3), "p90": round(q[89], 3), "p99": round(q[98], 3),
            "max": round(xs[-1], 3)}


def drive(url: str, pid: int, modes: list[str], reruns: int, counter: dict) -> list[dict]:
    log: list[dict] = []
    sessions = [Session(url, i, m, counter, reruns, log) for i, m in enumerate(modes)]
    for s in sessions:
        s.start()
    for s in sessions:
        s.ready.wait(timeout=600)
        if s.error:
            raise s.error
    for s in sessions:
        s.go.set()
    for s in sessions:
        s.join()
        if s.error:
            raise s.error
    return log


def expected_texts(entries: list[dict], model: str) -> list[tuple[dict, list[str]]]:
    """Recompute what each sampled rerun should have shown, with the library (no streamlit)."""
    from iclviz.analyses.evaluation import predict
    from iclviz.analyses.heads import APP_HEAD_RULE, control_heads, default_heads
    from iclviz.engine.interventions import Plan
    from iclviz.engine.models import load_model
    from iclviz.sharing import START_DEMOS
    from iclviz.testing import tiny_model

    lm = tiny_model("tiny-llama") if model == "tiny" else load_model()
    heads = default_heads(lm.name, lm.n_layers, lm.n_heads, APP_HEAD_RULE)  # the app's heads, not the CLI's
    words = ("foo", "bar")

    def text(pred):
        return (f"Prediction: {pred.predicted} — " + " · ".join(f"p({w})={pred.probs[w]:.3f}" for w in words))

    out = []
    for e in entries:
        before = predict(lm, START_DEMOS, e["query"], words, capture=False)
        want = [text(before)]
        if e["mode"] != "none":
            hs = heads if e["mode"] == "all in-context heads" else control_heads(heads, lm.n_layers, lm.n_heads, 0)
            want.append(text(predict(lm, START_DEMOS, e["query"], words, interventions=Plan(KIND, tuple(hs)),
                                     capture=False)))
        out.append((e, want))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["default", "tiny"], default="default")
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--solo", type=int, default=20, help="reruns of one session alone (baseline)")
    ap.add_argument("--reruns", type=int, default=200, help="reruns in all (solo included)")
    ap.add_argument("--check", type=int, default=4, help="reruns per session recomputed with the library")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    proc, url = start_server(args.model)
    memory = {}
    counter = {"n": 0, "lock": threading.Lock()}

    def on_rerun(n):
        if n in (20, 50, 100, 150, args.reruns):
            memory[n] = round(rss_mb(proc.pid), 1)
            print(f"  {n} reruns: server RSS {memory[n]:.0f} MB", flush=True)

    counter["on_rerun"] = on_rerun
    try:
        t0 = time.time()
        solo = drive(url, proc.pid, [MODES[1]], args.solo, counter)
        print(f"solo: {percentiles([e['seconds'] for e in solo])}", flush=True)
        modes = [MODES[i % len(MODES)] for i in range(args.sessions)]
        many = drive(url, proc.pid, modes, args.reruns, counter)
        print(f"{args.sessions} sessions: {percentiles([e['seconds'] for e in many])}", flush=True)
        wall = time.time() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    rng = random.Random(0)
    sample = []
    for i in range(args.sessions):
        mine = [e for e in many if e["session"] == i]
        sample += rng.sample(mine, min(args.check, len(mine)))
    checked = expected_texts(sample, args.model)
    wrong = [(e["session"], e["mode"], e["query"], e["shown"], want) for e, want in checked if e["shown"] != want]
    result = {
        "model": args.model, "sessions": args.sessions, "modes": modes, "reruns": counter["n"],
        "solo_latency_s": percentiles([e["seconds"] for e in solo]),
        "concurrent_latency_s": percentiles([e["seconds"] for e in many]),
        "server_rss_mb": memory, "rss_growth_20_to_end": (round(memory[max(memory)] / memory[20] - 1, 4)
                                                          if 20 in memory else None),
        "checked_reruns": len(checked), "wrong": wrong, "wall_s": round(wall, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
