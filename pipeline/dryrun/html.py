"""Render the validation report as one self-contained HTML file, and write both files.

The page needs no network: CSS is inline, charts are inline SVG, there are no scripts or
external fonts. Every figure on the page is rendered by `figure(pointer)` from the report
dict, as `<span data-key="/totals/read" data-value="1234">1,234</span>` (the key is a JSON
Pointer into report.json), so tests can check the page against the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from pipeline.core.batches import write_json_atomic
from pipeline.core.workdir import report_paths
from pipeline.dryrun import charts
from pipeline.dryrun.report import Report

TEMPLATE = "report.html.j2"


def json_pointer(data: Any, pointer: str) -> Any:
    """Resolve an RFC 6901 JSON Pointer (`/totals/read`) in `data`."""
    value = data
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        value = value[int(token)] if isinstance(value, list) else value[token]
    return value


def pointer(*parts: Any) -> str:
    """Build a JSON Pointer from path parts, escaping `~` and `/`."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if not value.is_integer() else f"{int(value):,}"
    return str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.dryrun", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _format
    return env


def render_html(report: Report) -> str:
    """The report page as one HTML string (self-contained)."""
    data = report.data

    def figure(*parts: Any) -> Markup:
        key = pointer(*parts)
        value = json_pointer(data, key)
        raw = json.dumps(value) if not isinstance(value, str) else value
        return Markup('<span class="fig" data-key="{}" data-value="{}">{}</span>').format(
            key, raw, _format(value)
        )

    def pretty(value: Any) -> str:
        return json.dumps(value, indent=2, ensure_ascii=False)

    template = _environment().get_template(TEMPLATE)
    svg = {name: Markup(text) for name, text in charts.all_charts(data).items()}
    return template.render(d=data, fig=figure, charts=svg, pretty=pretty, escape=escape)


def write_reports(report: Report, workdir: Path) -> tuple[Path, Path]:
    """Write report.json and report.html into `workdir` atomically; return their paths."""
    json_path, html_path = report_paths(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, report.data)
    tmp = html_path.with_name(html_path.name + ".tmp")
    tmp.write_text(render_html(report), encoding="utf-8")
    tmp.replace(html_path)
    return json_path, html_path
