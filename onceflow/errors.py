"""onceflow's exceptions, all of them (a test checks this tree against the classes below).

Every error onceflow raises derives from :class:`OnceflowError`; subclasses say *why*::

    OnceflowError
    ├── ConfigurationError          a setting or a flow definition is wrong; change it, rerun
    │   └── ServiceUnreachableError     a server a connector needs (Kafka, PostgreSQL) cannot be
    │                                   reached when the job starts: tried again as the
    │                                   restart strategy allows
    ├── CheckpointError             checkpoint storage cannot be used as asked
    │   ├── ExistingCheckpointError     a run without restore found this flow's checkpoints
    │   ├── NoCheckpointError           an explicit restore path holds no complete checkpoint
    │   ├── CorruptCheckpointError      a checkpoint's files fail their checksums or are missing
    │   ├── IncompatibleStateError      a checkpoint cannot be restored into this flow
    │   ├── CheckpointFailuresExceeded  too many checkpoints failed in a row: the attempt ends
    │   └── CheckpointStorageError      checkpoint storage (an S3 store, ...) failed a request
    ├── SavepointError              a savepoint could not be taken (the message says why)
    ├── UserFunctionError           user code (a map function, a sink, ...) raised; names the
    │                               operator and the record
    ├── RecordFormatError           a source met input it cannot decode; names file and offset
    ├── ConnectorError              an external system a connector talks to (Kafka,
    │   │                           PostgreSQL, ...) failed; ``__cause__`` is its own error
    │   ├── KafkaProtocolError          a Kafka request failed with an error code (``code``)
    │   └── KafkaTransactionLostError   a transaction a checkpoint covers cannot be committed
    │                                   (also an OutputLostError)
    ├── OutputLostError             output a completed checkpoint covers is lost: the job
    │                               fails at once, restarting cannot bring it back
    ├── RemoteError                 the CLI could not reach a running job, or it refused
    └── JobFailedError              the job failed and the restart strategy gave up; carries
                                    the last failure's message

Connectors catch the errors of the libraries they use (librdkafka, psycopg, ...) where they
call them and raise a :class:`ConnectorError` with the original as ``__cause__``
(:func:`foreign_errors`). Messages say what happened, where, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class OnceflowError(Exception):
    """Root of every onceflow exception."""


class ConfigurationError(OnceflowError, ValueError):
    """A setting or the flow's definition is invalid. The message names the setting."""


class ServiceUnreachableError(ConfigurationError):
    """A server a source or sink needs (a Kafka broker, a PostgreSQL server) cannot be
    reached when the job starts, or says it cannot take a session yet. It may be down for
    a moment or the address may be wrong: ``run()`` asks again as the flow's restart
    strategy allows (as for a failure of the running job) and raises this error, saying
    how long it tried, once the strategy gives up. A Ctrl-C meanwhile stops at once."""


class CheckpointError(OnceflowError):
    """Checkpoint storage cannot be used as asked."""


class ExistingCheckpointError(CheckpointError):
    """A run without ``restore`` found completed checkpoints of the same flow in its
    checkpoint storage. Pass ``restore="latest"`` to continue the job, or ``fresh=True``
    to start over and write the whole output again. ``checkpoint_id`` and ``path`` name
    the newest one found."""

    def __init__(self, message: str, checkpoint_id: int, path: str) -> None:
        super().__init__(message)
        self.checkpoint_id = checkpoint_id
        self.path = path


class NoCheckpointError(CheckpointError):
    """An explicit restore path holds no complete checkpoint."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's metadata or state files are missing, truncated or fail their checksum."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"checkpoint {path} is unusable: {reason}")
        self.path = path
        self.reason = reason


class CheckpointStorageError(CheckpointError, OSError):
    """Checkpoint storage (an S3-compatible object store) refused or failed a request; the
    message names the URL and what was being done (never a secret). It is an ``OSError``
    too, so a failed upload fails that checkpoint like a failed write to a directory."""


class CheckpointFailuresExceeded(CheckpointError):
    """More consecutive checkpoint failures than ``tolerable_failures`` (or a final
    checkpoint or stop-with-savepoint failed): the attempt ends and the restart strategy
    decides what happens next."""


class IncompatibleStateError(CheckpointError):
    """A checkpoint cannot be restored into this flow (operators changed, max_parallelism
    changed, ...). The message names the operator and what to change."""


class SavepointError(OnceflowError):
    """A savepoint could not be taken (the message says why)."""


class UserFunctionError(OnceflowError):
    """User code raised while processing. ``operator`` and ``record`` say where."""

    def __init__(self, operator: str, record: object, cause: BaseException,
                 what: str = "record") -> None:
        shown = _short_repr(record)
        super().__init__(
            f"operator {operator!r} raised {type(cause).__name__}: {cause} "
            f"while processing {what} {shown}"
        )
        self.operator = operator
        self.record = shown
        self.cause = cause

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_user_error, (self.operator, self.record, str(self.args[0])))


def _rebuild_user_error(operator: str, record: str, message: str) -> UserFunctionError:
    err = UserFunctionError.__new__(UserFunctionError)
    Exception.__init__(err, message)
    err.operator = operator
    err.record = record
    err.cause = RuntimeError(message)
    return err


class RecordFormatError(OnceflowError):
    """A source met input it cannot decode. The message names the file and byte offset."""


class OutputLostError(OnceflowError):
    """A sink found output of a completed checkpoint lost (e.g. a Kafka transaction the
    broker aborted). Restarting cannot bring it back, so the job fails at once instead of
    restarting."""

class ConnectorError(OnceflowError):
    """An external system a source or sink talks to failed or refused; the message names
    the connector and what it was doing, ``__cause__`` is the library's own error."""


class KafkaProtocolError(ConnectorError):
    """A Kafka request failed with a Kafka error code (``code``) or the connection broke."""

    def __init__(self, message: str, code: int = -1) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.code))


class KafkaTransactionLostError(ConnectorError, OutputLostError):
    """A transaction that a completed checkpoint covers can no longer be committed (the
    broker aborted it, usually because ``transaction.timeout.ms`` passed)."""


class RemoteError(OnceflowError):
    """The running job could not be reached, or refused the request."""


class JobFailedError(OnceflowError):
    """The job failed and the restart strategy allows no further attempt.

    ``reason`` is the last failure's description, ``failures`` every failure seen.
    ``cause`` is the exception the user's code raised in the last failure, rebuilt with
    its original type where possible (so ``except ValueError`` works on it), else None (a
    worker was killed, ...); ``user_traceback`` its frames in the user's files."""

    def __init__(self, message: str, reason: str, failures: list[str], *,
                 cause: BaseException | None = None, user_traceback: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.failures = failures
        self.cause = cause
        self.user_traceback = user_traceback


@contextmanager
def foreign_errors(what: str, *types: type[BaseException]) -> Iterator[None]:
    """Inside, an exception of ``types`` (a library's own errors; default: any that is not
    already an onceflow error) becomes a :class:`ConnectorError` saying ``what`` was being
    done, with the original as ``__cause__``."""
    catch = types or (Exception,)
    try:
        yield
    except OnceflowError:
        raise
    except catch as e:
        raise ConnectorError(f"{what}: {type(e).__name__}: {e}") from e


def _short_repr(value: object, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:  # a user's broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} with failing repr>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
