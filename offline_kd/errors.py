"""The one exception type for user mistakes.

Library code raises `OfflineKDError` with the offending key, file or utterance id in the message; the CLI turns it
into a one-line click error and a non-zero exit. Library code never imports click. A message names a function's
argument as `arg("resume")` (`resume` in backquotes); only cli.py turns that into the flag (`--resume`).
"""


def arg(name: str) -> str:
    """How a library message names an argument of the call that failed: `name`, in backquotes (cli.py shows the
    command-line flag in its place, `as_flags`)."""
    return f"`{name}`"


def as_flags(message: str, names=("resume", "online_teacher", "overwrite", "teacher", "lm", "decoder")) -> str:
    """A library message as the command line shows it: each `name` of an argument becomes its flag, `--name`."""
    for n in names:
        message = message.replace(f"`{n}`", "--" + n.replace("_", "-"))
    return message


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
