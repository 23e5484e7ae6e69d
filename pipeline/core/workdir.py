"""What lives in a workdir: the one place that names its files.

Every stage reads the previous stage's files and writes its own, so each path has exactly one
writer. Stages, the dry run, the CLI and the tests ask this module for paths instead of
spelling them, so the layout can change in one place:

    <workdir>/
      staging/<source>/bucket=NNNN/part-*.parquet
                                        extract: the staging table, one folder per source,
                                        bucketed by conversation (`_buckets.json`)
      batches/batches.jsonl             chunk: addMessage batches in delivery order
      batches/manifest.json             chunk: counts of the last chunk
      ledger.sqlite                     load: delivery state (batches, delivered messages)
      ledger/<dest>/bucket-NNNN.sqlite  engines: one bucket's delivery state for one destination
      ledger/<dest>/bucket-NNNN.jsonl   engines: the batches of that bucket still to deliver
      quarantine.jsonl                  extract: unreadable input records, per source
      report.json, report.html          validate: the dry-run report
      local-memos.sqlite                load: the embedded local target's store (default)
      .memos-etl.lock                   every writer: the workdir lock
      accounts/<account>/               a multi-account config: one whole workdir (this
                                        same layout) per account, so each account has its
                                        own staging, batches, ledger and local store
"""

from __future__ import annotations

from pathlib import Path


def staging_dir(workdir: Path) -> Path:
    """Folder of the staging table (one subfolder per source name)."""
    return workdir / "staging"


def batches_dir(workdir: Path) -> Path:
    """Folder of the chunker's output."""
    return workdir / "batches"


def batches_path(workdir: Path) -> Path:
    """The batch file: one JSON batch per line, in delivery order."""
    return batches_dir(workdir) / "batches.jsonl"


def manifest_path(workdir: Path) -> Path:
    """Counts of the last chunk."""
    return batches_dir(workdir) / "manifest.json"


def ledger_path(workdir: Path) -> Path:
    """The delivery ledger (SQLite)."""
    return workdir / "ledger.sqlite"


def quarantine_path(workdir: Path) -> Path:
    """Unreadable input records, one JSON object per line."""
    return workdir / "quarantine.jsonl"


def report_paths(workdir: Path) -> tuple[Path, Path]:
    """The dry-run report: `report.json` and `report.html`."""
    return workdir / "report.json", workdir / "report.html"


def local_db(workdir: Path, configured: Path | None = None) -> Path:
    """The embedded local target's SQLite store: `configured` (`load.local_db` or `--db`),
    else `<workdir>/local-memos.sqlite`."""
    return configured or workdir / "local-memos.sqlite"


def lock_path(workdir: Path) -> Path:
    """The advisory lock file every writer takes."""
    return workdir / ".memos-etl.lock"


ACCOUNTS = "accounts"


def account_workdir(workdir: Path, account: str) -> Path:
    """The workdir of one account of a multi-account config: `<workdir>/accounts/<account>/`.

    Each account's pipeline is a whole single-account pipeline, so it gets a whole workdir:
    its ledger and destination never mix with another account's.
    """
    return workdir / ACCOUNTS / account


def config_workdir(account_dir: Path) -> Path:
    """The config's workdir an `account_workdir` lies in (what `--workdir` must repeat)."""
    return account_dir.parent.parent


def bucket_ledger_dir(workdir: Path, dest_id: str) -> Path:
    """Folder of the engines' per-bucket ledgers and slices for one destination id."""
    return workdir / "ledger" / dest_id


def bucket_ledger_path(workdir: Path, dest_id: str, bucket: int) -> Path:
    """One bucket's delivery ledger (`pipeline.engines`): a task owns it alone."""
    return bucket_ledger_dir(workdir, dest_id) / f"bucket-{bucket:04d}.sqlite"


def bucket_slice_path(workdir: Path, dest_id: str, bucket: int) -> Path:
    """One bucket's batches to deliver (`pipeline.engines`), written before its task runs."""
    return bucket_ledger_dir(workdir, dest_id) / f"bucket-{bucket:04d}.jsonl"
