"""End to end: `streamlit run app.py` in headless Chromium (Debian chromium via Playwright).

Edits a demonstration, toggles an ablation, checks that the prediction text changes, saves
the README screenshot (assets/prompt_lab.png), and opens two browser contexts at once to
check that their ablations do not leak into each other. Walks the Prompt A/B view (pin A,
flip a label, see the difference) and the Demonstrations waterfall, and saves their README
screenshots (assets/prompt_ab.png, assets/waterfall.png).

The real default model is used when its cache is built (load ~2 s); otherwise (a fresh
machine) the tiny random test model, so the test stays short. ICLVIZ_BROWSER_MODEL=default
or =tiny forces one.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SCREENSHOT = ROOT / "assets" / "prompt_lab.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _use_default_model() -> bool:
    forced = os.environ.get("ICLVIZ_BROWSER_MODEL", "")
    if forced in ("default", "tiny"):
        return forced == "default"
    from iclviz.engine.offline import QWEN_05B, cache_dir

    return (cache_dir() / "models" / QWEN_05B.f32_dir / "iclviz-complete.json").exists()


@contextlib.contextmanager
def _serve(tiny: bool):
    """A fresh ``streamlit run app.py`` on a free port (the default model, or the tiny test model)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")
    port = _free_port()
    env = dict(os.environ)
    env.pop("ICLVIZ_TEST_MODEL", None)
    if tiny:
        env["ICLVIZ_TEST_MODEL"] = "tiny-llama"
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        pytest.fail(f"streamlit did not start:\n{out[-3000:]}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def app_url():
    with _serve(tiny=not _use_default_model()) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@contextlib.contextmanager
def _new_page(browser, width: int = 1500, height: int = 1100):
    """A page in its own browser context (its own Streamlit session), closed afterwards."""
    ctx = browser.new_context(viewport={"width": width, "height": height})
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def _predictions(page):
    return page.locator("code", has_text="Prediction:")


def _wait_idle(page, timeout=90_000):
    """Wait until a prediction is shown, no run is in progress and the predictions are stable."""
    _predictions(page).first.wait_for(timeout=timeout)
    deadline = time.time() + timeout / 1000
    last, stable_since = None, time.time()
    while time.time() < deadline:
        running = page.locator("[data-testid='stStatusWidgetRunningIcon']").count() > 0
        now = tuple(_predictions(page).all_inner_texts())
        if now != last or running:
            last, stable_since = now, time.time()
        elif time.time() - stable_since > 1.0:
            return
        page.wait_for_timeout(200)
    raise AssertionError("the app did not settle")


def _open(browser, url):
    ctx = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = ctx.new_page()
    page.goto(url)
    _wait_idle(page, timeout=120_000)
    return ctx, page


def _choose_mode(page, mode):
    page.get_by_text(mode, exact=True).click()
    page.wait_for_timeout(300)
    _wait_idle(page)


def test_edit_ablate_screenshot_and_session_isolation(app_url, browser):
    from playwright.sync_api import expect

    ctx_a, a = _open(browser, app_url)
    ctx_b, b = _open(browser, app_url)  # two sessions at once
    try:
        before = _predictions(a).first.inner_text()
        assert "p(foo)=" in before

        # Edit a demonstration: the prediction text changes.
        box = a.get_by_label("Demonstration 1")
        box.fill("a delightful, warm and very funny film")
        box.press("Control+Enter")  # a text area submits on Ctrl+Enter (or on leaving it)
        expect(_predictions(a).first).not_to_have_text(before, timeout=60_000)
        _wait_idle(a)
        edited = _predictions(a).first.inner_text()
        assert edited != before

        # Toggle an ablation: an "after" prediction appears and differs from "before".
        _choose_mode(a, "all in-context heads")
        expect(_predictions(a)).to_have_count(2, timeout=60_000)
        after_a = _predictions(a).nth(1).inner_text()
        assert after_a != _predictions(a).first.inner_text()
        a.set_viewport_size({"width": 1500, "height": 1500})
        a.locator("[data-testid='stMain']").evaluate("e => e.scrollTo(0, 0)")
        _wait_idle(a)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        a.screenshot(path=str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000

        # Session B saw none of A's edits or ablation.
        b.get_by_text("Prompt", exact=True).first.wait_for()
        assert _predictions(b).count() == 1
        assert _predictions(b).first.inner_text() == before
        assert b.get_by_label("Demonstration 1").input_value() != "a delightful, warm and very funny film"

        # B runs the random-heads control; A, rerun afterwards, still shows its own ablation.
        _choose_mode(b, "random heads (control)")
        expect(_predictions(b)).to_have_count(2, timeout=60_000)
        after_b = _predictions(b).nth(1).inner_text()
        caption_b = b.locator("[data-testid='stCaptionContainer']", has_text="heads:").first.inner_text()
        q = a.get_by_label("Query")
        q.fill("an absolute joy from start to finish")
        q.press("Enter")
        expect(_predictions(a).first).not_to_have_text(edited, timeout=60_000)
        _wait_idle(a)
        caption_a = a.locator("[data-testid='stCaptionContainer']", has_text="heads:").first.inner_text()
        assert caption_a != caption_b
        assert _predictions(a).count() == 2
        assert _predictions(b).nth(1).inner_text() == after_b
        assert b.get_by_label("Query").input_value() != "an absolute joy from start to finish"
    finally:
        ctx_a.close()
        ctx_b.close()


LESSON_SHOT = ROOT / "assets" / "lesson.png"


def _settle(page, timeout=120_000):
    """Wait until no script run is in progress for a second."""
    deadline = time.time() + timeout / 1000
    quiet_since = time.time()
    page.wait_for_timeout(300)
    while time.time() < deadline:
        if page.locator("[data-testid='stStatusWidgetRunningIcon']").count() or \
                page.locator("[data-testid='stSpinner']").count():
            quiet_since = time.time()
        elif time.time() - quiet_since > 1.2:
            return
        page.wait_for_timeout(200)
    raise AssertionError("the app did not settle")


def test_guided_lesson_walk_and_screenshot(app_url, browser):
    from playwright.sync_api import expect

    with _new_page(browser, 1500, 1000) as page:
        # From the app's front page through the navigation, as a visitor goes.
        page.goto(app_url)
        page.get_by_role("link", name="Guided lesson").click()
        expect(page.get_by_role("heading", name="1. Demonstrations and label positions")).to_be_visible(timeout=120_000)
        expect(page.locator("[data-testid='stMetric']").first).to_be_visible(timeout=120_000)
        _settle(page)
        page.screenshot(path=str(LESSON_SHOT))
        assert LESSON_SHOT.stat().st_size > 10_000
        titles = ["2. Attention from T", "3. Readers and voters", "4. The label swap", "5. The two biases"]
        for title in titles:
            page.get_by_role("button", name="Next").click()
            expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=180_000)
            expect(page.locator("[data-testid='stMetric']").first).to_be_visible(timeout=180_000)
            _settle(page, 240_000)
        assert page.get_by_role("button", name="Next").is_disabled()
        page.get_by_role("button", name="Reset the lesson").click()
        expect(page.get_by_role("heading", name="1. Demonstrations and label positions")).to_be_visible(timeout=60_000)


def test_heatmap_cell_click_chooses_the_head(app_url, browser):
    from playwright.sync_api import expect

    with _new_page(browser) as page:
        page.goto(f"{app_url}/head_finder")
        expect(page.get_by_role("button", name="Scan heads")).to_be_visible(timeout=120_000)
        n = page.get_by_label("Test sentences per seed")
        n.fill("2")
        n.press("Tab")
        page.get_by_label("Demonstrations per label").fill("1")
        page.get_by_role("button", name="Scan heads").click()
        chart = page.locator("[data-testid='stVegaLiteChart']").first  # the altair layer x head heatmap
        chart.wait_for(timeout=240_000)
        _settle(page)
        chart.scroll_into_view_if_needed()
        # A cell in the middle of the map; vega's SVG names each cell in its aria-label ("head: 2; layer: 3; ...").
        cells = chart.locator("g.mark-rect path")
        cell = cells.nth(cells.count() // 2)
        aria = cell.get_attribute("aria-label")
        layer, head = (int(re.search(rf"\b{k}: (\d+)", aria).group(1)) for k in ("layer", "head"))
        cell.click()
        name = f"L{layer}H{head}"
        expect(page.get_by_text(f"Selected cells: {name}")).to_be_visible(timeout=60_000)
        expect(page.get_by_text(f"Selected head {name}")).to_be_visible(timeout=60_000)  # the panel follows
        page.get_by_role("button", name="Use the selected cells as the in-context heads").click()
        expect(page.get_by_text(f"(shared by all pages): {name}")).to_be_visible(timeout=60_000)


def test_bias_lab_reorders_twice(app_url, browser):
    with _new_page(browser) as page:
        page.goto(f"{app_url}/bias_lab")
        page.get_by_text("Reorder the demonstrations").wait_for(timeout=120_000)
        _settle(page)

        def order():
            items = page.locator("[data-testid='stMarkdownContainer'] p", has_text=re.compile(r"^#\d · "))
            return [re.sub(r"^#\d · ", "", t) for t in items.all_inner_texts()]

        first = order()
        assert len(first) >= 3
        # The first demonstration (id 1 in a fresh session) moves down twice.
        for slot, want in ((2, [first[1], first[0], first[2]]), (3, [first[1], first[2], first[0]])):
            page.locator(".st-key-bias_order_down_1 button").first.click()
            moved = """([s, t]) => [...document.querySelectorAll("[data-testid='stMarkdownContainer'] p")]
                .some(p => p.innerText.startsWith('#' + s + ' · ') && p.innerText.endsWith(t))"""
            page.wait_for_function(moved, arg=[slot, first[0][-20:]], timeout=240_000)
            _settle(page)
            assert order()[:3] == want


def test_visitor_gets_no_model_paths_and_markdown_stays_inert(app_url, browser):
    """Default settings: no Hub/folder sources, no trust_remote_code; a shared link whose label word is
    markdown for an external image shows the word as text and the browser fetches nothing from outside."""
    import base64
    import json

    pixel = "![t](https://evil.example/pixel.png)"
    state = {"demonstrations": [{"text": "a lovely film", "label": pixel}, {"text": "a dull film", "label": "bar"}],
             "query": "fine", "label_words": [pixel, "bar"]}
    link = base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")
    ctx = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = ctx.new_page()
    outside = []
    page.on("request", lambda r: outside.append(r.url) if "127.0.0.1" not in r.url else None)
    try:
        page.goto(f"{app_url}/?s={link}")
        page.locator("[data-testid='stAlert']", has_text="cannot be run").first.wait_for(timeout=120_000)
        page.wait_for_timeout(1000)
        sidebar = page.locator("[data-testid='stSidebar']")
        assert sidebar.get_by_text("Offline model", exact=True).count() == 1
        assert sidebar.get_by_text("Local folder").count() == 0
        assert sidebar.get_by_text("Hugging Face Hub name").count() == 0
        assert page.get_by_text("trust_remote_code").count() == 0
        assert page.locator("img[src*='evil.example']").count() == 0
        alerts = [t.replace("\u200b", "") for t in page.locator("[data-testid='stAlert']").all_inner_texts()]
        assert any(pixel in t for t in alerts), alerts  # shown as text, exactly as typed (no stray escapes)
        assert page.locator("[data-testid='stAlert'] a[href*='evil.example']").count() == 0  # and not as a link
        assert not [u for u in outside if "evil.example" in u]
    finally:
        ctx.close()


AB_SHOT = ROOT / "assets" / "prompt_ab.png"
WATERFALL_SHOT = ROOT / "assets" / "waterfall.png"


def _plotly(page, index=0):
    return page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").nth(index)


def test_prompt_ab_flip_and_waterfall_screenshots(app_url, browser):
    from playwright.sync_api import expect

    with _new_page(browser, 1500, 1700) as page:
        page.goto(app_url)
        page.get_by_role("link", name="Prompt A/B").click()
        page.get_by_role("button", name="Pin the current prompt as A").click()
        expect(page.get_by_text("Prediction B:")).to_be_visible(timeout=180_000)
        _settle(page)
        same = _plotly(page).evaluate("gd => gd._fullData.filter(t => t.xaxis === 'x3').flatMap(t => Array.from(t.y))")
        assert same and all(abs(v) < 1e-9 for v in same)  # B is a copy of A: B − A is zero
        # Flip demonstration 1's label (the selector starts on #1): B − A is no longer zero.
        page.get_by_role("button", name="Flip its label").click()
        expect(page.get_by_text("B = A, then: flip #1")).to_be_visible(timeout=120_000)
        _settle(page)
        diff = _plotly(page).evaluate("gd => gd._fullData.filter(t => t.xaxis === 'x3').flatMap(t => Array.from(t.y))")
        assert any(abs(v) > 1e-6 for v in diff), diff
        page.locator("[data-testid='stMain']").evaluate("e => e.scrollTo(0, 0)")
        _settle(page)
        page.screenshot(path=str(AB_SHOT))
        assert AB_SHOT.stat().st_size > 10_000

        page.get_by_role("link", name="Demonstrations").click()
        expect(page.get_by_role("heading", name="Demonstrations")).to_be_visible(timeout=60_000)
        _plotly(page).wait_for(timeout=180_000)
        _settle(page)
        kind, n = _plotly(page).evaluate("gd => [gd.data[0].type, gd.data[0].x.length]")
        assert kind == "waterfall" and n >= 3  # baseline, the demonstrations, the prediction
        page.set_viewport_size({"width": 1500, "height": 1000})
        page.locator("[data-testid='stMain']").evaluate("e => e.scrollTo(0, 0)")
        _settle(page)
        page.screenshot(path=str(WATERFALL_SHOT))
        assert WATERFALL_SHOT.stat().st_size > 10_000


RAW_NAMES = re.compile(r"\b(app|contributions|prompt ab|prompt_ab|common|state|sidebar|widgets|runs)\b",
                       re.IGNORECASE)


def _menu(page):
    """The app's menu: its page links in the sidebar (pages/parts/menu.py)."""
    return page.locator("[data-testid='stSidebar'] [data-testid='stPageLink'] [data-testid='stMarkdownContainer']")


def test_first_visit_shows_no_raw_file_names_and_the_title_at_once(browser):
    """A fresh server, read from the first paint on: Streamlit's own menu (which lists pages/'s raw file names
    until a session runs st.navigation) never shows, the app's menu and the page's title come first, and there is
    no Deploy button."""
    with _serve(tiny=True) as url:
        with _new_page(browser, 1366, 768) as page:
            t0 = time.time()
            page.goto(url, wait_until="commit")  # the very first run of this server
            seen, title_at = [], None
            while time.time() - t0 < 120 and title_at is None:
                seen.append(page.locator("[data-testid='stSidebar']").all_inner_texts())
                assert page.locator("[data-testid='stSidebarNav']").count() == 0
                if page.locator("h1", has_text="Prompt lab").count():
                    title_at = time.time() - t0
                page.wait_for_timeout(50)
            assert title_at is not None, "no title"
            # the title and the menu come from the same script run but may reach the browser in separate deltas
            _menu(page).get_by_text("Demonstrations", exact=True).wait_for(timeout=30_000)
            menu = _menu(page).all_inner_texts()
            assert "Guided lesson" in menu and "Demonstrations" in menu, menu
            assert not [t for t in seen for x in t if RAW_NAMES.search(x.split("Model")[0])], seen[-1]
            assert page.get_by_role("button", name="Deploy").count() == 0
            _predictions(page).first.wait_for(timeout=120_000)


def test_first_visit_at_a_page_url_gets_the_apps_navigation(browser):
    """On a fresh server, before any session has run app.py, Streamlit runs a page opened by its URL on its own
    (its file-based fallback); the page draws the app's own menu and keeps its address and query."""
    with _serve(tiny=True) as url:
        with _new_page(browser, 1300, 900) as page:
            page.goto(f"{url}/two_towers?mode=ticked+heads")  # the very first run of this server
            page.locator("h1", has_text="Two towers").wait_for(timeout=120_000)
            _menu(page).get_by_text("Guided lesson").wait_for(timeout=60_000)
            names = " ".join(_menu(page).all_inner_texts())
            assert "Prompt A/B" in names and "Demonstrations" in names
            assert page.locator("[data-testid='stSidebarNav']").count() == 0
            assert not RAW_NAMES.search(names)  # helper modules are no pages
            assert "/two_towers" in page.url and "mode=ticked" in page.url
            _menu(page).get_by_text("Prompt lab").click()  # the menu works from the fallback too
            page.locator("h1", has_text="Prompt lab").wait_for(timeout=120_000)
            assert page.get_by_role("radiogroup", name="Intervene on").get_by_role(
                "radio", name="ticked heads").is_checked()


def test_first_visit_at_a_shared_parts_url_finds_no_page(browser):
    """The pages' shared parts live in pages/parts/, which Streamlit never lists: on a fresh server their
    names are no URLs (before, /common ran the helper module alone and showed a blank page)."""
    with _serve(tiny=True) as url:
        with _new_page(browser, 1300, 900) as page:
            page.goto(f"{url}/common")  # the very first run of this server
            _menu(page).get_by_text("Guided lesson").wait_for(timeout=120_000)  # the app's menu
            assert not RAW_NAMES.search(" ".join(_menu(page).all_inner_texts()))


def _local_only(outside: list[str]):
    """A route handler: requests to the app (127.0.0.1) go through; any other is recorded in ``outside`` and
    aborted (nothing leaves the machine)."""
    from urllib.parse import urlsplit

    def handle(route):
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    return handle


HOSTILE_PAGES = [("prompt_lab", "Prompt lab"), ("head_finder", "Head finder"), ("label_vectors", "Label vectors"),
                 ("two_towers", "Two towers"), ("bias_lab", "Bias lab"), ("attention", "Attention"),
                 ("prompt_ab", "Prompt A/B"), ("contributions", "Demonstrations"), ("lesson_file", "Lesson file"),
                 ("lesson", "Guided lesson")]  # the guided lesson loads its own prompt: last


def test_hostile_link_on_every_page_fetches_nothing_outside(browser):
    """Every page, in one session opened with a shared link whose demonstrations and query hold markdown images,
    links and HTML: the browser requests nothing from any address but the app's (no image, no icon font from a
    font host), and no image, link or bold text of the visitor's is in the page. The tiny model: the rendering is
    what is tested, and the real model's pages take minutes on 2 cores."""
    import base64
    import json

    evil = "203.0.113.9"  # TEST-NET-3: never a real host
    hostile = (f"![p](http://{evil}/px.png) <img src='http://{evil}/i.png'> [go](http://{evil}/a) "
               f"<a href='http://{evil}/b'>b</a> **bold**")
    state = {"demonstrations": [{"text": f"a lovely film {hostile}", "label": "foo"},
                                {"text": "a dull film", "label": "bar"},
                                {"text": f"superb {hostile}", "label": "foo"}, {"text": "boring", "label": "bar"}],
             "query": f"fine {hostile}", "label_words": ["foo", "bar"]}
    link = base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")
    outside: list[str] = []
    with _serve(tiny=True) as url, _new_page(browser, 1400, 1000) as page:
        page.context.route("**/*", _local_only(outside))
        for i, (path, title) in enumerate(HOSTILE_PAGES):
            if i == 0:
                page.goto(f"{url}/?s={link}")  # the Prompt lab, the app's first page
                page.get_by_text("Loaded the prompt and heads from the shared link").first.wait_for(timeout=120_000)
            else:  # the same session: the shared prompt stays
                _menu(page).get_by_text(title, exact=True).first.click()
                page.wait_for_url(f"**/{path}*", timeout=60_000)
            page.locator("h1").first.wait_for(timeout=120_000)
            _settle(page, timeout=240_000)
            assert not outside, (path, outside)
            assert page.locator(f"img[src*='{evil}'], a[href*='{evil}'], [src*='{evil}']").count() == 0, path
            assert page.locator("[data-testid='stMain'] strong", has_text="bold").count() == 0, path
            if path == "bias_lab":  # the demonstrations' order shows the text, as text
                assert page.get_by_text(f"http://{evil}/px.png", exact=False).count() > 0


def _demo_labels(page):
    """The demonstrations' labels as their pickers show them."""
    return [page.get_by_label(f"Label {i}", exact=True).first.input_value() for i in range(1, _n_demos(page) + 1)]


def _n_demos(page):
    return page.locator("textarea[aria-label^='Demonstration ']").count()


def test_invalid_label_word_leaves_the_labels_alone_at_1366(app_url, browser):
    """An invalid label word, restored, then a query edit: the demonstrations keep their labels (before, every
    demonstration had become the first word)."""
    from playwright.sync_api import expect

    with _new_page(browser, 1366, 768) as page:
        page.goto(app_url)
        _wait_idle(page, timeout=120_000)
        page.get_by_label("Label 4", exact=True).first.wait_for(timeout=60_000)
        labels = _demo_labels(page)
        assert set(labels) == {"foo", "bar"}, labels
        words = page.get_by_role("textbox", name="Label words (comma separated)")
        for typed in ("good", "foo, bar"):
            words.fill(typed)
            words.press("Enter")
            _settle(page)
        q = page.get_by_label("Query")
        q.fill("a fine and gentle film")
        q.press("Enter")
        expect(_predictions(page).first).to_be_visible(timeout=60_000)
        _settle(page)
        assert _demo_labels(page) == labels
        assert page.get_by_text("no demonstration has label").count() == 0


def test_lesson_keeps_the_prepared_query_and_the_mode_persists_at_1366(browser):
    """A teacher prepares a query and a mode in the Prompt lab, opens the lesson, comes back: both are kept, and
    the page address carries the mode on every page. A server of its own: the module's shared server may still be
    computing what earlier tests asked for."""
    from playwright.sync_api import expect

    with _serve(tiny=False) as app_url, _new_page(browser, 1366, 768) as page:
        page.goto(app_url)
        _wait_idle(page, timeout=120_000)
        q = page.get_by_label("Query")
        q.fill("a prepared query for the class")
        q.press("Enter")
        _settle(page)
        _choose_mode(page, "random heads (control)")
        page.get_by_role("link", name="Guided lesson").click()
        expect(page.get_by_role("heading", name="1. Demonstrations and label positions")).to_be_visible(timeout=120_000)
        _settle(page)
        assert "mode=random" in page.url
        page.get_by_role("link", name="Prompt lab").click()
        expect(page.get_by_role("heading", name="Prompt lab")).to_be_visible(timeout=60_000)
        # the text box, not another element the lesson's page may still show under the same label
        expect(page.get_by_role("textbox", name="Query", exact=True)).to_have_value("a prepared query for the class",
                                                                                   timeout=60_000)
        _wait_idle(page)
        assert page.get_by_role("radiogroup", name="Intervene on").get_by_role(
            "radio", name="random heads (control)").is_checked()
        assert _predictions(page).count() == 2 and "mode=random" in page.url


def test_compact_chart_draws_every_head_row_at_1366(browser):
    """The Prompt lab's compact attention chart at 1366 x 768: one row (a y tick) per chosen in-context head
    (before, a narrow column left room for two of three). A server of its own, as above."""
    with _serve(tiny=False) as app_url, _new_page(browser, 1366, 768) as page:
        page.goto(app_url)
        _wait_idle(page, timeout=120_000)
        heads = page.get_by_role("textbox", name="In-context heads (shared by all pages)").input_value()
        names = [h.strip() for h in heads.split(",") if h.strip()]
        _settle(page, 300_000)  # after the lesson's test the server may still compute its steps ahead
        chart = page.locator(".st-key-fig_compact .js-plotly-plot")
        chart.scroll_into_view_if_needed()
        drawn: list[str] = []
        for _ in range(240):  # plotly draws once the chart is in view, and redraws when the panel reruns
            drawn = [t.strip(" *") for t in chart.locator(".ytick text").evaluate_all(
                "els => els.map(e => e.textContent)")]
            if sorted(drawn) == sorted(names):
                break
            page.wait_for_timeout(500)
        assert sorted(drawn) == sorted(names), (drawn, names)
        rows = chart.evaluate("gd => new Set(gd._fullData.flatMap(t => Array.from(t.y))).size")
        assert rows == len(names)
        box = chart.bounding_box()
        legend = chart.locator(".legend").bounding_box()
        assert legend["y"] > box["y"] + box["height"] / 2  # under the plot, not under the toolbar
