"""Sources: load a model in any supported format and make its float .tflite reference, safely."""
