"""Responsiveness of the prompt lab on the default model.

Measures, in one process on the same model: one plain forward pass of the prompt
(``model(input_ids)``), one instrumented pass, and the prompt lab's full re-render (Streamlit
AppTest: script run, cached results reused, figures built) after editing the query or one
demonstration, without and with an ablation (which needs a second, intervened pass).
Prints medians and the ratio re-render / plain pass (goal: <= 2x). Never fails.

    python benchmarks/bench_app.py [--repeats 5] [--model default]

``--browser`` measures edit-to-result in a real browser instead (headless Chromium, the real
Streamlit server, fragments included, which AppTest always reruns as a whole page): the time from
an edit to the new prediction on screen, and to the page settling (every result drawn). With
``--compare-dir DIR`` (an export of an earlier commit) both versions run side by side, measured in
turns, so that load from other processes hits both alike. It then opens every page from the menu in a fresh
session at 1366 x 768 (seconds from the click to the page settled) and walks the lesson's steps:

    git archive BASE | tar -x -C /tmp/base
    python benchmarks/bench_app.py --browser --compare-dir /tmp/base --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="default", help="default, or tiny-llama for a quick check")
    ap.add_argument("--browser", action="store_true", help="edit-to-result in headless Chromium (real server)")
    ap.add_argument("--compare-dir", default=None, help="with --browser: also measure the app in this folder")
    ap.add_argument("--edits-only", action="store_true", help="with --browser: skip the per-page open times")
    ap.add_argument("--compute", action="store_true",
                    help="the library's work after an edit (prediction + live check) against a plain pass, with the "
                         "shared prefix cache and without it")
    args = ap.parse_args()
    if args.compute:
        compute_bench(args)
        return
    if args.browser:
        browser_bench(args)
        return
    if args.model.startswith("tiny-"):
        os.environ["ICLVIZ_TEST_MODEL"] = args.model
    else:
        os.environ.pop("ICLVIZ_TEST_MODEL", None)

    import logging

    import torch
    from streamlit.testing.v1 import AppTest

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    from iclviz.prompt import build_prompt
    from pages.parts import sidebar

    load_before = open("/proc/loadavg").read().split()[:3]
    t0 = time.perf_counter()
    lm = sidebar._load(args.model, "auto", "auto", False)
    load_s = time.perf_counter() - t0

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    if at.exception:
        raise SystemExit(f"the app failed: {at.exception[0].value}")
    prompt = build_prompt(lm.tokenizer, [(d["text"], d["label"]) for d in at.session_state["demos"]],
                          at.session_state["query"], tuple(at.session_state["label_words"]),
                          at.session_state["template"])
    ids = torch.tensor([prompt.input_ids], device=lm.device)

    def plain_here():
        with torch.no_grad():
            lm.model(input_ids=ids)

    def plain():
        # In a fresh thread, as Streamlit runs each script run in its own thread (AppTest too). On a busy
        # 2-core machine a pass in the main thread can be several times slower than in a worker thread.
        t = threading.Thread(target=plain_here)
        t.start()
        t.join()

    def instrumented():
        t = threading.Thread(target=lm.run, args=([prompt],))
        t.start()
        t.join()

    counter = iter(range(10_000))
    base_query = at.session_state["query"]
    demo_key = [t.key for t in at.text_area if t.key and t.key.startswith("dt_")][0]
    base_demo = at.text_area(key=demo_key).value

    def edit_query():
        # A new query each time, so that nothing is served from the cache (only the same length matters).
        at.text_input(key="w_query").set_value(f"{base_query} {next(counter)}").run()
        assert not at.exception, at.exception

    def edit_demo():
        at.text_area(key=demo_key).set_value(f"{base_demo} {next(counter)}").run()
        assert not at.exception, at.exception

    def rerun_unchanged():
        at.run()

    def ablate_on():
        at.radio(key="w_mode").set_value("all in-context heads").run()

    def ablate_off():
        at.radio(key="w_mode").set_value("none").run()

    # Interleaved: each repeat times the plain pass next to every re-render, so that load from
    # other processes on a small machine hits both alike.
    cases = [("instrumented pass (capture)", None, instrumented),
             ("re-render after editing the query", ablate_off, edit_query),
             ("re-render after editing one demonstration", ablate_off, edit_demo),
             ("re-render, nothing changed (all cached)", ablate_off, rerun_unchanged),
             ("re-render after editing the query, heads ablated (2 passes)", ablate_on, edit_query),
             ("re-render after editing a demonstration, heads ablated", ablate_on, edit_demo)]
    plain()
    instrumented()
    times = {name: [] for name, _, _ in cases}
    plains = []
    for _ in range(args.repeats):
        for name, setup, fn in cases:
            if setup:
                setup()
            t = time.perf_counter()
            plain()
            plains.append(time.perf_counter() - t)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    plain_s = statistics.median(plains)
    main_thread = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        plain_here()
        main_thread.append(time.perf_counter() - t)
    rows = [(name, statistics.median(v)) for name, v in times.items()]

    print(f"load average before/after: {load_before} / {open('/proc/loadavg').read().split()[:3]}"
          " (other processes on the machine slow a 2-thread pass unevenly; compare only idle runs)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; model: {lm.describe()}")
    print(f"prompt: {prompt.n_tokens} tokens, {len(prompt.label_positions)} demonstrations; model load (cached "
          f"resource): {load_s:.2f} s; median of {args.repeats}")
    print(f"{'plain forward pass (model(input_ids)), worker thread':62s} {plain_s * 1000:7.0f} ms  1.00x")
    mt = statistics.median(main_thread)
    print(f"{'plain forward pass, main thread (reference)':62s} {mt * 1000:7.0f} ms  {mt / plain_s:.2f}x")
    for name, sec in rows:
        print(f"{name:62s} {sec * 1000:7.0f} ms  {sec / plain_s:.2f}x")
    print(f"plain pass spread: {min(plains) * 1000:.0f}-{max(plains) * 1000:.0f} ms over {len(plains)} runs "
          "(a wide spread means other processes competed for the cores)")


def _start_server(app_dir: Path, model: str):
    from streamlit_server import start_server

    return start_server(app_dir, model if model.startswith("tiny-") else None)


def compute_bench(args) -> None:
    """What the Prompt lab computes after an edit, as library calls in one process: the new prediction (one
    captured pass) and the live check (the in-context heads knocked out, 3 random sets, the label-swap split:
    ``readout.live_check``, rows at T of one batch), against one plain pass ``model(input_ids)`` of the prompt.
    With the prefix cache the previous prompt's keys and values are reused; without it (ICLVIZ_PREFIX_CACHE_MB=0)
    everything is computed."""
    import copy

    import torch

    from iclviz.analyses.evaluation import predict_prompt
    from iclviz.analyses.heads import APP_HEAD_RULE, default_heads
    from iclviz.analyses.readout import live_check
    from iclviz.data import load_dataset, sample_demonstrations, sample_test
    from iclviz.engine.interventions import Plan
    from iclviz.engine.models import load_model
    from iclviz.engine.prefix_cache import PrefixCache, set_shared_prefix_cache
    from iclviz.prompt import DEFAULT_TEMPLATE

    lm = load_model(args.model)
    ds = load_dataset("sst2")
    words = ("foo", "bar")
    demos = [(t, words[y]) for t, y in sample_demonstrations(ds, 4, seed=0)]
    queries = [t for t, _ in sample_test(ds, 4 * args.repeats + 8, seed=1)]
    heads = default_heads(lm.name, lm.n_layers, lm.n_heads, rule=APP_HEAD_RULE)

    def prompt(ds_, q):
        return lm.prompt(ds_, q, words, DEFAULT_TEMPLATE)

    base = prompt(demos, queries[0])
    ids = torch.tensor([base.input_ids], device=lm.device)

    def plain():
        with torch.no_grad():
            lm.model(input_ids=ids)

    def page_work(p, d, qtext):  # what the Prompt lab computes: the prediction (captured) and the live check
        predict_prompt(lm, p, Plan(), capture=True)
        live_check(lm, d, qtext, words, DEFAULT_TEMPLATE, heads, "knockout", 3)

    plain()
    q = iter(queries[1:])
    rows = []
    for cached in (True, False):
        set_shared_prefix_cache(PrefixCache(512 * 2**20 if cached else 0))
        page_work(base, demos, queries[0])  # the page as it was before the edit
        t_query, t_demo, plains = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            plain()
            plains.append(time.perf_counter() - t)
            qtext = next(q)
            p = prompt(demos, qtext)  # a query edit
            t = time.perf_counter()
            page_work(p, demos, qtext)
            t_query.append(time.perf_counter() - t)
            d2 = demos[:-1] + [(f"{demos[-1][0]} {next(q)[:20]}", demos[-1][1])]  # an edit of the last demonstration
            p = prompt(d2, queries[0])
            t = time.perf_counter()
            page_work(p, d2, queries[0])
            t_demo.append(time.perf_counter() - t)
        pl = statistics.median(plains)
        rows.append((cached, pl, statistics.median(t_query), statistics.median(t_demo)))
    set_shared_prefix_cache(None)
    # the floor on this machine: one pass of a single token over a cached prefix still reads every weight
    from iclviz.engine.runs import cache_keyword, prefix_kv

    kv = prefix_kv(lm.model, base.input_ids, base.n_tokens - 1, None)
    one = []
    for _ in range(args.repeats):
        c = copy.deepcopy(kv)
        t = time.perf_counter()
        with torch.no_grad():
            lm.model(input_ids=ids[:, -1:], **{cache_keyword(lm.model): c}, use_cache=True, logits_to_keep=1,
                     position_ids=torch.tensor([[base.n_tokens - 1]]))
        one.append(time.perf_counter() - t)
    print(f"one token over the cached prefix: {statistics.median(one):.3f} s "
          f"({statistics.median(one) / rows[0][1]:.2f}x a plain pass; the live check needs several such passes)")
    print(f"model {lm.describe()}; prompt {base.n_tokens} tokens (4 + 4 SST-2 demonstrations); heads "
          f"{len(heads)}; torch threads {torch.get_num_threads()}; load {open('/proc/loadavg').read().split()[:3]}")
    print("| prefix cache | plain pass (s) | query edit: prediction + live check (s) | ratio (goal <= 0.25) "
          "| last-demonstration edit (s) | ratio (goal <= 0.5) |")
    print("|---|---|---|---|---|---|")
    for cached, pl, tq, td in rows:
        print(f"| {'on' if cached else 'off'} | {pl:.3f} | {tq:.3f} | {tq / pl:.2f}x | {td:.3f} | {td / pl:.2f}x |")


def browser_bench(args) -> None:
    from playwright.sync_api import sync_playwright

    dirs = [("this tree", ROOT)] + ([("compare", Path(args.compare_dir).resolve())] if args.compare_dir else [])
    servers = [(name, *_start_server(d, args.model)) for name, d in dirs]
    load_before = open("/proc/loadavg").read().split()[:3]
    results: dict[tuple[str, str], list[float]] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu"])
            pages = {}
            for name, _, url in servers:
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                page.goto(url)
                page.locator("code", has_text="Prediction:").first.wait_for(timeout=600_000)
                _idle(page)
                pages[name] = page
            counter = iter(range(10_000))
            for _ in range(args.repeats):
                for name, _, _ in servers:
                    page = pages[name]
                    preds = page.locator("code", has_text="Prediction:")
                    # 1. edit the query (a new text each time: nothing cached)
                    old = preds.first.inner_text()
                    q = page.get_by_label("Query").last
                    q.fill(f"I loved every minute of it {next(counter)}")
                    t0 = time.perf_counter()
                    q.press("Enter")
                    _until(lambda preds=preds, old=old: preds.first.inner_text() != old)
                    results.setdefault((name, "edit query: new prediction shown"), []).append(
                        time.perf_counter() - t0)
                    _idle(page)
                    results.setdefault((name, "edit query: page settled"), []).append(time.perf_counter() - t0)
                    # 2. change the intervention mode (the prompt is cached; the after pass is new)
                    page.get_by_label("Random-heads seed").last.fill(str(next(counter)))  # a new random set each time
                    page.get_by_label("Random-heads seed").last.press("Enter")
                    _idle(page)
                    t0 = time.perf_counter()
                    page.get_by_text("random heads (control)", exact=True).last.click()
                    _until(lambda preds=preds: preds.count() == 2)
                    results.setdefault((name, "change mode: after-prediction shown"), []).append(
                        time.perf_counter() - t0)
                    _idle(page)
                    results.setdefault((name, "change mode: page settled"), []).append(time.perf_counter() - t0)
                    page.get_by_text("none", exact=True).first.click()
                    _until(lambda preds=preds: preds.count() == 1)
                    _idle(page)
            opens = _page_opens(browser, servers[0][2]) if not args.edits_only else []
            browser.close()
    finally:
        for _, proc, _ in servers:
            proc.terminate()
    print(f"load average before/after: {load_before} / {open('/proc/loadavg').read().split()[:3]}")
    print(f"edit-to-result in headless Chromium, model {args.model}, median of {args.repeats} (min-max)")
    for (name, case), v in results.items():
        print(f"{name:10s} {case:42s} {statistics.median(v):6.2f} s  ({min(v):.2f}-{max(v):.2f})")
    if opens:
        print("first open of each page from the menu (this tree, model loaded, the page's results not yet cached; "
              "goal < 3 s for Two towers, Label vectors, Attention),")
        print(f"then the lesson's steps, Next pressed after {READ_S} s of reading each (goal < 2 s):")
        for case, sec in opens:
            print(f"  {case:48s} {sec:6.2f} s")


READ_S = 15  # seconds spent reading each lesson step before pressing Next
MENU = ["Guided lesson", "Head finder", "Label vectors", "Two towers", "Bias lab", "Attention", "Prompt A/B",
        "Demonstrations", "Lesson file", "Prompt lab"]


def _page_opens(browser, url) -> list[tuple[str, float]]:
    """Seconds from a menu click to the page settled (its title drawn, no run in progress), for every page of a
    fresh session; then from each lesson "Next" to the step settled."""
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(url)
    page.locator("code", has_text="Prediction:").first.wait_for(timeout=600_000)
    _idle(page)
    out = []
    for title in MENU:
        link = page.locator("[data-testid='stSidebar'] [data-testid='stPageLink']", has_text=title).first
        t0 = time.perf_counter()
        link.click()
        page.locator("h1").filter(has_text=title.split()[0]).first.wait_for(timeout=600_000)
        _idle(page, quiet=1.0)
        out.append((f"open {title}", time.perf_counter() - t0 - 1.0))
    link = page.locator("[data-testid='stSidebar'] [data-testid='stPageLink']", has_text="Guided lesson").first
    link.click()
    _idle(page, quiet=1.0)
    for step in range(2, 6):
        page.wait_for_timeout(READ_S * 1000)  # a teacher reads the step; the app computes the next ones meanwhile
        t0 = time.perf_counter()
        page.get_by_role("button", name="Next").click()
        page.get_by_role("heading", name=f"{step}. ").first.wait_for(timeout=600_000)
        _idle(page, quiet=1.0)
        out.append((f"lesson: Next to step {step}", time.perf_counter() - t0 - 1.0))
    page.close()
    return out


def _until(cond, timeout: float = 600.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise TimeoutError("the page did not show the result")


def _idle(page, quiet: float = 0.8, timeout: float = 600.0) -> None:
    """Until no script (or fragment) run is in progress for ``quiet`` seconds."""
    end = time.time() + timeout
    page.wait_for_timeout(150)
    since = time.time()
    while time.time() < end:
        if page.locator("[data-testid='stStatusWidgetRunningIcon']").count():
            since = time.time()
        elif time.time() - since > quiet:
            return
        time.sleep(0.05)
    raise TimeoutError("the app did not settle")


if __name__ == "__main__":
    main()
