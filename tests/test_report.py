"""The report's three views: CLI summary and exit codes, JSON, self-contained HTML."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.core.memos_api import extended_spec
from pipeline.dryrun.checks import RequestValidator, mask, mask_text
from pipeline.dryrun.report import histogram, summary
from tests.jsonl_connector import register, write_jsonl


@pytest.fixture
def jsonl_source(monkeypatch: pytest.MonkeyPatch) -> str:
    return register(monkeypatch)


def _write_config(tmp_path: Path, path: Path, rate: float = 2.0) -> Path:
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(
        f"workdir: {tmp_path / 'work'}\n"
        f"load:\n  rate: {rate}\n"
        f"sources:\n  - kind: jsonl\n    name: chats\n    path: {path}\n",
        encoding="utf-8",
    )
    return cfg


def _clean_input(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "in.jsonl",
        [
            {
                "user_id": "u1",
                "conversation_id": "a",
                "content": "hello",
                "created_at": "2024-05-01T08:00:00+00:00",
            },
            {
                "user_id": "u1",
                "conversation_id": "a",
                "content": "hi there",
                "role": "assistant",
                "created_at": "2024-05-01T08:01:00+00:00",
            },
            {
                "user_id": "u2",
                "conversation_id": "b",
                "content": "mail me at bob@example.org",
                "created_at": "2024-05-02T09:00:00+00:00",
            },
            {"skip": "bot message"},
            "{oops <script>alert(1)</script>",
        ],
    )


def test_cli_json_and_exit_0(tmp_path: Path, jsonl_source: str) -> None:
    cfg = _write_config(tmp_path, _clean_input(tmp_path))
    result = CliRunner().invoke(main, ["validate", str(cfg), "--json", "-q"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    t = data["totals"]
    assert (t["read"], t["staged"], t["skipped"], t["quarantined"]) == (5, 3, 1, 1)
    assert (t["batches"], t["api_calls"], t["estimated_seconds"]) == (2, 2, 1.0)
    assert data == json.loads((tmp_path / "work" / "report.json").read_text())


def test_cli_summary_text(tmp_path: Path, jsonl_source: str) -> None:
    cfg = _write_config(tmp_path, _clean_input(tmp_path))
    result = CliRunner().invoke(main, ["validate", str(cfg), "--no-progress"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "read 5, staged 3, skipped 1, quarantined 1" in out
    assert "2 addMessage calls" in out
    assert "result: OK" in out
    assert "report.html" in out


def test_cli_exit_3_when_the_api_would_reject(tmp_path: Path, jsonl_source: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"content": "x", "role": "robot"}])
    cfg = _write_config(tmp_path, path)
    result = CliRunner().invoke(main, ["validate", str(cfg), "-q"])
    assert result.exit_code == 3
    assert "BLOCKED" in result.stdout
    assert "role the API rejects" in result.stdout


def test_cli_workdir_override_and_missing_config(tmp_path: Path, jsonl_source: str) -> None:
    cfg = _write_config(tmp_path, _clean_input(tmp_path))
    other = tmp_path / "elsewhere"
    result = CliRunner().invoke(main, ["validate", str(cfg), "--workdir", str(other), "-q"])
    assert result.exit_code == 0, result.stderr
    assert (other / "report.html").exists()
    missing = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: config file not found")


def test_validate_has_help() -> None:
    result = CliRunner().invoke(main, ["validate", "--help"])
    assert result.exit_code == 0
    assert "Dry run" in result.stdout


class _Page(HTMLParser):
    """Collects data-key figures, external references and scripts of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[tuple[str, str, str]] = []
        self.refs: list[str] = []
        self.scripts = 0
        self.svgs = 0
        self._text: list[str] = []
        self._key: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.scripts += tag == "script"
        self.svgs += tag == "svg"
        for name in ("src", "href", "xlink:href", "action", "data"):
            if a.get(name):
                self.refs.append(str(a[name]))
        if "style" in a and a["style"] and "url(" in a["style"]:
            self.refs.append(a["style"])
        if "data-key" in a:
            self._key = (str(a["data-key"]), str(a.get("data-value")))
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._key is not None and tag == "span":
            self.figures.append((*self._key, "".join(self._text)))
            self._key = None


