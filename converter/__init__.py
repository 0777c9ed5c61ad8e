"""edgeconv: recipe-driven full-integer TFLite conversion for microcontrollers and NPUs."""

__version__ = "0.1.0"
