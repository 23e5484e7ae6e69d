"""Shared fixtures: CLI runner, sample paths, the official MemOS API spec."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
VENDORED_SPEC = REPO / "pipeline" / "spec" / "memos-openapi-2026.json"
SHARED_SPEC = REPO.parent / "shared" / "memos-openapi-2026.json"
VENDORED_OLDER_SPEC = REPO / "pipeline" / "spec" / "memos-openapi.json"
SHARED_OLDER_SPEC = REPO.parent / "shared" / "memos-openapi.json"


@cache
def openapi_spec() -> dict[str, Any]:
    """The newest official MemOS OpenAPI spec (../shared when present, else the vendored copy)."""
    path = SHARED_SPEC if SHARED_SPEC.exists() else VENDORED_SPEC
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return spec


def response_validator(spec: Mapping[str, Any], schema_name: str) -> Draft202012Validator:
    """A validator for any spec schema, $refs resolved through a registry."""
    resource = Resource.from_contents(dict(spec), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:memos-openapi", resource)
    return Draft202012Validator(
        {"$ref": "urn:memos-openapi#/components/schemas/" + schema_name}, registry=registry
    )


def schema_for(name: str) -> dict[str, Any]:
    """A component schema of the spec, with the spec's components available for $ref."""
    spec = openapi_spec()
    return {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def flat_parts(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, int]]:
    """The parts each extract wrote before bucketing (source name -> part name -> row
    groups): what a connector and its workers produced, before `bucket_parts` rewrote them."""
    import pyarrow.parquet as pq

    import pipeline.core.staging_buckets as sb

    seen: dict[str, dict[str, int]] = {}
    original = sb.bucket_parts

    def spy(folder: Path, open_writer: Any, buckets: int | None = None) -> int:
        name = folder.name.removeprefix(".").removesuffix(".tmp")
        seen[name] = {
            p.name: pq.ParquetFile(p).num_row_groups for p in sorted(folder.glob("*.parquet"))
        }
        return original(folder, open_writer, buckets)

    monkeypatch.setattr(sb, "bucket_parts", spy)
    return seen


def synthetic_slack(folder: Path, messages: int = 30_000) -> Path:
    """A synthetic Slack export (`tests/bench/gen_slack.py`: 20 channels, 50 users) in
    `folder`; big enough to keep two processes busy for a few seconds."""
    subprocess.run(
        [sys.executable, str(REPO / "tests/bench/gen_slack.py"), str(folder)]
        + ["--messages", str(messages), "--channels", "20", "--users", "50"],
        check=True,
        capture_output=True,
    )
    return folder
