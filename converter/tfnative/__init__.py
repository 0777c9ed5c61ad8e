"""TensorFlow's native converter pieces, reached without importing the ``tensorflow`` package.

Importing ``tensorflow`` costs 3-6 s and ~600 MB (its whole Python API and every kernel) on every cold run
of a SavedModel or ``.tflite`` source, though what those routes need is a handful of compiled extensions
(the MLIR converter and quantizer, the op registry) and a few protobuf classes. ``extensions`` loads such an
extension from the installed wheel under TensorFlow's own dotted name; ``protos`` builds TensorFlow's
protobuf classes from the descriptors its generated modules embed, in a private pool.
"""
