"""Retry policy: given a failure, decide whether and when to run the stage again."""

from __future__ import annotations

from dataclasses import dataclass

from omnijobs.errors import StageError


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    backoff_s: float = 2.0
    backoff_max_s: float = 300.0

    def decide(self, error: BaseException, attempt: int, max_attempts: int) -> RetryDecision:
        """`attempt` is the number of attempts made so far, this one included."""
        retryable = error.retryable if isinstance(error, StageError) else True
        if not retryable or attempt >= max_attempts:
            return RetryDecision(retry=False)
        return RetryDecision(retry=True, delay_s=min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))


def error_record(error: BaseException) -> dict:
    code = "stage_error"
    if isinstance(error, StageError):
        code = "fatal" if not error.retryable else "retryable"
    return {"code": code, "type": type(error).__name__, "message": str(error) or type(error).__name__}
