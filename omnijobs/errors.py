"""One exception tree, split by what the caller does next."""

from __future__ import annotations


class OmniJobsError(Exception):
    """Base of every error OmniJobs raises on purpose."""


# --- errors of the client's request: the API maps these to 4xx -------------------------------


class RequestError(OmniJobsError):
    """The caller asked for something wrong; nothing was written."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(RequestError):
    status = 422
    code = "invalid_input"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class Conflict(RequestError):
    status = 409
    code = "conflict"


class TooLarge(RequestError):
    status = 413
    code = "too_large"


class Gone(RequestError):
    """The thing existed but was deleted on purpose (an output past its retention)."""

    status = 410
    code = "gone"


class Unauthorized(RequestError):
    status = 401
    code = "unauthorized"


class Forbidden(RequestError):
    status = 403
    code = "forbidden"


class TooManyRequests(RequestError):
    """Admission refused the request for now; `retry_after` (seconds) says when to try again."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int, field: str | None = None, code: str | None = None):
        super().__init__(message, field)
        self.retry_after = max(1, int(retry_after))
        if code:
            self.code = code


# --- errors while running a stage: the orchestrator decides from the class --------------------


class StageError(OmniJobsError):
    """A stage run failed. Retryable unless a subclass says otherwise."""

    retryable = True


class RetryableStageError(StageError):
    """A transient failure (engine hiccup, out of memory, connector timeout): try again."""


class FatalStageError(StageError):
    """The job itself is at fault (input only the model could reject): do not retry."""

    retryable = False


class EngineDead(StageError):
    """The engine cannot serve anymore; the worker must restart it."""


class StoreUnavailable(OmniJobsError):
    """The job store could not be reached to claim a batch: nothing was taken, try the batch later."""


# --- configuration -----------------------------------------------------------------------------


class SpecError(OmniJobsError):
    """A pipeline file is invalid. The message names the file, stage and field."""

    def __init__(self, source: str, message: str, stage: str | None = None, field: str | None = None):
        where = source
        if stage:
            where += f": stage '{stage}'"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.source, self.stage, self.field = source, stage, field


class MissingExtra(OmniJobsError):
    """A heavy optional dependency is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"{package} is not installed; install it with: pip install 'omnijobs[{extra}]'")
