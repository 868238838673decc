"""Who is acting: the identity new rows record as `created_by`."""

from __future__ import annotations

from contextvars import ContextVar

# who is acting (a signed-in e-mail, a token's owner, "local"); new rows record it as created_by.
# The dashboard sets it per script run and per API request; a job's thread inherits its submitter's.
ACTOR: ContextVar[str | None] = ContextVar("qlab_actor", default=None)
