"""The one exception type for user mistakes.

Library code raises `OfflineKDError` with the offending key, file or utterance id in the message; the CLI turns it
into a one-line click error and a non-zero exit. Library code never imports click.
"""


class OfflineKDError(Exception):
    """A user-facing error: bad config, bad corpus, mismatched cache. The message is shown as is."""


class TeacherForwardError(OfflineKDError):
    """A teacher's own forward (the user's code) raised on a batch; whoever runs the batch adds its first
    utterance's id to the message."""


class InternalError(RuntimeError):
    """A bug in offline-kd, not a user mistake: deliberately not an OfflineKDError, so the CLI shows its traceback
    instead of a one-line message that would hide where it happened."""


def user_message(exc: OfflineKDError) -> str:
    """The one-line message of `exc`. An OfflineKDError raised in a DataLoader worker reaches the main process
    re-raised by torch with the worker's traceback folded into its message ("Caught OfflineKDError in DataLoader
    worker process 0. Original Traceback ... OfflineKDError: <message>"): the original message is its last line."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        for prefix in (f"{type(exc).__module__}.{type(exc).__name__}: ", f"{type(exc).__name__}: "):
            if last.startswith(prefix):
                return last[len(prefix):]
        return last
    return text
