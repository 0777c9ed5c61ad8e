"""Every error the library raises on purpose; only ``cli.py`` turns them into exit codes."""

from __future__ import annotations


class ConverterError(Exception):
    """Base class. ``exit_code`` follows the CLI contract: 2 bad input, 3 a step failed."""

    exit_code = 3


class UserInputError(ConverterError):
    """The user's recipe, model or data is wrong; fixing the input fixes the run."""

    exit_code = 2


class RecipeError(UserInputError):
    """A recipe or device profile is missing, malformed or inconsistent."""


class ModelLoadError(UserInputError):
    """The model file is missing, corrupt or in a format we cannot read."""


class InvalidModelError(ModelLoadError):
    """TensorFlow's own .tflite importer rejects the float model: found when its quantizer fails, without the file.

    The quantizer is the first to read the model with the importer's checks of every op (TensorFlow is not
    loaded before it, so a warm re-run needs none), and it knows only bytes: ``pipeline.convert`` names the
    file, and keeps exit 2 for a .tflite source (the file is the input) but makes it a ``ConversionError``
    (exit 3) for a model TensorFlow converted here, which its own quantizer should read.
    """

    def __init__(self, message: str, remedy: str) -> None:
        super().__init__(message)
        self.remedy = remedy  # what to do about a .tflite source (for a converted model: report it)


class DataError(UserInputError):
    """Calibration or evaluation data is missing, empty, non-finite or the wrong shape."""


class OutputError(UserInputError):
    """The output folder cannot be used (e.g. it holds another recipe's artifacts)."""


class ConversionError(ConverterError):
    """TensorFlow failed to produce a model from valid input."""


class NoIntegerKernelError(ConversionError):
    """Ops of the model have no integer kernel in TFLite: the model, not edgeconv, must change (exit 2).

    A ``ConversionError`` so the accuracy loop skips an attempt that hits it, but exit 2 for the run:
    the remedy is in the user's hands (another layer, or a target that allows float ops).
    """

    exit_code = 2

    def __init__(self, message: str, nodes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.nodes = nodes  # the float ops' first output tensor names, as the quantizer's denylist takes them


class EvaluationError(ConverterError):
    """Running a converted model failed."""


class CalibrationError(ConverterError):
    """Running the float model on the calibration data failed."""


class DeployError(ConverterError):
    """Reaching, copying to or running on a device failed; the message names the step."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


class DeviceInputError(UserInputError):
    """The device-side runtime rejected the model or data it was given."""


class TargetError(ConverterError):
    """A target check could not run (a tool or package it needs is missing or failed)."""
