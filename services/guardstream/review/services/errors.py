"""What a review service refuses, with the HTTP status the API and the console answer."""

from __future__ import annotations

from guardstream.contracts.errors import PermanentError


class ReviewError(PermanentError):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(ReviewError):
    status = 401


class Forbidden(ReviewError):
    status = 403


class NotFound(ReviewError):
    status = 404


class Conflict(ReviewError):
    status = 409


class ExportUnavailable(ReviewError):
    """This deployment cannot make the export (the PDF library's system parts are missing)."""

    status = 503
