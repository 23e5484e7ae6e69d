"""`validate` writes report.html even when messages are dated year 1 or 9999."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.dryrun.charts import timeline


@pytest.mark.parametrize(
    "odd", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "0050-06-01T00:00:00Z"]
)
def test_validate_survives_out_of_range_dates(tmp_path: Path, odd: str) -> None:
    (tmp_path / "v.csv").write_text(
        "conversation_id,role,content,timestamp,user_id\n"
        f"c1,user,odd,{odd},alice\n"
        "c1,assistant,normal,2025-01-01T00:00:00Z,alice\n"
        "c1,user,later,2025-01-03T00:00:00Z,alice\n",
        encoding="utf-8",
    )
    (tmp_path / "v.yaml").write_text(
        "workdir: w\nsources:\n  - kind: csv\n    path: v.csv\n", encoding="utf-8"
    )
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "v.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "w" / "report.html").read_text(encoding="utf-8")
    assert "Messages over time per source" in html
    assert "not drawn" in html  # the chart says what it left out


def test_timeline_notes_what_it_leaves_out() -> None:
    data = {
        "timeline": {
            "unit": "month",
            "series": {"a": [["0001-01-01", 2], ["2025-01-01", 5]], "b": [["9999-12-01", 1]]},
        }
    }
    svg = timeline(data)
    assert svg.startswith("<svg")
    only_outliers = {"timeline": {"unit": "day", "series": {"a": [["9999-12-31", 4]]}}}
    assert timeline(only_outliers).startswith("<svg")
