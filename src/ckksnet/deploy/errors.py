"""Errors of the deployment area (the inference service, its workers, the Ray workers). Each
carries the HTTP status the service answers with; all derive from :class:`ckksnet.CkksnetError`."""
from __future__ import annotations

from ckksnet.errors import CkksnetError


class ServiceError(CkksnetError):
    """Base class: a request the service refuses. ``status`` is the HTTP status code."""

    status = 400


class BadUploadError(ServiceError):
    """A key-set upload that is not a well-formed bundle (bad tar, forbidden member, truncated)."""

    status = 400


class AuthError(ServiceError):
    """No access token was presented (401)."""

    status = 401


class ForbiddenError(ServiceError):
    """The token does not grant access to this key set (403)."""

    status = 403


class NotFoundError(ServiceError):
    """No such job or key set, or not one the token may see (404)."""

    status = 404


class ConflictError(ServiceError):
    """The request conflicts with the stored state: the key set exists, too many key sets,
    a result that is not ready, a key set with a running job (409)."""

    status = 409


class TooLargeError(ServiceError):
    """A body above the configured limit (413)."""

    status = 413


class InvalidKeysError(ServiceError):
    """A bundle or ciphertext that fails validation: checksum, kind, key set, preset (422)."""

    status = 422


class StorageError(ServiceError):
    """Not enough free disk space in the state folder for an upload (507)."""

    status = 507


class StateLockedError(CkksnetError):
    """The state folder is in use by another running server."""


class QueueFullError(ServiceError):
    """Too many jobs are queued (429)."""

    status = 429
