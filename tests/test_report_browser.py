"""The HTML report renders in a real headless browser (skipped where Chromium is absent)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pipeline.core.config import Config
from pipeline.dryrun.validate import validate

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "screenshot_report.sh"


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="Chromium not installed (apt-get install -y chromium)",
)
def test_screenshot_script_renders_the_report(tmp_path: Path) -> None:
    path = tmp_path / "chats.csv"
    path.write_text(
        "conversation_id,user_id,role,content,timestamp\n"
        "c1,ann,customer,hello,2025-01-02T10:00:00Z\n"
        "c1,ann,agent,hi,2025-01-02T10:01:00Z\n",
        encoding="utf-8",
    )
    workdir = tmp_path / "work"
    cfg = Config.model_validate(
        {"workdir": str(workdir), "sources": [{"kind": "csv", "path": str(path)}]}
    )
    validate(cfg)
    png = tmp_path / "report.png"
    done = subprocess.run(
        ["bash", str(SCRIPT), str(workdir / "report.html"), str(png)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 2400)
    assert len(data) > 20_000  # a blank page compresses to a few KB
