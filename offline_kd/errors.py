"""The one exception type for user mistakes.

Library code raises `OfflineKDError` with the offending key, file or utterance id in the message; the CLI turns it
into a one-line click error and a non-zero exit. Library code never imports click.
"""


class OfflineKDError(Exception):
    """A user-facing error: bad config, bad corpus, mismatched cache. The message is shown as is."""


class InternalError(RuntimeError):
    """A bug in offline-kd, not a user mistake: deliberately not an OfflineKDError, so the CLI shows its traceback
    instead of a one-line message that would hide where it happened."""
