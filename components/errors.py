"""Error types shared by the steps. Each message says what was expected and what was found."""


class ProjectError(Exception):
    """Base class: an error the user can act on (the CLI prints it without a traceback)."""


class DataError(ProjectError):
    """Raw or prepared data is missing, malformed or inconsistent."""


class StoreError(ProjectError):
    """A store URI or key is invalid, or a store operation failed."""


class ConflictError(StoreError):
    """A conditional write lost: the object exists already or changed since it was read."""


class NotFoundError(StoreError):
    """The object a read asked for does not exist (as opposed to one that could not be read)."""


class RegistryError(ProjectError):
    """The model registry cannot do what was asked (for example: there is nothing to roll back to)."""


class ModelFormatError(ProjectError):
    """A model-version folder is incomplete, tampered with, or describes an unknown model."""


class TrainingError(ProjectError):
    """A training job failed; the message names the failing rank and its last log lines."""


class DeployError(ProjectError):
    """A deployment failed, did not become ready, or failed its smoke request; the message says why
    (for KServe: the service's conditions and recent events)."""
