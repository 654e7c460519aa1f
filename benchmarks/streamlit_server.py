"""Start ``streamlit run app.py`` on a free local port for a benchmark (and wait until it answers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def start_server(app_dir: Path, test_model: str | None = None, tries: int = 300) -> tuple[subprocess.Popen, str]:
    """``test_model``: one of the app's tiny test models (``ICLVIZ_TEST_MODEL``), or None for the real one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.pop("ICLVIZ_TEST_MODEL", None)
    if test_model:
        env["ICLVIZ_TEST_MODEL"] = test_model
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.fileWatcherType", "none"], cwd=app_dir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"streamlit did not start in {app_dir}")
