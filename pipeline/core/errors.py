"""The memos-etl error tree; each error carries the exit code the CLI maps it to.

    MemosError                     exit 1 unless a subclass says otherwise
     ├── ConfigError               exit 2: bad config file, flag or environment
     ├── InputError                exit 3: an export that cannot be read at all
     │    ├── LedgerError          exit 3: a damaged, foreign or newer ledger (nothing sent)
     │    └── UnreachableError     exit 3: the destination cannot be reached (preflight)
     ├── LockError                 exit 5: another run holds the workdir lock
     ├── DiskFullError             exit 7: the disk is full, the workdir cannot be written
     └── LoadError                 exit 4: delivery did not complete
          ├── TransientLoadError   retried with backoff (429, 5xx, timeouts, 40300, 50xxx)
          ├── PermanentLoadError   the batch is marked failed, the run continues
          ├── TooLargeError        the batch is split in two and retried
          ├── QuotaExhaustedError  the run stops cleanly, the rest stays pending
          └── AuthError            exit 6: the run stops at once ("API key rejected")

Messages say what failed, where, and what to do next, on one line.
"""

from __future__ import annotations


class MemosError(Exception):
    """Base of every error memos-etl raises on purpose."""

    exit_code = 1


class ConfigError(MemosError):
    """A config file, flag or environment variable is missing or wrong."""

    exit_code = 2


class InputError(MemosError):
    """An input export cannot be read at all (missing, wrong encoding, wrong layout)."""

    exit_code = 3


class LedgerError(InputError):
    """The ledger file is empty, damaged, foreign or from a newer memos-etl: nothing is sent,
    because guessing would resend (or skip) deliveries."""


class UnreachableError(InputError):
    """The destination did not answer the preflight request (DNS, refused, timeout)."""


class LockError(MemosError):
    """Another memos-etl run holds the workdir lock."""

    exit_code = 5


class DiskFullError(MemosError):
    """A write failed for lack of space (ENOSPC, EDQUOT, SQLITE_FULL); nothing is corrupt,
    and the same command resumes once space is freed (see `pipeline.core.diskfull`)."""

    exit_code = 7


class LoadError(MemosError):
    """Delivery to the MemOS API did not complete."""

    exit_code = 4

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class TransientLoadError(LoadError):
    """A failure worth retrying: rate limit, 5xx, timeout, transient service code."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        rate_limited: bool = False,
    ):
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class PermanentLoadError(LoadError):
    """The API rejected this batch; resending the same body cannot succeed."""


class TooLargeError(LoadError):
    """The API said the input is too long (40305 / HTTP 413): split and resend."""


class QuotaExhaustedError(LoadError):
    """The account's quota is used up (40304): stop, keep the rest pending."""


class AuthError(LoadError):
    """The API key was rejected (401/403, 40100/40130/40132): stop at once."""

    exit_code = 6