def _resolve(data: Any, key: str) -> Any:
    for part in key.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def test_html_is_self_contained_and_matches_json(tmp_path: Path, jsonl_source: str) -> None:
    cfg = _write_config(tmp_path, _clean_input(tmp_path))
    assert CliRunner().invoke(main, ["validate", str(cfg), "-q"]).exit_code == 0
    data = json.loads((tmp_path / "work" / "report.json").read_text())
    html = (tmp_path / "work" / "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)
    assert page.scripts == 0
    assert "<script>alert" not in html  # quarantined excerpt is escaped
    external = [r for r in page.refs if re.match(r"\s*(https?:)?//", r)]
    assert external == []
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", html)
    assert page.svgs >= 4
    keys = {k for k, _, _ in page.figures}
    for required in (
        "/totals/read",
        "/totals/staged",
        "/totals/skipped",
        "/totals/quarantined",
        "/totals/users",
        "/totals/conversations",
        "/totals/batches",
        "/totals/api_calls",
        "/totals/tokens",
        "/totals/estimated_seconds",
        "/skipped/bot message",
        "/sources/0/read",
        "/checks/quarantined/count",
    ):
        assert required in keys
    for key, raw, text in page.figures:
        expected = _resolve(data, key)
        shown = raw if isinstance(expected, str) else json.loads(raw)
        assert shown == expected, key
        if isinstance(expected, bool):
            continue
        if isinstance(expected, (int, float)):
            assert float(text.replace(",", "")) == pytest.approx(expected, abs=0.05), key
        else:
            assert text == expected, key
    assert "bot@example.org" not in html
    assert "line 5" in html and "invalid JSON" in html


def test_html_sample_bodies_are_escaped(tmp_path: Path, jsonl_source: str) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"content": "<b>bold</b> & </pre><script>"}])
    cfg = _write_config(tmp_path, path)
    assert CliRunner().invoke(main, ["validate", str(cfg), "-q"]).exit_code == 0
    html = (tmp_path / "work" / "report.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;/pre&gt;&lt;script&gt;" in html
    assert "<script>" not in html


def test_mask_keeps_few_leading_characters() -> None:
    assert mask("jane.doe@example.com", "email") == "jane…[email]"
    assert mask("abc", "password") == "…[password]"
    masked = mask_text("token xoxb-123456789012-abcdefABCDEF here, mail a.b@c.io")
    assert "xoxb-123456789012" not in masked and "a.b@c.io" not in masked
    assert "[slack_token]" in masked and "[email]" in masked


def test_histogram_and_summary() -> None:
    values = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]
    for log in (True, False):
        hist = histogram(values, log=log)
        assert sum(hist["counts"]) == len(values)
        assert hist["edges"] == sorted(hist["edges"])
        assert hist["edges"][0] <= 1 and hist["edges"][-1] >= 144
    assert summary([4, 1, 3, 2]) == {"min": 1, "median": 2.5, "p95": 4, "max": 4, "mean": 2.5}
    assert summary([])["max"] == 0


_SPEC = extended_spec()
_FULL = jsonschema.Draft202012Validator(
    {"$ref": "#/components/schemas/AddMessageRequest", "components": _SPEC["components"]}
)
_text = st.text(max_size=5)
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool", "bot", ""]),
        "content": st.one_of(
            _text,
            st.integers(),
            st.lists(
                st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "video"])}),
                max_size=2,
            ),
        ),
    },
    optional={
        "chat_time": st.one_of(_text, st.integers()),
        "extra": _text,
        "role_id": st.one_of(_text, st.integers()),
    },
)
_body = st.fixed_dictionaries(
    {
        "user_id": st.one_of(_text, st.integers(), st.lists(_text, max_size=22)),
        "conversation_id": _text,
        "messages": st.lists(_message, max_size=4),
    },
    optional={
        "info": st.dictionaries(
            _text, st.one_of(_text, st.integers(), st.booleans(), st.lists(_text, max_size=2))
        ),
        "async_mode": st.one_of(st.booleans(), _text),
        "tags": st.lists(_text),
    },
)


@settings(max_examples=300, deadline=None)
@given(bodies=st.lists(_body, min_size=1, max_size=5))
def test_memoized_validator_agrees_with_full_schema(bodies: list[dict[str, Any]]) -> None:
    validator = RequestValidator()
    for body in bodies:
        assert validator.is_valid(body) == _FULL.is_valid(body)
