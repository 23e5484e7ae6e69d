"""Shared fixtures: CLI runner, sample paths, the official MemOS API spec."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
VENDORED_SPEC = REPO / "pipeline" / "spec" / "memos-openapi.json"
SHARED_SPEC = REPO.parent / "shared" / "memos-openapi.json"


@cache
def openapi_spec() -> dict[str, Any]:
    """The official MemOS OpenAPI spec (../shared when present, else the vendored copy)."""
    path = SHARED_SPEC if SHARED_SPEC.exists() else VENDORED_SPEC
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return spec


def schema_for(name: str) -> dict[str, Any]:
    """A component schema of the spec, with the spec's components available for $ref."""
    spec = openapi_spec()
    return {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
